//! Fault injection through the real proxy against real PostgreSQL: the
//! whole upstream cluster of one environment stopped and restarted (a
//! second throwaway cluster serves `stage`), upstream backends terminated
//! mid-query, clients that vanish mid-transaction and mid-COPY, a client
//! that stops reading a 200 MB result (proxy memory stays bounded),
//! clients stalled during startup and authentication, oversized and
//! malformed messages, invalid UTF-8, wrong protocol versions and a flood
//! of bogus CancelRequests. Every fault must end only the session it hits,
//! with a clean error, and leave the proxy serving everybody else.
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

#[path = "support/rawpg.rs"]
mod rawpg;
#[path = "support/stage_cluster.rs"]
mod stage_cluster;
mod support;

use std::time::Duration;

use rawpg::{first_error, message, query_msg, startup_packet, RawPg, V3};
use stage_cluster::{wait_ready, StageCluster};
use support::{backend_gone, backend_pid, code, start_proxy, world, Proxy};

/// Tests that measure the process (RSS) or stop clusters run one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn raw(p: &Proxy, role: &str, env: &str) -> RawPg {
    let w = world();
    RawPg::connect(
        p.addrs[env],
        &w.user(role),
        &w.password(role, env),
        &w.database(env),
    )
    .await
    .unwrap_or_else(|e| panic!("{role}@{env} logs in: {}", e.message()))
}

async fn still_serves(p: &Proxy, env: &str) {
    let c = p.connect("app_runtime", env).await.expect("others connect");
    let v: i32 = c
        .query_one("SELECT 7", &[])
        .await
        .expect("others query")
        .get(0);
    assert_eq!(v, 7);
}

/// Resident set size of this process (the proxy runs in-process), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn whole_cluster_stopped_and_restarted() {
    let _serial = HEAVY.lock().await;
    let mut pg = StageCluster::start().await;
    let port = pg.port;
    let p = start_proxy(|cfg| {
        for e in cfg.environments.values_mut() {
            e.lock_poll_ms = 100;
        }
        if let Some(stage) = cfg.environments.get_mut("stage") {
            stage.upstream.port = port;
        }
    })
    .await;
    wait_ready(&p, true).await;
    let stage = p.connect("app_runtime", "stage").await.expect("stage");
    let n: i64 = stage
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("sample schema")
        .get(0);
    assert_eq!(n, 3);
    let dev = p.connect("app_runtime", "dev").await.expect("dev");
    let busy = p.connect("app_runtime", "stage").await.expect("stage");
    let running = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(60)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    pg.stop().await;
    // The session mid-query gets an error, the idle one too.
    let r = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the running query ends when its cluster stops")
        .expect("task");
    assert!(r.is_err(), "a query on a stopped cluster cannot succeed");
    assert!(stage.query_one("SELECT 1", &[]).await.is_err());
    // New stage sessions are refused cleanly; dev is not affected.
    let e = p
        .connect("app_runtime", "stage")
        .await
        .expect_err("stage is down");
    assert_eq!(code(&e), "08006", "{e}");
    let v: i32 = dev.query_one("SELECT 5", &[]).await.expect("dev").get(0);
    assert_eq!(v, 5);
    still_serves(&p, "test").await;
    wait_ready(&p, false).await;
    let (_, body) = p.http_get("/readyz").await;
    assert!(body.contains("stage"), "{body}");

    pg.restart().await;
    wait_ready(&p, true).await;
    // Recovery without restarting the proxy.
    let again = p
        .connect("app_runtime", "stage")
        .await
        .expect("new stage sessions after recovery");
    let n: i64 = again
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(n, 3);
    let v: i32 = dev.query_one("SELECT 6", &[]).await.expect("dev").get(0);
    assert_eq!(v, 6);
    p.stop().await;
    pg.stop().await;
}

