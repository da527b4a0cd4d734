//! Indirect and protocol-level paths through the policy (THREATS #2, #9,
//! #10, #14): multi-statement smuggling, PREPARE/EXECUTE, protocol Parse once
//! then Bind/Execute many, pipelined extended messages with a denial in a
//! transaction, cursors, FunctionCall, a Query with an embedded NUL, and COPY
//! by direction. Helpers live in `policy.rs`.

use crate::raw::{self, bind, execute, parse, status, sync, tags};
use crate::support::code;
use crate::{as_owner, count, denied, exists, proxy, raw_login, rows, su};

#[tokio::test]
async fn pipelined_extended_denial_fails_the_transaction() {
    let p = proxy().await;
    as_owner("dev", "CREATE TABLE tw_tx_ext (id int)").await;
    let mut r = raw_login(&p, "app_runtime", "dev").await;
    assert_eq!(status(&r.query("BEGIN").await), 'T');
    r.push_unnamed("INSERT INTO tw_tx_ext VALUES (1)")
        .push_unnamed("SELECT pg_reload_conf()")
        .push_unnamed("INSERT INTO tw_tx_ext VALUES (2)")
        .push(&sync());
    r.send().await;
    let m = r.until_ready().await;
    assert_eq!(tags(&m), "12CEZ", "{m:?}");
    assert!(m[3].is_denial(), "{:?}", m[3].fields());
    assert_eq!(status(&m), 'E', "ReadyForQuery 'E' after the denial");
    let m = r.query("SELECT 1").await;
    assert_eq!((tags(&m).as_str(), m[0].code()), ("EZ", "25P02".into()));
    let m = r.query("COMMIT").await;
    assert_eq!(tags(&m), "CZ");
    assert_eq!(m[0].text(), "ROLLBACK");
    assert_eq!(status(&m), 'I');
    assert_eq!(count("dev", "SELECT count(*) FROM tw_tx_ext").await, 0);
    let m = r.query("SELECT 1").await;
    assert_eq!((tags(&m).as_str(), status(&m)), ("TDCZ", 'I'));

    // ro: a read then a write in one pipeline inside a transaction
    let mut a = raw_login(&p, "auditor", "dev").await;
    assert_eq!(status(&a.query("BEGIN").await), 'T');
    a.push_unnamed("SELECT count(*) FROM accounts")
        .push_unnamed("DELETE FROM accounts")
        .push(&sync());
    a.send().await;
    let m = a.until_ready().await;
    assert_eq!(tags(&m), "12DCEZ", "{m:?}");
    assert!(m[4].is_denial());
    assert_eq!(status(&m), 'E');
    let m = a.query("ROLLBACK").await;
    assert_eq!(status(&m), 'I');
    let m = a.query("SELECT 1").await;
    assert_eq!(tags(&m), "TDCZ");
    p.stop().await;
}

/// Several Query messages in one write, the middle one denied: the proxy
/// forwards the allowed ones around the substitute, in order, and each
/// gets its own answer.
#[tokio::test]
async fn pipelined_simple_queries_around_a_denial_keep_their_order() {
    let p = proxy().await;
    as_owner("dev", "CREATE TABLE tw_pipe_simple (id int)").await;
    let mut a = raw_login(&p, "auditor", "dev").await;
    a.push(&raw::query_bytes(b"SELECT 1 AS first"))
        .push(&raw::query_bytes(b"DELETE FROM tw_pipe_simple"))
        .push(&raw::query_bytes(b"SELECT 3 AS third"))
        .push(&raw::query_bytes(b"SELECT 4 AS fourth"));
    a.send().await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(a.until_ready().await);
    }
    let shapes: Vec<String> = answers.iter().map(|m| tags(m)).collect();
    assert_eq!(shapes, ["TDCZ", "EZ", "TDCZ", "TDCZ"], "{answers:?}");
    assert!(answers[1][0].is_denial(), "{:?}", answers[1][0].fields());
    let first_column = |m: &[raw::Msg]| String::from_utf8_lossy(&m[0].body[2..]).into_owned();
    assert!(first_column(&answers[0]).starts_with("first"));
    assert!(first_column(&answers[2]).starts_with("third"));
    assert!(first_column(&answers[3]).starts_with("fourth"));
    p.stop().await;
}

