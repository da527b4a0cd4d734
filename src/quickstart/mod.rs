//! `tierwarden quickstart` (SPEC §9): a throwaway PostgreSQL cluster with
//! four environments, least-privilege upstream users, one identity per seed
//! role, a self-signed CA, the generated config and the `quickstart.json`
//! contract; also the throwaway cluster used by the integration tests.
//!
//! Owns: everything under the quickstart directory (`pgdata/`, `secrets/`,
//! `tls/`, `tierwarden.toml`, `quickstart.json`, `state.json`) and the
//! cluster's lifetime. May use: `config` (to check the generated file),
//! `auth` (verifiers, certificates, token keys), tokio-postgres, nix. Must
//! never: listen on anything but 127.0.0.1, run PostgreSQL as root, serve
//! clients (the CLI binds the listeners, then calls [`write_ready`]), or
//! write a secret with a mode other than 0600.
//!
//! Flow: [`prepare`] → the CLI binds the proxy listeners → [`write_ready`]
//! → print [`Prepared::banner`] and "ready" → on Ctrl-C/SIGTERM the CLI
//! drains, calls [`clear_ready`] and stops (or drops) `Prepared::cluster`.

pub mod binaries;
pub mod cluster;
pub mod configgen;
pub mod control;
pub mod files;
pub mod layout;
pub mod provision;
pub mod report;
pub mod runner;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use binaries::{find_pg_binaries, BinariesError, PgBinaries};
pub use cluster::{free_port, ClusterError, PgCluster, SUPERUSER};
pub use files::FileError;
pub use provision::ProvisionError;
pub use runner::postgres_pids_for;

use crate::auth::verifier::{Verifier, DEFAULT_ITERATIONS};
use layout::{upstream_user, EnvPlan, Paths, UpstreamKind, PORTS_USED, SEED_ROLES};

/// Default quickstart directory (relative to the working directory).
pub const DEFAULT_DIR: &str = ".tierwarden";
/// Default first proxy port.
pub const DEFAULT_PORT_BASE: u16 = 6432;

/// `tierwarden quickstart [--dir DIR] [--port-base N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickstartArgs {
    /// Quickstart directory (default `.tierwarden`).
    pub dir: PathBuf,
    /// First of five consecutive ports: four environments, then admin.
    pub port_base: u16,
}

impl Default for QuickstartArgs {
    fn default() -> Self {
        QuickstartArgs {
            dir: PathBuf::from(DEFAULT_DIR),
            port_base: DEFAULT_PORT_BASE,
        }
    }
}

/// Everything ready except the listeners.
#[derive(Debug)]
pub struct Prepared {
    /// The running cluster (dropping it stops it).
    pub cluster: PgCluster,
    /// The quickstart directory (absolute).
    pub dir: PathBuf,
    /// The generated config (`DIR/tierwarden.toml`).
    pub config_path: PathBuf,
    /// Environments to serve, in promotion order.
    pub envs: Vec<String>,
    /// The `quickstart.json` document.
    pub json: serde_json::Value,
    /// Where [`write_ready`] writes it.
    pub json_path: PathBuf,
    /// Table of environments and copy-paste psql commands.
    pub banner: String,
}

/// Why the quickstart could not prepare.
#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    /// `--port-base` leaves no room for five ports.
    #[error("--port-base {0} is too high: the quickstart uses five consecutive ports")]
    InvalidPortBase(u16),
    /// A proxy port is taken.
    #[error(
        "port {port} on 127.0.0.1 is already in use (the quickstart uses ports {base}..={last}); \
         stop what uses it or pass another --port-base"
    )]
    PortInUse {
        /// The taken port.
        port: u16,
        /// `--port-base`.
        base: u16,
        /// Last port used.
        last: u16,
    },
    /// Creating the quickstart directory failed.
    #[error("{}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A quickstart file.
    #[error(transparent)]
    File(#[from] FileError),
    /// The throwaway cluster.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Users, databases, grants.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// The proxy certificate.
    #[error("generating the quickstart certificate: {0}")]
    Tls(#[from] crate::auth::tls::TlsError),
    /// A token signing key.
    #[error("generating a token signing key: {0}")]
    Token(#[from] crate::auth::token::TokenError),
    /// The generated config does not load (a bug).
    #[error("the generated configuration is invalid (please report this bug): {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A blocking task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl QuickstartError {
    /// Process exit code: 2 for what the user must fix before starting
    /// (missing PostgreSQL, busy ports, unusable directory), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            QuickstartError::InvalidPortBase(_)
            | QuickstartError::PortInUse { .. }
            | QuickstartError::Dir { .. }
            | QuickstartError::Cluster(
                ClusterError::Binaries(_)
                | ClusterError::NoUnprivilegedUser
                | ClusterError::NotTraversable { .. },
            ) => 2,
            _ => 1,
        }
    }
}

