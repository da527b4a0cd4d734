use super::*;

fn stmt(class: StatementClass) -> InFlight {
    InFlight {
        class,
        text: Arc::from("x"),
        sent: Instant::now(),
        fp: None,
    }
}

fn outcomes(t: &Tracker) -> Vec<MigrationEnd> {
    t.migrations_ended.iter().map(|m| m.outcome).collect()
}

fn err(code: &str) -> Vec<u8> {
    format!("SERROR\0C{code}\0Mboom\0\0").into_bytes()
}

#[test]
fn simple_denial_replaces_the_injected_error_and_keeps_status() {
    let mut t = Tracker::new(false);
    let now = Instant::now();
    t.simple(vec![], Some(Bytes::from_static(b"DENIED")));
    match t.on_backend(b'E', &err("42601"), now) {
        Action::Replace(b) => assert_eq!(&b[..], b"DENIED"),
        a => panic!("expected replacement, got {a:?}"),
    }
    assert!(matches!(t.on_backend(b'Z', b"E", now), Action::Forward));
    assert_eq!(t.status, b'E');
    assert!(t.idle());
}

#[test]
fn extended_real_error_before_the_denial_is_not_replaced() {
    let mut t = Tracker::new(false);
    let now = Instant::now();
    t.extended(None); // Parse
    t.extended(None); // Bind
    t.extended(Some(stmt(StatementClass::Read))); // Execute
    t.extended_denial(Bytes::from_static(b"DENIED"));
    assert!(t.skipping());
    t.sync();
    assert!(!t.skipping());
    t.on_backend(b'1', b"", now);
    t.on_backend(b'2', b"", now);
    // the Execute fails for real: its error is the client's, not a denial
    assert!(matches!(
        t.on_backend(b'E', &err("22012"), now),
        Action::Forward
    ));
    assert_eq!(t.completed.len(), 1);
    assert_eq!(t.completed[0].error.as_deref(), Some("22012"));
    t.on_backend(b'Z', b"I", now);
    assert!(t.idle());
}

#[test]
fn extended_denial_after_successes_is_replaced() {
    let mut t = Tracker::new(false);
    let now = Instant::now();
    t.extended(None);
    t.extended(None);
    t.extended(Some(stmt(StatementClass::Read)));
    t.extended_denial(Bytes::from_static(b"DENIED"));
    t.sync();
    for tag in [b'1', b'2', b'C'] {
        t.on_backend(tag, b"SELECT 1\0", now);
    }
    assert!(matches!(
        t.on_backend(b'E', &err("26000"), now),
        Action::Replace(_)
    ));
    assert_eq!(t.completed.len(), 1);
    assert!(t.completed[0].error.is_none());
}

#[test]
fn migration_outcomes() {
    let now = Instant::now();
    // BEGIN; CREATE; COMMIT → applied
    let mut t = Tracker::new(true);
    t.simple(vec![stmt(StatementClass::Transaction)], None);
    t.on_backend(b'C', b"BEGIN\0", now);
    t.on_backend(b'Z', b"T", now);
    t.simple(vec![stmt(StatementClass::Ddl)], None);
    t.on_backend(b'C', b"CREATE TABLE\0", now);
    t.on_backend(b'Z', b"T", now);
    t.simple(vec![stmt(StatementClass::Transaction)], None);
    t.on_backend(b'C', b"COMMIT\0", now);
    t.on_backend(b'Z', b"I", now);
    assert_eq!(outcomes(&t), vec![MigrationEnd::Applied]);

    // BEGIN; CREATE; failing statement; COMMIT (answers ROLLBACK) → failed
    let mut t = Tracker::new(true);
    t.simple(vec![stmt(StatementClass::Ddl)], None);
    t.on_backend(b'C', b"CREATE TABLE\0", now);
    t.on_backend(b'Z', b"T", now);
    t.simple(vec![stmt(StatementClass::Ddl)], None);
    t.on_backend(b'E', &err("42P07"), now);
    t.on_backend(b'Z', b"E", now);
    t.simple(vec![stmt(StatementClass::Transaction)], None);
    t.on_backend(b'C', b"ROLLBACK\0", now);
    t.on_backend(b'Z', b"I", now);
    assert_eq!(outcomes(&t), vec![MigrationEnd::Failed]);

    // autocommit ddl that fails → failed; non-migration session → nothing
    let mut t = Tracker::new(true);
    t.simple(vec![stmt(StatementClass::Ddl)], None);
    t.on_backend(b'E', &err("42601"), now);
    t.on_backend(b'Z', b"I", now);
    assert_eq!(outcomes(&t), vec![MigrationEnd::Failed]);
    t.migrations_ended.clear();
    t.note_denied_ddl();
    t.simple(vec![], Some(Bytes::from_static(b"D")));
    t.on_backend(b'E', &err("42601"), now);
    t.on_backend(b'Z', b"I", now);
    assert_eq!(outcomes(&t), vec![MigrationEnd::Failed]);
}

