//! Lock-wait monitor: one upstream connection per environment that polls
//! `pg_stat_activity` / `pg_blocking_pids()` and turns what it sees into the
//! `tierwarden_lock_*` series and `tierwarden_upstream_up`.
//!
//! Owns the poll loop ([`run_monitor`]), its SQL, and the pure episode
//! tracker ([`LockWaitTracker`]) that diffs the waiting set between polls. It
//! may use tokio-postgres (with the environment's upstream TLS settings:
//! the monitor connects to its own environment's upstream with a dedicated,
//! read-only monitoring user) and tokio-postgres-rustls,
//! [`Metrics`] and a [`SessionLookup`] the proxy implements. It must never
//! count a backend that is not a session of this proxy, never label anything
//! with a pid, an identity or a query, and never write to the upstream.
//!
//! Resolution: episodes are seen at poll granularity (default 1 s), so an
//! episode's length is measured from the first poll that saw the backend
//! waiting to the first poll that no longer did, and waits shorter than the
//! interval may go unseen. The monitoring user needs `pg_monitor` (or
//! `pg_read_all_stats`): without it PostgreSQL hides other users'
//! `wait_event_type` and the monitor sees no waits at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};
use tokio_util::sync::CancellationToken;

use crate::observe::metrics::Metrics;

/// Backends of the current cluster waiting on a heavyweight lock held by
/// someone else. The `OFFSET 0` fence keeps `pg_blocking_pids()` (not cheap)
/// from being evaluated for backends that are not waiting on a lock.
pub const WAITING_PIDS_SQL: &str = "SELECT w.pid FROM (\
    SELECT pid FROM pg_catalog.pg_stat_activity \
    WHERE wait_event_type = 'Lock' OFFSET 0) w \
    WHERE cardinality(pg_catalog.pg_blocking_pids(w.pid)) > 0";

/// Default poll interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Smallest poll interval honoured (a zero interval would spin).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Upper bound of the reconnect backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Connect and query timeout floor (the interval is used when larger).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Maps an upstream backend pid to the role of the proxy session that owns
/// it (the proxy learns each session's pid from BackendKeyData). `None` for
/// backends that are not this proxy's sessions: they are ignored.
pub trait SessionLookup: Send + Sync {
    fn role_of_backend(&self, env: &str, pid: i32) -> Option<String>;
}

/// What the monitor of one environment connects to.
#[derive(Clone)]
pub struct MonitorTarget {
    pub env: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: String,
    /// Poll interval (default [`DEFAULT_INTERVAL`]).
    pub interval: Duration,
    /// Latest reachability, for `/readyz`: true after a successful poll,
    /// false after a failed connect or query. Starts false.
    pub reachable: Arc<AtomicBool>,
    /// TLS to the upstream (the environment's upstream client config);
    /// `None`: plain TCP (`sslmode = "disable"`).
    pub tls: Option<MonitorTls>,
}

/// TLS of the monitor's connection, as the environment's `upstream.sslmode`.
#[derive(Clone)]
pub struct MonitorTls {
    /// The environment's upstream rustls client config (certificate checks
    /// as configured by `sslmode` and `ca_file`).
    pub config: Arc<rustls::ClientConfig>,
    /// `prefer`: fall back to plain TCP when the server refuses TLS.
    pub prefer: bool,
}

impl MonitorTarget {
    /// A target with the default interval and a fresh `reachable` flag.
    pub fn new(
        env: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        dbname: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            env: env.into(),
            host: host.into(),
            port,
            dbname: dbname.into(),
            user: user.into(),
            password: password.into(),
            interval: DEFAULT_INTERVAL,
            reachable: Arc::new(AtomicBool::new(false)),
            tls: None,
        }
    }

    /// Whether the last poll of this upstream succeeded.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for MonitorTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorTarget")
            .field("env", &self.env)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("interval", &self.interval)
            .field(
                "tls",
                &self
                    .tls
                    .as_ref()
                    .map(|t| if t.prefer { "prefer" } else { "require" }),
            )
            .finish()
    }
}

