//! An OpenAI Realtime stand-in on loopback, speaking the GA WebSocket protocol.
//!
//! Sandbox mode and the tests point the real voice bridge at it, so a whole call runs with no account:
//! it checks the handshake and the GA `session.update` the way the API does, hears the callee through
//! [`speech::Listener`] (server VAD), answers with scripted [`speech::speak`] audio paced ahead of real
//! time, cancels on barge-in and validates truncation. Like the Twilio simulator, everything it sees goes
//! into a channel that tests await with a timeout.
//!
//! The scripted AI (first match wins): a pending `conversation.item.create` message → [`GOODBYE`] and
//! `end_call` if it says to "call end_call" (a wrap-up), else "Understood: …";
//! the callee said "error please" → a `server_error`, no reply; "drop please" → the socket is dropped;
//! "bye" → [`GOODBYE`] then the `end_call` function call; anything else → "You said: …. Thank you.";
//! the first response with nothing heard → the instructions' `Begin the call by saying exactly: "…"`,
//! else [`RESUMED`] when they carry `Conversation so far:`, else [`GREETING`].

use super::faults::{Fault, Faults};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Router, extract::State, routing::any};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::Deserialize as _;
use serde_json::{Value, json};
use tokio::{sync::broadcast, sync::mpsc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::speech::{self, Heard, Listener};
use crate::voice::events::{ClientEvent, InputContent, Item, Session, TurnDetection};

pub const GREETING: &str = "Hello! This is an AI assistant calling.";
pub const GOODBYE: &str = "Goodbye, and thank you!";
pub const RESUMED: &str = "Sorry, we were cut off. As I was saying, how can I help?";
/// Said for a turn whose words could not be read, or a `response.create` with nothing new to answer.
const UNHEARD: &str = "Sorry, I didn't catch that.";
const ANYTHING_ELSE: &str = "Is there anything else I can help with?";
const GREETING_MARK: &str = "Begin the call by saying exactly: \"";
/// Frames are a few KiB at most; tungstenite's 128 KiB default is zero-filled on every read (PERFORMANCE.md).
const WS_BUFFER: usize = 8 * 1024;

/// How the simulator behaves; `api_key` is the one the server under test is given (a throwaway).
#[derive(Debug, Clone)]
pub struct RealtimeSimConfig {
    pub api_key: String,
    /// How AI speech is paced: ms of audio per character of its text (sandbox 55, tests ~8).
    pub ms_per_char: u32,
    /// Audio per `response.output_audio.delta` in ms (default 100).
    pub delta_ms: u32,
    /// Silence that ends the callee's turn (server VAD), ms (sandbox 500, tests ~120).
    pub end_silence_ms: u32,
}

/// Everything the simulator saw or did, in order.
#[rustfmt::skip] // one line per variant reads as a table
#[derive(Debug, Clone)]
pub enum RealtimeSimEvent {
    /// `auth` is `"bearer"` or `"api-key"`.
    Connected { connection: u64, model: String, auth: String },
    /// A refused handshake.
    Refused { status: u16, reason: String },
    /// Every client event except `input_audio_buffer.append` (see `AudioReceived`).
    Received { connection: u64, event: Value },
    /// At most one per second of appended audio, plus one when the connection closes.
    AudioReceived { connection: u64, total_ms: u64 },
    /// Every `error` event it sent.
    Invalid { connection: u64, reason: String },
    Heard { connection: u64, text: String },
    /// An AI utterance whose first delta went out.
    Said { connection: u64, item_id: String, text: String },
    Truncated { connection: u64, item_id: String, audio_end_ms: u64, sent_ms: u64 },
    FunctionCall { connection: u64, name: String, call_id: String },
    Closed { connection: u64 },
}

/// A running simulator; `shutdown` (or drop) closes every connection.
#[derive(Debug)]
pub struct RealtimeSimulator {
    shared: Arc<Shared>,
    url: String,
    // tokio's Mutex: `next_event` holds it across `recv().await`.
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<RealtimeSimEvent>>,
}

#[derive(Debug)]
struct Shared {
    config: RealtimeSimConfig,
    events: mpsc::UnboundedSender<RealtimeSimEvent>,
    /// Test controls fan out to every live connection; each subscribes when it opens.
    control: broadcast::Sender<Control>,
    connections: AtomicU64,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Faults for the next handshakes (see [`RealtimeSimulator::inject`]).
    faults: Faults,
}

#[derive(Debug, Clone)]
enum Control {
    Error { code: String, message: String },
    Drop,
}

impl RealtimeSimulator {
    /// Binds 127.0.0.1:0 and serves until `shutdown` (or drop).
    pub async fn start(config: RealtimeSimConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}/v1/realtime", listener.local_addr()?);
        let (events, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config,
            events,
            control: broadcast::channel(16).0,
            connections: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            faults: Faults::default(),
        });
        let app = Router::new().route("/v1/realtime", any(handshake)).with_state(Arc::clone(&shared));
        let stop = shared.cancel.clone().cancelled_owned();
        shared.tracker.spawn(async move {
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                tracing::warn!(%error, "realtime simulator stopped serving");
            }
        });
        Ok(Self { shared, url, events: tokio::sync::Mutex::new(rx) })
    }

    /// `ws://127.0.0.1:PORT/v1/realtime`; the server appends `?model=…`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The next thing the simulator saw or did, in order.
    pub async fn next_event(&self) -> Option<RealtimeSimEvent> {
        self.events.lock().await.recv().await
    }

    /// Like `next_event` without waiting; `None` also while another task awaits `next_event`.
    pub fn try_next_event(&self) -> Option<RealtimeSimEvent> {
        self.events.try_lock().ok()?.try_recv().ok()
    }

    /// Sends `{"type":"error","error":{"type":"server_error",code,message}}` on every live connection.
    pub fn send_error_to_all(&self, code: &str, message: &str) {
        let _ = self.shared.control.send(Control::Error { code: code.to_owned(), message: message.to_owned() });
    }

    /// Stops keeping the log of what the simulator saw (see [`Self::next_event`]): for sandbox mode, where
    /// nobody reads it, and an unread log would grow with every call for as long as the server runs.
    pub fn discard_log(&self) {
        if let Ok(mut log) = self.events.try_lock() {
            log.close();
            while log.try_recv().is_ok() {}
        }
    }

    /// The next `times` handshakes fail with `fault`: a status refuses the upgrade with OpenAI's error
    /// body (429: rate limited, 5xx: a server error); a hang never answers.
    pub fn inject(&self, times: usize, fault: Fault) {
        self.shared.faults.push(times, fault);
    }

    /// Closes every live connection abruptly: no close frame, as when the network drops.
    pub fn drop_all(&self) {
        let _ = self.shared.control.send(Control::Drop);
    }

    /// Closes every connection and the listener, and waits for them all.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

