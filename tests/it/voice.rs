//! The AI on the phone: both simulators hold a scripted conversation through the real server.
//!
//! The simulated callee's behaviour is chosen by the last digits of the number (see
//! `src/sandbox/twilio.rs`); the simulated model answers what it hears (see `src/sandbox/realtime.rs`).

use crate::support::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use voice_call_mcp::calls::{CallStatus, Speaker};
use voice_call_mcp::carrier::signature;
use voice_call_mcp::sandbox::realtime::RealtimeSimEvent;
use voice_call_mcp::sandbox::twilio::SimRequest;

fn voice_setup() -> Setup {
    Setup { talk_time: None, media: true, ..Setup::default() }
}

async fn place(_server: &TestServer, client: &Client, args: serde_json::Value) -> String {
    let placed = call_tool(client, "trigger-call", args).await;
    ok(&placed)["callSid"].as_str().unwrap().to_owned()
}

fn lines(server: &TestServer, call: &voice_call_mcp::calls::Call) -> Vec<(Speaker, String)> {
    server.transcript(&call.call_sid).into_iter().map(|l| (l.speaker, l.text)).collect()
}

#[tokio::test]
async fn a_call_holds_a_conversation_and_the_model_hangs_up_after_its_goodbye_has_played() {
    let server = TestServer::with(voice_setup()).await;
    let client = server.client(Era::Stateless).await;
    let sid = place(
        &server,
        &client,
        json!({"toNumber": "+14155550123", "callContext": "Ask whether they open on Sunday.",
               "firstMessage": "Hello, this is Ava calling about your opening hours."}),
    )
    .await;

    // The session was configured for a phone call, with our instructions, before the AI spoke.
    let session = server
        .rt_until(|e| match e {
            RealtimeSimEvent::Received { event, .. } if event["type"] == "session.update" => Some(event),
            _ => None,
        })
        .await;
    assert_eq!(session["session"]["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert!(session["session"]["instructions"].as_str().unwrap().contains("Ask whether they open on Sunday."));

    // The goodbye is heard in full by the callee, and only then does the phone hang up.
    let mut goodbye_played = false;
    server
        .sim_until(|r| match r {
            SimRequest::Played { text, cleared, .. } if text.as_deref() == Some("Goodbye, and thank you!") => {
                assert!(!cleared);
                goodbye_played = true;
                None
            }
            SimRequest::Hangup { status, .. } => {
                assert!(goodbye_played, "hung up before the goodbye had played");
                assert_eq!(status, "completed");
                Some(())
            }
            _ => None,
        })
        .await;

    let done = ok(&call_tool(&client, "wait-for-call", json!({"callSid": sid})).await).clone();
    assert_eq!(done["status"], "completed");
    let call = server.state.calls.get(&sid).unwrap();
    assert_eq!(
        lines(&server, &call),
        [
            (Speaker::Ai, "Hello, this is Ava calling about your opening hours.".into()),
            (Speaker::Human, "Hi, yes, we are open on Sunday.".into()),
            (Speaker::Ai, "You said: Hi, yes, we are open on Sunday. Thank you.".into()),
            (Speaker::Human, "Okay, goodbye.".into()),
            (Speaker::Ai, "Goodbye, and thank you!".into()),
        ]
    );
    assert!(call.errors.is_empty(), "{:?}", call.errors);
    // get-call shows the same transcript to the assistant.
    let record = ok(&call_tool(&client, "get-call", json!({"callSid": sid})).await).clone();
    assert_eq!(record["transcript"][1]["speaker"], "human");
    assert_eq!(record["transcript"][4]["text"], "Goodbye, and thank you!");
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn barge_in_clears_twilio_and_truncates_the_ai_at_what_was_actually_played() {
    let server = TestServer::with(voice_setup()).await;
    let client = server.client(Era::Session).await;
    // The callee starts talking 600 ms into the AI's first (long) utterance.
    let long = "Hello! I am calling to ask about a booking for a large party next weekend, if you have a moment.";
    let sid =
        place(&server, &client, json!({"toNumber": "+14155550004", "callContext": "x", "firstMessage": long})).await;

    let (played_ms, cleared) = server
        .sim_until(|r| match r {
            SimRequest::Played { played_ms, cleared, text, .. } if text.as_deref() == Some(long) => {
                Some((played_ms, cleared))
            }
            _ => None,
        })
        .await;
    assert!(cleared, "Twilio was told to clear the rest of the AI's audio");
    let (audio_end_ms, sent_ms) = server
        .rt_until(|e| match e {
            RealtimeSimEvent::Truncated { audio_end_ms, sent_ms, .. } => Some((audio_end_ms, sent_ms)),
            _ => None,
        })
        .await;
    // What the callee heard, not how long the AI had been talking: marks count played audio only.
    assert!(audio_end_ms <= played_ms, "truncated at {audio_end_ms} ms, played {played_ms} ms");
    assert!(played_ms - audio_end_ms <= 60, "truncated at {audio_end_ms} ms, played {played_ms} ms");
    assert!(audio_end_ms >= 500, "the callee talked over it after ~600 ms of playback: {audio_end_ms}");
    assert!(audio_end_ms < sent_ms, "more was sent ({sent_ms} ms) than played");

    let call = server.until_call(&sid, |c| c.status.is_terminal()).await;
    assert!(lines(&server, &call).contains(&(Speaker::Human, "Sorry to interrupt, who is this?".into())));
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn instruct_call_reaches_the_live_session() {
    let server = TestServer::with(voice_setup()).await;
    let client = server.client(Era::Stateless).await;
    // A call that is never answered has no live session to instruct.
    let unanswered = place(&server, &client, json!({"toNumber": "+14155550002", "callContext": "x"})).await;
    let refused = call_tool(&client, "instruct-call", json!({"callSid": unanswered, "instruction": "hi"})).await;
    assert!(error_text(&refused).contains("no live voice session"));

    let sid = place(&server, &client, json!({"toNumber": "+14155550007", "callContext": "x"})).await;

    // Once the callee has heard the greeting, steer the call.
    server.sim_until(|r| matches!(r, SimRequest::Played { .. }).then_some(())).await;
    let steered =
        call_tool(&client, "instruct-call", json!({"callSid": sid, "instruction": "Ask whether there is parking."}))
            .await;
    assert_eq!(ok(&steered)["delivered"], true);
    let transcript = server.until_transcript(&sid, |t| t.iter().any(|l| l.text.contains("parking"))).await;
    let said = transcript.iter().find(|l| l.text.contains("parking")).unwrap();
    assert_eq!(said.speaker, Speaker::Ai);
    ok(&call_tool(&client, "end-call", json!({"callSid": sid})).await);
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_time_limit_ends_a_call_politely() {
    let server = TestServer::with(voice_setup()).await;
    let client = server.client(Era::Stateless).await;
    // A callee who never speaks, and a 5-second limit.
    let sid =
        place(&server, &client, json!({"toNumber": "+14155550007", "callContext": "x", "maxDurationSecs": 5})).await;
    // The model is told why, in the conversation, and asked to answer.
    let told = server
        .rt_until(|e| match e {
            RealtimeSimEvent::Received { event, .. } if event["type"] == "conversation.item.create" => {
                Some(event["item"]["content"][0]["text"].as_str().unwrap_or_default().to_owned())
            }
            _ => None,
        })
        .await;
    assert!(told.contains("time limit") && told.contains("end_call"), "{told}");
    let call = server.until_call(&sid, |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Completed);
    // It said goodbye, and the goodbye was the last thing said: the hang-up came after it had played.
    assert_eq!(lines(&server, &call).last().unwrap(), &(Speaker::Ai, "Goodbye, and thank you!".to_owned()));
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_realtime_error_is_recorded_on_the_call_which_goes_on() {
    let server = TestServer::with(voice_setup()).await;
    let client = server.client(Era::Stateless).await;
    let sid = place(&server, &client, json!({"toNumber": "+14155550005", "callContext": "x"})).await;
    let call = server.until_call(&sid, |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert!(call.errors.iter().any(|e| e.code == "simulated_error"), "{:?}", call.errors);
    // And it is an `error` event on the feed, for dashboards and the session that placed the call.
    let mut log = server.state.events.follow(Some(0));
    let error = tokio::time::timeout(WAIT, async {
        loop {
            let e = log.next().await.unwrap();
            if e.kind == "error" && e.call_sid == sid {
                return e;
            }
        }
    })
    .await
    .expect("an error event was published");
    assert!(error.data.contains("\"code\":\"simulated_error\""), "{}", error.data);
    assert_eq!(lines(&server, &call).last().unwrap(), &(Speaker::Ai, "Goodbye, and thank you!".to_owned()));
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_dropped_realtime_socket_reconnects_once_with_the_conversation_so_far() {
    let server = TestServer::with(voice_setup()).await;
    let client = server.client(Era::Stateless).await;
    let sid = place(&server, &client, json!({"toNumber": "+14155550006", "callContext": "x"})).await;
    let resumed = server
        .rt_until(|e| match e {
            RealtimeSimEvent::Received { connection, event } if connection > 1 && event["type"] == "session.update" => {
                Some(event["session"]["instructions"].as_str().unwrap_or_default().to_owned())
            }
            _ => None,
        })
        .await;
    assert!(resumed.contains("Conversation so far:") && resumed.contains("drop please"), "{resumed}");
    let call = server.until_call(&sid, |c| c.status.is_terminal()).await;
    assert!(lines(&server, &call).iter().any(|(s, t)| *s == Speaker::Ai && t.starts_with("Sorry, we were cut off")));
    assert!(call.errors.iter().any(|e| e.code == "voice_reconnecting"));
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn losing_the_model_twice_apologises_and_hangs_up() {
    let server = TestServer::with(voice_setup()).await;
    let client = server.client(Era::Stateless).await;
    let sid = place(&server, &client, json!({"toNumber": "+14155550007", "callContext": "x"})).await;
    server.sim_until(|r| matches!(r, SimRequest::Played { .. }).then_some(())).await;
    server.realtime.drop_all();
    server.rt_until(|e| matches!(e, RealtimeSimEvent::Connected { connection: 2, .. }).then_some(())).await;
    server.realtime.drop_all();
    let twiml = server
        .sim_until(|r| match r {
            SimRequest::Redirected { twiml, .. } => Some(twiml),
            _ => None,
        })
        .await;
    assert!(twiml.contains("<Say>") && twiml.contains("<Hangup/>"), "{twiml}");
    let call = server.until_call(&sid, |c| c.status.is_terminal()).await;
    assert!(call.errors.iter().any(|e| e.code == "voice_disconnected"));
    client.cancel().await.unwrap();
    server.stop().await;
}

async fn media_socket(
    server: &TestServer,
    signature: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let url = format!("{}/twilio/media", server.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("x-twilio-signature", signature.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.map(|(s, _)| s)
}

#[tokio::test]
async fn a_media_handshake_with_a_bad_signature_is_refused() {
    let server = TestServer::start().await;
    let url = format!("{}/twilio/media", server.base.replace("http://", "ws://"));
    for bad in ["", "bm90IGEgc2lnbmF0dXJl", &signature::compute("wrong-token", &url, &[])] {
        match media_socket(&server, bad).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
            other => panic!("expected 403, got {:?}", other.map(|_| ())),
        }
    }
    let good = signature::compute(AUTH_TOKEN, &url, &[]);
    assert!(media_socket(&server, &good).await.is_ok(), "a correctly signed handshake upgrades");
    server.stop().await;
}

#[tokio::test]
async fn a_forged_stream_is_refused_a_glitch_is_skipped_a_garbled_stream_ends_politely_and_other_calls_go_on() {
    let server = TestServer::with(voice_setup()).await;
    let client = server.client(Era::Stateless).await;
    // A real call, holding its conversation through the simulators.
    let good = place(&server, &client, json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    // A second call whose phone answers but never streams: we play its Twilio side ourselves.
    let ours = place(&server, &client, json!({"toNumber": "+14155550009", "callContext": "our own stream"})).await;
    server.until_status(&ours, |s| s == CallStatus::InProgress).await;
    // Our call's voice session, told apart from the good call's by its brief.
    let connection = server
        .rt_until(|e| match e {
            RealtimeSimEvent::Received { connection, event }
                if event["type"] == "session.update"
                    && event["session"]["instructions"].as_str().is_some_and(|i| i.contains("our own stream")) =>
            {
                Some(connection)
            }
            _ => None,
        })
        .await;
    let url = format!("{}/twilio/media", server.base.replace("http://", "ws://"));
    let signed = signature::compute(AUTH_TOKEN, &url, &[]);
    let token = server.state.calls.entry(&ours).unwrap().stream_token().to_owned();
    let start = |call_sid: &str, token: &str| {
        json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
               "start": {"accountSid": ACCOUNT_SID, "streamSid": "MZ1", "callSid": call_sid, "tracks": ["inbound"],
                         "customParameters": {"callToken": token},
                         "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        .to_string()
    };
    let closed_with_policy = |msg: Option<Result<Message, _>>| match msg {
        Some(Ok(Message::Close(Some(frame)))) => u16::from(frame.code) == 1008,
        _ => false,
    };

    for forged in [start("CA00000000000000000000000000000000", &token), start(&ours, "wrong"), "garbage".into()] {
        let mut socket = media_socket(&server, &signed).await.unwrap();
        socket.send(Message::text(forged.clone())).await.unwrap();
        assert!(closed_with_policy(socket.next().await), "{forged} was refused");
    }

    // The right token is accepted.
    let mut socket = media_socket(&server, &signed).await.unwrap();
    socket.send(Message::text(start(&ours, &token))).await.unwrap();
    server
        .rt_until(|e| match e {
            RealtimeSimEvent::Received { connection: c, event }
                if c == connection && event["type"] == "response.create" =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
    // Malformed frames mid-call (cut-off JSON, 1 MiB of text, `media: null`, an array, audio that is not
    // base64) are skipped: the audio after them still reaches the model, and none of them does.
    let media = |payload: &str| {
        json!({"event": "media", "sequenceNumber": "3", "streamSid": "MZ1",
               "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload}})
        .to_string()
    };
    let glitches = [
        r#"{"event":"media","media":{"payload":"#.to_owned(),
        format!(r#"{{"event":"media","media":{{"payload":"{}"}}}}"#, "A".repeat(1024 * 1024)),
        r#"{"event":"media","streamSid":"MZ1","media":null}"#.to_owned(),
        r#"[{"event":"media"}]"#.to_owned(),
        media("this is not base64!"),
    ];
    for glitch in glitches {
        socket.send(Message::text(glitch)).await.unwrap();
    }
    let silence = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([0xFFu8; 160])
    };
    for _ in 0..60 {
        socket.send(Message::text(media(&silence))).await.unwrap();
    }
    server
        .rt_until(|e| match e {
            RealtimeSimEvent::Invalid { connection: c, reason } if c == connection => {
                panic!("a malformed frame reached the model: {reason}")
            }
            RealtimeSimEvent::AudioReceived { connection: c, total_ms } if c == connection && total_ms >= 1000 => {
                Some(())
            }
            _ => None,
        })
        .await;
    let call = server.state.calls.get(&ours).unwrap();
    assert_eq!(call.status, CallStatus::InProgress, "the call goes on");
    let codes: Vec<_> = call.errors.iter().map(|e| e.code.as_str()).collect();
    assert_eq!(codes, ["malformed_media_frame"], "noted once, with its kind: {:?}", call.errors);

    // A stream that keeps sending garbage is closed, and the callee hears an apology before the hang-up.
    for n in 0..60 {
        if socket.send(Message::text(format!("garbage {n}"))).await.is_err() {
            break;
        }
    }
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = socket.next().await {
            if msg.is_close() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the garbled stream was closed");
    let apology = server
        .sim_until(|r| match r {
            SimRequest::Redirected { call_sid, twiml } if call_sid == ours => Some(twiml),
            _ => None,
        })
        .await;
    assert!(apology.contains("<Say") && apology.contains("<Hangup"), "{apology}");
    let ended = server.until_call(&ours, |c| c.status.is_terminal()).await;
    assert!(ended.errors.iter().any(|e| e.code == "media_stream_garbled"), "{:?}", ended.errors);

    // Meanwhile the good call went on to its natural end, transcript complete and error-free.
    let call = server.until_call(&good, |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(lines(&server, &call).len(), 5, "{:?}", lines(&server, &call));
    assert!(call.errors.is_empty());
    client.cancel().await.unwrap();
    server.stop().await;
}
