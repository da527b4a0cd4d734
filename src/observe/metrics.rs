//! The one `Metrics` struct: every series of the SPEC §5 contract, typed.
//!
//! Owns the registry, the metric families and the per-(env, role) handle
//! cache. It may use `prometheus_client`, std and the sibling label and
//! histogram modules. It must never take a label value from anything but the
//! closed enums of `labels` and the configured env/role names, never lock or
//! look labels up on the per-statement path (sessions hold pre-resolved
//! handles, see [`SessionMetrics`]), and never keep a process-wide global:
//! `main` builds one `Metrics` and passes an `Arc` down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::{encode, encode_eof};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::observe::histogram::DurationHistogram;
use crate::observe::labels::{
    AuthFailReason, AuthLabels, ClassLabel, ClassLabels, ConnLabels, ConnOutcome, EnvLabels,
    LockErrorCode, LockErrorLabels, MigrationLabels, MigrationOutcome, QueryLabels, QueryOutcome,
    RoleLabels,
};

/// Content type of [`Metrics::encode`]'s output: prometheus-client writes the
/// OpenMetrics 1.0 text format (`# EOF` terminated, counters declared without
/// their `_total` suffix), which Prometheus scrapes natively.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const N_CLASS: usize = 8;
const N_OUTCOME: usize = 3;
const N_LOCK_CODE: usize = 2;

/// Every tierwarden series. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    queries: Family<QueryLabels, Counter>,
    query_duration: Family<ClassLabels, DurationHistogram>,
    slow_queries: Family<RoleLabels, Counter>,
    denied: Family<ClassLabels, Counter>,
    lock_waiting: Family<RoleLabels, Gauge>,
    lock_waits: Family<RoleLabels, Counter>,
    lock_wait_seconds: Family<RoleLabels, DurationHistogram>,
    client_connections: Family<RoleLabels, Gauge>,
    connection_attempts: Family<ConnLabels, Counter>,
    connection_spikes: Family<EnvLabels, Counter>,
    migrations: Family<MigrationLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    upstream_up: Family<EnvLabels, Gauge>,
    upstream_idle: Family<EnvLabels, Gauge>,
    promotion_denied: Family<EnvLabels, Counter>,
    lock_errors: Family<LockErrorLabels, Counter>,
    /// Handles resolved once per (env, role); bounded by the configuration.
    roles: Mutex<HashMap<(String, String), Arc<RoleHandles>>>,
}