#[tokio::test]
async fn backend_terminated_mid_query_and_mid_transaction() {
    let p = start_proxy(|_| {}).await;
    let victim = p.connect("app_runtime", "dev").await.expect("victim");
    let in_tx = p.connect("app_runtime", "dev").await.expect("in tx");
    let other = p.connect("app_runtime", "dev").await.expect("other");
    in_tx
        .batch_execute("CREATE TABLE IF NOT EXISTS flt_term(a int)")
        .await
        .expect("table");
    in_tx
        .batch_execute("BEGIN; INSERT INTO flt_term VALUES (1)")
        .await
        .expect("open tx");
    let pids: Vec<i32> = {
        let mut v = Vec::new();
        for c in [&victim, &in_tx] {
            v.push(backend_pid(c).await);
        }
        v
    };
    let running = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(60)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let su = world().superuser(&world().database("dev")).await;
    for pid in &pids {
        su.execute("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .expect("terminate");
    }
    let r = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the query ends")
        .expect("task");
    assert!(r.is_err(), "mid-query termination is an error");
    assert!(in_tx.batch_execute("COMMIT").await.is_err());
    let n: i64 = su
        .query_one("SELECT count(*) FROM flt_term", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(n, 0, "the terminated transaction did not commit");
    let v: i32 = other
        .query_one("SELECT 3", &[])
        .await
        .expect("other")
        .get(0);
    assert_eq!(v, 3);
    still_serves(&p, "dev").await;
    p.stop().await;
}

#[tokio::test]
async fn client_vanishing_mid_transaction_and_mid_copy_commits_nothing() {
    let p = start_proxy(|_| {}).await;
    let setup = p.connect("app_runtime", "dev").await.expect("setup");
    setup
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS flt_copy(a int, b text); TRUNCATE flt_copy;\
             CREATE TABLE IF NOT EXISTS flt_tx(a int); TRUNCATE flt_tx",
        )
        .await
        .expect("tables");
    // Mid-transaction.
    let mut c = raw(&p, "app_runtime", "dev").await;
    let pid_tx: i32 = c
        .scalar("SELECT pg_backend_pid()")
        .await
        .and_then(|s| s.parse().ok())
        .expect("pid");
    let r = c
        .query(b"BEGIN; INSERT INTO flt_tx SELECT generate_series(1, 1000)")
        .await;
    assert!(first_error(&r).is_none());
    drop(c);
    // Mid-COPY: CopyData sent, then the socket vanishes without CopyDone.
    let mut c = raw(&p, "app_runtime", "dev").await;
    let pid_copy: i32 = c
        .scalar("SELECT pg_backend_pid()")
        .await
        .and_then(|s| s.parse().ok())
        .expect("pid");
    c.send(&query_msg(b"COPY flt_copy FROM STDIN")).await;
    let g = c.recv().await.expect("CopyInResponse");
    assert_eq!(g.tag, b'G', "{g:?}");
    let mut rows = String::new();
    for i in 0..20_000 {
        rows.push_str(&format!("{i}\trow {i}\n"));
    }
    for chunk in rows.as_bytes().chunks(8192) {
        c.send(&message(b'd', chunk)).await;
    }
    drop(c);
    assert!(
        backend_gone(pid_tx).await,
        "backend of the vanished transaction released"
    );
    assert!(
        backend_gone(pid_copy).await,
        "backend of the vanished COPY released"
    );
    for table in ["flt_tx", "flt_copy"] {
        let n: i64 = setup
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "{table}: nothing of the vanished client committed");
    }
    still_serves(&p, "dev").await;
    p.stop().await;
}

#[tokio::test]
async fn stalled_reader_of_a_large_result_keeps_memory_bounded() {
    let _serial = HEAVY.lock().await;
    let p = start_proxy(|_| {}).await;
    let mut c = raw(&p, "app_runtime", "dev").await;
    let pid: i32 = c
        .scalar("SELECT pg_backend_pid()")
        .await
        .and_then(|s| s.parse().ok())
        .expect("pid");
    let before = rss_kib();
    // ~200 MB of rows; the client reads none of it.
    c.send(&query_msg(
        b"SELECT repeat('x', 1000) FROM generate_series(1, 200000)",
    ))
    .await;
    let mut peak = before;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        peak = peak.max(rss_kib());
    }
    // Meanwhile everybody else is served.
    still_serves(&p, "dev").await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        peak = peak.max(rss_kib());
    }
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("stalled reader: rss before {before} KiB, peak {peak} KiB");
    assert!(
        growth_mib < 64,
        "proxy memory grew by {growth_mib} MiB while a client stalled on a 200 MB result"
    );
    // The client reads a little, then vanishes: the backend is released.
    for _ in 0..10 {
        assert!(c.recv().await.is_some());
    }
    drop(c);
    assert!(
        backend_gone(pid).await,
        "backend released after the stalled client left"
    );
    p.stop().await;
}

