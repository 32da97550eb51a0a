//! `GET /metrics` (Prometheus text), and the counter of refused Twilio requests.
//!
//! With `METRICS_TOKEN` set, a scrape must carry `Authorization: Bearer <token>` (compared in constant
//! time); without it, only peers on loopback are answered (a sidecar or a local agent), since the server
//! may be bound to a public address for Twilio.

use crate::app::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

/// Why a scrape is refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// A token is configured and the request's is missing or wrong.
    Unauthorized,
    /// No token is configured and the peer is not on loopback.
    Forbidden,
}

fn admit(token: Option<&str>, authorization: Option<&HeaderValue>, peer: Option<SocketAddr>) -> Result<(), Refusal> {
    match token {
        Some(expected) => {
            let given = authorization
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim)
                .unwrap_or("");
            // `ct_eq` on slices of different lengths is false without comparing contents; the length of
            // the configured token is all a timing could reveal.
            if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) { Ok(()) } else { Err(Refusal::Unauthorized) }
        }
        None => match peer {
            Some(addr) if addr.ip().is_loopback() || is_mapped_loopback(&addr) => Ok(()),
            _ => Err(Refusal::Forbidden),
        },
    }
}

fn is_mapped_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

async fn scrape(State(state): State<AppState>, request: Request) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let authorization = request.headers().get(header::AUTHORIZATION);
    match admit(state.config.metrics_token.as_deref(), authorization, peer) {
        Ok(()) => {}
        Err(Refusal::Unauthorized) => {
            let mut r = (StatusCode::UNAUTHORIZED, "a valid METRICS_TOKEN bearer token is required\n").into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"metrics\""));
            return r;
        }
        Err(Refusal::Forbidden) => {
            return (
                StatusCode::FORBIDDEN,
                "metrics are served to loopback only; set METRICS_TOKEN to scrape remotely\n",
            )
                .into_response();
        }
    }
    let text = super::metrics().prometheus_text();
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(super::prometheus::CONTENT_TYPE));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Middleware for Twilio's routes: counts each refusal (403 bad signature, 400/413 malformed) by route.
/// Only matched routes reach it (`route_layer`), so the path is one of a few fixed strings.
pub async fn count_rejections(request: Request, next: Next) -> Response {
    let route = request.uri().path().to_owned();
    let response = next.run(request).await;
    let reason = match response.status() {
        StatusCode::FORBIDDEN => "signature",
        StatusCode::BAD_REQUEST => "malformed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        _ => return response,
    };
    super::metrics().webhook_rejected(&route, reason);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Option<SocketAddr> {
        s.parse().ok()
    }

    #[test]
    fn with_a_token_only_the_exact_bearer_token_is_admitted_from_anywhere() {
        let good = HeaderValue::from_static("Bearer s3cret-token-0123456789");
        let wrong = HeaderValue::from_static("Bearer s3cret-token-012345678");
        let basic = HeaderValue::from_static("Basic s3cret-token-0123456789");
        let token = Some("s3cret-token-0123456789");
        assert_eq!(admit(token, Some(&good), peer("203.0.113.9:4000")), Ok(()));
        assert_eq!(admit(token, Some(&wrong), peer("127.0.0.1:4000")), Err(Refusal::Unauthorized));
        assert_eq!(admit(token, Some(&basic), peer("127.0.0.1:4000")), Err(Refusal::Unauthorized));
        assert_eq!(admit(token, None, peer("127.0.0.1:4000")), Err(Refusal::Unauthorized), "loopback is no excuse");
    }

    #[test]
    fn without_a_token_only_loopback_peers_are_admitted() {
        assert_eq!(admit(None, None, peer("127.0.0.1:4000")), Ok(()));
        assert_eq!(admit(None, None, peer("[::1]:4000")), Ok(()));
        assert_eq!(admit(None, None, peer("[::ffff:127.0.0.1]:4000")), Ok(()));
        assert_eq!(admit(None, None, peer("10.0.0.5:4000")), Err(Refusal::Forbidden));
        assert_eq!(admit(None, None, peer("[::ffff:10.0.0.5]:4000")), Err(Refusal::Forbidden));
        assert_eq!(admit(None, None, None), Err(Refusal::Forbidden), "no peer address: refused");
    }
}
