//! Accepting connections: HTTP/1.1 with upgrades (the media WebSocket), no Nagle, the peer's address for
//! the rate limits, a time limit on request headers, a limit on how long a peer may refuse our writes
//! ([`stall`]), and a graceful stop.
//!
//! Hand-rolled instead of `axum::serve` for memory: an idle `/events` subscriber is one open connection,
//! and a dashboard fleet holds thousands. `axum::serve` drives each connection through hyper-util's
//! HTTP/1-or-2 auto-detection and a per-connection service built by `into_make_service_with_connect_info`;
//! a plain hyper HTTP/1 connection whose service is the shared router (an `Arc`) plus the peer address
//! holds several KiB less per connection (README, fan-out figures). HTTP/2 in cleartext (prior knowledge)
//! is not offered: TLS ends at the proxy in front, which speaks HTTP/1.1 to us, and clients reaching the
//! server directly speak HTTP/1.1.

mod stall;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// A client has this long to send a request's headers (slow-loris clients hold connections otherwise).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A peer that accepts none of our bytes for this long is disconnected: an `/events` subscriber that
/// stopped reading, a media stream that froze. Long enough for any live network's hiccup. Nothing more is
/// written (nothing can be), so an `/events` reader learns no resume id: it resumes after the last id it
/// read (README, "Following calls live", documents this beside the 1,024-event rule).
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` resolves; then stops accepting, lets every connection finish
/// its requests in flight (keep-alive connections close after their current response) and returns
/// once all have closed. Upgraded connections (WebSockets) are the application's own and are not waited for.
pub async fn serve(listener: TcpListener, app: Router, stop: impl Future<Output = ()>) {
    let goodbyes = Arc::new(Goodbyes::default());
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin (as axum::serve does).
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // No Nagle: a Twilio mark must not wait behind the ACK of the audio before it.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            tower::ServiceExt::oneshot(app.clone(), request.map(Body::new))
        });
        let connection = http
            .serve_connection(TokioIo::new(stall::StallLimited::new(tcp, WRITE_STALL_LIMIT)), service)
            .with_upgrades();
        let goodbye = goodbyes.register();
        connections.spawn(async move {
            tokio::pin!(connection);
            let (closing, _registered) = goodbye;
            let result = tokio::select! {
                r = connection.as_mut() => r,
                _ = closing => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    goodbyes.say();
    connections.close();
    connections.wait().await;
}

/// How the accept loop tells its connections to finish: one oneshot each. The connection's task polls its
/// receiver on every wake (every event of an `/events` stream); a pending oneshot costs an atomic load,
/// where a shared `CancellationToken` would take its lock (and its waiter list's) each time.
#[derive(Debug, Default)]
struct Goodbyes {
    next: AtomicU64,
    open: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

/// A connection's place in [`Goodbyes`], given up when its task ends.
struct Registered {
    goodbyes: Arc<Goodbyes>,
    key: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.goodbyes.lock().remove(&self.key);
    }
}

impl Goodbyes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(self: &Arc<Self>) -> (oneshot::Receiver<()>, Registered) {
        let (tx, rx) = oneshot::channel();
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, tx);
        (rx, Registered { goodbyes: self.clone(), key })
    }

    /// Every connection open now finishes its current exchange and closes.
    fn say(&self) {
        for (_, tx) in self.lock().drain() {
            let _ = tx.send(());
        }
    }
}

/// Errors about one connection (the peer went away during accept), not about the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}
