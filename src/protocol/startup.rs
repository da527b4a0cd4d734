//! The startup packet: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage, decoded with bounds checks.
//!
//! Owns: decoding the untyped first packet of a connection. Must never:
//! perform IO or decide policy about the parameters it returns.

/// Largest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A decoded startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// A cancel request for a running query.
    Cancel {
        /// Process id the client was given.
        pid: i32,
        /// Secret key the client was given.
        secret: i32,
    },
    /// A protocol 3.x startup message.
    Startup {
        /// Minor protocol version requested.
        minor: u16,
        /// Parameters in order (user, database, options, application_name…).
        params: Vec<(String, String)>,
    },
}

/// Why a startup packet was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    /// Length outside 8..=10000.
    #[error("invalid startup packet length {0}")]
    Length(i64),
    /// Protocol other than 3.x.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    Version(u16, u16),
    /// Parameters not NUL-terminated pairs, or not UTF-8.
    #[error("invalid startup packet layout: {0}")]
    Layout(&'static str),
}

/// Validate the declared length (the first four bytes of the packet).
pub fn packet_len(header: [u8; 4]) -> Result<usize, StartupError> {
    let len = i32::from_be_bytes(header) as i64;
    if !(8..=MAX_STARTUP_LEN as i64).contains(&len) {
        return Err(StartupError::Length(len));
    }
    Ok(len as usize)
}

/// Decode a packet body (everything after the 4-byte length).
pub fn decode(body: &[u8]) -> Result<StartupPacket, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::Layout("too short"));
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if rest.len() < 8 {
                return Err(StartupError::Layout("cancel request too short"));
            }
            Ok(StartupPacket::Cancel {
                pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
                secret: i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::Version(major, minor));
            }
            Ok(StartupPacket::Startup {
                minor,
                params: decode_params(rest)?,
            })
        }
    }
}

fn decode_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let (key, after) = cstr(rest)?;
        if key.is_empty() {
            return Ok(params);
        }
        let (value, after) = cstr(after)?;
        params.push((key.to_string(), value.to_string()));
        rest = after;
    }
}

fn cstr(buf: &[u8]) -> Result<(&str, &[u8]), StartupError> {
    let end = buf
        .iter()
        .position(|b| *b == 0)
        .ok_or(StartupError::Layout("missing NUL terminator"))?;
    let s = std::str::from_utf8(&buf[..end])
        .map_err(|_| StartupError::Layout("parameter is not valid UTF-8"))?;
    Ok((s, &buf[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn decodes_each_kind() {
        assert_eq!(
            decode(&body(SSL_REQUEST, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            decode(&body(GSSENC_REQUEST, b"")).unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut c = 7i32.to_be_bytes().to_vec();
        c.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            decode(&body(CANCEL_REQUEST, &c)).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: -9 }
        );
        let p = decode(&body(196608, b"user\0alice\0database\0app\0\0")).unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(packet_len([0, 0, 0, 2]).is_err());
        assert!(packet_len([0x7f, 0, 0, 0]).is_err());
        assert!(decode(b"ab").is_err());
        assert!(matches!(
            decode(&body(131072, b"")),
            Err(StartupError::Version(2, 0))
        ));
        assert!(decode(&body(196608, b"user\0alice")).is_err());
        assert!(decode(&body(196608, b"user\0\xff\xfe\0\0")).is_err());
        assert!(decode(&body(CANCEL_REQUEST, b"\0\0")).is_err());
    }
}
