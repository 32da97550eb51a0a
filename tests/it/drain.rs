//! SIGTERM on a server with a call in progress: new calls are refused, the call gets the drain timeout,
//! then its AI says goodbye and hangs up; the process exits 0 and every event is on disk.

use crate::cli::Sandbox;
use crate::sse::{Frame, Sse};
use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// The sandbox server's MCP client, with the token it printed.
async fn client(sandbox: &mut Sandbox) -> (Client, String, String) {
    let token = sandbox.token();
    let base = sandbox.mcp_url.trim_end_matches("/mcp").to_owned();
    let client = {
        use rmcp::service::ClientServiceExt;
        rmcp::model::ClientConfig::default()
            .serve_with_lifecycle(mcp_transport(&base, &token), lifecycle(Era::Stateless))
            .await
            .unwrap()
    };
    (client, token, base)
}

async fn events(base: &str, token: &str, query: &str) -> Sse {
    let sse = Sse::open(reqwest::Client::new().get(format!("{base}/events{query}")).bearer_auth(token)).await;
    assert_eq!(sse.status, 200);
    sse
}

fn is(frame: &Frame, kind: &str, sid: &str) -> bool {
    frame.event == kind && frame.json()["callSid"] == sid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_call_ends_it_politely_within_the_drain_timeout_and_loses_no_event() {
    let db = std::env::temp_dir().join(format!("voice-call-mcp-drain-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let database_url = format!("sqlite://{}", db.display());
    let drain = Duration::from_secs(1);
    let mut sandbox =
        Sandbox::start_with("info", &[("DRAIN_TIMEOUT_SECS", "1"), ("DATABASE_URL", database_url.as_str())]);
    let (client, token, base) = client(&mut sandbox).await;
    let mut feed = events(&base, &token, "").await;

    // A callee who never speaks: without a drain this call would last until its time limit.
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550007", "callContext": "drain"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    let mut seen = feed.until(|f| is(f, "transcription", &sid) && f.json()["speaker"] == "ai").await;

    let asked = Instant::now();
    sandbox.terminate();
    seen.extend(feed.until(|f| is(f, "call-ended", &sid)).await);
    let ended_after = asked.elapsed();
    // Then the feed ends, after everything published before the shutdown, telling the dashboard where to
    // resume.
    assert_eq!(feed.next().await, None, "the feed closed at shutdown");
    let last_id = seen.last().and_then(|f| f.id.clone()).unwrap();
    let resume = format!("server shutting down; reconnect with Last-Event-ID: {last_id}");
    assert!(feed.comments.lock().unwrap().contains(&resume), "{:?}", feed.comments.lock().unwrap());

    // Politely: the AI's last words are a goodbye, said after the drain timeout, and the call completed.
    let ai_lines: Vec<String> = seen
        .iter()
        .filter(|f| is(f, "transcription", &sid) && f.json()["speaker"] == "ai")
        .map(|f| f.json()["transcription"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(ai_lines.last().is_some_and(|l| l.contains("Goodbye")), "the AI said goodbye last: {ai_lines:?}");
    let ended = seen.last().unwrap().json();
    assert_eq!(ended["status"], "completed", "{ended}");
    assert!(ended_after >= drain, "the call had its drain timeout first ({ended_after:?})");
    assert!(ended_after < drain + Duration::from_secs(10), "ended within the drain and its goodbye ({ended_after:?})");

    let (code, lines) = sandbox.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("drain timeout: asking the AI to wrap up")), "{lines:#?}");

    // No event lost: the same database, served again, replays exactly what the live stream carried.
    let live: Vec<(Option<String>, String)> =
        seen.iter().filter(|f| f.event != "connected").map(|f| (f.id.clone(), f.data.clone())).collect();
    let mut again = Sandbox::start_with("warn", &[("DATABASE_URL", database_url.as_str())]);
    let token = again.token();
    let base = again.mcp_url.trim_end_matches("/mcp").to_owned();
    let mut replay = events(&base, &token, "?lastEventId=0").await;
    let replayed = replay.until(|f| is(f, "call-ended", &sid)).await;
    let replayed: Vec<(Option<String>, String)> =
        replayed.iter().filter(|f| f.event != "connected").map(|f| (f.id.clone(), f.data.clone())).collect();
    assert_eq!(replayed, live);
    drop(replay);
    let (code, _) = again.stop();
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_file(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_new_calls_are_refused_with_a_clear_message() {
    let mut sandbox = Sandbox::start_with("info", &[("DRAIN_TIMEOUT_SECS", "30")]);
    let (client, token, base) = client(&mut sandbox).await;
    let mut feed = events(&base, &token, "").await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550007", "callContext": "drain"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    feed.until(|f| is(f, "call-status", &sid) && f.json()["status"] == "in-progress").await;
    sandbox.terminate();
    sandbox.wait_for("shutting down: refusing new calls");
    let refused = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "late"})).await;
    assert!(error_text(&refused).contains("shutting down"), "{refused:?}");
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    // The call in progress is untouched by the refusal.
    let got = call_tool(&client, "get-call", json!({"callSid": sid})).await;
    assert_eq!(ok(&got)["status"], "in-progress");
    drop(sandbox);
}
