//! Authentication-failure rate limiting, keyed by peer address and by
//! identity, with an injected clock (`Instant` passed in) so it is pure and
//! testable without sleeping.
//!
//! Owns the failure counters and lockouts. A peer or an identity that
//! reaches its failure limit within `window` is locked out for `lockout`.
//! IPv6 peers are keyed by their /64 (one host usually owns the whole
//! prefix); IPv4-mapped IPv6 addresses count as IPv4. A success clears the
//! identity's counter but never the peer's, so an attacker cannot reset its
//! own address by logging into an account it owns. Memory is bounded:
//! expired entries are pruned, and beyond `max_entries` new keys are not
//! tracked (fails open for rate limiting only; authentication still runs).
//! Uses only dashmap and std; never reads the clock, never sleeps.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

#[cfg(test)]
#[path = "ratelimit_tests.rs"]
mod tests;

/// Limits. Defaults: 5 failures per peer or 10 per identity within 60 s
/// lock that key out for 60 s; at most 100 000 keys per map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Failures from one peer (IPv4 address / IPv6 /64) before lockout.
    pub max_failures: u32,
    /// Failures for one identity (from any peer) before lockout. Higher
    /// than `max_failures` so that one attacker locks a victim out less easily.
    pub max_identity_failures: u32,
    /// Window in which failures are counted (from the first failure).
    pub window: Duration,
    /// How long a key stays locked once it reached its limit.
    pub lockout: Duration,
    /// Keys tracked per map before new keys are ignored.
    pub max_entries: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            max_failures: 5,
            max_identity_failures: 10,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(60),
            max_entries: 100_000,
        }
    }
}

/// Which key is locked (for logs and metrics; the client is told nothing more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Peer,
    Identity,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

impl Entry {
    fn locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    /// Whether the entry carries no information any more at `now`.
    fn expired(&self, now: Instant, window: Duration) -> bool {
        !self.locked(now) && now.saturating_duration_since(self.window_start) >= window
    }

    fn fail(&mut self, now: Instant, max: u32, window: Duration, lockout: Duration) {
        if self.expired(now, window) {
            *self = Entry::new(now);
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= max && !self.locked(now) {
            self.locked_until = now.checked_add(lockout);
        }
    }

    fn new(now: Instant) -> Self {
        Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
        }
    }
}

/// Longest identity key kept (PostgreSQL truncates names to 63 bytes too).
const MAX_IDENTITY_KEY: usize = 63;
/// Minimum time between two full prunes of a full map.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// Thread-safe failure counters shared by all sessions of a process.
#[derive(Debug)]
pub struct AuthRateLimiter {
    config: RateLimitConfig,
    peers: DashMap<IpAddr, Entry>,
    identities: DashMap<String, Entry>,
    last_prune: Mutex<Option<Instant>>,
}

fn peer_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

fn identity_key(identity: &str) -> &str {
    if identity.len() <= MAX_IDENTITY_KEY {
        return identity;
    }
    let mut end = MAX_IDENTITY_KEY;
    while !identity.is_char_boundary(end) {
        end -= 1;
    }
    &identity[..end]
}

/// Counts a failure for `key` unless the map is full and `key` is new.
fn bump<K: std::hash::Hash + Eq>(
    map: &DashMap<K, Entry>,
    key: K,
    max: u32,
    c: &RateLimitConfig,
    now: Instant,
) {
    if map.len() >= c.max_entries && !map.contains_key(&key) {
        return;
    }
    map.entry(key)
        .or_insert_with(|| Entry::new(now))
        .fail(now, max, c.window, c.lockout);
}

impl Default for AuthRateLimiter {
    fn default() -> Self {
        Self::new(RateLimitConfig::default())
    }
}

impl AuthRateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        AuthRateLimiter {
            config,
            peers: DashMap::new(),
            identities: DashMap::new(),
            last_prune: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Which key, if any, is locked out at `now`.
    pub fn check(&self, peer: IpAddr, identity: &str, now: Instant) -> Option<Limited> {
        if self
            .peers
            .get(&peer_key(peer))
            .is_some_and(|e| e.locked(now))
        {
            return Some(Limited::Peer);
        }
        if self
            .identities
            .get(identity_key(identity))
            .is_some_and(|e| e.locked(now))
        {
            return Some(Limited::Identity);
        }
        None
    }

    /// Whether authentication must be refused without trying it.
    pub fn is_limited(&self, peer: IpAddr, identity: &str, now: Instant) -> bool {
        self.check(peer, identity, now).is_some()
    }

    /// Counts one failed authentication of `identity` from `peer`.
    pub fn record_failure(&self, peer: IpAddr, identity: &str, now: Instant) {
        let c = &self.config;
        let peer = peer_key(peer);
        let identity = identity_key(identity).to_string();
        self.prune_if_full(now);
        bump(&self.peers, peer, c.max_failures, c, now);
        bump(&self.identities, identity, c.max_identity_failures, c, now);
    }

    /// A successful authentication clears the identity's counter (not the
    /// peer's, see the module note). A locked identity stays locked.
    pub fn record_success(&self, _peer: IpAddr, identity: &str, now: Instant) {
        self.identities
            .remove_if(identity_key(identity), |_, e| !e.locked(now));
    }

    /// Drops entries that no longer matter at `now`.
    pub fn prune(&self, now: Instant) {
        let window = self.config.window;
        self.peers.retain(|_, e| !e.expired(now, window));
        self.identities.retain(|_, e| !e.expired(now, window));
    }

    fn prune_if_full(&self, now: Instant) {
        let max = self.config.max_entries;
        if self.peers.len() < max && self.identities.len() < max {
            return;
        }
        {
            let Ok(mut last) = self.last_prune.lock() else {
                return;
            };
            if last.is_some_and(|t| now.saturating_duration_since(t) < PRUNE_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        self.prune(now);
    }

    /// Number of tracked keys (peers, identities).
    pub fn tracked(&self) -> (usize, usize) {
        (self.peers.len(), self.identities.len())
    }
}