impl Drop for RealtimeSimulator {
    // Without `shutdown`, dropping still stops the tasks instead of leaving them running.
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl Shared {
    fn record(&self, event: RealtimeSimEvent) {
        let _ = self.events.send(event);
    }

    /// Which header carried the right key: OpenAI's bearer token or Azure's `api-key`.
    fn authenticate(&self, headers: &HeaderMap) -> Option<&'static str> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let key = Some(self.config.api_key.as_str()).filter(|k| !k.is_empty());
        let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
        [(bearer, "bearer"), (header("api-key"), "api-key")]
            .into_iter()
            .find(|(given, _)| given.is_some() && *given == key)
            .map(|(_, how)| how)
    }

    /// Answers a handshake with OpenAI's error JSON instead of upgrading.
    fn refuse(&self, status: StatusCode, code: &str, message: &str) -> Response {
        self.record(RealtimeSimEvent::Refused { status: status.as_u16(), reason: message.to_owned() });
        let body = json!({"error": {"type": "invalid_request_error", "code": code, "message": message, "param": null}});
        (status, axum::Json(body)).into_response()
    }
}

async fn handshake(
    State(sim): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(auth) = sim.authenticate(&headers) else {
        return sim.refuse(StatusCode::UNAUTHORIZED, "invalid_api_key", "Incorrect API key provided.");
    };
    match sim.faults.take() {
        None => {}
        Some(Fault::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let (code, message) = if status == StatusCode::TOO_MANY_REQUESTS {
                ("rate_limit_exceeded", "Rate limit reached for requests. Please try again later.")
            } else {
                ("server_error", "The server had an error while processing your request.")
            };
            return sim.refuse(status, code, message);
        }
        Some(Fault::Hang | Fault::HangAfter) => {
            sim.record(RealtimeSimEvent::Refused { status: 0, reason: "never answered".into() });
            sim.cancel.cancelled().await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let query = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes());
    let Some(model) = query.into_iter().find(|(k, v)| k == "model" && !v.is_empty()).map(|(_, v)| v.into_owned())
    else {
        return sim.refuse(StatusCode::BAD_REQUEST, "missing_model", "Missing required parameter: 'model'.");
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return sim.refuse(rejection.status(), "invalid_request", &rejection.body_text()),
    };
    let beta = headers.contains_key("openai-beta");
    let upgrade = upgrade.read_buffer_size(WS_BUFFER).write_buffer_size(WS_BUFFER);
    upgrade.on_upgrade(move |socket| {
        let connection = sim.connections.fetch_add(1, Ordering::Relaxed) + 1;
        sim.record(RealtimeSimEvent::Connected { connection, model, auth: auth.to_owned() });
        // axum runs upgraded sockets on its own spawned task; tracking it lets `shutdown` wait for it.
        sim.tracker.clone().track_future(Connection::new(sim, connection, socket).run(beta))
    })
}

/// How a connection ends.
#[derive(Debug)]
enum End {
    /// The client closed or went away.
    Gone,
    /// Dropped without a close frame, as a network failure would.
    Abrupt,
    /// Closed with this close code.
    Close(u16),
}

type Step = Result<(), End>;

/// One connection's state, owned by its task: the session as configured, what the callee said and what
/// the AI is saying.
#[derive(Debug)]
struct Connection {
    sim: Arc<Shared>,
    id: u64,
    socket: WebSocket,
    listener: Listener,
    /// Scratch for decoding appends.
    audio: Vec<u8>,
    /// One counter for event, item, response and call ids, so all are unique per connection.
    counter: u64,
    /// The `event_id` of the client event being handled, echoed in an error's `error.event_id`.
    client_event: Option<String>,
    instructions: String,
    /// The turn detection's `create_response` and `interrupt_response`; both on until `session.update`,
    /// as in the API.
    vad: (bool, bool),
    user_item: String,
    /// What the callee said that has not been answered yet.
    heard: Option<String>,
    /// A `conversation.item.create` message not answered yet.
    instruction: Option<String>,
    /// Whether the opening line is used up: something was said or heard.
    opened: bool,
    speaking: Option<Speaking>,
    /// Audio bytes sent per assistant item: what `conversation.item.truncate` may cut.
    audio_items: HashMap<String, usize>,
}

/// A response in progress.
#[derive(Debug)]
struct Speaking {
    response_id: String,
    item_id: String,
    text: String,
    audio: Vec<u8>,
    sent: usize,
    next: Instant,
    end_call: bool,
}

impl Connection {
    fn new(sim: Arc<Shared>, id: u64, socket: WebSocket) -> Self {
        Self {
            listener: Listener::new(sim.config.end_silence_ms),
            sim,
            id,
            socket,
            audio: Vec::new(),
            counter: 0,
            client_event: None,
            instructions: String::new(),
            vad: (true, true),
            user_item: String::new(),
            heard: None,
            instruction: None,
            opened: false,
            speaking: None,
            audio_items: HashMap::new(),
        }
    }

    async fn run(mut self, beta: bool) {
        if let End::Close(code) = self.serve(beta).await {
            let _ = self.socket.send(Message::Close(Some(CloseFrame { code, reason: "".into() }))).await;
        }
        let connection = self.id;
        self.sim.record(RealtimeSimEvent::AudioReceived { connection, total_ms: self.listener.heard_ms() });
        self.sim.record(RealtimeSimEvent::Closed { connection });
    }

    async fn serve(&mut self, beta: bool) -> End {
        let mut control = self.sim.control.subscribe();
        let started = if beta {
            let message = "The Realtime beta interface (OpenAI-Beta header) is not supported; use the GA interface.";
            self.invalid("beta_not_supported", message, None).await.and(Err(End::Close(1008)))
        } else {
            let session = json!({"id": format!("sess_{}", self.id), "object": "realtime.session", "type": "realtime"});
            self.emit("session.created", json!({ "session": session })).await
        };
        if let Err(end) = started {
            return end;
        }
        loop {
            let next = self.speaking.as_ref().map(|s| s.next);
            let step = tokio::select! {
                biased;
                () = self.sim.cancel.cancelled() => Err(End::Close(1001)),
                control = control.recv() => match control {
                    Ok(Control::Error { code, message }) => self.error("server_error", &code, &message, None).await,
                    Ok(Control::Drop) | Err(broadcast::error::RecvError::Closed) => Err(End::Abrupt),
                    Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                },
                () = until(next) => self.tick().await,
                message = self.socket.recv() => match message {
                    Some(Ok(Message::Text(text))) => self.on_text(&text).await,
                    Some(Ok(Message::Binary(_))) => self.invalid("invalid_event", "Send events as text.", None).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => Err(End::Gone),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Step {
        // The fast path: 50 appends a second per call, never recorded one by one.
        if let Ok(ClientEvent::InputAudioBufferAppend { audio }) = serde_json::from_str(text) {
            return self.append(&audio).await;
        }
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return self.invalid("invalid_json", "The event is not valid JSON.", None).await;
        };
        self.client_event = value.get("event_id").and_then(Value::as_str).map(str::to_owned);
        let kind = value.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "input_audio_buffer.append" {
            self.sim.record(RealtimeSimEvent::Received { connection: self.id, event: value.clone() });
        }
        if kind == "session.update" {
            return self.session_update(&value["session"]).await;
        }
        let active = self.speaking.as_ref().map(|s| s.response_id.clone());
        match (ClientEvent::deserialize(&value), active) {
            (Err(e), _) => self.invalid("invalid_value", &format!("Invalid '{kind}' event: {e}"), Some("type")).await,
            (Ok(ClientEvent::InputAudioBufferAppend { audio }), _) => self.append(&audio).await,
            (Ok(ClientEvent::SessionUpdate { .. }), _) => Ok(()),
            (Ok(ClientEvent::ConversationItemCreate { item }), _) => self.item_create(item, &value["item"]).await,
            (Ok(ClientEvent::ResponseCreate { .. }), None) => self.respond().await,
            (Ok(ClientEvent::ResponseCreate { .. }), Some(id)) => {
                let message = format!("Conversation already has an active response in progress: {id}.");
                self.invalid("conversation_already_has_active_response", &message, None).await
            }
            (Ok(ClientEvent::ResponseCancel {}), Some(_)) => self.cancel("client_cancelled").await,
            (Ok(ClientEvent::ResponseCancel {}), None) => {
                self.invalid("response_cancel_not_active", "Cancellation failed: no active response found.", None).await
            }
            (Ok(ClientEvent::ConversationItemTruncate { item_id, content_index, audio_end_ms }), _) => {
                self.truncate(item_id, content_index, audio_end_ms).await
            }
        }
    }

    /// Accepts only the GA shape a phone call needs, naming the first field that is wrong.
    async fn session_update(&mut self, s: &Value) -> Step {
        let text = |pointer: &str| s.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
        let tools = s["tools"].as_array().map(Vec::as_slice).unwrap_or_default();
        let rules = [
            ("type", "'realtime' (the GA interface)", text("/type") == "realtime"),
            ("output_modalities", "['audio']", s["output_modalities"] == json!(["audio"])),
            ("audio.input.format.type", "'audio/pcmu'", text("/audio/input/format/type") == "audio/pcmu"),
            ("audio.output.format.type", "'audio/pcmu'", text("/audio/output/format/type") == "audio/pcmu"),
            ("audio.input.turn_detection.type", "'server_vad' or 'semantic_vad'", {
                matches!(text("/audio/input/turn_detection/type"), "server_vad" | "semantic_vad")
            }),
            ("audio.input.transcription", "a transcription model", s["audio"]["input"]["transcription"].is_object()),
            ("tools", "a function tool named 'end_call'", {
                tools.iter().any(|t| t["type"] == "function" && t["name"] == "end_call")
            }),
        ];
        if let Some((param, want, _)) = rules.into_iter().find(|(_, _, ok)| !ok) {
            let (param, message) =
                (format!("session.{param}"), format!("Invalid value for 'session.{param}': expected {want}."));
            return self.invalid("invalid_value", &message, Some(&param)).await;
        }
        let session = match Session::deserialize(s) {
            Ok(session) => session,
            Err(e) => return self.invalid("invalid_value", &format!("Invalid session: {e}"), Some("session")).await,
        };
        self.vad = match session.audio.input.turn_detection {
            Some(TurnDetection::ServerVad { create_response, interrupt_response, .. }) => {
                (create_response, interrupt_response)
            }
            _ => (true, true),
        };
        self.instructions = session.instructions;
        let mut echo = s.clone();
        echo["id"] = json!(format!("sess_{}", self.id));
        echo["object"] = json!("realtime.session");
        self.emit("session.updated", json!({ "session": echo })).await
    }

    async fn append(&mut self, audio: &str) -> Step {
        self.audio.clear();
        if STANDARD.decode_vec(audio, &mut self.audio).is_err() {
            let message = "Invalid 'audio': expected base64-encoded audio bytes.";
            return self.invalid("invalid_value", message, Some("audio")).await;
        }
        let seconds_before = self.listener.heard_ms() / 1000;
        for heard in self.listener.hear(&self.audio) {
            match heard {
                Heard::Started { at_ms } => self.speech_started(at_ms).await?,
                Heard::Ended { at_ms, text } => self.speech_stopped(at_ms, text.unwrap_or_default()).await?,
            }
        }
        let total_ms = self.listener.heard_ms();
        if total_ms / 1000 > seconds_before {
            self.sim.record(RealtimeSimEvent::AudioReceived { connection: self.id, total_ms });
        }
        Ok(())
    }

    async fn speech_started(&mut self, audio_start_ms: u64) -> Step {
        self.user_item = self.next_id("item");
        if self.vad.1 && self.speaking.is_some() {
            self.cancel("turn_detected").await?;
        }
        let event = json!({"audio_start_ms": audio_start_ms, "item_id": self.user_item});
        self.emit("input_audio_buffer.speech_started", event).await
    }

    async fn speech_stopped(&mut self, audio_end_ms: u64, transcript: String) -> Step {
        let item_id = self.user_item.clone();
        self.emit("input_audio_buffer.speech_stopped", json!({"audio_end_ms": audio_end_ms, "item_id": item_id}))
            .await?;
        let event = json!({"item_id": item_id, "content_index": 0, "transcript": transcript});
        self.emit("conversation.item.input_audio_transcription.completed", event).await?;
        self.sim.record(RealtimeSimEvent::Heard { connection: self.id, text: transcript.clone() });
        self.opened = true;
        self.heard = Some(transcript);
        // With a response still playing (barge-in off), the turn is answered when it finishes.
        if self.vad.0 && self.speaking.is_none() { self.respond().await } else { Ok(()) }
    }

    async fn item_create(&mut self, item: Item, raw: &Value) -> Step {
        if let Item::Message { role, content } = item {
            if role != "user" && role != "system" {
                let message = "Expected item.role 'user' or 'system'.";
                return self.invalid("invalid_value", message, Some("item.role")).await;
            }
            let texts: Vec<String> = content.into_iter().map(|InputContent::InputText { text }| text).collect();
            self.instruction = Some(texts.join(" "));
        }
        let mut item = raw.clone();
        item["id"] = json!(self.next_id("item"));
        item["status"] = json!("completed");
        self.emit("conversation.item.added", json!({ "item": item })).await?;
        self.emit("conversation.item.done", json!({ "item": item })).await
    }

    /// Picks the scripted reply and starts speaking it.
    async fn respond(&mut self) -> Step {
        let (text, end_call) = if let Some(instruction) = self.instruction.take() {
            // Told to wrap up (time limit, shutdown): it does as a real model would, goodbye then end_call.
            if instruction.contains("call end_call") {
                (GOODBYE.to_owned(), true)
            } else {
                (format!("Understood: {instruction}"), false)
            }
        } else if let Some(said) = self.heard.take() {
            let lower = said.to_lowercase();
            if lower.contains("error please") {
                return self.error("server_error", "simulated_error", "Simulated server error", None).await;
            } else if lower.contains("drop please") {
                return Err(End::Abrupt);
            } else if lower.contains("bye") {
                (GOODBYE.to_owned(), true)
            } else if said.trim().is_empty() {
                (UNHEARD.to_owned(), false)
            } else {
                (format!("You said: {}. Thank you.", said.trim_end_matches(['.', '!', '?'])), false)
            }
        } else if !self.opened {
            (self.opening(), false)
        } else {
            (ANYTHING_ELSE.to_owned(), false)
        };
        let (response_id, item_id) = (self.next_id("resp"), self.next_id("item"));
        self.opened = true;
        self.emit("response.created", response(&response_id, "in_progress", Vec::new())).await?;
        let audio = speech::speak(&text, self.sim.config.ms_per_char);
        self.speaking = Some(Speaking { response_id, item_id, text, audio, sent: 0, next: Instant::now(), end_call });
        Ok(())
    }

    /// The first thing said: the greeting the instructions ask for, or the apology of a resumed session.
    fn opening(&self) -> String {
        let lines = || self.instructions.lines();
        if let Some(rest) = lines().find_map(|line| line.split_once(GREETING_MARK).map(|(_, rest)| rest)) {
            return rest.rfind('"').map_or(rest, |end| &rest[..end]).to_owned();
        }
        let resumed = lines().any(|line| line.trim_start().starts_with("Conversation so far:"));
        (if resumed { RESUMED } else { GREETING }).to_owned()
    }

    /// Sends the next `delta_ms` of the response in progress, one every `delta_ms / 2`: the API runs
    /// ahead of playback, so the phone side has to buffer (and truncate on barge-in).
    async fn tick(&mut self) -> Step {
        let event_id = self.next_id("event");
        let delta_ms = self.sim.config.delta_ms.max(2);
        let Some(s) = self.speaking.as_mut() else { return Ok(()) };
        let end = (s.sent + delta_ms as usize * 8).min(s.audio.len());
        let delta = STANDARD.encode(&s.audio[s.sent..end]);
        let said = (s.sent == 0).then(|| (s.item_id.clone(), s.text.clone()));
        s.sent = end;
        s.next += Duration::from_millis(u64::from(delta_ms / 2));
        self.audio_items.insert(s.item_id.clone(), end);
        // Written by hand, `type` first as the API does, so the bridge's fast path for deltas is exercised.
        let text = format!(
            concat!(
                r#"{{"type":"response.output_audio.delta","event_id":"{}","response_id":"{}","item_id":"{}","#,
                r#""output_index":0,"content_index":0,"delta":"{}"}}"#
            ),
            event_id, s.response_id, s.item_id, delta
        );
        let done = end == s.audio.len();
        self.socket.send(Message::Text(text.into())).await.map_err(|_| End::Gone)?;
        if let Some((item_id, text)) = said {
            self.sim.record(RealtimeSimEvent::Said { connection: self.id, item_id, text });
        }
        if done { self.finish().await } else { Ok(()) }
    }

    /// All audio sent: the closing events, with `end_call` after a goodbye.
    async fn finish(&mut self) -> Step {
        let Some(Speaking { response_id, item_id, text, end_call, .. }) = self.speaking.take() else { return Ok(()) };
        let ids = json!({"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0});
        self.emit("response.output_audio.done", ids.clone()).await?;
        let mut transcript = ids;
        transcript["transcript"] = json!(text);
        self.emit("response.output_audio_transcript.done", transcript).await?;
        let content = [json!({"type": "output_audio", "transcript": text})];
        let message = json!({"id": item_id, "type": "message", "status": "completed", "role": "assistant",
            "content": content});
        let done = json!({"response_id": response_id, "output_index": 0, "item": message});
        self.emit("response.output_item.done", done).await?;
        let mut output = vec![message];
        if end_call {
            let (call_id, item_id, name) = (self.next_id("call"), self.next_id("item"), "end_call");
            let args = json!({"response_id": response_id, "item_id": item_id, "output_index": 1, "call_id": call_id,
                "name": name, "arguments": "{}"});
            self.emit("response.function_call_arguments.done", args).await?;
            let item = json!({"id": item_id, "type": "function_call", "status": "completed", "name": name,
                "call_id": call_id, "arguments": "{}"});
            self.emit(
                "response.output_item.done",
                json!({"response_id": response_id, "output_index": 1, "item": item}),
            )
            .await?;
            self.sim.record(RealtimeSimEvent::FunctionCall { connection: self.id, name: name.into(), call_id });
            output.push(item);
        }
        self.emit("response.done", response(&response_id, "completed", output)).await?;
        // A turn heard while this played (barge-in off) is answered now.
        if self.vad.0 && self.heard.is_some() { self.respond().await } else { Ok(()) }
    }

    async fn cancel(&mut self, reason: &str) -> Step {
        let Some(s) = self.speaking.take() else { return Ok(()) };
        let mut done = response(&s.response_id, "cancelled", Vec::new());
        done["response"]["status_details"] = json!({"type": "cancelled", "reason": reason});
        self.emit("response.done", done).await
    }

    async fn truncate(&mut self, item_id: String, content_index: u32, audio_end_ms: u64) -> Step {
        // Only items with audio sent count: one cancelled before its first delta has none, like a user item.
        let Some(sent_ms) = self.audio_items.get(&item_id).map(|&bytes| (bytes / 8) as u64) else {
            let message = "Only model output audio messages can be truncated";
            return self.invalid("unsupported_content_type", message, Some("item_id")).await;
        };
        if content_index != 0 {
            return self.invalid("invalid_value", "Invalid 'content_index': expected 0.", Some("content_index")).await;
        }
        if audio_end_ms > sent_ms {
            let message = format!("Audio content of {sent_ms}ms is already shorter than {audio_end_ms}ms");
            return self.invalid("invalid_value", &message, Some("audio_end_ms")).await;
        }
        let connection = self.id;
        self.sim.record(RealtimeSimEvent::Truncated { connection, item_id: item_id.clone(), audio_end_ms, sent_ms });
        let event = json!({"item_id": item_id, "content_index": content_index, "audio_end_ms": audio_end_ms});
        self.emit("conversation.item.truncated", event).await
    }

    async fn invalid(&mut self, code: &str, message: &str, param: Option<&str>) -> Step {
        self.error("invalid_request_error", code, message, param).await
    }

    async fn error(&mut self, kind: &str, code: &str, message: &str, param: Option<&str>) -> Step {
        self.sim.record(RealtimeSimEvent::Invalid { connection: self.id, reason: message.to_owned() });
        let error =
            json!({"type": kind, "code": code, "message": message, "param": param, "event_id": self.client_event});
        self.emit("error", json!({ "error": error })).await
    }

    /// Sends one server event of this `type`, numbered.
    async fn emit(&mut self, kind: &str, mut event: Value) -> Step {
        event["type"] = json!(kind);
        event["event_id"] = json!(self.next_id("event"));
        self.socket.send(Message::Text(event.to_string().into())).await.map_err(|_| End::Gone)
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }
}

/// The `{"response": …}` of `response.created` and `response.done`.
fn response(id: &str, status: &str, output: Vec<Value>) -> Value {
    json!({"response": {"id": id, "object": "realtime.response", "status": status, "output": output}})
}

/// Resolves at `deadline`, or never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

    type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
    const KEY: &str = "sk-sim-test";
    const WAIT: Duration = Duration::from_secs(5);

    async fn simulator() -> RealtimeSimulator {
        let config = RealtimeSimConfig { api_key: KEY.into(), ms_per_char: 8, delta_ms: 100, end_silence_ms: 120 };
        RealtimeSimulator::start(config).await.unwrap()
    }

    async fn connect(sim: &RealtimeSimulator, query: &str, h: &[(&'static str, &str)]) -> tungstenite::Result<Client> {
        let mut request = format!("{}{query}", sim.url()).into_client_request().unwrap();
        for (name, value) in h {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await.unwrap().map(|(ws, _)| ws)
    }

    /// Connects with the bearer key and checks `session.created`.
    async fn open(sim: &RealtimeSimulator) -> Client {
        let mut ws = connect(sim, "?model=gpt-realtime", &[("authorization", &format!("Bearer {KEY}"))]).await.unwrap();
        assert!(next(&mut ws, "session.created").await["session"]["id"].is_string());
        ws
    }

    async fn recv(ws: &mut Client) -> Value {
        let message = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        serde_json::from_str(message.to_text().unwrap()).unwrap()
    }

    /// The next server event of this type, skipping others.
    async fn next(ws: &mut Client, kind: &str) -> Value {
        loop {
            let event = recv(ws).await;
            if event["type"] == kind {
                return event;
            }
        }
    }

    async fn send(ws: &mut Client, event: &ClientEvent<'_>) {
        ws.send(tungstenite::Message::Text(serde_json::to_string(event).unwrap().into())).await.unwrap();
    }

    /// Appends audio in 20 ms frames, as the bridge does.
    async fn append(ws: &mut Client, audio: &[u8]) {
        let mut out = String::new();
        for frame in audio.chunks(speech::FRAME) {
            crate::voice::events::write_append(&mut out, &STANDARD.encode(frame));
            ws.send(tungstenite::Message::Text(out.as_str().into())).await.unwrap();
        }
    }

    /// Speech, then enough silence to end the turn.
    fn utterance(text: &str) -> Vec<u8> {
        let mut audio = speech::speak(text, 8);
        audio.extend(speech::silence(200));
        audio
    }

    /// Sends the `session.update` the server sends (built from the event types) and awaits `session.updated`.
    async fn configure(ws: &mut Client, instructions: &str) {
        send(ws, &crate::voice::session::update(instructions.into(), "marin", "gpt-realtime", None)).await;
        assert_eq!(next(ws, "session.updated").await["session"]["instructions"], instructions);
    }

    /// Collects one response: its audio, its item id, and every other event up to `response.done`.
    async fn response(ws: &mut Client) -> (Vec<u8>, String, Vec<Value>) {
        let (mut audio, mut item, mut others) = (Vec::new(), String::new(), Vec::new());
        while others.last().is_none_or(|e: &Value| e["type"] != "response.done") {
            let event = recv(ws).await;
            if event["type"] == "response.output_audio.delta" {
                item = event["item_id"].as_str().unwrap().to_owned();
                audio.extend(STANDARD.decode(event["delta"].as_str().unwrap()).unwrap());
            } else {
                others.push(event);
            }
        }
        (audio, item, others)
    }

    /// The next simulator event that matches, skipping others.
    async fn expect(sim: &RealtimeSimulator, matches: impl Fn(&RealtimeSimEvent) -> bool) -> RealtimeSimEvent {
        loop {
            let event = tokio::time::timeout(WAIT, sim.next_event()).await.unwrap().unwrap();
            if matches(&event) {
                return event;
            }
        }
    }

    #[tokio::test]
    async fn session_update_is_checked_and_a_goodbye_ends_the_call() {
        let sim = simulator().await;
        let mut ws = open(&sim).await;
        configure(&mut ws, "Be brief.").await;
        let ClientEvent::SessionUpdate { mut session } =
            crate::voice::session::update(String::new(), "marin", "m", None)
        else {
            unreachable!()
        };
        session.audio.input.format.kind = "audio/pcm".into();
        send(&mut ws, &ClientEvent::SessionUpdate { session }).await;
        let error = next(&mut ws, "error").await["error"].clone();
        assert_eq!(
            (error["type"].as_str(), error["param"].as_str()),
            (Some("invalid_request_error"), Some("session.audio.input.format.type"))
        );

        let mut audio = speech::silence(100);
        audio.extend(utterance("hi, goodbye"));
        append(&mut ws, &audio).await;
        let started = next(&mut ws, "input_audio_buffer.speech_started").await;
        assert_eq!(started["audio_start_ms"], 100);
        let heard = next(&mut ws, "conversation.item.input_audio_transcription.completed").await;
        assert_eq!((&heard["transcript"], &heard["item_id"]), (&json!("hi, goodbye"), &started["item_id"]));
        assert_eq!(next(&mut ws, "response.created").await["response"]["status"], "in_progress");
        let (spoken, item, rest) = response(&mut ws).await;
        assert_eq!((speech::words(&spoken).as_deref(), spoken.len()), (Some(GOODBYE), speech::speak(GOODBYE, 8).len()));
        let kinds: Vec<_> = rest.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let audio_done =
            ["response.output_audio.done", "response.output_audio_transcript.done", "response.output_item.done"];
        let call_done = ["response.function_call_arguments.done", "response.output_item.done", "response.done"];
        assert_eq!(kinds, [audio_done, call_done].concat());
        let (call, call_item) = (&rest[3], &rest[4]["item"]);
        assert_eq!(
            (&rest[1]["transcript"], &call["name"], &call["arguments"]),
            (&json!(GOODBYE), &json!("end_call"), &json!("{}"))
        );
        assert_eq!((&call_item["type"], &call_item["call_id"]), (&json!("function_call"), &call["call_id"]));
        assert_eq!(rest[5]["response"]["status"], "completed");

        let connected = expect(&sim, |_| true).await;
        assert!(
            matches!(connected, RealtimeSimEvent::Connected { connection: 1, auth, model } if auth == "bearer" && model == "gpt-realtime")
        );
        expect(&sim, |e| matches!(e, RealtimeSimEvent::Invalid { .. })).await;
        expect(&sim, |e| matches!(e, RealtimeSimEvent::Heard { text, .. } if text == "hi, goodbye")).await;
        expect(
            &sim,
            |e| matches!(e, RealtimeSimEvent::Said { item_id, text, .. } if *item_id == item && text == GOODBYE),
        )
        .await;
        expect(&sim, |e| matches!(e, RealtimeSimEvent::FunctionCall { name, .. } if name == "end_call")).await;
        drop(ws);
        expect(&sim, |e| matches!(e, RealtimeSimEvent::AudioReceived { total_ms, .. } if *total_ms >= 400)).await;
        expect(&sim, |e| matches!(e, RealtimeSimEvent::Closed { connection: 1 })).await;
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn barge_in_cancels_the_reply_and_truncation_is_checked() {
        let sim = simulator().await;
        let mut ws = connect(&sim, "?model=gpt-realtime", &[("api-key", KEY)]).await.unwrap();
        let greeting = "Hi, this is a long greeting. ".repeat(12);
        let greeting = greeting.trim_end();
        configure(&mut ws, &format!("Be brief.\n\n{GREETING_MARK}{greeting}\"")).await;
        send(&mut ws, &ClientEvent::ResponseCreate { response: None }).await;
        // Two deltas (of ~28) in, the callee talks over the greeting.
        let first = next(&mut ws, "response.output_audio.delta").await;
        let item = first["item_id"].as_str().unwrap().to_owned();
        assert_eq!(
            speech::words(&STANDARD.decode(first["delta"].as_str().unwrap()).unwrap()).as_deref(),
            Some(greeting)
        );
        next(&mut ws, "response.output_audio.delta").await;
        append(&mut ws, &utterance("wait")).await;
        let (rest, _, events) = response(&mut ws).await;
        assert_eq!(events.last().unwrap()["response"]["status"], "cancelled");
        assert!(events.iter().all(|e| e["type"] != "response.output_audio.done"));
        let sent_ms = 200 + rest.len() as u64 / 8;
        assert!(sent_ms < 1_000, "{sent_ms}");
        // Only the callee's turn is answered now; the greeting never resumes.
        let (reply, reply_item, events) = response(&mut ws).await;
        assert_ne!(reply_item, item);
        assert_eq!(speech::words(&reply).as_deref(), Some("You said: wait. Thank you."));
        assert_eq!(events.last().unwrap()["response"]["status"], "completed");

        let truncate = |item_id: &str, audio_end_ms| ClientEvent::ConversationItemTruncate {
            item_id: item_id.into(),
            content_index: 0,
            audio_end_ms,
        };
        send(&mut ws, &truncate(&item, sent_ms - 40)).await;
        let truncated = next(&mut ws, "conversation.item.truncated").await;
        assert_eq!((&truncated["item_id"], &truncated["audio_end_ms"]), (&json!(item), &json!(sent_ms - 40)));
        send(&mut ws, &truncate(&item, sent_ms + 1)).await;
        assert_eq!(next(&mut ws, "error").await["error"]["param"], "audio_end_ms");
        send(&mut ws, &truncate("item_999", 0)).await;
        assert_eq!(
            next(&mut ws, "error").await["error"]["message"],
            "Only model output audio messages can be truncated"
        );
        let recorded = expect(&sim, |e| matches!(e, RealtimeSimEvent::Truncated { .. })).await;
        assert!(
            matches!(recorded, RealtimeSimEvent::Truncated { sent_ms: s, audio_end_ms, .. } if s == sent_ms && audio_end_ms == sent_ms - 40)
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn handshakes_bad_events_and_test_controls() {
        let sim = simulator().await;
        let status = |result: tungstenite::Result<Client>| match result {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            other => panic!("{other:?}"),
        };
        assert_eq!(status(connect(&sim, "?model=m", &[("authorization", "Bearer wrong")]).await), 401);
        assert_eq!(status(connect(&sim, "?model=m", &[]).await), 401);
        assert_eq!(status(connect(&sim, "", &[("api-key", KEY)]).await), 400);
        for expected in [401, 401, 400] {
            assert!(
                matches!(expect(&sim, |_| true).await, RealtimeSimEvent::Refused { status, .. } if status == expected)
            );
        }
        // The beta header: accepted, told why, closed.
        let bearer = format!("Bearer {KEY}");
        let mut beta =
            connect(&sim, "?model=m", &[("authorization", &bearer), ("openai-beta", "realtime=v1")]).await.unwrap();
        assert_eq!(recv(&mut beta).await["error"]["code"], "beta_not_supported");
        assert!(matches!(
            tokio::time::timeout(WAIT, beta.next()).await.unwrap(),
            Some(Ok(tungstenite::Message::Close(_)))
        ));

        let (mut a, mut b) = (open(&sim).await, open(&sim).await);
        a.send(tungstenite::Message::Text(r#"{"type":"nonsense.event","event_id":"c1"}"#.into())).await.unwrap();
        let error = next(&mut a, "error").await;
        assert_eq!(
            (&error["error"]["event_id"], &error["error"]["type"]),
            (&json!("c1"), &json!("invalid_request_error"))
        );
        a.send(tungstenite::Message::Text(r#"{"type":"input_audio_buffer.append","audio":"!!"}"#.into()))
            .await
            .unwrap();
        assert_eq!(next(&mut a, "error").await["error"]["param"], "audio");
        sim.send_error_to_all("rate_limit_exceeded", "Slow down");
        for ws in [&mut a, &mut b] {
            assert_eq!(next(ws, "error").await["error"]["code"], "rate_limit_exceeded");
        }
        sim.drop_all();
        for ws in [&mut a, &mut b] {
            let end = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
            assert!(!matches!(end, Some(Ok(tungstenite::Message::Close(_)))), "{end:?}");
        }
        sim.shutdown().await;
    }
}
