//! The TwiML builder (`carrier::twiml`) with hostile text in every place it puts text: the stream URL,
//! `<Parameter>` names and values (where the per-call token travels), and `<Say>`. Checked with an
//! independent XML parser (roxmltree): the output is always well-formed, has exactly the expected
//! elements, and each attribute and text reads back as the input — except characters XML 1.0 cannot
//! carry at all (most C0 controls, U+FFFE, U+FFFF), which become U+FFFD.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use voice_call_mcp::carrier::twiml::{connect_stream, say_and_hang_up};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    stream_url: &'a str,
    parameters: Vec<(&'a str, &'a str)>,
    say: &'a str,
}

/// XML 1.0's `Char` production.
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn expected(s: &str) -> String {
    s.chars().map(|c| if xml_char(c) { c } else { '\u{FFFD}' }).collect()
}

fn parse(xml: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("not well-formed ({e}): {xml:?}"))
}

fn elements<'a, 'i>(node: roxmltree::Node<'a, 'i>) -> Vec<roxmltree::Node<'a, 'i>> {
    node.children().filter(roxmltree::Node::is_element).collect()
}

fn text_of(node: roxmltree::Node<'_, '_>) -> String {
    node.children().filter(roxmltree::Node::is_text).filter_map(|t| t.text()).collect()
}

fuzz_target!(|input: Input<'_>| {
    let xml = connect_stream(input.stream_url, &input.parameters);
    let doc = parse(&xml);
    let response = doc.root_element();
    assert_eq!(response.tag_name().name(), "Response");
    let [connect] = elements(response)[..] else { panic!("Response holds one Connect: {xml:?}") };
    assert_eq!(connect.tag_name().name(), "Connect");
    let [stream] = elements(connect)[..] else { panic!("Connect holds one Stream: {xml:?}") };
    assert_eq!(stream.tag_name().name(), "Stream");
    assert_eq!(stream.attribute("url"), Some(expected(input.stream_url).as_str()), "{xml:?}");
    let params = elements(stream);
    assert_eq!(params.len(), input.parameters.len(), "{xml:?}");
    for (p, (name, value)) in params.iter().zip(&input.parameters) {
        assert_eq!(p.tag_name().name(), "Parameter");
        assert_eq!(p.attribute("name"), Some(expected(name).as_str()), "{xml:?}");
        assert_eq!(p.attribute("value"), Some(expected(value).as_str()), "{xml:?}");
    }
    assert!(text_of(stream).trim().is_empty());

    let xml = say_and_hang_up(input.say);
    let doc = parse(&xml);
    let response = doc.root_element();
    let [say, hangup] = elements(response)[..] else { panic!("Response holds Say and Hangup: {xml:?}") };
    assert_eq!((say.tag_name().name(), hangup.tag_name().name()), ("Say", "Hangup"));
    assert_eq!(text_of(say), expected(input.say), "{xml:?}");
});
