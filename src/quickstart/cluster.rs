//! A throwaway PostgreSQL cluster created with `initdb` (quickstart and
//! integration tests).
//!
//! Owns: the cluster directory layout (`<dir>/data` PGDATA, `<dir>/run`
//! socket directory, `<dir>/postgres.log`, `<dir>/superuser.password`),
//! initdb with SCRAM-SHA-256 for local and host connections, listening on
//! 127.0.0.1 only, start/stop through `pg_ctl`, and superuser connections.
//! May use: `binaries`, `runner` (programs run as the `postgres` system user
//! when we are root), tokio-postgres. Must never: listen on anything but
//! 127.0.0.1, write outside its directory, or leave a server it started
//! running after `stop`/drop.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use rand::distributions::{Alphanumeric, DistString};

use super::binaries::{find_pg_binaries, BinariesError, PgBinaries};
use super::files::write_secret_file;
use super::runner::{io_err, Runner};

/// The cluster's superuser (not `postgres`, so nobody guesses it).
pub const SUPERUSER: &str = "tierwarden_admin";
/// Seconds pg_ctl waits for start/stop.
const PG_CTL_WAIT_SECS: &str = "60";
/// Longest unix socket path Linux accepts (sun_path minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What went wrong with the throwaway cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No server binaries.
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    /// Running as root without a `postgres` user to run the server as.
    #[error(
        "running as root, but initdb and postgres refuse to run as root and there is no \
         `postgres` system user to run them as; create it (`useradd --system postgres`, \
         installed with the postgresql package) or run tierwarden as an unprivileged user"
    )]
    NoUnprivilegedUser,
    /// A parent directory the server user cannot enter.
    #[error(
        "the PostgreSQL cluster runs as the `{user}` user, which cannot enter {} \
         (mode {mode:o}); fix: `chmod o+x {}`, or choose a directory it can reach \
         (for example --dir /tmp/tierwarden)",
        dir.display(), dir.display()
    )]
    NotTraversable {
        /// The closed directory.
        dir: PathBuf,
        /// The server user.
        user: String,
        /// Its mode bits.
        mode: u32,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An existing cluster without the superuser password file.
    #[error(
        "{} holds a PostgreSQL cluster but no superuser password file {}; \
         delete {} to start from scratch",
        dir.display(), file.display(), dir.display()
    )]
    MissingPassword {
        /// The cluster directory.
        dir: PathBuf,
        /// The expected password file.
        file: PathBuf,
    },
    /// A PostgreSQL program failed.
    #[error("{program} failed ({status}): {output}")]
    Program {
        /// Program and action, e.g. `initdb`.
        program: String,
        /// Exit status.
        status: String,
        /// Its stderr/stdout and, for start, the tail of the server log.
        output: String,
    },
    /// The port is taken by someone else.
    #[error("port {0} on 127.0.0.1 is already in use")]
    PortInUse(u16),
    /// Connecting as superuser failed.
    #[error("connecting to the throwaway cluster: {0}")]
    Connect(#[from] tokio_postgres::Error),
    /// The cluster did not answer within the connect timeout.
    #[error("connecting to the throwaway cluster on port {0}: no answer within 10 s")]
    ConnectTimeout(u16),
}

/// A PostgreSQL cluster under one directory, listening on 127.0.0.1:`port`.
#[derive(Debug)]
pub struct PgCluster {
    /// Cluster root: holds `data/`, `run/`, `postgres.log`, `superuser.password`.
    pub dir: PathBuf,
    /// PGDATA (`<dir>/data`).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1 (may be changed before `start`).
    pub port: u16,
    /// Superuser name.
    pub superuser: String,
    /// Superuser password (also in `<dir>/superuser.password`, mode 0600).
    pub superuser_password: String,
    /// The server binaries used.
    pub binaries: PgBinaries,
    runner: Runner,
    started: bool,
}

impl PgCluster {
    /// Create the cluster under `dir` with initdb, or reuse the one already
    /// there (`<dir>/data/PG_VERSION` exists). Does not start it.
    pub fn init_or_reuse(dir: &Path, port: u16) -> Result<PgCluster, ClusterError> {
        let binaries = find_pg_binaries()?;
        let runner = Runner::detect()?;
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let dir = fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
        runner.check_traversable(&dir)?;
        runner.chown_tree(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(&dir, e))?;
        let data_dir = dir.join("data");
        let pw_file = dir.join("superuser.password");
        let mut cluster = PgCluster {
            dir: dir.clone(),
            data_dir,
            port,
            superuser: SUPERUSER.to_string(),
            superuser_password: String::new(),
            binaries,
            runner,
            started: false,
        };
        if cluster.data_dir.join("PG_VERSION").exists() {
            let pw = fs::read_to_string(&pw_file).map_err(|_| ClusterError::MissingPassword {
                dir: dir.clone(),
                file: pw_file.clone(),
            })?;
            cluster.superuser_password = pw.trim().to_string();
        } else {
            cluster.superuser_password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
            write_secret_file(&pw_file, cluster.superuser_password.as_bytes())
                .map_err(|e| io_err(&pw_file, e))?;
            cluster.runner.chown(&pw_file)?;
            cluster.initdb(&pw_file)?;
        }
        Ok(cluster)
    }

