//! The audit record: one versioned JSON object per event, one per line.
//!
//! Owns the record schema (`"v": 1`), the event-kind and outcome enums, the
//! timestamp format and the chain hash (SHA-256 of a line's exact bytes,
//! without its trailing newline). Uses serde, `time` and `sha2` only; it never
//! does IO and never redacts: the caller passes statement text already
//! redacted (the policy module's `normalize()`) when `redact_literals = true`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Schema version written in every record's `v` field.
pub const RECORD_VERSION: u32 = 1;

/// `prev` of the first record of a file: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened. Closed set: new kinds need a new variant (and a review of
/// the readers of the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client session was accepted (or refused) after authentication.
    Connect,
    /// Authentication failed.
    AuthFailure,
    /// A statement was run, denied or failed.
    Statement,
    /// A break-glass token was used to raise a session's level.
    BreakGlass,
    /// A client session ended.
    Disconnect,
    /// A migration-promotion gate decision.
    Gate,
    /// Written only by the sink: the file's last line was not a valid record
    /// when the sink started, so a new chain segment begins here.
    ChainRestart,
}

/// How the event ended. Closed set, same words as the metrics' `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed and succeeded.
    Ok,
    /// Allowed, but failed (upstream error, IO error, ...).
    Error,
    /// Refused by tierwarden (policy, authentication, gate, audit failure).
    Denied,
}

/// One audit event. Field order is the JSON key order.
///
/// `seq` and `prev` are assigned by the sink when the record is written;
/// whatever the caller puts there is overwritten. There is no `hash` field:
/// the next record's `prev` covers this record's full line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Schema version, [`RECORD_VERSION`].
    pub v: u32,
    /// Position in the chain segment, starting at 0; set by the sink.
    pub seq: u64,
    /// Hex SHA-256 of the previous line's bytes (without its newline), or
    /// [`GENESIS_PREV`] for the first line of a file; set by the sink.
    pub prev: String,
    /// Event time, RFC 3339 UTC with milliseconds (`2026-11-02T10:04:05.123Z`).
    pub time: String,
    pub kind: EventKind,
    pub env: String,
    /// Authenticated (or claimed, for auth failures) identity.
    pub identity: String,
    pub role: Option<String>,
    pub level: Option<String>,
    pub class: Option<String>,
    pub outcome: Outcome,
    /// Statement or session duration in milliseconds (microsecond precision).
    pub duration_ms: Option<f64>,
    /// Statement text, already redacted by the caller when required.
    pub statement: Option<String>,
    pub token_id: Option<String>,
    pub token_reason: Option<String>,
    /// Client address, `ip:port`.
    pub peer: Option<String>,
    /// Free text: denial reason, error message, gate verdict.
    pub detail: Option<String>,
}

impl AuditRecord {
    /// A record stamped with the current time; optional fields empty.
    pub fn new(
        kind: EventKind,
        env: impl Into<String>,
        identity: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        AuditRecord {
            v: RECORD_VERSION,
            seq: 0,
            prev: String::new(),
            time: now_rfc3339_ms(),
            kind,
            env: env.into(),
            identity: identity.into(),
            role: None,
            level: None,
            class: None,
            outcome,
            duration_ms: None,
            statement: None,
            token_id: None,
            token_reason: None,
            peer: None,
            detail: None,
        }
    }

    /// Sets `duration_ms` from a `Duration`, rounded to the microsecond.
    pub fn with_duration(mut self, d: Duration) -> Self {
        self.duration_ms = Some(duration_ms(d));
        self
    }
}

/// Milliseconds with microsecond precision, as stored in `duration_ms`.
pub fn duration_ms(d: Duration) -> f64 {
    // u128 micros → f64 is exact below 2^53 µs (285 years).
    d.as_micros() as f64 / 1000.0
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn now_rfc3339_ms() -> String {
    format_rfc3339_ms(time::OffsetDateTime::now_utc())
}

/// Formats a timestamp as RFC 3339 UTC with milliseconds.
pub fn format_rfc3339_ms(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    // Formatting only fails for years outside 0..=9999; keep the record anyway.
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Hex SHA-256 of a line's bytes (pass the line without its trailing `\n`).
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// The chain fields of a line, read without requiring the rest of the schema.
#[derive(Debug, Deserialize)]
pub(crate) struct ChainView {
    pub v: u32,
    pub seq: u64,
    pub prev: String,
}

/// Parses a line's chain fields; `Err` says why the line is not a record.
pub(crate) fn parse_chain_view(line: &[u8]) -> Result<ChainView, String> {
    let view: ChainView =
        serde_json::from_slice(line).map_err(|e| format!("not a valid JSON record ({e})"))?;
    if view.v != RECORD_VERSION {
        return Err(format!("unsupported record version {}", view.v));
    }
    let hex_ok = view.prev.len() == 64
        && view
            .prev
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok {
        return Err("`prev` is not 64 lowercase hex digits".to_string());
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_is_rfc3339_utc_with_ms() {
        let t = time::macros::datetime!(2026-11-02 10:04:05.123456 +02:00);
        assert_eq!(format_rfc3339_ms(t), "2026-11-02T08:04:05.123Z");
        let now = now_rfc3339_ms();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z'));
        let parsed =
            time::OffsetDateTime::parse(&now, &time::format_description::well_known::Rfc3339);
        assert!(parsed.is_ok(), "{now}");
    }

    #[test]
    fn json_shape_is_stable() {
        let mut r = AuditRecord::new(EventKind::AuthFailure, "prod", "alice", Outcome::Denied);
        r.time = "2026-11-02T08:04:05.123Z".into();
        r.peer = Some("127.0.0.1:5555".into());
        let r = r.with_duration(Duration::from_micros(1500));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"v":1,"seq":0,"prev":"","time":"2026-11-02T08:04:05.123Z","kind":"auth_failure","env":"prod","identity":"alice","role":null,"level":null,"class":null,"outcome":"denied","duration_ms":1.5,"statement":null,"token_id":null,"token_reason":null,"peer":"127.0.0.1:5555","detail":null}"#
        );
        let back: AuditRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn line_hash_is_sha256_hex() {
        assert_eq!(
            line_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(GENESIS_PREV.len(), 64);
    }
}
