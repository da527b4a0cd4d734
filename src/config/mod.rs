//! Configuration: model, loading, validation and the environment guards.
//!
//! Owns: turning a TOML file into a checked `Config` and resolving upstream
//! secrets. May use: serde/toml, the pure enums of `policy` and `auth`.
//! Must never: open sockets (the live upstream checks live in `cli`).

mod guards;
mod load;
mod model;
mod secrets;
mod validate;

pub use guards::check_guards;
pub use load::{load, parse_str, ConfigError, Problem};
pub use model::*;
pub use secrets::{resolve_secret, SecretError};
pub use validate::validate;

/// The promotion order: `promotion.order`, else environments sorted by
/// tier (development, testing, staging, production) then name.
pub fn promotion_order(config: &Config) -> Vec<String> {
    if !config.promotion.order.is_empty() {
        return config.promotion.order.clone();
    }
    let rank = |t: crate::policy::Tier| t as u8;
    let mut v: Vec<(&String, &Environment)> = config.environments.iter().collect();
    v.sort_by_key(|(n, e)| (rank(e.tier), (*n).clone()));
    v.into_iter().map(|(n, _)| n.clone()).collect()
}

/// The environment before `env` in the promotion order.
pub fn predecessor(config: &Config, env: &str) -> Option<String> {
    let order = promotion_order(config);
    let i = order.iter().position(|n| n == env)?;
    i.checked_sub(1).map(|j| order[j].clone())
}

/// Choose the environments a process serves: `--env` values, else the
/// `APP_ENV` variable (comma separated). Errors are one line saying what to set.
pub fn select_envs(
    config: &Config,
    cli: &[String],
    app_env: Option<String>,
) -> Result<Vec<String>, String> {
    let names: Vec<String> = if !cli.is_empty() {
        cli.to_vec()
    } else if let Some(v) = app_env.filter(|v| !v.trim().is_empty()) {
        v.split(',').map(|s| s.trim().to_string()).collect()
    } else {
        return Err(format!(
            "no environment selected: pass --env NAME or set APP_ENV (configured: {})",
            config
                .environments
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    for n in &names {
        if !config.environments.contains_key(n) {
            return Err(format!(
                "unknown environment {n:?}: --env/APP_ENV must be one of: {}",
                config
                    .environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let mut out = names;
    out.dedup();
    Ok(out)
}