/// Everything up to (not including) serving: directory, secrets, cluster
/// (created or reused, started), users and grants, certificates, token
/// keys, config file, JSON document and banner. Idempotent across restarts:
/// the same directory gives the same passwords.
pub async fn prepare(args: &QuickstartArgs) -> Result<Prepared, QuickstartError> {
    let last = args
        .port_base
        .checked_add(PORTS_USED - 1)
        .ok_or(QuickstartError::InvalidPortBase(args.port_base))?;
    let root = make_root(&args.dir)?;
    let paths = Paths::new(&root);
    clear_json(&paths.json)?;
    check_ports_free(args.port_base, last)?;
    // The cluster first: missing binaries or an unreachable directory fail
    // before anything else is generated.
    let cluster = start_cluster(&paths, args.port_base, last).await?;
    make_secrets_dir(&paths.secrets)?;

    let envs = layout::environments(args.port_base);
    let env_names: Vec<&str> = envs.iter().map(|e| e.name).collect();
    let mut upstream_pw = BTreeMap::new();
    for env in &envs {
        for kind in UpstreamKind::ALL {
            let user = upstream_user(env.name, kind);
            let pw = files::load_or_create_password(&paths.upstream_password(&user))?;
            upstream_pw.insert(user, pw);
        }
    }
    let role_names: Vec<&str> = SEED_ROLES.iter().map(|r| r.name).collect();
    let id_pw =
        files::load_or_create_identity_passwords(&paths.identities, &role_names, &env_names)?;
    let token_keys = token_keys(&paths, &env_names)?;
    let certs = crate::auth::tls::generate_self_signed(&paths.tls, &["localhost", "127.0.0.1"])?;

    let plan: Vec<(EnvPlan, provision::EnvPasswords<'_>)> = envs
        .iter()
        .map(|env| {
            let pw = |k| {
                upstream_pw
                    .get(&upstream_user(env.name, k))
                    .map(String::as_str)
                    .unwrap_or_default()
            };
            let passwords = provision::EnvPasswords {
                owner: pw(UpstreamKind::Owner),
                rw: pw(UpstreamKind::Rw),
                ro: pw(UpstreamKind::Ro),
                monitor: pw(UpstreamKind::Monitor),
            };
            (env.clone(), passwords)
        })
        .collect();
    provision::provision(&cluster, &plan).await?;
    control::provision_control(&cluster, &envs, &paths)
        .await
        .map_err(|e| QuickstartError::Internal(format!("control database: {e}")))?;

    let verifiers = identity_verifiers(id_pw.clone()).await?;
    let text = configgen::render(&configgen::ConfigInputs {
        paths: &paths,
        envs: &envs,
        port_base: args.port_base,
        pg_port: cluster.port,
        tls_cert: &certs.server_cert,
        tls_key: &certs.server_key,
        token_keys: &token_keys,
        verifiers: &verifiers,
    });
    files::write_secret_file(&paths.config, text.as_bytes()).map_err(|source| FileError::Io {
        path: paths.config.clone(),
        source,
    })?;
    crate::config::load(&paths.config)?;

    let json = report::quickstart_json(&envs, args.port_base, &id_pw);
    let banner = report::banner(
        &envs,
        &id_pw,
        &report::BannerInputs {
            dir: &root,
            ca: &certs.ca_cert,
            config: &paths.config,
            json: &paths.json,
            pg_port: cluster.port,
            port_base: args.port_base,
        },
    );
    Ok(Prepared {
        cluster,
        dir: root,
        config_path: paths.config.clone(),
        envs: env_names.iter().map(|s| s.to_string()).collect(),
        json,
        json_path: paths.json.clone(),
        banner,
    })
}

/// Write `quickstart.json` atomically (0600). Call it after the listeners
/// are bound, then report "ready".
pub fn write_ready(p: &Prepared) -> Result<(), QuickstartError> {
    let mut text =
        serde_json::to_vec_pretty(&p.json).map_err(|e| QuickstartError::Internal(e.to_string()))?;
    text.push(b'\n');
    files::write_secret_file(&p.json_path, &text).map_err(|source| FileError::Io {
        path: p.json_path.clone(),
        source,
    })?;
    Ok(())
}

/// Remove `quickstart.json` (on shutdown), so nobody mistakes a stopped
/// quickstart for a ready one.
pub fn clear_ready(p: &Prepared) -> Result<(), QuickstartError> {
    clear_json(&p.json_path)
}

fn clear_json(path: &Path) -> Result<(), QuickstartError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FileError::Io {
            path: path.to_path_buf(),
            source: e,
        }
        .into()),
        _ => Ok(()),
    }
}

