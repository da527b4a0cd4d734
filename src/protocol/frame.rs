//! Framing of the regular (post-startup) message stream.
//!
//! Owns: finding message boundaries in a buffer. Must never: copy message
//! bodies or perform IO.

use bytes::{Bytes, BytesMut};

/// Largest message the proxy accepts from either side (PostgreSQL's own
/// limit for any message is 1 GiB - 1).
pub const MAX_MESSAGE_LEN: usize = (1 << 30) - 1;

/// One complete message: its type byte and its full bytes (header included).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Message type byte.
    pub tag: u8,
    /// Whole message, header included, exactly as received.
    pub bytes: Bytes,
}

impl Frame {
    /// The body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

/// Framing errors: the peer sent something that is not a message stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A length below 4 or above the limit.
    #[error("invalid message length {len} for message type {tag:?}")]
    InvalidLength {
        /// Type byte.
        tag: char,
        /// Declared length.
        len: i64,
    },
}

/// The header of the message at the start of `buf`, if 5 bytes are there:
/// (type byte, total length including the type byte).
pub fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as i64;
    if len < 4 || len as usize > MAX_MESSAGE_LEN {
        return Err(FrameError::InvalidLength {
            tag: tag as char,
            len,
        });
    }
    Ok(Some((tag, len as usize + 1)))
}

/// Split one complete message off the front of `buf`, if it is all there.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    match peek_header(buf)? {
        Some((tag, total)) if buf.len() >= total => Ok(Some(Frame {
            tag,
            bytes: buf.split_to(total).freeze(),
        })),
        Some((_, total)) => {
            buf.reserve(total - buf.len());
            Ok(None)
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_complete_frames_and_waits_for_partial_ones() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0Q\0\0"[..]);
        let f = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"abcd\0");
        assert!(split_frame(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn rejects_absurd_lengths() {
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xffxx"[..]);
        assert!(split_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        assert!(split_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(split_frame(&mut buf).is_err());
    }
}
