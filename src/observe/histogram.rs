//! A lock-free histogram of durations, exported as an OpenMetrics histogram.
//!
//! Owns the bucket layout used by every duration series of tierwarden. It
//! exists because `prometheus_client::metrics::histogram::Histogram` takes a
//! mutex on every `observe`, and statement latency is recorded on the hot path
//! by every session: here an observation is two relaxed atomic adds (bucket and
//! sum in nanoseconds) after a short scan over fixed bounds. It may use only
//! `prometheus_client`'s encoding traits and std atomics; it must never lock,
//! allocate or read a clock on `observe`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds (seconds) of the duration buckets: from 0.5 ms (a cached
/// point read through the proxy) up to 30 s (a long migration step or lock
/// wait). Anything longer lands in `+Inf`.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Same bounds in nanoseconds, so `observe` compares integers.
const BOUNDS_NANOS: [u64; 15] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Number of buckets including the implicit `+Inf` one.
const SLOTS: usize = DURATION_BUCKETS.len() + 1;

#[derive(Debug, Default)]
struct Inner {
    /// Non-cumulative count per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; SLOTS],
    /// Sum of all observations in nanoseconds (wraps after ~584 years).
    sum_nanos: AtomicU64,
}

/// Histogram of durations; cloning shares the same counts (Arc-backed), like
/// the handles of `prometheus_client`.
#[derive(Debug, Clone, Default)]
pub struct DurationHistogram {
    inner: Arc<Inner>,
}

impl DurationHistogram {
    /// Record one observation. Lock-free.
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let slot = BOUNDS_NANOS
            .iter()
            .position(|&b| nanos <= b)
            .unwrap_or(SLOTS - 1);
        self.inner.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of observations in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0_f64, 0_u64); SLOTS];
        for (i, slot) in buckets.iter_mut().enumerate() {
            let bound = DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            *slot = (bound, self.inner.buckets[i].load(Ordering::Relaxed));
        }
        // Count is derived from the same snapshot as the buckets, so
        // `_count` always equals the `+Inf` bucket.
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_match_seconds() {
        for (s, n) in DURATION_BUCKETS.iter().zip(BOUNDS_NANOS.iter()) {
            assert_eq!((s * 1e9).round() as u64, *n);
        }
    }

    #[test]
    fn observe_lands_in_the_right_bucket() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(500)); // exactly on the first bound
        h.observe(Duration::from_micros(501)); // second bucket
        h.observe(Duration::from_secs(31)); // +Inf
        let b: Vec<u64> = h
            .inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 1);
        assert_eq!(b[SLOTS - 1], 1);
        assert_eq!(h.count(), 3);
        assert!((h.sum_seconds() - 31.001001).abs() < 1e-9);
    }

    #[test]
    fn clones_share_counts() {
        let h = DurationHistogram::default();
        let c = h.clone();
        c.observe(Duration::from_millis(3));
        assert_eq!(h.count(), 1);
    }
}
