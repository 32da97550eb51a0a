//! The simulator's media leg: the callee's phone, speaking Twilio Media Streams to our server.
//!
//! When an answered call's TwiML is `<Connect><Stream url=…>`, Twilio opens a WebSocket to that URL
//! (signed like a webhook, over the URL alone), streams the callee's audio in 20 ms µ-law frames, and plays
//! whatever the server sends back, echoing each `mark` once the audio before it has played. This module
//! does the same, so the real bridge is exercised end to end without a phone: the callee "speaks"
//! [`speech::speak`] audio, which carries its own words, follows a short script chosen by the `To` number
//! (the table in the parent module), and reports what it heard played, and how much of it after a `clear`.
//!
//! [`Phone`] is the whole callee with no I/O and no clock: it advances one 20 ms tick at a time, so the
//! script and the playback arithmetic are testable on their own. [`play`] wraps it in the socket and a
//! timer, inside the call's own (tracked) task.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Shared, SimRequest, Stop};
use crate::carrier::signature;
use crate::carrier::stream::{self, Inbound, Outbound};
use crate::sandbox::speech::{self, FRAME, SILENCE};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One µ-law frame's worth of time: Twilio's pace in both directions.
const FRAME_TIME: Duration = Duration::from_millis(20);
const FRAME_MS: u64 = 20;
/// Bytes of µ-law per ms at 8 kHz.
const BYTES_PER_MS: u64 = 8;
/// The callee pauses at least this long after each utterance, so the server's VAD hears its end.
const AFTER_SPEECH_MS: u32 = 600;
/// A waiting step gives up after 30 s of ticks and the script moves on, so no call hangs on a silent AI.
const STEP_TIMEOUT_TICKS: u64 = 30_000 / FRAME_MS;
/// Played audio that stops for less than this is a hiccup (the server's sends running a little behind
/// playback), not the end of the utterance; while it lasts, marks that fall in it are held back so the
/// utterance is recorded as played before the server learns so from its mark.
const END_OF_UTTERANCE_TICKS: u32 = 4;
/// The longest utterance header [`speech::words`] may need: 4 bytes and a u16 length of text.
const HEADER_MAX: usize = 4 + u16::MAX as usize;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Small socket buffers, as on the server (PERFORMANCE.md): tungstenite's 128 KiB default is zero-filled
/// on every read.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;
/// Twilio's messages are small; this only stops a runaway peer.
const MAX_MESSAGE: usize = 1024 * 1024;

/// What the callee does, in order; after the last step it stays silent until the call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Wait until an AI utterance that began after the callee last spoke has played to its end.
    Hear,
    /// Wait until the AI utterance playing now has played `ms` of audio with more of it still queued.
    Interrupt { ms: u64 },
    /// Say the words, then at least [`AFTER_SPEECH_MS`] of silence.
    Say(&'static str),
    /// Silence.
    Pause { ms: u32 },
    /// Press a key: a `dtmf` message.
    Press(&'static str),
}

const ANSWER: &str = "Hi, yes, we are open on Sunday.";
const GOODBYE: &str = "Okay, goodbye.";

/// The callee's script for a `To` number (the table in the parent module).
fn script(to: &str) -> &'static [Step] {
    use Step::{Hear, Interrupt, Pause, Press, Say};
    match to.get(to.len().saturating_sub(4)..) {
        Some("0004") => &[Interrupt { ms: 600 }, Say("Sorry to interrupt, who is this?"), Hear, Say(GOODBYE)],
        Some("0005") => &[Hear, Say("error please"), Pause { ms: 1000 }, Say(GOODBYE)],
        Some("0006") => &[Hear, Say("drop please"), Hear, Say(GOODBYE)],
        Some("0007") => &[],
        Some("0008") => &[Hear, Press("1"), Say(ANSWER), Hear, Say(GOODBYE)],
        _ => &[Hear, Say(ANSWER), Hear, Say(GOODBYE)],
    }
}

/// Whether a number that answers opens its media stream (`0009` answers and never streams, so a test can
/// play Twilio's side itself).
pub(super) fn streams(to: &str) -> bool {
    !to.ends_with("0009")
}

/// Runs an answered call's media leg until `talk` resolves (hang-up, shutdown, redirect, the callee's own
/// time), then ends the stream as Twilio does and returns what `talk` said.
///
/// A TwiML without `<Connect><Stream>` just waits for `talk`. A stream that cannot be opened is recorded
/// and the call ends at once (`Ok`): Twilio moves on to the next verb, and there is none.
pub(super) async fn play(
    sim: &Shared,
    call_sid: &str,
    to: &str,
    twiml: &str,
    talk: impl Future<Output = Result<(), Stop>>,
) -> Result<(), Stop> {
    let mut talk = pin!(talk);
    let Some(mut target) = StreamTarget::parse(twiml) else { return talk.await };
    if let Some((url, _query)) = target.url.split_once('?') {
        // Twilio drops the query string (or fails with 31920): a server relying on it is broken.
        let reason = "31920 the stream URL carries a query string, which Twilio drops".to_owned();
        sim.record(SimRequest::StreamViolation { call_sid: call_sid.to_owned(), reason });
        target.url = url.to_owned();
    }
    let socket = tokio::select! {
        end = talk.as_mut() => return end,
        opened = connect(&sim.config.auth_token, &target.url) => match opened {
            Ok(socket) => socket,
            Err(http_status) => {
                sim.record(SimRequest::MediaRefused { call_sid: call_sid.to_owned(), http_status });
                return Ok(());
            }
        },
    };
    let phone = Phone::new(call_sid, sim.config.ms_per_char, script(to));
    let leg = Leg {
        sim,
        call_sid,
        stream_sid: super::new_sid("MZ"),
        socket,
        sequence: 0,
        chunk: 0,
        started: Instant::now(),
        phone,
        payload: String::with_capacity(FRAME.div_ceil(3) * 4),
        audio: Vec::with_capacity(FRAME),
    };
    leg.run(target.parameters, talk).await
}

