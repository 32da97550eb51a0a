//! The application: shared state, the HTTP router, and serving with a graceful shutdown.
//!
//! Everything long-lived hangs off [`AppState`]: the configuration, the call registry, the switchboard,
//! and one shutdown token that every loop selects on. Background work is spawned on `tasks`, so it is
//! awaited while draining instead of being cut off mid-write.

use crate::auth::guard::{self, Guard};
use crate::auth::{AuthSetupError, Authenticator, metadata};
use crate::calls::{Call, CallRegistry, CallStatus, Transcript, TranscriptLine};
use crate::carrier::{media, rest, webhooks};
use crate::config::Config;
use crate::edge::body::{self, BodyLimit};
use crate::edge::rate::Group;
use crate::edge::{Limits, Origins, origin};
use crate::events::{EventBus, sse};
use crate::mcp;
use crate::store::{CallStore, EventStore, SqliteStore, StoreError};
use crate::switchboard::Switchboard;
use crate::voice::Voices;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::TraceLayer;

#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub calls: Arc<CallRegistry>,
    pub switchboard: Arc<Switchboard>,
    pub voices: Arc<Voices>,
    pub events: Arc<EventBus>,
    pub store: Arc<SqliteStore>,
    /// Token validation; `None` when no key is configured (the events feed then refuses everyone).
    pub auth: Option<Authenticator>,
    pub sse_connections: Arc<sse::Connections>,
    /// Rate-limit buckets, per route group.
    pub limits: Limits,
    /// Cancelled once, when the server starts draining: no new calls, `/readyz` says 503.
    pub draining: CancellationToken,
    /// Cancelled when the drain timeout has passed with calls still active: their AI wraps up politely.
    pub wrap_up: CancellationToken,
    /// Cancelled once the calls are over: ends MCP sessions, event streams and background loops.
    pub shutdown: CancellationToken,
    /// Every background task; awaited (bounded) before the process exits.
    pub tasks: TaskTracker,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Carrier(#[from] rest::Error),
    #[error("DATABASE_URL: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
}

/// Calls from earlier runs loaded back at start, for `list-calls`, `get-call` and resources.
const RESTORED_CALLS: usize = 10_000;

impl AppState {
    pub async fn new(config: Config) -> Result<Self, StartError> {
        Self::with_timing(config, crate::voice::bridge::Timing::default()).await
    }

    /// As [`AppState::new`], with the voice bridge's grace periods set (tests shorten them).
    pub async fn with_timing(config: Config, timing: crate::voice::bridge::Timing) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let draining = CancellationToken::new();
        let wrap_up = CancellationToken::new();
        let tasks = TaskTracker::new();
        let store = Arc::new(SqliteStore::open(&config.store)?);
        let auth = match &config.auth {
            Some(a) => Some(Authenticator::new(a).await?),
            None => None,
        };
        let call_store: Arc<dyn CallStore> = store.clone();
        let calls = Arc::new(CallRegistry::with_store(config.max_concurrent_calls, Some(call_store)));
        calls.restore(restored_calls(&store).await?);
        let event_store: Arc<dyn EventStore> = store.clone();
        let events = Arc::new(EventBus::new(event_store));
        let voices = Arc::new(Voices::new(config.voice.clone(), timing, tasks.clone(), wrap_up.clone()));
        let switchboard = Arc::new(Switchboard::new(config.clone(), calls.clone(), voices.clone(), events.clone())?);
        Ok(Self {
            limits: Limits::new(&config.access),
            config,
            calls,
            switchboard,
            voices,
            events,
            store,
            auth,
            sse_connections: Arc::default(),
            draining,
            wrap_up,
            shutdown,
            tasks,
        })
    }
}

