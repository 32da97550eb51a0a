//! A Twilio stand-in on loopback: the Calls REST API plus the signed status callbacks it triggers.
//!
//! Tests and sandbox mode run the real carrier code against it, so it speaks Twilio's wire protocol
//! (paths, Basic auth, form bodies, error JSON, `X-Twilio-Signature`) and reproduces the delivery
//! quirks a server must survive: the terminal callback arrives twice, and `ringing` arrives after
//! the callback that followed it. Shaped like svix's `TestReceiver`: every request it gets and every
//! callback it delivers goes into a channel that tests await with a timeout.
//!
//! | `To` ends in | callbacks delivered (all events asked for)                              |
//! |--------------|-------------------------------------------------------------------------|
//! | `0001`       | initiated#0, busy#2, busy#2, ringing#1                                  |
//! | `0002`       | initiated#0, no-answer#2, no-answer#2, ringing#1                        |
//! | `0003`       | initiated#0, failed#1, failed#1                                         |
//! | `0010`       | initiated#0, ringing#1 — then rings for the call's `Timeout` — no-answer#2, no-answer#2 |
//! | other        | initiated#0, in-progress#2, ringing#1, [AMD], completed#3, completed#3, [recording] |
//!
//! Steps are `step_delay` apart; an answered call lasts `talk_time` or until hung up over REST (or
//! redirected to new TwiML, which the simulator treats as played at once: the call then completes).
//!
//! With `media` on, an answered call whose `Twiml` is `<Connect><Stream>` also opens the media stream
//! (`twilio_media.rs`), and the callee follows a script, "hearing" the AI's audio as it plays:
//!
//! | `To` ends in | the callee ("after an AI utterance": once one has played to its end)              |
//! |--------------|-------------------------------------------------------------------------------|
//! | `0004`       | 600 ms into the first AI utterance, with more queued: "Sorry to interrupt, who is this?"; after the next, "Okay, goodbye." |
//! | `0005`       | after the first, "error please"; 1 s more silence; "Okay, goodbye."           |
//! | `0006`       | after the first, "drop please"; after the next, "Okay, goodbye."              |
//! | `0007`       | never speaks                                                                  |
//! | `0008`       | after the first, presses `1` (a `dtmf` message), then as the default          |
//! | `0009`       | answers but never opens the stream (a test plays Twilio's side itself)        |
//! | other        | after the first, "Hi, yes, we are open on Sunday."; after the next, "Okay, goodbye." |
//!
//! Each utterance is followed by at least 600 ms of silence; then silence until the call ends. A step that
//! waits gives up after 30 s. The stream's end: on hang-up, `talk_time` or shutdown, `stop` and a close;
//! if the server closes it first, the line stays up until the call is hung up.

use super::faults::{Fault, Faults};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::carrier::signature;

#[path = "twilio_media.rs"]
mod media;

const API_VERSION: &str = "2010-04-01";

/// Form fields in order, repeats kept: what Twilio posts and what we sign.
type Params = Vec<(String, String)>;
/// Twilio gives up on a webhook after 15 s; loopback receivers answer in milliseconds.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How the simulator behaves; the credentials are the ones the server under test is given.
#[derive(Clone)]
pub struct SimulatorConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// also accept Basic auth with this API key pair (SK…) when set
    pub api_key: Option<(String, String)>,
    /// how long a scripted step waits before the next callback (tests use a few ms; sandbox ~1 s)
    pub step_delay: Duration,
    /// how long an answered call stays in-progress before the callee hangs up on its own (None = until hung up via REST)
    pub talk_time: Option<Duration>,
    /// open the `<Connect><Stream>` of an answered call's TwiML and play the scripted callee on it
    pub media: bool,
    /// the callee's speech pace: ms of audio per character (sandbox ~55, tests ~8)
    pub ms_per_char: u32,
}

/// Sandbox pacing, no media, and no credentials: set `account_sid` and `auth_token`.
impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            account_sid: String::new(),
            auth_token: String::new(),
            api_key: None,
            step_delay: Duration::from_millis(700),
            talk_time: Some(Duration::from_secs(6)),
            media: false,
            ms_per_char: 55,
        }
    }
}

// By hand so secrets never reach logs.
impl fmt::Debug for SimulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorConfig")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"<redacted>")
            .field("api_key", &self.api_key.as_ref().map(|(sid, _)| sid))
            .field("step_delay", &self.step_delay)
            .field("talk_time", &self.talk_time)
            .field("media", &self.media)
            .field("ms_per_char", &self.ms_per_char)
            .finish()
    }
}

/// Which credentials a REST request authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimAuth {
    AuthToken,
    /// The API key SID (SK…).
    ApiKey(String),
}

/// Which of a call's webhooks a `CallbackResult` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackKind {
    /// `StatusCallback`; `status` is the `CallStatus`.
    Status,
    /// `AsyncAmdStatusCallback`; `status` is the `AnsweredBy`.
    Amd,
    /// `RecordingStatusCallback`; `status` is the `RecordingStatus`.
    Recording,
}

