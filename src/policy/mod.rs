//! Policy: statement classification and the pure allow/deny decision.
//!
//! Owns the statement classes of SPEC §4, the classifier built on PostgreSQL's own
//! parser (`pg_query`), the one table of function classes (`functions.rs`), the
//! migration-ledger table list and `decide()`. It may use `pg_query`, `serde`,
//! `serde_json` and `lru`; it must never do IO, read a clock, touch globals or know
//! about sockets, sessions or the wire protocol. Everything here fails closed:
//! whatever cannot be parsed is `Unclassified`, and `Unclassified` is always denied.
//!
//! Layout: `classify.rs` (parse, per-statement dispatch, cache), `walk.rs` (generic
//! walk of the whole parse tree: functions, writable CTEs, locking clauses,
//! `SELECT … INTO`), `settings.rs` (SET/RESET/set_config and read-only escapes), `kinds.rs`
//! (statement-kind and ledger tables),
//! `functions.rs` (function → class table), `decide.rs` (level × tier × class),
//! `corpus.rs`/`corpus_adv.rs` (statement corpus with expected classes, reused by
//! end-to-end tests), `tests.rs` (unit tests).

mod classify;
mod corpus;
mod corpus_adv;
mod decide;
pub mod functions;
mod kinds;
mod settings;
pub mod shape;
mod shape_match;
mod walk;

#[cfg(test)]
mod tests;

pub use classify::{normalize, Classifier};
pub use decide::{decide, Decision, Denial, Subject};
pub use kinds::DEFAULT_LEDGER_TABLES;

/// Every corpus statement with its expected class: normal application SQL,
/// migration-tool SQL and adversarial statements (THREATS.md classes 1–14).
pub const CORPUS: &[(&str, StatementClass)] = corpus::CORPUS;
/// Adversarial part of the corpus; [`corpus_all`] yields `CORPUS` then this.
pub const CORPUS_ADVERSARIAL: &[(&str, StatementClass)] = corpus_adv::CORPUS_ADVERSARIAL;

/// Both corpus parts, in order.
pub fn corpus_all() -> impl Iterator<Item = &'static (&'static str, StatementClass)> {
    CORPUS.iter().chain(CORPUS_ADVERSARIAL.iter())
}

/// Environment tier (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Development,
    Testing,
    Staging,
    Production,
}

impl Tier {
    pub const ALL: [Tier; 4] = [
        Tier::Development,
        Tier::Testing,
        Tier::Staging,
        Tier::Production,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::Development => "development",
            Tier::Testing => "testing",
            Tier::Staging => "staging",
            Tier::Production => "production",
        }
    }
}

/// Access level of a role in an environment (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    None,
    Ro,
    Rw,
    Migrate,
    Controlled,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::None,
        Level::Ro,
        Level::Rw,
        Level::Migrate,
        Level::Controlled,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Ro => "ro",
            Level::Rw => "rw",
            Level::Migrate => "migrate",
            Level::Controlled => "controlled",
        }
    }

    /// Whether a session at this level may ever write, so its upstream session
    /// must not be forced read-only. `controlled` is: with a break-glass token it
    /// writes. `migrate` is: it writes ledger tables and runs ddl.
    pub fn is_write_capable(self, _tier: Tier) -> bool {
        matches!(self, Level::Rw | Level::Migrate | Level::Controlled)
    }
}

/// The class of one statement (SPEC §4). Exactly one per statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementClass {
    Read,
    Write,
    Ddl,
    Maintenance,
    Transaction,
    Session,
    Privileged,
    Unclassified,
}

impl StatementClass {
    pub const ALL: [StatementClass; 8] = [
        StatementClass::Read,
        StatementClass::Write,
        StatementClass::Ddl,
        StatementClass::Maintenance,
        StatementClass::Transaction,
        StatementClass::Session,
        StatementClass::Privileged,
        StatementClass::Unclassified,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            StatementClass::Read => "read",
            StatementClass::Write => "write",
            StatementClass::Ddl => "ddl",
            StatementClass::Maintenance => "maintenance",
            StatementClass::Transaction => "transaction",
            StatementClass::Session => "session",
            StatementClass::Privileged => "privileged",
            StatementClass::Unclassified => "unclassified",
        }
    }

    /// Danger rank used when one statement has several classes (a SELECT calling
    /// `nextval` is read + write): the highest rank wins.
    /// `unclassified > privileged > ddl > write > maintenance > session > transaction > read`.
    pub fn rank(self) -> u8 {
        match self {
            StatementClass::Read => 0,
            StatementClass::Transaction => 1,
            StatementClass::Session => 2,
            StatementClass::Maintenance => 3,
            StatementClass::Write => 4,
            StatementClass::Ddl => 5,
            StatementClass::Privileged => 6,
            StatementClass::Unclassified => 7,
        }
    }
}

