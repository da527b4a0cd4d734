//! The TLS connector of the test clients (tests/support and the soak load
//! client): tokio-postgres over rustls, trusting only the given CA file.

use std::path::Path;

/// A rustls connector trusting only the CA in `ca` (PEM).
pub fn connector_trusting(ca: &Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for c in tierwarden::auth::tls::load_certs(ca).expect("CA loads") {
        roots.add(c).expect("CA added");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(tierwarden::auth::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(cfg)
}
