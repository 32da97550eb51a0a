//! OpenAI Realtime (GA interface) events, both directions, as serde enums tagged by `type`.
//!
//! Both directions are here because the sandbox's Realtime simulator speaks the other side with the
//! same types. Unknown server events are ignored (the API adds them). `response.output_audio.delta`
//! arrives many times a second per call, so it has the same borrowed fast path as Twilio's `media`, and
//! `input_audio_buffer.append` is written straight into a string.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Events we send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientEvent<'a> {
    #[serde(rename = "session.update")]
    SessionUpdate { session: Box<Session> },
    #[serde(rename = "input_audio_buffer.append")]
    InputAudioBufferAppend {
        #[serde(borrow)]
        audio: Cow<'a, str>,
    },
    #[serde(rename = "conversation.item.create")]
    ConversationItemCreate { item: Item },
    #[serde(rename = "conversation.item.truncate")]
    ConversationItemTruncate { item_id: String, content_index: u32, audio_end_ms: u64 },
    #[serde(rename = "response.create")]
    ResponseCreate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<ResponseParams>,
    },
    #[serde(rename = "response.cancel")]
    ResponseCancel {},
}

/// The `session` of `session.update`, in the GA shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Always `"realtime"` for a speech-to-speech session.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub output_modalities: Vec<String>,
    pub instructions: String,
    pub audio: AudioConfig,
    #[serde(default)]
    pub tools: Vec<FunctionTool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioConfig {
    pub input: AudioInput,
    pub output: AudioOutput,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioInput {
    pub format: AudioFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_detection: Option<TurnDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcription: Option<Transcription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_reduction: Option<NoiseReduction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioOutput {
    pub format: AudioFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
}

/// `{"type":"audio/pcmu"}` is G.711 µ-law at 8 kHz: exactly what Twilio sends and plays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioFormat {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnDetection {
    ServerVad {
        threshold: f32,
        prefix_padding_ms: u32,
        silence_duration_ms: u32,
        create_response: bool,
        interrupt_response: bool,
    },
    SemanticVad {
        eagerness: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcription {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseReduction {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionTool {
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// A conversation item we add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    FunctionCallOutput { call_id: String, output: String },
    Message { role: String, content: Vec<InputContent> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputContent {
    InputText { text: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResponseParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

/// Events the Realtime API sends that we act on; everything else is `Unknown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerEvent<'a> {
    #[serde(rename = "session.created")]
    SessionCreated {
        #[serde(default)]
        session: serde_json::Value,
    },
    #[serde(rename = "session.updated")]
    SessionUpdated {
        #[serde(default)]
        session: serde_json::Value,
    },
    #[serde(rename = "error")]
    Error { error: ApiError },
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted {
        #[serde(default)]
        audio_start_ms: u64,
        #[serde(default)]
        item_id: String,
    },
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped {
        #[serde(default)]
        audio_end_ms: u64,
        #[serde(default)]
        item_id: String,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    InputTranscriptionCompleted {
        #[serde(default)]
        item_id: String,
        transcript: String,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.failed")]
    InputTranscriptionFailed {
        #[serde(default)]
        item_id: String,
        #[serde(default)]
        error: Option<ApiError>,
    },
    #[serde(rename = "response.output_audio.delta")]
    OutputAudioDelta {
        #[serde(borrow, default)]
        response_id: Cow<'a, str>,
        #[serde(borrow)]
        item_id: Cow<'a, str>,
        #[serde(borrow)]
        delta: Cow<'a, str>,
    },
    #[serde(rename = "response.output_audio.done")]
    OutputAudioDone {
        #[serde(default)]
        item_id: String,
    },
    #[serde(rename = "response.output_audio_transcript.done")]
    OutputAudioTranscriptDone {
        #[serde(default)]
        item_id: String,
        transcript: String,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        call_id: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        arguments: String,
    },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone { item: OutputItem },
    #[serde(rename = "response.created")]
    ResponseCreated {
        #[serde(default)]
        response: ResponseInfo,
    },
    #[serde(rename = "response.done")]
    ResponseDone {
        #[serde(default)]
        response: ResponseInfo,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ApiError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
}

/// `response.output_item.done`'s item; only function calls matter to us.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputItem {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub call_id: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResponseInfo {
    #[serde(default)]
    pub id: String,
    /// `in_progress`, `completed`, `cancelled`, `failed`, `incomplete`.
    #[serde(default)]
    pub status: String,
}

#[derive(Deserialize)]
struct AudioDelta<'a> {
    #[serde(borrow, default)]
    response_id: Cow<'a, str>,
    #[serde(borrow)]
    item_id: Cow<'a, str>,
    #[serde(borrow)]
    delta: Cow<'a, str>,
}

const DELTA_PREFIX: &str = r#"{"type":"response.output_audio.delta""#;

/// Parses one server event.
pub fn parse_server_event(text: &str) -> Result<ServerEvent<'_>, serde_json::Error> {
    if text.starts_with(DELTA_PREFIX) {
        let d: AudioDelta<'_> = serde_json::from_str(text)?;
        return Ok(ServerEvent::OutputAudioDelta { response_id: d.response_id, item_id: d.item_id, delta: d.delta });
    }
    serde_json::from_str(text)
}

/// Writes `{"type":"input_audio_buffer.append","audio":…}` into `out` (cleared first).
pub fn write_append(out: &mut String, audio: &str) {
    out.clear();
    out.push_str(r#"{"type":"input_audio_buffer.append","audio":"#);
    crate::carrier::stream::push_json_str(out, audio);
    out.push('}');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn deltas_take_the_fast_path_and_borrow() {
        let text = r#"{"type":"response.output_audio.delta","event_id":"e1","response_id":"r1","item_id":"i1","output_index":0,"content_index":0,"delta":"//79"}"#;
        match parse_server_event(text).unwrap() {
            ServerEvent::OutputAudioDelta { item_id, delta, .. } => {
                assert_eq!(item_id, "i1");
                assert!(matches!(delta, Cow::Borrowed("//79")));
            }
            other => panic!("{other:?}"),
        }
        let reordered = r#"{"event_id":"e1","type":"response.output_audio.delta","item_id":"i1","delta":"AA"}"#;
        assert!(matches!(parse_server_event(reordered).unwrap(), ServerEvent::OutputAudioDelta { .. }));
    }

    #[test]
    fn server_events_parse_and_unknown_ones_are_ignored() {
        let cases = [
            r#"{"type":"session.created","event_id":"e","session":{"id":"s"}}"#,
            r#"{"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"x","message":"bad","param":null,"event_id":null}}"#,
            r#"{"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":1000,"item_id":"i2"}"#,
            r#"{"type":"conversation.item.input_audio_transcription.completed","event_id":"e","item_id":"i2","content_index":0,"transcript":"hello"}"#,
            r#"{"type":"response.output_audio_transcript.done","event_id":"e","response_id":"r","item_id":"i1","output_index":0,"content_index":0,"transcript":"Hi there"}"#,
            r#"{"type":"response.function_call_arguments.done","event_id":"e","response_id":"r","item_id":"i3","output_index":0,"call_id":"c1","name":"end_call","arguments":"{}"}"#,
            r#"{"type":"response.output_item.done","event_id":"e","response_id":"r","output_index":0,"item":{"id":"i3","type":"function_call","status":"completed","name":"end_call","call_id":"c1","arguments":"{}"}}"#,
            r#"{"type":"response.done","event_id":"e","response":{"id":"r","object":"realtime.response","status":"completed","output":[]}}"#,
        ];
        for text in cases {
            let parsed = parse_server_event(text).unwrap();
            assert_ne!(parsed, ServerEvent::Unknown, "{text}");
        }
        let unknown = r#"{"type":"rate_limits.updated","event_id":"e","rate_limits":[]}"#;
        assert_eq!(parse_server_event(unknown).unwrap(), ServerEvent::Unknown);
    }

    #[test]
    fn append_is_the_ga_client_event() {
        let mut out = String::new();
        write_append(&mut out, "//79");
        let parsed: ClientEvent<'_> = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, ClientEvent::InputAudioBufferAppend { audio: "//79".into() });
        let truncate =
            ClientEvent::ConversationItemTruncate { item_id: "i".into(), content_index: 0, audio_end_ms: 1500 };
        assert_eq!(
            serde_json::to_string(&truncate).unwrap(),
            r#"{"type":"conversation.item.truncate","item_id":"i","content_index":0,"audio_end_ms":1500}"#
        );
    }
}