/// Opens the WebSocket as Twilio does: `X-Twilio-Signature` over the URL alone. `Err` is the HTTP status
/// that refused the upgrade, or 0 when no answer came (unreachable, timed out, not a URL).
async fn connect(auth_token: &str, url: &str) -> Result<Socket, u16> {
    let mut request = url.into_client_request().map_err(|error| {
        tracing::warn!(%error, url, "twilio simulator: stream URL is not a WebSocket URL");
        0_u16
    })?;
    // Base64 is always a valid header value.
    let signature = HeaderValue::from_str(&signature::compute(auth_token, url, &[])).map_err(|_| 0_u16)?;
    request.headers_mut().insert("x-twilio-signature", signature);
    request.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static("Twilio.TmeWs/1.0"));
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response))) => Err(response.status().as_u16()),
        Ok(Err(error)) => {
            tracing::warn!(%error, url, "twilio simulator: media stream connection failed");
            Err(0)
        }
        Err(_) => Err(0),
    }
}

/// `<Connect><Stream url="…"><Parameter name="…" value="…"/>…</Stream></Connect>`, read from the TwiML.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamTarget {
    url: String,
    parameters: Vec<(String, String)>,
}

impl StreamTarget {
    /// Plain string search: the simulator reads the TwiML our own builder writes, not arbitrary XML.
    fn parse(twiml: &str) -> Option<Self> {
        let open = twiml.find("<Stream")?;
        let rest = &twiml[open + "<Stream".len()..];
        let tag_end = rest.find('>')?;
        let tag = &rest[..tag_end];
        let url = attribute(tag, "url")?;
        let body = if tag.ends_with('/') {
            ""
        } else {
            let body = &rest[tag_end + 1..];
            &body[..body.find("</Stream>").unwrap_or(body.len())]
        };
        let mut parameters = Vec::new();
        let mut rest = body;
        while let Some(at) = rest.find("<Parameter") {
            let tail = &rest[at..];
            let end = tail.find('>').unwrap_or(tail.len());
            if let (Some(name), Some(value)) = (attribute(&tail[..end], "name"), attribute(&tail[..end], "value")) {
                parameters.push((name, value));
            }
            rest = &tail[end..];
        }
        Some(Self { url, parameters })
    }
}

/// The unescaped value of ` name="…"` (or `'…'`) inside a tag.
fn attribute(tag: &str, name: &str) -> Option<String> {
    tag.match_indices(name).find_map(|(at, _)| {
        // Preceded by whitespace, so `name` does not match the end of another attribute's name.
        if !tag[..at].ends_with(|c: char| c.is_ascii_whitespace()) {
            return None;
        }
        let after = tag[at + name.len()..].trim_start().strip_prefix('=')?.trim_start();
        let quote = after.chars().next().filter(|c| matches!(c, '"' | '\''))?;
        let value = &after[1..];
        Some(unescape(&value[..value.find(quote)?]))
    })
}

fn unescape(s: &str) -> String {
    // `&amp;` last, so `&amp;lt;` becomes the text `&lt;` and not `<`.
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// One open stream: the socket, Twilio's counters, and the callee.
#[derive(Debug)]
struct Leg<'a> {
    sim: &'a Shared,
    call_sid: &'a str,
    stream_sid: String,
    socket: Socket,
    /// Twilio numbers every message after `connected`, whatever its event, from 1.
    sequence: u64,
    /// `media` chunks sent, from 1.
    chunk: u64,
    /// When `start` was sent: `timestamp` counts ms from here.
    started: Instant,
    phone: Phone,
    /// Reused per frame: the outgoing base64 and the incoming decoded audio.
    payload: String,
    audio: Vec<u8>,
}

