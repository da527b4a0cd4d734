//! Hot-path benchmark: wire framing and decoding of the messages the proxy
//! reads, and the tracker's per-message bookkeeping, on the messages of a
//! typical pgbench exchange.
//!
//! Run: `cargo bench --bench protocol`. Groups:
//! - `frontend`: walk a buffer of client messages in place
//!   (`frame::peek_header`, `outgoing::Msg`) and decode the bodies the relay inspects
//!   (`messages::query_text`, `parse_msg`, `bind_msg`, `execute_msg`,
//!   `target_msg`), for pgbench `-S` in `-M simple` and `-M extended`.
//! - `backend`: the upstream → client scan the relay does per read
//!   (`relay::scan_backend`: frame headers, tracker `on_backend` for
//!   inspected tags, the plan of what to forward) on pgbench `-S`
//!   responses, plus
//!   `messages::error_fields` and `encode::error`.
//! - `tracker`: `Tracker::simple` / `extended` / `sync` / `on_backend` for
//!   one pgbench `-S` transaction (simple and extended) and one TPC-B-like
//!   transaction (simple), without any IO.
//!
//! The message bytes are what PostgreSQL 15 and pgbench 15 put on the wire.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tierwarden::policy::StatementClass;
use tierwarden::protocol::encode::{self, Severity};
use tierwarden::protocol::{frame, messages};
use tierwarden::proxy::outgoing::{Msg, Outgoing};
use tierwarden::proxy::relay;
use tierwarden::proxy::tracker::{InFlight, Tracker};

/// Exchanges per benchmark iteration (a buffer holds this many).
const BATCH: usize = 64;

const SELECT_SIMPLE: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 412345;";
const SELECT_EXTENDED: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
const TPCB: [&str; 7] = [
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 412345;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 412345;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 42;",
    "UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 7;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
     VALUES (42, 7, 412345, -1234, CURRENT_TIMESTAMP);",
    "END;",
];

/// Append one message: type byte, length, body.
fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32((body.len() + 4) as i32);
    out.put_slice(body);
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// Query ('Q').
fn query(out: &mut BytesMut, sql: &str) {
    let mut b = Vec::new();
    cstr(&mut b, sql.as_bytes());
    msg(out, b'Q', &b);
}

/// pgbench -M extended: Parse(unnamed) Bind Describe(portal) Execute Sync.
fn extended_request(out: &mut BytesMut, sql: &str, param: &[u8]) {
    let mut p = Vec::new();
    cstr(&mut p, b"");
    cstr(&mut p, sql.as_bytes());
    p.extend_from_slice(&0i16.to_be_bytes()); // no parameter types
    msg(out, b'P', &p);
    let mut b = Vec::new();
    cstr(&mut b, b"");
    cstr(&mut b, b"");
    b.extend_from_slice(&0i16.to_be_bytes()); // text formats
    b.extend_from_slice(&1i16.to_be_bytes()); // one parameter
    b.extend_from_slice(&(param.len() as i32).to_be_bytes());
    b.extend_from_slice(param);
    b.extend_from_slice(&0i16.to_be_bytes()); // text results
    msg(out, b'B', &b);
    msg(out, b'D', b"P\0");
    msg(out, b'E', b"\0\0\0\0\0");
    msg(out, b'S', b"");
}

/// RowDescription for one int4 column `abalance`.
fn row_description(out: &mut BytesMut) {
    let mut b = Vec::new();
    b.extend_from_slice(&1i16.to_be_bytes());
    cstr(&mut b, b"abalance");
    b.extend_from_slice(&16400i32.to_be_bytes()); // table oid
    b.extend_from_slice(&3i16.to_be_bytes()); // column number
    b.extend_from_slice(&23i32.to_be_bytes()); // int4
    b.extend_from_slice(&4i16.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(out, b'T', &b);
}

fn data_row(out: &mut BytesMut) {
    let mut b = Vec::new();
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&5i32.to_be_bytes());
    b.extend_from_slice(b"-1234");
    msg(out, b'D', &b);
}

/// Response to one pgbench -S transaction.
fn select_response(out: &mut BytesMut, extended: bool) {
    if extended {
        msg(out, b'1', b"");
        msg(out, b'2', b"");
    }
    row_description(out);
    data_row(out);
    msg(out, b'C', b"SELECT 1\0");
    msg(out, b'Z', b"I");
}

fn error_body() -> Vec<u8> {
    b"SERROR\0VERROR\0C42P01\0Mrelation \"pgbench_acounts\" does not exist\0\
      P15\0Fparse_relation.c\0L1392\0RparserOpenTable\0\0"
        .to_vec()
}

fn stmt(class: StatementClass, text: &Arc<str>) -> InFlight {
    InFlight {
        class,
        text: Arc::clone(text),
        sent: Instant::now(),
        fp: None,
    }
}

