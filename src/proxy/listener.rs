//! Accept loops: one listener per served environment.
//!
//! Owns: accepting, the process-wide connection cap, counting connection
//! attempts for the spike detector, and spawning sessions onto a task
//! tracker so shutdown can wait for them. Must never: read from a client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::session;
use crate::observe::labels::ConnOutcome;
use crate::observe::spikes::SpikeEvent;
use crate::protocol::encode::{self, Severity};
use crate::protocol::sqlstate;
use crate::shared::Shared;

/// Accept clients of `env` until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    env: Arc<str>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (mut sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(env = %env, error = %e, "accept failed; backing off");
                crate::timers::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(state) = shared.state(&env) {
            if let Some(SpikeEvent::Started { window_count, .. }) =
                state.spikes.record_attempt(Instant::now())
            {
                shared.metrics.spike(&env);
                tracing::warn!(env = %env, attempts_10s = window_count, "connection spike started");
            }
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            shared
                .metrics
                .connection_attempt(&env, ConnOutcome::Refused);
            tasks.spawn(async move {
                let f = encode::error(
                    Severity::Fatal,
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "tierwarden: sorry, too many clients already",
                    None,
                );
                let _ = sock.write_all(&f).await;
            });
            continue;
        };
        let (env, shared) = (Arc::clone(&env), Arc::clone(&shared));
        tasks.spawn(async move {
            session::run(sock, peer, env, shared).await;
            drop(permit);
        });
    }
}
