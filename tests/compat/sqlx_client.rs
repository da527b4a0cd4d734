//! sqlx (Rust; tokio runtime, rustls with ring) through the proxy, included
//! by tests/compat.rs: as `app_runtime` in the production-tier environment
//! over TLS verify-full against the quickstart CA (a foreign CA is refused),
//! a simple query (simple protocol, two statements), parameterized
//! statements (sqlx prepares named statements with the extended protocol and
//! reuses them from its cache), a transaction rolled back, COPY in and out
//! (`copy_in_raw` / `copy_out_raw`), policy denials over both protocols
//! (42501 `tierwarden: denied`) after which the same connection works, and
//! the row count upstream.
//!
//! sqlx 0.8 has no cancel API: it parses BackendKeyData but never sends a
//! CancelRequest. What an sqlx user does instead is tested: a server-side
//! `statement_timeout` (57014, the connection stays usable), and a query
//! abandoned by `tokio::time::timeout` in a pool (the statement keeps
//! running upstream; the pool serves from its other connection, drains the
//! abandoned one once the statement ends, and the proxy is left with no
//! stray session).

use std::time::Duration;

use futures_util::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgSslMode};
use sqlx::{Connection, Executor, Row, Statement};

use super::migrations::metric;
use super::support::{start_proxy, world, Proxy};
use super::{lock_version, prod_rows, prod_table};

/// sqlx connect options for `role@env` through the proxy: TLS verify-full
/// against the quickstart CA.
pub fn sqlx_options(p: &Proxy, role: &str, env: &str) -> PgConnectOptions {
    let w = world();
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(p.addrs[env].port())
        .username(&w.user(role))
        .password(&w.password(role, env))
        .database(&w.database(env))
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(&w.ca)
}

/// (SQLSTATE, message) of a server error; empty strings otherwise.
pub fn sqlstate(e: &sqlx::Error) -> (String, String) {
    e.as_database_error()
        .map(|d| {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            (code, d.message().to_string())
        })
        .unwrap_or_default()
}

/// Panics unless `e` is a tierwarden policy denial.
fn assert_denied(e: &sqlx::Error) {
    let (code, msg) = sqlstate(e);
    assert_eq!(code, "42501", "{e}");
    assert!(msg.starts_with("tierwarden: denied"), "{msg}");
}

/// Wait (bounded) until exactly one backend matches `cond` in pg_stat_activity.
async fn wait_activity(cond: &str) {
    let su = world().superuser("postgres").await;
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {cond}");
    for _ in 0..200 {
        let n: i64 = su.query_one(&sql, &[]).await.expect("poll").get(0);
        if n == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no backend with {cond}");
}

/// verify-full refuses the proxy's certificate under another CA.
async fn foreign_ca_refused(opts: &PgConnectOptions) {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("ca");
    let path = dir.path().join("other-ca.crt");
    std::fs::write(&path, other.cert.pem()).expect("write ca");
    let e = PgConnection::connect_with(&opts.clone().ssl_root_cert(&path))
        .await
        .expect_err("a certificate under another CA must be refused");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
}

#[tokio::test]
async fn sqlx_client() {
    let version = lock_version("sqlx");
    eprintln!("sqlx {version}");
    assert!(version.starts_with("0.8."), "sqlx in Cargo.lock: {version}");
    let table = "compat_sqlx";
    prod_table(table).await;
    let p = start_proxy(|_| {}).await;
    let opts = sqlx_options(&p, "app_runtime", "prod");
    foreign_ca_refused(&opts).await;
    let mut c = PgConnection::connect_with(&opts)
        .await
        .expect("TLS verify-full connects");

    // simple query protocol: two statements in one Query message
    let rows = sqlx::raw_sql("SELECT 40 + 2; SELECT 'two'")
        .fetch_all(&mut c)
        .await
        .expect("simple query");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<i32, _>(0), 42);
    assert_eq!(rows[1].get::<String, _>(0), "two");

    // parameterized: one named prepared statement, reused 20 times
    let ins = format!("INSERT INTO {table} (id, name) VALUES ($1, $2)");
    for i in 1..=20i32 {
        sqlx::query(&ins)
            .bind(i)
            .bind(format!("n{i}"))
            .execute(&mut c)
            .await
            .expect("insert");
    }
    assert!(c.cached_statements_size() >= 1, "server-side statement");
    let by_id = format!("SELECT name FROM {table} WHERE id = $1");
    let sel = c.prepare(&by_id).await.expect("prepare");
    for _ in 0..3 {
        let row = sel
            .query()
            .bind(7i32)
            .fetch_one(&mut c)
            .await
            .expect("bind");
        assert_eq!(row.get::<String, _>(0), "n7");
    }
    let count = format!("SELECT count(*) FROM {table}");
    let n: i64 = sqlx::query_scalar(&count).fetch_one(&mut c).await.unwrap();
    assert_eq!(n, 20);

    // transaction rolled back
    let mut tx = c.begin().await.expect("begin");
    sqlx::query(&ins)
        .bind(100i32)
        .bind("gone")
        .execute(&mut *tx)
        .await
        .expect("insert in tx");
    sqlx::query(&format!("UPDATE {table} SET name = 'changed'"))
        .execute(&mut *tx)
        .await
        .expect("update in tx");
    let inside: i64 = sqlx::query_scalar(&count)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(inside, 21);
    tx.rollback().await.expect("rollback");
    let first: String = sqlx::query_scalar(&format!("SELECT name FROM {table} WHERE id = 1"))
        .fetch_one(&mut c)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar(&count).fetch_one(&mut c).await.unwrap();
    assert_eq!((first.as_str(), n), ("n1", 20), "rolled back");

    // COPY FROM STDIN and TO STDOUT
    let mut copy = c
        .copy_in_raw(&format!("COPY {table} (id, name) FROM STDIN"))
        .await
        .expect("copy in");
    let data: String = (1000..1500).map(|i| format!("{i}\tcopied {i}\n")).collect();
    copy.send(data.into_bytes()).await.expect("send");
    assert_eq!(copy.finish().await.expect("finish"), 500);
    let out = c
        .copy_out_raw(&format!(
            "COPY (SELECT id FROM {table} WHERE id >= 1000) TO STDOUT"
        ))
        .await
        .expect("copy out");
    let chunks: Vec<_> = out.collect().await;
    let lines: usize = chunks
        .into_iter()
        .map(|b| b.expect("chunk").iter().filter(|b| **b == b'\n').count())
        .sum();
    assert_eq!(lines, 500, "copy out");

    // denials (simple, then extended protocol); the connection stays usable
    let ddl = "CREATE TABLE compat_sqlx_denied (a int)";
    assert_denied(&c.execute(ddl).await.expect_err("ddl denied"));
    let e = sqlx::query(ddl).execute(&mut c).await;
    assert_denied(&e.expect_err("ddl denied (Parse)"));
    let one: i32 = sqlx::query_scalar("SELECT $1::int4")
        .bind(1i32)
        .fetch_one(&mut c)
        .await
        .expect("connection usable after the denials");
    assert_eq!(one, 1);
    assert_eq!(prod_rows(table).await, 520, "rows in the database");

    // no cancel API: a server-side statement_timeout instead
    c.execute("SET statement_timeout = 200").await.expect("set");
    let e = sqlx::query("SELECT pg_sleep(30)")
        .execute(&mut c)
        .await
        .expect_err("statement_timeout");
    assert_eq!(sqlstate(&e).0, "57014", "{e}");
    c.execute("RESET statement_timeout").await.expect("reset");
    let n: i64 = sqlx::query_scalar(&count).fetch_one(&mut c).await.unwrap();
    assert_eq!(n, 520, "usable after the timeout");
    c.close().await.expect("close");

    abandoned_query_in_pool(&p, &opts, table).await;
    assert_eq!(p.http_get("/readyz").await.0, 200);
    p.stop().await;
}

