//! Audit log and environment tokens end to end (issue 7, points 1–3),
//! through the real proxy against the real PostgreSQL world:
//! - the hash-chained audit file after a run (connects, statements —
//!   production: all, elsewhere only denied/ddl/privileged —, a denial, an
//!   auth failure, disconnects): `verify_file` OK, documented fields present,
//!   one flipped byte caught by the real `tierwarden audit verify`;
//!   `redact_literals = true` hides literals;
//! - production refuses statements (58030) when the audit sink cannot be
//!   written (`/dev/full`), other tiers keep working;
//! - tokens: break-glass for `human_admin@prod` (rw without ddl, every
//!   statement audited with the token's reason and id), read-only without a
//!   token, stage/expired/other-identity tokens rejected like a bad password,
//!   a token session closed at expiry with a FATAL, the CLI's production
//!   rules.
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{code, ended_with, is_denial, start_proxy, world};
use tierwarden::auth::token::{self, TokenKey, TokenRequest};

const BIN: &str = env!("CARGO_BIN_EXE_tierwarden");

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("audit file readable")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn key_path(env: &str) -> PathBuf {
    world().dir.join("secrets").join(format!("{env}.token.key"))
}

fn signing_key(env: &str) -> TokenKey {
    TokenKey::from_file(&key_path(env)).expect("quickstart token key")
}

fn request(identity: &str, role: &str, env: &str, ttl: Duration) -> TokenRequest {
    TokenRequest {
        identity: identity.into(),
        role: role.into(),
        env: env.into(),
        ttl,
        reason: Some("INC-4711 disk full".into()),
    }
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Records of `kind` (optionally only those whose statement contains `needle`).
fn of_kind<'a>(recs: &'a [Value], kind: &str, needle: Option<&str>) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["kind"] == kind)
        .filter(|r| needle.is_none_or(|n| r["statement"].as_str().is_some_and(|s| s.contains(n))))
        .collect()
}

fn has_fields(r: &Value, fields: &[&str]) {
    for f in fields {
        assert!(
            r.get(*f).is_some_and(|v| !v.is_null()),
            "record lacks {f}: {r}"
        );
    }
}