/// Calls from earlier runs with their transcripts, oldest first. A record saved by a build that kept
/// the transcript inside it still brings its lines back.
async fn restored_calls(store: &SqliteStore) -> Result<Vec<(Call, Transcript)>, StoreError> {
    #[derive(serde::Deserialize)]
    struct Legacy {
        #[serde(default)]
        transcript: Vec<TranscriptLine>,
    }
    let mut lines: HashMap<String, Vec<TranscriptLine>> = HashMap::new();
    for line in store.load_lines(RESTORED_CALLS).await? {
        if let Ok(l) = serde_json::from_str(&line.data) {
            lines.entry(line.call_sid).or_default().push(l);
        }
    }
    let mut restored: Vec<(Call, Transcript)> = store
        .load_calls(RESTORED_CALLS)
        .await?
        .into_iter()
        .filter_map(|c| {
            let call: Call = serde_json::from_str(&c.data).ok()?;
            let lines = match lines.remove(&c.call_sid) {
                Some(lines) => lines,
                None => serde_json::from_str::<Legacy>(&c.data).map(|l| l.transcript).unwrap_or_default(),
            };
            Some((call, Transcript::from_lines(lines)))
        })
        .collect();
    restored.reverse();
    Ok(restored)
}

/// Every route, each group behind its own rate limits; `/mcp` and `/events` behind the token guard;
/// everything but the health probes behind the Host/Origin check; every body that is read bounded.
pub fn router(state: AppState) -> Router {
    let config = &state.config;
    let limits = &state.limits;
    let origins = Origins::new(config);
    let mcp_authenticator = if config.access.mcp_requires_token { state.auth.clone() } else { None };
    let mcp_guard = Guard::mcp(mcp_authenticator, metadata::url(config));
    let mcp = Router::new()
        .nest_service("/mcp", mcp::service(state.clone()))
        .layer(axum::middleware::from_fn(mcp::termination::no_content))
        .layer(limits.by_subject(Group::Mcp))
        .layer(axum::middleware::from_fn_with_state(mcp_guard, guard::require))
        // Browser clients' preflights are answered here, before the token guard (they carry no token).
        .layer(mcp::cors::layer(origins.clone()))
        .layer(limits.by_address(Group::Mcp));
    // Twilio's own buckets: a flood on /mcp or /events never delays a status callback or a media stream.
    let twilio = webhooks::router().merge(media::router()).layer(limits.by_address(Group::Twilio));
    let other = metadata::router().merge(crate::dashboard::router()).layer(limits.by_address(Group::Other));
    // `/events` responses last as long as their streams, for hours. tower-http's trace and body-limit
    // layers wrap the response body, so every event would pass through two more boxed bodies and enter
    // the request's span: the feed gets a span covering the request up to its response head instead, and
    // no body limit (it reads no body).
    let events = sse::router(&state)
        .layer(axum::middleware::from_fn_with_state(origins.clone(), origin::check))
        .layer(axum::middleware::from_fn(trace_head));
    let traced = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Protected by its own token or a loopback peer; scraped by address (no Host check, no rate limit).
        .merge(crate::telemetry::route::router())
        .merge(twilio)
        .merge(mcp)
        .merge(other)
        .layer(axum::middleware::from_fn_with_state(origins, origin::check))
        // Every body, `/mcp`'s too when MCP authorization is off and the guard does not read it; Twilio's
        // routes bound theirs tighter.
        .layer(axum::middleware::from_fn_with_state(BodyLimit(guard::MCP_BODY_LIMIT), body::bounded))
        .layer(TraceLayer::new_for_http().make_span_with(http_span));
    // Merged into `events`, not the other way round: of two routers' default fallbacks the merged-in one
    // is kept, and unknown paths must get the traced 404, not the feed's token check.
    events.merge(traced).with_state(state)
}

/// The span of one HTTP request, named by its redacted URI: `access_token` query values never reach a
/// log line (nor a trace: the OpenTelemetry span name is the method and path only).
fn http_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let name = format!("{} {}", request.method(), request.uri().path());
    tracing::info_span!(
        "http",
        otel.name = name,
        otel.kind = "server",
        method = %request.method(),
        uri = %crate::auth::redact_query(request.uri())
    )
}

/// [`http_span`] for a streaming route: the span covers the request until its response head is ready,
/// and the body streams outside it, unwrapped.
async fn trace_head(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument as _;
    let span = http_span(&request);
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(status = response.status().as_u16(), latency = ?started.elapsed(), "response head sent");
    });
    response
}

