//! Accepting connections: HTTP/1.1 with upgrades (the media WebSocket), no Nagle, the peer's address for
//! the rate limits, a time limit on request headers, and a graceful stop.
//!
//! Hand-rolled instead of `axum::serve` for memory: an idle `/events` subscriber is one open connection,
//! and a dashboard fleet holds thousands. `axum::serve` drives each connection through hyper-util's
//! HTTP/1-or-2 auto-detection and a per-connection service built by `into_make_service_with_connect_info`;
//! a plain hyper HTTP/1 connection whose service is the shared router (an `Arc`) plus the peer address
//! holds several KiB less per connection (README, fan-out figures). HTTP/2 in cleartext (prior knowledge)
//! is not offered: TLS ends at the proxy in front, which speaks HTTP/1.1 to us, and clients reaching the
//! server directly speak HTTP/1.1.

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A client has this long to send a request's headers (slow-loris clients hold connections otherwise).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `stop` resolves; then stops accepting, lets every connection finish
/// its requests in flight (keep-alive connections close after their current response) and returns
/// once all have closed. Upgraded connections (WebSockets) are the application's own and are not waited for.
pub async fn serve(listener: TcpListener, app: Router, stop: impl Future<Output = ()>) {
    let closing = CancellationToken::new();
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
        let connection = http.serve_connection(TokioIo::new(tcp), service).with_upgrades();
        let closing = closing.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                r = connection.as_mut() => r,
                () = closing.cancelled() => {
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
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// Errors about one connection (the peer went away during accept), not about the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}
