//! sqlx migrations as `ci_migrator` (level `migrate` in the production
//! tier, over TLS verify-full), included by tests/compat.rs.
//! `sqlx::migrate::Migrator::run` is what `sqlx::migrate!().run(..)` does
//! and, plus sqlx's `pg_advisory_lock`, what `sqlx migrate run` does (the
//! same `Migrate` calls: create `_sqlx_migrations` if missing, dirty check,
//! ledger read with checksums, then each migration in a transaction with
//! its ledger row). The migrations live in `tests/compat/sqlx/`:
//! `migrations/` (create table, add column, create index) runs in stage and
//! then in prod (promotion order) and again as a no-op, with nothing denied
//! and three ledger rows in prod; `seed/` (an INSERT as a migration) is
//! denied with 42501 and writes nothing; `broken/` applies in stage and
//! fails midway in prod (a unique index over prod's duplicate names after
//! two statements succeeded), run as the CLI does (connection closed right
//! after the error, its ROLLBACK unanswered) and as an application's pool
//! does: nothing of it stays, no ledger row, and each run counts
//! `tierwarden_migrations_total{env="prod",outcome="failed"}` once.

use std::path::Path;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::{Connection, Executor};

use super::migrations::{
    env_value, metric, nothing_applied_in_prod, prod_denials, prod_exec, prod_migrations,
    prod_value,
};
use super::sqlx_client::{sqlstate, sqlx_options};
use super::support::{start_proxy, Proxy};
use super::COMPAT;

/// A migrations directory as a developer has it: the three schema steps of
/// `sqlx/migrations`, plus the files of `sqlx/<extra>` when given.
fn migrations_dir(extra: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = std::iter::once("migrations").chain(extra);
    for src in sources {
        let from = format!("{COMPAT}/sqlx/{src}");
        for f in std::fs::read_dir(&from).expect("migrations source") {
            let f = f.expect("entry").path();
            let name = f.file_name().expect("file name");
            std::fs::copy(&f, dir.path().join(name)).expect("copy migration");
        }
    }
    dir
}

/// Run the migrations of `dir` as `ci_migrator` in `env`, then close the
/// connection (which also frees sqlx's advisory lock after a failure).
async fn migrate(p: &Proxy, env: &str, dir: &Path) -> Result<(), MigrateError> {
    let m = Migrator::new(dir).await.expect("migrations resolve");
    let mut c = PgConnection::connect_with(&sqlx_options(p, "ci_migrator", env))
        .await
        .expect("ci_migrator connects over TLS verify-full");
    let r = m.run(&mut c).await;
    let _ = c.close().await;
    r
}

/// (version, SQLSTATE, message) of a migration that failed at the database.
fn failed_at(r: Result<(), MigrateError>) -> (i64, String, String) {
    match r {
        Err(MigrateError::ExecuteMigration(e, version)) => {
            let (code, msg) = sqlstate(&e);
            (version, code, msg)
        }
        other => panic!("expected a failed migration, got {other:?}"),
    }
}

