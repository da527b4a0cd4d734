//! The transparent proxy end to end: real clients through the real proxy
//! against a real PostgreSQL (simple and extended protocol, COPY, cancel,
//! TLS with SCRAM-SHA-256-PLUS, NOTIFY, authentication failures, bad
//! input, upstream death).
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::{backend_gone, backend_pid, code, start_proxy, world};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn simple_and_extended_queries_round_trip() {
    let p = start_proxy(|_| {}).await;
    let c = p.connect("app_runtime", "dev").await.expect("connects");
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS rt_items(id int primary key, name text); DELETE FROM rt_items",
    )
    .await
    .expect("ddl+dml in dev");
    let st = c
        .prepare("INSERT INTO rt_items VALUES ($1, $2)")
        .await
        .expect("prepare");
    for i in 0..20 {
        c.execute(&st, &[&i, &format!("n{i}")])
            .await
            .expect("insert");
    }
    let rows = c
        .query(
            "SELECT id, name FROM rt_items WHERE id >= $1 ORDER BY id",
            &[&10i32],
        )
        .await
        .expect("select");
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[0].get::<_, String>(1), "n10");
    let r = c
        .simple_query("SELECT count(*) FROM rt_items")
        .await
        .expect("simple");
    assert!(
        matches!(&r[1], tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("20"))
    );
    // large row, streamed through both ways (more than a socket buffer:
    // partial writes), every byte in its place
    let big: String = (0..3 * 1024 * 1024)
        .map(|i: u32| char::from(b'a' + (i % 26) as u8 + u8::from(i % 4099 == 0)))
        .collect();
    let row = c
        .query_one("SELECT $1::text AS t", &[&big])
        .await
        .expect("big");
    assert!(
        row.get::<_, String>(0) == big,
        "the 3 MiB value came back changed"
    );
    // a pipelined burst
    let nums: Vec<i32> = (0..50).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> = nums
        .iter()
        .map(|i| [i as &(dyn tokio_postgres::types::ToSql + Sync)])
        .collect();
    let futs: Vec<_> = params
        .iter()
        .map(|p| c.query_one("SELECT $1::int + 1", p))
        .collect();
    for (i, r) in futures_util::future::join_all(futs)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.expect("pipelined").get::<_, i32>(0), i as i32 + 1);
    }
    p.stop().await;
}

#[tokio::test]
async fn copy_in_and_out() {
    use futures_util::SinkExt;
    let p = start_proxy(|_| {}).await;
    let c = p.connect("app_runtime", "test").await.expect("connects");
    c.batch_execute("CREATE TABLE IF NOT EXISTS copy_t(a int, b text); TRUNCATE copy_t")
        .await
        .expect("setup");
    let sink = c
        .copy_in("COPY copy_t FROM STDIN")
        .await
        .expect("copy in starts");
    let mut sink = Box::pin(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.expect("send");
    let n = sink.as_mut().finish().await.expect("finish");
    assert_eq!(n, 5000);
    let stream = c.copy_out("COPY copy_t TO STDOUT").await.expect("copy out");
    let mut stream = Box::pin(stream);
    let mut total = 0usize;
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        total += chunk.expect("chunk").len();
    }
    assert!(total > 5000 * 6);
    p.stop().await;
}

#[tokio::test]
async fn cancel_reaches_the_right_backend() {
    let p = start_proxy(|_| {}).await;
    let c = p.connect("app_runtime", "dev").await.expect("connects");
    let token = c.cancel_token();
    let q = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(20)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let r = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("cancel took effect")
        .expect("task");
    let e = r.expect_err("query was cancelled");
    assert_eq!(code(&e), "57014");
    p.stop().await;
}

#[tokio::test]
async fn production_requires_tls_and_scram_plus_works() {
    let p = start_proxy(|_| {}).await;
    // plaintext to prod is refused before any password is asked
    let err = support::connect_err(&p.dsn("app_runtime", "prod"), "plaintext refused").await;
    assert_eq!(code(&err), "28000");
    assert!(err
        .as_db_error()
        .map(|d| d.message().contains("requires TLS"))
        .unwrap_or(false));
    // TLS with channel binding (tokio-postgres prefers SCRAM-SHA-256-PLUS)
    let c = p
        .connect("app_runtime", "prod")
        .await
        .expect("TLS connects");
    let v: i32 = c.query_one("SELECT 41 + 1", &[]).await.expect("q").get(0);
    assert_eq!(v, 42);
    // psql with verify-full against the quickstart CA
    let (rc, out, err) = support::run(
        "psql",
        &[
            &p.url_tls("auditor", "prod"),
            "-XAtc",
            "SELECT current_setting('default_transaction_read_only')",
        ],
        &[],
    )
    .await;
    assert_eq!(rc, 0, "psql failed: {err}");
    assert_eq!(out.trim(), "on", "ro sessions run upstream read-only");
    p.stop().await;
}

