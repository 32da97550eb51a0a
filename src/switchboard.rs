//! Places and ends calls: the one path from "the assistant asked for a call" to "Twilio is dialing".
//!
//! It joins the domain (number, policy, registry) to the carrier, in the order that keeps money safe:
//! screen the number as typed (emergency, short codes), parse it, check the policy (lists, premium
//! rate), take a concurrency slot, count it against the caller's hourly quota, check the policy once
//! more on the number as dialed, and only then ask Twilio to dial.
//! Every status observation, whatever edge it came from, is applied through [`Switchboard::record`], so
//! the rules (and, later, event publishing) live in one place.

use crate::calls::{
    Call, CallEntry, CallRegistry, CallRequest, CallStatus, CallUpdate, E164, NumberError, PolicyError, RegistryError,
    UpdateOutcome,
};
use crate::carrier::{rest, twiml};
use crate::config::{Config, VOICES};
use crate::events::{CallEvent, EventBus};
use crate::voice::Voices;
use crate::voice::bridge::Line;
use futures::FutureExt;
use futures::future::BoxFuture;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// What the assistant asked for, as it arrived (strings unchecked).
#[derive(Debug, Clone, Default)]
pub struct PlaceCall {
    pub to: String,
    pub context: String,
    pub first_message: Option<String>,
    pub voice: Option<String>,
    pub language: Option<String>,
    pub record: Option<bool>,
    pub machine_detection: bool,
    pub max_duration_secs: Option<u32>,
    /// Who asked (the token's subject; empty without MCP authorization): `CALLS_PER_HOUR` counts by it.
    pub caller: String,
}

