//! The security checklist of docs/security.md, one test per item that is
//! not covered elsewhere: no upstream credential, token key, token or
//! password ever reaches a client, a log line or the audit file (every log
//! line of the in-process proxy is captured at debug/trace level); no
//! password is ever asked for in clear over a non-TLS connection, and
//! production refuses plaintext before asking for one; TLS below 1.2 is
//! refused; cancel keys are random, never the upstream's, and scoped to
//! their environment's listener; a world-readable secret file is warned
//! about (without echoing the secret).
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

#[path = "support/rawpg.rs"]
mod rawpg;
mod support;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use rawpg::{cancel_packet, first_error, query_msg, startup_packet, RawPg, V3};
use support::{start_proxy, world};
use tierwarden::proxy::cancel::{CancelRegistry, CancelTarget};

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Sink;

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Route every tracing event of this test binary into [`LOGS`].
fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,tierwarden=trace"))
            .with_writer(|| Sink)
            .with_ansi(false)
            .try_init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Every secret of the world: upstream passwords, token signing keys,
/// identity passwords, the cluster superuser password.
fn secrets() -> Vec<String> {
    let w = world();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(w.dir.join("secrets")).expect("secrets dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("secret file");
        if path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            collect_strings(&v, &mut out);
        } else {
            out.push(text.trim().to_string());
            // PASERK keys: the base64 part alone must not leak either.
            if let Some(b64) = text.trim().rsplit('.').next() {
                out.push(b64.to_string());
            }
        }
    }
    if let Ok(pw) = std::fs::read_to_string(w.dir.join("pgdata").join("superuser.password")) {
        out.push(pw.trim().to_string());
    }
    out.retain(|s| s.len() >= 12);
    assert!(out.len() >= 20, "found the world's secrets: {}", out.len());
    out
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

fn token_for(env: &str, identity: &str) -> String {
    let w = world();
    let key_path = w.dir.join("secrets").join(format!("{env}.token.key"));
    let key = tierwarden::auth::token::TokenKey::from_file(&key_path).expect("token key");
    tierwarden::auth::token::issue(
        &key,
        &tierwarden::auth::TokenRequest {
            identity: identity.into(),
            role: "human_admin".into(),
            env: env.into(),
            ttl: Duration::from_secs(600),
            reason: Some("SEC-1 security test".into()),
        },
        time::OffsetDateTime::now_utc(),
    )
    .expect("token issued")
}

#[tokio::test]
async fn no_secret_reaches_a_client_a_log_or_the_audit() {
    capture_logs();
    let w = world();
    let mut visible: Vec<String> = Vec::new();
    let p = start_proxy(|_| {}).await;
    for env in ["dev", "test", "stage", "prod"] {
        let c = p.connect("app_runtime", env).await.expect("connects");
        c.simple_query("SELECT count(*) FROM accounts")
            .await
            .expect("read");
        let e = c
            .batch_execute("DO $$ BEGIN END $$")
            .await
            .expect_err("denied");
        visible.push(format!("{e:?}"));
        let wrong = format!("{}-wrong", w.password("app_runtime", env));
        let e = if env == "prod" {
            p.connect_tls("app_runtime", env, &wrong).await.err()
        } else {
            let dsn = p
                .dsn("app_runtime", env)
                .replace(&w.password("app_runtime", env), &wrong);
            tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .err()
        };
        visible.push(format!("{:?}", e.expect("wrong password refused")));
    }
    // A break-glass token in prod (it is a bearer credential too), and a
    // stage token presented to prod.
    let token = token_for("prod", "human_admin");
    let c = p
        .connect_tls("human_admin", "prod", &token)
        .await
        .expect("token login");
    c.simple_query("SELECT 1").await.expect("q");
    let stage_token = token_for("stage", "human_admin");
    let e = p
        .connect_tls("human_admin", "prod", &stage_token)
        .await
        .expect_err("stage token refused in prod");
    visible.push(format!("{e:?}"));
    p.stop().await;

    // An upstream credential that the database refuses: the client is told
    // the database is unavailable, the log says why, neither shows it.
    let dir = tempfile::tempdir().expect("tmp");
    let bad_secret = format!("tw-wrong-upstream-secret-{}", std::process::id());
    let bad_file = dir.path().join("bad.password");
    std::fs::write(&bad_file, &bad_secret).expect("write");
    let p = start_proxy(|cfg| {
        let dev = cfg.environments.get_mut("dev").expect("dev");
        if let Some(u) = dev.upstream.users.get_mut("rw") {
            u.password_file = Some(bad_file.clone());
        }
    })
    .await;
    let e = p
        .connect("app_runtime", "dev")
        .await
        .expect_err("upstream refuses the proxy");
    assert_eq!(support::code(&e), "08006", "{e}");
    visible.push(format!("{e:?}"));
    let audit = std::fs::read_to_string(&p.audit).unwrap_or_default();
    p.stop().await;

    let logs = logs();
    assert!(
        logs.contains("upstream connection failed"),
        "the capture works and the failure is logged"
    );
    let mut all = secrets();
    all.push(bad_secret);
    all.push(token.clone());
    all.push(stage_token.clone());
    // The signature part of a token alone must not appear either.
    all.extend(token.rsplit('.').next().map(str::to_string));
    for s in &all {
        assert!(!logs.contains(s.as_str()), "a secret is in the proxy log");
        assert!(!audit.contains(s.as_str()), "a secret is in the audit file");
        for v in &visible {
            assert!(!v.contains(s.as_str()), "a secret reached a client: {v}");
        }
    }
}

