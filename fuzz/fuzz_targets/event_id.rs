//! `/events` resume ids (`events::sse::resume_id`, `parse_query`): any `Last-Event-ID` header and query
//! string is read or refused with a 400, never a panic, and exactly as `openapi.yaml` says: an id is
//! `^[0-9]{0,19}$` (empty = none), the header wins over `lastEventId`, and the id read is the number sent.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use voice_call_mcp::events::EVENT_TYPES;
use voice_call_mcp::events::sse::{parse_query, resume_id};

/// Text-framed, so that the tests' cases seed it: `query`, or `Last-Event-ID header \n query`.
#[derive(Debug)]
struct Input<'a> {
    query: &'a str,
    header: Option<&'a [u8]>,
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Option<Self> {
        Some(match data.iter().position(|&b| b == b'\n') {
            Some(i) => Self { header: Some(&data[..i]), query: std::str::from_utf8(&data[i + 1..]).ok()? },
            None => Self { header: None, query: std::str::from_utf8(data).ok()? },
        })
    }
}

/// openapi.yaml's `^[0-9]{0,19}$`, and the id it denotes.
fn documented(given: &[u8]) -> Option<Option<u64>> {
    if given.len() > 19 || !given.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(if given.is_empty() { None } else { Some(given.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))) })
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else { return };
    if let Some(h) = input.header {
        assert_eq!(resume_id(h).ok(), documented(h), "resume_id({h:?})");
    }
    assert_eq!(resume_id(input.query.as_bytes()).ok(), documented(input.query.as_bytes()));

    let mut headers = HeaderMap::new();
    if let Some(h) = input.header {
        // What a client can send at all: HTTP refuses control characters in a header value.
        let Ok(value) = HeaderValue::from_bytes(h) else { return };
        headers.insert("last-event-id", value);
    }
    let result = parse_query(input.query, &headers).map(|(_, after)| after);

    // The same rules, written out from the documentation.
    let mut ok = true;
    let from_header = match input.header {
        Some(h) => documented(h).unwrap_or_else(|| {
            ok = false;
            None
        }),
        None => None,
    };
    let mut from_query = None;
    for (k, v) in url::form_urlencoded::parse(input.query.as_bytes()) {
        match k.as_ref() {
            "lastEventId" => match documented(v.as_bytes()) {
                Some(id) => from_query = from_query.or(id),
                None => ok = false,
            },
            "callSid" => ok &= !v.is_empty() && v.chars().count() <= 64,
            "types" => {
                ok &= v.split(',').map(|t| t.trim_matches(' ')).all(|t| t.is_empty() || EVENT_TYPES.contains(&t))
            }
            _ => {}
        }
    }
    let expected = ok.then(|| from_header.or(from_query));
    assert_eq!(result.ok(), expected, "query {:?}, header {:?}", input.query, input.header);
});
