//! The configuration file's data model (TOML, serde, `deny_unknown_fields`).
//!
//! Owns: the shape of the file and per-field defaults. May use: serde and
//! the pure enums of `policy` and `auth::tls`. Must never: read files, touch
//! the network or hold a secret value (upstream secrets are references to an
//! environment variable or a file, resolved by `config::secrets`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::tls::UpstreamTlsMode;
use crate::policy::{Level, PolicyExtensions, Tier};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings (timeouts, connection cap).
    #[serde(default)]
    pub proxy: ProxySettings,
    /// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default)]
    pub admin: AdminSettings,
    /// Client-side TLS (the proxy's own certificate). Required when any
    /// served environment requires TLS.
    pub tls: Option<TlsSettings>,
    /// The tamper-evident audit log. Required for production-tier environments.
    pub audit: Option<AuditSettings>,
    /// Promotion order of the environments (dev → test → stage → prod).
    #[serde(default)]
    pub promotion: PromotionSettings,
    /// Extensions of the statement classifier's tables.
    #[serde(default)]
    pub policy: PolicyExtensions,
    /// Environments by name.
    pub environments: BTreeMap<String, Environment>,
    /// Roles by name: the level each role gets in each environment.
    pub roles: BTreeMap<String, Role>,
    /// Identities (the `user` of the startup packet) by name.
    #[serde(default)]
    pub identities: BTreeMap<String, Identity>,
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// Time a client has to finish TLS and authentication, in milliseconds.
    pub startup_timeout_ms: u64,
    /// Time to connect and authenticate to the upstream, in milliseconds.
    pub upstream_connect_timeout_ms: u64,
    /// Hard cap on concurrent client connections for the whole process.
    pub max_client_connections: usize,
    /// On SIGTERM, how long sessions may finish before they are closed.
    pub shutdown_grace_ms: u64,
    /// Idle upstream sessions kept per environment and upstream login for
    /// reuse after `DISCARD ALL` (a client gets one started with its own
    /// startup settings); 0 disables reuse.
    pub upstream_pool_size: usize,
    /// How long an idle upstream session is kept (milliseconds).
    pub upstream_idle_timeout_ms: u64,
    /// Upstream sessions older than this (milliseconds since their
    /// connect) are closed when their client leaves instead of being kept.
    pub upstream_max_lifetime_ms: u64,
    /// Threads that run sessions; 0 = automatic (half the CPU cores, at
    /// least one). Read at start only.
    pub worker_threads: usize,
}

impl ProxySettings {
    /// Most worker threads a configuration may ask for.
    pub const MAX_WORKER_THREADS: usize = 256;

    /// The number of session threads to start: the configured one, or half
    /// the CPU cores (at least one). The proxy usually shares its machine
    /// with the database or the application, and on a shared machine fewer
    /// threads spend less on cross-thread wake-ups per message.
    pub fn worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads.min(Self::MAX_WORKER_THREADS);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / 2).max(1)
    }
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            startup_timeout_ms: 10_000,
            upstream_connect_timeout_ms: 10_000,
            max_client_connections: 10_000,
            shutdown_grace_ms: 30_000,
            upstream_pool_size: 20,
            upstream_idle_timeout_ms: 600_000,
            upstream_max_lifetime_ms: 3_600_000,
            worker_threads: 0,
        }
    }
}

/// The admin HTTP listener.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin listener, e.g. `127.0.0.1:9187`. Unset: no listener.
    pub listen: Option<String>,
}

/// The proxy's own certificate for client connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// Where and how the audit log is written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// JSON Lines file, appended to.
    pub path: PathBuf,
    /// Replace literals in statement text with placeholders.
    #[serde(default)]
    pub redact_literals: bool,
    /// `always`, `interval` (default) or `never`.
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// Flush (and fsync with `interval`) period in milliseconds.
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
}

fn default_fsync() -> String {
    "interval".to_string()
}
fn default_flush_ms() -> u64 {
    200
}

/// Promotion order and the migration promotion gate's control database.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PromotionSettings {
    /// Environment names, earliest first. Empty: ordered by tier.
    #[serde(default)]
    pub order: Vec<String>,
    /// The control database holding migration outcomes (shared by every
    /// proxy replica). Unset: the promotion gate is off everywhere.
    pub control: Option<ControlDatabase>,
}

/// Where migration outcomes live. Credentials are per environment
/// (`environments.NAME.control`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlDatabase {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database name, e.g. `tierwarden_control`.
    pub database: String,
}

/// The promotion gate's behaviour in one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMode {
    /// Migrations not applied in the predecessor are denied.
    Enforce,
    /// They are allowed, logged and audited.
    Warn,
    /// No check.
    Off,
}

