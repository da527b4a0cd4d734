//! PostgreSQL SCRAM-SHA-256 password verifiers
//! (`SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`), the
//! exact text stored in `pg_authid.rolpassword` and printed by
//! `tierwarden passwd`.
//!
//! Owns parsing, printing, generating and checking a cleartext password
//! against a verifier (the cleartext-over-TLS flow used for tokens and
//! password auth). Uses only hashing crates and `subtle`; never logs or
//! echoes a password or key material in errors or `Debug` output.
//!
//! SASLprep: PostgreSQL applies SASLprep (RFC 4013) to the password and falls
//! back to the raw bytes when the password is not valid UTF-8 or contains
//! prohibited characters. SASLprep leaves ASCII passwords unchanged, so for
//! them this module is exact. Non-ASCII passwords are used as their raw UTF-8
//! bytes (no NFKC normalisation or space mapping); a verifier made by
//! PostgreSQL for a password that SASLprep would change will not match here.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The mechanism prefix of a PostgreSQL SCRAM verifier.
pub const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";
/// PostgreSQL's default iteration count (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// PostgreSQL's salt length in bytes.
pub const SALT_LEN: usize = 16;

/// Why a verifier string was refused. Never contains the input text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierError {
    #[error("SCRAM verifier must start with \"SCRAM-SHA-256$\"")]
    Prefix,
    #[error("SCRAM verifier must have the form SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")]
    Shape,
    #[error("SCRAM verifier iteration count is not a positive integer")]
    Iterations,
    #[error("SCRAM verifier salt is not valid non-empty base64")]
    Salt,
    #[error("SCRAM verifier StoredKey is not base64 of 32 bytes")]
    StoredKey,
    #[error("SCRAM verifier ServerKey is not base64 of 32 bytes")]
    ServerKey,
}

/// A parsed SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERIFIER_PREFIX}{}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

fn decode_key(text: &str, err: VerifierError) -> Result<[u8; 32], VerifierError> {
    let bytes = B64.decode(text).map_err(|_| err.clone())?;
    bytes.try_into().map_err(|_| err)
}

impl FromStr for Verifier {
    type Err = VerifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(VERIFIER_PREFIX)
            .ok_or(VerifierError::Prefix)?;
        let (params, keys) = rest.split_once('$').ok_or(VerifierError::Shape)?;
        let (iter, salt) = params.split_once(':').ok_or(VerifierError::Shape)?;
        let (stored, server) = keys.split_once(':').ok_or(VerifierError::Shape)?;
        if !iter.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifierError::Iterations);
        }
        let iterations: u32 = iter.parse().map_err(|_| VerifierError::Iterations)?;
        if iterations == 0 {
            return Err(VerifierError::Iterations);
        }
        let salt = B64.decode(salt).map_err(|_| VerifierError::Salt)?;
        if salt.is_empty() {
            return Err(VerifierError::Salt);
        }
        Ok(Verifier {
            iterations,
            salt,
            stored_key: decode_key(stored, VerifierError::StoredKey)?,
            server_key: decode_key(server, VerifierError::ServerKey)?,
        })
    }
}

/// HMAC-SHA-256 of `data` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this constructor cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA-256 accepts keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The password bytes fed to PBKDF2 (see the module note on SASLprep).
fn prepare_password(password: &str) -> &[u8] {
    password.as_bytes()
}

/// (StoredKey, ServerKey) for a password, salt and iteration count.
fn derive_keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(
        prepare_password(password),
        salt,
        iterations.max(1),
        &mut salted,
    );
    let client_key = hmac_sha256(&salted, &[b"Client Key"]);
    let server_key = hmac_sha256(&salted, &[b"Server Key"]);
    (sha256(&client_key), server_key)
}

