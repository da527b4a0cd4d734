//! Connection spike detector (SPEC §5): pure, with the clock passed in.
//!
//! Owns the counting of connection attempts and the spike episode state of
//! one environment. It may use only std. It must never read a clock (callers
//! pass `Instant`s, tests pass synthetic ones), never do IO, and never be
//! called per statement: one call per connection attempt.
//!
//! Model. Attempts are counted in 1-second slots; "the last 10 s" is the
//! sliding sum of the 10 most recent slots (the current, partial second
//! included), and the baseline is the mean 10-s count over the up to 300
//! seconds (30 windows) that precede it. An episode starts when the window
//! count is `> floor` AND `> factor × baseline`. It ends once that condition
//! has been false for a whole window (10 s of "fallen back"), so a rate that
//! hovers at the threshold yields one episode, not a flapping series.
//!
//! Startup. History before the detector was created is unknown, not zero:
//! the baseline is the mean over the complete history seconds observed so
//! far (at most 300), and no episode can start before one full window (10 s)
//! of history exists. Counting missing history as zeros would report any
//! steady load above the floor as a spike during the first minutes after
//! every restart; the price is that a reconnect storm in the first 10 s
//! after start is not reported (it is still visible in
//! `tierwarden_connection_attempts_total`). Quiet periods *after* start are
//! real zeros and count as such.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of the counting window.
pub const WINDOW: Duration = Duration::from_secs(10);
const WINDOW_SECS: u64 = 10;
/// Baseline history: the 30 windows before the current one.
const HISTORY_SECS: u64 = 300;
const SLOTS: usize = (WINDOW_SECS + HISTORY_SECS) as usize;

/// Per-environment thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpikeConfig {
    /// The window count must exceed this (default 50).
    pub floor: u64,
    /// The window count must exceed `factor ×` the baseline mean (default 3.0).
    pub factor: f64,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self {
            floor: 50,
            factor: 3.0,
        }
    }
}

/// What [`SpikeDetector::record_attempt`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpikeEvent {
    /// A new episode started with this attempt (reported once per episode).
    Started {
        /// Attempts in the last 10 s, this one included.
        window_count: u64,
        /// Mean 10-s count of the baseline history.
        baseline: f64,
    },
}

/// Spike state of one environment. Not thread-safe: see [`SharedSpikeDetector`].
#[derive(Debug, Clone)]
pub struct SpikeDetector {
    cfg: SpikeConfig,
    epoch: Instant,
    /// Absolute second (since `epoch`) that `slots` are aligned to.
    current: u64,
    /// `slots[s % SLOTS]` = attempts during second `s`, for the last 310 s.
    slots: Box<[u32; SLOTS]>,
    window_sum: u64,
    history_sum: u64,
    /// `Some(since)` while an episode is active; `since` is when the
    /// condition was last seen true.
    active: Option<Episode>,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    last_true: Instant,
}

impl SpikeDetector {
    /// A detector whose history starts at `now` (pass the process start).
    pub fn new(cfg: SpikeConfig, now: Instant) -> Self {
        Self {
            cfg,
            epoch: now,
            current: 0,
            slots: Box::new([0; SLOTS]),
            window_sum: 0,
            history_sum: 0,
            active: None,
        }
    }

    /// Replace the thresholds (config reload); counts are kept.
    pub fn set_config(&mut self, cfg: SpikeConfig) {
        self.cfg = cfg;
    }

    /// Count one connection attempt at `now`. Returns `Some(Started)` on the
    /// attempt that starts an episode, `None` otherwise (including every
    /// other attempt of a running episode).
    pub fn record_attempt(&mut self, now: Instant) -> Option<SpikeEvent> {
        self.advance(now);
        let idx = (self.current % SLOTS as u64) as usize;
        self.slots[idx] = self.slots[idx].saturating_add(1);
        self.window_sum += 1;
        let spiking = self.condition();
        match (&mut self.active, spiking) {
            (None, Some((window_count, baseline))) => {
                self.active = Some(Episode { last_true: now });
                Some(SpikeEvent::Started {
                    window_count,
                    baseline,
                })
            }
            (Some(ep), Some(_)) => {
                ep.last_true = now;
                None
            }
            (Some(_), None) => {
                self.end_if_quiet(now);
                None
            }
            (None, None) => None,
        }
    }

