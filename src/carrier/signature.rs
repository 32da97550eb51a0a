//! `X-Twilio-Signature`: how we know a webhook really comes from Twilio.
//!
//! Twilio signs every webhook with HMAC-SHA1 keyed by the account's auth token, over the URL it
//! requested followed by the POST parameters. Anyone who can reach our public URL could otherwise
//! forge call progress, so every callback and the Media Streams handshake is checked here.
//! twilio-python's `twilio/request_validator.py` is the reference; where this file differs it says why.
//!
//! JSON-bodied webhooks (`bodySHA256` in the URL) would also need SHA-256, which is not a
//! dependency yet; the calls we place only receive form posts and the URL-only WebSocket handshake.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;

/// base64(HMAC-SHA1(auth_token, url + sorted params)) as Twilio computes it.
///
/// Params are sorted by name byte-wise, then by value, and exact duplicates count once: this is
/// twilio-python's `sorted(set(names))` then `sorted(set(values))` for each name. Values are the
/// decoded form values, not their percent-encoded wire text.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Sorting the (name, value) pairs orders by name first and by value within a name.
    sorted.sort_unstable();
    sorted.dedup();
    let mut mac = new_mac(auth_token);
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Constant-time check of a form-post webhook.
///
/// Accepts a match on `url` as given, on `url` without its port, and on `url` with the scheme's
/// default port added, because Twilio signs sometimes with and sometimes without `:443`/`:80`.
/// Like twilio-python, the "without port" variant drops any explicit port, not only the default.
pub fn validate(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    url_variants(url)
        .into_iter()
        .flatten()
        // `|` rather than `any`: every variant is checked, so timing says nothing about which matched.
        .fold(false, |ok, candidate| ok | equal(&compute(auth_token, &candidate, params), signature))
}

/// Check a request signed over its URL alone, such as the Media Streams WebSocket handshake.
///
/// Do not use this for JSON-bodied webhooks: their body is bound to the signature only through the
/// `bodySHA256` query parameter, which this function does not verify.
pub fn validate_url_only(auth_token: &str, url: &str, signature: &str) -> bool {
    validate(auth_token, url, &[], signature)
}

fn new_mac(auth_token: &str) -> HmacSha1 {
    // HMAC takes keys of any length (long keys are hashed), so this cannot fail.
    #[allow(clippy::expect_used)]
    HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts keys of any length")
}

