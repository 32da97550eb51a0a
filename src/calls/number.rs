//! Strict E.164 phone numbers.
//!
//! Every destination a model asks for passes through here before any policy check or any money is spent,
//! so the parser is deliberately unforgiving: a leading `+`, a non-zero country digit, 8 to 15 digits in
//! all, nothing else. Spaces, dashes and brackets are refused rather than guessed at, so the number that
//! rings is exactly the number that was checked.

use std::fmt;

/// A phone number in E.164 form, e.g. `+14155550123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

/// Why a string is not an E.164 number; the message is shown to the model, so it says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("'{0}' is not an E.164 phone number: it must start with '+' and the country code, e.g. +14155550123")]
    MissingPlus(String),
    #[error("'{0}' is not an E.164 phone number: only digits may follow the '+' (no spaces, dashes or brackets)")]
    NotDigits(String),
    #[error("'{0}' is not an E.164 phone number: it needs 8 to 15 digits after the '+'")]
    Length(String),
    #[error("'{0}' is not an E.164 phone number: country codes never start with 0")]
    LeadingZero(String),
}

impl E164 {
    pub fn parse(input: &str) -> Result<Self, NumberError> {
        let shown = || input.chars().take(32).collect::<String>();
        let digits = input.strip_prefix('+').ok_or_else(|| NumberError::MissingPlus(shown()))?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NumberError::NotDigits(shown()));
        }
        if !(8..=15).contains(&digits.len()) {
            return Err(NumberError::Length(shown()));
        }
        if digits.starts_with('0') {
            return Err(NumberError::LeadingZero(shown()));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_numbers() {
        for n in ["+14155550123", "+442071838750", "+12345678", "+123456789012345"] {
            assert_eq!(E164::parse(n).map(|e| e.to_string()), Ok(n.to_owned()));
        }
    }

    #[test]
    fn refuses_anything_loose() {
        assert!(matches!(E164::parse("14155550123"), Err(NumberError::MissingPlus(_))));
        assert!(matches!(E164::parse("+1 415 555 0123"), Err(NumberError::NotDigits(_))));
        assert!(matches!(E164::parse("+1-415-555-0123"), Err(NumberError::NotDigits(_))));
        assert!(matches!(E164::parse("+1234567"), Err(NumberError::Length(_))));
        assert!(matches!(E164::parse("+1234567890123456"), Err(NumberError::Length(_))));
        assert!(matches!(E164::parse("+0123456789"), Err(NumberError::LeadingZero(_))));
        assert!(matches!(E164::parse(""), Err(NumberError::MissingPlus(_))));
        assert!(matches!(E164::parse("+"), Err(NumberError::Length(_))));
        assert!(matches!(E164::parse("+١٢٣٤٥٦٧٨٩"), Err(NumberError::NotDigits(_))));
    }
}
