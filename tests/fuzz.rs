//! Bounded fuzzing on stable, inside `cargo test`: proptest drives every
//! parser that reads hostile bytes — the startup/SSL negotiation packet,
//! frame scanning and the message decoders, the SCRAM server exchange, the
//! token verifier, the response tracker and the statement classifier — and
//! checks that none of them panics, that they keep their invariants (frames
//! survive any chunking, a SCRAM exchange succeeds only with the password,
//! a token verifies only untouched, the tracker's queue stays bounded, the
//! classifier answers a class for everything and fails closed) and that
//! deep nesting cannot blow the stack of a session task.
//!
//! Case counts are tuned so the binary runs in well under a minute in a
//! debug build. `TIERWARDEN_FUZZ_SCALE=K` multiplies every count for a
//! longer local run (e.g. `TIERWARDEN_FUZZ_SCALE=100 cargo test --release
//! --test fuzz -- --nocapture`); each target prints its count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tierwarden::auth::scram::{ScramError, ScramServer, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use tierwarden::auth::token::{self, TokenKey, TokenRequest};
use tierwarden::auth::Verifier;
use tierwarden::policy::{Classifier, PolicyExtensions, StatementClass};
use tierwarden::protocol::{frame, messages, startup};
use tierwarden::proxy::tracker::{InFlight, Tracker};

/// Cases for a target: its default times `TIERWARDEN_FUZZ_SCALE` (1).
fn cases(default: u32) -> u32 {
    let scale: u32 = std::env::var("TIERWARDEN_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    default.saturating_mul(scale.max(1))
}

/// Run `test` on `cases` inputs from `strategy`; panic with the shrunk
/// failing input. Prints the executions and the time taken.
fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let n = cases(default_cases);
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    });
    let started = Instant::now();
    if let Err(e) = runner.run(&strategy, test) {
        panic!("fuzz target {name} failed: {e}");
    }
    eprintln!(
        "fuzz {name}: {n} cases in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- startup

fn startup_body() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        Just(80_877_103u32),
        Just(80_877_104u32),
        Just(80_877_102u32),
        Just(196_608u32),
        Just(196_610u32),
        Just(131_072u32),
        any::<u32>(),
    ];
    let tail = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(
            (
                "[a-z_.]{0,12}",
                proptest::string::string_regex("[^\u{0}]{0,24}").expect("regex")
            ),
            0..6
        )
        .prop_map(|kv| {
            let mut v = Vec::new();
            for (k, val) in kv {
                v.extend_from_slice(k.as_bytes());
                v.push(0);
                v.extend_from_slice(val.as_bytes());
                v.push(0);
            }
            v.push(0);
            v
        }),
    ];
    (code, tail).prop_map(|(c, t)| {
        let mut v = c.to_be_bytes().to_vec();
        v.extend(t);
        v
    })
}

#[test]
fn startup_packets_never_panic() {
    fuzz(
        "startup",
        10_000,
        (any::<[u8; 4]>(), startup_body()),
        |(header, body)| {
            if let Ok(len) = startup::packet_len(header) {
                prop_assert!((8..=startup::MAX_STARTUP_LEN).contains(&len));
            }
            if let Ok(startup::StartupPacket::Startup { params, .. }) = startup::decode(&body) {
                for (k, v) in &params {
                    prop_assert!(!k.is_empty() && !k.contains('\0') && !v.contains('\0'));
                }
            }
            Ok(())
        },
    );
}

// ------------------------------------------------------ frames and messages

fn frames() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    proptest::collection::vec(
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)),
        0..8,
    )
}

