//! Limits, reload and drain end to end (issue 7, points 4–5), through the
//! real proxy against the real PostgreSQL world:
//! - authentication-failure rate limiting: a brute-forcing peer is locked
//!   out while another peer still authenticates (peers are distinct
//!   loopback source addresses, 127.0.0.2–5; the proxy listens on
//!   127.0.0.1 only), the per-identity limit, on by default in production;
//! - `max_connections` per environment and per role (53300), the startup
//!   timeout, the idle-in-transaction timeout (FATAL);
//! - reload: a session whose identity lost access is closed with a FATAL
//!   saying why, others continue, a broken config keeps the old one;
//! - drain: the real binary on SIGTERM stops accepting, lets a session in
//!   a transaction commit, closes idle sessions, exits 0 and leaves a
//!   verified audit file ending with a disconnect.
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use support::{
    backend_gone, backend_pid, code, ended_with, start_proxy, start_proxy_at,
    start_proxy_on_threads, world, Proxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, Error, NoTls};

const BIN: &str = env!("CARGO_BIN_EXE_tierwarden");

fn message(e: &Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn rate_limited(e: &Error) -> bool {
    code(e) == "28P01" && message(e).contains("too many failed authentication attempts")
}

/// Plaintext login to `env` from the loopback source address `src`.
async fn connect_from(
    p: &Proxy,
    src: &str,
    role: &str,
    env: &str,
    password: &str,
) -> Result<Client, Error> {
    let w = world();
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{src}:0").parse().expect("addr"))
        .expect("bind a loopback source address");
    let stream = sock.connect(p.addrs[env]).await.expect("tcp connect");
    let mut cfg = tokio_postgres::Config::new();
    cfg.user(w.user(role))
        .password(password)
        .dbname(w.database(env))
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (c, conn) = cfg.connect_raw(stream, NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

async fn fail_from(p: &Proxy, src: &str, role: &str, n: usize) {
    for i in 0..n {
        let e = connect_from(p, src, role, "dev", "wrong-password")
            .await
            .err()
            .unwrap_or_else(|| panic!("wrong password accepted"));
        assert_eq!(code(&e), "28P01", "{e}");
        assert!(
            !rate_limited(&e),
            "attempt {i} from {src} limited too early"
        );
    }
}

#[tokio::test]
async fn brute_force_is_limited_per_peer_and_per_identity() {
    let w = world();
    let p = start_proxy(|c| {
        if let Some(d) = c.environments.get_mut("dev") {
            d.auth_rate_limit = Some(true);
        }
    })
    .await;
    let pw = |role: &str| w.password(role, "dev");
    // one peer brute-forces dev_user: after 5 failures that peer is locked out,
    // even with a correct password, even for another identity
    fail_from(&p, "127.0.0.2", "dev_user", 5).await;
    let e = connect_from(&p, "127.0.0.2", "dev_user", "dev", &pw("dev_user"))
        .await
        .expect_err("locked peer refused");
    assert!(rate_limited(&e), "{e}");
    let e = connect_from(&p, "127.0.0.2", "test_runner", "dev", &pw("test_runner"))
        .await
        .expect_err("locked peer refused for every identity");
    assert!(rate_limited(&e), "{e}");
    // other peers still authenticate, the targeted identity too
    let ok = connect_from(&p, "127.0.0.1", "test_runner", "dev", &pw("test_runner"))
        .await
        .expect("another peer authenticates");
    ok.simple_query("SELECT 1").await.expect("works");
    connect_from(&p, "127.0.0.1", "dev_user", "dev", &pw("dev_user"))
        .await
        .expect("the identity is not locked by one peer");
    // a distributed attack on one identity: 10 failures from 3 peers lock
    // the identity (from every peer), not the other identities
    fail_from(&p, "127.0.0.3", "app_runtime", 4).await;
    fail_from(&p, "127.0.0.4", "app_runtime", 4).await;
    fail_from(&p, "127.0.0.5", "app_runtime", 2).await;
    let e = connect_from(&p, "127.0.0.1", "app_runtime", "dev", &pw("app_runtime"))
        .await
        .expect_err("locked identity refused");
    assert!(rate_limited(&e), "{e}");
    connect_from(&p, "127.0.0.1", "auditor", "dev", &pw("auditor"))
        .await
        .expect("other identities still authenticate");
    // production tier: on by default
    for _ in 0..5 {
        let e = p
            .connect_tls("auditor", "prod", "wrong-password")
            .await
            .expect_err("wrong password");
        assert!(!rate_limited(&e), "{e}");
    }
    let e = p
        .connect("auditor", "prod")
        .await
        .expect_err("limited in prod");
    assert!(rate_limited(&e), "{e}");
    drop(ok);
    p.stop().await;
}

#[tokio::test]
async fn max_connections_per_environment_and_per_role() {
    let p = start_proxy(|c| {
        if let Some(d) = c.environments.get_mut("dev") {
            d.max_connections = Some(3);
            d.max_connections_per_role.insert("auditor".into(), 1);
        }
    })
    .await;
    let a1 = p.connect("auditor", "dev").await.expect("first auditor");
    let e = p.connect("auditor", "dev").await.expect_err("role cap");
    assert_eq!(code(&e), "53300", "{e}");
    assert!(message(&e).contains("role auditor"), "{e}");
    let b1 = p.connect("app_runtime", "dev").await.expect("2nd");
    let b2 = p.connect("test_runner", "dev").await.expect("3rd");
    let e = p.connect("dev_user", "dev").await.expect_err("env cap");
    assert_eq!(code(&e), "53300", "{e}");
    assert!(message(&e).contains("environment dev"), "{e}");
    // other environments are not affected
    let other = p.connect("auditor", "test").await.expect("test env");
    // refused attempts hold no slot; a closed session frees its slot
    drop(a1);
    let mut again = None;
    for _ in 0..100 {
        match p.connect("auditor", "dev").await {
            Ok(c) => {
                again = Some(c);
                break;
            }
            Err(e) => {
                assert_eq!(code(&e), "53300", "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let again = again.expect("slot freed after the session closed");
    again.simple_query("SELECT 1").await.expect("works");
    b1.simple_query("SELECT 1").await.expect("still open");
    drop((b1, b2, other, again));
    p.stop().await;
}

#[tokio::test]
async fn startup_and_idle_in_transaction_timeouts_close_sessions() {
    timeouts_close_sessions(1).await;
}

/// The same deadlines with sessions spread over two worker threads (the
/// multi-threaded scheduler, also without a time driver): each session's
/// timer lives on the timer thread and wakes whichever worker runs it.
#[tokio::test]
async fn timeouts_close_sessions_on_two_worker_threads() {
    timeouts_close_sessions(2).await;
}

async fn timeouts_close_sessions(threads: usize) {
    let w = world();
    let p = start_proxy_on_threads(threads, |c| {
        c.proxy.startup_timeout_ms = 300;
        if let Some(d) = c.environments.get_mut("dev") {
            d.idle_in_transaction_timeout_ms = Some(300);
        }
    })
    .await;
    // a silent client is dropped
    let mut s = tokio::net::TcpStream::connect(p.addrs["dev"])
        .await
        .expect("tcp");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "silent client must be disconnected");
    // a client that stops during authentication gets a FATAL
    let mut s = tokio::net::TcpStream::connect(p.addrs["dev"])
        .await
        .expect("tcp");
    s.write_all(&startup_packet("app_runtime", &w.database("dev")))
        .await
        .expect("startup");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(got.first(), Some(&b'R'), "authentication request first");
    assert!(text.contains("authentication timed out"), "{text}");

    // idle outside a transaction: kept; idle inside one: closed
    let (idle, idle_conn) = p
        .connect_watched("auditor", "dev", &w.password("auditor", "dev"))
        .await
        .expect("connects");
    let (c, conn) = p
        .connect_watched("app_runtime", "dev", &w.password("app_runtime", "dev"))
        .await
        .expect("connects");
    c.batch_execute("BEGIN").await.expect("begin");
    c.simple_query("SELECT 1").await.expect("in transaction");
    let e = ended_with(conn, 20).await;
    assert_eq!(code(&e), "57P01", "{e}");
    assert!(message(&e).contains("idle-in-transaction"), "{e}");
    assert!(
        !idle_conn.is_finished(),
        "an idle session outside a transaction stays open"
    );
    idle.simple_query("SELECT 1").await.expect("still works");
    drop(idle);
    p.stop().await;
}

fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Replaces `key = ...` in `[section]` of a generated config.
fn set_key(text: &str, section: &str, key: &str, value: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    let mut done = false;
    for line in text.lines() {
        if line.starts_with('[') {
            inside = line.trim() == section;
        }
        if inside && !done && line.split('=').next().map(str::trim) == Some(key) {
            out.push(format!("{key} = {value}"));
            done = true;
        } else {
            out.push(line.to_string());
        }
    }
    assert!(done, "{section} {key} not found");
    out.join("\n") + "\n"
}

/// The generated config with `role`'s level in `env` replaced.
fn set_level(text: &str, role: &str, env: &str, level: &str) -> String {
    let section = format!("[roles.{role}]");
    let start = text.find(&section).expect("role section");
    let line_at = start + text[start..].find("levels = ").expect("levels");
    let line_end = line_at + text[line_at..].find('\n').expect("eol");
    let line = &text[line_at..line_end];
    let from = line.find(&format!("{env} = \"")).expect("env level");
    let val_end = from + env.len() + 4 + line[from + env.len() + 4..].find('"').expect("quote");
    let new_line = format!(
        "{}{env} = \"{level}\"{}",
        &line[..from],
        &line[val_end + 1..]
    );
    format!("{}{new_line}{}", &text[..line_at], &text[line_end..])
}

fn copy_config(name: &str) -> (PathBuf, String) {
    let w = world();
    let text = std::fs::read_to_string(&w.config_path).expect("config");
    let path = w.dir.join(name);
    std::fs::write(&path, &text).expect("write copy");
    (path, text)
}

fn level_now(p: &Proxy, role: &str, env: &str) -> String {
    let rt = p.shared.runtime.load();
    rt.config.roles[role].level_in(env).as_str().to_string()
}

#[tokio::test]
async fn reload_closes_sessions_that_lost_access_and_keeps_a_good_config() {
    let w = world();
    let (path, text) = copy_config("reload-test.toml");
    let p = start_proxy_at(&path, |_| {}).await;
    let (aud, aud_conn) = p
        .connect_watched("auditor", "dev", &w.password("auditor", "dev"))
        .await
        .expect("auditor");
    aud.simple_query("SELECT 1").await.expect("auditor reads");
    let app = p.connect("app_runtime", "dev").await.expect("app");
    let aud_test = p.connect("auditor", "test").await.expect("auditor in test");

    let revoked = set_level(&text, "auditor", "dev", "none");
    assert_ne!(revoked, text);
    std::fs::write(&path, &revoked).expect("write");
    tierwarden::serve::reload(&p.shared);
    let e = ended_with(aud_conn, 10).await;
    assert_eq!(code(&e), "57P01", "{e}");
    let m = message(&e);
    assert!(
        m.contains("auditor") && m.contains("dev") && m.contains("configuration"),
        "{m}"
    );
    app.simple_query("SELECT 1")
        .await
        .expect("other sessions continue");
    aud_test
        .simple_query("SELECT 1")
        .await
        .expect("the same identity elsewhere continues");
    let e = p
        .connect("auditor", "dev")
        .await
        .expect_err("no access now");
    assert_eq!(code(&e), "28000", "{e}");

    // a file that is not valid TOML, then one that breaks a guard: both
    // are refused and the running configuration stays the reloaded one
    let guard_broken = set_level(&revoked, "dev_user", "prod", "rw");
    for bad in ["[environments\nthis is not toml", guard_broken.as_str()] {
        std::fs::write(&path, bad).expect("write");
        tierwarden::serve::reload(&p.shared);
        assert_eq!(level_now(&p, "auditor", "dev"), "none");
        assert_eq!(level_now(&p, "dev_user", "prod"), "none");
        app.simple_query("SELECT 1")
            .await
            .expect("session unaffected");
        let fresh = p
            .connect("test_runner", "dev")
            .await
            .expect("new sessions work");
        fresh.simple_query("SELECT 1").await.expect("works");
        let e = p
            .connect("auditor", "dev")
            .await
            .expect_err("still refused");
        assert_eq!(code(&e), "28000", "{e}");
    }
    drop((app, aud_test));
    p.stop().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn reload_renews_pooled_upstream_sessions_and_applies_pool_settings() {
    let (path, text) = copy_config("reload-pool.toml");
    let p = start_proxy_at(&path, |_| {}).await;
    let idle = p.connect("app_runtime", "test").await.expect("idle");
    let busy = p.connect("app_runtime", "test").await.expect("busy");
    let (idle_pid, busy_pid) = (backend_pid(&idle).await, backend_pid(&busy).await);
    drop(idle);
    for _ in 0..100 {
        if p.shared.pool.idle_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.shared.pool.idle_count(), 1, "clean session pooled");

    // The upstream login or address may change with a reload: sessions of
    // the old configuration are not handed out again.
    let one = text.replacen("[proxy]\n", "[proxy]\nupstream_pool_size = 1\n", 1);
    assert_ne!(one, text, "the config has a [proxy] section");
    std::fs::write(&path, &one).expect("write");
    tierwarden::serve::reload(&p.shared);
    assert_eq!(p.shared.pool.idle_count(), 0, "idle sessions dropped");
    assert!(
        backend_gone(idle_pid).await,
        "pooled backend {idle_pid} closed"
    );
    busy.simple_query("SELECT 1")
        .await
        .expect("a session in use continues");
    drop(busy);
    assert!(
        backend_gone(busy_pid).await,
        "a session of the old configuration is closed when its client leaves"
    );

    // New sessions are pooled again, at most one (the new size) per key.
    let a = p.connect("app_runtime", "test").await.expect("a");
    let b = p.connect("app_runtime", "test").await.expect("b");
    let (pa, pb) = (backend_pid(&a).await, backend_pid(&b).await);
    drop(a);
    drop(b);
    assert!(
        backend_gone(pa).await || backend_gone(pb).await,
        "one of two released sessions is closed: the pool keeps one"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.shared.pool.idle_count(), 1);
    p.stop().await;
    let _ = std::fs::remove_file(&path);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn connect_dev(port: u16, role: &str) -> Result<(Client, support::Watched), Error> {
    let w = world();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user(w.user(role))
        .password(w.password(role, "dev"))
        .dbname(w.database("dev"))
        .connect_timeout(Duration::from_secs(5));
    let (c, conn) = cfg.connect(NoTls).await?;
    Ok((c, tokio::spawn(conn)))
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains_the_real_binary() {
    let w = world();
    let (path, text) = copy_config("drain-test.toml");
    let port = free_port();
    let audit = w.dir.join("drain-audit.jsonl");
    let mut text = set_key(
        &text,
        "[environments.dev]",
        "listen",
        &format!("\"127.0.0.1:{port}\""),
    );
    text = set_key(
        &text,
        "[admin]",
        "listen",
        &format!("\"127.0.0.1:{}\"", free_port()),
    );
    text = set_key(
        &text,
        "[audit]",
        "path",
        &format!("\"{}\"", audit.display()),
    );
    text = set_key(&text, "[proxy]", "shutdown_grace_ms", "15000");
    std::fs::write(&path, &text).expect("write config");
    let log = std::fs::File::create(w.dir.join("drain-test.log")).expect("log");
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--config",
            &path.display().to_string(),
            "--env",
            "dev",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tierwarden serve");
    let mut first = None;
    for _ in 0..150 {
        if let Ok(c) = connect_dev(port, "app_runtime").await {
            first = Some(c);
            break;
        }
        assert!(
            child.try_wait().expect("status").is_none(),
            "serve exited early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (busy, busy_conn) = first.expect("proxy serving");
    let (idle, idle_conn) = connect_dev(port, "test_runner")
        .await
        .expect("second session");
    idle.simple_query("SELECT 1")
        .await
        .expect("idle session works");
    busy.batch_execute(
        "CREATE TABLE IF NOT EXISTS drain_items(id int); BEGIN; INSERT INTO drain_items VALUES (7)",
    )
    .await
    .expect("open transaction");

    let pid = child.id().expect("pid") as i32;
    // SIGHUP: the auditor loses dev, its session is closed
    let (_aud, aud_conn) = connect_dev(port, "auditor").await.expect("auditor");
    std::fs::write(&path, set_level(&text, "auditor", "dev", "none")).expect("write");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let e = ended_with(aud_conn, 10).await;
    assert_eq!(code(&e), "57P01", "{e}");
    assert!(message(&e).contains("configuration"), "{e}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    // it stops accepting …
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused, "listener still accepting after SIGTERM");
    // … closes the idle session …
    let e = ended_with(idle_conn, 10).await;
    assert_eq!(code(&e), "57P01", "{e}");
    assert!(message(&e).contains("shutting down"), "{e}");
    // … lets the transaction finish, then closes that session too
    busy.batch_execute("COMMIT")
        .await
        .expect("commit during drain");
    let e = ended_with(busy_conn, 10).await;
    assert_eq!(code(&e), "57P01", "{e}");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within the grace period")
        .expect("wait");
    assert!(status.success(), "{status}");

    let su = w.superuser(&w.database("dev")).await;
    let n: i64 = su
        .query_one("SELECT count(*) FROM drain_items WHERE id = 7", &[])
        .await
        .expect("count")
        .get(0);
    assert!(n >= 1, "the drained transaction committed");
    let report = tierwarden::audit::verify_file(&audit).expect("audit file");
    assert!(report.is_ok(), "{report}");
    let last = std::fs::read_to_string(&audit)
        .expect("audit")
        .lines()
        .last()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .expect("records");
    assert_eq!(last["kind"], "disconnect", "{last}");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_full_server_gets_room_from_idle_pooled_sessions() {
    // A login of its own with a connection limit of 2 (53300 "too many
    // connections for role" on the third), so that the tests running
    // beside this one are not affected. Throwaway test credential.
    let w = world();
    let su = w.superuser("postgres").await;
    let pw = "throwaway-pool-limit-pw";
    su.batch_execute(&format!(
        "DROP ROLE IF EXISTS tw_pool_limit;
         CREATE ROLE tw_pool_limit LOGIN PASSWORD '{pw}' CONNECTION LIMIT 2;
         GRANT CONNECT ON DATABASE {} TO tw_pool_limit",
        w.database("test")
    ))
    .await
    .expect("role");
    let pw_file = w.dir.join("tw_pool_limit.password");
    std::fs::write(&pw_file, pw).expect("password file");
    let p = start_proxy(|c| {
        let users = &mut c
            .environments
            .get_mut("test")
            .expect("env test")
            .upstream
            .users;
        users.insert(
            "rw".into(),
            tierwarden::config::UpstreamUser {
                user: "tw_pool_limit".into(),
                password_env: None,
                password_file: Some(pw_file.clone()),
            },
        );
    })
    .await;
    let mut pids = Vec::new();
    for app in ["one", "two"] {
        pids.push(p.used_backend("app_runtime", "test", app).await);
    }
    for _ in 0..100 {
        if p.shared.pool.idle_count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        p.shared.pool.idle_count(),
        2,
        "both kept (different settings)"
    );
    // Both slots of the login are held by idle pooled sessions of other
    // settings: the proxy closes them rather than refuse the client.
    let c = p
        .connect_as_app("app_runtime", "test", "three")
        .await
        .expect("a third client gets a session");
    let pid = backend_pid(&c).await;
    assert!(!pids.contains(&pid));
    assert!(backend_gone(pids[0]).await && backend_gone(pids[1]).await);
    assert_eq!(p.shared.pool.idle_count(), 0);
    // With the slots held by sessions in use, the refusal reaches the client.
    let busy = p
        .connect_as_app("app_runtime", "test", "four")
        .await
        .expect("second slot");
    let e = match p.connect_as_app("app_runtime", "test", "five").await {
        Ok(_) => panic!("a third session in use must be refused"),
        Err(e) => e,
    };
    assert_eq!(code(&e), "08006", "{e}");
    drop((c, busy));
    p.stop().await;
    let _ = su.batch_execute("DROP ROLE IF EXISTS tw_pool_limit").await;
    let _ = std::fs::remove_file(&pw_file);
}
