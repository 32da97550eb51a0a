//! `tools/call get-call` round trip over loopback HTTP, as an MCP client sees it, in both protocol eras.
//!
//! The server runs in sandbox mode in-process (real HTTP, real rmcp transport on both ends); one call is
//! placed first so `get-call` returns a real record. Run: `cargo bench --bench mcp_roundtrip`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;
use std::time::Duration;
use voice_call_mcp::{AppState, RawConfig};

fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (base, _state, sim) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Thousands of requests a second from one client: the per-minute abuse limit is not what this measures.
        let raw = RawConfig {
            sandbox: Some("true".into()),
            rate_limit_mcp: Some("100000000".into()),
            ..RawConfig::default()
        };
        let mut config = raw.validate().unwrap();
        let sim = voice_call_mcp::sandbox::start(&mut config, port).await.unwrap();
        let base = config.public("");
        let state = AppState::new(config).await.unwrap();
        tokio::spawn(voice_call_mcp::serve(listener, state.clone(), std::future::pending()));
        (base, state, sim)
    });

    // The token sandbox mode mints for its made-up secret: every scope, for this server.
    let token = sim.token.clone().expect("sandbox mode mints a token");
    let mut group = c.benchmark_group("get-call round trip");
    group.measurement_time(Duration::from_secs(5));
    for (name, lifecycle) in [
        ("2025-11-25 session", ClientLifecycleMode::Initialize),
        (
            "2026-07-28 stateless",
            ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] },
        ),
    ] {
        let client = rt.block_on(async {
            let config =
                StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")).auth_header(token.clone());
            let transport = StreamableHttpClientTransport::from_config(config);
            ClientConfig::default().serve_with_lifecycle(transport, lifecycle).await.unwrap()
        });
        let sid = rt.block_on(async {
            let placed = client
                .call_tool(
                    CallToolRequestParams::new("trigger-call")
                        .with_arguments(args(json!({"toNumber": "+14155550123", "callContext": "benchmark"}))),
                )
                .await
                .unwrap();
            placed.structured_content.unwrap()["callSid"].as_str().unwrap().to_owned()
        });
        let request = CallToolRequestParams::new("get-call").with_arguments(args(json!({ "callSid": sid })));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let got = client.call_tool(request.clone()).await.unwrap();
                assert_eq!(got.is_error, Some(false));
            })
        });
        rt.block_on(client.cancel()).unwrap();
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