/// One environment guarded by the proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// `development`, `testing`, `staging` or `production`.
    pub tier: Tier,
    /// Client listener address, e.g. `127.0.0.1:6432`.
    pub listen: String,
    /// Refuse clients that do not use TLS. Default: true in production tier.
    pub require_tls: Option<bool>,
    /// Statements slower than this are counted and logged (milliseconds).
    #[serde(default = "default_slow_ms")]
    pub slow_query_ms: u64,
    /// Cap on concurrent client sessions of this environment.
    pub max_connections: Option<usize>,
    /// Cap on concurrent client sessions per role in this environment.
    #[serde(default)]
    pub max_connections_per_role: BTreeMap<String, usize>,
    /// Connection-spike floor: attempts per 10 s below this never count.
    #[serde(default = "default_spike_floor")]
    pub spike_floor: u64,
    /// Connection-spike factor over the 5-minute average 10-s count.
    #[serde(default = "default_spike_factor")]
    pub spike_factor: f64,
    /// Lock-wait monitor poll interval (milliseconds).
    #[serde(default = "default_lock_poll_ms")]
    pub lock_poll_ms: u64,
    /// Rate-limit authentication failures. Default: true in production tier.
    pub auth_rate_limit: Option<bool>,
    /// File holding this environment's token signing key (see `tierwarden token keygen`).
    pub token_key_file: Option<PathBuf>,
    /// Environment variable holding the token signing key (alternative to the file).
    pub token_key_env: Option<String>,
    /// Promotion gate: `enforce` (default in production tier), `warn`
    /// (default elsewhere) or `off`.
    pub promotion_gate: Option<GateMode>,
    /// This environment's login to the control database.
    pub control: Option<UpstreamUser>,
    /// Close sessions idle inside a transaction for longer than this (milliseconds).
    pub idle_in_transaction_timeout_ms: Option<u64>,
    /// The database this environment guards.
    pub upstream: Upstream,
}

fn default_slow_ms() -> u64 {
    100
}
fn default_spike_floor() -> u64 {
    50
}
fn default_spike_factor() -> f64 {
    3.0
}
fn default_lock_poll_ms() -> u64 {
    1000
}

impl Environment {
    /// Whether plaintext clients are refused.
    pub fn tls_required(&self) -> bool {
        self.require_tls.unwrap_or(self.tier == Tier::Production)
    }
    /// The effective promotion gate mode.
    pub fn gate_mode(&self) -> GateMode {
        self.promotion_gate
            .unwrap_or(if self.tier == Tier::Production {
                GateMode::Enforce
            } else {
                GateMode::Warn
            })
    }
    /// Whether authentication failures are rate limited.
    pub fn rate_limited(&self) -> bool {
        self.auth_rate_limit
            .unwrap_or(self.tier == Tier::Production)
    }
}

/// The upstream PostgreSQL of one environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database name; clients' database names are mapped to it.
    pub database: String,
    /// `disable`, `prefer` (default, as libpq), `require`, `verify-ca`, `verify-full`.
    #[serde(default)]
    pub sslmode: UpstreamTlsMode,
    /// CA certificate for `verify-ca` / `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// Upstream user per access level: keys `ro`, `rw`, `migrate`; plus the
    /// optional `monitor` login of the lock monitor (granted `pg_monitor`).
    pub users: BTreeMap<String, UpstreamUser>,
    /// Optional identity marker: the database comment must contain
    /// `tierwarden:env=<name>`; checked by `serve` at startup (a mismatch
    /// refuses to start; an unreachable upstream is logged) and by `check`.
    #[serde(default)]
    pub verify_marker: bool,
}

fn default_pg_port() -> u16 {
    5432
}

/// One upstream login. The secret is never inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamUser {
    /// PostgreSQL role name.
    pub user: String,
    /// Environment variable that holds the password.
    pub password_env: Option<String>,
    /// File that holds the password (first line).
    pub password_file: Option<PathBuf>,
}

/// A role: one level per environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// People who develop: never a write-capable level in production.
    #[serde(default)]
    pub developer: bool,
    /// Sessions of this role are tracked as migrations when they run ddl.
    #[serde(default)]
    pub migrations: bool,
    /// Level per environment name; a missing environment means `none`.
    #[serde(default)]
    pub levels: BTreeMap<String, Level>,
}

impl Role {
    /// The level of this role in `env` (`none` when not listed).
    pub fn level_in(&self, env: &str) -> Level {
        self.levels.get(env).copied().unwrap_or(Level::None)
    }
}

/// An identity: who connects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The identity's one role.
    pub role: String,
    /// SCRAM-SHA-256 verifier per environment, PostgreSQL format
    /// (`tierwarden passwd` prints one). No verifier: token-only in that env.
    #[serde(default)]
    pub verifiers: BTreeMap<String, String>,
}
