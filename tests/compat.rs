//! Client compatibility through the real proxy to real PostgreSQL: psql,
//! pgbench, tokio-postgres, sqlx, psycopg 3, asyncpg, node-postgres and
//! pgjdbc each run a simple query, parameterized/prepared statements, a
//! transaction rolled back, COPY, a cancel and a policy denial as
//! `app_runtime` in the production-tier environment over TLS verified
//! against the quickstart CA (verify-full). The scripts live in
//! `tests/compat/` (python, node, java — Java is compiled here with javac);
//! each prints `ok <step>` lines and `ALL OK`. A missing runtime or library
//! FAILS the test with the command that installs it (`.ci/run` installs them
//! all). sqlx (a dev-dependency) runs in-process in `compat/sqlx_client.rs`;
//! it has no cancel API, so its test covers statement_timeout and a query
//! dropped by a timeout instead.
//!
//! Migration tools as `ci_migrator` (alembic, knex in
//! `compat/migrations.rs`; sqlx's `Migrator` in `compat/sqlx_migrate.rs`;
//! the `sqlx migrate run` command in `compat/sqlx_cli.rs`) are included
//! below.
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

#[path = "compat/migrations.rs"]
mod migrations;
#[path = "compat/sqlx_cli.rs"]
mod sqlx_cli;
#[path = "compat/sqlx_client.rs"]
mod sqlx_client;
#[path = "compat/sqlx_migrate.rs"]
mod sqlx_migrate;

use std::time::Duration;

use support::{backend_pid, start_proxy, world, Proxy};
use tierwarden::quickstart::layout::{upstream_user, UpstreamKind};

/// Where the client scripts live.
pub const COMPAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");
/// Installs the Python libraries.
pub const PIP: &str = "pip install --quiet 'psycopg[binary]' asyncpg alembic";
/// Installs the npm packages (pinned by tests/compat/node/package-lock.json).
pub const NPM: &str = "npm ci --prefix tests/compat/node";
/// Installs pgjdbc and a JDK.
pub const APT_JDBC: &str =
    "apt-get install -y --no-install-recommends libpostgresql-jdbc-java default-jdk-headless";
/// The pgjdbc jar of the Debian package.
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";
/// Steps every client script must report.
const STEPS: [&str; 7] = [
    "tls verify-full",
    "simple query",
    "prepared statement",
    "transaction rollback",
    "copy in and out",
    "denial 42501, session usable",
    "cancel",
];

/// Run a program with extra environment; None when it cannot be started.
/// Returns (exit code, stdout, stderr); a run over 240 s fails the test.
pub async fn exec(
    cmd: &str,
    args: &[&str],
    env: &[(String, String)],
) -> Option<(i32, String, String)> {
    let child = tokio::process::Command::new(cmd)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), child)
        .await
        .unwrap_or_else(|_| panic!("{cmd} {args:?} did not finish in 240 s"))
        .ok()?;
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Fail with the install command unless `cmd args` runs and exits 0;
/// returns its stdout.
pub async fn require(what: &str, cmd: &str, args: &[&str], install: &str) -> String {
    match exec(cmd, args, &[]).await {
        Some((0, out, _)) => out,
        Some((_, _, err)) => panic!(
            "{what} is missing ({}); install it with: {install}",
            err.trim().lines().last().unwrap_or("")
        ),
        None => panic!("{what} is missing ({cmd} not found); install it with: {install}"),
    }
}

