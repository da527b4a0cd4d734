//! Audit trail: tamper-evident JSON Lines, one record per event (SPEC §6).
//!
//! Owns the record schema ([`record`]), the writer task with its bounded queue,
//! hash chain and health flag ([`sink`]), chain recovery from an existing
//! file's last line (`tail`), and offline verification of a file
//! ([`verify`]). It may use tokio, serde, sha2, time and tracing; it must never
//! depend on other tierwarden modules (env, role, level and class arrive as
//! plain strings), never redact (the caller passes statement text already
//! redacted when `redact_literals = true`), and never panic or stop on an IO
//! error: failures are reported through [`AuditHandle::healthy`] and `log`
//! errors, so the production tier can refuse statements (SPEC §4).
//!
//! Chain: every line is one JSON object followed by `\n`. Its `prev` is the
//! hex SHA-256 of the previous line's bytes (without the `\n`); the first line
//! of a file has 64 zeros and `seq` 0; `seq` grows by one per line. Deleting
//! whole records from the END of a file cannot be detected from the file alone
//! (no self-contained hash chain can); anchor the head elsewhere if that
//! matters.

pub mod record;
pub mod sink;
mod tail;
pub mod verify;

#[cfg(test)]
mod sink_tests;

pub use record::{AuditRecord, EventKind, Outcome};
pub use sink::{AuditConfig, AuditHandle, AuditSink, AuditUnavailable, FsyncPolicy};
pub use verify::{verify_file, VerifyReport};

use std::path::PathBuf;

/// Errors opening an audit file or reading one for verification.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit config: {0}")]
    Config(String),
}

impl AuditError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
