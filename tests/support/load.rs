//! A load client for soak runs, shared by `examples/soak.rs` (the
//! 1,000-session soak of `scripts/soak.sh`) and `tests/soak.rs` (the short
//! CI version): many concurrent tokio-postgres sessions spread over every
//! role/environment pair whose level is not `none`, each running, in a
//! loop, statements the matrix allows (which must succeed) and statements
//! it forbids (which must be denied with 42501 `tierwarden: denied`), in
//! both the simple and the extended protocol. It counts every outcome and
//! samples the proxy's RSS and open file descriptors from /proc during the
//! run. Loopback only; every loop is bounded by the run's deadline.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // a client on its own runtime, with timers (see clippy.toml)

#[path = "tls.rs"]
mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tierwarden::policy::{Level, Tier};

/// One role@env pair the load client may use.
#[derive(Debug, Clone)]
pub struct Target {
    /// Role (and identity: the quickstart names identities like roles).
    pub role: String,
    /// Environment name.
    pub env: String,
    /// The role's level there.
    pub level: Level,
    /// The environment's tier.
    pub tier: Tier,
    /// Proxy port of the environment.
    pub port: u16,
    /// Identity user name.
    pub user: String,
    /// Its password in this environment.
    pub password: String,
    /// Database name the client asks for.
    pub database: String,
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Concurrent sessions.
    pub sessions: usize,
    /// Warm-up once every session is connected (statements run and are
    /// counted; resources are not sampled: per-session buffers are still
    /// being touched for the first time).
    pub warmup: Duration,
    /// Measured run time after the warm-up.
    pub duration: Duration,
    /// Pause between two statements of one session.
    pub think: Duration,
    /// Connections opened at once while ramping up.
    pub ramp_parallel: usize,
    /// CA certificate for TLS environments (production tier).
    pub ca: PathBuf,
    /// Process to sample (RSS, fds); None = this process.
    pub pid: Option<u32>,
}

/// Outcome counters and resource samples.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub sessions: usize,
    pub connect_failures: u64,
    pub statements: u64,
    pub allowed_ok: u64,
    pub denied_ok: u64,
    pub unexpected_errors: u64,
    pub denied_legitimate: u64,
    pub allowed_forbidden: u64,
    /// Max RSS (KiB) in the first and the last quarter of the samples.
    pub rss_first_kib: u64,
    pub rss_last_kib: u64,
    /// Max open fds in the first and the last quarter of the samples.
    pub fds_first: u64,
    pub fds_last: u64,
    pub samples: usize,
    pub seconds: f64,
    /// (seconds since the start of the measured run, RSS KiB, fds) every 10 s.
    pub series: Vec<(u64, u64, u64)>,
    /// A few examples of what went wrong.
    pub examples: Vec<String>,
}

impl Report {
    /// Whether nothing unexpected happened and resources did not grow
    /// (RSS by more than 10 % + 16 MiB, fds by more than 16).
    pub fn clean(&self) -> bool {
        self.connect_failures == 0
            && self.unexpected_errors == 0
            && self.denied_legitimate == 0
            && self.allowed_forbidden == 0
            && self.statements > 0
            && self.rss_last_kib <= self.rss_first_kib + self.rss_first_kib / 10 + 16 * 1024
            && self.fds_last <= self.fds_first + 16
    }

    /// One JSON object with every figure.
    pub fn json(&self) -> String {
        serde_json::json!({
            "sessions": self.sessions,
            "seconds": self.seconds,
            "statements": self.statements,
            "allowed_ok": self.allowed_ok,
            "denied_ok": self.denied_ok,
            "connect_failures": self.connect_failures,
            "unexpected_errors": self.unexpected_errors,
            "denied_legitimate": self.denied_legitimate,
            "allowed_forbidden": self.allowed_forbidden,
            "rss_first_kib": self.rss_first_kib,
            "rss_last_kib": self.rss_last_kib,
            "fds_first": self.fds_first,
            "fds_last": self.fds_last,
            "samples": self.samples,
            "series_s_rss_kib_fds": self.series,
            "clean": self.clean(),
        })
        .to_string()
    }
}