    fn initdb(&self, pw_file: &Path) -> Result<(), ClusterError> {
        let out = self
            .runner
            .command(&self.binaries.initdb(), &self.dir)
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-U")
            .arg(&self.superuser)
            .arg(format!("--pwfile={}", pw_file.display()))
            .args(["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"])
            .output()
            .map_err(|e| io_err(&self.binaries.initdb(), e))?;
        check_output("initdb", &out, None)?;
        let conf = self.data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).map_err(|e| io_err(&conf, e))?;
        text.push_str("\n# tierwarden quickstart: port, listen address, sockets\ninclude_if_exists = 'tierwarden.conf'\n");
        fs::write(&conf, text).map_err(|e| io_err(&conf, e))
    }

    /// Start the server (`pg_ctl start -w`), logging to `<dir>/postgres.log`.
    /// A server left running for this data directory (a previous run that
    /// crashed) is stopped first. Fails with `PortInUse` when the port is taken.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        if self.started {
            return Ok(());
        }
        if self.is_running() {
            self.pg_ctl_stop()?;
        }
        if TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            return Err(ClusterError::PortInUse(self.port));
        }
        self.write_settings()?;
        let log = self.log_path();
        let out = self
            .runner
            .command(&self.binaries.pg_ctl(), &self.dir)
            .args(["start", "-w", "-s", "-t", PG_CTL_WAIT_SECS, "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .output()
            .map_err(|e| io_err(&self.binaries.pg_ctl(), e))?;
        check_output("pg_ctl start", &out, Some(&log))?;
        self.started = true;
        Ok(())
    }

    /// Stop the server (`pg_ctl stop -m fast -w`). Idempotent: a stopped
    /// cluster is fine.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        let result = if self.is_running() {
            self.pg_ctl_stop()
        } else {
            Ok(())
        };
        self.started = false;
        result
    }

    /// Whether `start` was called and `stop` was not.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Whether a postmaster runs for this data directory (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        if !self.data_dir.join("postmaster.pid").exists() {
            return false;
        }
        self.runner
            .command(&self.binaries.pg_ctl(), &self.dir)
            .args(["status", "-D"])
            .arg(&self.data_dir)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn pg_ctl_stop(&self) -> Result<(), ClusterError> {
        let out = self
            .runner
            .command(&self.binaries.pg_ctl(), &self.dir)
            .args([
                "stop",
                "-m",
                "fast",
                "-w",
                "-s",
                "-t",
                PG_CTL_WAIT_SECS,
                "-D",
            ])
            .arg(&self.data_dir)
            .output()
            .map_err(|e| io_err(&self.binaries.pg_ctl(), e))?;
        check_output("pg_ctl stop", &out, Some(&self.log_path()))
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// `<data>/tierwarden.conf`, included by postgresql.conf: rewritten at
    /// every start so the port can change between runs.
    fn write_settings(&self) -> Result<(), ClusterError> {
        let run = self.dir.join("run");
        fs::create_dir_all(&run).map_err(|e| io_err(&run, e))?;
        self.runner.chown(&run)?;
        let socket = format!("{}/.s.PGSQL.{}", run.display(), self.port);
        // Too long for a unix socket: TCP only (pg_ctl -w needs no socket).
        let sockets = if socket.len() <= MAX_SOCKET_PATH {
            run.display().to_string().replace('\'', "''")
        } else {
            String::new()
        };
        let text = format!(
            "# Written by tierwarden at every start; edits are lost.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{sockets}'\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = 200\n",
            self.port
        );
        let path = self.data_dir.join("tierwarden.conf");
        fs::write(&path, text).map_err(|e| io_err(&path, e))?;
        self.runner.chown(&path)
    }

    /// libpq key/value connection string for the superuser (tokio-postgres
    /// and psql both accept it). The password is alphanumeric.
    pub fn superuser_dsn(&self, db: &str) -> String {
        format!("{} connect_timeout=10", self.superuser_dsn_untimed(db))
    }

    /// The DSN without `connect_timeout`: tokio-postgres would arm that
    /// timer on the caller's runtime, which has no time driver
    /// (`crate::timers`); the caller bounds the connect itself.
    fn superuser_dsn_untimed(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=disable",
            self.port, self.superuser, self.superuser_password, db
        )
    }

    /// Connect as superuser; the connection task is spawned on the current
    /// tokio runtime.
    pub async fn connect_superuser(
        &self,
        db: &str,
    ) -> Result<tokio_postgres::Client, ClusterError> {
        let dsn = self.superuser_dsn_untimed(db);
        let connecting = tokio_postgres::connect(&dsn, tokio_postgres::NoTls);
        let (client, conn) = crate::timers::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| ClusterError::ConnectTimeout(self.port))??;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "throwaway cluster connection closed");
            }
        });
        Ok(client)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.started {
            if let Err(e) = self.stop() {
                tracing::warn!(error = %e, dir = %self.dir.display(), "stopping the throwaway cluster");
            }
        }
    }
}

/// Ok when the program succeeded; otherwise its output plus the log tail.
fn check_output(program: &str, out: &Output, log: Option<&Path>) -> Result<(), ClusterError> {
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        output.push('\n');
        output.push_str(stdout.trim());
    }
    if let Some(tail) = log.and_then(log_tail) {
        output.push_str("\nserver log (last lines):\n");
        output.push_str(&tail);
    }
    Err(ClusterError::Program {
        program: program.to_string(),
        status: out.status.to_string(),
        output,
    })
}

fn log_tail(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    Some(lines[start..].join("\n"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