impl Leg<'_> {
    async fn run<F>(mut self, parameters: Vec<(String, String)>, mut talk: Pin<&mut F>) -> Result<(), Stop>
    where
        F: Future<Output = Result<(), Stop>>,
    {
        let open = match self.open(parameters).await {
            Ok(()) => self.stream(talk.as_mut()).await,
            Err(_) => None,
        };
        match open {
            Some(end) => {
                self.hang_up().await;
                end
            }
            None => {
                // The server hung up the stream; the phone keeps the line until the call itself ends.
                let (call_sid, by) = (self.call_sid.to_owned(), "server");
                self.sim.record(SimRequest::MediaClosed { call_sid, by });
                talk.await
            }
        }
    }

    /// `connected`, then `start` with the TwiML's parameters.
    async fn open(&mut self, parameters: Vec<(String, String)>) -> Result<(), tungstenite::Error> {
        let connected = Inbound::Connected { protocol: "Call".into(), version: "1.0.0".into() };
        self.send(&connected).await?;
        let start = stream::Start {
            account_sid: self.sim.config.account_sid.clone(),
            stream_sid: self.stream_sid.clone(),
            call_sid: self.call_sid.to_owned(),
            tracks: vec!["inbound".to_owned()],
            custom_parameters: parameters.into_iter().collect::<HashMap<_, _>>(),
            media_format: Some(stream::MediaFormat {
                encoding: "audio/x-mulaw".to_owned(),
                sample_rate: 8000,
                channels: 1,
            }),
        };
        let sequence_number = self.next_sequence();
        let stream_sid = Cow::Owned(self.stream_sid.clone());
        self.send(&Inbound::Start { sequence_number, stream_sid, start }).await?;
        self.started = Instant::now();
        let (call_sid, stream_sid) = (self.call_sid.to_owned(), self.stream_sid.clone());
        self.sim.record(SimRequest::MediaStarted { call_sid, stream_sid });
        Ok(())
    }

    /// The stream's life: every 20 ms a frame played and a frame sent, the server's messages as they come.
    /// `Some` when the call ended (`talk` resolved), `None` when the server closed the socket or it broke.
    async fn stream<F>(&mut self, mut talk: Pin<&mut F>) -> Option<Result<(), Stop>>
    where
        F: Future<Output = Result<(), Stop>>,
    {
        let mut ticks = tokio::time::interval(FRAME_TIME);
        // Late ticks are taken late and the pace resumes from there: frames stay ~20 ms apart and never
        // arrive in a catch-up burst (which would read as a jittery line to the server).
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                end = talk.as_mut() => return Some(end),
                _ = ticks.tick() => {
                    if let Err(error) = self.tick().await {
                        tracing::debug!(%error, "twilio simulator: media send failed");
                        return None;
                    }
                }
                message = self.socket.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(error) = self.receive(text.as_str()).await {
                            tracing::debug!(%error, "twilio simulator: mark echo failed");
                            return None;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        self.violation("31924 a binary frame: Media Streams messages are JSON text".to_owned());
                    }
                    Some(Ok(Message::Close(_))) | None => return None,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "twilio simulator: media stream broke");
                        return None;
                    }
                    // Pings are answered by tungstenite itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                },
            }
        }
    }

    /// One 20 ms step: what played (marks reached), the callee's next move, and its frame of audio.
    async fn tick(&mut self) -> Result<(), tungstenite::Error> {
        let tick = self.phone.tick();
        for record in tick.records {
            self.sim.record(record);
        }
        for name in tick.marks {
            self.send_mark(name).await?;
        }
        if let Some(digit) = tick.dtmf {
            let sequence_number = self.next_sequence();
            let dtmf = stream::Dtmf { track: "inbound_track".to_owned(), digit: digit.to_owned() };
            let stream_sid = Cow::Owned(self.stream_sid.clone());
            self.send(&Inbound::Dtmf { sequence_number, stream_sid, dtmf }).await?;
        }
        self.payload.clear();
        STANDARD.encode_string(tick.frame, &mut self.payload);
        self.chunk += 1;
        let sequence_number = self.next_sequence();
        let text = json(&Inbound::Media {
            sequence_number,
            stream_sid: Cow::Borrowed(&self.stream_sid),
            media: stream::Media {
                track: "inbound".into(),
                chunk: self.chunk.to_string().into(),
                timestamp: self.started.elapsed().as_millis().to_string().into(),
                payload: Cow::Borrowed(&self.payload),
            },
        });
        self.socket.send(Message::text(text)).await
    }

    /// One message from the server. Only the socket failing is an error; a message Twilio would reject is
    /// recorded and the stream goes on, as Twilio's does (it warns, and ignores the message).
    async fn receive(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        let message = match serde_json::from_str::<Outbound<'_>>(text) {
            Ok(message) => message,
            Err(error) => {
                self.violation(format!("31951 not a media, mark or clear message ({error}): {}", excerpt(text)));
                return Ok(());
            }
        };
        let (Outbound::Media { stream_sid, .. } | Outbound::Mark { stream_sid, .. } | Outbound::Clear { stream_sid }) =
            &message;
        if *stream_sid != self.stream_sid {
            self.violation(format!("31951 streamSid `{}` is not this stream's", excerpt(stream_sid)));
            return Ok(());
        }
        match message {
            Outbound::Media { media, .. } => {
                self.audio.clear();
                match STANDARD.decode_vec(media.payload.as_bytes(), &mut self.audio) {
                    Ok(()) => self.phone.queue_audio(&self.audio),
                    Err(error) => self.violation(format!("31951 media payload is not base64: {error}")),
                }
            }
            Outbound::Mark { mark, .. } => self.phone.queue_mark(mark.name),
            Outbound::Clear { .. } => {
                let cleared = self.phone.clear();
                for record in cleared.records {
                    self.sim.record(record);
                }
                for name in cleared.marks {
                    self.send_mark(name).await?;
                }
            }
        }
        Ok(())
    }

    /// The end of the call: `stop`, then the closing handshake.
    async fn hang_up(mut self) {
        if let Some(record) = self.phone.interrupted() {
            self.sim.record(record);
        }
        let sequence_number = self.next_sequence();
        let stop =
            stream::Stop { account_sid: self.sim.config.account_sid.clone(), call_sid: self.call_sid.to_owned() };
        let stream_sid = Cow::Owned(self.stream_sid.clone());
        let message = Inbound::Stop { sequence_number, stream_sid, stop: Some(stop) };
        let closing = async {
            self.send(&message).await?;
            self.socket.close(None).await?;
            // Read until the server's Close answers ours, so the handshake completes cleanly.
            while let Some(Ok(_)) = self.socket.next().await {}
            Ok::<(), tungstenite::Error>(())
        };
        if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            tracing::debug!(%error, "twilio simulator: closing the media stream failed");
        }
        self.sim.record(SimRequest::MediaClosed { call_sid: self.call_sid.to_owned(), by: "twilio" });
    }

    async fn send_mark(&mut self, name: String) -> Result<(), tungstenite::Error> {
        let sequence_number = self.next_sequence();
        let stream_sid = Cow::Owned(self.stream_sid.clone());
        self.send(&Inbound::Mark { sequence_number, stream_sid, mark: stream::MarkName { name } }).await
    }

    async fn send(&mut self, message: &Inbound<'_>) -> Result<(), tungstenite::Error> {
        let text = json(message);
        self.socket.send(Message::text(text)).await
    }

    fn next_sequence(&mut self) -> Cow<'static, str> {
        self.sequence += 1;
        Cow::Owned(self.sequence.to_string())
    }

    fn violation(&self, reason: String) {
        tracing::debug!(reason, "twilio simulator: the server broke the Media Streams protocol");
        self.sim.record(SimRequest::StreamViolation { call_sid: self.call_sid.to_owned(), reason });
    }
}

/// Twilio's message as JSON, `event` first (serde writes an internally tagged enum's tag first).
fn json(message: &Inbound<'_>) -> String {
    // Strings, numbers and string maps: serializing cannot fail.
    serde_json::to_string(message).unwrap_or_default()
}

/// The start of a peer's text, for a log line that cannot grow without bound.
fn excerpt(text: &str) -> &str {
    let end = text.char_indices().nth(120).map_or(text.len(), |(at, _)| at);
    &text[..end]
}

/// The callee, one 20 ms tick at a time: what it hears played and what it says. No I/O, no clock.
#[derive(Debug)]
struct Phone {
    call_sid: String,
    ms_per_char: u32,
    /// Ticks since the stream started.
    ticks: u64,
    /// Audio the server sent, not yet played.
    playback: VecDeque<u8>,
    /// Bytes ever queued and ever played: marks sit at positions on this scale.
    queued: u64,
    played: u64,
    marks: VecDeque<(u64, String)>,
    /// The AI utterance being played, if any.
    hearing: Option<Hearing>,
    /// The tick at which the latest AI utterance that played to its end began.
    last_heard: Option<u64>,
    script: std::slice::Iter<'static, Step>,
    /// The step under way and the tick it began.
    step: Option<(Step, u64)>,
    /// What the callee is saying, not yet sent.
    mouth: VecDeque<u8>,
    /// The tick at which the callee last began to speak: `Hear` waits for an utterance after it.
    spoke_at: u64,
}