#[tokio::test]
async fn stalled_startup_and_authentication_time_out() {
    let p = start_proxy(|cfg| cfg.proxy.startup_timeout_ms = 700).await;
    let addr = p.addrs["dev"];
    // Connects and says nothing.
    let mut silent = RawPg::tcp(addr).await;
    // Starts SCRAM and stalls after the server's first answer.
    let mut halfway = RawPg::tcp(addr).await;
    let w = world();
    let user = w.user("app_runtime");
    let db = w.database("dev");
    halfway
        .send(&startup_packet(V3, &[("user", &user), ("database", &db)]))
        .await;
    let sasl = halfway.recv().await.expect("SASL request");
    assert_eq!(sasl.tag, b'R');
    still_serves(&p, "dev").await;
    let (closed, _) = silent.closed().await;
    assert!(closed, "a silent client is disconnected");
    let (closed, seen) = halfway.closed().await;
    assert!(closed, "a stalled authentication is disconnected");
    let e = first_error(&seen).expect("told why");
    assert_eq!(e.code(), "57P03", "{}", e.message());
    still_serves(&p, "dev").await;
    p.stop().await;
}

#[tokio::test]
async fn hostile_messages_after_login_end_only_that_session() {
    let p = start_proxy(|_| {}).await;
    // Invalid UTF-8 in a query: the database's error, session still usable.
    let mut c = raw(&p, "app_runtime", "dev").await;
    let r = c.query(b"SELECT '\xff\xfe\xc3'").await;
    assert_eq!(first_error(&r).map(|e| e.code()), Some("22021".into()));
    assert_eq!(c.scalar("SELECT 1").await.as_deref(), Some("1"));
    // Invalid UTF-8 that hides nothing: a denied statement stays denied.
    let mut ro = raw(&p, "auditor", "dev").await;
    let r = ro.query(b"DELETE FROM accounts WHERE name = '\xff'").await;
    assert_eq!(first_error(&r).map(|e| e.code()), Some("42501".into()));
    // Reserved statement names are refused.
    let parse = b"\x01tierwarden_denied\0SELECT 1\0\0\0".to_vec();
    c.send(&message(b'P', &parse)).await;
    c.send(&message(b'S', b"")).await;
    let r = c.until_ready().await;
    assert_eq!(first_error(&r).map(|e| e.code()), Some("42501".into()));
    assert_eq!(c.scalar("SELECT 2").await.as_deref(), Some("2"));

    type Attack = (&'static str, Vec<u8>);
    let attacks: Vec<Attack> = vec![
        ("length over 1 GiB", {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
            m.extend_from_slice(b"SELECT 1");
            m
        }),
        ("negative length", vec![b'Q', 0xff, 0xff, 0xff, 0xf0, b'x']),
        ("length below 4", vec![b'Q', 0, 0, 0, 2]),
        ("Query without NUL", message(b'Q', b"SELECT 1")),
        ("Parse without fields", message(b'P', b"")),
        ("Bind truncated", message(b'B', b"portal")),
        ("Close of kind Z", message(b'C', b"Zname\0")),
        ("unknown message type", message(b'z', b"")),
    ];
    for (what, bytes) in attacks {
        let mut s = raw(&p, "app_runtime", "dev").await;
        let pid: i32 = s
            .scalar("SELECT pg_backend_pid()")
            .await
            .and_then(|v| v.parse().ok())
            .expect("pid");
        let _ = s.try_send(&bytes).await;
        let (closed, seen) = s.closed().await;
        assert!(closed, "{what}: the session ends");
        eprintln!(
            "{what}: client saw {:?}",
            seen.iter()
                .map(|m| (m.tag as char, m.code()))
                .collect::<Vec<_>>()
        );
        let e = first_error(&seen).unwrap_or_else(|| panic!("{what}: told why"));
        assert_eq!(e.code(), "08P01", "{what}: {}", e.message());
        assert!(backend_gone(pid).await, "{what}: backend released");
    }
    // After all that, the first sessions and new ones still work.
    assert_eq!(c.scalar("SELECT 3").await.as_deref(), Some("3"));
    still_serves(&p, "dev").await;
    p.stop().await;
}

#[tokio::test]
async fn wrong_protocol_versions_and_negotiation_abuse_get_clean_errors() {
    let p = start_proxy(|_| {}).await;
    let addr = p.addrs["dev"];
    let w = world();
    let user = w.user("app_runtime");
    let db = w.database("dev");
    let params = [("user", user.as_str()), ("database", db.as_str())];
    for (what, version) in [
        ("2.0", 0x0002_0000u32),
        ("4.0", 0x0004_0000),
        ("1234.5681", 0x04d2_1631),
    ] {
        let mut c = RawPg::tcp(addr).await;
        c.send(&startup_packet(version, &params)).await;
        let (closed, seen) = c.closed().await;
        assert!(closed, "{what}: closed");
        let e = first_error(&seen).unwrap_or_else(|| panic!("{what}: an error first"));
        assert_eq!(e.code(), "08P01", "{what}: {}", e.message());
        assert!(
            e.message().contains("unsupported frontend protocol"),
            "{}",
            e.message()
        );
    }
    // 3.x newer minor: negotiated down, login works.
    let mut c = RawPg::tcp(addr).await;
    c.send(&startup_packet(V3 + 7, &params)).await;
    let r = c.authenticate(&w.password("app_runtime", "dev")).await;
    assert!(r.is_ok(), "3.7 is negotiated down to 3.0");
    assert_eq!(c.scalar("SELECT 4").await.as_deref(), Some("4"));
    // Startup packets of absurd size, SSL twice, GSSENC inside nothing.
    for (what, bytes) in [
        ("length 10001", {
            let mut b = 10_001i32.to_be_bytes().to_vec();
            b.extend_from_slice(&V3.to_be_bytes());
            b
        }),
        ("length 3", vec![0, 0, 0, 3]),
        ("params not terminated", {
            let mut b = 16i32.to_be_bytes().to_vec();
            b.extend_from_slice(&V3.to_be_bytes());
            b.extend_from_slice(b"userxxxx");
            b
        }),
        ("cancel request too short", {
            let mut b = 12i32.to_be_bytes().to_vec();
            b.extend_from_slice(&80_877_102i32.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, 1]);
            b
        }),
    ] {
        let mut c = RawPg::tcp(addr).await;
        let _ = c.try_send(&bytes).await;
        let (closed, seen) = c.closed().await;
        assert!(closed, "{what}: closed");
        if let Some(e) = first_error(&seen) {
            assert_eq!(e.code(), "08P01", "{what}: {}", e.message());
        }
    }
    // Endless GSSENCRequests: answered 'N' a few times, then closed.
    let mut c = RawPg::tcp(addr).await;
    let mut answers = 0;
    for _ in 0..10 {
        if c.try_send(&[0, 0, 0, 8, 4, 210, 22, 48]).await.is_err() {
            break;
        }
        match c.recv_byte().await {
            Some(b'N') => answers += 1,
            _ => break,
        }
    }
    assert!(answers < 10, "negotiation requests are bounded");
    still_serves(&p, "dev").await;
    p.stop().await;
}

