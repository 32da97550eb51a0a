//! Who may use `/mcp`: a bearer JWT for this server, with the scope the request needs, limited to the
//! calls its `calls` claim names. Refusals are the HTTP answers MCP clients act on (401 with a challenge
//! pointing at the RFC 9728 metadata, 403 `insufficient_scope`), and nothing is ever dialed.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use voice_call_mcp::auth::{self, Claims};
use voice_call_mcp::sandbox::twilio::SimRequest;

fn trigger_body() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "trigger-call", "arguments": {"toNumber": "+14155550123", "callContext": "test"}}
    })
}

async fn post_mcp(server: &TestServer, token: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/mcp", server.base))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// RFC 7235 `auth-param`s of a `Bearer` challenge (quoted-string values, as this server sends them).
fn challenge(response: &reqwest::Response) -> HashMap<String, String> {
    let header = response.headers().get("www-authenticate").expect("a WWW-Authenticate challenge").to_str().unwrap();
    let params = header.strip_prefix("Bearer ").expect("a Bearer challenge");
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=').expect("name=value");
        let after = after.strip_prefix('"').expect("a quoted value");
        let (value, tail) = after.split_once('"').expect("a closing quote");
        assert!(out.insert(name.trim().to_owned(), value.to_owned()).is_none(), "{name} given twice");
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[tokio::test]
async fn every_unauthorized_request_is_refused_with_the_right_answer_and_nothing_is_dialed() {
    let server = TestServer::start().await;
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", server.base);

    // No token: 401 with a challenge naming the metadata and the scopes.
    let none = post_mcp(&server, None, &trigger_body()).await;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&none);
    assert_eq!(c.get("resource_metadata"), Some(&metadata_url));
    assert_eq!(c.get("scope").map(String::as_str), Some("calls:read calls:write"));
    assert!(!c.contains_key("error"), "RFC 6750 §3.1: no error code when no credentials were sent");

    // A token that is not one, one signed with another key, one for another audience, an expired one.
    let forged = auth::mint("another-secret-another-secret-0123456789", "HS256", &claims(&server.base, ALL_SCOPES));
    let other_audience =
        Claims { aud: Some("https://other.example.com/mcp".into()), ..claims(&server.base, ALL_SCOPES) };
    let expired = Claims { exp: 1_000_000_000, ..claims(&server.base, ALL_SCOPES) };
    let no_audience = Claims { aud: None, ..claims(&server.base, ALL_SCOPES) };
    for (what, token) in [
        ("garbage", "not-a-jwt".to_owned()),
        ("bad signature", forged.unwrap()),
        ("wrong audience", auth::mint(JWT_SECRET, "HS256", &other_audience).unwrap()),
        ("no audience", auth::mint(JWT_SECRET, "HS256", &no_audience).unwrap()),
        ("expired", auth::mint(JWT_SECRET, "HS256", &expired).unwrap()),
    ] {
        let refused = post_mcp(&server, Some(&token), &trigger_body()).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{what}");
        let c = challenge(&refused);
        assert_eq!(c.get("error").map(String::as_str), Some("invalid_token"), "{what}");
        assert_eq!(c.get("resource_metadata"), Some(&metadata_url), "{what}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{what}");
    }

    // MCP authorization: a token in the query string is never accepted on /mcp.
    let good = server.token(ALL_SCOPES);
    let in_query = reqwest::Client::new()
        .post(format!("{}/mcp?access_token={good}", server.base))
        .header("accept", "application/json, text/event-stream")
        .json(&trigger_body())
        .send()
        .await
        .unwrap();
    assert_eq!(in_query.status(), StatusCode::UNAUTHORIZED);

    // Valid but without the scope: 403 insufficient_scope naming the one needed.
    let read_only = server.token("calls:read");
    let refused = post_mcp(&server, Some(&read_only), &trigger_body()).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let c = challenge(&refused);
    assert_eq!((c["error"].as_str(), c["scope"].as_str()), ("insufficient_scope", "calls:write"));
    let events_only = server.token("events:read");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let refused = post_mcp(&server, Some(&events_only), &list).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(challenge(&refused)["scope"], "calls:read");
    // An escaped method name is the same method.
    let escaped =
        r#"{"jsonrpc":"2.0","id":3,"method":"tools\/call","params":{"name":"trigger\u002dcall","arguments":{}}}"#;
    let refused = reqwest::Client::new()
        .post(format!("{}/mcp", server.base))
        .bearer_auth(&read_only)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(escaped)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    assert!(server.sim_drain().is_empty(), "nothing reached Twilio");

    // The same request with the right token is served.
    let client = server.client_with(Era::Stateless, &server.token("calls:write calls:read")).await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "test"})).await;
    assert!(ok(&placed)["callSid"].as_str().unwrap().starts_with("CA"));
    assert!(matches!(server.next_sim().await, SimRequest::CreateCall { .. }));
    server.stop().await;
}