#[tokio::test]
async fn audit_chain_holds_carries_the_fields_and_catches_one_edited_byte() {
    let p = start_proxy(|_| {}).await;
    prod_table("CREATE TABLE IF NOT EXISTS au_items(id int primary key, name text)").await;
    let mig = p.connect("ci_migrator", "prod").await.expect("migrator");
    mig.simple_query("SELECT count(*) FROM au_items")
        .await
        .expect("read by migrate in prod");
    let app = p.connect("app_runtime", "prod").await.expect("app");
    app.batch_execute("INSERT INTO au_items VALUES (1, 'one') ON CONFLICT DO NOTHING")
        .await
        .expect("write by rw in prod");
    let aud = p.connect("auditor", "prod").await.expect("auditor");
    aud.simple_query("SELECT count(*) FROM au_items")
        .await
        .expect("read");
    let denied = aud
        .batch_execute("INSERT INTO au_items VALUES (2, 'two')")
        .await
        .expect_err("auditor may not write");
    assert!(is_denial(&denied), "{denied}");
    let bad = p
        .connect_tls("auditor", "prod", "not-the-password")
        .await
        .expect_err("wrong password");
    assert_eq!(code(&bad), "28P01");
    let dev = p.connect("app_runtime", "dev").await.expect("dev");
    dev.batch_execute("SELECT 424242").await.expect("dev read");
    dev.batch_execute("CREATE TABLE IF NOT EXISTS au_dev(id int)")
        .await
        .expect("dev ddl");
    drop((mig, app, aud, dev));
    let file = p.audit.clone();
    p.stop().await;

    let report = tierwarden::audit::verify_file(&file).expect("verify runs");
    assert!(report.is_ok(), "{report}");
    let recs = records(&file);
    for r in &recs {
        has_fields(
            r,
            &[
                "v", "seq", "prev", "time", "kind", "env", "identity", "outcome",
            ],
        );
    }
    // connects: one per session, with role, level and peer
    let connects = of_kind(&recs, "connect", None);
    for who in ["ci_migrator", "app_runtime", "auditor"] {
        let c = connects
            .iter()
            .find(|r| r["identity"] == who && r["env"] == "prod")
            .unwrap_or_else(|| panic!("no connect of {who}@prod"));
        has_fields(c, &["role", "level", "peer"]);
    }
    // production: every statement, with role, level, class, duration, text
    let read: Vec<&Value> = of_kind(&recs, "statement", Some("SELECT count(*) FROM au_items"))
        .into_iter()
        .filter(|r| r["identity"] == "auditor")
        .collect();
    assert_eq!(read.len(), 1, "prod read audited once");
    has_fields(
        read[0],
        &["role", "level", "class", "duration_ms", "statement"],
    );
    assert_eq!(read[0]["class"], "read");
    assert_eq!(read[0]["level"], "ro");
    assert_eq!(read[0]["outcome"], "ok");
    let write = of_kind(&recs, "statement", Some("INSERT INTO au_items VALUES (1"));
    assert_eq!(write.len(), 1);
    assert_eq!(write[0]["class"], "write");
    assert_eq!(write[0]["identity"], "app_runtime");
    let mread = of_kind(&recs, "statement", Some("SELECT count(*) FROM au_items"));
    assert!(mread
        .iter()
        .any(|r| r["identity"] == "ci_migrator" && r["level"] == "migrate"));
    // the denial, with its reason
    let den = of_kind(&recs, "statement", Some("INSERT INTO au_items VALUES (2"));
    assert_eq!(den.len(), 1);
    assert_eq!(den[0]["outcome"], "denied");
    assert!(den[0]["detail"].as_str().unwrap_or("").contains("denied"));
    // the auth failure, without a role (nothing is revealed)
    let af = of_kind(&recs, "auth_failure", None);
    assert!(
        af.iter()
            .any(|r| r["identity"] == "auditor" && r["env"] == "prod" && !r["peer"].is_null()),
        "{af:?}"
    );
    // other tiers: reads are not audited, ddl is
    assert!(of_kind(&recs, "statement", Some("424242")).is_empty());
    let dev_ddl = of_kind(&recs, "statement", Some("au_dev"));
    assert_eq!(dev_ddl.len(), 1);
    assert_eq!(dev_ddl[0]["env"], "dev");
    // disconnects, with the session length
    let disc = of_kind(&recs, "disconnect", None);
    assert_eq!(disc.len(), connects.len(), "one disconnect per connect");
    assert!(disc.iter().all(|r| r["duration_ms"].is_number()));

    // flip one byte inside the identity of a middle record
    let text = std::fs::read_to_string(&file).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let k = lines.len() / 2;
    let target = lines[k];
    let at = target.find("\"identity\":\"").expect("identity key") + "\"identity\":\"".len();
    let mut bytes = text.clone().into_bytes();
    let offset: usize = lines[..k].iter().map(|l| l.len() + 1).sum::<usize>() + at;
    bytes[offset] = if bytes[offset] == b'x' { b'y' } else { b'x' };
    let tampered = file.with_extension("tampered.jsonl");
    std::fs::write(&tampered, &bytes).expect("write copy");
    let (rc, out, _) =
        support::run(BIN, &["audit", "verify", &file.display().to_string()], &[]).await;
    assert_eq!(rc, 0, "untouched file verifies: {out}");
    let (rc, out, err) = support::run(
        BIN,
        &["audit", "verify", &tampered.display().to_string()],
        &[],
    )
    .await;
    assert_ne!(rc, 0, "tampered file must fail: {out} {err}");
    // line numbers are 1-based: the edited record is line k+1, the broken
    // link is the next line's prev.
    assert!(
        out.contains(&format!("BROKEN at line {}", k + 2))
            && out.contains(&format!("record {} was modified", k + 1)),
        "{out}"
    );
}