#[derive(Debug)]
struct Hearing {
    began: u64,
    text: Option<String>,
    /// Bytes of it played so far.
    bytes: u64,
    /// Ticks since its sound stopped; 0 while it plays.
    quiet: u32,
}

/// What one tick produced, for the socket.
#[derive(Debug)]
struct Tick {
    frame: [u8; FRAME],
    marks: Vec<String>,
    dtmf: Option<&'static str>,
    records: Vec<SimRequest>,
}

/// What a `clear` produced.
#[derive(Debug)]
struct Cleared {
    marks: Vec<String>,
    records: Vec<SimRequest>,
}

impl Phone {
    fn new(call_sid: &str, ms_per_char: u32, script: &'static [Step]) -> Self {
        Self {
            call_sid: call_sid.to_owned(),
            ms_per_char,
            ticks: 0,
            playback: VecDeque::new(),
            queued: 0,
            played: 0,
            marks: VecDeque::new(),
            hearing: None,
            last_heard: None,
            script: script.iter(),
            step: None,
            mouth: VecDeque::new(),
            spoke_at: 0,
        }
    }

    fn queue_audio(&mut self, audio: &[u8]) {
        self.playback.extend(audio);
        self.queued += audio.len() as u64;
    }

    /// A mark sits at the current end of the queue: it is reached once everything before it has played.
    fn queue_mark(&mut self, name: String) {
        self.marks.push_back((self.queued, name));
    }

    fn tick(&mut self) -> Tick {
        self.ticks += 1;
        let mut out = Tick { frame: [SILENCE; FRAME], marks: Vec::new(), dtmf: None, records: Vec::new() };
        self.play(&mut out.records);
        // While sound has paused without (yet) ending its utterance, marks wait: the server must not hear
        // "played" before the utterance is recorded as played.
        if self.hearing.as_ref().is_none_or(|h| h.quiet == 0) {
            while self.marks.front().is_some_and(|(at, _)| *at <= self.played) {
                out.marks.extend(self.marks.pop_front().map(|(_, name)| name));
            }
        }
        self.follow_script(&mut out);
        let n = self.mouth.len().min(FRAME);
        for (slot, byte) in out.frame.iter_mut().zip(self.mouth.drain(..n)) {
            *slot = byte;
        }
        out
    }

    /// Plays the next 20 ms of the queue and follows the AI's utterances through it.
    fn play(&mut self, records: &mut Vec<SimRequest>) {
        let mut frame = [SILENCE; FRAME];
        let n = self.playback.len().min(FRAME);
        for (slot, byte) in frame.iter_mut().zip(self.playback.drain(..n)) {
            *slot = byte;
        }
        self.played += n as u64;
        let frame = &frame[..n];
        let sound = frame.iter().position(|&b| b != SILENCE).zip(frame.iter().rposition(|&b| b != SILENCE));
        if let Some((first, last)) = sound {
            // Sound that stops inside this frame, or with nothing left to play, may be the end.
            let stopped = u32::from(last + 1 < n || self.playback.is_empty());
            match &mut self.hearing {
                Some(hearing) => {
                    hearing.bytes += (last + 1) as u64;
                    hearing.quiet = stopped;
                }
                None => {
                    let text = speech::words(&frame[first..]).or_else(|| {
                        // The words are at the utterance's start; a long header runs on into the queue.
                        let mut head = frame[first..].to_vec();
                        head.extend(self.playback.iter().take(HEADER_MAX));
                        speech::words(&head)
                    });
                    let bytes = (last + 1 - first) as u64;
                    self.hearing = Some(Hearing { began: self.ticks, text, bytes, quiet: stopped });
                }
            }
        } else if let Some(hearing) = &mut self.hearing {
            hearing.quiet += 1;
        }
        if self.hearing.as_ref().is_some_and(|h| h.quiet >= END_OF_UTTERANCE_TICKS) {
            records.extend(self.finish_hearing(false));
        }
    }

    fn finish_hearing(&mut self, cleared: bool) -> Option<SimRequest> {
        let hearing = self.hearing.take()?;
        if !cleared {
            self.last_heard = Some(hearing.began);
        }
        Some(SimRequest::Played {
            call_sid: self.call_sid.clone(),
            text: hearing.text,
            played_ms: hearing.bytes / BYTES_PER_MS,
            cleared,
        })
    }

    /// Twilio's `clear`: the queue is dropped and every pending mark is echoed at once.
    fn clear(&mut self) -> Cleared {
        let mut records = vec![SimRequest::Cleared { call_sid: self.call_sid.clone() }];
        let dropped_speech = speech::is_speech(self.playback.make_contiguous());
        if self.hearing.is_some() {
            // An utterance whose sound had already stopped played in full; otherwise the clear cut it.
            records.extend(self.finish_hearing(dropped_speech));
        } else if dropped_speech {
            let text = speech::words(self.playback.make_contiguous());
            records.push(SimRequest::Played { call_sid: self.call_sid.clone(), text, played_ms: 0, cleared: true });
        }
        self.playback.clear();
        self.queued = self.played;
        Cleared { marks: self.marks.drain(..).map(|(_, name)| name).collect(), records }
    }

    /// The stream ends mid-utterance: what had played of it.
    fn interrupted(&mut self) -> Option<SimRequest> {
        self.finish_hearing(false)
    }

    /// Moves through the script as far as this tick allows.
    fn follow_script(&mut self, out: &mut Tick) {
        loop {
            let (step, since) = match self.step {
                Some(current) => current,
                None => {
                    let Some(&step) = self.script.next() else { return };
                    self.begin(step, out);
                    self.step = Some((step, self.ticks));
                    (step, self.ticks)
                }
            };
            let timed_out = self.ticks - since >= STEP_TIMEOUT_TICKS;
            let done = match step {
                Step::Hear => self.last_heard.is_some_and(|began| began > self.spoke_at),
                Step::Interrupt { ms } => self.hearing.as_ref().is_some_and(|h| {
                    h.quiet == 0 && h.bytes >= ms * BYTES_PER_MS && self.playback.front().is_some_and(|&b| b != SILENCE)
                }),
                Step::Say(_) | Step::Pause { .. } => self.mouth.is_empty(),
                Step::Press(_) => true,
            };
            if !done && timed_out {
                tracing::info!(call_sid = self.call_sid, ?step, "twilio simulator: callee gave up waiting");
            }
            if !(done || timed_out) {
                return;
            }
            self.step = None;
        }
    }

