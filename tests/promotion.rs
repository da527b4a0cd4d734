//! The migration promotion gate end to end: migrations by ci_migrator
//! promoted dev → test → stage → prod through the real proxy, outcomes in
//! the control database of the quickstart cluster.
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::{start_proxy, world};

/// Wait until the control database holds `n` records for `env`.
async fn wait_records(env: &str, n: i64) {
    let c = world().superuser("tierwarden_control").await;
    for _ in 0..100 {
        let got: i64 = c
            .query_one(
                "SELECT count(*) FROM tierwarden_migrations WHERE env = $1",
                &[&env],
            )
            .await
            .expect("count")
            .get(0);
        if got >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("control database never got {n} records for {env}");
}

async fn records(env: &str) -> i64 {
    let c = world().superuser("tierwarden_control").await;
    c.query_one(
        "SELECT count(*) FROM tierwarden_migrations WHERE env = $1",
        &[&env],
    )
    .await
    .expect("count")
    .get(0)
}

async fn table_exists(env: &str, table: &str) -> bool {
    let c = world().superuser(&world().database(env)).await;
    c.query_opt("SELECT 1 FROM pg_class WHERE relname = $1", &[&table])
        .await
        .expect("q")
        .is_some()
}

/// Run `sql` as ci_migrator in `env`; returns the error message if any.
async fn migrate(p: &support::Proxy, env: &str, sql: &str) -> Result<(), String> {
    let c = p.connect("ci_migrator", env).await.expect("connects");
    let before = records(env).await;
    let r = c.batch_execute(sql).await.map_err(|e| {
        e.as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string())
    });
    if r.is_ok() {
        wait_records(env, before + 1).await;
    }
    r
}

#[tokio::test]
async fn a_migration_promoted_in_order_reaches_prod_and_others_do_not() {
    let p = start_proxy(|_| {}).await;
    let m1 = "BEGIN; CREATE TABLE gate_t1 (id bigint PRIMARY KEY, n text DEFAULT 'a'); CREATE INDEX gate_t1_n ON gate_t1 (n); COMMIT";
    let m1_again = "begin;\n-- same migration, other spelling\ncreate table GATE_T1 (\n  id BIGINT primary key,\n  n TEXT default 'a'\n);\n/* index */ create index gate_t1_n on gate_t1(n);\ncommit;";
    for env in ["dev", "test", "stage"] {
        migrate(&p, env, m1)
            .await
            .unwrap_or_else(|e| panic!("{env}: {e}"));
    }
    migrate(&p, "prod", m1_again).await.expect(
        "applied in stage → accepted in prod (whitespace, comments and case do not matter)",
    );
    assert!(table_exists("prod", "gate_t1").await);

    // never run in stage: denied at its first ddl statement, nothing commits
    let c = p.connect("ci_migrator", "prod").await.expect("connects");
    c.batch_execute("BEGIN").await.expect("begin");
    let e = c
        .batch_execute("CREATE TABLE gate_t2 (id int)")
        .await
        .expect_err("not applied in stage");
    assert!(support::is_denial(&e), "{e:?}");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("has not been applied in stage"), "{msg}");
    let hint = e
        .as_db_error()
        .and_then(|d| d.hint().map(str::to_string))
        .unwrap_or_default();
    assert!(hint.contains("tierwarden migrations status"), "{hint}");
    assert_eq!(
        support::code(&c.batch_execute("SELECT 1").await.expect_err("tx failed")),
        "25P02"
    );
    c.batch_execute("COMMIT")
        .await
        .expect("commit answers ROLLBACK");
    assert!(!table_exists("prod", "gate_t2").await);

    // failed in stage: denied in prod
    migrate(&p, "dev", "CREATE TABLE gate_t3 (id int)")
        .await
        .expect("dev");
    migrate(&p, "test", "CREATE TABLE gate_t3 (id int)")
        .await
        .expect("test");
    let before = records("stage").await;
    let c = p.connect("ci_migrator", "stage").await.expect("connects");
    c.batch_execute("CREATE TABLE gate_t3 (id int); SELECT 1/0")
        .await
        .expect_err("fails in stage");
    wait_records("stage", before + 1).await;
    let e = migrate(&p, "prod", "CREATE TABLE gate_t3 (id int)")
        .await
        .expect_err("failed in stage → denied in prod");
    assert!(
        e.contains("last failed in stage") || e.contains("has not been applied in stage"),
        "{e}"
    );
    assert!(!table_exists("prod", "gate_t3").await);

    // the COMMIT-time check: a part of an applied migration is not that migration
    let two = "BEGIN; CREATE TABLE gate_t4a (id int); CREATE TABLE gate_t4b (id int); COMMIT";
    for env in ["dev", "test", "stage"] {
        migrate(&p, env, two)
            .await
            .unwrap_or_else(|e| panic!("{env}: {e}"));
    }
    let c = p.connect("ci_migrator", "prod").await.expect("connects");
    c.batch_execute("BEGIN; CREATE TABLE gate_t4a (id int)")
        .await
        .expect("statement belongs to an applied migration");
    let e = c
        .batch_execute("COMMIT")
        .await
        .expect_err("partial migration refused at COMMIT");
    assert!(support::is_denial(&e), "{e:?}");
    assert!(
        !table_exists("prod", "gate_t4a").await,
        "the COMMIT rolled back"
    );
    c.batch_execute("SELECT 1")
        .await
        .expect("session usable, transaction ended");

    // metrics and the status command
    let (_, metrics) = p.http_get("/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("tierwarden_promotion_denied_total{env=\"prod\"}")
                && !l.ends_with(" 0")
        ),
        "promotion denials counted"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tierwarden"))
        .args(["migrations", "status", "--config"])
        .arg(&world().config_path)
        .output()
        .await
        .expect("status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("CREATE TABLE gate_t1"), "{text}");
    assert!(
        text.contains("applied") && text.contains("failed"),
        "{text}"
    );
    p.stop().await;
}

#[tokio::test]
async fn warn_mode_allows_and_audits() {
    let p = start_proxy(|_| {}).await;
    // stage's default mode is warn: a migration never applied in test runs
    migrate(&p, "stage", "CREATE TABLE gate_w1 (id int)")
        .await
        .expect("warn mode allows");
    assert!(table_exists("stage", "gate_w1").await);
    let mut found = false;
    for _ in 0..50 {
        let text = std::fs::read_to_string(&p.audit).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("\"kind\":\"gate\"") && l.contains("gate_w1"))
        {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "gate decision audited");
    p.stop().await;
}
