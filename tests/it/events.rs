//! Everything that happens on a call reaches whoever follows it: `/events` subscribers (with replay)
//! and the MCP session that placed the call, long after the tool returned.

use crate::sse::{Frame, Heard, Sse, listening_client, listening_stateless_client};
use crate::support::*;
use serde_json::json;
use voice_call_mcp::RawConfig;
use voice_call_mcp::events::CallEvent;

fn events_url(server: &TestServer, query: &str) -> String {
    format!("{}/events{query}", server.base)
}

async fn subscribe(server: &TestServer, query: &str, token: &str) -> Sse {
    let request = reqwest::Client::new().get(events_url(server, query)).bearer_auth(token);
    let sse = Sse::open(request).await;
    assert_eq!(sse.status, 200);
    sse
}

fn kinds(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f.event.as_str() {
            "call-status" => format!("call-status {}", f.json()["status"].as_str().unwrap_or("?")),
            "transcription" => format!("transcription {}", f.json()["speaker"].as_str().unwrap_or("?")),
            other => other.to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn a_call_is_followed_live_on_events_and_by_the_mcp_session_that_placed_it() {
    let server = TestServer::with(Setup { talk_time: None, media: true, ..Setup::default() }).await;
    let mut feed = subscribe(&server, "", &mint(&server.base, "dashboard", "events:read", None, 600)).await;
    assert_eq!(feed.headers["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(feed.headers["cache-control"], "no-store");
    assert_eq!(feed.headers["x-accel-buffering"], "no");
    let hello = feed.next().await.unwrap();
    assert_eq!(hello.event, "connected");
    assert!(hello.json()["clientId"].is_string() && hello.id.is_none());
    assert!(feed.comments.lock().unwrap().iter().any(|c| c == "voice-call-mcp events"), "an initial comment");

    let (client, mut heard) = listening_client(&server.base).await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();

    let frames = feed.until(|f| f.event == "call-ended").await;
    let seen = kinds(&frames);
    assert_eq!(seen.first().map(String::as_str), Some("call-status queued"));
    assert!(seen.contains(&"call-status in-progress".to_owned()));
    assert!(seen.contains(&"transcription ai".to_owned()) && seen.contains(&"transcription human".to_owned()));
    let statuses: Vec<_> = seen.iter().filter(|k| k.starts_with("call-status")).collect();
    assert_eq!(statuses.last().map(|s| s.as_str()), Some("call-status completed"), "{seen:?}");
    let ended = frames.last().unwrap().json();
    assert_eq!(ended["callSid"], sid.as_str());
    assert!(ended["duration"].is_u64());
    // Ids increase; every event is about this call.
    let ids: Vec<u64> = frames.iter().map(|f| f.id.as_ref().unwrap().parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(frames.iter().all(|f| f.json()["callSid"] == sid.as_str()));

    // The session that placed the call heard the same events, after the tool had returned.
    let mut logged = Vec::new();
    let mut updated = 0;
    while logged.last().map(|e: &serde_json::Value| e["type"] != "call-ended").unwrap_or(true) {
        match tokio::time::timeout(WAIT, heard.recv()).await.unwrap().unwrap() {
            Heard::Log(data) => logged.push(data),
            Heard::Updated(uri) => {
                assert_eq!(uri, format!("call://{sid}"));
                updated += 1;
            }
            Heard::Progress(_) => {}
        }
    }
    let sse_data: Vec<serde_json::Value> = frames.iter().map(Frame::json).collect();
    assert_eq!(logged, sse_data, "the session got exactly the feed's events, in order");
    assert!(updated >= logged.len() - 1, "a resources/updated per event");
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_reconnecting_subscriber_gets_exactly_what_it_missed() {
    let server = TestServer::start().await;
    let token = mint(&server.base, "dashboard", "events:read", None, 600);
    let mut whole = subscribe(&server, "", &token).await;
    whole.next().await; // connected
    let mut first = subscribe(&server, "", &token).await;
    first.next().await;

    let publish = |n: usize| {
        for i in 0..n {
            server.state.events.publish(&CallEvent::Dtmf {
                call_sid: "CA1".into(),
                digit: (i % 10).to_string(),
                timestamp: time::OffsetDateTime::now_utc(),
            });
        }
    };
    publish(5);
    let got = first.until(|_| true).await;
    let last_seen = got[0].id.clone().unwrap();
    drop(first); // disconnected after one event
    publish(5);
    let everything = {
        let mut all = Vec::new();
        for _ in 0..10 {
            all.push(whole.next().await.unwrap());
        }
        all
    };
    // Resume with the header, as EventSource does, and with the query parameter, as a first connect may.
    let mut by_header = Sse::open(
        reqwest::Client::new().get(events_url(&server, "")).bearer_auth(&token).header("Last-Event-ID", &last_seen),
    )
    .await;
    let mut by_query = subscribe(&server, &format!("?lastEventId={last_seen}"), &token).await;
    for resumed in [&mut by_header, &mut by_query] {
        assert_eq!(resumed.next().await.unwrap().event, "connected");
        let mut replayed = Vec::new();
        for _ in 0..9 {
            replayed.push(resumed.next().await.unwrap());
        }
        assert_eq!(replayed, everything[1..], "the missed events, in order, no gap, no duplicate");
    }
    // After the replay, both continue live from the very next event.
    publish(1);
    let next_id = everything[9].id.as_ref().unwrap().parse::<u64>().unwrap() + 1;
    for resumed in [&mut by_header, &mut by_query] {
        assert_eq!(resumed.next().await.unwrap().id, Some(next_id.to_string()));
    }
    server.stop().await;
}

#[tokio::test]
async fn history_and_replay_survive_a_restart_on_the_same_database() {
    let db = TempDatabase::new("restart");
    let raw = || db.raw();

    let server = TestServer::with(Setup { media: true, talk_time: None, raw: raw(), ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    server.until_call(&sid, |c| c.status.is_terminal()).await;
    let said = server.transcript(&sid).len();
    assert!(said > 0, "the call had a conversation");
    let mut feed =
        subscribe(&server, "?lastEventId=0", &mint(&server.base, "dashboard", "events:read", None, 600)).await;
    let before = feed.until(|f| f.event == "call-ended").await;
    client.cancel().await.unwrap();
    server.stop().await;

    let server = TestServer::with(Setup { raw: raw(), ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    let record = ok(&call_tool(&client, "get-call", json!({"callSid": sid})).await).clone();
    assert_eq!(record["status"], "completed");
    assert_eq!(record["transcript"].as_array().unwrap().len(), said, "the transcript came back with the call");
    assert_eq!(record["transcriptTotal"], said);
    let resume_from = before[2].id.clone().unwrap();
    let mut feed = subscribe(
        &server,
        &format!("?lastEventId={resume_from}"),
        &mint(&server.base, "dashboard", "events:read", None, 600),
    )
    .await;
    let after = feed.until(|f| f.event == "call-ended").await;
    assert_eq!(after[1..], before[3..], "replayed from the file, exactly");
    // New events continue the numbering.
    let id = server.state.events.publish(&CallEvent::Dtmf {
        call_sid: "CA9".into(),
        digit: "1".into(),
        timestamp: time::OffsetDateTime::now_utc(),
    });
    assert!(id > before.last().unwrap().id.as_ref().unwrap().parse::<u64>().unwrap());
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn subscribers_see_exactly_what_their_filters_and_tokens_allow() {
    let server = TestServer::start().await;
    let all = mint(&server.base, "dashboard", "events:read", None, 600);
    let only_two = mint(&server.base, "dashboard", "events:read", Some(vec!["CA2".into()]), 600);
    let mut everything = subscribe(&server, "", &all).await;
    let mut one_call = subscribe(&server, "?callSid=CA1", &all).await;
    let mut two_calls_dtmf = subscribe(&server, "?callSid=CA1&callSid=CA3&types=dtmf", &all).await;
    let mut claim_limited = subscribe(&server, "", &only_two).await;
    let mut claim_and_filter = subscribe(&server, "?callSid=CA1", &only_two).await;
    for s in [&mut everything, &mut one_call, &mut two_calls_dtmf, &mut claim_limited, &mut claim_and_filter] {
        assert_eq!(s.next().await.unwrap().event, "connected");
    }
    let now = time::OffsetDateTime::now_utc;
    for sid in ["CA1", "CA2", "CA3"] {
        server.state.events.publish(&CallEvent::Dtmf { call_sid: sid.into(), digit: "5".into(), timestamp: now() });
        server.state.events.publish(&CallEvent::Error {
            call_sid: sid.into(),
            error: "x".into(),
            code: "y".into(),
            timestamp: now(),
        });
    }
    // A marker event every subscriber may see tells us they have all caught up.
    server.state.events.publish(&CallEvent::Dtmf { call_sid: "CA1".into(), digit: "#".into(), timestamp: now() });
    server.state.events.publish(&CallEvent::Dtmf { call_sid: "CA2".into(), digit: "#".into(), timestamp: now() });
    let got = |frames: Vec<Frame>| -> Vec<(String, String)> {
        frames.iter().map(|f| (f.json()["callSid"].as_str().unwrap().to_owned(), f.event.clone())).collect()
    };
    let pair = |s: &str, e: &str| (s.to_owned(), e.to_owned());
    let is_marker = |sid: &'static str| move |f: &Frame| f.json()["digit"] == "#" && f.json()["callSid"] == sid;
    assert_eq!(got(everything.until(is_marker("CA2")).await).len(), 8);
    assert_eq!(
        got(one_call.until(is_marker("CA1")).await),
        [pair("CA1", "dtmf"), pair("CA1", "error"), pair("CA1", "dtmf")]
    );
    assert_eq!(
        got(two_calls_dtmf.until(is_marker("CA1")).await),
        [pair("CA1", "dtmf"), pair("CA3", "dtmf"), pair("CA1", "dtmf")]
    );
    assert_eq!(
        got(claim_limited.until(is_marker("CA2")).await),
        [pair("CA2", "dtmf"), pair("CA2", "error"), pair("CA2", "dtmf")]
    );
    // Asking for a call the token may not see yields nothing of it.
    server.state.events.publish(&CallEvent::Dtmf { call_sid: "CA1".into(), digit: "0".into(), timestamp: now() });
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), claim_and_filter.next()).await.is_err(),
        "a token limited to CA2 sees nothing of CA1"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_off_while_the_others_keep_up() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let token = mint(&server.base, "dashboard", "events:read", None, 600);
    // A client that sends its request and then never reads a byte.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut healthy = subscribe(&server, "", &token).await;
    healthy.next().await;
    let before = server.state.sse_connections.open();
    assert_eq!(before, 2);

    // Far more than a follower's queue, with big payloads to fill the socket buffers.
    let big = "x".repeat(4_000);
    let total = voice_call_mcp::events::FOLLOWER_QUEUE * 3;
    for _ in 0..total {
        server.state.events.publish(&CallEvent::Error {
            call_sid: "CA1".into(),
            error: big.clone(),
            code: "load".into(),
            timestamp: time::OffsetDateTime::now_utc(),
        });
        // Give the healthy reader's connection a chance to keep pace, as a real publisher's rate would.
        if server.state.events.last_id() % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut received = 0;
    while let Some(f) = healthy.next().await {
        if f.event == "error" {
            received += 1;
        }
        if received == total {
            break;
        }
    }
    assert_eq!(received, total, "the healthy subscriber got every event");
    // The stalled one was disconnected (its slot given back), not buffered forever.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.state.sse_connections.open() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "the stalled subscriber was never cut off");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn the_feed_refuses_bad_tokens_with_the_right_status_and_accepts_the_three_carriers() {
    let server = TestServer::start().await;
    let url = events_url(&server, "");
    let http = reqwest::Client::new();
    let no_token = http.get(&url).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert!(no_token.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let garbage = http.get(&url).bearer_auth("not.a.jwt").send().await.unwrap();
    assert_eq!(garbage.status(), 401);
    let wrong_scope =
        http.get(&url).bearer_auth(mint(&server.base, "dashboard", "calls:read", None, 600)).send().await.unwrap();
    assert_eq!(wrong_scope.status(), 403);
    assert!(wrong_scope.headers()["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));

    let good = mint(&server.base, "dashboard", "events:read", None, 600);
    let by_header = Sse::open(http.get(&url).bearer_auth(&good)).await;
    let by_cookie = Sse::open(http.get(&url).header("cookie", format!("access_token={good}"))).await;
    let by_query = Sse::open(http.get(format!("{url}?access_token={good}"))).await;
    assert_eq!((by_header.status, by_cookie.status, by_query.status), (200, 200, 200));
    let bad_resume = http.get(format!("{url}?lastEventId=abc")).bearer_auth(&good).send().await.unwrap();
    assert_eq!(bad_resume.status(), 400);
    let bad_type = http.get(format!("{url}?types=gossip")).bearer_auth(&good).send().await.unwrap();
    assert_eq!(bad_type.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn open_streams_are_capped_in_total_and_per_subject() {
    let raw = RawConfig {
        sse_max_connections: Some("3".into()),
        sse_max_connections_per_subject: Some("2".into()),
        ..RawConfig::default()
    };
    let server = TestServer::with(Setup { raw, ..Setup::default() }).await;
    let url = events_url(&server, "");
    let http = reqwest::Client::new();
    let a1 = Sse::open(http.get(&url).bearer_auth(mint(&server.base, "alice", "events:read", None, 600))).await;
    let a2 = Sse::open(http.get(&url).bearer_auth(mint(&server.base, "alice", "events:read", None, 600))).await;
    assert_eq!((a1.status, a2.status), (200, 200));
    let a3 = http.get(&url).bearer_auth(mint(&server.base, "alice", "events:read", None, 600)).send().await.unwrap();
    assert_eq!(a3.status(), 429, "a third stream for one subject");
    assert!(a3.headers().contains_key("retry-after"));
    let b1 = Sse::open(http.get(&url).bearer_auth(mint(&server.base, "bob", "events:read", None, 600))).await;
    assert_eq!(b1.status, 200);
    let b2 = http.get(&url).bearer_auth(mint(&server.base, "bob", "events:read", None, 600)).send().await.unwrap();
    assert_eq!(b2.status(), 503, "a fourth stream in total");
    assert!(b2.headers().contains_key("retry-after"));
    // A closed stream gives its place back.
    drop(a1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.state.sse_connections.open() > 2 {
        assert!(tokio::time::Instant::now() < deadline, "the closed stream's place was never given back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let again = Sse::open(http.get(&url).bearer_auth(mint(&server.base, "alice", "events:read", None, 600))).await;
    assert_eq!(again.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_stream_closes_when_its_token_expires() {
    let server = TestServer::start().await;
    // `exp` has whole-second precision, so a one-second token can be expired before it is used:
    // three seconds leaves at least two of life for the connect.
    let short_lived = mint(&server.base, "short-lived", "events:read", None, 3);
    let mut feed = subscribe(&server, "", &short_lived).await;
    assert_eq!(feed.next().await.unwrap().event, "connected");
    assert_eq!(feed.next().await, None, "the stream ended at the token's expiry");
    assert!(feed.comments.lock().unwrap().iter().any(|c| c.contains("token expired")));
    // Reconnecting with it is refused, though validation would still allow it some leeway: a stream
    // that would end at once would only have EventSource reconnect in a loop.
    let again = reqwest::Client::new().get(events_url(&server, "")).bearer_auth(&short_lived).send().await.unwrap();
    assert_eq!(again.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn a_quiet_stream_gets_heartbeats_until_its_token_expires() {
    // Heartbeats keep proxies from closing a quiet stream; they share one timer with the token's expiry.
    let raw = RawConfig { sse_heartbeat_interval: Some("300".into()), ..RawConfig::default() };
    let server = TestServer::with(Setup { raw, ..Setup::default() }).await;
    let token = mint(&server.base, "quiet", "events:read", None, 3);
    let mut feed = subscribe(&server, "", &token).await;
    assert_eq!(feed.next().await.unwrap().event, "connected");
    assert_eq!(feed.next().await, None, "the stream ended at the token's expiry");
    let comments = feed.comments.lock().unwrap().clone();
    let heartbeats = comments.iter().filter(|c| c.contains("heartbeat")).count();
    // At least two seconds of life at 300 ms: six or so (four leaves room for a loaded machine), and
    // none after the closing comment.
    assert!(heartbeats >= 4, "{comments:?}");
    assert!(comments.last().is_some_and(|c| c.contains("token expired")), "{comments:?}");
    server.stop().await;
}

#[tokio::test]
async fn resuming_from_before_retention_says_so() {
    let dir = std::env::temp_dir().join(format!("vcm-retention-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let url = format!("sqlite://{}/events.db", dir.display());
    let raw = |count: &str| RawConfig {
        database_url: Some(url.clone()),
        event_retention_count: Some(count.into()),
        ..RawConfig::default()
    };
    let server = TestServer::with(Setup { raw: raw("1000"), ..Setup::default() }).await;
    for i in 0..20 {
        server.state.events.publish(&CallEvent::Dtmf {
            call_sid: "CA1".into(),
            digit: (i % 10).to_string(),
            timestamp: time::OffsetDateTime::now_utc(),
        });
    }
    server.stop().await;
    // Restarted keeping only the newest 5 events.
    let server = TestServer::with(Setup { raw: raw("5"), ..Setup::default() }).await;
    let mut feed = Sse::open(
        reqwest::Client::new()
            .get(events_url(&server, ""))
            .bearer_auth(mint(&server.base, "dashboard", "events:read", None, 600))
            .header("Last-Event-ID", "2"),
    )
    .await;
    assert_eq!(feed.headers["x-replay-truncated"], "true");
    assert_eq!(feed.next().await.unwrap().event, "connected");
    let note = feed.next().await.unwrap();
    assert_eq!(note.event, "replay-truncated");
    assert_eq!(note.json()["lastEventId"], "2");
    assert_eq!(note.json()["oldestRetainedId"], "16");
    let mut replayed = Vec::new();
    for _ in 0..5 {
        replayed.push(feed.next().await.unwrap().id.unwrap());
    }
    assert_eq!(replayed, ["16", "17", "18", "19", "20"]);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[allow(deprecated)] // resources/subscribe is how 2025-11-25 sessions follow a resource
async fn a_session_that_subscribes_to_a_call_hears_its_events() {
    let server = TestServer::with(Setup { talk_time: None, media: true, ..Setup::default() }).await;
    let placer = server.client(Era::Stateless).await;
    let placed = call_tool(&placer, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    let (watcher, mut heard) = listening_client(&server.base).await;
    watcher.subscribe(rmcp::model::SubscribeRequestParams::new(format!("call://{sid}"))).await.unwrap();
    let mut kinds = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, heard.recv()).await.unwrap().unwrap() {
            Heard::Log(data) => {
                assert_eq!(data["callSid"], sid.as_str());
                kinds.push(data["type"].as_str().unwrap().to_owned());
                if data["type"] == "call-ended" {
                    break;
                }
            }
            Heard::Updated(uri) => assert_eq!(uri, format!("call://{sid}")),
            Heard::Progress(_) => {}
        }
    }
    assert!(kinds.iter().any(|k| k == "transcription"), "{kinds:?}");
    let unknown = watcher.subscribe(rmcp::model::SubscribeRequestParams::new("call://CAnope")).await;
    assert!(unknown.is_err(), "subscribing to an unknown call is an error");
    watcher.cancel().await.unwrap();
    placer.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_stateless_client_waiting_for_a_call_gets_progress_then_the_outcome() {
    let server = TestServer::with(Setup { talk_time: None, media: true, ..Setup::default() }).await;
    let (client, mut heard) = listening_stateless_client(&server.base).await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    let done = call_tool(&client, "wait-for-call", json!({"callSid": sid})).await;
    let done = ok(&done);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["transcript"].as_array().unwrap().len(), 5);
    // While it blocked, the call's progress streamed on the request's own response.
    let mut progress = Vec::new();
    while let Ok(h) = heard.try_recv() {
        if let Heard::Progress(message) = h {
            progress.push(message);
        }
    }
    assert!(progress.iter().any(|m| m.starts_with("call ")), "status changes: {progress:?}");
    assert!(progress.iter().any(|m| m.starts_with("human: ")), "the callee's words: {progress:?}");
    assert!(progress.iter().any(|m| m.starts_with("ai: ")), "the AI's words: {progress:?}");
    client.cancel().await.unwrap();
    server.stop().await;
}
