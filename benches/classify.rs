//! Hot-path benchmark: statement classification (cache miss and hit) and decide().
//!
//! Run: `cargo bench --bench classify`. The mix is the policy corpus (application
//! SQL, migration-tool SQL and adversarial statements). "miss" makes every text
//! unique (a trailing comment with a counter) so the cache never hits; "hit"
//! repeats the corpus texts through a warm cache. "literals" is the
//! simple-protocol case: pgbench's TPC-B statements with fresh literal
//! values every time, answered by the shape cache ("session_memo": through
//! a session's memory of its last shape keys, as the proxy does); "shape_key" compares the
//! two ways of computing that cache's key (the lexed key and PostgreSQL's
//! normalize).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tierwarden::policy::{
    corpus_all, decide, Classifier, Level, PolicyExtensions, Statement, Subject, Tier,
};

fn corpus() -> Vec<&'static str> {
    corpus_all().map(|(sql, _)| *sql).collect()
}

fn bench_classify(c: &mut Criterion) {
    let texts = corpus();
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(texts.len() as u64));

    let classifier = Classifier::new(&PolicyExtensions::default());
    let mut counter: u64 = 0;
    group.bench_function("miss_corpus", |b| {
        b.iter(|| {
            for sql in &texts {
                counter += 1;
                let unique = format!("{sql} -- {counter}");
                black_box(classifier.classify(black_box(&unique)));
            }
        })
    });

    let warm = Classifier::new(&PolicyExtensions::default());
    for sql in &texts {
        warm.classify(sql);
    }
    group.bench_function("hit_corpus", |b| {
        b.iter(|| {
            for sql in &texts {
                black_box(warm.classify(black_box(sql)));
            }
        })
    });
    group.finish();

    let tpcb = |i: u64| {
        [
            format!("UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {};", i % 5000, i % 1_000_000),
            format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", i % 1_000_000),
            format!("UPDATE pgbench_tellers SET tbalance = tbalance + {} WHERE tid = {};", i % 5000, i % 100),
            format!("UPDATE pgbench_branches SET bbalance = bbalance + {} WHERE bid = {};", i % 5000, i % 10),
            format!("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({}, {}, {}, {}, CURRENT_TIMESTAMP);", i % 100, i % 10, i % 1_000_000, i % 5000),
        ]
    };
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(5));
    let warm = Classifier::new(&PolicyExtensions::default());
    let mut i: u64 = 0;
    group.bench_function("literals_tpcb_5_statements", |b| {
        b.iter(|| {
            i += 1;
            for sql in tpcb(i) {
                black_box(warm.classify(black_box(&sql)));
            }
        })
    });
    // The same texts through a session's memory (proxy::recent): the
    // shape key is compared with the session's last keys before the
    // shared cache is asked (the proxy's path for every Query it reads).
    let mut recent = tierwarden::proxy::recent::Recent::default();
    let mut j: u64 = 0;
    group.bench_function("session_memo_tpcb_5_statements", |b| {
        b.iter(|| {
            j += 1;
            for sql in tpcb(j) {
                let text: std::sync::Arc<str> = sql.into();
                black_box(recent.classify(black_box(&text), &warm));
            }
        })
    });
    let fixed = tpcb(42);
    group.bench_function("shape_key_lexed_tpcb_5_statements", |b| {
        b.iter(|| {
            for sql in &fixed {
                black_box(tierwarden::policy::shape::lexed_key(black_box(sql)));
            }
        })
    });
    group.bench_function("shape_key_normalize_tpcb_5_statements", |b| {
        b.iter(|| {
            for sql in &fixed {
                black_box(pg_query::normalize(black_box(sql)).ok());
            }
        })
    });
    group.finish();
}

fn bench_decide(c: &mut Criterion) {
    let classifier = Classifier::new(&PolicyExtensions::default());
    let statements: Vec<Statement> = corpus()
        .into_iter()
        .flat_map(|sql| classifier.classify(sql).statements.clone())
        .collect();
    let subjects = [
        Subject {
            role: "app_runtime",
            env: "prod",
            tier: Tier::Production,
            level: Level::Rw,
            break_glass: false,
            migrations_role: false,
        },
        Subject {
            role: "auditor",
            env: "prod",
            tier: Tier::Production,
            level: Level::Ro,
            break_glass: false,
            migrations_role: false,
        },
        Subject {
            role: "ci_migrator",
            env: "prod",
            tier: Tier::Production,
            level: Level::Migrate,
            break_glass: false,
            migrations_role: true,
        },
    ];
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(
        (statements.len() * subjects.len()) as u64,
    ));
    group.bench_function("corpus_x_3_subjects", |b| {
        b.iter(|| {
            for subject in &subjects {
                for stmt in &statements {
                    black_box(decide(black_box(stmt), black_box(subject)));
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_classify, bench_decide);
criterion_main!(benches);
