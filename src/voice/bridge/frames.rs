//! What the bridge makes of a frame from Twilio that is not Twilio's protocol.
//!
//! A stream that passed the signed handshake and presented the call's token is Twilio's, so one bad
//! frame is a glitch to skip, not a reason to end a call; only a stream that keeps sending them is
//! treated as broken. The checks here are cheap enough for every frame: a length, one scan of the
//! payload.

/// The frames a stream sent that were skipped, and whether it has sent too many.
#[derive(Debug, Default)]
pub(super) struct MalformedFrames {
    pub(super) total: u32,
    pub(super) in_a_row: u32,
}

/// What was wrong with a skipped frame, for the log and the call's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Malformed {
    /// Larger than any frame Twilio sends; not even parsed.
    Oversized,
    /// Not JSON at all.
    NotJson,
    /// JSON, but not a Twilio message (an array, `"media": null`, a field of the wrong type).
    NotTwilio,
    /// A `media` frame whose payload is not base64: never passed to the model.
    BadAudio,
}

impl Malformed {
    pub(super) fn of(e: &serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Data => Self::NotTwilio,
            _ => Self::NotJson,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::NotJson => "not JSON",
            Self::NotTwilio => "not a Twilio media-stream message",
            Self::BadAudio => "media payload that is not base64",
        }
    }
}

/// Twilio's frames are a few hundred bytes (a `start` with many parameters, a few KiB): anything far
/// larger is skipped unread.
pub(super) const MAX_TWILIO_FRAME_TEXT: usize = 64 * 1024;
