//! Twilio Media Streams, the bidirectional WebSocket protocol, as typed messages.
//!
//! Both directions are here (the sandbox's Twilio simulator speaks the other side with the same types).
//! Twilio sends numbers such as `sequenceNumber` as JSON strings; they are kept as the strings they are.
//! Audio is base64 µ-law that we never decode, borrowed straight out of the frame's text.
//!
//! `media` frames are 50 per second per call in each direction, so they have a fast path: Twilio always
//! writes `event` first, and a frame that starts `{"event":"media"` is read into a flat borrowed struct
//! (no buffering of the whole object, no allocation when the payload has no JSON escapes), and outgoing
//! `media` is written straight into a string without building a JSON tree. Everything else goes through
//! the tagged enum.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// A message from Twilio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Inbound<'a> {
    Connected {
        #[serde(borrow, default)]
        protocol: Cow<'a, str>,
        #[serde(borrow, default)]
        version: Cow<'a, str>,
    },
    #[serde(rename_all = "camelCase")]
    Start {
        #[serde(borrow, default)]
        sequence_number: Cow<'a, str>,
        #[serde(borrow)]
        stream_sid: Cow<'a, str>,
        start: Start,
    },
    #[serde(rename_all = "camelCase")]
    Media {
        #[serde(borrow, default)]
        sequence_number: Cow<'a, str>,
        #[serde(borrow, default)]
        stream_sid: Cow<'a, str>,
        #[serde(borrow)]
        media: Media<'a>,
    },
    #[serde(rename_all = "camelCase")]
    Mark {
        #[serde(borrow, default)]
        sequence_number: Cow<'a, str>,
        #[serde(borrow, default)]
        stream_sid: Cow<'a, str>,
        mark: MarkName,
    },
    #[serde(rename_all = "camelCase")]
    Dtmf {
        #[serde(borrow, default)]
        sequence_number: Cow<'a, str>,
        #[serde(borrow, default)]
        stream_sid: Cow<'a, str>,
        dtmf: Dtmf,
    },
    #[serde(rename_all = "camelCase")]
    Stop {
        #[serde(borrow, default)]
        sequence_number: Cow<'a, str>,
        #[serde(borrow, default)]
        stream_sid: Cow<'a, str>,
        #[serde(default)]
        stop: Option<Stop>,
    },
    /// Anything Twilio adds later: ignored, never an error.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    #[serde(default)]
    pub account_sid: String,
    #[serde(default)]
    pub stream_sid: String,
    pub call_sid: String,
    #[serde(default)]
    pub tracks: Vec<String>,
    /// The `<Parameter>`s of our TwiML: this is where the per-call token comes back.
    #[serde(default)]
    pub custom_parameters: std::collections::HashMap<String, String>,
    #[serde(default)]
    pub media_format: Option<MediaFormat>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Media<'a> {
    #[serde(borrow, default)]
    pub track: Cow<'a, str>,
    #[serde(borrow, default)]
    pub chunk: Cow<'a, str>,
    #[serde(borrow, default)]
    pub timestamp: Cow<'a, str>,
    /// Base64 µ-law, 8 kHz mono; passed on untouched.
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkName {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dtmf {
    #[serde(default)]
    pub track: String,
    pub digit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stop {
    #[serde(default)]
    pub account_sid: String,
    #[serde(default)]
    pub call_sid: String,
}

/// A message to Twilio. Anything else on the socket is Twilio error 31924.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Outbound<'a> {
    #[serde(rename_all = "camelCase")]
    Media {
        #[serde(borrow)]
        stream_sid: Cow<'a, str>,
        #[serde(borrow)]
        media: OutboundMedia<'a>,
    },
    #[serde(rename_all = "camelCase")]
    Mark {
        #[serde(borrow)]
        stream_sid: Cow<'a, str>,
        mark: MarkName,
    },
    #[serde(rename_all = "camelCase")]
    Clear {
        #[serde(borrow)]
        stream_sid: Cow<'a, str>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMedia<'a> {
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
}

/// The flat shape of a `media` frame, for the fast path.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaFrame<'a> {
    #[serde(borrow, default)]
    sequence_number: Cow<'a, str>,
    #[serde(borrow, default)]
    stream_sid: Cow<'a, str>,
    #[serde(borrow)]
    media: Media<'a>,
}

const MEDIA_PREFIX: &str = r#"{"event":"media""#;

/// Parses one text frame from Twilio.
pub fn parse_inbound(text: &str) -> Result<Inbound<'_>, serde_json::Error> {
    if text.starts_with(MEDIA_PREFIX) {
        let f: MediaFrame<'_> = serde_json::from_str(text)?;
        return Ok(Inbound::Media { sequence_number: f.sequence_number, stream_sid: f.stream_sid, media: f.media });
    }
    serde_json::from_str(text)
}

/// Whether `s` is base64 (standard alphabet, padded), checked without decoding: one scan of a frame's
/// payload (a few percent of parsing the frame: `cargo bench --bench media_frame`), so that the model
/// is never sent audio it would reject.
pub fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return false;
    }
    let body = b.strip_suffix(b"==").or_else(|| b.strip_suffix(b"=")).unwrap_or(b);
    // No early exit: a table lookup and an AND per byte, which the compiler unrolls, is several times
    // faster on a 216-byte payload than a short-circuiting test per character (and bad input is rare).
    body.iter().fold(true, |ok, &c| ok & BASE64_ALPHABET[usize::from(c)])
}

