//! `GET /twilio/media`: the Media Streams WebSocket, up to the point where the call is known.
//!
//! The handshake must carry a valid `X-Twilio-Signature` (over our public `wss://…/twilio/media` URL, no
//! params), else 403 before any upgrade. After the upgrade, Twilio's `start` must name a call we placed
//! and carry that call's secret token (from our TwiML's `<Parameter>`). Anything else before that — an
//! unknown call, a wrong token, a malformed frame, a second stream for the same call — closes this one
//! socket with a logged reason; no other call is touched. A good stream is handed to the call's voice
//! task, which skips a malformed frame rather than end the call over it.

use super::signature;
use super::stream::{self, Inbound};
use crate::app::AppState;
use crate::voice::bridge::TwilioLink;
use crate::voice::client::{TWILIO_READ_BUFFER, WS_WRITE_BUFFER};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Twilio sends `connected` and `start` at once; a socket that does not is not Twilio.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest WebSocket message read from a media stream. Twilio's are under a few KiB; anything
/// larger is read and skipped by the bridge as malformed (one bad frame never ends a call), up to this
/// bound, past which the socket itself fails and the call is ended politely.
const MAX_FRAME: usize = 2 * 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/twilio/media", get(upgrade))
        .route_layer(axum::middleware::from_fn(crate::telemetry::route::count_rejections))
}

async fn upgrade(State(state): State<AppState>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let given = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let url = state.config.media_stream_url();
    if !signature::validate_url_only(&state.config.twilio.auth_token, &url, given) {
        tracing::warn!("media stream refused: bad or missing X-Twilio-Signature");
        return (StatusCode::FORBIDDEN, "invalid X-Twilio-Signature\n").into_response();
    }
    ws.read_buffer_size(TWILIO_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| accept(state, socket))
}

async fn refuse(mut socket: WebSocket, reason: &'static str) {
    tracing::warn!(reason, "media stream closed");
    let frame = CloseFrame { code: close_code::POLICY, reason: reason.into() };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn accept(state: AppState, mut socket: WebSocket) {
    let start = match tokio::time::timeout(START_TIMEOUT, read_start(&mut socket)).await {
        Ok(Ok(start)) => start,
        Ok(Err(reason)) => return refuse(socket, reason).await,
        Err(_) => return refuse(socket, "no start message in time").await,
    };
    let (stream_sid, call_sid, token) = start;
    let Some(entry) = state.calls.entry(&call_sid) else {
        return refuse(socket, "unknown call").await;
    };
    // A call restored from a previous run has no token: nothing may stream into it.
    let expected = entry.stream_token();
    if expected.is_empty() || !bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
        return refuse(socket, "wrong call token").await;
    }
    let Some(handover) = state.voices.take_twilio(&call_sid) else {
        return refuse(socket, "the call already has a stream, or is not live").await;
    };
    tracing::info!(call_sid = %call_sid, "media stream started");
    if let Err(link) = handover.send(TwilioLink { socket, stream_sid }) {
        refuse(link.socket, "the call's voice session has ended").await;
    }
}

/// Reads `connected` (optional) then `start`; returns (streamSid, callSid, callToken).
async fn read_start(socket: &mut WebSocket) -> Result<(String, String, String), &'static str> {
    while let Some(message) = socket.next().await {
        let message = message.map_err(|_| "socket error before start")?;
        let text = match &message {
            Message::Text(t) => t.as_str(),
            Message::Close(_) => return Err("closed before start"),
            _ => continue,
        };
        match stream::parse_inbound(text).map_err(|_| "malformed frame before start")? {
            Inbound::Connected { .. } => continue,
            Inbound::Start { stream_sid, start, .. } => {
                let token = start.custom_parameters.get("callToken").cloned().ok_or("start without a call token")?;
                return Ok((stream_sid.into_owned(), start.call_sid, token));
            }
            _ => return Err("media before start"),
        }
    }
    Err("closed before start")
}
