//! Command implementations other than `serve`: check, token issue, audit
//! verify, quickstart.
//!
//! Owns: what each command prints and its exit code. Must never: be called
//! from the proxy itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::token::{self, TokenKey, TokenRequest};
use crate::cli::{load_for_serve, parse_ttl, EXIT_CONFIG};
use crate::config;
use crate::policy::Tier;
use crate::proxy::upstream::{self, UpstreamTarget};
use crate::shared::{abs, build_runtime};

/// `tierwarden check`.
pub async fn check(path: PathBuf, envs: Vec<String>, offline: bool) -> i32 {
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tierwarden: {e}");
            return EXIT_CONFIG;
        }
    };
    let names: Vec<String> = if envs.is_empty() {
        cfg.environments.keys().cloned().collect()
    } else {
        match config::select_envs(&cfg, &envs, None) {
            Ok(n) => n,
            Err(m) => {
                eprintln!("tierwarden: {m}");
                return EXIT_CONFIG;
            }
        }
    };
    println!(
        "{}: configuration valid, guards pass ({} environments)",
        path.display(),
        cfg.environments.len()
    );
    if offline {
        return 0;
    }
    let rt = match build_runtime(cfg, &path, &names) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tierwarden: {}: {e}", path.display());
            return EXIT_CONFIG;
        }
    };
    let mut failed = false;
    for name in &names {
        let Some(env) = rt.envs.get(name) else {
            continue;
        };
        for (key, login) in &env.logins {
            let t = UpstreamTarget::new(env, login, Duration::from_secs(10));
            match upstream::connect(&t, &[]).await {
                Ok(_) => println!("  {name}: upstream {key} user {} ok", login.user),
                Err(e) => {
                    failed = true;
                    println!(
                        "  {name}: upstream {key} user {}: {e} (fix: check environments.{name}.upstream and the secret)",
                        login.user
                    );
                }
            }
        }
        if env.cfg.upstream.verify_marker {
            match crate::marker::check_marker(env).await {
                Ok(()) => println!("  {name}: identity marker ok"),
                Err(crate::marker::MarkerError::Mismatch(m)) => {
                    println!("  {name}: {m}");
                    return EXIT_CONFIG;
                }
                Err(e) => {
                    failed = true;
                    println!("  {name}: {e}");
                }
            }
        }
    }
    i32::from(failed)
}

/// `tierwarden token issue`.
pub fn issue_token(
    path: &Path,
    env: &str,
    identity: &str,
    ttl: &str,
    reason: Option<String>,
    key_file: Option<PathBuf>,
) -> i32 {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tierwarden: {e}");
            return EXIT_CONFIG;
        }
    };
    let Some(e) = cfg.environments.get(env) else {
        eprintln!("tierwarden: unknown environment {env:?}");
        return EXIT_CONFIG;
    };
    let Some(ident) = cfg.identities.get(identity) else {
        eprintln!("tierwarden: unknown identity {identity:?} (fix: add it under [identities])");
        return EXIT_CONFIG;
    };
    let Some(ttl) = parse_ttl(ttl) else {
        eprintln!("tierwarden: --ttl {ttl:?} is not a duration like 30m, 1h or 8h");
        return EXIT_CONFIG;
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let key = match (key_file, &e.token_key_file, &e.token_key_env) {
        (Some(f), _, _) => TokenKey::from_file(&f),
        (None, Some(f), _) => TokenKey::from_file(&abs(&base, f)),
        (None, None, Some(v)) => TokenKey::from_env(v),
        _ => {
            eprintln!("tierwarden: environment {env} has no token key (fix: set token_key_file, or pass --key-file)");
            return EXIT_CONFIG;
        }
    };
    let key = match key {
        Ok(k) => k,
        Err(err) => {
            eprintln!("tierwarden: {err}");
            return EXIT_CONFIG;
        }
    };
    let req = TokenRequest {
        identity: identity.to_string(),
        role: ident.role.clone(),
        env: env.to_string(),
        ttl,
        reason,
    };
    if e.tier == Tier::Production {
        if let Err(err) = token::check_production_request(&req) {
            eprintln!("tierwarden: {err}");
            return EXIT_CONFIG;
        }
    }
    match token::issue(&key, &req, time::OffsetDateTime::now_utc()) {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(err) => {
            eprintln!("tierwarden: {err}");
            1
        }
    }
}