#[tokio::test]
async fn no_password_is_asked_in_clear_without_tls() {
    let p = start_proxy(|_| {}).await;
    let w = world();
    let mut users: Vec<String> = ["dev_user", "auditor", "human_admin", "app_runtime"]
        .iter()
        .map(|r| w.user(r))
        .collect();
    users.push("nobody_at_all".into());
    for env in ["dev", "test", "stage", "prod"] {
        for user in &users {
            let mut c = RawPg::tcp(p.addrs[env]).await;
            c.send(&startup_packet(
                V3,
                &[("user", user), ("database", &w.database(env))],
            ))
            .await;
            let m = c.recv().await.expect("an answer");
            if env == "prod" {
                // Production: refused before any password is asked.
                assert_eq!(m.tag, b'E', "{user}@prod");
                assert_eq!(m.code(), "28000", "{}", m.message());
            } else {
                // Elsewhere: SCRAM only, never AuthenticationCleartextPassword.
                assert_eq!(m.tag, b'R', "{user}@{env}");
                let code = i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
                assert_eq!(code, 10, "{user}@{env}: SASL, not cleartext (3) or md5 (5)");
            }
        }
    }
    p.stop().await;
}

async fn openssl_handshake(port: u16, version_flag: &str) -> (bool, String) {
    let (rc, out, err) = support::run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-starttls",
            "postgres",
            version_flag,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
        &[],
    )
    .await;
    let text = format!("{out}\n{err}");
    (
        rc == 0 && text.contains("Cipher is") && !text.contains("Cipher is (NONE)"),
        text,
    )
}

#[tokio::test]
async fn tls_below_1_2_is_refused() {
    let p = start_proxy(|_| {}).await;
    let port = p.addrs["prod"].port();
    for ok in ["-tls1_2", "-tls1_3"] {
        let (done, text) = openssl_handshake(port, ok).await;
        assert!(done, "{ok} handshake: {text}");
    }
    for old in ["-tls1", "-tls1_1"] {
        let (done, text) = openssl_handshake(port, old).await;
        assert!(!done, "{old} must be refused: {text}");
        // Refused by an alert from the server, not by the client itself.
        assert!(
            text.contains("alert protocol version") || text.contains("alert handshake failure"),
            "{old}: {text}"
        );
        assert!(!text.contains("no protocols available"), "{old}: {text}");
    }
    // Still serving.
    p.connect("app_runtime", "prod")
        .await
        .expect("TLS 1.3 client");
    p.stop().await;
}

