//! Classifier: SQL text → one [`Statement`] per statement (SPEC §4, THREATS.md).
//!
//! Owns parsing with PostgreSQL's own grammar (`pg_query`), the per-statement
//! dispatch on the top-level node, the migration-ledger list and a bounded,
//! thread-safe LRU cache keyed by the exact query text. It may use `walk.rs`,
//! `settings.rs` and `functions.rs`; it must never look at the text itself
//! (prefixes, keywords): only the parse tree decides. Any parse or decode error —
//! including prost's recursion limit on deeply nested SQL (about 40+ nested
//! expression levels) — gives one `Unclassified` statement, never a panic. The C
//! parser guards its own stack depth; the Rust-side walk is bounded by prost's
//! decode limit, so pathological input cannot overflow the stack.

use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use pg_query::protobuf::ObjectType;
use serde_json::Value;

use super::functions::FunctionTable;
use super::kinds::{DDL_STMTS, DEFAULT_LEDGER_TABLES, PRIVILEGED_OBJECTS, PRIVILEGED_STMTS};
use super::settings::{self, modes_make_writable};
use super::walk::{self, literal, range_var_name, Acc, Literal};
use super::{Classified, PolicyExtensions, Statement, StatementClass, TxControl};

use StatementClass::{Ddl, Maintenance, Privileged, Read, Session, Transaction, Write};

const CACHE_SHARDS: usize = 8;
const CACHE_ENTRIES_PER_SHARD: usize = 512;
/// Texts longer than this are classified but not cached (bounds cache memory to
/// about 4096 × 8 KiB).
const CACHE_MAX_TEXT: usize = 8 * 1024;

/// Whether `sql` holds a `$n` parameter reference (found with memchr; a
/// `$` elsewhere, in a dollar quote say, only makes this guess `true`,
/// which costs a lookup order, never a different result).
fn has_parameters(sql: &str) -> bool {
    let b = sql.as_bytes();
    memchr::memchr_iter(b'$', b).any(|i| b.get(i + 1).is_some_and(u8::is_ascii_digit))
}

/// Whether `sql` may be cached by shape, and its lexed shape key when it
/// may and the cheap lexer can compute one.
fn lexed_shape(sql: &str) -> (bool, Option<String>) {
    let eligible = super::shape::eligible(sql);
    (
        eligible,
        eligible.then(|| super::shape::lexed_key(sql)).flatten(),
    )
}

/// A cache shard, even if a panic elsewhere poisoned its lock.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-statement facts besides class and tables.
#[derive(Default)]
struct Meta {
    tx: Option<TxControl>,
    prepare_name: Option<String>,
    execute_name: Option<String>,
    deallocate: Option<Option<String>>,
}

/// Classifies SQL text; holds the function table, the ledger list and the cache.
pub struct Classifier {
    funcs: FunctionTable,
    /// Ledger names: unqualified (`schema_migrations`, any schema) or qualified.
    ledger: Vec<String>,
    /// Extensions a migration may create (names as PostgreSQL stores them).
    ddl_extensions: Vec<String>,
    cache: Vec<Mutex<LruCache<String, Arc<Classified>>>>,
    /// Results shared by texts that differ only in literals (see `shape`).
    shapes: Vec<Mutex<LruCache<String, Arc<Classified>>>>,
    /// Picks a key's shard (the caches' own fast, seeded hasher).
    shard_hasher: lru::DefaultHasher,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    pub fn new(extra: &PolicyExtensions) -> Classifier {
        let mut ledger: Vec<String> = DEFAULT_LEDGER_TABLES
            .iter()
            .map(|s| s.to_string())
            .collect();
        ledger.extend(
            extra
                .extra_ledger_tables
                .iter()
                .map(|s| s.trim().to_lowercase()),
        );
        let per_shard = NonZeroUsize::new(CACHE_ENTRIES_PER_SHARD).unwrap_or(NonZeroUsize::MIN);
        Classifier {
            funcs: FunctionTable::new(extra),
            ledger,
            ddl_extensions: extra
                .ddl_extensions
                .iter()
                .map(|e| e.trim().to_string())
                .collect(),
            cache: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            shapes: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            shard_hasher: lru::DefaultHasher::default(),
        }
    }

