//! The migration promotion gate (SPEC §10): a migration is accepted in an
//! environment only if it was applied in the previous environment of the
//! promotion order, and never if it last failed there.
//!
//! Owns: canonical fingerprints of ddl statements and migrations
//! (`fingerprint`), the snapshot of a predecessor's outcomes and the
//! verdicts drawn from it (this file, pure), and the control database
//! (`control`, IO). Must never: block a session on the control database
//! for longer than its timeout, or let a control-database failure allow a
//! migration in `enforce` mode (fail closed).

pub mod control;
pub mod fingerprint;
pub mod gate;

use std::collections::{HashMap, HashSet};

pub use fingerprint::{migration_fingerprint, short, statement_fingerprints};

/// Outcome of a migration in one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed.
    Applied,
    /// Errored or rolled back.
    Failed,
}

impl Outcome {
    /// Stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Failed => "failed",
        }
    }
}

/// The latest outcome of every migration of one environment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Migration fingerprint → latest outcome.
    pub latest: HashMap<String, Outcome>,
    /// Statement fingerprints of migrations whose latest outcome is applied.
    pub applied_statements: HashSet<String>,
    /// Statement fingerprints of migrations whose latest outcome is failed.
    pub failed_statements: HashSet<String>,
}

impl Snapshot {
    /// Build from (migration fingerprint, outcome, statement fingerprints)
    /// rows holding the latest outcome per migration.
    pub fn from_latest(rows: impl IntoIterator<Item = (String, Outcome, Vec<String>)>) -> Self {
        let mut s = Snapshot::default();
        for (m, o, stmts) in rows {
            let set = match o {
                Outcome::Applied => &mut s.applied_statements,
                Outcome::Failed => &mut s.failed_statements,
            };
            set.extend(stmts);
            s.latest.insert(m, o);
        }
        s
    }
}

/// What the gate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Applied in the predecessor.
    Accept,
    /// Not applied there (absent, or its latest outcome is failed).
    Reject(String),
}

/// Judge one ddl statement: it must belong to a migration applied in the
/// predecessor `pred`.
pub fn check_statement(snap: &Snapshot, stmt_fp: &str, pred: &str) -> Verdict {
    if snap.applied_statements.contains(stmt_fp) {
        Verdict::Accept
    } else if snap.failed_statements.contains(stmt_fp) {
        Verdict::Reject(format!(
            "migration statement {} last failed in {pred}",
            short(stmt_fp)
        ))
    } else {
        Verdict::Reject(format!(
            "migration statement {} has not been applied in {pred}",
            short(stmt_fp)
        ))
    }
}

/// Judge a whole migration at COMMIT (or a single autocommit statement).
pub fn check_migration(snap: &Snapshot, mig_fp: &str, pred: &str) -> Verdict {
    match snap.latest.get(mig_fp) {
        Some(Outcome::Applied) => Verdict::Accept,
        Some(Outcome::Failed) => {
            Verdict::Reject(format!("migration {} last failed in {pred}", short(mig_fp)))
        }
        None => Verdict::Reject(format!(
            "migration {} has not been applied in {pred}",
            short(mig_fp)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_latest_outcome() {
        let snap = Snapshot::from_latest(vec![
            (
                "m1".to_string(),
                Outcome::Applied,
                vec!["s1".into(), "s2".into()],
            ),
            ("m2".to_string(), Outcome::Failed, vec!["s3".into()]),
        ]);
        assert_eq!(check_statement(&snap, "s1", "stage"), Verdict::Accept);
        assert!(
            matches!(check_statement(&snap, "s3", "stage"), Verdict::Reject(m) if m.contains("last failed in stage"))
        );
        assert!(
            matches!(check_statement(&snap, "s9", "stage"), Verdict::Reject(m) if m.contains("has not been applied in stage"))
        );
        assert_eq!(check_migration(&snap, "m1", "stage"), Verdict::Accept);
        assert!(matches!(
            check_migration(&snap, "m2", "stage"),
            Verdict::Reject(_)
        ));
        assert!(matches!(
            check_migration(&snap, "m3", "stage"),
            Verdict::Reject(_)
        ));
    }
}