/// Why a call was not placed. Each message tells the model what to change.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Number(#[from] NumberError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Capacity(#[from] RegistryError),
    #[error("the call could not be placed: {0}")]
    Carrier(#[from] rest::Error),
    #[error(
        "this caller has placed its {per_hour} calls for the hour (CALLS_PER_HOUR); the next one is possible in \
         {wait_secs} s"
    )]
    Quota { per_hour: u32, wait_secs: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum EndError {
    #[error("no call {0} is known to this server; use list-calls to see the calls it has")]
    Unknown(String),
    #[error("the call could not be hung up: {0}")]
    Carrier(#[from] rest::Error),
}

#[derive(Debug)]
pub struct Switchboard {
    config: Arc<Config>,
    calls: Arc<CallRegistry>,
    twilio: rest::TwilioClient,
    voices: Arc<Voices>,
    events: Arc<EventBus>,
    /// `CALLS_PER_HOUR`, per caller, on top of `MAX_CONCURRENT_CALLS`.
    quota: governor::DefaultKeyedRateLimiter<String>,
}

/// What the callee hears if the voice model cannot be reached.
const APOLOGY: &str = "Sorry, we are having technical difficulties and have to end this call. Goodbye.";

const MAX_CONTEXT_CHARS: usize = 8_000;

impl Switchboard {
    pub fn new(
        config: Arc<Config>,
        calls: Arc<CallRegistry>,
        voices: Arc<Voices>,
        events: Arc<EventBus>,
    ) -> Result<Self, rest::Error> {
        let twilio = rest::TwilioClient::new(&config.twilio)?;
        let per_hour = std::num::NonZeroU32::new(config.access.calls_per_hour).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::RateLimiter::keyed(governor::Quota::per_hour(per_hour));
        Ok(Self { config, calls, twilio, voices, events, quota })
    }

    /// Forgets the hourly quota of callers whose quota is full again (bounded memory).
    pub fn forget_idle(&self) {
        self.quota.retain_recent();
    }

    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    pub fn voices(&self) -> &Arc<Voices> {
        &self.voices
    }

    pub fn calls(&self) -> &Arc<CallRegistry> {
        &self.calls
    }

    /// Checks the request, then dials. Nothing reaches Twilio unless every check passed.
    pub async fn place(self: &Arc<Self>, ask: PlaceCall) -> Result<Arc<CallEntry>, PlaceError> {
        PolicyError::screen_typed(ask.to.trim())?;
        let to = E164::parse(ask.to.trim())?;
        self.config.policy.check(&to)?;
        let caller = ask.caller.clone();
        let request = self.request(to, ask)?;
        let ticket = self.calls.reserve()?;
        // Counted only for calls about to be dialed: a request refused above costs no quota.
        if let Err(not_until) = self.quota.check_key(&caller) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            return Err(PlaceError::Quota {
                per_hour: self.config.access.calls_per_hour,
                wait_secs: wait.as_secs().max(1),
            });
        }
        // Checked once more at dial time, on the number exactly as it goes to Twilio.
        self.config.policy.check(&request.to)?;

        let stream_token = random_token();
        let stream = twiml::connect_stream(&self.config.media_stream_url(), &[("callToken", &stream_token)]);
        let dial = rest::Dial {
            to: request.to.to_string(),
            from: request.from.to_string(),
            twiml: stream,
            status_callback: self.config.public("/twilio/status"),
            ring_timeout: self.config.ring_timeout,
            // A little beyond our own limit: we end calls politely ourselves; Twilio's cut is the backstop.
            time_limit: Duration::from_secs(u64::from(request.max_duration_secs) + 30),
            recording_callback: request.record.then(|| self.config.public("/twilio/recording")),
            amd_callback: request.machine_detection.then(|| self.config.public("/twilio/amd")),
        };
        let span = crate::telemetry::calls::opening();
        let created = tracing::Instrument::instrument(self.twilio.create_call(&dial), span.clone()).await?;
        let status = CallStatus::parse(&created.status).unwrap_or(CallStatus::Queued);
        let call = Call::new(created.sid, request, CallStatus::Queued, self.config.sandbox);
        let queued = call.clone();
        let (entry, early) = self.calls.insert(ticket, call, stream_token);
        crate::telemetry::calls::placed(entry.call_sid(), &span);
        // Every call's first event is `queued`; callbacks that beat the REST reply follow in order.
        self.events.publish(&CallEvent::status(&queued));
        for (applied, call) in early {
            self.publish_change(applied, &call);
        }
        if status != CallStatus::Queued {
            self.record(entry.call_sid(), rest_status(status, None));
        }
        tracing::info!(call_sid = %entry.call_sid(), "call placed");
        self.voices
            .start(entry.clone(), PhoneLine { switchboard: self.clone(), call_sid: entry.call_sid().to_owned() });
        Ok(entry)
    }

    fn request(&self, to: E164, ask: PlaceCall) -> Result<CallRequest, PlaceError> {
        let context = ask.context.trim().to_owned();
        if context.is_empty() {
            return Err(PlaceError::Invalid(
                "callContext is empty: say who is being called and what the call should achieve".into(),
            ));
        }
        if context.chars().count() > MAX_CONTEXT_CHARS {
            return Err(PlaceError::Invalid(format!(
                "callContext is longer than {MAX_CONTEXT_CHARS} characters; shorten it"
            )));
        }
        if let Some(v) = &ask.voice
            && !VOICES.contains(&v.as_str())
        {
            return Err(PlaceError::Invalid(format!("voice '{v}' is not one of {}", VOICES.join(", "))));
        }
        let limit = u32::try_from(self.config.max_call_duration.as_secs()).unwrap_or(u32::MAX);
        let max_duration_secs = match ask.max_duration_secs {
            None => limit,
            Some(s) if (5..=limit).contains(&s) => s,
            Some(s) => {
                return Err(PlaceError::Invalid(format!(
                    "maxDurationSecs {s} is outside what this server allows (5 to {limit})"
                )));
            }
        };
        Ok(CallRequest {
            to,
            from: self.config.twilio.number.clone(),
            context,
            first_message: ask.first_message.filter(|s| !s.trim().is_empty()),
            voice: ask.voice,
            language: ask.language.filter(|s| !s.trim().is_empty()),
            record: ask.record.unwrap_or(self.config.record_calls),
            machine_detection: ask.machine_detection,
            max_duration_secs,
        })
    }

    /// Hangs a call up. Already-ended calls are not an error: the outcome is what was asked for.
    pub async fn end(&self, call_sid: &str) -> Result<Call, EndError> {
        let entry = self.calls.entry(call_sid).ok_or_else(|| EndError::Unknown(call_sid.to_owned()))?;
        let current = entry.snapshot().status;
        if current.is_terminal() {
            return Ok(entry.snapshot());
        }
        // Twilio only accepts `canceled` before the call is answered, and `completed` after.
        let how = if matches!(current, CallStatus::Queued | CallStatus::Initiated | CallStatus::Ringing) {
            "canceled"
        } else {
            "completed"
        };
        match self.twilio.hang_up(call_sid, how).await {
            // A ringing call may have been answered meanwhile: Twilio then wants `completed`.
            Err(rest::Error::Api { code: 21220, .. }) if how == "canceled" => {
                self.apply_hangup(&entry, self.twilio.hang_up(call_sid, "completed").await?);
            }
            result => self.apply_hangup(&entry, result?),
        }
        Ok(entry.snapshot())
    }

    /// The call as the carrier knows it now; `None` when the carrier has no such call.
    pub async fn fetch(&self, call_sid: &str) -> Result<Option<rest::CallResource>, rest::Error> {
        self.twilio.fetch_call(call_sid).await
    }

    /// Says an apology over the phone (Twilio's own speech, no voice model) and hangs up.
    pub async fn apologise_and_end(&self, call_sid: &str) -> Result<(), EndError> {
        let entry = self.calls.entry(call_sid).ok_or_else(|| EndError::Unknown(call_sid.to_owned()))?;
        let outcome = self.twilio.update_twiml(call_sid, &twiml::say_and_hang_up(APOLOGY)).await?;
        self.apply_hangup(&entry, outcome);
        Ok(())
    }

    fn apply_hangup(&self, entry: &CallEntry, outcome: rest::Hangup) {
        match outcome {
            rest::Hangup::Ended(resource) => {
                if let Some(status) = CallStatus::parse(&resource.status) {
                    let duration = resource.duration.as_deref().and_then(|d| d.parse().ok());
                    self.record(entry.call_sid(), rest_status(status, duration));
                }
            }
            // Twilio has no live call by that id: the status callback saying how it ended is on its way.
            rest::Hangup::AlreadyGone => {}
        }
    }

    /// Applies an observation from any edge, and publishes what changed.
    pub fn record(&self, call_sid: &str, update: CallUpdate) -> UpdateOutcome {
        let _span = crate::telemetry::calls::update(call_sid).entered();
        let outcome = self.calls.update(call_sid, update);
        if let UpdateOutcome::Applied(applied, call) = &outcome {
            self.publish_change(*applied, call);
        }
        outcome
    }

    fn publish_change(&self, applied: crate::calls::Applied, call: &Call) {
        let Some(status) = applied.status else { return };
        tracing::info!(call_sid = %call.call_sid, status = %status, "call status");
        self.events.publish(&CallEvent::status(call));
        if status.is_terminal() {
            tracing::info!(call_sid = %call.call_sid, duration_secs = ?call.duration_secs, "call ended");
            crate::telemetry::calls::ended(&call.call_sid, status.as_str());
            self.events.publish(&CallEvent::ended(call));
            // Only now is the call's place free: a drain waiting for idle sees every ending published.
            if let Some(entry) = self.calls.entry(&call.call_sid) {
                entry.release_if_ended();
            }
        }
    }
}

/// The bridge's way to end its call, through the switchboard.
#[derive(Debug)]
struct PhoneLine {
    switchboard: Arc<Switchboard>,
    call_sid: String,
}

impl Line for PhoneLine {
    fn publish(&self, event: CallEvent) {
        self.switchboard.events.publish(&event);
    }

    fn hang_up(&self) -> BoxFuture<'_, ()> {
        async move {
            if let Err(e) = self.switchboard.end(&self.call_sid).await {
                tracing::error!(call_sid = %self.call_sid, error = %e, "hang-up failed");
            }
        }
        .boxed()
    }

    fn apologise_and_hang_up(&self) -> BoxFuture<'_, ()> {
        async move {
            if let Err(e) = self.switchboard.apologise_and_end(&self.call_sid).await {
                tracing::error!(call_sid = %self.call_sid, error = %e, "apology failed; hanging up");
                self.hang_up().await;
            }
        }
        .boxed()
    }
}

fn rest_status(status: CallStatus, duration_secs: Option<u32>) -> CallUpdate {
    CallUpdate::Status { status, sequence: None, duration_secs, answered_by: None, at: OffsetDateTime::now_utc() }
}

/// 256 random bits, hex: the per-call secret the media stream must present.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
