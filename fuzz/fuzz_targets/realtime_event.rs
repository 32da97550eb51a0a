//! OpenAI Realtime server events (`voice::events::parse_server_event`): any text is parsed or refused,
//! never a panic; the audio-delta fast path agrees with the general path; whatever parses survives a round
//! trip through serde; audio from a delta can be forwarded (`write_append`) and reads back as sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voice_call_mcp::voice::events::{ClientEvent, ServerEvent, parse_server_event, write_append};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(event) = parse_server_event(text) else { return };

    if let Ok(general @ ServerEvent::OutputAudioDelta { .. }) = serde_json::from_str::<ServerEvent<'_>>(text) {
        assert_eq!(general, event, "fast and general paths disagree on {text:?}");
    }

    let again = serde_json::to_string(&event).unwrap();
    assert_eq!(parse_server_event(&again).unwrap(), event, "round trip of {text:?} via {again:?}");

    if let ServerEvent::OutputAudioDelta { delta, .. } = &event {
        let mut out = String::new();
        write_append(&mut out, delta);
        let sent: ClientEvent<'_> = serde_json::from_str(&out).unwrap();
        assert_eq!(sent, ClientEvent::InputAudioBufferAppend { audio: delta.clone() }, "forwarded {out:?}");
    }
});