#[tokio::test]
async fn cancel_request_flood_cancels_nothing_and_hurts_nobody() {
    let p = start_proxy(|_| {}).await;
    let addr = p.addrs["dev"];
    let mut victim = raw(&p, "app_runtime", "dev").await;
    let (pid, secret) = victim.key;
    // 2,000 bogus cancel requests, 100 connections at a time.
    let flood = tokio::spawn(async move {
        let mut closed = 0;
        for batch in 0..20i32 {
            let mut tasks = Vec::new();
            for i in 0..100i32 {
                let n = batch * 100 + i;
                tasks.push(tokio::spawn(async move {
                    let mut c = RawPg::tcp(addr).await;
                    // Near misses of the real key, and garbage.
                    let key = match n % 3 {
                        0 => (pid, secret.wrapping_add(n + 1)),
                        1 => (pid.wrapping_add(n + 1), secret),
                        _ => (n.wrapping_mul(7919), n.wrapping_mul(104_729)),
                    };
                    let _ = c.try_send(&rawpg::cancel_packet(key.0, key.1)).await;
                    c.closed().await.0
                }));
            }
            for t in tasks {
                if t.await.expect("task") {
                    closed += 1;
                }
            }
        }
        closed
    });
    // Meanwhile the victim runs short sleeps: none may be cancelled.
    let mut queries = 0;
    while !flood.is_finished() && queries < 500 {
        let r = victim.query(b"SELECT pg_sleep(0.05)").await;
        assert!(
            first_error(&r).is_none(),
            "a bogus key cancelled a query: {r:?}"
        );
        queries += 1;
    }
    assert_eq!(
        flood.await.expect("flood"),
        2000,
        "every cancel connection closed"
    );
    assert!(queries > 0);
    still_serves(&p, "dev").await;
    p.stop().await;
}
