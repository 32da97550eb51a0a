//! Observability as an operator meets it: the real binary in sandbox mode exporting to a test OTLP/HTTP
//! receiver, `/metrics` scraped as Prometheus text, and JSON logs.

use crate::support::{ServerProcess, call_tool, ok};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message as _;
use rmcp::model::ClientConfig;
use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;
use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::process::Command;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_voice-call-mcp");
const SECRET: &str = "telemetry-test-secret-0123456789abcdef-0123456789";
const METRICS_TOKEN: &str = "scrape-token-0123456789abcdef";

/// What the test collector received, decoded.
enum Export {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// A loopback OTLP/HTTP (protobuf) collector: every export is decoded and sent into a channel before
/// it is acknowledged, so once the server has exited everything it exported is already queued here.
async fn collector() -> (String, mpsc::UnboundedReceiver<Export>) {
    async fn traces(State(tx): State<mpsc::UnboundedSender<Export>>, body: Bytes) -> axum::http::StatusCode {
        match ExportTraceServiceRequest::decode(body) {
            Ok(r) => {
                let _ = tx.send(Export::Traces(r));
                axum::http::StatusCode::OK
            }
            Err(_) => axum::http::StatusCode::BAD_REQUEST,
        }
    }
    async fn metrics(State(tx): State<mpsc::UnboundedSender<Export>>, body: Bytes) -> axum::http::StatusCode {
        match ExportMetricsServiceRequest::decode(body) {
            Ok(r) => {
                let _ = tx.send(Export::Metrics(r));
                axum::http::StatusCode::OK
            }
            Err(_) => axum::http::StatusCode::BAD_REQUEST,
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route("/v1/traces", post(traces)).route("/v1/metrics", post(metrics)).with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app).into_future());
    (url, rx)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The binary with a clean environment, the JWT settings and a known public URL.
fn command(port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JWT_SECRET", SECRET)
        .env("PUBLIC_URL", format!("http://127.0.0.1:{port}/"))
        .current_dir(std::env::temp_dir());
    cmd
}

fn mint_token(port: u16) -> String {
    let out = command(port, &["token", "--scope", "calls:write calls:read events:read"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A sandbox server as a child process on a known port.
struct Server {
    process: ServerProcess,
    base: String,
}

impl Server {
    fn start(port: u16, env: &[(&str, &str)]) -> Server {
        let mut command = command(port, &["serve", "--sandbox", "--port", &port.to_string()]);
        command.env("RUST_LOG", "info").envs(env.iter().copied());
        let mut process = ServerProcess::spawn(command);
        process.wait_for("voice-call-mcp listening");
        Server { process, base: format!("http://127.0.0.1:{port}") }
    }

    fn wait_for(&mut self, needle: &str) {
        self.process.wait_for(needle);
    }

    /// SIGTERM; returns the exit code and every stderr line.
    fn stop(self) -> (Option<i32>, Vec<String>) {
        self.process.stop()
    }
}

async fn get(url: &str, bearer: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, content_type, response.text().await.unwrap())
}

/// A strict reader of the Prometheus text format (0.0.4): every line is a `# HELP`, a `# TYPE` or a
/// sample of the family last typed; names and label names valid; label values properly escaped; values
/// floats. Returns samples as `name{labels}` (labels sorted, as written) → value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    fn valid_name(s: &str) -> bool {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut samples = HashMap::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, String)> = None;
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(valid_name(name), "bad HELP name in {line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a type");
            assert!(valid_name(name), "bad TYPE name in {line:?}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line:?}");
            assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "{name} typed twice");
            current = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("{v:?} is not a float in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, Some(rest.strip_suffix('}').expect("labels end with }"))),
            None => (series, None),
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let (family, kind) = current.as_ref().expect("a sample follows its TYPE");
        let allowed: Vec<String> = match kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{family}{s}")).collect(),
            _ => vec![family.clone()],
        };
        assert!(allowed.iter().any(|a| a == name), "{name} does not belong to family {family} ({kind})");
        if let Some(labels) = labels {
            // name="value" pairs, comma separated; in values only \\, \" and \n escapes.
            let mut chars = labels.chars().peekable();
            while chars.peek().is_some() {
                let label: String = chars.by_ref().take_while(|&c| c != '=').collect();
                assert!(valid_name(&label), "bad label name {label:?} in {line:?}");
                assert_eq!(chars.next(), Some('"'), "label value quoted in {line:?}");
                loop {
                    match chars.next().expect("label value closed") {
                        '\\' => assert!(matches!(chars.next(), Some('\\' | '"' | 'n')), "bad escape in {line:?}"),
                        '"' => break,
                        '\n' => panic!("raw newline in {line:?}"),
                        _ => {}
                    }
                }
                match chars.next() {
                    None => break,
                    Some(',') => {}
                    Some(c) => panic!("unexpected {c:?} after a label in {line:?}"),
                }
            }
        }
        assert!(samples.insert(series.to_owned(), value).is_none(), "{series} appears twice");
    }
    samples
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref() {
        Some(AnyValue { value: Some(any_value::Value::StringValue(s)) }) => Some(s.as_str()),
        _ => None,
    })
}

