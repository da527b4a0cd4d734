//! Environment-scoped access and break-glass tokens (SPEC §7): PASETO
//! v4.public (Ed25519) signed with a per-environment key, verified offline
//! so proxy replicas share no state.
//!
//! Owns key loading, issuing, verifying (signature, env, identity, time) and
//! the production-tier rules. Keys are PASERK strings: a signing key is
//! `k4.secret.<base64url of seed‖public key, 64 bytes>` (print one with
//! [`generate_key`]), a verification key `k4.public.<base64url, 32 bytes>`
//! ([`TokenKey::public_key`]); a proxy only needs the public key. Uses
//! pasetors and time; never does network IO, never reads the
//! clock (callers pass `now`), never echoes key material.
//!
//! Claims: `iss` = "tierwarden", `sub` = identity, `jti` = random id
//! (16 hex chars), `iat`/`nbf`/`exp` (RFC 3339), and custom `role`, `env`,
//! `reason` (optional).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use pasetors::claims::Claims;
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::FormatAsPaserk;
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use pasetors::Public;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "v4.public.";
/// The `iss` claim of tierwarden tokens.
pub const ISSUER: &str = "tierwarden";
/// Longest life of a production-tier token.
pub const MAX_PRODUCTION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted reason text.
pub const MAX_REASON_LEN: usize = 500;
/// Longest token accepted by [`verify`] (real ones are ~400 bytes).
const MAX_TOKEN_LEN: usize = 4096;
/// Clock skew tolerated for `iat`/`nbf` between issuer and proxy.
const CLOCK_SKEW: time::Duration = time::Duration::seconds(60);

/// Why a key could not be loaded or a token issued or accepted. The proxy
/// shows clients one generic message; these variants are for logs and CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token key is not a PASERK {0} key (expected \"k4.{0}.<base64url>\")")]
    KeyFormat(&'static str),
    #[error("{path}: cannot read token key: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("environment variable {0} holding the token key is not set or not UTF-8")]
    KeyEnv(String),
    #[error("cannot generate a key: {0}")]
    KeyGeneration(String),
    #[error("invalid token request: {0}")]
    InvalidRequest(&'static str),
    #[error("production tokens require a reason (e.g. an incident id)")]
    ReasonRequired,
    #[error("production tokens live at most 24h (requested {requested_secs}s)")]
    TtlTooLong { requested_secs: u64 },
    #[error("cannot sign token: {0}")]
    Sign(String),
    #[error("not a tierwarden token")]
    Malformed,
    #[error("token signature is not valid for this environment's key")]
    BadSignature,
    #[error("token claim {0:?} is missing or invalid")]
    BadClaim(&'static str),
    #[error("token is for environment {found:?}, not {expected:?}")]
    WrongEnv { expected: String, found: String },
    #[error("token was issued to another identity")]
    WrongIdentity,
    #[error("token expired at {0}")]
    Expired(String),
    #[error("token is not valid yet")]
    NotYetValid,
}

/// A signing key (Ed25519 secret key) for one environment.
pub struct TokenKey {
    secret: AsymmetricSecretKey<V4>,
    public: AsymmetricPublicKey<V4>,
}

/// A verification key (Ed25519 public key) for one environment.
#[derive(Clone, PartialEq)]
pub struct TokenPublicKey(AsymmetricPublicKey<V4>);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl fmt::Debug for TokenPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenPublicKey({})", self.to_paserk())
    }
}

fn paserk_string(key: &impl FormatAsPaserk) -> String {
    let mut out = String::new();
    // Writing base64 into a String cannot fail.
    let _ = key.fmt(&mut out);
    out
}