#[test]
fn frames_survive_any_chunking() {
    fuzz(
        "frame-chunking",
        5_000,
        (frames(), proptest::collection::vec(1usize..200, 1..20)),
        |(msgs, chunks)| {
            let mut wire = Vec::new();
            for (tag, body) in &msgs {
                wire.push(*tag);
                wire.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
                wire.extend_from_slice(body);
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < wire.len() {
                let n = chunks[i % chunks.len()].min(wire.len() - pos);
                buf.extend_from_slice(&wire[pos..pos + n]);
                pos += n;
                i += 1;
                while let Some(f) = frame::split_frame(&mut buf).expect("valid lengths") {
                    got.push((f.tag, f.body().to_vec()));
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, msgs);
            Ok(())
        },
    );
}

#[test]
fn frame_scanner_and_decoders_never_panic() {
    fuzz(
        "frame-bytes+decoders",
        10_000,
        proptest::collection::vec(any::<u8>(), 0..400),
        |bytes| {
            // Split only complete frames: a declared length far ahead is
            // checked, never allocated, here.
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match frame::peek_header(&buf) {
                    Ok(Some((_, total))) if total <= buf.len() => {
                        let f = frame::split_frame(&mut buf)
                            .expect("peeked")
                            .expect("complete");
                        prop_assert_eq!(f.bytes.len(), total);
                    }
                    Ok(_) | Err(_) => break,
                }
            }
            let _ = messages::query_text(&bytes);
            let _ = messages::parse_msg(&bytes);
            let _ = messages::bind_msg(&bytes);
            let _ = messages::target_msg(&bytes);
            let _ = messages::execute_msg(&bytes);
            let _ = messages::error_fields(&bytes);
            let _ = messages::backend_key(&bytes);
            let _ = messages::ready_status(&bytes);
            Ok(())
        },
    );
}

#[test]
fn absurd_frame_lengths_are_errors_not_allocations() {
    fuzz(
        "frame-lengths",
        5_000,
        (any::<u8>(), any::<i32>()),
        |(tag, len)| {
            let mut b = vec![tag];
            b.extend_from_slice(&len.to_be_bytes());
            match frame::peek_header(&b) {
                Ok(Some((t, total))) => {
                    prop_assert_eq!(t, tag);
                    prop_assert!(len >= 4 && total == len as usize + 1);
                    prop_assert!(total <= frame::MAX_MESSAGE_LEN + 1);
                }
                Ok(None) => prop_assert!(false, "5 bytes are a header"),
                Err(_) => prop_assert!(len < 4 || len as usize > frame::MAX_MESSAGE_LEN),
            }
            Ok(())
        },
    );
}

// ------------------------------------------------------------------- SCRAM

const ITER: u32 = 16;

#[test]
fn scram_server_survives_arbitrary_client_messages() {
    let verifier = Verifier::generate("pencil", ITER);
    let cb = vec![7u8; 32];
    let first_msg = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[nyp]=?[a-z-]{0,22},(a=[a-z]{0,3})?,(m=x,)?n=[a-z]{0,5},r=[!-~]{0,30}(,[a-z]=[a-z]{0,4})?"
            .prop_map(String::into_bytes),
    ];
    let final_msg = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "c=[A-Za-z0-9+/=]{0,16},r=[!-~]{0,40}(,x=y)?,p=[A-Za-z0-9+/=]{0,48}"
            .prop_map(String::into_bytes),
    ];
    let mech = prop_oneof![
        Just(SCRAM_SHA_256.to_string()),
        Just(SCRAM_SHA_256_PLUS.to_string()),
        "[A-Z0-9-]{0,20}",
    ];
    fuzz(
        "scram-server",
        3_000,
        (mech, first_msg, final_msg, any::<bool>(), any::<bool>()),
        |(mech, first, last, tls, known)| {
            let v = known.then(|| verifier.clone());
            let mut s = ScramServer::new(v, "alice", tls.then(|| cb.clone()));
            let r1 = s.client_first(&mech, &first);
            let r2 = s.client_final(&last);
            // Random bytes never authenticate.
            prop_assert!(r2.is_err());
            if r1.is_err() {
                prop_assert_eq!(r2, Err(ScramError::OutOfOrder));
            }
            prop_assert!(s.is_finished());
            // A third message is always out of order.
            prop_assert_eq!(s.client_final(&last), Err(ScramError::OutOfOrder));
            Ok(())
        },
    );
}