    /// The cache shard of a key.
    fn shard_of(&self, key: &str) -> usize {
        (self.shard_hasher.hash_one(key) as usize) % CACHE_SHARDS
    }

    /// Classify every statement of `sql` (cached by exact text, or by
    /// shape when the result cannot depend on a literal).
    pub fn classify(&self, sql: &str) -> Arc<Classified> {
        let mut key = String::new();
        if Self::literal_shape(sql, &mut key) {
            return self.classify_shape(sql, &key).0;
        }
        self.classify_verbatim(sql)
    }

    /// Whether `sql` is best answered by its shape alone, its lexed shape
    /// key written into `key` (a reused buffer): a text with inline
    /// literals (no `$n` parameters: the simple protocol, client-side
    /// interpolation) whose cheap key replaced at least one constant.
    /// Such a text never repeats verbatim, so the exact cache would only
    /// churn. Then classify it with [`Classifier::classify_shape`], any
    /// other text with [`Classifier::classify_verbatim`].
    pub fn literal_shape(sql: &str, key: &mut String) -> bool {
        sql.len() <= CACHE_MAX_TEXT
            && !has_parameters(sql)
            && super::shape::eligible(sql)
            && super::shape::lexed_key_into(sql, key)
            && super::shape::varies(key, sql)
    }

    /// Whether `sql` is answered by shape with key `key` (a key
    /// [`Classifier::literal_shape`] wrote for another text): what
    /// `literal_shape` would say and write for `sql`, checked along `key`
    /// without building a key (see `shape_match`).
    pub fn fits_shape(sql: &str, key: &str) -> bool {
        sql.len() <= CACHE_MAX_TEXT && super::shape_match::fits(sql, key)
    }

    /// Classify a text [`Classifier::literal_shape`] accepted, `key` being
    /// the key it wrote; also says whether the result is held by shape
    /// (then every text with this key gets this same result, and a session
    /// may remember it under the key). A result that may depend on a
    /// literal is kept by exact text instead, as for any other text.
    pub fn classify_shape(&self, sql: &str, key: &str) -> (Arc<Classified>, bool) {
        let shapes = &self.shapes[self.shard_of(key)];
        if let Some(hit) = lock(shapes).get(key) {
            return (Arc::clone(hit), true);
        }
        let exact = &self.cache[self.shard_of(sql)];
        if let Some(hit) = lock(exact).get(sql) {
            return (Arc::clone(hit), false);
        }
        let fresh = Arc::new(self.classify_uncached(sql));
        if super::shape::storable(&fresh) {
            lock(shapes).put(key.to_string(), Arc::clone(&fresh));
            return (fresh, true);
        }
        lock(exact).put(sql.to_string(), Arc::clone(&fresh));
        (fresh, false)
    }

    /// Classify a text [`Classifier::literal_shape`] declined: by exact
    /// text first (parameterized texts of the extended protocol repeat
    /// verbatim), then by shape.
    pub fn classify_verbatim(&self, sql: &str) -> Arc<Classified> {
        if sql.len() > CACHE_MAX_TEXT {
            return Arc::new(self.classify_uncached(sql));
        }
        let shard = &self.cache[self.shard_of(sql)];
        if let Some(hit) = lock(shard).get(sql) {
            return Arc::clone(hit);
        }
        let (eligible, lexed) = lexed_shape(sql);
        let (fresh, shaped) = self.classify_by_shape(sql, eligible, lexed);
        // Texts the shape cache answers (a `$n` text that also has
        // literals, say) would only churn the exact cache.
        if !shaped {
            lock(shard).put(sql.to_string(), Arc::clone(&fresh));
        }
        fresh
    }

