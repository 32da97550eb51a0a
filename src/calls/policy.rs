//! Which numbers this server may ring.
//!
//! Checked before anything is dialed. `ALLOWED_DESTINATIONS` (if set) and `DENIED_DESTINATIONS` are
//! lists of E.164 prefixes; a denial always wins, so an operator can allow `+1` and still deny `+1900`.
//! On top of the lists, [`safety`](super::safety)'s rules: emergency numbers and short codes are never
//! called, premium-rate ranges only when `ALLOWED_DESTINATIONS` names them explicitly.

use super::E164;
use super::safety::{self, Hazard};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    allowed: Vec<String>,
    denied: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("calls to {number} are not allowed on this server (denied prefix {prefix})")]
    Denied { number: String, prefix: String },
    #[error("calls to {number} are not allowed on this server: it only calls numbers starting with {allowed}")]
    NotAllowed { number: String, allowed: String },
    #[error("'{typed}' looks like an emergency number; this server never calls emergency services")]
    Emergency { typed: String },
    #[error(
        "'{typed}' looks like a short code or service number; this server only calls full international \
         numbers (E.164, e.g. +14155550123)"
    )]
    ShortCode { typed: String },
    #[error(
        "{number} is {what}; premium-rate numbers are refused unless the operator allows {prefix} in \
         ALLOWED_DESTINATIONS"
    )]
    PremiumRate { number: String, prefix: &'static str, what: &'static str },
}

impl PolicyError {
    /// The refusal for a destination as typed, before it is parsed: emergency numbers and short codes.
    pub fn screen_typed(typed: &str) -> Result<(), Self> {
        let shown = || typed.chars().take(32).collect::<String>();
        match safety::screen_typed(typed) {
            Some(Hazard::Emergency) => Err(Self::Emergency { typed: shown() }),
            Some(Hazard::ShortCode) => Err(Self::ShortCode { typed: shown() }),
            Some(Hazard::PremiumRate { .. }) | None => Ok(()),
        }
    }
}

/// A prefix list entry that is not `+` and 1 to 15 digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an E.164 prefix (a '+' and 1 to 15 digits, e.g. +1 or +4420)")]
pub struct BadPrefix(pub String);

impl DestinationPolicy {
    pub fn new(allowed: Vec<String>, denied: Vec<String>) -> Result<Self, BadPrefix> {
        for p in allowed.iter().chain(&denied) {
            let digits = p.strip_prefix('+').unwrap_or("");
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadPrefix(p.clone()));
            }
        }
        Ok(Self { allowed, denied })
    }

    pub fn check(&self, number: &E164) -> Result<(), PolicyError> {
        let n = number.as_str();
        if let Some(prefix) = self.denied.iter().find(|p| n.starts_with(p.as_str())) {
            return Err(PolicyError::Denied { number: n.to_owned(), prefix: prefix.clone() });
        }
        if let Some(Hazard::PremiumRate { prefix, what }) = safety::premium(n) {
            // Only an allowance inside the premium range unlocks it: allowing `+1` is not allowing `+1900`.
            let unlocked = self.allowed.iter().any(|a| a.starts_with(prefix) && n.starts_with(a.as_str()));
            if !unlocked {
                return Err(PolicyError::PremiumRate { number: n.to_owned(), prefix, what });
            }
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|p| n.starts_with(p.as_str())) {
            return Err(PolicyError::NotAllowed { number: n.to_owned(), allowed: self.allowed.join(", ") });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn n(s: &str) -> E164 {
        E164::parse(s).unwrap()
    }

    #[test]
    fn denial_wins_over_allowance() {
        let p = DestinationPolicy::new(vec!["+1".into()], vec!["+1900".into()]).unwrap();
        assert!(p.check(&n("+14155550100")).is_ok());
        assert!(matches!(p.check(&n("+19005550100")), Err(PolicyError::Denied { .. })));
        assert!(matches!(p.check(&n("+442071838750")), Err(PolicyError::NotAllowed { .. })));
    }

    #[test]
    fn empty_lists_allow_every_ordinary_number() {
        assert!(DestinationPolicy::default().check(&n("+442071838750")).is_ok());
    }

    #[test]
    fn premium_rate_needs_an_explicit_allowance_inside_its_range() {
        let premium = n("+19005550100");
        let refused = DestinationPolicy::default().check(&premium).unwrap_err();
        assert!(matches!(refused, PolicyError::PremiumRate { prefix: "+1900", .. }));
        assert!(refused.to_string().contains("ALLOWED_DESTINATIONS"), "{refused}");
        let broad = DestinationPolicy::new(vec!["+1".into()], vec![]).unwrap();
        assert!(matches!(broad.check(&premium), Err(PolicyError::PremiumRate { .. })));
        let explicit = DestinationPolicy::new(vec!["+1900555".into()], vec![]).unwrap();
        assert!(explicit.check(&premium).is_ok());
    }

    #[test]
    fn emergency_numbers_and_short_codes_are_refused_as_typed() {
        assert!(matches!(PolicyError::screen_typed("911"), Err(PolicyError::Emergency { .. })));
        assert!(matches!(PolicyError::screen_typed("+44 999"), Err(PolicyError::Emergency { .. })));
        assert!(matches!(PolicyError::screen_typed("+12345"), Err(PolicyError::ShortCode { .. })));
        assert!(PolicyError::screen_typed("+14155550123").is_ok());
    }

    #[test]
    fn malformed_prefixes_are_refused_at_start() {
        assert!(DestinationPolicy::new(vec!["1".into()], vec![]).is_err());
        assert!(DestinationPolicy::new(vec![], vec!["+1a".into()]).is_err());
        assert!(DestinationPolicy::new(vec!["+".into()], vec![]).is_err());
    }
}
