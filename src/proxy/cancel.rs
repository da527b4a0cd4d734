//! Cancel keys: the proxy hands clients its own (pid, secret) and maps them
//! to the upstream backend's key.
//!
//! Owns: the registry and forwarding a CancelRequest upstream. Must never:
//! reveal an upstream key to a client or cancel across environments.

use std::sync::Arc;

use dashmap::DashMap;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where a proxy key leads.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Environment the session belongs to.
    pub env: Arc<str>,
    /// Upstream host.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Upstream backend pid.
    pub pid: i32,
    /// Upstream backend secret.
    pub secret: i32,
}

/// All live sessions' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    keys: DashMap<(i32, i32), CancelTarget>,
}

impl CancelRegistry {
    /// Register a session; returns the proxy key to give the client and a
    /// guard that removes it when the session ends.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> CancelKey {
        let mut rng = rand::thread_rng();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if let dashmap::mapref::entry::Entry::Vacant(v) = self.keys.entry(key) {
                v.insert(target);
                return CancelKey {
                    registry: Arc::clone(self),
                    pid: key.0,
                    secret: key.1,
                };
            }
        }
    }

    /// Look up a key presented on environment `env`.
    pub fn lookup(&self, env: &str, pid: i32, secret: i32) -> Option<CancelTarget> {
        self.keys
            .get(&(pid, secret))
            .filter(|t| &*t.env == env)
            .map(|t| t.clone())
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A registered proxy key; dropping it unregisters the session.
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    /// Proxy pid given to the client.
    pub pid: i32,
    /// Proxy secret given to the client.
    pub secret: i32,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry.keys.remove(&(self.pid, self.secret));
    }
}

/// Send a CancelRequest to the upstream backend (plain TCP, like libpq's
/// PQcancel before PostgreSQL 17). Errors are logged, never returned to
/// the requester, as PostgreSQL does.
pub async fn forward_cancel(t: &CancelTarget) {
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&16i32.to_be_bytes());
    msg.extend_from_slice(&80_877_102i32.to_be_bytes());
    msg.extend_from_slice(&t.pid.to_be_bytes());
    msg.extend_from_slice(&t.secret.to_be_bytes());
    let attempt = async {
        let mut s = TcpStream::connect((t.host.as_str(), t.port)).await?;
        s.write_all(&msg).await?;
        s.shutdown().await
    };
    match crate::timers::timeout(std::time::Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => tracing::debug!(env = %t.env, "cancel forwarded"),
        Ok(Err(e)) => tracing::warn!(env = %t.env, error = %e, "cancel could not be forwarded"),
        Err(_) => tracing::warn!(env = %t.env, "cancel forwarding timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_to_their_environment_and_removed_on_drop() {
        let reg = Arc::new(CancelRegistry::default());
        let key = reg.register(CancelTarget {
            env: "prod".into(),
            host: "127.0.0.1".into(),
            port: 1,
            pid: 42,
            secret: 7,
        });
        assert!(key.pid > 0);
        assert_eq!(
            reg.lookup("prod", key.pid, key.secret).map(|t| t.pid),
            Some(42)
        );
        assert!(reg.lookup("stage", key.pid, key.secret).is_none());
        assert!(reg
            .lookup("prod", key.pid, key.secret.wrapping_add(1))
            .is_none());
        drop(key);
        assert!(reg.is_empty());
    }
}
