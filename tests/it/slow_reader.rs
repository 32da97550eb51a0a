//! An `/events` reader that stops reading: once it reads again and is more than the rule's 1,024 events
//! behind, it is told the id to resume from and disconnected, and resuming from that id loses nothing.

use crate::raw;
use crate::sse::Sse;
use crate::support::*;
use tokio::io::AsyncWriteExt;
use voice_call_mcp::events::{CallEvent, FOLLOWER_QUEUE};

/// Events with this much text fill the socket buffers in a few thousand.
const PAYLOAD: usize = 4_000;
/// Far more than the kernel's buffers (a few MiB on loopback) and the rule's 1,024 events together.
const PUBLISHED: usize = 4_000;

fn publish(server: &TestServer, text: &str) {
    server.state.events.publish(&CallEvent::Error {
        call_sid: "CA1".into(),
        error: text.to_owned(),
        code: "load".into(),
        timestamp: time::OffsetDateTime::now_utc(),
    });
}

/// `(ids of the events, comments)` of an SSE body, in order.
fn parse(body: &str) -> (Vec<u64>, Vec<String>) {
    let (mut ids, mut comments) = (Vec::new(), Vec::new());
    for line in body.lines() {
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.parse().expect("a numeric id"));
        } else if let Some(comment) = line.strip_prefix(": ") {
            comments.push(comment.to_owned());
        }
    }
    (ids, comments)
}

#[tokio::test]
async fn a_reader_that_stopped_reading_is_told_where_to_resume_and_loses_nothing() {
    let server = TestServer::start().await;
    let token = mint(&server.base, "dashboard", "events:read", None, 600);
    let first = server.state.events.last_id() + 1;
    // A small receive buffer: the server's writes block after a few KiB in flight, not megabytes.
    let (mut reader, mut write) = raw::split(raw::connect(&server.base, Some(4096), None).await);
    let host = server.base.trim_start_matches("http://");
    let request = format!("GET /events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n");
    write.write_all(request.as_bytes()).await.unwrap();
    reader.until(b"event: connected").await;

    // The reader stops reading. Each publish yields, so the stream writes all the connection takes
    // before its writes block and it is no longer asked for events; the rest pile up behind it.
    let text = "x".repeat(PAYLOAD);
    for _ in 0..PUBLISHED {
        publish(&server, &text);
        tokio::task::yield_now().await;
    }
    let newest = server.state.events.last_id();

    // Reading again (long before the 10 s write-stall limit): what was in flight, then the comment, then
    // a clean close.
    reader.until_closed().await.expect("the server closed the connection, not reset it");
    let body = String::from_utf8(reader.chunked_body()).unwrap();
    let (ids, comments) = parse(&body);
    let last = *ids.last().expect("some events arrived before the reader stopped");
    assert_eq!(ids, (first..=last).collect::<Vec<_>>(), "in order, none missing");
    assert!(newest - last > FOLLOWER_QUEUE as u64, "it was behind by {} only", newest - last);
    assert_eq!(
        comments.last().map(String::as_str),
        Some(format!("more than {FOLLOWER_QUEUE} events behind; reconnect with Last-Event-ID: {last}").as_str()),
        "the last thing written names the last id delivered; comments: {comments:?}"
    );
    assert!(body.ends_with(&format!("{last}\n\n")), "nothing after the comment");
    assert_eq!(server.state.sse_connections.open(), 0, "its place is given back");

    // Resuming from that id gets exactly what came after it.
    let resumed = reqwest::Client::new()
        .get(format!("{}/events", server.base))
        .bearer_auth(&token)
        .header("last-event-id", last.to_string());
    let mut sse = Sse::open(resumed).await;
    assert_eq!(sse.status, 200);
    let replayed: Vec<u64> = sse
        .until(|f| f.id == Some(newest.to_string()))
        .await
        .iter()
        .filter_map(|f| f.id.as_deref().map(|id| id.parse().unwrap()))
        .collect();
    assert_eq!(replayed, (last + 1..=newest).collect::<Vec<_>>());
    drop(sse);
    server.stop().await;
}

#[tokio::test]
async fn a_follower_caught_up_by_its_replay_is_not_taken_for_a_lagging_one() {
    let server = TestServer::start().await;
    let events = &server.state.events;
    let resume_after = events.last_id();
    // Subscribed now; then far more than the live channel holds is published before it reads anything,
    // so its live receiver lags. Its replay (from the recent ring) catches up on all of them.
    let mut follower = events.follow(Some(resume_after));
    for _ in 0..FOLLOWER_QUEUE * 2 {
        publish(&server, "caught up by replay");
    }
    let newest = events.last_id();
    for id in resume_after + 1..=newest {
        let next = tokio::time::timeout(WAIT, follower.next()).await.unwrap();
        assert_eq!(next.map(|e| e.id), Ok(id));
    }
    // Zero events behind: it goes on live instead of being cut off for what its receiver missed.
    publish(&server, "live");
    let live = tokio::time::timeout(WAIT, follower.next()).await.expect("the live event arrived");
    assert_eq!(live.map(|e| e.id), Ok(newest + 1));
    server.stop().await;
}
