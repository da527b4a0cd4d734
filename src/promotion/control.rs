//! The control database: where every proxy replica records its
//! environment's migration outcomes and reads its predecessor's.
//!
//! Owns: the table, one lazily (re)connected client per environment,
//! snapshots, records and the status listing. Must never: hold a session
//! longer than `TIMEOUT`.

use std::time::Duration;

use tokio::sync::Mutex;

use super::{Outcome, Snapshot};
use crate::config::ControlDatabase;

/// Deadline for any control-database operation.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The ledger table (created by the quickstart, or by an operator; see
/// README "Migration promotion gate").
pub const SCHEMA_SQL: &str = "CREATE TABLE IF NOT EXISTS tierwarden_migrations (
    id bigserial PRIMARY KEY,
    env text NOT NULL,
    fingerprint text NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('applied', 'failed')),
    at timestamptz NOT NULL DEFAULT now(),
    identity text NOT NULL,
    summary text NOT NULL,
    statements text[] NOT NULL
);
CREATE INDEX IF NOT EXISTS tierwarden_migrations_env_fp ON tierwarden_migrations (env, fingerprint, id)";

/// Control-database failures.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Connect or query failed.
    #[error("control database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// Deadline passed.
    #[error("control database did not answer within {} s", TIMEOUT.as_secs())]
    Timeout,
}

/// One environment's connection to the control database.
pub struct Control {
    cfg: tokio_postgres::Config,
    client: Mutex<Option<tokio_postgres::Client>>,
}

/// One row of `tierwarden migrations status`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    /// Migration fingerprint.
    pub fingerprint: String,
    /// Environment.
    pub env: String,
    /// Latest outcome there.
    pub outcome: String,
    /// When, as text.
    pub at: String,
    /// First statement (normalized, shortened).
    pub summary: String,
}

impl Control {
    /// A control-database handle (no connection yet).
    pub fn new(db: &ControlDatabase, user: &str, password: Option<&str>) -> Self {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&db.host)
            .port(db.port)
            .dbname(&db.database)
            .user(user)
            .application_name("tierwarden-promotion");
        if let Some(p) = password {
            cfg.password(p);
        }
        Control {
            cfg,
            client: Mutex::new(None),
        }
    }

    async fn with_client<T, F>(&self, f: F) -> Result<T, ControlError>
    where
        F: for<'c> FnOnce(
            &'c tokio_postgres::Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    {
        let run = async {
            let mut guard = self.client.lock().await;
            if guard.as_ref().map(|c| c.is_closed()).unwrap_or(true) {
                let (c, conn) = self.cfg.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                *guard = Some(c);
            }
            let Some(c) = guard.as_ref() else {
                return Err(ControlError::Timeout);
            };
            let r = f(c).await;
            if r.is_err() {
                *guard = None;
            }
            Ok::<_, ControlError>(r?)
        };
        crate::timers::timeout(TIMEOUT, run)
            .await
            .map_err(|_| ControlError::Timeout)?
    }

    /// Latest outcome per migration of `env`.
    pub async fn snapshot(&self, env: &str) -> Result<Snapshot, ControlError> {
        let env = env.to_string();
        let rows = self
            .with_client(move |c| {
                Box::pin(async move {
                    c.query(
                        "SELECT DISTINCT ON (fingerprint) fingerprint, outcome, statements
                           FROM tierwarden_migrations WHERE env = $1
                          ORDER BY fingerprint, id DESC",
                        &[&env],
                    )
                    .await
                })
            })
            .await?;
        Ok(Snapshot::from_latest(rows.iter().map(|r| {
            let outcome = if r.get::<_, String>(1) == "applied" {
                Outcome::Applied
            } else {
                Outcome::Failed
            };
            (r.get::<_, String>(0), outcome, r.get::<_, Vec<String>>(2))
        })))
    }

    /// Record one migration outcome of `env`.
    pub async fn record(
        &self,
        env: &str,
        fingerprint: &str,
        outcome: Outcome,
        identity: &str,
        summary: &str,
        statements: &[String],
    ) -> Result<(), ControlError> {
        let (env, fp, id, sum, st) = (
            env.to_string(),
            fingerprint.to_string(),
            identity.to_string(),
            summary.to_string(),
            statements.to_vec(),
        );
        let o = outcome.as_str().to_string();
        self.with_client(move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO tierwarden_migrations (env, fingerprint, outcome, identity, summary, statements)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&env, &fp, &o, &id, &sum, &st],
                )
                .await
            })
        })
        .await
        .map(|_| ())
    }

    /// Latest outcome of every migration in every environment.
    pub async fn status(&self) -> Result<Vec<StatusRow>, ControlError> {
        let rows = self
            .with_client(|c| {
                Box::pin(async move {
                    c.query(
                        "SELECT DISTINCT ON (fingerprint, env) fingerprint, env, outcome,
                                to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), summary
                           FROM tierwarden_migrations
                          ORDER BY fingerprint, env, id DESC",
                        &[],
                    )
                    .await
                })
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| StatusRow {
                fingerprint: r.get(0),
                env: r.get(1),
                outcome: r.get(2),
                at: r.get(3),
                summary: r.get(4),
            })
            .collect())
    }
}
