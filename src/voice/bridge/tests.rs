//! The bridge driven through in-memory sockets: barge-in, hang-up, malformed frames.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::calls::{Call, CallRegistry, CallStatus};
use crate::carrier::stream::is_base64;
use futures::channel::mpsc as chan;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use tokio_tungstenite::tungstenite::Message;

/// One end of an in-memory WebSocket: what the bridge writes comes out of `sent`.
struct Duplex {
    rx: chan::UnboundedReceiver<Result<Message, std::convert::Infallible>>,
    tx: chan::UnboundedSender<Message>,
}

impl Stream for Duplex {
    type Item = Result<Message, std::convert::Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

impl Sink<Message> for Duplex {
    type Error = chan::SendError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.tx).poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.tx).start_send(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.tx).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.tx).poll_close(cx)
    }
}

/// The far side of a `Duplex`: feed it messages, read what the bridge sent.
struct Peer {
    feed: chan::UnboundedSender<Result<Message, std::convert::Infallible>>,
    sent: chan::UnboundedReceiver<Message>,
}

impl Peer {
    fn say(&self, v: serde_json::Value) {
        self.feed.unbounded_send(Ok(Message::text(v.to_string()))).unwrap();
    }
    async fn heard(&mut self) -> serde_json::Value {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.sent.next()).await.unwrap().unwrap();
        serde_json::from_str(msg.to_text().unwrap()).unwrap()
    }
}

fn duplex() -> (Duplex, Peer) {
    let (feed, rx) = chan::unbounded();
    let (tx, sent) = chan::unbounded();
    (Duplex { rx, tx }, Peer { feed, sent })
}

#[derive(Default)]
struct Recorder(Mutex<Vec<&'static str>>);
impl Line for Arc<Recorder> {
    fn publish(&self, _event: CallEvent) {}
    fn hang_up(&self) -> BoxFuture<'_, ()> {
        self.0.lock().unwrap().push("hang_up");
        Box::pin(async {})
    }
    fn apologise_and_hang_up(&self) -> BoxFuture<'_, ()> {
        self.0.lock().unwrap().push("apologise");
        Box::pin(async {})
    }
}

fn entry() -> Arc<CallEntry> {
    let registry = CallRegistry::new(1);
    let call = Call::new("CA1".into(), crate::calls::test_request(), CallStatus::InProgress, false);
    registry.insert(registry.reserve().unwrap(), call, "token".into()).0
}

/// 200 ms of µ-law (1600 bytes) as base64.
fn audio_200ms() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([0x55u8; 1600])
}

fn start(entry: Arc<CallEntry>, line: Arc<Recorder>) -> (Peer, Peer, tokio::task::JoinHandle<()>) {
    let (twilio, twilio_peer) = duplex();
    let (realtime, realtime_peer) = duplex();
    let connect: Box<dyn Fn() -> BoxFuture<'static, Result<Duplex, ConnectError>> + Send + Sync> =
        Box::new(|| Box::pin(async { Err(ConnectError::Refused(503)) }));
    let (_commands_tx, commands) = mpsc::channel(1);
    let settings = SessionSettings { voice: "marin".into(), model: "gpt-realtime".into() };
    let task = tokio::spawn(async move {
        let _keep = _commands_tx;
        run(
            entry,
            line,
            TwilioLink { socket: twilio, stream_sid: "MZ1".into() },
            Some(realtime),
            connect,
            settings,
            Timing::default(),
            commands,
            CancellationToken::new(),
        )
        .await
    });
    (twilio_peer, realtime_peer, task)
}

