//! Reuse of upstream sessions (session pooling): when a client ends its
//! session cleanly and idle, its upstream session is reset with
//! `DISCARD ALL` and kept for the next client of the same environment,
//! upstream login and startup settings — as PgBouncer's session mode does.
//! New clients then skip the upstream connect, TLS and SCRAM round trips
//! and the backend fork.
//!
//! Owns: the idle upstream sessions and their reset. Must never: hand a
//! session to another environment, login or set of startup settings, or
//! hand out one whose reset did not end in a clean idle ReadyForQuery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::{MaybeTls, UpstreamStream};
use super::upstream::Upstream;
use crate::protocol::{encode, frame};

/// What an idle upstream session may be reused for.
pub type PoolKey = (Arc<str>, &'static str, Vec<(String, String)>);

/// Idle upstream sessions.
pub struct UpstreamPool {
    idle: Mutex<HashMap<PoolKey, Vec<(Upstream, Instant)>>>,
    max_per_key: usize,
    idle_timeout: Duration,
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

impl UpstreamPool {
    /// A pool keeping at most `max_per_key` sessions per key for `idle_timeout`.
    pub fn new(max_per_key: usize, idle_timeout: Duration) -> Self {
        UpstreamPool {
            idle: Mutex::new(HashMap::new()),
            max_per_key,
            idle_timeout,
        }
    }

    /// An idle session for `key`, if a live one is there.
    pub fn take(&self, key: &PoolKey) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((up, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout && alive(&up.stream) {
                return Some(up);
            }
        }
        None
    }

    /// Reset `up` in the background and keep it if the reset succeeds.
    pub fn release(self: &Arc<Self>, key: PoolKey, mut up: Upstream) {
        if self.max_per_key == 0 {
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

    fn keep(&self, key: PoolKey, up: Upstream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        list.retain(|(_, since)| since.elapsed() < self.idle_timeout);
        if list.len() < self.max_per_key {
            list.push((up, Instant::now()));
        }
    }

    /// Number of idle sessions (all keys).
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
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