#[tokio::test]
async fn sqlx_migrate_as_ci_migrator_in_prod() {
    let p = start_proxy(|_| {}).await;
    let ledger = "SELECT string_agg(version::text || ':' || success::text, ',' ORDER BY version) \
                  FROM _sqlx_migrations";
    let schema = migrations_dir(None);
    for env in ["stage", "prod"] {
        migrate(&p, env, schema.path())
            .await
            .unwrap_or_else(|e| panic!("sqlx migrate in {env}: {e}"));
    }
    assert_eq!(env_value("stage", ledger).await, "1:true,2:true,3:true");
    assert_eq!(prod_value(ledger).await, "1:true,2:true,3:true");
    assert!(prod_migrations(&p, "applied").await >= 3.0);
    // a second run finds everything applied (checksums read back) and is a no-op
    migrate(&p, "prod", schema.path())
        .await
        .expect("sqlx migrate again in prod");
    // not one statement of the tool (lock, catalog, ledger) was denied
    assert_eq!(
        prod_denials(&p).await,
        0.0,
        "sqlx needed a denied statement"
    );
    let cols = "SELECT string_agg(column_name::text, ',' ORDER BY column_name) \
                FROM information_schema.columns WHERE table_name = 'tw_sqlx_customers'";
    assert_eq!(prod_value(cols).await, "email,id,name");
    let index = "SELECT (to_regclass('public.tw_sqlx_customers_name_idx') IS NOT NULL)::text";
    assert_eq!(prod_value(index).await, "true");

    // a data-seeding migration is denied and writes nothing
    let seed = migrations_dir(Some("seed"));
    let (version, code, msg) = failed_at(migrate(&p, "prod", seed.path()).await);
    assert_eq!((version, code.as_str()), (4, "42501"), "{msg}");
    assert!(msg.starts_with("tierwarden: denied"), "{msg}");
    let rows = "SELECT count(*)::text FROM tw_sqlx_customers";
    assert_eq!(prod_value(rows).await, "0");
    assert_eq!(prod_value(ledger).await, "1:true,2:true,3:true");

    // a migration that applies in stage fails midway in prod on prod's data
    let broken = migrations_dir(Some("broken"));
    migrate(&p, "stage", broken.path())
        .await
        .expect("the broken migration applies in stage");
    prod_exec(
        "INSERT INTO tw_sqlx_customers (email, name) \
         VALUES ('a@example.com', 'dup'), ('b@example.com', 'dup')",
    )
    .await;
    // as `sqlx migrate run` does: the error ends the run, the connection goes
    let failed = prod_migrations(&p, "failed").await;
    let (version, code, msg) = failed_at(migrate(&p, "prod", broken.path()).await);
    assert_eq!((version, code.as_str()), (5, "23505"), "{msg}");
    nothing_applied_in_prod(
        "public.tw_sqlx_broken",
        (cols, "email,id,name"),
        (ledger, "1:true,2:true,3:true"),
    )
    .await;
    failed_becomes(&p, failed + 1.0).await;
    // as an application embedding its migrations does, with a pool that
    // then goes on serving: counted as a failed migration
    let (version, code, msg) = failed_at(migrate_pooled(&p, "prod", broken.path()).await);
    assert_eq!((version, code.as_str()), (5, "23505"), "{msg}");
    nothing_applied_in_prod(
        "public.tw_sqlx_broken",
        (cols, "email,id,name"),
        (ledger, "1:true,2:true,3:true"),
    )
    .await;
    failed_becomes(&p, failed + 2.0).await;
    p.stop().await;
}

/// Wait (up to 5 s: the session's end is recorded after the client left)
/// until prod's failed-migration counter is `n`.
pub(crate) async fn failed_becomes(p: &Proxy, n: f64) {
    let mut seen = 0.0;
    for _ in 0..100 {
        seen = prod_migrations(p, "failed").await;
        if seen == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("failed migrations in prod: {seen}, expected {n}");
}

/// Like [`migrate`], through a one-connection pool, as
/// `sqlx::migrate!().run(&pool)` in an application; the pool then serves a
/// query (so the connection came back: sqlx flushes the failed
/// transaction's ROLLBACK and waits for its answer when it does).
async fn migrate_pooled(p: &Proxy, env: &str, dir: &Path) -> Result<(), MigrateError> {
    let m = Migrator::new(dir).await.expect("migrations resolve");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(sqlx_options(p, "ci_migrator", env))
        .await
        .expect("pool connects over TLS verify-full");
    let r = m.run(&pool).await;
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .expect("the pool serves after the migration");
    pool.close().await;
    r
}

/// A client that leaves right after its migration failed (sqlx sends the
/// queued ROLLBACK together with Terminate) still counts a failed migration.
#[tokio::test]
async fn failed_migration_counted_when_the_client_leaves() {
    let p = start_proxy(|_| {}).await;
    let mut c = PgConnection::connect_with(&sqlx_options(&p, "ci_migrator", "stage"))
        .await
        .expect("connects");
    let mut tx = c.begin().await.expect("begin");
    let e = tx
        .execute("CREATE TABLE tw_sqlx_gap (a int); SELECT 1 / 0")
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&e).0, "22012", "{e}");
    drop(tx); // sqlx queues ROLLBACK; close() sends it with Terminate
    let _ = c.close().await;
    for _ in 0..100 {
        let (_, body) = p.http_get("/metrics").await;
        let labels = [("env", "stage"), ("outcome", "failed")];
        if metric(&body, "tierwarden_migrations_total", &labels) == 1.0 {
            p.stop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the failed migration was not counted");
}
