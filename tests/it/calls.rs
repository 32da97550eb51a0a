//! The story of a call: placed over MCP, dialed at Twilio, followed through signed callbacks to its end.

use crate::support::*;
use serde_json::json;
use voice_call_mcp::calls::CallStatus;
use voice_call_mcp::sandbox::twilio::{CallbackKind, SimRequest};

#[tokio::test]
async fn a_call_placed_over_mcp_is_dialed_with_the_right_form_and_completes_through_signed_callbacks() {
    let server = TestServer::start().await;
    let client = server.client(Era::Stateless).await;

    let placed = call_tool(
        &client,
        "trigger-call",
        json!({"toNumber": "+14155550123", "callContext": "Ask whether they are open on Sunday."}),
    )
    .await;
    let placed = ok(&placed);
    let sid = placed["callSid"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("CA") && sid.len() == 34, "{sid}");
    assert_eq!(placed["status"], "queued");
    assert_eq!(placed["sseUrl"], format!("{}/events?callSid={sid}", server.base));
    assert_eq!(placed["resourceUri"], format!("call://{sid}"));

    // What Twilio received: the number, our caller id, inline TwiML streaming to us, every status event.
    let (form, created_sid) = server
        .sim_until(|r| match r {
            SimRequest::CreateCall { form, call_sid, .. } => Some((form, call_sid)),
            _ => None,
        })
        .await;
    assert_eq!(created_sid, sid);
    assert_eq!(form_values(&form, "To"), ["+14155550123"]);
    assert_eq!(form_values(&form, "From"), ["+15005550006"]);
    assert_eq!(form_values(&form, "StatusCallback"), [format!("{}/twilio/status", server.base).as_str()]);
    assert_eq!(form_values(&form, "StatusCallbackMethod"), ["POST"]);
    assert_eq!(form_values(&form, "StatusCallbackEvent"), ["initiated", "ringing", "answered", "completed"]);
    assert_eq!(form_values(&form, "Timeout"), ["30"]);
    assert_eq!(form_values(&form, "TimeLimit"), ["630"]);
    let twiml = form_values(&form, "Twiml")[0];
    let media = format!("{}/twilio/media", server.base.replace("http://", "ws://"));
    assert!(twiml.contains(&format!(r#"<Connect><Stream url="{media}">"#)), "{twiml}");
    let token = server.state.calls.entry(&sid).unwrap().stream_token().to_owned();
    assert_eq!(token.len(), 64);
    assert!(twiml.contains(&format!(r#"<Parameter name="callToken" value="{token}"/>"#)), "{twiml}");
    assert!(form_values(&form, "Record").is_empty() && form_values(&form, "MachineDetection").is_empty());

    // Twilio's callbacks, duplicate and out-of-order ones included, are each answered 200.
    let mut deliveries = Vec::new();
    let mut completed_seen = 0;
    while completed_seen < 2 {
        if let SimRequest::CallbackResult { kind: CallbackKind::Status, status, sequence, http_status, .. } =
            server.next_sim().await
        {
            assert_eq!(http_status, 200, "{status} callback was not accepted");
            completed_seen += usize::from(status == "completed");
            deliveries.push((status, sequence));
        }
    }
    let seqs: Vec<_> = deliveries.iter().map(|(_, s)| s.unwrap()).collect();
    assert!(seqs.windows(2).any(|w| w[1] < w[0]), "an out-of-order delivery happened: {deliveries:?}");
    assert!(seqs.windows(2).any(|w| w[1] == w[0]), "a duplicate delivery happened: {deliveries:?}");

    let done = call_tool(&client, "wait-for-call", json!({"callSid": sid})).await;
    let done = ok(&done);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["ended"], true);
    assert!(done["durationSecs"].is_u64());

    let record = call_tool(&client, "get-call", json!({"callSid": sid})).await;
    let record = ok(&record);
    assert_eq!(record["status"], "completed");
    assert_eq!(record["to"], "+14155550123");
    assert_eq!(record["context"], "Ask whether they are open on Sunday.");
    assert!(record["answeredAt"].is_string() && record["endedAt"].is_string());

    let listed = call_tool(&client, "list-calls", json!({})).await;
    let listed = ok(&listed);
    assert_eq!(listed["calls"][0]["callSid"], sid.as_str());
    assert_eq!(listed["calls"][0]["status"], "completed");
    assert_eq!(listed["active"], 0);

    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn end_call_hangs_up_a_live_call_and_twilio_confirms_it() {
    let server = TestServer::with(Setup { talk_time: None, ..Setup::default() }).await;
    let client = server.client(Era::Session).await;
    let placed =
        call_tool(&client, "trigger-call", json!({"toNumber": "+14155550124", "callContext": "Say hi."})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    server.until_status(&sid, |s| s == CallStatus::InProgress).await;

    let ended = call_tool(&client, "end-call", json!({"callSid": sid})).await;
    let ended = ok(&ended);
    assert_eq!(ended["status"], "completed");
    let hangup = server
        .sim_until(|r| match r {
            SimRequest::Hangup { call_sid, status } => Some((call_sid, status)),
            _ => None,
        })
        .await;
    assert_eq!(hangup, (sid.clone(), "completed".to_owned()));
    // Twilio's own `completed` callback still arrives, is accepted, and fills in the duration.
    server
        .sim_until(|r| match r {
            SimRequest::CallbackResult { status, http_status, .. } if status == "completed" => {
                assert_eq!(http_status, 200);
                Some(())
            }
            _ => None,
        })
        .await;
    server.until_call(&sid, |c| c.duration_secs.is_some()).await;

    // Ending it again is not an error, and nothing more is sent to Twilio.
    let again = call_tool(&client, "end-call", json!({"callSid": sid})).await;
    assert_eq!(ok(&again)["status"], "completed");
    assert!(!server.sim_drain().iter().any(|r| matches!(r, SimRequest::Hangup { .. })));

    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn ten_concurrent_calls_keep_their_own_state() {
    let server = TestServer::start().await;
    let client = server.client(Era::Stateless).await;
    // The simulated callee's behaviour is chosen by the number's last digits.
    let numbers: Vec<(String, &str)> = (0..10)
        .map(|i| match i % 4 {
            0 => (format!("+14155{i}50001"), "busy"),
            1 => (format!("+14155{i}50002"), "no-answer"),
            2 => (format!("+14155{i}50003"), "failed"),
            _ => (format!("+14155{i}50099"), "completed"),
        })
        .collect();
    let placed =
        futures::future::join_all(numbers.iter().map(|(n, _)| {
            call_tool(&client, "trigger-call", json!({"toNumber": n, "callContext": "Concurrency check."}))
        }))
        .await;
    let sids: Vec<String> = placed.iter().map(|p| ok(p)["callSid"].as_str().unwrap().to_owned()).collect();
    let distinct: std::collections::HashSet<_> = sids.iter().collect();
    assert_eq!(distinct.len(), 10);

    let outcomes =
        futures::future::join_all(sids.iter().map(|sid| call_tool(&client, "wait-for-call", json!({"callSid": sid}))))
            .await;
    for ((number, expected), outcome) in numbers.iter().zip(&outcomes) {
        let outcome = ok(outcome);
        assert_eq!(outcome["status"], *expected, "call to {number}");
        let record = server.state.calls.get(outcome["callSid"].as_str().unwrap()).unwrap();
        assert_eq!(record.request.to.as_str(), number);
    }
    assert_eq!(server.state.calls.active_count(), 0);
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn rest_calls_can_authenticate_with_an_api_key_instead_of_the_auth_token() {
    let key = (format!("SK{}", "5".repeat(32)), "key-secret".to_owned());
    let raw = voice_call_mcp::RawConfig {
        twilio_api_key_sid: Some(key.0.clone()),
        twilio_api_key_secret: Some(key.1.clone()),
        ..Default::default()
    };
    let server = TestServer::with(Setup { raw, api_key: Some(key.clone()), ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    ok(&placed);
    let auth = server
        .sim_until(|r| match r {
            SimRequest::CreateCall { auth, .. } => Some(auth),
            _ => None,
        })
        .await;
    assert_eq!(auth, voice_call_mcp::sandbox::twilio::SimAuth::ApiKey(key.0));
    client.cancel().await.unwrap();
    server.stop().await;
}
