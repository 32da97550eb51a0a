//! `/mcp` as HTTP, the way clients other than rmcp's see it: the status that ends a session, and which
//! browser origins are served.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const VERSION: &str = "2025-11-25";

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": VERSION,
        "capabilities": {},
        "clientInfo": {"name": "http-test", "version": "1"}
    }})
}

/// A request to `/mcp` as a Streamable HTTP client sends it, with every scope's token.
fn request(server: &TestServer, method: reqwest::Method) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, format!("{}/mcp", server.base))
        .bearer_auth(server.token(ALL_SCOPES))
        .header("accept", "application/json, text/event-stream")
}

/// Opens a 2025-11-25 session (initialize, then the initialized notification) and returns its id.
async fn open_session(server: &TestServer) -> String {
    let opened = request(server, reqwest::Method::POST).json(&initialize()).send().await.unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
    let session = opened.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let initialized = request(server, reqwest::Method::POST)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", VERSION)
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert_eq!(initialized.status(), StatusCode::ACCEPTED, "a notification is still answered 202");
    session
}

#[tokio::test]
async fn ending_a_session_answers_204_and_the_session_is_gone() {
    let server = TestServer::start().await;
    let session = open_session(&server).await;
    let ended = request(&server, reqwest::Method::DELETE)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", VERSION)
        .send()
        .await
        .unwrap();
    // What the official Python client takes for success (200 or 204), and the TypeScript one (any 2xx).
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    assert_eq!(ended.bytes().await.unwrap().len(), 0);
    let after = request(&server, reqwest::Method::POST)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", VERSION)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::NOT_FOUND, "the session id is unknown now");
    server.stop().await;
}

#[tokio::test]
async fn a_loopback_server_serves_browser_clients_on_other_loopback_origins_and_no_others() {
    // PUBLIC_URL is http://127.0.0.1:PORT, as for a developer running the server and the MCP Inspector
    // (http://localhost:6274, in direct mode) side by side.
    let server = TestServer::start().await;
    assert!(server.base.starts_with("http://127.0.0.1:"));
    let from = |origin: &str| request(&server, reqwest::Method::POST).header("origin", origin);
    for origin in ["http://localhost:6274", "http://127.0.0.1:6274", "http://[::1]:6274", server.base.as_str()] {
        let opened = from(origin).json(&initialize()).send().await.unwrap();
        assert_eq!(opened.status(), StatusCode::OK, "{origin}");
        assert!(opened.headers().contains_key("mcp-session-id"), "{origin}");
    }
    for origin in ["https://evil.example", "null", "http://localhost.evil.example:6274"] {
        let refused = from(origin).json(&initialize()).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(refused.text().await.unwrap(), "requests from this Origin are not allowed\n", "the edge's refusal");
    }
    // And the Host rule is the edge's too, on /mcp as elsewhere.
    let rebinding = request(&server, reqwest::Method::POST).header("host", "evil.example").json(&initialize());
    assert_eq!(rebinding.send().await.unwrap().status(), StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn a_browser_client_on_a_loopback_origin_passes_the_preflight_and_reads_its_session() {
    let server = TestServer::start().await;
    let preflight = |origin: &str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{}/mcp", server.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type, mcp-protocol-version")
            .send()
    };
    // What a browser sends before the MCP Inspector's first POST: no token, and it must pass.
    let allowed = preflight("http://localhost:6274").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:6274");
    let allow_headers = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    for needed in ["authorization", "content-type", "mcp-protocol-version", "mcp-session-id"] {
        assert!(allow_headers.contains(needed), "{needed} in {allow_headers}");
    }
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("DELETE"));
    // The real request: its answer names the origin and lets the page read the session id.
    let opened = request(&server, reqwest::Method::POST).header("origin", "http://localhost:6274").json(&initialize());
    let opened = opened.send().await.unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
    assert_eq!(opened.headers()["access-control-allow-origin"], "http://localhost:6274");
    let exposed = opened.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("mcp-session-id") && exposed.contains("www-authenticate"), "{exposed}");
    // A foreign page gets nothing to go on.
    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(!refused.headers().contains_key("access-control-allow-origin"));
    server.stop().await;
}

#[tokio::test]
async fn a_wildcard_for_the_events_feed_does_not_open_mcp_to_every_page() {
    let raw = voice_call_mcp::RawConfig { sse_cors_origin: Some("*".into()), ..Default::default() };
    let server = TestServer::with(Setup { raw, ..Setup::default() }).await;
    let preflight = |path: &str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{}{path}", server.base))
            .header("origin", "https://dashboards.example")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let feed = preflight("/events").await.unwrap();
    assert_eq!(feed.headers()["access-control-allow-origin"], "*", "the feed is open to every page");
    let mcp = preflight("/mcp").await.unwrap();
    assert!(!mcp.headers().contains_key("access-control-allow-origin"), "{:?}", mcp.headers());
    server.stop().await;
}
