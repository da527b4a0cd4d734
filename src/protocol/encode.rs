//! Messages the proxy writes itself, encoded with pgwire's encoders.
//!
//! Owns: building complete frames (errors, authentication requests,
//! BackendKeyData, ReadyForQuery, protocol negotiation). Must never: decide
//! what to say; callers pass SQLSTATE, message and hint.

use bytes::{Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, SecretKey,
};
use pgwire::messages::terminate::Terminate;
use pgwire::messages::Message;

fn finish<M: Message>(m: &M) -> Bytes {
    let mut buf = BytesMut::new();
    // Encoding only fails for messages over 1 GiB, which the proxy never builds.
    if m.encode(&mut buf).is_err() {
        buf.clear();
    }
    buf.freeze()
}

/// Severity of a proxy-built error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement fails; the session continues.
    Error,
    /// The session ends.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An ErrorResponse frame.
pub fn error(severity: Severity, code: &str, message: &str, hint: Option<&str>) -> Bytes {
    let mut fields = vec![
        (b'S', severity.as_str().to_string()),
        (b'V', severity.as_str().to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(h) = hint {
        fields.push((b'H', h.to_string()));
    }
    finish(&ErrorResponse::new(fields))
}

/// A NoticeResponse frame with severity WARNING.
pub fn warning(message: &str) -> Bytes {
    finish(&NoticeResponse::new(vec![
        (b'S', "WARNING".to_string()),
        (b'V', "WARNING".to_string()),
        (b'C', "01000".to_string()),
        (b'M', message.to_string()),
    ]))
}

/// ReadyForQuery with the given status byte (`I`, `T` or `E`).
pub fn ready(status: u8) -> Bytes {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    finish(&ReadyForQuery::new(status))
}

/// AuthenticationOk.
pub fn auth_ok() -> Bytes {
    finish(&Authentication::Ok)
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext() -> Bytes {
    finish(&Authentication::CleartextPassword)
}

/// AuthenticationSASL with the offered mechanisms.
pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    finish(&Authentication::SASL(
        mechanisms.iter().map(|m| m.to_string()).collect(),
    ))
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(data: Vec<u8>) -> Bytes {
    finish(&Authentication::SASLContinue(Bytes::from(data)))
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(data: Vec<u8>) -> Bytes {
    finish(&Authentication::SASLFinal(Bytes::from(data)))
}

/// BackendKeyData with the proxy's own key.
pub fn backend_key(pid: i32, secret: i32) -> Bytes {
    finish(&BackendKeyData::new(pid, SecretKey::I32(secret)))
}

/// A frontend Query message (sent by the proxy itself to the upstream).
pub fn query(text: &str) -> Bytes {
    finish(&Query::new(text.to_string()))
}

/// A frontend Terminate message.
pub fn terminate() -> Bytes {
    finish(&Terminate::new())
}

/// NegotiateProtocolVersion: the proxy speaks 3.0 and no `_pq_` options.
pub fn negotiate_protocol(unsupported: Vec<String>) -> Bytes {
    finish(&NegotiateProtocolVersion::new(0, unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages;

    #[test]
    fn error_round_trips_through_our_decoder() {
        let f = error(Severity::Error, "42501", "tierwarden: denied: x", Some("h"));
        assert_eq!(f[0], b'E');
        let e = messages::error_fields(&f[5..]).unwrap();
        assert_eq!(e.code, "42501");
        assert_eq!(e.message, "tierwarden: denied: x");
        assert_eq!(e.severity, "ERROR");
        assert_eq!(&ready(b'E')[..], b"Z\0\0\0\x05E");
        assert_eq!(&backend_key(1, 2)[..], b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02");
        assert_eq!(&query("ROLLBACK")[..], b"Q\0\0\0\x0dROLLBACK\0");
        assert_eq!(&terminate()[..], b"X\0\0\0\x04");
    }
}