fn equal(expected: &str, given: &str) -> bool {
    // Lengths are public (always 28 for SHA-1); only the contents are compared in constant time.
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// `[as given, without port, with default port]`; `None` where a variant does not apply.
///
/// Works on the string rather than a parsed `url::Url`: parsing normalises (drops default ports,
/// adds a trailing `/`, re-encodes), and the signature covers the exact text Twilio requested.
fn url_variants(url: &str) -> [Option<String>; 3] {
    let Some(scheme_end) = url.find("://") else {
        return [Some(url.to_owned()), None, None];
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..].find(['/', '?', '#']).map_or(url.len(), |i| authority_start + i);
    // Userinfo (`user:pass@`) may contain ':' too; the port can only follow the host, after the last '@'.
    // twilio-python splits the whole netloc on ':' and so mangles such URLs.
    let host_start =
        url[authority_start..authority_end].rfind('@').map_or(authority_start, |i| authority_start + i + 1);
    let host_port = &url[host_start..authority_end];
    // A ':' inside IPv6 brackets is not a port separator.
    let port_colon = host_port.rfind(':').filter(|&i| !host_port[i..].contains(']')).map(|i| host_start + i);

    let (without_port, with_port) = match port_colon {
        Some(colon) => {
            let mut stripped = String::with_capacity(url.len());
            stripped.push_str(&url[..colon]);
            stripped.push_str(&url[authority_end..]);
            (Some(stripped), None)
        }
        None => {
            let scheme = &url[..scheme_end];
            // twilio-python uses 80 for anything but https; wss (the media stream) defaults to 443 as well.
            let port =
                if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") { ":443" } else { ":80" };
            let mut added = String::with_capacity(url.len() + port.len());
            added.push_str(&url[..authority_end]);
            added.push_str(port);
            added.push_str(&url[authority_end..]);
            (None, Some(added))
        }
    };
    [Some(url.to_owned()), without_port, with_port]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn vector_params() -> Vec<(String, String)> {
        params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ])
    }

    const VECTOR_URL: &str = "https://example.com/myapp.php?foo=1&bar=2";
    const VECTOR_SIG: &str = "L/OH5YylLD5NRKLltdqwSvS0BnU=";

    #[test]
    fn protocols_test_vector() {
        assert_eq!(compute("12345", VECTOR_URL, &vector_params()), VECTOR_SIG);
        assert!(validate("12345", VECTOR_URL, &vector_params(), VECTOR_SIG));
    }

    #[test]
    fn param_order_does_not_matter() {
        let mut shuffled = vector_params();
        shuffled.reverse();
        assert!(validate("12345", VECTOR_URL, &shuffled, VECTOR_SIG));
    }

    // The vectors of twilio-python's tests/unit/test_request_validator.py.
    const PY_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    fn py_params() -> Vec<(String, String)> {
        params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ])
    }

    #[test]
    fn twilio_python_vectors() {
        assert_eq!(compute("12345", PY_URL, &py_params()), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        // Signed over `:443`, checked against the URL without a port.
        assert!(validate("12345", PY_URL, &py_params(), "kvajT1Ptam85bY51eRf/AJRuM3w="));
        // Signed over `:80`, checked against the http URL without a port.
        let http = PY_URL.replace("https", "http");
        assert!(validate("12345", &http, &py_params(), "0ZXoZLH/DfblKGATFgpif+LLRf4="));
        // Signed without a port, checked against a URL carrying a non-default one.
        let with_port = PY_URL.replace(".com", ".com:1234");
        assert!(validate("12345", &with_port, &py_params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
    }

    #[test]
    fn repeated_params_sorted_and_deduplicated() {
        let a = params(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]);
        assert_eq!(compute("12345", PY_URL, &a), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
        let b = params(&[("Digits", "1234"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Sid", "CA123")]);
        assert!(validate("12345", PY_URL, &b, "IK+Dwps556ElfBT0I3Rgjkr1wJU="));
        // Byte-wise name order: "Sid" < "SidAccount", so the name is not read as a prefix of another.
        let swapped = params(&[("Sid", "AC123"), ("SidAccount", "CA123"), ("Digits", "5678"), ("Digits", "1234")]);
        assert!(!validate("12345", PY_URL, &swapped, "IK+Dwps556ElfBT0I3Rgjkr1wJU="));
    }

    #[test]
    fn default_port_added_or_removed() {
        let p = params(&[("CallStatus", "ringing")]);
        let with = compute("tok", "https://example.com:443/x", &p);
        assert!(validate("tok", "https://example.com/x", &p, &with));
        let without = compute("tok", "https://example.com/x", &p);
        assert!(validate("tok", "https://example.com:443/x", &p, &without));
        let http = compute("tok", "http://example.com:80/x?a=1", &p);
        assert!(validate("tok", "http://example.com/x?a=1", &p, &http));
        let wss = compute("tok", "wss://example.com:443/twilio/media", &[]);
        assert!(validate_url_only("tok", "wss://example.com/twilio/media", &wss));
        // A different port is a different URL: not accepted by adding it.
        let other = compute("tok", "https://example.com:8443/x", &p);
        assert!(!validate("tok", "https://example.com/x", &p, &other));
    }

    #[test]
    fn userinfo_and_ipv6_hosts() {
        let p = params(&[("A", "1")]);
        let sig = compute("tok", "https://user:pa:ss@example.com:443/x", &p);
        assert!(validate("tok", "https://user:pa:ss@example.com/x", &p, &sig));
        let sig = compute("tok", "http://[::1]:80/x", &p);
        assert!(validate("tok", "http://[::1]/x", &p, &sig));
        let sig = compute("tok", "http://[::1]/x", &p);
        assert!(validate("tok", "http://[::1]:80/x", &p, &sig));
    }

    #[test]
    fn tampering_and_wrong_token_fail() {
        let mut tampered = vector_params();
        tampered[2].1 = "9999".to_owned();
        assert!(!validate("12345", VECTOR_URL, &tampered, VECTOR_SIG));
        let mut extra = vector_params();
        extra.push(("CallStatus".to_owned(), "completed".to_owned()));
        assert!(!validate("12345", VECTOR_URL, &extra, VECTOR_SIG));
        assert!(!validate("54321", VECTOR_URL, &vector_params(), VECTOR_SIG));
        assert!(!validate("12345", "https://example.com/myapp.php?foo=1&bar=3", &vector_params(), VECTOR_SIG));
    }

    #[test]
    fn malformed_input_never_panics() {
        for sig in
            ["", "=", "not base64 at all!!", "L/OH5YylLD5NRKLltdqwSvS0BnU", "é\u{0}\u{10FFFF}", &"A".repeat(10_000)]
        {
            assert!(!validate("12345", VECTOR_URL, &vector_params(), sig));
        }
        for url in ["", "://", "https://", "https://:", "https://[::1", "no scheme", "https://a@b@c:x/"] {
            let sig = compute("k", url, &[]);
            assert!(validate_url_only("k", url, &sig));
            assert!(!validate_url_only("k", url, "bogus"));
        }
        assert!(!compute("", "", &[]).is_empty());
    }
}
