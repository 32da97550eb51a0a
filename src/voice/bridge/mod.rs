//! The bridge: one task per call that joins Twilio's media stream to the Realtime session.
//!
//! Audio passes through as the same base64 µ-law text both ways, never decoded: Twilio `media` →
//! `input_audio_buffer.append`, `response.output_audio.delta` → Twilio `media` followed by a `mark`.
//! The task owns both sockets and all per-call state, so the audio path takes no lock, and it never
//! waits on anything but its own two sockets (transcripts go to the call's own record).
//!
//! Barge-in (PROTOCOLS.md §4): every delta sent to Twilio is followed by a mark; echoed marks count the
//! bytes actually played for the current AI item. When the callee starts talking while marks are pending,
//! Twilio is told to `clear` its buffer and the AI's item is truncated at exactly what was played.
//!
//! The bridge is generic over the two sockets (anything that is a `Stream` + `Sink` of WebSocket
//! messages), so tests can drive it with channels as well as real sockets.

mod frames;
#[cfg(test)]
mod tests;

use super::client::ConnectError;
use super::events::{self, ClientEvent, InputContent, Item, ServerEvent};
use super::session;
use crate::calls::{CallEntry, CallError, Speaker};
use crate::carrier::stream::{self, Inbound, MarkName, Outbound};
use crate::events::CallEvent;
use crate::telemetry::relay::{Direction, RelayMeter};
use frames::{MAX_TWILIO_FRAME_TEXT, Malformed, MalformedFrames};
use futures::future::BoxFuture;
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A WebSocket message type the bridge can read and write text with (axum's and tungstenite's).
pub trait WsMessage: Sized + Send {
    fn text(s: String) -> Self;
    fn as_text(&self) -> Option<&str>;
    fn is_close(&self) -> bool;
}

/// axum's and tungstenite's `Message` have the same shape; one body serves both.
macro_rules! ws_message {
    ($ty:ty) => {
        impl WsMessage for $ty {
            fn text(s: String) -> Self {
                Self::Text(s.into())
            }
            fn as_text(&self) -> Option<&str> {
                match self {
                    Self::Text(t) => Some(t.as_str()),
                    _ => None,
                }
            }
            fn is_close(&self) -> bool {
                matches!(self, Self::Close(_))
            }
        }
    };
}

ws_message!(axum::extract::ws::Message);
ws_message!(tokio_tungstenite::tungstenite::Message);

/// A socket: messages in, messages out.
pub trait Socket:
    Stream<Item = Result<Self::Msg, Self::ReadError>> + Sink<Self::Msg, Error = Self::WriteError> + Unpin + Send
{
    type Msg: WsMessage;
    type ReadError: std::fmt::Display + Send;
    type WriteError: std::fmt::Display + Send;
}

impl<M: WsMessage, S, E1: std::fmt::Display + Send, E2: std::fmt::Display + Send> Socket for S
where
    S: Stream<Item = Result<M, E1>> + Sink<M, Error = E2> + Unpin + Send,
{
    type Msg = M;
    type ReadError = E1;
    type WriteError = E2;
}

/// What the bridge asks of the world outside the two sockets.
pub trait Line: Send + Sync {
    /// Publish an event about this call (transcript lines, key presses, errors). Never waits.
    fn publish(&self, event: CallEvent);
    /// Hang the call up (REST).
    fn hang_up(&self) -> BoxFuture<'_, ()>;
    /// Tell the callee something went wrong and hang up, without the voice model.
    fn apologise_and_hang_up(&self) -> BoxFuture<'_, ()>;
}

/// Things other parts of the server ask of a live call.
#[derive(Debug)]
pub enum Command {
    /// Say this to the model (as an instruction from the operator) and have it respond.
    Instruct { text: String, done: oneshot::Sender<Result<(), String>> },
    /// Say goodbye and hang up (server draining, or an operator's request).
    WrapUp { reason: String },
}

/// The Twilio side once its `start` has been read: the socket and the stream it carries.
#[derive(Debug)]
pub struct TwilioLink<T> {
    pub socket: T,
    pub stream_sid: String,
}

/// Tunables; defaults are what production uses, tests shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    /// After `end_call`, the longest we wait for the goodbye to play before hanging up anyway.
    pub goodbye_grace: Duration,
    /// After asking the model to wrap up (time limit, draining), the longest before hanging up anyway.
    pub wrap_up_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { goodbye_grace: Duration::from_secs(10), wrap_up_grace: Duration::from_secs(20) }
    }
}