/// Errors of the monitor's upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("lock monitor of env {env}: cannot connect to {host}:{port}: {source}")]
    Connect {
        env: String,
        host: String,
        port: u16,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("lock monitor of env {env}: query failed: {source}")]
    Query {
        env: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("lock monitor of env {env}: {what} timed out")]
    Timeout { env: String, what: &'static str },
}

/// What changed between two polls.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LockPoll {
    /// Role of every backend that started waiting (one entry per episode).
    pub started: Vec<String>,
    /// Role and length of every episode that ended.
    pub ended: Vec<(String, Duration)>,
    /// Waiting sessions per role now, including 0 for every role that has
    /// waited before (so its gauge is reset rather than left stale).
    pub waiting: BTreeMap<String, i64>,
}

/// Pure episode tracker: feed it the (pid, role) pairs waiting at each poll.
#[derive(Debug, Default)]
pub struct LockWaitTracker {
    /// pid -> (role, first poll that saw it waiting)
    waiting: HashMap<i32, (String, Instant)>,
    /// Every role that ever waited (bounded by the configured roles).
    roles_seen: BTreeSet<String>,
}

impl LockWaitTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Diff the waiting set seen at `now` against the previous poll.
    /// A pid whose role changed (pid reused by another session between polls)
    /// ends the old episode and starts a new one.
    pub fn update(
        &mut self,
        now: Instant,
        current: impl IntoIterator<Item = (i32, String)>,
    ) -> LockPoll {
        let mut poll = LockPoll::default();
        let mut next: HashMap<i32, (String, Instant)> = HashMap::new();
        for (pid, role) in current {
            if next.contains_key(&pid) {
                continue;
            }
            let since = match self.waiting.remove(&pid) {
                Some((old_role, since)) if old_role == role => since,
                Some((old_role, since)) => {
                    poll.ended
                        .push((old_role, now.saturating_duration_since(since)));
                    poll.started.push(role.clone());
                    now
                }
                None => {
                    poll.started.push(role.clone());
                    now
                }
            };
            self.roles_seen.insert(role.clone());
            next.insert(pid, (role, since));
        }
        for (_, (role, since)) in self.waiting.drain() {
            poll.ended
                .push((role, now.saturating_duration_since(since)));
        }
        self.waiting = next;
        for role in &self.roles_seen {
            poll.waiting.insert(role.clone(), 0);
        }
        for (role, _) in self.waiting.values() {
            if let Some(n) = poll.waiting.get_mut(role) {
                *n += 1;
            }
        }
        poll.started.sort();
        poll.ended.sort();
        poll
    }

    /// Backends waiting as of the last update.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }
}

/// Push one poll's changes into the metrics.
pub fn apply(metrics: &Metrics, env: &str, poll: &LockPoll) {
    for role in &poll.started {
        metrics.lock_wait_started(env, role);
    }
    for (role, length) in &poll.ended {
        metrics.lock_wait_ended(env, role, *length);
    }
    for (role, n) in &poll.waiting {
        metrics.set_lock_waiting(env, role, *n);
    }
}

/// Open the monitor connection (TLS as configured) and spawn its driver task.
pub async fn connect(t: &MonitorTarget) -> Result<tokio_postgres::Client, MonitorError> {
    let timeout = t.interval.max(IO_TIMEOUT);
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(&t.user)
        .password(&t.password)
        .dbname(&t.dbname)
        .application_name("tierwarden-lock-monitor");
    match &t.tls {
        None => open(&cfg, NoTls, t, timeout).await,
        Some(tls) => {
            cfg.ssl_mode(if tls.prefer {
                tokio_postgres::config::SslMode::Prefer
            } else {
                tokio_postgres::config::SslMode::Require
            });
            let mk = tokio_postgres_rustls::MakeRustlsConnect::new((*tls.config).clone());
            open(&cfg, mk, t, timeout).await
        }
    }
}

