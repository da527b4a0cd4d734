//! Reuse of upstream sessions (session pooling): when a client ends its
//! session cleanly and idle, its upstream session is reset with
//! `DISCARD ALL` and kept for the next client of the same environment,
//! upstream login and startup settings — as PgBouncer's session mode does.
//! New clients then skip the upstream connect, TLS and SCRAM round trips
//! and the backend fork.
//!
//! As with PgBouncer's `server_idle_timeout` and `server_lifetime`, an
//! idle session is closed after the idle timeout (a sweep checks every
//! few seconds) and a session older than the maximum lifetime is closed
//! instead of being kept, so backends are renewed now and then. The most
//! recently used session is handed out first: its backend's caches and
//! page tables are warm, and the surplus of a past burst ages out. The
//! size bound is per environment and upstream login, across startup
//! settings, so clients that differ only in `application_name` do not
//! each keep a set of backends.
//!
//! Owns: the idle upstream sessions and their reset. Must never: hand a
//! session to another environment, login or set of startup settings, or
//! hand out one whose reset did not end in a clean idle ReadyForQuery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::stream::{MaybeTls, UpstreamStream};
use super::upstream::Upstream;
use crate::protocol::{encode, frame};

/// What an idle upstream session may be reused for.
pub type PoolKey = (Arc<str>, &'static str, Vec<(String, String)>);

/// How many idle sessions are kept, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Idle sessions kept per environment and upstream login, across
    /// startup settings (0: none, every session is closed).
    pub max_per_login: usize,
    /// How long one stays idle before it is closed.
    pub idle_timeout: Duration,
    /// Age (since connect) after which a session is closed, not kept.
    pub max_lifetime: Duration,
}

impl PoolSettings {
    /// The `[proxy]` settings of a configuration.
    pub fn of(p: &crate::config::ProxySettings) -> Self {
        PoolSettings {
            max_per_login: p.upstream_pool_size,
            idle_timeout: Duration::from_millis(p.upstream_idle_timeout_ms),
            max_lifetime: Duration::from_millis(p.upstream_max_lifetime_ms),
        }
    }
}

struct State {
    idle: HashMap<PoolKey, Vec<(Upstream, Instant)>>,
    settings: PoolSettings,
    /// Bumped by every reload: sessions opened under an older
    /// configuration (upstream host, login, password) are not kept.
    generation: u64,
}

/// Idle upstream sessions.
pub struct UpstreamPool {
    state: Mutex<State>,
}

const RESET_TIMEOUT: Duration = Duration::from_secs(2);