/// How much of the conversation so far a resumed voice session is told (the latest lines): enough for
/// any real call's thread, and within what the model's instructions take.
pub const RESUME_CONTEXT_BYTES: usize = 16 * 1024;

/// Malformed frames in a row after which a stream is taken to be broken, not merely glitching: a
/// second of frames. One bad frame is skipped; a stream of them is closed and the call hung up politely.
const MALFORMED_IN_A_ROW: u32 = 50;
/// Malformed frames over a whole call after which the stream is closed, however they are spread.
const MALFORMED_PER_CALL: u32 = 500;

/// Audio frames kept while the model's socket is not ready (60 s at 50 frames/s).
const MAX_PENDING_FRAMES: usize = 3_000;

/// One audio delta sent to Twilio and not yet confirmed played.
#[derive(Debug)]
struct PendingMark {
    id: u64,
    bytes: u64,
}

/// The per-call state of the bridge. Lives on the call's task; nothing here is shared.
struct Bridge<'a, T, R, L> {
    entry: &'a CallEntry,
    line: &'a L,
    connect: &'a (dyn Fn() -> BoxFuture<'static, Result<R, ConnectError>> + Send + Sync),
    settings: &'a SessionSettings,
    timing: &'a Timing,
    twilio: T,
    stream_sid: String,
    realtime: Option<R>,
    connecting: Option<BoxFuture<'static, Result<R, ConnectError>>>,
    reconnected: bool,
    /// Twilio audio waiting for the model's socket.
    pending_audio: VecDeque<String>,
    /// Marks sent after AI audio, oldest first.
    marks: VecDeque<PendingMark>,
    next_mark: u64,
    /// The AI item whose audio is playing, and how much of it was received / played (bytes).
    item_id: String,
    item_received: u64,
    item_played: u64,
    response_active: bool,
    /// Set when the call should end once the AI's current audio has played.
    hang_up_when_played: bool,
    hang_up_deadline: Option<Instant>,
    handled_calls: Vec<String>,
    /// Frames from Twilio that were not its protocol: skipped, counted, logged once per call.
    malformed: MalformedFrames,
    out: String,
    /// Frames and relay latencies, flushed to the shared metrics about once a second.
    meter: RelayMeter,
}

/// What the session needs to be configured (and reconfigured after a reconnect).
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub voice: String,
    pub model: String,
}

enum Flow {
    Continue,
    End,
}

/// Runs a call's voice from the moment Twilio's stream has started until the call's audio ends.
#[allow(clippy::too_many_arguments)]
pub async fn run<T, R, L>(
    entry: Arc<CallEntry>,
    line: L,
    twilio: TwilioLink<T>,
    realtime: Option<R>,
    connect: Box<dyn Fn() -> BoxFuture<'static, Result<R, ConnectError>> + Send + Sync>,
    settings: SessionSettings,
    timing: Timing,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) where
    T: Socket,
    R: Socket,
    L: Line,
{
    let max = Duration::from_secs(u64::from(entry.snapshot().request.max_duration_secs));
    let time_limit = tokio::time::sleep(max);
    tokio::pin!(time_limit);
    let mut limit_reached = false;
    let mut b = Bridge {
        entry: &entry,
        line: &line,
        connect: connect.as_ref(),
        settings: &settings,
        timing: &timing,
        twilio: twilio.socket,
        stream_sid: twilio.stream_sid,
        connecting: None,
        reconnected: false,
        pending_audio: VecDeque::new(),
        marks: VecDeque::new(),
        next_mark: 0,
        item_id: String::new(),
        item_received: 0,
        item_played: 0,
        response_active: false,
        hang_up_when_played: false,
        hang_up_deadline: None,
        handled_calls: Vec::new(),
        malformed: MalformedFrames::default(),
        out: String::with_capacity(512),
        meter: RelayMeter::default(),
        realtime,
    };
    if b.realtime.is_none() {
        b.connecting = Some((b.connect)());
    } else {
        // The session was configured while the phone rang; the callee has answered: the AI speaks first.
        b.send_rt(&ClientEvent::ResponseCreate { response: None }).await;
    }
    // The call's own child of the shutdown token, pinned once. Polling a pending `cancelled()` takes the
    // lock of the token's waiter list, and the loop polls it on every frame: on the server-wide token
    // that would be one lock every call takes 100 times a second; a child has its own list.
    let shutdown = shutdown.child_token();
    let shutdown_seen = shutdown.cancelled();
    tokio::pin!(shutdown_seen);
    let mut draining = false;
    loop {
        // Biased, Twilio first: a mark echo already received must be counted before a `speech_started`
        // that arrived at the same time on the other socket, or the truncation would undercount what the
        // callee heard. Neither socket is ever ready without pause, so nothing starves.
        let flow = tokio::select! {
            biased;
            frame = b.twilio.next() => b.on_twilio(frame).await,
            event = next_or_pending(&mut b.realtime) => b.on_realtime(event).await,
            connected = poll_or_pending(&mut b.connecting) => b.on_connected(connected).await,
            command = commands.recv() => match command {
                Some(c) => b.on_command(c).await,
                None => std::future::pending().await,
            },
            () = &mut time_limit, if !limit_reached => {
                limit_reached = true;
                b.wrap_up("The call has reached its time limit. Politely tell the person you have to go now, say goodbye, then call end_call.").await
            }
            () = deadline(b.hang_up_deadline) => {
                tracing::info!(call_sid = %b.entry.call_sid(), "hanging up: the goodbye did not finish in time");
                b.line.hang_up().await;
                Flow::End
            }
            () = &mut shutdown_seen, if !draining && b.hang_up_deadline.is_none() => {
                draining = true;
                b.wrap_up("The service is shutting down. Politely tell the person you have to end the call now, say goodbye, then call end_call.").await
            }
        };
        if matches!(flow, Flow::End) {
            break;
        }
    }
    b.meter.flush(crate::telemetry::metrics());
    if b.malformed.total > 0 {
        tracing::warn!(call_sid = %entry.call_sid(), skipped = b.malformed.total, "malformed media frames were skipped on this call");
    }
    if let Some(rt) = b.realtime.as_mut() {
        let _ = rt.close().await;
    }
    let _ = b.twilio.close().await;
}

