//! Migration tools as `ci_migrator` (level `migrate` in the production tier,
//! over TLS verify-full), included by tests/compat.rs: alembic and knex each
//! run a real multi-step migration in stage and then in prod (promotion
//! order) with their ledger writes allowed; the same tool's data-seeding
//! step is denied (42501 `tierwarden: denied`) and leaves no rows; a
//! migration that applies in stage but fails midway in prod (a unique index
//! over prod's duplicate data, after two statements succeeded) leaves
//! nothing applied (checked as superuser) and counts
//! `tierwarden_migrations_total{env="prod",outcome="failed"}`.

use super::support::{start_proxy, world, Proxy};
use super::{exec, require, tw_env, COMPAT, NPM, PIP};

/// Sum of a metric's samples whose labels include every `labels` pair.
pub(crate) fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// `tierwarden_migrations_total{env="prod",outcome}` of a proxy.
pub(crate) async fn prod_migrations(p: &Proxy, outcome: &str) -> f64 {
    let (status, body) = p.http_get("/metrics").await;
    assert_eq!(status, 200);
    metric(
        &body,
        "tierwarden_migrations_total",
        &[("env", "prod"), ("outcome", outcome)],
    )
}

/// Run statements as the superuser in `env`'s database (test data setup).
pub(crate) async fn env_exec(env: &str, sql: &str) {
    let w = world();
    w.superuser(&w.database(env))
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Run statements as the superuser in prod's database (test data setup).
pub(crate) async fn prod_exec(sql: &str) {
    env_exec("prod", sql).await
}

/// `tierwarden_denied_total{env="prod"}` of a proxy (every role and class).
pub(crate) async fn prod_denials(p: &Proxy) -> f64 {
    let (_, body) = p.http_get("/metrics").await;
    metric(&body, "tierwarden_denied_total", &[("env", "prod")])
}

/// A single value read by the superuser in `env`'s database.
pub(crate) async fn env_value(env: &str, sql: &str) -> String {
    let w = world();
    let row = w
        .superuser(&w.database(env))
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get(0)
}

/// A single value read by the superuser in prod's database.
pub(crate) async fn prod_value(sql: &str) -> String {
    env_value("prod", sql).await
}

/// Nothing of a migration that failed midway in prod stayed (checked as
/// superuser): its new table `table` (schema-qualified) is absent, the
/// column query `cols` still reads `columns`, the ledger query `ledger`
/// still reads `rows`.
pub(crate) async fn nothing_applied_in_prod(
    table: &str,
    (cols, columns): (&str, &str),
    (ledger, rows): (&str, &str),
) {
    let gone = format!("SELECT (to_regclass('{table}') IS NULL)::text");
    assert_eq!(
        prod_value(&gone).await,
        "true",
        "table of the failed migration"
    );
    assert_eq!(
        prod_value(cols).await,
        columns,
        "column of the failed migration"
    );
    assert_eq!(prod_value(ledger).await, rows, "ledger unchanged");
}

#[tokio::test]
async fn alembic_as_ci_migrator_in_prod() {
    let v = require(
        "alembic",
        "python3",
        &[
            "-c",
            "import alembic, sqlalchemy, psycopg; print(alembic.__version__, sqlalchemy.__version__)",
        ],
        PIP,
    )
    .await;
    eprintln!("alembic, SQLAlchemy: {}", v.trim());
    let p = start_proxy(|_| {}).await;
    let ini = format!("{COMPAT}/python/alembic/alembic.ini");
    let alembic = |env: &'static str, target: &'static str| {
        let e = tw_env(&p, "ci_migrator", env, "");
        let ini = ini.clone();
        async move {
            exec(
                "python3",
                &["-m", "alembic", "-c", &ini, "upgrade", target],
                &e,
            )
            .await
            .expect("python3 runs")
        }
    };
    // the three-revision schema chain, stage first, then prod
    for env in ["stage", "prod"] {
        let (rc, out, err) = alembic(env, "0003").await;
        assert_eq!(rc, 0, "alembic upgrade 0003 in {env}:\n{out}\n{err}");
    }
    assert!(prod_migrations(&p, "applied").await >= 1.0);
    // not one statement of the tool (catalog reads, locks, ledger) was denied
    assert_eq!(
        prod_denials(&p).await,
        0.0,
        "alembic needed a denied statement"
    );
    let version = "SELECT string_agg(version_num, ',') FROM alembic_version";
    assert_eq!(prod_value(version).await, "0003");
    let cols = "SELECT string_agg(column_name::text, ',' ORDER BY column_name) \
                FROM information_schema.columns WHERE table_name = 'tw_alembic_customers'";
    assert_eq!(prod_value(cols).await, "email,id,name");

    // the data-seeding revision is denied; nothing is written
    let (rc, out, err) = alembic("prod", "0004").await;
    assert_ne!(rc, 0, "seeding must be denied:\n{out}\n{err}");
    assert!(err.contains("tierwarden: denied"), "{err}");
    assert!(err.contains("InsufficientPrivilege"), "42501:\n{err}");
    let rows = "SELECT count(*)::text FROM tw_alembic_customers";
    assert_eq!(prod_value(rows).await, "0");
    assert_eq!(prod_value(version).await, "0003");

    // a revision that applies in stage fails midway in prod on prod's data
    let (rc, out, err) = alembic("stage", "0005").await;
    assert_eq!(rc, 0, "alembic upgrade 0005 in stage:\n{out}\n{err}");
    prod_exec(
        "INSERT INTO tw_alembic_customers (email, name) \
         VALUES ('a@example.com', 'dup'), ('b@example.com', 'dup')",
    )
    .await;
    let failed = prod_migrations(&p, "failed").await;
    let (rc, out, err) = alembic("prod", "0005").await;
    assert_ne!(rc, 0, "the revision must fail in prod:\n{out}\n{err}");
    assert!(
        err.contains("psycopg.errors.UniqueViolation"),
        "fails at the index:\n{err}"
    );
    nothing_applied_in_prod(
        "public.tw_alembic_broken",
        (cols, "email,id,name"),
        (version, "0003"),
    )
    .await;
    assert_eq!(prod_migrations(&p, "failed").await, failed + 1.0);
    p.stop().await;
}

#[tokio::test]
async fn knex_as_ci_migrator_in_prod() {
    require(
        "node",
        "node",
        &["--version"],
        "apt-get install -y nodejs npm",
    )
    .await;
    let probe =
        format!("console.log(require('{COMPAT}/node/node_modules/knex/package.json').version)");
    let v = require("knex", "node", &["-e", &probe], NPM).await;
    eprintln!("knex {}", v.trim());
    let p = start_proxy(|_| {}).await;
    let script = format!("{COMPAT}/node/knex_migrate.js");
    let knex = |env: &'static str, mode: &'static str| {
        let e = tw_env(&p, "ci_migrator", env, "");
        let script = script.clone();
        async move { exec("node", &[&script, mode], &e).await.expect("node runs") }
    };
    for env in ["stage", "prod"] {
        let (rc, out, err) = knex(env, "migrate").await;
        assert_eq!(rc, 0, "knex migrate in {env}:\n{out}\n{err}");
        assert!(out.contains("ok migrate batch 1 ran 3"), "{out}");
    }
    assert!(prod_migrations(&p, "applied").await >= 1.0);
    assert_eq!(
        prod_denials(&p).await,
        0.0,
        "knex needed a denied statement"
    );
    let ledger = "SELECT string_agg(name, ',' ORDER BY id) FROM knex_migrations";
    let applied = prod_value(ledger).await;
    assert_eq!(applied.split(',').count(), 3, "{applied}");
    let cols = "SELECT string_agg(column_name::text, ',' ORDER BY column_name) \
                FROM information_schema.columns WHERE table_name = 'tw_knex_customers'";
    assert_eq!(prod_value(cols).await, "email,id,name");

    // knex seed:run is data writes: denied
    let (rc, out, err) = knex("prod", "seed").await;
    assert_eq!(rc, 3, "seeding must be denied:\n{out}\n{err}");
    assert!(
        out.contains("error 42501 ") && out.contains("tierwarden: denied"),
        "{out}"
    );
    let rows = "SELECT count(*)::text FROM tw_knex_customers";
    assert_eq!(prod_value(rows).await, "0");

    // a migration that applies in stage fails midway in prod on prod's data
    let (rc, out, err) = knex("stage", "broken").await;
    assert_eq!(rc, 0, "knex broken migration in stage:\n{out}\n{err}");
    assert!(out.contains("ok migrate batch 2 ran 1"), "{out}");
    prod_exec(
        "INSERT INTO tw_knex_customers (email, name) \
         VALUES ('a@example.com', 'dup'), ('b@example.com', 'dup')",
    )
    .await;
    let failed = prod_migrations(&p, "failed").await;
    let (rc, out, err) = knex("prod", "broken").await;
    assert_eq!(rc, 3, "the migration must fail in prod:\n{out}\n{err}");
    assert!(out.contains("error 23505 "), "fails at the index:\n{out}");
    nothing_applied_in_prod(
        "public.tw_knex_broken",
        (cols, "email,id,name"),
        (ledger, &applied),
    )
    .await;
    let locked = "SELECT string_agg(is_locked::text, ',') FROM knex_migrations_lock";
    assert_eq!(prod_value(locked).await, "0", "knex's lock released");
    assert_eq!(prod_migrations(&p, "failed").await, failed + 1.0);
    p.stop().await;
}
