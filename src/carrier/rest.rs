//! Twilio's REST API, the calls we make: place a call, fetch it, change its TwiML, hang it up.
//!
//! Bodies are form-encoded as Twilio expects; both of Twilio's error shapes (the classic
//! `{code, message, more_info, status}` and RFC 9457 `{type, title, status, code, detail}`) become one
//! [`Error::Api`] carrying the code and message a person (or a model) can act on.
//!
//! Twilio has bad moments (a 429 when a burst passes the account's limits, a 5xx, a slow answer), and a
//! request that fails in one is tried again, briefly ([`ATTEMPTS`], with a pause that honours
//! `Retry-After`) — but only when repeating it cannot do harm. Hanging up, replacing TwiML and fetching
//! a call change nothing when repeated, so any transient failure is retried. Placing a call is retried
//! only when Twilio surely did nothing (429, or no connection was ever made): after a 5xx or a time-out
//! the call may have been created, and a second try would ring the phone twice.

use crate::config::{TwilioAuth, TwilioConfig};
use serde::Deserialize;
use std::time::Duration;

/// Everything Twilio needs to place one call.
#[derive(Debug, Clone)]
pub struct Dial {
    pub to: String,
    pub from: String,
    pub twiml: String,
    pub status_callback: String,
    pub ring_timeout: Duration,
    pub time_limit: Duration,
    /// `RecordingStatusCallback` URL when the call should be recorded.
    pub recording_callback: Option<String>,
    /// `AsyncAmdStatusCallback` URL when answering-machine detection is wanted.
    pub amd_callback: Option<String>,
}

/// The part of Twilio's Call resource we read.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CallResource {
    pub sid: String,
    pub status: String,
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub answered_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Hangup {
    Ended(CallResource),
    /// Twilio no longer knows the call as live (error 20404): it ended already, which is what we wanted.
    AlreadyGone,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Twilio refused the request: {message} (Twilio error {code}, HTTP {status})")]
    Api { status: u16, code: u32, message: String, more_info: Option<String> },
    #[error("could not reach Twilio: {0}")]
    Transport(String),
    #[error(
        "Twilio did not answer within {secs} s (TWILIO_TIMEOUT_SECS); if this was a new call, it may still \
         have been placed"
    )]
    Timeout { secs: u64 },
    #[error("Twilio answered HTTP {status} with a body that is not a Twilio response")]
    Unreadable { status: u16 },
}

/// Twilio's error body, in either of its shapes.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    more_info: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    calls_url: String,
    user: String,
    password: String,
    timeout: Duration,
}

/// Tries of one request, the first included.
pub const ATTEMPTS: u32 = 3;
/// Pause before the second try, doubled for each later one.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// The longest `Retry-After` honoured; a longer one fails the request now (the caller may retry later).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Which failures a request may be tried again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Only those where Twilio surely did nothing: placing a call.
    IfNothingDone,
    /// Any transient failure: requests that change nothing when repeated.
    Transient,
}

/// One failed try, and whether Twilio may have acted on it.
#[derive(Debug)]
struct Failure {
    error: Error,
    /// Twilio refused the request before acting (429), or it never reached Twilio.
    nothing_done: bool,
    /// Twilio asked for this pause (`Retry-After`).
    retry_after: Option<Duration>,
}

impl Failure {
    fn transient(&self) -> bool {
        match &self.error {
            Error::Api { status, .. } => *status == 429 || *status >= 500,
            Error::Unreadable { status } => *status >= 500,
            Error::Transport(_) | Error::Timeout { .. } => true,
        }
    }
}