#[test]
fn scram_succeeds_only_with_the_password() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    fuzz(
        "scram-roundtrip",
        100,
        ("[ -~]{1,24}", "[ -~]{1,24}", any::<bool>()),
        |(password, attempt, known)| {
            let verifier = Verifier::generate(&password, ITER);
            let mut server = ScramServer::new(known.then_some(verifier), "alice", None);
            let mut client = ScramSha256::new(attempt.as_bytes(), ChannelBinding::unsupported());
            let server_first = server
                .client_first(SCRAM_SHA_256, client.message())
                .map_err(|e| TestCaseError::fail(format!("client-first refused: {e}")))?;
            client
                .update(&server_first)
                .map_err(|e| TestCaseError::fail(format!("server-first unreadable: {e}")))?;
            let result = server.client_final(client.message());
            let expect_ok = known && password == attempt;
            match result {
                Ok(server_final) => {
                    prop_assert!(expect_ok, "authenticated with the wrong password");
                    prop_assert!(client.finish(&server_final).is_ok());
                }
                Err(e) => {
                    prop_assert!(!expect_ok, "right password refused: {}", e);
                    prop_assert_eq!(e, ScramError::AuthenticationFailed);
                }
            }
            Ok(())
        },
    );
}

// ------------------------------------------------------------------ tokens

#[test]
fn token_verifier_rejects_everything_but_intact_tokens() {
    let key: TokenKey = token::generate_key().expect("key").parse().expect("parses");
    let other: TokenKey = token::generate_key().expect("key").parse().expect("parses");
    let public = key.public_key();
    let now = time::OffsetDateTime::now_utc();
    let good = token::issue(
        &key,
        &TokenRequest {
            identity: "alice".into(),
            role: "human_admin".into(),
            env: "prod".into(),
            ttl: Duration::from_secs(3600),
            reason: Some("INC-1".into()),
        },
        now,
    )
    .expect("issued");
    assert!(token::verify(&public, &good, "prod", "alice", now).is_ok());
    let forged = token::issue(
        &other,
        &TokenRequest {
            identity: "alice".into(),
            role: "human_admin".into(),
            env: "prod".into(),
            ttl: Duration::from_secs(3600),
            reason: None,
        },
        now,
    )
    .expect("issued");
    let input = prop_oneof![
        any::<String>(),
        "v4\\.public\\.[A-Za-z0-9_-]{0,300}(\\.[A-Za-z0-9_-]{0,20})?",
        // one character of the real token changed, or the token cut short
        (0..good.len(), "[A-Za-z0-9_.-]").prop_map({
            let good = good.clone();
            move |(i, c)| {
                let mut t = good.clone().into_bytes();
                t[i] = c.as_bytes()[0];
                String::from_utf8_lossy(&t).into_owned()
            }
        }),
        (0..good.len()).prop_map({
            let good = good.clone();
            move |i| good[..i].to_string()
        }),
        Just(forged),
    ];
    fuzz("token-verify", 3_000, input, |t| {
        let r = token::verify(&public, &t, "prod", "alice", now);
        if t != good {
            prop_assert!(r.is_err(), "accepted a modified token {:?}", t);
        }
        // Wrong environment or identity: never accepted.
        prop_assert!(token::verify(&public, &t, "stage", "alice", now).is_err());
        prop_assert!(token::verify(&public, &t, "prod", "mallory", now).is_err());
        Ok(())
    });
}

// ----------------------------------------------------------------- tracker