/// Everything the simulator accepted, refused or delivered, in order.
#[derive(Debug, Clone)]
pub enum SimRequest {
    /// `form` is the request body as sent: every field, repeats kept.
    CreateCall {
        call_sid: String,
        form: Vec<(String, String)>,
        auth: SimAuth,
    },
    Hangup {
        call_sid: String,
        status: String,
    },
    /// Bad auth, missing fields, unknown call or path: answered with Twilio's error JSON.
    Rejected {
        path: String,
        status: u16,
        reason: String,
    },
    /// One webhook delivered; `http_status` is 0 when no response came back (refused, timed out).
    CallbackResult {
        call_sid: String,
        kind: CallbackKind,
        status: String,
        sequence: Option<u32>,
        http_status: u16,
    },
    /// A REST request met an injected fault (see [`TwilioSimulator::inject`]).
    Faulted {
        path: String,
        fault: Fault,
    },
    /// `GET …/Calls/{sid}.json` answered with the call resource.
    Fetched {
        call_sid: String,
    },
    /// A REST update that replaced the call's TwiML (`Twiml=`); the call then completes.
    Redirected {
        call_sid: String,
        twiml: String,
    },
    /// The media stream's handshake was refused (`http_status` 0: no answer at all); the call completes.
    MediaRefused {
        call_sid: String,
        http_status: u16,
    },
    /// The media stream is open: `connected` and `start` were sent.
    MediaStarted {
        call_sid: String,
        stream_sid: String,
    },
    /// The callee began an utterance.
    CalleeSaid {
        call_sid: String,
        text: String,
    },
    /// An AI utterance stopped playing: it ended, a `clear` cut it (`cleared`), or the stream ended.
    /// `text` is what the queued audio said; `played_ms` how much of it the callee heard.
    Played {
        call_sid: String,
        text: Option<String>,
        played_ms: u64,
        cleared: bool,
    },
    /// The server sent `clear`.
    Cleared {
        call_sid: String,
    },
    /// The server sent what Twilio would reject (its warnings 31951/31924, or 31920 for a query string in
    /// the stream URL); the stream goes on.
    StreamViolation {
        call_sid: String,
        reason: String,
    },
    /// The media stream closed; `by` is `"twilio"` (the call ended) or `"server"`.
    MediaClosed {
        call_sid: String,
        by: &'static str,
    },
}

/// A running simulator; `shutdown` (or drop) stops it and every call it is playing.
#[derive(Debug)]
pub struct TwilioSimulator {
    shared: Arc<Shared>,
    // tokio's Mutex: `next_request` holds it across `recv().await`.
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<SimRequest>>,
}

#[derive(Debug)]
struct Shared {
    config: SimulatorConfig,
    base_url: String,
    http: reqwest::Client,
    // std Mutex: only held for short map updates, never across an await.
    calls: Mutex<HashMap<String, CallState>>,
    events: mpsc::UnboundedSender<SimRequest>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Faults to inject into the next REST requests (see [`TwilioSimulator::inject`]).
    faults: Faults,
}

#[derive(Debug)]
struct CallState {
    to: String,
    from: String,
    created: String,
    status: &'static str,
    answered_by: Option<&'static str>,
    answered: Option<(Instant, String)>,
    ended: Option<(Instant, String)>,
    /// Cancelled by a REST hang-up; the progress task then sends the terminal callback.
    hangup: CancellationToken,
    /// Cancelled by a REST update with new TwiML.
    redirect: CancellationToken,
}

/// What one created call asked for, read once from its form.
#[derive(Debug)]
struct Plan {
    sid: String,
    from: String,
    to: String,
    /// `busy`, `no-answer` or `failed` when the `To` number scripts one; `None` answers.
    ending: Option<&'static str>,
    /// Rings this long before the ending (the call's `Timeout`), for a number that rings out.
    rings_for: Option<Duration>,
    status_callback: Option<String>,
    events: HashSet<String>,
    machine_detection: bool,
    amd_callback: Option<String>,
    recording_callback: Option<String>,
    /// The `Twiml` to stream when answered: only with `media` on, for a number that streams.
    twiml: Option<String>,
}

/// One call's scripted life, run by its own tracked task so its callbacks never race each other.
#[derive(Debug)]
struct Script {
    sim: Arc<Shared>,
    plan: Plan,
    /// Cancelled by a REST hang-up.
    hangup: CancellationToken,
    /// Cancelled by a REST update with new TwiML.
    redirect: CancellationToken,
    /// `SequenceNumber` counts the status callbacks fired so far.
    seq: u32,
    /// A callback fired but not yet delivered: the out-of-order quirk.
    held: Option<(&'static str, u32, Params)>,
}

/// Why the script stopped before its natural end.
#[derive(Debug)]
enum Stop {
    Shutdown,
    HungUp,
    Natural(&'static str),
}

impl TwilioSimulator {
    /// Binds 127.0.0.1:0 and serves until `shutdown` (or drop).
    pub async fn start(config: SimulatorConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let http = reqwest::Client::builder().timeout(CALLBACK_TIMEOUT).build().map_err(std::io::Error::other)?;
        let (events, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config,
            base_url,
            http,
            calls: Mutex::new(HashMap::new()),
            events,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            faults: Faults::default(),
        });
        let app = Router::new()
            .route("/2010-04-01/Accounts/{account}/Calls.json", post(create_call))
            .route("/2010-04-01/Accounts/{account}/Calls/{file}", post(update_call).get(fetch_call))
            .fallback(unknown)
            .with_state(Arc::clone(&shared));
        let stop = shared.cancel.clone().cancelled_owned();
        shared.tracker.spawn(async move {
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                tracing::warn!(%error, "twilio simulator stopped serving");
            }
        });
        Ok(Self { shared, requests: tokio::sync::Mutex::new(rx) })
    }

    /// "http://127.0.0.1:PORT": what the server uses as `TWILIO_API_BASE`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The next thing the simulator received or delivered, in order.
    pub async fn next_request(&self) -> Option<SimRequest> {
        self.requests.lock().await.recv().await
    }