/// One exported metric data point, flattened: (metric name, attributes, value).
fn points(request: &ExportMetricsServiceRequest) -> Vec<(String, Vec<KeyValue>, f64)> {
    let mut out = Vec::new();
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let numbers = match &m.data {
                    Some(metric::Data::Sum(s)) => &s.data_points,
                    Some(metric::Data::Gauge(g)) => &g.data_points,
                    Some(metric::Data::Histogram(h)) => {
                        for p in &h.data_points {
                            out.push((m.name.clone(), p.attributes.clone(), p.count as f64));
                        }
                        continue;
                    }
                    _ => continue,
                };
                for p in numbers {
                    let v = match p.value {
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        None => continue,
                    };
                    out.push((m.name.clone(), p.attributes.clone(), v));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_call_is_traced_and_counted_over_otlp_and_at_metrics_with_json_logs() {
    let (otlp, mut exports) = collector().await;
    let port = free_port();
    let token = mint_token(port);
    let mut server = Server::start(
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "voice-call-test"),
            ("LOG_FORMAT", "json"),
        ],
    );

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.base)).auth_header(token.clone()),
    );
    let client = ClientConfig::default()
        .serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
        .await
        .expect("MCP client connects");
    let placed = call_tool(
        &client,
        "trigger-call",
        json!({"toNumber": "+14155550123", "callContext": "Ask whether they are open on Sunday."}),
    )
    .await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    let done = call_tool(&client, "wait-for-call", json!({"callSid": sid, "timeoutSecs": 60})).await;
    assert_eq!(ok(&done)["status"], "completed", "{done:?}");
    let _ = client.cancel().await;
    server.wait_for("call ended");

    // /metrics, from loopback with no METRICS_TOKEN configured: strict Prometheus text counting the call.
    let (status, content_type, text) = get(&format!("{}/metrics", server.base), None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let samples = parse_prometheus(&text);
    assert_eq!(samples.get(r#"voice_call_calls_ended_total{status="completed"}"#), Some(&1.0), "{text}");
    assert_eq!(samples.get("voice_call_calls_active"), Some(&0.0), "{text}");
    for direction in ["to_ai", "to_caller"] {
        let frames = samples.get(&format!(r#"voice_call_relay_frames_total{{direction="{direction}"}}"#));
        assert!(frames.is_some_and(|&n| n > 0.0), "no {direction} frames counted: {text}");
        let count = samples[&format!(r#"voice_call_relay_latency_seconds_count{{direction="{direction}"}}"#)];
        let inf = samples[&format!(r#"voice_call_relay_latency_seconds_bucket{{direction="{direction}",le="+Inf"}}"#)];
        assert!(count > 0.0 && count == inf, "{direction}: count {count}, +Inf bucket {inf}");
    }
    assert!(samples.get("voice_call_events_published_total").is_some_and(|&n| n >= 4.0), "{text}");
    // Collected on the server's runtime, so its live tasks are counted (the listener at least).
    assert!(samples.get("voice_call_runtime_tasks").is_some_and(|&n| n >= 1.0), "{text}");

    // SIGTERM: the last spans and metrics are flushed before the process exits 0.
    let (code, lines) = server.stop();
    assert_eq!(code, Some(0), "{lines:?}");
    for line in &lines {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok_and(|v| v.is_object()), "a stderr line is not a JSON object: {line:?}");
    }
    assert!(lines.iter().any(|l| l.contains("Sandbox mode")), "the sandbox banner is logged as JSON too");

    let mut spans = Vec::new();
    let mut metric_points = Vec::new();
    let mut services = Vec::new();
    while let Ok(export) = exports.try_recv() {
        match export {
            Export::Traces(t) => {
                for rs in t.resource_spans {
                    if let Some(r) = &rs.resource {
                        services.extend(attr(&r.attributes, "service.name").map(str::to_owned));
                    }
                    spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
                }
            }
            Export::Metrics(m) => metric_points.extend(points(&m)),
        }
    }
    assert!(services.iter().all(|s| s == "voice-call-test") && !services.is_empty(), "{services:?}");
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"POST /mcp"), "no MCP request span in {names:?}");
    assert!(names.contains(&"POST /twilio/status"), "no webhook span in {names:?}");
    let call = spans
        .iter()
        .find(|s| s.name == "call" && attr(&s.attributes, "call_sid") == Some(sid.as_str()))
        .unwrap_or_else(|| panic!("no call span with call_sid {sid} in {names:?}"));
    assert_eq!(attr(&call.attributes, "status"), Some("completed"));
    assert!(call.parent_span_id.is_empty(), "the call's span is the root of its own trace");
    let voice = spans.iter().find(|s| s.name == "call.voice" && s.trace_id == call.trace_id);
    assert!(voice.is_some_and(|v| v.parent_span_id == call.span_id), "the voice task's span is the call's child");
    let updates: Vec<_> = spans.iter().filter(|s| s.name == "call.update" && s.trace_id == call.trace_id).collect();
    assert!(!updates.is_empty(), "status updates are children of the call's span");
    assert!(updates.iter().all(|u| u.parent_span_id == call.span_id));
    assert!(updates.iter().any(|u| !u.links.is_empty()), "a status update links to the webhook request it came in on");
    for s in &spans {
        for kv in &s.attributes {
            let text = format!("{:?}", kv.value);
            assert!(!text.contains(&token), "the bearer token reached span {}", s.name);
        }
    }

    let last = |name: &str, key: &str, value: &str| {
        metric_points
            .iter()
            .filter(|(n, a, _)| n == name && attr(a, key) == Some(value))
            .map(|(_, _, v)| *v)
            .next_back()
    };
    assert_eq!(last("voice_call.calls.ended", "status", "completed"), Some(1.0));
    assert!(last("voice_call.relay.frames", "direction", "to_ai").is_some_and(|n| n > 0.0));
    assert!(last("voice_call.relay.frames", "direction", "to_caller").is_some_and(|n| n > 0.0));
    assert!(last("voice_call.relay.latency", "direction", "to_ai").is_some_and(|n| n > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_require_the_configured_token_or_a_loopback_peer() {
    let port = free_port();
    let server = Server::start(port, &[("METRICS_TOKEN", METRICS_TOKEN), ("BIND", "0.0.0.0")]);
    let url = format!("{}/metrics", server.base);
    let (status, _, _) = get(&url, None).await;
    assert_eq!(status, 401, "loopback is not enough once a token is configured");
    let (status, _, _) = get(&url, Some("scrape-token-0123456789abcdeX")).await;
    assert_eq!(status, 401);
    let (status, _, text) = get(&url, Some(METRICS_TOKEN)).await;
    assert_eq!(status, 200);
    parse_prometheus(&text);
    let (code, _) = server.stop();
    assert_eq!(code, Some(0));

    // Without a token, a peer that is not on loopback is refused. Testable where this machine has a
    // non-loopback address to connect from (the route on a UDP socket names it; nothing is sent).
    let port = free_port();
    let server = Server::start(port, &[("BIND", "0.0.0.0")]);
    let (status, _, _) = get(&format!("{}/metrics", server.base), None).await;
    assert_eq!(status, 200);
    let own = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    if let Some(ip) = own {
        let (status, _, _) = get(&format!("http://{ip}:{port}/metrics"), None).await;
        assert_eq!(status, 403, "a peer at {ip} is not on loopback");
    } else {
        eprintln!("no non-loopback address on this machine: the 403 case is covered by the unit tests only");
    }
    let (code, _) = server.stop();
    assert_eq!(code, Some(0));
}
