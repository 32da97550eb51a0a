//! The events clients see, on `/events` and as MCP notifications, with the original project's names.
//!
//! Serialized with `type` inside the data too, so a consumer that only gets the data (an MCP
//! notification's `data`) still knows what it is.

use crate::calls::{Call, CallStatus, Speaker};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum CallEvent {
    #[serde(rename_all = "camelCase")]
    CallStatus {
        call_sid: String,
        status: CallStatus,
        from: String,
        to: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        answered_by: Option<String>,
        #[serde(with = "time::serde::rfc3339")]
        timestamp: OffsetDateTime,
    },
    #[serde(rename_all = "camelCase")]
    Transcription {
        call_sid: String,
        transcription: String,
        speaker: Speaker,
        #[serde(with = "time::serde::rfc3339")]
        timestamp: OffsetDateTime,
    },
    #[serde(rename_all = "camelCase")]
    CallEnded {
        call_sid: String,
        status: CallStatus,
        /// Seconds connected (0 when never answered).
        duration: u32,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        recording_url: Option<String>,
        #[serde(with = "time::serde::rfc3339")]
        timestamp: OffsetDateTime,
    },
    #[serde(rename_all = "camelCase")]
    Dtmf {
        call_sid: String,
        digit: String,
        #[serde(with = "time::serde::rfc3339")]
        timestamp: OffsetDateTime,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        call_sid: String,
        error: String,
        code: String,
        #[serde(with = "time::serde::rfc3339")]
        timestamp: OffsetDateTime,
    },
}

/// The event types by name, for filters (`types=call-status,transcription`).
pub const EVENT_TYPES: &[&str] = &["call-status", "transcription", "call-ended", "dtmf", "error"];

impl CallEvent {
    pub fn call_sid(&self) -> &str {
        match self {
            Self::CallStatus { call_sid, .. }
            | Self::Transcription { call_sid, .. }
            | Self::CallEnded { call_sid, .. }
            | Self::Dtmf { call_sid, .. }
            | Self::Error { call_sid, .. } => call_sid,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::CallStatus { .. } => "call-status",
            Self::Transcription { .. } => "transcription",
            Self::CallEnded { .. } => "call-ended",
            Self::Dtmf { .. } => "dtmf",
            Self::Error { .. } => "error",
        }
    }

    pub fn status(call: &Call) -> Self {
        Self::CallStatus {
            call_sid: call.call_sid.clone(),
            status: call.status,
            from: call.request.from.to_string(),
            to: call.request.to.to_string(),
            answered_by: call.answered_by.clone(),
            timestamp: OffsetDateTime::now_utc(),
        }
    }

    pub fn ended(call: &Call) -> Self {
        // Twilio's CallDuration when it came with the ending; else the time between answer and end.
        let measured = match (call.answered_at, call.ended_at) {
            (Some(a), Some(e)) => u32::try_from((e - a).whole_seconds().max(0)).unwrap_or(0),
            _ => 0,
        };
        Self::CallEnded {
            call_sid: call.call_sid.clone(),
            status: call.status,
            duration: call.duration_secs.unwrap_or(measured),
            recording_url: call.recording_url.clone(),
            timestamp: OffsetDateTime::now_utc(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_have_the_seed_shape() {
        let e = CallEvent::Transcription {
            call_sid: "CA1".into(),
            transcription: "hello".into(),
            speaker: Speaker::Human,
            timestamp: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"type": "transcription", "callSid": "CA1", "transcription": "hello",
                               "speaker": "human", "timestamp": "1970-01-01T00:00:00Z"})
        );
        assert_eq!(e.kind(), "transcription");
        assert!(EVENT_TYPES.contains(&e.kind()));
    }
}
