//! Observability end to end (SPEC §5) through the real proxy against the real
//! PostgreSQL of the quickstart world: slow queries (counter + one structured
//! log event), lock waits (gauge up and back, one episode, its length), lock
//! errors (55P03, 40P01), migration outcomes of `ci_migrator`, one connection
//! spike from a bounded burst, `/readyz` with reachable and unreachable
//! upstreams, and that `/metrics` never carries an identity or statement text.
//!
//! Metrics are read from `/metrics` only (the scraped text is the contract),
//! polled in bounded loops because sessions record after the client already
//! has its answer and the lock monitor samples every `lock_poll_ms`.
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{backend_pid, code, start_proxy, world, Proxy};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// Safety net of every polling loop (never an assertion on time).
const POLL_LIMIT: Duration = Duration::from_secs(20);

/// Sum of the samples `name{labels ⊇ want}` in an exposition; `None` when no
/// sample matches.
fn sample(body: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let have: BTreeMap<&str, &str> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if want.iter().all(|(k, v)| have.get(k) == Some(v)) {
            let v: f64 = value.parse().expect("numeric sample");
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

async fn metrics(p: &Proxy) -> String {
    let (status, body) = p.http_get("/metrics").await;
    assert_eq!(status, 200, "/metrics answers");
    body
}

/// Poll `/metrics` until `name{want}` satisfies `ok`; returns the value.
async fn wait_for(
    p: &Proxy,
    name: &str,
    want: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
    what: &str,
) -> f64 {
    let deadline = Instant::now() + POLL_LIMIT;
    loop {
        let body = metrics(p).await;
        if let Some(v) = sample(&body, name, want).filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {name}{want:?} never satisfied; last value {:?}",
            sample(&body, name, want)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn value(p: &Proxy, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    sample(&metrics(p).await, name, want)
}

/// In-memory JSON log of the `tierwarden` targets, installed as the thread's
/// default subscriber: `start_proxy` gives the proxy's thread the same one,
/// so other tests' events never land here.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let filter = tracing_subscriber::filter::Targets::new()
            .with_target("tierwarden", tracing::Level::INFO);
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(self.clone());
        let sub = tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(layer, filter));
        tracing::subscriber::set_default(sub)
    }

    /// Every captured event of `target`.
    fn events(&self, target: &str) -> Vec<Value> {
        let buf = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&buf)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == target)
            .collect()
    }
}

fn fast_lock_poll(cfg: &mut tierwarden::config::Config) {
    for e in cfg.environments.values_mut() {
        e.lock_poll_ms = 100;
    }
}

#[tokio::test]
async fn slow_query_counts_and_logs_one_event() {
    let logs = Capture::default();
    let _guard = logs.install();
    let p = start_proxy(|_| {}).await;
    let who = [("env", "dev"), ("role", "auditor")];
    // Registered at startup, so the first slow query is an increase from 0.
    assert_eq!(
        value(&p, "tierwarden_slow_queries_total", &who).await,
        Some(0.0)
    );
    let c = p.connect("auditor", "dev").await.expect("auditor@dev");
    let pid = backend_pid(&c).await;
    c.simple_query("SELECT pg_sleep(0.2) AS slow_probe_obs1")
        .await
        .expect("slow query");
    c.simple_query("SELECT 1 AS fast_probe_obs1")
        .await
        .expect("fast query");
    // Both read statements recorded; only the slow one counted as slow.
    wait_for(
        &p,
        "tierwarden_query_duration_seconds_count",
        &[("env", "dev"), ("role", "auditor"), ("class", "read")],
        |v| v >= 3.0,
        "three reads recorded",
    )
    .await;
    assert_eq!(
        value(&p, "tierwarden_slow_queries_total", &who).await,
        Some(1.0)
    );
    let slow = logs.events("tierwarden::slow_query");
    assert_eq!(slow.len(), 1, "exactly one slow-query event: {slow:?}");
    let f = &slow[0]["fields"];
    assert_eq!(f["env"], "dev");
    assert_eq!(f["role"], "auditor");
    assert_eq!(f["identity"], world().user("auditor"));
    assert_eq!(f["backend_pid"], pid);
    assert!(f["duration_ms"].as_f64().expect("duration_ms") >= 200.0);
    let fp = f["fingerprint"].as_str().expect("fingerprint");
    assert!(
        fp.contains("slow_probe_obs1") && !fp.contains("0.2"),
        "fingerprint keeps the shape, drops literals: {fp}"
    );
    p.stop().await;
}