/// Connection details for a script: TW_HOST TW_PORT TW_USER TW_PASSWORD
/// TW_DB TW_CA TW_TABLE.
pub fn tw_env(p: &Proxy, role: &str, env: &str, table: &str) -> Vec<(String, String)> {
    let w = world();
    [
        ("TW_HOST", "127.0.0.1".to_string()),
        ("TW_PORT", p.addrs[env].port().to_string()),
        ("TW_USER", w.user(role)),
        ("TW_PASSWORD", w.password(role, env)),
        ("TW_DB", w.database(env)),
        ("TW_CA", w.ca.display().to_string()),
        ("TW_TABLE", table.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The same for libpq programs (psql, pgbench), verify-full.
fn pg_env(p: &Proxy, role: &str, env: &str) -> Vec<(String, String)> {
    let w = world();
    [
        ("PGHOST", "127.0.0.1".to_string()),
        ("PGPORT", p.addrs[env].port().to_string()),
        ("PGUSER", w.user(role)),
        ("PGPASSWORD", w.password(role, env)),
        ("PGDATABASE", w.database(env)),
        ("PGSSLMODE", "verify-full".to_string()),
        ("PGSSLROOTCERT", w.ca.display().to_string()),
        ("PGCONNECT_TIMEOUT", "10".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A fresh prod table `name(id int primary key, name text)`, created by the
/// prod owner (so `app_runtime`'s upstream user gets DML by default privileges).
async fn prod_table(name: &str) {
    let w = world();
    let owner = upstream_user("prod", UpstreamKind::Owner);
    w.superuser(&w.database("prod"))
        .await
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE {owner}; DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (id int PRIMARY KEY, name text NOT NULL); COMMIT"
        ))
        .await
        .expect("create prod table");
}

/// Rows of a prod table, read by the superuser (bypassing the proxy).
async fn prod_rows(name: &str) -> i64 {
    let w = world();
    w.superuser(&w.database("prod"))
        .await
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// Run a client script against prod as app_runtime and check every step.
async fn run_client(client: &str, cmd: &str, args: &[&str]) {
    let table = format!("compat_{client}");
    prod_table(&table).await;
    let p = start_proxy(|_| {}).await;
    let env = tw_env(&p, "app_runtime", "prod", &table);
    let (rc, out, err) = exec(cmd, args, &env)
        .await
        .unwrap_or_else(|| panic!("{cmd} could not be started"));
    let version = out
        .lines()
        .find(|l| l.starts_with("version "))
        .unwrap_or("version ?");
    eprintln!("{client}: {version}\n{out}");
    assert_eq!(rc, 0, "{client} failed ({version}):\n{out}\n{err}");
    for step in STEPS {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("ok {step}"))),
            "{client}: step `{step}` missing:\n{out}\n{err}"
        );
    }
    assert!(
        out.lines().any(|l| l == "ALL OK"),
        "{client}:\n{out}\n{err}"
    );
    // 20 inserted + 500 copied really reached the upstream; the rollback did not
    assert_eq!(
        prod_rows(&table).await,
        520,
        "{client}: rows in the database"
    );
    p.stop().await;
}

#[tokio::test]
async fn psycopg3() {
    let v = require(
        "psycopg 3",
        "python3",
        &["-c", "import psycopg; print(psycopg.__version__)"],
        PIP,
    )
    .await;
    eprintln!("psycopg {}", v.trim());
    let script = format!("{COMPAT}/python/psycopg_compat.py");
    run_client("psycopg", "python3", &[&script]).await;
}

#[tokio::test]
async fn asyncpg() {
    require("asyncpg", "python3", &["-c", "import asyncpg"], PIP).await;
    let script = format!("{COMPAT}/python/asyncpg_compat.py");
    run_client("asyncpg", "python3", &[&script]).await;
}

#[tokio::test]
async fn node_postgres() {
    require(
        "node",
        "node",
        &["--version"],
        "apt-get install -y nodejs npm",
    )
    .await;
    let probe = format!("require('{COMPAT}/node/node_modules/pg'); require('{COMPAT}/node/node_modules/pg-copy-streams')");
    require("node-postgres (pg)", "node", &["-e", &probe], NPM).await;
    let script = format!("{COMPAT}/node/pg_compat.js");
    run_client("node_pg", "node", &[&script]).await;
}

#[tokio::test]
async fn pgjdbc() {
    require("javac", "javac", &["-version"], APT_JDBC).await;
    require("pgjdbc", "test", &["-r", JDBC_JAR], APT_JDBC).await;
    let classes = tempfile::tempdir().expect("tempdir");
    let out_dir = classes.path().display().to_string();
    let src = format!("{COMPAT}/java/Compat.java");
    let (rc, _, err) = exec("javac", &["-cp", JDBC_JAR, "-d", &out_dir, &src], &[])
        .await
        .expect("javac runs");
    assert_eq!(rc, 0, "javac failed:\n{err}");
    let cp = format!("{out_dir}:{JDBC_JAR}");
    run_client("jdbc", "java", &["-cp", &cp, "Compat"]).await;
}

#[tokio::test]
async fn psql() {
    let v = require(
        "psql",
        "psql",
        &["--version"],
        "apt-get install -y postgresql-client",
    )
    .await;
    eprintln!("{}", v.trim());
    let table = "compat_psql";
    prod_table(table).await;
    let p = start_proxy(|_| {}).await;
    let env = pg_env(&p, "app_runtime", "prod");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("rows.tsv");
    let rows: String = (1000..1500).map(|i| format!("{i}\tcopied {i}\n")).collect();
    std::fs::write(&data, rows).expect("write rows");
    let cmds = [
        "\\conninfo".to_string(),
        "SELECT 40 + 2".to_string(),
        format!("INSERT INTO {table} SELECT g, 'n' || g FROM generate_series(1, 20) g"),
        "BEGIN".to_string(),
        format!("INSERT INTO {table} VALUES (100, 'gone')"),
        format!("UPDATE {table} SET name = 'changed'"),
        "ROLLBACK".to_string(),
        format!("\\copy {table} (id, name) FROM '{}'", data.display()),
        format!("\\copy (SELECT id FROM {table} WHERE id >= 1000) TO STDOUT"),
        format!("SELECT count(*) FROM {table} WHERE name <> 'changed'"),
    ];
    let mut args = vec!["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"];
    for c in &cmds {
        args.extend(["-c", c.as_str()]);
    }
    let (rc, out, err) = exec("psql", &args, &env).await.expect("psql runs");
    assert_eq!(rc, 0, "psql:\n{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(out.contains("SSL connection"), "TLS in use:\n{out}");
    assert!(lines.contains(&"42"), "simple query:\n{out}");
    let copied = lines
        .iter()
        .filter(|l| l.parse::<i32>().is_ok_and(|n| n >= 1000))
        .count();
    assert_eq!(copied, 500, "copy out:\n{out}");
    assert_eq!(
        lines.last(),
        Some(&"520"),
        "rollback undid the update:\n{out}"
    );
    // a denial is an error; the next command of the same session still runs
    let (rc, out, err) = exec(
        "psql",
        &[
            "-X",
            "-At",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "CREATE TABLE compat_psql_denied (a int)",
            "-c",
            "SELECT 'usable'",
        ],
        &env,
    )
    .await
    .expect("psql runs");
    // (without ON_ERROR_STOP psql's exit code is the last command's)
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("ERROR:  42501: tierwarden: denied"), "{err}");
    assert_eq!(out.trim(), "usable", "session usable after the denial");
    psql_cancel(&env).await;
    p.stop().await;
}

/// Ctrl-C in psql sends a CancelRequest (libpq PQcancel) through the proxy.
async fn psql_cancel(env: &[(String, String)]) {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(["-X", "-c", "SELECT pg_sleep(60)"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PGAPPNAME", "tw_psql_cancel")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("psql starts");
    wait_sleeping("application_name = 'tw_psql_cancel'").await;
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("psql ended after the cancel")
        .expect("psql output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "psql cancel: {err}"
    );
}

#[tokio::test]
async fn pgbench_modes_over_verify_full() {
    let v = require(
        "pgbench",
        "pgbench",
        &["--version"],
        "apt-get install -y postgresql-contrib",
    )
    .await;
    eprintln!("{}", v.trim());
    let table = "compat_pgbench";
    prod_table(table).await;
    let w = world();
    w.superuser(&w.database("prod"))
        .await
        .batch_execute(&format!(
            "INSERT INTO {table} SELECT g, 'n' || g FROM generate_series(1, 20) g"
        ))
        .await
        .expect("rows");
    let p = start_proxy(|_| {}).await;
    let env = pg_env(&p, "app_runtime", "prod");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("bench.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, 20)\n\
             BEGIN;\n\
             SELECT name FROM {table} WHERE id = :id;\n\
             UPDATE {table} SET name = name WHERE id = :id;\n\
             END;\n"
        ),
    )
    .expect("script");
    let script = script.display().to_string();
    for mode in ["simple", "extended", "prepared"] {
        let (rc, out, err) = exec(
            "pgbench",
            &["-n", "-M", mode, "-c", "2", "-t", "25", "-f", &script],
            &env,
        )
        .await
        .expect("pgbench runs");
        assert_eq!(rc, 0, "pgbench -M {mode}:\n{out}\n{err}");
        assert!(out.contains("number of failed transactions: 0"), "{out}");
        assert!(
            out.contains("number of transactions actually processed: 50/50"),
            "{out}"
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn tokio_postgres() {
    use futures_util::{SinkExt, StreamExt};
    let table = "compat_tokio_postgres";
    prod_table(table).await;
    let p = start_proxy(|_| {}).await;
    // TLS with the quickstart CA and SCRAM-SHA-256-PLUS
    let c = p
        .connect("app_runtime", "prod")
        .await
        .expect("TLS connects");
    let r = c
        .simple_query("SELECT 40 + 2; SELECT 'two'")
        .await
        .expect("simple");
    assert!(
        matches!(&r[1], tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("42"))
    );
    let ins = c
        .prepare(&format!("INSERT INTO {table} (id, name) VALUES ($1, $2)"))
        .await
        .expect("prepare");
    for i in 1..=20i32 {
        c.execute(&ins, &[&i, &format!("n{i}")])
            .await
            .expect("insert");
    }
    let mut c = c;
    let tx = c.transaction().await.expect("begin");
    tx.execute(&format!("UPDATE {table} SET name = 'changed'"), &[])
        .await
        .expect("update");
    tx.rollback().await.expect("rollback");
    let name: String = c
        .query_one(&format!("SELECT name FROM {table} WHERE id = $1"), &[&1i32])
        .await
        .expect("select")
        .get(0);
    assert_eq!(name, "n1", "rolled back");
    let sink = c
        .copy_in(&format!("COPY {table} (id, name) FROM STDIN"))
        .await
        .expect("copy in");
    let mut sink = Box::pin(sink);
    let rows: String = (1000..1500).map(|i| format!("{i}\tcopied {i}\n")).collect();
    sink.send(bytes::Bytes::from(rows)).await.expect("send");
    assert_eq!(sink.as_mut().finish().await.expect("finish"), 500);
    let out = c
        .copy_out(&format!(
            "COPY (SELECT id FROM {table} WHERE id >= 1000) TO STDOUT"
        ))
        .await
        .expect("copy out");
    let chunks: Vec<_> = Box::pin(out).collect().await;
    let text: Vec<u8> = chunks
        .into_iter()
        .flat_map(|b| b.expect("chunk").to_vec())
        .collect();
    assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 500);
    let e = c
        .batch_execute("CREATE TABLE compat_tp_denied (a int)")
        .await
        .expect_err("denied");
    assert!(support::is_denial(&e), "{e}");
    // cancel over TLS
    let token = c.cancel_token();
    let pid = backend_pid(&c).await;
    let q = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(60)").await });
    wait_sleeping(&format!("pid = {pid}")).await;
    token
        .cancel_query(support::tls_connector())
        .await
        .expect("cancel sent");
    let r = tokio::time::timeout(Duration::from_secs(30), q)
        .await
        .expect("cancel took effect")
        .expect("task");
    assert_eq!(support::code(&r.expect_err("cancelled")), "57014");
    assert_eq!(prod_rows(table).await, 520);
    eprintln!("tokio-postgres {}", lock_version("tokio-postgres"));
    p.stop().await;
}

/// Wait (bounded) until the backend selected by `cond` sleeps in pg_sleep.
async fn wait_sleeping(cond: &str) {
    let su = world().superuser("postgres").await;
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND {cond}");
    for _ in 0..200 {
        let n: i64 = su.query_one(&sql, &[]).await.expect("poll").get(0);
        if n == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the query to cancel never started ({cond})");
}

/// A crate's version from Cargo.lock (for the compatibility table).
pub fn lock_version(name: &str) -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .unwrap_or_default();
    let key = format!("name = \"{name}\"\nversion = \"");
    lock.find(&key)
        .and_then(|i| lock[i + key.len()..].split('"').next())
        .unwrap_or("?")
        .to_string()
}
