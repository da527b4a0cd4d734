//! Bounds-checked decoding of the message bodies the proxy reads.
//!
//! Owns: field extraction from frontend Query/Parse/Bind/Close/Describe/
//! Execute and backend ErrorResponse/BackendKeyData/ReadyForQuery bodies.
//! Must never: allocate copies of bodies it does not need, panic on
//! malformed input.

/// A malformed message body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {0} message")]
pub struct Malformed(pub &'static str);

fn cstr<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), Malformed> {
    // The unnamed statement and portal (what most drivers use) are empty.
    if buf.first() == Some(&0) {
        return Ok((&buf[..0], &buf[1..]));
    }
    let end = memchr::memchr(0, buf).ok_or(Malformed(what))?;
    Ok((&buf[..end], &buf[end + 1..]))
}

/// Query text bytes of a Query ('Q') body.
pub fn query_text(body: &[u8]) -> Result<&[u8], Malformed> {
    Ok(cstr(body, "Query")?.0)
}

/// (statement name, query text) of a Parse ('P') body.
pub fn parse_msg(body: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let (name, rest) = cstr(body, "Parse")?;
    let (query, _) = cstr(rest, "Parse")?;
    Ok((name, query))
}

/// (portal name, statement name) of a Bind ('B') body.
pub fn bind_msg(body: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let (portal, rest) = cstr(body, "Bind")?;
    let (stmt, _) = cstr(rest, "Bind")?;
    Ok((portal, stmt))
}

/// (kind b'S' or b'P', name) of a Close ('C') or Describe ('D') body.
pub fn target_msg(body: &[u8]) -> Result<(u8, &[u8]), Malformed> {
    let (&kind, rest) = body.split_first().ok_or(Malformed("Close/Describe"))?;
    if kind != b'S' && kind != b'P' {
        return Err(Malformed("Close/Describe"));
    }
    Ok((kind, cstr(rest, "Close/Describe")?.0))
}

/// Portal name of an Execute ('E') body.
pub fn execute_msg(body: &[u8]) -> Result<&[u8], Malformed> {
    Ok(cstr(body, "Execute")?.0)
}

/// The fields of an ErrorResponse/NoticeResponse the proxy looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// SQLSTATE ('C').
    pub code: String,
    /// Primary message ('M').
    pub message: String,
    /// Non-localized severity ('V'), or localized ('S') when absent.
    pub severity: String,
}

/// Decode the fields of an ErrorResponse body.
pub fn error_fields(body: &[u8]) -> Result<ErrorFields, Malformed> {
    let mut out = ErrorFields::default();
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            return Ok(out);
        }
        let (value, after) = cstr(after, "ErrorResponse")?;
        let value = String::from_utf8_lossy(value).into_owned();
        match code {
            b'C' => out.code = value,
            b'M' => out.message = value,
            b'V' => out.severity = value,
            b'S' if out.severity.is_empty() => out.severity = value,
            _ => {}
        }
        rest = after;
    }
    Err(Malformed("ErrorResponse"))
}

/// (pid, secret) of a BackendKeyData body (protocol 3.0: 4-byte key).
pub fn backend_key(body: &[u8]) -> Result<(i32, i32), Malformed> {
    if body.len() != 8 {
        return Err(Malformed("BackendKeyData"));
    }
    Ok((
        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
    ))
}

/// Transaction status byte of a ReadyForQuery body.
pub fn ready_status(body: &[u8]) -> Result<u8, Malformed> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(Malformed("ReadyForQuery")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fields() {
        assert_eq!(query_text(b"select 1\0").unwrap(), b"select 1");
        assert!(query_text(b"select 1").is_err());
        assert_eq!(
            parse_msg(b"s1\0select $1\0\0\x01\0\0\0\x17").unwrap(),
            (&b"s1"[..], &b"select $1"[..])
        );
        assert_eq!(bind_msg(b"\0s1\0\0\0").unwrap(), (&b""[..], &b"s1"[..]));
        assert_eq!(target_msg(b"Sx\0").unwrap(), (b'S', &b"x"[..]));
        assert!(target_msg(b"Zx\0").is_err());
        assert!(target_msg(b"").is_err());
        let e = error_fields(b"SERROR\0VERROR\0C42501\0Mno\0\0").unwrap();
        assert_eq!((e.code.as_str(), e.message.as_str()), ("42501", "no"));
        assert!(error_fields(b"C42501").is_err());
        assert_eq!(backend_key(&[0, 0, 0, 5, 0, 0, 0, 6]).unwrap(), (5, 6));
        assert!(backend_key(&[0, 0]).is_err());
        assert_eq!(ready_status(b"T").unwrap(), b'T');
        assert!(ready_status(b"X").is_err());
    }
}
