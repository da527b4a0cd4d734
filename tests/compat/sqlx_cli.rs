//! `sqlx migrate run` — the sqlx command-line tool itself, a separate
//! process — as `ci_migrator` over TLS verify-full, included by
//! tests/compat.rs. It works in its own schema (`tw_cli`, through
//! `options=-c search_path=tw_cli` in the URL, a startup setting the policy
//! allows) so its `_sqlx_migrations` ledger is its own. Three schema steps
//! (`sqlx/cli/migrations`) run in stage, then in prod (promotion order), and
//! again as a no-op; a seeding step is denied (42501) and writes nothing; a
//! step that applies in stage and fails midway in prod leaves nothing and
//! counts `tierwarden_migrations_total{env="prod",outcome="failed"}` — the
//! tool exits right after the error, its ROLLBACK unanswered.
//! Needs `sqlx` on PATH: `cargo install sqlx-cli@0.8.6 --locked
//! --no-default-features --features postgres,rustls` (`.ci/run` does it).

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tierwarden::quickstart::layout::{upstream_user, UpstreamKind};

use super::migrations::{
    env_exec, nothing_applied_in_prod, prod_denials, prod_exec, prod_migrations, prod_value,
};
use super::sqlx_migrate::failed_becomes;
use super::support::{start_proxy, world, Proxy};
use super::{exec, require, COMPAT};

/// Installs the sqlx command-line tool.
pub const SQLX_CLI: &str =
    "cargo install sqlx-cli@0.8.6 --locked --no-default-features --features postgres,rustls";

/// Percent-encode a URL component.
fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// The URL `sqlx` gets: ci_migrator in `env`, verify-full, schema tw_cli.
fn url(p: &Proxy, env: &str) -> String {
    let w = world();
    format!(
        "postgres://{}:{}@127.0.0.1:{}/{}?sslmode=verify-full&sslrootcert={}&options={}",
        enc(&w.user("ci_migrator")),
        enc(&w.password("ci_migrator", env)),
        p.addrs[env].port(),
        w.database(env),
        enc(&w.ca.display().to_string()),
        enc("-c search_path=tw_cli"),
    )
}

/// A migrations directory: `sqlx/cli/migrations` plus `sqlx/cli/<extra>`.
fn dir(extra: Option<&str>) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for src in std::iter::once("migrations").chain(extra) {
        for f in std::fs::read_dir(format!("{COMPAT}/sqlx/cli/{src}")).expect("source") {
            let f = f.expect("entry").path();
            std::fs::copy(&f, d.path().join(f.file_name().expect("name"))).expect("copy");
        }
    }
    d
}

/// `sqlx migrate run` in `env`: (exit code, stdout + stderr).
async fn migrate_run(p: &Proxy, env: &str, d: &tempfile::TempDir) -> (i32, String) {
    let source = d.path().display().to_string();
    let u = url(p, env);
    let (rc, out, err) = exec(
        "sqlx",
        &["migrate", "run", "--source", &source, "--database-url", &u],
        &[],
    )
    .await
    .expect("sqlx runs");
    (rc, format!("{out}{err}"))
}

#[tokio::test]
async fn sqlx_migrate_run_cli_as_ci_migrator_in_prod() {
    let v = require("sqlx-cli", "sqlx", &["--version"], SQLX_CLI).await;
    eprintln!("{}", v.trim());
    for env in ["stage", "prod"] {
        let owner = upstream_user(env, UpstreamKind::Owner);
        env_exec(
            env,
            &format!("CREATE SCHEMA IF NOT EXISTS tw_cli AUTHORIZATION {owner}"),
        )
        .await;
    }
    let p = start_proxy(|_| {}).await;
    let ledger = "SELECT string_agg(version::text || ':' || success::text, ',' ORDER BY version) \
                  FROM tw_cli._sqlx_migrations";
    let schema = dir(None);
    for env in ["stage", "prod", "prod"] {
        let (rc, out) = migrate_run(&p, env, &schema).await;
        assert_eq!(rc, 0, "sqlx migrate run in {env}:\n{out}");
    }
    assert_eq!(prod_value(ledger).await, "1:true,2:true,3:true");
    let cols = "SELECT string_agg(column_name::text, ',' ORDER BY column_name) \
                FROM information_schema.columns \
                WHERE table_schema = 'tw_cli' AND table_name = 'tw_cli_items'";
    assert_eq!(prod_value(cols).await, "id,name,sku");
    assert_eq!(
        prod_denials(&p).await,
        0.0,
        "the tool needed a denied statement"
    );

    // data seeding as a migration: denied, nothing written
    let (rc, out) = migrate_run(&p, "prod", &dir(Some("seed"))).await;
    assert_ne!(rc, 0, "{out}");
    assert!(out.contains("tierwarden: denied"), "{out}");
    assert_eq!(
        prod_value("SELECT count(*)::text FROM tw_cli.tw_cli_items").await,
        "0"
    );
    assert_eq!(prod_value(ledger).await, "1:true,2:true,3:true");

    // applies in stage, fails midway in prod on prod's data
    let broken = dir(Some("broken"));
    let (rc, out) = migrate_run(&p, "stage", &broken).await;
    assert_eq!(rc, 0, "the broken step applies in stage:\n{out}");
    prod_exec("INSERT INTO tw_cli.tw_cli_items (sku, name) VALUES ('a', 'dup'), ('b', 'dup')")
        .await;
    let failed = prod_migrations(&p, "failed").await;
    let (rc, out) = migrate_run(&p, "prod", &broken).await;
    assert_ne!(rc, 0, "{out}");
    assert!(
        out.contains("could not create unique index \"tw_cli_items_name_uq\""),
        "{out}"
    );
    nothing_applied_in_prod(
        "tw_cli.tw_cli_broken",
        (cols, "id,name,sku"),
        (ledger, "1:true,2:true,3:true"),
    )
    .await;
    failed_becomes(&p, failed + 1.0).await;
    p.stop().await;
}
