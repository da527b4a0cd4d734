//! The session's link to observability and audit: metrics handles resolved
//! once per session, slow-query events, migration outcomes, and audit
//! records for statements (production tier and break-glass sessions: all;
//! elsewhere: denied, ddl and privileged).
//!
//! Owns: turning tracker completions and policy denials into metrics, log
//! events and audit records. Must never: put an identity or statement text
//! into a metric label.

use std::sync::Mutex;
use std::time::Duration;

use crate::audit::{AuditRecord, EventKind, Outcome};
use crate::observe::labels::{ClassLabel, LockErrorCode, MigrationOutcome, QueryOutcome};
use crate::observe::metrics::SessionMetrics;
use crate::policy::{normalize, Denial, StatementClass, Tier};
use crate::shared::{EnvRuntime, Runtime, Shared};

use super::admission::Admitted;
use super::tracker::{Completed, EndedMigration, MigrationEnd, Tracker};
use crate::promotion::{migration_fingerprint, short, Outcome as PromOutcome};

/// Map a policy class to its metric label.
pub fn class_label(c: StatementClass) -> ClassLabel {
    match c {
        StatementClass::Read => ClassLabel::Read,
        StatementClass::Write => ClassLabel::Write,
        StatementClass::Ddl => ClassLabel::Ddl,
        StatementClass::Maintenance => ClassLabel::Maintenance,
        StatementClass::Transaction => ClassLabel::Transaction,
        StatementClass::Session => ClassLabel::Session,
        StatementClass::Privileged => ClassLabel::Privileged,
        StatementClass::Unclassified => ClassLabel::Unclassified,
    }
}

/// Per-session observability.
pub struct Observer<'a> {
    adm: &'a Admitted,
    env: &'a EnvRuntime,
    shared: &'a Shared,
    metrics: SessionMetrics,
    slow: Duration,
    audit_all: bool,
    redact: bool,
    pid: i32,
}

impl<'a> Observer<'a> {
    /// Resolve this session's handles.
    pub fn new(
        adm: &'a Admitted,
        env: &'a EnvRuntime,
        rt: &'a Runtime,
        shared: &'a Shared,
        pid: i32,
    ) -> Self {
        Observer {
            adm,
            env,
            shared,
            metrics: shared.metrics.session(&env.name, &adm.login.role),
            slow: Duration::from_millis(env.cfg.slow_query_ms),
            audit_all: env.tier() == Tier::Production || adm.break_glass,
            redact: rt
                .config
                .audit
                .as_ref()
                .map(|a| a.redact_literals)
                .unwrap_or(false),
            pid,
        }
    }

    fn record(&self, class: StatementClass, outcome: Outcome, text: &str) -> AuditRecord {
        let mut r = AuditRecord::new(
            EventKind::Statement,
            &*self.env.name,
            &self.adm.login.identity,
            outcome,
        );
        r.role = Some(self.adm.login.role.clone());
        r.level = Some(self.adm.login.level.as_str().to_string());
        r.class = Some(class.as_str().to_string());
        r.statement = Some(if self.redact {
            normalize(text)
        } else {
            text.to_string()
        });
        if let Some(t) = &self.adm.token {
            r.token_id = Some(t.id.clone());
            r.token_reason = t.reason.clone();
        }
        r
    }

    fn must_audit(&self, class: StatementClass) -> bool {
        self.audit_all || matches!(class, StatementClass::Ddl | StatementClass::Privileged)
    }

    /// A statement was denied by the policy.
    pub fn denied(&self, class: StatementClass, d: &Denial, text: &str) {
        self.metrics.record_denied(class_label(class));
        tracing::info!(
            env = %self.env.name,
            role = %self.adm.login.role,
            identity = %self.adm.login.identity,
            class = class.as_str(),
            reason = %d.message,
            "statement denied"
        );
        if let Some(a) = &self.shared.audit {
            let mut r = self.record(class, Outcome::Denied, text);
            r.detail = Some(d.message.clone());
            let _ = a.log(r);
        }
    }