#[tokio::test]
async fn a_token_limited_to_some_calls_sees_and_ends_only_those() {
    let server = TestServer::with(Setup { talk_time: None, ..Setup::default() }).await;
    let operator = server.client(Era::Session).await;
    let mut sids = Vec::new();
    for _ in 0..2 {
        let placed =
            call_tool(&operator, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "t"})).await;
        sids.push(ok(&placed)["callSid"].as_str().unwrap().to_owned());
    }
    let (mine, theirs) = (&sids[0], &sids[1]);
    for sid in &sids {
        server.until_status(sid, |s| s == voice_call_mcp::calls::CallStatus::InProgress).await;
    }
    server.sim_drain();

    let limited = Claims { calls: Some(vec![mine.clone()]), ..claims(&server.base, ALL_SCOPES) };
    let limited = server.client_with(Era::Stateless, &auth::mint(JWT_SECRET, "HS256", &limited).unwrap()).await;
    // Another call is answered exactly as an unknown one, whatever the tool.
    for tool in ["get-call", "end-call", "wait-for-call"] {
        let refused = call_tool(&limited, tool, json!({"callSid": theirs, "timeoutSecs": 1})).await;
        assert!(error_text(&refused).contains("is known to this server"), "{tool}: {refused:?}");
    }
    let refused = call_tool(&limited, "instruct-call", json!({"callSid": theirs, "instruction": "hang up"})).await;
    assert!(error_text(&refused).contains("is known to this server"));
    assert_eq!(ok(&call_tool(&limited, "get-call", json!({"callSid": mine})).await)["callSid"], mine.as_str());
    let listed = call_tool(&limited, "list-calls", json!({})).await;
    let listed: Vec<&str> =
        ok(&listed)["calls"].as_array().unwrap().iter().map(|c| c["callSid"].as_str().unwrap()).collect();
    assert_eq!(listed, [mine.as_str()]);
    assert_eq!(ok(&call_tool(&limited, "list-calls", json!({})).await)["active"], 1);
    // Resources too.
    let read = limited.read_resource(rmcp::model::ReadResourceRequestParams::new(format!("call://{theirs}"))).await;
    assert!(read.is_err(), "another call's resource is not found");
    let resources = limited.list_resources(None).await.unwrap();
    assert!(resources.resources.iter().all(|r| !r.uri.contains(theirs.as_str())));
    // A limited token cannot place new calls it would then not see.
    let refused = call_tool(&limited, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "t"})).await;
    assert!(error_text(&refused).contains("limited to particular calls"));
    let acted: Vec<SimRequest> = server
        .sim_drain()
        .into_iter()
        .filter(|r| matches!(r, SimRequest::CreateCall { .. } | SimRequest::Hangup { .. }))
        .collect();
    assert!(acted.is_empty(), "no hang-up and no dial reached Twilio: {acted:?}");

    // Its own call it may end.
    ok(&call_tool(&limited, "end-call", json!({"callSid": mine})).await);
    let hung_up = server
        .sim_until(|r| match r {
            SimRequest::Hangup { call_sid, .. } => Some(call_sid),
            _ => None,
        })
        .await;
    assert_eq!(&hung_up, mine);
    assert!(!server.state.calls.get(theirs).unwrap().status.is_terminal(), "the other call goes on");
    server.stop().await;
}

