//! Server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677)
//! with `tls-server-end-point` channel binding (RFC 5929), as a sans-IO state
//! machine: the session feeds it the SASLInitialResponse and SASLResponse
//! payloads and sends back what it returns.
//!
//! Owns message parsing, nonce handling, gs2/channel-binding rules, proof
//! verification (constant time) and the fake exchange for unknown
//! identities. Uses only `crate::auth::verifier` and hashing crates; never
//! does IO, never panics on client input, never says whether an identity
//! exists: a wrong password and an unknown user end with the same error.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::auth::verifier::{hmac_sha256, sha256, Verifier, DEFAULT_ITERATIONS, SALT_LEN};

#[cfg(test)]
#[path = "scram_tests.rs"]
mod tests;

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel-binding type supported (as PostgreSQL).
pub const CB_TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// Largest client message accepted (PostgreSQL's own messages are < 200 bytes).
const MAX_MESSAGE_LEN: usize = 4096;
/// Random bytes in the server part of the nonce (PostgreSQL uses 18).
const SERVER_NONCE_LEN: usize = 18;

/// Mechanisms to advertise in AuthenticationSASL, PLUS first when the
/// connection is TLS and channel-binding data is available.
pub fn mechanisms(tls_channel_binding: bool) -> Vec<&'static str> {
    if tls_channel_binding {
        vec![SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        vec![SCRAM_SHA_256]
    }
}

/// Why the exchange stopped. `AuthenticationFailed` covers a wrong password
/// and an unknown identity alike; all others are protocol violations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("unsupported SASL mechanism")]
    UnsupportedMechanism,
    #[error("SCRAM-SHA-256-PLUS requires a TLS connection with channel binding")]
    PlusWithoutTls,
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("unsupported SCRAM channel-binding type")]
    UnsupportedChannelBinding,
    #[error("SCRAM channel-binding negotiation error: client selected SCRAM-SHA-256-PLUS without channel binding data, or sent channel binding data with SCRAM-SHA-256")]
    ChannelBindingNegotiation,
    #[error("SCRAM channel-binding downgrade: the client thinks the server does not support channel binding, but it does")]
    Downgrade,
    #[error("SCRAM channel-binding check failed")]
    ChannelBindingMismatch,
    #[error("SCRAM authorization identity is not supported")]
    AuthzidUnsupported,
    #[error("SCRAM nonce does not match")]
    NonceMismatch,
    #[error("SCRAM message received in the wrong state")]
    OutOfOrder,
    #[error("password authentication failed")]
    AuthenticationFailed,
}

impl ScramError {
    /// True for a failed proof (wrong password or unknown identity: answer
    /// 28P01); every other variant is a protocol violation (08P01).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, ScramError::AuthenticationFailed)
    }
}

/// How the client answered the channel-binding question (gs2 header flag).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gs2Flag {
    /// `n`: client does not support channel binding.
    No,
    /// `y`: client supports it but thinks the server does not.
    Yes,
    /// `p=tls-server-end-point`: client uses it.
    Plus,
}

#[derive(Debug)]
enum State {
    Initial,
    FirstSent {
        gs2_header: Vec<u8>,
        flag: Gs2Flag,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Finished,
}

/// One SCRAM exchange on one connection.
pub struct ScramServer {
    verifier: Verifier,
    /// False for an unknown identity: the exchange runs and then fails.
    known: bool,
    channel_binding: Option<Vec<u8>>,
    state: State,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Per-process random key for the salts of unknown identities. Written once,
/// then read-only: it is a constant of this process, not mutable state.
fn mock_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        key
    })
}

/// Deterministic fake salt for an unknown identity, stable within a process.
pub(crate) fn mock_salt(user: &str) -> Vec<u8> {
    hmac_sha256(
        mock_key(),
        &[b"tierwarden-scram-mock-salt", user.as_bytes()],
    )[..SALT_LEN]
        .to_vec()
}

