//! Tests of `metrics.rs`: the exposition contract (names, types, labels).

use super::*;
use crate::observe::labels::{
    AuthFailReason, ClassLabel, ConnOutcome, LockErrorCode, MigrationOutcome, QueryOutcome,
};

/// (family name in `# TYPE`, type, a sample name Prometheus will store)
const CONTRACT: &[(&str, &str, &str)] = &[
    ("tierwarden_queries", "counter", "tierwarden_queries_total"),
    (
        "tierwarden_query_duration_seconds",
        "histogram",
        "tierwarden_query_duration_seconds_bucket",
    ),
    (
        "tierwarden_slow_queries",
        "counter",
        "tierwarden_slow_queries_total",
    ),
    ("tierwarden_denied", "counter", "tierwarden_denied_total"),
    (
        "tierwarden_lock_waiting_sessions",
        "gauge",
        "tierwarden_lock_waiting_sessions",
    ),
    (
        "tierwarden_lock_waits",
        "counter",
        "tierwarden_lock_waits_total",
    ),
    (
        "tierwarden_lock_wait_seconds",
        "histogram",
        "tierwarden_lock_wait_seconds_count",
    ),
    (
        "tierwarden_client_connections",
        "gauge",
        "tierwarden_client_connections",
    ),
    (
        "tierwarden_connection_attempts",
        "counter",
        "tierwarden_connection_attempts_total",
    ),
    (
        "tierwarden_connection_spikes",
        "counter",
        "tierwarden_connection_spikes_total",
    ),
    (
        "tierwarden_migrations",
        "counter",
        "tierwarden_migrations_total",
    ),
    (
        "tierwarden_auth_failures",
        "counter",
        "tierwarden_auth_failures_total",
    ),
    ("tierwarden_upstream_up", "gauge", "tierwarden_upstream_up"),
    (
        "tierwarden_promotion_denied",
        "counter",
        "tierwarden_promotion_denied_total",
    ),
    (
        "tierwarden_lock_errors",
        "counter",
        "tierwarden_lock_errors_total",
    ),
];

/// Touch every series once; returns the live session so its gauge stays 1.
fn exercise(m: &Metrics) -> SessionMetrics {
    let s = m.session("prod", "app_runtime");
    s.record_statement(
        ClassLabel::Read,
        QueryOutcome::Ok,
        Duration::from_millis(3),
        Duration::from_millis(100),
    );
    s.record_denied(ClassLabel::Privileged);
    s.record_lock_error(LockErrorCode::Deadlock);
    m.set_lock_waiting("prod", "app_runtime", 2);
    m.lock_wait_started("prod", "app_runtime");
    m.lock_wait_ended("prod", "app_runtime", Duration::from_millis(1500));
    m.connection_attempt("prod", ConnOutcome::Accepted);
    m.spike("prod");
    m.migration("prod", MigrationOutcome::Failed);
    m.auth_failure("prod", AuthFailReason::BadCredentials);
    m.upstream_up("prod", true);
    m.promotion_denied("prod");
    s
}

/// Parse `name{k="v",...} value` into (name, labels). Label values here never
/// contain `"` or `,`.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>) {
    let head = line.split(' ').next().unwrap_or("");
    match head.split_once('{') {
        None => (head.to_owned(), vec![]),
        Some((name, rest)) => {
            let body = rest.trim_end_matches('}');
            let labels = body
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels)
        }
    }
}

#[test]
fn every_contract_series_is_exported_with_its_type() {
    let m = Metrics::new();
    let _s = exercise(&m);
    let text = m.encode();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics terminator missing");
    for (family, kind, sample) in CONTRACT {
        let type_line = format!("# TYPE {family} {kind}\n");
        assert!(
            text.contains(&type_line),
            "missing `{type_line}` in\n{text}"
        );
        let has_sample = text
            .lines()
            .any(|l| !l.starts_with('#') && parse_sample(l).0 == *sample);
        assert!(has_sample, "no sample named {sample}");
    }
    let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(families, CONTRACT.len(), "unexpected extra family");
}