    /// Classify through the shape cache (texts differing only in
    /// literals); also says whether that cache holds the result under a
    /// cheap key that this text's literals vary under (then the exact
    /// cache need not hold it too: it would only churn).
    fn classify_by_shape(
        &self,
        sql: &str,
        eligible: bool,
        lexed: Option<String>,
    ) -> (Arc<Classified>, bool) {
        let key = if eligible {
            super::shape::key(sql, lexed)
        } else {
            None
        };
        let Some((key, varies)) = key else {
            return (Arc::new(self.classify_uncached(sql)), false);
        };
        let shard = &self.shapes[self.shard_of(&key)];
        if let Some(hit) = lock(shard).get(&key) {
            return (Arc::clone(hit), varies);
        }
        let fresh = Arc::new(self.classify_uncached(sql));
        let storable = super::shape::storable(&fresh);
        if storable {
            lock(shard).put(key, Arc::clone(&fresh));
        }
        (fresh, storable && varies)
    }

    pub fn classify_uncached(&self, sql: &str) -> Classified {
        let unclassified = || Classified {
            statements: vec![Statement::unclassified()],
        };
        let Ok(parsed) = pg_query::parse(sql, 0) else {
            return unclassified();
        };
        let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
        for raw in &parsed.protobuf.stmts {
            let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
                return unclassified();
            };
            let Ok(image) = serde_json::to_value(node) else {
                return unclassified();
            };
            statements.push(self.statement(&image));
        }
        Classified { statements }
    }

    /// A startup-packet setting (`-c name=value` or an extra startup parameter),
    /// classified exactly like `SET "name" = 'value'`.
    pub fn classify_setting(&self, name: &str, value: &str) -> Statement {
        let sql = format!(
            "SET \"{}\" = '{}'",
            name.replace('"', "\"\""),
            value.replace('\'', "''")
        );
        let mut classified = self.classify_uncached(&sql);
        match classified.statements.len() {
            1 => classified.statements.remove(0),
            _ => Statement::unclassified(),
        }
    }

    fn is_ledger(&self, table: &str) -> bool {
        let unqualified = table.rsplit('.').next().unwrap_or(table);
        self.ledger.iter().any(|l| {
            if l.contains('.') {
                table == l || table.ends_with(&format!(".{l}"))
            } else {
                unqualified == l
            }
        })
    }

    /// Classify one top-level statement image (`{"SelectStmt": {…}}`).
    fn statement(&self, image: &Value) -> Statement {
        let mut acc = Acc::new(&self.funcs);
        let meta = self.dispatch(image, &mut acc);
        let ledger_only_write = acc.class == Write
            && !acc.tables.is_empty()
            && acc.tables.iter().all(|t| self.is_ledger(t));
        Statement {
            class: acc.class,
            tables_written: acc.tables,
            ledger_only_write,
            makes_writable: acc.makes_writable,
            tx: meta.tx,
            prepare_name: meta.prepare_name,
            execute_name: meta.execute_name,
            deallocate: meta.deallocate,
            summary: acc.summary,
        }
    }

    /// Note the base class of the node and walk what it executes.
    fn dispatch(&self, image: &Value, acc: &mut Acc<'_>) -> Meta {
        let mut meta = Meta::default();
        let Some((kind, body)) = image.as_object().and_then(|m| m.iter().next()) else {
            acc.note(Privileged, "statement of unknown shape");
            return meta;
        };
        let kind = kind.as_str();
        let str_of = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let int_of = |key: &str| body.get(key).and_then(Value::as_i64).unwrap_or(0);
        let flag = |key: &str| body.get(key).and_then(Value::as_bool).unwrap_or(false);
        match kind {
            "SelectStmt" => {
                let values = body
                    .get("values_lists")
                    .and_then(Value::as_array)
                    .is_some_and(|v| !v.is_empty());
                acc.note(Read, if values { "VALUES" } else { "SELECT" });
                walk::walk(body, acc);
            }
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                acc.note(Write, kind.trim_end_matches("Stmt").to_ascii_uppercase());
                if let Some(name) = body.get("relation").and_then(range_var_name) {
                    acc.add_table(name);
                }
                walk::walk(body, acc);
            }
            "ExplainStmt" => {
                acc.note(Read, "EXPLAIN");
                if explain_analyzes(body) {
                    acc.summary = "EXPLAIN ANALYZE".to_string();
                    if let Some(inner) = body.pointer("/query/node") {
                        meta = self.dispatch(inner, acc);
                        meta.tx = None;
                        if acc.class != Read {
                            acc.summary = format!("EXPLAIN ANALYZE {}", acc.summary);
                        }
                    }
                }
            }
            "CopyStmt" => {
                if flag("is_program") {
                    acc.note(Privileged, "COPY ... PROGRAM");
                } else if !str_of("filename").is_empty() {
                    acc.note(Privileged, "COPY to or from a server file");
                } else if flag("is_from") {
                    acc.note(Write, "COPY ... FROM STDIN");
                    if let Some(name) = body.get("relation").and_then(range_var_name) {
                        acc.add_table(name);
                    }
                } else {
                    acc.note(Read, "COPY ... TO STDOUT");
                }
                walk::walk(body, acc);
            }
            "CreateTableAsStmt" => {
                let what = if flag("is_select_into") {
                    "SELECT ... INTO"
                } else if int_of("objtype") == ObjectType::ObjectMatview as i64 {
                    "CREATE MATERIALIZED VIEW"
                } else {
                    "CREATE TABLE AS"
                };
                acc.note(Ddl, what);
                walk::walk(body, acc);
            }
            "VacuumStmt" => {
                acc.note(
                    Maintenance,
                    if flag("is_vacuumcmd") {
                        "VACUUM"
                    } else {
                        "ANALYZE"
                    },
                );
            }
            "ClusterStmt" => acc.note(Maintenance, "CLUSTER"),
            "ReindexStmt" => acc.note(Maintenance, "REINDEX"),
            "TransactionStmt" => meta.tx = Some(transaction(body, acc)),
            "VariableSetStmt" => {
                let outcome = settings::variable_set(body);
                acc.makes_writable |= outcome.makes_writable;
                if outcome.class == Transaction {
                    meta.tx = Some(TxControl::Other);
                }
                acc.note(outcome.class, outcome.summary);
            }
            "VariableShowStmt" => acc.note(Read, "SHOW"),
            "ConstraintsSetStmt" => {
                meta.tx = Some(TxControl::Other);
                acc.note(Transaction, "SET CONSTRAINTS");
            }
            "DiscardStmt" => {
                let target = int_of("target");
                acc.makes_writable |= target == 1;
                let what = match target {
                    1 => "DISCARD ALL",
                    2 => "DISCARD PLANS",
                    3 => "DISCARD SEQUENCES",
                    _ => "DISCARD TEMP",
                };
                acc.note(Session, what);
            }
            "DeallocateStmt" => {
                meta.deallocate = Some(if flag("isall") {
                    None
                } else {
                    Some(str_of("name"))
                });
                acc.note(Session, "DEALLOCATE");
            }
            "ListenStmt" => acc.note(Session, "LISTEN"),
            "UnlistenStmt" => acc.note(Session, "UNLISTEN"),
            "NotifyStmt" => acc.note(Write, "NOTIFY"),
            "LockStmt" | "TruncateStmt" => {
                acc.note(
                    Write,
                    if kind == "LockStmt" {
                        "LOCK"
                    } else {
                        "TRUNCATE"
                    },
                );
                let mut names = Vec::new();
                if let Some(rels) = body.get("relations") {
                    walk::collect_range_vars(rels, &mut names);
                }
                names.into_iter().for_each(|n| acc.add_table(n));
            }
            "CallStmt" => {
                acc.note(Write, "CALL");
                walk::walk(body, acc);
            }
            "DeclareCursorStmt" => {
                acc.note(Read, "DECLARE CURSOR");
                walk::walk(body, acc);
            }
            "FetchStmt" => acc.note(Read, if flag("ismove") { "MOVE" } else { "FETCH" }),
            "ClosePortalStmt" => acc.note(Read, "CLOSE"),
            "PrepareStmt" => {
                match body.pointer("/query/node") {
                    Some(inner) => {
                        meta = self.dispatch(inner, acc);
                        walk::walk(body.get("argtypes").unwrap_or(&Value::Null), acc);
                    }
                    None => acc.note(Privileged, "PREPARE without a body"),
                }
                meta.prepare_name = Some(str_of("name"));
            }
            "ExecuteStmt" => {
                acc.note(Session, "EXECUTE");
                meta.execute_name = Some(str_of("name"));
                walk::walk(body, acc);
            }
            "GrantStmt" => {
                let verb = if flag("is_grant") { "GRANT" } else { "REVOKE" };
                if int_of("objtype") == ObjectType::ObjectParameterAcl as i64 {
                    acc.note(Privileged, format!("{verb} ON PARAMETER"));
                } else {
                    acc.note(Ddl, verb);
                }
            }
            "CreateExtensionStmt" => {
                let name = str_of("extname");
                // CASCADE would create other extensions too.
                let cascade = body
                    .get("options")
                    .and_then(Value::as_array)
                    .is_some_and(|o| {
                        o.iter().any(|d| {
                            let d = d.get("node").unwrap_or(d);
                            d.pointer("/DefElem/defname").and_then(Value::as_str) == Some("cascade")
                        })
                    });
                if !cascade && self.ddl_extensions.contains(&name) {
                    acc.note(
                        Ddl,
                        format!("CREATE EXTENSION {name} (allowed by ddl_extensions)"),
                    );
                } else {
                    acc.note(Privileged, "CREATE EXTENSION");
                }
            }
            "DropStmt" => object_stmt(acc, ("DROP ", ""), int_of("remove_type")),
            "RenameStmt" => object_stmt(acc, ("ALTER ", " ... RENAME"), int_of("rename_type")),
            "AlterOwnerStmt" => {
                object_stmt(acc, ("ALTER ", " ... OWNER TO"), int_of("object_type"))
            }
            "AlterObjectSchemaStmt" => {
                object_stmt(acc, ("ALTER ", " ... SET SCHEMA"), int_of("object_type"))
            }
            _ => {
                if let Some((_, what)) = PRIVILEGED_STMTS.iter().find(|(k, _)| *k == kind) {
                    acc.note(Privileged, *what);
                } else if let Some((_, what)) = DDL_STMTS.iter().find(|(k, _)| *k == kind) {
                    acc.note(Ddl, *what);
                    walk::walk(body, acc);
                } else {
                    // A node this classifier does not know: fail closed.
                    acc.note(Privileged, format!("unsupported statement {kind}"));
                }
            }
        }
        meta
    }
}

