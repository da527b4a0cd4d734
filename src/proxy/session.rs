//! One client session, as a sequence of phases: startup (TLS negotiation,
//! cancel requests) → authentication → admission (level, limits, startup
//! settings) → upstream connect → relay → end.
//!
//! Owns: the phase order and what the client is told when a phase fails.
//! May use: every proxy submodule, `auth`, `policy`, `observe`, `audit`.
//! Must never: block the runtime, panic on client input, or let an
//! upstream key or secret reach the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::admission::{self, Admitted};
use super::cancel::{self, CancelTarget};
use super::client_auth::{self, AuthFailure};
use super::relay;
use super::stream::{ClientStream, MaybeTls};
use crate::audit::{AuditRecord, EventKind, Outcome};
use crate::observe::labels::ConnOutcome;
use crate::protocol::encode::{self, Severity};
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, StartupPacket};
use crate::shared::{EnvRuntime, Runtime, Shared};

/// A session-ending error to report to the client as FATAL.
#[derive(Debug)]
pub struct Fatal {
    /// SQLSTATE.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Hint.
    pub hint: Option<String>,
}

impl Fatal {
    /// A FATAL without hint.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Fatal {
            code,
            message: message.into(),
            hint: None,
        }
    }
    /// The frame.
    pub fn frame(&self) -> Bytes {
        encode::error(
            Severity::Fatal,
            self.code,
            &self.message,
            self.hint.as_deref(),
        )
    }
}

/// The startup packet's outcome.
enum Opening {
    Startup(ClientStream, u16, Vec<(String, String)>),
    Done,
}

/// Serve one accepted connection until it ends. Never panics on input.
pub async fn run(sock: TcpStream, peer: SocketAddr, env_name: Arc<str>, shared: Arc<Shared>) {
    let _ = sock.set_nodelay(true);
    let rt = shared.runtime.load_full();
    let Some(env) = rt.envs.get(&*env_name).cloned() else {
        return;
    };
    let timeout = Duration::from_millis(rt.config.proxy.startup_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut client, minor, params) =
        match crate::timers::timeout_at(deadline, open(sock, &env, &rt, &shared)).await {
            Ok(Ok(Opening::Startup(c, minor, p))) => (c, minor, p),
            Ok(Ok(Opening::Done)) => return,
            Ok(Err(e)) => {
                tracing::debug!(env = %env.name, %peer, error = %e, "startup failed");
                return;
            }
            Err(_) => {
                tracing::info!(env = %env.name, %peer, "client did not finish startup in time");
                return;
            }
        };
    let login = crate::timers::timeout_at(
        deadline,
        login(&mut client, &params, peer, &env, &rt, &shared),
    );
    let admitted = match login.await {
        Ok(Ok(a)) => a,
        Ok(Err(fatal)) => {
            let _ = client.write_all(&fatal.frame()).await;
            let _ = client.flush().await;
            let _ = client.shutdown().await;
            return;
        }
        Err(_) => {
            let f = Fatal::new(sqlstate::CANNOT_CONNECT_NOW, "authentication timed out");
            let _ = client.write_all(&f.frame()).await;
            let _ = client.flush().await;
            return;
        }
    };
    connected(client, minor, params, admitted, peer, env, rt, shared).await;
}

async fn open(
    mut sock: TcpStream,
    env: &EnvRuntime,
    rt: &Runtime,
    shared: &Shared,
) -> std::io::Result<Opening> {
    // At most SSLRequest/GSSENCRequest answered 'N', then the real packet;
    // after a TLS handshake the rest happens in `open_tls`.
    for _ in 0..3 {
        let packet = match read_startup(&mut sock).await {
            Ok(p) => p,
            Err(e) => {
                let f = Fatal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()).frame();
                sock.write_all(&f).await?;
                return Ok(Opening::Done);
            }
        };
        match packet {
            StartupPacket::SslRequest => match &rt.tls {
                Some((cfg, _)) => {
                    sock.write_all(b"S").await?;
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(cfg));
                    let tls = acceptor.accept(sock).await?;
                    return open_tls(MaybeTls::Tls(Box::new(tls)), env, shared).await;
                }
                None => sock.write_all(b"N").await?,
            },
            StartupPacket::GssEncRequest => sock.write_all(b"N").await?,
            StartupPacket::Cancel { pid, secret } => {
                if let Some(t) = shared.cancels.lookup(&env.name, pid, secret) {
                    cancel::forward_cancel(&t).await;
                }
                return Ok(Opening::Done);
            }
            StartupPacket::Startup { minor, params } => {
                return Ok(Opening::Startup(MaybeTls::Plain(sock), minor, params));
            }
        }
    }
    Ok(Opening::Done)
}

