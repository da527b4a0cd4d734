//! State handed to every session: no globals.
//!
//! Owns: `Shared` (the current `Runtime` behind an `ArcSwap` so SIGHUP can
//! swap it, metrics, cancel keys, the audit handle, the rate limiter and the
//! live-session registry) and building a `Runtime` from a `Config`
//! (resolving secrets, TLS configs, token keys). Must never: accept
//! connections or speak the wire protocol.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditHandle;
use crate::auth::ratelimit::AuthRateLimiter;
use crate::auth::tls;
use crate::config::{resolve_secret, Config, Environment};
use crate::observe::metrics::Metrics;
use crate::observe::spikes::{SharedSpikeDetector, SpikeConfig};
use crate::policy::{Classifier, Tier};
use crate::proxy::cancel::CancelRegistry;

/// A resolved upstream login.
#[derive(Clone)]
pub struct UpstreamLogin {
    /// PostgreSQL role.
    pub user: String,
    /// Secret, if any.
    pub password: Option<String>,
}

/// Everything a session needs about its environment.
pub struct EnvRuntime {
    /// Environment name.
    pub name: Arc<str>,
    /// Its settings.
    pub cfg: Environment,
    /// Upstream logins by level key (`ro`, `rw`, `migrate`).
    pub logins: HashMap<String, UpstreamLogin>,
    /// TLS client config for the upstream.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// Token verification key.
    pub token_key: Option<Arc<crate::auth::token::TokenPublicKey>>,
    /// Migration promotion gate (when a control database is configured).
    pub gate: Option<Arc<crate::promotion::gate::Gate>>,
}

impl EnvRuntime {
    /// The environment's tier.
    pub fn tier(&self) -> Tier {
        self.cfg.tier
    }
}

/// Per-environment counters that outlive config reloads.
pub struct EnvState {
    /// Open sessions.
    pub sessions: AtomicUsize,
    /// Open sessions per role.
    pub per_role: DashMap<String, usize>,
    /// Connection-spike detector.
    pub spikes: SharedSpikeDetector,
    /// Whether the upstream answered the last probe.
    pub up: Arc<AtomicBool>,
}

/// The current configuration, compiled.
pub struct Runtime {
    /// The configuration as loaded.
    pub config: Config,
    /// Directory of the config file (relative paths are resolved from it).
    pub base: PathBuf,
    /// Served environments.
    pub envs: HashMap<String, Arc<EnvRuntime>>,
    /// Statement classifier (with the config's extensions).
    pub classifier: Arc<Classifier>,
    /// Client-side TLS: server config and leaf certificate DER.
    pub tls: Option<(Arc<rustls::ServerConfig>, Arc<Vec<u8>>)>,
}

/// A live session, for the lock monitor and for reload.
pub struct LiveSession {
    /// Identity.
    pub identity: String,
    /// Role.
    pub role: String,
    /// Stop requests: kill ends the session with `reason`, drain at its
    /// next idle point.
    pub stop: Arc<crate::proxy::signal::SessionSignal>,
    /// Why it was killed.
    pub reason: Arc<Mutex<Option<String>>>,
}

/// Shared process state.
pub struct Shared {
    /// Current runtime (swapped on reload).
    pub runtime: ArcSwap<Runtime>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancel keys.
    pub cancels: Arc<CancelRegistry>,
    /// Audit sink, when configured.
    pub audit: Option<AuditHandle>,
    /// Authentication-failure limiter.
    pub ratelimit: AuthRateLimiter,
    /// Live sessions by (environment, upstream backend pid).
    pub sessions: DashMap<(Arc<str>, i32), LiveSession>,
    /// Per-environment counters.
    pub env_state: HashMap<String, Arc<EnvState>>,
    /// Process shutdown.
    pub shutdown: CancellationToken,
    /// Config file path (for reload).
    pub config_path: PathBuf,
    /// Served environment names.
    pub served: Vec<String>,
    /// Idle upstream sessions for reuse.
    pub pool: Arc<crate::proxy::pool::UpstreamPool>,
}

impl Shared {
    /// Per-environment counters (created at startup for every served env).
    pub fn state(&self, env: &str) -> Option<&Arc<EnvState>> {
        self.env_state.get(env)
    }
}

/// Failures building a runtime from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A secret cannot be resolved.
    #[error("{0}")]
    Secret(#[from] crate::config::SecretError),
    /// A certificate or key cannot be loaded.
    #[error("{key}: {message}")]
    Tls {
        /// Config key.
        key: String,
        /// What failed.
        message: String,
    },
    /// The same upstream user and password serve two environments.
    #[error("upstream credential of environment {0} ({1}) is identical to environment {2}'s: never reuse credentials across environments")]
    SharedSecret(String, String, String),
}

/// Compile the served part of a config.
pub fn build_runtime(
    config: Config,
    path: &Path,
    served: &[String],
) -> Result<Runtime, RuntimeError> {
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut envs = HashMap::new();
    for name in served {
        let Some(cfg) = config.environments.get(name) else {
            continue;
        };
        let mut env = build_env(name, cfg, &base)?;
        env.gate = build_gate(&config, name, cfg, &base)?;
        envs.insert(name.clone(), Arc::new(env));
    }
    check_shared_secrets(&config, &base)?;
    let tls = match &config.tls {
        Some(t) => {
            let (cfg, der) =
                tls::server_config(&abs(&base, &t.cert_file), &abs(&base, &t.key_file)).map_err(
                    |e| RuntimeError::Tls {
                        key: "tls".into(),
                        message: e.to_string(),
                    },
                )?;
            Some((cfg, Arc::new(der)))
        }
        None => None,
    };
    let classifier = Arc::new(Classifier::new(&config.policy));
    Ok(Runtime {
        config,
        base,
        envs,
        classifier,
        tls,
    })
}

