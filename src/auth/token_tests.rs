//! Tests for environment tokens: round trip, env/identity/time checks,
//! tampering, key formats and production rules.

use super::*;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-11-23 12:00:00 UTC);

fn key() -> TokenKey {
    generate_key().unwrap().parse().unwrap()
}

fn request(env: &str) -> TokenRequest {
    TokenRequest {
        identity: "alice".into(),
        role: "human_admin".into(),
        env: env.into(),
        ttl: Duration::from_secs(3600),
        reason: Some("INC-123".into()),
    }
}

#[test]
fn issue_verify_round_trip() {
    let key = key();
    let token = issue(&key, &request("prod"), NOW).unwrap();
    assert!(looks_like_token(&token));
    let claims = verify(&key.public_key(), &token, "prod", "alice", NOW).unwrap();
    assert_eq!(claims.identity, "alice");
    assert_eq!(claims.role, "human_admin");
    assert_eq!(claims.env, "prod");
    assert_eq!(claims.reason.as_deref(), Some("INC-123"));
    assert_eq!(claims.issued_at, NOW);
    assert_eq!(claims.expires_at, datetime!(2026-11-23 13:00:00 UTC));
    assert_eq!(claims.id.len(), 16);
    assert!(claims.id.bytes().all(|b| b.is_ascii_hexdigit()));
    let again = issue(&key, &request("prod"), NOW).unwrap();
    let claims2 = verify(&key.public_key(), &again, "prod", "alice", NOW).unwrap();
    assert_ne!(claims.id, claims2.id, "ids are random");
}

#[test]
fn no_reason_round_trips_as_none() {
    let key = key();
    let mut req = request("dev");
    req.reason = None;
    let token = issue(&key, &req, NOW).unwrap();
    let claims = verify(&key.public_key(), &token, "dev", "alice", NOW).unwrap();
    assert_eq!(claims.reason, None);
}

