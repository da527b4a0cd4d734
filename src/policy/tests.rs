//! Unit tests for the classifier and `decide()`: the corpus, flags, the level ×
//! tier × class table, the production hard rule, pathological input and caching.

use std::sync::Arc;

use super::*;

use StatementClass::{
    Ddl, Maintenance, Privileged, Read, Session, Transaction, Unclassified, Write,
};

fn classifier() -> Classifier {
    Classifier::new(&PolicyExtensions::default())
}

fn one(c: &Classifier, sql: &str) -> Statement {
    let classified = c.classify(sql);
    assert_eq!(classified.statements.len(), 1, "{sql}: {classified:?}");
    classified.statements[0].clone()
}

#[test]
fn corpus_is_large_enough() {
    assert!(
        corpus_all().count() >= 250,
        "corpus has {}",
        corpus_all().count()
    );
}

#[test]
fn corpus_classes_match() {
    let c = classifier();
    let mut failures = Vec::new();
    for (sql, expected) in corpus_all() {
        let got = c.classify(sql).max_class();
        if got != Some(*expected) {
            failures.push(format!("{sql:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn empty_and_multi_statement_texts() {
    let c = classifier();
    assert!(c.classify("").statements.is_empty());
    assert!(c.classify("   ").statements.is_empty());
    assert!(c.classify("-- only a comment").statements.is_empty());
    let multi = c.classify("SELECT 1; DELETE FROM t; BEGIN");
    let classes: Vec<_> = multi.statements.iter().map(|s| s.class).collect();
    assert_eq!(classes, vec![Read, Write, Transaction]);
    // A parse error anywhere makes the whole text one unclassified statement.
    let bad = c.classify("SELECT 1; DELETE FROM");
    assert_eq!(bad.statements.len(), 1);
    assert_eq!(bad.statements[0].class, Unclassified);
}

#[test]
fn read_only_escapes_set_makes_writable() {
    let c = classifier();
    let writable = [
        "BEGIN READ WRITE",
        "START TRANSACTION READ WRITE",
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
        "SET TRANSACTION READ WRITE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET default_transaction_read_only = off",
        "SET default_transaction_read_only TO false",
        "set DEFAULT_TRANSACTION_READ_ONLY=0",
        "SET LOCAL transaction_read_only TO off",
        "SET default_transaction_read_only = 'maybe'",
        "RESET default_transaction_read_only",
        "RESET transaction_read_only",
        "SET default_transaction_read_only TO DEFAULT",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SELECT pg_catalog.set_config('transaction_read_only'::text, 'false', true)",
        "SELECT set_config('default_transaction_read_only', current_user, false)",
    ];
    for sql in writable {
        assert!(one(&c, sql).makes_writable, "{sql} must set makes_writable");
    }
    let harmless = [
        "BEGIN",
        "BEGIN READ ONLY",
        "SET TRANSACTION READ ONLY",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET default_transaction_read_only = on",
        "SET default_transaction_read_only = true",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SELECT set_config('search_path', '', false)",
        "SET search_path = public",
        "RESET search_path",
        "DISCARD PLANS",
        "SELECT 1",
    ];
    for sql in harmless {
        assert!(
            !one(&c, sql).makes_writable,
            "{sql} must not set makes_writable"
        );
    }
}

#[test]
fn ledger_and_tables_written() {
    let c = classifier();
    let cases: &[(&str, &[&str], bool)] = &[
        ("INSERT INTO _sqlx_migrations (version) VALUES (1)", &["_sqlx_migrations"], true),
        (r#"INSERT INTO "public"."schema_migrations" ("version") VALUES ('1')"#, &["public.schema_migrations"], true),
        ("UPDATE alembic_version SET version_num = 'b'", &["alembic_version"], true),
        (r#"INSERT INTO "__EFMigrationsHistory" VALUES ('x', 'y')"#, &["__efmigrationshistory"], true),
        (r#"select * from "knex_migrations_lock" for update"#, &["knex_migrations_lock"], true),
        (r#"LOCK TABLE "schema_migrations" IN SHARE UPDATE EXCLUSIVE MODE"#, &["schema_migrations"], true),
        ("TRUNCATE schema_migrations", &["schema_migrations"], true),
        ("COPY alembic_version FROM STDIN", &["alembic_version"], true),
        ("DELETE FROM users", &["users"], false),
        (
            "WITH x AS (INSERT INTO users DEFAULT VALUES RETURNING id) INSERT INTO schema_migrations SELECT id::text FROM x",
            &["schema_migrations", "users"],
            false,
        ),
        ("INSERT INTO schema_migrations SELECT nextval('s')", &["schema_migrations", "nextval()"], false),
        ("SELECT * FROM schema_migrations s JOIN users u ON true FOR UPDATE", &["schema_migrations", "users"], false),
        ("SELECT nextval('s')", &["nextval()"], false),
        ("NOTIFY x", &[], false),
    ];
    for (sql, tables, ledger) in cases {
        let s = one(&c, sql);
        let mut got = s.tables_written.clone();
        got.sort();
        let mut want: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{sql}");
        assert_eq!(s.ledger_only_write, *ledger, "{sql}");
    }
    // Reads and ddl never count as ledger-only writes.
    assert!(!one(&c, "SELECT * FROM schema_migrations").ledger_only_write);
    assert!(!one(&c, "DROP TABLE schema_migrations").ledger_only_write);
}

#[test]
fn extensions_extend_tables() {
    let extra: PolicyExtensions = serde_json::from_value(serde_json::json!({
        "extra_privileged_functions": ["myext_exec"],
        "extra_write_functions": ["outbox.enqueue"],
        "extra_read_functions": ["pg_terminate_backend", "nextval", "dblink_safe"],
        "extra_ledger_tables": ["ops.my_ledger", "Other_Ledger"]
    }))
    .unwrap();
    let c = Classifier::new(&extra);
    assert_eq!(one(&c, "SELECT myext_exec('x')").class, Privileged);
    assert_eq!(one(&c, "SELECT outbox.enqueue('x')").class, Write);
    // built-in privileged functions cannot be downgraded; write ones can
    assert_eq!(one(&c, "SELECT pg_terminate_backend(1)").class, Privileged);
    assert_eq!(one(&c, "SELECT dblink_safe(1)").class, Privileged);
    assert_eq!(one(&c, "SELECT nextval('s')").class, Read);
    assert!(one(&c, "INSERT INTO ops.my_ledger VALUES (1)").ledger_only_write);
    assert!(!one(&c, "INSERT INTO public.my_ledger VALUES (1)").ledger_only_write);
    assert!(one(&c, "INSERT INTO any_schema.other_ledger VALUES (1)").ledger_only_write);
    let unknown = serde_json::from_value::<PolicyExtensions>(serde_json::json!({"bogus": []}));
    assert!(unknown.is_err());
    let empty: PolicyExtensions = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(empty, PolicyExtensions::default());
}

#[test]
fn ddl_extensions_allow_named_create_extension_only() {
    let extra: PolicyExtensions =
        serde_json::from_value(serde_json::json!({"ddl_extensions": ["pgcrypto", " citext "]}))
            .unwrap();
    let c = Classifier::new(&extra);
    for sql in [
        "CREATE EXTENSION pgcrypto",
        "CREATE EXTENSION IF NOT EXISTS PGCRYPTO SCHEMA public",
        "create extension \"citext\" version '1.6'",
    ] {
        assert_eq!(one(&c, sql).class, Ddl, "{sql}");
    }
    for sql in [
        "CREATE EXTENSION pgcrypto CASCADE",
        "CREATE EXTENSION dblink",
        "CREATE EXTENSION \"PGCRYPTO\"",
        "ALTER EXTENSION pgcrypto UPDATE",
        "DROP EXTENSION pgcrypto",
    ] {
        assert_eq!(one(&c, sql).class, Privileged, "{sql}");
    }
    assert_eq!(
        one(&classifier(), "CREATE EXTENSION pgcrypto").class,
        Privileged
    );
}

#[test]
fn transaction_prepare_execute_deallocate_metadata() {
    let c = classifier();
    let tx = |sql: &str| one(&c, sql).tx;
    assert_eq!(tx("BEGIN"), Some(TxControl::Begin));
    assert_eq!(tx("START TRANSACTION"), Some(TxControl::Begin));
    assert_eq!(tx("COMMIT"), Some(TxControl::Commit));
    assert_eq!(tx("END"), Some(TxControl::Commit));
    assert_eq!(tx("ROLLBACK"), Some(TxControl::Rollback));
    assert_eq!(tx("ABORT"), Some(TxControl::Rollback));
    assert_eq!(tx("SAVEPOINT a"), Some(TxControl::Savepoint));
    assert_eq!(tx("RELEASE a"), Some(TxControl::Release));
    assert_eq!(tx("ROLLBACK TO a"), Some(TxControl::RollbackToSavepoint));
    assert_eq!(
        tx("PREPARE TRANSACTION 'g'"),
        Some(TxControl::PrepareTransaction)
    );
    assert_eq!(tx("COMMIT PREPARED 'g'"), Some(TxControl::Other));
    assert_eq!(tx("SET TRANSACTION READ ONLY"), Some(TxControl::Other));
    assert_eq!(tx("SELECT 1"), None);

    let p = one(&c, "PREPARE del (int) AS DELETE FROM t WHERE id = $1");
    assert_eq!((p.class, p.prepare_name.as_deref()), (Write, Some("del")));
    assert_eq!(p.tables_written, vec!["t".to_string()]);
    let p = one(&c, "PREPARE sel AS SELECT 1");
    assert_eq!((p.class, p.prepare_name.as_deref()), (Read, Some("sel")));
    let e = one(&c, "EXECUTE del(1)");
    assert_eq!((e.class, e.execute_name.as_deref()), (Session, Some("del")));
    let e = one(&c, "EXPLAIN ANALYZE EXECUTE del(1)");
    assert_eq!(e.execute_name.as_deref(), Some("del"));
    assert_eq!(
        one(&c, "DEALLOCATE del").deallocate,
        Some(Some("del".to_string()))
    );
    assert_eq!(one(&c, "DEALLOCATE ALL").deallocate, Some(None));
}

#[test]
fn summaries_are_short_and_literal_free() {
    let c = classifier();
    let cases = [
        ("DELETE FROM t WHERE secret = 'hunter2'", "DELETE"),
        ("SELECT * FROM t FOR UPDATE", "SELECT ... FOR UPDATE"),
        ("SELECT * FROM t FOR SHARE", "SELECT ... FOR SHARE"),
        ("CREATE TABLE t (a int)", "CREATE TABLE"),
        (
            "SELECT pg_terminate_backend(1)",
            "function pg_terminate_backend()",
        ),
        ("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN ANALYZE DELETE"),
        ("SELECT * INTO x FROM t", "SELECT ... INTO"),
        ("DROP TABLE t", "DROP TABLE"),
        ("COPY t TO PROGRAM 'rm -rf /'", "COPY ... PROGRAM"),
        ("SET ROLE postgres", "SET role"),
    ];
    for (sql, want) in cases {
        assert_eq!(one(&c, sql).summary, want, "{sql}");
    }
}

#[test]
fn startup_settings_are_classified_like_set() {
    let c = classifier();
    let s = c.classify_setting("default_transaction_read_only", "off");
    assert_eq!((s.class, s.makes_writable), (Session, true));
    let s = c.classify_setting("default_transaction_read_only", "on");
    assert_eq!((s.class, s.makes_writable), (Session, false));
    assert_eq!(c.classify_setting("role", "postgres").class, Privileged);
    assert_eq!(
        c.classify_setting("session_authorization", "postgres")
            .class,
        Privileged
    );
    assert_eq!(c.classify_setting("Role", "x").class, Privileged);
    assert_eq!(
        c.classify_setting("application_name", "psql").class,
        Session
    );
    assert_eq!(c.classify_setting("DateStyle", "ISO, MDY").class, Session);
    // quoting cannot be escaped
    let s = c.classify_setting("search_path", "x'; DROP TABLE t; --");
    assert_eq!(s.class, Session);
    let s = c.classify_setting("a\" = 1; DROP TABLE t; --", "x");
    assert_eq!(s.class, Session);
    assert_eq!(
        c.classify_setting("search_path", "a\0b").class,
        Unclassified
    );
}

#[test]
fn normalize_hides_literals_and_unparseable_text() {
    let n = normalize("SELECT * FROM users WHERE password = 'hunter2' AND id = 42");
    assert!(!n.contains("hunter2") && !n.contains("42"), "{n}");
    assert!(n.contains("$1") && n.contains("$2"), "{n}");
    let n = normalize("SELEC password = 'hunter2'");
    assert_eq!(n, "<unparseable statement>");
    assert!(!normalize("ALTER ROLE x PASSWORD 'hunter2'").contains("hunter2"));
    let n = normalize("SELECT 1 /* password=hunter2 */ FROM t -- token abc\n WHERE a = 'x'");
    assert!(
        !n.contains("hunter2") && !n.contains("abc") && !n.contains('x'),
        "{n}"
    );
    assert!(n.starts_with("SELECT $1") && n.contains("FROM t"), "{n}");
}

#[test]
fn cache_returns_shared_results() {
    let c = classifier();
    let a = c.classify("SELECT 1 AS cached");
    let b = c.classify("SELECT 1 AS cached");
    assert!(Arc::ptr_eq(&a, &b));
    let big = format!("SELECT '{}'", "x".repeat(20_000));
    assert_eq!(c.classify(&big).max_class(), Some(Read));
}

#[test]
fn pathological_nesting_is_unclassified_not_a_crash() {
    // Run on a thread with a small (tokio-default) stack to prove no overflow.
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let c = classifier();
            let mut out = Vec::new();
            for n in [50usize, 1_000, 100_000] {
                out.push(
                    c.classify(&format!(
                        "SELECT {}1{}",
                        "(SELECT ".repeat(n),
                        ")".repeat(n)
                    ))
                    .max_class(),
                );
                out.push(
                    c.classify(&format!("SELECT 1{}", "+1".repeat(n)))
                        .max_class(),
                );
                out.push(
                    c.classify(&format!("SELECT {}1{}", "ARRAY[".repeat(n), "]".repeat(n)))
                        .max_class(),
                );
                out.push(
                    c.classify(&format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)))
                        .max_class(),
                );
            }
            out
        })
        .unwrap();
    let results = handle.join().expect("classifier thread must not crash");
    assert!(
        results
            .iter()
            .all(|c| matches!(c, Some(Unclassified) | Some(Read))),
        "{results:?}"
    );
    assert!(results.iter().filter(|c| **c == Some(Unclassified)).count() >= 8);
    // Moderate nesting that real applications use still classifies.
    let c = classifier();
    let sql = format!("SELECT {}1{}", "(SELECT ".repeat(5), ")".repeat(5));
    assert_eq!(c.classify(&sql).max_class(), Some(Read));
    let sql = format!(
        "SELECT {}nextval('s'){}",
        "(SELECT ".repeat(5),
        ")".repeat(5)
    );
    assert_eq!(c.classify(&sql).max_class(), Some(Write));
}

// ---- decide() ----

fn stmt(class: StatementClass, ledger: bool, writable: bool) -> Statement {
    Statement {
        class,
        tables_written: if ledger {
            vec!["schema_migrations".into()]
        } else {
            vec!["users".into()]
        },
        ledger_only_write: ledger,
        makes_writable: writable,
        tx: None,
        prepare_name: None,
        execute_name: None,
        deallocate: None,
        summary: "TEST".into(),
    }
}

fn subject(level: Level, tier: Tier, break_glass: bool) -> Subject<'static> {
    Subject {
        role: "someone",
        env: "envname",
        tier,
        level,
        break_glass,
        migrations_role: false,
    }
}

/// Expected allowances: R read, W write, L ledger-only write, D ddl,
/// M maintenance, T transaction, S session. P/U (privileged/unclassified) never.
fn expected(level: Level, prod: bool, break_glass: bool) -> &'static str {
    match (level, prod, break_glass) {
        (Level::None, _, _) => "",
        (Level::Ro, _, _) => "R T S",
        (Level::Rw, false, _) => "R W L D M T S",
        (Level::Rw, true, _) => "R W L T S",
        (Level::Migrate, _, _) => "R L D M T S",
        (Level::Controlled, _, false) => "R T S",
        (Level::Controlled, false, true) => "R W L M T S",
        (Level::Controlled, true, true) => "R W L T S",
    }
}

#[test]
fn decide_level_tier_class_table() {
    let cases: [(&str, StatementClass, bool); 9] = [
        ("R", Read, false),
        ("W", Write, false),
        ("L", Write, true),
        ("D", Ddl, false),
        ("M", Maintenance, false),
        ("T", Transaction, false),
        ("S", Session, false),
        ("P", Privileged, false),
        ("U", Unclassified, false),
    ];
    let mut checked = 0;
    for level in Level::ALL {
        for tier in Tier::ALL {
            for bg in [false, true] {
                let allowed = expected(level, tier == Tier::Production, bg);
                for (code, class, ledger) in cases {
                    let want = allowed.split(' ').any(|c| c == code);
                    let got = decide(&stmt(class, ledger, false), &subject(level, tier, bg));
                    assert_eq!(
                        got == Decision::Allow,
                        want,
                        "{level:?} {tier:?} break_glass={bg} class={class:?} ledger={ledger}: {got:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 5 * 4 * 2 * 9);
}

#[test]
fn makes_writable_is_privileged_unless_the_subject_writes() {
    for level in Level::ALL {
        for tier in Tier::ALL {
            for bg in [false, true] {
                let writer = level == Level::Rw || (level == Level::Controlled && bg);
                for class in [Session, Transaction] {
                    let got = decide(&stmt(class, false, true), &subject(level, tier, bg));
                    assert_eq!(
                        got == Decision::Allow,
                        writer,
                        "{level:?} {tier:?} {bg} {class:?}"
                    );
                    if let Decision::Deny(d) = got {
                        assert_eq!(d.class, Privileged);
                        assert!(d.message.contains("writable"), "{}", d.message);
                    }
                }
            }
        }
    }
}

#[test]
fn production_hard_rule_ddl_only_at_migrate() {
    for level in Level::ALL {
        for bg in [false, true] {
            for migrations_role in [false, true] {
                let mut s = subject(level, Tier::Production, bg);
                s.migrations_role = migrations_role;
                let got = decide(&stmt(Ddl, false, false), &s);
                assert_eq!(
                    got == Decision::Allow,
                    level == Level::Migrate,
                    "{level:?} bg={bg}"
                );
                if let Decision::Deny(d) = got {
                    assert_eq!(d.class, Ddl);
                }
            }
        }
    }
    // End to end through the classifier: a writable CTE hiding ddl is still ddl.
    let c = classifier();
    let rw_prod = subject(Level::Rw, Tier::Production, false);
    for sql in [
        "SELECT 1; DROP TABLE t",
        "SELECT * INTO t2 FROM t",
        "CREATE TABLE t (a int)",
    ] {
        let denied = c
            .classify(sql)
            .statements
            .iter()
            .any(|s| decide(s, &rw_prod) != Decision::Allow);
        assert!(denied, "{sql} must be denied for rw in production");
    }
}

#[test]
fn denial_messages_name_class_role_level_env() {
    let s = subject(Level::Ro, Tier::Production, false);
    let Decision::Deny(d) = decide(&stmt(Write, false, false), &s) else {
        panic!("write must be denied at ro");
    };
    assert_eq!(
        d.message,
        "tierwarden: denied: write statement (TEST) is not allowed for role someone at level ro in environment envname (production)"
    );
    assert!(d.hint.contains("level ro allows read"), "{}", d.hint);
    let Decision::Deny(d) = decide(
        &Statement::unclassified(),
        &subject(Level::Rw, Tier::Development, false),
    ) else {
        panic!("unclassified must be denied");
    };
    assert!(d
        .message
        .starts_with("tierwarden: denied: unclassified statement"));
    assert!(
        d.message.contains("could not be parsed") && d.message.contains("fails closed"),
        "{}",
        d.message
    );
    let Decision::Deny(d) = decide(
        &stmt(Ddl, false, false),
        &subject(Level::Rw, Tier::Production, false),
    ) else {
        panic!("ddl must be denied at rw in production");
    };
    assert!(d.hint.contains("migrate"), "{}", d.hint);
}

#[test]
fn corpus_decisions_for_ro_never_allow_writes() {
    // Every corpus statement the classifier calls anything but read/transaction/
    // session must be denied at ro, and escapes to read-write must be denied too.
    let c = classifier();
    let ro = subject(Level::Ro, Tier::Production, false);
    for (sql, _) in corpus_all() {
        for s in &c.classify(sql).statements {
            let allowed = decide(s, &ro) == Decision::Allow;
            let safe = matches!(s.class, Read | Transaction | Session) && !s.makes_writable;
            assert_eq!(allowed, safe, "{sql}: {s:?}");
        }
    }
}