impl TwilioClient {
    pub fn new(config: &TwilioConfig) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(config.request_timeout))
            .timeout(config.request_timeout)
            .user_agent(concat!("voice-call-mcp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        let (user, password) = match &config.auth {
            TwilioAuth::AuthToken => (config.account_sid.clone(), config.auth_token.clone()),
            TwilioAuth::ApiKey { sid, secret } => (sid.clone(), secret.clone()),
        };
        let base = config.api_base.as_str().trim_end_matches('/');
        let calls_url = format!("{base}/2010-04-01/Accounts/{}/Calls", config.account_sid);
        Ok(Self { http, calls_url, user, password, timeout: config.request_timeout })
    }

    pub async fn create_call(&self, dial: &Dial) -> Result<CallResource, Error> {
        let mut form: Vec<(&str, String)> = vec![
            ("To", dial.to.clone()),
            ("From", dial.from.clone()),
            ("Twiml", dial.twiml.clone()),
            ("StatusCallback", dial.status_callback.clone()),
            ("StatusCallbackMethod", "POST".into()),
            ("Timeout", dial.ring_timeout.as_secs().to_string()),
            ("TimeLimit", dial.time_limit.as_secs().to_string()),
        ];
        for event in ["initiated", "ringing", "answered", "completed"] {
            form.push(("StatusCallbackEvent", event.into()));
        }
        if let Some(url) = &dial.recording_callback {
            form.extend([
                ("Record", "true".into()),
                ("RecordingChannels", "dual".into()),
                ("RecordingStatusCallback", url.clone()),
                ("RecordingStatusCallbackMethod", "POST".into()),
                ("RecordingStatusCallbackEvent", "completed absent".into()),
            ]);
        }
        if let Some(url) = &dial.amd_callback {
            form.extend([
                ("MachineDetection", "Enable".into()),
                ("AsyncAmd", "true".into()),
                ("AsyncAmdStatusCallback", url.clone()),
                ("AsyncAmdStatusCallbackMethod", "POST".into()),
            ]);
        }
        self.send(Retry::IfNothingDone, || self.http.post(format!("{}.json", self.calls_url)).form(&form)).await
    }

    pub async fn hang_up(&self, call_sid: &str, status: &str) -> Result<Hangup, Error> {
        let url = format!("{}/{call_sid}.json", self.calls_url);
        match self.post(&url, &[("Status", status.to_owned())]).await {
            Ok(call) => Ok(Hangup::Ended(call)),
            Err(Error::Api { code: 20404, .. }) => Ok(Hangup::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// Replaces a live call's instructions with `twiml` (e.g. a spoken apology and `<Hangup/>`).
    pub async fn update_twiml(&self, call_sid: &str, twiml: &str) -> Result<Hangup, Error> {
        let url = format!("{}/{call_sid}.json", self.calls_url);
        match self.post(&url, &[("Twiml", twiml.to_owned())]).await {
            Ok(call) => Ok(Hangup::Ended(call)),
            // 21220: not in progress; 20404: gone. Either way there is no line left to leave open.
            Err(Error::Api { code: 20404 | 21220, .. }) => Ok(Hangup::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// The call as Twilio knows it now; `None` when Twilio has no such call (error 20404).
    pub async fn fetch_call(&self, call_sid: &str) -> Result<Option<CallResource>, Error> {
        let url = format!("{}/{call_sid}.json", self.calls_url);
        match self.send(Retry::Transient, || self.http.get(&url)).await {
            Ok(call) => Ok(Some(call)),
            Err(Error::Api { code: 20404, .. } | Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A request that changes nothing when repeated (hang-up, new TwiML).
    async fn post(&self, url: &str, form: &[(&str, String)]) -> Result<CallResource, Error> {
        self.send(Retry::Transient, || self.http.post(url).form(form)).await
    }

    /// Sends the request `build` makes, trying again as `retry` allows.
    async fn send(&self, retry: Retry, build: impl Fn() -> reqwest::RequestBuilder) -> Result<CallResource, Error> {
        let mut pause = FIRST_PAUSE;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.try_once(build()).await {
                Ok(call) => return Ok(call),
                Err(f) => f,
            };
            let allowed = failure.transient() && (retry == Retry::Transient || failure.nothing_done);
            let wait = failure.retry_after.unwrap_or(pause);
            if attempt >= ATTEMPTS || !allowed || wait > MAX_RETRY_AFTER {
                return Err(failure.error);
            }
            tracing::info!(error = %failure.error, attempt, ?wait, "Twilio request failed; trying again");
            tokio::time::sleep(wait).await;
            pause *= 2;
        }
    }

    async fn try_once(&self, request: reqwest::RequestBuilder) -> Result<CallResource, Failure> {
        let transport = |e: reqwest::Error, nothing_done: bool| {
            let error = if e.is_timeout() {
                Error::Timeout { secs: self.timeout.as_secs() }
            } else {
                // reqwest's message names the URL (account SID, no secrets): fine to show.
                Error::Transport(e.without_url().to_string())
            };
            Failure { error, nothing_done, retry_after: None }
        };
        let response = request
            .basic_auth(&self.user, Some(&self.password))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            // A connection never made carried no request; any other failure may have reached Twilio.
            .map_err(|e| {
                let never_sent = e.is_connect();
                transport(e, never_sent)
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(|e| transport(e, false))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|_| Failure {
                error: Error::Unreadable { status: status.as_u16() },
                nothing_done: false,
                retry_after: None,
            });
        }
        // Twilio's 429 is a refusal: the request was not carried out.
        let nothing_done = status.as_u16() == 429;
        Err(Failure { error: api_error(status.as_u16(), &body), nothing_done, retry_after })
    }
}

fn api_error(status: u16, body: &[u8]) -> Error {
    let Ok(e) = serde_json::from_slice::<ErrorBody>(body) else {
        return Error::Unreadable { status };
    };
    let message = e.message.or(e.detail).or(e.title).unwrap_or_else(|| format!("HTTP {status} with no message"));
    Error::Api { status, code: e.code.unwrap_or(0), message, more_info: e.more_info.or(e.kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_error_shapes_surface_code_and_message() {
        let classic = br#"{"code":21211,"message":"Invalid 'To' Phone Number","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#;
        assert!(matches!(api_error(400, classic),
            Error::Api { code: 21211, ref message, .. } if message == "Invalid 'To' Phone Number"));
        let rfc9457 = br#"{"type":"https://www.twilio.com/docs/errors/20003","title":"Authenticate","status":401,"code":20003,"detail":"Bad credentials"}"#;
        assert!(matches!(api_error(401, rfc9457),
            Error::Api { code: 20003, ref message, .. } if message == "Bad credentials"));
        assert!(matches!(api_error(502, b"<html>bad gateway</html>"), Error::Unreadable { status: 502 }));
    }
}