/// `DROP`/`ALTER … RENAME`/`… OWNER TO`/`… SET SCHEMA` of an object type.
fn object_stmt(acc: &mut Acc<'_>, verb: (&str, &str), object_type: i64) {
    let ty = ObjectType::try_from(object_type as i32).unwrap_or(ObjectType::Undefined);
    let name = ty
        .as_str_name()
        .trim_start_matches("OBJECT_")
        .replace('_', " ");
    let summary = format!("{}{name}{}", verb.0, verb.1);
    if PRIVILEGED_OBJECTS.contains(&ty) || ty == ObjectType::Undefined {
        acc.note(Privileged, summary);
    } else {
        acc.note(Ddl, summary);
    }
}

/// Whether EXPLAIN options include ANALYZE not clearly switched off (it then runs
/// the statement).
fn explain_analyzes(body: &Value) -> bool {
    let Some(options) = body.get("options").and_then(Value::as_array) else {
        return false;
    };
    options.iter().any(|o| {
        let Some(def) = o.pointer("/node/DefElem") else {
            return false;
        };
        if def.get("defname").and_then(Value::as_str) != Some("analyze") {
            return false;
        }
        match def.get("arg").and_then(literal) {
            None => true,
            Some(Literal::Bool(b)) => b,
            Some(Literal::Int(i)) => i != 0,
            Some(Literal::Str(s)) => !matches!(
                s.to_ascii_lowercase().as_str(),
                "f" | "fa" | "fal" | "fals" | "false" | "n" | "no" | "of" | "off" | "0"
            ),
            Some(_) => true,
        }
    })
}

