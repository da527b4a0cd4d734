//! Test harness: one throwaway PostgreSQL world per test binary (created by
//! the real quickstart provisioning: a cluster from `initdb`, four
//! environments, per-environment upstream users, six seed identities), and
//! a fresh in-process proxy per test on ephemeral ports.
//!
//! The cluster runs as the `postgres` system user when the tests run as
//! root. A watchdog process stops it and removes its directory when the
//! test process exits, whatever the outcome.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // runs on the tests' runtimes (see clippy.toml)

mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use tierwarden::config::{self, Config};
use tierwarden::quickstart::{prepare, QuickstartArgs};
use tokio_util::sync::CancellationToken;

/// The per-binary world.
pub struct World {
    /// Quickstart directory.
    pub dir: PathBuf,
    /// Generated config file.
    pub config_path: PathBuf,
    /// quickstart.json content.
    pub json: Value,
    /// Cluster port.
    pub pg_port: u16,
    /// Superuser DSN for a database.
    superuser_dsn: String,
    /// CA certificate of the proxy.
    pub ca: PathBuf,
}

static WORLD: OnceLock<World> = OnceLock::new();

fn pick_port_base() -> u16 {
    // Five consecutive free ports (the quickstart checks them; tests
    // override the listen addresses with ephemeral ports anyway).
    for _ in 0..50 {
        let base = 20_000 + (rand_u16() % 30_000);
        if (0..5).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range found")
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    (t ^ std::process::id().wrapping_mul(2_654_435_761)) as u16
}

/// The world of this test binary (created on first use).
pub fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("tierwarden-test-")
            .tempdir_in("/tmp")
            .expect("tempdir")
            .keep();
        let d = dir.clone();
        let prepared = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(prepare(&QuickstartArgs {
                dir: d,
                port_base: pick_port_base(),
            }))
        })
        .join()
        .expect("prepare thread")
        .unwrap_or_else(|e| panic!("quickstart prepare failed: {e}"));
        let pg_port = prepared.cluster.port;
        let data_dir = prepared.cluster.data_dir.clone();
        let pg_ctl = prepared.cluster.binaries.pg_ctl();
        spawn_watchdog(&pg_ctl, &data_dir, &dir);
        let json = prepared.json.clone();
        let w = World {
            config_path: prepared.config_path.clone(),
            superuser_dsn: prepared.cluster.superuser_dsn("postgres"),
            ca: dir.join("tls").join("ca.crt"),
            dir,
            json,
            pg_port,
        };
        // The watchdog owns the cluster's lifetime from here on.
        std::mem::forget(prepared);
        w
    })
}

