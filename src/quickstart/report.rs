//! What the quickstart tells the world: `quickstart.json` (SPEC §9, exact
//! shape) and the banner printed before "ready".
//!
//! Owns: the JSON document and the banner text. Pure: plan and passwords
//! in, values out. Must never: add keys to the JSON contract or list a URL
//! for a role/environment pair whose level is `none`.

use std::fmt::Write;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::files::{percent_encode, IdentityPasswords};
use super::layout::{admin_port, EnvPlan, SEED_ROLES};

/// `postgres://user:pass@127.0.0.1:port/db`, user and password
/// percent-encoded.
pub fn url(user: &str, password: &str, env: &EnvPlan) -> String {
    format!(
        "postgres://{}:{}@127.0.0.1:{}/{}",
        percent_encode(user),
        percent_encode(password),
        env.port,
        env.database
    )
}

/// The `quickstart.json` document.
pub fn quickstart_json(envs: &[EnvPlan], port_base: u16, passwords: &IdentityPasswords) -> Value {
    let mut environments = Map::new();
    for env in envs {
        environments.insert(
            env.name.to_string(),
            json!({"port": env.port, "tier": env.tier, "database": env.database}),
        );
    }
    let mut identities = Map::new();
    let mut urls = Map::new();
    for role in &SEED_ROLES {
        let Some(per_env) = passwords.get(role.name) else {
            continue;
        };
        let mut pw = Map::new();
        for env in envs {
            if let Some(p) = per_env.get(env.name) {
                pw.insert(env.name.to_string(), Value::String(p.clone()));
            }
        }
        identities.insert(
            role.name.to_string(),
            json!({"user": role.name, "passwords": pw}),
        );
        for (i, env) in envs.iter().enumerate() {
            if role.level_at(i) == "none" {
                continue;
            }
            if let Some(p) = per_env.get(env.name) {
                urls.insert(
                    format!("{}@{}", role.name, env.name),
                    Value::String(url(role.name, p, env)),
                );
            }
        }
    }
    json!({
        "environments": environments,
        "admin_url": format!("http://127.0.0.1:{}", admin_port(port_base)),
        "identities": identities,
        "urls": urls,
    })
}

/// A psql command line for `user` in `env` (TLS verified in production).
pub fn psql_command(user: &str, password: &str, env: &EnvPlan, ca: &Path) -> String {
    let tls = if env.is_production() {
        format!(" sslmode=verify-full sslrootcert={}", ca.display())
    } else {
        String::new()
    };
    format!(
        "psql \"host=127.0.0.1 port={} dbname={} user={user} password={password}{tls}\"",
        env.port, env.database
    )
}

/// Inputs of the banner besides the plan.
pub struct BannerInputs<'a> {
    /// The quickstart directory.
    pub dir: &'a Path,
    /// CA certificate clients verify the proxy with.
    pub ca: &'a Path,
    /// The generated config.
    pub config: &'a Path,
    /// `quickstart.json`.
    pub json: &'a Path,
    /// Port of the throwaway cluster.
    pub pg_port: u16,
    /// `--port-base`.
    pub port_base: u16,
}

