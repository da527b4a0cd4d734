//! The environment binding guards through the real binary: a missing or
//! unknown environment, and configurations that cross environments, exit
//! with code 2 before any port opens, naming both sides.

use std::path::Path;
use std::process::Command;

const BASE: &str = r#"
[tls]
cert_file = "server.crt"
key_file = "server.key"

[audit]
path = "audit.jsonl"

[environments.stage]
tier = "staging"
listen = "127.0.0.1:LISTEN1"
[environments.stage.upstream]
host = "127.0.0.1"
port = 5432
database = "STAGE_DB"
[environments.stage.upstream.users.rw]
user = "STAGE_USER"
password_env = "STAGE_PW_VAR"

[environments.prod]
tier = "production"
listen = "127.0.0.1:LISTEN2"
[environments.prod.upstream]
host = "127.0.0.1"
port = 5432
database = "app_prod"
[environments.prod.upstream.users.rw]
user = "prod_rw"
password_env = "PROD_PW"
[environments.prod.upstream.users.ro]
user = "prod_ro"
password_env = "PROD_RO_PW"

[roles.dev_user]
developer = true
levels = { stage = "rw", prod = "DEV_PROD_LEVEL" }
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Case {
    stage_db: &'static str,
    stage_user: &'static str,
    stage_var: &'static str,
    dev_prod: &'static str,
}

const GOOD: Case = Case {
    stage_db: "app_stage",
    stage_user: "stage_rw",
    stage_var: "STAGE_PW",
    dev_prod: "ro",
};

fn write(dir: &Path, c: &Case) -> (std::path::PathBuf, u16) {
    let p1 = free_port();
    let p2 = free_port();
    let text = BASE
        .replace("STAGE_DB", c.stage_db)
        .replace("STAGE_USER", c.stage_user)
        .replace("STAGE_PW_VAR", c.stage_var)
        .replace("DEV_PROD_LEVEL", c.dev_prod)
        .replace("LISTEN1", &p1.to_string())
        .replace("LISTEN2", &p2.to_string());
    let path = dir.join("tierwarden.toml");
    std::fs::write(&path, text).expect("write config");
    (path, p1)
}

fn serve(path: &Path, args: &[&str], app_env: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tierwarden"));
    cmd.arg("serve").arg("--config").arg(path).args(args);
    cmd.env_remove("APP_ENV");
    if let Some(e) = app_env {
        cmd.env("APP_ENV", e);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_or_unknown_environment_exits_2_before_listening() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, port) = write(dir.path(), &GOOD);
    let (code, err) = serve(&path, &[], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--env") && err.contains("APP_ENV"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line message: {err}");
    let (code, err) = serve(&path, &["--env", "qa"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown environment \"qa\""), "{err}");
    let (code, err) = serve(&path, &[], Some("nope"));
    assert_eq!(code, 2, "{err}");
    // nothing was listening meanwhile
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

fn assert_refused(c: &Case, needles: &[&str]) {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, _) = write(dir.path(), c);
    let (code, err) = serve(&path, &["--env", "stage"], None);
    assert_eq!(code, 2, "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tierwarden"))
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .output()
        .expect("check runs");
    assert_eq!(out.status.code(), Some(2), "check agrees");
}

#[test]
fn upstream_naming_another_environment_is_refused() {
    let c = Case {
        stage_db: "app_prod_copy",
        ..GOOD
    };
    assert_refused(
        &c,
        &["environments.stage.upstream.database", "stage", "prod"],
    );
}

#[test]
fn shared_credentials_are_refused() {
    let same_user = Case {
        stage_user: "prod_rw",
        ..GOOD
    };
    assert_refused(&same_user, &["stage", "prod", "never reuse credentials"]);
    let same_secret = Case {
        stage_var: "PROD_PW",
        ..GOOD
    };
    assert_refused(&same_secret, &["password_env", "PROD_PW"]);
}

#[test]
fn developer_with_production_write_access_is_refused() {
    let c = Case {
        dev_prod: "rw",
        ..GOOD
    };
    assert_refused(
        &c,
        &["roles.dev_user.levels.prod", "developer", "production"],
    );
}

#[test]
fn broken_file_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[environments.dev]\ntier = \"development\"\nlisten = \"127.0.0.1:1\"\nbogus_key = 1\n",
    )
    .expect("write");
    let (code, err) = serve(&path, &["--env", "dev"], None);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(err.contains("bogus_key"), "{err}");
}

#[test]
fn every_shipped_config_example_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files = vec![root.join("tierwarden.example.toml")];
    for e in std::fs::read_dir(root.join("examples")).expect("examples dir") {
        files.push(e.expect("entry").path());
    }
    assert!(files.len() >= 3);
    for f in files {
        let out = Command::new(env!("CARGO_BIN_EXE_tierwarden"))
            .args(["check", "--offline", "--config"])
            .arg(&f)
            .output()
            .expect("check runs");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn absurd_worker_thread_count_names_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, _) = write(dir.path(), &GOOD);
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, format!("[proxy]\nworker_threads = 100000\n{text}")).expect("write");
    let (code, err) = serve(&path, &["--env", "stage"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("proxy.worker_threads"), "{err}");
}
