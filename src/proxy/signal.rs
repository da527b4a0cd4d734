//! How the rest of the proxy tells one session to stop.
//!
//! Two requests: *kill* (end now, with the reason stored next to it) and
//! *drain* (the proxy is shutting down: end at the next point where no
//! transaction is open). The relay checks them each time its upstream
//! socket has nothing to read, which is twice per round trip, so a check
//! is two atomic loads and a waker registration without a lock
//! (a `CancellationToken` poll takes two mutexes). Owns: the flags and the
//! one waker of the session task. Must never: lose a request made while
//! the relay was not waiting (flags stay set once set).

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Why a session was killed: stored before [`SessionSignal::kill`], sent
/// to the client in the FATAL that ends it.
pub type KillReason = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// What a session was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// End the session now.
    Kill,
    /// End the session when it is at rest (proxy shutdown).
    Drain,
}

/// The stop requests of one session.
#[derive(Debug, Default)]
pub struct SessionSignal {
    killed: AtomicBool,
    draining: AtomicBool,
    waker: AtomicWaker,
}

impl SessionSignal {
    /// Ask the session to end now (store the reason first).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ask the session to end at its next idle point.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the session was killed.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    fn current(&self, drain_seen: bool) -> Option<Stop> {
        if self.killed.load(Ordering::Acquire) {
            Some(Stop::Kill)
        } else if !drain_seen && self.draining.load(Ordering::Acquire) {
            Some(Stop::Drain)
        } else {
            None
        }
    }

    /// Ready with the pending request; a drain the caller has already
    /// seen (`drain_seen`) is not reported again, a kill always is.
    pub fn poll_stop(&self, cx: &mut Context<'_>, drain_seen: bool) -> Poll<Stop> {
        if let Some(s) = self.current(drain_seen) {
            return Poll::Ready(s);
        }
        self.waker.register(cx.waker());
        // A request between the first look and the registration.
        match self.current(drain_seen) {
            Some(s) => Poll::Ready(s),
            None => Poll::Pending,
        }
    }

    /// The next request, as a future.
    pub async fn stopped(&self, drain_seen: bool) -> Stop {
        std::future::poll_fn(|cx| self.poll_stop(cx, drain_seen)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn kill_and_drain_wake_the_waiting_session() {
        let s = Arc::new(SessionSignal::default());
        let waiting = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.stopped(false).await }
        });
        tokio::task::yield_now().await;
        s.drain();
        assert_eq!(waiting.await.expect("task"), Stop::Drain);
        // a drain already seen is not reported again; a kill is
        let waiting = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.stopped(true).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        s.kill();
        assert_eq!(waiting.await.expect("task"), Stop::Kill);
        assert!(s.is_killed());
        // requests made before anyone waits are kept
        let early = SessionSignal::default();
        early.kill();
        assert_eq!(early.stopped(false).await, Stop::Kill);
    }
}
