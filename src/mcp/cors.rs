//! CORS on `/mcp`, for MCP clients that run in a browser page (the MCP Inspector in direct mode, a web
//! app's agent).
//!
//! Such a client's `fetch` with an `Authorization` header is preflighted: the browser first sends an
//! `OPTIONS` request, with no token, and goes on only if the answer names its origin. The edge's Origin
//! check decides which origins these are ([`Origins::allows`]: this server's own, the `SSE_CORS_ORIGIN`
//! list, and any loopback origin when `PUBLIC_URL` is itself loopback) — one rule for both, so an origin
//! the edge admits is never left stuck at the preflight. A wildcard (`SSE_CORS_ORIGIN=*`) opens the
//! events feed to every page, never `/mcp`: placing calls from any site a user visits is not a default
//! anyone wants. The preflight is answered before the token guard (it carries no token by design);
//! the real request is then checked like any other.

use crate::edge::Origins;
use axum::http::{HeaderName, HeaderValue, Method, header};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The headers an MCP client sends and reads over Streamable HTTP.
const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
const PROTOCOL: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

pub fn layer(origins: Origins) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|o| o != "null" && origins.allows_without_wildcard(o))
        }))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT, SESSION, PROTOCOL, LAST_EVENT_ID])
        // A client must read its session id, the protocol version, and why a token was refused.
        .expose_headers([SESSION, PROTOCOL, header::WWW_AUTHENTICATE])
        .max_age(Duration::from_secs(600))
}
