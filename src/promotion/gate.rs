//! One environment's gate: its predecessor, mode and control-database
//! handle, and the decisions a session asks of it.
//!
//! Owns: turning verdicts into denials or warnings. Must never: allow in
//! `enforce` mode when the control database cannot be read.

use std::sync::Arc;

use super::control::Control;
use super::{check_migration, check_statement, Snapshot, Verdict};
use crate::config::GateMode;

/// The gate of one environment.
pub struct Gate {
    /// Environment.
    pub env: Arc<str>,
    /// Previous environment in the promotion order.
    pub pred: Option<String>,
    /// Mode.
    pub mode: GateMode,
    /// Control database.
    pub control: Control,
}

/// A gate decision for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    /// Nothing to say.
    Pass,
    /// Allowed, but logged and audited (`warn` mode).
    Warn(String),
    /// Denied (`enforce` mode).
    Deny(String),
}

impl Gate {
    /// Whether ddl of migration sessions is checked here.
    pub fn checks(&self) -> bool {
        self.pred.is_some() && self.mode != GateMode::Off
    }

    /// The predecessor's snapshot (or why it cannot be read).
    pub async fn snapshot(&self) -> Result<Snapshot, String> {
        let Some(p) = &self.pred else {
            return Ok(Snapshot::default());
        };
        self.control.snapshot(p).await.map_err(|e| e.to_string())
    }

    fn decide(&self, v: Verdict) -> GateDecision {
        match (v, self.mode) {
            (Verdict::Accept, _) | (_, GateMode::Off) => GateDecision::Pass,
            (Verdict::Reject(m), GateMode::Warn) => GateDecision::Warn(m),
            (Verdict::Reject(m), GateMode::Enforce) => GateDecision::Deny(m),
        }
    }

    fn unreadable(&self, e: &str) -> GateDecision {
        let m = format!("the promotion record cannot be read ({e})");
        match self.mode {
            GateMode::Enforce => GateDecision::Deny(m),
            GateMode::Warn => GateDecision::Warn(m),
            GateMode::Off => GateDecision::Pass,
        }
    }

    /// Judge one ddl statement.
    pub fn statement(&self, snap: &Result<Snapshot, String>, fp: &str) -> GateDecision {
        let Some(pred) = self.pred.as_deref().filter(|_| self.checks()) else {
            return GateDecision::Pass;
        };
        match snap {
            Ok(s) => self.decide(check_statement(s, fp, pred)),
            Err(e) => self.unreadable(e),
        }
    }

    /// Judge a whole migration (at COMMIT, or an autocommit message).
    pub fn migration(&self, snap: &Result<Snapshot, String>, mig_fp: &str) -> GateDecision {
        let Some(pred) = self.pred.as_deref().filter(|_| self.checks()) else {
            return GateDecision::Pass;
        };
        match snap {
            Ok(s) => self.decide(check_migration(s, mig_fp, pred)),
            Err(e) => self.unreadable(e),
        }
    }
}