/// Pre-resolved handles of one (env, role). Every field is an Arc-backed
/// clone of a series in the registry.
#[derive(Debug)]
struct RoleHandles {
    queries: [[Counter; N_OUTCOME]; N_CLASS],
    duration: [DurationHistogram; N_CLASS],
    denied: [Counter; N_CLASS],
    slow: Counter,
    connections: Gauge,
    lock_errors: [Counter; N_LOCK_CODE],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Build the registry with every family registered (and no series yet).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = MetricsFamilies::default();
        m.register(&mut registry);
        let MetricsFamilies {
            queries,
            query_duration,
            slow_queries,
            denied,
            lock_waiting,
            lock_waits,
            lock_wait_seconds,
            client_connections,
            connection_attempts,
            connection_spikes,
            migrations,
            auth_failures,
            upstream_up,
            upstream_idle,
            promotion_denied,
            lock_errors,
        } = m;
        Self {
            registry,
            queries,
            query_duration,
            slow_queries,
            denied,
            lock_waiting,
            lock_waits,
            lock_wait_seconds,
            client_connections,
            connection_attempts,
            connection_spikes,
            migrations,
            auth_failures,
            upstream_up,
            upstream_idle,
            promotion_denied,
            lock_errors,
            roles: Mutex::new(HashMap::new()),
        }
    }

    /// Create every env-level counter of `env` at 0, so that alert rules
    /// using `increase()` see the first event (a series born at 1 has no
    /// increase), and `tierwarden_upstream_up{env}` at 0. Call once per
    /// served environment at startup.
    pub fn register_env(&self, env: &str) {
        for &outcome in ConnOutcome::ALL {
            drop(self.connection_attempts.get_or_create(&ConnLabels {
                env: env.to_owned(),
                outcome,
            }));
        }
        for &outcome in MigrationOutcome::ALL {
            drop(self.migrations.get_or_create(&MigrationLabels {
                env: env.to_owned(),
                outcome,
            }));
        }
        for &reason in AuthFailReason::ALL {
            drop(self.auth_failures.get_or_create(&AuthLabels {
                env: env.to_owned(),
                reason,
            }));
        }
        drop(self.connection_spikes.get_or_create(&env_labels(env)));
        drop(self.promotion_denied.get_or_create(&env_labels(env)));
        // Down (0) until the env's lock monitor first reaches the upstream,
        // like `/readyz`; an env without a monitor login stays visibly down.
        drop(self.upstream_up.get_or_create(&env_labels(env)));
        drop(self.upstream_idle.get_or_create(&env_labels(env)));
    }

    /// Create every per-role series of (env, role) at 0 without opening a
    /// session (same reason as [`Metrics::register_env`]). Call at startup for
    /// every role with a level other than `none` in `env`.
    pub fn register_role(&self, env: &str, role: &str) {
        self.role_handles(env, role);
    }

    /// Per-session handles; increments `tierwarden_client_connections{env,role}`
    /// now and decrements it when the returned value is dropped. One mutex
    /// acquisition here (the handle cache), none afterwards.
    pub fn session(&self, env: &str, role: &str) -> SessionMetrics {
        let h = self.role_handles(env, role);
        h.connections.inc();
        SessionMetrics { h }
    }

    fn role_handles(&self, env: &str, role: &str) -> Arc<RoleHandles> {
        let mut cache = self.roles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = cache.get(&(env.to_owned(), role.to_owned())) {
            return Arc::clone(h);
        }
        let h = Arc::new(self.resolve(env, role));
        cache.insert((env.to_owned(), role.to_owned()), Arc::clone(&h));
        h
    }

    fn resolve(&self, env: &str, role: &str) -> RoleHandles {
        let class_labels = |class: ClassLabel| ClassLabels {
            env: env.to_owned(),
            role: role.to_owned(),
            class,
        };
        let rl = role_labels(env, role);
        // Series that only the lock monitor touches: created here at 0 too.
        drop(self.lock_waiting.get_or_create(&rl));
        drop(self.lock_waits.get_or_create(&rl));
        RoleHandles {
            queries: std::array::from_fn(|c| {
                std::array::from_fn(|o| {
                    self.queries.get_or_create_owned(&QueryLabels {
                        env: env.to_owned(),
                        role: role.to_owned(),
                        class: ClassLabel::ALL[c],
                        outcome: QueryOutcome::ALL[o],
                    })
                })
            }),
            duration: std::array::from_fn(|c| {
                self.query_duration
                    .get_or_create_owned(&class_labels(ClassLabel::ALL[c]))
            }),
            denied: std::array::from_fn(|c| {
                self.denied
                    .get_or_create_owned(&class_labels(ClassLabel::ALL[c]))
            }),
            slow: self.slow_queries.get_or_create_owned(&rl),
            connections: self.client_connections.get_or_create_owned(&rl),
            lock_errors: std::array::from_fn(|i| {
                self.lock_errors.get_or_create_owned(&LockErrorLabels {
                    env: env.to_owned(),
                    role: role.to_owned(),
                    code: LockErrorCode::ALL[i],
                })
            }),
        }
    }

    /// `tierwarden_connection_attempts_total{env,outcome}` += 1.
    pub fn connection_attempt(&self, env: &str, outcome: ConnOutcome) {
        self.connection_attempts
            .get_or_create(&ConnLabels {
                env: env.to_owned(),
                outcome,
            })
            .inc();
    }

    /// `tierwarden_auth_failures_total{env,reason}` += 1.
    pub fn auth_failure(&self, env: &str, reason: AuthFailReason) {
        self.auth_failures
            .get_or_create(&AuthLabels {
                env: env.to_owned(),
                reason,
            })
            .inc();
    }

    /// `tierwarden_connection_spikes_total{env}` += 1 (call on `SpikeEvent::Started`).
    pub fn spike(&self, env: &str) {
        self.connection_spikes.get_or_create(&env_labels(env)).inc();
    }

    /// `tierwarden_migrations_total{env,outcome}` += 1.
    pub fn migration(&self, env: &str, outcome: MigrationOutcome) {
        self.migrations
            .get_or_create(&MigrationLabels {
                env: env.to_owned(),
                outcome,
            })
            .inc();
    }

    /// `tierwarden_promotion_denied_total{env}` += 1 (promotion gate refusals).
    pub fn promotion_denied(&self, env: &str) {
        self.promotion_denied.get_or_create(&env_labels(env)).inc();
    }

    /// `tierwarden_upstream_idle_sessions{env}` = idle upstream sessions
    /// kept for reuse (set from the pool when `/metrics` is read).
    pub fn upstream_idle(&self, env: &str, n: usize) {
        self.upstream_idle
            .get_or_create(&env_labels(env))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// `tierwarden_upstream_up{env}` = 1 or 0.
    pub fn upstream_up(&self, env: &str, up: bool) {
        self.upstream_up
            .get_or_create(&env_labels(env))
            .set(i64::from(up));
    }

    /// `tierwarden_lock_errors_total{env,role,code}` += 1, by label lookup
    /// (sessions should use [`SessionMetrics::record_lock_error`]).
    pub fn lock_error(&self, env: &str, role: &str, code: LockErrorCode) {
        self.role_handles(env, role).lock_errors[code as usize].inc();
    }

    /// `tierwarden_lock_waiting_sessions{env,role}` = `n` (lock monitor).
    pub fn set_lock_waiting(&self, env: &str, role: &str, n: i64) {
        self.lock_waiting
            .get_or_create(&role_labels(env, role))
            .set(n);
    }

    /// `tierwarden_lock_waits_total{env,role}` += 1: a lock-wait episode started.
    pub fn lock_wait_started(&self, env: &str, role: &str) {
        self.lock_waits.get_or_create(&role_labels(env, role)).inc();
    }

    /// `tierwarden_lock_wait_seconds{env,role}` observes a finished episode.
    pub fn lock_wait_ended(&self, env: &str, role: &str, length: Duration) {
        self.lock_wait_seconds
            .get_or_create(&role_labels(env, role))
            .observe(length);
    }

    /// The per-increment label-lookup path, kept for comparison in
    /// `benches/metrics.rs` and for rare callers without a session.
    pub fn count_query_by_labels(
        &self,
        env: &str,
        role: &str,
        class: ClassLabel,
        outcome: QueryOutcome,
    ) {
        self.queries
            .get_or_create(&QueryLabels {
                env: env.to_owned(),
                role: role.to_owned(),
                class,
                outcome,
            })
            .inc();
    }

    /// The whole exposition in the OpenMetrics text format
    /// (serve it with [`METRICS_CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = encode(&mut out, &self.registry) {
            // Writing to a String cannot fail and our label encoders never
            // fail; if that ever changes, serve an empty, valid exposition.
            tracing::error!(error = %e, "metrics encoding failed");
            out.clear();
            let _ = encode_eof(&mut out);
        }
        out
    }
}

