//! The promotion gate's control database in the quickstart cluster:
//! `tierwarden_control` with the `tierwarden_migrations` ledger, and one
//! login per environment (`tw_E_control`) that may read every row and add
//! rows — never update or delete them.
//!
//! Owns: provisioning of the control database. Must never: share a
//! control login between environments.

use super::cluster::PgCluster;
use super::files::{load_or_create_password, sql_literal, FileError};
use super::layout::{EnvPlan, Paths};
use super::provision::ProvisionError;
use crate::auth::verifier::{Verifier, DEFAULT_ITERATIONS};
use crate::promotion::control::SCHEMA_SQL;

/// Name of the control database.
pub const CONTROL_DB: &str = "tierwarden_control";

/// The control login of an environment.
pub fn control_user(env: &str) -> String {
    format!("tw_{env}_control")
}

fn err(what: &str) -> impl FnOnce(tokio_postgres::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Sql {
        what: what.to_string(),
        source,
    }
}

/// Create (or update) the control database, its table and the per-environment logins.
pub async fn provision_control(
    cluster: &PgCluster,
    envs: &[EnvPlan],
    paths: &Paths,
) -> Result<(), ControlProvisionError> {
    let admin = cluster.connect_superuser("postgres").await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&CONTROL_DB],
        )
        .await
        .map_err(err("looking up the control database"))?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {CONTROL_DB} ENCODING 'UTF8' TEMPLATE template0"
            ))
            .await
            .map_err(err("CREATE DATABASE tierwarden_control"))?;
    }
    let mut logins = Vec::new();
    for env in envs {
        let user = control_user(env.name);
        let pw = load_or_create_password(&paths.upstream_password(&user))?;
        let verifier = Verifier::generate(&pw, DEFAULT_ITERATIONS).to_string();
        let has = admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
            .await
            .map_err(err("looking up a control login"))?
            .is_some();
        let verb = if has { "ALTER" } else { "CREATE" };
        admin
            .batch_execute(&format!(
                "{verb} ROLE {user} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}",
                sql_literal(&verifier)
            ))
            .await
            .map_err(err("control login"))?;
        logins.push(user);
    }
    let db = cluster.connect_superuser(CONTROL_DB).await?;
    db.batch_execute(SCHEMA_SQL)
        .await
        .map_err(err("control table"))?;
    let mut grants = format!(
        "REVOKE ALL ON DATABASE {CONTROL_DB} FROM PUBLIC;\nREVOKE CREATE ON SCHEMA public FROM PUBLIC;\n"
    );
    for u in &logins {
        grants.push_str(&format!(
            "GRANT CONNECT ON DATABASE {CONTROL_DB} TO {u};\n\
             GRANT USAGE ON SCHEMA public TO {u};\n\
             GRANT SELECT, INSERT ON tierwarden_migrations TO {u};\n\
             GRANT USAGE ON SEQUENCE tierwarden_migrations_id_seq TO {u};\n"
        ));
    }
    db.batch_execute(&grants)
        .await
        .map_err(err("control grants"))?;
    Ok(())
}

/// Control provisioning failures.
#[derive(Debug, thiserror::Error)]
pub enum ControlProvisionError {
    /// SQL or connection.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// Password files.
    #[error(transparent)]
    File(#[from] FileError),
    /// Cluster connection.
    #[error(transparent)]
    Cluster(#[from] super::cluster::ClusterError),
}