#[tokio::test]
async fn multi_statement_smuggling_is_denied_whole() {
    let p = proxy().await;
    let before = count("dev", "SELECT count(*) FROM accounts").await;
    let a = p.connect("auditor", "dev").await.expect("connects");
    denied(
        a.simple_query("SELECT 1; DELETE FROM accounts").await,
        "read + write",
    );
    denied(
        a.simple_query("SELECT 1;DELETE FROM accounts;").await,
        "no spaces",
    );
    denied(
        a.simple_query("/* SELECT */ DELETE FROM accounts").await,
        "comment prefix",
    );
    assert_eq!(count("dev", "SELECT count(*) FROM accounts").await, before);
    // Nothing of a denied message reaches the database.
    as_owner("prod", "CREATE TABLE tw_smug (id int)").await;
    let rw = p.connect("app_runtime", "prod").await.expect("connects");
    denied(
        rw.simple_query("INSERT INTO tw_smug VALUES (1); CREATE TABLE tw_smug2 (id int)")
            .await,
        "dml + ddl in prod",
    );
    assert_eq!(count("prod", "SELECT count(*) FROM tw_smug").await, 0);
    assert!(!exists("prod", "tw_smug2").await);
    // COMMIT; DELETE from inside a read-only transaction
    for (role, env) in [
        ("auditor", "prod"),
        ("human_admin", "prod"),
        ("auditor", "dev"),
    ] {
        let c = p.connect(role, env).await.expect("connects");
        let before = count(env, "SELECT count(*) FROM accounts").await;
        c.batch_execute("BEGIN").await.expect("begin");
        denied(
            c.simple_query("COMMIT; DELETE FROM accounts").await,
            "COMMIT; DELETE",
        );
        let e = c.batch_execute("SELECT 1").await.expect_err("still in tx");
        assert_eq!(code(&e), "25P02", "{role}@{env}: the COMMIT never ran");
        c.batch_execute("ROLLBACK").await.expect("rollback");
        denied(
            c.simple_query("ROLLBACK; BEGIN READ WRITE; DELETE FROM accounts")
                .await,
            "ROLLBACK; BEGIN READ WRITE",
        );
        assert_eq!(count(env, "SELECT count(*) FROM accounts").await, before);
        c.batch_execute("SELECT 1").await.expect("usable");
    }
    p.stop().await;
}

#[tokio::test]
async fn prepare_and_execute_follow_the_body() {
    let p = proxy().await;
    as_owner("dev", "CREATE SEQUENCE tw_pe_seq").await;
    let a = p.connect("auditor", "dev").await.expect("connects");
    denied(
        a.simple_query("PREPARE tw_p AS DELETE FROM accounts").await,
        "PREPARE write",
    );
    denied(a.simple_query("EXECUTE tw_p").await, "EXECUTE of denied");
    a.batch_execute("PREPARE tw_q AS SELECT count(*) FROM accounts")
        .await
        .expect("PREPARE read");
    let r = a.simple_query("EXECUTE tw_q").await.expect("EXECUTE read");
    assert_eq!(rows(&r), 1);
    let st = a.prepare("EXECUTE tw_q").await.expect("extended EXECUTE");
    assert_eq!(a.query(&st, &[]).await.expect("runs").len(), 1);
    denied(a.simple_query("EXECUTE tw_never").await, "never prepared");
    denied(
        a.prepare("EXECUTE tw_never").await,
        "never prepared (Parse)",
    );
    // Parameters are judged too: the more dangerous class wins.
    a.batch_execute("PREPARE tw_r(bigint) AS SELECT $1; PREPARE tw_s(text) AS SELECT $1")
        .await
        .expect("PREPARE read");
    denied(
        a.simple_query("EXECUTE tw_r(nextval('tw_pe_seq'))").await,
        "write in EXECUTE parameters",
    );
    denied(
        a.simple_query("EXECUTE tw_s(set_config('default_transaction_read_only', 'off', false))")
            .await,
        "read-only escape in EXECUTE parameters",
    );
    a.batch_execute("DEALLOCATE tw_q").await.expect("dealloc");
    denied(a.simple_query("EXECUTE tw_q").await, "after DEALLOCATE");
    let called: bool = su("dev")
        .await
        .query_one("SELECT is_called FROM tw_pe_seq", &[])
        .await
        .expect("q")
        .get(0);
    assert!(!called, "the sequence never advanced");
    // rw in prod: PREPARE then EXECUTE of a write works; migrate: non-ledger PREPARE denied
    as_owner("prod", "CREATE TABLE tw_pe_t (id int)").await;
    let rw = p.connect("app_runtime", "prod").await.expect("connects");
    rw.batch_execute("PREPARE tw_w(int) AS INSERT INTO tw_pe_t VALUES ($1); EXECUTE tw_w(7)")
        .await
        .expect("PREPARE and EXECUTE in one message");
    rw.batch_execute("EXECUTE tw_w(8)").await.expect("execute");
    assert_eq!(count("prod", "SELECT count(*) FROM tw_pe_t").await, 2);
    let m = p.connect("ci_migrator", "prod").await.expect("connects");
    denied(
        m.simple_query("PREPARE tw_m(int) AS INSERT INTO tw_pe_t VALUES ($1)")
            .await,
        "migrate: non-ledger write body",
    );
    p.stop().await;
}