/// Handles of one client session: recording a statement is an array index
/// and relaxed atomic adds, with no label lookup and no lock. Not `Clone`:
/// dropping it decrements `tierwarden_client_connections` exactly once.
#[derive(Debug)]
pub struct SessionMetrics {
    h: Arc<RoleHandles>,
}

impl SessionMetrics {
    /// Count a statement and observe its latency; returns whether it was slow
    /// (`duration > slow_threshold`), in which case `tierwarden_slow_queries_total`
    /// was incremented and the caller logs the slow-query event. `Denied` is
    /// forwarded to [`SessionMetrics::record_denied`] (no latency, never slow).
    pub fn record_statement(
        &self,
        class: ClassLabel,
        outcome: QueryOutcome,
        duration: Duration,
        slow_threshold: Duration,
    ) -> bool {
        if outcome == QueryOutcome::Denied {
            self.record_denied(class);
            return false;
        }
        let c = class as usize;
        self.h.queries[c][outcome as usize].inc();
        self.h.duration[c].observe(duration);
        let slow = duration > slow_threshold;
        if slow {
            self.h.slow.inc();
        }
        slow
    }

    /// A policy denial: `tierwarden_denied_total{class}` and
    /// `tierwarden_queries_total{class,outcome="denied"}` += 1.
    pub fn record_denied(&self, class: ClassLabel) {
        let c = class as usize;
        self.h.queries[c][QueryOutcome::Denied as usize].inc();
        self.h.denied[c].inc();
    }