#[tokio::test]
async fn the_protected_resource_metadata_has_what_rfc_9728_requires() {
    let raw = voice_call_mcp::RawConfig {
        jwt_issuer: Some("https://auth.example.com/".into()),
        ..voice_call_mcp::RawConfig::default()
    };
    let server = TestServer::with(Setup { raw, ..Setup::default() }).await;
    let http = reqwest::Client::new();
    for path in ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"] {
        let response = http.get(format!("{}{path}", server.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let doc: Value = response.json().await.unwrap();
        // §2: `resource` is REQUIRED, an https-or-loopback URL without a fragment: this server's /mcp.
        assert_eq!(doc["resource"], format!("{}/mcp", server.base), "{path}");
        assert!(!doc["resource"].as_str().unwrap().contains('#'));
        // §2: the optional members, with the types the RFC gives them.
        assert_eq!(doc["authorization_servers"], json!(["https://auth.example.com/"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        let scopes: Vec<&str> =
            doc["scopes_supported"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(scopes, ["calls:write", "calls:read", "events:read"]);
        assert!(doc["resource_name"].is_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn mcp_auth_none_serves_without_a_token_with_every_right() {
    let raw = voice_call_mcp::RawConfig { mcp_auth: Some("none".into()), ..voice_call_mcp::RawConfig::default() };
    let server = TestServer::with(Setup { raw, ..Setup::default() }).await;
    let client = ClientConfigNoAuth::connect(&server).await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "t"})).await;
    assert!(ok(&placed)["callSid"].is_string());
    server.stop().await;
}

/// An MCP client that sends no Authorization header at all.
struct ClientConfigNoAuth;

impl ClientConfigNoAuth {
    async fn connect(server: &TestServer) -> Client {
        use rmcp::service::ClientServiceExt;
        let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(format!("{}/mcp", server.base));
        rmcp::model::ClientConfig::default().serve_with_lifecycle(transport, lifecycle(Era::Stateless)).await.unwrap()
    }
}

/// An external authorization server (Auth0, Keycloak, Entra…) as this server meets it: a JWKS URL and an
/// issuer. Its RS256 tokens for this resource are served; tokens from another issuer, or signed with a key
/// it does not publish, are not.
#[tokio::test]
async fn tokens_from_an_external_authorization_server_are_checked_against_its_jwks() {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
    let dir = std::env::temp_dir().join(format!("voice-call-mcp-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keypair = |name: &str| -> (EncodingKey, DecodingKey) {
        let private = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub.pem"));
        let made = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
            .arg(&private)
            .status()
            .unwrap();
        assert!(made.success());
        let exported = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status();
        assert!(exported.unwrap().success());
        (
            EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap(),
            DecodingKey::from_rsa_pem(&std::fs::read(&public).unwrap()).unwrap(),
        )
    };
    let (signing, verifying) = keypair("issuer");
    let (stranger, _) = keypair("stranger");
    let mut jwk = Jwk::from_decoding_key(&verifying, Some(Algorithm::RS256)).unwrap();
    jwk.common.key_id = Some("key-1".into());
    let jwks = serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/.well-known/jwks.json", axum::routing::get(move || std::future::ready(axum::Json(jwks.clone()))));
    let jwks_server = tokio::spawn(async move { axum::serve(listener, app).await });

    let issuer = "https://auth.example.com/";
    let raw = voice_call_mcp::RawConfig {
        jwt_jwks_url: Some(jwks_url),
        jwt_issuer: Some(issuer.into()),
        ..voice_call_mcp::RawConfig::default()
    };
    let server = TestServer::with(Setup { raw, ..Setup::default() }).await;
    let sign = |key: &EncodingKey, iss: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("key-1".into());
        let claims = Claims { iss: Some(iss.into()), ..claims(&server.base, "calls:write calls:read") };
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };

    let client = server.client_with(Era::Session, &sign(&signing, issuer)).await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "t"})).await;
    assert!(ok(&placed)["callSid"].is_string());
    for (what, token) in [
        ("another issuer", sign(&signing, "https://evil.example.com/")),
        ("an unpublished key", sign(&stranger, issuer)),
    ] {
        let refused = post_mcp(&server, Some(&token), &trigger_body()).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    // The metadata sends clients to that issuer.
    let doc: Value = reqwest::get(format!("{}/.well-known/oauth-protected-resource/mcp", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["authorization_servers"], json!([issuer]));
    server.stop().await;
    jwks_server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
