//! [`Authenticator`]: turns a bearer token into [`Claims`], or says why not.
//!
//! Every rule here answers an RFC 8725 attack: the algorithm comes from configuration only (never the
//! token's header), so `alg: none` and HS256-signed-with-the-public-key are refused; the verifying key is
//! fixed per configuration, one kind only; `exp` and `sub` are required, `nbf` checked when present;
//! `iss` and `aud`, when configured, are required as well as checked (jsonwebtoken only checks them when
//! present unless told they are required).

use super::claims::Claims;
use super::error::{AuthError, AuthSetupError};
use super::jwks::Jwks;
use super::key_file;
use crate::config::{AuthConfig, JwtKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

/// Real tokens are well under 2 KiB; anything past this is refused before any parsing or key lookup.
pub(super) const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf` (jsonwebtoken's default is 60 s).
const LEEWAY_SECS: u64 = 30;

/// Validates tokens against the configured key. Cheap to clone: one `Arc` inside.
#[derive(Clone, Debug)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    algorithm: Algorithm,
    validation: Validation,
    keys: Keys,
}

/// One kind of key per authenticator, chosen by configuration: an HMAC secret and a public key never
/// serve the same validator.
#[derive(Debug)]
enum Keys {
    /// A secret (HS*) or one public key from a PEM file.
    Fixed(Arc<DecodingKey>),
    Jwks(Jwks),
}

impl Authenticator {
    /// Loads the PEM file or fetches the JWKS once, so a bad key stops the server at start with a
    /// message naming the setting.
    pub async fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let algorithm =
            Algorithm::from_str(&config.algorithm).map_err(|_| AuthSetupError::Algorithm(config.algorithm.clone()))?;
        let hmac = algorithm.family() == AlgorithmFamily::Hmac;
        let keys = match &config.key {
            JwtKey::Secret(secret) if hmac => Keys::Fixed(Arc::new(DecodingKey::from_secret(secret.as_bytes()))),
            JwtKey::PublicKeyFile(path) if !hmac => Keys::Fixed(Arc::new(key_file::load(path, algorithm)?)),
            JwtKey::Jwks(url) if !hmac => Keys::Jwks(Jwks::new(url.clone(), algorithm).await?),
            // Config validation refuses these; refused again here because this is the line that matters.
            _ => return Err(AuthSetupError::Algorithm(config.algorithm.clone())),
        };
        if config.audience.is_none() && !hmac {
            tracing::warn!(
                "JWT_AUDIENCE is not set: tokens from an authorization server that carry an `aud` claim will be \
                 refused (audiences are only accepted when configured); set JWT_AUDIENCE to this server's URL"
            );
        }
        Ok(Self { inner: Arc::new(Inner { algorithm, validation: validation(config, algorithm), keys }) })
    }

    /// Validates `token`, fetching the JWKS again if it names a key not yet held (throttled).
    pub async fn validate(&self, token: &str) -> Result<Claims, AuthError> {
        self.validate_at(token, Instant::now()).await
    }

    /// As [`Authenticator::validate`], with the instant the JWKS refetch throttle measures from.
    pub(super) async fn validate_at(&self, token: &str, now: Instant) -> Result<Claims, AuthError> {
        let kid = self.precheck(token)?;
        let key = match &self.inner.keys {
            Keys::Fixed(key) => key.clone(),
            Keys::Jwks(jwks) => jwks.key(kid.as_deref(), now).await?,
        };
        self.decode(token, &key)
    }

    /// Validates without any network: a secret or PEM key always; a JWKS only with the set already held
    /// (a token naming an unknown key is refused rather than fetched for).
    pub fn validate_cached(&self, token: &str) -> Result<Claims, AuthError> {
        let kid = self.precheck(token)?;
        let key = match &self.inner.keys {
            Keys::Fixed(key) => key.clone(),
            Keys::Jwks(jwks) => jwks.cached_key(kid.as_deref())?,
        };
        self.decode(token, &key)
    }

    /// Cheap checks before any key lookup, so a junk or wrong-algorithm token cannot trigger a JWKS
    /// fetch. Returns the token's `kid`.
    fn precheck(&self, token: &str) -> Result<Option<String>, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("the token is longer than 8 KiB".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed_header(token))?;
        if header.alg != self.inner.algorithm {
            return Err(algorithm_refused());
        }
        Ok(header.kid)
    }

    fn decode(&self, token: &str, key: &DecodingKey) -> Result<Claims, AuthError> {
        // Decoded as JSON first so that a missing claim is reported by name by jsonwebtoken's checks
        // (decoding straight into `Claims` would fail earlier, on the missing field, less clearly).
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &self.inner.validation).map_err(refusal)?;
        // serde's message can quote claim values, which are the token's text: keep it out.
        serde_json::from_value(data.claims).map_err(|_| AuthError::Invalid("a claim has the wrong type".into()))
    }
}

/// The pinned-algorithm validation: RFC 8725 §3.1 (algorithm), §3.8–3.9 (issuer, audience).
fn validation(config: &AuthConfig, algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    v.algorithms = vec![algorithm];
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    // Off by default in jsonwebtoken: a token not yet valid would otherwise be accepted.
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "sub"]);
    if let Some(issuer) = &config.issuer {
        v.set_issuer(&[issuer]);
        v.required_spec_claims.insert("iss".into());
    }
    if let Some(audience) = &config.audience {
        v.set_audience(&[audience]);
        v.required_spec_claims.insert("aud".into());
    }
    v
}

fn algorithm_refused() -> AuthError {
    AuthError::Invalid("the token's signing algorithm is not accepted".into())
}

/// jsonwebtoken cannot parse a header naming an algorithm it does not know (`none` included), so the
/// header is looked at once more to tell "wrong algorithm" from "not a JWT".
fn malformed_header(token: &str) -> AuthError {
    let segments: Vec<&str> = token.split('.').collect();
    let unknown_alg = segments.len() == 3
        && URL_SAFE_NO_PAD
            .decode(segments[0])
            .ok()
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
            .and_then(|header| header.get("alg").and_then(|a| a.as_str().map(str::to_owned)))
            .is_some_and(|alg| Algorithm::from_str(&alg).is_err());
    if unknown_alg { algorithm_refused() } else { AuthError::Invalid("the token is not a well-formed JWT".into()) }
}

/// jsonwebtoken's error as a short, fixed reason; never its text, which could quote the token.
fn refusal(e: jsonwebtoken::errors::Error) -> AuthError {
    let reason = match e.kind() {
        ErrorKind::ExpiredSignature => return AuthError::Expired,
        ErrorKind::InvalidSignature => "the signature does not verify",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            return algorithm_refused();
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            return AuthError::Invalid(format!("the '{}' claim is missing", known(claim)));
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            return AuthError::Invalid(format!("the '{}' claim is malformed", known(claim)));
        }
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the issuer (iss) is not accepted",
        ErrorKind::InvalidAudience => "the audience (aud) is not accepted",
        ErrorKind::InvalidSubject => "the subject (sub) is not accepted",
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            "the token is not a well-formed JWT"
        }
        _ => "the token cannot be verified with the configured key",
    };
    AuthError::Invalid(reason.into())
}

/// The claim names jsonwebtoken reports come from our own list; mapped through a fixed set anyway so a
/// future change there can never put token text in a response.
fn known(claim: &str) -> &'static str {
    ["exp", "nbf", "sub", "iss", "aud"].into_iter().find(|c| *c == claim).unwrap_or("registered")
}