#[tokio::test]
async fn row_lock_wait_moves_the_gauge_and_counts_one_episode() {
    // The quickstart gives every env a pg_monitor login for the monitor;
    // without it the owner's wait events would be invisible to it.
    let users = &world().config().environments["dev"].upstream.users;
    assert_eq!(users["monitor"].user, "tw_dev_monitor");
    let p = start_proxy(fast_lock_poll).await;
    let holder = p.connect("app_runtime", "dev").await.expect("holder");
    holder
        .batch_execute(
            "CREATE TABLE obs_lockwait (id int PRIMARY KEY, v int); \
             INSERT INTO obs_lockwait VALUES (1, 0)",
        )
        .await
        .expect("setup");
    let waiter = p.connect("test_runner", "dev").await.expect("waiter");
    let who = [("env", "dev"), ("role", "test_runner")];
    assert_eq!(
        value(&p, "tierwarden_lock_waiting_sessions", &who).await,
        Some(0.0)
    );
    holder
        .batch_execute("BEGIN; UPDATE obs_lockwait SET v = 1 WHERE id = 1")
        .await
        .expect("lock taken");
    let blocked = tokio::spawn(async move {
        waiter
            .batch_execute("UPDATE obs_lockwait SET v = 2 WHERE id = 1")
            .await
    });
    wait_for(
        &p,
        "tierwarden_lock_waiting_sessions",
        &who,
        |v| v == 1.0,
        "waiter seen",
    )
    .await;
    // The holder itself never waits.
    assert_eq!(
        value(
            &p,
            "tierwarden_lock_waiting_sessions",
            &[("env", "dev"), ("role", "app_runtime")]
        )
        .await,
        Some(0.0)
    );
    holder.batch_execute("COMMIT").await.expect("commit");
    blocked
        .await
        .expect("task")
        .expect("waiter proceeds after commit");
    wait_for(
        &p,
        "tierwarden_lock_waiting_sessions",
        &who,
        |v| v == 0.0,
        "gauge back to 0",
    )
    .await;
    wait_for(
        &p,
        "tierwarden_lock_wait_seconds_count",
        &who,
        |v| v == 1.0,
        "episode length observed",
    )
    .await;
    let body = metrics(&p).await;
    assert_eq!(
        sample(&body, "tierwarden_lock_waits_total", &who),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "tierwarden_lock_waits_total", &[("env", "dev")]),
        Some(1.0),
        "one episode in the whole env"
    );
    p.stop().await;
}

