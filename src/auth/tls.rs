//! rustls configuration builders (ring provider) for both sides of the
//! proxy, and the self-signed CA + server certificate used by quickstart and
//! tests.
//!
//! Owns: loading PEM certificates and keys (errors name the file and what is
//! wrong), the client-side `ServerConfig` (TLS 1.2 and 1.3) plus the leaf
//! certificate DER needed for SCRAM channel binding, the upstream
//! `ClientConfig` for each `sslmode`-like setting, and certificate
//! generation with rcgen. Uses the filesystem only; never opens a socket,
//! never performs a handshake (tests do, over in-memory pipes).

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;

/// ALPN protocol name PostgreSQL 17+ uses; offered by the client-side server config.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// What went wrong building a TLS configuration. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read certificate file: {reason}", path.display())]
    CertRead { path: PathBuf, reason: String },
    #[error("{}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: cannot read private key file: {reason}", path.display())]
    KeyRead { path: PathBuf, reason: String },
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: certificate {} is not usable with this key: {reason}", key.display(), cert.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS configuration error: {0}")]
    Config(String),
    #[error("cannot generate certificate: {0}")]
    Generate(String),
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "unknown TLS mode {0:?} (expected disable, prefer, require, verify-ca or verify-full)"
    )]
    UnknownMode(String),
}

/// The process-wide crypto provider (ring), built explicitly, never installed globally.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_reason(err: &rustls_pki_types::pem::Error) -> Option<String> {
    match err {
        rustls_pki_types::pem::Error::NoItemsFound => None,
        rustls_pki_types::pem::Error::Io(e) => Some(e.to_string()),
        other => Some(format!("invalid PEM: {other}")),
    }
}

/// All certificates of a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |e: &rustls_pki_types::pem::Error| match pem_reason(e) {
        Some(reason) => TlsError::CertRead {
            path: path.to_path_buf(),
            reason,
        },
        None => TlsError::NoCertificate {
            path: path.to_path_buf(),
        },
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(&e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match pem_reason(&e) {
        Some(reason) => TlsError::KeyRead {
            path: path.to_path_buf(),
            reason,
        },
        None => TlsError::NoKey {
            path: path.to_path_buf(),
        },
    })
}

/// Client-facing TLS: TLS 1.2 and 1.3, no client certificates, ALPN
/// `postgresql` (clients that send no ALPN are accepted). Returns the config
/// and the leaf certificate DER (input of `scram::tls_server_end_point`).
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Vec<u8>), TlsError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let leaf = certs[0].to_vec();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok((Arc::new(config), leaf))
}

/// How the proxy protects its connection to the upstream database, after
/// libpq's `sslmode` (same names; `allow` is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plain TCP.
    Disable,
    /// Try TLS, fall back to plain TCP when the server answers 'N'; the
    /// certificate is not verified unless a CA file is given (as libpq).
    #[default]
    Prefer,
    /// TLS required, certificate not verified unless a CA file is given
    /// (then as `verify-ca`, as libpq does when a root certificate exists).
    Require,
    /// TLS, certificate chain verified, host name not checked.
    #[serde(alias = "verify_ca")]
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    #[serde(alias = "verify_full")]
    VerifyFull,
}

impl UpstreamTlsMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamTlsMode::Disable => "disable",
            UpstreamTlsMode::Prefer => "prefer",
            UpstreamTlsMode::Require => "require",
            UpstreamTlsMode::VerifyCa => "verify-ca",
            UpstreamTlsMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for UpstreamTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UpstreamTlsMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.replace('_', "-").as_str() {
            "disable" => Ok(UpstreamTlsMode::Disable),
            "prefer" => Ok(UpstreamTlsMode::Prefer),
            "require" => Ok(UpstreamTlsMode::Require),
            "verify-ca" => Ok(UpstreamTlsMode::VerifyCa),
            "verify-full" => Ok(UpstreamTlsMode::VerifyFull),
            _ => Err(TlsError::UnknownMode(s.to_string())),
        }
    }
}