#[tokio::test]
async fn protocol_parse_once_bind_many() {
    let p = proxy().await;
    let mut a = raw_login(&p, "auditor", "dev").await;
    a.push(&parse("tw_ok", "SELECT count(*) FROM accounts"))
        .push(&sync());
    a.send().await;
    assert_eq!(tags(&a.until_ready().await), "1Z");
    a.push(&parse("tw_bad", "DELETE FROM accounts"))
        .push(&sync());
    a.send().await;
    let m = a.until_ready().await;
    assert_eq!(tags(&m), "EZ");
    assert!(m[0].is_denial());
    for _ in 0..3 {
        a.push(&bind("", "tw_ok")).push(&execute("")).push(&sync());
    }
    a.send().await;
    for _ in 0..3 {
        assert_eq!(tags(&a.until_ready().await), "2DCZ");
    }
    // Bind of a denied name, and of a name never parsed: denied, skip to Sync
    for name in ["tw_bad", "tw_never"] {
        a.push(&bind("", name))
            .push(&execute(""))
            .push(&bind("", "tw_ok"))
            .push(&execute(""))
            .push(&sync());
        a.send().await;
        let m = a.until_ready().await;
        assert_eq!(tags(&m), "EZ", "{name}: {m:?}");
        assert!(m[0].is_denial(), "{name}");
    }
    // Inside a transaction: allowed Bind, denied Bind, allowed Bind
    assert_eq!(status(&a.query("BEGIN").await), 'T');
    a.push(&bind("", "tw_ok"))
        .push(&execute(""))
        .push(&bind("", "tw_bad"))
        .push(&execute(""))
        .push(&bind("", "tw_ok"))
        .push(&execute(""))
        .push(&sync());
    a.send().await;
    let m = a.until_ready().await;
    assert_eq!((tags(&m).as_str(), status(&m)), ("2DCEZ", 'E'));
    assert_eq!(status(&a.query("ROLLBACK").await), 'I');
    // The proxy's reserved statement name cannot be used by clients.
    a.push(&raw::parse_raw_name(b"\x01tierwarden_denied_x", "SELECT 1"))
        .push(&sync());
    a.send().await;
    let m = a.until_ready().await;
    assert_eq!(tags(&m), "EZ");
    assert!(m[0].is_denial());
    // tokio-postgres: prepare once, execute many
    let c = p.connect("auditor", "stage").await.expect("connects");
    let st = c
        .prepare("SELECT id FROM accounts WHERE id = $1")
        .await
        .expect("prepare");
    for i in 1..=3i64 {
        assert_eq!(c.query(&st, &[&i]).await.expect("execute").len(), 1);
    }
    denied(
        c.prepare("UPDATE accounts SET name = $1").await,
        "Parse of a write",
    );
    p.stop().await;
}

#[tokio::test]
async fn cursors_for_read_only() {
    let p = proxy().await;
    let a = p.connect("auditor", "test").await.expect("connects");
    a.batch_execute("BEGIN; DECLARE tw_c CURSOR FOR SELECT id FROM accounts ORDER BY id")
        .await
        .expect("declare");
    assert_eq!(
        rows(&a.simple_query("FETCH 2 FROM tw_c").await.expect("fetch")),
        2
    );
    a.batch_execute("MOVE BACKWARD 1 IN tw_c")
        .await
        .expect("move");
    assert!(rows(&a.simple_query("FETCH ALL FROM tw_c").await.expect("fetch")) >= 2);
    a.batch_execute("CLOSE tw_c; COMMIT").await.expect("close");
    a.batch_execute("BEGIN").await.expect("begin");
    denied(
        a.simple_query("DECLARE tw_u CURSOR FOR SELECT id FROM accounts FOR UPDATE")
            .await,
        "locking cursor",
    );
    a.batch_execute("ROLLBACK").await.expect("rollback");
    denied(
        a.simple_query("BEGIN; DECLARE tw_n CURSOR FOR SELECT nextval('accounts_id_seq')")
            .await,
        "cursor over a write",
    );
    a.batch_execute("ROLLBACK").await.expect("rollback");
    p.stop().await;
}

