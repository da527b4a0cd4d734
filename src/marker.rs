//! The optional live identity check (SPEC §2): the upstream database's
//! comment must carry `tierwarden:env=<name>` for the environment that
//! points at it.
//!
//! Owns: reading and judging the marker. Must never: change the database.

use crate::auth::tls::UpstreamTlsMode;
use crate::shared::EnvRuntime;

/// Judge a database comment for environment `env`.
pub fn judge(env: &str, comment: Option<&str>) -> Result<(), String> {
    let c = comment.unwrap_or("");
    let found: Vec<&str> = c
        .split(|ch: char| ch.is_whitespace() || ch == ',' || ch == ';')
        .filter_map(|w| w.strip_prefix("tierwarden:env="))
        .collect();
    match found.as_slice() {
        [one] if *one == env => Ok(()),
        [] => Err(format!(
            "environment {env}: the upstream database carries no identity marker (fix: COMMENT ON DATABASE ... IS 'tierwarden:env={env}', or set verify_marker = false)"
        )),
        other => Err(format!(
            "environment {env} points at a database marked tierwarden:env={} — refusing to cross environments",
            other.join(",")
        )),
    }
}

/// Why the marker check did not pass.
#[derive(Debug)]
pub enum MarkerError {
    /// The upstream carries another environment's marker, or none: refuse to start.
    Mismatch(String),
    /// The upstream cannot be reached or read now.
    Unreachable(String),
}

impl std::fmt::Display for MarkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MarkerError::Mismatch(m) | MarkerError::Unreachable(m) => f.write_str(m),
        }
    }
}

/// Connect with the environment's first login (honouring its upstream
/// `sslmode`) and check the marker, within 10 seconds.
pub async fn check_marker(env: &EnvRuntime) -> Result<(), MarkerError> {
    match crate::timers::timeout(std::time::Duration::from_secs(10), read_marker(env)).await {
        Ok(r) => r,
        Err(_) => Err(MarkerError::Unreachable(format!(
            "environment {}: cannot read the identity marker: no answer within 10 s",
            env.name
        ))),
    }
}

async fn read_marker(env: &EnvRuntime) -> Result<(), MarkerError> {
    let unreachable = |e: String| {
        MarkerError::Unreachable(format!(
            "environment {}: cannot read the identity marker: {e}",
            env.name
        ))
    };
    let login = ["monitor", "ro", "rw", "migrate"]
        .iter()
        .find_map(|k| env.logins.get(*k))
        .ok_or_else(|| unreachable("no upstream login".into()))?;
    let u = &env.cfg.upstream;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&u.host)
        .port(u.port)
        .dbname(&u.database)
        .user(&login.user);
    if let Some(p) = &login.password {
        cfg.password(p);
    }
    let client = match &env.upstream_tls {
        Some(tls) => {
            cfg.ssl_mode(match u.sslmode {
                UpstreamTlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
            let mk = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
            let (c, conn) = cfg
                .connect(mk)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            c
        }
        None => {
            let (c, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            c
        }
    };
    let row = client
        .query_one(
            "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let comment: Option<String> = row.get(0);
    judge(&env.name, comment.as_deref()).map_err(MarkerError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::judge;

    #[test]
    fn markers() {
        assert!(judge("prod", Some("tierwarden:env=prod")).is_ok());
        assert!(judge("prod", Some("app db; tierwarden:env=prod")).is_ok());
        let e = judge("stage", Some("tierwarden:env=prod")).unwrap_err();
        assert!(e.contains("stage") && e.contains("prod"));
        assert!(judge("prod", None).is_err());
    }
}