#[tokio::test]
async fn lock_timeout_and_deadlock_are_counted() {
    let p = start_proxy(|_| {}).await;
    let a = Arc::new(p.connect("app_runtime", "dev").await.expect("a"));
    a.batch_execute(
        "CREATE TABLE obs_lockerr (id int PRIMARY KEY, v int); \
         INSERT INTO obs_lockerr VALUES (1, 0), (2, 0)",
    )
    .await
    .expect("setup");
    let b = p.connect("test_runner", "dev").await.expect("b");
    a.batch_execute("BEGIN; UPDATE obs_lockerr SET v = 1 WHERE id = 1")
        .await
        .expect("a locks row 1");
    let e = b
        .batch_execute("SET lock_timeout = '50ms'; UPDATE obs_lockerr SET v = 2 WHERE id = 1")
        .await
        .expect_err("lock timeout");
    assert_eq!(code(&e), "55P03");
    wait_for(
        &p,
        "tierwarden_lock_errors_total",
        &[
            ("env", "dev"),
            ("role", "test_runner"),
            ("code", "lock_not_available"),
        ],
        |v| v == 1.0,
        "lock timeout counted",
    )
    .await;
    // Deadlock: b holds row 2 and wants row 1; a holds row 1 and wants row 2.
    b.batch_execute("RESET lock_timeout; BEGIN; UPDATE obs_lockerr SET v = 2 WHERE id = 2")
        .await
        .expect("b locks row 2");
    let a2 = Arc::clone(&a);
    let a_wants_2 = tokio::spawn(async move {
        a2.batch_execute("UPDATE obs_lockerr SET v = 1 WHERE id = 2")
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The victim's abort releases its locks, so both statements finish.
    let (b_result, a_result) = tokio::join!(
        b.batch_execute("UPDATE obs_lockerr SET v = 2 WHERE id = 1"),
        a_wants_2
    );
    let a_result = a_result.expect("task");
    let codes: Vec<String> = [&a_result, &b_result]
        .iter()
        .filter_map(|r| r.as_ref().err().map(code))
        .collect();
    assert_eq!(codes, vec!["40P01".to_string()], "exactly one victim");
    a.batch_execute("ROLLBACK").await.expect("a rollback");
    b.batch_execute("ROLLBACK").await.expect("b rollback");
    wait_for(
        &p,
        "tierwarden_lock_errors_total",
        &[("env", "dev"), ("code", "deadlock")],
        |v| v == 1.0,
        "deadlock counted",
    )
    .await;
    p.stop().await;
}

#[tokio::test]
async fn ci_migrator_ddl_transactions_count_applied_and_failed() {
    let logs = Capture::default();
    let _guard = logs.install();
    let p = start_proxy(|_| {}).await;
    let applied = [("env", "dev"), ("outcome", "applied")];
    let failed = [("env", "dev"), ("outcome", "failed")];
    assert_eq!(
        value(&p, "tierwarden_migrations_total", &failed).await,
        Some(0.0)
    );
    let m = p
        .connect("ci_migrator", "dev")
        .await
        .expect("ci_migrator@dev");
    m.batch_execute("BEGIN; CREATE TABLE obs_mig_ok (id int); COMMIT")
        .await
        .expect("migration applies");
    let e = m
        .batch_execute("BEGIN; CREATE TABLE obs_mig_bad (id int); SELECT 1 / 0")
        .await
        .expect_err("migration fails");
    assert_eq!(code(&e), "22012");
    m.batch_execute("ROLLBACK").await.expect("rollback");
    // Plain DML by the same session is not a migration.
    m.batch_execute("INSERT INTO obs_mig_ok VALUES (1)")
        .await
        .expect("dml");
    wait_for(
        &p,
        "tierwarden_migrations_total",
        &failed,
        |v| v == 1.0,
        "failed",
    )
    .await;
    wait_for(
        &p,
        "tierwarden_migrations_total",
        &applied,
        |v| v == 1.0,
        "applied",
    )
    .await;
    let events = logs.events("tierwarden::proxy::observe_hooks");
    let finished: Vec<&Value> = events
        .iter()
        .filter(|e| e["fields"]["message"] == "migration finished")
        .collect();
    assert_eq!(finished.len(), 2, "one event per migration: {finished:?}");
    assert!(finished
        .iter()
        .all(|e| e["fields"]["role"] == "ci_migrator" && e["fields"]["env"] == "dev"));
    p.stop().await;
}

#[tokio::test]
async fn connection_burst_counts_exactly_one_spike() {
    let p = start_proxy(|cfg| {
        if let Some(dev) = cfg.environments.get_mut("dev") {
            dev.spike_floor = 5;
            dev.spike_factor = 3.0;
        }
    })
    .await;
    let spikes = [("env", "dev")];
    assert_eq!(
        value(&p, "tierwarden_connection_spikes_total", &spikes).await,
        Some(0.0)
    );
    // The detector reports nothing before it has a full 10-s window of
    // history (src/observe/spikes.rs): stay idle for that long, bounded.
    tokio::time::sleep(Duration::from_millis(19_500)).await;
    let burst = (0..10).map(|_| p.connect("app_runtime", "dev"));
    let clients = futures_util::future::join_all(burst).await;
    for c in &clients {
        let c = c.as_ref().expect("burst connection");
        c.simple_query("SELECT 1").await.expect("usable");
    }
    let body = metrics(&p).await;
    assert_eq!(
        sample(
            &body,
            "tierwarden_connection_attempts_total",
            &[("env", "dev"), ("outcome", "accepted")]
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(&body, "tierwarden_connection_spikes_total", &spikes),
        Some(1.0),
        "ten attempts over a floor of 5 from a zero baseline: one episode"
    );
    drop(clients);
    p.stop().await;
}

#[tokio::test]
async fn metrics_never_carry_identities_or_statement_text() {
    // Seed identities share their role's name, so use an identity whose
    // name is unlike any role.
    let ident = "zq_ident_7f3";
    let pw = "pw-obs-zq7f3";
    let p = start_proxy(|cfg| {
        let mut id = cfg.identities["app_runtime"].clone();
        id.verifiers = BTreeMap::from([(
            "dev".to_string(),
            tierwarden::auth::verifier::Verifier::generate(pw, 4096).to_string(),
        )]);
        cfg.identities.insert(ident.to_string(), id);
    })
    .await;
    let dsn = format!(
        "host=127.0.0.1 port={} user={ident} password={pw} dbname={} sslmode=disable",
        p.addrs["dev"].port(),
        world().database("dev")
    );
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .expect("custom identity connects");
    tokio::spawn(conn);
    c.simple_query("SELECT 'lit_secret_91xq' AS colname_zz4, pg_sleep(0.15)")
        .await
        .expect("slow read");
    c.simple_query("SELECT * FROM missing_tbl_qq8")
        .await
        .expect_err("error");
    let ro = p.connect("auditor", "dev").await.expect("auditor");
    let e = ro
        .simple_query("INSERT INTO denied_tbl_zz9 VALUES ('denied_lit_x1')")
        .await
        .expect_err("denied");
    assert!(support::is_denial(&e), "{e}");
    // The statements were recorded (under the role, not the identity)...
    wait_for(
        &p,
        "tierwarden_queries_total",
        &[
            ("env", "dev"),
            ("role", "app_runtime"),
            ("outcome", "error"),
        ],
        |v| v >= 1.0,
        "error recorded",
    )
    .await;
    wait_for(
        &p,
        "tierwarden_denied_total",
        &[("env", "dev"), ("role", "auditor")],
        |v| v >= 1.0,
        "denial recorded",
    )
    .await;
    let body = metrics(&p).await;
    assert_eq!(
        sample(
            &body,
            "tierwarden_slow_queries_total",
            &[("env", "dev"), ("role", "app_runtime")]
        ),
        Some(1.0)
    );
    // ...and none of what identifies them leaks into the exposition.
    for needle in [
        ident,
        "lit_secret_91xq",
        "colname_zz4",
        "missing_tbl_qq8",
        "denied_tbl_zz9",
        "denied_lit_x1",
        "pg_sleep",
        "SELECT",
        "INSERT",
    ] {
        assert!(!body.contains(needle), "/metrics contains {needle:?}");
    }
    p.stop().await;
}

#[tokio::test]
async fn readyz_follows_upstream_reachability() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let down = start_proxy(|cfg| {
        fast_lock_poll(cfg);
        if let Some(t) = cfg.environments.get_mut("test") {
            t.upstream.port = closed;
        }
    })
    .await;
    assert_eq!(down.http_get("/healthz").await.0, 200);
    for env in ["dev", "stage", "prod"] {
        wait_for(
            &down,
            "tierwarden_upstream_up",
            &[("env", env)],
            |v| v == 1.0,
            env,
        )
        .await;
    }
    assert_eq!(
        value(&down, "tierwarden_upstream_up", &[("env", "test")]).await,
        Some(0.0)
    );
    let (status, body) = down.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("test") && !body.contains("dev") && !body.contains("prod"),
        "names only the unreachable env: {body}"
    );
    down.stop().await;

    let up = start_proxy(fast_lock_poll).await;
    for env in ["dev", "test", "stage", "prod"] {
        wait_for(
            &up,
            "tierwarden_upstream_up",
            &[("env", env)],
            |v| v == 1.0,
            env,
        )
        .await;
    }
    let (status, body) = up.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    up.stop().await;
}

#[tokio::test]
async fn lock_monitor_connects_with_the_upstream_tls_settings() {
    use std::os::unix::fs::MetadataExt;
    let w = world();
    // Turn TLS on in this binary's throwaway cluster (plaintext clients, and
    // every other test's `sslmode = "disable"` upstreams, are unaffected).
    let data = w.dir.join("pgdata").join("data");
    let meta = std::fs::metadata(&data).expect("cluster data dir");
    let ssl_dir = data.join("obs-ssl");
    std::fs::create_dir_all(&ssl_dir).expect("ssl dir");
    for f in ["server.crt", "server.key"] {
        let dst = ssl_dir.join(f);
        std::fs::copy(w.dir.join("tls").join(f), &dst).expect("copy cert");
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        std::os::unix::fs::chown(&dst, Some(meta.uid()), Some(meta.gid())).expect("chown");
    }
    let su = w.superuser("postgres").await;
    for stmt in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            ssl_dir.join("server.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            ssl_dir.join("server.key").display()
        ),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        su.batch_execute(&stmt).await.expect("enable ssl");
    }
    let p = start_proxy(|cfg| {
        fast_lock_poll(cfg);
        if let Some(s) = cfg.environments.get_mut("stage") {
            s.upstream.sslmode = tierwarden::auth::tls::UpstreamTlsMode::Require;
        }
    })
    .await;
    wait_for(
        &p,
        "tierwarden_upstream_up",
        &[("env", "stage")],
        |v| v == 1.0,
        "stage over TLS",
    )
    .await;
    let deadline = Instant::now() + POLL_LIMIT;
    loop {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
                 WHERE a.usename = 'tw_stage_monitor' \
                 AND a.application_name = 'tierwarden-lock-monitor' AND s.ssl",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0);
        if n >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stage lock monitor never connected with TLS (sslmode = require)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.stop().await;
}
