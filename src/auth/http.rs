//! Where a token sits in an HTTP request, and keeping it out of logs.
//!
//! `Authorization: Bearer` everywhere. A cookie or the `access_token` query parameter only where the
//! caller allows it — `/events`, because browsers' `EventSource` cannot set headers — and never on
//! `/mcp` (MCP authorization forbids tokens in the query: URLs end up in logs, histories, Referers).

use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};
use std::borrow::Cow;

/// The cookie and query parameter name (RFC 6750 §2.3 for the query form).
const PARAM: &str = "access_token";

/// The request's bearer token: the `Authorization` header first, then (if `allow_cookie_and_query`) an
/// `access_token` cookie, then an `access_token` query parameter. Empty values count as absent.
pub fn bearer_token<'a>(parts: &'a Parts, allow_cookie_and_query: bool) -> Option<Cow<'a, str>> {
    if let Some(token) = from_authorization(&parts.headers) {
        return Some(Cow::Borrowed(token));
    }
    if !allow_cookie_and_query {
        return None;
    }
    from_cookie(&parts.headers).map(Cow::Borrowed).or_else(|| from_query(&parts.uri))
}

fn from_authorization(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    // RFC 7235: the scheme is case-insensitive.
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn from_cookie(headers: &HeaderMap) -> Option<&str> {
    // HTTP/2 may split cookies over several `Cookie` headers (RFC 9113 §8.2.3).
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == PARAM && !value.is_empty())
        .map(|(_, value)| value.trim_matches('"'))
}

fn from_query(uri: &Uri) -> Option<Cow<'_, str>> {
    url::form_urlencoded::parse(uri.query()?.as_bytes()).find(|(k, v)| k == PARAM && !v.is_empty()).map(|(_, v)| v)
}

/// The request URI for a log line, with every `access_token` query value replaced by `REDACTED`. Names
/// are compared decoded, as [`bearer_token`] reads them, so `access%5Ftoken=` is redacted too.
pub fn redact_query(uri: &Uri) -> String {
    let prefix = match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
        _ => String::new(),
    };
    let Some(query) = uri.query() else { return format!("{prefix}{}", uri.path()) };
    let pairs: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            let decoded = url::form_urlencoded::parse(name.as_bytes()).next().map(|(k, _)| k);
            if decoded.as_deref() == Some(PARAM) { Cow::Owned(format!("{name}=REDACTED")) } else { Cow::Borrowed(pair) }
        })
        .collect();
    format!("{prefix}{}?{}", uri.path(), pairs.join("&"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_header_is_read_with_any_scheme_case() {
        let p = parts("/mcp", &[("authorization", "bearer  abc.def.ghi ")]);
        assert_eq!(bearer_token(&p, false).as_deref(), Some("abc.def.ghi"));
        assert_eq!(bearer_token(&parts("/mcp", &[("authorization", "Basic dXNlcjpwdw==")]), true), None);
        assert_eq!(bearer_token(&parts("/mcp", &[("authorization", "Bearer ")]), true), None);
        assert_eq!(bearer_token(&parts("/mcp", &[]), true), None);
    }

    #[test]
    fn cookie_and_query_only_when_allowed_and_the_header_wins() {
        let cookie = parts("/events", &[("cookie", "theme=dark; access_token=from.cookie.x")]);
        assert_eq!(bearer_token(&cookie, true).as_deref(), Some("from.cookie.x"));
        assert_eq!(bearer_token(&cookie, false), None);
        let query = parts("/events?types=call-status&access_token=from.query.x", &[]);
        assert_eq!(bearer_token(&query, true).as_deref(), Some("from.query.x"));
        assert_eq!(bearer_token(&query, false), None);
        let encoded = parts("/events?access%5Ftoken=a%2Eb.c", &[]);
        assert_eq!(bearer_token(&encoded, true).as_deref(), Some("a.b.c"));
        let all = parts("/events?access_token=q", &[("cookie", "access_token=c"), ("authorization", "Bearer h")]);
        assert_eq!(bearer_token(&all, true).as_deref(), Some("h"));
        assert_eq!(bearer_token(&parts("/events?access_token=", &[]), true), None);
    }

    #[test]
    fn tokens_are_redacted_from_logged_uris() {
        let uri: Uri = "/events?callSid=CA1&access_token=secret.jwt.x&access%5Ftoken=again&x=1".parse().unwrap();
        assert_eq!(redact_query(&uri), "/events?callSid=CA1&access_token=REDACTED&access%5Ftoken=REDACTED&x=1");
        assert_eq!(redact_query(&"/events".parse().unwrap()), "/events");
        let absolute: Uri = "https://h.example/events?access_token=t".parse().unwrap();
        assert_eq!(redact_query(&absolute), "https://h.example/events?access_token=REDACTED");
    }
}
