//! One phone call as the domain sees it: who, why, how far along, and what was said.
//!
//! The record is plain data (serializable, so the MCP resource and `get-call` show exactly this);
//! the rules for changing it live in [`Call::apply`], so every producer — webhooks, REST replies,
//! the voice bridge — moves a call the same way.

use super::{CallStatus, E164, TranscriptPage};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Key presses kept on a record: a keypad held down, or a hostile stream, cannot grow it without bound.
pub const MAX_DTMF: usize = 1_000;
/// Errors kept on a record; more are counted.
pub const MAX_ERRORS: usize = 100;

/// Twilio's call id (`CA` + 32 hex digits). The one id clients see for a call.
pub type CallSid = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    /// The voice model.
    Ai,
    /// The person who picked up.
    Human,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptLine {
    pub speaker: Speaker,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub timestamp: OffsetDateTime,
}

/// Something that went wrong during a call, kept on its record (the voice model's errors, mostly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallError {
    pub code: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub timestamp: OffsetDateTime,
}

/// What the caller asked for when placing the call; fixed once the call exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallRequest {
    #[schemars(with = "String")]
    pub to: E164,
    #[schemars(with = "String")]
    pub from: E164,
    pub context: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    pub record: bool,
    pub machine_detection: bool,
    pub max_duration_secs: u32,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ai => "ai",
            Self::Human => "human",
        }
    }
}

impl Serialize for E164 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for E164 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        E164::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A call's record, without its transcript (see [`super::Transcript`]): small, so copying it on every
/// change and saving it costs the same on the last minute of a long call as on the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Call {
    pub call_sid: CallSid,
    #[serde(flatten)]
    pub request: CallRequest,
    pub status: CallStatus,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[schemars(with = "Option<String>")]
    pub answered_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[schemars(with = "Option<String>")]
    pub ended_at: Option<OffsetDateTime>,
    /// Seconds the call was connected, as Twilio reports it (`CallDuration`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_url: Option<String>,
    /// Keys the callee pressed, in order (the first [`MAX_DTMF`]).
    pub dtmf: Vec<String>,
    /// What went wrong, in order (the first [`MAX_ERRORS`]; `errorsOmitted` counts the rest).
    pub errors: Vec<CallError>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub errors_omitted: u64,
    /// True when the call was placed against the built-in simulators, not a real phone network.
    pub sandbox: bool,
    /// Twilio `SequenceNumber`s already applied: callbacks are retried and duplicated, each counts once.
    #[serde(skip)]
    applied_sequences: Vec<u32>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A call as readers see it (`get-call`, the `call://` resource): the record and a page of its
/// transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    #[serde(flatten)]
    pub call: Call,
    #[serde(flatten)]
    pub page: TranscriptPage,
}

/// One observation about a call, from whichever edge saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum CallUpdate {
    /// A status report. `sequence` is Twilio's `SequenceNumber` for webhooks; `None` for REST replies,
    /// which are applied only if they move the call forward.
    Status {
        status: CallStatus,
        sequence: Option<u32>,
        duration_secs: Option<u32>,
        answered_by: Option<String>,
        at: OffsetDateTime,
    },
    AnsweredBy(String),
    Recording {
        url: String,
    },
}

/// What applying an update changed, so callers publish exactly the changes and nothing twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// The status moved to this value.
    pub status: Option<CallStatus>,
    /// Some detail other than the status changed (answeredBy, recording, duration).
    pub detail: bool,
}

impl Applied {
    pub fn changed(&self) -> bool {
        self.status.is_some() || self.detail
    }
}

impl Call {
    pub fn new(call_sid: CallSid, request: CallRequest, status: CallStatus, sandbox: bool) -> Self {
        Self {
            call_sid,
            request,
            status,
            created_at: OffsetDateTime::now_utc(),
            answered_at: None,
            ended_at: None,
            duration_secs: None,
            answered_by: None,
            recording_url: None,
            dtmf: Vec::new(),
            errors: Vec::new(),
            errors_omitted: 0,
            sandbox,
            applied_sequences: Vec::new(),
        }
    }

