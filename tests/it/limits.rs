//! Abuse limits on a public host: rate limits per address and per subject (never starving Twilio),
//! the hourly call quota, numbers no AI should ring, Host/Origin checks, and bounded bodies.

use crate::raw;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use voice_call_mcp::RawConfig;
use voice_call_mcp::calls::CallStatus;
use voice_call_mcp::sandbox::twilio::SimRequest;

/// A stateless (2026-07-28) `tools/list`, with the `_meta` that revision requires on every request.
fn list_tools() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    }}})
}

async fn post(server: &TestServer, token: &str, forwarded_for: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/mcp", server.base))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .json(body);
    if let Some(ip) = forwarded_for {
        request = request.header("x-forwarded-for", ip);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_flood_gets_429_while_another_subject_and_twilio_keep_working() {
    let raw = RawConfig {
        rate_limit_mcp: Some("5".into()),
        trust_forwarded_for: Some("true".into()),
        ..RawConfig::default()
    };
    let server = TestServer::with(Setup { raw, ..Setup::default() }).await;
    let flooder = mint(&server.base, "flooder", ALL_SCOPES, None, 600);

    // From this host's own address (which Twilio's callbacks also come from, here): five pass, then 429.
    for i in 0..5 {
        assert_eq!(post(&server, &flooder, None, &list_tools()).await.status(), StatusCode::OK, "request {i}");
    }
    let refused = post(&server, &flooder, None, &list_tools()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The same subject from another address is still over its own limit.
    let elsewhere = post(&server, &flooder, Some("203.0.113.3"), &list_tools()).await;
    assert_eq!(elsewhere.status(), StatusCode::TOO_MANY_REQUESTS);

    // Another subject from another address places a call, and Twilio's callbacks (from the flooded
    // address) are all answered: the call completes.
    let other = mint(&server.base, "someone-else", ALL_SCOPES, None, 600);
    let headers =
        [(axum::http::HeaderName::from_static("x-forwarded-for"), axum::http::HeaderValue::from_static("203.0.113.2"))]
            .into_iter()
            .collect();
    let config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(format!(
        "{}/mcp",
        server.base
    ))
    .auth_header(other)
    .custom_headers(headers);
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(config);
    let client: Client = {
        use rmcp::service::ClientServiceExt;
        rmcp::model::ClientConfig::default().serve_with_lifecycle(transport, lifecycle(Era::Stateless)).await.unwrap()
    };
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "t"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    // Every callback up to and including `completed`, as the simulated Twilio saw it answered.
    let mut callbacks = Vec::new();
    loop {
        if let SimRequest::CallbackResult { http_status, status, .. } = server.next_sim().await {
            callbacks.push(http_status);
            if status == "completed" {
                break;
            }
        }
    }
    server.until_status(&sid, |s| s == CallStatus::Completed).await;
    assert!(callbacks.len() >= 3, "{callbacks:?}");
    assert!(callbacks.iter().all(|&s| s == 200), "every Twilio callback answered 200: {callbacks:?}");
    server.stop().await;
}

#[tokio::test]
async fn each_caller_places_at_most_calls_per_hour_and_refusals_cost_nothing() {
    let raw = RawConfig { calls_per_hour: Some("2".into()), ..RawConfig::default() };
    let server = TestServer::with(Setup { raw, ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    let refused = call_tool(&client, "trigger-call", json!({"toNumber": "415-555", "callContext": "t"})).await;
    error_text(&refused);
    for _ in 0..2 {
        ok(&call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "t"})).await);
    }
    let over = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "t"})).await;
    let text = error_text(&over);
    assert!(text.contains("CALLS_PER_HOUR") && text.contains("2 calls"), "{text}");
    let dialed = server.sim_drain().into_iter().filter(|r| matches!(r, SimRequest::CreateCall { .. })).count();
    assert_eq!(dialed, 2);
    // Another caller has its own quota.
    let other = server.client_with(Era::Stateless, &mint(&server.base, "other", ALL_SCOPES, None, 600)).await;
    ok(&call_tool(&other, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "t"})).await);
    server.stop().await;
}

#[tokio::test]
async fn emergency_short_and_premium_numbers_are_refused_with_the_reason() {
    let server = TestServer::start().await;
    let client = server.client(Era::Stateless).await;
    for (to, reason) in [
        ("911", "emergency"),
        ("+44 999", "emergency"),
        ("112", "emergency"),
        ("+12345", "short code"),
        ("+19005550100", "premium-rate"),
        ("+449098765432", "premium-rate"),
    ] {
        let refused = call_tool(&client, "trigger-call", json!({"toNumber": to, "callContext": "t"})).await;
        let text = error_text(&refused);
        assert!(text.contains(reason), "{to}: {text}");
    }
    assert!(server.sim_drain().is_empty(), "nothing was dialed");
    server.stop().await;

    // The operator may allow one premium range explicitly; emergency numbers stay refused.
    let raw = RawConfig { allowed_destinations: Some("+1900555,+1".into()), ..RawConfig::default() };
    let server = TestServer::with(Setup { raw, ..Setup::default() }).await;
    let client = server.client(Era::Stateless).await;
    ok(&call_tool(&client, "trigger-call", json!({"toNumber": "+19005550100", "callContext": "t"})).await);
    let still = call_tool(&client, "trigger-call", json!({"toNumber": "+1911", "callContext": "t"})).await;
    assert!(error_text(&still).contains("emergency"));
    server.stop().await;
}