/// Resolve `p` against the config file's directory.
pub fn abs(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn build_env(name: &str, cfg: &Environment, base: &Path) -> Result<EnvRuntime, RuntimeError> {
    let mut logins = HashMap::new();
    for (k, u) in &cfg.upstream.users {
        logins.insert(
            k.clone(),
            UpstreamLogin {
                user: u.user.clone(),
                password: resolve_secret(u, base)?,
            },
        );
    }
    let ca = cfg.upstream.ca_file.as_ref().map(|p| abs(base, p));
    let upstream_tls =
        tls::upstream_client_config(cfg.upstream.sslmode, ca.as_deref()).map_err(|e| {
            RuntimeError::Tls {
                key: format!("environments.{name}.upstream.sslmode"),
                message: e.to_string(),
            }
        })?;
    let token_key = load_token_key(name, cfg, base)?;
    Ok(EnvRuntime {
        name: Arc::from(name),
        cfg: cfg.clone(),
        logins,
        upstream_tls,
        token_key,
        gate: None,
    })
}

fn build_gate(
    config: &Config,
    name: &str,
    cfg: &Environment,
    base: &Path,
) -> Result<Option<Arc<crate::promotion::gate::Gate>>, RuntimeError> {
    let (Some(db), Some(login)) = (&config.promotion.control, &cfg.control) else {
        return Ok(None);
    };
    let password = resolve_secret(login, base)?;
    Ok(Some(Arc::new(crate::promotion::gate::Gate {
        env: Arc::from(name),
        pred: crate::config::predecessor(config, name),
        mode: cfg.gate_mode(),
        control: crate::promotion::control::Control::new(db, &login.user, password.as_deref()),
    })))
}

fn load_token_key(
    name: &str,
    cfg: &Environment,
    base: &Path,
) -> Result<Option<Arc<crate::auth::token::TokenPublicKey>>, RuntimeError> {
    let text = if let Some(f) = &cfg.token_key_file {
        let p = abs(base, f);
        Some(std::fs::read_to_string(&p).map_err(|e| RuntimeError::Tls {
            key: format!("environments.{name}.token_key_file"),
            message: format!("cannot read {}: {e}", p.display()),
        })?)
    } else if let Some(v) = &cfg.token_key_env {
        Some(std::env::var(v).map_err(|_| RuntimeError::Tls {
            key: format!("environments.{name}.token_key_env"),
            message: format!("environment variable {v} is not set"),
        })?)
    } else {
        None
    };
    match text {
        None => Ok(None),
        Some(t) => parse_token_key(t.trim())
            .map(|k| Some(Arc::new(k)))
            .map_err(|e| RuntimeError::Tls {
                key: format!("environments.{name}.token_key_file"),
                message: e.to_string(),
            }),
    }
}

/// A verification key from either a public key or a signing key (PASERK text).
fn parse_token_key(
    text: &str,
) -> Result<crate::auth::token::TokenPublicKey, crate::auth::token::TokenError> {
    use crate::auth::token::{TokenKey, TokenPublicKey};
    match text.parse::<TokenPublicKey>() {
        Ok(k) => Ok(k),
        Err(_) => text.parse::<TokenKey>().map(|k| k.public_key()),
    }
}

/// "Never reuse credentials across environments": the same user AND
/// password in two environments is refused, whatever the references say.
fn check_shared_secrets(config: &Config, base: &Path) -> Result<(), RuntimeError> {
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    for (env, e) in &config.environments {
        for u in e.upstream.users.values() {
            let Ok(Some(pw)) = resolve_secret(u, base) else {
                continue;
            };
            if let Some(first) = seen.get(&(u.user.clone(), pw.clone())) {
                if first != env {
                    return Err(RuntimeError::SharedSecret(
                        env.clone(),
                        u.user.clone(),
                        first.clone(),
                    ));
                }
            } else {
                seen.insert((u.user.clone(), pw), env.clone());
            }
        }
    }
    Ok(())
}

/// Per-environment counters for the served environments.
pub fn build_env_state(config: &Config, served: &[String]) -> HashMap<String, Arc<EnvState>> {
    let now = Instant::now();
    served
        .iter()
        .filter_map(|n| config.environments.get(n).map(|e| (n, e)))
        .map(|(n, e)| {
            (
                n.clone(),
                Arc::new(EnvState {
                    sessions: AtomicUsize::new(0),
                    per_role: DashMap::new(),
                    spikes: SharedSpikeDetector::new(spike_config(e), now),
                    up: Arc::new(AtomicBool::new(false)),
                }),
            )
        })
        .collect()
}

/// The spike settings of an environment.
pub fn spike_config(e: &Environment) -> SpikeConfig {
    SpikeConfig {
        floor: e.spike_floor,
        factor: e.spike_factor,
    }
}

/// Whether every served upstream answered its last probe.
pub fn readiness(shared: &Shared) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = shared
        .env_state
        .iter()
        .map(|(n, s)| (n.clone(), s.up.load(Ordering::Relaxed)))
        .collect();
    v.sort();
    v
}
