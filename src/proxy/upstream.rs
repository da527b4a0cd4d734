//! Connecting and authenticating to the upstream PostgreSQL.
//!
//! Owns: TCP/TLS connect, the upstream startup packet and the upstream
//! authentication exchange (SCRAM-SHA-256, md5, cleartext, trust) using
//! postgres-protocol. Must never: talk to the client, or let an upstream
//! secret or key escape into an error message.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::{MaybeTls, UpstreamStream};
use crate::auth::tls::UpstreamTlsMode;
use crate::protocol::frame;
use crate::protocol::messages;

/// What the proxy needs to reach one upstream as one user.
pub struct UpstreamTarget<'a> {
    /// Host.
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Database.
    pub database: &'a str,
    /// TLS mode.
    pub sslmode: UpstreamTlsMode,
    /// TLS client config when sslmode is not disable.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Upstream user.
    pub user: &'a str,
    /// Its password, if any.
    pub password: Option<&'a str>,
    /// Connect + authenticate deadline.
    pub timeout: Duration,
}

impl<'a> UpstreamTarget<'a> {
    /// The upstream of `env` as `login`.
    pub fn new(
        env: &'a crate::shared::EnvRuntime,
        login: &'a crate::shared::UpstreamLogin,
        timeout: Duration,
    ) -> Self {
        UpstreamTarget {
            host: &env.cfg.upstream.host,
            port: env.cfg.upstream.port,
            database: &env.cfg.upstream.database,
            sslmode: env.cfg.upstream.sslmode,
            tls: env.upstream_tls.clone(),
            user: &login.user,
            password: login.password.as_deref(),
            timeout,
        }
    }
}

/// Upstream connection failures. Messages never include secrets.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("cannot connect to upstream {0}: {1}")]
    Connect(String, std::io::Error),
    /// IO failed during startup.
    #[error("upstream connection failed during startup: {0}")]
    Io(#[from] std::io::Error),
    /// TLS negotiation failed or was refused where required.
    #[error("upstream TLS: {0}")]
    Tls(String),
    /// The upstream refused the login or the startup.
    #[error("upstream refused the session: {code} {message}")]
    Refused {
        /// SQLSTATE.
        code: String,
        /// Server message.
        message: String,
    },
    /// The upstream asked for something the proxy does not do.
    #[error("upstream protocol: {0}")]
    Protocol(String),
    /// Deadline passed.
    #[error("upstream did not complete startup in time")]
    Timeout,
}

/// An authenticated upstream session, ready for queries.
pub struct Upstream {
    /// The stream.
    pub stream: UpstreamStream,
    /// ParameterStatus frames as received, to replay to the client.
    pub parameter_frames: Vec<Bytes>,
    /// Upstream backend pid.
    pub pid: i32,
    /// Upstream backend secret.
    pub secret: i32,
    /// When the connection was opened (the pool's maximum lifetime).
    pub born: std::time::Instant,
    /// The pool's configuration generation when it was opened
    /// (`UpstreamPool::generation`; reloads make older ones unpoolable).
    pub generation: u64,
}

/// Connect, negotiate TLS, start up and authenticate.
pub async fn connect(
    t: &UpstreamTarget<'_>,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    match crate::timers::timeout(t.timeout, connect_inner(t, params)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout),
    }
}