async fn open_tls(
    mut c: ClientStream,
    env: &EnvRuntime,
    shared: &Shared,
) -> std::io::Result<Opening> {
    match read_startup(&mut c).await {
        Ok(StartupPacket::Startup { minor, params }) => Ok(Opening::Startup(c, minor, params)),
        Ok(StartupPacket::Cancel { pid, secret }) => {
            if let Some(t) = shared.cancels.lookup(&env.name, pid, secret) {
                cancel::forward_cancel(&t).await;
            }
            // End TLS with close_notify as PostgreSQL does: libpq 17+
            // (PQcancelCreate) sends cancels over TLS and treats a bare TCP
            // close as "SSL error: unexpected eof".
            let _ = c.shutdown().await;
            Ok(Opening::Done)
        }
        Ok(_) => {
            let f = Fatal::new(
                sqlstate::PROTOCOL_VIOLATION,
                "unexpected negotiation request inside TLS",
            );
            c.write_all(&f.frame()).await?;
            c.flush().await?;
            Ok(Opening::Done)
        }
        Err(e) => {
            let f = Fatal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string());
            c.write_all(&f.frame()).await?;
            c.flush().await?;
            Ok(Opening::Done)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StartupReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Packet(#[from] startup::StartupError),
}

async fn read_startup(
    s: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
) -> Result<StartupPacket, StartupReadError> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await?;
    let len = startup::packet_len(header)?;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok(startup::decode(&body)?)
}

async fn login(
    client: &mut ClientStream,
    params: &[(String, String)],
    peer: SocketAddr,
    env: &Arc<EnvRuntime>,
    rt: &Runtime,
    shared: &Shared,
) -> Result<Admitted, Fatal> {
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Fatal::new(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?;
    admission::precheck(params, env)?;
    let mut buf = BytesMut::new();
    let metrics = &shared.metrics;
    match client_auth::authenticate(client, &mut buf, &user, env, rt, shared, peer.ip()).await {
        Ok(login) => admission::admit(login, params, env, rt, shared),
        Err(e) => {
            let outcome = if matches!(e, AuthFailure::RateLimited) {
                ConnOutcome::Limited
            } else {
                ConnOutcome::AuthFailed
            };
            metrics.connection_attempt(&env.name, outcome);
            metrics.auth_failure(&env.name, e.reason());
            audit_auth_failure(shared, env, &user, peer, &e);
            let code = match e {
                AuthFailure::TlsRequired(_) => sqlstate::INVALID_AUTHORIZATION,
                AuthFailure::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
                _ => sqlstate::INVALID_PASSWORD,
            };
            Err(Fatal::new(code, e.to_string()))
        }
    }
}

fn audit_auth_failure(
    shared: &Shared,
    env: &EnvRuntime,
    user: &str,
    peer: SocketAddr,
    e: &AuthFailure,
) {
    if let Some(a) = &shared.audit {
        let mut r = AuditRecord::new(EventKind::AuthFailure, &*env.name, user, Outcome::Denied);
        r.peer = Some(peer.to_string());
        r.detail = Some(e.to_string());
        let _ = a.log(r);
    }
}

#[allow(clippy::too_many_arguments)]
async fn connected(
    mut client: ClientStream,
    minor: u16,
    params: Vec<(String, String)>,
    admitted: Admitted,
    peer: SocketAddr,
    env: Arc<EnvRuntime>,
    rt: Arc<Runtime>,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    let up = match admission::connect_upstream(&admitted, &env, &rt, &shared).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(env = %env.name, error = %e, "upstream connection failed");
            shared
                .metrics
                .connection_attempt(&env.name, ConnOutcome::Refused);
            let f = Fatal {
                code: sqlstate::CONNECTION_FAILURE,
                message: format!(
                    "tierwarden: the database of environment {} is not available",
                    env.name
                ),
                hint: Some(
                    "the proxy could not open an upstream session; see the proxy log".into(),
                ),
            };
            let _ = client.write_all(&f.frame()).await;
            return;
        }
    };
    shared
        .metrics
        .connection_attempt(&env.name, ConnOutcome::Accepted);
    let key = shared.cancels.register(CancelTarget {
        env: Arc::clone(&env.name),
        host: env.cfg.upstream.host.clone(),
        port: env.cfg.upstream.port,
        pid: up.pid,
        secret: up.secret,
    });
    let mut hello = BytesMut::new();
    if minor > 0 || params.iter().any(|(k, _)| k.starts_with("_pq_.")) {
        let unsupported = params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect();
        hello.extend_from_slice(&encode::negotiate_protocol(unsupported));
    }
    hello.extend_from_slice(&encode::auth_ok());
    for f in &up.parameter_frames {
        hello.extend_from_slice(f);
    }
    if let Some(w) = &admitted.warning {
        hello.extend_from_slice(&encode::warning(w));
    }
    hello.extend_from_slice(&encode::backend_key(key.pid, key.secret));
    hello.extend_from_slice(&encode::ready(b'I'));
    if client.write_all(&hello).await.is_err() || client.flush().await.is_err() {
        return;
    }
    admission::audit_connect(&shared, &env, &admitted, peer);
    let (end, reusable) = relay::run(client, up, &admitted, &env, &rt, &shared).await;
    drop(key);
    if let Some(up) = reusable {
        shared
            .pool
            .release(admission::pool_key(&admitted, &env), up);
    }
    admission::audit_disconnect(&shared, &env, &admitted, peer, started.elapsed(), &end);
}
