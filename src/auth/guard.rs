//! The bearer-token middleware in front of `/mcp` and `/events`: no valid token, no entry.
//!
//! A request that passes carries its [`Claims`] in its extensions, where the per-subject rate limits,
//! the MCP tools (scopes per tool, the `calls` claim) and the events feed read them. A refused one gets
//! RFC 6750's answer: 401 with a `WWW-Authenticate` challenge (for `/mcp`, pointing at the RFC 9728
//! metadata so MCP clients can find the authorization server), or 403 `insufficient_scope`.
//!
//! `/mcp` needs `calls:write` for the tools that act on the world and `calls:read` for everything that
//! reads calls; the JSON-RPC body is read (bounded) to tell which, so that a missing scope is the HTTP
//! 403 that MCP clients step up from rather than a tool error. The tools check again themselves.

use super::claims::Claims;
use super::error::AuthError;
use super::{Authenticator, SCOPE_CALLS_READ, SCOPE_CALLS_WRITE, SCOPE_EVENTS_READ, bearer_token};
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// The largest `/mcp` request body accepted: tool arguments are a few KiB at most.
pub const MCP_BODY_LIMIT: usize = 1024 * 1024;

/// MCP tools that place, end or steer calls: they need `calls:write`.
pub const WRITE_TOOLS: &[&str] = &["trigger-call", "end-call", "instruct-call"];

