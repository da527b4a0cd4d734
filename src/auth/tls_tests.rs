//! Tests for the TLS builders: generated files, error messages, and real
//! handshakes over `tokio::io::duplex` for each upstream mode.

use super::*;
use std::os::unix::fs::PermissionsExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Handshake a client config against a server config over an in-memory pipe,
/// exchange one byte each way; returns the peer certificate the client saw.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Vec<u8>, std::io::Error> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from(name.to_string()).unwrap();
    let server_side = async move {
        let mut tls = acceptor.accept(s).await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        tls.write_all(&[b[0] + 1]).await?;
        tls.flush().await?;
        Ok::<_, std::io::Error>(())
    };
    let client_side = async move {
        let mut tls = connector.connect(name, c).await?;
        tls.write_all(&[41]).await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        assert_eq!(b[0], 42);
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        Ok::<_, std::io::Error>(peer)
    };
    let (s, c) = tokio::join!(server_side, client_side);
    let peer = c?;
    s?;
    Ok(peer)
}

#[test]
fn generated_files_load_and_key_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_self_signed(dir.path(), &["db.internal"]).unwrap();
    assert_eq!(paths.ca_cert, dir.path().join("ca.crt"));
    let mode = fs::metadata(&paths.server_key)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let (_, leaf) = server_config(&paths.server_cert, &paths.server_key).unwrap();
    assert_eq!(leaf, load_certs(&paths.server_cert).unwrap()[0].to_vec());
    assert_eq!(load_certs(&paths.ca_cert).unwrap().len(), 1);
    assert!(!dir.path().join("server.tmp").exists());
}

#[test]
fn valid_files_are_reused_and_broken_ones_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_self_signed(dir.path(), &[]).unwrap();
    let before = fs::read(&paths.server_cert).unwrap();
    generate_self_signed(dir.path(), &[]).unwrap();
    assert_eq!(fs::read(&paths.server_cert).unwrap(), before, "reused");
    // A new required name is not covered: regenerate.
    generate_self_signed(dir.path(), &["other.example"]).unwrap();
    let after_name = fs::read(&paths.server_cert).unwrap();
    assert_ne!(after_name, before);
    // Broken key: regenerate.
    fs::write(&paths.server_key, "garbage").unwrap();
    generate_self_signed(dir.path(), &["other.example"]).unwrap();
    assert_ne!(fs::read(&paths.server_cert).unwrap(), after_name);
    server_config(&paths.server_cert, &paths.server_key).unwrap();
}

#[test]
fn invalid_hostname_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = generate_self_signed(dir.path(), &["bad name with spaces"]).unwrap_err();
    assert!(matches!(err, TlsError::Generate(_)), "{err}");
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_self_signed(dir.path(), &[]).unwrap();
    let missing = dir.path().join("nope.crt");
    let err = server_config(&missing, &paths.server_key).unwrap_err();
    assert!(matches!(err, TlsError::CertRead { .. }));
    assert!(err.to_string().contains("nope.crt"), "{err}");

    let empty = dir.path().join("empty.pem");
    fs::write(&empty, "hello\n").unwrap();
    let err = server_config(&empty, &paths.server_key).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    assert!(err.to_string().contains("empty.pem"));

    // A certificate file given as the key.
    let err = server_config(&paths.server_cert, &paths.server_cert).unwrap_err();
    assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
    assert!(err.to_string().contains("server.crt"));

    // Key of another certificate.
    let other = tempfile::tempdir().unwrap();
    let other_paths = generate_self_signed(other.path(), &[]).unwrap();
    let err = server_config(&paths.server_cert, &other_paths.server_key).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

    let err = upstream_client_config(UpstreamTlsMode::VerifyFull, Some(&empty)).unwrap_err();
    assert!(err.to_string().contains("empty.pem"), "{err}");
}

