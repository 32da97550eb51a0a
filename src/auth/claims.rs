//! What a validated token says: who it is for, when it ends, what it may do, which calls it may see.
//!
//! Kept apart from validation so the rest of the server (the events feed, later `/mcp`) depends only on
//! these plain types, never on how the token was checked.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// May place and end calls.
pub const SCOPE_CALLS_WRITE: &str = "calls:write";
/// May read calls, their status and transcripts.
pub const SCOPE_CALLS_READ: &str = "calls:read";
/// May follow the `/events` feed.
pub const SCOPE_EVENTS_READ: &str = "events:read";

/// The `aud` claim: RFC 7519 allows one string or an array of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(a) => a == audience,
            Self::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

impl From<String> for Audience {
    fn from(audience: String) -> Self {
        Self::One(audience)
    }
}

impl From<&str> for Audience {
    fn from(audience: &str) -> Self {
        Self::One(audience.to_owned())
    }
}

/// Validated claims (DESIGN.md, "JWT claims").
///
/// Optional claims are left out when serialized, so a minted token never carries `"aud": null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to; per-subject limits (e.g. open `/events` streams) count by it.
    pub sub: String,
    /// Seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Space-separated scopes (RFC 8693 §4.2 / OAuth style): `calls:write calls:read events:read`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The CallSids this token may see; absent means all calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<String>>,
}

impl Claims {
    /// Whether `scope` is one of the token's scopes (an exact word: `calls:read` does not grant `calls:write`).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split_ascii_whitespace().any(|s| s == scope)
    }

    /// Whether this token may see the call `call_sid`.
    pub fn may_see(&self, call_sid: &str) -> bool {
        match &self.calls {
            None => true,
            Some(calls) => calls.iter().any(|c| c == call_sid),
        }
    }

    /// When the token stops being valid (streams opened with it are closed then). An `exp` beyond what
    /// `time` can represent is clamped to its maximum rather than wrapping into the past.
    pub fn expires_at(&self) -> OffsetDateTime {
        i64::try_from(self.exp)
            .ok()
            .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
            .unwrap_or_else(|| time::PrimitiveDateTime::MAX.assume_utc())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claims(scope: &str, calls: Option<Vec<&str>>) -> Claims {
        Claims {
            sub: "s".into(),
            exp: 1_700_000_000,
            iat: None,
            nbf: None,
            iss: None,
            aud: None,
            scope: scope.into(),
            calls: calls.map(|c| c.into_iter().map(str::to_owned).collect()),
        }
    }

    #[test]
    fn scopes_are_whole_words() {
        let c = claims("calls:read  events:read", None);
        assert!(c.has_scope(SCOPE_EVENTS_READ) && c.has_scope(SCOPE_CALLS_READ));
        assert!(!c.has_scope(SCOPE_CALLS_WRITE));
        assert!(!c.has_scope("events"));
        assert!(!claims("", None).has_scope(SCOPE_EVENTS_READ));
    }

    #[test]
    fn the_calls_claim_limits_which_calls_are_seen() {
        assert!(claims("", None).may_see("CA1"));
        let limited = claims("", Some(vec!["CA1", "CA2"]));
        assert!(limited.may_see("CA2"));
        assert!(!limited.may_see("CA3"));
        assert!(!claims("", Some(vec![])).may_see("CA1"));
    }

    #[test]
    fn audience_is_a_string_or_an_array_and_absent_fields_are_not_serialized() {
        let one: Claims = serde_json::from_str(r#"{"sub":"s","exp":1,"aud":"api"}"#).unwrap();
        assert_eq!(one.aud, Some(Audience::One("api".into())));
        let many: Claims = serde_json::from_str(r#"{"sub":"s","exp":1,"aud":["x","api"]}"#).unwrap();
        assert!(many.aud.as_ref().unwrap().contains("api"));
        assert_eq!(many.scope, "");
        assert_eq!(serde_json::to_string(&claims("", None)).unwrap(), r#"{"sub":"s","exp":1700000000}"#);
    }

    #[test]
    fn expiry_is_a_date_and_a_huge_exp_is_clamped() {
        assert_eq!(claims("", None).expires_at().unix_timestamp(), 1_700_000_000);
        let far = Claims { exp: u64::MAX, ..claims("", None) };
        assert_eq!(far.expires_at().year(), 9999);
    }
}
