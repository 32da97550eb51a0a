//! A server that dies mid-call and comes back: no call it left behind stays open, silent, for good.

use crate::support::*;
use serde_json::json;
use voice_call_mcp::calls::CallStatus;
use voice_call_mcp::sandbox::twilio::SimRequest;

async fn place(client: &Client, to: &str) -> String {
    let placed = call_tool(client, "trigger-call", json!({"toNumber": to, "callContext": "x"})).await;
    ok(&placed)["callSid"].as_str().unwrap().to_owned()
}

fn restarted(server: &TestServer, sid: &str) -> Vec<String> {
    let call = server.state.calls.get(sid).unwrap();
    call.errors.iter().filter(|e| e.code == "server_restarted").map(|e| e.message.clone()).collect()
}

#[tokio::test]
async fn after_a_crash_a_connected_callee_hears_an_apology_and_a_ringing_phone_is_cancelled() {
    let db = TempDatabase::new("recovery-live");
    let server = TestServer::with(Setup { talk_time: None, raw: db.raw(), ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    let connected = place(&client, "+14155550123").await;
    let ringing = place(&client, "+14155550010").await;
    server.until_status(&connected, |s| s == CallStatus::InProgress).await;
    server.until_status(&ringing, |s| s == CallStatus::Ringing).await;
    client.cancel().await.unwrap();

    let server = server.crash_and_restart(async {}).await;
    // Both come back as they were left, and are asked after at Twilio.
    let mut apology = None;
    let mut cancelled = false;
    server
        .sim_until(|r| {
            match r {
                SimRequest::Redirected { call_sid, twiml } if call_sid == connected => apology = Some(twiml),
                SimRequest::Hangup { call_sid, status } if call_sid == ringing => cancelled = status == "canceled",
                _ => {}
            }
            (apology.is_some() && cancelled).then_some(())
        })
        .await;
    let apology = apology.unwrap();
    assert!(apology.contains("<Say>") && apology.contains("<Hangup/>"), "{apology}");

    let call = server.until_call(&connected, |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(restarted(&server, &connected).len(), 1, "{:?}", call.errors);
    let call = server.until_call(&ringing, |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Canceled);
    assert_eq!(restarted(&server, &ringing).len(), 1);

    // list-calls and the records agree: nothing is left open.
    let client = server.client(Era::Stateless).await;
    let listed = ok(&call_tool(&client, "list-calls", json!({})).await).clone();
    assert_eq!(listed["active"], 0);
    assert!(
        listed["calls"].as_array().unwrap().iter().all(|c| c["status"] != "in-progress" && c["status"] != "ringing")
    );
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_call_that_ended_while_the_server_was_down_ends_here_as_twilio_says() {
    let db = TempDatabase::new("recovery-ended");
    let server = TestServer::with(Setup { talk_time: None, raw: db.raw(), ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    let sid = place(&client, "+14155550123").await;
    server.until_status(&sid, |s| s == CallStatus::InProgress).await;
    client.cancel().await.unwrap();

    // While the server is down the callee hangs up; Twilio's `completed` callback finds nobody.
    let rest = format!("{}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json", server.sim.base_url());
    let server = server
        .crash_and_restart(async {
            let hung_up = reqwest::Client::new()
                .post(&rest)
                .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
                .form(&[("Status", "completed")])
                .send()
                .await
                .unwrap();
            assert!(hung_up.status().is_success());
        })
        .await;
    let call = server.until_call(&sid, |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert!(call.duration_secs.is_some(), "Twilio's duration is kept");
    assert!(restarted(&server, &sid).is_empty(), "Twilio knew how it ended: nothing to explain");
    // Nothing was done to a call that was already over.
    let seen = server.sim_drain();
    assert!(seen.iter().any(|r| matches!(r, SimRequest::Fetched { call_sid } if *call_sid == sid)), "{seen:?}");
    assert!(!seen.iter().any(|r| matches!(r, SimRequest::Redirected { .. })), "{seen:?}");
    server.stop().await;
}