#[test]
fn mode_names() {
    #[derive(serde::Deserialize)]
    struct W {
        m: UpstreamTlsMode,
    }
    for (text, mode) in [
        ("disable", UpstreamTlsMode::Disable),
        ("prefer", UpstreamTlsMode::Prefer),
        ("require", UpstreamTlsMode::Require),
        ("verify-ca", UpstreamTlsMode::VerifyCa),
        ("verify-full", UpstreamTlsMode::VerifyFull),
    ] {
        let w: W = serde_json::from_str(&format!("{{\"m\":\"{text}\"}}")).unwrap();
        assert_eq!(w.m, mode);
        assert_eq!(text.parse::<UpstreamTlsMode>().unwrap(), mode);
        assert_eq!(mode.to_string(), text);
        assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{text}\""));
    }
    let w: W = serde_json::from_str("{\"m\":\"verify_full\"}").unwrap();
    assert_eq!(w.m, UpstreamTlsMode::VerifyFull);
    assert!(serde_json::from_str::<W>("{\"m\":\"allow\"}").is_err());
    assert!("verify".parse::<UpstreamTlsMode>().is_err());
    assert_eq!(UpstreamTlsMode::default(), UpstreamTlsMode::Prefer);
    assert!(upstream_client_config(UpstreamTlsMode::Disable, None)
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn handshakes_per_mode() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_self_signed(dir.path(), &[]).unwrap();
    let (server, leaf) = server_config(&paths.server_cert, &paths.server_key).unwrap();
    let ca = Some(paths.ca_cert.as_path());
    let cfg = |mode, ca| upstream_client_config(mode, ca).unwrap().unwrap();

    // require without CA: anything goes, even a name the cert does not have.
    let peer = handshake(
        server.clone(),
        cfg(UpstreamTlsMode::Require, None),
        "db.example",
    )
    .await
    .unwrap();
    assert_eq!(peer, leaf, "channel-binding leaf is what the client sees");
    handshake(
        server.clone(),
        cfg(UpstreamTlsMode::Prefer, None),
        "x.example",
    )
    .await
    .unwrap();

    // verify-full with our CA, by IP and by name.
    for name in ["127.0.0.1", "localhost", "::1"] {
        handshake(server.clone(), cfg(UpstreamTlsMode::VerifyFull, ca), name)
            .await
            .unwrap();
    }
    // verify-full: wrong name fails; unknown CA (webpki roots) fails.
    let err = handshake(
        server.clone(),
        cfg(UpstreamTlsMode::VerifyFull, ca),
        "db.example",
    )
    .await;
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains("not valid for name"), "{msg}");
    let err = handshake(
        server.clone(),
        cfg(UpstreamTlsMode::VerifyFull, None),
        "localhost",
    )
    .await;
    assert!(err.unwrap_err().to_string().contains("UnknownIssuer"));

    // verify-ca: wrong name accepted, unknown CA refused.
    handshake(
        server.clone(),
        cfg(UpstreamTlsMode::VerifyCa, ca),
        "db.example",
    )
    .await
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    let other_paths = generate_self_signed(other.path(), &[]).unwrap();
    let other_ca = Some(other_paths.ca_cert.as_path());
    let err = handshake(
        server.clone(),
        cfg(UpstreamTlsMode::VerifyCa, other_ca),
        "localhost",
    )
    .await;
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    // require with a CA file behaves like verify-ca (libpq).
    let err = handshake(
        server.clone(),
        cfg(UpstreamTlsMode::Require, other_ca),
        "localhost",
    )
    .await;
    assert!(err.is_err());
}

#[tokio::test]
async fn tls12_only_client_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_self_signed(dir.path(), &[]).unwrap();
    let (server, _) = server_config(&paths.server_cert, &paths.server_key).unwrap();
    let verifier = webpki_verifier(Some(&paths.ca_cert)).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    handshake(server, Arc::new(client), "127.0.0.1")
        .await
        .unwrap();
}

#[test]
fn channel_binding_of_generated_cert_is_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_self_signed(dir.path(), &[]).unwrap();
    let (_, leaf) = server_config(&paths.server_cert, &paths.server_key).unwrap();
    let cb = crate::auth::scram::tls_server_end_point(&leaf);
    assert_eq!(cb, crate::auth::verifier::sha256(&leaf).to_vec());
}
