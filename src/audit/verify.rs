//! Offline verification of an audit file's hash chain
//! (`tierwarden audit verify FILE`).
//!
//! Owns the rules a file must satisfy: every line is a `v: 1` JSON record
//! ending in `\n` (a final line whose only defect is a missing `\n` is
//! accepted: nothing of it was lost); line 1 has `seq` 0 and `prev` = 64
//! zeros; every later line has `seq` = previous + 1 and `prev` = SHA-256 of
//! the previous line's exact bytes. Reports the FIRST broken link only.
//! Uses std IO and the record module; streams the file (memory is one line);
//! never modifies the file and never trusts its content (no panics on bad
//! input).

use super::record::{line_hash, parse_chain_view, GENESIS_PREV};
use super::AuditError;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Result of [`verify_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyReport {
    /// Every link holds; `records` lines were checked.
    Ok { records: u64 },
    /// The first broken link, found at 1-based `line`; `seq` is that line's
    /// `seq` when it could be read. `reason` names the lines involved.
    Broken {
        line: u64,
        seq: Option<u64>,
        reason: String,
    },
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        matches!(self, VerifyReport::Ok { .. })
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyReport::Ok { records } => write!(f, "ok: {records} records, chain intact"),
            VerifyReport::Broken { line, seq, reason } => {
                write!(f, "BROKEN at line {line}")?;
                if let Some(seq) = seq {
                    write!(f, " (seq {seq})")?;
                }
                write!(f, ": {reason}")
            }
        }
    }
}

/// Checks the whole chain of `path`. `Err` only for IO errors (missing
/// file, unreadable); any content problem is a `Broken` report.
pub fn verify_file(path: &Path) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(|e| AuditError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut n: u64 = 0;
    let mut prev_hash = GENESIS_PREV.to_string();
    let mut prev_seq: Option<u64> = None;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| AuditError::io(path, e))?;
        if read == 0 {
            return Ok(VerifyReport::Ok { records: n });
        }
        n += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let view = match parse_chain_view(&line) {
            Ok(view) => view,
            Err(why) => {
                return Ok(VerifyReport::Broken {
                    line: n,
                    seq: None,
                    reason: format!(
                        "line {n} is not a valid record: {why}; \
                         it was modified, truncated or inserted"
                    ),
                })
            }
        };
        if let Some(reason) = link_problem(n, prev_seq, &prev_hash, view.seq, &view.prev) {
            return Ok(VerifyReport::Broken {
                line: n,
                seq: Some(view.seq),
                reason,
            });
        }
        prev_seq = Some(view.seq);
        prev_hash = line_hash(&line);
    }
}

/// Why line `n` (with `seq`/`prev`) does not follow the previous line.
fn link_problem(
    n: u64,
    prev_seq: Option<u64>,
    prev_hash: &str,
    seq: u64,
    prev: &str,
) -> Option<String> {
    let Some(before) = prev_seq else {
        if seq != 0 {
            return Some(format!(
                "line 1 has seq {seq}, a file starts at seq 0: lines were removed from \
                 the start of the file or line 1 was modified"
            ));
        }
        if prev != GENESIS_PREV {
            return Some(
                "line 1's prev is not 64 zeros: lines were removed from the start of \
                 the file or line 1 was modified"
                    .to_string(),
            );
        }
        return None;
    };
    let m = n - 1;
    if Some(seq) != before.checked_add(1) {
        return Some(format!(
            "seq {seq} does not follow seq {before} of line {m}: records were removed, \
             inserted or reordered between lines {m} and {n}, or one of their seq was modified"
        ));
    }
    if prev != prev_hash {
        return Some(format!(
            "record {m} was modified or record {n}'s link is broken \
             (prev of line {n} is not the SHA-256 of line {m})"
        ));
    }
    None
}
