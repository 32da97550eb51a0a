//! Twilio's webhooks (`carrier::webhooks`, `carrier::signature`): any URL, form body and
//! `X-Twilio-Signature` is accepted or refused, never a panic, and what is accepted reads into call
//! updates that apply without a panic. The signature's properties: one computed by the module's own
//! signer over (url, params) always validates; changing one byte of the signature or of the URL never
//! does; nor, for a one-parameter form, does changing one byte of its name or value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voice_call_mcp::calls::{Call, CallRequest, CallStatus, E164};
use voice_call_mcp::carrier::signature;
use voice_call_mcp::carrier::webhooks::{Form, amd_update, recording_update, status_updates};

/// The input is text-framed so that real webhooks seed it (`fuzz/corpus/webhook_form/seed-*`):
/// `auth token \n URL \n X-Twilio-Signature \n form body`, where a signature line of `-` means no header.
/// The byte to change for the properties below is chosen from the input's bytes.
#[derive(Debug)]
struct Input<'a> {
    auth_token: &'a str,
    url: &'a str,
    signature: Option<&'a str>,
    body: &'a [u8],
    flip_at: u16,
    flip_with: u8,
}

impl<'a> Input<'a> {
    fn read(data: &'a [u8]) -> Option<Self> {
        let mut lines = data.splitn(4, |&b| b == b'\n');
        let auth_token = std::str::from_utf8(lines.next()?).ok()?;
        let url = std::str::from_utf8(lines.next()?).ok()?;
        let signature = std::str::from_utf8(lines.next()?).ok().filter(|s| *s != "-");
        let body = lines.next().unwrap_or_default();
        let sum = data.iter().fold(0u32, |n, &b| n.wrapping_mul(31).wrapping_add(u32::from(b)));
        Some(Self { auth_token, url, signature, body, flip_at: (sum >> 8) as u16, flip_with: sum as u8 })
    }
}

fn call() -> Call {
    let number = |n: &str| E164::parse(n).unwrap();
    let request = CallRequest {
        to: number("+14155550100"),
        from: number("+14155550199"),
        context: "fuzz".into(),
        first_message: None,
        voice: None,
        language: None,
        record: true,
        machine_detection: true,
        max_duration_secs: 600,
    };
    Call::new("CA00000000000000000000000000000001".into(), request, CallStatus::Queued, false)
}

/// `s` with the byte at `at` XORed with `with` (kept ASCII, so the text stays UTF-8), or `None` if that
/// byte is not ASCII.
fn flipped(s: &str, at: u16, with: u8) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let i = usize::from(at) % s.len();
    let mask = (with & 0x7f).max(1);
    let mut bytes = s.as_bytes().to_vec();
    if !bytes[i].is_ascii() {
        return None;
    }
    bytes[i] ^= mask;
    String::from_utf8(bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::read(data) else { return };
    // Whatever arrives: refused or read, and what is read applies to a call without a panic.
    if let Ok(form) = Form::verify(input.auth_token, input.url, input.body, input.signature) {
        let mut c = call();
        if let Ok((_, updates)) = status_updates(&form) {
            for u in updates {
                c.apply(u);
            }
        }
        if let Ok((_, Some(u))) = recording_update(&form) {
            c.apply(u);
        }
        if let Ok((_, u)) = amd_update(&form) {
            c.apply(u);
        }
    }

    // Signed by the module's own signer: always accepted.
    let form = Form::unverified(input.body);
    let good = signature::compute(input.auth_token, input.url, form.params());
    assert!(Form::verify(input.auth_token, input.url, input.body, Some(&good)).is_ok(), "own signature refused");

    // One byte changed in the signature, or in the URL signed over: refused.
    if let Some(bad) = flipped(&good, input.flip_at, input.flip_with) {
        assert!(!signature::validate(input.auth_token, input.url, form.params(), &bad), "flipped signature {bad}");
    }
    if let Some(url) = flipped(input.url, input.flip_at, input.flip_with) {
        assert!(!signature::validate(input.auth_token, &url, form.params(), &good), "flipped URL {url:?}");
    }
    // With one parameter, one byte changed in its name or value: refused. (With several, Twilio's
    // scheme concatenates sorted names and values with no separator, so this is not a property of it.)
    if let [(name, value)] = form.params() {
        let joined = format!("{name}{value}");
        // An ASCII byte changed to another keeps every character boundary where it was.
        if let Some(changed) = flipped(&joined, input.flip_at, input.flip_with) {
            let (n, v) = changed.split_at(name.len());
            let params = [(n.to_owned(), v.to_owned())];
            assert!(!signature::validate(input.auth_token, input.url, &params, &good), "flipped param {params:?}");
        }
    }
});