/// Trust anchors from `ca_file`, or the Mozilla roots (webpki-roots).
fn root_store(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::CertRead {
                    path: path.to_path_buf(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(Arc::new(roots))
}

fn webpki_verifier(ca_file: Option<&Path>) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(root_store(ca_file)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Upstream TLS client config for `mode` (None for `Disable`). The caller
/// supplies the server name (host name or IP) at connect time.
pub fn upstream_client_config(
    mode: UpstreamTlsMode,
    ca_file: Option<&Path>,
) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, ca_file) {
        (UpstreamTlsMode::Disable, _) => return Ok(None),
        (UpstreamTlsMode::Prefer | UpstreamTlsMode::Require, None) => {
            Arc::new(NoCertificateCheck::new(provider()))
        }
        (UpstreamTlsMode::Prefer | UpstreamTlsMode::Require | UpstreamTlsMode::VerifyCa, ca) => {
            Arc::new(ChainOnly(webpki_verifier(ca)?))
        }
        (UpstreamTlsMode::VerifyFull, ca) => webpki_verifier(ca)?,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// `require` without a CA: encrypts, accepts any certificate, but still
/// checks that the handshake is signed by the presented certificate's key.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl NoCertificateCheck {
    fn new(provider: Arc<CryptoProvider>) -> Self {
        NoCertificateCheck(provider)
    }
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: full webpki chain verification, host name mismatch ignored.
/// webpki checks the name only after the chain verified, so a name error
/// means the chain is good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Files written by [`generate_self_signed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The CA certificate clients trust (`sslrootcert=`).
    pub ca_cert: PathBuf,
    /// The server certificate (leaf only).
    pub server_cert: PathBuf,
    /// The server private key (PKCS#8 PEM, mode 0600).
    pub server_key: PathBuf,
}

/// Names always in the generated server certificate.
const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Ensures `dir` holds a CA (`ca.crt`) and a server certificate signed by it
/// (`server.crt`, `server.key` mode 0600) valid for `localhost`,
/// `127.0.0.1`, `::1` and `hostnames`. Existing files are reused when they
/// load, chain to `ca.crt` and are valid now for every name; otherwise all
/// three are regenerated (the CA key is never stored).
pub fn generate_self_signed(dir: &Path, hostnames: &[&str]) -> Result<CertPaths, TlsError> {
    let paths = CertPaths {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    let mut names: Vec<String> = Vec::new();
    for name in DEFAULT_NAMES.iter().chain(hostnames) {
        if ServerName::try_from(*name).is_err() {
            return Err(TlsError::Generate(format!(
                "{name:?} is neither a DNS name nor an IP address"
            )));
        }
        if !names.iter().any(|n| n == name) {
            names.push((*name).to_string());
        }
    }
    if existing_certs_valid(&paths, &names) {
        return Ok(paths);
    }
    let (ca_pem, cert_pem, key_pem) = generate_pems(&names)?;
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&paths.server_key, key_pem.as_bytes(), 0o600)?;
    write_file(&paths.server_cert, cert_pem.as_bytes(), 0o644)?;
    write_file(&paths.ca_cert, ca_pem.as_bytes(), 0o644)?;
    Ok(paths)
}

fn existing_certs_valid(paths: &CertPaths, names: &[String]) -> bool {
    let Ok((_, leaf)) = server_config(&paths.server_cert, &paths.server_key) else {
        return false;
    };
    let Ok(verifier) = webpki_verifier(Some(&paths.ca_cert)) else {
        return false;
    };
    let leaf = CertificateDer::from(leaf);
    names.iter().all(|name| {
        ServerName::try_from(name.as_str()).is_ok_and(|server_name| {
            verifier
                .verify_server_cert(&leaf, &[], &server_name, &[], UnixTime::now())
                .is_ok()
        })
    })
}

/// (CA cert PEM, server cert PEM, server key PEM).
fn generate_pems(names: &[String]) -> Result<(String, String, String), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(3650);

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    // A unique name, so two generated CAs never look like the same issuer.
    let ca_name = format!("tierwarden local CA {:08x}", rand::random::<u32>());
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;

    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| TlsError::Generate(format!("invalid host name in {names:?}: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("localhost", |n| n.as_str()),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &ca).map_err(err)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// Writes through a temporary file created with `mode`, then renames, so a
/// key is never readable by others even for an instant.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let werr = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(werr)?;
    file.write_all(contents).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    fs::rename(&tmp, path).map_err(werr)
}