/// What one route asks of a request's token.
#[derive(Debug, Clone)]
pub struct Guard {
    /// `None`: no token is asked for (`MCP_AUTH=none`); requests pass with no claims.
    authenticator: Option<Authenticator>,
    route: Route,
    /// The RFC 9728 metadata URL named in challenges.
    resource_metadata: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/mcp`: header only; the scope depends on the JSON-RPC method.
    Mcp,
    /// `/events`: header, cookie or query (EventSource cannot set headers); `events:read`.
    Events,
}

impl Guard {
    /// For `/mcp`; `authenticator` is `None` only when the operator turned MCP authorization off.
    pub fn mcp(authenticator: Option<Authenticator>, resource_metadata: String) -> Self {
        Self { authenticator, route: Route::Mcp, resource_metadata: Some(resource_metadata) }
    }

    /// For `/events`; with no authenticator every request is refused (the feed is never open).
    pub fn events(authenticator: Option<Authenticator>) -> Self {
        Self { authenticator, route: Route::Events, resource_metadata: None }
    }

    fn refuse(&self, error: &AuthError, scope_hint: Option<&str>) -> Response {
        let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let body = serde_json::json!({
            "error": match error {
                AuthError::InsufficientScope { .. } => "insufficient_scope",
                AuthError::Missing => "unauthorized",
                AuthError::Invalid(_) | AuthError::Expired => "invalid_token",
            },
            "error_description": error.to_string(),
        });
        let mut response = (status, axum::Json(body)).into_response();
        let challenge = error.challenge(self.resource_metadata.as_deref(), scope_hint);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// The middleware: validates the token, checks the scope the request needs, and hands the claims on.
pub async fn require(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let Some(authenticator) = guard.authenticator.clone() else {
        return match guard.route {
            Route::Mcp => next.run(request).await,
            Route::Events => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the events feed needs token validation: set JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL\n",
            )
                .into_response(),
        };
    };
    let (mut parts, body) = request.into_parts();
    // MCP authorization: tokens in the query string are never accepted for /mcp.
    let token = bearer_token(&parts, guard.route == Route::Events).map(|t| t.into_owned());
    let hint = match guard.route {
        Route::Mcp => Some("calls:read calls:write"),
        Route::Events => Some(SCOPE_EVENTS_READ),
    };
    let Some(token) = token else { return guard.refuse(&AuthError::Missing, hint) };
    let claims = match authenticator.validate(&token).await {
        Ok(claims) => claims,
        Err(e) => return guard.refuse(&e, hint),
    };
    let body = match guard.route {
        Route::Events => {
            // Validation allows clock-skew leeway past `exp`, but a stream closes at `exp`: a reconnect within
            // the leeway would get a stream that ends at once, every `retry` interval. Refused, EventSource
            // stops and the client knows to ask for a new token.
            if claims.expires_at() <= time::OffsetDateTime::now_utc() {
                return guard.refuse(&AuthError::Expired, hint);
            }
            if !claims.has_scope(SCOPE_EVENTS_READ) {
                return guard.refuse(&AuthError::InsufficientScope { needed: SCOPE_EVENTS_READ }, None);
            }
            body
        }
        Route::Mcp => {
            // Bounded, by the edge's limit too (`edge::body`): past it, the rest is read and thrown away
            // before the edge answers 413 in place of this one.
            let bytes = match to_bytes(body, MCP_BODY_LIMIT).await {
                Ok(b) => b,
                Err(_) => {
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the request body is larger than {} KiB\n", MCP_BODY_LIMIT / 1024),
                    )
                        .into_response();
                }
            };
            let needed = if parts.method == Method::POST { scope_for(&bytes) } else { Needed::Any };
            if let Some(missing) = needed.missing_from(&claims) {
                return guard.refuse(&AuthError::InsufficientScope { needed: missing }, None);
            }
            Body::from(bytes)
        }
    };
    parts.extensions.insert(claims);
    next.run(Request::from_parts(parts, body)).await
}

/// The scope an MCP request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needed {
    /// Any MCP scope: session set-up, listing tools and prompts, pings, notifications.
    Any,
    Read,
    Write,
}

impl Needed {
    /// The scope to ask for when `claims` lacks what this needs.
    fn missing_from(self, claims: &Claims) -> Option<&'static str> {
        let (read, write) = (claims.has_scope(SCOPE_CALLS_READ), claims.has_scope(SCOPE_CALLS_WRITE));
        match self {
            Self::Any if read || write => None,
            Self::Read if read => None,
            Self::Write if write => None,
            Self::Any | Self::Read => Some(SCOPE_CALLS_READ),
            Self::Write => Some(SCOPE_CALLS_WRITE),
        }
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    /// A `Cow`: an escaped method name (`tools\/call`) must be read, not make the parse fail.
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
}

/// Reads the JSON-RPC method (and tool name) from a POST body. A batch needs what its most demanding
/// member needs. A body that is not JSON-RPC needs any scope; rmcp answers it with a parse error.
fn scope_for(body: &[u8]) -> Needed {
    fn one(message: &Message<'_>) -> Needed {
        match message.method.as_deref() {
            Some("tools/call") => {
                let name = message.params.as_ref().and_then(|p| p.name.as_deref()).unwrap_or("");
                if WRITE_TOOLS.contains(&name) { Needed::Write } else { Needed::Read }
            }
            Some(m) if m.starts_with("resources/") || m == "subscriptions/listen" => Needed::Read,
            _ => Needed::Any,
        }
    }
    if let Ok(message) = serde_json::from_slice::<Message<'_>>(body) {
        return one(&message);
    }
    match serde_json::from_slice::<Vec<Message<'_>>>(body) {
        Ok(batch) => batch.iter().map(one).fold(Needed::Any, |worst, n| match (worst, n) {
            (Needed::Write, _) | (_, Needed::Write) => Needed::Write,
            (Needed::Read, _) | (_, Needed::Read) => Needed::Read,
            _ => Needed::Any,
        }),
        Err(_) => Needed::Any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mcp_method_needs_its_scope() {
        let call =
            |name: &str| format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#);
        assert_eq!(scope_for(call("trigger-call").as_bytes()), Needed::Write);
        assert_eq!(scope_for(call("end-call").as_bytes()), Needed::Write);
        assert_eq!(scope_for(call("instruct-call").as_bytes()), Needed::Write);
        assert_eq!(scope_for(call("get-call").as_bytes()), Needed::Read);
        assert_eq!(scope_for(call("wait-for-call").as_bytes()), Needed::Read);
        // An escaped name is still the name.
        assert_eq!(scope_for(br#"{"method":"tools/call","params":{"name":"trigger\u002dcall"}}"#), Needed::Write);
        assert_eq!(scope_for(br#"{"method":"tools\/call","params":{"name":"end-call"}}"#), Needed::Write);
        assert_eq!(scope_for(br#"{"method":"resources/read","params":{"uri":"call://CA1"}}"#), Needed::Read);
        assert_eq!(scope_for(br#"{"method":"subscriptions/listen","params":{}}"#), Needed::Read);
        assert_eq!(scope_for(br#"{"method":"tools/list"}"#), Needed::Any);
        assert_eq!(scope_for(br#"{"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#), Needed::Any);
        assert_eq!(
            scope_for(br#"[{"method":"tools/list"},{"method":"tools/call","params":{"name":"end-call"}}]"#),
            Needed::Write
        );
        assert_eq!(scope_for(b"not json"), Needed::Any);
    }

    #[test]
    fn scopes_are_checked_as_whole_words() {
        let claims = |scope: &str| Claims {
            sub: "s".into(),
            exp: 0,
            iat: None,
            nbf: None,
            iss: None,
            aud: None,
            scope: scope.into(),
            calls: None,
        };
        assert_eq!(Needed::Write.missing_from(&claims("calls:read")), Some(SCOPE_CALLS_WRITE));
        assert_eq!(Needed::Read.missing_from(&claims("calls:write")), Some(SCOPE_CALLS_READ));
        assert_eq!(Needed::Any.missing_from(&claims("calls:write")), None);
        assert_eq!(Needed::Any.missing_from(&claims("events:read")), Some(SCOPE_CALLS_READ));
        assert_eq!(Needed::Write.missing_from(&claims("calls:read calls:write")), None);
    }
}