#[tokio::test]
async fn function_call_message_is_denied() {
    let p = proxy().await;
    as_owner(
        "dev",
        "CREATE SEQUENCE tw_fc_seq; \
         CREATE FUNCTION tw_fc_bump() RETURNS bigint LANGUAGE sql AS $$ SELECT nextval('tw_fc_seq') $$",
    )
    .await;
    let oid: u32 = su("dev")
        .await
        .query_one("SELECT 'tw_fc_bump()'::regprocedure::oid", &[])
        .await
        .expect("oid")
        .get(0);
    for role in ["app_runtime", "auditor"] {
        let mut r = raw_login(&p, role, "dev").await;
        r.push(&raw::function_call(oid));
        r.send().await;
        let m = r.until_ready().await;
        assert_eq!((tags(&m).as_str(), status(&m)), ("EZ", 'I'), "{role}");
        assert!(m[0].is_denial(), "{role}: {:?}", m[0].fields());
        let msg = m[0].fields().remove(&b'M').unwrap_or_default();
        let level = if role == "auditor" { "ro" } else { "rw" };
        for part in [
            "privileged",
            &format!("role {role}"),
            &format!("level {level}"),
            "environment dev",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        // inside a transaction it fails the transaction
        assert_eq!(status(&r.query("BEGIN").await), 'T');
        r.push(&raw::function_call(oid));
        r.send().await;
        let m = r.until_ready().await;
        assert!(m[0].is_denial());
        assert_eq!(status(&m), 'E');
        assert_eq!(status(&r.query("ROLLBACK").await), 'I');
        assert_eq!(tags(&r.query("SELECT 1").await), "TDCZ", "{role}: usable");
    }
    let called: bool = su("dev")
        .await
        .query_one("SELECT is_called FROM tw_fc_seq", &[])
        .await
        .expect("q")
        .get(0);
    assert!(!called, "the function never ran");
    p.stop().await;
}

#[tokio::test]
async fn raw_query_with_embedded_nul() {
    let p = proxy().await;
    as_owner("dev", "CREATE TABLE tw_nul (id int)").await;
    let mut r = raw_login(&p, "auditor", "dev").await;
    r.push(&raw::query_bytes(b"SELECT 1\0; DROP TABLE tw_nul"));
    r.send().await;
    let m = r.until_ready().await;
    assert!(m.iter().all(|x| x.tag != b'C'), "nothing completes: {m:?}");
    assert!(exists("dev", "tw_nul").await);
    assert_eq!(tags(&r.query("SELECT 1").await), "TDCZ");
    p.stop().await;
}

#[tokio::test]
async fn copy_directions_follow_the_level() {
    use futures_util::SinkExt;
    let p = proxy().await;
    as_owner(
        "dev",
        "CREATE TABLE tw_copy (a int, b text); INSERT INTO tw_copy VALUES (1, 'one')",
    )
    .await;
    let a = p.connect("auditor", "dev").await.expect("connects");
    let out = a
        .copy_out("COPY tw_copy TO STDOUT")
        .await
        .expect("copy out for ro");
    use futures_util::StreamExt;
    let chunks: Vec<_> = Box::pin(out).collect().await;
    assert_eq!(chunks.len(), 1);
    denied(
        a.copy_in::<_, bytes::Bytes>("COPY tw_copy FROM STDIN")
            .await
            .map(|_| ()),
        "ro COPY FROM STDIN",
    );
    let w = p.connect("app_runtime", "dev").await.expect("connects");
    let sink = w
        .copy_in("COPY tw_copy FROM STDIN")
        .await
        .expect("rw copy in");
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from_static(b"2\ttwo\n"))
        .await
        .expect("send");
    assert_eq!(sink.as_mut().finish().await.expect("finish"), 1);
    denied(
        w.simple_query("COPY tw_copy TO PROGRAM 'true'").await,
        "COPY TO PROGRAM",
    );
    denied(
        w.simple_query("COPY tw_copy FROM '/etc/hostname'").await,
        "COPY from a server file",
    );
    assert_eq!(count("dev", "SELECT count(*) FROM tw_copy").await, 2);
    p.stop().await;
}
