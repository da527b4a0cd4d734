//! The environment binding guards (SPEC §2): a configuration that crosses
//! environments is refused before any port opens.
//!
//! Owns: the cross-environment rules. Must never: touch the network (the
//! live identity-marker check is done by `cli check`/`serve`).

use std::collections::BTreeMap;

use super::load::Problem;
use super::model::Config;
use crate::policy::Tier;

fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_ascii_lowercase())
        .collect()
}

/// Every guard violation, each naming both sides.
pub fn check_guards(c: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    upstream_names(c, &mut out);
    shared_upstreams(c, &mut out);
    shared_credentials(c, &mut out);
    developer_in_production(c, &mut out);
    out
}

fn upstream_names(c: &Config, out: &mut Vec<Problem>) {
    for (name, env) in &c.environments {
        for (what, value) in [
            ("database", &env.upstream.database),
            ("host", &env.upstream.host),
        ] {
            let toks = tokens(value);
            for other in c.environments.keys().filter(|o| *o != name) {
                let o = other.to_ascii_lowercase();
                if toks.contains(&o) && !toks.contains(&name.to_ascii_lowercase()) {
                    out.push(Problem {
                        key: format!("environments.{name}.upstream.{what}"),
                        message: format!(
                            "environment {name} points at {value:?}, which names environment {other}"
                        ),
                        fix: format!("point {name} at its own {what}, or fix the environment name"),
                    });
                }
            }
        }
    }
}

fn shared_upstreams(c: &Config, out: &mut Vec<Problem>) {
    let mut seen: BTreeMap<(String, u16, String), &String> = BTreeMap::new();
    for (name, env) in &c.environments {
        let u = &env.upstream;
        let k = (u.host.to_ascii_lowercase(), u.port, u.database.clone());
        if let Some(first) = seen.get(&k) {
            out.push(Problem {
                key: format!("environments.{name}.upstream"),
                message: format!(
                    "environments {first} and {name} use the same database {}:{}/{}",
                    u.host, u.port, u.database
                ),
                fix: "give each environment its own database".into(),
            });
        } else {
            seen.insert(k, name);
        }
    }
}

fn shared_credentials(c: &Config, out: &mut Vec<Problem>) {
    // (what, value) → (env, key) of first use
    let mut seen: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    for (name, env) in &c.environments {
        for (lkey, u) in &env.upstream.users {
            let here = (
                name.clone(),
                format!("environments.{name}.upstream.users.{lkey}"),
            );
            let mut refs = vec![(
                "upstream user".to_string(),
                format!("{}:{}/{}", env.upstream.host, env.upstream.port, u.user),
            )];
            if let Some(v) = &u.password_env {
                refs.push(("password_env".into(), v.clone()));
            }
            if let Some(f) = &u.password_file {
                refs.push(("password_file".into(), f.display().to_string()));
            }
            for r in refs {
                match seen.get(&r) {
                    Some((first_env, first_key)) if *first_env != *name => out.push(Problem {
                        key: here.1.clone(),
                        message: format!(
                            "the same {} {:?} is configured for environments {first_env} ({first_key}) and {name}",
                            r.0, r.1
                        ),
                        fix: "never reuse credentials across environments: create a separate upstream user and secret per environment".into(),
                    }),
                    Some(_) => {}
                    None => {
                        seen.insert(r, here.clone());
                    }
                }
            }
        }
    }
}

fn developer_in_production(c: &Config, out: &mut Vec<Problem>) {
    for (rname, role) in c.roles.iter().filter(|(_, r)| r.developer) {
        for (ename, env) in c
            .environments
            .iter()
            .filter(|(_, e)| e.tier == Tier::Production)
        {
            let level = role.level_in(ename);
            if level.is_write_capable(env.tier) {
                out.push(Problem {
                    key: format!("roles.{rname}.levels.{ename}"),
                    message: format!(
                        "developer role {rname} has write-capable level {} in production-tier environment {ename}",
                        level.as_str()
                    ),
                    fix: "no developer has production RW access: use ro or none".into(),
                });
            }
        }
    }
}
