//! Databases, upstream users and grants of the quickstart cluster, and the
//! sample schema.
//!
//! Owns: the SQL that gives every upstream user exactly the privileges its
//! level needs (idempotent: it runs at every start). Per environment E:
//! `tw_E_owner` owns `app_E`, its `public` schema and every object (the only
//! ddl-capable user); `tw_E_rw` gets DML on tables and use of sequences,
//! `tw_E_ro` gets SELECT, both through default privileges of the owner so
//! whatever is created later is covered; nobody but the three can connect to
//! `app_E` (CONNECT revoked from PUBLIC). `tw_E_monitor` (the lock
//! monitor's login) can CONNECT and is a member of the predefined
//! `pg_monitor` (to see other sessions' wait events) but has no schema or
//! table privilege. May use: tokio-postgres as the cluster superuser,
//! `auth::verifier` (passwords are sent as SCRAM verifiers, never in clear).
//! Must never: grant superuser, CREATEDB, CREATEROLE or membership in
//! another role (except `pg_monitor` to the monitor user), or share a user
//! between environments.

use tokio_postgres::Client;

use super::cluster::{ClusterError, PgCluster};
use super::files::sql_literal;
use super::layout::{upstream_user, EnvPlan, UpstreamKind};
use crate::auth::verifier::{Verifier, DEFAULT_ITERATIONS};

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Connecting as superuser failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A statement failed.
    #[error("provisioning {what}: {source}")]
    Sql {
        /// What was being done.
        what: String,
        /// The cause.
        source: tokio_postgres::Error,
    },
}

fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ProvisionError {
    let what = what.into();
    move |source| ProvisionError::Sql { what, source }
}

/// Upstream passwords of one environment, by kind.
pub struct EnvPasswords<'a> {
    /// Owner password.
    pub owner: &'a str,
    /// DML user password.
    pub rw: &'a str,
    /// Read-only user password.
    pub ro: &'a str,
    /// Lock-monitor user password.
    pub monitor: &'a str,
}

impl EnvPasswords<'_> {
    fn get(&self, kind: UpstreamKind) -> &str {
        match kind {
            UpstreamKind::Owner => self.owner,
            UpstreamKind::Rw => self.rw,
            UpstreamKind::Ro => self.ro,
            UpstreamKind::Monitor => self.monitor,
        }
    }
}

/// Make the cluster match the plan for every environment: users (password
/// reset to the stored one), database with its identity marker, grants,
/// default privileges; the sample schema only when the database is new.
pub async fn provision(
    cluster: &PgCluster,
    envs: &[(EnvPlan, EnvPasswords<'_>)],
) -> Result<(), ProvisionError> {
    let admin = cluster.connect_superuser("postgres").await?;
    // Nobody but the superuser connects to the maintenance database.
    admin
        .batch_execute("REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC")
        .await
        .map_err(sql("maintenance database"))?;
    for (env, passwords) in envs {
        for kind in UpstreamKind::ALL {
            ensure_user(&admin, &upstream_user(env.name, kind), passwords.get(kind)).await?;
        }
        let created = ensure_database(&admin, env).await?;
        let db = cluster.connect_superuser(&env.database).await?;
        grant_in_database(&db, env).await?;
        if created {
            sample_schema(&db, env).await?;
        }
    }
    Ok(())
}

async fn ensure_user(admin: &Client, user: &str, password: &str) -> Result<(), ProvisionError> {
    let verifier = Verifier::generate(password, DEFAULT_ITERATIONS).to_string();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .map_err(sql(format!("looking up role {user}")))?
        .is_some();
    let verb = if exists { "ALTER" } else { "CREATE" };
    let stmt = format!(
        "{verb} ROLE {user} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
         NOBYPASSRLS INHERIT PASSWORD {}",
        sql_literal(&verifier)
    );
    admin
        .batch_execute(&stmt)
        .await
        .map_err(sql(format!("{verb} ROLE {user}")))
}

/// Creates the database when missing; returns whether it was created.
async fn ensure_database(admin: &Client, env: &EnvPlan) -> Result<bool, ProvisionError> {
    let db = &env.database;
    let owner = upstream_user(env.name, UpstreamKind::Owner);
    let rw = upstream_user(env.name, UpstreamKind::Rw);
    let ro = upstream_user(env.name, UpstreamKind::Ro);
    let monitor = upstream_user(env.name, UpstreamKind::Monitor);
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[db])
        .await
        .map_err(sql(format!("looking up database {db}")))?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {db} OWNER {owner} ENCODING 'UTF8' TEMPLATE template0"
            ))
            .await
            .map_err(sql(format!("CREATE DATABASE {db}")))?;
    }
    let marker = sql_literal(&format!("tierwarden:env={}", env.name));
    let stmts = format!(
        "ALTER DATABASE {db} OWNER TO {owner};\n\
         COMMENT ON DATABASE {db} IS {marker};\n\
         REVOKE ALL ON DATABASE {db} FROM PUBLIC;\n\
         GRANT CONNECT ON DATABASE {db} TO {rw}, {ro}, {monitor};\n\
         GRANT pg_monitor TO {monitor};"
    );
    admin
        .batch_execute(&stmts)
        .await
        .map_err(sql(format!("database {db} ownership, CONNECT, pg_monitor")))?;
    Ok(!exists)
}

