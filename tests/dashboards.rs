//! The Grafana dashboard (config/grafana/tierwarden.json) against the real
//! metrics contract, so the dashboard never rots: every PromQL expression may
//! only name series that `Metrics::encode()` exports (after touching every
//! family), only with label names those series carry (plus the scrape-time
//! `tier`, `job`, `instance`), every panel filters on the `env` variable, and
//! every SPEC §5 series is on the dashboard. With `promtool` installed, every
//! expression also goes through `promtool check rules` (PromQL syntax).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tierwarden::observe::{ClassLabel, LockErrorCode, Metrics, MigrationOutcome, QueryOutcome};

/// Labels that Prometheus adds at scrape time (see config/prometheus.example.yml).
const SCRAPE_LABELS: [&str; 3] = ["tier", "job", "instance"];

/// SPEC §5: every required series must appear on the dashboard.
const CONTRACT: [&str; 12] = [
    "tierwarden_queries_total",
    "tierwarden_query_duration_seconds_bucket",
    "tierwarden_slow_queries_total",
    "tierwarden_denied_total",
    "tierwarden_lock_waiting_sessions",
    "tierwarden_lock_waits_total",
    "tierwarden_client_connections",
    "tierwarden_connection_attempts_total",
    "tierwarden_connection_spikes_total",
    "tierwarden_migrations_total",
    "tierwarden_auth_failures_total",
    "tierwarden_upstream_up",
];

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/tierwarden.json")
}

fn load_dashboard() -> Value {
    let text = std::fs::read_to_string(dashboard_path()).expect("dashboard file");
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// Sample names → label names, from an exposition where every family has a series.
fn exported_series() -> BTreeMap<String, BTreeSet<String>> {
    let m = Metrics::new();
    m.register_env("dev");
    m.register_role("dev", "app_runtime");
    let s = m.session("dev", "app_runtime");
    s.record_statement(
        ClassLabel::Read,
        QueryOutcome::Ok,
        Duration::from_millis(3),
        Duration::from_millis(100),
    );
    s.record_denied(ClassLabel::Write);
    s.record_lock_error(LockErrorCode::Deadlock);
    m.set_lock_waiting("dev", "app_runtime", 1);
    m.lock_wait_started("dev", "app_runtime");
    m.lock_wait_ended("dev", "app_runtime", Duration::from_millis(250));
    m.upstream_up("dev", true);
    m.spike("dev");
    m.migration("dev", MigrationOutcome::Applied);
    m.promotion_denied("dev");
    let text = m.encode();
    drop(s);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if let (Some(open), Some(close)) = (line.find('{'), line.find('}')) {
            for pair in line[open + 1..close].split(',') {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    out
}

/// Every `expr` of every panel (rows included) and every variable query.
fn exprs(v: &Value, panel_exprs: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("expr", Value::String(s)) => panel_exprs.push(s.clone()),
                    ("templating", _) => {}
                    _ => exprs(child, panel_exprs),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| exprs(i, panel_exprs)),
        _ => {}
    }
}

fn variable_queries(d: &Value) -> Vec<String> {
    let list = d["templating"]["list"].as_array().expect("templating.list");
    list.iter()
        .filter(|v| v["type"] == "query")
        .map(|v| match &v["query"] {
            Value::String(s) => s.clone(),
            q => q["query"].as_str().expect("variable query").to_string(),
        })
        .collect()
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// One selector found in an expression: metric name and matcher label names.
#[derive(Debug)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// A small PromQL scanner: selectors of `tierwarden*` series and the label
/// names of `by (...)` / `without (...)` clauses. Strings and range
/// brackets are skipped.
fn scan(expr: &str) -> (Vec<Selector>, Vec<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let (mut sels, mut grouping) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = skip_string(&chars, i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            if (word == "by" || word == "without") && chars.get(j) == Some(&'(') {
                let close = (j..chars.len())
                    .find(|&k| chars[k] == ')')
                    .unwrap_or(chars.len());
                let inner: String = chars[j + 1..close].iter().collect();
                grouping.extend(inner.split(',').map(|s| s.trim().to_string()));
                i = close + 1;
            } else if word.starts_with("tierwarden") {
                let mut labels = Vec::new();
                if chars.get(i) == Some(&'{') {
                    i = matchers(&chars, i + 1, &mut labels);
                }
                sels.push(Selector {
                    metric: word,
                    labels,
                });
            }
        } else {
            i += 1;
        }
    }
    (sels, grouping)
}

fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// Parse `name op "value", ...}` from `i`; returns the index after `}`.
fn matchers(chars: &[char], mut i: usize, labels: &mut Vec<String>) -> usize {
    while i < chars.len() && chars[i] != '}' {
        if chars[i] == '"' || chars[i] == '\'' {
            i = skip_string(chars, i);
        } else if is_ident_start(chars[i]) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            labels.push(chars[start..i].iter().collect());
        } else {
            i += 1;
        }
    }
    i + 1
}