#[tokio::test]
async fn redact_literals_hides_literals_in_statement_records() {
    let p = start_proxy(|c| {
        if let Some(a) = c.audit.as_mut() {
            a.redact_literals = true;
        }
    })
    .await;
    let aud = p.connect("auditor", "prod").await.expect("auditor");
    aud.simple_query("SELECT 'hunter2-secret' AS s, 31337 AS n")
        .await
        .expect("read");
    let denied = aud
        .batch_execute("DELETE FROM pg_class WHERE relname = 'other-secret'")
        .await
        .expect_err("denied");
    assert!(is_denial(&denied), "{denied}");
    drop(aud);
    let file = p.audit.clone();
    p.stop().await;
    let text = std::fs::read_to_string(&file).expect("audit");
    assert!(!text.contains("hunter2-secret"), "{text}");
    assert!(!text.contains("31337"), "{text}");
    assert!(!text.contains("other-secret"), "{text}");
    let recs = records(&file);
    let stmts = of_kind(&recs, "statement", None);
    assert!(
        stmts.iter().any(|r| r["statement"]
            .as_str()
            .is_some_and(|s| s.contains("SELECT $1"))),
        "{stmts:?}"
    );
    assert!(stmts.iter().any(|r| r["outcome"] == "denied"));
    assert!(tierwarden::audit::verify_file(&file)
        .expect("verify")
        .is_ok());
}

#[tokio::test]
async fn production_refuses_statements_when_the_audit_log_cannot_be_written() {
    let p = start_proxy(|c| {
        if let Some(a) = c.audit.as_mut() {
            a.path = PathBuf::from("/dev/full");
        }
    })
    .await;
    let sink = p.shared.audit.clone().expect("audit configured");
    // The connect record is the first write; it fails (ENOSPC).
    let aud = p.connect("auditor", "prod").await.expect("connect");
    for _ in 0..500 {
        if !sink.healthy() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !sink.healthy(),
        "a write to /dev/full must mark the sink unhealthy"
    );
    let e = aud
        .simple_query("SELECT 1")
        .await
        .expect_err("statement refused");
    assert_eq!(code(&e), "58030", "{e}");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("audit log") && msg.contains("prod"), "{msg}");
    // extended protocol too
    let e = aud.query("SELECT 2", &[]).await.expect_err("refused");
    assert_eq!(code(&e), "58030", "{e}");
    // non-production tiers keep working
    let dev = p.connect("app_runtime", "dev").await.expect("dev connects");
    let rows = dev.query("SELECT 3", &[]).await.expect("dev works");
    assert_eq!(rows.len(), 1);
    drop((aud, dev));
    p.stop().await;
}

#[tokio::test]
async fn break_glass_token_gives_human_admin_writes_without_ddl_in_prod() {
    let w = world();
    let p = start_proxy(|_| {}).await;
    prod_table("CREATE TABLE IF NOT EXISTS bg_items(id int primary key, note text)").await;
    // without a token: read-only
    let ro = p
        .connect("human_admin", "prod")
        .await
        .expect("password login");
    ro.simple_query("SELECT count(*) FROM bg_items")
        .await
        .expect("read");
    let e = ro
        .batch_execute("INSERT INTO bg_items VALUES (1, 'no token')")
        .await
        .expect_err("no write without token");
    assert!(is_denial(&e), "{e}");
    drop(ro);
    // the CLI issues the token
    let cfg = w.config_path.display().to_string();
    let (rc, out, err) = support::run(
        BIN,
        &[
            "token",
            "issue",
            "--config",
            &cfg,
            "--env",
            "prod",
            "--identity",
            "human_admin",
            "--ttl",
            "1h",
            "--reason",
            "INC-123 fix orders",
        ],
        &[],
    )
    .await;
    assert_eq!(rc, 0, "{err}");
    let tok = out.trim().to_string();
    assert!(tok.starts_with("v4.public."), "{tok}");
    let claims = token::verify(
        &signing_key("prod").public_key(),
        &tok,
        "prod",
        "human_admin",
        now(),
    )
    .expect("valid token");
    let bg = p
        .connect_tls("human_admin", "prod", &tok)
        .await
        .expect("token login");
    bg.batch_execute("INSERT INTO bg_items VALUES (10, 'break-glass') ON CONFLICT DO NOTHING")
        .await
        .expect("write with token");
    bg.execute("UPDATE bg_items SET note = $1 WHERE id = 10", &[&"fixed"])
        .await
        .expect("extended write with token");
    let e = bg
        .batch_execute("CREATE TABLE bg_nope(id int)")
        .await
        .expect_err("no ddl with token");
    assert!(is_denial(&e), "{e}");
    let e = bg
        .batch_execute("DROP TABLE bg_items")
        .await
        .expect_err("no ddl with token");
    assert!(is_denial(&e), "{e}");
    drop(bg);
    let file = p.audit.clone();
    p.stop().await;

    let recs = records(&file);
    let session: Vec<&Value> = recs
        .iter()
        .filter(|r| r["identity"] == "human_admin" && r["token_id"] == claims.id.as_str())
        .collect();
    let kinds: Vec<&str> = session.iter().filter_map(|r| r["kind"].as_str()).collect();
    for k in ["connect", "break_glass", "statement", "disconnect"] {
        assert!(
            kinds.contains(&k),
            "no {k} record with the token id: {kinds:?}"
        );
    }
    assert!(session
        .iter()
        .all(|r| r["token_reason"] == "INC-123 fix orders"));
    let stmts: Vec<&&Value> = session
        .iter()
        .filter(|r| r["kind"] == "statement")
        .collect();
    assert_eq!(stmts.len(), 4, "every statement of the session: {stmts:?}");
    assert_eq!(stmts.iter().filter(|r| r["outcome"] == "denied").count(), 2);
    let c = super_count(w, "bg_items", "note = 'fixed'").await;
    assert_eq!(c, 1, "the write reached the database");
}

