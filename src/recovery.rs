//! Calls a previous run left unfinished: on start, each is found out and ended or brought up to date.
//!
//! A server that dies mid-call leaves records that say `ringing` or `in-progress`. Twilio may have ended
//! those calls meanwhile (its callbacks found nobody listening), or may still be carrying them — and a
//! live call whose voice session died with the old process is a silent open line. So for every call
//! restored unfinished, the server asks Twilio (`GET …/Calls/{sid}.json`) and:
//! - applies what Twilio says through the normal state machine (an ended call ends here too, with its
//!   duration, and its `call-ended` event goes out);
//! - hangs up a call that is still live, because its voice cannot be resumed: a connected callee hears
//!   a short apology first, a phone still ringing is cancelled;
//! - ends, here only, a call Twilio does not know, and a sandbox call (its simulators died with the
//!   previous run).
//!
//! Twilio unreachable or failing: tried again with a growing pause until it answers or the server stops,
//! so no restored call stays open for good. Meanwhile Twilio's own `TimeLimit` (set on every call from
//! `MAX_CALL_DURATION_SECS`) still ends a live call at the limit, whatever this process does.

use crate::calls::{CallEntry, CallError, CallStatus, CallUpdate};
use crate::carrier::rest::CallResource;
use crate::events::CallEvent;
use crate::switchboard::Switchboard;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// What to do about one restored call, given what the carrier says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Apply this status (terminal, with its duration): the call is over.
    Ended { status: CallStatus, duration_secs: Option<u32> },
    /// The callee is on the line with nobody speaking to them: apologise and hang up.
    Apologise,
    /// The phone is still ringing (or queued): cancel it.
    Cancel,
    /// Nobody but this record knows the call (a sandbox call, or one the carrier has no trace of).
    EndHere { answered: bool },
}

/// The decision, apart from any I/O: `carrier` is Twilio's view, `None` when it has no such call.
pub fn step(sandbox: bool, answered: bool, carrier: Option<&CallResource>) -> Step {
    if sandbox {
        return Step::EndHere { answered };
    }
    let Some(resource) = carrier else { return Step::EndHere { answered } };
    match CallStatus::parse(&resource.status) {
        Some(status) if status.is_terminal() => {
            Step::Ended { status, duration_secs: resource.duration.as_deref().and_then(|d| d.parse().ok()) }
        }
        Some(CallStatus::InProgress) => Step::Apologise,
        // Queued, initiated, ringing, or a status Twilio may add: not connected to anyone yet.
        _ => Step::Cancel,
    }
}

/// Pauses between tries for one call: short at first (a hang-up takes Twilio a moment to report), then
/// growing, so an outage of Twilio's is not hammered.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { first: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

/// Reconciles every restored unfinished call, each on its own (one slow call never holds up another),
/// until each has ended or `shutdown` is cancelled.
pub async fn reconcile_all(switchboard: Arc<Switchboard>, backoff: Backoff, shutdown: CancellationToken) {
    let unfinished = switchboard.calls().restored_unfinished();
    if unfinished.is_empty() {
        return;
    }
    tracing::info!(calls = unfinished.len(), "reconciling calls a previous run left unfinished");
    let runs = unfinished.into_iter().map(|entry| reconcile(&switchboard, entry, &backoff));
    tokio::select! {
        _ = futures::future::join_all(runs) => tracing::info!("every call left unfinished has been reconciled"),
        () = shutdown.cancelled() => {}
    }
}

async fn reconcile(switchboard: &Switchboard, entry: Arc<CallEntry>, backoff: &Backoff) {
    let sid = entry.call_sid().to_owned();
    let mut pause = backoff.first;
    let mut acted = false;
    let mut noted = false;
    let mut failures = 0u32;
    loop {
        let call = entry.snapshot();
        if call.status.is_terminal() {
            return;
        }
        let carrier = if call.sandbox { Ok(None) } else { switchboard.fetch(&sid).await };
        let next = match carrier {
            Ok(resource) => step(call.sandbox, call.answered_at.is_some(), resource.as_ref()),
            Err(e) => {
                failures += 1;
                // The first failure and then every tenth, so an outage is visible without flooding.
                if failures % 10 == 1 {
                    tracing::warn!(call_sid = %sid, error = %e, failures, "cannot reach Twilio to reconcile a call; trying again");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(backoff.max);
                continue;
            }
        };
        match next {
            Step::Ended { status, duration_secs } => {
                switchboard.record(&sid, ended(status, duration_secs));
                return;
            }
            Step::EndHere { answered } => {
                let why = if call.sandbox {
                    "the server restarted; a sandbox call's simulated phone ended with it"
                } else {
                    "the server restarted and Twilio has no record of this call"
                };
                note(switchboard, &entry, why);
                let status = if answered { CallStatus::Completed } else { CallStatus::Canceled };
                switchboard.record(&sid, ended(status, None));
                return;
            }
            // Acted once already: wait for Twilio to report the ending, asking again.
            Step::Apologise | Step::Cancel if acted => {}
            Step::Apologise => {
                if !std::mem::replace(&mut noted, true) {
                    note(
                        switchboard,
                        &entry,
                        "the server restarted during the call; the callee was told and the call ended",
                    );
                }
                acted = switchboard.apologise_and_end(&sid).await.is_ok();
            }
            Step::Cancel => {
                if !std::mem::replace(&mut noted, true) {
                    note(switchboard, &entry, "the server restarted while the phone rang; the call was cancelled");
                }
                acted = switchboard.end(&sid).await.is_ok();
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(backoff.max);
    }
}

fn ended(status: CallStatus, duration_secs: Option<u32>) -> CallUpdate {
    CallUpdate::Status { status, sequence: None, duration_secs, answered_by: None, at: OffsetDateTime::now_utc() }
}

/// Keeps why the call ended on its record, and says so on the events feed.
fn note(switchboard: &Switchboard, entry: &CallEntry, message: &str) {
    let error =
        CallError { code: "server_restarted".into(), message: message.into(), timestamp: OffsetDateTime::now_utc() };
    tracing::info!(call_sid = %entry.call_sid(), "{message}");
    entry.modify(|c| c.push_error(error.clone()));
    switchboard.events().publish(&CallEvent::Error {
        call_sid: entry.call_sid().to_owned(),
        error: error.message,
        code: error.code,
        timestamp: error.timestamp,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twilio(status: &str, duration: Option<&str>) -> CallResource {
        CallResource { sid: "CA1".into(), status: status.into(), duration: duration.map(Into::into), answered_by: None }
    }

    #[test]
    fn what_twilio_says_decides_what_happens_to_a_restored_call() {
        let done = twilio("completed", Some("42"));
        assert_eq!(
            step(false, true, Some(&done)),
            Step::Ended { status: CallStatus::Completed, duration_secs: Some(42) }
        );
        assert_eq!(
            step(false, false, Some(&twilio("no-answer", None))),
            Step::Ended { status: CallStatus::NoAnswer, duration_secs: None }
        );
        assert_eq!(step(false, true, Some(&twilio("in-progress", None))), Step::Apologise);
        for ringing in ["queued", "initiated", "ringing", "something-new"] {
            assert_eq!(step(false, false, Some(&twilio(ringing, None))), Step::Cancel, "{ringing}");
        }
        assert_eq!(step(false, true, None), Step::EndHere { answered: true });
        // A sandbox call's phone died with the last run, whatever anything says.
        assert_eq!(step(true, false, Some(&twilio("in-progress", None))), Step::EndHere { answered: false });
    }
}