#[tokio::test]
async fn barge_in_truncates_at_the_audio_twilio_confirmed_played() {
    let line = Arc::new(Recorder::default());
    let (mut twilio, mut realtime, _task) = start(entry(), line.clone());
    assert_eq!(realtime.heard().await["type"], "response.create", "the AI speaks first");
    for _ in 0..3 {
        realtime.say(serde_json::json!({"type": "response.output_audio.delta", "response_id": "r1",
            "item_id": "i1", "output_index": 0, "content_index": 0, "delta": audio_200ms()}));
    }
    let mut marks = Vec::new();
    for _ in 0..3 {
        let media = twilio.heard().await;
        assert_eq!(media["event"], "media");
        assert_eq!(media["media"]["payload"], audio_200ms().as_str(), "the audio passes through untouched");
        let mark = twilio.heard().await;
        assert_eq!(mark["event"], "mark");
        marks.push(mark["mark"]["name"].as_str().unwrap().to_owned());
    }
    // Twilio has played the first 200 ms only, then the callee starts talking.
    twilio.say(
        serde_json::json!({"event": "mark", "streamSid": "MZ1", "sequenceNumber": "9", "mark": {"name": marks[0]}}),
    );
    realtime
        .say(serde_json::json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 900, "item_id": "u1"}));
    assert_eq!(twilio.heard().await, serde_json::json!({"event": "clear", "streamSid": "MZ1"}));
    let truncate = realtime.heard().await;
    assert_eq!(
        truncate,
        serde_json::json!({"type": "conversation.item.truncate", "item_id": "i1", "content_index": 0, "audio_end_ms": 200})
    );
    // The marks Twilio echoes for the cleared audio are not counted as played.
    for m in &marks[1..] {
        twilio.say(serde_json::json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": m}}));
    }
    realtime
        .say(serde_json::json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 2000, "item_id": "u2"}));
    realtime.say(serde_json::json!({"type": "response.output_audio.delta", "item_id": "i2", "delta": audio_200ms()}));
    assert_eq!(twilio.heard().await["event"], "media", "no second clear or truncate: nothing was pending");
    assert!(line.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn end_call_hangs_up_only_after_the_goodbye_has_played() {
    let line = Arc::new(Recorder::default());
    let (mut twilio, mut realtime, task) = start(entry(), line.clone());
    assert_eq!(realtime.heard().await["type"], "response.create");
    realtime.say(serde_json::json!({"type": "response.created", "response": {"id": "r1", "status": "in_progress"}}));
    realtime.say(serde_json::json!({"type": "response.output_audio.delta", "item_id": "i1", "delta": audio_200ms()}));
    realtime.say(serde_json::json!({"type": "response.function_call_arguments.done", "call_id": "c1", "name": "end_call", "arguments": "{}"}));
    realtime.say(serde_json::json!({"type": "response.done", "response": {"id": "r1", "status": "completed"}}));
    assert_eq!(twilio.heard().await["event"], "media");
    let mark = twilio.heard().await["mark"]["name"].as_str().unwrap().to_owned();
    let output = realtime.heard().await;
    assert_eq!(output["item"]["type"], "function_call_output");
    assert_eq!(output["item"]["call_id"], "c1");
    assert!(line.0.lock().unwrap().is_empty(), "not while the goodbye is still playing");
    twilio.say(serde_json::json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": mark}}));
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(*line.0.lock().unwrap(), ["hang_up"]);
}

fn media(payload: &str) -> serde_json::Value {
    serde_json::json!({"event": "media", "sequenceNumber": "3", "streamSid": "MZ1",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload}})
}

fn error_codes(entry: &CallEntry) -> Vec<String> {
    entry.snapshot().errors.into_iter().map(|e| e.code).collect()
}

#[tokio::test]
async fn a_malformed_frame_is_skipped_and_the_audio_after_it_still_reaches_the_model() {
    let line = Arc::new(Recorder::default());
    let call = entry();
    let (twilio, mut realtime, task) = start(call.clone(), line.clone());
    assert_eq!(realtime.heard().await["type"], "response.create");
    twilio.say(media("AAAA"));
    let garbage = [
        "not json at all".to_owned(),
        format!(r#"{{"event":"media","media":{{"payload":"{}"}}}}"#, "A".repeat(1024 * 1024)),
        r#"{"event":"media","streamSid":"MZ1","media":null}"#.to_owned(),
        r#"[{"event":"media"}]"#.to_owned(),
        media("not base64!").to_string(),
        media("AAA").to_string(),
        media("").to_string(),
    ];
    for frame in &garbage {
        twilio.feed.unbounded_send(Ok(Message::text(frame.clone()))).unwrap();
    }
    twilio.say(media("BBBB"));
    let first = realtime.heard().await;
    assert_eq!((first["type"].as_str(), first["audio"].as_str()), (Some("input_audio_buffer.append"), Some("AAAA")));
    let next = realtime.heard().await;
    assert_eq!(next["audio"], "BBBB", "no malformed frame reached the model, and the stream goes on");
    assert_eq!(error_codes(&call), ["malformed_media_frame"], "recorded once for the call");
    assert!(line.0.lock().unwrap().is_empty(), "the call is not ended over a few bad frames");
    assert!(!task.is_finished());
}

#[tokio::test]
async fn a_stream_that_keeps_sending_garbage_is_closed_and_the_callee_hears_an_apology() {
    let line = Arc::new(Recorder::default());
    let call = entry();
    let (twilio, mut realtime, task) = start(call.clone(), line.clone());
    assert_eq!(realtime.heard().await["type"], "response.create");
    for n in 0..MALFORMED_IN_A_ROW {
        twilio.feed.unbounded_send(Ok(Message::text(format!("garbage {n}")))).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(*line.0.lock().unwrap(), ["apologise"]);
    assert_eq!(error_codes(&call), ["malformed_media_frame", "media_stream_garbled"]);
}

#[test]
fn base64_is_checked_without_decoding() {
    for good in ["AAAA", "//79/A==", "AAA=", "+/+/"] {
        assert!(is_base64(good), "{good}");
    }
    for bad in ["", "AAA", "A===", "AA=A", "AA AA", "AAA\n", "é=="] {
        assert!(!is_base64(bad), "{bad}");
    }
}

#[test]
fn base64_length_gives_audio_bytes_without_decoding() {
    assert_eq!(decoded_len("AAAA"), 3);
    assert_eq!(decoded_len("AAA="), 2);
    assert_eq!(decoded_len("AA=="), 1);
    assert_eq!(decoded_len(""), 0);
    // 160 bytes of µ-law, one 20 ms frame, is 216 base64 characters ending in "==".
    assert_eq!(decoded_len(&format!("{}AA==", "A".repeat(212))), 160);
}
