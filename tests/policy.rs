//! The role matrix enforced end to end through the real proxy (SPEC §4,
//! THREATS.md): the whole statement corpus for every (role, environment)
//! pair of the default matrix with both protocols (`policy/matrix.rs`);
//! denial semantics inside transactions (simple and pipelined extended);
//! multi-statement smuggling, PREPARE/EXECUTE, protocol Parse/Bind/Execute,
//! cursors, FunctionCall and malformed Query text (`policy/raw.rs` speaks the
//! protocol directly); defense in depth for read-only levels; the exact shape
//! of a denial; COPY by direction.
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

#[path = "policy/matrix.rs"]
mod matrix;
#[path = "policy/protocol.rs"]
mod protocol;
#[path = "policy/raw.rs"]
mod raw;

use raw::Raw;
use support::{code, is_denial, start_proxy, world, Proxy};
use tierwarden::config::GateMode;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Superuser client on an environment's database.
async fn su(env: &str) -> Client {
    world().superuser(&world().database(env)).await
}

/// Run `sql` as the environment's schema owner (objects get the default grants).
async fn as_owner(env: &str, sql: &str) {
    su(env)
        .await
        .batch_execute(&format!("SET ROLE tw_{env}_owner; {sql}; RESET ROLE"))
        .await
        .unwrap_or_else(|e| panic!("owner setup in {env}: {e}"));
}

async fn count(env: &str, sql: &str) -> i64 {
    su(env)
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn exists(env: &str, rel: &str) -> bool {
    su(env)
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&rel])
        .await
        .expect("regclass")
        .get(0)
}

fn rows(m: &[SimpleQueryMessage]) -> usize {
    m.iter()
        .filter(|x| matches!(x, SimpleQueryMessage::Row(_)))
        .count()
}

#[track_caller]
fn denied<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: allowed ({v:?}), expected a tierwarden denial"),
        Err(e) => assert!(is_denial(&e), "{what}: expected a denial, got {e:?}"),
    }
}

/// A proxy with the promotion gate off (SPEC §10 has its own tests in
/// tests/promotion.rs): these tests are about the role matrix alone.
async fn proxy() -> Proxy {
    start_proxy(|cfg| {
        for e in cfg.environments.values_mut() {
            e.promotion_gate = Some(GateMode::Off);
        }
    })
    .await
}

