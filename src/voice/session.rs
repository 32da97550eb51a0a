//! What the voice model is told: the call's instructions and the `session.update` that configures a
//! phone-call session (µ-law both ways, server VAD with barge-in, input transcription, `end_call`).

use super::bridge::SessionSettings;
use super::events::{
    AudioConfig, AudioFormat, AudioInput, AudioOutput, ClientEvent, FunctionTool, NoiseReduction, Session,
    Transcription, TurnDetection,
};
use crate::calls::{Call, CallRequest, Speaker, TranscriptLine};

/// The name of the tool the model calls to hang up.
pub const END_CALL: &str = "end_call";

const PREAMBLE: &str = "You are a voice agent placing an outbound phone call on behalf of a user. \
You are speaking on a real telephone line with a person. Speak naturally and briefly: one or two short \
sentences at a time, then let them answer. Never read out lists, markup or URLs. If asked, say honestly \
that you are an AI assistant calling on someone's behalf. Stay on the task below; do not agree to \
anything beyond it. If you reach voicemail or an automated menu you cannot get past, leave a short \
message if appropriate and end the call. When the task is done or the person wants to end the call, \
say a short goodbye and then call the end_call tool.";

/// The instructions for a call, built from what the assistant asked for.
pub fn instructions(request: &CallRequest) -> String {
    let mut s = String::with_capacity(PREAMBLE.len() + request.context.len() + 256);
    s.push_str(PREAMBLE);
    s.push_str("\n\nThe task for this call:\n");
    s.push_str(request.context.trim());
    if let Some(language) = &request.language {
        s.push_str("\n\nSpeak ");
        s.push_str(language.trim());
        s.push_str(" for the whole call, unless the person clearly asks for another language.");
    }
    s.push_str("\n\n");
    match &request.first_message {
        Some(first) => {
            s.push_str("Begin the call by saying exactly: \"");
            s.push_str(first.trim());
            s.push('"');
        }
        None => s.push_str("Begin the call with a short greeting and say why you are calling."),
    }
    s
}

/// The same instructions for a session resumed after the connection to the model dropped: the
/// conversation so far, and no second greeting.
pub fn resumed_instructions(request: &CallRequest, transcript: &[TranscriptLine]) -> String {
    let base = instructions(request);
    let body = base.rsplit_once("\n\nBegin the call").map_or(base.as_str(), |(head, _)| head);
    let mut s = String::from(body);
    s.push_str("\n\nThe call is already under way; the connection was briefly lost. Do not greet again. ");
    s.push_str("Apologise briefly for the interruption and continue where the conversation left off.\n");
    s.push_str("Conversation so far:\n");
    for line in transcript {
        s.push_str(match line.speaker {
            Speaker::Ai => "You: ",
            Speaker::Human => "Them: ",
        });
        s.push_str(&line.text);
        s.push('\n');
    }
    s
}

/// `session.update` for this call: its instructions (resumed: with `so_far`, the conversation so far), its voice
/// or the server's, its language.
pub fn for_call(call: &Call, settings: &SessionSettings, so_far: Option<&[TranscriptLine]>) -> ClientEvent<'static> {
    let instructions = match so_far {
        Some(lines) => resumed_instructions(&call.request, lines),
        None => instructions(&call.request),
    };
    let voice = call.request.voice.as_deref().unwrap_or(&settings.voice);
    update(instructions, voice, &settings.model, call.request.language.as_deref())
}

/// `session.update` for a phone call with these instructions.
pub fn update(instructions: String, voice: &str, model: &str, language: Option<&str>) -> ClientEvent<'static> {
    let pcmu = || AudioFormat { kind: "audio/pcmu".into() };
    // An ISO-639-1 hint helps transcription; anything longer ("English") is left to the model.
    let language = language.map(str::trim).filter(|l| l.len() == 2).map(str::to_ascii_lowercase);
    ClientEvent::SessionUpdate {
        session: Box::new(Session {
            kind: "realtime".into(),
            model: Some(model.to_owned()),
            output_modalities: vec!["audio".into()],
            instructions,
            audio: AudioConfig {
                input: AudioInput {
                    format: pcmu(),
                    turn_detection: Some(TurnDetection::ServerVad {
                        threshold: 0.5,
                        prefix_padding_ms: 300,
                        silence_duration_ms: 500,
                        create_response: true,
                        interrupt_response: true,
                    }),
                    transcription: Some(Transcription { model: "gpt-4o-mini-transcribe".into(), language }),
                    noise_reduction: Some(NoiseReduction { kind: "near_field".into() }),
                },
                output: AudioOutput { format: pcmu(), voice: Some(voice.to_owned()) },
            },
            tools: vec![FunctionTool {
                kind: "function".into(),
                name: END_CALL.into(),
                description: "Hang up the phone. Call this only after you have said goodbye.".into(),
                parameters: serde_json::json!({"type": "object", "properties": {}}),
            }],
            tool_choice: Some("auto".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request() -> CallRequest {
        CallRequest {
            context: "Book a table for two at 8 pm.".into(),
            first_message: Some("Hi, I'd like to book a table.".into()),
            language: Some("es".into()),
            ..crate::calls::test_request()
        }
    }

    #[test]
    fn instructions_carry_the_task_language_and_first_words() {
        let i = instructions(&request());
        assert!(i.contains("Book a table for two at 8 pm."));
        assert!(i.contains("Speak es"));
        assert!(i.ends_with("Begin the call by saying exactly: \"Hi, I'd like to book a table.\""));
        let resumed = resumed_instructions(
            &request(),
            &[TranscriptLine {
                speaker: Speaker::Human,
                text: "Hello?".into(),
                timestamp: time::OffsetDateTime::UNIX_EPOCH,
            }],
        );
        assert!(!resumed.contains("Begin the call"));
        assert!(resumed.contains("Conversation so far:\nThem: Hello?\n"));
    }

    #[test]
    fn the_session_is_the_ga_phone_shape() {
        let v = serde_json::to_value(update("x".into(), "marin", "gpt-realtime", Some("es"))).unwrap();
        assert_eq!(v["type"], "session.update");
        let s = &v["session"];
        assert_eq!(s["type"], "realtime");
        assert_eq!(s["output_modalities"], serde_json::json!(["audio"]));
        assert_eq!(s["audio"]["input"]["format"]["type"], "audio/pcmu");
        assert_eq!(s["audio"]["output"]["format"]["type"], "audio/pcmu");
        assert_eq!(s["audio"]["output"]["voice"], "marin");
        assert_eq!(s["audio"]["input"]["turn_detection"]["type"], "server_vad");
        assert_eq!(s["audio"]["input"]["turn_detection"]["interrupt_response"], true);
        assert_eq!(s["audio"]["input"]["transcription"]["language"], "es");
        assert_eq!(s["tools"][0]["name"], "end_call");
        assert_eq!(s["tools"][0]["type"], "function");
    }
}
