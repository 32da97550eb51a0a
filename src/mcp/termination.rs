//! `DELETE /mcp`, a client ending its session, is answered 204 No Content instead of rmcp's 202 Accepted.
//!
//! When rmcp answers, the session is already gone: nothing was accepted for later. The official Python
//! client takes only 200 and 204 as success (`terminate_session` in `mcp/client/streamable_http.py`) and
//! logs "Session termination failed: 202" on every close otherwise; the TypeScript and rmcp clients take
//! any 2xx. The spec (2025-11-25, "Session Management") names no success status, only 405 for a server
//! that does not let clients end sessions, so 204 is what every client accepts. POSTs keep their 202:
//! that is the spec's answer to a notification.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

/// The middleware, around rmcp's service.
pub async fn no_content(request: Request, next: Next) -> Response {
    let deleting = request.method() == Method::DELETE;
    let mut response = next.run(request).await;
    // rmcp's 202 carries an empty body, as a 204 must.
    if deleting && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}
