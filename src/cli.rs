//! The command line: serve, check, passwd, token, audit, quickstart.
//!
//! Owns: argument parsing, exit codes (2 = configuration or usage error,
//! 1 = runtime failure) and human-readable output. Must never: hold proxy
//! logic; it calls into `serve`, `config`, `auth`, `audit`, `quickstart`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config;

/// Exit code for configuration and usage errors.
pub const EXIT_CONFIG: i32 = 2;

/// tierwarden: a PostgreSQL proxy that makes environments safety boundaries.
#[derive(Parser, Debug)]
#[command(name = "tierwarden", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve one or more environments (each on its own listener).
    Serve {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Environment to serve (repeatable); default: $APP_ENV.
        #[arg(long = "env")]
        envs: Vec<String>,
    },
    /// Validate a configuration and its guards, and try the upstreams.
    Check {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only check these environments' upstreams.
        #[arg(long = "env")]
        envs: Vec<String>,
        /// Do not connect to the upstreams.
        #[arg(long)]
        offline: bool,
    },
    /// Read a password on stdin and print its SCRAM-SHA-256 verifier.
    Passwd {
        /// PBKDF2 iterations.
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
    /// Environment-scoped access and break-glass tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The migration promotion gate.
    #[command(subcommand)]
    Migrations(MigrationsCmd),
    /// A throwaway PostgreSQL with four environments behind the proxy.
    Quickstart {
        /// State directory (cluster, config, secrets, quickstart.json).
        #[arg(long, default_value = ".tierwarden")]
        dir: PathBuf,
        /// First port: dev, test, stage, prod, then the admin listener.
        #[arg(long, default_value_t = 6432)]
        port_base: u16,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Print a new signing key (PASERK); keep it secret.
    Keygen,
    /// Print the public (verification) key of a signing key file; give
    /// proxies only this (`token_key_file` accepts either).
    Pubkey {
        /// Signing key file (k4.secret...).
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Issue a signed token.
    Issue {
        /// Configuration file (for the identity's role and the key).
        #[arg(long, short)]
        config: PathBuf,
        /// Environment the token opens.
        #[arg(long)]
        env: String,
        /// Identity it is issued to.
        #[arg(long)]
        identity: String,
        /// Lifetime, e.g. 30m, 1h, 8h (production: at most 24h).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Why (required in production), e.g. an incident number.
        #[arg(long)]
        reason: Option<String>,
        /// Signing key file (default: the environment's token_key_file).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum MigrationsCmd {
    /// Where each migration has been applied or has failed, per environment.
    Status {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Read with this environment's control login (default: the first).
        #[arg(long)]
        env: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Verify the hash chain of an audit file.
    Verify {
        /// The JSON Lines file.
        file: PathBuf,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIERWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Command::Passwd { iterations } => passwd(iterations),
        Command::Token(TokenCmd::Keygen) => match crate::auth::token::generate_key() {
            Ok(k) => {
                println!("{k}");
                0
            }
            Err(e) => {
                eprintln!("tierwarden: {e}");
                1
            }
        },
        Command::Token(TokenCmd::Pubkey { key_file }) => {
            match crate::auth::token::TokenKey::from_file(&key_file) {
                Ok(k) => {
                    println!("{}", k.public_key().to_paserk());
                    0
                }
                Err(e) => {
                    eprintln!("tierwarden: {}: {e}", key_file.display());
                    EXIT_CONFIG
                }
            }
        }
        Command::Token(TokenCmd::Issue {
            config,
            env,
            identity,
            ttl,
            reason,
            key_file,
        }) => crate::cli_tools::issue_token(&config, &env, &identity, &ttl, reason, key_file),
        Command::Audit(AuditCmd::Verify { file }) => crate::cli_tools::audit_verify(&file),
        Command::Migrations(MigrationsCmd::Status { config, env }) => {
            runtime(crate::cli_tools::migrations_status(config, env))
        }
        Command::Check {
            config,
            envs,
            offline,
        } => runtime(crate::cli_tools::check(config, envs, offline)),
        Command::Serve { config, envs } => match load_for_serve(&config, &envs) {
            Ok((cfg, served)) => {
                runtime_with(cfg.proxy.worker_threads(), serve(config, cfg, served))
            }
            Err(code) => code,
        },
        Command::Quickstart { dir, port_base } => runtime_with(
            crate::config::ProxySettings::default().worker_threads(),
            crate::cli_tools::quickstart(dir, port_base),
        ),
    }
}

fn runtime<F: std::future::Future<Output = i32>>(f: F) -> i32 {
    runtime_with(2, f)
}

/// Run `f` on a runtime with `threads` worker threads (the session threads
/// of `serve` and `quickstart`). The runtime has no time driver: every
/// deadline lives on the timer thread (`crate::timers`), so parking a
/// worker between two messages costs no clock read and no timer-wheel walk.
fn runtime_with<F: std::future::Future<Output = i32>>(threads: usize, f: F) -> i32 {
    if let Err(e) = crate::timers::start() {
        eprintln!("tierwarden: cannot start the timer thread: {e}");
        return 1;
    }
    match session_runtime(threads) {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("tierwarden: cannot start the runtime: {e}");
            1
        }
    }
}

/// The runtime sessions run on: `threads` workers (the single-threaded
/// scheduler for one), IO only — no time driver (`crate::timers`). Also
/// what the test harness runs the proxy under test on.
pub fn session_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_io()
            .build()
    }
}

fn passwd(iterations: u32) -> i32 {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (input is echoed; pipe it to hide it): ");
    }
    let mut line = String::new();
    if stdin.lock().read_line(&mut line).is_err() {
        eprintln!("tierwarden: cannot read the password from stdin");
        return 1;
    }
    let pw = line.trim_end_matches(['\n', '\r']);
    if pw.is_empty() {
        eprintln!("tierwarden: empty password");
        return EXIT_CONFIG;
    }
    println!(
        "{}",
        crate::auth::verifier::Verifier::generate(pw, iterations.max(4096))
    );
    0
}