/// Creates a prod table as the schema owner (default privileges give the
/// rw and ro upstream users their grants), bypassing the proxy and its
/// promotion gate.
async fn prod_table(ddl: &str) {
    let w = world();
    let su = w.superuser(&w.database("prod")).await;
    su.batch_execute(&format!("SET ROLE tw_prod_owner; {ddl}; RESET ROLE"))
        .await
        .expect("setup ddl as owner");
}

async fn super_count(w: &support::World, table: &str, cond: &str) -> i64 {
    let su = w.superuser(&w.database("prod")).await;
    su.query_one(&format!("SELECT count(*) FROM {table} WHERE {cond}"), &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn wrong_env_expired_and_foreign_tokens_fail_like_a_bad_password() {
    // prod rate-limits failures by default; this test makes more than 5
    let p = start_proxy(|c| {
        if let Some(e) = c.environments.get_mut("prod") {
            e.auth_rate_limit = Some(false);
        }
    })
    .await;
    let hour = Duration::from_secs(3600);
    let cases = [
        (
            "signed with the stage key for stage",
            token::issue(
                &signing_key("stage"),
                &request("human_admin", "human_admin", "stage", hour),
                now(),
            ),
        ),
        (
            "signed with the prod key but env=stage",
            token::issue(
                &signing_key("prod"),
                &request("human_admin", "human_admin", "stage", hour),
                now(),
            ),
        ),
        (
            "expired",
            token::issue(
                &signing_key("prod"),
                &request("human_admin", "human_admin", "prod", hour),
                now() - time::Duration::hours(2),
            ),
        ),
        (
            "issued to another identity",
            token::issue(
                &signing_key("prod"),
                &request("auditor", "auditor", "prod", hour),
                now(),
            ),
        ),
        (
            "claims another role",
            token::issue(
                &signing_key("prod"),
                &request("human_admin", "app_runtime", "prod", hour),
                now(),
            ),
        ),
        (
            "without a reason (production)",
            token::issue(
                &signing_key("prod"),
                &TokenRequest {
                    reason: None,
                    ..request("human_admin", "human_admin", "prod", hour)
                },
                now(),
            ),
        ),
    ];
    let mut refusals = Vec::new();
    for (what, tok) in cases {
        let tok = tok.expect("issued");
        let e = p
            .connect_tls("human_admin", "prod", &tok)
            .await
            .err()
            .unwrap_or_else(|| panic!("token {what} accepted"));
        assert_eq!(code(&e), "28P01", "{what}: {e}");
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        refusals.push(msg);
    }
    let plain = p
        .connect_tls("human_admin", "prod", "wrong-password")
        .await
        .expect_err("bad password");
    let plain = plain
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        refusals.iter().all(|m| *m == plain),
        "{refusals:?} vs {plain}"
    );
    // a valid one opens the session (the cases above failed for their reason)
    let ok = token::issue(
        &signing_key("prod"),
        &request("human_admin", "human_admin", "prod", hour),
        now(),
    )
    .expect("issued");
    let c = p
        .connect_tls("human_admin", "prod", &ok)
        .await
        .expect("valid token");
    c.simple_query("SELECT 1").await.expect("works");
    drop(c);
    // every refused token counts and is audited like a bad password,
    // including the two refused for their claims (role, reason)
    let (_, metrics) = p.http_get("/metrics").await;
    let bad_tokens = metrics
        .lines()
        .find(|l| {
            l.starts_with("tierwarden_auth_failures_total{")
                && l.contains("env=\"prod\"")
                && l.contains("reason=\"bad_token\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(bad_tokens, Some(6.0), "{metrics}");
    let file = p.audit.clone();
    p.stop().await;
    let failures = records(&file)
        .into_iter()
        .filter(|r| r["kind"] == "auth_failure" && r["identity"] == "human_admin")
        .count();
    assert_eq!(failures, 7, "six tokens and one bad password audited");
}

#[tokio::test]
async fn a_token_session_is_closed_when_the_token_expires() {
    let p = start_proxy(|_| {}).await;
    let tok = token::issue(
        &signing_key("prod"),
        &request("human_admin", "human_admin", "prod", Duration::from_secs(5)),
        now(),
    )
    .expect("issued");
    let (c, conn) = p
        .connect_watched("human_admin", "prod", &tok)
        .await
        .expect("token login");
    c.simple_query("SELECT 1")
        .await
        .expect("works before expiry");
    let e = ended_with(conn, 30).await;
    assert_eq!(code(&e), "57P01", "{e}");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("token") && msg.contains("expired"), "{msg}");
    assert!(c.simple_query("SELECT 1").await.is_err());
    let file = p.audit.clone();
    p.stop().await;
    let recs = records(&file);
    assert!(
        of_kind(&recs, "disconnect", None)
            .iter()
            .any(|r| r["identity"] == "human_admin"
                && r["detail"].as_str().is_some_and(|d| d.contains("expired"))),
        "disconnect record names the expiry"
    );
}

#[tokio::test]
async fn the_cli_refuses_prod_tokens_without_reason_or_longer_than_a_day() {
    let cfg = world().config_path.display().to_string();
    let base = [
        "token",
        "issue",
        "--config",
        cfg.as_str(),
        "--identity",
        "human_admin",
    ];
    let args = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |a: Vec<String>| async move {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        support::run(BIN, &refs, &[]).await
    };
    let (rc, out, err) = run(args(&["--env", "prod", "--ttl", "1h"])).await;
    assert_ne!(rc, 0, "no reason: {out}");
    assert!(err.contains("reason"), "{err}");
    let (rc, _, err) = run(args(&["--env", "prod", "--ttl", "1h", "--reason", "  "])).await;
    assert_ne!(rc, 0, "blank reason");
    assert!(err.contains("reason"), "{err}");
    let (rc, out, err) = run(args(&[
        "--env", "prod", "--ttl", "25h", "--reason", "INC-1",
    ]))
    .await;
    assert_ne!(rc, 0, "ttl 25h: {out}");
    assert!(err.contains("24h"), "{err}");
    let (rc, out, err) = run(args(&[
        "--env", "prod", "--ttl", "24h", "--reason", "INC-1",
    ]))
    .await;
    assert_eq!(rc, 0, "24h with a reason is allowed: {err}");
    assert!(out.trim().starts_with("v4.public."));
    // non-production: no reason needed
    let (rc, out, err) = run(args(&["--env", "stage", "--ttl", "48h"])).await;
    assert_eq!(rc, 0, "{err}");
    assert!(out.trim().starts_with("v4.public."));
}
