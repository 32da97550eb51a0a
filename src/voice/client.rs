//! Connecting to the Realtime API: the URL, the auth header (OpenAI's bearer or Azure's `api-key`),
//! a connect timeout, and a small read buffer (tungstenite's 128 KiB default is zero-filled on every
//! read, which alone cost ~45% of a relay's CPU in measurements here).

use crate::config::{OpenAiAuthHeader, VoiceConfig};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type RealtimeSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket read buffers, sized to the frames: tungstenite zero-fills the whole buffer before every read,
/// so a large one costs CPU on each frame. Realtime events are a few KiB; Twilio frames under 0.5 KiB.
pub const WS_READ_BUFFER: usize = 4 * 1024;
pub const TWILIO_READ_BUFFER: usize = 2 * 1024;
pub const WS_WRITE_BUFFER: usize = 8 * 1024;
/// Realtime messages are small; a 1 MiB cap stops a runaway peer from ballooning memory.
const MAX_MESSAGE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the voice model did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the voice model refused the connection (HTTP {0})")]
    Refused(u16),
    #[error("could not reach the voice model: {0}")]
    Network(String),
}

pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
}

pub async fn connect(config: &VoiceConfig) -> Result<RealtimeSocket, ConnectError> {
    let mut request = config.url.as_str().into_client_request().map_err(|e| ConnectError::Network(e.to_string()))?;
    let key = HeaderValue::from_str(&match config.auth_header {
        OpenAiAuthHeader::Authorization => format!("Bearer {}", config.api_key),
        OpenAiAuthHeader::ApiKey => config.api_key.clone(),
    })
    .map_err(|_| ConnectError::Network("the API key has characters a header cannot carry".into()))?;
    let name = match config.auth_header {
        OpenAiAuthHeader::Authorization => "authorization",
        OpenAiAuthHeader::ApiKey => "api-key",
    };
    request.headers_mut().insert(name, key);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(ConnectError::Timeout(CONNECT_TIMEOUT)),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            Err(ConnectError::Refused(response.status().as_u16()))
        }
        // tungstenite's errors do not include the request's headers, so the key cannot leak here.
        Ok(Err(e)) => Err(ConnectError::Network(e.to_string())),
    }
}
