//! Hot-path benchmark: statement classification (cache miss and hit) and decide().
//!
//! Run: `cargo bench --bench classify`. The mix is the policy corpus (application
//! SQL, migration-tool SQL and adversarial statements). "miss" makes every text
//! unique (a trailing comment with a counter) so the cache never hits; "hit"
//! repeats the corpus texts through a warm cache.

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
