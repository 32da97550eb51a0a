//! The MCP face of the server: tools, resources and prompts over Streamable HTTP (rmcp).
//!
//! One [`McpServer`] is made per MCP session (2025-06-18 / 2025-11-25 clients) or per request
//! (stateless 2026-07-28 clients). It is a thin handle: the routers are built once and shared, and
//! everything it acts on lives in [`AppState`].

// Logging is deprecated by SEP-2577 (2026-07-28) but is part of the 2025 revisions we also serve, and the
// conformance suite checks `logging/setLevel`.
#![allow(deprecated)]

mod access;
pub mod cors;
mod notify;
mod prompts;
pub mod termination;
mod tools;

use crate::app::AppState;
use crate::calls::{Call, PageRequest};
use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    Implementation, ListResourceTemplatesResult, ListResourcesResult, LoggingLevel, PaginatedRequestParams,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource, ResourceContents,
    ResourceTemplate, ResourceUpdatedNotification, ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig,
    ServerNotification, SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, prompt_handler, tool_handler};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const INSTRUCTIONS: &str = "This server places real phone calls. trigger-call dials a number (E.164, e.g. \
+14155550123) and an AI voice agent holds the conversation described by callContext; it returns a callSid \
at once. Follow the call with wait-for-call (blocks until it ends and returns the transcript), get-call, or \
the call://{callSid} resource. end-call hangs up. Calls cost money and ring real people: only call numbers \
the user asked you to call.";

/// The routers, built once: generating tool schemas is work not worth redoing per session.
#[derive(Debug)]
pub(crate) struct Routes {
    tools: ToolRouter<McpServer>,
    prompts: PromptRouter<McpServer>,
}

#[derive(Debug, Clone)]
pub struct McpServer {
    state: AppState,
    routes: Arc<Routes>,
    /// The level a legacy session asked for with `logging/setLevel`.
    log_level: Arc<Mutex<LoggingLevel>>,
    /// This session's call-event forwarders (legacy sessions only).
    forwarders: Arc<notify::Forwarders>,
}

impl McpServer {
    fn new(state: AppState, routes: Arc<Routes>) -> Self {
        Self { state, routes, log_level: Arc::new(Mutex::new(LoggingLevel::Info)), forwarders: Arc::default() }
    }

    fn access(&self, ctx: &RequestContext<RoleServer>) -> access::Access {
        access::Access::of(ctx, self.state.config.access.mcp_requires_token)
    }

    /// Pushes a call's events to this session from after event `after`, if the session can be pushed to.
    fn forward(&self, ctx: &RequestContext<RoleServer>, call_sid: &str, after: u64) {
        if !has_session(ctx) {
            return;
        }
        let forward = notify::Forward {
            bus: self.state.events.clone(),
            after,
            call_sid: call_sid.to_owned(),
            peer: ctx.peer.clone(),
            level: self.log_level.clone(),
        };
        self.forwarders.start(&self.state.tasks, &self.state.shutdown, forward);
    }
}

/// Whether the request belongs to a session with a stream to push on (the revisions before 2026-07-28).
fn has_session(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version().is_some_and(|v| v.as_str() < ProtocolVersion::V_2026_07_28.as_str())
}

fn call_sid_of(uri: &str) -> Option<&str> {
    uri.strip_prefix("call://").filter(|s| !s.is_empty() && *s != "transcriptions/latest")
}

/// The `/mcp` service: rmcp's Streamable HTTP transport, configured for a public host.
pub fn service(state: AppState) -> StreamableHttpService<McpServer, LocalSessionManager> {
    let routes = Arc::new(Routes { tools: McpServer::tool_router(), prompts: McpServer::prompt_router() });
    let config = &state.config;
    // The session must outlive the longest call: its idle timer is not reset by SSE traffic.
    let idle = config.max_call_duration + config.ring_timeout + Duration::from_secs(15 * 60);
    let mut sessions = LocalSessionManager::default();
    sessions.session_config = {
        let mut s = SessionConfig::default();
        s.keep_alive = Some(idle);
        s
    };
    // Host and Origin are checked once, by the edge (`edge::origin::check`), which `app::router` layers
    // over `/mcp` as over every route but the health probes and `/metrics`; rmcp's own checks are off. Two
    // checks disagreed: rmcp allowed only `PUBLIC_URL`'s origin, and refused a browser client on another
    // loopback origin (the MCP Inspector at http://localhost:6274) that the edge lets through for a
    // loopback `PUBLIC_URL`. `tests/it/mcp_http.rs` holds `/mcp` to the edge's rule.
    let http = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_cancellation_token(state.shutdown.child_token())
        .with_sse_keep_alive(Some(Duration::from_secs(15)));
    StreamableHttpService::new(move || Ok(McpServer::new(state.clone(), routes.clone())), Arc::new(sessions), http)
}