/// The grants inside one environment's database (run as superuser).
pub fn grant_statements(env: &EnvPlan) -> String {
    let owner = upstream_user(env.name, UpstreamKind::Owner);
    let rw = upstream_user(env.name, UpstreamKind::Rw);
    let ro = upstream_user(env.name, UpstreamKind::Ro);
    format!(
        "ALTER SCHEMA public OWNER TO {owner};\n\
         REVOKE ALL ON SCHEMA public FROM PUBLIC;\n\
         GRANT USAGE ON SCHEMA public TO {rw}, {ro};\n\
         GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {rw};\n\
         GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {rw};\n\
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ro};\n\
         GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {ro};\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT USAGE ON SCHEMAS TO {rw}, {ro};\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} \
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {rw};\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {rw};\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON TABLES TO {ro};\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON SEQUENCES TO {ro};\n"
    )
}

async fn grant_in_database(db: &Client, env: &EnvPlan) -> Result<(), ProvisionError> {
    db.batch_execute(&grant_statements(env))
        .await
        .map_err(sql(format!("grants in {}", env.database)))
}

/// The sample schema, created as the owner so the owner owns it.
pub fn sample_schema_sql(env: &EnvPlan) -> String {
    let owner = upstream_user(env.name, UpstreamKind::Owner);
    let env_name = sql_literal(env.name);
    format!(
        "BEGIN;\n\
         SET LOCAL ROLE {owner};\n\
         CREATE TABLE accounts (\n\
             id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n\
             email text NOT NULL UNIQUE,\n\
             name text NOT NULL,\n\
             created_at timestamptz NOT NULL DEFAULT now()\n\
         );\n\
         CREATE TABLE orders (\n\
             id bigserial PRIMARY KEY,\n\
             account_id bigint NOT NULL REFERENCES accounts (id),\n\
             amount_cents integer NOT NULL CHECK (amount_cents >= 0),\n\
             status text NOT NULL DEFAULT 'new',\n\
             created_at timestamptz NOT NULL DEFAULT now()\n\
         );\n\
         CREATE INDEX orders_account_id_idx ON orders (account_id);\n\
         INSERT INTO accounts (email, name) VALUES\n\
             ('ada@example.com', 'Ada Lovelace (' || {env_name} || ')'),\n\
             ('grace@example.com', 'Grace Hopper (' || {env_name} || ')'),\n\
             ('edsger@example.com', 'Edsger Dijkstra (' || {env_name} || ')');\n\
         INSERT INTO orders (account_id, amount_cents, status) VALUES\n\
             (1, 1250, 'paid'), (1, 399, 'new'), (2, 9900, 'paid'), (3, 4200, 'shipped');\n\
         COMMIT;\n"
    )
}

async fn sample_schema(db: &Client, env: &EnvPlan) -> Result<(), ProvisionError> {
    db.batch_execute(&sample_schema_sql(env))
        .await
        .map_err(sql(format!("sample schema in {}", env.database)))
}

#[cfg(test)]
#[path = "provision_tests.rs"]
mod tests;
