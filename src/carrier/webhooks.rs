//! The routes Twilio posts to: call status, recording status, and answering-machine detection.
//!
//! Each request must carry a valid `X-Twilio-Signature` computed over the URL Twilio used — our
//! configured `PUBLIC_URL` plus the path and query, not the Host header, which a proxy rewrites — and the
//! form parameters. Anything unsigned or wrongly signed gets 403 and changes nothing.

use super::signature;
use crate::app::AppState;
use crate::calls::{CallStatus, CallUpdate, UpdateOutcome};
use crate::edge::body::{self, BodyLimit};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// Twilio's form posts are a few hundred bytes; anything near this is not Twilio.
const MAX_WEBHOOK_BODY: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/twilio/status", post(status))
        .route("/twilio/recording", post(recording))
        .route("/twilio/amd", post(amd))
        // Inside the rejection count, so an oversized body counts as `too_large`.
        .route_layer(axum::middleware::from_fn_with_state(BodyLimit(MAX_WEBHOOK_BODY), body::bounded))
        .route_layer(axum::middleware::from_fn(crate::telemetry::route::count_rejections))
}

/// A webhook's form parameters, once the signature has been checked.
#[derive(Debug)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The body's form parameters, decoded, in order, repeats kept, if `signature` (the
    /// `X-Twilio-Signature` header) holds for them over `url`, the URL Twilio requested.
    pub fn verify(auth_token: &str, url: &str, body: &[u8], signature: Option<&str>) -> Result<Self, Rejection> {
        let given = signature.ok_or(Rejection::Signature("missing X-Twilio-Signature"))?;
        let form = Self::unverified(body);
        if !signature::validate(auth_token, url, &form.0, given) {
            return Err(Rejection::Signature("signature does not match"));
        }
        Ok(form)
    }

    /// The body's form parameters without any signature check: what [`Form::verify`] signs over.
    pub fn unverified(body: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    pub fn params(&self) -> &[(String, String)] {
        &self.0
    }

    /// The first value given for `name`; an empty value counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

#[derive(Debug)]
pub enum Rejection {
    Signature(&'static str),
    Malformed(&'static str),
    /// Past the body limit (`edge::body` on the Twilio routes): Twilio's forms are a few KiB.
    TooLarge,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Signature(why) => {
                tracing::warn!(reason = why, "webhook rejected: bad signature");
                (StatusCode::FORBIDDEN, "invalid X-Twilio-Signature\n").into_response()
            }
            Rejection::Malformed(why) => {
                tracing::warn!(reason = why, "webhook rejected: malformed");
                (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
            }
            Rejection::TooLarge => {
                tracing::warn!("webhook rejected: body too large");
                (StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than a Twilio webhook's\n").into_response()
            }
        }
    }
}

/// The extractor every webhook handler takes: the body parsed as a form, only if the signature holds.
impl axum::extract::FromRequest<AppState> for Form {
    type Rejection = Rejection;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, Rejection> {
        let (headers, uri) = (req.headers().clone(), req.uri().clone());
        // Bounded by the routes' body limit (`edge::body`), which makes an oversized body a 413 rejection.
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Rejection::TooLarge
            } else {
                Rejection::Malformed("the body could not be read")
            }
        })?;
        verify(state, &headers, &uri, &body)
    }
}

fn verify(state: &AppState, headers: &HeaderMap, uri: &Uri, body: &Bytes) -> Result<Form, Rejection> {
    let given = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Form::verify(&state.config.twilio.auth_token, &state.config.public(path), body, given)
}

fn call_sid(form: &Form) -> Result<&str, Rejection> {
    form.get("CallSid").ok_or(Rejection::Malformed("CallSid is missing"))
}

fn timestamp(form: &Form) -> OffsetDateTime {
    form.get("Timestamp").and_then(|t| OffsetDateTime::parse(t, &Rfc2822).ok()).unwrap_or_else(OffsetDateTime::now_utc)
}

/// What a status callback reports: its call and the updates to apply, in order (none for a `CallStatus`
/// this server does not know, which must not move the call).
pub fn status_updates(form: &Form) -> Result<(&str, Vec<CallUpdate>), Rejection> {
    let sid = call_sid(form)?;
    let Some(status) = form.get("CallStatus").and_then(CallStatus::parse) else {
        tracing::warn!(call_sid = sid, status = ?form.get("CallStatus"), "status callback with an unknown CallStatus ignored");
        return Ok((sid, Vec::new()));
    };
    let mut updates = vec![CallUpdate::Status {
        status,
        sequence: form.get("SequenceNumber").and_then(|s| s.parse().ok()),
        duration_secs: form.get("CallDuration").and_then(|s| s.parse().ok()),
        answered_by: form.get("AnsweredBy").map(str::to_owned),
        at: timestamp(form),
    }];
    if let Some(url) = form.get("RecordingUrl") {
        updates.push(CallUpdate::Recording { url: url.to_owned() });
    }
    Ok((sid, updates))
}

/// What a recording-status callback reports: the recording, once it is complete.
pub fn recording_update(form: &Form) -> Result<(&str, Option<CallUpdate>), Rejection> {
    let sid = call_sid(form)?;
    Ok(match (form.get("RecordingStatus"), form.get("RecordingUrl")) {
        (Some("completed"), Some(url)) => (sid, Some(CallUpdate::Recording { url: url.to_owned() })),
        (status, _) => {
            tracing::info!(call_sid = sid, recording_status = ?status, error_code = ?form.get("ErrorCode"), "recording not available");
            (sid, None)
        }
    })
}

/// What an asynchronous answering-machine-detection callback reports.
pub fn amd_update(form: &Form) -> Result<(&str, CallUpdate), Rejection> {
    let sid = call_sid(form)?;
    let by = form.get("AnsweredBy").ok_or(Rejection::Malformed("AnsweredBy is missing"))?;
    Ok((sid, CallUpdate::AnsweredBy(by.to_owned())))
}

fn applied(sid: &str, outcome: UpdateOutcome) -> Response {
    if outcome == UpdateOutcome::Unknown {
        // Answer 200 anyway: a call we do not know (another server on this account, or forgotten) is
        // not something Twilio can fix by retrying.
        tracing::warn!(call_sid = sid, "webhook for an unknown call ignored");
    }
    StatusCode::OK.into_response()
}

async fn status(State(state): State<AppState>, form: Form) -> Result<Response, Rejection> {
    let (sid, updates) = status_updates(&form)?;
    if updates.is_empty() {
        return Ok(StatusCode::OK.into_response());
    }
    let mut outcome = UpdateOutcome::Unknown;
    for update in updates {
        outcome = state.switchboard.record(sid, update);
    }
    Ok(applied(sid, outcome))
}

async fn recording(State(state): State<AppState>, form: Form) -> Result<Response, Rejection> {
    Ok(match recording_update(&form)? {
        (sid, Some(update)) => applied(sid, state.switchboard.record(sid, update)),
        (_, None) => StatusCode::OK.into_response(),
    })
}

async fn amd(State(state): State<AppState>, form: Form) -> Result<Response, Rejection> {
    let (sid, update) = amd_update(&form)?;
    Ok(applied(sid, state.switchboard.record(sid, update)))
}
