//! Client authentication: SCRAM-SHA-256(-PLUS) against the identity's
//! verifier for this environment, or — over TLS only — a cleartext
//! password that is either an environment-scoped token or the password.
//!
//! Owns: the authentication message exchange with the client. May use:
//! `auth` (pure pieces), `protocol`, the runtime. Must never: tell the
//! client whether an identity exists, or accept a cleartext secret over a
//! plaintext connection.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::ClientStream;
use crate::auth::scram::{mechanisms, tls_server_end_point, ScramServer};
use crate::auth::token::{self, TokenClaims};
use crate::auth::verifier::Verifier;
use crate::observe::labels::AuthFailReason;
use crate::policy::{Level, Tier};
use crate::protocol::{encode, frame};
use crate::shared::{EnvRuntime, Runtime, Shared};

/// Largest authentication message accepted.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

/// An authenticated client.
#[derive(Debug, Clone)]
pub struct Login {
    /// Identity name.
    pub identity: String,
    /// Its role.
    pub role: String,
    /// The role's level in this environment.
    pub level: Level,
    /// The token presented, when one was.
    pub token: Option<TokenClaims>,
}

/// Why authentication failed; the client sees one generic message for
/// the credential cases.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// Wrong password, unknown identity, bad token: indistinguishable.
    #[error("password authentication failed for user \"{0}\"")]
    BadCredentials(String, AuthFailReason),
    /// Plaintext connection to a TLS-only environment.
    #[error("environment {0} requires TLS: connect with sslmode=require (or verify-full)")]
    TlsRequired(String),
    /// Too many failures from this peer or for this identity.
    #[error("too many failed authentication attempts; try again later")]
    RateLimited,
    /// The client broke the protocol.
    #[error("invalid authentication message: {0}")]
    Protocol(String),
    /// The connection failed.
    #[error("connection lost during authentication")]
    Io(#[from] std::io::Error),
}

impl AuthFailure {
    /// Label for `tierwarden_auth_failures_total`.
    pub fn reason(&self) -> AuthFailReason {
        match self {
            AuthFailure::BadCredentials(_, r) => *r,
            AuthFailure::TlsRequired(_) => AuthFailReason::TlsRequired,
            AuthFailure::RateLimited => AuthFailReason::RateLimited,
            AuthFailure::Protocol(_) | AuthFailure::Io(_) => AuthFailReason::Protocol,
        }
    }
}