fn read_key_file(path: &Path) -> Result<String, TokenError> {
    std::fs::read_to_string(path).map_err(|e| TokenError::KeyFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn read_key_env(var: &str) -> Result<String, TokenError> {
    std::env::var(var).map_err(|_| TokenError::KeyEnv(var.to_string()))
}

impl FromStr for TokenKey {
    type Err = TokenError;

    /// Parses `k4.secret.…` (surrounding whitespace ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let secret = AsymmetricSecretKey::<V4>::try_from(s.trim())
            .map_err(|_| TokenError::KeyFormat("secret"))?;
        let public = AsymmetricPublicKey::<V4>::try_from(&secret)
            .map_err(|_| TokenError::KeyFormat("secret"))?;
        Ok(TokenKey { secret, public })
    }
}

impl TokenKey {
    /// Loads a signing key from a file holding its PASERK text.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        read_key_file(path)?.parse()
    }

    /// Loads a signing key from an environment variable.
    pub fn from_env(var: &str) -> Result<Self, TokenError> {
        read_key_env(var)?.parse()
    }

    /// The matching verification key.
    pub fn public_key(&self) -> TokenPublicKey {
        TokenPublicKey(self.public.clone())
    }

    /// The PASERK text of the secret key (to store it).
    pub fn to_paserk(&self) -> String {
        paserk_string(&self.secret)
    }
}

impl FromStr for TokenPublicKey {
    type Err = TokenError;

    /// Parses `k4.public.…`, or derives it from `k4.secret.…`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with("k4.secret.") {
            return Ok(s.parse::<TokenKey>()?.public_key());
        }
        AsymmetricPublicKey::<V4>::try_from(s)
            .map(TokenPublicKey)
            .map_err(|_| TokenError::KeyFormat("public"))
    }
}

impl TokenPublicKey {
    /// Loads a verification key (or a signing key) from a file.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        read_key_file(path)?.parse()
    }

    /// Loads a verification key (or a signing key) from an environment variable.
    pub fn from_env(var: &str) -> Result<Self, TokenError> {
        read_key_env(var)?.parse()
    }

    /// The PASERK text (`k4.public.…`).
    pub fn to_paserk(&self) -> String {
        paserk_string(&self.0)
    }
}

/// A new random signing key as PASERK text (`k4.secret.…`).
pub fn generate_key() -> Result<String, TokenError> {
    let pair = AsymmetricKeyPair::<V4>::generate()
        .map_err(|e| TokenError::KeyGeneration(e.to_string()))?;
    Ok(paserk_string(&pair.secret))
}

/// What `tierwarden token issue` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub identity: String,
    pub role: String,
    pub env: String,
    pub ttl: Duration,
    pub reason: Option<String>,
}

/// The verified content of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub identity: String,
    pub role: String,
    pub env: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub reason: Option<String>,
    pub id: String,
}

/// Whether `s` (e.g. a password) is a token rather than a password.
pub fn looks_like_token(s: &str) -> bool {
    s.starts_with(TOKEN_PREFIX)
}

/// Production-tier rules: a non-empty reason and a life of at most 24 h.
pub fn check_production_request(req: &TokenRequest) -> Result<(), TokenError> {
    if req.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(TokenError::ReasonRequired);
    }
    if req.ttl > MAX_PRODUCTION_TTL {
        return Err(TokenError::TtlTooLong {
            requested_secs: req.ttl.as_secs(),
        });
    }
    Ok(())
}

fn rfc3339(t: OffsetDateTime) -> Result<String, TokenError> {
    t.replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or(TokenError::InvalidRequest("time out of range"))
}

fn check_request(req: &TokenRequest) -> Result<(), TokenError> {
    let name_ok = |s: &str| !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control);
    if !name_ok(&req.identity) {
        return Err(TokenError::InvalidRequest(
            "identity must be 1-128 printable characters",
        ));
    }
    if !name_ok(&req.role) {
        return Err(TokenError::InvalidRequest(
            "role must be 1-128 printable characters",
        ));
    }
    if !name_ok(&req.env) {
        return Err(TokenError::InvalidRequest(
            "env must be 1-128 printable characters",
        ));
    }
    if req.ttl < Duration::from_secs(1) {
        return Err(TokenError::InvalidRequest("ttl must be at least 1s"));
    }
    if req
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON_LEN)
    {
        return Err(TokenError::InvalidRequest(
            "reason is longer than 500 bytes",
        ));
    }
    Ok(())
}

