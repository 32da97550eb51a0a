//! A long call's transcript: every reader gets a bounded page, and paging walks the whole of it.
//!
//! A model can say anything, at any length: here one call gets 600 lines of 8 KiB (almost 5 MiB of
//! text). Before transcripts were paged, such a record was one `get-call` result of several MiB, past
//! the 1 MiB the official Python client accepts in one SSE event.

use crate::support::*;
use rmcp::model::ReadResourceRequestParams;
use serde_json::{Value, json};
use voice_call_mcp::calls::{MAX_LINE_BYTES, Speaker};

/// Past this, the official Python client refuses an SSE event.
const CLIENT_EVENT_LIMIT: usize = 1024 * 1024;
const LINES: usize = 600;

/// A live call (the simulated callee never hangs up) with a long, wordy transcript.
async fn long_call(server: &TestServer, client: &Client) -> String {
    let placed = call_tool(client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    server.until_status(&sid, |s| s == voice_call_mcp::calls::CallStatus::InProgress).await;
    let entry = server.state.calls.entry(&sid).unwrap();
    for n in 0..LINES {
        let speaker = if n % 2 == 0 { Speaker::Ai } else { Speaker::Human };
        // 8 KiB with quotes and a newline in it: escaping and scrubbing both have work to do.
        let text = format!("{n:04} \"{}\"\n{}", "a".repeat(4000), "b".repeat(4182));
        entry.append_line(speaker, &text).unwrap();
    }
    sid
}

fn size(v: &Value) -> usize {
    serde_json::to_string(v).unwrap().len()
}

fn line_number(line: &Value) -> usize {
    line["text"].as_str().unwrap()[..4].parse().unwrap()
}

#[tokio::test]
async fn get_call_on_a_long_call_answers_a_bounded_page_and_pages_through_all_of_it() {
    let server = TestServer::with(Setup { talk_time: None, ..Setup::default() }).await;
    for era in [Era::Stateless, Era::Session] {
        let client = server.client(era).await;
        let sid = long_call(&server, &client).await;

        let latest = ok(&call_tool(&client, "get-call", json!({"callSid": sid})).await).clone();
        assert!(size(&latest) < CLIENT_EVENT_LIMIT / 4, "get-call answered {} bytes", size(&latest));
        assert_eq!(latest["transcriptTotal"], LINES);
        let page = latest["transcript"].as_array().unwrap();
        assert!(!page.is_empty());
        assert_eq!(line_number(page.last().unwrap()), LINES - 1, "the default page ends with the latest line");
        assert_eq!(latest["transcriptFrom"].as_u64().unwrap() as usize + page.len(), LINES);
        for line in page {
            let text = line["text"].as_str().unwrap();
            assert!(text.len() <= MAX_LINE_BYTES && text.ends_with('…') && !text.contains('\n'), "{}", text.len());
        }

        // transcriptFrom walks the whole transcript in order: no line missed, none twice.
        let mut from = 0;
        let mut numbers = Vec::new();
        while from < LINES {
            let args = json!({"callSid": sid, "transcriptFrom": from, "limit": 500});
            let got = ok(&call_tool(&client, "get-call", args).await).clone();
            assert!(size(&got) < CLIENT_EVENT_LIMIT / 4, "a page of {} bytes", size(&got));
            assert_eq!(got["transcriptFrom"], from);
            let lines = got["transcript"].as_array().unwrap();
            assert!(!lines.is_empty(), "every page makes progress");
            numbers.extend(lines.iter().map(line_number));
            from += lines.len();
        }
        assert_eq!(numbers, (0..LINES).collect::<Vec<_>>());

        // The resource and wait-for-call are bounded the same way.
        let read = client.read_resource(ReadResourceRequestParams::new(format!("call://{sid}"))).await.unwrap();
        let text = match &read.contents[0] {
            rmcp::model::ResourceContents::TextResourceContents { text, .. } => text.clone(),
            other => panic!("{other:?}"),
        };
        assert!(text.len() < CLIENT_EVENT_LIMIT / 4, "call:// read was {} bytes", text.len());
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["transcriptTotal"], LINES);
        let waited = ok(&call_tool(&client, "wait-for-call", json!({"callSid": sid, "timeoutSecs": 0})).await).clone();
        assert!(size(&waited) < CLIENT_EVENT_LIMIT / 4);
        assert_eq!((waited["ended"].clone(), waited["transcriptTotal"].clone()), (json!(false), json!(LINES)));
        let listed = ok(&call_tool(&client, "list-calls", json!({})).await).clone();
        let summary = listed["calls"].as_array().unwrap().iter().find(|c| c["callSid"] == sid.as_str()).unwrap();
        assert_eq!(summary["transcriptLines"], LINES);

        ok(&call_tool(&client, "end-call", json!({"callSid": sid})).await);
        client.cancel().await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn a_long_transcript_comes_back_whole_after_a_restart() {
    let db = TempDatabase::new("transcript");
    let raw = || db.raw();

    let server = TestServer::with(Setup { talk_time: None, raw: raw(), ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    let sid = long_call(&server, &client).await;
    let before = server.transcript(&sid);
    ok(&call_tool(&client, "end-call", json!({"callSid": sid})).await);
    client.cancel().await.unwrap();
    server.stop().await;

    let server = TestServer::with(Setup { raw: raw(), ..Setup::default() }).await;
    assert_eq!(server.transcript(&sid), before, "every line, in order, as it was kept");
    server.stop().await;
}