async fn read_password_frame(
    client: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, AuthFailure> {
    loop {
        if let Some((tag, total)) =
            frame::peek_header(buf).map_err(|e| AuthFailure::Protocol(e.to_string()))?
        {
            if tag != b'p' {
                return Err(AuthFailure::Protocol(format!(
                    "expected a password message, got {:?}",
                    tag as char
                )));
            }
            if total > MAX_AUTH_MESSAGE {
                return Err(AuthFailure::Protocol("message too large".into()));
            }
            if buf.len() >= total {
                return Ok(buf.split_to(total).freeze().slice(5..));
            }
        }
        if client.read_buf(buf).await? == 0 {
            return Err(AuthFailure::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn cstr(b: &[u8]) -> Result<(&[u8], &[u8]), AuthFailure> {
    let end = b
        .iter()
        .position(|c| *c == 0)
        .ok_or_else(|| AuthFailure::Protocol("missing terminator".into()))?;
    Ok((&b[..end], &b[end + 1..]))
}

/// Authenticate `user` on `env`.
pub async fn authenticate(
    client: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    env: &EnvRuntime,
    rt: &Runtime,
    shared: &Shared,
    peer: IpAddr,
) -> Result<Login, AuthFailure> {
    let limited = env.cfg.rate_limited();
    // Credentials are per environment, so failures are too.
    let key = format!("{}/{user}", env.name);
    if limited && shared.ratelimit.is_limited(peer, &key, Instant::now()) {
        return Err(AuthFailure::RateLimited);
    }
    let tls = client.is_tls();
    if env.cfg.tls_required() && !tls {
        return Err(AuthFailure::TlsRequired(env.name.to_string()));
    }
    let ident = rt.config.identities.get(user);
    let role = ident.and_then(|i| rt.config.roles.get(&i.role));
    let level = role.map(|r| r.level_in(&env.name)).unwrap_or(Level::None);
    let verifier = ident
        .and_then(|i| i.verifiers.get(&*env.name))
        .and_then(|v| Verifier::from_str(v).ok());
    // Over TLS, identities that may present a token (controlled level, or no
    // verifier here) are asked for a cleartext password.
    let cleartext = tls && ident.is_some() && (level == Level::Controlled || verifier.is_none());
    let result = if cleartext {
        let role_name = ident.map(|i| i.role.as_str());
        cleartext_flow(client, buf, user, role_name, verifier, env).await
    } else {
        scram_flow(client, buf, user, verifier, rt, tls)
            .await
            .map(|()| None)
    };
    match result {
        Ok(token) if ident.is_some() && role.is_some() => {
            if limited {
                shared.ratelimit.record_success(peer, &key, Instant::now());
            }
            Ok(Login {
                identity: user.to_string(),
                role: ident.map(|i| i.role.clone()).unwrap_or_default(),
                level,
                token,
            })
        }
        Ok(_) => Err(AuthFailure::BadCredentials(
            user.into(),
            AuthFailReason::BadCredentials,
        )),
        Err(e) => {
            if limited && matches!(e, AuthFailure::BadCredentials(..)) {
                shared.ratelimit.record_failure(peer, &key, Instant::now());
            }
            Err(e)
        }
    }
}

async fn scram_flow(
    client: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    verifier: Option<Verifier>,
    rt: &Runtime,
    tls: bool,
) -> Result<(), AuthFailure> {
    let binding = match (&rt.tls, tls) {
        (Some((_, der)), true) => Some(tls_server_end_point(der)),
        _ => None,
    };
    let mechs = mechanisms(binding.is_some());
    let mut scram = ScramServer::new(verifier, user, binding);
    client.write_all(&encode::auth_sasl(&mechs)).await?;
    client.flush().await?;
    let body = read_password_frame(client, buf).await?;
    let (mech, rest) = cstr(&body)?;
    if rest.len() < 4 {
        return Err(AuthFailure::Protocol(
            "SASL initial response too short".into(),
        ));
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(AuthFailure::Protocol("SASL initial response length".into()));
    }
    let mech = std::str::from_utf8(mech).map_err(|_| AuthFailure::Protocol("mechanism".into()))?;
    let bad = || AuthFailure::BadCredentials(user.into(), AuthFailReason::BadCredentials);
    let first = scram.client_first(mech, data).map_err(|_| bad())?;
    client.write_all(&encode::auth_sasl_continue(first)).await?;
    client.flush().await?;
    let body = read_password_frame(client, buf).await?;
    let fin = scram.client_final(&body).map_err(|_| bad())?;
    client.write_all(&encode::auth_sasl_final(fin)).await?;
    client.flush().await?;
    Ok(())
}

async fn cleartext_flow(
    client: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    role: Option<&str>,
    verifier: Option<Verifier>,
    env: &EnvRuntime,
) -> Result<Option<TokenClaims>, AuthFailure> {
    client.write_all(&encode::auth_cleartext()).await?;
    client.flush().await?;
    let body = read_password_frame(client, buf).await?;
    let (pw, _) = cstr(&body)?;
    let pw = std::str::from_utf8(pw)
        .map_err(|_| AuthFailure::BadCredentials(user.into(), AuthFailReason::BadCredentials))?;
    if token::looks_like_token(pw) {
        let bad = || AuthFailure::BadCredentials(user.into(), AuthFailReason::BadToken);
        let key = env.token_key.as_ref().ok_or_else(bad)?;
        let claims = token::verify(key, pw, &env.name, user, time::OffsetDateTime::now_utc())
            .map_err(|e| {
                tracing::info!(env = %env.name, identity = user, error = %e, "token rejected");
                bad()
            })?;
        // Signed for this identity and environment, but it must also name
        // the identity's role, and carry a reason in production.
        let reason_ok = env.tier() != Tier::Production
            || claims
                .reason
                .as_deref()
                .is_some_and(|r| !r.trim().is_empty());
        if role != Some(claims.role.as_str()) || !reason_ok {
            tracing::info!(
                env = %env.name,
                identity = user,
                token_role = %claims.role,
                "token rejected: issued for another role, or without the reason production requires"
            );
            return Err(bad());
        }
        return Ok(Some(claims));
    }
    match verifier {
        Some(v) if v.verify_password(pw) => Ok(None),
        _ => Err(AuthFailure::BadCredentials(
            user.into(),
            AuthFailReason::BadCredentials,
        )),
    }
}