/// Signs a token for `req`, issued at `now`. Tier rules are the caller's
/// job (see [`check_production_request`]).
pub fn issue(
    key: &TokenKey,
    req: &TokenRequest,
    now: OffsetDateTime,
) -> Result<String, TokenError> {
    check_request(req)?;
    let ttl = time::Duration::try_from(req.ttl)
        .map_err(|_| TokenError::InvalidRequest("ttl out of range"))?;
    let exp = now
        .checked_add(ttl)
        .ok_or(TokenError::InvalidRequest("ttl out of range"))?;
    let sign_err = |e: pasetors::errors::Error| TokenError::Sign(e.to_string());
    let mut claims = Claims::new().map_err(sign_err)?;
    claims.issuer(ISSUER).map_err(sign_err)?;
    claims.subject(&req.identity).map_err(sign_err)?;
    claims
        .token_identifier(&format!("{:016x}", rand::random::<u64>()))
        .map_err(sign_err)?;
    claims.issued_at(&rfc3339(now)?).map_err(sign_err)?;
    claims.not_before(&rfc3339(now)?).map_err(sign_err)?;
    claims.expiration(&rfc3339(exp)?).map_err(sign_err)?;
    claims
        .add_additional("role", req.role.as_str())
        .map_err(sign_err)?;
    claims
        .add_additional("env", req.env.as_str())
        .map_err(sign_err)?;
    if let Some(reason) = &req.reason {
        claims
            .add_additional("reason", reason.as_str())
            .map_err(sign_err)?;
    }
    let payload = claims.to_string().map_err(sign_err)?;
    PublicToken::sign(&key.secret, payload.as_bytes(), None, None).map_err(sign_err)
}

fn claim_str<'a>(claims: &'a Claims, name: &'static str) -> Result<&'a str, TokenError> {
    claims
        .get_claim(name)
        .and_then(|v| v.as_str())
        .ok_or(TokenError::BadClaim(name))
}

fn claim_time(claims: &Claims, name: &'static str) -> Result<OffsetDateTime, TokenError> {
    OffsetDateTime::parse(claim_str(claims, name)?, &Rfc3339)
        .map_err(|_| TokenError::BadClaim(name))
}

/// Verifies signature, issuer, environment, identity and validity window at
/// `now`; returns the claims.
pub fn verify(
    public_key: &TokenPublicKey,
    token: &str,
    expected_env: &str,
    expected_identity: &str,
    now: OffsetDateTime,
) -> Result<TokenClaims, TokenError> {
    if token.len() > MAX_TOKEN_LEN || !looks_like_token(token) {
        return Err(TokenError::Malformed);
    }
    let untrusted =
        UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
    let trusted = PublicToken::verify(&public_key.0, &untrusted, None, None)
        .map_err(|_| TokenError::BadSignature)?;
    let claims =
        Claims::from_string(trusted.payload()).map_err(|_| TokenError::BadClaim("payload"))?;
    if claim_str(&claims, "iss")? != ISSUER {
        return Err(TokenError::BadClaim("iss"));
    }
    let env = claim_str(&claims, "env")?;
    if env != expected_env {
        return Err(TokenError::WrongEnv {
            expected: expected_env.to_string(),
            found: env.to_string(),
        });
    }
    let identity = claim_str(&claims, "sub")?;
    if identity != expected_identity {
        return Err(TokenError::WrongIdentity);
    }
    let expires_at = claim_time(&claims, "exp")?;
    let issued_at = claim_time(&claims, "iat")?;
    let not_before = claim_time(&claims, "nbf")?;
    if now >= expires_at {
        return Err(TokenError::Expired(rfc3339(expires_at).unwrap_or_default()));
    }
    if now.saturating_add(CLOCK_SKEW) < issued_at.max(not_before) {
        return Err(TokenError::NotYetValid);
    }
    let reason = match claims.get_claim("reason") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or(TokenError::BadClaim("reason"))?
                .to_string(),
        ),
    };
    Ok(TokenClaims {
        identity: identity.to_string(),
        role: claim_str(&claims, "role")?.to_string(),
        env: env.to_string(),
        issued_at,
        expires_at,
        reason,
        id: claim_str(&claims, "jti")?.to_string(),
    })
}