#[test]
fn stage_token_rejected_for_prod() {
    // Same key (all-in-one deployments may share one): the env claim decides.
    let key = key();
    let token = issue(&key, &request("stage"), NOW).unwrap();
    assert_eq!(
        verify(&key.public_key(), &token, "prod", "alice", NOW),
        Err(TokenError::WrongEnv {
            expected: "prod".into(),
            found: "stage".into()
        })
    );
    // Per-environment keys: the signature does not verify.
    let prod_key = self::key();
    assert_eq!(
        verify(&prod_key.public_key(), &token, "prod", "alice", NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn expired_and_not_yet_valid() {
    let key = key();
    let token = issue(&key, &request("prod"), NOW).unwrap();
    let pk = key.public_key();
    let just_before = NOW + time::Duration::seconds(3599);
    assert!(verify(&pk, &token, "prod", "alice", just_before).is_ok());
    let at_exp = NOW + time::Duration::seconds(3600);
    assert!(matches!(
        verify(&pk, &token, "prod", "alice", at_exp),
        Err(TokenError::Expired(t)) if t == "2026-11-23T13:00:00Z"
    ));
    // Small clock skew tolerated, a token from the future is not.
    assert!(verify(
        &pk,
        &token,
        "prod",
        "alice",
        NOW - time::Duration::seconds(30)
    )
    .is_ok());
    assert_eq!(
        verify(
            &pk,
            &token,
            "prod",
            "alice",
            NOW - time::Duration::seconds(600)
        ),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn other_identity_rejected() {
    let key = key();
    let token = issue(&key, &request("prod"), NOW).unwrap();
    assert_eq!(
        verify(&key.public_key(), &token, "prod", "mallory", NOW),
        Err(TokenError::WrongIdentity)
    );
}

#[test]
fn tampered_byte_rejected() {
    let key = key();
    let token = issue(&key, &request("prod"), NOW).unwrap();
    let mut bytes = token.clone().into_bytes();
    let i = TOKEN_PREFIX.len() + 20;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_ne!(tampered, token);
    assert_eq!(
        verify(&key.public_key(), &tampered, "prod", "alice", NOW),
        Err(TokenError::BadSignature)
    );
    // Truncated signature.
    let cut = &token[..token.len() - 4];
    assert!(verify(&key.public_key(), cut, "prod", "alice", NOW).is_err());
}

#[test]
fn garbage_is_malformed() {
    let pk = key().public_key();
    for garbage in [
        "",
        "hunter2",
        "v4.public.",
        "v4.public.!!!!",
        "v4.local.AAAA",
        "v3.public.AAAA",
        "v4.public.AAAA.AAAA.AAAA",
    ] {
        let r = verify(&pk, garbage, "prod", "alice", NOW);
        assert!(
            matches!(r, Err(TokenError::Malformed | TokenError::BadSignature)),
            "{garbage:?}: {r:?}"
        );
    }
    let long = format!("v4.public.{}", "A".repeat(10_000));
    assert_eq!(
        verify(&pk, &long, "prod", "alice", NOW),
        Err(TokenError::Malformed)
    );
    assert!(!looks_like_token("v4.local.x") && !looks_like_token("password"));
}

#[test]
fn foreign_paseto_with_same_key_is_rejected() {
    // Signed by the right key but not a tierwarden token (no iss/env).
    let key = key();
    let token =
        PublicToken::sign(&key.secret, br#"{"sub":"alice","env":"prod"}"#, None, None).unwrap();
    assert_eq!(
        verify(&key.public_key(), &token, "prod", "alice", NOW),
        Err(TokenError::BadClaim("iss"))
    );
}

#[test]
fn production_rules() {
    assert_eq!(check_production_request(&request("prod")), Ok(()));
    let mut req = request("prod");
    req.reason = None;
    assert_eq!(
        check_production_request(&req),
        Err(TokenError::ReasonRequired)
    );
    req.reason = Some("   ".into());
    assert_eq!(
        check_production_request(&req),
        Err(TokenError::ReasonRequired)
    );
    let mut req = request("prod");
    req.ttl = Duration::from_secs(24 * 3600);
    assert_eq!(check_production_request(&req), Ok(()));
    req.ttl = Duration::from_secs(24 * 3600 + 1);
    assert_eq!(
        check_production_request(&req),
        Err(TokenError::TtlTooLong {
            requested_secs: 86401
        })
    );
}

#[test]
fn invalid_requests() {
    let key = key();
    let mut req = request("prod");
    req.identity = String::new();
    assert!(matches!(
        issue(&key, &req, NOW),
        Err(TokenError::InvalidRequest(_))
    ));
    let mut req = request("prod");
    req.ttl = Duration::ZERO;
    assert!(matches!(
        issue(&key, &req, NOW),
        Err(TokenError::InvalidRequest(_))
    ));
    let mut req = request("prod");
    req.ttl = Duration::from_secs(u64::MAX);
    assert!(matches!(
        issue(&key, &req, NOW),
        Err(TokenError::InvalidRequest(_))
    ));
    let mut req = request("prod");
    req.reason = Some("x".repeat(501));
    assert!(matches!(
        issue(&key, &req, NOW),
        Err(TokenError::InvalidRequest(_))
    ));
}

#[test]
fn key_formats_and_loading() {
    let text = generate_key().unwrap();
    assert!(text.starts_with("k4.secret."));
    let key: TokenKey = format!("  {text}\n").parse().unwrap();
    assert_eq!(key.to_paserk(), text);
    let public = key.public_key().to_paserk();
    assert!(public.starts_with("k4.public."));
    let pk: TokenPublicKey = public.parse().unwrap();
    assert_eq!(pk, key.public_key());
    let derived: TokenPublicKey = text.parse().unwrap();
    assert_eq!(derived, key.public_key());
    assert!(!format!("{key:?}").contains(&text[10..]));

    assert_eq!(
        "k4.public.AAAA".parse::<TokenKey>().unwrap_err(),
        TokenError::KeyFormat("secret")
    );
    assert_eq!(
        "nonsense".parse::<TokenPublicKey>().unwrap_err(),
        TokenError::KeyFormat("public")
    );
    // A secret whose public half does not match its seed.
    let mut broken = text.clone();
    let last = broken.pop().unwrap();
    broken.push(if last == 'A' { 'B' } else { 'A' });
    assert!(broken.parse::<TokenKey>().is_err());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prod.key");
    std::fs::write(&file, format!("{text}\n")).unwrap();
    let from_file = TokenKey::from_file(&file).unwrap();
    assert_eq!(from_file.to_paserk(), text);
    assert_eq!(TokenPublicKey::from_file(&file).unwrap(), key.public_key());
    let err = TokenKey::from_file(&dir.path().join("missing.key")).unwrap_err();
    assert!(err.to_string().contains("missing.key"), "{err}");
    let err = TokenKey::from_env("TIERWARDEN_TEST_SURELY_UNSET_KEY_VAR").unwrap_err();
    assert_eq!(
        err,
        TokenError::KeyEnv("TIERWARDEN_TEST_SURELY_UNSET_KEY_VAR".into())
    );
}