/// A query dropped by `tokio::time::timeout` while it waits on a row lock:
/// sqlx sends no cancel, so the statement stays upstream until the lock is
/// released; the pool keeps serving and recovers the connection.
async fn abandoned_query_in_pool(p: &Proxy, opts: &PgConnectOptions, table: &str) {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts.clone().application_name("tw_sqlx_pool"))
        .await
        .expect("pool");
    {
        // open both connections
        let mut a = pool.acquire().await.expect("first");
        let mut b = pool.acquire().await.expect("second");
        a.execute("SELECT 1").await.expect("a");
        b.execute("SELECT 1").await.expect("b");
    }
    let w = world();
    let holder = w.superuser(&w.database("prod")).await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {table} WHERE id = 1 FOR UPDATE"
        ))
        .await
        .expect("row lock");
    let locking = format!("SELECT name FROM {table} WHERE id = $1 FOR UPDATE");
    let blocked = sqlx::query(&locking).bind(1i32).fetch_one(&pool);
    let r = tokio::time::timeout(Duration::from_millis(500), blocked).await;
    assert!(
        r.is_err(),
        "the query cannot finish while the row is locked"
    );
    // the abandoned statement is still upstream, waiting on the lock
    wait_activity("application_name = 'tw_sqlx_pool' AND wait_event_type = 'Lock'").await;
    let count = format!("SELECT count(*) FROM {table}");
    let n: i64 = sqlx::query_scalar(&count)
        .fetch_one(&pool)
        .await
        .expect("the pool serves from its other connection");
    assert_eq!(n, 520);
    holder.batch_execute("COMMIT").await.expect("release");
    // once the statement ends, both connections serve again
    let mut a = pool.acquire().await.expect("first again");
    let mut b = pool.acquire().await.expect("second again");
    for conn in [&mut a, &mut b] {
        let n: i64 = sqlx::query_scalar(&count)
            .fetch_one(&mut **conn)
            .await
            .expect("recovered");
        assert_eq!(n, 520);
    }
    drop((a, b));
    pool.close().await;
    // the proxy holds no session of the pool any more
    for _ in 0..200 {
        let (_, body) = p.http_get("/metrics").await;
        if metric(&body, "tierwarden_client_connections", &[("env", "prod")]) == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("client sessions left open in the proxy");
}