async fn raw_login(p: &Proxy, role: &str, env: &str) -> Raw {
    let w = world();
    Raw::connect(
        p.addrs[env],
        &w.user(role),
        &w.password(role, env),
        &w.database(env),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_matrix_through_the_proxy() {
    let p = proxy().await;
    let pairs = matrix::pairs();
    let (rep, took) = matrix::run_all(&p).await;
    let corpus = tierwarden::policy::corpus_all().count();
    for m in &rep.mismatches {
        println!(
            "MISMATCH {}@{} {:?} expected {} observed [{}]: {}",
            m.role,
            m.env,
            m.proto,
            if m.expected_denied {
                "denied"
            } else {
                "not denied"
            },
            m.observed,
            m.sql
        );
    }
    println!(
        "corpus matrix: {corpus} statements ({} skipped per run) x {} pairs x 2 protocols = {} runs, \
         {} denied, {} mismatches, {} reconnects, {:.1} s",
        rep.skipped / (pairs.len() * 2),
        pairs.len(),
        rep.runs,
        rep.denied,
        rep.mismatches.len(),
        rep.reconnects,
        took.as_secs_f64()
    );
    assert_eq!(pairs.len(), 19, "default matrix has 19 non-none pairs");
    assert_eq!(rep.runs + rep.skipped, corpus * pairs.len() * 2);
    assert!(
        rep.denied > 0 && rep.denied < rep.runs,
        "some denied, some not"
    );
    assert!(
        rep.mismatches.is_empty(),
        "{} mismatches",
        rep.mismatches.len()
    );
    p.stop().await;
}

#[tokio::test]
async fn denial_fails_a_migration_transaction() {
    let p = proxy().await;
    let c = p.connect("ci_migrator", "prod").await.expect("connects");
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute("CREATE SCHEMA tw_txmig")
        .await
        .expect("ddl at migrate");
    c.batch_execute("CREATE TABLE tw_txmig.schema_migrations (version text PRIMARY KEY)")
        .await
        .expect("ddl");
    c.batch_execute("INSERT INTO tw_txmig.schema_migrations VALUES ('1')")
        .await
        .expect("ledger write allowed at migrate");
    c.batch_execute("CREATE TABLE tw_txmig.items (id int)")
        .await
        .expect("ddl");
    denied(
        c.batch_execute("INSERT INTO tw_txmig.items VALUES (1)")
            .await,
        "non-ledger write at migrate",
    );
    let e = c.batch_execute("SELECT 1").await.expect_err("tx failed");
    assert_eq!(code(&e), "25P02", "{e:?}");
    c.batch_execute("COMMIT")
        .await
        .expect("COMMIT answers (as ROLLBACK)");
    let gone: bool = su("prod")
        .await
        .query_one("SELECT to_regnamespace('tw_txmig') IS NULL", &[])
        .await
        .expect("q")
        .get(0);
    assert!(gone, "the half-allowed migration never committed");
    // A half-allowed message in autocommit is not sent at all.
    denied(
        c.batch_execute("CREATE TABLE tw_txmig2 (id int); INSERT INTO tw_txmig2 VALUES (1)")
            .await,
        "ddl + non-ledger write in one message",
    );
    assert!(!exists("prod", "tw_txmig2").await);
    // The session stays usable.
    c.batch_execute("BEGIN; CREATE TABLE tw_txmig3 (id int); ROLLBACK")
        .await
        .expect("usable");
    p.stop().await;
}

#[tokio::test]
async fn denial_fails_ro_and_rw_transactions() {
    let p = proxy().await;
    // ro: a write in the middle of a read transaction
    let ro = p.connect("auditor", "prod").await.expect("connects");
    ro.batch_execute("BEGIN").await.expect("begin");
    let n = ro
        .simple_query("SELECT count(*) FROM accounts")
        .await
        .expect("read");
    assert_eq!(rows(&n), 1);
    denied(
        ro.batch_execute("UPDATE accounts SET name = 'tw_x'").await,
        "ro write",
    );
    let e = ro.batch_execute("SELECT 1").await.expect_err("tx failed");
    assert_eq!(code(&e), "25P02");
    ro.batch_execute("COMMIT").await.expect("commit → rollback");
    ro.batch_execute("SELECT 1").await.expect("usable");
    assert_eq!(
        count("prod", "SELECT count(*) FROM accounts WHERE name = 'tw_x'").await,
        0
    );
    // rw in production: allowed INSERT, denied ddl, COMMIT → nothing committed
    as_owner("prod", "CREATE TABLE tw_tx_app (id int)").await;
    let rw = p.connect("app_runtime", "prod").await.expect("connects");
    rw.batch_execute("BEGIN").await.expect("begin");
    rw.batch_execute("INSERT INTO tw_tx_app VALUES (1)")
        .await
        .expect("dml allowed");
    denied(
        rw.batch_execute("CREATE TABLE tw_tx_app2 (id int)").await,
        "ddl at rw in production",
    );
    let e = rw.batch_execute("SELECT 1").await.expect_err("tx failed");
    assert_eq!(code(&e), "25P02");
    rw.batch_execute("COMMIT").await.expect("commit → rollback");
    assert_eq!(count("prod", "SELECT count(*) FROM tw_tx_app").await, 0);
    assert!(!exists("prod", "tw_tx_app2").await);
    rw.batch_execute("BEGIN; INSERT INTO tw_tx_app VALUES (2); COMMIT")
        .await
        .expect("usable after the rollback");
    assert_eq!(count("prod", "SELECT count(*) FROM tw_tx_app").await, 1);
    p.stop().await;
}

#[tokio::test]
async fn user_functions_cannot_write_for_read_only_levels() {
    let p = proxy().await;
    for env in ["dev", "prod"] {
        as_owner(
            env,
            "CREATE TABLE tw_sneaky_log (v text); \
             CREATE FUNCTION tw_sneaky() RETURNS int LANGUAGE plpgsql AS \
               $$ BEGIN INSERT INTO tw_sneaky_log VALUES ('x'); RETURN 1; END $$; \
             CREATE FUNCTION tw_sneaky_definer() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS \
               $$ BEGIN INSERT INTO public.tw_sneaky_log VALUES ('y'); RETURN 1; END $$",
        )
        .await;
    }
    for (role, env) in [
        ("auditor", "dev"),
        ("auditor", "prod"),
        ("human_admin", "prod"),
    ] {
        let c = p.connect(role, env).await.expect("connects");
        for f in ["tw_sneaky", "tw_sneaky_definer"] {
            let sql = format!("SELECT {f}()");
            for e in [
                c.simple_query(&sql).await.map(|_| ()).expect_err("fails"),
                c.query(&sql, &[]).await.map(|_| ()).expect_err("fails"),
            ] {
                assert!(!is_denial(&e), "{role}@{env} {f}: the classifier allows it");
                // read-only transaction (25006) before any permission check
                assert_eq!(code(&e), "25006", "{role}@{env} {f}: {e:?}");
            }
        }
        let ro: String = c
            .query_one("SHOW default_transaction_read_only", &[])
            .await
            .expect("show")
            .get(0);
        assert_eq!(ro, "on");
        assert_eq!(count(env, "SELECT count(*) FROM tw_sneaky_log").await, 0);
    }
    p.stop().await;
}

#[tokio::test]
async fn read_only_escapes_are_denied() {
    let p = proxy().await;
    let escapes = [
        "SET default_transaction_read_only = off",
        "SET SESSION default_transaction_read_only TO false",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "RESET default_transaction_read_only",
        "RESET ALL",
        "DISCARD ALL",
        "BEGIN READ WRITE",
        "START TRANSACTION READ WRITE",
        "SET ROLE tw_dev_owner",
        "SET SESSION AUTHORIZATION DEFAULT",
    ];
    let in_tx = [
        "SET TRANSACTION READ WRITE",
        "SET transaction_read_only = off",
    ];
    for (role, env) in [
        ("auditor", "dev"),
        ("human_admin", "prod"),
        ("auditor", "prod"),
    ] {
        let c = p.connect(role, env).await.expect("connects");
        for sql in escapes {
            denied(c.simple_query(sql).await, &format!("{role}@{env}: {sql}"));
            denied(c.prepare(sql).await, &format!("{role}@{env} Parse: {sql}"));
        }
        for sql in in_tx {
            c.batch_execute("BEGIN").await.expect("begin");
            denied(c.simple_query(sql).await, &format!("{role}@{env}: {sql}"));
            c.batch_execute("ROLLBACK").await.expect("rollback");
        }
        let row = c
            .query_one(
                "SELECT current_setting('default_transaction_read_only'), \
                 current_setting('transaction_read_only')",
                &[],
            )
            .await
            .expect("still usable");
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            ("on".into(), "on".into()),
            "{role}@{env}"
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn denial_shape_and_usability() {
    let p = proxy().await;
    let cases = [
        ("auditor", "prod", "DELETE FROM accounts", "write", "ro"),
        (
            "app_runtime",
            "prod",
            "CREATE TABLE tw_shape (id int)",
            "ddl",
            "rw",
        ),
        (
            "ci_migrator",
            "prod",
            "UPDATE accounts SET name = 'x'",
            "write",
            "migrate",
        ),
        (
            "human_admin",
            "prod",
            "INSERT INTO accounts (email, name) VALUES ('a', 'b')",
            "write",
            "controlled",
        ),
        (
            "app_runtime",
            "dev",
            "SELECT pg_terminate_backend(1)",
            "privileged",
            "rw",
        ),
        ("auditor", "dev", "SELEC 1", "unclassified", "ro"),
        (
            "auditor",
            "test",
            "SET default_transaction_read_only = off",
            "privileged",
            "ro",
        ),
    ];
    for (role, env, sql, class, level) in cases {
        let c = p.connect(role, env).await.expect("connects");
        for in_tx in [false, true] {
            if in_tx {
                c.batch_execute("BEGIN").await.expect("begin");
            }
            let e = c.simple_query(sql).await.expect_err("denied");
            let d = e.as_db_error().expect("server error");
            println!(
                "DENIAL {role}@{env} `{sql}`\n  ERROR {}: {}\n  HINT: {}",
                d.code().code(),
                d.message(),
                d.hint().unwrap_or("")
            );
            assert_eq!(d.severity(), "ERROR");
            assert_eq!(d.code().code(), "42501");
            let msg = d.message();
            assert!(msg.starts_with("tierwarden: denied: "), "{msg}");
            assert!(msg.contains(class), "class {class}: {msg}");
            assert!(msg.contains(&format!("role {role}")), "{msg}");
            assert!(msg.contains(&format!("level {level}")), "{msg}");
            assert!(msg.contains(&format!("environment {env}")), "{msg}");
            assert!(
                d.hint().is_some_and(|h| h.len() > 20),
                "hint: {:?}",
                d.hint()
            );
            if in_tx {
                let e = c.batch_execute("SELECT 1").await.expect_err("failed tx");
                assert_eq!(code(&e), "25P02");
                c.batch_execute("ROLLBACK").await.expect("rollback");
            }
            let v = c.simple_query("SELECT 41 + 1").await.expect("usable");
            assert_eq!(rows(&v), 1);
        }
    }
    p.stop().await;
}

#[tokio::test]
async fn autocommit_only_statements_run_when_allowed() {
    // The matrix runs everything inside BEGIN … ROLLBACK, where these fail
    // upstream with 25001; here they run for real.
    let p = proxy().await;
    let rw = p.connect("app_runtime", "dev").await.expect("connects");
    rw.batch_execute("VACUUM accounts")
        .await
        .expect("maintenance at rw outside production");
    let m = p.connect("ci_migrator", "prod").await.expect("connects");
    m.batch_execute("CREATE INDEX CONCURRENTLY tw_ac_idx ON accounts (name)")
        .await
        .expect("ddl at migrate");
    m.batch_execute("DROP INDEX CONCURRENTLY tw_ac_idx")
        .await
        .expect("ddl at migrate");
    m.batch_execute("VACUUM accounts")
        .await
        .expect("maintenance at migrate");
    let prw = p.connect("app_runtime", "prod").await.expect("connects");
    denied(
        prw.simple_query("VACUUM accounts").await,
        "maintenance at rw in production",
    );
    let a = p.connect("auditor", "dev").await.expect("connects");
    denied(a.simple_query("VACUUM accounts").await, "maintenance at ro");
    p.stop().await;
}

/// `[policy] ddl_extensions`: a migration may create a listed extension in
/// production; everyone else, and every other extension, stays refused.
#[tokio::test]
async fn ddl_extensions_let_migrations_create_listed_extensions() {
    let p = start_proxy(|cfg| {
        cfg.policy.ddl_extensions = vec!["pgcrypto".into()];
        for e in cfg.environments.values_mut() {
            e.promotion_gate = Some(GateMode::Off);
        }
    })
    .await;
    let exists_sql = "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'";
    let app = p.connect("app_runtime", "prod").await.expect("connects");
    denied(
        app.simple_query("CREATE EXTENSION IF NOT EXISTS pgcrypto")
            .await,
        "app_runtime@prod CREATE EXTENSION pgcrypto",
    );
    let mig = p.connect("ci_migrator", "prod").await.expect("connects");
    denied(
        mig.simple_query("CREATE EXTENSION IF NOT EXISTS pgcrypto CASCADE")
            .await,
        "CASCADE",
    );
    denied(
        mig.simple_query("CREATE EXTENSION IF NOT EXISTS dblink")
            .await,
        "an extension not listed",
    );
    assert_eq!(count("prod", exists_sql).await, 0);
    mig.simple_query("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        .await
        .expect("ci_migrator creates a listed extension in prod");
    assert_eq!(count("prod", exists_sql).await, 1);
    denied(
        mig.simple_query("DROP EXTENSION pgcrypto").await,
        "DROP EXTENSION stays privileged",
    );
    su("prod")
        .await
        .batch_execute("DROP EXTENSION pgcrypto")
        .await
        .expect("cleanup");
    p.stop().await;
}
