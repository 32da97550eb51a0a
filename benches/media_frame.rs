//! What the audio path does with one 20 ms Twilio `media` frame, piece by piece: parse it, check that
//! its payload is base64 (so the model is never sent audio it would reject), write it out as the
//! Realtime `input_audio_buffer.append`. Ratios in one run are what to compare: the check against the
//! parse it follows. Run: `cargo bench --bench media_frame`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use voice_call_mcp::carrier::stream::{self, Inbound};
use voice_call_mcp::voice::events;

fn frame() -> String {
    // 160 bytes of µ-law: 216 characters of base64, as Twilio sends every 20 ms.
    let payload = base64::engine::general_purpose::STANDARD.encode([0x7Fu8; 160]);
    format!(
        r#"{{"event":"media","sequenceNumber":"3","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","media":{{"track":"inbound","chunk":"1","timestamp":"5","payload":"{payload}"}}}}"#
    )
}

fn bench(c: &mut Criterion) {
    let text = frame();
    let payload = match stream::parse_inbound(&text).unwrap() {
        Inbound::Media { media, .. } => media.payload.into_owned(),
        other => panic!("{other:?}"),
    };
    let mut out = String::with_capacity(512);
    c.bench_function("parse a media frame", |b| b.iter(|| black_box(stream::parse_inbound(black_box(&text)).is_ok())));
    c.bench_function("check its payload is base64", |b| b.iter(|| black_box(stream::is_base64(black_box(&payload)))));
    c.bench_function("write the append", |b| {
        b.iter(|| {
            events::write_append(&mut out, black_box(&payload));
            black_box(out.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
