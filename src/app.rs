//! The application: shared state, the HTTP router, and serving with a graceful shutdown.
//!
//! Everything long-lived hangs off [`AppState`]: the configuration, the call registry, the switchboard,
//! and one shutdown token that every loop selects on. Background work is spawned on `tasks`, so it is
//! awaited while draining instead of being cut off mid-write.

use crate::auth::{AuthSetupError, Authenticator};
use crate::calls::{Call, CallRegistry};
use crate::carrier::{media, rest, webhooks};
use crate::config::Config;
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
use std::future::{Future, IntoFuture};
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
    /// Cancelled once, when the server starts draining.
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
        let tasks = TaskTracker::new();
        let store = Arc::new(SqliteStore::open(&config.store)?);
        let auth = match &config.auth {
            Some(a) => Some(Authenticator::new(a).await?),
            None => None,
        };
        let call_store: Arc<dyn CallStore> = store.clone();
        let calls = Arc::new(CallRegistry::with_store(config.max_concurrent_calls, Some(call_store)));
        let mut restored: Vec<Call> = store
            .load_calls(RESTORED_CALLS)
            .await?
            .into_iter()
            .filter_map(|c| serde_json::from_str(&c.data).ok())
            .collect();
        restored.reverse();
        calls.restore(restored);
        let event_store: Arc<dyn EventStore> = store.clone();
        let events = Arc::new(EventBus::new(event_store));
        let voices = Arc::new(Voices::new(config.voice.clone(), timing, tasks.clone(), shutdown.clone()));
        let switchboard = Arc::new(Switchboard::new(config.clone(), calls.clone(), voices.clone(), events.clone())?);
        Ok(Self {
            config,
            calls,
            switchboard,
            voices,
            events,
            store,
            auth,
            sse_connections: Arc::default(),
            shutdown,
            tasks,
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(webhooks::router())
        .merge(media::router())
        .merge(sse::router(&state))
        .nest_service("/mcp", mcp::service(state.clone()))
        // The span names the request by its redacted URI: `access_token` query values never reach a log line.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<axum::body::Body>| {
            tracing::info_span!("http", method = %request.method(), uri = %crate::auth::redact_query(request.uri()))
        }))
        .with_state(state)
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The process takes new work; 503 while draining so a load balancer stops sending calls here.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let draining = state.shutdown.is_cancelled();
    let status = if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = serde_json::json!({
        "status": if draining { "draining" } else { "ready" },
        "activeCalls": state.calls.active_count(),
        "sandbox": state.config.sandbox,
    });
    (status, Json(body))
}

/// Serves until `shutdown` resolves, then drains: no new calls, in-flight requests get
/// `SHUTDOWN_GRACE_SECS` to finish, background tasks are awaited, and it returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let token = state.shutdown.clone();
    let drain = {
        let token = token.clone();
        let calls = state.calls.clone();
        async move {
            tokio::select! {
                () = shutdown => {},
                () = token.cancelled() => {},
            }
            tracing::info!("shutting down: refusing new calls, finishing requests in flight");
            calls.close();
            // Ends MCP sessions and their open streams, so connections can close.
            token.cancel();
        }
    };
    // No Nagle: a Twilio mark must not wait behind the ACK of the audio before it.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // `into_make_service`: without it axum copies the whole route table for every connection (~10 KiB each).
    let server = axum::serve(listener, app.into_make_service()).with_graceful_shutdown(drain).into_future();
    let grace = state.config.shutdown_grace;
    let result = tokio::select! {
        r = server => r,
        () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "connections still open after the grace period; closing them");
            Ok(())
        }
    };
    state.tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), state.tasks.wait()).await.is_err() {
        tracing::warn!("background tasks did not finish in time");
    }
    // Every event and call change published so far is on disk before the process exits.
    state.store.flush().await;
    result
}