fn alive(s: &UpstreamStream) -> bool {
    let tcp = match s {
        MaybeTls::Plain(t) => t,
        MaybeTls::Tls(t) => t.get_ref().0,
    };
    let mut b = [0u8; 1];
    // An idle upstream sends nothing: data or EOF means it is not reusable.
    matches!(tcp.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

impl State {
    /// Whether a session idle since `since` may no longer be handed out.
    fn expired_in(
        settings: &PoolSettings,
        generation: u64,
        up: &Upstream,
        since: Instant,
        now: Instant,
    ) -> bool {
        now.saturating_duration_since(since) >= settings.idle_timeout
            || now.saturating_duration_since(up.born) >= settings.max_lifetime
            || up.generation != generation
    }

    fn expired(&self, up: &Upstream, since: Instant, now: Instant) -> bool {
        Self::expired_in(&self.settings, self.generation, up, since, now)
    }
}

impl UpstreamPool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Self {
        UpstreamPool {
            state: Mutex::new(State {
                idle: HashMap::new(),
                settings,
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration generation a session connected now belongs to
    /// (read before connecting).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Apply reloaded settings: every idle session is closed (it may use
    /// an upstream address or login the new configuration no longer has),
    /// and sessions in use are closed instead of kept when their client
    /// leaves.
    pub fn reconfigure(&self, settings: PoolSettings) {
        let stale = {
            let mut st = self.lock();
            st.settings = settings;
            st.generation += 1;
            st.idle
                .drain()
                .flat_map(|(_, l)| l)
                .map(|(up, _)| up)
                .collect()
        };
        close_all(stale);
    }

    /// An idle session for `key` (the most recently used live one).
    pub fn take(&self, key: &PoolKey) -> Option<Upstream> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut st = self.lock();
            let st = &mut *st;
            let list = st.idle.get_mut(key)?;
            loop {
                match list.pop() {
                    Some((up, since)) => {
                        let fresh =
                            !State::expired_in(&st.settings, st.generation, &up, since, now);
                        if fresh && alive(&up.stream) {
                            break Some(up);
                        }
                        stale.push(up);
                    }
                    None => break None,
                }
            }
        };
        close_all(stale);
        found
    }

    /// Reset `up` in the background and keep it if the reset succeeds
    /// (and it is younger than the maximum lifetime and of the current
    /// configuration).
    pub fn release(self: &Arc<Self>, key: PoolKey, mut up: Upstream) {
        let keep = {
            let st = self.lock();
            let now = Instant::now();
            st.settings.max_per_login > 0 && !st.expired(&up, now, now)
        };
        if !keep {
            tokio::spawn(async move { terminate(&mut up.stream).await });
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            match crate::timers::timeout(RESET_TIMEOUT, reset(&mut up.stream)).await {
                Ok(Ok(())) => pool.keep(key, up),
                _ => terminate(&mut up.stream).await,
            }
        });
    }

    /// Keep `up` idle under `key`. At most `max_per_login` sessions are idle
    /// per environment and upstream login, whatever their startup settings
    /// (clients differing only in `application_name` would otherwise each
    /// keep a set of backends): when that many are idle, the one idle the
    /// longest is closed to make room.
    fn keep(&self, key: PoolKey, up: Upstream) {
        let mut closed = Vec::new();
        {
            let mut st = self.lock();
            let st = &mut *st;
            if st.settings.max_per_login == 0 || up.generation != st.generation {
                closed.push(up);
            } else {
                let same_login = |k: &PoolKey| k.0 == key.0 && k.1 == key.1;
                let idle: usize = st
                    .idle
                    .iter()
                    .filter(|(k, _)| same_login(k))
                    .map(|(_, l)| l.len())
                    .sum();
                if idle >= st.settings.max_per_login {
                    // Each list is in release order: its front is its oldest.
                    let oldest = st
                        .idle
                        .iter()
                        .filter(|(k, l)| same_login(k) && !l.is_empty())
                        .min_by_key(|(_, l)| l[0].1)
                        .map(|(k, _)| k.clone());
                    if let Some(list) = oldest.and_then(|k| st.idle.get_mut(&k)) {
                        closed.push(list.remove(0).0);
                    }
                    st.idle.retain(|_, l| !l.is_empty());
                }
                st.idle.entry(key).or_default().push((up, Instant::now()));
            }
        }
        close_all(closed);
    }

    /// Remove the sessions idle longer than the idle timeout, past the
    /// maximum lifetime, or closed by the server; they are returned for
    /// the caller to close.
    pub fn sweep(&self, now: Instant) -> Vec<Upstream> {
        let mut stale = Vec::new();
        let mut st = self.lock();
        let st = &mut *st;
        for list in st.idle.values_mut() {
            let mut i = 0;
            while i < list.len() {
                let (up, since) = &list[i];
                if State::expired_in(&st.settings, st.generation, up, *since, now)
                    || !alive(&up.stream)
                {
                    stale.push(list.remove(i).0);
                } else {
                    i += 1;
                }
            }
        }
        st.idle.retain(|_, list| !list.is_empty());
        stale
    }

    /// How often `run_sweeper` looks: a quarter of the idle timeout,
    /// between 1 and 30 seconds.
    pub fn sweep_period(&self) -> Duration {
        (self.lock().settings.idle_timeout / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Close expired idle sessions every `sweep_period` until `stop`.
    pub async fn run_sweeper(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = crate::timers::sleep(self.sweep_period()) => {
                    terminate_all(self.sweep(Instant::now())).await;
                }
                () = stop.cancelled() => return,
            }
        }
    }

    /// Number of idle sessions (all keys).
    pub fn idle_count(&self) -> usize {
        self.lock().idle.values().map(Vec::len).sum()
    }

    /// Remove every idle session of the environments `envs` (for the
    /// caller to close).
    pub fn take_idle_of(&self, envs: &[&str]) -> Vec<Upstream> {
        let mut st = self.lock();
        let keys: Vec<PoolKey> = st
            .idle
            .keys()
            .filter(|k| envs.contains(&&*k.0))
            .cloned()
            .collect();
        keys.iter()
            .filter_map(|k| st.idle.remove(k))
            .flatten()
            .map(|(up, _)| up)
            .collect()
    }

    /// Number of idle sessions of one environment.
    pub fn idle_in(&self, env: &str) -> usize {
        let st = self.lock();
        st.idle
            .iter()
            .filter(|(k, _)| &*k.0 == env)
            .map(|(_, l)| l.len())
            .sum()
    }
}

/// Close sessions the pool will not keep, in the background.
fn close_all(ups: Vec<Upstream>) {
    if !ups.is_empty() {
        tokio::spawn(terminate_all(ups));
    }
}

/// Send Terminate to each session and close it, one after the other.
pub async fn terminate_all(ups: Vec<Upstream>) {
    for mut up in ups {
        terminate(&mut up.stream).await;
    }
}

/// Send Terminate and close (best effort).
pub async fn terminate(s: &mut UpstreamStream) {
    let _ = s.write_all(&encode::terminate()).await;
    let _ = s.shutdown().await;
}

/// `DISCARD ALL` and expect exactly its completion and an idle ReadyForQuery.
async fn reset(s: &mut UpstreamStream) -> std::io::Result<()> {
    s.write_all(&encode::query("DISCARD ALL")).await?;
    s.flush().await?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf = BytesMut::with_capacity(256);
    let mut completed = false;
    loop {
        match frame::split_frame(&mut buf).map_err(|e| bad(&e.to_string()))? {
            Some(f) => match f.tag {
                b'C' => completed = f.body().starts_with(b"DISCARD ALL\0"),
                b'S' | b'N' => {}
                b'Z' => {
                    return if completed && f.body() == b"I" && buf.is_empty() {
                        Ok(())
                    } else {
                        Err(bad("reset did not end idle"))
                    }
                }
                _ => return Err(bad("unexpected message during reset")),
            },
            None => {
                if s.read_buf(&mut buf).await? == 0 {
                    return Err(bad("closed during reset"));
                }
            }
        }
    }
}
