//! The promotion gate as seen from one message of a migration session:
//! which ddl statements and COMMITs must match a migration applied in the
//! predecessor environment, and the session's view of its transaction.
//!
//! Owns: applying `promotion::gate` verdicts to a classified message and
//! tracking the ddl of the current transaction. Must never: do IO (the
//! snapshot is read before the message is handled).

use crate::policy::{Statement, StatementClass, TxControl};
use crate::promotion::gate::{Gate, GateDecision};
use crate::promotion::{migration_fingerprint, Snapshot};

/// The gate's say on one message.
pub struct GateCall {
    /// Pass, warn or deny (with the reason).
    pub decision: GateDecision,
    /// The refused statement is a COMMIT (roll back instead of failing).
    pub at_commit: bool,
}

/// Transaction view of a migration session.
#[derive(Default)]
pub struct TxView {
    /// Inside an explicit transaction.
    pub in_tx: bool,
    /// Fingerprints of the ddl sent in it.
    pub ddl: Vec<String>,
}

impl TxView {
    /// Update after a message was allowed.
    pub fn after(&mut self, stmts: &[Statement], fps: Option<&Vec<String>>) {
        for (i, s) in stmts.iter().enumerate() {
            match s.tx {
                Some(TxControl::Begin) => {
                    self.in_tx = true;
                    self.ddl.clear();
                }
                Some(TxControl::Commit | TxControl::Rollback | TxControl::PrepareTransaction) => {
                    self.in_tx = false;
                    self.ddl.clear();
                }
                _ => {}
            }
            if s.class == StatementClass::Ddl && self.in_tx {
                if let Some(fp) = fps.and_then(|f| f.get(i)) {
                    self.ddl.push(fp.clone());
                }
            }
        }
    }
}

/// Judge a message against the gate.
pub fn check(
    gate: &Gate,
    snap: &Result<Snapshot, String>,
    stmts: &[Statement],
    fps: Option<&Vec<String>>,
    tx: &TxView,
) -> GateCall {
    let mut warn = None;
    // A denial ends the check; a warning is remembered and the check goes on.
    let mut fold = |d: GateDecision, at_commit: bool| match d {
        GateDecision::Pass => None,
        GateDecision::Warn(m) => {
            warn = Some(m);
            None
        }
        deny @ GateDecision::Deny(_) => Some(GateCall {
            decision: deny,
            at_commit,
        }),
    };
    if gate.checks() {
        let ddl: Vec<String> = stmts
            .iter()
            .enumerate()
            .filter(|(_, s)| s.class == StatementClass::Ddl)
            .map(|(i, _)| fps.and_then(|f| f.get(i)).cloned().unwrap_or_default())
            .collect();
        if ddl.iter().any(String::is_empty) {
            return deny_or_warn(gate, "a ddl statement could not be fingerprinted".into());
        }
        let begins = stmts.iter().any(|s| s.tx == Some(TxControl::Begin));
        if !ddl.is_empty() && !tx.in_tx && !begins {
            // Autocommit (or one implicit-transaction message): its own migration.
            if let Some(c) = fold(gate.migration(snap, &migration_fingerprint(&ddl)), false) {
                return c;
            }
        } else {
            for fp in &ddl {
                if let Some(c) = fold(gate.statement(snap, fp), false) {
                    return c;
                }
            }
        }
        let commits = stmts.iter().any(|s| s.tx == Some(TxControl::Commit));
        if commits && tx.in_tx && !tx.ddl.is_empty() {
            if let Some(c) = fold(gate.migration(snap, &migration_fingerprint(&tx.ddl)), true) {
                return c;
            }
        }
    }
    GateCall {
        decision: warn.map_or(GateDecision::Pass, GateDecision::Warn),
        at_commit: false,
    }
}

fn deny_or_warn(gate: &Gate, m: String) -> GateCall {
    GateCall {
        decision: match gate.mode {
            crate::config::GateMode::Enforce => GateDecision::Deny(m),
            _ => GateDecision::Warn(m),
        },
        at_commit: false,
    }
}
