//! Numbers no AI should ring: emergency services, short codes, premium-rate lines.
//!
//! An assistant can be talked into dialing anything, and every call here is real and paid for. Calling
//! an emergency number ties up a line people's lives depend on; short codes and premium-rate numbers
//! cost money per minute or per message and are the classic target of toll fraud. So these are refused
//! by default, with a reason a model can relay. Emergency numbers are never allowed. A premium range is
//! allowed only when the operator lists it (or a narrower prefix inside it) in `ALLOWED_DESTINATIONS`.

/// Emergency numbers as dialed locally (ITU-T E.161.1 and national plans): 112, 911, 999, 000, …
const EMERGENCY: &[&str] = &[
    "112", "911", "999", "000", "110", "119", "100", "101", "102", "103", "108", "111", "113", "115", "117", "118",
    "122", "123", "190", "191", "192", "193", "197", "199", "997", "998", "15", "17", "18", "08", "061", "062", "066",
];

/// Premium-rate and revenue-sharing ranges, by E.164 prefix, with what they are.
pub(super) const PREMIUM: &[(&str, &str)] = &[
    ("+1900", "a North American premium-rate (1-900) number"),
    ("+1976", "a North American premium-rate (976) number"),
    ("+4490", "a UK premium-rate (090) number"),
    ("+4491", "a UK premium-rate (091) number"),
    ("+4498", "a UK premium-rate (098) number"),
    ("+44118", "a UK directory-enquiry (118) number"),
    ("+44871", "a UK revenue-sharing (0871) number"),
    ("+44872", "a UK revenue-sharing (0872) number"),
    ("+44873", "a UK revenue-sharing (0873) number"),
    ("+49137", "a German televoting (0137) number"),
    ("+49900", "a German premium-rate (0900) number"),
    ("+49118", "a German directory-enquiry (118) number"),
    ("+3381", "a French shared-cost (081) number"),
    ("+3382", "a French premium-rate (082) number"),
    ("+3389", "a French premium-rate (089) number"),
    ("+34803", "a Spanish premium-rate (803) number"),
    ("+34806", "a Spanish premium-rate (806) number"),
    ("+34807", "a Spanish premium-rate (807) number"),
    ("+34905", "a Spanish televoting (905) number"),
    ("+39892", "an Italian premium-rate (892) number"),
    ("+39895", "an Italian premium-rate (895) number"),
    ("+39899", "an Italian premium-rate (899) number"),
    ("+61190", "an Australian premium-rate (190) number"),
    ("+64900", "a New Zealand premium-rate (0900) number"),
    ("+7809", "a Russian premium-rate (809) number"),
    ("+979", "an international premium-rate (+979) number"),
    ("+881", "a satellite-network (+881) number"),
    ("+882", "an international-network (+882) number"),
    ("+883", "an international-network (+883) number"),
    ("+870", "an Inmarsat satellite (+870) number"),
];

/// Why a destination is unsafe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hazard {
    Emergency,
    ShortCode,
    PremiumRate { prefix: &'static str, what: &'static str },
}

/// Looks at a destination as typed, before it is parsed as E.164, so that "911", "+44 999" or "112" get
/// the reason that matters rather than "not an E.164 number".
pub fn screen_typed(input: &str) -> Option<Hazard> {
    let digits: String = input.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    // As dialed, or after a one- to three-digit country code (+44 999, +1 911).
    let emergency = (0..=3.min(digits.len() - 1)).any(|skip| EMERGENCY.contains(&&digits[skip..]));
    Some(if emergency { Hazard::Emergency } else { Hazard::ShortCode })
}

/// The premium range `number` (E.164) falls in, if any.
pub fn premium(number: &str) -> Option<Hazard> {
    PREMIUM
        .iter()
        .find(|(prefix, _)| number.starts_with(prefix))
        .map(|&(prefix, what)| Hazard::PremiumRate { prefix, what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emergency_numbers_are_recognised_as_typed() {
        for typed in ["911", "112", "999", "000", "+1911", "+44 999", "+44-112", "+61000", "+49110", "+3317", "15"] {
            assert_eq!(screen_typed(typed), Some(Hazard::Emergency), "{typed}");
        }
    }

    #[test]
    fn short_codes_are_recognised_and_real_numbers_pass() {
        assert_eq!(screen_typed("+12345"), Some(Hazard::ShortCode));
        assert_eq!(screen_typed("87654"), Some(Hazard::ShortCode));
        assert_eq!(screen_typed("+14155550123"), None);
        assert_eq!(screen_typed("+442071838750"), None);
        assert_eq!(screen_typed(""), None);
        assert_eq!(screen_typed("not a number"), None);
    }

    #[test]
    fn premium_ranges_are_named() {
        let Some(Hazard::PremiumRate { prefix, what }) = premium("+19005550100") else { panic!("1-900 is premium") };
        assert_eq!(prefix, "+1900");
        assert!(what.contains("premium"));
        assert!(premium("+447700900123").is_none(), "UK mobile");
        assert!(premium("+449099000000").is_some(), "UK 090");
        assert!(premium("+14155550123").is_none());
        assert!(premium("+9790123456").is_some());
    }
}