#[tokio::test]
async fn cancel_keys_are_the_proxys_own_and_scoped_to_their_environment() {
    let p = start_proxy(|_| {}).await;
    let w = world();
    let mut c = RawPg::connect(
        p.addrs["dev"],
        &w.user("app_runtime"),
        &w.password("app_runtime", "dev"),
        &w.database("dev"),
    )
    .await
    .expect("login");
    let (pid, secret) = c.key;
    let upstream_pid: i32 = c
        .scalar("SELECT pg_backend_pid()")
        .await
        .and_then(|v| v.parse().ok())
        .expect("pid");
    assert_ne!(pid, upstream_pid, "the client never sees the upstream key");
    // The dev key sent to every other environment's listener: nothing.
    c.send(&query_msg(b"SELECT pg_sleep(1), 'finished'")).await;
    for env in ["test", "stage", "prod"] {
        let mut other = RawPg::tcp(p.addrs[env]).await;
        other.send(&cancel_packet(pid, secret)).await;
        assert!(other.closed().await.0);
    }
    let r = c.until_ready().await;
    assert!(
        first_error(&r).is_none(),
        "cancelled from another environment: {r:?}"
    );
    // The same key on its own listener cancels.
    c.send(&query_msg(b"SELECT pg_sleep(30)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut own = RawPg::tcp(p.addrs["dev"]).await;
    own.send(&cancel_packet(pid, secret)).await;
    let r = c.until_ready().await;
    assert_eq!(first_error(&r).map(|e| e.code()), Some("57014".into()));
    p.stop().await;
}

#[test]
fn cancel_keys_are_random_and_unique() {
    let reg = Arc::new(CancelRegistry::default());
    let keys: Vec<_> = (0..20_000)
        .map(|_| {
            reg.register(CancelTarget {
                env: "prod".into(),
                host: "127.0.0.1".into(),
                port: 1,
                pid: 42,
                secret: 7,
            })
        })
        .collect();
    let pairs: std::collections::HashSet<_> = keys.iter().map(|k| (k.pid, k.secret)).collect();
    assert_eq!(pairs.len(), keys.len(), "every key is unique");
    let pids: std::collections::HashSet<_> = keys.iter().map(|k| k.pid).collect();
    assert!(
        pids.len() > 19_900,
        "pids are not a counter or a small range"
    );
    let sequential = keys
        .windows(2)
        .filter(|w| w[1].pid.wrapping_sub(w[0].pid).abs() < 1000)
        .count();
    assert!(sequential < 20, "consecutive keys are unrelated");
    assert!(keys
        .iter()
        .all(|k| k.pid > 0 && (k.pid, k.secret) != (42, 7)));
    // Secrets use the whole 32-bit range (both signs, high bits set).
    assert!(keys.iter().any(|k| k.secret < 0) && keys.iter().any(|k| k.secret > 1 << 30));
    drop(keys);
    assert!(reg.is_empty());
}

fn warnings_for(path: &Path) -> usize {
    let p = path.display().to_string();
    logs()
        .lines()
        .filter(|l| l.contains("world-readable") && l.contains(&p))
        .count()
}

#[test]
fn world_readable_secret_files_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    capture_logs();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("upstream.password");
    let secret = "tw-do-not-echo-this-secret-0123";
    std::fs::write(&file, format!("{secret}\n")).expect("write");
    let user = tierwarden::config::UpstreamUser {
        user: "tw_x".into(),
        password_env: None,
        password_file: Some(file.clone()),
    };
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let got = tierwarden::config::resolve_secret(&user, dir.path()).expect("reads");
    assert_eq!(got.as_deref(), Some(secret));
    assert_eq!(warnings_for(&file), 0, "0600 is fine");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    tierwarden::config::resolve_secret(&user, dir.path()).expect("reads");
    assert_eq!(warnings_for(&file), 1, "0644 is warned about");
    assert!(
        !logs().contains(secret),
        "the warning does not echo the secret"
    );
}

/// Settings that would make the server split statements differently from
/// the classifier (a Shift-JIS/GBK trailing backslash, `'\'` with
/// standard_conforming_strings off) are refused, whether SET, set_config or
/// a startup parameter: otherwise `SELECT '\'<newline>'; DELETE …; --'`
/// would be classified as one read while the server runs the DELETE.
#[tokio::test]
async fn settings_that_change_how_the_server_lexes_are_refused() {
    let p = start_proxy(|_| {}).await;
    for (role, env) in [
        ("auditor", "dev"),
        ("app_runtime", "dev"),
        ("ci_migrator", "prod"),
    ] {
        let c = p.connect(role, env).await.expect("connects");
        for sql in [
            "SET standard_conforming_strings = off",
            "SET standard_conforming_strings TO 0",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SET client_encoding = 'SJIS'",
            "SET NAMES 'GBK'",
            "SELECT set_config('client_encoding', 'BIG5', false)",
        ] {
            let e = c.batch_execute(sql).await.expect_err(sql);
            assert!(support::is_denial(&e), "{role}@{env} {sql}: {e}");
        }
        // The payload stays one harmless string under the enforced settings.
        let rows = c
            .simple_query("SELECT '\\'\n' ; DELETE FROM accounts; -- '")
            .await;
        assert!(rows.is_ok(), "{role}@{env}: {rows:?}");
        let n = c
            .simple_query("SELECT count(*) FROM accounts")
            .await
            .expect("count");
        assert!(
            matches!(&n[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) != Some("0"))
        );
    }
    for bad in [
        "options='-c client_encoding=SJIS'",
        "options='-c standard_conforming_strings=off'",
    ] {
        let dsn = format!("{} {bad}", p.dsn("auditor", "dev"));
        let e = support::connect_err(&dsn, bad).await;
        assert_eq!(support::code(&e), "42501", "{bad}: {e}");
    }
    p.stop().await;
}