/// A verifier for an unknown identity: the stable mock salt, default
/// iterations and random keys that no password matches. Also use it for the
/// cleartext-password flow (`verify_password`) so that an unknown identity
/// costs the same PBKDF2 work as a known one.
pub fn mock_verifier(user: &str) -> Verifier {
    let mut stored_key = [0u8; 32];
    let mut server_key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut stored_key);
    rand::thread_rng().fill_bytes(&mut server_key);
    Verifier {
        iterations: DEFAULT_ITERATIONS,
        salt: mock_salt(user),
        stored_key,
        server_key,
    }
}

/// Channel-binding data for `tls-server-end-point` (RFC 5929 §4.1): the hash
/// of the server certificate DER, with the certificate's signature hash
/// (SHA-256 when that is MD5, SHA-1, SHA-256 or not recognised, e.g.
/// Ed25519/RSA-PSS; SHA-384/SHA-512 for those signatures, as libpq does).
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha384, Sha512};
    match signature_hash(cert_der) {
        SigHash::Sha384 => Sha384::digest(cert_der).to_vec(),
        SigHash::Sha512 => Sha512::digest(cert_der).to_vec(),
        SigHash::Sha256 => sha256(cert_der).to_vec(),
    }
}

enum SigHash {
    Sha256,
    Sha384,
    Sha512,
}

/// Reads one DER TLV header; returns (tag, content, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, tail) = rest.split_at(n);
        rest = tail;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, tail) = rest.split_at(len);
    Some((tag, content, tail))
}

/// The hash of the certificate's outer signatureAlgorithm.
fn signature_hash(cert_der: &[u8]) -> SigHash {
    const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    let oid = (|| {
        let (_, cert, _) = der_tlv(cert_der)?;
        let (_, _tbs, rest) = der_tlv(cert)?;
        let (_, alg, _) = der_tlv(rest)?;
        let (tag, oid, _) = der_tlv(alg)?;
        (tag == 0x06).then_some(oid)
    })();
    match oid {
        Some(o) if o == SHA384_RSA || o == ECDSA_SHA384 => SigHash::Sha384,
        Some(o) if o == SHA512_RSA || o == ECDSA_SHA512 => SigHash::Sha512,
        _ => SigHash::Sha256,
    }
}

/// Client nonce / saslname sanity: printable ASCII except ','.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Parses the gs2 header; returns (flag, header length including both commas).
fn parse_gs2_header(msg: &str) -> Result<(Gs2Flag, usize), ScramError> {
    let (cb, rest) = msg
        .split_once(',')
        .ok_or(ScramError::Malformed("missing gs2 header"))?;
    let flag = match cb {
        "n" => Gs2Flag::No,
        "y" => Gs2Flag::Yes,
        _ => match cb.strip_prefix("p=") {
            Some(CB_TLS_SERVER_END_POINT) => Gs2Flag::Plus,
            Some(_) => return Err(ScramError::UnsupportedChannelBinding),
            None => return Err(ScramError::Malformed("bad gs2 channel-binding flag")),
        },
    };
    let (authzid, _) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("missing gs2 header"))?;
    if !authzid.is_empty() {
        if authzid.starts_with("a=") {
            return Err(ScramError::AuthzidUnsupported);
        }
        return Err(ScramError::Malformed("bad gs2 authzid"));
    }
    Ok((flag, cb.len() + 1 + authzid.len() + 1))
}

/// Returns the value of attribute `name` at the start of `part` (`name=...`).
fn attr<'a>(part: Option<&'a str>, name: char, what: &'static str) -> Result<&'a str, ScramError> {
    let part = part.ok_or(ScramError::Malformed(what))?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed(what));
    }
    Ok(&part[2..])
}

fn utf8(data: &[u8]) -> Result<&str, ScramError> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))
}

impl ScramServer {
    /// `verifier` None = unknown identity: run a full fake exchange with a
    /// salt derived deterministically from the user name (HMAC with a
    /// per-process random key) so the answer is indistinguishable; it always
    /// fails at the end with [`ScramError::AuthenticationFailed`].
    /// `channel_binding` is the `tls-server-end-point` data when the client
    /// connection is TLS (see [`tls_server_end_point`]), else None.
    pub fn new(verifier: Option<Verifier>, user: &str, channel_binding: Option<Vec<u8>>) -> Self {
        let known = verifier.is_some();
        ScramServer {
            verifier: verifier.unwrap_or_else(|| mock_verifier(user)),
            known,
            channel_binding,
            state: State::Initial,
        }
    }

