//! Consistency checks of a parsed configuration.
//!
//! Owns: every rule that a single file must satisfy on its own (references,
//! addresses, required sections). The cross-environment guards live in
//! `guards`. Must never: touch the network.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;

use super::load::Problem;
use super::model::Config;
use crate::auth::verifier::Verifier;
use crate::policy::{Level, Tier};

fn p(key: String, message: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        key,
        message: message.into(),
        fix: fix.into(),
    }
}

/// Every problem of the file, in a stable order. Empty means valid.
pub fn validate(c: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    if c.environments.is_empty() {
        out.push(p(
            "environments".into(),
            "no environment is configured",
            "add at least one [environments.NAME] table",
        ));
    }
    environments(c, &mut out);
    roles_and_identities(c, &mut out);
    sections(c, &mut out);
    out
}

fn upstream_keys_for(level: Level) -> &'static [&'static str] {
    match level {
        Level::None => &[],
        Level::Ro => &["ro"],
        Level::Rw => &["rw"],
        Level::Migrate => &["migrate"],
        Level::Controlled => &["ro", "rw"],
    }
}

fn environments(c: &Config, out: &mut Vec<Problem>) {
    let mut listens = BTreeSet::new();
    for (name, env) in &c.environments {
        let key = format!("environments.{name}");
        match env.listen.parse::<SocketAddr>() {
            Ok(a) if !listens.insert(a) => out.push(p(
                format!("{key}.listen"),
                format!("address {a} is used by another environment"),
                "give every environment its own listen port",
            )),
            Ok(_) => {}
            Err(_) => out.push(p(
                format!("{key}.listen"),
                format!("{:?} is not an IP:port address", env.listen),
                "write e.g. listen = \"127.0.0.1:6432\"",
            )),
        }
        if env.spike_factor < 1.0 || !env.spike_factor.is_finite() {
            out.push(p(
                format!("{key}.spike_factor"),
                "must be a number >= 1.0",
                "use e.g. spike_factor = 3.0",
            ));
        }
        if env.lock_poll_ms < 50 {
            out.push(p(
                format!("{key}.lock_poll_ms"),
                "polling faster than every 50 ms loads the database",
                "use e.g. lock_poll_ms = 1000",
            ));
        }
        for (ukey, u) in &env.upstream.users {
            let k = format!("{key}.upstream.users.{ukey}");
            // `monitor`: optional login of the lock monitor (needs pg_monitor).
            if !["ro", "rw", "migrate", "monitor"].contains(&ukey.as_str()) {
                out.push(p(
                    k.clone(),
                    "unknown upstream user key",
                    "use ro, rw, migrate or monitor",
                ));
            }
            if u.password_env.is_some() && u.password_file.is_some() {
                out.push(p(
                    k,
                    "both password_env and password_file are set",
                    "keep exactly one of them",
                ));
            }
        }
        let mut needed = BTreeSet::new();
        for role in c.roles.values() {
            for k in upstream_keys_for(role.level_in(name)) {
                needed.insert(*k);
            }
        }
        for k in needed {
            if !env.upstream.users.contains_key(k) {
                out.push(p(
                    format!("{key}.upstream.users.{k}"),
                    format!("a role has a level in {name} that needs an upstream `{k}` user"),
                    format!("add [environments.{name}.upstream.users.{k}] with user and password_env or password_file"),
                ));
            }
        }
    }
}

fn roles_and_identities(c: &Config, out: &mut Vec<Problem>) {
    for (rname, role) in &c.roles {
        for env in role.levels.keys() {
            if !c.environments.contains_key(env) {
                out.push(p(
                    format!("roles.{rname}.levels.{env}"),
                    format!("environment {env:?} is not configured"),
                    "use a name from [environments] or remove the entry",
                ));
            }
        }
    }
    for (iname, ident) in &c.identities {
        let key = format!("identities.{iname}");
        if !c.roles.contains_key(&ident.role) {
            out.push(p(
                format!("{key}.role"),
                format!("role {:?} is not configured", ident.role),
                "use a name from [roles]",
            ));
        }
        for (env, v) in &ident.verifiers {
            if !c.environments.contains_key(env) {
                out.push(p(
                    format!("{key}.verifiers.{env}"),
                    format!("environment {env:?} is not configured"),
                    "use a name from [environments]",
                ));
            }
            if Verifier::from_str(v).is_err() {
                out.push(p(
                    format!("{key}.verifiers.{env}"),
                    "not a SCRAM-SHA-256 verifier in PostgreSQL format",
                    "paste the output of `tierwarden passwd`",
                ));
            }
        }
    }
}

fn sections(c: &Config, out: &mut Vec<Problem>) {
    if c.proxy.worker_threads > super::model::ProxySettings::MAX_WORKER_THREADS {
        out.push(p(
            "proxy.worker_threads".into(),
            format!(
                "{} worker threads is more than the proxy can use",
                c.proxy.worker_threads
            ),
            "use 0 (automatic: half the CPU cores) or a number up to 256",
        ));
    }
    let needs_tls = c.environments.values().any(|e| e.tls_required());
    if needs_tls && c.tls.is_none() {
        out.push(p(
            "tls".into(),
            "an environment requires TLS (production tier does by default) but no certificate is configured",
            "add [tls] cert_file and key_file, or set require_tls = false in non-production environments",
        ));
    }
    let has_prod = c.environments.values().any(|e| e.tier == Tier::Production);
    if has_prod && c.audit.is_none() {
        out.push(p(
            "audit".into(),
            "a production-tier environment requires the audit log",
            "add [audit] path = \"/var/log/tierwarden/audit.jsonl\"",
        ));
    }
    if let Some(a) = &c.audit {
        if !["always", "interval", "never"].contains(&a.fsync.as_str()) {
            out.push(p(
                "audit.fsync".into(),
                format!("{:?} is not a fsync policy", a.fsync),
                "use always, interval or never",
            ));
        }
    }
    if let Some(l) = &c.admin.listen {
        if l.parse::<SocketAddr>().is_err() {
            out.push(p(
                "admin.listen".into(),
                format!("{l:?} is not an IP:port address"),
                "write e.g. listen = \"127.0.0.1:9187\"",
            ));
        }
    }
    if c.promotion.control.is_some() {
        for (name, e) in &c.environments {
            if e.control.is_none() {
                out.push(p(
                    format!("environments.{name}.control"),
                    "a promotion control database is configured but this environment has no login for it",
                    format!("add [environments.{name}.control] with user and password_file (one login per environment)"),
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for n in &c.promotion.order {
        if !c.environments.contains_key(n) {
            out.push(p(
                "promotion.order".into(),
                format!("environment {n:?} is not configured"),
                "list names from [environments], earliest first",
            ));
        }
        if !seen.insert(n) {
            out.push(p(
                "promotion.order".into(),
                format!("{n:?} is listed twice"),
                "list every environment once",
            ));
        }
    }
}
