//! Host and Origin validation for every route a browser could reach.
//!
//! A page on another site (or one that rebinds its DNS name to this server's address) can make a
//! browser send requests here; checking `Host` stops the rebinding and checking `Origin` stops the
//! cross-site request. Non-browser clients (MCP clients, Twilio, curl) send no `Origin` and pass.
//! Health probes and `/metrics` are exempt: Kubernetes and Prometheus send the pod's IP as `Host`
//! (`/metrics` has its own token or loopback rule). This is the only Host and Origin check, `/mcp`
//! included: rmcp's own are turned off (`mcp::service`), so one rule holds everywhere.

use crate::config::Config;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The hosts and origins this server answers to.
#[derive(Debug, Clone)]
pub struct Origins {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Lower-case host names (no port): the public host and loopback.
    hosts: Vec<String>,
    /// Exact origins (`https://calls.example.com`): the public one and `SSE_CORS_ORIGIN`'s.
    origins: Vec<String>,
    /// `SSE_CORS_ORIGIN=*`: any origin may read the feed.
    any_origin: bool,
    /// A loopback `PUBLIC_URL` (sandbox, local development): any loopback origin is this server too.
    loopback_origins: bool,
}

const LOOPBACK: &[&str] = &["localhost", "127.0.0.1", "::1"];

impl Origins {
    pub fn new(config: &Config) -> Self {
        let public_host = config.public_url.host_str().unwrap_or("localhost").trim_matches(['[', ']']).to_lowercase();
        let loopback_origins = LOOPBACK.contains(&public_host.as_str());
        let mut hosts: Vec<String> = LOOPBACK.iter().map(|h| (*h).to_owned()).collect();
        hosts.push(public_host);
        let mut origins = vec![config.public_url.origin().ascii_serialization()];
        origins.extend(config.sse.cors_origins.iter().filter(|o| *o != "*").cloned());
        let any_origin = config.sse.cors_origins.iter().any(|o| o == "*");
        Self { inner: Arc::new(Inner { hosts, origins, any_origin, loopback_origins }) }
    }

    /// Why the request must be refused, if it must.
    fn refusal(&self, uri: &Uri, headers: &HeaderMap) -> Option<(StatusCode, &'static str)> {
        let host =
            headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
        let Some(host) = host else { return Some((StatusCode::BAD_REQUEST, "the request has no Host header")) };
        let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
            return Some((StatusCode::BAD_REQUEST, "the Host header is malformed"));
        };
        let name = authority.host().trim_matches(['[', ']']).to_ascii_lowercase();
        if !self.inner.hosts.contains(&name) {
            return Some((
                StatusCode::FORBIDDEN,
                "this server does not answer to that Host (set PUBLIC_URL to the name clients use)",
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !self.origin_allowed(origin) {
                return Some((StatusCode::FORBIDDEN, "requests from this Origin are not allowed"));
            }
        }
        None
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.inner.any_origin || self.allows_without_wildcard(origin)
    }

    /// Whether `origin` is one this server admits by name: its own, `SSE_CORS_ORIGIN`'s list, or (for a
    /// loopback `PUBLIC_URL`) any loopback origin — leaving out `SSE_CORS_ORIGIN=*`, which opens only the
    /// events feed to every page (`mcp::cors`).
    pub fn allows_without_wildcard(&self, origin: &str) -> bool {
        if self.inner.origins.iter().any(|o| o == origin) {
            return true;
        }
        self.inner.loopback_origins
            && url::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| LOOPBACK.contains(&h.trim_matches(['[', ']'])))
            })
    }
}

/// The middleware: 400 for a missing or malformed Host, 403 for a foreign Host or Origin.
pub async fn check(State(origins): State<Origins>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return next.run(request).await;
    }
    match origins.refusal(request.uri(), request.headers()) {
        None => next.run(request).await,
        Some((status, reason)) => {
            tracing::info!(%status, reason, "request refused at the edge");
            (status, format!("{reason}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::RawConfig;

    fn origins(public: &str, cors: Option<&str>) -> Origins {
        let raw = RawConfig {
            sandbox: Some("true".into()),
            public_url: Some(public.into()),
            sse_cors_origin: cors.map(Into::into),
            ..RawConfig::default()
        };
        Origins::new(&raw.validate().unwrap())
    }

    fn ask(o: &Origins, host: Option<&str>, origin: Option<&str>) -> Option<StatusCode> {
        let mut headers = HeaderMap::new();
        if let Some(h) = host {
            headers.insert(header::HOST, h.parse().unwrap());
        }
        if let Some(h) = origin {
            headers.insert(header::ORIGIN, h.parse().unwrap());
        }
        o.refusal(&Uri::from_static("/events"), &headers).map(|(s, _)| s)
    }

    #[test]
    fn the_public_host_and_loopback_are_answered_with_any_port() {
        let o = origins("https://calls.example.com", None);
        assert_eq!(ask(&o, Some("calls.example.com"), None), None);
        assert_eq!(ask(&o, Some("CALLS.example.com:443"), None), None);
        assert_eq!(ask(&o, Some("127.0.0.1:8080"), None), None);
        assert_eq!(ask(&o, Some("[::1]:8080"), None), None);
        assert_eq!(ask(&o, Some("evil.example.net"), None), Some(StatusCode::FORBIDDEN));
        assert_eq!(ask(&o, None, None), Some(StatusCode::BAD_REQUEST));
        assert_eq!(ask(&o, Some("a b"), None), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn only_this_server_and_configured_origins_pass() {
        let o = origins("https://calls.example.com", Some("https://dash.example.com"));
        assert_eq!(ask(&o, Some("calls.example.com"), Some("https://calls.example.com")), None);
        assert_eq!(ask(&o, Some("calls.example.com"), Some("https://dash.example.com")), None);
        let bad = Some(StatusCode::FORBIDDEN);
        assert_eq!(ask(&o, Some("calls.example.com"), Some("https://evil.example.net")), bad);
        assert_eq!(ask(&o, Some("calls.example.com"), Some("null")), bad);
        // A public server does not take loopback pages for itself.
        assert_eq!(ask(&o, Some("calls.example.com"), Some("http://localhost:3000")), bad);
        let any = origins("https://calls.example.com", Some("*"));
        assert_eq!(ask(&any, Some("calls.example.com"), Some("https://anything.example.org")), None);
    }

    #[test]
    fn a_loopback_server_accepts_its_other_loopback_names() {
        let o = origins("http://127.0.0.1:8080", None);
        assert_eq!(ask(&o, Some("localhost:8080"), Some("http://localhost:8080")), None);
        assert_eq!(ask(&o, Some("localhost:8080"), Some("https://evil.example.net")), Some(StatusCode::FORBIDDEN));
    }
}