#[derive(Debug, Clone)]
enum Op {
    Simple(u8, bool),
    Extended(bool),
    ExtendedDenial,
    Sync,
    Swap,
    Backend(u8, Vec<u8>),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let backend_tag = prop_oneof![
        Just(b'1'),
        Just(b'2'),
        Just(b'3'),
        Just(b'n'),
        Just(b'T'),
        Just(b'C'),
        Just(b'I'),
        Just(b's'),
        Just(b'E'),
        Just(b'Z'),
        Just(b'D'),
        any::<u8>(),
    ];
    let body = prop_oneof![
        Just(b"I".to_vec()),
        Just(b"T".to_vec()),
        Just(b"E".to_vec()),
        Just(b"COMMIT\0".to_vec()),
        Just(b"SERROR\0C42601\0Mx\0\0".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..24),
    ];
    let op = prop_oneof![
        (0u8..4, any::<bool>()).prop_map(|(n, d)| Op::Simple(n, d)),
        any::<bool>().prop_map(Op::Extended),
        Just(Op::ExtendedDenial),
        Just(Op::Sync),
        Just(Op::Swap),
        (backend_tag, body).prop_map(|(t, b)| Op::Backend(t, b)),
        Just(Op::Backend(b'Z', b"I".to_vec())),
    ];
    proptest::collection::vec(op, 0..80)
}

fn stmt(class: StatementClass) -> InFlight {
    InFlight {
        class,
        text: Arc::from("SELECT 1"),
        sent: Instant::now(),
        fp: None,
    }
}

#[test]
fn tracker_survives_any_backend_sequence_and_stays_bounded() {
    fuzz(
        "tracker",
        2_000,
        (ops(), any::<bool>()),
        |(ops, migrations)| {
            let mut t = Tracker::new(migrations);
            let now = Instant::now();
            let (mut requests, mut stmts) = (0usize, 0usize);
            for op in ops {
                match op {
                    Op::Simple(n, denied) => {
                        requests += 1;
                        stmts += usize::from(n);
                        let s: Vec<_> = (0..n).map(|_| stmt(StatementClass::Ddl)).collect();
                        t.simple(s, denied.then(|| Bytes::from_static(b"DENIED")));
                    }
                    Op::Extended(with) => {
                        requests += 1;
                        stmts += usize::from(with);
                        t.extended(with.then(|| stmt(StatementClass::Read)));
                    }
                    Op::ExtendedDenial => {
                        requests += 1;
                        t.extended_denial(Bytes::from_static(b"DENIED"));
                    }
                    Op::Sync => {
                        requests += 1;
                        t.sync();
                    }
                    Op::Swap => {
                        requests += 1;
                        t.simple_swap(Bytes::from_static(b"SWAPPED"));
                    }
                    Op::Backend(tag, body) => {
                        let _ = t.on_backend(tag, &body, now);
                    }
                }
                prop_assert!(t.pending() <= requests, "more segments than requests");
                prop_assert!(t.completed.len() <= stmts, "completions without statements");
            }
            // Enough ReadyForQuery messages drain everything.
            for _ in 0..=requests {
                let _ = t.on_backend(b'Z', b"I", now);
            }
            prop_assert!(t.idle());
            prop_assert_eq!(t.pending(), 0);
            Ok(())
        },
    );
}

// -------------------------------------------------------------- classifier

