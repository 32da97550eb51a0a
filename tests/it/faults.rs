//! When a vendor has a bad moment: Twilio's REST API erring, throttling or not answering and then
//! recovering; the voice model refusing connections as a call starts. Real servers on loopback (the
//! simulators, told to fail), the real server's own retries and time-outs.

use crate::support::*;
use serde_json::json;
use std::time::Instant;
use voice_call_mcp::RawConfig;
use voice_call_mcp::calls::CallStatus;
use voice_call_mcp::sandbox::faults::Fault;
use voice_call_mcp::sandbox::twilio::SimRequest;

fn quick_twilio_timeout() -> Setup {
    let raw = RawConfig { twilio_timeout_secs: Some("1".into()), ..RawConfig::default() };
    Setup { talk_time: None, raw, ..Setup::default() }
}

/// Creates seen by the simulator so far (faulted ones included), and how many were faulted.
fn creates(seen: &[SimRequest]) -> (usize, usize) {
    let created = seen.iter().filter(|r| matches!(r, SimRequest::CreateCall { .. })).count();
    let faulted =
        seen.iter().filter(|r| matches!(r, SimRequest::Faulted { path, .. } if path.ends_with("/Calls.json"))).count();
    (created, faulted)
}

#[tokio::test]
async fn placing_a_call_is_retried_only_when_twilio_surely_did_nothing() {
    let server = TestServer::with(quick_twilio_timeout()).await;
    let client = server.client(Era::Stateless).await;
    let call = |to: &'static str| call_tool(&client, "trigger-call", json!({"toNumber": to, "callContext": "x"}));

    // A 500: Twilio may have created the call, so it is not placed again; the assistant is told why.
    server.sim.inject(1, Fault::Status(500));
    let refused = error_text(&call("+14155550123").await);
    assert!(refused.contains("20500") && refused.contains("HTTP 500"), "{refused}");
    assert_eq!(creates(&server.sim_drain()), (0, 1), "nothing dialed, no second try");

    // Throttled twice (429: refused before anything was done), then Twilio recovers: one call, placed.
    server.sim.inject(2, Fault::Status(429));
    let placed = call("+14155550123").await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    assert_eq!(creates(&server.sim_drain()), (1, 2), "tried three times, dialed once");
    server.until_status(&sid, |s| s == CallStatus::InProgress).await;

    // Twilio creates the call but its answer is lost: a time-out, never a second dial.
    server.sim.inject(1, Fault::HangAfter);
    let started = Instant::now();
    let lost = error_text(&call("+14155550124").await);
    assert!(lost.contains("did not answer within 1 s") && lost.contains("may still have been placed"), "{lost}");
    assert!(started.elapsed() < WAIT / 4, "bounded by TWILIO_TIMEOUT_SECS: {:?}", started.elapsed());
    assert_eq!(creates(&server.sim_drain()), (1, 1), "created once (its answer lost), not tried again");

    // Hanging up repeats harmlessly: a 503 and a request never answered are both tried again.
    server.sim.inject(1, Fault::Status(503));
    server.sim.inject(1, Fault::Hang);
    let ended = ok(&call_tool(&client, "end-call", json!({"callSid": sid})).await).clone();
    assert_eq!(ended["status"], "completed", "{ended}");
    let seen = server.sim_drain();
    assert_eq!(seen.iter().filter(|r| matches!(r, SimRequest::Faulted { .. })).count(), 2);
    assert_eq!(seen.iter().filter(|r| matches!(r, SimRequest::Hangup { call_sid, .. } if *call_sid == sid)).count(), 1);

    // And after all that, calls go through as usual.
    let again = call("+14155550125").await;
    let next = ok(&again)["callSid"].as_str().unwrap().to_owned();
    server.until_status(&next, |s| s == CallStatus::InProgress).await;
    ok(&call_tool(&client, "end-call", json!({"callSid": next})).await);
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_voice_model_that_refuses_the_call_gets_the_callee_an_apology_not_silence() {
    let setup = || Setup { talk_time: None, media: true, ..Setup::default() };
    for fault in [Fault::Status(429), Fault::Status(503)] {
        let server = TestServer::with(setup()).await;
        let client = server.client(Era::Stateless).await;
        // Refused while the phone rings, and again when the callee answers.
        server.realtime.inject(2, fault);
        let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
        let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
        let answered = server
            .sim_until(|r| {
                matches!(&r, SimRequest::MediaStarted { call_sid, .. } if *call_sid == sid).then(Instant::now)
            })
            .await;
        let twiml = server
            .sim_until(|r| match r {
                SimRequest::Played { call_sid, .. } if call_sid == sid => panic!("the AI spoke without a voice model"),
                SimRequest::Redirected { call_sid, twiml } if call_sid == sid => Some(twiml),
                _ => None,
            })
            .await;
        assert!(twiml.contains("<Say>") && twiml.contains("<Hangup/>"), "{fault:?}: {twiml}");
        assert!(answered.elapsed() < WAIT / 4, "{fault:?}: the apology came {:?} after the answer", answered.elapsed());
        let call = server.until_call(&sid, |c| c.status.is_terminal()).await;
        assert!(call.errors.iter().any(|e| e.code == "voice_unavailable"), "{fault:?}: {:?}", call.errors);
        client.cancel().await.unwrap();
        server.stop().await;
    }

    // Refused only while ringing: the bridge opens the session when the callee answers, and the call
    // goes on as if nothing happened.
    let server = TestServer::with(setup()).await;
    let client = server.client(Era::Stateless).await;
    server.realtime.inject(1, Fault::Status(503));
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    let transcript = server.until_transcript(&sid, |t| t.iter().any(|l| l.text.contains("Okay, goodbye"))).await;
    assert!(transcript.len() >= 3, "{transcript:?}");
    let call = server.until_call(&sid, |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert!(call.errors.is_empty(), "{:?}", call.errors);
    client.cancel().await.unwrap();
    server.stop().await;
}

/// A small filesystem of the test's own (a tmpfs), unmounted when dropped. Mounting needs root, as the
/// development machines and CI run.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(name: &str, size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vcm-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "mounting a {size} tmpfs at {} needs root", dir.display());
        Self { dir }
    }

    /// Fills what is left of the disk; the filler's path, to give the space back.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        while file.write_all(&block[..512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn rows_lost(server: &TestServer) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("voice_call_store_rows_lost_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_full_disk_loses_saved_history_not_calls_and_the_server_recovers_when_space_returns() {
    let disk = SmallDisk::mount("disk-full", "4m");
    let raw = || RawConfig {
        database_url: Some(format!("sqlite://{}/calls.db", disk.dir.display())),
        ..RawConfig::default()
    };
    let setup = || Setup { media: true, talk_time: None, raw: raw(), ..Setup::default() };
    let server = TestServer::with(setup()).await;
    let client = server.client(Era::Stateless).await;
    let call = |to: &'static str| call_tool(&client, "trigger-call", json!({"toNumber": to, "callContext": "x"}));
    let converse = |sid: String| {
        let server = &server;
        async move {
            let call = server.until_call(&sid, |c| c.status.is_terminal()).await;
            assert_eq!(call.status, CallStatus::Completed);
            assert_eq!(server.transcript(&sid).len(), 5, "the whole conversation");
            sid
        }
    };
    let before = converse(ok(&call("+14155550123").await)["callSid"].as_str().unwrap().to_owned()).await;
    server.state.store.flush().await;
    let lost_before = rows_lost(&server).await;

    // The disk fills up. A call placed now still converses to its end, live on /events.
    let filler = disk.fill();
    let request =
        reqwest::Client::new().get(format!("{}/events", server.base)).bearer_auth(server.token("events:read"));
    let mut feed = crate::sse::Sse::open(request).await;
    assert_eq!(feed.status, 200);
    let during = ok(&call("+14155550123").await)["callSid"].as_str().unwrap().to_owned();
    let during = converse(during).await;
    let ended = feed.until(|f| f.event == "call-ended" && f.data.contains(&during)).await;
    assert!(ended.iter().any(|f| f.event == "transcription"), "the feed carried the conversation");
    server.state.store.flush().await;
    let lost = rows_lost(&server).await;
    assert!(lost > lost_before, "what could not be saved is counted on /metrics ({lost_before} → {lost})");

    // Space comes back: what happens from now on is saved again, with no restart.
    std::fs::remove_file(filler).unwrap();
    let after = converse(ok(&call("+14155550123").await)["callSid"].as_str().unwrap().to_owned()).await;
    server.state.store.flush().await;
    client.cancel().await.unwrap();
    server.stop().await;

    let server = TestServer::with(setup()).await;
    for sid in [&before, &after] {
        let call = server.state.calls.get(sid).expect("saved before the disk filled, or after it emptied");
        assert_eq!(call.status, CallStatus::Completed);
        assert_eq!(server.transcript(sid).len(), 5, "{sid}'s transcript was saved");
    }
    server.stop().await;
}