/// BEGIN/START/COMMIT/ROLLBACK/SAVEPOINT/RELEASE/PREPARE TRANSACTION/….
fn transaction(body: &Value, acc: &mut Acc<'_>) -> TxControl {
    let kind = body.get("kind").and_then(Value::as_i64).unwrap_or(0);
    let (tx, what) = match kind {
        1 | 2 => (TxControl::Begin, "BEGIN"),
        3 => (TxControl::Commit, "COMMIT"),
        4 => (TxControl::Rollback, "ROLLBACK"),
        5 => (TxControl::Savepoint, "SAVEPOINT"),
        6 => (TxControl::Release, "RELEASE"),
        7 => (TxControl::RollbackToSavepoint, "ROLLBACK TO SAVEPOINT"),
        8 => {
            acc.note(Privileged, "PREPARE TRANSACTION");
            return TxControl::PrepareTransaction;
        }
        9 | 10 => {
            let what = if kind == 9 {
                "COMMIT PREPARED"
            } else {
                "ROLLBACK PREPARED"
            };
            acc.note(Privileged, what);
            return TxControl::Other;
        }
        _ => {
            acc.note(Privileged, "unknown transaction statement");
            return TxControl::Other;
        }
    };
    if tx == TxControl::Begin && modes_make_writable(body.get("options").unwrap_or(&Value::Null)) {
        acc.makes_writable = true;
        acc.note(Transaction, "BEGIN READ WRITE");
    } else {
        acc.note(Transaction, what);
    }
    tx
}

