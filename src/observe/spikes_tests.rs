//! Tests of `spikes.rs` with synthetic instants.

use super::*;

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

/// Feed `per_sec` attempts per second for seconds `[from, to)`, evenly spread;
/// returns the number of `Started` events.
fn feed(d: &mut SpikeDetector, t0: Instant, from: u64, to: u64, per_sec: u64) -> usize {
    let mut started = 0;
    for s in from..to {
        for i in 0..per_sec {
            let ms = s * 1000 + i * 1000 / per_sec;
            if d.record_attempt(at(t0, ms)).is_some() {
                started += 1;
            }
        }
    }
    started
}

#[test]
fn steady_load_never_spikes() {
    let t0 = Instant::now();
    let mut d = SpikeDetector::new(SpikeConfig::default(), t0);
    // 20/s = 200 per window: far above the floor, but steady.
    assert_eq!(feed(&mut d, t0, 0, 900, 20), 0);
    assert!(!d.is_active(at(t0, 900_000)));
    // Seconds 891..=899 are full, second 900 has not started yet.
    assert_eq!(d.window_count(), 180);
}

#[test]
fn burst_is_one_episode_that_ends_when_rate_falls_back() {
    let t0 = Instant::now();
    let mut d = SpikeDetector::new(SpikeConfig::default(), t0);
    assert_eq!(feed(&mut d, t0, 0, 400, 1), 0); // baseline 10 per window
    assert!(!d.is_active(at(t0, 400_000)));
    // 100/s for 5 s: one episode, reported once.
    assert_eq!(feed(&mut d, t0, 400, 405, 100), 1);
    assert!(d.is_active(at(t0, 405_000)));
    // Back to 1/s: still the same episode while the window drains...
    assert_eq!(feed(&mut d, t0, 405, 412, 1), 0);
    assert!(d.is_active(at(t0, 412_000)));
    // ...and over once the condition has been false for a whole window.
    assert_eq!(feed(&mut d, t0, 412, 440, 1), 0);
    assert!(!d.is_active(at(t0, 440_000)));
}

#[test]
fn first_started_event_carries_window_and_baseline() {
    let t0 = Instant::now();
    let mut d = SpikeDetector::new(SpikeConfig::default(), t0);
    feed(&mut d, t0, 0, 400, 1);
    let mut ev = None;
    for i in 0..200 {
        if let Some(e) = d.record_attempt(at(t0, 400_000 + i)) {
            ev = Some(e);
            break;
        }
    }
    // Window holds seconds 391..=400: 9 earlier attempts plus the burst; the
    // floor (50) is the binding threshold since 3 × 10 = 30 < 50.
    match ev {
        Some(SpikeEvent::Started {
            window_count,
            baseline,
        }) => {
            assert_eq!(window_count, 51);
            assert!((baseline - 10.0).abs() < 1e-9, "baseline {baseline}");
        }
        None => panic!("no spike"),
    }
}

#[test]
fn second_burst_is_a_second_episode() {
    let t0 = Instant::now();
    let mut d = SpikeDetector::new(SpikeConfig::default(), t0);
    feed(&mut d, t0, 0, 400, 1);
    assert_eq!(feed(&mut d, t0, 400, 403, 100), 1);
    assert_eq!(feed(&mut d, t0, 403, 460, 1), 0);
    assert!(!d.is_active(at(t0, 460_000)));
    // The first burst (300 attempts) is now in the baseline: 3 × ~19.5 < 300.
    assert_eq!(feed(&mut d, t0, 460, 463, 100), 1);
    assert!(d.is_active(at(t0, 463_000)));
}

#[test]
fn floor_is_respected_at_low_baseline() {
    let t0 = Instant::now();
    let mut d = SpikeDetector::new(SpikeConfig::default(), t0);
    // 60 s of silence: baseline 0, so only the floor counts.
    for i in 0..50 {
        assert_eq!(d.record_attempt(at(t0, 60_000 + i)), None, "attempt {i}");
    }
    assert!(matches!(
        d.record_attempt(at(t0, 60_050)),
        Some(SpikeEvent::Started {
            window_count: 51,
            ..
        })
    ));
}

#[test]
fn factor_is_respected_above_the_floor() {
    let t0 = Instant::now();
    let cfg = SpikeConfig {
        floor: 50,
        factor: 3.0,
    };
    let mut d = SpikeDetector::new(cfg, t0);
    // Baseline 100 per window: 250 in the last 10 s is over the floor but
    // under 3×, 400 is over both.
    assert_eq!(feed(&mut d, t0, 0, 320, 10), 0);
    assert_eq!(feed(&mut d, t0, 320, 330, 25), 0);
    assert_eq!(feed(&mut d, t0, 330, 340, 40), 1);
}

#[test]
fn hovering_at_the_threshold_does_not_flap() {
    let t0 = Instant::now();
    let mut d = SpikeDetector::new(SpikeConfig::default(), t0);
    feed(&mut d, t0, 0, 60, 0);
    // Alternate 6/s and 4/s: the window swings around the floor of 50.
    let mut started = 0;
    for s in 60..120 {
        let rate = if (s / 3) % 2 == 0 { 7 } else { 3 };
        started += feed(&mut d, t0, s, s + 1, rate);
    }
    assert_eq!(started, 1);
}

#[test]
fn no_episode_before_one_window_of_history() {
    let t0 = Instant::now();
    let mut d = SpikeDetector::new(SpikeConfig::default(), t0);
    // A reconnect storm right after start is not a spike (documented).
    assert_eq!(feed(&mut d, t0, 0, 5, 200), 0);
}

#[test]
fn long_silence_clears_history() {
    let t0 = Instant::now();
    let mut d = SpikeDetector::new(SpikeConfig::default(), t0);
    feed(&mut d, t0, 0, 300, 30); // baseline 300 per window
    assert_eq!(feed(&mut d, t0, 300, 310, 60), 0); // 600 < 900
                                                   // An hour of silence: the old load is forgotten, baseline is 0.
    assert_eq!(feed(&mut d, t0, 3_910, 3_911, 60), 1);
}

#[test]
fn shared_wrapper_counts_across_threads() {
    let t0 = Instant::now();
    let d = std::sync::Arc::new(SharedSpikeDetector::new(SpikeConfig::default(), t0));
    // 60 s of quiet history, then 4 threads × 20 attempts in the same second.
    let started: usize = (0..4)
        .map(|_| {
            let d = std::sync::Arc::clone(&d);
            std::thread::spawn(move || {
                (0..20)
                    .filter(|i| d.record_attempt(at(t0, 60_000 + i)).is_some())
                    .count()
            })
        })
        .map(|h| h.join().unwrap())
        .sum();
    assert_eq!(started, 1);
    assert!(d.is_active(at(t0, 60_500)));
}
