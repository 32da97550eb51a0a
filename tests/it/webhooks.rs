//! Twilio's callbacks are believed only when signed with the account's auth token over our public URL.

use crate::support::*;
use serde_json::json;
use voice_call_mcp::calls::CallStatus;
use voice_call_mcp::carrier::signature;

fn status_form(sid: &str, status: &str, seq: &str) -> Vec<(String, String)> {
    [
        ("CallSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("CallStatus", status),
        ("SequenceNumber", seq),
        ("CallDuration", "7"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn post(url: &str, form: &[(String, String)], signature: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().post(url).form(form);
    if let Some(sig) = signature {
        req = req.header("X-Twilio-Signature", sig);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn unsigned_and_forged_callbacks_are_refused_and_change_nothing() {
    let server = TestServer::with(Setup { talk_time: None, ..Setup::default() }).await;
    let client = server.client(Era::Session).await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    server.until_status(&sid, |s| s == CallStatus::InProgress).await;

    let url = format!("{}/twilio/status", server.base);
    let form = status_form(&sid, "completed", "10");
    let forged_key = signature::compute("not-the-auth-token", &url, &form);
    let signed_elsewhere = signature::compute(AUTH_TOKEN, "https://attacker.example/twilio/status", &form);
    let mut tampered = form.clone();
    let honest = signature::compute(AUTH_TOKEN, &url, &form);
    tampered[2].1 = "failed".into();

    assert_eq!(post(&url, &form, None).await, 403, "unsigned");
    assert_eq!(post(&url, &form, Some("")).await, 403, "empty signature");
    assert_eq!(post(&url, &form, Some("!!not base64!!")).await, 403, "garbage signature");
    assert_eq!(post(&url, &form, Some(&forged_key)).await, 403, "signed with another key");
    assert_eq!(post(&url, &form, Some(&signed_elsewhere)).await, 403, "signed for another URL");
    assert_eq!(post(&url, &tampered, Some(&honest)).await, 403, "params changed after signing");
    for path in ["/twilio/recording", "/twilio/amd"] {
        assert_eq!(post(&format!("{}{path}", server.base), &form, None).await, 403, "{path} unsigned");
    }
    assert_eq!(server.state.calls.get(&sid).unwrap().status, CallStatus::InProgress, "nothing was applied");

    // The same callback, honestly signed, is applied.
    assert_eq!(post(&url, &form, Some(&honest)).await, 200);
    let call = server.state.calls.get(&sid).unwrap();
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.duration_secs, Some(7));
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn recording_and_answering_machine_callbacks_fill_in_the_call() {
    let server = TestServer::with(Setup { talk_time: None, ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    let placed = call_tool(
        &client,
        "trigger-call",
        json!({"toNumber": "+14155550123", "callContext": "x", "record": true, "machineDetection": true}),
    )
    .await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    let form = server
        .sim_until(|r| match r {
            voice_call_mcp::sandbox::twilio::SimRequest::CreateCall { form, .. } => Some(form),
            _ => None,
        })
        .await;
    assert_eq!(form_values(&form, "Record"), ["true"]);
    assert_eq!(form_values(&form, "RecordingStatusCallback"), [format!("{}/twilio/recording", server.base).as_str()]);
    assert_eq!(form_values(&form, "MachineDetection"), ["Enable"]);
    assert_eq!(form_values(&form, "AsyncAmd"), ["true"]);
    assert_eq!(form_values(&form, "AsyncAmdStatusCallback"), [format!("{}/twilio/amd", server.base).as_str()]);

    // The simulator answers with AMD `human`; hang up so it posts the recording.
    let call = server.until_call(&sid, |c| c.answered_by.is_some()).await;
    assert_eq!(call.answered_by.as_deref(), Some("human"));
    ok(&call_tool(&client, "end-call", json!({"callSid": sid})).await);
    let call = server.until_call(&sid, |c| c.recording_url.is_some()).await;
    assert!(call.recording_url.unwrap().contains("/Recordings/RE"));
    client.cancel().await.unwrap();
    server.stop().await;
}
