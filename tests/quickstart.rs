//! End to end: the real `tierwarden quickstart` binary on a temporary
//! directory. Waits for `quickstart.json`, connects to every listed URL with
//! tokio-postgres (TLS with the quickstart CA where the tier requires it,
//! plus psql `sslmode=verify-full` when psql is installed), stops it with
//! SIGTERM and checks that no postgres process of that directory remains;
//! then starts it again on the same directory and checks that the
//! passwords are the same and it becomes ready again.
//!
//! Needs the PostgreSQL server binaries (the quickstart finds them). Linux
//! only (process checks read /proc).
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `tierwarden quickstart`; on drop (a failed test) it is stopped
/// and any postmaster of its directory is shut down, so nothing leaks.
pub struct Quickstart {
    child: Option<Child>,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Quickstart {
    pub fn start(dir: &Path, port_base: u16, run: u32) -> Quickstart {
        let log = dir.with_file_name(format!("quickstart-run{run}.log"));
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tierwarden"))
            .arg("quickstart")
            .arg("--dir")
            .arg(dir)
            .arg("--port-base")
            .arg(port_base.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        Quickstart {
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
        }
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Bounded wait for `quickstart.json`; fails early if the process exits.
    pub fn wait_ready(&mut self) -> Value {
        let json = self.dir.join("quickstart.json");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(raw) = fs::read(&json) {
                return serde_json::from_slice(&raw)
                    .unwrap_or_else(|e| panic!("quickstart.json is not JSON: {e}"));
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("quickstart exited early ({status}):\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "no quickstart.json after {READY_TIMEOUT:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, then a bounded wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no exit {EXIT_TIMEOUT:?} after SIGTERM:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.terminate()));
        }
        // Last resort: a postmaster of this directory left behind is shut down (fast).
        for pid in postgres_pids_for(&self.dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
    }
}

/// Pids of postgres processes whose command line mentions `dir`.
pub fn postgres_pids_for(dir: &Path) -> Vec<i32> {
    let needle = fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .to_string_lossy()
        .into_owned();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        let program = cmdline.split(' ').next().unwrap_or("");
        if program.ends_with("postgres") && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Bounded wait until no postgres process of `dir` remains.
pub fn assert_no_postgres_left(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = postgres_pids_for(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "postgres processes left for {}: {left:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A base with five consecutive free ports on 127.0.0.1.
pub fn free_port_base() -> u16 {
    for _ in 0..100 {
        let base = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !(1024..=65000).contains(&base) {
            continue;
        }
        if (base..base + 5).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no five consecutive free ports");
}

/// Checks the §9 shape and returns (env name → tier).
pub fn check_contract(json: &Value, port_base: u16) -> Vec<(String, String)> {
    let envs = json["environments"].as_object().expect("environments");
    let expected = [
        ("dev", "development", 0, "app_dev"),
        ("test", "testing", 1, "app_test"),
        ("stage", "staging", 2, "app_stage"),
        ("prod", "production", 3, "app_prod"),
    ];
    assert_eq!(envs.len(), 4);
    for (name, tier, offset, db) in expected {
        let e = &envs[name];
        assert_eq!(e["port"], port_base + offset, "{name}");
        assert_eq!(e["tier"], tier, "{name}");
        assert_eq!(e["database"], db, "{name}");
    }
    assert_eq!(
        json["admin_url"],
        format!("http://127.0.0.1:{}", port_base + 4)
    );
    let identities = json["identities"].as_object().expect("identities");
    for role in [
        "dev_user",
        "test_runner",
        "ci_migrator",
        "app_runtime",
        "auditor",
        "human_admin",
    ] {
        let id = &identities[role];
        assert!(id["user"].is_string(), "{role}");
        for env in ["dev", "test", "stage", "prod"] {
            assert!(id["passwords"][env].is_string(), "{role}@{env}");
        }
    }
    // Default matrix: 24 pairs minus dev_user x3 and test_runner x2 at `none`.
    let urls = json["urls"].as_object().expect("urls");
    assert_eq!(urls.len(), 19, "{:?}", urls.keys().collect::<Vec<_>>());
    assert!(!urls.contains_key("dev_user@prod"));
    expected
        .iter()
        .map(|(n, t, _, _)| (n.to_string(), t.to_string()))
        .collect()
}

async fn connect(
    url: &str,
    tls: Option<&tls::MakeRustls>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::from_str(url)?;
    config.connect_timeout(Duration::from_secs(20));
    match tls {
        Some(tls) => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, conn) = config.connect(tls.clone()).await?;
            tokio::spawn(conn);
            Ok(client)
        }
        None => {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok(client)
        }
    }
}

/// `select 1` through every URL; production URLs over verified TLS.
pub async fn select_one_everywhere(json: &Value, ca: &Path) {
    let tls = tls::MakeRustls::new(ca);
    let tiers: Vec<(String, String)> = json["environments"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["tier"].as_str().unwrap().to_string()))
        .collect();
    for (key, url) in json["urls"].as_object().unwrap() {
        let env = key.split('@').nth(1).unwrap();
        let production = tiers.iter().any(|(n, t)| n == env && t == "production");
        let client = connect(url.as_str().unwrap(), production.then_some(&tls))
            .await
            .unwrap_or_else(|e| panic!("{key}: connect: {e:?}"));
        let one: i32 = client
            .query_one("select 1", &[])
            .await
            .unwrap_or_else(|e| panic!("{key}: select 1: {e:?}"))
            .get(0);
        assert_eq!(one, 1, "{key}");
    }
    // A valid password never opens an environment where the level is `none`.
    let pw = json["identities"]["dev_user"]["passwords"]["prod"]
        .as_str()
        .unwrap();
    let port = json["environments"]["prod"]["port"].as_u64().unwrap();
    let url = format!("postgres://dev_user:{pw}@127.0.0.1:{port}/app_prod");
    assert!(
        connect(&url, Some(&tls)).await.is_err(),
        "dev_user must not open prod"
    );
}

/// psql with sslmode=verify-full against the CA, as the banner suggests.
pub fn psql_verify_full(json: &Value, ca: &Path) {
    let Ok(out) = Command::new("psql").arg("--version").output() else {
        eprintln!("psql not installed: skipping the verify-full check");
        return;
    };
    assert!(out.status.success());
    let pw = json["identities"]["auditor"]["passwords"]["prod"]
        .as_str()
        .unwrap();
    let port = json["environments"]["prod"]["port"].as_u64().unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={port} dbname=app_prod user=auditor password={pw} \
         sslmode=verify-full sslrootcert={} connect_timeout=20",
        ca.display()
    );
    let out = Command::new("psql")
        .args([&conninfo, "-XAtc", "select 1"])
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql verify-full failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_every_url_stops_cleanly_and_restarts() {
    let tmp = tempfile::Builder::new()
        .prefix("tw-quickstart-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path().join("qs");
    let port_base = free_port_base();

    let mut qs = Quickstart::start(&dir, port_base, 1);
    let json = qs.wait_ready();
    check_contract(&json, port_base);
    let ca = dir.join("tls").join("ca.crt");
    assert!(ca.exists(), "CA certificate at {}", ca.display());
    select_one_everywhere(&json, &ca).await;
    psql_verify_full(&json, &ca);

    let status = qs.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        qs.output()
    );
    assert_no_postgres_left(&dir);
    drop(qs);

    // Restart on the same directory: ready again, same passwords.
    let _ = fs::remove_file(dir.join("quickstart.json"));
    let mut qs = Quickstart::start(&dir, port_base, 2);
    let again = qs.wait_ready();
    assert_eq!(again["identities"], json["identities"], "passwords changed");
    assert_eq!(again["urls"], json["urls"]);
    select_one_everywhere(&again, &ca).await;
    let status = qs.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        qs.output()
    );
    assert_no_postgres_left(&dir);
}

/// tokio-postgres over rustls (ring), trusting only the quickstart CA, with
/// `tls-server-end-point` channel binding as libpq does.
pub mod tls {
    use std::future::Future;
    use std::io;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls_pki_types::pem::PemObject;
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

    #[derive(Clone)]
    pub struct MakeRustls(Arc<rustls::ClientConfig>);

    impl MakeRustls {
        pub fn new(ca: &Path) -> MakeRustls {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"postgresql".to_vec()];
            MakeRustls(Arc::new(config))
        }
    }

    pub struct Connect {
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    }

    impl<S> MakeTlsConnect<S> for MakeRustls
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = Stream<S>;
        type TlsConnect = Connect;
        type Error = io::Error;

        fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
            let name = ServerName::try_from(domain.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(Connect {
                config: self.0.clone(),
                name,
            })
        }
    }

    impl<S> TlsConnect<S> for Connect
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        type Stream = Stream<S>;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

        fn connect(self, stream: S) -> Self::Future {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            Box::pin(async move {
                let tls = connector.connect(self.name, stream).await?;
                Ok(Stream(tls))
            })
        }
    }

    pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

    impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
        fn channel_binding(&self) -> ChannelBinding {
            // The quickstart's certificates are ECDSA P-256/SHA-256:
            // tls-server-end-point hashes the leaf with SHA-256.
            match self.0.get_ref().1.peer_certificates() {
                Some([leaf, ..]) => {
                    ChannelBinding::tls_server_end_point(Sha256::digest(leaf.as_ref()).to_vec())
                }
                _ => ChannelBinding::none(),
            }
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}