    /// Applies one update under the rules: each sequence number once, status never backwards,
    /// an ended call's ending never rewritten.
    pub fn apply(&mut self, update: CallUpdate) -> Applied {
        let mut applied = Applied::default();
        match update {
            CallUpdate::Status { status, sequence, duration_secs, answered_by, at } => {
                if let Some(seq) = sequence {
                    if self.applied_sequences.contains(&seq) {
                        return applied;
                    }
                    self.applied_sequences.push(seq);
                }
                if self.status.can_advance_to(status) {
                    self.status = status;
                    applied.status = Some(status);
                    if status == CallStatus::InProgress {
                        self.answered_at = Some(at);
                    }
                    if status.is_terminal() {
                        self.ended_at = Some(at);
                    }
                } else if status == CallStatus::InProgress && self.answered_at.is_none() {
                    // Overtaken by the ending that came after it: the call was still answered, then.
                    self.answered_at = Some(at);
                    applied.detail = true;
                }
                // Details may ride on a callback whose status is already known (e.g. a late `completed`
                // duplicate carrying CallDuration after a REST hang-up already ended the call).
                if let Some(d) = duration_secs.filter(|_| self.status.is_terminal())
                    && self.duration_secs != Some(d)
                {
                    self.duration_secs = Some(d);
                    applied.detail = true;
                }
                if let Some(by) = answered_by {
                    applied.detail |= self.set_answered_by(by);
                }
            }
            CallUpdate::AnsweredBy(by) => applied.detail = self.set_answered_by(by),
            CallUpdate::Recording { url } => {
                if self.recording_url.as_deref() != Some(url.as_str()) {
                    self.recording_url = Some(url);
                    applied.detail = true;
                }
            }
        }
        applied
    }

    /// Keeps a key press, unless [`MAX_DTMF`] are kept already; whether it was kept.
    pub fn push_dtmf(&mut self, digit: String) -> bool {
        let keep = self.dtmf.len() < MAX_DTMF;
        if keep {
            self.dtmf.push(digit);
        }
        keep
    }

    /// Keeps an error, or counts it once [`MAX_ERRORS`] are kept.
    pub fn push_error(&mut self, error: CallError) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(error);
        } else {
            self.errors_omitted += 1;
        }
    }

    fn set_answered_by(&mut self, by: String) -> bool {
        if self.answered_by.as_deref() == Some(by.as_str()) {
            return false;
        }
        self.answered_by = Some(by);
        true
    }
}

/// A plain request for unit tests across the crate.
#[cfg(test)]
pub(crate) fn test_request() -> CallRequest {
    let number = |n: &str| E164::parse(n).unwrap_or_else(|e| panic!("{e}"));
    CallRequest {
        to: number("+14155550100"),
        from: number("+14155550199"),
        context: "book a table".into(),
        first_message: None,
        voice: None,
        language: None,
        record: false,
        machine_detection: false,
        max_duration_secs: 600,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn call() -> Call {
        Call::new("CA00000000000000000000000000000001".into(), test_request(), CallStatus::Queued, false)
    }

    fn status(status: CallStatus, seq: u32) -> CallUpdate {
        CallUpdate::Status {
            status,
            sequence: Some(seq),
            duration_secs: (status == CallStatus::Completed).then_some(42),
            answered_by: None,
            at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn duplicate_and_out_of_order_callbacks_apply_once_and_never_go_back() {
        let mut c = call();
        assert_eq!(c.apply(status(CallStatus::Initiated, 0)).status, Some(CallStatus::Initiated));
        assert_eq!(c.apply(status(CallStatus::Initiated, 0)), Applied::default());
        assert_eq!(c.apply(status(CallStatus::InProgress, 2)).status, Some(CallStatus::InProgress));
        // `ringing` (seq 1) arrives late: remembered as seen, but the call does not move back.
        assert_eq!(c.apply(status(CallStatus::Ringing, 1)), Applied::default());
        assert_eq!(c.status, CallStatus::InProgress);
        assert!(c.answered_at.is_some());
        let done = c.apply(status(CallStatus::Completed, 3));
        assert_eq!(done.status, Some(CallStatus::Completed));
        assert_eq!(c.duration_secs, Some(42));
        assert!(c.ended_at.is_some());
        assert_eq!(c.apply(status(CallStatus::Failed, 4)), Applied::default());
        assert_eq!(c.status, CallStatus::Completed);
    }

    #[test]
    fn late_duration_fills_in_after_a_rest_ending() {
        let mut c = call();
        let rest = CallUpdate::Status {
            status: CallStatus::Completed,
            sequence: None,
            duration_secs: None,
            answered_by: None,
            at: OffsetDateTime::now_utc(),
        };
        assert_eq!(c.apply(rest).status, Some(CallStatus::Completed));
        let hook = c.apply(status(CallStatus::Completed, 3));
        assert_eq!(hook, Applied { status: None, detail: true });
        assert_eq!(c.duration_secs, Some(42));
    }

    #[test]
    fn serializes_camel_case_with_the_request_inline() {
        let v = serde_json::to_value(call()).unwrap();
        assert_eq!(v["callSid"], "CA00000000000000000000000000000001");
        assert_eq!(v["to"], "+14155550100");
        assert_eq!(v["status"], "queued");
        assert!(v.get("appliedSequences").is_none());
    }
}
