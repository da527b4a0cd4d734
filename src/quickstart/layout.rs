//! The quickstart's fixed plan: four environments, their ports and
//! databases, the upstream users of each environment, the seed roles with
//! the SPEC §4 default matrix, and the file layout under the quickstart
//! directory.
//!
//! Owns: names and numbers only (pure, no IO). May use: nothing but std.
//! Must never: hold a secret.

use std::path::{Path, PathBuf};

/// One environment of the quickstart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPlan {
    /// Environment name (`dev`, `test`, `stage`, `prod`).
    pub name: &'static str,
    /// Tier, as spelled in the config file.
    pub tier: &'static str,
    /// Proxy listener port.
    pub port: u16,
    /// Upstream database name.
    pub database: String,
}

impl EnvPlan {
    /// Production tier: TLS required, `rw` is DML only.
    pub fn is_production(&self) -> bool {
        self.tier == "production"
    }
}

/// Environment names and tiers in promotion order.
pub const ENVIRONMENTS: [(&str, &str); 4] = [
    ("dev", "development"),
    ("test", "testing"),
    ("stage", "staging"),
    ("prod", "production"),
];

/// Number of ports used from `--port-base`: four environments + admin.
pub const PORTS_USED: u16 = 5;

/// A seed role and its level per environment (SPEC §4 default matrix,
/// in the order of [`ENVIRONMENTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedRole {
    /// Role name; the quickstart's identity for it has the same name.
    pub name: &'static str,
    /// People who develop: never write-capable in production.
    pub developer: bool,
    /// Sessions running ddl are tracked as migrations.
    pub migrations: bool,
    /// Level per environment (`none`, `ro`, `rw`, `migrate`, `controlled`).
    pub levels: [&'static str; 4],
}

/// The six seed roles.
pub const SEED_ROLES: [SeedRole; 6] = [
    SeedRole {
        name: "dev_user",
        developer: true,
        migrations: false,
        levels: ["rw", "none", "none", "none"],
    },
    SeedRole {
        name: "test_runner",
        developer: false,
        migrations: false,
        levels: ["rw", "rw", "none", "none"],
    },
    SeedRole {
        name: "ci_migrator",
        developer: false,
        migrations: true,
        levels: ["rw", "rw", "rw", "migrate"],
    },
    SeedRole {
        name: "app_runtime",
        developer: false,
        migrations: false,
        levels: ["rw", "rw", "rw", "rw"],
    },
    SeedRole {
        name: "auditor",
        developer: false,
        migrations: false,
        levels: ["ro", "ro", "ro", "ro"],
    },
    SeedRole {
        name: "human_admin",
        developer: false,
        migrations: false,
        levels: ["rw", "rw", "rw", "controlled"],
    },
];

impl SeedRole {
    /// Level in the environment at `index` of [`ENVIRONMENTS`].
    pub fn level_at(&self, index: usize) -> &'static str {
        self.levels.get(index).copied().unwrap_or("none")
    }
}

/// The four upstream users of one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpstreamKind {
    /// Owns the database and every object: the only ddl-capable user.
    Owner,
    /// DML on every table, sequences usable.
    Rw,
    /// SELECT only.
    Ro,
    /// The lock monitor: `pg_monitor` and CONNECT, no table access.
    Monitor,
}

impl UpstreamKind {
    /// All kinds, owner first (it must exist before the grants).
    pub const ALL: [UpstreamKind; 4] = [
        UpstreamKind::Owner,
        UpstreamKind::Rw,
        UpstreamKind::Ro,
        UpstreamKind::Monitor,
    ];

    /// Suffix of the PostgreSQL role name.
    pub fn suffix(self) -> &'static str {
        match self {
            UpstreamKind::Owner => "owner",
            UpstreamKind::Rw => "rw",
            UpstreamKind::Ro => "ro",
            UpstreamKind::Monitor => "monitor",
        }
    }
}

/// PostgreSQL role name of an upstream user, e.g. `tw_prod_rw`.
pub fn upstream_user(env: &str, kind: UpstreamKind) -> String {
    format!("tw_{env}_{}", kind.suffix())
}

