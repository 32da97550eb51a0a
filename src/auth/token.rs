//! Minting HMAC tokens from the configured secret, for the `token` command and sandbox mode.
//!
//! Only HS*: with a public key or a JWKS the tokens come from whoever holds the private key (the
//! authorization server), never from this server.

use super::claims::Claims;
use super::error::AuthSetupError;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use std::str::FromStr;

/// The shortest secret accepted, as config validation demands (RFC 7518 §3.2: at least the hash size).
const MIN_SECRET_LEN: usize = 32;

/// Signs `claims` with `secret` using `algorithm` (HS256, HS384 or HS512).
pub fn mint(secret: &str, algorithm: &str, claims: &Claims) -> Result<String, AuthSetupError> {
    let alg = Algorithm::from_str(algorithm).map_err(|_| AuthSetupError::Algorithm(algorithm.to_owned()))?;
    if alg.family() != AlgorithmFamily::Hmac {
        return Err(AuthSetupError::Mint(format!(
            "{algorithm} tokens are signed by the authorization server; only HS256, HS384 and HS512 are minted here"
        )));
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(AuthSetupError::Secret(format!("must be at least {MIN_SECRET_LEN} bytes long")));
    }
    // jsonwebtoken's errors here concern the algorithm or serialization, never the secret's value.
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| AuthSetupError::Mint(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claims() -> Claims {
        Claims {
            sub: "s".into(),
            exp: 4_000_000_000,
            iat: None,
            nbf: None,
            iss: None,
            aud: None,
            scope: "events:read".into(),
            calls: None,
        }
    }

    #[test]
    fn only_hmac_with_a_long_secret_is_minted() {
        let secret = "x".repeat(32);
        let token = mint(&secret, "HS384", &claims()).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().alg, Algorithm::HS384);
        assert!(matches!(mint(&secret, "RS256", &claims()), Err(AuthSetupError::Mint(_))));
        assert!(matches!(mint(&secret, "none", &claims()), Err(AuthSetupError::Algorithm(_))));
        let short = mint("short", "HS256", &claims()).unwrap_err().to_string();
        assert_eq!(short, "JWT_SECRET: must be at least 32 bytes long");
    }
}