async fn connect_inner(
    t: &UpstreamTarget<'_>,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let addr = format!("{}:{}", t.host, t.port);
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| UpstreamError::Connect(addr.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = negotiate_tls(tcp, t).await?;
    let mut buf = BytesMut::new();
    let mut all: Vec<(&str, &str)> = vec![("user", t.user), ("database", t.database)];
    all.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(all, &mut buf)?;
    stream.write_all(&buf).await?;
    // One buffer for the whole startup: PostgreSQL sends AuthenticationOk,
    // ParameterStatus, BackendKeyData and ReadyForQuery in one packet.
    let mut buf = BytesMut::new();
    authenticate(&mut stream, &mut buf, t).await?;
    finish_startup(stream, buf).await
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    t: &UpstreamTarget<'_>,
) -> Result<UpstreamStream, UpstreamError> {
    let cfg = match (&t.sslmode, &t.tls) {
        (UpstreamTlsMode::Disable, _) | (_, None) => return Ok(MaybeTls::Plain(tcp)),
        (_, Some(cfg)) => Arc::clone(cfg),
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let answer = tcp.read_u8().await?;
    if answer != b'S' {
        if t.sslmode == UpstreamTlsMode::Prefer {
            return Ok(MaybeTls::Plain(tcp));
        }
        return Err(UpstreamError::Tls(format!(
            "upstream {}:{} does not accept TLS but sslmode requires it",
            t.host, t.port
        )));
    }
    let name = ServerName::try_from(t.host.to_string())
        .map_err(|_| UpstreamError::Tls(format!("invalid server name {}", t.host)))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(MaybeTls::Tls(Box::new(tls)))
}

/// Read one complete backend message into `buf` and parse it.
async fn read_message(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
) -> Result<(u8, Bytes), UpstreamError> {
    loop {
        if let Some(f) =
            frame::split_frame(buf).map_err(|e| UpstreamError::Protocol(e.to_string()))?
        {
            return Ok((f.tag, f.bytes));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn refused(frame: &[u8]) -> UpstreamError {
    match messages::error_fields(&frame[5..]) {
        Ok(e) => UpstreamError::Refused {
            code: e.code,
            message: e.message,
        },
        Err(e) => UpstreamError::Protocol(e.to_string()),
    }
}

async fn authenticate(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    t: &UpstreamTarget<'_>,
) -> Result<(), UpstreamError> {
    let mut scram: Option<ScramSha256> = None;
    let password = || {
        t.password.map(str::as_bytes).ok_or_else(|| {
            UpstreamError::Protocol(format!(
                "upstream asks a password for {} but none is configured (set password_env or password_file)",
                t.user
            ))
        })
    };
    loop {
        let (tag, frame) = read_message(stream, buf).await?;
        if tag == b'E' {
            return Err(refused(&frame));
        }
        let mut fb = BytesMut::from(&frame[..]);
        let msg = Message::parse(&mut fb)?
            .ok_or_else(|| UpstreamError::Protocol("truncated message".into()))?;
        let mut out = BytesMut::new();
        match msg {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?, &mut out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    t.user.as_bytes(),
                    password()?,
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechs = body.mechanisms();
                let mut has = false;
                while let Some(m) = mechs.next()? {
                    has |= m == SCRAM_SHA_256;
                }
                if !has {
                    return Err(UpstreamError::Protocol(
                        "upstream offers no SCRAM-SHA-256".into(),
                    ));
                }
                let s = ScramSha256::new(password()?, ChannelBinding::unrequested());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("unexpected SASL continue".into()))?;
                s.update(body.data())?;
                frontend::sasl_response(s.message(), &mut out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("unexpected SASL final".into()))?;
                s.finish(body.data())?;
                continue;
            }
            _ => {
                return Err(UpstreamError::Protocol(format!(
                    "unsupported upstream authentication request (message {:?})",
                    tag as char
                )))
            }
        }
        stream.write_all(&out).await?;
    }
}

async fn finish_startup(
    mut stream: UpstreamStream,
    mut buf: BytesMut,
) -> Result<Upstream, UpstreamError> {
    let mut parameter_frames = Vec::new();
    let mut key = None;
    loop {
        let (tag, frame) = read_message(&mut stream, &mut buf).await?;
        match tag {
            b'S' => parameter_frames.push(frame),
            b'K' => {
                key = Some(
                    messages::backend_key(&frame[5..])
                        .map_err(|e| UpstreamError::Protocol(e.to_string()))?,
                )
            }
            b'E' => return Err(refused(&frame)),
            b'N' => {}
            b'Z' => break,
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    other as char
                )))
            }
        }
    }
    if !buf.is_empty() {
        return Err(UpstreamError::Protocol(
            "upstream sent data before the first query".into(),
        ));
    }
    let (pid, secret) =
        key.ok_or_else(|| UpstreamError::Protocol("upstream sent no BackendKeyData".into()))?;
    Ok(Upstream {
        stream,
        parameter_frames,
        pid,
        secret,
        born: std::time::Instant::now(),
        generation: 0,
    })
}
