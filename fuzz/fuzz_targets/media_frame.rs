//! Twilio Media Streams frames (`carrier::stream::parse_inbound`): any text is parsed or refused, never a
//! panic; the `media` fast path agrees with the general path; whatever parses survives a round trip
//! through serde; a parsed `media` frame can be relayed (`write_media`) and reads back as sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voice_call_mcp::carrier::stream::{Inbound, Outbound, OutboundMedia, parse_inbound, write_media};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(frame) = parse_inbound(text) else { return };

    // The general path, when it reads a `media` frame, reads the same one as the fast path.
    if let Ok(general @ Inbound::Media { .. }) = serde_json::from_str::<Inbound<'_>>(text) {
        assert_eq!(general, frame, "fast and general paths disagree on {text:?}");
    }

    let again = serde_json::to_string(&frame).unwrap();
    assert_eq!(parse_inbound(&again).unwrap(), frame, "round trip of {text:?} via {again:?}");

    if let Inbound::Media { stream_sid, media, .. } = &frame {
        let mut out = String::new();
        write_media(&mut out, stream_sid, &media.payload);
        let sent: Outbound<'_> = serde_json::from_str(&out).unwrap();
        let expected =
            Outbound::Media { stream_sid: stream_sid.clone(), media: OutboundMedia { payload: media.payload.clone() } };
        assert_eq!(sent, expected, "relayed {out:?}");
    }
});
