//! The call's lifecycle in Twilio's own vocabulary, as a state machine that only moves forward.
//!
//! Twilio's status callbacks can arrive twice or out of order, so a status is applied only if it is
//! further along than the one we hold; once a call is over (completed, busy, failed, no-answer,
//! canceled) nothing changes it again.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    Queued,
    Initiated,
    Ringing,
    InProgress,
    Completed,
    Busy,
    Failed,
    NoAnswer,
    Canceled,
}

impl CallStatus {
    /// Twilio's spelling (`in-progress`, `no-answer`, …). Unknown words are `None`, not an error:
    /// Twilio may add statuses, and an unknown one must not move the call.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "queued" => Self::Queued,
            "initiated" => Self::Initiated,
            "ringing" => Self::Ringing,
            "in-progress" | "answered" => Self::InProgress,
            "completed" => Self::Completed,
            "busy" => Self::Busy,
            "failed" => Self::Failed,
            "no-answer" => Self::NoAnswer,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Initiated => "initiated",
            Self::Ringing => "ringing",
            Self::InProgress => "in-progress",
            Self::Completed => "completed",
            Self::Busy => "busy",
            Self::Failed => "failed",
            Self::NoAnswer => "no-answer",
            Self::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() == 4
    }

    /// How far along the call is. All ends share the top rank: an ended call never changes its ending.
    fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Initiated => 1,
            Self::Ringing => 2,
            Self::InProgress => 3,
            Self::Completed | Self::Busy | Self::Failed | Self::NoAnswer | Self::Canceled => 4,
        }
    }

    /// Whether moving from `self` to `next` is progress (and so should be applied).
    pub fn can_advance_to(self, next: Self) -> bool {
        !self.is_terminal() && next.rank() > self.rank()
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::CallStatus::*;
    use super::*;

    #[test]
    fn moves_only_forward() {
        assert!(Queued.can_advance_to(Ringing));
        assert!(Ringing.can_advance_to(InProgress));
        assert!(InProgress.can_advance_to(Completed));
        assert!(Ringing.can_advance_to(NoAnswer));
        assert!(!InProgress.can_advance_to(Ringing));
        assert!(!Ringing.can_advance_to(Ringing));
        assert!(!Completed.can_advance_to(Failed));
        assert!(!Busy.can_advance_to(Completed));
    }

    #[test]
    fn speaks_twilios_words() {
        for s in [Queued, Initiated, Ringing, InProgress, Completed, Busy, Failed, NoAnswer, Canceled] {
            assert_eq!(CallStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(CallStatus::parse("answered"), Some(InProgress));
        assert_eq!(CallStatus::parse("teleported"), None);
        assert_eq!(serde_json::to_string(&NoAnswer).ok().as_deref(), Some("\"no-answer\""));
    }
}