impl Verifier {
    /// A new verifier for `password` with a random 16-byte salt.
    /// `iterations` of 0 is raised to 1; use [`DEFAULT_ITERATIONS`] normally.
    pub fn generate(password: &str, iterations: u32) -> Verifier {
        let mut salt = vec![0u8; SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::with_salt(password, iterations, salt)
    }

    /// A verifier with a caller-chosen salt (tests, fake exchanges).
    pub fn with_salt(password: &str, iterations: u32, salt: Vec<u8>) -> Verifier {
        let iterations = iterations.max(1);
        let (stored_key, server_key) = derive_keys(password, &salt, iterations);
        Verifier {
            iterations,
            salt,
            stored_key,
            server_key,
        }
    }

    /// Whether `password` matches this verifier (both keys compared in
    /// constant time).
    pub fn verify_password(&self, password: &str) -> bool {
        let (stored, server) = derive_keys(password, &self.salt, self.iterations);
        let ok = stored.ct_eq(&self.stored_key) & server.ct_eq(&self.server_key);
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Produced by postgres-protocol's `scram_sha_256_salt(b"secret", 1..=16)`,
    /// which follows libpq's PQencryptPasswordConn.
    const SECRET_VECTOR: &str = "SCRAM-SHA-256$4096:AQIDBAUGBwgJCgsMDQ4PEA==$8rrDg00OqaiWXJ7p+sCgHEIaBSHY89ZJl3mfIsf32oY=:05L1f+yZbiN8O0AnO40Og85NNRhvzTS57naKRWCcsIA=";

    #[test]
    fn known_vector_parses_verifies_and_round_trips() {
        let v: Verifier = SECRET_VECTOR.parse().unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt, (1..=16).collect::<Vec<u8>>());
        assert!(v.verify_password("secret"));
        assert!(!v.verify_password("Secret"));
        assert!(!v.verify_password(""));
        assert_eq!(v.to_string(), SECRET_VECTOR);
    }

    #[test]
    fn with_salt_reproduces_known_vector() {
        let v = Verifier::with_salt("secret", 4096, (1..=16).collect());
        assert_eq!(v.to_string(), SECRET_VECTOR);
    }

    #[test]
    fn python_vector_other_iterations() {
        // python3: pbkdf2_hmac('sha256', b'pencil', b'saltsaltsaltsalt', 1000) etc.
        let v = Verifier::with_salt("pencil", 1000, b"saltsaltsaltsalt".to_vec());
        assert_eq!(v.to_string(), PY_PENCIL_1000);
        let parsed: Verifier = PY_PENCIL_1000.parse().unwrap();
        assert!(parsed.verify_password("pencil"));
    }

    const PY_PENCIL_1000: &str = "SCRAM-SHA-256$1000:c2FsdHNhbHRzYWx0c2FsdA==$IoawN9TYT5M1TM1S5LXRXcevVKZYaf7cI/SJKoYV2w4=:0oUSjB1ymoNfGcSqOLDiyIXkNNX69IujmVMRpk+KAps=";

    /// Produced by PostgreSQL 15.18 (`ALTER ROLE … PASSWORD '…'`, read back
    /// from pg_authid) for "pencil" and for "pässwörd" (NFC, so SASLprep
    /// leaves it unchanged).
    const PG15_PENCIL: &str = "SCRAM-SHA-256$4096:+7nfkbpjKXcvku6HovV7pw==$TU97Vn8BEWlhW6YKYpDZjA0wisWsbF1mOzXzvntdaCA=:yWRDU6Fiz7R+r4yri1H3Bm3jrs1Gy8ALVqH++BqpAh0=";
    const PG15_UMLAUT: &str = "SCRAM-SHA-256$4096:2rmbo0P9h6q3d8Dmc2sguQ==$1j7UZfP38+HcwZADfoFdxuW8+pbqHpo1N3ou8s+PpLc=:0O6SsHaAAlo67ctLA7lFiCvvTp0OyPUTeU4MFfj1+Xg=";

    #[test]
    fn real_postgres_verifiers() {
        let v: Verifier = PG15_PENCIL.parse().unwrap();
        assert!(v.verify_password("pencil"));
        assert!(!v.verify_password("pencil2"));
        assert_eq!(v.to_string(), PG15_PENCIL);
        let v: Verifier = PG15_UMLAUT.parse().unwrap();
        assert!(v.verify_password("p\u{e4}ssw\u{f6}rd"));
        assert!(!v.verify_password("passwords"));
    }

    #[test]
    fn generate_uses_random_salt_and_default_iterations() {
        let a = Verifier::generate("hunter2", DEFAULT_ITERATIONS);
        let b = Verifier::generate("hunter2", DEFAULT_ITERATIONS);
        assert_eq!(a.iterations, 4096);
        assert_eq!(a.salt.len(), 16);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key);
        assert!(a.verify_password("hunter2") && b.verify_password("hunter2"));
        assert!(!a.verify_password("hunter3"));
        let back: Verifier = a.to_string().parse().unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn agrees_with_postgres_protocol_for_ascii() {
        let text = postgres_protocol::password::scram_sha_256(b"correct horse");
        let v: Verifier = text.parse().unwrap();
        assert!(v.verify_password("correct horse"));
        assert!(!v.verify_password("correct horse "));
    }

    #[test]
    fn malformed_inputs_name_the_part_and_never_echo() {
        let cases: &[(&str, VerifierError)] = &[
            ("", VerifierError::Prefix),
            ("md5abcdef", VerifierError::Prefix),
            ("SCRAM-SHA-256$", VerifierError::Shape),
            ("SCRAM-SHA-256$4096:AAAA", VerifierError::Shape),
            ("SCRAM-SHA-256$4096AAAA$a:b", VerifierError::Shape),
            ("SCRAM-SHA-256$4096:AAAA$ab", VerifierError::Shape),
            ("SCRAM-SHA-256$x:AAAA$a:b", VerifierError::Iterations),
            ("SCRAM-SHA-256$0:AAAA$a:b", VerifierError::Iterations),
            ("SCRAM-SHA-256$-1:AAAA$a:b", VerifierError::Iterations),
            ("SCRAM-SHA-256$+5:AAAA$a:b", VerifierError::Iterations),
            (
                "SCRAM-SHA-256$99999999999:AAAA$a:b",
                VerifierError::Iterations,
            ),
            ("SCRAM-SHA-256$4096:!!!!$a:b", VerifierError::Salt),
            ("SCRAM-SHA-256$4096:$a:b", VerifierError::Salt),
            ("SCRAM-SHA-256$4096:AAAA$AAAA:b", VerifierError::StoredKey),
        ];
        for (input, want) in cases {
            let err = input.parse::<Verifier>().unwrap_err();
            assert_eq!(&err, want, "input {input:?}");
        }
        let good_key = B64.encode([7u8; 32]);
        let bad_server = format!("SCRAM-SHA-256$4096:AAAA${good_key}:c2VjcmV0cGFzc3dvcmQ=");
        let err = bad_server.parse::<Verifier>().unwrap_err();
        assert_eq!(err, VerifierError::ServerKey);
        assert!(!err.to_string().contains("c2VjcmV0cGFzc3dvcmQ"));
    }

    #[test]
    fn debug_redacts_keys() {
        let v: Verifier = SECRET_VECTOR.parse().unwrap();
        let dbg = format!("{v:?}");
        assert!(!dbg.contains("8rrDg") && dbg.contains("redacted"));
    }
}
