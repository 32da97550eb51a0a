//! An authorization server's public keys (a JWKS URL): fetched once at start, kept, and fetched again
//! when a token names a key we do not hold — at most once a minute, so a flood of made-up `kid`s cannot
//! turn this server into a hammer on the authorization server.
//!
//! The set is also refreshed when it is older than [`MAX_AGE`], so a key the authorization server has
//! withdrawn (rotated out, or revoked after a leak) stops being accepted within that time. If the
//! authorization server is down, the keys already held keep working: an outage there should not lock
//! every client out here.

use super::AuthSetupError;
use super::error::AuthError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use url::Url;

/// How long one fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A key set is a few kilobytes; a larger answer is a misconfigured URL or hostile, not a key set.
const MAX_BODY: usize = 1024 * 1024;
/// The least time between two fetches, whatever tokens arrive.
pub(super) const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// A set older than this is refreshed on the next validation that may use the network.
pub(super) const MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// A key from the set, with the `kid` tokens pick it by.
#[derive(Debug)]
struct Key {
    kid: Option<String>,
    key: Arc<DecodingKey>,
}

#[derive(Debug)]
struct KeySet {
    /// Only the keys that can verify the configured algorithm; the rest are dropped at fetch.
    keys: Vec<Key>,
    fetched_at: Instant,
}

impl KeySet {
    /// The key a token with this `kid` is verified with; `Ok(None)` when the set does not hold it (yet).
    fn select(&self, kid: Option<&str>) -> Result<Option<Arc<DecodingKey>>, AuthError> {
        match kid {
            Some(kid) => Ok(self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).map(|k| k.key.clone())),
            // Without a kid there is nothing to choose by: only an unambiguous set will do.
            None => match self.keys.as_slice() {
                [] => Ok(None),
                [only] => Ok(Some(only.key.clone())),
                _ => Err(AuthError::Invalid("the token names no key (kid) and there are several".into())),
            },
        }
    }
}

fn unknown_kid() -> AuthError {
    AuthError::Invalid("the token's signing key (kid) is not known".into())
}

#[derive(Debug)]
pub(super) struct Jwks {
    url: Url,
    client: reqwest::Client,
    algorithm: Algorithm,
    /// A std lock: only ever held to clone or swap the `Arc`, never across an await.
    keys: RwLock<Arc<KeySet>>,
    /// When a fetch was last tried. A tokio lock, held across the fetch, so that concurrent validations
    /// missing the same new key wait for one request instead of each sending their own.
    last_attempt: tokio::sync::Mutex<Instant>,
}

impl Jwks {
    /// Fetches the set once, so a wrong URL or a set without a usable key stops the server at start.
    pub(super) async fn new(url: Url, algorithm: Algorithm) -> Result<Self, AuthSetupError> {
        let setup = |problem: String| AuthSetupError::Jwks { url: shown(&url), problem };
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| setup(format!("no HTTP client ({e})")))?;
        let loopback = url.host().is_some_and(|h| match h {
            url::Host::Domain(d) => d == "localhost",
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        });
        if url.scheme() != "https" && !loopback {
            // Whoever can alter this response chooses which tokens are accepted.
            tracing::warn!(url = %shown(&url), "JWT_JWKS_URL is not https: anyone on the network path can swap the keys");
        }
        let now = Instant::now();
        let keys = fetch(&client, &url, algorithm).await.map_err(setup)?;
        if keys.is_empty() {
            return Err(setup(format!("holds no key usable with {algorithm:?} (check JWT_ALGORITHM)")));
        }
        Ok(Self {
            url,
            client,
            algorithm,
            keys: RwLock::new(Arc::new(KeySet { keys, fetched_at: now })),
            last_attempt: tokio::sync::Mutex::new(now),
        })
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The key for `kid` from the set held now, without any network.
    pub(super) fn cached_key(&self, kid: Option<&str>) -> Result<Arc<DecodingKey>, AuthError> {
        self.current().select(kid)?.ok_or_else(unknown_kid)
    }

    /// The key for `kid`, refetching the set when it lacks the key or is old (both throttled).
    /// `now` is a parameter so tests can step past the throttle without waiting a minute.
    pub(super) async fn key(&self, kid: Option<&str>, now: Instant) -> Result<Arc<DecodingKey>, AuthError> {
        let set = self.current();
        if let Some(key) = set.select(kid)? {
            if now.saturating_duration_since(set.fetched_at) < MAX_AGE {
                return Ok(key);
            }
            // Old but known: refresh unless someone already is; meanwhile the key held is good enough.
            let Ok(last_attempt) = self.last_attempt.try_lock() else { return Ok(key) };
            self.refresh(last_attempt, now).await;
            return self.cached_key(kid);
        }
        let last_attempt = self.last_attempt.lock().await;
        // Another validation may have fetched the new set while this one waited for the lock.
        if let Some(key) = self.current().select(kid)? {
            return Ok(key);
        }
        self.refresh(last_attempt, now).await;
        self.cached_key(kid)
    }

