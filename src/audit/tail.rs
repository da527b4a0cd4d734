//! Chain recovery on start: reads the last line of an existing audit file
//! and decides where the chain continues (see the `sink` module doc for the
//! `chain_restart` rule).
//!
//! Uses std file reads (positional, never the whole file: at most
//! `MAX_TAIL_BYTES`) and the record module. Never writes, never panics on
//! bad content: a bad last line becomes a restart reason.

use super::record::{line_hash, parse_chain_view, GENESIS_PREV};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The last line of an existing file is searched for within this many bytes.
const MAX_TAIL_BYTES: u64 = 16 * 1024 * 1024;

/// Where the chain continues, plus bytes to write first.
pub(crate) struct ChainStart {
    pub next_seq: u64,
    pub prev: String,
    pub preamble: Vec<u8>,
    pub restart: Option<String>,
}

/// The last line of the file and whether it ended with `\n`.
pub(crate) struct Tail {
    pub line: Vec<u8>,
    pub terminated: bool,
}

/// Reads the last line of the first `len` bytes of `file` (None if empty).
pub(crate) fn read_tail(file: &File, len: u64) -> io::Result<Option<Tail>> {
    if len == 0 {
        return Ok(None);
    }
    let mut window: u64 = 64 * 1024;
    loop {
        let take = window.min(len);
        let start = len - take;
        let mut buf = vec![0u8; usize::try_from(take).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut buf, start)?;
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        }
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            buf.drain(..=i);
            return Ok(Some(Tail {
                line: buf,
                terminated,
            }));
        }
        if start == 0 {
            return Ok(Some(Tail {
                line: buf,
                terminated,
            }));
        }
        if take >= MAX_TAIL_BYTES {
            // No line start within the limit: report an empty (bad) line.
            return Ok(Some(Tail {
                line: Vec::new(),
                terminated,
            }));
        }
        window = window.saturating_mul(4);
    }
}

/// Decides how the chain continues after `tail` (see the module doc).
pub(crate) fn chain_start(tail: Option<Tail>) -> ChainStart {
    let Some(tail) = tail else {
        return ChainStart {
            next_seq: 0,
            prev: GENESIS_PREV.to_string(),
            preamble: Vec::new(),
            restart: None,
        };
    };
    let preamble = if tail.terminated {
        Vec::new()
    } else {
        b"\n".to_vec()
    };
    let problem = if tail.line.is_empty() {
        Err("empty or overlong last line".to_string())
    } else {
        parse_chain_view(&tail.line)
    };
    match problem {
        Ok(view) => ChainStart {
            next_seq: view.seq.saturating_add(1),
            prev: line_hash(&tail.line),
            preamble,
            restart: None,
        },
        Err(why) => ChainStart {
            next_seq: 0,
            prev: line_hash(&tail.line),
            preamble,
            restart: Some(format!(
                "last line of the file ({} bytes{}) is not a valid audit record: {why}; \
                 new chain segment starts here, prev = hash of that line",
                tail.line.len(),
                if tail.terminated {
                    ""
                } else {
                    ", unterminated"
                },
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tail_of(content: &[u8]) -> Option<(Vec<u8>, bool)> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(content).unwrap();
        read_tail(&f, content.len() as u64)
            .unwrap()
            .map(|t| (t.line, t.terminated))
    }

    #[test]
    fn finds_the_last_line() {
        assert_eq!(tail_of(b""), None);
        assert_eq!(tail_of(b"a\nbc\n"), Some((b"bc".to_vec(), true)));
        assert_eq!(tail_of(b"a\nbc"), Some((b"bc".to_vec(), false)));
        assert_eq!(tail_of(b"only\n"), Some((b"only".to_vec(), true)));
        assert_eq!(tail_of(b"a\n\n"), Some((Vec::new(), true)));
        // A last line longer than the first 64 KiB window.
        let mut big = b"first\n".to_vec();
        let long = vec![b'x'; 200 * 1024];
        big.extend_from_slice(&long);
        big.push(b'\n');
        assert_eq!(tail_of(&big), Some((long, true)));
    }
}