fn bench_frontend(c: &mut Criterion) {
    let mut simple = BytesMut::new();
    let mut extended = BytesMut::new();
    for _ in 0..BATCH {
        query(&mut simple, SELECT_SIMPLE);
        extended_request(&mut extended, SELECT_EXTENDED, b"412345");
    }
    let mut group = c.benchmark_group("frontend");
    for (name, input) in [
        ("split_decode_select_simple", &simple),
        ("split_decode_select_extended", &extended),
    ] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        let mut buf = BytesMut::with_capacity(64 * 1024);
        group.bench_function(name, |b| {
            b.iter(|| {
                // Like a socket read into the relay's reused buffer, looked
                // at in place as the relay does.
                buf.extend_from_slice(input);
                let (mut n, mut pos) = (0usize, 0usize);
                while let Ok(Some((tag, total))) = frame::peek_header(&buf[pos..]) {
                    if total > buf.len() - pos {
                        break;
                    }
                    let body = Msg::new(tag, &buf, pos, pos + total).body();
                    n += match tag {
                        b'Q' => messages::query_text(body).map_or(0, <[u8]>::len),
                        b'P' => messages::parse_msg(body).map_or(0, |(_, q)| q.len()),
                        b'B' => messages::bind_msg(body).map_or(0, |(p, _)| p.len()),
                        b'E' => messages::execute_msg(body).map_or(0, <[u8]>::len),
                        b'C' | b'D' => messages::target_msg(body).map_or(0, |(k, _)| k as usize),
                        _ => 1,
                    };
                    pos += total;
                }
                buf.advance(pos);
                black_box(n)
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    let one = {
        let mut b = BytesMut::new();
        query(&mut b, SELECT_SIMPLE);
        b
    };
    group.bench_function("peek_header", |b| {
        b.iter(|| black_box(frame::peek_header(black_box(&one))))
    });
    group.finish();
}

fn bench_backend(c: &mut Criterion) {
    let text: Arc<str> = Arc::from(SELECT_EXTENDED);
    let mut group = c.benchmark_group("backend");
    for extended in [false, true] {
        let mut input = BytesMut::new();
        for _ in 0..BATCH {
            select_response(&mut input, extended);
        }
        let name = if extended {
            "scan_select_extended"
        } else {
            "scan_select_simple"
        };
        group.throughput(Throughput::Bytes(input.len() as u64));
        let tracker = Mutex::new(Tracker::new(false));
        let mut out = Outgoing::with_capacity(64 * 1024);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut t = tracker.lock().expect("tracker");
                for _ in 0..BATCH {
                    if extended {
                        for _ in 0..3 {
                            t.extended(None);
                        }
                        t.extended(Some(stmt(StatementClass::Read, &text)));
                        t.sync();
                    } else {
                        t.simple(vec![stmt(StatementClass::Read, &text)], None);
                    }
                }
                drop(t);
                buf.extend_from_slice(&input);
                let mut passthrough = 0;
                let scan = relay::scan_backend(&buf, &mut out, &mut passthrough, &tracker)
                    .expect("well-formed responses");
                let n = out.pending(&buf).len();
                out.clear();
                buf.advance(scan.consumed);
                tracker.lock().expect("tracker").completed.clear();
                black_box(n)
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    let body = error_body();
    group.bench_function("error_fields", |b| {
        b.iter(|| black_box(messages::error_fields(black_box(&body))))
    });
    group.bench_function("encode_error", |b| {
        b.iter(|| {
            black_box(encode::error(
                Severity::Error,
                black_box("42501"),
                black_box(
                    "tierwarden: denied: write statement (INSERT) is not allowed for role \
                     auditor at level ro in environment prod (production)",
                ),
                Some("level ro allows read, transaction control and session statements"),
            ))
        })
    });
    group.finish();
}

fn bench_tracker(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracker");
    group.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let text: Arc<str> = Arc::from(SELECT_EXTENDED);
    let row = {
        let mut b = BytesMut::new();
        data_row(&mut b);
        b
    };

    let mut t = Tracker::new(false);
    group.bench_function("select_simple_tx", |b| {
        b.iter(|| {
            t.simple(vec![stmt(StatementClass::Read, &text)], None);
            black_box(t.on_backend(b'T', b"", now));
            black_box(t.on_backend(b'D', &row[5..], now));
            black_box(t.on_backend(b'C', b"SELECT 1\0", now));
            black_box(t.on_backend(b'Z', b"I", now));
            t.completed.clear();
        })
    });

    let mut t = Tracker::new(false);
    group.bench_function("select_extended_tx", |b| {
        b.iter(|| {
            t.extended(None); // Parse
            t.extended(None); // Bind
            t.extended(None); // Describe
            t.extended(Some(stmt(StatementClass::Read, &text))); // Execute
            t.sync();
            for (tag, body) in [
                (b'1', &b""[..]),
                (b'2', b""),
                (b'T', b""),
                (b'D', &row[5..]),
                (b'C', b"SELECT 1\0"),
                (b'Z', b"I"),
            ] {
                black_box(t.on_backend(tag, body, now));
            }
            t.completed.clear();
        })
    });

    let texts: Vec<Arc<str>> = TPCB.iter().map(|s| Arc::from(*s)).collect();
    let classes = [
        StatementClass::Transaction,
        StatementClass::Write,
        StatementClass::Read,
        StatementClass::Write,
        StatementClass::Write,
        StatementClass::Write,
        StatementClass::Transaction,
    ];
    let tags: [&[u8]; 7] = [
        b"BEGIN\0",
        b"UPDATE 1\0",
        b"SELECT 1\0",
        b"UPDATE 1\0",
        b"UPDATE 1\0",
        b"INSERT 0 1\0",
        b"COMMIT\0",
    ];
    let mut t = Tracker::new(false);
    group.bench_function("tpcb_simple_tx", |b| {
        b.iter(|| {
            for i in 0..TPCB.len() {
                t.simple(vec![stmt(classes[i], &texts[i])], None);
                if i == 2 {
                    black_box(t.on_backend(b'T', b"", now));
                    black_box(t.on_backend(b'D', &row[5..], now));
                }
                black_box(t.on_backend(b'C', tags[i], now));
                let status = if i == TPCB.len() - 1 { b"I" } else { b"T" };
                black_box(t.on_backend(b'Z', status, now));
            }
            t.completed.clear();
        })
    });
    group.finish();
}

criterion_group!(benches, bench_frontend, bench_backend, bench_tracker);
criterion_main!(benches);