/// Which transaction-control statement a `transaction`-class statement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxControl {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackToSavepoint,
    PrepareTransaction,
    /// COMMIT PREPARED / ROLLBACK PREPARED (privileged) and SET TRANSACTION /
    /// SET CONSTRAINTS (transaction class, no state change of the block).
    Other,
}

/// One classified statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub class: StatementClass,
    /// Lower-cased relation names written (or row-locked), schema-qualified if
    /// written so, e.g. `public.schema_migrations`.
    pub tables_written: Vec<String>,
    /// Every written table is a migration-ledger table (false when nothing is written).
    pub ledger_only_write: bool,
    /// The statement would turn a read-only session or transaction writable.
    pub makes_writable: bool,
    pub tx: Option<TxControl>,
    /// `PREPARE p AS body`: class and tables are the body's.
    pub prepare_name: Option<String>,
    /// `EXECUTE p`: the session must take the more dangerous of `class` (which is
    /// `Session` unless the parameters call classed functions) and the class it
    /// remembered at `PREPARE p`; an unknown name must be denied.
    pub execute_name: Option<String>,
    /// `DEALLOCATE p` → `Some(Some(p))`, `DEALLOCATE ALL` → `Some(None)`.
    pub deallocate: Option<Option<String>>,
    /// Short human description, e.g. `DELETE`, `SELECT ... FOR UPDATE`,
    /// `function pg_terminate_backend()`. Never contains literals.
    pub summary: String,
}

impl Statement {
    /// A statement the parser could not read: denied, fail closed.
    pub fn unclassified() -> Statement {
        Statement {
            class: StatementClass::Unclassified,
            tables_written: Vec::new(),
            ledger_only_write: false,
            makes_writable: false,
            tx: None,
            prepare_name: None,
            execute_name: None,
            deallocate: None,
            summary: "unparseable statement".to_string(),
        }
    }

    /// What `EXECUTE p(args)` does, `self` being the body remembered at
    /// `PREPARE p` and `exec` the EXECUTE statement: the body, made more
    /// dangerous by the parameters when they call classed functions
    /// (`EXECUTE p(nextval('s'))` is at least `write`; a read-only escape in a
    /// parameter carries its `makes_writable`). A plain EXECUTE is `session`,
    /// which never raises the body's class.
    pub fn executed_with(&self, exec: &Statement) -> Statement {
        let mut out = self.clone();
        out.prepare_name = None;
        out.makes_writable |= exec.makes_writable;
        let params = match exec.class {
            StatementClass::Session => StatementClass::Read,
            c => c,
        };
        if params.rank() > self.class.rank() {
            out.class = params;
            out.tables_written = exec.tables_written.clone();
            out.ledger_only_write = exec.ledger_only_write;
            out.summary = exec.summary.clone();
        } else if params == StatementClass::Write && self.class == StatementClass::Write {
            out.ledger_only_write &= exec.ledger_only_write;
            out.tables_written
                .extend(exec.tables_written.iter().cloned());
        }
        out
    }
}

/// All statements of one query string, in order. An empty query string gives none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    pub statements: Vec<Statement>,
}

impl std::ops::Deref for Classified {
    type Target = [Statement];
    fn deref(&self) -> &[Statement] {
        &self.statements
    }
}

impl From<Vec<Statement>> for Classified {
    fn from(statements: Vec<Statement>) -> Self {
        Classified { statements }
    }
}

impl Classified {
    /// The most dangerous class among the statements (`None` when empty).
    pub fn max_class(&self) -> Option<StatementClass> {
        self.statements
            .iter()
            .map(|s| s.class)
            .max_by_key(|c| c.rank())
    }
}

/// Config extensions of the built-in tables (`[policy]` in config).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyExtensions {
    /// Functions that make a statement `privileged` (e.g. `myext_exec`).
    #[serde(default)]
    pub extra_privileged_functions: Vec<String>,
    /// Functions that make a statement `write` (e.g. an outbox enqueue function).
    #[serde(default)]
    pub extra_write_functions: Vec<String>,
    /// Functions explicitly marked safe (`read`). They cannot downgrade a built-in
    /// privileged function.
    #[serde(default)]
    pub extra_read_functions: Vec<String>,
    /// Additional migration-ledger tables: `name` (any schema) or `schema.name`.
    #[serde(default)]
    pub extra_ledger_tables: Vec<String>,
    /// Extensions whose `CREATE EXTENSION` (without `CASCADE`) is `ddl`
    /// instead of `privileged`, so migrations may create them (e.g.
    /// `pgcrypto`, `citext`). Every other extension statement stays
    /// privileged.
    #[serde(default)]
    pub ddl_extensions: Vec<String>,
}
