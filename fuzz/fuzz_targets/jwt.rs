//! JWT validation (`auth::Authenticator`, HS256 with a test secret, with and without a configured issuer
//! and audience). Three kinds of input:
//! - any token text: refused or accepted, never a panic, and accepted only if its signature is
//!   HMAC-SHA256 with the secret over its first two segments, its header naming HS256;
//! - any claims bytes, signed with the secret: never a panic, and accepted only if the claims are valid
//!   by the rules below;
//! - claims built from parts (each claim absent, null, of the wrong type, or a plausible value), signed
//!   with the secret, or with the signature changed: accepted exactly when the claims are valid and the
//!   signature untouched.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use std::sync::OnceLock;
use voice_call_mcp::auth::Authenticator;
use voice_call_mcp::config::{AuthConfig, JwtKey};

const SECRET: &str = "fuzz-test-secret-fuzz-test-secret-0123456789";
const ISSUER: &str = "https://auth.example.com/";
const AUDIENCE: &str = "https://calls.example.com";
/// The authenticator's tolerance on `exp` and `nbf`.
const LEEWAY: u64 = 30;

/// The first byte picks the kind, so that real tokens and claims seed it: `t` + token text; `c` or `C`
/// + claims JSON (`C`: with issuer and audience configured); anything else: claims built from parts.
#[derive(Debug)]
enum Input<'a> {
    Token(&'a str),
    RawClaims { claims: &'a [u8], configured: bool },
    Built(Built<'a>),
}

#[derive(Debug, Arbitrary)]
struct Built<'a> {
    header: HeaderSpec<'a>,
    claims: ClaimsSpec<'a>,
    configured: bool,
    tamper: Option<(u8, u8)>,
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Option<Self> {
        let (&kind, rest) = data.split_first()?;
        Some(match kind {
            b't' => Self::Token(std::str::from_utf8(rest).ok()?),
            b'c' | b'C' => Self::RawClaims { claims: rest, configured: kind == b'C' },
            _ => Self::Built(Built::arbitrary_take_rest(arbitrary::Unstructured::new(rest)).ok()?),
        })
    }
}

#[derive(Debug, Arbitrary)]
struct HeaderSpec<'a> {
    alg: Alg<'a>,
    typ: Option<&'a str>,
    kid: Option<&'a str>,
}

#[derive(Debug, Arbitrary)]
enum Alg<'a> {
    Hs256,
    Hs384,
    Rs256,
    None,
    Other(&'a str),
}

#[derive(Debug, Arbitrary)]
struct ClaimsSpec<'a> {
    sub: Claim<'a>,
    exp: Claim<'a>,
    nbf: Claim<'a>,
    iat: Claim<'a>,
    iss: Claim<'a>,
    aud: Claim<'a>,
    scope: Claim<'a>,
    calls: Claim<'a>,
    extra: Option<(&'a str, Claim<'a>)>,
}