/// The calls' part of a drain: refuse new calls, let active ones finish for the drain timeout, then
/// have their AI say goodbye (ringing calls are cancelled), and hang up whatever is left.
async fn drain_calls(state: &AppState) {
    let calls = &state.calls;
    calls.close();
    state.draining.cancel();
    let timeout = state.config.drain_timeout;
    tracing::info!(
        active = calls.active_count(),
        ?timeout,
        "shutting down: refusing new calls, letting active calls finish"
    );
    if tokio::time::timeout(timeout, calls.until_idle()).await.is_ok() {
        return;
    }
    tracing::info!(active = calls.active_count(), "drain timeout: asking the AI to wrap up the remaining calls");
    state.wrap_up.cancel();
    // A phone still ringing has nobody to say goodbye to: cancel it now.
    for call in calls.active().into_iter().filter(|c| c.status != CallStatus::InProgress) {
        if let Err(e) = state.switchboard.end(&call.call_sid).await {
            tracing::warn!(call_sid = %call.call_sid, error = %e, "could not cancel a ringing call while draining");
        }
    }
    let timing = state.voices.timing();
    let goodbye = timing.wrap_up_grace + timing.goodbye_grace + Duration::from_secs(2);
    if tokio::time::timeout(goodbye, calls.until_idle()).await.is_ok() {
        return;
    }
    for call in calls.active() {
        tracing::warn!(call_sid = %call.call_sid, "hanging up: the call did not wrap up in time");
        if let Err(e) = state.switchboard.end(&call.call_sid).await {
            tracing::warn!(call_sid = %call.call_sid, error = %e, "could not hang up while draining");
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), calls.until_idle()).await.is_err() {
        tracing::warn!(active = calls.active_count(), "calls still open at exit; the carrier's time limit ends them");
    }
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The process takes new work; 503 while draining so a load balancer stops sending calls here.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let draining = state.draining.is_cancelled();
    let status = if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = serde_json::json!({
        "status": if draining { "draining" } else { "ready" },
        "activeCalls": state.calls.active_count(),
        "sandbox": state.config.sandbox,
    });
    (status, Json(body))
}

/// Serves until `shutdown` resolves, then drains: no new calls; active calls may go on for
/// `DRAIN_TIMEOUT_SECS`, then their AI is told to wrap up and they are hung up; then MCP sessions and
/// event streams end, in-flight requests get `SHUTDOWN_GRACE_SECS`, background tasks are awaited, every
/// event is flushed to the store, and it returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let token = state.shutdown.clone();
    let drain = {
        let state = state.clone();
        async move {
            let asked = tokio::select! {
                () = shutdown => true,
                // Cancelled directly (by an embedding program): stop now, no call drain.
                () = state.shutdown.cancelled() => false,
            };
            if asked {
                drain_calls(&state).await;
            }
            // Ends MCP sessions and their open streams, and event streams (after what was published so
            // far), so connections can close.
            state.shutdown.cancel();
            state.events.close();
        }
    };
    // Calls the last run left unfinished: asked after now that Twilio's callbacks can reach us.
    state.tasks.spawn(crate::recovery::reconcile_all(
        state.switchboard.clone(),
        crate::recovery::Backoff::default(),
        token.clone(),
    ));
    // Buckets of clients not seen for a while are forgotten, so the limiters' memory stays bounded.
    state.tasks.spawn({
        let (limits, switchboard, token) = (state.limits.clone(), state.switchboard.clone(), token.clone());
        async move {
            let mut every = tokio::time::interval(Limits::FORGET_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        limits.forget_idle();
                        switchboard.forget_idle();
                    }
                    () = token.cancelled() => return,
                }
            }
        }
    });
    // HTTP/1.1 connections with the peer's address (rate limits, `/metrics`), no Nagle, a header timeout.
    let server = crate::listener::serve(listener, app, drain);
    let grace = state.config.shutdown_grace;
    tokio::select! {
        () = server => {},
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "connections still open after the grace period; closing them");
        }
    };
    state.tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), state.tasks.wait()).await.is_err() {
        tracing::warn!("background tasks did not finish in time");
    }
    // Every event and call change published so far is on disk before the process exits.
    state.store.flush().await;
    Ok(())
}
