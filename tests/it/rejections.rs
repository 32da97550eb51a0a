//! Requests that must not cost money: each is refused with a sentence a model can act on, and the
//! carrier never hears of it.

use crate::support::*;
use serde_json::json;
use voice_call_mcp::RawConfig;
use voice_call_mcp::sandbox::twilio::SimRequest;

fn creates(reqs: &[SimRequest]) -> usize {
    reqs.iter().filter(|r| matches!(r, SimRequest::CreateCall { .. })).count()
}

#[tokio::test]
async fn bad_numbers_denied_prefixes_and_the_concurrency_cap_are_tool_errors_and_nothing_is_dialed() {
    let raw = RawConfig {
        denied_destinations: Some("+1900".into()),
        allowed_destinations: Some("+1,+44".into()),
        max_concurrent_calls: Some("1".into()),
        ..RawConfig::default()
    };
    let server = TestServer::with(Setup { talk_time: None, raw, ..Setup::default() }).await;
    let client = server.client(Era::Session).await;
    let attempt = |to: &'static str| call_tool(&client, "trigger-call", json!({"toNumber": to, "callContext": "x"}));

    let not_e164 = error_text(&attempt("415-555-0100").await);
    assert!(not_e164.contains("E.164") && not_e164.contains("+14155550123"), "{not_e164}");
    let denied = error_text(&attempt("+19005550100").await);
    assert!(denied.contains("not allowed") && denied.contains("+1900"), "{denied}");
    let not_allowed = error_text(&attempt("+33142685300").await);
    assert!(not_allowed.contains("+1, +44"), "{not_allowed}");
    let empty =
        error_text(&call_tool(&client, "trigger-call", json!({"toNumber": "+14155550100", "callContext": "  "})).await);
    assert!(empty.contains("callContext"), "{empty}");
    let voice = error_text(
        &call_tool(&client, "trigger-call", json!({"toNumber": "+14155550100", "callContext": "x", "voice": "robot"}))
            .await,
    );
    assert!(voice.contains("marin"), "{voice}");
    assert_eq!(creates(&server.sim_drain()), 0, "nothing may be dialed for a refused request");

    let first = attempt("+14155550100").await;
    ok(&first);
    let capped = error_text(&attempt("+14155550101").await);
    assert!(capped.contains("1 calls are already in progress"), "{capped}");
    assert_eq!(creates(&server.sim_drain()), 1, "only the first call was dialed");

    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn carrier_errors_become_tool_errors_and_free_the_slot() {
    // The server holds the wrong auth token, so Twilio (the simulator) refuses its REST requests.
    let raw = RawConfig { max_concurrent_calls: Some("1".into()), ..RawConfig::default() };
    let server = TestServer::with(Setup { raw, server_auth_token: "wrong-token", ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    for _ in 0..2 {
        let failed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550100", "callContext": "x"})).await;
        let text = error_text(&failed);
        assert!(text.contains("Twilio error 20003"), "{text}");
    }
    // The second attempt was dialed too: the failed first one gave its concurrency slot back.
    let rejected = server.sim_drain().iter().filter(|r| matches!(r, SimRequest::Rejected { status: 401, .. })).count();
    assert_eq!(rejected, 2);
    assert_eq!(server.state.calls.active_count(), 0);
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unknown_calls_are_tool_errors() {
    let server = TestServer::start().await;
    let client = server.client(Era::Stateless).await;
    for tool in ["get-call", "end-call", "wait-for-call"] {
        let text = error_text(&call_tool(&client, tool, json!({"callSid": "CAnope"})).await);
        assert!(text.contains("list-calls"), "{tool}: {text}");
    }
    client.cancel().await.unwrap();
    server.stop().await;
}
