//! The optional live identity check (SPEC §2): the upstream database's
//! comment must carry `tierwarden:env=<name>` for the environment that
//! points at it.
//!
//! Owns: reading and judging the marker. Must never: change the database.

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

/// Connect with the environment's first login and check the marker.
pub async fn check_marker(env: &EnvRuntime) -> Result<(), String> {
    let login = ["monitor", "ro", "rw", "migrate"]
        .iter()
        .find_map(|k| env.logins.get(*k))
        .ok_or_else(|| {
            format!(
                "environment {}: no upstream login to check the marker",
                env.name
            )
        })?;
    let u = &env.cfg.upstream;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&u.host)
        .port(u.port)
        .dbname(&u.database)
        .user(&login.user)
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(p) = &login.password {
        cfg.password(p);
    }
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| {
        format!(
            "environment {}: cannot read the identity marker: {e}",
            env.name
        )
    })?;
    let task = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| format!("environment {}: cannot read the identity marker: {e}", env.name));
    task.abort();
    let comment: Option<String> = row?.get(0);
    judge(&env.name, comment.as_deref())
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
