//! Each call's trace: one span from the moment it is placed until it ends, carrying its CallSid.
//!
//! The span is a root (its own trace) that links to the request which placed it. The call's voice task
//! has a child span for its whole life, and every status update (a Twilio webhook, a hang-up's REST
//! reply) is a child span linked to the request it came in on. The map below is touched when a call is
//! placed, updated or ends — never per audio frame. The call's span closes when the map drops it at the
//! call's end (and its voice task has finished).

use std::collections::HashMap;
use std::sync::Mutex;
use tracing::Span;

static SPANS: Mutex<Option<HashMap<String, Span>>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut HashMap<String, Span>) -> R) -> R {
    let mut guard = SPANS.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// A new call's span, before Twilio has given it a CallSid (recorded by [`placed`]).
pub fn opening() -> Span {
    let span = tracing::info_span!(parent: None, "call", otel.name = "call", otel.kind = "internal", call_sid = tracing::field::Empty, status = tracing::field::Empty);
    span.follows_from(Span::current());
    span
}

/// The call has its CallSid and is registered: its span is kept until it ends.
pub fn placed(call_sid: &str, span: &Span) {
    span.record("call_sid", call_sid);
    with(|m| m.insert(call_sid.to_owned(), span.clone()));
    super::metrics().call_started();
}

/// A span for the call's voice task (ringing, then the bridge), a child of the call's span. The task
/// holds it without entering it — no per-poll, hence per-frame, work — so it covers the task's life.
pub fn voice(call_sid: &str) -> Span {
    let Some(parent) = with(|m| m.get(call_sid).cloned()) else { return Span::none() };
    tracing::info_span!(parent: &parent, "call.voice", call_sid)
}

/// A span for one status update of a call: a child of the call's span, linked to the current request.
pub fn update(call_sid: &str) -> Span {
    let Some(parent) = with(|m| m.get(call_sid).cloned()) else { return Span::none() };
    let span = tracing::info_span!(parent: &parent, "call.update", call_sid);
    span.follows_from(Span::current());
    span
}

/// The call reached a final status: counted, and its span let go (it closes once its tasks finish).
pub fn ended(call_sid: &str, status: &str) {
    let Some(span) = with(|m| m.remove(call_sid)) else { return };
    span.record("status", status);
    super::metrics().call_ended(status);
}