    /// Fetches the set again unless the last attempt was under [`REFETCH_INTERVAL`] ago. A failed fetch
    /// keeps the set held and counts as an attempt, so an unreachable server is not retried per request.
    async fn refresh(&self, mut last_attempt: tokio::sync::MutexGuard<'_, Instant>, now: Instant) {
        if now.saturating_duration_since(*last_attempt) < REFETCH_INTERVAL {
            return;
        }
        *last_attempt = now;
        match fetch(&self.client, &self.url, self.algorithm).await {
            Ok(keys) => {
                tracing::debug!(url = %shown(&self.url), keys = keys.len(), "JWKS refreshed");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(KeySet { keys, fetched_at: now });
            }
            Err(problem) => {
                tracing::warn!(url = %shown(&self.url), %problem, "JWKS refresh failed; keeping the keys held")
            }
        }
    }
}

/// The URL for messages: without credentials or query, which may carry secrets.
fn shown(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

/// GETs the set and keeps the keys usable with `algorithm`. Errors are short phrases for the operator.
async fn fetch(client: &reqwest::Client, url: &Url, algorithm: Algorithm) -> Result<Vec<Key>, String> {
    // `without_url`: the URL is named by the caller, shown without its query.
    let describe = |e: reqwest::Error| e.without_url().to_string();
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("could not be fetched ({})", describe(e)))?;
    if !response.status().is_success() {
        return Err(format!("answered HTTP {}", response.status()));
    }
    if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err("is larger than 1 MiB".into());
    }
    // Read by chunks so a body without Content-Length cannot grow past the cap either.
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("could not be read ({})", describe(e)))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err("is larger than 1 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    parse(&body, algorithm)
}

/// Parses `{"keys": [...]}` key by key, so one key of a kind this crate does not model (or malformed)
/// does not make the whole set unusable.
fn parse(body: &[u8], algorithm: Algorithm) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|_| "is not a JWK set (a JSON object with \"keys\")")?;
    let keys = raw
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter(|jwk| fits(jwk, algorithm))
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(Key { kid: jwk.common.key_id, key: Arc::new(key) })
        })
        .collect();
    Ok(keys)
}

/// Whether a key may verify tokens of the configured algorithm: a signing key of its family (and
/// curve), whose `alg`, when it says one, is that algorithm. Never a symmetric (`oct`) key: published
/// next to public keys it would be exactly the key confusion RFC 8725 §2.1 warns of.
fn fits(jwk: &Jwk, algorithm: Algorithm) -> bool {
    if jwk.common.key_algorithm.is_some_and(|a| a != KeyAlgorithm::from(algorithm)) {
        return false;
    }
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
        return false;
    }
    match (&jwk.algorithm, algorithm.family()) {
        (AlgorithmParameters::RSA(_), AlgorithmFamily::Rsa) => true,
        (AlgorithmParameters::EllipticCurve(p), AlgorithmFamily::Ec) => matches!(
            (&p.curve, algorithm),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        (AlgorithmParameters::OctetKeyPair(p), AlgorithmFamily::Ed) => p.curve == EllipticCurve::Ed25519,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn only_signing_keys_of_the_configured_algorithm_are_kept() {
        let rsa = |kid: &str, extra: serde_json::Value| {
            let mut k = json!({"kty": "RSA", "kid": kid, "n": "AQAB", "e": "AQAB"});
            k.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            k
        };
        let body = json!({"keys": [
            rsa("plain", json!({})),
            rsa("rs256", json!({"alg": "RS256", "use": "sig"})),
            rsa("rs512", json!({"alg": "RS512"})),
            rsa("enc", json!({"use": "enc"})),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AQAB", "y": "AQAB"},
            {"kty": "weird", "kid": "future"},
            "not even an object",
        ]});
        let keys = parse(body.to_string().as_bytes(), Algorithm::RS256).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["plain", "rs256"]);
        let ec = parse(body.to_string().as_bytes(), Algorithm::ES256).unwrap();
        assert_eq!(ec.len(), 1);
        assert!(parse(body.to_string().as_bytes(), Algorithm::ES384).unwrap().is_empty());
        assert!(parse(b"[]", Algorithm::RS256).is_err());
    }

    #[test]
    fn a_token_without_kid_needs_an_unambiguous_set() {
        let key = || Arc::new(DecodingKey::from_rsa_raw_components(b"n", b"e"));
        let one = KeySet { keys: vec![Key { kid: Some("a".into()), key: key() }], fetched_at: Instant::now() };
        assert!(one.select(None).unwrap().is_some());
        assert!(one.select(Some("a")).unwrap().is_some());
        assert!(one.select(Some("b")).unwrap().is_none());
        let two = KeySet {
            keys: vec![Key { kid: Some("a".into()), key: key() }, Key { kid: None, key: key() }],
            fetched_at: Instant::now(),
        };
        assert!(two.select(None).is_err());
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        let url = Url::parse("https://user:pw@auth.example.com:8443/jwks.json?key=s3cret").unwrap();
        assert_eq!(shown(&url), "https://auth.example.com:8443/jwks.json");
    }
}