    /// Record everything the tracker finished since the last call.
    ///
    /// Works under the tracker's lock (only this session's task ever takes
    /// it, and nothing here takes it again) so that the tracker keeps its
    /// buffer instead of allocating a new one for every batch.
    pub fn drain(&self, tracker: &Mutex<Tracker>) {
        let Ok(mut t) = tracker.lock() else {
            return;
        };
        for c in t.completed.drain(..) {
            self.completed(&c);
        }
        for m in t.migrations_ended.drain(..) {
            self.migration_ended(m);
        }
    }

    fn migration_ended(&self, m: EndedMigration) {
        let outcome = match m.outcome {
            MigrationEnd::Applied => MigrationOutcome::Applied,
            MigrationEnd::Failed => MigrationOutcome::Failed,
        };
        self.shared.metrics.migration(&self.env.name, outcome);
        let stmts: Vec<String> = m.statements.iter().map(|s| s.to_string()).collect();
        let fp = migration_fingerprint(&stmts);
        tracing::info!(
            env = %self.env.name,
            role = %self.adm.login.role,
            identity = %self.adm.login.identity,
            outcome = ?m.outcome,
            migration = short(&fp),
            statements = ?stmts.iter().map(|s| short(s).to_string()).collect::<Vec<_>>(),
            "migration finished"
        );
        let Some(gate) = self.env.gate.clone().filter(|_| !stmts.is_empty()) else {
            return;
        };
        let summary: String = m
            .first_text
            .as_deref()
            .map(normalize)
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(80)
            .collect();
        let env = self.env.name.to_string();
        let identity = self.adm.login.identity.clone();
        let o = match m.outcome {
            MigrationEnd::Applied => PromOutcome::Applied,
            MigrationEnd::Failed => PromOutcome::Failed,
        };
        tokio::spawn(async move {
            if let Err(e) = gate
                .control
                .record(&env, &fp, o, &identity, &summary, &stmts)
                .await
            {
                tracing::error!(env = %env, migration = short(&fp), error = %e, "cannot record the migration outcome");
            }
        });
    }

    /// A promotion-gate decision (denied, or allowed with a warning).
    pub fn gate(&self, message: &str, denied: bool, text: &str) {
        if denied {
            self.shared.metrics.promotion_denied(&self.env.name);
        }
        tracing::warn!(
            env = %self.env.name,
            identity = %self.adm.login.identity,
            denied,
            reason = message,
            "promotion gate"
        );
        if let Some(a) = &self.shared.audit {
            let o = if denied { Outcome::Denied } else { Outcome::Ok };
            let mut r = self.record(StatementClass::Ddl, o, text);
            r.kind = EventKind::Gate;
            r.detail = Some(message.to_string());
            let _ = a.log(r);
        }
    }

    fn completed(&self, c: &Completed) {
        let outcome = if c.error.is_some() {
            QueryOutcome::Error
        } else {
            QueryOutcome::Ok
        };
        let class = c.stmt.class;
        let slow =
            self.metrics
                .record_statement(class_label(class), outcome, c.duration, self.slow);
        if let Some(code) = c.error.as_deref().and_then(LockErrorCode::from_sqlstate) {
            self.metrics.record_lock_error(code);
        }
        if slow {
            tracing::warn!(
                target: "tierwarden::slow_query",
                env = %self.env.name,
                role = %self.adm.login.role,
                identity = %self.adm.login.identity,
                duration_ms = c.duration.as_secs_f64() * 1000.0,
                fingerprint = %normalize(&c.stmt.text),
                backend_pid = self.pid,
                "slow query"
            );
        }
        if self.must_audit(class) {
            if let Some(a) = &self.shared.audit {
                let o = if c.error.is_some() {
                    Outcome::Error
                } else {
                    Outcome::Ok
                };
                let mut r = self
                    .record(class, o, &c.stmt.text)
                    .with_duration(c.duration);
                r.detail = c.error.clone();
                let _ = a.log(r);
            }
        }
    }
}
