//! Tests for the authentication rate limiter, with fixed instants.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn brute_forcing_peer_is_limited_while_another_authenticates() {
    let rl = AuthRateLimiter::default();
    let t0 = Instant::now();
    let attacker = ip("203.0.113.9");
    let honest = ip("198.51.100.7");
    // Four failures on four different identities: not yet limited.
    for (i, user) in ["a", "b", "c", "d"].iter().enumerate() {
        assert!(!rl.is_limited(attacker, user, t0 + secs(i as u64)));
        rl.record_failure(attacker, user, t0 + secs(i as u64));
    }
    assert!(!rl.is_limited(attacker, "e", t0 + secs(4)));
    rl.record_failure(attacker, "e", t0 + secs(4));
    // Fifth failure: the peer is locked, whatever identity it tries.
    assert_eq!(rl.check(attacker, "zzz", t0 + secs(5)), Some(Limited::Peer));
    assert!(rl.is_limited(attacker, "a", t0 + secs(5)));
    // Another peer logging in as one of the tried identities is not.
    assert_eq!(rl.check(honest, "a", t0 + secs(5)), None);
    rl.record_success(honest, "a", t0 + secs(5));
    // Lockout lasts 60 s from the fifth failure.
    assert!(rl.is_limited(attacker, "a", t0 + secs(63)));
    assert!(!rl.is_limited(attacker, "a", t0 + secs(64)));
}

#[test]
fn identity_level_limiting_across_peers() {
    let rl = AuthRateLimiter::default();
    let t0 = Instant::now();
    // Ten different peers each fail once for alice (distributed guessing).
    for i in 0..9u8 {
        rl.record_failure(IpAddr::from([10, 0, 0, i]), "alice", t0);
    }
    assert_eq!(rl.check(ip("192.0.2.1"), "alice", t0), None);
    rl.record_failure(ip("10.0.0.99"), "alice", t0);
    assert_eq!(
        rl.check(ip("192.0.2.1"), "alice", t0),
        Some(Limited::Identity)
    );
    assert_eq!(rl.check(ip("192.0.2.1"), "bob", t0), None);
    // A success during lockout does not unlock.
    rl.record_success(ip("192.0.2.1"), "alice", t0 + secs(1));
    assert!(rl.is_limited(ip("192.0.2.1"), "alice", t0 + secs(1)));
    assert!(!rl.is_limited(ip("192.0.2.1"), "alice", t0 + secs(60)));
}

#[test]
fn failures_outside_the_window_do_not_accumulate() {
    let rl = AuthRateLimiter::default();
    let t0 = Instant::now();
    let p = ip("192.0.2.5");
    for i in 0..20u64 {
        // One failure every 15 s: at most 4 in any 60 s window.
        rl.record_failure(p, "u", t0 + secs(i * 15));
        assert!(!rl.is_limited(p, "u", t0 + secs(i * 15)), "at {i}");
    }
}

#[test]
fn success_clears_identity_counter_but_not_peer() {
    let cfg = RateLimitConfig {
        max_failures: 3,
        max_identity_failures: 3,
        ..RateLimitConfig::default()
    };
    let rl = AuthRateLimiter::new(cfg);
    let t0 = Instant::now();
    let p = ip("192.0.2.5");
    rl.record_failure(p, "alice", t0);
    rl.record_failure(p, "alice", t0);
    rl.record_success(p, "mallory", t0); // attacker's own account
    rl.record_success(p, "alice", t0);
    rl.record_failure(ip("192.0.2.6"), "alice", t0);
    rl.record_failure(ip("192.0.2.7"), "alice", t0);
    assert!(
        !rl.is_limited(ip("192.0.2.8"), "alice", t0),
        "identity counter was reset"
    );
    rl.record_failure(p, "carol", t0);
    assert_eq!(
        rl.check(p, "anyone", t0),
        Some(Limited::Peer),
        "peer counter kept"
    );
}

#[test]
fn ipv6_keyed_by_prefix_and_mapped_v4_as_v4() {
    let rl = AuthRateLimiter::default();
    let t0 = Instant::now();
    for i in 1..=5u16 {
        let addr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, i));
        rl.record_failure(addr, "x", t0);
    }
    assert!(rl.is_limited(ip("2001:db8:1:2::ffff"), "y", t0));
    assert!(!rl.is_limited(ip("2001:db8:1:3::1"), "y", t0));
    for _ in 0..5 {
        rl.record_failure(ip("::ffff:192.0.2.44"), "x", t0);
    }
    assert!(rl.is_limited(ip("192.0.2.44"), "y", t0));
}

#[test]
fn long_identities_are_truncated_like_postgres() {
    let rl = AuthRateLimiter::default();
    let t0 = Instant::now();
    let long = "é".repeat(100);
    for i in 0..10u8 {
        rl.record_failure(IpAddr::from([10, 1, 0, i]), &long, t0);
    }
    let other_suffix = format!("{}ézzz", &long[..62]);
    assert!(rl.is_limited(ip("192.0.2.1"), &other_suffix, t0));
}

#[test]
fn memory_is_bounded_and_pruned() {
    let cfg = RateLimitConfig {
        max_entries: 100,
        lockout: secs(300),
        ..RateLimitConfig::default()
    };
    let rl = AuthRateLimiter::new(cfg);
    let t0 = Instant::now();
    for i in 0..1000u32 {
        rl.record_failure(IpAddr::from(i.to_be_bytes()), &format!("user{i}"), t0);
    }
    assert_eq!(rl.tracked(), (100, 100));
    // Once the window has passed, new failures prune the old entries.
    let later = t0 + secs(61);
    rl.record_failure(ip("192.0.2.200"), "new", later);
    assert_eq!(rl.tracked(), (1, 1));
    // Locked entries survive pruning until their lockout ends.
    for _ in 0..5 {
        rl.record_failure(ip("192.0.2.201"), "locked", later);
    }
    rl.prune(later + secs(61));
    assert_eq!(rl.tracked(), (1, 0));
    assert!(rl.is_limited(ip("192.0.2.201"), "x", later + secs(299)));
    rl.prune(later + secs(300));
    assert_eq!(rl.tracked(), (0, 0));
}