    /// Handles SASLInitialResponse; returns the server-first-message.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Finished;
            return Err(ScramError::OutOfOrder);
        }
        self.state = State::Finished;
        let mut nonce_bytes = [0u8; SERVER_NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce_bytes);
        let (state, reply) = self.first(mechanism, data, &B64.encode(nonce_bytes))?;
        self.state = state;
        Ok(reply)
    }

    fn first(
        &self,
        mechanism: &str,
        data: &[u8],
        server_nonce: &str,
    ) -> Result<(State, Vec<u8>), ScramError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS => true,
            _ => return Err(ScramError::UnsupportedMechanism),
        };
        if plus && self.channel_binding.is_none() {
            return Err(ScramError::PlusWithoutTls);
        }
        let msg = utf8(data)?;
        let (flag, header_len) = parse_gs2_header(msg)?;
        match (&flag, plus) {
            (Gs2Flag::Plus, false) | (Gs2Flag::No | Gs2Flag::Yes, true) => {
                return Err(ScramError::ChannelBindingNegotiation)
            }
            (Gs2Flag::Yes, false) if self.channel_binding.is_some() => {
                return Err(ScramError::Downgrade)
            }
            _ => {}
        }
        let bare = &msg[header_len..];
        let mut parts = bare.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            return Err(ScramError::Malformed("mandatory extension not supported"));
        }
        // The user name is ignored, as in PostgreSQL: the startup packet's
        // `user` is the identity.
        attr(first, 'n', "missing username attribute")?;
        let client_nonce = attr(parts.next(), 'r', "missing nonce attribute")?;
        if !valid_nonce(client_nonce) {
            return Err(ScramError::Malformed("invalid client nonce"));
        }
        for ext in parts {
            if ext.len() < 2
                || !ext.as_bytes()[0].is_ascii_alphabetic()
                || ext.as_bytes()[1] != b'='
            {
                return Err(ScramError::Malformed("bad attribute"));
            }
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        let state = State::FirstSent {
            gs2_header: msg.as_bytes()[..header_len].to_vec(),
            flag,
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        };
        Ok((state, reply))
    }

    /// Handles the SASLResponse carrying the client-final-message: checks
    /// channel binding, nonce and proof; returns the server-final-message
    /// (`v=<ServerSignature>`) to send with AuthenticationSASLFinal.
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        let State::FirstSent {
            gs2_header,
            flag,
            client_first_bare,
            server_first,
            nonce,
        } = state
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = utf8(data)?;
        let idx = msg
            .rfind(",p=")
            .ok_or(ScramError::Malformed("missing proof attribute"))?;
        let (without_proof, proof) = (&msg[..idx], &msg[idx + 3..]);
        let mut parts = without_proof.split(',');
        let cbind = attr(parts.next(), 'c', "missing channel-binding attribute")?;
        let cbind = B64
            .decode(cbind)
            .map_err(|_| ScramError::Malformed("channel-binding attribute is not base64"))?;
        let mut expected = gs2_header;
        if flag == Gs2Flag::Plus {
            // Checked in client_first: PLUS implies channel-binding data.
            expected.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
        }
        if !bool::from(cbind.ct_eq(&expected)) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let client_nonce = attr(parts.next(), 'r', "missing nonce attribute")?;
        if client_nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        if parts.any(|ext| ext.len() < 2 || ext.as_bytes()[1] != b'=') {
            return Err(ScramError::Malformed("bad attribute"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof is not base64 of 32 bytes"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        let matches = sha256(&client_key).ct_eq(&self.verifier.stored_key);
        if !(bool::from(matches) && self.known) {
            return Err(ScramError::AuthenticationFailed);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }

    /// Whether the exchange completed (successfully or not).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }
}
