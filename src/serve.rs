//! Running the proxy: build `Shared`, open every listener, start the admin
//! listener, the audit sink and the lock monitors; reload on SIGHUP, drain
//! on SIGTERM/SIGINT.
//!
//! Owns: process lifecycle. Must never: open a port before the
//! configuration and its guards have been checked (the caller loads the
//! config; `start` resolves secrets and certificates before binding).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditConfig, AuditHandle, AuditSink, FsyncPolicy};
use crate::auth::ratelimit::AuthRateLimiter;
use crate::auth::tls::UpstreamTlsMode;
use crate::config::{self, Config};
use crate::observe::locks::{run_monitor, MonitorTarget, MonitorTls, SessionLookup};
use crate::observe::metrics::Metrics;
use crate::observe::{serve_admin, AdminState};
use crate::policy::{Level, Tier};
use crate::proxy::cancel::CancelRegistry;
use crate::proxy::listener;
use crate::proxy::pool::PoolSettings;
use crate::shared::{self, build_env_state, build_runtime, Runtime, Shared};

/// Startup failures (exit code 2 for configuration problems).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Secrets, certificates or keys.
    #[error("{0}")]
    Runtime(#[from] shared::RuntimeError),
    /// A listener cannot be bound.
    #[error("cannot listen on {addr} for environment {env}: {source}")]
    Bind {
        /// Environment.
        env: String,
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The upstream's identity marker names another environment (or none).
    #[error("{0}")]
    Marker(String),
    /// The audit log cannot be opened.
    #[error("audit: {0}")]
    Audit(String),
}

/// A running proxy.
pub struct Server {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Bound client listeners.
    pub addrs: Vec<(String, SocketAddr)>,
    /// Bound admin listener.
    pub admin: Option<SocketAddr>,
    tasks: TaskTracker,
    background: TaskTracker,
    audit_task: Option<tokio::task::JoinHandle<()>>,
}

struct Admin(Arc<Shared>);

impl AdminState for Admin {
    fn metrics_text(&self) -> String {
        for env in &self.0.served {
            self.0.metrics.upstream_idle(env, self.0.pool.idle_in(env));
        }
        self.0.metrics.encode()
    }
    fn readiness(&self) -> Vec<(String, bool)> {
        shared::readiness(&self.0)
    }
    fn production(&self) -> bool {
        let rt = self.0.runtime.load();
        rt.envs.values().any(|e| e.tier() == Tier::Production)
    }
}

struct Lookup(Arc<Shared>);

impl SessionLookup for Lookup {
    fn role_of_backend(&self, env: &str, pid: i32) -> Option<String> {
        self.0
            .sessions
            .get(&(Arc::from(env), pid))
            .map(|s| s.role.clone())
    }
}

fn audit_config(c: &Config, base: &Path) -> Option<AuditConfig> {
    let a = c.audit.as_ref()?;
    let mut cfg = AuditConfig::new(shared::abs(base, &a.path));
    cfg.flush_interval = Duration::from_millis(a.flush_interval_ms.max(1));
    cfg.fsync = match a.fsync.as_str() {
        "always" => FsyncPolicy::Always,
        "never" => FsyncPolicy::Never,
        _ => FsyncPolicy::Interval(Duration::from_secs(1)),
    };
    Some(cfg)
}

/// Build everything and bind every listener.
pub async fn start(config: Config, path: &Path, served: Vec<String>) -> Result<Server, ServeError> {
    let rt = build_runtime(config, path, &served)?;
    for env in rt.envs.values().filter(|e| e.cfg.upstream.verify_marker) {
        match crate::marker::check_marker(env).await {
            Ok(()) => {}
            Err(crate::marker::MarkerError::Mismatch(m)) => return Err(ServeError::Marker(m)),
            Err(e) => {
                tracing::warn!(env = %env.name, error = %e, "identity marker not checked: upstream unreachable")
            }
        }
    }
    let (audit, audit_task) = match audit_config(&rt.config, &rt.base) {
        Some(cfg) => {
            let (h, j) = AuditSink::start(cfg).map_err(|e| ServeError::Audit(e.to_string()))?;
            (Some(h), Some(j))
        }
        None => (None, None),
    };
    let metrics = Arc::new(Metrics::new());
    for n in &served {
        metrics.register_env(n);
        for (role_name, role) in &rt.config.roles {
            if role.level_in(n) != Level::None {
                metrics.register_role(n, role_name);
            }
        }
    }
    let mut bound = Vec::new();
    for n in &served {
        let Some(env) = rt.envs.get(n) else { continue };
        let l = TcpListener::bind(&env.cfg.listen)
            .await
            .map_err(|source| ServeError::Bind {
                env: n.clone(),
                addr: env.cfg.listen.clone(),
                source,
            })?;
        bound.push((n.clone(), l));
    }
    let admin = match &rt.config.admin.listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| ServeError::Bind {
                    env: "admin".into(),
                    addr: a.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let pool = Arc::new(crate::proxy::pool::UpstreamPool::new(PoolSettings::of(
        &rt.config.proxy,
    )));
    let shared = Arc::new(Shared {
        pool,
        env_state: build_env_state(&rt.config, &served),
        ratelimit: AuthRateLimiter::default(),
        runtime: ArcSwap::from_pointee(rt),
        metrics,
        cancels: Arc::new(CancelRegistry::default()),
        audit,
        sessions: Default::default(),
        shutdown: CancellationToken::new(),
        config_path: path.to_path_buf(),
        served,
    });
    let tasks = TaskTracker::new();
    let background = TaskTracker::new();
    let cap = shared.runtime.load().config.proxy.max_client_connections;
    let slots = Arc::new(Semaphore::new(cap));
    let mut addrs = Vec::new();
    for (n, l) in bound {
        addrs.push((
            n.clone(),
            l.local_addr().map_err(|source| ServeError::Bind {
                env: n.clone(),
                addr: String::new(),
                source,
            })?,
        ));
        background.spawn(listener::accept_loop(
            l,
            Arc::from(n.as_str()),
            Arc::clone(&shared),
            Arc::clone(&slots),
            tasks.clone(),
        ));
    }
    background.spawn(Arc::clone(&shared.pool).run_sweeper(shared.shutdown.clone()));
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = admin {
        background.spawn(serve_admin(
            l,
            Arc::new(Admin(Arc::clone(&shared))),
            shared.shutdown.clone(),
        ));
    }
    start_monitors(&shared, &background);
    Ok(Server {
        shared,
        addrs,
        admin: admin_addr,
        tasks,
        background,
        audit_task,
    })
}

fn start_monitors(shared: &Arc<Shared>, background: &TaskTracker) {
    let rt = shared.runtime.load();
    for (name, env) in &rt.envs {
        let login = ["monitor", "ro", "rw", "migrate"]
            .iter()
            .find_map(|k| env.logins.get(*k));
        let (Some(login), Some(state)) = (login, shared.state(name)) else {
            continue;
        };
        let u = &env.cfg.upstream;
        let mut t = MonitorTarget::new(
            name.as_str(),
            u.host.as_str(),
            u.port,
            u.database.as_str(),
            login.user.as_str(),
            login.password.clone().unwrap_or_default(),
        );
        t.interval = Duration::from_millis(env.cfg.lock_poll_ms);
        t.reachable = Arc::clone(&state.up);
        t.tls = env.upstream_tls.as_ref().map(|c| MonitorTls {
            config: Arc::clone(c),
            prefer: u.sslmode == UpstreamTlsMode::Prefer,
        });
        background.spawn(run_monitor(
            t,
            Arc::new(Lookup(Arc::clone(shared))),
            Arc::clone(&shared.metrics),
            shared.shutdown.clone(),
        ));
    }
}

impl Server {
    /// Serve until SIGTERM/SIGINT (or `stop` is cancelled), reloading on SIGHUP.
    pub async fn run(self, stop: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return self.shutdown().await;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => reload(&self.shared),
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = stop.cancelled() => break,
            }
        }
        self.shutdown().await
    }

    /// Serve until `stop` is cancelled (no signal handling: for embedding
    /// and tests), then drain.
    pub async fn serve_until(self, stop: CancellationToken) {
        stop.cancelled().await;
        self.shutdown().await
    }

    /// Stop accepting, let sessions finish (up to the grace period), close
    /// the rest, flush the audit log.
    pub async fn shutdown(self) {
        tracing::info!("draining sessions");
        self.shared.shutdown.cancel();
        // Sessions registered after this look at the token themselves.
        for s in self.shared.sessions.iter() {
            s.stop.drain();
        }
        self.tasks.close();
        self.background.close();
        let grace =
            Duration::from_millis(self.shared.runtime.load().config.proxy.shutdown_grace_ms);
        if crate::timers::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            for s in self.shared.sessions.iter() {
                if let Ok(mut r) = s.reason.lock() {
                    *r = Some("the proxy is shutting down".into());
                }
                s.stop.kill();
            }
            let _ = crate::timers::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        }
        let _ = crate::timers::timeout(Duration::from_secs(5), self.background.wait()).await;
        if let Some(a) = self.shared.audit.clone() {
            let _ = crate::timers::timeout(Duration::from_secs(5), a.shutdown()).await;
        }
        if let Some(j) = self.audit_task {
            let _ = crate::timers::timeout(Duration::from_secs(5), j).await;
        }
        tracing::info!("stopped");
    }

    /// The audit handle (for tests and tools).
    pub fn audit(&self) -> Option<AuditHandle> {
        self.shared.audit.clone()
    }
}