async fn open<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    t: &MonitorTarget,
    timeout: Duration,
) -> Result<tokio_postgres::Client, MonitorError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let connecting = cfg.connect(tls);
    let (client, connection) = match crate::timers::timeout(timeout, connecting).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(source)) => {
            return Err(MonitorError::Connect {
                env: t.env.clone(),
                host: t.host.clone(),
                port: t.port,
                source,
            })
        }
        Err(_) => {
            return Err(MonitorError::Timeout {
                env: t.env.clone(),
                what: "connect",
            })
        }
    };
    let env = t.env.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(env = %env, error = %e, "lock monitor connection closed");
        }
    });
    Ok(client)
}

/// Run one poll: the pids currently waiting on a lock.
pub async fn poll_waiting(
    client: &tokio_postgres::Client,
    t: &MonitorTarget,
) -> Result<Vec<i32>, MonitorError> {
    let timeout = t.interval.max(IO_TIMEOUT);
    match crate::timers::timeout(timeout, client.query(WAITING_PIDS_SQL, &[])).await {
        Ok(Ok(rows)) => Ok(rows.iter().filter_map(|r| r.try_get(0).ok()).collect()),
        Ok(Err(source)) => Err(MonitorError::Query {
            env: t.env.clone(),
            source,
        }),
        Err(_) => Err(MonitorError::Timeout {
            env: t.env.clone(),
            what: "query",
        }),
    }
}

/// Poll `cfg`'s upstream every `cfg.interval` until `shutdown`: maintains the
/// lock series of `cfg.env`, `tierwarden_upstream_up{env}` and
/// `cfg.reachable`. A failed connect or query sets both to down, drops the
/// connection and retries with exponential backoff (interval .. 30 s).
/// Intervals below [`MIN_INTERVAL`] are raised to it.
pub async fn run_monitor(
    cfg: MonitorTarget,
    lookup: Arc<dyn SessionLookup>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let interval = cfg.interval.max(MIN_INTERVAL);
    let mut tracker = LockWaitTracker::new();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut backoff = interval;
    let mut was_up: Option<bool> = None;
    loop {
        let result = match &client {
            Some(c) => poll_waiting(c, &cfg).await,
            None => match connect(&cfg).await {
                Ok(c) => {
                    let r = poll_waiting(&c, &cfg).await;
                    client = Some(c);
                    r
                }
                Err(e) => Err(e),
            },
        };
        let wait = match result {
            Ok(pids) => {
                set_up(&cfg, &metrics, &mut was_up, true, None);
                backoff = interval;
                let env = cfg.env.as_str();
                let sessions = pids
                    .into_iter()
                    .filter_map(|pid| lookup.role_of_backend(env, pid).map(|r| (pid, r)));
                let poll = tracker.update(Instant::now(), sessions);
                apply(&metrics, env, &poll);
                interval
            }
            Err(e) => {
                set_up(&cfg, &metrics, &mut was_up, false, Some(&e));
                client = None;
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = crate::timers::sleep(wait) => {}
        }
    }
}

/// Record reachability; logs only on transitions (no log flood while down).
fn set_up(
    cfg: &MonitorTarget,
    metrics: &Metrics,
    was_up: &mut Option<bool>,
    up: bool,
    err: Option<&MonitorError>,
) {
    cfg.reachable.store(up, Ordering::Relaxed);
    metrics.upstream_up(&cfg.env, up);
    if *was_up != Some(up) {
        match err {
            Some(e) => tracing::warn!(env = %cfg.env, error = %e, "upstream unreachable"),
            None => tracing::info!(env = %cfg.env, "upstream reachable"),
        }
        *was_up = Some(up);
    }
}

#[cfg(test)]
#[path = "locks_tests.rs"]
mod tests;
