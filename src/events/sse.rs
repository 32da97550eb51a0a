//! `GET /events`: the live call-event feed, as Server-Sent Events, for dashboards and back offices.
//!
//! Authenticated with a JWT carrying `events:read` (header, cookie, or — for browsers' EventSource, which
//! cannot set headers — an `access_token` query parameter). A token's `calls` claim limits which calls
//! it sees; `callSid` (repeatable) and `types` narrow further. `Last-Event-ID` (or `lastEventId` on
//! first connect) replays what was missed, then continues live.
//!
//! Each stream is the response body itself ([`EventStream`]): the connection that writes it reads the
//! event log when it has room, so an event costs one task wake-up per subscriber. The publisher never
//! waits on a reader, and a reader that falls behind is let go in one of two ways (README, "Following
//! calls live"). Whenever the connection has room for more, the stream asks for its next event; if the
//! reader is then more than [`FOLLOWER_QUEUE`] events behind the newest id, it gets a final comment naming
//! the id to resume from, and the connection closes. A socket that accepts nothing at all is never asked:
//! the listener's write-stall limit (`listener::WRITE_STALL_LIMIT`) closes it with nothing more written
//! (nothing can be), and the client resumes from the last id it read. Either way its place is given back.

use super::{EVENT_TYPES, FOLLOWER_QUEUE, FollowError, Follower, Published};
use crate::app::AppState;
use crate::auth::{self, AuthError, Claims};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
/// The reconnection delay suggested to EventSource.
const RETRY_MS: u32 = 3000;

/// `/events`, guarded: per-address limit, then the token (`events:read`), then the per-subject limit.
/// CORS is outermost, so a refusal still carries the headers a browser needs to read it.
pub fn router(state: &AppState) -> Router<AppState> {
    use crate::edge::rate::Group;
    let guard = auth::guard::Guard::events(state.auth.clone());
    let router = Router::new()
        .route("/events", get(events))
        .layer(state.limits.by_subject(Group::Events))
        .layer(axum::middleware::from_fn_with_state(guard, auth::guard::require))
        .layer(state.limits.by_address(Group::Events));
    match cors(&state.config.sse.cors_origins) {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let headers = [header::AUTHORIZATION, header::HeaderName::from_static("last-event-id")];
    let layer = CorsLayer::new().allow_methods([axum::http::Method::GET]).allow_headers(headers);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    // Credentials (the cookie) only with an explicit list: browsers refuse them with `*`.
    Some(layer.allow_origin(list).allow_credentials(true))
}

/// Open streams, in total and per token subject.
#[derive(Debug, Default)]
pub struct Connections {
    per_subject: Mutex<HashMap<String, usize>>,
}

/// Holds one stream's place; given back when the stream ends.
#[derive(Debug)]
struct Slot {
    connections: Arc<Connections>,
    subject: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::telemetry::metrics().sse_subscriber_closed();
        let mut map = self.connections.per_subject.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.subject);
            }
        }
    }
}