    /// Whether an episode is running at `now` (advances time; may end it).
    pub fn is_active(&mut self, now: Instant) -> bool {
        self.advance(now);
        if self.active.is_some() && self.condition().is_some() {
            if let Some(ep) = &mut self.active {
                ep.last_true = now;
            }
        } else {
            self.end_if_quiet(now);
        }
        self.active.is_some()
    }

    /// Attempts counted in the last 10 s at the last call.
    pub fn window_count(&self) -> u64 {
        self.window_sum
    }

    fn end_if_quiet(&mut self, now: Instant) {
        if let Some(ep) = self.active {
            if now.saturating_duration_since(ep.last_true) >= WINDOW {
                self.active = None;
            }
        }
    }

    /// `Some((window, baseline))` when the spike condition holds now.
    fn condition(&self) -> Option<(u64, f64)> {
        // Complete seconds observed before the current window.
        let history = self
            .current
            .saturating_sub(WINDOW_SECS - 1)
            .min(HISTORY_SECS);
        if history < WINDOW_SECS {
            return None;
        }
        let baseline = self.history_sum as f64 * WINDOW_SECS as f64 / history as f64;
        let w = self.window_sum;
        (w > self.cfg.floor && w as f64 > self.cfg.factor * baseline).then_some((w, baseline))
    }

    /// Move the ring forward to the second containing `now`.
    fn advance(&mut self, now: Instant) {
        let target = now.saturating_duration_since(self.epoch).as_secs();
        if target <= self.current {
            return; // same second, or a caller's clock went backwards: stay.
        }
        if target - self.current >= SLOTS as u64 {
            // Everything we held is older than 310 s: all of it is gone.
            self.slots.fill(0);
            self.window_sum = 0;
            self.history_sum = 0;
            self.current = target;
            return;
        }
        while self.current < target {
            self.current += 1;
            let s = self.current;
            if s >= WINDOW_SECS {
                // Second s-10 leaves the window and joins the history.
                let v = u64::from(self.slots[((s - WINDOW_SECS) % SLOTS as u64) as usize]);
                self.window_sum -= v;
                self.history_sum += v;
            }
            // Slot of second s still holds second s-310, which leaves the history.
            let idx = (s % SLOTS as u64) as usize;
            if s >= SLOTS as u64 {
                self.history_sum -= u64::from(self.slots[idx]);
            }
            self.slots[idx] = 0;
        }
    }
}

/// Thread-safe wrapper: one mutex per environment, taken once per connection
/// attempt (never per statement). A poisoned lock is recovered: the state is
/// only counters.
#[derive(Debug)]
pub struct SharedSpikeDetector {
    inner: Mutex<SpikeDetector>,
}

impl SharedSpikeDetector {
    /// See [`SpikeDetector::new`].
    pub fn new(cfg: SpikeConfig, now: Instant) -> Self {
        Self {
            inner: Mutex::new(SpikeDetector::new(cfg, now)),
        }
    }

    /// See [`SpikeDetector::record_attempt`]. On `Some`, the caller increments
    /// `tierwarden_connection_spikes_total{env}` and logs one warning.
    pub fn record_attempt(&self, now: Instant) -> Option<SpikeEvent> {
        self.lock().record_attempt(now)
    }

    /// See [`SpikeDetector::is_active`].
    pub fn is_active(&self, now: Instant) -> bool {
        self.lock().is_active(now)
    }

    /// See [`SpikeDetector::set_config`].
    pub fn set_config(&self, cfg: SpikeConfig) {
        self.lock().set_config(cfg);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpikeDetector> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[path = "spikes_tests.rs"]
mod tests;
