//! What the relay sends after one read: forwarded messages straight from
//! the read buffer, substitutions from an owned buffer.
//!
//! Owns: the choice between writing a run of the read buffer as it is
//! (the usual case: every message forwarded, nothing copied) and building
//! an owned copy once any message is replaced or dropped. Must never:
//! change the order of messages, or hold bytes past the write they belong
//! to.

use std::ops::Range;

use bytes::BytesMut;

/// One complete message inside the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'b> {
    /// Message type byte.
    pub tag: u8,
    buf: &'b [u8],
    at: usize,
    end: usize,
}

impl<'b> Msg<'b> {
    /// The message at `at..end` of `buf` (a complete frame).
    #[inline]
    pub fn new(tag: u8, buf: &'b [u8], at: usize, end: usize) -> Msg<'b> {
        Msg { tag, buf, at, end }
    }

    /// The whole message, header included, exactly as received.
    #[inline]
    pub fn bytes(&self) -> &'b [u8] {
        &self.buf[self.at..self.end]
    }

    /// The body after the 5-byte header.
    #[inline]
    pub fn body(&self) -> &'b [u8] {
        &self.buf[self.at + 5..self.end]
    }
}

/// The bytes to send for the messages handled since the last write.
#[derive(Debug)]
pub struct Outgoing {
    /// Length of the read buffer's prefix that goes out unchanged (only
    /// while `owned` is empty).
    verbatim: usize,
    /// Everything to send once the verbatim run was broken.
    owned: BytesMut,
}

impl Outgoing {
    pub fn with_capacity(n: usize) -> Outgoing {
        Outgoing {
            verbatim: 0,
            owned: BytesMut::with_capacity(n),
        }
    }

    /// Send `range` of the read buffer `buf` unchanged.
    #[inline]
    pub fn forward(&mut self, buf: &[u8], range: Range<usize>) {
        if self.owned.is_empty() && range.start == self.verbatim {
            self.verbatim = range.end;
        } else {
            self.break_run(buf);
            self.owned.extend_from_slice(&buf[range]);
        }
    }

    /// From here on everything goes through `owned`: move the verbatim
    /// run there first, so the order stays.
    #[cold]
    fn break_run(&mut self, buf: &[u8]) {
        if self.owned.is_empty() && self.verbatim > 0 {
            self.owned.extend_from_slice(&buf[..self.verbatim]);
            self.verbatim = 0;
        }
    }

    /// Send `m` unchanged.
    #[inline]
    pub fn forward_msg(&mut self, m: &Msg<'_>) {
        self.forward(m.buf, m.at..m.end);
    }

    /// Send `bytes` in place of (or in addition to) what the read buffer
    /// `buf` holds at this point.
    fn substitute(&mut self, buf: &[u8], bytes: &[u8]) {
        self.break_run(buf);
        self.owned.extend_from_slice(bytes);
    }

    /// Send `bytes` in place of `m`.
    pub fn replace(&mut self, m: &Msg<'_>, bytes: &[u8]) {
        self.substitute(m.buf, bytes);
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.verbatim == 0 && self.owned.is_empty()
    }

    /// The bytes to write, given the same read buffer the messages came from.
    pub fn pending<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        if self.owned.is_empty() {
            &buf[..self.verbatim]
        } else {
            &self.owned
        }
    }

    /// After the write: start over (the owned buffer keeps its allocation).
    pub fn clear(&mut self) {
        self.verbatim = 0;
        self.owned.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_without_copying_until_a_substitution() {
        let buf = b"aaabbbcccddd";
        let mut o = Outgoing::with_capacity(16);
        assert!(o.is_empty());
        o.forward(buf, 0..3);
        o.forward(buf, 3..6);
        assert_eq!(o.pending(buf), b"aaabbb");
        assert!(o.owned.is_empty(), "no copy while everything is forwarded");
        o.substitute(buf, b"XX");
        o.forward(buf, 9..12);
        assert_eq!(o.pending(buf), b"aaabbbXXddd");
        o.clear();
        assert!(o.is_empty());
    }

    #[test]
    fn a_dropped_message_breaks_the_verbatim_run() {
        let buf = b"aaabbbccc";
        let mut o = Outgoing::with_capacity(16);
        o.forward(buf, 0..3);
        // 3..6 dropped
        o.forward(buf, 6..9);
        assert_eq!(o.pending(buf), b"aaaccc");
    }

    #[test]
    fn substitution_first_then_forwards() {
        let buf = b"aaabbb";
        let mut o = Outgoing::with_capacity(16);
        o.substitute(buf, b"Z");
        o.forward(buf, 0..3);
        o.forward(buf, 3..6);
        assert_eq!(o.pending(buf), b"Zaaabbb");
    }

    #[test]
    fn msg_views() {
        let buf = b"xxQ\0\0\0\x05ayy";
        let m = Msg::new(b'Q', buf, 2, 8);
        assert_eq!(m.bytes(), b"Q\0\0\0\x05a");
        assert_eq!(m.body(), b"a");
        let mut o = Outgoing::with_capacity(4);
        o.forward_msg(&m);
        assert_eq!(
            o.pending(buf),
            b"Q\0\0\0\x05a",
            "a run not at the front is copied"
        );
    }
}