/// The table of environments and a few copy-paste psql commands.
pub fn banner(envs: &[EnvPlan], passwords: &IdentityPasswords, b: &BannerInputs<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tierwarden quickstart: {} environments on 127.0.0.1 (PostgreSQL cluster in {}, port {})\n",
        envs.len(),
        b.dir.join("pgdata").display(),
        b.pg_port
    );
    let _ = writeln!(
        out,
        "  {:<7} {:<12} {:<6} {:<10} tls",
        "env", "tier", "port", "database"
    );
    for env in envs {
        let tls = if env.is_production() {
            "required"
        } else {
            "optional"
        };
        let _ = writeln!(
            out,
            "  {:<7} {:<12} {:<6} {:<10} {tls}",
            env.name, env.tier, env.port, env.database
        );
    }
    let _ = writeln!(
        out,
        "  admin   http://127.0.0.1:{}/metrics",
        admin_port(b.port_base)
    );
    let _ = writeln!(out, "\nCA certificate: {}", b.ca.display());
    let _ = writeln!(out, "Config:         {}", b.config.display());
    let _ = writeln!(
        out,
        "Credentials:    {} (every role@env URL)\n",
        b.json.display()
    );
    let _ = writeln!(out, "Try it:");
    let examples = [
        ("dev_user", "dev", "read and write, ddl allowed"),
        ("test_runner", "test", "read and write"),
        ("app_runtime", "stage", "read and write"),
        ("auditor", "prod", "reads work, writes are denied"),
        (
            "ci_migrator",
            "prod",
            "CREATE TABLE works, INSERT is denied",
        ),
    ];
    for (role, env_name, what) in examples {
        let Some(env) = envs.iter().find(|e| e.name == env_name) else {
            continue;
        };
        let Some(pw) = passwords.get(role).and_then(|m| m.get(env_name)) else {
            continue;
        };
        let _ = writeln!(out, "  # {role}@{env_name}: {what}");
        let _ = writeln!(out, "  {}", psql_command(role, pw, env, b.ca));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quickstart::layout::environments;
    use std::collections::BTreeMap;

    fn passwords() -> IdentityPasswords {
        SEED_ROLES
            .iter()
            .map(|r| {
                let per: BTreeMap<String, String> = ["dev", "test", "stage", "prod"]
                    .iter()
                    .map(|e| (e.to_string(), format!("{}{}pw", r.name, e)))
                    .collect();
                (r.name.to_string(), per)
            })
            .collect()
    }

    #[test]
    fn json_has_exactly_the_contract_shape() {
        let envs = environments(6432);
        let v = quickstart_json(&envs, 6432, &passwords());
        let top: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(top, ["admin_url", "environments", "identities", "urls"]);
        assert_eq!(v["admin_url"], "http://127.0.0.1:6436");
        assert_eq!(
            v["environments"]["prod"],
            json!({"port": 6435, "tier": "production", "database": "app_prod"})
        );
        assert_eq!(v["identities"]["auditor"]["user"], "auditor");
        assert_eq!(
            v["identities"]["auditor"]["passwords"]["stage"],
            "auditorstagepw"
        );
        assert_eq!(
            v["urls"]["auditor@prod"],
            "postgres://auditor:auditorprodpw@127.0.0.1:6435/app_prod"
        );
    }

    #[test]
    fn urls_cover_exactly_the_levels_that_are_not_none() {
        let envs = environments(6432);
        let v = quickstart_json(&envs, 6432, &passwords());
        let mut keys: Vec<String> = v["urls"].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        // 6 roles x 4 envs = 24, minus dev_user (3) and test_runner (2) `none`s.
        assert_eq!(keys.len(), 19);
        assert!(keys.contains(&"dev_user@dev".to_string()));
        assert!(!keys.contains(&"dev_user@prod".to_string()));
        assert!(!keys.contains(&"test_runner@stage".to_string()));
        assert!(keys.contains(&"human_admin@prod".to_string()));
    }

    #[test]
    fn urls_percent_encode_credentials() {
        let envs = environments(6432);
        assert_eq!(
            url("a@b", "p:w/d", &envs[0]),
            "postgres://a%40b:p%3Aw%2Fd@127.0.0.1:6432/app_dev"
        );
    }

    #[test]
    fn banner_lists_ports_and_verify_full_for_prod() {
        let envs = environments(7000);
        let b = BannerInputs {
            dir: Path::new("/q"),
            ca: Path::new("/q/tls/ca.crt"),
            config: Path::new("/q/tierwarden.toml"),
            json: Path::new("/q/quickstart.json"),
            pg_port: 40000,
            port_base: 7000,
        };
        let text = banner(&envs, &passwords(), &b);
        assert!(text.contains("  prod    production   7003   app_prod   required"));
        assert!(text.contains("http://127.0.0.1:7004/metrics"));
        assert!(text.contains(
            "psql \"host=127.0.0.1 port=7003 dbname=app_prod user=auditor password=auditorprodpw sslmode=verify-full sslrootcert=/q/tls/ca.crt\""
        ));
        assert!(text.contains(
            "psql \"host=127.0.0.1 port=7000 dbname=app_dev user=dev_user password=dev_userdevpw\""
        ));
    }
}
