//! The RFC 8725 matrix, run against each kind of configuration (HMAC secret, PEM public key, JWKS), and
//! the JWKS cache's rotation and refetch throttle against a key server on 127.0.0.1:0.

#![allow(clippy::unwrap_used)]

use super::test_keys::*;
use super::*;
use crate::config::{AuthConfig, JwtKey};
use axum::http::Request;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "unit-test-secret-unit-test-secret-0123456789";
const ISSUER: &str = "https://auth.example.com/";
const AUDIENCE: &str = "https://calls.example.com";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims acceptable to every configuration below.
fn good_claims() -> Value {
    json!({"sub": "tester", "exp": now() + 600, "iat": now(), "iss": ISSUER, "aud": AUDIENCE, "scope": "events:read calls:read"})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Hand-made, as no library will produce it: `{"alg":"none"}`, the claims, an empty signature.
fn alg_none(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

fn rsa_a() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_A_PRIVATE.as_bytes()).unwrap()
}

fn rsa_b() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_B_PRIVATE.as_bytes()).unwrap()
}

fn jwk(public_pem: &str, alg: Algorithm, kid: &str) -> Value {
    let key = match alg {
        Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap(),
        _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap(),
    };
    let mut jwk = Jwk::from_decoding_key(&key, Some(alg)).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn config(key: JwtKey, algorithm: &str) -> AuthConfig {
    AuthConfig { key, algorithm: algorithm.into(), issuer: Some(ISSUER.into()), audience: Some(AUDIENCE.into()) }
}

fn pem_file(name: &str, pem: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("voice-call-mcp-auth-{}-{name}.pem", std::process::id()));
    std::fs::write(&path, pem).unwrap();
    path
}

/// A JWKS endpoint whose set the test can change, counting the requests it answers.
struct KeyServer {
    url: url::Url,
    set: Arc<Mutex<(u16, Value)>>,
    hits: Arc<AtomicUsize>,
}

