//! Client authentication building blocks: PostgreSQL SCRAM verifiers, the
//! server side of SCRAM-SHA-256(-PLUS), rustls configuration builders,
//! environment-scoped signed tokens and authentication-failure rate limiting.
//!
//! Every submodule is a pure leaf: it may use cryptography crates, serde and
//! the filesystem (to read keys and certificates), but it never opens a
//! socket, never spawns a task and never logs secrets. The session layer
//! drives these pieces and decides what the client is told.

pub mod ratelimit;
pub mod scram;
pub mod tls;
pub mod token;
pub mod verifier;

pub use ratelimit::{AuthRateLimiter, Limited, RateLimitConfig};
pub use scram::{ScramError, ScramServer};
pub use tls::{CertPaths, TlsError, UpstreamTlsMode};
pub use token::{TokenClaims, TokenError, TokenKey, TokenPublicKey, TokenRequest};
pub use verifier::{Verifier, VerifierError};
