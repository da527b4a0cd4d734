//! Observability: metrics, the admin HTTP listener, the lock-wait monitor and
//! the connection spike detector (SPEC §5).
//!
//! Owns every exported series and the signals behind them. It may use
//! `prometheus_client`, hyper, tokio, tokio-postgres and rustls (the lock
//! monitor's own connection), and only `crate::observe::...` paths inside the
//! crate. It must never export an identity, a statement text or any other
//! unbounded value as a label, never serve anything on the admin listener but
//! `/metrics`, `/healthz` and `/readyz`, and never make the per-statement
//! path lock.
//! The session maps its own types (policy class, outcome, SQLSTATE) onto the
//! closed label enums of [`labels`].
//!
//! Layout: `labels` (closed label values and label sets) → `histogram`
//! (lock-free duration histogram) → `metrics` (the `Metrics` registry and
//! per-session handles); `spikes` (pure spike detector), `locks` (pure
//! lock-wait tracker + monitor loop that also drives `upstream_up`), `http`
//! (admin listener).

pub mod histogram;
pub mod http;
pub mod labels;
pub mod locks;
pub mod metrics;
pub mod spikes;

pub use http::{serve_admin, AdminState};
pub use labels::{
    AuthFailReason, ClassLabel, ConnOutcome, LockErrorCode, MigrationOutcome, QueryOutcome,
};
pub use locks::{run_monitor, MonitorTarget, SessionLookup};
pub use metrics::{Metrics, SessionMetrics, METRICS_CONTENT_TYPE};
pub use spikes::{SharedSpikeDetector, SpikeConfig, SpikeDetector, SpikeEvent};
