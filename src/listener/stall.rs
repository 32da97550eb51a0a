//! A socket that gives up on a peer which accepts none of our bytes for too long.
//!
//! hyper has no write timeout: a client that stops reading (a stalled `/events` subscriber, a frozen
//! browser tab, a slow-read attack) keeps its connection, its response body and whatever that holds —
//! an `/events` stream's place under `SSE_MAX_CONNECTIONS` — for as long as TCP keeps the socket open.
//! Wrapping each accepted socket bounds that: a write that stays pending for the limit fails with
//! `TimedOut`, hyper closes the connection, and the body is dropped. The timer exists only while a write
//! is blocked (created on the first stall, reset on the next), so the ordinary write path pays one branch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub(super) struct StallLimited<IO> {
    io: IO,
    limit: Duration,
    /// Fires `limit` after the current stall began; `None` until the first stall.
    deadline: Option<Pin<Box<Sleep>>>,
    /// A write is blocked now and `deadline` is armed for it.
    stalled: bool,
}

impl<IO> StallLimited<IO> {
    pub(super) fn new(io: IO, limit: Duration) -> Self {
        Self { io, limit, deadline: None, stalled: false }
    }

    /// A write made progress (or failed on its own): the next stall starts a new count.
    fn progressed<T>(&mut self, result: Poll<T>) -> Poll<T> {
        if result.is_ready() {
            self.stalled = false;
        }
        result
    }

    /// A write is blocked: pending until the deadline, then an error.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.stalled {
            let at = Instant::now() + self.limit;
            match self.deadline.as_mut() {
                Some(deadline) => deadline.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.stalled = true;
        }
        if let Some(deadline) = self.deadline.as_mut() {
            ready!(deadline.as_mut().poll(cx));
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer accepted no data for {} s", self.limit.as_secs()),
        )))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallLimited<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallLimited<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.blocked(cx),
            done => self.progressed(done),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.blocked(cx),
            done => self.progressed(done),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.blocked(cx),
            done => self.progressed(done),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_is_given_up_on_after_the_limit() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut socket = StallLimited::new(ours, LIMIT);
        socket.write_all(&[0; 64]).await.unwrap();
        let started = Instant::now();
        let blocked = tokio::time::timeout(LIMIT * 3, socket.write_all(b"more")).await;
        let error = blocked.expect("the blocked write was never given up on").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT, "gave up exactly at the limit, not before");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut socket = StallLimited::new(ours, LIMIT);
        let reader = tokio::spawn(async move {
            let mut buf = [0; 64];
            let mut total = 0;
            // Drains one buffer's worth every 6 s: each stall is shorter than the limit, their sum is not.
            while total < 64 * 5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
            total
        });
        let started = Instant::now();
        socket.write_all(&[1; 64 * 5]).await.unwrap();
        assert!(started.elapsed() > LIMIT * 2);
        assert_eq!(reader.await.unwrap(), 64 * 5);
    }
}
