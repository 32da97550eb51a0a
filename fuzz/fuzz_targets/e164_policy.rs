//! Destinations (`calls::E164`, `calls::DestinationPolicy`, `calls::safety`): any text and any prefix
//! lists are judged without a panic. An accepted number is exactly the text given and re-parses to
//! itself; an accepted prefix list behaves as documented: a denied prefix always refuses, a premium
//! range needs an allowance inside it, and with an allow list only its prefixes pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voice_call_mcp::calls::safety::{self, Hazard};
use voice_call_mcp::calls::{DestinationPolicy, E164, PolicyError};

/// Text-framed, so that the tests' numbers seed it: `typed \n allowed,prefixes \n denied,prefixes`
/// (an empty line is an empty list).
#[derive(Debug)]
struct Input<'a> {
    typed: &'a str,
    allowed: Vec<String>,
    denied: Vec<String>,
}

impl<'a> Input<'a> {
    fn read(text: &'a str) -> Self {
        let mut lines = text.splitn(3, '\n');
        let typed = lines.next().unwrap_or_default();
        let mut list = || -> Vec<String> {
            lines.next().filter(|l| !l.is_empty()).map_or_else(Vec::new, |l| l.split(',').map(str::to_owned).collect())
        };
        let allowed = list();
        let denied = list();
        Self { typed, allowed, denied }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let input = Input::read(text);
    let screened = PolicyError::screen_typed(input.typed);
    let hazard = safety::screen_typed(input.typed);
    assert_eq!(screened.is_err(), matches!(hazard, Some(Hazard::Emergency | Hazard::ShortCode)));

    let parsed = E164::parse(input.typed);
    if let Ok(number) = &parsed {
        assert_eq!(number.as_str(), input.typed);
        assert_eq!(number.to_string(), input.typed);
        assert_eq!(E164::parse(number.as_str()).as_ref(), Ok(number));
        let digits = &input.typed[1..];
        assert!((8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()));
        assert!(!digits.starts_with('0'));
        // A full number is never taken for an emergency number or a short code.
        assert!(screened.is_ok(), "{:?} is E.164 yet screened out", input.typed);
    }

    let Ok(policy) = DestinationPolicy::new(input.allowed.clone(), input.denied.clone()) else {
        let well_formed = |p: &String| {
            p.strip_prefix('+').is_some_and(|d| (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
        };
        assert!(!input.allowed.iter().chain(&input.denied).all(well_formed), "a good list was refused");
        return;
    };
    for p in input.allowed.iter().chain(&input.denied) {
        // Every accepted prefix is itself a `+` and digits, so it re-parses as a prefix list of one.
        assert!(DestinationPolicy::new(vec![p.clone()], vec![]).is_ok());
    }
    let Ok(number) = parsed else { return };
    let n = number.as_str();
    let verdict = policy.check(&number);
    let denied = input.denied.iter().any(|p| n.starts_with(p.as_str()));
    let premium = safety::premium(n);
    let unlocked = match &premium {
        Some(Hazard::PremiumRate { prefix, .. }) => {
            input.allowed.iter().any(|a| a.starts_with(prefix) && n.starts_with(a.as_str()))
        }
        _ => true,
    };
    let listed = input.allowed.is_empty() || input.allowed.iter().any(|p| n.starts_with(p.as_str()));
    match &verdict {
        Ok(()) => assert!(!denied && unlocked && listed, "{n} passed {policy:?}"),
        Err(PolicyError::Denied { .. }) => assert!(denied),
        Err(PolicyError::PremiumRate { .. }) => assert!(!denied && !unlocked),
        Err(PolicyError::NotAllowed { .. }) => assert!(!denied && unlocked && !listed),
        Err(other) => panic!("check gave a typed-number refusal: {other}"),
    }
    if !denied && unlocked && listed {
        assert!(verdict.is_ok(), "{n} refused by {policy:?}: {verdict:?}");
    }
});