#[tokio::test]
async fn authentication_failures_look_the_same() {
    let p = start_proxy(|_| {}).await;
    let w = world();
    let wrong = format!(
        "host=127.0.0.1 port={} user={} password=wrong dbname={} sslmode=disable",
        p.addrs["dev"].port(),
        w.user("dev_user"),
        w.database("dev")
    );
    let unknown = format!(
        "host=127.0.0.1 port={} user=nobody_here password=wrong dbname={} sslmode=disable",
        p.addrs["dev"].port(),
        w.database("dev")
    );
    let e1 = support::connect_err(&wrong, "wrong pw").await;
    let e2 = support::connect_err(&unknown, "unknown").await;
    assert_eq!(code(&e1), "28P01");
    assert_eq!(code(&e2), "28P01");
    let m1 = e1
        .as_db_error()
        .map(|d| d.message().replace(&w.user("dev_user"), "X"));
    let m2 = e2
        .as_db_error()
        .map(|d| d.message().replace("nobody_here", "X"));
    assert_eq!(m1, m2, "same message whether or not the identity exists");
    // a stage password never opens dev
    let cross = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=disable",
        p.addrs["dev"].port(),
        w.user("app_runtime"),
        w.password("app_runtime", "stage"),
        w.database("dev")
    );
    let e3 = support::connect_err(&cross, "cross-env").await;
    assert_eq!(code(&e3), "28P01");
    // level none: correct password, refused with 28000
    let e4 = support::connect_err(&p.dsn("dev_user", "test"), "level none").await;
    assert_eq!(code(&e4), "28000");
    // wrong database name: refused, the hint names the environment's database
    let wrong_db = p
        .dsn("app_runtime", "dev")
        .replace(&w.database("dev"), &w.database("stage"));
    let e5 = support::connect_err(&wrong_db, "db").await;
    assert_eq!(code(&e5), "3D000");
    // replication connections are refused
    let repl = format!("{} replication=database", p.dsn("app_runtime", "dev"));
    let (rc, _, err) = support::run("psql", &[&repl, "-XAtc", "IDENTIFY_SYSTEM"], &[]).await;
    assert_ne!(rc, 0);
    assert!(
        err.contains("replication connections are not allowed"),
        "{err}"
    );
    p.stop().await;
}

#[tokio::test]
async fn startup_settings_go_through_the_policy() {
    let p = start_proxy(|_| {}).await;
    let ok = format!(
        "{} options='-c search_path=public -c statement_timeout=5s' application_name=tw_test",
        p.dsn("auditor", "dev")
    );
    let (c, conn) = tokio_postgres::connect(&ok, tokio_postgres::NoTls)
        .await
        .expect("allowed options");
    tokio::spawn(conn);
    let row = c
        .query_one(
            "SELECT current_setting('statement_timeout'), current_setting('application_name')",
            &[],
        )
        .await
        .expect("q");
    assert_eq!(row.get::<_, String>(0), "5s");
    assert_eq!(row.get::<_, String>(1), "tw_test");
    for bad in [
        "options='-c default_transaction_read_only=off'",
        "options='-c role=postgres'",
        "options='-c session_authorization=postgres'",
    ] {
        let dsn = format!("{} {bad}", p.dsn("auditor", "dev"));
        let e = support::connect_err(&dsn, bad).await;
        assert_eq!(code(&e), "42501", "{bad}: {e}");
    }
    p.stop().await;
}

#[tokio::test]
async fn notify_reaches_listeners() {
    let p = start_proxy(|_| {}).await;
    let (listener, mut conn) =
        tokio_postgres::connect(&p.dsn("app_runtime", "dev"), tokio_postgres::NoTls)
            .await
            .expect("connects");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener
        .batch_execute("LISTEN tw_chan")
        .await
        .expect("listen");
    let sender = p.connect("app_runtime", "dev").await.expect("connects");
    sender
        .batch_execute("NOTIFY tw_chan, 'hello'")
        .await
        .expect("notify");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification");
    assert_eq!(got.as_deref(), Some("hello"));
    p.stop().await;
}