    /// The upstream answered 40P01 or 55P03 to this session.
    pub fn record_lock_error(&self, code: LockErrorCode) {
        self.h.lock_errors[code as usize].inc();
    }
}

impl Drop for SessionMetrics {
    fn drop(&mut self) {
        self.h.connections.dec();
    }
}

fn env_labels(env: &str) -> EnvLabels {
    EnvLabels {
        env: env.to_owned(),
    }
}

fn role_labels(env: &str, role: &str) -> RoleLabels {
    RoleLabels {
        env: env.to_owned(),
        role: role.to_owned(),
    }
}

/// The families, built and registered in one place so names live together.
#[derive(Default)]
struct MetricsFamilies {
    queries: Family<QueryLabels, Counter>,
    query_duration: Family<ClassLabels, DurationHistogram>,
    slow_queries: Family<RoleLabels, Counter>,
    denied: Family<ClassLabels, Counter>,
    lock_waiting: Family<RoleLabels, Gauge>,
    lock_waits: Family<RoleLabels, Counter>,
    lock_wait_seconds: Family<RoleLabels, DurationHistogram>,
    client_connections: Family<RoleLabels, Gauge>,
    connection_attempts: Family<ConnLabels, Counter>,
    connection_spikes: Family<EnvLabels, Counter>,
    migrations: Family<MigrationLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    upstream_up: Family<EnvLabels, Gauge>,
    upstream_idle: Family<EnvLabels, Gauge>,
    promotion_denied: Family<EnvLabels, Counter>,
    lock_errors: Family<LockErrorLabels, Counter>,
}

impl MetricsFamilies {
    /// Counters are registered without `_total` (the encoder appends it);
    /// histograms in seconds get their `_seconds` suffix from `Unit::Seconds`.
    fn register(&self, r: &mut Registry) {
        let s = self;
        r.register(
            "tierwarden_queries",
            "Statements seen, by class and outcome",
            s.queries.clone(),
        );
        r.register_with_unit(
            "tierwarden_query_duration",
            "Statement latency seen by the proxy",
            Unit::Seconds,
            s.query_duration.clone(),
        );
        r.register(
            "tierwarden_slow_queries",
            "Statements slower than the environment's slow_query_ms",
            s.slow_queries.clone(),
        );
        r.register(
            "tierwarden_denied",
            "Statements denied by the policy",
            s.denied.clone(),
        );
        r.register(
            "tierwarden_lock_waiting_sessions",
            "Proxy sessions now waiting on a lock upstream",
            s.lock_waiting.clone(),
        );
        r.register(
            "tierwarden_lock_waits",
            "Lock-wait episodes started",
            s.lock_waits.clone(),
        );
        r.register_with_unit(
            "tierwarden_lock_wait",
            "Length of finished lock-wait episodes",
            Unit::Seconds,
            s.lock_wait_seconds.clone(),
        );
        r.register(
            "tierwarden_client_connections",
            "Open client sessions",
            s.client_connections.clone(),
        );
        r.register(
            "tierwarden_connection_attempts",
            "Client connection attempts by outcome",
            s.connection_attempts.clone(),
        );
        r.register(
            "tierwarden_connection_spikes",
            "Connection spike episodes detected",
            s.connection_spikes.clone(),
        );
        r.register(
            "tierwarden_migrations",
            "Migration transactions by outcome",
            s.migrations.clone(),
        );
        r.register(
            "tierwarden_auth_failures",
            "Failed authentications by reason",
            s.auth_failures.clone(),
        );
        r.register(
            "tierwarden_upstream_up",
            "1 when the upstream answers the monitor, else 0",
            s.upstream_up.clone(),
        );
        r.register(
            "tierwarden_upstream_idle_sessions",
            "Idle upstream sessions kept for the next client (session pool)",
            s.upstream_idle.clone(),
        );
        r.register(
            "tierwarden_promotion_denied",
            "Migrations refused by the promotion gate",
            s.promotion_denied.clone(),
        );
        r.register(
            "tierwarden_lock_errors",
            "Lock errors (deadlock, lock_not_available) returned to proxy sessions",
            s.lock_errors.clone(),
        );
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