/// `tierwarden audit verify`.
pub fn audit_verify(file: &Path) -> i32 {
    match crate::audit::verify_file(file) {
        Ok(r) if r.is_ok() => {
            println!("{}: {r}", file.display());
            0
        }
        Ok(r) => {
            println!("{}: {r}", file.display());
            1
        }
        Err(e) => {
            eprintln!("tierwarden: {e}");
            EXIT_CONFIG
        }
    }
}

/// `tierwarden quickstart`.
pub async fn quickstart(dir: PathBuf, port_base: u16) -> i32 {
    use crate::quickstart::{clear_ready, prepare, write_ready, QuickstartArgs};
    let args = QuickstartArgs { dir, port_base };
    let mut prepared = match prepare(&args).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tierwarden quickstart: {e}");
            return e.exit_code();
        }
    };
    let (cfg, served) = match load_for_serve(&prepared.config_path, &prepared.envs) {
        Ok(x) => x,
        Err(code) => return code,
    };
    crate::cli::install_signal_handlers();
    let server = match crate::serve::start(cfg, &prepared.config_path, served).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tierwarden quickstart: {e}");
            let _ = prepared.cluster.stop();
            return EXIT_CONFIG;
        }
    };
    if let Err(e) = write_ready(&prepared) {
        eprintln!("tierwarden quickstart: {e}");
        server.shutdown().await;
        let _ = prepared.cluster.stop();
        return 1;
    }
    println!("{}", prepared.banner);
    println!("ready: {}", prepared.json_path.display());
    let stop = tokio_util::sync::CancellationToken::new();
    server.run(stop).await;
    let _ = clear_ready(&prepared);
    let cluster = Arc::new(std::sync::Mutex::new(prepared.cluster));
    let c = Arc::clone(&cluster);
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(mut g) = c.lock() {
            let _ = g.stop();
        }
    })
    .await;
    println!("quickstart stopped (cluster and proxy)");
    0
}

/// `tierwarden migrations status`.
pub async fn migrations_status(path: PathBuf, env: Option<String>) -> i32 {
    use crate::promotion::control::Control;
    use crate::promotion::short;
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tierwarden: {e}");
            return EXIT_CONFIG;
        }
    };
    let Some(db) = &cfg.promotion.control else {
        eprintln!("tierwarden: {}: no [promotion.control] database is configured (fix: add it to use the promotion gate)", path.display());
        return EXIT_CONFIG;
    };
    let order = config::promotion_order(&cfg);
    let login = order
        .iter()
        .filter(|n| env.as_ref().map(|e| e == *n).unwrap_or(true))
        .find_map(|n| cfg.environments.get(n).and_then(|e| e.control.clone()));
    let Some(login) = login else {
        eprintln!(
            "tierwarden: no environment has a control login (fix: add [environments.NAME.control])"
        );
        return EXIT_CONFIG;
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let password = match config::resolve_secret(&login, &base) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tierwarden: {e}");
            return EXIT_CONFIG;
        }
    };
    let rows = match Control::new(db, &login.user, password.as_deref())
        .status()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tierwarden: {e}");
            return 1;
        }
    };
    let mut by_fp: std::collections::BTreeMap<
        String,
        (String, std::collections::HashMap<String, String>),
    > = Default::default();
    for r in rows {
        let e = by_fp
            .entry(r.fingerprint.clone())
            .or_insert_with(|| (r.summary.clone(), Default::default()));
        e.1.insert(r.env.clone(), format!("{} {}", r.outcome, r.at));
    }
    let mut header = format!("{:<12}  {:<40}", "migration", "first statement");
    for n in &order {
        header.push_str(&format!("  {n:<27}"));
    }
    println!("{header}");
    for (fp, (summary, per_env)) in &by_fp {
        let mut line = format!(
            "{:<12}  {:<40}",
            short(fp),
            summary.chars().take(40).collect::<String>()
        );
        for n in &order {
            line.push_str(&format!(
                "  {:<27}",
                per_env.get(n).map(String::as_str).unwrap_or("absent")
            ));
        }
        println!("{line}");
    }
    if by_fp.is_empty() {
        println!("(no migration recorded yet)");
    }
    0
}