/// The standard base64 alphabet, as a lookup table.
static BASE64_ALPHABET: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
        c += 1;
    }
    table
};

/// Writes `{"event":"media","streamSid":…,"media":{"payload":…}}` into `out` (cleared first).
pub fn write_media(out: &mut String, stream_sid: &str, payload: &str) {
    out.clear();
    out.push_str(r#"{"event":"media","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push_str(r#","media":{"payload":"#);
    push_json_str(out, payload);
    out.push_str("}}");
}

/// Appends `s` as a JSON string. Base64 and Twilio ids never need escaping, so the common case is one
/// scan and one copy; anything else goes through serde_json's escaper.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a &str to JSON cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"callToken":"tok"}},"streamSid":"MZ1"}"#;

    #[test]
    fn parses_every_twilio_message() {
        match parse_inbound(START).unwrap() {
            Inbound::Start { stream_sid, start, .. } => {
                assert_eq!(stream_sid, "MZ1");
                assert_eq!(start.call_sid, "CA1");
                assert_eq!(start.custom_parameters.get("callToken").map(String::as_str), Some("tok"));
                assert_eq!(start.media_format.unwrap().sample_rate, 8000);
            }
            other => panic!("{other:?}"),
        }
        let connected = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
        assert!(matches!(parse_inbound(connected).unwrap(), Inbound::Connected { .. }));
        let mark = r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"m1"}}"#;
        assert!(matches!(parse_inbound(mark).unwrap(), Inbound::Mark { mark, .. } if mark.name == "m1"));
        let dtmf =
            r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"7"}}"#;
        assert!(matches!(parse_inbound(dtmf).unwrap(), Inbound::Dtmf { dtmf, .. } if dtmf.digit == "7"));
        let stop =
            r#"{"event":"stop","sequenceNumber":"6","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#;
        assert!(matches!(parse_inbound(stop).unwrap(), Inbound::Stop { .. }));
        assert_eq!(parse_inbound(r#"{"event":"newthing","x":1}"#).unwrap(), Inbound::Unknown);
        assert!(parse_inbound(r#"{"event":"media"}"#).is_err());
        assert!(parse_inbound("not json").is_err());
    }

    #[test]
    fn media_is_borrowed_from_the_frame() {
        let text = r#"{"event":"media","sequenceNumber":"3","streamSid":"MZ1","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//79/A=="}}"#;
        match parse_inbound(text).unwrap() {
            Inbound::Media { media, sequence_number, .. } => {
                assert!(matches!(media.payload, Cow::Borrowed("//79/A==")));
                assert_eq!(sequence_number, "3");
            }
            other => panic!("{other:?}"),
        }
        // Not in Twilio's field order: still understood, through the general path.
        let reordered = r#"{"streamSid":"MZ1","event":"media","media":{"payload":"AAAA"}}"#;
        assert!(matches!(parse_inbound(reordered).unwrap(), Inbound::Media { .. }));
    }

    #[test]
    fn outgoing_media_is_the_envelope_twilio_expects() {
        let mut out = String::new();
        write_media(&mut out, "MZ1", "//79/A==");
        let expected =
            Outbound::Media { stream_sid: "MZ1".into(), media: OutboundMedia { payload: "//79/A==".into() } };
        assert_eq!(serde_json::from_str::<Outbound<'_>>(&out).unwrap(), expected);
        assert_eq!(out, serde_json::to_string(&expected).unwrap());
        write_media(&mut out, "MZ\"1", "a\\b");
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "escaped: {out}");
        let clear = serde_json::to_string(&Outbound::Clear { stream_sid: "MZ1".into() }).unwrap();
        assert_eq!(clear, r#"{"event":"clear","streamSid":"MZ1"}"#);
    }
}