#[tokio::test]
async fn hostile_input_ends_only_that_connection() {
    let p = start_proxy(|_| {}).await;
    let addr = p.addrs["dev"];
    // garbage before SSL negotiation
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("w");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    // absurd length
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .await
        .expect("w");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(buf.first() == Some(&b'E') || buf.is_empty());
    // absurd message length after login
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    raw.write_all(&[0, 0, 0, 8, 4, 210, 22, 48])
        .await
        .expect("gss");
    let mut one = [0u8; 1];
    raw.read_exact(&mut one).await.expect("gss answer");
    assert_eq!(one[0], b'N');
    // truncated startup then silence: the proxy must not wait forever for it,
    // and everybody else keeps working meanwhile
    let mut stall = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    stall.write_all(&[0, 0, 0, 40]).await.expect("w");
    let c = p
        .connect("app_runtime", "dev")
        .await
        .expect("others still served");
    let v: i32 = c.query_one("SELECT 1", &[]).await.expect("q").get(0);
    assert_eq!(v, 1);
    p.stop().await;
}

#[tokio::test]
async fn upstream_death_ends_that_session_only() {
    let p = start_proxy(|_| {}).await;
    let victim = p.connect("app_runtime", "dev").await.expect("connects");
    let other = p.connect("app_runtime", "dev").await.expect("connects");
    let pid = backend_pid(&victim).await;
    let su = world().superuser(&world().database("dev")).await;
    su.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        victim.query_one("SELECT 1", &[]).await.is_err(),
        "victim sees an error"
    );
    let v: i32 = other
        .query_one("SELECT 2", &[])
        .await
        .expect("other session fine")
        .get(0);
    assert_eq!(v, 2);
    let again = p
        .connect("app_runtime", "dev")
        .await
        .expect("new sessions work");
    again.query_one("SELECT 1", &[]).await.expect("q");
    p.stop().await;
}

#[tokio::test]
async fn client_disconnect_releases_the_backend() {
    let p = start_proxy(|_| {}).await;
    let c = p.connect("app_runtime", "dev").await.expect("connects");
    c.batch_execute("BEGIN; SELECT 1").await.expect("open tx");
    let pid = backend_pid(&c).await;
    drop(c);
    assert!(
        backend_gone(pid).await,
        "upstream backend released after the client vanished"
    );
    p.stop().await;
}

#[tokio::test]
async fn psql_and_pgbench_work_through_the_proxy() {
    let p = start_proxy(|_| {}).await;
    let w = world();
    let port = p.addrs["stage"].port().to_string();
    let envs = [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port.as_str()),
        ("PGSSLMODE", "disable"),
    ];
    let user = w.user("app_runtime");
    let pw = w.password("app_runtime", "stage");
    let db = w.database("stage");
    let mut env: Vec<(&str, &str)> = envs.to_vec();
    env.push(("PGUSER", &user));
    env.push(("PGPASSWORD", &pw));
    env.push(("PGDATABASE", &db));
    let (rc, out, err) =
        support::run("psql", &["-XAtc", "SELECT 'through' || ' proxy'"], &env).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.trim(), "through proxy");
    // pgbench -i needs ddl: rw in stage may run ddl (non-production tier)
    let (rc, _, err) = support::run("pgbench", &["-i", "-s", "1", "-q"], &env).await;
    assert_eq!(rc, 0, "pgbench -i: {err}");
    for mode in ["simple", "extended", "prepared"] {
        let (rc, out, err) = support::run(
            "pgbench",
            &["-S", "-M", mode, "-c", "4", "-t", "50", "-n"],
            &env,
        )
        .await;
        assert_eq!(rc, 0, "pgbench -S -M {mode}: {err}");
        assert!(out.contains("number of failed transactions: 0"), "{out}");
    }
    let (rc, out, err) = support::run("pgbench", &["-c", "2", "-t", "20", "-n"], &env).await;
    assert_eq!(rc, 0, "pgbench tpcb: {err}");
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    p.stop().await;
}

