//! Call events as MCP notifications.
//!
//! Sessions (2025-06-18 / 2025-11-25): the session that placed a call, and any session subscribed to its
//! `call://{callSid}` resource, gets every event of that call as `notifications/message` (logger
//! `voice-call`, data = the event) plus `notifications/resources/updated` for the resource — for the
//! whole call, long after the tool returned (they ride the session's GET stream). Stateless clients
//! (2026-07-28) have no session to push to; they get `resources/updated` through `subscriptions/listen`
//! (see `listen` in mod.rs) and progress while `wait-for-call` blocks.

use crate::events::{EventBus, FollowError};
use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam, ResourceUpdatedNotificationParam};
use rmcp::{Peer, RoleServer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) const LOGGER: &str = "voice-call";

/// One session's forwarders, by call: so a subscription is not doubled and can be cancelled.
#[derive(Debug, Default)]
pub(crate) struct Forwarders {
    by_call: Mutex<HashMap<String, CancellationToken>>,
}

fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// What a session hears about one call.
pub(crate) struct Forward {
    pub(crate) bus: Arc<EventBus>,
    /// Replay from after this event id (so nothing published between placing and subscribing is missed).
    pub(crate) after: u64,
    pub(crate) call_sid: String,
    pub(crate) peer: Peer<RoleServer>,
    pub(crate) level: Arc<Mutex<LoggingLevel>>,
}

impl Forwarders {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.by_call.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts forwarding a call's events to a session, unless it already is.
    pub(crate) fn start(self: &Arc<Self>, tasks: &TaskTracker, shutdown: &CancellationToken, forward: Forward) {
        let stop = shutdown.child_token();
        {
            let mut map = self.map();
            if map.get(&forward.call_sid).is_some_and(|t| !t.is_cancelled()) {
                return;
            }
            map.insert(forward.call_sid.clone(), stop.clone());
        }
        let me = self.clone();
        tasks.spawn(async move {
            let sid = forward.call_sid.clone();
            forward.run(stop).await;
            me.map().remove(&sid);
        });
    }

    pub(crate) fn stop(&self, call_sid: &str) {
        if let Some(t) = self.map().remove(call_sid) {
            t.cancel();
        }
    }
}

impl Drop for Forwarders {
    fn drop(&mut self) {
        for t in self.by_call.get_mut().unwrap_or_else(|p| p.into_inner()).values() {
            t.cancel();
        }
    }
}

impl Forward {
    async fn run(self, stop: CancellationToken) {
        let mut follower = self.bus.follow(Some(self.after));
        let uri = format!("call://{}", self.call_sid);
        loop {
            let event = tokio::select! {
                e = follower.next() => e,
                () = stop.cancelled() => return,
            };
            let event = match event {
                Ok(e) if e.call_sid == self.call_sid => e,
                Ok(_) => continue,
                Err(FollowError::Lagged) => {
                    // Too far behind to replay live: say so once; the resource still has everything.
                    tracing::warn!(call_sid = %self.call_sid, "session fell behind the call's events");
                    return;
                }
                Err(_) => return,
            };
            let level = if event.kind == "error" { LoggingLevel::Error } else { LoggingLevel::Info };
            let wanted = *self.level.lock().unwrap_or_else(|p| p.into_inner());
            if rank(level) >= rank(wanted) {
                let data = serde_json::from_str(&event.data).unwrap_or(serde_json::Value::Null);
                let message = LoggingMessageNotificationParam::new(level, data).with_logger(LOGGER);
                if self.peer.notify_logging_message(message).await.is_err() {
                    return; // the session is gone
                }
            }
            if self.peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri.clone())).await.is_err() {
                return;
            }
            if event.kind == "call-ended" {
                return;
            }
        }
    }
}
