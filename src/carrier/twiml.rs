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

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
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
}
