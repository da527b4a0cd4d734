//! Soak load client for a running `tierwarden quickstart` (see
//! `scripts/soak.sh`): reads `DIR/quickstart.json` and `DIR/tierwarden.toml`,
//! opens `--sessions` concurrent sessions over every role/environment pair
//! the matrix allows, runs allowed and forbidden statements for
//! `--seconds`, samples the proxy process (`--pid`) RSS and fds, prints a
//! summary and one JSON line, and exits 1 unless the run was clean.
//!
//! `cargo run --release --example soak -- --dir DIR --pid PID --sessions 1000 --seconds 150`

#[path = "../tests/support/load.rs"]
mod load;

use std::path::PathBuf;
use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = arg(&args, "--dir").map(PathBuf::from) else {
        eprintln!("usage: soak --dir QUICKSTART_DIR [--pid PID] [--sessions N] [--warmup S] [--seconds S] [--think-ms MS]");
        std::process::exit(2);
    };
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("quickstart.json")).expect("quickstart.json"),
    )
    .expect("quickstart.json is JSON");
    let config =
        tierwarden::config::load(&dir.join("tierwarden.toml")).expect("tierwarden.toml loads");
    let targets = load::targets(&json, &config);
    let cfg = load::LoadConfig {
        sessions: num(&args, "--sessions", 1000),
        warmup: Duration::from_secs(num(&args, "--warmup", 240)),
        duration: Duration::from_secs(num(&args, "--seconds", 150)),
        think: Duration::from_millis(num(&args, "--think-ms", 50)),
        ramp_parallel: num(&args, "--ramp", 32),
        ca: dir.join("tls").join("ca.crt"),
        pid: arg(&args, "--pid").and_then(|p| p.parse().ok()),
    };
    eprintln!(
        "soak: {} sessions over {} role/environment pairs, {:?} warm-up + {:?} measured",
        cfg.sessions,
        targets.len(),
        cfg.warmup,
        cfg.duration
    );
    let r = load::run(&targets, &cfg).await;
    println!(
        "sessions {}  statements {}  allowed ok {}  denied ok {}\n\
         connect failures {}  unexpected errors {}  denied legitimate {}  allowed forbidden {}\n\
         proxy RSS first/last {} / {} KiB  fds first/last {} / {}  ({} samples, {:.0} s)",
        r.sessions,
        r.statements,
        r.allowed_ok,
        r.denied_ok,
        r.connect_failures,
        r.unexpected_errors,
        r.denied_legitimate,
        r.allowed_forbidden,
        r.rss_first_kib,
        r.rss_last_kib,
        r.fds_first,
        r.fds_last,
        r.samples,
        r.seconds
    );
    for (t, rss, fds) in &r.series {
        println!("  t+{t:>4}s  proxy RSS {rss:>8} KiB  fds {fds}");
    }
    for e in &r.examples {
        println!("  e.g. {e}");
    }
    println!("SOAK_JSON {}", r.json());
    if !r.clean() {
        std::process::exit(1);
    }
}
