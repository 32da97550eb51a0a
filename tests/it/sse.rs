//! A small Server-Sent Events reader and an MCP client that records notifications, for the event tests.
// Logging notifications are deprecated by SEP-2577 but are what 2025 sessions receive.
#![allow(deprecated)]

use futures::StreamExt;
use rmcp::model::{
    ClientConfig, LoggingMessageNotificationParam, ProgressNotificationParam, ProtocolVersion,
    ResourceUpdatedNotificationParam,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient};
use tokio::sync::mpsc;

use crate::support::WAIT;

/// One SSE event as the wire carried it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frame {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl Frame {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

/// An open `/events` stream.
pub struct Sse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    frames: mpsc::UnboundedReceiver<Result<Frame, String>>,
    /// Comments (`: …`) seen, in order.
    pub comments: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sse {
    pub async fn open(request: reqwest::RequestBuilder) -> Sse {
        let response = request.send().await.expect("the events request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let (tx, frames) = mpsc::unbounded_channel();
        let comments = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = comments.clone();
        let task = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buf = String::new();
            let mut frame = Frame::default();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else {
                    let _ = tx.send(Err("stream error".into()));
                    return;
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find('\n') {
                    let line: String = buf.drain(..=end).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if !frame.event.is_empty() || !frame.data.is_empty() {
                            let _ = tx.send(Ok(std::mem::take(&mut frame)));
                        }
                    } else if let Some(c) = line.strip_prefix(':') {
                        seen.lock().unwrap().push(c.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => frame.id = Some(value.to_owned()),
                            "event" => frame.event = value.to_owned(),
                            "data" => {
                                if !frame.data.is_empty() {
                                    frame.data.push('\n');
                                }
                                frame.data.push_str(value);
                            }
                            _ => {}
                        }
                    }
                }
            }
            let _ = tx.send(Err("closed".into()));
        });
        Sse { status, headers, frames, comments, task }
    }

    /// The next event, or `None` if the stream ended.
    pub async fn next(&mut self) -> Option<Frame> {
        match tokio::time::timeout(WAIT, self.frames.recv()).await.expect("an event arrived in time") {
            Some(Ok(f)) => Some(f),
            _ => None,
        }
    }

    /// Events until (and including) the first that satisfies `last`.
    pub async fn until(&mut self, last: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = self.next().await {
            let done = last(&f);
            out.push(f);
            if done {
                return out;
            }
        }
        panic!("the stream ended before the awaited event; got {out:?}");
    }
}

/// What an MCP session was told.
#[derive(Debug, Clone)]
pub enum Heard {
    Log(serde_json::Value),
    Updated(String),
    Progress(String),
}

#[derive(Clone)]
pub struct Listener(mpsc::UnboundedSender<Heard>);

impl ClientHandler for Listener {
    async fn on_logging_message(&self, params: LoggingMessageNotificationParam, _: NotificationContext<RoleClient>) {
        assert_eq!(params.logger.as_deref(), Some("voice-call"));
        let _ = self.0.send(Heard::Log(params.data));
    }
    async fn on_resource_updated(&self, params: ResourceUpdatedNotificationParam, _: NotificationContext<RoleClient>) {
        let _ = self.0.send(Heard::Updated(params.uri));
    }
    async fn on_progress(&self, params: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        let _ = self.0.send(Heard::Progress(params.message.unwrap_or_default()));
    }
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }
}

/// A 2025-11-25 session whose notifications land in the returned receiver.
pub async fn listening_client(base: &str) -> (RunningService<RoleClient, Listener>, mpsc::UnboundedReceiver<Heard>) {
    listening(base, ClientLifecycleMode::Initialize).await
}

/// A stateless 2026-07-28 client whose notifications (progress, on a request's own stream) land in the receiver.
pub async fn listening_stateless_client(
    base: &str,
) -> (RunningService<RoleClient, Listener>, mpsc::UnboundedReceiver<Heard>) {
    listening(base, ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] }).await
}

async fn listening(
    base: &str,
    lifecycle: ClientLifecycleMode,
) -> (RunningService<RoleClient, Listener>, mpsc::UnboundedReceiver<Heard>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let transport = crate::support::mcp_transport(
        base,
        &crate::support::mint(base, "assistant", crate::support::ALL_SCOPES, None, 3600),
    );
    let client = Listener(tx).serve_with_lifecycle(transport, lifecycle).await.expect("the client connects");
    (client, rx)
}