fn call_resource(call: &Call) -> Resource {
    Resource::new(format!("call://{}", call.call_sid), format!("call {}", call.call_sid))
        .with_title(format!("Call to {} ({})", call.request.to, call.status))
        .with_description("The call's record and transcript")
        .with_mime_type("application/json")
}

#[tool_handler(router = self.routes.tools)]
#[prompt_handler(router = self.routes.prompts)]
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_prompts()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_tools()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("voice-call-mcp", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self.log_level.lock().unwrap_or_else(|p| p.into_inner()) = request.level;
        Ok(())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let access = self.access(&context);
        access.read().map_err(|e| ErrorData::invalid_request(e, None))?;
        let sid = call_sid_of(&request.uri)
            .filter(|sid| access.may_see(sid) && self.state.calls.get(sid).is_some())
            .ok_or_else(|| ErrorData::resource_not_found(format!("no resource {}", request.uri), None))?;
        self.forward(&context, sid, self.state.events.last_id());
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Some(sid) = call_sid_of(&request.uri) {
            self.forwarders.stop(sid);
        }
        Ok(())
    }

    /// 2026-07-28 `subscriptions/listen`: `resources/updated` for `call://…` resources only.
    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        let calls: Vec<String> = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| call_sid_of(uri).is_some())
            .cloned()
            .collect();
        let mut accepted = SubscriptionFilter::new();
        accepted.resource_subscriptions = Some(calls);
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let access = self.access(context.request_context());
        access.read().map_err(|e| ErrorData::invalid_request(e, None))?;
        // Only calls this token may see: the others are dropped from the subscription, silently.
        let uris: Vec<String> = context
            .accepted()
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| call_sid_of(uri).is_some_and(|sid| access.may_see(sid)))
            .cloned()
            .collect();
        let mut follower = self.state.events.follow(None);
        loop {
            let event = tokio::select! {
                e = follower.next() => e,
                () = context.cancelled() => return Ok(()),
                () = self.state.shutdown.cancelled() => return Ok(()),
            };
            let Ok(event) = event else { return Ok(()) };
            let uri = format!("call://{}", event.call_sid);
            if uris.contains(&uri) {
                let note = ServerNotification::ResourceUpdatedNotification(ResourceUpdatedNotification::new(
                    ResourceUpdatedNotificationParam::new(uri),
                ));
                if context.sink().send(note).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let access = self.access(&context);
        access.read().map_err(|e| ErrorData::invalid_request(e, None))?;
        let mut resources: Vec<Resource> = self
            .state
            .calls
            .list(None, if access.limited_to_calls() { usize::MAX } else { 50 })
            .iter()
            .filter(|c| access.may_see(&c.call_sid))
            .take(50)
            .map(call_resource)
            .collect();
        resources.push(
            Resource::new("call://transcriptions/latest", "latest transcription")
                .with_title("Transcript of the latest call")
                .with_mime_type("application/json"),
        );
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("call://{callSid}", "call")
                .with_title("A call's record and transcript")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let access = self.access(&context);
        access.read().map_err(|e| ErrorData::invalid_request(e, None))?;
        let uri = request.uri.as_str();
        let not_found = || {
            ErrorData::resource_not_found(
                format!(
                    "no resource {uri}: expected call://{{callSid}} for a known call, or call://transcriptions/latest"
                ),
                Some(serde_json::json!({ "uri": uri })),
            )
        };
        let body = match uri.strip_prefix("call://") {
            Some("transcriptions/latest") => {
                let latest = if access.limited_to_calls() {
                    let visible =
                        self.state.calls.list(None, usize::MAX).into_iter().find(|c| access.may_see(&c.call_sid));
                    visible.and_then(|c| self.state.calls.entry(&c.call_sid))
                } else {
                    self.state.calls.latest()
                };
                let record = latest.map(|e| e.record(PageRequest::default()));
                serde_json::json!({
                    "callSid": record.as_ref().map(|r| r.call.call_sid.clone()),
                    "status": record.as_ref().map(|r| r.call.status),
                    "transcript": record.as_ref().map(|r| r.page.transcript.clone()).unwrap_or_default(),
                    "transcriptTotal": record.as_ref().map_or(0, |r| r.page.transcript_total),
                    "transcriptFrom": record.as_ref().map_or(0, |r| r.page.transcript_from),
                })
            }
            Some(sid) if !access.may_see(sid) => return Err(not_found()),
            // The record with the latest page of its transcript: get-call pages through a long one.
            Some(sid) => {
                serde_json::to_value(self.state.calls.record(sid, PageRequest::default()).ok_or_else(not_found)?)
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
            }
            None => return Err(not_found()),
        };
        let contents = ResourceContents::TextResourceContents {
            uri: uri.to_owned(),
            mime_type: Some("application/json".into()),
            text: body.to_string(),
            meta: None,
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}