impl KeyServer {
    async fn start(keys: Vec<Value>) -> Self {
        let set = Arc::new(Mutex::new((200, json!({ "keys": keys }))));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (set.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (s, h) = (s.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = s.lock().unwrap().clone();
                    (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(body))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!("http://{}/jwks.json", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, set, hits }
    }

    fn serve(&self, keys: Vec<Value>) {
        *self.set.lock().unwrap() = (200, json!({ "keys": keys }));
    }

    fn fail(&self) {
        self.set.lock().unwrap().0 = 500;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A refusal, checked to carry neither the token nor the secret in its message or challenge.
async fn refused(auth: &Authenticator, token: &str) -> AuthError {
    let e = auth.validate(token).await.expect_err("token should be refused");
    for shown in [e.to_string(), e.www_authenticate(None)] {
        assert!(!shown.contains(SECRET), "leaks the secret: {shown}");
        assert!(token.len() < 8 || !shown.contains(token), "leaks the token: {shown}");
        if let Some(payload) = token.split('.').nth(1).filter(|p| p.len() > 8) {
            assert!(!shown.contains(payload), "leaks the payload: {shown}");
        }
    }
    assert_eq!(auth.validate_cached(token).unwrap_err(), e, "cached validation disagrees");
    e
}

fn reason(e: &AuthError) -> &str {
    match e {
        AuthError::Invalid(r) => r,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// One configuration under test: how to sign acceptably, and with a key it must not accept.
struct Kind {
    name: &'static str,
    auth: Authenticator,
    alg: Algorithm,
    good: EncodingKey,
    wrong: EncodingKey,
    kid: Option<&'static str>,
}

impl Kind {
    fn token(&self, claims: &Value) -> String {
        sign(self.alg, &self.good, self.kid, claims)
    }
}

async fn kinds() -> (Vec<Kind>, KeyServer) {
    let server = KeyServer::start(vec![jwk(RSA_A_PUBLIC, Algorithm::RS256, "a")]).await;
    let hmac = Kind {
        name: "HMAC secret",
        auth: Authenticator::new(&config(JwtKey::Secret(SECRET.into()), "HS256")).await.unwrap(),
        alg: Algorithm::HS256,
        good: EncodingKey::from_secret(SECRET.as_bytes()),
        wrong: EncodingKey::from_secret(b"another-secret-another-secret-another-secret"),
        kid: None,
    };
    let pem = Kind {
        name: "PEM public key",
        auth: Authenticator::new(&config(JwtKey::PublicKeyFile(pem_file("matrix", RSA_A_PUBLIC)), "RS256"))
            .await
            .unwrap(),
        alg: Algorithm::RS256,
        good: rsa_a(),
        wrong: rsa_b(),
        kid: None,
    };
    let jwks = Kind {
        name: "JWKS",
        auth: Authenticator::new(&config(JwtKey::Jwks(server.url.clone()), "RS256")).await.unwrap(),
        alg: Algorithm::RS256,
        good: rsa_a(),
        wrong: rsa_b(),
        kid: Some("a"),
    };
    (vec![hmac, pem, jwks], server)
}

#[tokio::test]
async fn the_rfc_8725_matrix_holds_for_every_kind_of_key() {
    let (kinds, server) = kinds().await;
    for k in &kinds {
        let name = k.name;
        // A valid token, then each way of getting it wrong.
        let claims = k.auth.validate(&k.token(&good_claims())).await.unwrap();
        assert_eq!((claims.sub.as_str(), claims.iss.as_deref()), ("tester", Some(ISSUER)), "{name}");
        assert!(claims.has_scope(SCOPE_EVENTS_READ) && !claims.has_scope(SCOPE_CALLS_WRITE), "{name}");
        assert!(k.auth.validate_cached(&k.token(&good_claims())).is_ok(), "{name}");

        let e = refused(&k.auth, &alg_none(&good_claims())).await;
        assert_eq!(reason(&e), "the token's signing algorithm is not accepted", "{name}: alg none");

        // The classic key confusion: the RSA public key's PEM used as an HMAC secret.
        let confused =
            sign(Algorithm::HS256, &EncodingKey::from_secret(RSA_A_PUBLIC.as_bytes()), k.kid, &good_claims());
        let e = refused(&k.auth, &confused).await;
        if k.alg == Algorithm::HS256 {
            assert_eq!(reason(&e), "the signature does not verify", "{name}");
        } else {
            assert_eq!(
                reason(&e),
                "the token's signing algorithm is not accepted",
                "{name}: HS256 with the public key"
            );
        }

        let expired = k.token(&with(good_claims(), "exp", json!(now() - 45)));
        assert_eq!(refused(&k.auth, &expired).await, AuthError::Expired, "{name}: leeway is 30 s, not 60");
        let within_leeway = k.token(&with(good_claims(), "exp", json!(now() - 10)));
        assert!(k.auth.validate(&within_leeway).await.is_ok(), "{name}");

        let checks: [(&str, Value, &str); 11] = [
            ("missing exp", without(good_claims(), "exp"), "the 'exp' claim is missing"),
            ("missing sub", without(good_claims(), "sub"), "the 'sub' claim is missing"),
            (
                "wrong aud",
                with(good_claims(), "aud", json!("https://other.example.com")),
                "the audience (aud) is not accepted",
            ),
            ("missing aud", without(good_claims(), "aud"), "the 'aud' claim is missing"),
            (
                "wrong iss",
                with(good_claims(), "iss", json!("https://evil.example.com/")),
                "the issuer (iss) is not accepted",
            ),
            ("missing iss", without(good_claims(), "iss"), "the 'iss' claim is missing"),
            ("nbf in the future", with(good_claims(), "nbf", json!(now() + 120)), "the token is not valid yet (nbf)"),
            // jsonwebtoken checks presence first, and an unparsable `exp` does not count as present.
            ("exp not a number", with(good_claims(), "exp", json!("soon")), "the 'exp' claim is missing"),
            ("nbf not a number", with(good_claims(), "nbf", json!("soon")), "the 'nbf' claim is malformed"),
            ("sub not a string", with(good_claims(), "sub", json!(7)), "the 'sub' claim is missing"),
            ("calls not a list", with(good_claims(), "calls", json!("CA1")), "a claim has the wrong type"),
        ];
        for (case, claims, expected) in checks {
            assert_eq!(reason(&refused(&k.auth, &k.token(&claims)).await), expected, "{name}: {case}");
        }
        let audiences = with(good_claims(), "aud", json!(["https://other.example.com", AUDIENCE]));
        assert!(k.auth.validate(&k.token(&audiences)).await.is_ok(), "{name}: one of several audiences");
        let past_nbf = with(good_claims(), "nbf", json!(now() - 5));
        assert!(k.auth.validate(&k.token(&past_nbf)).await.is_ok(), "{name}");

        let forged = sign(k.alg, &k.wrong, k.kid, &good_claims());
        assert_eq!(reason(&refused(&k.auth, &forged).await), "the signature does not verify", "{name}");
        // A valid signature over other claims: swap the payload.
        let genuine = k.token(&good_claims());
        let elevated = URL_SAFE_NO_PAD.encode(with(good_claims(), "scope", json!("calls:write")).to_string());
        let parts: Vec<&str> = genuine.split('.').collect();
        let tampered = format!("{}.{elevated}.{}", parts[0], parts[2]);
        assert_eq!(reason(&refused(&k.auth, &tampered).await), "the signature does not verify", "{name}");

        let huge = k.token(&with(good_claims(), "pad", json!("x".repeat(9000))));
        assert_eq!(reason(&refused(&k.auth, &huge).await), "the token is longer than 8 KiB", "{name}");
        for junk in ["", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9"] {
            assert_eq!(reason(&refused(&k.auth, junk).await), "the token is not a well-formed JWT", "{name}: {junk}");
        }
        let unknown_kid = sign(k.alg, &k.good, Some("no-such-key"), &good_claims());
        if k.name == "JWKS" {
            assert_eq!(reason(&refused(&k.auth, &unknown_kid).await), "the token's signing key (kid) is not known");
        } else {
            // One fixed key: a `kid` chooses nothing, so it is ignored.
            assert!(k.auth.validate(&unknown_kid).await.is_ok(), "{name}");
        }
    }
    // Unknown kids within a minute of the start-up fetch did not reach the key server.
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_minted_token_is_found_in_header_cookie_or_query_and_its_claims_limit_it() {
    let auth = Authenticator::new(&config(JwtKey::Secret(SECRET.into()), "HS256")).await.unwrap();
    let claims = Claims {
        sub: "dashboard".into(),
        exp: now() + 60,
        iat: Some(now()),
        nbf: None,
        iss: Some(ISSUER.into()),
        aud: Some(AUDIENCE.into()),
        scope: "calls:read".into(),
        calls: Some(vec!["CA1".into()]),
    };
    let token = mint(SECRET, "HS256", &claims).unwrap();
    let request = |uri: String, header: Option<(&str, String)>| {
        let mut r = Request::builder().uri(uri);
        if let Some((k, v)) = header {
            r = r.header(k, v);
        }
        r.body(()).unwrap().into_parts().0
    };
    let by_header = request("/events".into(), Some(("authorization", format!("Bearer {token}"))));
    let by_cookie = request("/events".into(), Some(("cookie", format!("access_token={token}"))));
    let by_query = request(format!("/events?access_token={token}"), None);
    for parts in [&by_header, &by_cookie, &by_query] {
        let found = bearer_token(parts, true).unwrap();
        let validated = auth.validate(&found).await.unwrap();
        assert_eq!(validated, claims);
        assert!(!validated.has_scope(SCOPE_EVENTS_READ), "a missing scope is not granted");
        assert!(validated.may_see("CA1") && !validated.may_see("CA2"));
    }
    assert!(bearer_token(&by_header, false).is_some());
    assert!(bearer_token(&by_cookie, false).is_none() && bearer_token(&by_query, false).is_none());
    assert!(bearer_token(&request("/events".into(), None), true).is_none());
    assert!(!redact_query(&by_query.uri).contains(&token));
}

#[tokio::test]
async fn without_configured_issuer_or_audience_iss_is_free_but_an_aud_is_refused() {
    // jsonwebtoken 11 refuses any token carrying `aud` when no audience is configured (RFC 7519 §4.1.3).
    let auth = Authenticator::new(&AuthConfig {
        key: JwtKey::Secret(SECRET.into()),
        algorithm: "HS512".into(),
        issuer: None,
        audience: None,
    })
    .await
    .unwrap();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let plain = json!({"sub": "s", "exp": now() + 60, "iss": "anyone"});
    assert!(auth.validate(&sign(Algorithm::HS512, &key, None, &plain)).await.is_ok());
    let with_aud = sign(Algorithm::HS512, &key, None, &with(plain, "aud", json!(AUDIENCE)));
    assert_eq!(reason(&refused(&auth, &with_aud).await), "the audience (aud) is not accepted");
    let hs256 = sign(Algorithm::HS256, &key, None, &json!({"sub": "s", "exp": now() + 60}));
    assert_eq!(reason(&refused(&auth, &hs256).await), "the token's signing algorithm is not accepted");
}

#[tokio::test]
async fn ec_and_ed25519_public_keys_verify_their_own_algorithm_only() {
    let es = Authenticator::new(&config(JwtKey::PublicKeyFile(pem_file("ec", EC_P256_PUBLIC)), "ES256")).await.unwrap();
    let ec_key = EncodingKey::from_ec_pem(EC_P256_PRIVATE.as_bytes()).unwrap();
    assert!(es.validate(&sign(Algorithm::ES256, &ec_key, None, &good_claims())).await.is_ok());
    let rs = sign(Algorithm::RS256, &rsa_a(), None, &good_claims());
    assert_eq!(reason(&refused(&es, &rs).await), "the token's signing algorithm is not accepted");

    let ed = Authenticator::new(&config(JwtKey::PublicKeyFile(pem_file("ed", ED25519_PUBLIC)), "EdDSA")).await.unwrap();
    let ed_key = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    assert!(ed.validate(&sign(Algorithm::EdDSA, &ed_key, None, &good_claims())).await.is_ok());
    assert!(ed.validate(&alg_none(&good_claims())).await.is_err());
}

#[tokio::test]
async fn a_bad_key_stops_the_server_at_start_with_the_setting_named() {
    let private = config(JwtKey::PublicKeyFile(pem_file("private", RSA_A_PRIVATE)), "RS256");
    let e = Authenticator::new(&private).await.unwrap_err().to_string();
    assert!(e.starts_with("JWT_PUBLIC_KEY_FILE: ") && e.contains("private key"), "{e}");
    let mismatch = config(JwtKey::PublicKeyFile(pem_file("mismatch", EC_P256_PUBLIC)), "PS256");
    assert!(Authenticator::new(&mismatch).await.unwrap_err().to_string().contains("not an RSA public key"));
    let confused = config(JwtKey::Secret(SECRET.into()), "RS256");
    assert!(Authenticator::new(&confused).await.unwrap_err().to_string().starts_with("JWT_ALGORITHM: "));

    let server = KeyServer::start(vec![jwk(EC_P256_PUBLIC, Algorithm::ES256, "ec")]).await;
    let e = Authenticator::new(&config(JwtKey::Jwks(server.url.clone()), "RS256")).await.unwrap_err().to_string();
    assert!(e.starts_with("JWT_JWKS_URL: http://127.0.0.1:") && e.contains("holds no key usable with RS256"), "{e}");
    server.fail();
    let e = Authenticator::new(&config(JwtKey::Jwks(server.url.clone()), "ES256")).await.unwrap_err().to_string();
    assert!(e.contains("answered HTTP 500"), "{e}");
    server.serve(vec![json!({"kty": "oct", "k": "x".repeat(2 * 1024 * 1024)})]);
    let e = Authenticator::new(&config(JwtKey::Jwks(server.url.clone()), "ES256")).await.unwrap_err().to_string();
    assert!(e.contains("larger than 1 MiB"), "{e}");
    let mut missing = server.url.clone();
    missing.set_path("/nothing-here");
    let e = Authenticator::new(&config(JwtKey::Jwks(missing), "ES256")).await.unwrap_err().to_string();
    assert!(e.contains("answered HTTP 404"), "{e}");
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_and_unknown_kids_refetch_at_most_once_a_minute() {
    let server = KeyServer::start(vec![jwk(RSA_A_PUBLIC, Algorithm::RS256, "a")]).await;
    let auth = Authenticator::new(&config(JwtKey::Jwks(server.url.clone()), "RS256")).await.unwrap();
    let start = Instant::now();
    let at = |secs: u64| start + Duration::from_secs(secs);
    assert_eq!(server.hits(), 1);

    // The authorization server rotates in key b. Within a minute of the last fetch it is not fetched for.
    server.serve(vec![jwk(RSA_A_PUBLIC, Algorithm::RS256, "a"), jwk(RSA_B_PUBLIC, Algorithm::RS256, "b")]);
    let signed_b = sign(Algorithm::RS256, &rsa_b(), Some("b"), &good_claims());
    assert!(auth.validate_at(&signed_b, at(30)).await.is_err());
    assert_eq!(server.hits(), 1);
    // A minute on, the unknown kid triggers one fetch, which finds it; the cache now serves it offline.
    assert_eq!(auth.validate_at(&signed_b, at(61)).await.unwrap().sub, "tester");
    assert_eq!(server.hits(), 2);
    assert!(auth.validate_cached(&signed_b).is_ok());
    assert!(auth.validate_at(&signed_b, at(62)).await.is_ok());
    assert_eq!(server.hits(), 2);

    // A flood of made-up kids, sequential and concurrent: one fetch per minute at most.
    let bogus = |i: usize| sign(Algorithm::RS256, &rsa_b(), Some(&format!("bogus-{i}")), &good_claims());
    for (i, secs) in [62, 70, 100, 120].into_iter().enumerate() {
        assert!(auth.validate_at(&bogus(i), at(secs)).await.is_err());
    }
    assert_eq!(server.hits(), 2);
    let flood: Vec<_> = (0..50).map(|i| (auth.clone(), bogus(100 + i))).collect();
    let results = futures::future::join_all(flood.iter().map(|(a, t)| a.validate_at(t, at(125)))).await;
    assert!(results.iter().all(|r| matches!(r, Err(AuthError::Invalid(_)))));
    assert_eq!(server.hits(), 3);
    assert!(auth.validate_at(&bogus(999), at(184)).await.is_err());
    assert_eq!(server.hits(), 3);
    assert!(auth.validate_at(&bogus(999), at(186)).await.is_err());
    assert_eq!(server.hits(), 4);
}

#[tokio::test]
async fn an_old_set_is_refreshed_so_a_withdrawn_key_stops_working_but_an_outage_locks_no_one_out() {
    let server = KeyServer::start(vec![jwk(RSA_A_PUBLIC, Algorithm::RS256, "a")]).await;
    let auth = Authenticator::new(&config(JwtKey::Jwks(server.url.clone()), "RS256")).await.unwrap();
    let start = Instant::now();
    let signed_a = sign(Algorithm::RS256, &rsa_a(), Some("a"), &good_claims());

    // The authorization server is down when the set gets old: the key held keeps working.
    server.fail();
    let old = start + super::jwks::MAX_AGE + Duration::from_secs(1);
    assert!(auth.validate_at(&signed_a, old).await.is_ok());
    assert_eq!(server.hits(), 2);
    assert!(auth.validate_at(&signed_a, old + Duration::from_secs(5)).await.is_ok());
    assert_eq!(server.hits(), 2, "a failed refresh is not retried per request");

    // Back up, without key a (withdrawn): after the throttle it is refused.
    server.serve(vec![jwk(RSA_B_PUBLIC, Algorithm::RS256, "b")]);
    let later = old + super::jwks::REFETCH_INTERVAL;
    let e = auth.validate_at(&signed_a, later).await.unwrap_err();
    assert_eq!(reason(&e), "the token's signing key (kid) is not known");
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn jwks_keys_are_chosen_by_kid_and_filtered_by_algorithm() {
    // Key a is published for RS512 only: with RS256 configured it must be ignored.
    let mut rs512 = jwk(RSA_A_PUBLIC, Algorithm::RS512, "a");
    rs512["alg"] = json!("RS512");
    let server = KeyServer::start(vec![rs512, jwk(RSA_B_PUBLIC, Algorithm::RS256, "b")]).await;
    let auth = Authenticator::new(&config(JwtKey::Jwks(server.url.clone()), "RS256")).await.unwrap();
    let signed_a = sign(Algorithm::RS256, &rsa_a(), Some("a"), &good_claims());
    assert_eq!(reason(&refused(&auth, &signed_a).await), "the token's signing key (kid) is not known");
    // Only one usable key: a token without kid is verified with it.
    let no_kid = sign(Algorithm::RS256, &rsa_b(), None, &good_claims());
    assert!(auth.validate(&no_kid).await.is_ok());
    // A kid naming key b but signed with key a does not verify.
    let mislabelled = sign(Algorithm::RS256, &rsa_a(), Some("b"), &good_claims());
    assert_eq!(reason(&refused(&auth, &mislabelled).await), "the signature does not verify");

    let two =
        KeyServer::start(vec![jwk(RSA_A_PUBLIC, Algorithm::RS256, "a"), jwk(RSA_B_PUBLIC, Algorithm::RS256, "b")])
            .await;
    let auth = Authenticator::new(&config(JwtKey::Jwks(two.url.clone()), "RS256")).await.unwrap();
    let e = refused(&auth, &no_kid).await;
    assert_eq!(reason(&e), "the token names no key (kid) and there are several");
}
