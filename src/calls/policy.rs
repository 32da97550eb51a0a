//! Which numbers this server may ring.
//!
//! Checked before anything is dialed. `ALLOWED_DESTINATIONS` (if set) and `DENIED_DESTINATIONS` are
//! lists of E.164 prefixes; a denial always wins, so an operator can allow `+1` and still deny `+1900`.

use super::E164;

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
    fn empty_lists_allow_everything() {
        assert!(DestinationPolicy::default().check(&n("+442071838750")).is_ok());
    }

    #[test]
    fn malformed_prefixes_are_refused_at_start() {
        assert!(DestinationPolicy::new(vec!["1".into()], vec![]).is_err());
        assert!(DestinationPolicy::new(vec![], vec!["+1a".into()]).is_err());
        assert!(DestinationPolicy::new(vec!["+".into()], vec![]).is_err());
    }
}