/// Normalized text for slow-query logs and redacted audit: literals replaced by
/// `$n`, comments removed (they may carry secrets). Unparseable text gives a
/// placeholder, never the raw text. Costs a parse, a normalize and a scan.
pub fn normalize(sql: &str) -> String {
    const PLACEHOLDER: &str = "<unparseable statement>";
    if pg_query::parse(sql, 0).is_err() {
        return PLACEHOLDER.to_string();
    }
    pg_query::normalize(sql)
        .ok()
        .and_then(|n| strip_comments(&n))
        .unwrap_or_else(|| PLACEHOLDER.to_string())
}

/// `sql` with every comment replaced by one space; `None` if the scanner fails.
fn strip_comments(sql: &str) -> Option<String> {
    use pg_query::protobuf::Token;
    let scanned = pg_query::scan(sql).ok()?;
    let mut out = String::with_capacity(sql.len());
    let mut pos = 0usize;
    for token in &scanned.tokens {
        if token.token != Token::SqlComment as i32 && token.token != Token::CComment as i32 {
            continue;
        }
        let (start, end) = (
            usize::try_from(token.start).ok()?,
            usize::try_from(token.end).ok()?,
        );
        out.push_str(sql.get(pos..start)?);
        out.push(' ');
        pos = end;
    }
    out.push_str(sql.get(pos..)?);
    Some(out.trim().to_string())
}