#[test]
fn values_after_one_increment_each() {
    let m = Metrics::new();
    let s = exercise(&m);
    let text = m.encode();
    for expected in [
        r#"tierwarden_queries_total{env="prod",role="app_runtime",class="read",outcome="ok"} 1"#,
        r#"tierwarden_queries_total{env="prod",role="app_runtime",class="privileged",outcome="denied"} 1"#,
        r#"tierwarden_queries_total{env="prod",role="app_runtime",class="write",outcome="error"} 0"#,
        r#"tierwarden_denied_total{env="prod",role="app_runtime",class="privileged"} 1"#,
        r#"tierwarden_slow_queries_total{env="prod",role="app_runtime"} 0"#,
        r#"tierwarden_client_connections{env="prod",role="app_runtime"} 1"#,
        r#"tierwarden_lock_waiting_sessions{env="prod",role="app_runtime"} 2"#,
        r#"tierwarden_lock_errors_total{env="prod",role="app_runtime",code="deadlock"} 1"#,
        r#"tierwarden_lock_errors_total{env="prod",role="app_runtime",code="lock_not_available"} 0"#,
        r#"tierwarden_lock_wait_seconds_count{env="prod",role="app_runtime"} 1"#,
        r#"tierwarden_lock_wait_seconds_sum{env="prod",role="app_runtime"} 1.5"#,
        r#"tierwarden_query_duration_seconds_bucket{le="0.0025",env="prod",role="app_runtime",class="read"} 0"#,
        r#"tierwarden_query_duration_seconds_bucket{le="0.005",env="prod",role="app_runtime",class="read"} 1"#,
        r#"tierwarden_connection_attempts_total{env="prod",outcome="accepted"} 1"#,
        r#"tierwarden_migrations_total{env="prod",outcome="failed"} 1"#,
        r#"tierwarden_auth_failures_total{env="prod",reason="bad_credentials"} 1"#,
        r#"tierwarden_upstream_up{env="prod"} 1"#,
        r#"tierwarden_connection_spikes_total{env="prod"} 1"#,
        r#"tierwarden_promotion_denied_total{env="prod"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "missing line {expected}\n{text}"
        );
    }
    drop(s);
    let text = m.encode();
    assert!(text
        .lines()
        .any(|l| l == r#"tierwarden_client_connections{env="prod",role="app_runtime"} 0"#));
}

#[test]
fn only_bounded_label_values_appear() {
    let m = Metrics::new();
    m.register_env("prod");
    m.register_role("prod", "auditor");
    let _s = exercise(&m);
    // Every method that takes a closed enum, with every value.
    for &c in ClassLabel::ALL {
        for &o in QueryOutcome::ALL {
            _s.record_statement(c, o, Duration::from_secs(1), Duration::ZERO);
        }
    }
    for &r in AuthFailReason::ALL {
        m.auth_failure("prod", r);
    }
    for &o in ConnOutcome::ALL {
        m.connection_attempt("prod", o);
    }
    m.lock_error("prod", "auditor", LockErrorCode::LockNotAvailable);
    let text = m.encode();
    let closed = |key: &str| -> Option<Vec<&'static str>> {
        Some(match key {
            "class" => ClassLabel::ALL.iter().map(|v| v.as_str()).collect(),
            "reason" => AuthFailReason::ALL.iter().map(|v| v.as_str()).collect(),
            "code" => LockErrorCode::ALL.iter().map(|v| v.as_str()).collect(),
            "outcome" => QueryOutcome::ALL
                .iter()
                .map(|v| v.as_str())
                .chain(ConnOutcome::ALL.iter().map(|v| v.as_str()))
                .chain(MigrationOutcome::ALL.iter().map(|v| v.as_str()))
                .collect(),
            _ => return None,
        })
    };
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        samples += 1;
        let (name, labels) = parse_sample(line);
        assert!(name.starts_with("tierwarden_"), "{line}");
        for (k, v) in labels {
            match k.as_str() {
                "env" => assert_eq!(v, "prod", "{line}"),
                "role" => assert!(v == "app_runtime" || v == "auditor", "{line}"),
                "le" => assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "{line}"),
                other => {
                    let allowed = closed(other).unwrap_or_else(|| panic!("label {other}: {line}"));
                    assert!(allowed.contains(&v.as_str()), "value {v}: {line}");
                }
            }
        }
    }
    assert!(samples > 100, "expected pre-created series, got {samples}");
}

#[test]
fn slow_flag_and_denied_forwarding() {
    let m = Metrics::new();
    let s = m.session("dev", "dev_user");
    let t = Duration::from_millis(100);
    assert!(!s.record_statement(ClassLabel::Write, QueryOutcome::Ok, t, t));
    assert!(s.record_statement(
        ClassLabel::Write,
        QueryOutcome::Error,
        t + Duration::from_nanos(1),
        t
    ));
    assert!(!s.record_statement(ClassLabel::Ddl, QueryOutcome::Denied, t * 10, t));
    let text = m.encode();
    for expected in [
        r#"tierwarden_slow_queries_total{env="dev",role="dev_user"} 1"#,
        r#"tierwarden_denied_total{env="dev",role="dev_user",class="ddl"} 1"#,
        r#"tierwarden_queries_total{env="dev",role="dev_user",class="ddl",outcome="denied"} 1"#,
        r#"tierwarden_query_duration_seconds_count{env="dev",role="dev_user",class="ddl"} 0"#,
        r#"tierwarden_query_duration_seconds_count{env="dev",role="dev_user",class="write"} 2"#,
    ] {
        assert!(text.lines().any(|l| l == expected), "missing {expected}");
    }
}

#[test]
fn sessions_of_one_role_share_handles() {
    let m = Metrics::new();
    let a = m.session("stage", "auditor");
    let b = m.session("stage", "auditor");
    a.record_denied(ClassLabel::Write);
    b.record_denied(ClassLabel::Write);
    let text = m.encode();
    assert!(text
        .lines()
        .any(|l| l == r#"tierwarden_denied_total{env="stage",role="auditor",class="write"} 2"#));
    assert!(text
        .lines()
        .any(|l| l == r#"tierwarden_client_connections{env="stage",role="auditor"} 2"#));
    drop(a);
    drop(b);
    assert!(m
        .encode()
        .lines()
        .any(|l| l == r#"tierwarden_client_connections{env="stage",role="auditor"} 0"#));
}

#[test]
fn register_env_precreates_zero_counters() {
    let m = Metrics::new();
    m.register_env("prod");
    let text = m.encode();
    assert!(text
        .lines()
        .any(|l| l == r#"tierwarden_migrations_total{env="prod",outcome="failed"} 0"#));
    assert!(text
        .lines()
        .any(|l| l == r#"tierwarden_connection_spikes_total{env="prod"} 0"#));
    // upstream_up exists from the start, down until the monitor's first poll
    // (like /readyz), so an env whose monitor never runs is visibly down.
    assert!(text
        .lines()
        .any(|l| l == r#"tierwarden_upstream_up{env="prod"} 0"#));
}