async fn next_or_pending<R: Stream + Unpin>(s: &mut Option<R>) -> Option<R::Item> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn poll_or_pending<F: std::future::Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(fut) => {
            let out = fut.await;
            *f = None;
            out
        }
        None => std::future::pending().await,
    }
}

async fn deadline(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Bytes of audio in a base64 string, without decoding it.
fn decoded_len(b64: &str) -> u64 {
    let pad = b64.bytes().rev().take(2).filter(|&b| b == b'=').count();
    ((b64.len() / 4 * 3).saturating_sub(pad)) as u64
}

impl<T, R, L> Bridge<'_, T, R, L>
where
    T: Socket,
    R: Socket,
    L: Line,
{
    async fn send_twilio(&mut self, text: String) -> bool {
        match self.twilio.send(T::Msg::text(text)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(call_sid = %self.entry.call_sid(), error = %e, "twilio socket write failed");
                false
            }
        }
    }

    async fn send_rt(&mut self, event: &ClientEvent<'_>) {
        match serde_json::to_string(event) {
            Ok(text) => self.send_rt_text(text).await,
            Err(e) => tracing::error!(error = %e, "a client event did not serialize"),
        }
    }

    async fn send_rt_text(&mut self, text: String) {
        if let Some(rt) = self.realtime.as_mut()
            && let Err(e) = rt.send(R::Msg::text(text)).await
        {
            tracing::warn!(call_sid = %self.entry.call_sid(), error = %e, "voice model socket write failed");
        }
    }

    async fn on_twilio(&mut self, frame: Option<Result<T::Msg, T::ReadError>>) -> Flow {
        let read_at = self.meter.read(Direction::ToAi);
        let msg = match frame {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // The socket itself broke (a frame past the WebSocket limit, a protocol violation): no
                // audio can flow any more, so the callee is told and the call ended, never left silent.
                self.record_error("media_stream_failed", &format!("the media stream failed ({e}); ending the call"));
                self.line.apologise_and_hang_up().await;
                return Flow::End;
            }
            None => return Flow::End,
        };
        if msg.is_close() {
            return Flow::End;
        }
        let Some(text) = msg.as_text() else { return Flow::Continue };
        if text.len() > MAX_TWILIO_FRAME_TEXT {
            return self.on_malformed(Malformed::Oversized).await;
        }
        match stream::parse_inbound(text) {
            Ok(Inbound::Media { media, .. }) if !stream::is_base64(&media.payload) => {
                self.on_malformed(Malformed::BadAudio).await
            }
            Ok(Inbound::Media { media, .. }) => {
                self.malformed.in_a_row = 0;
                if self.realtime.is_some() && self.pending_audio.is_empty() {
                    events::write_append(&mut self.out, &media.payload);
                    let text = std::mem::replace(&mut self.out, String::with_capacity(512));
                    self.send_rt_text(text).await;
                    self.meter.relayed(Direction::ToAi, read_at, crate::telemetry::metrics);
                } else if self.pending_audio.len() < MAX_PENDING_FRAMES {
                    self.pending_audio.push_back(media.payload.into_owned());
                }
                Flow::Continue
            }
            Ok(Inbound::Mark { mark, .. }) => {
                self.malformed.in_a_row = 0;
                self.on_mark(&mark.name).await
            }
            Ok(Inbound::Dtmf { dtmf, .. }) => {
                tracing::info!(call_sid = %self.entry.call_sid(), digit = %dtmf.digit, "keypad digit");
                self.entry.modify(|c| c.push_dtmf(dtmf.digit.clone()));
                self.line.publish(CallEvent::Dtmf {
                    call_sid: self.entry.call_sid().to_owned(),
                    digit: dtmf.digit,
                    timestamp: OffsetDateTime::now_utc(),
                });
                Flow::Continue
            }
            Ok(Inbound::Stop { .. }) => Flow::End,
            Ok(Inbound::Connected { .. } | Inbound::Start { .. } | Inbound::Unknown) => Flow::Continue,
            Err(e) => self.on_malformed(Malformed::of(&e)).await,
        }
    }

    /// A frame that is not Twilio's protocol, from a stream that passed the handshake and the call's
    /// token: skipped and counted (the call's record and log say so once, with its kind). Only a stream
    /// that keeps sending them is closed, and then the callee hears an apology and the call ends.
    async fn on_malformed(&mut self, kind: Malformed) -> Flow {
        let m = &mut self.malformed;
        m.total += 1;
        m.in_a_row += 1;
        if m.total == 1 {
            self.record_error(
                "malformed_media_frame",
                &format!("the media stream sent a frame that is not Twilio's protocol ({}); skipped", kind.as_str()),
            );
        }
        let m = &self.malformed;
        if m.in_a_row < MALFORMED_IN_A_ROW && m.total < MALFORMED_PER_CALL {
            return Flow::Continue;
        }
        let (total, in_a_row) = (m.total, m.in_a_row);
        self.record_error(
            "media_stream_garbled",
            &format!(
                "the media stream sent {total} malformed frames ({in_a_row} in a row, the last {}); closing it and ending the call",
                kind.as_str()
            ),
        );
        self.line.apologise_and_hang_up().await;
        Flow::End
    }

    async fn on_mark(&mut self, name: &str) -> Flow {
        let Some(id) = name.strip_prefix('m').and_then(|n| n.parse::<u64>().ok()) else {
            return Flow::Continue;
        };
        // Marks come back in order; one we no longer hold (cleared) is ignored.
        while let Some(front) = self.marks.front() {
            if front.id > id {
                break;
            }
            let played = self.marks.pop_front().map_or(0, |m| m.bytes);
            self.item_played += played;
        }
        self.maybe_hang_up().await
    }

    async fn maybe_hang_up(&mut self) -> Flow {
        if self.hang_up_when_played && self.marks.is_empty() && !self.response_active {
            tracing::info!(call_sid = %self.entry.call_sid(), "goodbye played; hanging up");
            self.line.hang_up().await;
            return Flow::End;
        }
        Flow::Continue
    }

    async fn on_connected(&mut self, connected: Result<R, ConnectError>) -> Flow {
        match connected {
            Ok(socket) => {
                self.realtime = Some(socket);
                let call = self.entry.snapshot();
                let instructions = if self.reconnected {
                    session::resumed_instructions(
                        &call.request,
                        &self.entry.transcript_latest_within(RESUME_CONTEXT_BYTES),
                    )
                } else {
                    session::instructions(&call.request)
                };
                let voice = call.request.voice.clone().unwrap_or_else(|| self.settings.voice.clone());
                let update =
                    session::update(instructions, &voice, &self.settings.model, call.request.language.as_deref());
                self.send_rt(&update).await;
                let held = self.pending_audio.len() as u64;
                while let Some(payload) = self.pending_audio.pop_front() {
                    events::write_append(&mut self.out, &payload);
                    let text = std::mem::replace(&mut self.out, String::with_capacity(512));
                    self.send_rt_text(text).await;
                }
                self.meter.relayed_late(Direction::ToAi, held);
                self.send_rt(&ClientEvent::ResponseCreate { response: None }).await;
                Flow::Continue
            }
            Err(e) => {
                self.record_error("voice_unavailable", &e.to_string());
                self.give_up().await
            }
        }
    }

    /// The model cannot be reached: never leave a silent open line.
    async fn give_up(&mut self) -> Flow {
        tracing::warn!(call_sid = %self.entry.call_sid(), "voice model unavailable; apologising and hanging up");
        self.line.apologise_and_hang_up().await;
        Flow::End
    }

    fn record_error(&self, code: &str, message: &str) {
        tracing::warn!(call_sid = %self.entry.call_sid(), code, message, "call error");
        let error =
            CallError { code: code.to_owned(), message: message.to_owned(), timestamp: OffsetDateTime::now_utc() };
        self.entry.modify(|c| c.push_error(error.clone()));
        self.line.publish(CallEvent::Error {
            call_sid: self.entry.call_sid().to_owned(),
            error: error.message,
            code: error.code,
            timestamp: error.timestamp,
        });
    }

    fn transcribe(&self, speaker: Speaker, text: &str) {
        let Some(line) = self.entry.append_line(speaker, text) else { return };
        self.line.publish(CallEvent::Transcription {
            call_sid: self.entry.call_sid().to_owned(),
            transcription: line.text,
            speaker,
            timestamp: line.timestamp,
        });
    }

    async fn on_realtime(&mut self, event: Option<Result<R::Msg, R::ReadError>>) -> Flow {
        let read_at = self.meter.read(Direction::ToCaller);
        let msg = match event {
            Some(Ok(m)) if !m.is_close() => m,
            other => {
                let why = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "closed".to_owned(),
                };
                return self.on_realtime_lost(&why).await;
            }
        };
        let Some(text) = msg.as_text() else { return Flow::Continue };
        let event = match events::parse_server_event(text) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(call_sid = %self.entry.call_sid(), error = %e, "unreadable voice model event skipped");
                return Flow::Continue;
            }
        };
        match event {
            ServerEvent::OutputAudioDelta { item_id, delta, .. } => {
                if item_id != self.item_id {
                    self.item_id = item_id.into_owned();
                    self.item_received = 0;
                    self.item_played = 0;
                }
                let bytes = decoded_len(&delta);
                self.item_received += bytes;
                stream::write_media(&mut self.out, &self.stream_sid, &delta);
                let media = std::mem::replace(&mut self.out, String::with_capacity(512));
                // Fed, not flushed: the mark below goes out in the same write.
                if let Err(e) = self.twilio.feed(T::Msg::text(media)).await {
                    tracing::debug!(call_sid = %self.entry.call_sid(), error = %e, "twilio socket write failed");
                    return Flow::End;
                }
                self.next_mark += 1;
                let id = self.next_mark;
                self.marks.push_back(PendingMark { id, bytes });
                let mark = Outbound::Mark {
                    stream_sid: self.stream_sid.as_str().into(),
                    mark: MarkName { name: format!("m{id}") },
                };
                match serde_json::to_string(&mark) {
                    Ok(text) => {
                        if !self.send_twilio(text).await {
                            return Flow::End;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "a mark did not serialize"),
                }
                self.meter.relayed(Direction::ToCaller, read_at, crate::telemetry::metrics);
                Flow::Continue
            }
            ServerEvent::SpeechStarted { .. } => {
                self.barge_in().await;
                Flow::Continue
            }
            ServerEvent::InputTranscriptionCompleted { transcript, .. } => {
                self.transcribe(Speaker::Human, &transcript);
                Flow::Continue
            }
            ServerEvent::OutputAudioTranscriptDone { transcript, .. } => {
                self.transcribe(Speaker::Ai, &transcript);
                Flow::Continue
            }
            // openai-python's type has no `name` here; when absent, `response.output_item.done` (which
            // always names the function) handles the call instead.
            ServerEvent::FunctionCallArgumentsDone { call_id, name: Some(name), .. } => {
                self.on_function_call(call_id, &name).await
            }
            ServerEvent::OutputItemDone { item } if item.kind == "function_call" => {
                let name = item.name.unwrap_or_default();
                match item.call_id {
                    Some(call_id) => self.on_function_call(call_id, &name).await,
                    None => Flow::Continue,
                }
            }
            ServerEvent::ResponseCreated { .. } => {
                self.response_active = true;
                Flow::Continue
            }
            ServerEvent::ResponseDone { response } => {
                self.response_active = false;
                if response.status == "failed" {
                    self.record_error("response_failed", "the voice model could not produce a reply");
                }
                self.maybe_hang_up().await
            }
            ServerEvent::Error { error } => {
                let code = error.code.clone().unwrap_or_else(|| error.kind.clone());
                self.record_error(&code, &error.message);
                Flow::Continue
            }
            ServerEvent::InputTranscriptionFailed { .. } => Flow::Continue,
            _ => Flow::Continue,
        }
    }

    /// The callee talks over the AI: drop what Twilio has not played, and cut the AI's turn where the
    /// callee stopped hearing it.
    async fn barge_in(&mut self) {
        if self.marks.is_empty() {
            return;
        }
        let clear = Outbound::Clear { stream_sid: self.stream_sid.as_str().into() };
        if let Ok(text) = serde_json::to_string(&clear) {
            self.send_twilio(text).await;
        }
        self.marks.clear();
        // Truncating an item the model produced no audio for fails on the API's side; one with audio
        // received but none played is truncated at 0, so the model knows the callee heard nothing.
        if self.item_received > 0 && !self.item_id.is_empty() {
            let audio_end_ms = self.item_played.min(self.item_received) / 8;
            let truncate =
                ClientEvent::ConversationItemTruncate { item_id: self.item_id.clone(), content_index: 0, audio_end_ms };
            self.send_rt(&truncate).await;
        }
        self.item_played = 0;
        self.item_received = 0;
    }

    async fn on_function_call(&mut self, call_id: String, name: &str) -> Flow {
        if self.handled_calls.contains(&call_id) {
            return Flow::Continue;
        }
        self.handled_calls.push(call_id.clone());
        if name != session::END_CALL {
            let output = format!(r#"{{"error":"no tool named {name}"}}"#);
            self.send_rt(&ClientEvent::ConversationItemCreate { item: Item::FunctionCallOutput { call_id, output } })
                .await;
            return Flow::Continue;
        }
        tracing::info!(call_sid = %self.entry.call_sid(), "the voice model ended the call");
        let output = r#"{"ok":true}"#.to_owned();
        self.send_rt(&ClientEvent::ConversationItemCreate { item: Item::FunctionCallOutput { call_id, output } }).await;
        self.hang_up_when_played = true;
        self.hang_up_deadline = Some(Instant::now() + self.timing.goodbye_grace);
        self.maybe_hang_up().await
    }

    async fn on_realtime_lost(&mut self, why: &str) -> Flow {
        self.realtime = None;
        if self.hang_up_when_played {
            // Already saying goodbye: just finish.
            self.line.hang_up().await;
            return Flow::End;
        }
        if self.reconnected {
            self.record_error("voice_disconnected", &format!("the voice model's connection dropped again ({why})"));
            return self.give_up().await;
        }
        self.record_error("voice_reconnecting", &format!("the voice model's connection dropped ({why}); reconnecting"));
        self.reconnected = true;
        self.marks.clear();
        self.response_active = false;
        self.connecting = Some((self.connect)());
        Flow::Continue
    }

    async fn on_command(&mut self, command: Command) -> Flow {
        match command {
            Command::Instruct { text, done } => {
                if self.realtime.is_none() {
                    let _ = done.send(Err("the call's voice session is reconnecting; try again in a moment".into()));
                    return Flow::Continue;
                }
                self.instruct(&text).await;
                let _ = done.send(Ok(()));
                Flow::Continue
            }
            Command::WrapUp { reason } => self.wrap_up(&reason).await,
        }
    }

    async fn instruct(&mut self, text: &str) {
        let item =
            Item::Message { role: "system".into(), content: vec![InputContent::InputText { text: text.to_owned() }] };
        self.send_rt(&ClientEvent::ConversationItemCreate { item }).await;
        if self.response_active {
            self.send_rt(&ClientEvent::ResponseCancel {}).await;
        }
        self.send_rt(&ClientEvent::ResponseCreate { response: None }).await;
    }

    async fn wrap_up(&mut self, why: &str) -> Flow {
        if self.hang_up_deadline.is_some() {
            return Flow::Continue;
        }
        self.hang_up_deadline = Some(Instant::now() + self.timing.wrap_up_grace);
        if self.realtime.is_none() {
            self.line.hang_up().await;
            return Flow::End;
        }
        self.instruct(why).await;
        Flow::Continue
    }
}