#[derive(Debug, Arbitrary)]
enum Claim<'a> {
    Absent,
    Null,
    Bool(bool),
    /// Seconds from now.
    Relative(i32),
    Int(i64),
    Float(f64),
    Text(&'a str),
    /// The configured issuer or audience.
    Expected,
    Strings(Vec<&'a str>),
    /// An array holding the configured audience among others.
    WithExpected(Vec<&'a str>),
}

fn authenticator(configured: bool) -> &'static Authenticator {
    static PLAIN: OnceLock<Authenticator> = OnceLock::new();
    static SCOPED: OnceLock<Authenticator> = OnceLock::new();
    let cell = if configured { &SCOPED } else { &PLAIN };
    cell.get_or_init(|| {
        let config = AuthConfig {
            key: JwtKey::Secret(SECRET.into()),
            algorithm: "HS256".into(),
            issuer: configured.then(|| ISSUER.into()),
            audience: configured.then(|| AUDIENCE.into()),
        };
        // An HMAC secret needs no I/O: the future is ready at once.
        futures::executor::block_on(Authenticator::new(&config)).unwrap()
    })
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn mac(signing_input: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `header.payload.signature`, signed with the secret (the signature's byte `at` XORed with `with`, if given).
fn sign(header: &[u8], payload: &[u8], tamper: Option<(u8, u8)>) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let mut sig = mac(&input);
    if let Some((at, with)) = tamper {
        sig[usize::from(at) % 32] ^= with.max(1);
    }
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Whether a token's signature is HMAC-SHA256 with the secret over its first two segments.
fn signed_with_secret(token: &str) -> bool {
    let Some((input, sig)) = token.rsplit_once('.') else { return false };
    URL_SAFE_NO_PAD.decode(sig).is_ok_and(|sig| sig == mac(input))
}

fn header_json(h: &HeaderSpec<'_>) -> (Value, bool) {
    let (alg, pinned) = match h.alg {
        Alg::Hs256 => ("HS256", true),
        Alg::Hs384 => ("HS384", false),
        Alg::Rs256 => ("RS256", false),
        Alg::None => ("none", false),
        Alg::Other(a) => (a, a == "HS256"),
    };
    let mut header = Map::new();
    header.insert("alg".into(), alg.into());
    if let Some(typ) = h.typ {
        header.insert("typ".into(), typ.into());
    }
    if let Some(kid) = h.kid {
        header.insert("kid".into(), kid.into());
    }
    (Value::Object(header), pinned)
}

/// The claim's JSON, and whether it is a `Relative` time too near an edge of the leeway to judge.
fn claim_json(c: &Claim<'_>, expected: &str, now: u64) -> (Option<Value>, bool) {
    let v = match c {
        Claim::Absent => return (None, false),
        Claim::Null => Value::Null,
        Claim::Bool(b) => json!(b),
        Claim::Relative(d) => {
            let t = now.saturating_add_signed(i64::from(*d));
            let near = (i64::from(*d).abs() - LEEWAY as i64).abs() <= 5;
            return (Some(json!(t)), near);
        }
        Claim::Int(i) => json!(i),
        Claim::Float(f) => json!(f),
        Claim::Text(s) => json!(s),
        Claim::Expected => json!(expected),
        Claim::Strings(all) => json!(all),
        Claim::WithExpected(all) => {
            let mut all: Vec<&str> = all.clone();
            all.push(expected);
            json!(all)
        }
    };
    (Some(v), false)
}

/// The rules a token's claims must meet (DESIGN.md "JWT claims", PROTOCOLS.md §7, RFC 8725), written
/// out independently of the authenticator.
fn claims_valid(claims: &Value, configured: bool, now: u64) -> bool {
    let Some(c) = claims.as_object() else { return false };
    let absent_or_null = |k: &str| c.get(k).is_none_or(Value::is_null);
    let sub = c.get("sub").is_some_and(Value::is_string);
    let exp = c.get("exp").and_then(Value::as_u64).is_some_and(|exp| exp >= now - LEEWAY);
    // A null `nbf` is refused: a time that is not a number cannot be checked.
    let nbf = c.get("nbf").is_none_or(|nbf| nbf.as_u64().is_some_and(|nbf| nbf <= now + LEEWAY));
    let iat = absent_or_null("iat") || c.get("iat").and_then(Value::as_u64).is_some();
    let iss = if configured {
        c.get("iss").and_then(Value::as_str) == Some(ISSUER)
    } else {
        absent_or_null("iss") || c.get("iss").is_some_and(Value::is_string)
    };
    let aud = if configured {
        match c.get("aud") {
            Some(Value::String(a)) => a == AUDIENCE,
            Some(Value::Array(all)) => {
                all.iter().all(Value::is_string) && all.iter().any(|a| a.as_str() == Some(AUDIENCE))
            }
            _ => false,
        }
    } else {
        // An audience this server was not told to accept is refused (RFC 7519 §4.1.3).
        absent_or_null("aud")
    };
    let scope = c.get("scope").is_none_or(Value::is_string);
    let calls = absent_or_null("calls")
        || c.get("calls").and_then(Value::as_array).is_some_and(|all| all.iter().all(Value::is_string));
    sub && exp && nbf && iat && iss && aud && scope && calls
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else { return };
    let now = now();
    match input {
        Input::Token(token) => {
            for configured in [false, true] {
                if authenticator(configured).validate_cached(token).is_ok() {
                    assert!(signed_with_secret(token), "accepted a token not signed with the secret: {token:?}");
                }
            }
        }
        Input::RawClaims { claims, configured } => {
            let token = sign(br#"{"alg":"HS256","typ":"JWT"}"#, claims, None);
            if let Ok(accepted) = authenticator(configured).validate_cached(&token) {
                let parsed: Value = serde_json::from_slice(claims).unwrap();
                assert!(claims_valid(&parsed, configured, now), "accepted invalid claims {parsed}");
                assert_eq!(accepted.sub, parsed["sub"].as_str().unwrap());
            }
        }
        Input::Built(Built { header, claims, configured, tamper }) => {
            let (header, pinned) = header_json(&header);
            let mut object = Map::new();
            let mut near_edge = false;
            let mut put = |name: &str, c: &Claim<'_>, expected: &str| {
                let (v, near) = claim_json(c, expected, now);
                near_edge |= near;
                if let Some(v) = v {
                    object.insert(name.to_owned(), v);
                }
            };
            put("sub", &claims.sub, "tester");
            put("exp", &claims.exp, "");
            put("nbf", &claims.nbf, "");
            put("iat", &claims.iat, "");
            put("iss", &claims.iss, ISSUER);
            put("aud", &claims.aud, AUDIENCE);
            put("scope", &claims.scope, "events:read calls:read");
            put("calls", &claims.calls, "CA1");
            if let Some((name, c)) = &claims.extra
                && !["sub", "exp", "nbf", "iat", "iss", "aud", "scope", "calls"].contains(name)
            {
                put(name, c, "");
            }
            let claims = Value::Object(object);
            let token = sign(header.to_string().as_bytes(), claims.to_string().as_bytes(), tamper);
            let accepted = authenticator(configured).validate_cached(&token);
            let what = format!("header {header}, claims {claims}, tamper {tamper:?}: {accepted:?}");
            if tamper.is_some() || !pinned {
                assert!(accepted.is_err(), "{what}");
            } else if !near_edge {
                assert_eq!(accepted.is_ok(), claims_valid(&claims, configured, now), "{what}");
            }
        }
    }
});