/// Every pair of the quickstart's `quickstart.json` + config whose level is
/// not `none`.
pub fn targets(json: &serde_json::Value, config: &tierwarden::config::Config) -> Vec<Target> {
    let mut out = Vec::new();
    let Some(ids) = json["identities"].as_object() else {
        return out;
    };
    for (role, id) in ids {
        for (env, e) in &config.environments {
            let level = config
                .roles
                .get(role)
                .map(|r| r.level_in(env))
                .unwrap_or(Level::None);
            let Some(password) = id["passwords"][env.as_str()].as_str() else {
                continue;
            };
            if level == Level::None {
                continue;
            }
            out.push(Target {
                role: role.clone(),
                env: env.clone(),
                level,
                tier: e.tier,
                port: json["environments"][env.as_str()]["port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
                user: id["user"].as_str().unwrap_or(role).to_string(),
                password: password.to_string(),
                database: e.upstream.database.clone(),
            });
        }
    }
    out.sort_by(|a, b| (&a.env, &a.role).cmp(&(&b.env, &b.role)));
    out
}

const READ: &str = "SELECT count(*) FROM accounts";
const WRITE: &str = "UPDATE accounts SET name = name WHERE id = -1";
const DDL: &str = "CREATE TABLE IF NOT EXISTS soak_never_created(a int)";
const PRIVILEGED: &str = "DO $$ BEGIN END $$";

/// (statement, must be allowed) for a step of a session at `t`.
fn step(t: &Target, i: u64) -> (&'static str, bool) {
    let writes = t.level == Level::Rw;
    let prod = t.tier == Tier::Production;
    match i % 4 {
        0 => (READ, true),
        1 if writes => (WRITE, true),
        1 => (WRITE, false),
        2 if writes && prod => (DDL, false),
        2 => ("BEGIN; SELECT 1; COMMIT", true),
        _ => (PRIVILEGED, false),
    }
}

#[derive(Default)]
struct Counters {
    connect_failures: AtomicU64,
    statements: AtomicU64,
    allowed_ok: AtomicU64,
    denied_ok: AtomicU64,
    unexpected: AtomicU64,
    denied_legit: AtomicU64,
    allowed_forbidden: AtomicU64,
    examples: std::sync::Mutex<Vec<String>>,
}

impl Counters {
    fn example(&self, what: String) {
        if let Ok(mut e) = self.examples.lock() {
            if e.len() < 10 {
                e.push(what);
            }
        }
    }
}

fn is_denial(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .map(|d| d.code().code() == "42501" && d.message().starts_with("tierwarden: denied"))
        .unwrap_or(false)
}

/// RSS (KiB) and open fds of `pid` (None: this process).
pub fn sample(pid: Option<u32>) -> (u64, u64) {
    let base = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let rss = std::fs::read_to_string(format!("{base}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("{base}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

async fn connect(
    t: &Target,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(t.port)
        .user(&t.user)
        .password(&t.password)
        .dbname(&t.database)
        .connect_timeout(Duration::from_secs(30));
    if t.tier == Tier::Production {
        cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
        let (c, conn) = cfg.connect(tls.clone()).await?;
        tokio::spawn(conn);
        Ok(c)
    } else {
        cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (c, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(c)
    }
}

async fn session(
    t: Target,
    client: tokio_postgres::Client,
    deadline: Instant,
    think: Duration,
    n: &Counters,
    offset: u64,
) {
    let mut i = offset;
    // Spread the sessions over the think time instead of bursting together.
    tokio::time::sleep(think.mul_f64((offset % 100) as f64 / 100.0)).await;
    while Instant::now() < deadline {
        let (sql, allowed) = step(&t, i);
        // Reads alternate between the extended and the simple protocol.
        let r = if sql == READ && i % 8 == 0 {
            client.query(READ, &[]).await.map(|_| ())
        } else {
            client.batch_execute(sql).await
        };
        n.statements.fetch_add(1, Ordering::Relaxed);
        match (r, allowed) {
            (Ok(()), true) => {
                n.allowed_ok.fetch_add(1, Ordering::Relaxed);
            }
            (Err(e), false) if is_denial(&e) => {
                n.denied_ok.fetch_add(1, Ordering::Relaxed);
            }
            (Ok(()), false) => {
                n.allowed_forbidden.fetch_add(1, Ordering::Relaxed);
                n.example(format!("{}@{}: allowed {sql:?}", t.role, t.env));
            }
            (Err(e), true) if is_denial(&e) => {
                n.denied_legit.fetch_add(1, Ordering::Relaxed);
                n.example(format!("{}@{}: denied {sql:?}: {e}", t.role, t.env));
            }
            (Err(e), _) => {
                n.unexpected.fetch_add(1, Ordering::Relaxed);
                n.example(format!("{}@{}: {sql:?}: {e:?}", t.role, t.env));
                if client.is_closed() {
                    return;
                }
            }
        }
        i += 1;
        tokio::time::sleep(think).await;
    }
}

/// Run the load: connect `cfg.sessions` sessions round-robin over
/// `targets`, run them for `cfg.duration`, sample resources every second.
pub async fn run(targets: &[Target], cfg: &LoadConfig) -> Report {
    assert!(!targets.is_empty(), "no role/environment pair to load");
    let tls = tls::connector_trusting(&cfg.ca);
    let n = Arc::new(Counters::default());
    // Ramp up: every session connects before the measured run starts.
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.ramp_parallel.max(1)));
    let mut pending = Vec::with_capacity(cfg.sessions);
    for k in 0..cfg.sessions {
        let t = targets[k % targets.len()].clone();
        let (tls, slots, n) = (tls.clone(), Arc::clone(&slots), Arc::clone(&n));
        pending.push(tokio::spawn(async move {
            let _permit = slots.acquire_owned().await.ok()?;
            match connect(&t, &tls).await {
                Ok(c) => Some((t, c)),
                Err(e) => {
                    n.connect_failures.fetch_add(1, Ordering::Relaxed);
                    n.example(format!("{}@{}: connect: {e:?}", t.role, t.env));
                    None
                }
            }
        }));
    }
    let mut clients = Vec::new();
    for p in pending {
        if let Ok(Some(c)) = p.await {
            clients.push(c);
        }
    }
    let started = Instant::now() + cfg.warmup;
    let deadline = started + cfg.duration;
    let mut tasks = Vec::new();
    for (k, (t, c)) in clients.into_iter().enumerate() {
        let n = Arc::clone(&n);
        let think = cfg.think;
        tasks.push(tokio::spawn(async move {
            session(t, c, deadline, think, &n, k as u64).await;
        }));
    }
    tokio::time::sleep(cfg.warmup).await;
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        samples.push(sample(cfg.pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples.push(sample(cfg.pid));
    for t in tasks {
        let _ = t.await;
    }
    let series = samples
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 0 || *i == samples.len() - 1)
        .map(|(i, s)| (i as u64, s.0, s.1))
        .collect();
    let quarter = (samples.len() / 4).max(1);
    let first = &samples[..quarter];
    let last = &samples[samples.len() - quarter..];
    let max = |s: &[(u64, u64)], f: fn(&(u64, u64)) -> u64| s.iter().map(f).max().unwrap_or(0);
    Report {
        sessions: cfg.sessions,
        connect_failures: n.connect_failures.load(Ordering::Relaxed),
        statements: n.statements.load(Ordering::Relaxed),
        allowed_ok: n.allowed_ok.load(Ordering::Relaxed),
        denied_ok: n.denied_ok.load(Ordering::Relaxed),
        unexpected_errors: n.unexpected.load(Ordering::Relaxed),
        denied_legitimate: n.denied_legit.load(Ordering::Relaxed),
        allowed_forbidden: n.allowed_forbidden.load(Ordering::Relaxed),
        rss_first_kib: max(first, |s| s.0),
        rss_last_kib: max(last, |s| s.0),
        fds_first: max(first, |s| s.1),
        fds_last: max(last, |s| s.1),
        samples: samples.len(),
        seconds: started.elapsed().as_secs_f64(),
        series,
        examples: n.examples.lock().map(|e| e.clone()).unwrap_or_default(),
    }
}