/// Load the config and choose the served environments, or explain (exit 2).
pub fn load_for_serve(
    path: &std::path::Path,
    envs: &[String],
) -> Result<(config::Config, Vec<String>), i32> {
    let cfg = config::load(path).map_err(|e| {
        eprintln!("tierwarden: {e}");
        EXIT_CONFIG
    })?;
    let served = config::select_envs(&cfg, envs, std::env::var("APP_ENV").ok()).map_err(|m| {
        eprintln!("tierwarden: {m}");
        EXIT_CONFIG
    })?;
    Ok((cfg, served))
}

async fn serve(path: PathBuf, cfg: config::Config, served: Vec<String>) -> i32 {
    install_signal_handlers();
    let server = match crate::serve::start(cfg, &path, served).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tierwarden: {}: {e}", path.display());
            return EXIT_CONFIG;
        }
    };
    for (env, addr) in &server.addrs {
        tracing::info!(env = %env, %addr, "listening");
    }
    if let Some(a) = server.admin {
        tracing::info!(addr = %a, "admin listener (/metrics /healthz /readyz)");
    }
    server.run(tokio_util::sync::CancellationToken::new()).await;
    0
}

/// Replace the default (terminating) actions of SIGHUP/SIGTERM/SIGINT
/// before any port opens; `Server::run` then receives them.
pub fn install_signal_handlers() {
    use tokio::signal::unix::{signal, SignalKind};
    for k in [
        SignalKind::hangup(),
        SignalKind::terminate(),
        SignalKind::interrupt(),
    ] {
        if let Err(e) = signal(k) {
            tracing::error!(error = %e, "cannot install a signal handler");
        }
    }
}

/// Parse `30s`, `15m`, `1h`, `2d`.
pub fn parse_ttl(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}
