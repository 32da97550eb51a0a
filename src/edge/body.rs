//! Request bodies over a route's limit get a 413 the client can read.
//!
//! A server that answers before it has read a body and then closes the connection has the rest of the
//! upload answered by a reset: the client, still sending, gets a broken pipe or a reset, and most HTTP
//! clients report that instead of the 413 waiting unread in their socket. So a body over the limit is
//! read to its end and thrown away (up to [`DRAIN_LIMIT`] bytes in all) before the 413 goes out, and the
//! connection stays open for the next request. A declared size (`Content-Length`) over the limit is
//! answered here; a chunked body is bounded as its handler reads it, and past the limit it reads the
//! rest before it reports the overflow, whatever status the handler then chose. Nothing is buffered here:
//! handlers still read bodies themselves, after the Host, rate and token checks.
//!
//! Where the client cannot be waited for — a declared size over [`DRAIN_LIMIT`], a chunked body that goes
//! past it, or `Expect: 100-continue` (the client sends nothing until told to) — the 413 goes out with
//! `Connection: close` without the rest being read.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

/// Past a route's limit, how much of a body (counted from its start) is read and thrown away so that the
/// client can finish sending and read its 413. Beyond it the connection is closed instead.
pub const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;

/// The middleware's state: the route's limit on a request body, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The middleware (`axum::middleware::from_fn_with_state(BodyLimit(n), bounded)`).
pub async fn bounded(State(BodyLimit(limit)): State<BodyLimit>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // GETs and empty bodies: nothing to bound, nothing to wrap.
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let overflow = Arc::new(Overflow::default());
    if let Some(declared) = content_length(&parts.headers).filter(|&n| n > limit as u64) {
        if declared > DRAIN_LIMIT || expects_continue(&parts.headers) {
            return too_large(limit, false);
        }
        // Read to its end (a limit of 0: the first byte is over it) and refused before any other work.
        let mut draining = Draining::new(body, 0, overflow.clone());
        let _ = std::future::poll_fn(|cx| Pin::new(&mut draining).poll_frame(cx)).await;
        return too_large(limit, overflow.drained_to_end());
    }
    // `Limited` turns the overflow into the error handlers already map to 413 (`LengthLimitError`).
    let body = Body::new(http_body_util::Limited::new(Draining::new(body, limit as u64, overflow.clone()), limit));
    let response = next.run(Request::from_parts(parts, body)).await;
    if overflow.happened() {
        // The same answer whatever the handler made of the error (rmcp answers a failed body read 500).
        return too_large(limit, overflow.drained_to_end());
    }
    response
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// 413; `Connection: close` unless the whole body was read (then the connection can serve another request).
fn too_large(limit: usize, drained_to_end: bool) -> Response {
    tracing::info!(limit, drained_to_end, "request refused: its body is over the limit");
    let mut response =
        (StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {} KiB\n", limit / 1024))
            .into_response();
    if !drained_to_end {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// What a [`Draining`] body found, shared with the middleware that answers for it.
#[derive(Debug, Default)]
struct Overflow(AtomicU8);

const WITHIN: u8 = 0;
const DRAINED: u8 = 1;
const ABANDONED: u8 = 2;

impl Overflow {
    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Relaxed);
    }

    fn happened(&self) -> bool {
        self.0.load(Ordering::Relaxed) != WITHIN
    }

    fn drained_to_end(&self) -> bool {
        self.0.load(Ordering::Relaxed) == DRAINED
    }
}

/// A body that passes frames on while it is within `limit`; the frame that goes past it is held back
/// until the rest has been read and thrown away (or [`DRAIN_LIMIT`] is reached), then passed on, so that
/// the `Limited` above reports the overflow with the request already read.
struct Draining {
    inner: Body,
    limit: u64,
    seen: u64,
    held: Option<Frame<Bytes>>,
    overflow: Arc<Overflow>,
}

impl Draining {
    fn new(inner: Body, limit: u64, overflow: Arc<Overflow>) -> Self {
        Self { inner, limit, seen: 0, held: None, overflow }
    }
}

impl HttpBody for Draining {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        loop {
            let next = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            if let Some(Ok(frame)) = &next {
                this.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            let Some(held) = this.held.take() else {
                match next {
                    Some(Ok(frame)) if this.seen > this.limit => this.held = Some(frame),
                    other => return Poll::Ready(other),
                }
                continue;
            };
            match next {
                Some(Ok(_)) if this.seen <= DRAIN_LIMIT => this.held = Some(held),
                // The end: the client can read its answer. Anything else (too much, or the client's
                // error) leaves the connection to be closed.
                end => {
                    this.overflow.set(if end.is_none() { DRAINED } else { ABANDONED });
                    return Poll::Ready(Some(Ok(held)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A streamed body of `pieces` chunks of `size` bytes, counting how many were read.
    fn body(pieces: usize, size: usize, read: Arc<std::sync::atomic::AtomicUsize>) -> Body {
        let chunk = Bytes::from(vec![b'x'; size]);
        Body::from_stream(futures::stream::iter((0..pieces).map(move |_| {
            read.fetch_add(1, Ordering::Relaxed);
            Ok::<_, std::io::Error>(chunk.clone())
        })))
    }

    async fn read_bounded(pieces: usize, size: usize, limit: usize) -> (Result<usize, String>, usize, Arc<Overflow>) {
        let read = Arc::default();
        let overflow = Arc::new(Overflow::default());
        let draining = Draining::new(body(pieces, size, Arc::clone(&read)), limit as u64, overflow.clone());
        let collected = axum::body::to_bytes(Body::new(http_body_util::Limited::new(draining, limit)), usize::MAX)
            .await
            .map(|b| b.len())
            .map_err(|e| format!("{e:?}"));
        (collected, read.load(Ordering::Relaxed), overflow)
    }

    #[tokio::test]
    async fn a_body_within_the_limit_passes_whole() {
        let (collected, read, overflow) = read_bounded(4, 1000, 4000).await;
        assert_eq!((collected, read), (Ok(4000), 4));
        assert!(!overflow.happened());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_read_to_its_end_before_the_overflow_is_reported() {
        let (collected, read, overflow) = read_bounded(100, 1000, 4000).await;
        let error = collected.unwrap_err();
        assert!(error.contains("LengthLimitError"), "{error}");
        assert_eq!(read, 100, "every piece was read");
        assert!(overflow.happened() && overflow.drained_to_end());
    }

    #[tokio::test]
    async fn draining_stops_at_the_drain_limit() {
        let piece = 1024 * 1024;
        let (collected, read, overflow) = read_bounded(20, piece, 4000).await;
        assert!(collected.is_err());
        assert_eq!(read as u64, DRAIN_LIMIT / piece as u64 + 1, "read up to just past the drain limit");
        assert!(overflow.happened() && !overflow.drained_to_end());
    }
}