/// Reload the configuration file: a bad file keeps the old configuration;
/// sessions whose identity lost access are closed.
pub fn reload(shared: &Arc<Shared>) {
    let path: PathBuf = shared.config_path.clone();
    let new = match config::load(&path)
        .map_err(|e| e.to_string())
        .and_then(|c| build_runtime(c, &path, &shared.served).map_err(|e| e.to_string()))
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the previous configuration");
            return;
        }
    };
    close_revoked(shared, &new);
    shared.pool.reconfigure(PoolSettings::of(&new.config.proxy));
    shared.runtime.store(Arc::new(new));
    tracing::info!(path = %path.display(), "configuration reloaded");
}

fn close_revoked(shared: &Shared, new: &Runtime) {
    let old = shared.runtime.load();
    for s in shared.sessions.iter() {
        let (env, _) = s.key();
        let still = new
            .config
            .identities
            .get(&s.identity)
            .filter(|i| i.role == s.role)
            .and_then(|i| new.config.roles.get(&i.role))
            .map(|r| r.level_in(env))
            .filter(|new_level| {
                let old_level = old.config.roles.get(&s.role).map(|r| r.level_in(env));
                Some(*new_level) == old_level
            });
        if still.is_none() {
            if let Ok(mut r) = s.reason.lock() {
                *r = Some(format!(
                    "access of {} to environment {env} changed in the configuration; reconnect",
                    s.identity
                ));
            }
            s.stop.kill();
        }
    }
}