    /// Like `next_request` without waiting; `None` also while another task awaits `next_request`.
    pub fn try_next_request(&self) -> Option<SimRequest> {
        self.requests.try_lock().ok()?.try_recv().ok()
    }

    /// Stops keeping the log of what the simulator saw (see [`Self::next_request`]): for sandbox mode,
    /// where nobody reads it, and an unread log would grow with every call for as long as the server runs.
    pub fn discard_log(&self) {
        if let Ok(mut log) = self.requests.try_lock() {
            log.close();
            while log.try_recv().is_ok() {}
        }
    }

    /// The next `times` REST requests (any of them: create, update, fetch) fail with `fault`: a bad
    /// moment of Twilio's, after which it behaves again.
    pub fn inject(&self, times: usize, fault: Fault) {
        self.shared.faults.push(times, fault);
    }

    /// Stops the listener and every call in progress, and waits for them all.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

impl Drop for TwilioSimulator {
    // Without `shutdown`, dropping still stops the tasks instead of leaving them running.
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

async fn create_call(
    State(sim): State<Arc<Shared>>,
    Path(account): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let (auth, fault) = match admit(&sim, &headers, &account, path).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let form: Params = url::form_urlencoded::parse(&body).into_owned().collect();
    let Some(to) = field(&form, "To") else {
        return sim.reject(path, StatusCode::BAD_REQUEST, 21201, "No 'To' number is specified".into());
    };
    let Some(from) = field(&form, "From") else {
        return sim.reject(path, StatusCode::BAD_REQUEST, 21213, "No 'From' number is specified".into());
    };
    if field(&form, "Url").is_none() && field(&form, "Twiml").is_none() {
        return sim.reject(path, StatusCode::BAD_REQUEST, 21205, "Url parameter is required".into());
    }
    if !is_e164(to) {
        return sim.reject(path, StatusCode::BAD_REQUEST, 21211, format!("Invalid 'To' Phone Number: {to}"));
    }
    let plan = Plan::new(&form, to, from, sim.config.media);
    let (hangup, redirect) = (CancellationToken::new(), CancellationToken::new());
    let state = CallState {
        to: to.to_owned(),
        from: from.to_owned(),
        created: now(),
        status: "queued",
        answered_by: None,
        answered: None,
        ended: None,
        hangup: hangup.clone(),
        redirect: redirect.clone(),
    };
    let body = sim.call_json(&plan.sid, &state);
    {
        let mut calls = sim.lock();
        forget_old_calls(&mut calls);
        calls.insert(plan.sid.clone(), state);
    }
    sim.record(SimRequest::CreateCall { call_sid: plan.sid.clone(), form, auth });
    let script = Script { sim: Arc::clone(&sim), plan, hangup, redirect, seq: 0, held: None };
    sim.tracker.spawn(script.play());
    sim.answer(fault, path, (StatusCode::CREATED, axum::Json(body)).into_response()).await
}

/// What every REST request passes first: Basic auth for the path's account, then any injected fault
/// that refuses it outright. A fault that lets it through (its answer to be lost) comes back with it.
async fn admit(
    sim: &Shared,
    headers: &HeaderMap,
    account: &str,
    path: &str,
) -> Result<(SimAuth, Option<Fault>), Response> {
    let Some(auth) = sim.authenticate(headers, account) else {
        return Err(sim.reject(path, StatusCode::UNAUTHORIZED, 20003, "Authenticate".into()));
    };
    let fault = sim.faults.take();
    match sim.refuse_for(fault, path).await {
        Some(refused) => Err(refused),
        None => Ok((auth, fault)),
    }
}

async fn update_call(
    State(sim): State<Arc<Shared>>,
    Path((account, file)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let fault = match admit(&sim, &headers, &account, path).await {
        Ok((_, fault)) => fault,
        Err(refused) => return refused,
    };
    let response = update(&sim, path, &file, &body);
    sim.answer(fault, path, response).await
}

/// `POST …/Calls/{sid}.json`: a hang-up (`Status`) or new TwiML (`Twiml`).
fn update(sim: &Shared, path: &str, file: &str, body: &[u8]) -> Response {
    let form: Params = url::form_urlencoded::parse(body).into_owned().collect();
    let sid = file.strip_suffix(".json").unwrap_or_default();
    if let (None, Some(twiml)) = (field(&form, "Status"), field(&form, "Twiml")) {
        return redirect_call(sim, path, sid, twiml);
    }
    let Some(wanted @ ("completed" | "canceled")) = field(&form, "Status") else {
        return sim.reject(path, StatusCode::BAD_REQUEST, 20001, "Status must be 'completed' or 'canceled'".into());
    };
    let found = sim.lock().get_mut(sid).filter(|c| c.ended.is_none()).map(|call| {
        // Twilio: `canceled` leaves an answered call alone, and a call hung up before it was
        // answered ends as `canceled` whichever status was asked for.
        if !(wanted == "canceled" && call.answered.is_some()) {
            call.status = if call.answered.is_some() { "completed" } else { "canceled" };
            call.ended = Some((Instant::now(), now()));
            call.hangup.cancel();
        }
        sim.call_json(sid, call)
    });
    let Some(body) = found else {
        return sim.reject(path, StatusCode::NOT_FOUND, 20404, format!("The requested resource {path} was not found"));
    };
    sim.record(SimRequest::Hangup { call_sid: sid.to_owned(), status: wanted.to_owned() });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `GET …/Calls/{sid}.json`: the call resource as it is now, or 20404.
async fn fetch_call(
    State(sim): State<Arc<Shared>>,
    Path((account, file)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    let fault = match admit(&sim, &headers, &account, path).await {
        Ok((_, fault)) => fault,
        Err(refused) => return refused,
    };
    let sid = file.strip_suffix(".json").unwrap_or_default();
    let Some(body) = sim.lock().get(sid).map(|call| sim.call_json(sid, call)) else {
        return sim.reject(path, StatusCode::NOT_FOUND, 20404, format!("The requested resource {path} was not found"));
    };
    sim.record(SimRequest::Fetched { call_sid: sid.to_owned() });
    sim.answer(fault, path, (StatusCode::OK, axum::Json(body)).into_response()).await
}

/// New TwiML for a live call. The simulator does not voice it: the current one (a media stream) stops,
/// the new one counts as played at once, and the call completes; before the answer, it does so when answered.
fn redirect_call(sim: &Shared, path: &str, sid: &str, twiml: &str) -> Response {
    let found = sim.lock().get(sid).filter(|c| c.ended.is_none()).map(|call| {
        call.redirect.cancel();
        sim.call_json(sid, call)
    });
    let Some(body) = found else {
        return sim.reject(path, StatusCode::NOT_FOUND, 20404, format!("The requested resource {path} was not found"));
    };
    sim.record(SimRequest::Redirected { call_sid: sid.to_owned(), twiml: twiml.to_owned() });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn unknown(State(sim): State<Arc<Shared>>, uri: Uri) -> Response {
    let path = uri.path();
    sim.reject(path, StatusCode::NOT_FOUND, 20404, format!("The requested resource {path} was not found"))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, CallState>> {
        // A panic elsewhere must not wedge the simulator; each entry is updated in one step.
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: SimRequest) {
        // Nobody listening (receiver dropped) is fine: sandbox mode never reads the log.
        let _ = self.events.send(request);
    }

    /// A fault that stops the request before anything is done: its error answer (or, for a hang,
    /// none until the client gives up).
    async fn refuse_for(&self, fault: Option<Fault>, path: &str) -> Option<Response> {
        match fault? {
            Fault::Status(status) => {
                self.record(SimRequest::Faulted { path: path.to_owned(), fault: Fault::Status(status) });
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                // Twilio's codes for these are 20000 + the status (20429 Too Many Requests, 20500, 20503).
                let message = status.canonical_reason().unwrap_or("error").to_owned();
                Some(self.reject(path, status, 20_000 + u32::from(status.as_u16()), message))
            }
            Fault::Hang => Some(self.hang(path, Fault::Hang).await),
            Fault::HangAfter => None,
        }
    }

    /// The answer to a request that was carried out, unless a fault loses it.
    async fn answer(&self, fault: Option<Fault>, path: &str, response: Response) -> Response {
        match fault {
            Some(Fault::HangAfter) => self.hang(path, Fault::HangAfter).await,
            _ => response,
        }
    }

    /// Never answers (until the simulator stops, or long after any client has given up).
    async fn hang(&self, path: &str, fault: Fault) -> Response {
        self.record(SimRequest::Faulted { path: path.to_owned(), fault });
        tokio::select! {
            () = self.cancel.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
        StatusCode::GATEWAY_TIMEOUT.into_response()
    }

    fn reject(&self, path: &str, status: StatusCode, code: u32, message: String) -> Response {
        let more_info = format!("https://www.twilio.com/docs/errors/{code}");
        let body = json!({ "code": code, "message": message, "more_info": more_info, "status": status.as_u16() });
        self.record(SimRequest::Rejected { path: path.to_owned(), status: status.as_u16(), reason: message });
        (status, axum::Json(body)).into_response()
    }

    /// Basic auth with the account's token or the API key pair, and the path's AccountSid must be ours.
    fn authenticate(&self, headers: &HeaderMap, account: &str) -> Option<SimAuth> {
        let encoded = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Basic ")?;
        let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        if account != self.config.account_sid {
            return None;
        }
        if user == self.config.account_sid && pass == self.config.auth_token {
            return Some(SimAuth::AuthToken);
        }
        match &self.config.api_key {
            Some((sid, secret)) if user == sid && pass == secret => Some(SimAuth::ApiKey(sid.clone())),
            _ => None,
        }
    }

    fn call_json(&self, sid: &str, call: &CallState) -> Value {
        let account = &self.config.account_sid;
        // Twilio sends `duration` as a string of seconds, and only once the call has ended.
        let duration = call.ended.as_ref().map(|(end, _)| talk_seconds(call.answered.as_ref(), *end).to_string());
        json!({
            "sid": sid, "account_sid": account, "to": call.to, "from": call.from, "status": call.status,
            "direction": "outbound-api", "date_created": call.created, "date_updated": now(),
            "start_time": call.answered.as_ref().map(|(_, at)| at), "end_time": call.ended.as_ref().map(|(_, at)| at),
            "duration": duration, "answered_by": call.answered_by, "api_version": API_VERSION,
            "uri": format!("/{API_VERSION}/Accounts/{account}/Calls/{sid}.json"),
        })
    }

    /// Moves the REST-visible status forward, unless a REST hang-up got there first.
    fn advance(&self, sid: &str, status: &'static str, answered_by: Option<&'static str>) -> Result<(), Stop> {
        let mut calls = self.lock();
        let call = calls.get_mut(sid).filter(|c| c.ended.is_none()).ok_or(Stop::HungUp)?;
        call.status = status;
        if status == "in-progress" {
            call.answered = Some((Instant::now(), now()));
            call.answered_by = answered_by;
        }
        Ok(())
    }

    /// Ends the call (unless a hang-up already did): its final status, talk seconds, and if it was answered.
    fn finish(&self, sid: &str, natural: Option<&'static str>) -> Option<(&'static str, u64, bool)> {
        let mut calls = self.lock();
        let call = calls.get_mut(sid)?;
        if call.ended.is_none() {
            call.status = natural.unwrap_or("completed");
            call.ended = Some((Instant::now(), now()));
        }
        let end = call.ended.as_ref().map_or_else(Instant::now, |(at, _)| *at);
        Some((call.status, talk_seconds(call.answered.as_ref(), end), call.answered.is_some()))
    }
}

impl Script {
    async fn play(mut self) {
        let natural = match self.run().await {
            Err(Stop::Shutdown) => return,
            Err(Stop::HungUp) => None,
            Err(Stop::Natural(status)) => Some(status),
            Ok(()) => Some("completed"),
        };
        let Some((status, seconds, answered)) = self.sim.finish(&self.plan.sid, natural) else { return };
        let mut extra = vec![kv("CallDuration", seconds.to_string())];
        if answered && self.plan.machine_detection {
            extra.push(kv("AnsweredBy", "human"));
        }
        if let Some((seq, params)) = self.fire(status, extra) {
            // The duplicate quirk: the terminal callback twice, same SequenceNumber.
            self.deliver(status, seq, &params).await;
            self.deliver(status, seq, &params).await;
        }
        self.flush().await;
        let (Some(url), true) = (&self.plan.recording_callback, answered) else { return };
        let (account, rec_sid) = (&self.sim.config.account_sid, new_sid("RE"));
        let params = vec![
            kv("AccountSid", account.as_str()),
            kv("CallSid", self.plan.sid.as_str()),
            kv("RecordingSid", rec_sid.as_str()),
            kv("RecordingUrl", format!("{}/{API_VERSION}/Accounts/{account}/Recordings/{rec_sid}", self.sim.base_url)),
            kv("RecordingStatus", "completed"),
            kv("RecordingDuration", seconds.to_string()),
            kv("RecordingChannels", "1"),
            kv("RecordingSource", "OutboundAPI"),
        ];
        self.post(url, CallbackKind::Recording, "completed", None, &params).await;
    }

    async fn run(&mut self) -> Result<(), Stop> {
        let step = Some(self.sim.config.step_delay);
        self.pause(step).await?;
        self.emit("initiated", Vec::new()).await;
        self.pause(step).await?;
        if let Some("failed") = self.plan.ending {
            return Err(Stop::Natural("failed"));
        }
        self.sim.advance(&self.plan.sid, "ringing", None)?;
        // The out-of-order quirk: `ringing` is fired (numbered) now but delivered after the next callback.
        self.held = self.fire("ringing", Vec::new()).map(|(seq, params)| ("ringing", seq, params));
        self.pause(step).await?;
        if let Some(ringing) = self.plan.rings_for {
            // Rings out like a real phone nobody picks up: `ringing` arrives now, in order.
            self.flush().await;
            self.pause(Some(ringing)).await?;
        }
        if let Some(ending) = self.plan.ending {
            return Err(Stop::Natural(ending));
        }
        let answered_by = self.plan.machine_detection.then_some("human");
        self.sim.advance(&self.plan.sid, "in-progress", answered_by)?;
        self.emit("in-progress", answered_by.map(|by| vec![kv("AnsweredBy", by)]).unwrap_or_default()).await;
        if let Some(url) = &self.plan.amd_callback {
            let params = vec![
                kv("AccountSid", self.sim.config.account_sid.as_str()),
                kv("CallSid", self.plan.sid.as_str()),
                kv("AnsweredBy", "human"),
                kv("MachineDetectionDuration", "2370"),
            ];
            self.post(url, CallbackKind::Amd, "human", None, &params).await;
        }
        match self.plan.twiml.as_deref() {
            Some(twiml) => media::play(&self.sim, &self.plan.sid, &self.plan.to, twiml, self.talk()).await,
            None => self.talk().await,
        }
    }

    /// The answered call's time: until `talk_time`, a hang-up, a redirect (which completes it), or shutdown.
    async fn talk(&self) -> Result<(), Stop> {
        tokio::select! {
            biased;
            end = self.pause(self.sim.config.talk_time) => end,
            () = self.redirect.cancelled() => Ok(()),
        }
    }

    async fn pause(&self, wait: Option<Duration>) -> Result<(), Stop> {
        tokio::select! {
            biased;
            () = self.sim.cancel.cancelled() => Err(Stop::Shutdown),
            () = self.hangup.cancelled() => Err(Stop::HungUp),
            () = async { match wait { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => Ok(()),
        }
    }

    /// Numbers and builds a status callback, if `StatusCallbackEvent` asked for it (terminal ones always).
    fn fire(&mut self, status: &str, extra: Params) -> Option<(u32, Params)> {
        let event = match status {
            "initiated" | "ringing" => status,
            "in-progress" => "answered",
            _ => "completed",
        };
        let plan = &self.plan;
        if plan.status_callback.is_none() || (event != "completed" && !plan.events.contains(event)) {
            return None;
        }
        let mut params = vec![
            kv("CallSid", plan.sid.as_str()),
            kv("AccountSid", self.sim.config.account_sid.as_str()),
            kv("From", plan.from.as_str()),
            kv("To", plan.to.as_str()),
            kv("Direction", "outbound-api"),
            kv("ApiVersion", API_VERSION),
            kv("CallStatus", status),
            kv("Timestamp", now()),
            kv("SequenceNumber", self.seq.to_string()),
            kv("CallbackSource", "call-progress-events"),
        ];
        params.extend(extra);
        self.seq += 1;
        Some((self.seq - 1, params))
    }

    /// Fires and delivers one status callback, then any held one (so it lands after this).
    async fn emit(&mut self, status: &'static str, extra: Params) {
        if let Some((seq, params)) = self.fire(status, extra) {
            self.deliver(status, seq, &params).await;
        }
        self.flush().await;
    }

    async fn flush(&mut self) {
        if let Some((status, seq, params)) = self.held.take() {
            self.deliver(status, seq, &params).await;
        }
    }

    async fn deliver(&self, status: &str, seq: u32, params: &[(String, String)]) {
        if let Some(url) = &self.plan.status_callback {
            self.post(url, CallbackKind::Status, status, Some(seq), params).await;
        }
    }

    /// POSTs one signed webhook, as Twilio does, and records how the server answered.
    async fn post(
        &self,
        url: &str,
        kind: CallbackKind,
        status: &str,
        sequence: Option<u32>,
        params: &[(String, String)],
    ) {
        let signature = signature::compute(&self.sim.config.auth_token, url, params);
        let request = self.sim.http.post(url).header("X-Twilio-Signature", signature);
        let request = request.header(header::USER_AGENT, "TwilioProxy/1.1").form(params).send();
        let http_status = tokio::select! {
            () = self.sim.cancel.cancelled() => return,
            response = request => response.map_or_else(|error| {
                tracing::warn!(%error, url, "twilio simulator callback failed");
                0
            }, |response| response.status().as_u16()),
        };
        let (call_sid, status) = (self.plan.sid.clone(), status.to_owned());
        self.sim.record(SimRequest::CallbackResult { call_sid, kind, status, sequence, http_status });
    }
}

impl Plan {
    fn new(form: &[(String, String)], to: &str, from: &str, media: bool) -> Self {
        let ending = match to.get(to.len().saturating_sub(4)..) {
            Some("0001") => Some("busy"),
            Some("0002") => Some("no-answer"),
            Some("0003") => Some("failed"),
            Some("0010") => Some("no-answer"),
            _ => None,
        };
        let timeout = field(form, "Timeout").and_then(|t| t.parse().ok()).unwrap_or(60);
        let rings_for = to.ends_with("0010").then(|| Duration::from_secs(timeout));
        // Repeated once per value by the SDKs; some clients send them space-separated in one value.
        let events = form
            .iter()
            .filter(|(k, _)| k == "StatusCallbackEvent")
            .flat_map(|(_, v)| v.split_whitespace().map(str::to_ascii_lowercase))
            .collect();
        let is_true = |name| field(form, name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let recording_events = field(form, "RecordingStatusCallbackEvent").unwrap_or("completed");
        let wants_recording = is_true("Record") && recording_events.split_whitespace().any(|e| e == "completed");
        Self {
            sid: new_sid("CA"),
            from: from.to_owned(),
            to: to.to_owned(),
            ending,
            rings_for,
            status_callback: field(form, "StatusCallback").map(str::to_owned),
            events,
            machine_detection: field(form, "MachineDetection").is_some(),
            amd_callback: field(form, "AsyncAmdStatusCallback").filter(|_| is_true("AsyncAmd")).map(str::to_owned),
            recording_callback: field(form, "RecordingStatusCallback").filter(|_| wants_recording).map(str::to_owned),
            twiml: field(form, "Twiml").filter(|_| media && ending.is_none() && media::streams(to)).map(str::to_owned),
        }
    }
}

/// Ended calls the simulator still answers `GET` for; the oldest are forgotten past this (Twilio keeps
/// them for good, but a sandbox that runs for weeks must not grow with every call).
const KEPT_ENDED_CALLS: usize = 1_000;

fn forget_old_calls(calls: &mut HashMap<String, CallState>) {
    let ended = calls.values().filter(|c| c.ended.is_some()).count();
    if ended <= KEPT_ENDED_CALLS {
        return;
    }
    let mut ends: Vec<Instant> = calls.values().filter_map(|c| c.ended.as_ref().map(|(at, _)| *at)).collect();
    ends.sort_unstable();
    // Keep the newest half of the allowance, so this runs once per few hundred calls, not on each one.
    let cutoff = ends[ended - KEPT_ENDED_CALLS / 2];
    calls.retain(|_, c| c.ended.as_ref().is_none_or(|(at, _)| *at >= cutoff));
}

/// The first non-empty value of a form field: Twilio treats `To=` as missing.
fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str())
}

fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

fn talk_seconds(answered: Option<&(Instant, String)>, end: Instant) -> u64 {
    answered.map_or(0, |(at, _)| end.saturating_duration_since(*at).as_secs())
}

fn new_sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc2822).unwrap_or_default()
}

fn kv(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_owned(), value.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "AC00000000000000000000000000000001";
    const TOKEN: &str = "sim-token";
    const OURS: (&str, &str) = (ACCOUNT, TOKEN);
    const WAIT: Duration = Duration::from_secs(5);

    /// The server side in miniature: checks `X-Twilio-Signature` against its public URL and forwards
    /// (path, params, signature ok) for every webhook.
    async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Params, bool)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let public = base.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (tx, url) = (tx.clone(), format!("{public}{uri}"));
            async move {
                let params: Params = url::form_urlencoded::parse(&body).into_owned().collect();
                let given = headers.get("X-Twilio-Signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let valid = signature::validate(TOKEN, &url, &params, given);
                tx.send((uri.path().to_owned(), params, valid)).unwrap();
                if valid { StatusCode::OK } else { StatusCode::FORBIDDEN }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (base, rx)
    }

    /// Awaits the next webhook, asserts its signature held, and names it like the module table does.
    async fn next_hook(hooks: &mut mpsc::UnboundedReceiver<(String, Params, bool)>) -> (String, Params) {
        let (path, params, valid) = tokio::time::timeout(WAIT, hooks.recv()).await.unwrap().unwrap();
        assert!(valid, "bad signature on {path} {params:?}");
        let get = |name| field(&params, name).unwrap_or_default();
        let name = match path.as_str() {
            "/amd" => format!("amd:{}", get("AnsweredBy")),
            "/rec" => format!("rec:{}", get("RecordingStatus")),
            _ => format!("{}#{}", get("CallStatus"), get("SequenceNumber")),
        };
        (name, params)
    }

    async fn simulator(talk_time: Option<Duration>) -> TwilioSimulator {
        let api_key = Some(("SK123".into(), "key-secret".into()));
        let config = SimulatorConfig {
            account_sid: ACCOUNT.into(),
            auth_token: TOKEN.into(),
            api_key,
            step_delay: Duration::from_millis(5),
            talk_time,
            media: false,
            ms_per_char: 8,
        };
        TwilioSimulator::start(config).await.unwrap()
    }

    /// POSTs a form to `…/Accounts/{ACCOUNT}/{resource}` as the carrier client would.
    async fn rest(
        sim: &TwilioSimulator,
        resource: &str,
        (user, pass): (&str, &str),
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = format!("{}/2010-04-01/Accounts/{ACCOUNT}/{resource}", sim.base_url());
        let response = reqwest::Client::new().post(url).basic_auth(user, Some(pass)).form(form).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn next_request(sim: &TwilioSimulator) -> SimRequest {
        tokio::time::timeout(WAIT, sim.next_request()).await.unwrap().unwrap()
    }

    fn call_form<'a>(to: &'a str, callback: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut form = vec![("To", to), ("From", "+15005550006"), ("Url", "https://example.com/twiml")];
        form.push(("StatusCallback", callback));
        form.extend(["initiated", "ringing", "answered", "completed"].map(|e| ("StatusCallbackEvent", e)));
        form
    }

    #[tokio::test]
    async fn a_simulator_nobody_reads_keeps_no_log_and_forgets_old_calls() {
        let (base, mut hooks) = receiver().await;
        let sim = simulator(Some(Duration::from_millis(5))).await;
        sim.discard_log();
        let (status, _) = rest(&sim, "Calls.json", OURS, &call_form("+14155550100", &format!("{base}/s"))).await;
        assert_eq!(status, 201);
        // The call plays out (its callbacks arrive) and nothing of it is kept for a reader that never comes.
        while next_hook(&mut hooks).await.0 != "completed#3" {}
        assert!(sim.next_request().await.is_none(), "the log is closed and empty");

        let ended = |n: u64| CallState {
            to: String::new(),
            from: String::new(),
            created: String::new(),
            status: "completed",
            answered_by: None,
            answered: None,
            ended: Some((Instant::now() + Duration::from_millis(n), String::new())),
            hangup: CancellationToken::new(),
            redirect: CancellationToken::new(),
        };
        let mut calls: HashMap<String, CallState> = (0..1_500).map(|n| (format!("CA{n}"), ended(n))).collect();
        calls.insert("CAlive".into(), CallState { ended: None, ..ended(0) });
        forget_old_calls(&mut calls);
        assert!(calls.len() <= KEPT_ENDED_CALLS, "{}", calls.len());
        assert!(calls.contains_key("CAlive") && calls.contains_key("CA1499"), "live and newest kept");
        assert!(!calls.contains_key("CA0"), "oldest forgotten");
    }

    #[tokio::test]
    async fn answered_call_delivers_signed_callbacks_with_quirks() {
        let (base, mut hooks) = receiver().await;
        let sim = simulator(Some(Duration::from_millis(20))).await;
        let (status_url, amd_url, rec_url) =
            (format!("{base}/status?call=1"), format!("{base}/amd"), format!("{base}/rec"));
        let mut form = call_form("+14155550100", &status_url);
        form.extend([("MachineDetection", "Enable"), ("AsyncAmd", "true"), ("AsyncAmdStatusCallback", &amd_url)]);
        form.extend([("Record", "true"), ("RecordingStatusCallback", &rec_url)]);
        let (status, call) = rest(&sim, "Calls.json", OURS, &form).await;
        assert_eq!(
            (status, call["status"].as_str(), call["direction"].as_str()),
            (201, Some("queued"), Some("outbound-api"))
        );
        assert!(call["duration"].is_null() && call["start_time"].is_null());
        let sid = call["sid"].as_str().unwrap().to_owned();
        assert!(sid.starts_with("CA") && sid.len() == 34, "{sid}");

        let mut seen = Vec::new();
        for _ in 0..7 {
            let (name, params) = next_hook(&mut hooks).await;
            assert_eq!(field(&params, "CallSid"), Some(sid.as_str()));
            if name.starts_with("completed") {
                assert!(field(&params, "CallDuration").is_some() && field(&params, "AnsweredBy") == Some("human"));
            }
            seen.push(name);
        }
        let expected =
            ["initiated#0", "in-progress#2", "ringing#1", "amd:human", "completed#3", "completed#3", "rec:completed"];
        assert_eq!(seen, expected);

        assert!(matches!(next_request(&sim).await, SimRequest::CreateCall { auth: SimAuth::AuthToken, .. }));
        for _ in 0..7 {
            let request = next_request(&sim).await;
            assert!(
                matches!(&request, SimRequest::CallbackResult { http_status: 200, call_sid, .. } if *call_sid == sid)
            );
        }
        // The call is over: hanging it up again is Twilio's 20404.
        let (status, body) = rest(&sim, &format!("Calls/{sid}.json"), OURS, &[("Status", "completed")]).await;
        assert_eq!((status, body["code"].as_u64()), (404, Some(20404)));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn scenarios_chosen_by_number() {
        let (base, mut hooks) = receiver().await;
        let sim = simulator(None).await;
        let url = format!("{base}/status");
        for (to, expected) in [
            ("+14155550001", ["initiated#0", "busy#2", "busy#2", "ringing#1"].as_slice()),
            ("+14155550002", &["initiated#0", "no-answer#2", "no-answer#2", "ringing#1"]),
            ("+14155550003", &["initiated#0", "failed#1", "failed#1"]),
        ] {
            rest(&sim, "Calls.json", OURS, &call_form(to, &url)).await;
            let mut seen = Vec::new();
            for _ in expected {
                seen.push(next_hook(&mut hooks).await.0);
            }
            assert_eq!(seen, expected, "{to}");
        }
        // No StatusCallbackEvent (only `completed`), API key auth: the terminal callback twice, numbered 0.
        let form =
            [("To", "+14155550001"), ("From", "+15005550006"), ("Twiml", "<Response/>"), ("StatusCallback", &url)];
        rest(&sim, "Calls.json", ("SK123", "key-secret"), &form).await;
        for _ in 0..2 {
            let (name, params) = next_hook(&mut hooks).await;
            assert_eq!((name.as_str(), field(&params, "CallDuration")), ("busy#0", Some("0")));
        }
        let api_key = SimAuth::ApiKey("SK123".into());
        while !matches!(next_request(&sim).await, SimRequest::CreateCall { auth, .. } if auth == api_key) {}
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn rest_hang_up_completes_the_call() {
        let (base, mut hooks) = receiver().await;
        let sim = simulator(None).await;
        let (_, call) = rest(&sim, "Calls.json", OURS, &call_form("+442071838750", &format!("{base}/status"))).await;
        let resource = format!("Calls/{}.json", call["sid"].as_str().unwrap());
        while next_hook(&mut hooks).await.0 != "ringing#1" {} // delivered right after in-progress#2
        let (status, body) = rest(&sim, &resource, OURS, &[("Status", "completed")]).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("completed")));
        assert!(body["duration"].is_string() && body["end_time"].is_string());
        let (name, params) = next_hook(&mut hooks).await;
        assert_eq!(name, "completed#3");
        assert!(field(&params, "CallDuration").is_some());
        assert_eq!(rest(&sim, &resource, OURS, &[("Status", "completed")]).await.0, 404);
        let log: Vec<_> = std::iter::from_fn(|| sim.try_next_request()).collect();
        assert_eq!(
            log.iter().filter(|r| matches!(r, SimRequest::Hangup { status, .. } if status == "completed")).count(),
            1
        );
        assert!(matches!(log.last(), Some(SimRequest::Rejected { status: 404, .. })));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn rejects_like_twilio() {
        let sim = simulator(None).await;
        let form = call_form("+14155550100", "http://127.0.0.1:9/status");
        let (status, body) = rest(&sim, "Calls.json", (ACCOUNT, "wrong"), &form).await;
        assert_eq!((status, body["code"].as_u64(), body["message"].as_str()), (401, Some(20003), Some("Authenticate")));
        let from = ("From", "+15005550006");
        let cases = [
            (vec![from, ("Url", "https://x/")], 400, 21201),
            (vec![("To", "415-555-0100"), from, ("Url", "https://x/")], 400, 21211),
            (vec![("To", "+14155550100"), from], 400, 21205),
            (vec![("Status", "completed")], 404, 20404),
        ];
        for (form, status, code) in cases {
            let resource = if status == 404 { "Calls/CA00000000000000000000000000000000.json" } else { "Calls.json" };
            let (got, body) = rest(&sim, resource, OURS, &form).await;
            assert_eq!(
                (got, body["code"].as_u64(), body["status"].as_u64()),
                (status, Some(code), Some(status.into()))
            );
            assert!(body["more_info"].as_str().unwrap().ends_with(&code.to_string()));
        }
        for expected in [401, 400, 400, 400, 404] {
            assert!(matches!(next_request(&sim).await, SimRequest::Rejected { status, .. } if status == expected));
        }
        // Right credentials, someone else's account in the path.
        let other = format!("{}/2010-04-01/Accounts/ACother/Calls.json", sim.base_url());
        let response = reqwest::Client::new().post(other).basic_auth(ACCOUNT, Some(TOKEN)).form(&form).send().await;
        assert_eq!(response.unwrap().status(), 401);
        // A callback URL nobody listens on is recorded as http_status 0, not lost.
        rest(&sim, "Calls.json", OURS, &form).await;
        loop {
            match next_request(&sim).await {
                SimRequest::CallbackResult { http_status, .. } => break assert_eq!(http_status, 0),
                SimRequest::Rejected { status: 401, .. } | SimRequest::CreateCall { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        sim.shutdown().await;
    }
}