/// Create the directory (0700, or 0711 as root so the `postgres` user can
/// reach `pgdata/`); an existing one gets o+x when we are root.
fn make_root(dir: &Path) -> Result<PathBuf, QuickstartError> {
    let err = |source| QuickstartError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let root = nix::unistd::Uid::effective().is_root();
    let existed = dir.exists();
    fs::create_dir_all(dir).map_err(err)?;
    let mode = fs::metadata(dir).map_err(err)?.permissions().mode() & 0o7777;
    let want = match (existed, root) {
        (false, true) => 0o711,
        (false, false) => 0o700,
        (true, true) => mode | 0o001,
        (true, false) => mode,
    };
    if want != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(want)).map_err(err)?;
    }
    fs::canonicalize(dir).map_err(err)
}

fn make_secrets_dir(dir: &Path) -> Result<(), QuickstartError> {
    let err = |source| QuickstartError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)
}

fn check_ports_free(base: u16, last: u16) -> Result<(), QuickstartError> {
    for port in base..=last {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(QuickstartError::PortInUse { port, base, last });
        }
    }
    Ok(())
}

/// Token signing key per environment (`secrets/<env>.token.key`, 0600),
/// created once.
fn token_keys(paths: &Paths, envs: &[&str]) -> Result<BTreeMap<String, PathBuf>, QuickstartError> {
    let mut out = BTreeMap::new();
    for env in envs {
        let path = paths.token_key(env);
        if !path.exists() {
            let key = crate::auth::token::generate_key()?;
            files::write_secret_file(&path, format!("{key}\n").as_bytes()).map_err(|source| {
                FileError::Io {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        out.insert((*env).to_string(), path);
    }
    Ok(out)
}

/// Init or reuse the cluster and start it on the remembered port (another
/// free one when it is taken), outside the async runtime's threads.
async fn start_cluster(paths: &Paths, base: u16, last: u16) -> Result<PgCluster, QuickstartError> {
    let dir = paths.cluster.clone();
    let state_path = paths.state.clone();
    let cluster = tokio::task::spawn_blocking(move || -> Result<PgCluster, QuickstartError> {
        let avoid = |p: u16| p == 0 || (base..=last).contains(&p);
        let pick = || {
            (0..20)
                .map(|_| free_port())
                .find(|p| !avoid(*p))
                .unwrap_or(0)
        };
        let mut state = files::load_state(&state_path);
        let port = state.pg_port.filter(|p| !avoid(*p)).unwrap_or_else(pick);
        let mut cluster = PgCluster::init_or_reuse(&dir, port)?;
        match cluster.start() {
            Err(ClusterError::PortInUse(_)) => {
                cluster.port = pick();
                cluster.start()?;
            }
            other => other?,
        }
        if state.pg_port != Some(cluster.port) {
            state.pg_port = Some(cluster.port);
            files::save_state(&state_path, &state)?;
        }
        Ok(cluster)
    })
    .await
    .map_err(|e| QuickstartError::Internal(e.to_string()))??;
    Ok(cluster)
}

/// SCRAM verifiers of every identity password (CPU-bound: off the runtime).
async fn identity_verifiers(
    passwords: files::IdentityPasswords,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, QuickstartError> {
    tokio::task::spawn_blocking(move || {
        passwords
            .into_iter()
            .map(|(id, per_env)| {
                let vs = per_env
                    .into_iter()
                    .map(|(env, pw)| (env, Verifier::generate(&pw, DEFAULT_ITERATIONS).to_string()))
                    .collect();
                (id, vs)
            })
            .collect()
    })
    .await
    .map_err(|e| QuickstartError::Internal(e.to_string()))
}

#[cfg(test)]
#[path = "prepare_tests.rs"]
mod tests;
