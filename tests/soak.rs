//! The short soak that CI runs (the long one is `scripts/soak.sh`): 100
//! concurrent sessions through the in-process proxy for ~20 s, spread over
//! every role/environment pair the matrix allows (TLS for prod), each
//! running statements that must be allowed and statements that must be
//! denied. Zero unexpected errors, zero denied legitimate statements, zero
//! allowed forbidden ones, and the process's RSS and open fds do not grow
//! between the first and last quarter of the run.
//! `TIERWARDEN_SOAK_SESSIONS` / `TIERWARDEN_SOAK_SECONDS` change the size.
// The test's own runtime has timers; tokio::time is fine here (see clippy.toml).
#![allow(clippy::disallowed_methods)]

// load.rs and support/ both include support/tls.rs (load.rs is also
// built alone by examples/soak.rs).
#[allow(clippy::duplicate_mod)]
#[path = "support/load.rs"]
mod load;
#[allow(clippy::duplicate_mod)]
mod support;

use std::time::Duration;

use support::{start_proxy, world};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_soak_mixed_roles_and_environments() {
    let p = start_proxy(|_| {}).await;
    let w = world();
    let mut targets = load::targets(&w.json, &w.config());
    for t in &mut targets {
        t.port = p.addrs[&t.env].port();
    }
    // Every default-matrix pair with a level: 19 of 24.
    let pairs: Vec<String> = targets
        .iter()
        .map(|t| format!("{}@{}", t.role, t.env))
        .collect();
    assert_eq!(targets.len(), 19, "{pairs:?}");
    let cfg = load::LoadConfig {
        sessions: env_num("TIERWARDEN_SOAK_SESSIONS", 100) as usize,
        warmup: Duration::from_secs(5),
        duration: Duration::from_secs(env_num("TIERWARDEN_SOAK_SECONDS", 20)),
        think: Duration::from_millis(100),
        ramp_parallel: 16,
        ca: w.ca.clone(),
        pid: None,
    };
    let r = load::run(&targets, &cfg).await;
    eprintln!("short soak: {}", r.json());
    for e in &r.examples {
        eprintln!("  e.g. {e}");
    }
    assert_eq!(r.connect_failures, 0, "{:?}", r.examples);
    assert_eq!(r.unexpected_errors, 0, "{:?}", r.examples);
    assert_eq!(r.denied_legitimate, 0, "{:?}", r.examples);
    assert_eq!(r.allowed_forbidden, 0, "{:?}", r.examples);
    assert!(r.allowed_ok > 0 && r.denied_ok > 0);
    assert!(r.clean(), "resources grew: {}", r.json());
    // Every session is gone from the proxy afterwards.
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = p.shared.sessions.len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "sessions left registered after the soak");
    p.stop().await;
}