fn sqlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        8 => proptest::sample::select(vec![
            "SELECT", "select", "INSERT", "INTO", "UPDATE", "DELETE", "FROM", "WHERE", "WITH",
            "AS", "RETURNING", "CREATE", "TABLE", "DROP", "ALTER", "SET", "RESET", "ALL",
            "BEGIN", "COMMIT", "ROLLBACK", "READ", "WRITE", "ONLY", "TRANSACTION", "FOR",
            "UPDATE", "SHARE", "COPY", "TO", "STDOUT", "STDIN", "PROGRAM", "DO", "EXPLAIN",
            "ANALYZE", "VACUUM", "PREPARE", "EXECUTE", "DEALLOCATE", "GRANT", "ROLE", "CALL",
            "LOCK", "NOTIFY", "LISTEN", "VALUES", "TABLE", "UNION", "JOIN", "ON", "AND",
            "OR", "NOT", "NULL", "DEFAULT", "default_transaction_read_only", "search_path",
            "nextval", "set_config", "pg_terminate_backend", "dblink_exec", "lo_import",
            "pg_read_file", "now", "count", "schema_migrations", "accounts", "public",
            "t", "x", "*", "(", ")", ",", ";", ".", "=", "::", "'a'", "'it''s'", "E'\\\\'",
            "$$ body $$", "$q$ x $q$", "U&\"d\\0061t\"", "\"quoted\"", "1", "3.5", "$1",
            "-- c\n", "/* c */", "/* /* */ */", "\n", "'", "\"", "$", "/*", "[", "]", "::int",
        ]).prop_map(str::to_string),
        1 => "[a-z_]{1,8}",
        1 => "[0-9]{1,6}",
    ];
    proptest::collection::vec(token, 0..24).prop_map(|ts| ts.join(" "))
}

#[test]
fn classifier_classifies_or_fails_closed() {
    let c = Classifier::new(&PolicyExtensions::default());
    let input = prop_oneof![
        1 => any::<String>(),
        1 => proptest::collection::vec(any::<u8>(), 0..120)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        4 => sqlish(),
    ];
    fuzz("classifier", 4_000, input, |sql| {
        let got = c.classify_uncached(&sql);
        if pg_parses(&sql) {
            for s in &got.statements {
                prop_assert!(StatementClass::ALL.contains(&s.class));
            }
        } else {
            // Fail closed: what PostgreSQL's parser rejects is unclassified.
            prop_assert_eq!(got.max_class(), Some(StatementClass::Unclassified));
        }
        // Comments around the text never change the classes (THREATS #1).
        let wrapped = c.classify_uncached(&format!("/* tw */ {sql}\n-- tw\n"));
        prop_assert_eq!(classes(&wrapped), classes(&got));
        // The cache answers what the parser answers.
        prop_assert_eq!(classes(&c.classify(&sql)), classes(&got));
        Ok(())
    });
}

fn pg_parses(sql: &str) -> bool {
    pg_query::parse(sql, 0).is_ok()
}

fn classes(c: &tierwarden::policy::Classified) -> Vec<StatementClass> {
    c.statements.iter().map(|s| s.class).collect()
}

/// Deep nesting and huge token runs, classified on a thread with the 2 MiB
/// stack of a tokio worker: an error (unclassified) is fine, a stack
/// overflow would abort the whole proxy.
#[test]
fn classifier_survives_deep_nesting_on_a_worker_sized_stack() {
    let started = Instant::now();
    let inputs = vec![
        format!("SELECT {}1{}", "(".repeat(50_000), ")".repeat(50_000)),
        format!("SELECT {}1", "-".repeat(100_000)),
        format!("SELECT {}", "ARRAY[".repeat(20_000)),
        format!("SELECT 1{}", " + 1".repeat(20_000)),
        format!("SELECT {}", "NOT ".repeat(50_000)),
        format!(
            "SELECT * FROM t WHERE {}",
            vec!["a = 1"; 20_000].join(" AND ")
        ),
        format!("{}SELECT 1", "WITH a AS (".repeat(5_000)),
        format!("SELECT {}1{}", "(SELECT ".repeat(3_000), ")".repeat(3_000)),
        ";".repeat(200_000),
        "SELECT 1;".repeat(20_000),
    ];
    let n = inputs.len();
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let c = Classifier::new(&PolicyExtensions::default());
            inputs
                .iter()
                .map(|sql| c.classify_uncached(sql).max_class())
                .collect::<Vec<_>>()
        })
        .expect("thread");
    let results = handle.join().expect("no stack overflow, no panic");
    assert_eq!(results.len(), n);
    eprintln!(
        "fuzz classifier-depth: {n} inputs in {:.2} s: {results:?}",
        started.elapsed().as_secs_f64()
    );
}