/// Every problem of one expression against the exported series.
fn problems(expr: &str, series: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let (sels, grouping) = scan(expr);
    let mut out = Vec::new();
    let mut known_labels: BTreeSet<String> = SCRAPE_LABELS.iter().map(|s| s.to_string()).collect();
    known_labels.insert("le".into());
    for s in &sels {
        let Some(labels) = series.get(&s.metric) else {
            out.push(format!("{expr}: series {} is not exported", s.metric));
            continue;
        };
        known_labels.extend(labels.iter().cloned());
        for l in &s.labels {
            if !labels.contains(l) && !SCRAPE_LABELS.contains(&l.as_str()) {
                out.push(format!("{expr}: {} has no label {l}", s.metric));
            }
        }
    }
    for g in grouping.iter().filter(|g| !g.is_empty()) {
        if !known_labels.contains(g) {
            out.push(format!(
                "{expr}: grouping label {g} is on none of its series"
            ));
        }
    }
    if sels.is_empty() {
        out.push(format!("{expr}: uses no tierwarden series"));
    }
    out
}

#[test]
fn checker_catches_unknown_series_and_labels() {
    let series = exported_series();
    assert!(problems(
        r#"sum by (class) (rate(tierwarden_queries_total{env=~"$env"}[5m]))"#,
        &series
    )
    .is_empty());
    let bad = problems(r#"rate(tierwarden_query_total{env="x"}[5m])"#, &series);
    assert!(bad.iter().any(|p| p.contains("not exported")), "{bad:?}");
    let bad = problems(r#"tierwarden_upstream_up{role="x"}"#, &series);
    assert!(bad.iter().any(|p| p.contains("no label role")), "{bad:?}");
    let bad = problems(
        r#"sum by (identity) (tierwarden_client_connections)"#,
        &series,
    );
    assert!(
        bad.iter().any(|p| p.contains("grouping label identity")),
        "{bad:?}"
    );
}

#[test]
fn every_expression_uses_exported_series_and_labels() {
    let d = load_dashboard();
    let series = exported_series();
    let mut all = Vec::new();
    exprs(&d["panels"], &mut all);
    assert!(all.len() >= 15, "dashboard lost panels: {}", all.len());
    all.extend(variable_queries(&d));
    let found: Vec<String> = all.iter().flat_map(|e| problems(e, &series)).collect();
    assert!(
        found.is_empty(),
        "dashboard problems:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_contract_series_is_on_the_dashboard_per_environment() {
    let d = load_dashboard();
    let exported = exported_series();
    let mut all = Vec::new();
    exprs(&d["panels"], &mut all);
    for e in &all {
        assert!(
            e.contains(r#"env=~"$env""#),
            "panel not filtered by $env: {e}"
        );
    }
    for name in CONTRACT {
        assert!(exported.contains_key(name), "{name} is not exported");
        assert!(
            all.iter()
                .any(|e| scan(e).0.iter().any(|s| s.metric == name)),
            "{name} is not on the dashboard"
        );
    }
}

#[test]
fn layout_has_env_and_tier_variables_and_a_row_per_environment() {
    let d = load_dashboard();
    assert!(d["schemaVersion"].as_i64().unwrap_or(0) >= 36);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["datasource", "env", "tier"] {
        assert!(vars.contains(&v), "variable {v} missing: {vars:?}");
    }
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels
        .iter()
        .any(|p| p["type"] == "row" && p["repeat"] == "env"));
    let mut ids = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_i64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_i64().unwrap_or(-1), g["w"].as_i64().unwrap_or(0));
        assert!(
            x >= 0 && w > 0 && x + w <= 24,
            "panel {id} outside the grid"
        );
    }
}

#[test]
fn expressions_are_valid_promql_for_promtool() {
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("promtool not installed: PromQL syntax not checked");
        return;
    }
    let d = load_dashboard();
    let mut all = Vec::new();
    exprs(&d["panels"], &mut all);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in all.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$env", ".*")
            .replace("$tier", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: '{}'\n",
            e.replace('\'', "''")
        ));
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("dashboard_rules.yml");
    std::fs::write(&file, rules).expect("write rules");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