#[tokio::test]
async fn upstream_sessions_are_reset_and_reused() {
    let p = start_proxy(|_| {}).await;
    let c = p.connect("app_runtime", "test").await.expect("connects");
    let pid = backend_pid(&c).await;
    c.batch_execute(
        "SET application_name = 'leaky'; CREATE TEMP TABLE leak(x int); PREPARE leaked AS SELECT 1",
    )
    .await
    .expect("session state");
    drop(c);
    // the reset runs in the background; wait for the session to be pooled
    for _ in 0..100 {
        if p.shared.pool.idle_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        p.shared.pool.idle_count() > 0,
        "clean session kept for reuse"
    );
    let c = p.connect("app_runtime", "test").await.expect("reconnects");
    let row = c
        .query_one(
            "SELECT pg_backend_pid(), current_setting('application_name'), to_regclass('pg_temp.leak') IS NULL,
                    (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaked')",
            &[],
        )
        .await
        .expect("q");
    assert_eq!(row.get::<_, i32>(0), pid, "same upstream backend reused");
    assert_ne!(row.get::<_, String>(1), "leaky", "settings reset");
    assert!(row.get::<_, bool>(2), "temp table gone");
    assert_eq!(row.get::<_, i64>(3), 0, "prepared statements gone");
    // another level never gets that backend (different upstream login)
    let ro = p.connect("auditor", "test").await.expect("auditor");
    let ro_pid = backend_pid(&ro).await;
    assert_ne!(ro_pid, pid);
    let ro_flag: String = ro
        .query_one(
            "SELECT current_setting('default_transaction_read_only')",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(ro_flag, "on");
    // a session that ends inside a transaction is never reused
    c.batch_execute("BEGIN").await.expect("begin");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = p.connect("app_runtime", "test").await.expect("reconnects");
    let pid2 = backend_pid(&c).await;
    assert_ne!(
        pid2, pid,
        "a session left in a transaction is terminated, not reused"
    );
    p.stop().await;
}

// Upstream session reuse: idle sessions are closed after
// `upstream_idle_timeout_ms` (the backend goes away, not only the proxy's
// handle), sessions past `upstream_max_lifetime_ms` are closed instead of
// kept, and the most recently used session is handed out first.

/// Poll `f` every 50 ms for up to `secs` seconds.
async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 20 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn idle_sessions_are_closed_after_the_idle_timeout() {
    let p = start_proxy(|c| c.proxy.upstream_idle_timeout_ms = 500).await;
    let c = p.connect("app_runtime", "test").await.expect("connects");
    let pid = backend_pid(&c).await;
    drop(c);
    assert!(
        eventually(5, || async { p.shared.pool.idle_count() == 1 }).await,
        "the clean session is kept first"
    );
    // The sweep runs every second (a quarter of the timeout, at least 1 s):
    // the session leaves the pool and its backend exits.
    assert!(
        eventually(10, || async { p.shared.pool.idle_count() == 0 }).await,
        "the idle session is swept"
    );
    assert!(
        backend_gone(pid).await,
        "the swept session's backend {pid} is gone from pg_stat_activity"
    );
    // A new client gets a new backend.
    let c = p.connect("app_runtime", "test").await.expect("reconnects");
    assert_ne!(backend_pid(&c).await, pid);
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn sessions_past_their_lifetime_are_closed_not_kept() {
    let p = start_proxy(|c| c.proxy.upstream_max_lifetime_ms = 300).await;
    let c = p.connect("app_runtime", "test").await.expect("connects");
    let pid = backend_pid(&c).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(c);
    assert!(
        backend_gone(pid).await,
        "the old session's backend {pid} is closed when its client leaves"
    );
    assert_eq!(p.shared.pool.idle_count(), 0, "nothing kept");
    p.stop().await;
}

#[tokio::test]
async fn the_most_recently_used_session_is_reused_first() {
    let p = start_proxy(|_| {}).await;
    let a = p.connect("app_runtime", "test").await.expect("a");
    let b = p.connect("app_runtime", "test").await.expect("b");
    let (pa, pb) = (backend_pid(&a).await, backend_pid(&b).await);
    drop(a);
    assert!(eventually(5, || async { p.shared.pool.idle_count() == 1 }).await);
    drop(b);
    assert!(eventually(5, || async { p.shared.pool.idle_count() == 2 }).await);
    let (status, body) = p.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("tierwarden_upstream_idle_sessions{env=\"test\"} 2")
            && body.contains("tierwarden_upstream_idle_sessions{env=\"dev\"} 0"),
        "pool size on /metrics: {}",
        body.lines()
            .filter(|l| l.contains("idle_sessions"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let c = p.connect("app_runtime", "test").await.expect("c");
    assert_eq!(
        backend_pid(&c).await,
        pb,
        "the last one released comes back first"
    );
    let d = p.connect("app_runtime", "test").await.expect("d");
    assert_eq!(backend_pid(&d).await, pa);
    drop((c, d));
    p.stop().await;
}

#[tokio::test]
async fn the_pool_bound_is_per_login_across_startup_settings() {
    let p = start_proxy(|c| c.proxy.upstream_pool_size = 2).await;
    let mut pids = Vec::new();
    for app in ["one", "two", "three"] {
        pids.push(p.used_backend("app_runtime", "test", app).await);
        let kept = pids.len().min(2);
        assert!(
            eventually(5, || async { p.shared.pool.idle_count() == kept }).await,
            "{kept} idle after {app}"
        );
    }
    // Three settings, one login: two kept, the one idle longest closed.
    assert!(
        backend_gone(pids[0]).await,
        "the oldest idle backend is closed"
    );
    let c = p
        .connect_as_app("app_runtime", "test", "two")
        .await
        .expect("connects");
    assert_eq!(
        backend_pid(&c).await,
        pids[1],
        "same settings, same backend"
    );
    drop(c);
    p.stop().await;
}
