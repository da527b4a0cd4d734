//! Cost of recording one statement: pre-resolved session handles
//! (`SessionMetrics::record_statement`, the hot path) against a label lookup
//! per increment (`Metrics::count_query_by_labels`, what the session avoids).
//!
//! Run: `cargo bench --bench metrics`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tierwarden::observe::{ClassLabel, Metrics, QueryOutcome};

fn bench_metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let session = metrics.session("prod", "app_runtime");
    let slow = Duration::from_millis(100);
    let took = Duration::from_micros(850);

    c.bench_function("record_statement (session handles)", |b| {
        b.iter(|| {
            black_box(session.record_statement(
                black_box(ClassLabel::Read),
                black_box(QueryOutcome::Ok),
                black_box(took),
                slow,
            ))
        })
    });

    c.bench_function("queries_total inc (label lookup)", |b| {
        b.iter(|| {
            metrics.count_query_by_labels(
                black_box("prod"),
                black_box("app_runtime"),
                black_box(ClassLabel::Read),
                black_box(QueryOutcome::Ok),
            )
        })
    });

    c.bench_function("session open+close (handle cache hit)", |b| {
        b.iter(|| drop(black_box(metrics.session("prod", "app_runtime"))))
    });
}

criterion_group!(benches, bench_metrics);
criterion_main!(benches);