#[test]
fn multi_statement_error_skips_the_rest() {
    let mut t = Tracker::new(false);
    let now = Instant::now();
    t.simple(
        vec![
            stmt(StatementClass::Read),
            stmt(StatementClass::Write),
            stmt(StatementClass::Read),
        ],
        None,
    );
    t.on_backend(b'C', b"SELECT 1\0", now);
    t.on_backend(b'E', &err("23505"), now);
    t.on_backend(b'Z', b"I", now);
    assert_eq!(t.completed.len(), 2);
    assert_eq!(t.completed[1].stmt.class, StatementClass::Write);
    assert!(t.idle());
}

#[test]
fn extended_copy_in_sync_before_data_yields_one_ready() {
    // tokio-postgres/libpq: Bind, Execute, Sync; data; CopyDone, Sync. The
    // first Sync arrives in copy-in mode and is ignored by the server.
    let mut t = Tracker::new(false);
    let now = Instant::now();
    t.extended(None); // Bind
    t.extended(Some(stmt(StatementClass::Write))); // Execute
    t.sync();
    t.on_backend(b'2', b"", now);
    t.on_backend(b'G', b"", now);
    t.copy_end();
    t.sync();
    t.on_backend(b'C', b"COPY 1\0", now);
    t.on_backend(b'Z', b"I", now);
    assert!(t.idle(), "one ReadyForQuery answers the whole COPY");
    // The next denial is substituted in its own response.
    t.simple(vec![], Some(Bytes::from_static(b"DENIED")));
    assert!(matches!(
        t.on_backend(b'E', &err("42601"), now),
        Action::Replace(_)
    ));
    t.on_backend(b'Z', b"I", now);
    assert!(t.idle());
    // A stray CopyDone without a CopyInResponse changes nothing.
    t.copy_end();
    t.simple(vec![], None);
    t.on_backend(b'Z', b"I", now);
    assert!(t.idle());
}

#[test]
fn abandoned_migration_outcomes() {
    let now = Instant::now();
    let open_ddl_tx = || {
        let mut t = Tracker::new(true);
        t.simple(vec![stmt(StatementClass::Transaction)], None);
        t.on_backend(b'C', b"BEGIN\0", now);
        t.on_backend(b'Z', b"T", now);
        t.simple(vec![stmt(StatementClass::Ddl)], None);
        t.on_backend(b'C', b"CREATE TABLE\0", now);
        t
    };
    // failed, ROLLBACK sent with Terminate and never answered → failed
    let mut t = open_ddl_tx();
    t.on_backend(b'Z', b"T", now);
    t.simple(vec![stmt(StatementClass::Read)], None);
    t.on_backend(b'E', &err("22012"), now);
    t.on_backend(b'Z', b"E", now);
    t.simple(vec![stmt(StatementClass::Transaction)], None);
    t.abandon();
    assert_eq!(outcomes(&t), vec![MigrationEnd::Failed]);

    // open transaction, nothing in flight: closing the upstream rolls it back
    let mut t = open_ddl_tx();
    t.on_backend(b'Z', b"T", now);
    t.abandon();
    assert_eq!(outcomes(&t), vec![MigrationEnd::Failed]);

    // COMMIT in flight, no error: it may still commit → not recorded
    let mut t = open_ddl_tx();
    t.on_backend(b'Z', b"T", now);
    t.simple(vec![stmt(StatementClass::Transaction)], None);
    t.abandon();
    assert!(outcomes(&t).is_empty());

    // no ddl, or not a migration session → nothing
    let mut t = Tracker::new(false);
    t.simple(vec![stmt(StatementClass::Ddl)], None);
    t.on_backend(b'E', &err("42601"), now);
    t.abandon();
    assert!(outcomes(&t).is_empty());
}
