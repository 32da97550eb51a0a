//! `JWT_PUBLIC_KEY_FILE`: one PEM public key, read and checked at start.
//!
//! jsonwebtoken accepts more than it should here (an RSA *private* key PEM loads as a decoding key and
//! then fails every token), so this module checks what it loaded — a public key, of the configured
//! algorithm's family and curve, RSA of at least 2048 bits — and says what to fix, at start, instead of
//! answering every client 401.

use super::AuthSetupError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::path::Path;

/// A PEM public key is well under this; a bigger file is not the file meant.
const MAX_FILE: u64 = 64 * 1024;

pub(super) fn load(path: &Path, algorithm: Algorithm) -> Result<DecodingKey, AuthSetupError> {
    let fail =
        |problem: &str| AuthSetupError::KeyFile { path: path.display().to_string(), problem: problem.to_owned() };
    let size = std::fs::metadata(path).map_err(|e| fail(&format!("cannot be read ({e})")))?.len();
    if size > MAX_FILE {
        return Err(fail("is too large to be a PEM public key"));
    }
    let pem = std::fs::read_to_string(path).map_err(|e| fail(&format!("cannot be read ({e})")))?;
    from_pem(&pem, algorithm).map_err(|problem| fail(&problem))
}

fn from_pem(pem: &str, algorithm: Algorithm) -> Result<DecodingKey, String> {
    if pem.contains("PRIVATE KEY-----") {
        // Also a hint that the private key sits where it should not: it belongs with the token issuer only.
        return Err("holds a private key; give the public key (openssl pkey -in key.pem -pubout)".into());
    }
    if pem.contains("BEGIN CERTIFICATE") {
        return Err("holds a certificate; give its public key (openssl x509 -in cert.pem -pubkey -noout)".into());
    }
    let (key, kind) = match algorithm.family() {
        AlgorithmFamily::Rsa => (DecodingKey::from_rsa_pem(pem.as_bytes()), "an RSA"),
        AlgorithmFamily::Ec => (DecodingKey::from_ec_pem(pem.as_bytes()), "an EC"),
        AlgorithmFamily::Ed => (DecodingKey::from_ed_pem(pem.as_bytes()), "an Ed25519"),
        AlgorithmFamily::Hmac => return Err(format!("cannot serve {algorithm:?}, an HMAC algorithm (use JWT_SECRET)")),
    };
    let not_fitting = || format!("is not {kind} public key in PEM, as JWT_ALGORITHM {algorithm:?} needs");
    let key = key.map_err(|_| not_fitting())?;
    // Re-reading the key as a JWK parses it fully (the PEM loaders above only unwrap the ASN.1).
    let jwk = Jwk::from_decoding_key(&key, Some(algorithm)).map_err(|_| not_fitting())?;
    match (&jwk.algorithm, algorithm) {
        (AlgorithmParameters::RSA(rsa), _) => {
            let bits = b64_len(&rsa.n) * 8;
            if bits < 2048 {
                return Err(format!("holds a {bits}-bit RSA key; RSA keys must be at least 2048 bits"));
            }
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) if ec.curve != EllipticCurve::P256 => {
            return Err("holds an EC key that is not P-256, as ES256 needs".into());
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) if ec.curve != EllipticCurve::P384 => {
            return Err("holds an EC key that is not P-384, as ES384 needs".into());
        }
        _ => {}
    }
    Ok(key)
}

/// The decoded byte length of an unpadded base64url value (the JWK `n`, the RSA modulus big-endian).
fn b64_len(value: &str) -> usize {
    value.trim_end_matches('=').len() * 3 / 4
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::test_keys::*;
    use super::*;

    #[test]
    fn public_keys_of_each_family_load() {
        assert!(from_pem(RSA_A_PUBLIC, Algorithm::RS256).is_ok());
        assert!(from_pem(RSA_A_PUBLIC, Algorithm::PS512).is_ok());
        assert!(from_pem(EC_P256_PUBLIC, Algorithm::ES256).is_ok());
        assert!(from_pem(ED25519_PUBLIC, Algorithm::EdDSA).is_ok());
    }

    #[test]
    fn a_key_that_cannot_serve_the_algorithm_is_named_at_start() {
        assert!(from_pem(RSA_A_PRIVATE, Algorithm::RS256).unwrap_err().contains("private key"));
        assert!(from_pem(EC_P256_PUBLIC, Algorithm::RS256).unwrap_err().contains("not an RSA public key"));
        assert!(from_pem(RSA_A_PUBLIC, Algorithm::ES256).unwrap_err().contains("not an EC public key"));
        assert!(from_pem(EC_P256_PUBLIC, Algorithm::ES384).unwrap_err().contains("not P-384"));
        assert!(from_pem("hello", Algorithm::EdDSA).is_err());
        assert!(from_pem(RSA_A_PUBLIC, Algorithm::HS256).unwrap_err().contains("JWT_SECRET"));
    }

    #[test]
    fn a_missing_file_names_the_setting() {
        let e = load(Path::new("/nonexistent/jwt.pem"), Algorithm::RS256).unwrap_err().to_string();
        assert!(e.starts_with("JWT_PUBLIC_KEY_FILE: '/nonexistent/jwt.pem' cannot be read"), "{e}");
    }
}