    fn begin(&mut self, step: Step, out: &mut Tick) {
        match step {
            Step::Say(text) => {
                self.mouth.extend(speech::speak(text, self.ms_per_char));
                self.mouth.extend(speech::silence(AFTER_SPEECH_MS));
                self.spoke_at = self.ticks;
                out.records.push(SimRequest::CalleeSaid { call_sid: self.call_sid.clone(), text: text.to_owned() });
            }
            Step::Pause { ms } => self.mouth.extend(speech::silence(ms)),
            Step::Press(digit) => out.dtmf = Some(digit),
            Step::Hear | Step::Interrupt { .. } => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{SimulatorConfig, TwilioSimulator};
    use super::*;
    use axum::Router;
    use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    const ACCOUNT: &str = "AC00000000000000000000000000000002";
    const TOKEN: &str = "media-token";
    const WAIT: Duration = Duration::from_secs(5);

    // ---- the callee alone: no sockets, no clock ----

    fn phone(to: &str) -> Phone {
        Phone::new("CA1", 8, script(to))
    }

    fn ticks(phone: &mut Phone, n: usize) -> Vec<Tick> {
        (0..n).map(|_| phone.tick()).collect()
    }

    /// Ticks until `stop` holds for a tick (at most `max` ticks); every tick's output, that one last.
    fn until(phone: &mut Phone, max: usize, stop: impl Fn(&Tick) -> bool) -> Vec<Tick> {
        let mut out = Vec::new();
        for _ in 0..max {
            let tick = phone.tick();
            let done = stop(&tick);
            out.push(tick);
            if done {
                return out;
            }
        }
        panic!("not within {max} ticks");
    }

    fn said(tick: &Tick) -> Option<&str> {
        tick.records.iter().find_map(|r| match r {
            SimRequest::CalleeSaid { text, .. } => Some(text.as_str()),
            _ => None,
        })
    }

    fn played(records: &[SimRequest]) -> Vec<(Option<&str>, u64, bool)> {
        records
            .iter()
            .filter_map(|r| match r {
                SimRequest::Played { text, played_ms, cleared, .. } => Some((text.as_deref(), *played_ms, *cleared)),
                _ => None,
            })
            .collect()
    }

    fn quiet(ticks: &[Tick]) -> bool {
        ticks.iter().all(|t| !speech::is_speech(&t.frame) && t.marks.is_empty() && t.records.is_empty())
    }

    /// What the callee says from this tick on, until its sound stops.
    fn utterance(phone: &mut Phone, first: &Tick) -> Option<String> {
        let mut audio = first.frame.to_vec();
        audio.extend(until(phone, 500, |t| !speech::is_speech(&t.frame)).iter().flat_map(|t| t.frame));
        speech::words(&audio)
    }

    #[test]
    fn the_callee_answers_once_the_ai_has_played_and_a_mark_waits_for_its_audio() {
        let mut phone = phone("+14155550123");
        assert!(quiet(&ticks(&mut phone, 50)), "nothing is said before the AI has spoken");
        phone.queue_audio(&speech::speak("Hello", 8)); // 40 ms: two frames
        phone.queue_mark("m1".into());
        let out = until(&mut phone, 20, |t| !t.marks.is_empty());
        // Two frames play; the mark then waits out the pause that tells a hiccup from the end.
        assert_eq!(out.len(), 2 + END_OF_UTTERANCE_TICKS as usize - 1);
        let last = out.last().unwrap();
        assert_eq!(last.marks, ["m1"]);
        // Recorded before the mark goes back, so the server cannot act on "played" first.
        assert_eq!(played(&last.records), [(Some("Hello"), 40, false)]);
        assert_eq!(said(last), Some(ANSWER));
        assert_eq!(utterance(&mut phone, last).as_deref(), Some(ANSWER));
        // An AI utterance that started before the callee spoke does not count as the reply.
        assert!(quiet(&ticks(&mut phone, 100)));
        phone.queue_audio(&speech::speak("Thanks", 8));
        let out = until(&mut phone, 20, |t| said(t).is_some());
        assert_eq!(said(out.last().unwrap()), Some(GOODBYE));
        until(&mut phone, 500, |t| !speech::is_speech(&t.frame));
        assert!(quiet(&ticks(&mut phone, 200)), "silence once the script is done");
    }

    #[test]
    fn a_short_gap_in_the_ai_audio_is_not_the_end_of_its_utterance() {
        let mut phone = phone("+14155550123");
        let audio = speech::speak("Hello there, how are you", 8); // 192 ms, so 10 frames
        phone.queue_audio(&audio[..FRAME * 3]);
        ticks(&mut phone, 3 + END_OF_UTTERANCE_TICKS as usize - 2);
        phone.queue_audio(&audio[FRAME * 3..]);
        let out = until(&mut phone, 40, |t| !t.records.is_empty());
        assert_eq!(played(&out.last().unwrap().records), [(Some("Hello there, how are you"), 200, false)]);
    }

    #[test]
    fn barge_in_after_600_ms_of_played_audio_then_clear_cuts_the_utterance() {
        let mut phone = phone("+14155550004");
        phone.queue_audio(&speech::speak(&"x".repeat(150), 8)); // 1.2 s
        phone.queue_mark("a".into());
        let out = until(&mut phone, 100, |t| said(t).is_some());
        assert_eq!(out.len(), 600 / 20, "600 ms of it played");
        assert_eq!(said(out.last().unwrap()), Some("Sorry to interrupt, who is this?"));
        ticks(&mut phone, 5);
        // The server clears: the mark comes back at once, and the utterance is recorded as cut.
        let cleared = phone.clear();
        assert_eq!(cleared.marks, ["a"]);
        assert!(matches!(cleared.records[0], SimRequest::Cleared { .. }));
        assert_eq!(played(&cleared.records), [(Some("x".repeat(150).as_str()), 700, true)]);
        // The cut utterance is not the reply it waits for; the next one, played in full, is.
        let rest = until(&mut phone, 500, |t| !speech::is_speech(&t.frame));
        assert!(rest.iter().all(|t| t.marks.is_empty()));
        phone.queue_audio(&speech::speak("This is Ava.", 8));
        let out = until(&mut phone, 100, |t| said(t).is_some());
        assert_eq!(said(out.last().unwrap()), Some(GOODBYE));
    }

    #[test]
    fn keypad_error_and_silent_scripts() {
        let mut keypad = phone("+14155550008");
        keypad.queue_audio(&speech::speak("Hi", 8));
        let out = until(&mut keypad, 20, |t| t.dtmf.is_some());
        let last = out.last().unwrap();
        assert_eq!((last.dtmf, said(last)), (Some("1"), Some(ANSWER)), "the key, then the default answer");

        let mut error = phone("+14155550005");
        error.queue_audio(&speech::speak("Hi", 8));
        let out = until(&mut error, 20, |t| said(t).is_some());
        assert_eq!(said(out.last().unwrap()), Some("error please"));
        // "error please" (96 ms, so 5 frames), 600 ms and then 1 s of silence, and the goodbye with no AI
        // turn between.
        let out = until(&mut error, 200, |t| said(t).is_some());
        assert_eq!(out.len(), (100 + 600 + 1000) / 20);
        assert_eq!(said(out.last().unwrap()), Some(GOODBYE));

        let mut silent = phone("+14155550007");
        silent.queue_audio(&speech::speak("Hello?", 8));
        let out = ticks(&mut silent, 100);
        assert!(out.iter().all(|t| !speech::is_speech(&t.frame) && said(t).is_none()));
    }

    #[test]
    fn a_waiting_step_gives_up_after_30_seconds() {
        let mut phone = phone("+14155550123");
        let out = until(&mut phone, 2000, |t| said(t).is_some());
        assert_eq!(out.len() as u64, STEP_TIMEOUT_TICKS + 1);
    }

    #[test]
    fn reads_the_stream_and_its_parameters_from_twiml() {
        let twiml =
            crate::carrier::twiml::connect_stream("wss://h.example/twilio/media", &[("callToken", "a&b\"<c>'")]);
        let target = StreamTarget::parse(&twiml).unwrap();
        assert_eq!(target.url, "wss://h.example/twilio/media");
        assert_eq!(target.parameters, [("callToken".to_owned(), "a&b\"<c>'".to_owned())]);
        let single = "<Response><Connect><Stream  track='inbound'\n url='wss://x/m?&amp;lt;'/></Connect></Response>";
        let target = StreamTarget::parse(single).unwrap();
        assert_eq!((target.url.as_str(), target.parameters.len()), ("wss://x/m?&lt;", 0));
        assert_eq!(StreamTarget::parse("<Response><Say>Hi</Say></Response>"), None);
        assert_eq!(StreamTarget::parse("<Response><Connect><Stream></Stream></Connect></Response>"), None);
        assert_eq!(StreamTarget::parse("<Stream curl=\"x\">"), None);
    }

    // ---- the callee on a real socket, against "our server" in miniature ----

    /// The server side in miniature: `/media` checks the handshake's signature (403 when wrong) and hands
    /// each accepted socket to the test; `/refuse` always answers 403; `/status` takes callbacks.
    struct Server {
        /// `ws://127.0.0.1:PORT`
        base: String,
        sockets: mpsc::UnboundedReceiver<WebSocket>,
    }

    async fn server() -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("ws://{}", listener.local_addr().unwrap());
        let (tx, sockets) = mpsc::unbounded_channel();
        let url = format!("{base}/media");
        let media = move |ws: WebSocketUpgrade, headers: HeaderMap| {
            let (tx, url) = (tx.clone(), url.clone());
            async move {
                let given = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
                if !signature::validate_url_only(TOKEN, &url, given) {
                    return StatusCode::FORBIDDEN.into_response();
                }
                ws.read_buffer_size(READ_BUFFER).on_upgrade(move |socket| async move {
                    let _ = tx.send(socket);
                })
            }
        };
        let app = Router::new()
            .route("/media", get(media))
            .route("/refuse", get(|| async { StatusCode::FORBIDDEN }))
            .route("/status", post(|| async { StatusCode::OK }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { base, sockets }
    }

    async fn simulator(auth_token: &str) -> TwilioSimulator {
        let config = SimulatorConfig {
            account_sid: ACCOUNT.into(),
            auth_token: auth_token.into(),
            step_delay: Duration::from_millis(5),
            talk_time: None,
            media: true,
            ms_per_char: 8,
            ..SimulatorConfig::default()
        };
        TwilioSimulator::start(config).await.unwrap()
    }

    /// Places a call whose TwiML streams to `stream_url`; its sid.
    async fn place(sim: &TwilioSimulator, to: &str, stream_url: &str, status_url: &str) -> String {
        place_as(sim, TOKEN, to, stream_url, status_url).await
    }

    async fn place_as(sim: &TwilioSimulator, token: &str, to: &str, stream_url: &str, status_url: &str) -> String {
        let twiml = crate::carrier::twiml::connect_stream(stream_url, &[("callToken", "tok&1"), ("callId", "c-1")]);
        let form = [("To", to), ("From", "+15005550006"), ("Twiml", &twiml), ("StatusCallback", status_url)];
        let url = format!("{}/2010-04-01/Accounts/{ACCOUNT}/Calls.json", sim.base_url());
        let response = reqwest::Client::new().post(url).basic_auth(ACCOUNT, Some(token)).form(&form).send().await;
        let call: Value = response.unwrap().json().await.unwrap();
        call["sid"].as_str().unwrap().to_owned()
    }

    async fn hang_up(sim: &TwilioSimulator, sid: &str) -> u16 {
        let url = format!("{}/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json", sim.base_url());
        let request = reqwest::Client::new().post(url).basic_auth(ACCOUNT, Some(TOKEN));
        request.form(&[("Status", "completed")]).send().await.unwrap().status().as_u16()
    }

    async fn sim_until<T>(sim: &TwilioSimulator, mut pick: impl FnMut(SimRequest) -> Option<T>) -> T {
        loop {
            let request = tokio::time::timeout(WAIT, sim.next_request()).await.unwrap().unwrap();
            if let Some(found) = pick(request) {
                return found;
            }
        }
    }

    /// The simulator's next message: its text and its JSON.
    async fn next(socket: &mut WebSocket) -> (String, Value) {
        loop {
            match tokio::time::timeout(WAIT, socket.recv()).await.unwrap().unwrap().unwrap() {
                WsMessage::Text(text) => return (text.to_string(), serde_json::from_str(text.as_str()).unwrap()),
                WsMessage::Close(_) => panic!("closed"),
                _ => {}
            }
        }
    }

    /// Answers a call to `to` and reads `connected` and `start`: the call's sid, the socket, `start`.
    async fn answered(server: &mut Server, sim: &TwilioSimulator, to: &str) -> (String, WebSocket, Value) {
        let (stream_url, status_url) = (format!("{}/media", server.base), server.base.replace("ws:", "http:"));
        let sid = place(sim, to, &stream_url, &format!("{status_url}/status")).await;
        let mut socket = tokio::time::timeout(WAIT, server.sockets.recv()).await.unwrap().unwrap();
        let (connected, _) = next(&mut socket).await;
        assert_eq!(connected, r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#);
        let (text, start) = next(&mut socket).await;
        assert!(text.starts_with(r#"{"event":"start","#), "{text}");
        (sid, socket, start)
    }

    fn audio(message: &Value) -> Vec<u8> {
        STANDARD.decode(message["media"]["payload"].as_str().unwrap()).unwrap()
    }

    /// Sends `audio` as 20 ms `media` messages, then a mark.
    async fn send_speech(socket: &mut WebSocket, stream_sid: &str, audio: &[u8], mark: &str) {
        for frame in audio.chunks(FRAME) {
            let mut text = String::new();
            stream::write_media(&mut text, stream_sid, &STANDARD.encode(frame));
            socket.send(WsMessage::text(text)).await.unwrap();
        }
        let mark = json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": mark}});
        socket.send(WsMessage::text(mark.to_string())).await.unwrap();
    }

    #[tokio::test]
    async fn the_stream_opens_signed_paces_its_frames_and_stops_on_hang_up() {
        let mut server = server().await;
        let sim = simulator(TOKEN).await;
        let (sid, mut socket, start) = answered(&mut server, &sim, "+14155550123").await;
        let stream_sid = start["streamSid"].as_str().unwrap().to_owned();
        assert!(stream_sid.starts_with("MZ") && stream_sid.len() == 34, "{stream_sid}");
        assert_eq!(start["sequenceNumber"], "1");
        let expected = json!({
            "accountSid": ACCOUNT, "streamSid": stream_sid, "callSid": sid, "tracks": ["inbound"],
            "customParameters": {"callToken": "tok&1", "callId": "c-1"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        });
        assert_eq!(start["start"], expected);

        let mut first_at = None;
        for n in 1..=11_u64 {
            let (text, media) = next(&mut socket).await;
            first_at.get_or_insert_with(Instant::now);
            assert!(text.starts_with(r#"{"event":"media","sequenceNumber":"#), "{text}");
            assert_eq!(media["sequenceNumber"], (n + 1).to_string());
            assert_eq!((&media["streamSid"], &media["media"]["track"]), (&json!(stream_sid), &json!("inbound")));
            assert_eq!(media["media"]["chunk"], n.to_string());
            assert!(media["media"]["timestamp"].as_str().unwrap().parse::<u64>().is_ok());
            assert_eq!(audio(&media), [SILENCE; FRAME], "the callee waits for the AI to speak first");
        }
        // Ten intervals of 20 ms, never a burst.
        assert!(first_at.unwrap().elapsed() >= Duration::from_millis(150), "{:?}", first_at.unwrap().elapsed());

        assert_eq!(hang_up(&sim, &sid).await, 200);
        let mut sequence = 12;
        let stop = loop {
            let (_, message) = next(&mut socket).await;
            sequence += 1;
            assert_eq!(message["sequenceNumber"], sequence.to_string(), "numbered on from the media: {message}");
            if message["event"] == "stop" {
                break message;
            }
        };
        assert_eq!(stop["stop"], json!({"accountSid": ACCOUNT, "callSid": sid}));
        assert_eq!(stop["streamSid"], json!(stream_sid));
        let closed = tokio::time::timeout(WAIT, socket.recv()).await.unwrap();
        assert!(matches!(closed, Some(Ok(WsMessage::Close(_))) | None), "{closed:?}");
        // The stream is recorded as closed by Twilio, and only then does the call complete.
        let mut seen = Vec::new();
        sim_until(&sim, |r| match r {
            SimRequest::MediaStarted { stream_sid: s, .. } => {
                assert_eq!(s, stream_sid);
                seen.push("started");
                None
            }
            SimRequest::MediaClosed { by, .. } => {
                seen.push(by);
                None
            }
            SimRequest::CallbackResult { status, .. } if status == "completed" => Some(()),
            _ => None,
        })
        .await;
        assert_eq!(seen, ["started", "twilio"]);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn the_callee_answers_after_the_ai_utterance_has_played_and_its_mark_comes_back() {
        let mut server = server().await;
        let sim = simulator(TOKEN).await;
        let (sid, mut socket, start) = answered(&mut server, &sim, "+14155550123").await;
        let stream_sid = start["streamSid"].as_str().unwrap().to_owned();
        for _ in 0..5 {
            assert_eq!(audio(&next(&mut socket).await.1), [SILENCE; FRAME]);
        }
        let hello = speech::speak("Hello", 8); // 40 ms
        let sent = Instant::now();
        send_speech(&mut socket, &stream_sid, &hello, "m1").await;
        loop {
            let (_, message) = next(&mut socket).await;
            if message["event"] == "mark" {
                assert_eq!((&message["mark"]["name"], &message["streamSid"]), (&json!("m1"), &json!(stream_sid)));
                break;
            }
            assert_eq!(audio(&message), [SILENCE; FRAME], "not a word before the AI's audio has played");
        }
        let echoed = sent.elapsed();
        // Two frames of playback (the first tick may come at once), then the end-of-utterance pause.
        assert!(echoed >= Duration::from_millis(20), "{echoed:?}");
        assert!(echoed < Duration::from_secs(1), "{echoed:?}");
        let mut said = Vec::new();
        while said.is_empty() || speech::is_speech(&said[said.len() - FRAME..]) {
            let frame = audio(&next(&mut socket).await.1);
            if !said.is_empty() || speech::is_speech(&frame) {
                said.extend(frame);
            }
        }
        assert_eq!(speech::words(&said).as_deref(), Some(ANSWER));
        let played = sim_until(&sim, |r| match r {
            SimRequest::Played { text, played_ms, cleared, .. } => Some((text, played_ms, cleared)),
            _ => None,
        })
        .await;
        assert_eq!(played, (Some("Hello".to_owned()), 40, false));
        let text = sim_until(&sim, |r| match r {
            SimRequest::CalleeSaid { call_sid, text } if call_sid == sid => Some(text),
            _ => None,
        })
        .await;
        assert_eq!(text, ANSWER);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn clear_echoes_pending_marks_at_once_and_cuts_the_utterance() {
        let mut server = server().await;
        let sim = simulator(TOKEN).await;
        let (_, mut socket, start) = answered(&mut server, &sim, "+14155550007").await;
        let stream_sid = start["streamSid"].as_str().unwrap().to_owned();
        let long = "This utterance is long enough to be cut off by a clear.";
        send_speech(&mut socket, &stream_sid, &speech::speak(long, 8), "end").await; // 440 ms
        for _ in 0..5 {
            next(&mut socket).await;
        }
        let clear = json!({"event": "clear", "streamSid": stream_sid}).to_string();
        socket.send(WsMessage::text(clear)).await.unwrap();
        let cleared_at = Instant::now();
        loop {
            let (_, message) = next(&mut socket).await;
            if message["event"] == "mark" {
                assert_eq!(message["mark"]["name"], "end");
                break;
            }
        }
        // At once, not when the 440 ms of audio would have finished.
        assert!(cleared_at.elapsed() < Duration::from_millis(300), "{:?}", cleared_at.elapsed());
        sim_until(&sim, |r| matches!(r, SimRequest::Cleared { .. }).then_some(())).await;
        let (text, played_ms, cleared) = sim_until(&sim, |r| match r {
            SimRequest::Played { text, played_ms, cleared, .. } => Some((text, played_ms, cleared)),
            _ => None,
        })
        .await;
        assert_eq!((text.as_deref(), cleared), (Some(long), true));
        assert!((60..440).contains(&played_ms), "{played_ms}");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn what_twilio_would_reject_is_recorded_and_the_stream_goes_on() {
        let mut server = server().await;
        let sim = simulator(TOKEN).await;
        let (_, mut socket, start) = answered(&mut server, &sim, "+14155550007").await;
        let stream_sid = start["streamSid"].as_str().unwrap().to_owned();
        let bad = [
            json!({"event": "dance", "streamSid": stream_sid}).to_string(),
            "not json".to_owned(),
            json!({"event": "media", "streamSid": "MZnot-ours", "media": {"payload": "//8="}}).to_string(),
            json!({"event": "media", "streamSid": stream_sid, "media": {"payload": "%%%"}}).to_string(),
        ];
        for text in &bad {
            socket.send(WsMessage::text(text.clone())).await.unwrap();
        }
        socket.send(WsMessage::Binary(vec![1, 2, 3].into())).await.unwrap();
        let mut reasons = Vec::new();
        while reasons.len() < 5 {
            reasons.push(
                sim_until(&sim, |r| match r {
                    SimRequest::StreamViolation { reason, .. } => Some(reason),
                    _ => None,
                })
                .await,
            );
        }
        assert!(reasons[0].contains("dance") && reasons[2].contains("MZnot-ours"), "{reasons:?}");
        assert!(reasons[..4].iter().all(|r| r.starts_with("31951")) && reasons[4].starts_with("31924"));
        // Still streaming, and still playing: a mark on an empty queue comes straight back.
        let mark = json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": "still"}}).to_string();
        socket.send(WsMessage::text(mark)).await.unwrap();
        while next(&mut socket).await.1["event"] != "mark" {}
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_refused_handshake_is_recorded_and_the_call_completes() {
        let server = server().await;
        let status_url = format!("{}/status", server.base.replace("ws:", "http:"));
        // The server refuses outright; then a simulator signing with the wrong token.
        for (token, path) in [(TOKEN, "/refuse"), ("not-the-token", "/media")] {
            let sim = simulator(token).await;
            let sid = place_as(&sim, token, "+14155550123", &format!("{}{path}", server.base), &status_url).await;
            let status = sim_until(&sim, |r| match r {
                SimRequest::MediaRefused { call_sid, http_status } if call_sid == sid => Some(http_status),
                SimRequest::MediaStarted { .. } => panic!("{path} was accepted"),
                _ => None,
            })
            .await;
            assert_eq!(status, 403, "{path}");
            sim_until(&sim, |r| match r {
                SimRequest::CallbackResult { status, .. } if status == "completed" => Some(()),
                _ => None,
            })
            .await;
            sim.shutdown().await;
        }
    }

    #[tokio::test]
    async fn when_the_server_closes_the_stream_the_line_stays_up_until_hung_up() {
        let mut server = server().await;
        let sim = simulator(TOKEN).await;
        let (sid, mut socket, _) = answered(&mut server, &sim, "+14155550123").await;
        socket.send(WsMessage::Close(None)).await.unwrap();
        let by = sim_until(&sim, |r| match r {
            SimRequest::MediaClosed { by, .. } => Some(by),
            SimRequest::CallbackResult { status, .. } if status == "completed" => panic!("the call ended"),
            _ => None,
        })
        .await;
        assert_eq!(by, "server");
        assert_eq!(hang_up(&sim, &sid).await, 200, "the call is still up");
        sim_until(&sim, |r| match r {
            SimRequest::MediaClosed { .. } => panic!("closed twice"),
            SimRequest::CallbackResult { status, .. } if status == "completed" => Some(()),
            _ => None,
        })
        .await;
        sim.shutdown().await;
    }
}
