//! Tests of `locks.rs`: the pure tracker with synthetic instants, and the
//! monitor loop against a port where nothing listens (no PostgreSQL needed).

use super::*;

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn w(pairs: &[(i32, &str)]) -> Vec<(i32, String)> {
    pairs.iter().map(|(p, r)| (*p, r.to_string())).collect()
}

fn counts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

#[test]
fn episodes_start_continue_and_end() {
    let t0 = Instant::now();
    let mut t = LockWaitTracker::new();
    let p = t.update(at(t0, 0), w(&[]));
    assert_eq!(p, LockPoll::default());

    let p = t.update(at(t0, 1000), w(&[(10, "app"), (11, "app"), (20, "ci")]));
    assert_eq!(p.started, vec!["app", "app", "ci"]);
    assert!(p.ended.is_empty());
    assert_eq!(p.waiting, counts(&[("app", 2), ("ci", 1)]));

    // Still waiting: no new episode.
    let p = t.update(at(t0, 2000), w(&[(10, "app"), (11, "app"), (20, "ci")]));
    assert!(p.started.is_empty() && p.ended.is_empty());

    // 11 and 20 stop; 10 keeps waiting.
    let p = t.update(at(t0, 3500), w(&[(10, "app")]));
    assert!(p.started.is_empty());
    assert_eq!(
        p.ended,
        vec![
            ("app".to_string(), Duration::from_millis(2500)),
            ("ci".to_string(), Duration::from_millis(2500)),
        ]
    );
    // The role that no longer waits is zeroed, not left stale.
    assert_eq!(p.waiting, counts(&[("app", 1), ("ci", 0)]));
    assert_eq!(t.waiting_count(), 1);

    let p = t.update(at(t0, 4000), w(&[]));
    assert_eq!(
        p.ended,
        vec![("app".to_string(), Duration::from_millis(3000))]
    );
    assert_eq!(p.waiting, counts(&[("app", 0), ("ci", 0)]));
}

#[test]
fn waiting_again_is_a_new_episode() {
    let t0 = Instant::now();
    let mut t = LockWaitTracker::new();
    t.update(at(t0, 0), w(&[(7, "app")]));
    t.update(at(t0, 1000), w(&[]));
    let p = t.update(at(t0, 2000), w(&[(7, "app")]));
    assert_eq!(p.started, vec!["app"]);
}

#[test]
fn reused_pid_with_another_role_splits_the_episode() {
    let t0 = Instant::now();
    let mut t = LockWaitTracker::new();
    t.update(at(t0, 0), w(&[(7, "app")]));
    let p = t.update(at(t0, 1000), w(&[(7, "dev")]));
    assert_eq!(p.started, vec!["dev"]);
    assert_eq!(p.ended, vec![("app".to_string(), Duration::from_secs(1))]);
    assert_eq!(p.waiting, counts(&[("app", 0), ("dev", 1)]));
}

#[test]
fn duplicate_pids_count_once() {
    let t0 = Instant::now();
    let mut t = LockWaitTracker::new();
    let p = t.update(at(t0, 0), w(&[(7, "app"), (7, "app")]));
    assert_eq!(p.started.len(), 1);
    assert_eq!(p.waiting, counts(&[("app", 1)]));
}

#[test]
fn apply_drives_the_series() {
    let m = Metrics::new();
    let t0 = Instant::now();
    let mut t = LockWaitTracker::new();
    apply(&m, "prod", &t.update(at(t0, 0), w(&[(1, "app")])));
    apply(&m, "prod", &t.update(at(t0, 2000), w(&[])));
    let text = m.encode();
    for expected in [
        r#"tierwarden_lock_waits_total{env="prod",role="app"} 1"#,
        r#"tierwarden_lock_waiting_sessions{env="prod",role="app"} 0"#,
        r#"tierwarden_lock_wait_seconds_count{env="prod",role="app"} 1"#,
        r#"tierwarden_lock_wait_seconds_sum{env="prod",role="app"} 2.0"#,
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "missing {expected}\n{text}"
        );
    }
}

#[test]
fn debug_never_prints_the_password() {
    let t = MonitorTarget::new("prod", "127.0.0.1", 5432, "app_prod", "mon", "s3cret");
    assert!(!format!("{t:?}").contains("s3cret"));
}

struct NoSessions;
impl SessionLookup for NoSessions {
    fn role_of_backend(&self, _env: &str, _pid: i32) -> Option<String> {
        None
    }
}

#[tokio::test]
async fn unreachable_upstream_is_reported_down_and_loop_stops() {
    // A port where nothing listens: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut target = MonitorTarget::new("stage", "127.0.0.1", port, "app_stage", "mon", "x");
    target.interval = Duration::from_millis(50);
    target.reachable.store(true, Ordering::Relaxed);
    let reachable = Arc::clone(&target.reachable);
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_monitor(
        target,
        Arc::new(NoSessions),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let down = r#"tierwarden_upstream_up{env="stage"} 0"#;
    let mut seen = false;
    for _ in 0..200 {
        if metrics.encode().lines().any(|l| l == down) {
            seen = true;
            break;
        }
        crate::timers::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "upstream_up never went to 0");
    assert!(!reachable.load(Ordering::Relaxed));
    shutdown.cancel();
    crate::timers::timeout(Duration::from_secs(10), task)
        .await
        .expect("monitor did not stop")
        .unwrap();
}
