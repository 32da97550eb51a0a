//! The benchmarks' MCP client: rmcp's, over Streamable HTTP, on the stateless 2026-07-28 protocol (no
//! session: every request a POST of its own, so many can be in flight on one client). Each example that
//! places calls includes this file with `#[path]`.
#![allow(dead_code)]

use anyhow::{Result, anyhow};
use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use std::time::Duration;

pub(crate) type Client = RunningService<rmcp::RoleClient, ClientConfig>;

/// A client of `{base}/mcp` with `token` as its bearer token, once `server/discover` has answered
/// (within `within`).
pub(crate) async fn connect(base: &str, token: String, within: Duration) -> Result<Client> {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")).auth_header(token);
    let transport = StreamableHttpClientTransport::from_config(config);
    let lifecycle = ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] };
    tokio::time::timeout(within, ClientConfig::default().serve_with_lifecycle(transport, lifecycle))
        .await
        .map_err(|_| anyhow!("MCP client: no answer from {base}/mcp"))?
        .map_err(|e| anyhow!("MCP client: {e}"))
}

/// `tools/call` of `tool` with `args` (a JSON object), answered within `within`: the result's structured
/// content, or an error with the tool's own words when it answered `isError`.
pub(crate) async fn call(
    client: &Client,
    tool: &'static str,
    args: serde_json::Value,
    within: Duration,
) -> Result<serde_json::Value> {
    let serde_json::Value::Object(args) = args else { return Err(anyhow!("{tool}: arguments must be an object")) };
    let request = CallToolRequestParams::new(tool).with_arguments(args);
    let result = tokio::time::timeout(within, client.call_tool(request))
        .await
        .map_err(|_| anyhow!("{tool}: no answer within {within:?}"))?
        .map_err(|e| anyhow!("{tool}: {e}"))?;
    if result.is_error == Some(true) {
        let text: Vec<String> = result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
        return Err(anyhow!("{tool} refused: {}", text.join(" ")));
    }
    result.structured_content.ok_or_else(|| anyhow!("{tool}: no structured content in the result"))
}