impl Connections {
    pub fn open(&self) -> usize {
        self.per_subject.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    fn take(self: &Arc<Self>, subject: &str, total: usize, per_subject: usize) -> Result<Slot, Refusal> {
        let mut map = self.per_subject.lock().unwrap_or_else(|p| p.into_inner());
        if map.values().sum::<usize>() >= total {
            return Err(Refusal::Unavailable("too many open event streams; retry later"));
        }
        let n = map.entry(subject.to_owned()).or_default();
        if *n >= per_subject {
            return Err(Refusal::TooMany("too many open event streams for this token subject"));
        }
        *n += 1;
        crate::telemetry::metrics().sse_subscriber_opened();
        Ok(Slot { connections: self.clone(), subject: subject.to_owned() })
    }
}

/// Why a stream was not opened; each maps to its status at the edge.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    BadRequest(String),
    /// 503 with Retry-After: the server is full or not configured for it.
    #[error("{0}")]
    Unavailable(&'static str),
    /// 429 with Retry-After: this token subject has too many streams open.
    #[error("{0}")]
    TooMany(&'static str),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match &self {
            Refusal::Auth(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut r = (status, format!("{self}\n")).into_response();
        match &self {
            Refusal::Auth(e) => {
                if let Ok(v) = HeaderValue::from_str(&e.www_authenticate(None)) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Refusal::Unavailable(_) | Refusal::TooMany(_) => {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Refusal::BadRequest(_) => {}
        }
        r
    }
}

/// What this stream shows.
#[derive(Debug, Default)]
pub struct Filter {
    call_sids: Vec<String>,
    types: Vec<String>,
    /// From the token: the calls it may see (`None` = all).
    allowed: Option<Vec<String>>,
}

impl Filter {
    fn admits(&self, e: &Published) -> bool {
        (self.call_sids.is_empty() || self.call_sids.contains(&e.call_sid))
            && (self.types.is_empty() || self.types.contains(&e.kind))
            && self.allowed.as_ref().is_none_or(|calls| calls.contains(&e.call_sid))
    }
}

fn bad_request(message: String) -> Refusal {
    Refusal::BadRequest(message)
}

/// The longest resume id read: 19 digits always fit a `u64` (and the log never gets there).
const MAX_ID_DIGITS: usize = 19;

/// A resume id as sent (`Last-Event-ID`, `lastEventId`): empty means none; else the decimal id, exactly as
/// this server wrote it. Exactly what `openapi.yaml` says, so its fuzzing finds no gap between the two.
pub fn resume_id(given: &[u8]) -> Result<Option<u64>, Refusal> {
    if given.is_empty() {
        return Ok(None);
    }
    let digits = given.len() <= MAX_ID_DIGITS && given.iter().all(u8::is_ascii_digit);
    // All ASCII digits, so the text is valid and the parse cannot overflow.
    match std::str::from_utf8(given).ok().filter(|_| digits).and_then(|id| id.parse::<u64>().ok()) {
        Some(id) => Ok(Some(id)),
        None => Err(bad_request(format!(
            "Last-Event-ID '{}' is not an id this server issued",
            String::from_utf8_lossy(given).chars().take(32).collect::<String>()
        ))),
    }
}

/// The stream's filter and the id to resume after, from the query string and the `Last-Event-ID` header.
pub fn parse_query(query: &str, headers: &HeaderMap) -> Result<(Filter, Option<u64>), Refusal> {
    let mut filter = Filter::default();
    // A malformed header is refused, not taken for no header: that would start the stream live and
    // silently skip what the client asked to resume after.
    let from_header = match headers.get("last-event-id") {
        Some(v) => resume_id(v.as_bytes())?,
        None => None,
    };
    let mut from_query = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "callSid" => {
                if v.is_empty() || v.chars().count() > 64 {
                    return Err(bad_request(format!(
                        "callSid '{}' is not a call id",
                        v.chars().take(64).collect::<String>()
                    )));
                }
                filter.call_sids.push(v.into_owned());
            }
            "types" => {
                // Spaces around a name are allowed (`types=call-status, dtmf`); nothing else is.
                for t in v.split(',').map(|t| t.trim_matches(' ')).filter(|t| !t.is_empty()) {
                    if !EVENT_TYPES.contains(&t) {
                        return Err(bad_request(format!(
                            "unknown event type '{t}'; types are {}",
                            EVENT_TYPES.join(", ")
                        )));
                    }
                    filter.types.push(t.to_owned());
                }
            }
            "lastEventId" => {
                let id = resume_id(v.as_bytes())?;
                from_query = from_query.or(id);
            }
            _ => {}
        }
    }
    // The header wins: a reconnecting EventSource sends both, the header being newer.
    Ok((filter, from_header.or(from_query)))
}

/// Behind the auth guard (which checked `events:read` and left the claims) and the rate limits.
async fn events(State(state): State<AppState>, request: Request) -> Result<Response, Refusal> {
    let (parts, _) = request.into_parts();
    let Some(claims) = parts.extensions.get::<Claims>().cloned() else {
        // Unreachable behind the guard; refused rather than served unauthenticated if it ever is not.
        return Err(AuthError::Missing.into());
    };
    let (mut filter, after) = parse_query(parts.uri.query().unwrap_or(""), &parts.headers)?;
    filter.allowed = claims.calls.clone();
    let sse = &state.config.sse;
    let slot = state.sse_connections.take(&claims.sub, sse.max_connections, sse.max_connections_per_subject)?;
    let follower = state.events.follow(after);
    let truncated = match after {
        Some(after) => state.events.oldest_retained().await.filter(|&oldest| oldest > after + 1),
        None => None,
    };
    let stream = EventStream::new(follower, filter, &claims, sse.heartbeat, slot, truncated.zip(after));
    let body = Body::from_stream(futures::stream::unfold(stream, |mut stream| async move {
        stream.next_frame().await.map(|frame| (Ok::<_, std::convert::Infallible>(frame), stream))
    }));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // When the stream ends (lag, token expiry, shutdown) the connection closes too, so a client sees the
    // end as a disconnect and reconnects, rather than holding an idle keep-alive connection. HTTP/1.1 only
    // (the listener speaks nothing else); a proxy in front drops this hop-by-hop header.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if truncated.is_some() {
        h.insert("x-replay-truncated", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// One subscriber's stream: what it follows, what it may see, and its clocks. Owned by the response body
/// and advanced by the connection that writes it.
struct EventStream {
    follower: Follower,
    filter: Filter,
    heartbeat: Duration,
    /// When the token expires: the stream ends then.
    expires: tokio::time::Instant,
    /// One timer for both clocks, set to the next heartbeat or the expiry, whichever comes first: one
    /// timer to poll per event instead of two.
    clock: Pin<Box<tokio::time::Sleep>>,
    /// Frames that go before anything else: the greeting, a replay note, a closing comment.
    outbox: VecDeque<Bytes>,
    /// The stream has decided to end: what is in `outbox` goes out, then the body ends.
    ending: bool,
    _slot: Slot,
}

fn frame(e: &Published) -> Bytes {
    let mut s = String::with_capacity(e.data.len() + e.kind.len() + 32);
    s.push_str("id: ");
    s.push_str(&e.id.to_string());
    s.push_str("\nevent: ");
    s.push_str(&e.kind);
    s.push_str("\ndata: ");
    // Compact JSON has no raw newlines, so one `data:` line carries it.
    s.push_str(&e.data);
    s.push_str("\n\n");
    Bytes::from(s)
}

impl EventStream {
    /// `truncated`: the oldest retained id and the id the client asked to resume after, when retention
    /// has already dropped events it missed.
    fn new(
        follower: Follower,
        filter: Filter,
        claims: &Claims,
        heartbeat: Duration,
        slot: Slot,
        truncated: Option<(u64, u64)>,
    ) -> Self {
        let client_id = format!("{:016x}", rand::random::<u64>());
        let mut outbox = VecDeque::with_capacity(2);
        outbox.push_back(Bytes::from(format!(
            "retry: {RETRY_MS}\n: voice-call-mcp events\n\nevent: connected\ndata: {{\"type\":\"connected\",\"clientId\":\"{client_id}\"}}\n\n"
        )));
        if let Some((oldest, requested)) = truncated {
            outbox.push_back(Bytes::from(format!(
                "event: replay-truncated\ndata: {{\"type\":\"replay-truncated\",\"lastEventId\":\"{requested}\",\"oldestRetainedId\":\"{oldest}\"}}\n\n"
            )));
        }
        let now = tokio::time::Instant::now();
        let expires = now + Duration::from_secs(claims.exp.saturating_sub(now_secs()));
        Self {
            follower,
            filter,
            heartbeat,
            expires,
            clock: Box::pin(tokio::time::sleep_until(expires.min(now + heartbeat))),
            outbox,
            ending: false,
            _slot: slot,
        }
    }

    /// The next bytes to write, or `None` when the stream is over.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.outbox.pop_front() {
                return Some(frame);
            }
            if self.ending {
                return None;
            }
            tokio::select! {
                // The clock first: a follower with a long backlog is always ready, and would otherwise
                // keep an expired token's stream going until it caught up.
                biased;
                () = &mut self.clock => {
                    let now = tokio::time::Instant::now();
                    if now >= self.expires {
                        self.end_with(": token expired; reconnect with a new token\n\n".to_owned());
                    } else {
                        let next = self.expires.min(now + self.heartbeat);
                        self.clock.as_mut().reset(next);
                        return Some(Bytes::from_static(b": heartbeat\n\n"));
                    }
                }
                next = self.follower.next() => match next {
                    Ok(e) => {
                        if self.filter.admits(&e) {
                            return Some(e.wire.get_or_init(|| frame(&e)).clone());
                        }
                    }
                    // Everything up to `last` is ahead of this comment on the connection, so the client
                    // has read it by the time it reads where to resume.
                    Err(FollowError::Lagged) => {
                        let last = self.follower.last_id();
                        self.end_with(format!(
                            ": more than {FOLLOWER_QUEUE} events behind; reconnect with Last-Event-ID: {last}\n\n"
                        ));
                    }
                    // The server is shutting down; everything published before has been sent.
                    Err(FollowError::Closed) => {
                        let last = self.follower.last_id();
                        self.end_with(format!(": server shutting down; reconnect with Last-Event-ID: {last}\n\n"));
                    }
                    Err(FollowError::Store) => return None,
                },
            }
        }
    }

    fn end_with(&mut self, comment: String) {
        self.outbox.push_back(Bytes::from(comment));
        self.ending = true;
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn resume(query: &str, header: Option<&[u8]>) -> Result<Option<u64>, StatusCode> {
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert("last-event-id", HeaderValue::from_bytes(h).unwrap());
        }
        parse_query(query, &headers).map(|(_, after)| after).map_err(|r| r.into_response().status())
    }

    #[test]
    fn the_resume_id_comes_from_the_header_then_the_query() {
        assert_eq!(resume("lastEventId=3", None), Ok(Some(3)));
        assert_eq!(resume("lastEventId=3", Some(b"7")), Ok(Some(7)));
        assert_eq!(resume("lastEventId=3", Some(b"")), Ok(Some(3)));
        assert_eq!(resume("lastEventId=", None), Ok(None));
        assert_eq!(resume("lastEventId=9999999999999999999", None), Ok(Some(9_999_999_999_999_999_999)));
        // Found by the schema check: a header that is not text was taken for no header, and a malformed
        // query id went unread when a header was sent; both started the stream live.
        for (query, header) in [
            ("lastEventId=3", Some(&b"\xc2\x84"[..])),
            ("", Some(b"\xff")),
            ("lastEventId=%C2%84", Some(b"")),
            ("lastEventId=x", Some(b"4")),
            ("lastEventId= 3", None),
            ("lastEventId=10000000000000000000", None),
            ("lastEventId=-1", None),
        ] {
            assert_eq!(resume(query, header), Err(StatusCode::BAD_REQUEST), "{query} {header:?}");
        }
    }

    #[test]
    fn filters_are_read_as_documented() {
        let filter = |query: &str| parse_query(query, &HeaderMap::new()).map(|(f, _)| f.types);
        assert_eq!(filter("types=call-status, dtmf,,").unwrap(), ["call-status", "dtmf"]);
        assert!(filter("types=call-status%09").is_err());
        assert!(filter("types=connected").is_err());
        let long = "é".repeat(64);
        assert!(parse_query(&format!("callSid={long}"), &HeaderMap::new()).is_ok());
        assert!(parse_query(&format!("callSid={long}é"), &HeaderMap::new()).is_err());
        assert!(parse_query("callSid=", &HeaderMap::new()).is_err());
    }
}
