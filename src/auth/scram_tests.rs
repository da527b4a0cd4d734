//! Tests for the SCRAM server: RFC 7677 vector with a fixed nonce, full
//! exchanges against postgres-protocol's client, and malformed input.

use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

const CB: &[u8] = &[0xab; 32];

fn verifier(password: &str) -> Verifier {
    Verifier::with_salt(password, 16, b"0123456789abcdef".to_vec())
}

/// Runs a full exchange; returns the server's error or the client's check
/// of the server signature.
fn exchange(
    server: &mut ScramServer,
    mechanism: &str,
    password: &str,
    cb: ChannelBinding,
) -> Result<(), ScramError> {
    let mut client = ScramSha256::new(password.as_bytes(), cb);
    let first = server.client_first(mechanism, client.message())?;
    client.update(&first).unwrap();
    let last = server.client_final(client.message())?;
    client
        .finish(&last)
        .expect("client rejects server signature");
    Ok(())
}

#[test]
fn rfc7677_vector_with_fixed_nonce() {
    let v = Verifier::with_salt(
        "pencil",
        4096,
        B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
    );
    let mut server = ScramServer::new(Some(v), "user", None);
    let (state, reply) = server
        .first(
            SCRAM_SHA_256,
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
    assert_eq!(
        reply,
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );
    server.state = state;
    let last = server
        .client_final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        .unwrap();
    assert_eq!(last, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    assert!(server.is_finished());
}

#[test]
fn mechanisms_put_plus_first() {
    assert_eq!(
        mechanisms(true),
        vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    );
    assert_eq!(mechanisms(false), vec!["SCRAM-SHA-256"]);
}

#[test]
fn correct_password_without_tls() {
    for cb in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
        let mut s = ScramServer::new(Some(verifier("s3cret")), "alice", None);
        assert_eq!(exchange(&mut s, SCRAM_SHA_256, "s3cret", cb), Ok(()));
    }
}

#[test]
fn correct_password_with_channel_binding() {
    let mut s = ScramServer::new(Some(verifier("s3cret")), "alice", Some(CB.to_vec()));
    let cb = ChannelBinding::tls_server_end_point(CB.to_vec());
    assert_eq!(exchange(&mut s, SCRAM_SHA_256_PLUS, "s3cret", cb), Ok(()));
}

#[test]
fn plain_scram_over_tls_without_binding_support_is_allowed() {
    // "n,,": a client that cannot do channel binding (e.g. built without it).
    let mut s = ScramServer::new(Some(verifier("pw")), "alice", Some(CB.to_vec()));
    assert_eq!(
        exchange(&mut s, SCRAM_SHA_256, "pw", ChannelBinding::unsupported()),
        Ok(())
    );
}

#[test]
fn wrong_password_fails() {
    let mut s = ScramServer::new(Some(verifier("s3cret")), "alice", None);
    let r = exchange(
        &mut s,
        SCRAM_SHA_256,
        "s3cret!",
        ChannelBinding::unsupported(),
    );
    assert_eq!(r, Err(ScramError::AuthenticationFailed));
    assert!(s.is_finished());
}

#[test]
fn wrong_channel_binding_fails() {
    let mut s = ScramServer::new(Some(verifier("pw")), "alice", Some(CB.to_vec()));
    let cb = ChannelBinding::tls_server_end_point(vec![0xcd; 32]);
    assert_eq!(
        exchange(&mut s, SCRAM_SHA_256_PLUS, "pw", cb),
        Err(ScramError::ChannelBindingMismatch)
    );
}

#[test]
fn downgrade_is_refused() {
    let mut s = ScramServer::new(Some(verifier("pw")), "alice", Some(CB.to_vec()));
    let r = exchange(&mut s, SCRAM_SHA_256, "pw", ChannelBinding::unrequested());
    assert_eq!(r, Err(ScramError::Downgrade));
}

#[test]
fn plus_without_tls_is_refused() {
    let mut s = ScramServer::new(Some(verifier("pw")), "alice", None);
    let cb = ChannelBinding::tls_server_end_point(CB.to_vec());
    assert_eq!(
        exchange(&mut s, SCRAM_SHA_256_PLUS, "pw", cb),
        Err(ScramError::PlusWithoutTls)
    );
}

#[test]
fn mechanism_and_flag_must_agree() {
    let mut s = ScramServer::new(Some(verifier("pw")), "a", Some(CB.to_vec()));
    let r = s.client_first(SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc");
    assert_eq!(r, Err(ScramError::ChannelBindingNegotiation));
    let mut s = ScramServer::new(Some(verifier("pw")), "a", Some(CB.to_vec()));
    let r = s.client_first(SCRAM_SHA_256_PLUS, b"n,,n=,r=abc");
    assert_eq!(r, Err(ScramError::ChannelBindingNegotiation));
    let mut s = ScramServer::new(Some(verifier("pw")), "a", Some(CB.to_vec()));
    let r = s.client_first(SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=abc");
    assert_eq!(r, Err(ScramError::UnsupportedChannelBinding));
    let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
    assert_eq!(
        s.client_first("PLAIN", b"n,,n=,r=abc"),
        Err(ScramError::UnsupportedMechanism)
    );
}

#[test]
fn unknown_identity_fails_like_wrong_password_with_stable_salt() {
    let salt_of = |user: &str| {
        let mut s = ScramServer::new(None, user, None);
        let first = s
            .client_first(SCRAM_SHA_256, b"n,,n=,r=clientnonce")
            .unwrap();
        let text = String::from_utf8(first).unwrap();
        assert!(text.starts_with("r=clientnonce"));
        assert!(text.ends_with(",i=4096"));
        text.split(',').nth(1).unwrap().to_string()
    };
    let a1 = salt_of("ghost");
    assert_eq!(a1, salt_of("ghost"));
    assert_ne!(a1, salt_of("phantom"));
    assert_eq!(B64.decode(&a1[2..]).unwrap().len(), 16);

    // Whatever password the client uses, the end is the wrong-password error.
    for pw in ["", "pw", "s3cret"] {
        let mut s = ScramServer::new(None, "ghost", None);
        let r = exchange(&mut s, SCRAM_SHA_256, pw, ChannelBinding::unsupported());
        assert_eq!(r, Err(ScramError::AuthenticationFailed));
    }
    let mut s = ScramServer::new(None, "ghost", Some(CB.to_vec()));
    let cb = ChannelBinding::tls_server_end_point(CB.to_vec());
    assert_eq!(
        exchange(&mut s, SCRAM_SHA_256_PLUS, "x", cb),
        Err(ScramError::AuthenticationFailed)
    );
}

#[test]
fn nonce_must_match() {
    let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
    s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap();
    let r = s.client_final(b"c=biws,r=abcWRONG,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    assert_eq!(r, Err(ScramError::NonceMismatch));
    // Failed exchange cannot be continued.
    assert_eq!(
        s.client_final(b"c=biws,r=abc,p=AAAA"),
        Err(ScramError::OutOfOrder)
    );
}

#[test]
fn gs2_header_must_match_between_messages() {
    let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
    let first = String::from_utf8(s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap()).unwrap();
    let nonce = &first[2..first.find(',').unwrap()];
    // "eSws" is base64 of "y,," while the first message said "n,,".
    let msg = format!("c=eSws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    assert_eq!(
        s.client_final(msg.as_bytes()),
        Err(ScramError::ChannelBindingMismatch)
    );
}

#[test]
fn out_of_order_calls() {
    let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
    assert_eq!(
        s.client_final(b"c=biws,r=a,p=AAAA"),
        Err(ScramError::OutOfOrder)
    );
    let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
    s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap();
    assert_eq!(
        s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc"),
        Err(ScramError::OutOfOrder)
    );
}

#[test]
fn malformed_first_messages_are_errors() {
    let long = vec![b'a'; 10_000];
    let cases: &[&[u8]] = &[
        b"",
        b"n",
        b"n,",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,zz,n=,r=abc",
        b"n,,",
        b"n,,n=",
        b"n,,n=,",
        b"n,,n=,r=",
        b"n,,n=,r=ab,c",
        b"n,,n=,r=a b",
        b"n,,m=ext,n=,r=abc",
        b"n,,r=abc,n=",
        b"n,,n=,r=abc,=",
        b"n,,n=,r=abc,1=x",
        b"n,,n=,r=\xff\xfe",
        b"\xff,,n=,r=abc",
        b"n,,n\xc3\x28=,r=abc",
        &long,
    ];
    for data in cases {
        let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
        assert!(
            s.client_first(SCRAM_SHA_256, data).is_err(),
            "accepted {data:?}"
        );
        assert!(s.is_finished());
    }
    // Extensions after the nonce are tolerated.
    let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
    assert!(s.client_first(SCRAM_SHA_256, b"n,,n=bob,r=abc,x=1").is_ok());
}

#[test]
fn malformed_final_messages_are_errors() {
    let cases: &[&[u8]] = &[
        b"",
        b"c=biws",
        b"c=biws,r=NONCE",
        b"c=biws,r=NONCE,p=",
        b"c=biws,r=NONCE,p=!!!!",
        b"c=biws,r=NONCE,p=AAAA",
        b"c=%%%%,r=NONCE,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"r=NONCE,c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"c=biws,r=NONCE,x,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"c=biws,r=NONCE,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=\xff",
        b"\xc3",
    ];
    for data in cases {
        let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
        let first =
            String::from_utf8(s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap()).unwrap();
        let nonce = &first[2..first.find(',').unwrap()];
        let data = String::from_utf8_lossy(data).replace("NONCE", nonce);
        let data = if data.ends_with('\u{fffd}') {
            [data.as_bytes(), b"\xff"].concat()
        } else {
            data.into_bytes()
        };
        assert!(
            s.client_final(&data).is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(&data)
        );
        assert!(s.is_finished());
    }
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random garbage and truncations of a valid exchange.
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for len in 0..300usize {
        let data: Vec<u8> = (0..len % 97).map(|_| (next() % 256) as u8).collect();
        let mut s = ScramServer::new(Some(verifier("pw")), "a", Some(CB.to_vec()));
        let _ = s.client_first(SCRAM_SHA_256_PLUS, &data);
        let _ = s.client_final(&data);
    }
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
    let first = client.message().to_vec();
    for cut in 0..first.len() {
        let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
        let _ = s.client_first(SCRAM_SHA_256, &first[..cut]);
    }
    let mut s = ScramServer::new(Some(verifier("pw")), "a", None);
    client
        .update(&s.client_first(SCRAM_SHA_256, &first).unwrap())
        .unwrap();
    let last = client.message().to_vec();
    for cut in 0..last.len() {
        let mut s2 = ScramServer::new(Some(verifier("pw")), "a", None);
        s2.client_first(SCRAM_SHA_256, &first).unwrap();
        assert!(s2.client_final(&last[..cut]).is_err());
    }
}

#[test]
fn end_point_hash_follows_signature_algorithm() {
    let der = |alg: &'static rcgen::SignatureAlgorithm| {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    };
    use sha2::Digest;
    let p256 = der(&rcgen::PKCS_ECDSA_P256_SHA256);
    assert_eq!(tls_server_end_point(&p256), sha256(&p256).to_vec());
    let p384 = der(&rcgen::PKCS_ECDSA_P384_SHA384);
    assert_eq!(
        tls_server_end_point(&p384),
        sha2::Sha384::digest(&p384).to_vec()
    );
    let ed = der(&rcgen::PKCS_ED25519);
    assert_eq!(tls_server_end_point(&ed), sha256(&ed).to_vec());
    // Garbage is hashed with SHA-256, never a panic.
    assert_eq!(
        tls_server_end_point(b"\x30\x84"),
        sha256(b"\x30\x84").to_vec()
    );
}
