//! Timers on a thread of their own, for every runtime of the process.
//!
//! The runtimes that run sessions are built without tokio's time driver:
//! a runtime with timers enabled locks its timer wheel, reads the clock
//! and walks the wheel every time it parks, which is two or three times
//! per transaction on a busy proxy (≈600 instructions for a select-only
//! transaction; see docs/benchmarks.md). Deadlines are rare by
//! comparison — login timeouts, connect timeouts, the idle-in-transaction
//! timer — so they live on one small runtime that does nothing else and
//! wakes the waiting task, wherever it runs, when its deadline passes.
//!
//! Every `Sleep`, `Timeout` and `Interval` of tierwarden is created here
//! (`clippy.toml` refuses `tokio::time::{sleep, timeout, …}` elsewhere),
//! so it works the same on a runtime with or without a time driver. The
//! timer thread starts on first use and lives as long as the process,
//! like tokio's own blocking pool.
//!
//! Owns: the timer thread. Must never: run anything but timers.

use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Instant, Interval, Sleep, Timeout};

static TIMERS: OnceLock<Handle> = OnceLock::new();
static STARTING: Mutex<()> = Mutex::new(());

/// Start the timer thread now (the CLI does, to report a failure as an
/// error instead of a panic at the first deadline). Idempotent.
pub fn start() -> std::io::Result<&'static Handle> {
    if let Some(h) = TIMERS.get() {
        return Ok(h);
    }
    let _one = STARTING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = TIMERS.get() {
        return Ok(h);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("tw-timers".into()) // Linux keeps 15 bytes of a thread name
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(TIMERS.get_or_init(|| handle))
}

fn handle() -> &'static Handle {
    match start() {
        Ok(h) => h,
        // Only when the OS refuses a thread: nothing with a deadline can
        // work then, and the CLI has already reported it at start.
        Err(e) => panic!("tierwarden: cannot start the timer thread: {e}"),
    }
}

/// `tokio::time::sleep`, on the timer thread.
#[allow(clippy::disallowed_methods)]
pub fn sleep(d: Duration) -> Sleep {
    let _on = handle().enter();
    tokio::time::sleep(d)
}

/// `tokio::time::sleep_until`, on the timer thread.
#[allow(clippy::disallowed_methods)]
pub fn sleep_until(deadline: Instant) -> Sleep {
    let _on = handle().enter();
    tokio::time::sleep_until(deadline)
}

/// `tokio::time::timeout`, on the timer thread.
#[allow(clippy::disallowed_methods)]
pub fn timeout<F: IntoFuture>(d: Duration, f: F) -> Timeout<F::IntoFuture> {
    let _on = handle().enter();
    tokio::time::timeout(d, f)
}

/// `tokio::time::timeout_at`, on the timer thread.
#[allow(clippy::disallowed_methods)]
pub fn timeout_at<F: IntoFuture>(deadline: Instant, f: F) -> Timeout<F::IntoFuture> {
    let _on = handle().enter();
    tokio::time::timeout_at(deadline, f)
}

/// `tokio::time::interval_at`, on the timer thread.
#[allow(clippy::disallowed_methods)]
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    let _on = handle().enter();
    tokio::time::interval_at(start, period)
}

/// hyper's timer (header read timeout of the admin listener), on the timer
/// thread: `HyperTimer::default()` for
/// `hyper::server::conn::http1::Builder::timer`.
#[derive(Clone, Debug, Default)]
pub struct HyperTimer(hyper_util::rt::TokioTimer);

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let _on = handle().enter();
        self.0.sleep(d)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let _on = handle().enter();
        self.0.sleep_until(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        let _on = handle().enter();
        self.0.reset(sleep, new_deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy's runtimes have no time driver: every helper must work
    /// there (a plain `tokio::time::sleep` would panic on this runtime).
    #[test]
    fn deadlines_work_on_a_runtime_without_a_time_driver() {
        let rt = crate::cli::session_runtime(1).expect("runtime");
        rt.block_on(async {
            let t0 = Instant::now();
            sleep(Duration::from_millis(20)).await;
            assert!(t0.elapsed() >= Duration::from_millis(20), "slept its time");
            sleep_until(Instant::now() + Duration::from_millis(5)).await;
            let late = timeout(Duration::from_millis(20), std::future::pending::<()>()).await;
            assert!(late.is_err(), "a pending future times out");
            let on_time = timeout(Duration::from_secs(30), async { 7 }).await;
            assert_eq!(on_time.ok(), Some(7));
            let at = timeout_at(Instant::now() + Duration::from_secs(30), async { 8 }).await;
            assert_eq!(at.ok(), Some(8));
            let mut tick = interval_at(Instant::now(), Duration::from_millis(5));
            tick.tick().await;
            tick.tick().await;
            // One timer per session is pushed back before every wait.
            let mut idle = Box::pin(sleep(Duration::from_secs(30)));
            idle.as_mut()
                .reset(Instant::now() + Duration::from_millis(5));
            idle.await;
        });
    }

    #[test]
    fn one_timer_thread_for_the_process() {
        let a = start().expect("timer thread");
        let b = start().expect("timer thread");
        assert_eq!(a.id(), b.id());
        // Visible to operators (`top -H`, /proc) under its name.
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|t| t.ok())
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect();
        assert_eq!(
            names.iter().filter(|n| *n == "tw-timers").count(),
            1,
            "{names:?}"
        );
    }
}
