//! What the caller's token lets it do with calls, inside the MCP handlers.
//!
//! The `/mcp` guard already refused requests lacking the scope their method needs; this is the second
//! look, per call: a token's `calls` claim limits which calls it may read or end, and it is applied to
//! every tool, resource and notification. Calls a token may not see are answered exactly like calls
//! that do not exist, so a token cannot probe for other people's CallSids.

use crate::auth::{Claims, SCOPE_CALLS_READ, SCOPE_CALLS_WRITE};
use rmcp::RoleServer;
use rmcp::service::RequestContext;

/// The caller, as its validated token describes it.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// `None` with no token: only when MCP authorization is off (`MCP_AUTH=none`), where the operator's
    /// proxy vouches for every caller.
    claims: Option<Claims>,
    /// Whether a token was required: then a request without claims may do nothing.
    required: bool,
}

impl Access {
    pub(crate) fn of(ctx: &RequestContext<RoleServer>, required: bool) -> Self {
        let claims =
            ctx.extensions.get::<axum::http::request::Parts>().and_then(|p| p.extensions.get::<Claims>()).cloned();
        Self { claims, required }
    }

    fn has(&self, scope: &str) -> bool {
        match &self.claims {
            Some(c) => c.has_scope(scope),
            None => !self.required,
        }
    }

    /// Checks `calls:write` (place, end, steer calls).
    pub(crate) fn write(&self) -> Result<(), String> {
        if self.has(SCOPE_CALLS_WRITE) { Ok(()) } else { Err("this token lacks the 'calls:write' scope".into()) }
    }

    /// Checks `calls:read`.
    pub(crate) fn read(&self) -> Result<(), String> {
        if self.has(SCOPE_CALLS_READ) { Ok(()) } else { Err("this token lacks the 'calls:read' scope".into()) }
    }

    /// Whether the caller may see the call `call_sid` (its `calls` claim; absent = all calls).
    pub(crate) fn may_see(&self, call_sid: &str) -> bool {
        match &self.claims {
            Some(c) => c.may_see(call_sid),
            None => !self.required,
        }
    }

    /// Whether the token is limited to named calls (then it cannot place new ones it could not see).
    pub(crate) fn limited_to_calls(&self) -> bool {
        self.claims.as_ref().is_some_and(|c| c.calls.is_some())
    }

    /// The subject hourly call quotas count by (empty without a token).
    pub(crate) fn subject(&self) -> String {
        self.claims.as_ref().map(|c| c.sub.clone()).unwrap_or_default()
    }
}
