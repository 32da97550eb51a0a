//! OAuth 2.0 Protected Resource Metadata (RFC 9728): how an MCP client finds out where to get a token.
//!
//! MCP authorization makes this server an OAuth resource server. A client refused with 401 follows the
//! challenge's `resource_metadata` URL here, reads `authorization_servers`, and gets a token for
//! `resource` from one of them (RFC 8707 resource indicator), which is the audience this server checks.

use super::{SCOPE_CALLS_READ, SCOPE_CALLS_WRITE, SCOPE_EVENTS_READ};
use crate::app::AppState;
use crate::config::Config;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;

/// Where the metadata lives, for the resource `/mcp` (RFC 9728 §3.1: the well-known segment goes
/// between the host and the resource's path) and for the host as a whole.
pub const PATH_MCP: &str = "/.well-known/oauth-protected-resource/mcp";
pub const PATH_ROOT: &str = "/.well-known/oauth-protected-resource";

/// The RFC 9728 §2 document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProtectedResource {
    pub resource: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<&'static str>,
    pub bearer_methods_supported: Vec<&'static str>,
    pub resource_name: &'static str,
    pub resource_documentation: String,
}

impl ProtectedResource {
    /// The document for `/mcp`. Served at both paths: a client that derives the URL from the root
    /// (as some do) gets the same resource identifier as one that follows the challenge.
    pub fn for_mcp(config: &Config) -> Self {
        Self {
            resource: config.resource(),
            authorization_servers: config.access.authorization_servers.clone(),
            scopes_supported: vec![SCOPE_CALLS_WRITE, SCOPE_CALLS_READ, SCOPE_EVENTS_READ],
            // MCP authorization: tokens only in the Authorization header.
            bearer_methods_supported: vec!["header"],
            resource_name: "voice-call-mcp",
            resource_documentation: config.public("/dashboard"),
        }
    }
}

/// The URL challenges point at.
pub fn url(config: &Config) -> String {
    config.public(PATH_MCP)
}

pub fn router() -> Router<AppState> {
    Router::new().route(PATH_MCP, get(metadata)).route(PATH_ROOT, get(metadata))
}

async fn metadata(State(state): State<AppState>) -> Response {
    let mut response = Json(ProtectedResource::for_mcp(&state.config)).into_response();
    // The same for everyone and rarely changed. (No CORS: like every route, browsers from other origins
    // are refused at the edge unless configured.)
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}