fn spawn_watchdog(pg_ctl: &Path, data: &Path, dir: &Path) {
    let pid = std::process::id();
    let as_user = if nix::unistd::geteuid().is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {as_user}{} -D '{}' stop -m immediate >/dev/null 2>&1; rm -rf '{}'",
        pg_ctl.display(),
        data.display(),
        dir.display()
    );
    // In its own session (setsid), so a signal to the test's process group
    // (a timeout, Ctrl-C) does not take the watchdog down with the test.
    let _ = std::process::Command::new("setsid")
        .arg("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

impl World {
    /// Password of a seed identity in an environment.
    pub fn password(&self, role: &str, env: &str) -> String {
        self.json["identities"][role]["passwords"][env]
            .as_str()
            .unwrap_or_else(|| panic!("no password for {role}@{env}"))
            .to_string()
    }
    /// User name of a seed identity.
    pub fn user(&self, role: &str) -> String {
        self.json["identities"][role]["user"]
            .as_str()
            .unwrap_or(role)
            .to_string()
    }
    /// Upstream database of an environment.
    pub fn database(&self, env: &str) -> String {
        self.json["environments"][env]["database"]
            .as_str()
            .unwrap_or_else(|| panic!("no database for {env}"))
            .to_string()
    }
    /// The config as generated.
    pub fn config(&self) -> Config {
        config::load(&self.config_path).expect("generated config loads")
    }
    /// Superuser client on a database (bypasses the proxy: for setup and checks).
    pub async fn superuser(&self, db: &str) -> tokio_postgres::Client {
        let dsn = self
            .superuser_dsn
            .replace("dbname=postgres", &format!("dbname={db}"));
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .expect("superuser connects");
        tokio::spawn(conn);
        c
    }
}

/// A proxy running in-process for one test.
pub struct Proxy {
    /// Listener per environment.
    pub addrs: HashMap<String, SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Audit file of this proxy.
    pub audit: PathBuf,
    /// Shared state (sessions, metrics).
    pub shared: Arc<tierwarden::shared::Shared>,
    stop: CancellationToken,
    done: Option<tokio::task::JoinHandle<()>>,
}

/// Start a proxy over the world with ephemeral ports and its own audit
/// file; `edit` may change the configuration first.
pub async fn start_proxy(edit: impl FnOnce(&mut Config)) -> Proxy {
    start_proxy_at(&world().config_path, edit).await
}

/// Like [`start_proxy`], but from the config file at `path` (which also
/// becomes the proxy's `config_path`, the file `serve::reload` reads): use
/// a copy of the world's config when a test rewrites it.
pub async fn start_proxy_at(path: &Path, edit: impl FnOnce(&mut Config)) -> Proxy {
    launch(path, edit, 1).await
}

/// Like [`start_proxy`], on a runtime of `threads` worker threads (the
/// multi-threaded scheduler from two on), as `serve` runs with
/// `[proxy] worker_threads` on a larger machine.
pub async fn start_proxy_on_threads(threads: usize, edit: impl FnOnce(&mut Config)) -> Proxy {
    launch(&world().config_path, edit, threads).await
}

async fn launch(path: &Path, edit: impl FnOnce(&mut Config), threads: usize) -> Proxy {
    let w = world();
    let mut cfg = config::load(path).expect("config loads");
    for e in cfg.environments.values_mut() {
        e.listen = "127.0.0.1:0".into();
    }
    cfg.admin.listen = Some("127.0.0.1:0".into());
    let audit = w.dir.join(format!("audit-{}.jsonl", unique()));
    if let Some(a) = cfg.audit.as_mut() {
        a.path = audit.clone();
        a.flush_interval_ms = 20;
    }
    edit(&mut cfg);
    let envs: Vec<String> = cfg.environments.keys().cloned().collect();
    // As under `tierwarden serve`: the proxy runs on a runtime of its own
    // without a time driver (its deadlines live on the timer thread,
    // src/timers.rs), so a timer armed the wrong way fails the test.
    let stop = CancellationToken::new();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (path, s) = (path.to_path_buf(), stop.clone());
    // A test that captures the proxy's log installs its subscriber on its
    // own thread: the proxy thread logs to the same one.
    let log = tracing::dispatcher::get_default(|d| d.clone());
    let thread = std::thread::Builder::new()
        .name("proxy-under-test".into())
        .spawn(move || {
            let _log = tracing::dispatcher::set_default(&log);
            let rt = tierwarden::cli::session_runtime(threads).expect("proxy runtime");
            rt.block_on(async move {
                let server = match tierwarden::serve::start(cfg, &path, envs).await {
                    Ok(server) => server,
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let info = (
                    server.addrs.iter().cloned().collect::<HashMap<_, _>>(),
                    server.admin,
                    Arc::clone(&server.shared),
                );
                let _ = started_tx.send(Ok(info));
                server.serve_until(s).await
            })
        })
        .expect("proxy thread");
    let (addrs, admin, shared) = match started.await.expect("proxy thread answers") {
        Ok(info) => info,
        Err(e) => panic!("proxy starts: {e}"),
    };
    let done = tokio::task::spawn_blocking(move || {
        let _ = thread.join();
    });
    Proxy {
        addrs,
        admin: admin.expect("admin listener"),
        audit,
        shared,
        stop,
        done: Some(done),
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1_000_000 + u64::from(rand_u16())
}

impl Proxy {
    /// libpq-style connection string for `role@env` (plaintext).
    pub fn dsn(&self, role: &str, env: &str) -> String {
        let w = world();
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=disable connect_timeout=10",
            self.addrs[env].port(),
            w.user(role),
            w.password(role, env),
            w.database(env)
        )
    }
    /// postgres:// URL for psql/pgbench, with TLS verified against the quickstart CA.
    pub fn url_tls(&self, role: &str, env: &str) -> String {
        let w = world();
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}?sslmode=verify-full&sslrootcert={}",
            w.user(role),
            w.password(role, env),
            self.addrs[env].port(),
            w.database(env),
            w.ca.display()
        )
    }
    /// Connect `role@env` with tokio-postgres; TLS (verify-full) for production.
    pub async fn connect(
        &self,
        role: &str,
        env: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        if env == "prod" {
            return self
                .connect_tls(role, env, &world().password(role, env))
                .await;
        }
        let (c, conn) =
            tokio_postgres::connect(&self.dsn(role, env), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(c)
    }
    /// Connect `role@env` (plaintext) with `application_name` = `app`.
    pub async fn connect_as_app(
        &self,
        role: &str,
        env: &str,
        app: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let dsn = format!("{} application_name={app}", self.dsn(role, env));
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(c)
    }
    /// Open a session of `role@env` with `application_name` = `app`, note
    /// its upstream backend pid, and end it (cleanly: it may be pooled).
    pub async fn used_backend(&self, role: &str, env: &str, app: &str) -> i32 {
        let c = self.connect_as_app(role, env, app).await.expect("connects");
        backend_pid(&c).await
    }
    /// Client settings for `role@env` with `password` (TLS mode not set).
    fn client_config(&self, role: &str, env: &str, password: &str) -> tokio_postgres::Config {
        let w = world();
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.addrs[env].port())
            .user(w.user(role))
            .password(password)
            .dbname(w.database(env))
            .connect_timeout(std::time::Duration::from_secs(10));
        cfg
    }
    /// Connect with TLS and an explicit password (or token).
    pub async fn connect_tls(
        &self,
        role: &str,
        env: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut cfg = self.client_config(role, env, password);
        cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
        let (c, conn) = cfg.connect(tls_connector()).await?;
        tokio::spawn(conn);
        Ok(c)
    }
    /// Connect `role@env` with `password` (TLS for prod) and keep the
    /// connection task's result: a FATAL the proxy sends while the client
    /// is idle ends that task with the server's error.
    pub async fn connect_watched(
        &self,
        role: &str,
        env: &str,
        password: &str,
    ) -> Result<(tokio_postgres::Client, Watched), tokio_postgres::Error> {
        let mut cfg = self.client_config(role, env, password);
        if env == "prod" {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (c, conn) = cfg.connect(tls_connector()).await?;
            Ok((c, tokio::spawn(conn)))
        } else {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (c, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            Ok((c, tokio::spawn(conn)))
        }
    }
    /// GET an admin path; returns (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin");
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }
    /// Stop the proxy and wait for it (dropping a `Proxy` stops it without
    /// waiting).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(d) = self.done.take() {
            let _ = d.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The connection task of [`Proxy::connect_watched`].
pub type Watched = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

/// Waits (at most `secs`) for a watched connection to end; returns the
/// error that ended it (panics if it ended cleanly or did not end).
pub async fn ended_with(conn: Watched, secs: u64) -> tokio_postgres::Error {
    match tokio::time::timeout(std::time::Duration::from_secs(secs), conn).await {
        Ok(Ok(Err(e))) => e,
        Ok(Ok(Ok(()))) => panic!("connection ended without an error"),
        Ok(Err(e)) => panic!("connection task failed: {e}"),
        Err(_) => panic!("connection still open after {secs}s"),
    }
}

/// A rustls connector trusting the quickstart CA.
pub fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    tls::connector_trusting(&world().ca)
}

/// Whether an error is a tierwarden policy denial.
pub fn is_denial(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .map(|d| d.code().code() == "42501" && d.message().starts_with("tierwarden: denied"))
        .unwrap_or(false)
}

/// SQLSTATE of an error ("" when not a server error).
pub fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_default()
}

/// Run a command (without blocking the runtime that serves the proxy)
/// and return (exit code, stdout, stderr).
pub async fn run(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Connect expecting a failure; returns the error.
pub async fn connect_err(dsn: &str, what: &str) -> tokio_postgres::Error {
    match tokio_postgres::connect(dsn, tokio_postgres::NoTls).await {
        Ok(_) => panic!("{what}: connection unexpectedly succeeded"),
        Err(e) => e,
    }
}

/// The upstream backend pid of a session (`pg_backend_pid()`).
pub async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// Whether PostgreSQL has no backend with this pid, within 10 s.
pub async fn backend_gone(pid: i32) -> bool {
    let su = world().superuser("postgres").await;
    for _ in 0..200 {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == 0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}