/// The upstream user behind each config key (`ro`, `rw`, `migrate`,
/// `monitor`) of an environment. Outside production the `rw` level may run
/// ddl, so `rw` maps to the owner there; in production `rw` is the DML-only
/// user.
pub fn config_user_mapping(env: &EnvPlan) -> [(&'static str, UpstreamKind); 4] {
    let rw = if env.is_production() {
        UpstreamKind::Rw
    } else {
        UpstreamKind::Owner
    };
    [
        ("ro", UpstreamKind::Ro),
        ("rw", rw),
        ("migrate", UpstreamKind::Owner),
        ("monitor", UpstreamKind::Monitor),
    ]
}

/// The four environments on `port_base..port_base+3`.
pub fn environments(port_base: u16) -> Vec<EnvPlan> {
    ENVIRONMENTS
        .iter()
        .zip(0u16..)
        .map(|((name, tier), i)| EnvPlan {
            name,
            tier,
            port: port_base.saturating_add(i),
            database: format!("app_{name}"),
        })
        .collect()
}

/// The admin listener's port.
pub fn admin_port(port_base: u16) -> u16 {
    port_base.saturating_add(PORTS_USED - 1)
}

/// Files and directories under the quickstart directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The quickstart directory itself (absolute).
    pub root: PathBuf,
    /// The throwaway cluster (`pgdata/`).
    pub cluster: PathBuf,
    /// Secrets, mode 0700 (`secrets/`).
    pub secrets: PathBuf,
    /// Identity passwords (`secrets/identities.json`, 0600).
    pub identities: PathBuf,
    /// Proxy certificates (`tls/`).
    pub tls: PathBuf,
    /// The generated config (`tierwarden.toml`, 0600).
    pub config: PathBuf,
    /// The contract file (`quickstart.json`, 0600).
    pub json: PathBuf,
    /// Audit log (`audit.jsonl`).
    pub audit: PathBuf,
    /// Non-secret state (`state.json`: the cluster port).
    pub state: PathBuf,
}

impl Paths {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Paths {
        let secrets = root.join("secrets");
        Paths {
            root: root.to_path_buf(),
            cluster: root.join("pgdata"),
            identities: secrets.join("identities.json"),
            secrets,
            tls: root.join("tls"),
            config: root.join("tierwarden.toml"),
            json: root.join("quickstart.json"),
            audit: root.join("audit.jsonl"),
            state: root.join("state.json"),
        }
    }

    /// Password file of an upstream user.
    pub fn upstream_password(&self, user: &str) -> PathBuf {
        self.secrets.join(format!("{user}.password"))
    }

    /// Token signing key of an environment.
    pub fn token_key(&self, env: &str) -> PathBuf {
        self.secrets.join(format!("{env}.token.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_use_consecutive_ports_and_admin_next() {
        let envs = environments(6432);
        let got: Vec<(&str, &str, u16, &str)> = envs
            .iter()
            .map(|e| (e.name, e.tier, e.port, e.database.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("dev", "development", 6432, "app_dev"),
                ("test", "testing", 6433, "app_test"),
                ("stage", "staging", 6434, "app_stage"),
                ("prod", "production", 6435, "app_prod"),
            ]
        );
        assert_eq!(admin_port(6432), 6436);
    }

    #[test]
    fn matrix_is_the_spec_default() {
        let m: Vec<(&str, [&str; 4])> = SEED_ROLES.iter().map(|r| (r.name, r.levels)).collect();
        assert_eq!(m[0], ("dev_user", ["rw", "none", "none", "none"]));
        assert_eq!(m[2], ("ci_migrator", ["rw", "rw", "rw", "migrate"]));
        assert_eq!(m[5], ("human_admin", ["rw", "rw", "rw", "controlled"]));
        let flagged: Vec<&str> = SEED_ROLES
            .iter()
            .filter(|r| r.developer || r.migrations)
            .map(|r| r.name)
            .collect();
        assert_eq!(flagged, vec!["dev_user", "ci_migrator"]);
    }

    #[test]
    fn rw_is_dml_only_in_production_and_owner_elsewhere() {
        let envs = environments(7000);
        let dev = config_user_mapping(&envs[0]);
        let prod = config_user_mapping(&envs[3]);
        assert_eq!(dev[1], ("rw", UpstreamKind::Owner));
        assert_eq!(prod[1], ("rw", UpstreamKind::Rw));
        assert_eq!(prod[2], ("migrate", UpstreamKind::Owner));
        assert_eq!(upstream_user("prod", UpstreamKind::Rw), "tw_prod_rw");
    }

    #[test]
    fn upstream_users_are_never_shared_between_environments() {
        let mut all: Vec<String> = ENVIRONMENTS
            .iter()
            .flat_map(|(e, _)| UpstreamKind::ALL.iter().map(move |k| upstream_user(e, *k)))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n, 16);
    }
}