#[tokio::test]
async fn a_foreign_host_or_origin_is_refused_but_health_probes_are_not() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let token = server.token(ALL_SCOPES);
    let events = format!("{}/events", server.base);
    let rebinding = http.get(&events).bearer_auth(&token).header("host", "evil.example.net").send().await.unwrap();
    assert_eq!(rebinding.status(), StatusCode::FORBIDDEN);
    let cross_site = http.get(&events).bearer_auth(&token).header("origin", "https://evil.example.net").send().await;
    assert_eq!(cross_site.unwrap().status(), StatusCode::FORBIDDEN);
    let mcp_cross_site = http
        .post(format!("{}/mcp", server.base))
        .bearer_auth(&token)
        .header("origin", "https://evil.example.net")
        .json(&list_tools())
        .send()
        .await
        .unwrap();
    assert_eq!(mcp_cross_site.status(), StatusCode::FORBIDDEN);
    let metadata = http
        .get(format!("{}/.well-known/oauth-protected-resource", server.base))
        .header("host", "evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), StatusCode::FORBIDDEN);
    // Kubernetes probes send the pod IP as Host.
    let probe = http.get(format!("{}/healthz", server.base)).header("host", "10.1.2.3:8080").send().await.unwrap();
    assert_eq!(probe.status(), StatusCode::OK);
    // This server's own origin passes the edge (and meets the token check).
    let same_site = http.get(&events).header("origin", server.base.clone()).send().await.unwrap();
    assert_eq!(same_site.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let huge =
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"pad":"{}"}}}}"#, "x".repeat(2 << 20));
    let refused = http
        .post(format!("{}/mcp", server.base))
        .bearer_auth(server.token(ALL_SCOPES))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let form = format!("CallSid=CA1&Pad={}", "x".repeat(100 * 1024));
    let refused = http
        .post(format!("{}/twilio/status", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", "irrelevant")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    server.stop().await;
}

/// Posts `size` bytes of body to `path` on a new connection (with a `Content-Length`, or chunked) and
/// then reads the answer, as most clients do. A small send buffer keeps most of the upload in flight when
/// the server answers, as on any real network. The upload's outcome and the status read.
async fn upload(server: &TestServer, path: &str, size: usize, chunked: bool) -> (std::io::Result<()>, Option<u16>) {
    use tokio::io::AsyncWriteExt;
    let (mut reader, mut write) = raw::split(raw::connect(&server.base, None, Some(16 * 1024)).await);
    let host = server.base.trim_start_matches("http://");
    let framing = if chunked { "Transfer-Encoding: chunked".to_owned() } else { format!("Content-Length: {size}") };
    let token = server.token(ALL_SCOPES);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: irrelevant\r\n{framing}\r\n\r\n"
    );
    let sent = async {
        write.write_all(head.as_bytes()).await?;
        let piece = vec![b'x'; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(piece.len());
            if chunked {
                write.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            write.write_all(&piece[..n]).await?;
            if chunked {
                write.write_all(b"\r\n").await?;
            }
            left -= n;
        }
        if chunked {
            write.write_all(b"0\r\n\r\n").await?;
        }
        Ok(())
    }
    .await;
    (sent, reader.status().await)
}

#[tokio::test]
async fn an_oversized_upload_is_taken_to_its_end_and_answered_413() {
    let server = TestServer::start().await;
    for round in 0..3 {
        for path in ["/twilio/status", "/mcp"] {
            for size in [3 << 19, 2 << 20] {
                for chunked in [false, true] {
                    let (sent, status) = upload(&server, path, size, chunked).await;
                    let case = format!("round {round}, {path}, {size} bytes, chunked {chunked}");
                    assert!(sent.is_ok(), "{case}: the upload was cut off: {sent:?}");
                    assert_eq!(status, Some(413), "{case}");
                }
            }
        }
    }
    // Twilio's routes have a tighter limit, and the same manners under it.
    let (sent, status) = upload(&server, "/twilio/amd", 200 * 1024, true).await;
    assert!(sent.is_ok() && status == Some(413), "{sent:?} {status:?}");
    // Not waited for: a client that waits to be told to send (no `100 Continue` comes), and a declared
    // size past what is worth reading. Both are answered at once, and the connection closes.
    let host = server.base.trim_start_matches("http://");
    for extra in ["Expect: 100-continue\r\nContent-Length: 2097152", "Content-Length: 1073741824"] {
        use tokio::io::AsyncWriteExt;
        let (mut reader, mut write) = raw::split(raw::connect(&server.base, None, None).await);
        let head = format!("POST /twilio/status HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n\r\n");
        write.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(reader.status().await, Some(413), "{extra}");
        let head = String::from_utf8_lossy(&reader.read).to_ascii_lowercase();
        assert!(head.contains("connection: close"), "{extra}: {head}");
    }
    server.stop().await;
}
