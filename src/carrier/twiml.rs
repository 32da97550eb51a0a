//! The TwiML that connects an answered call to our media WebSocket.
//!
//! Sent inline with the create-call request (no TwiML webhook round trip). The stream URL may not carry
//! a query string (Twilio strips it, or fails with 31920), so the call's secret travels as a
//! `<Parameter>` and comes back to us in the stream's `start.customParameters`.

/// `<Response><Connect><Stream url=…><Parameter …/></Stream></Connect></Response>`.
pub fn connect_stream(stream_url: &str, parameters: &[(&str, &str)]) -> String {
    let mut xml = String::with_capacity(256);
    xml.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url=""#);
    xml.push_str(&escape(stream_url));
    xml.push_str(r#"">"#);
    for (name, value) in parameters {
        xml.push_str(r#"<Parameter name=""#);
        xml.push_str(&escape(name));
        xml.push_str(r#"" value=""#);
        xml.push_str(&escape(value));
        xml.push_str(r#""/>"#);
    }
    xml.push_str("</Stream></Connect></Response>");
    xml
}

/// `<Response><Say>…</Say><Hangup/></Response>`: what the callee hears when the voice model is gone.
pub fn say_and_hang_up(text: &str) -> String {
    format!(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>{}</Say><Hangup/></Response>"#, escape(text))
}

/// `s` as XML attribute or element text that an XML parser reads back as `s`.
///
/// Tab, newline and carriage return are written as character references: a parser turns them into
/// spaces in an attribute and `\r\n` into `\n` in text, so written plainly they would not come back as
/// given. Characters XML 1.0 cannot carry at all (C0 controls but those three, U+FFFE, U+FFFF) would make
/// the whole document ill-formed, which Twilio cannot parse; they become U+FFFD instead.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}' => {
                out.push(char::REPLACEMENT_CHARACTER)
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_stream_with_escaped_parameters() {
        let xml = connect_stream("wss://h.example.com/twilio/media", &[("callToken", "a&b\"<c>")]);
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h.example.com/twilio/media"><Parameter name="callToken" value="a&amp;b&quot;&lt;c&gt;"/></Stream></Connect></Response>"#
        );
    }

    /// Found by `fuzz/fuzz_targets/twiml.rs`: a NUL in a parameter made the document ill-formed XML
    /// (roxmltree: "a non-XML character '\0' found").
    #[test]
    fn characters_xml_cannot_carry_are_replaced() {
        let xml = connect_stream("wss://h/twilio/media", &[("d", "\0"), ("e", "a\u{1}\u{FFFF}b")]);
        assert!(xml.contains("<Parameter name=\"d\" value=\"\u{FFFD}\"/>"), "{xml}");
        assert!(xml.contains("<Parameter name=\"e\" value=\"a\u{FFFD}\u{FFFD}b\"/>"), "{xml}");
        assert!(!xml.contains('\0'));
    }

    /// Found by the same target once NUL was handled: a parser normalizes whitespace in attributes
    /// (tab, newline, carriage return become spaces) and `\r\n` in text, so they did not read back as given.
    #[test]
    fn whitespace_is_written_so_that_it_reads_back() {
        let xml = connect_stream("wss://h/twilio/media", &[("callToken", "a\tb\nc\r\nd")]);
        assert!(xml.contains(r#"value="a&#9;b&#10;c&#13;&#10;d""#), "{xml}");
        assert!(say_and_hang_up("one\r\ntwo").contains("<Say>one&#13;&#10;two</Say>"));
    }
}
