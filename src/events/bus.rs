//! The one publish path: the log assigns the id, then every follower gets the event.
//!
//! Publishing never waits: the id comes from a counter, the event goes into a ring of recent events and
//! onto a broadcast channel under one short lock (so ids and broadcast order agree), and the store
//! persists it on its own writer thread. Followers read the broadcast; one that is more than
//! [`FOLLOWER_QUEUE`] events behind the newest id when it asks for its next event is told it lagged (and
//! is disconnected by its edge, with its last id so it can resume). A follower that resumes from an id
//! first replays what it missed — from the ring, or from the store when it is older — then continues
//! live, skipping by id whatever both cover, so the seam has no gap and no duplicate.

use super::CallEvent;
use crate::store::{EventStore, StoredEvent};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::sync::broadcast;

/// An event as followers receive it: its id and its JSON, serialized once for everyone.
#[derive(Debug)]
pub struct Published {
    pub id: u64,
    pub call_sid: String,
    pub kind: String,
    pub data: Arc<str>,
    /// The event as an edge puts it on the wire (an SSE frame), encoded by the first follower that needs
    /// it and shared by all the others: a thousand subscribers cost one encoding, not a thousand.
    pub wire: std::sync::OnceLock<bytes::Bytes>,
}

impl Published {
    fn new(id: u64, call_sid: String, kind: String, data: Arc<str>) -> Self {
        Self { id, call_sid, kind, data, wire: std::sync::OnceLock::new() }
    }
}

impl From<StoredEvent> for Published {
    fn from(e: StoredEvent) -> Self {
        Self::new(e.id, e.call_sid.unwrap_or_default(), e.kind, e.data.into())
    }
}

#[derive(Debug)]
pub struct EventBus {
    inner: Mutex<Ring>,
    store: Arc<dyn EventStore>,
}

#[derive(Debug)]
struct Ring {
    next_id: u64,
    recent: VecDeque<Arc<Published>>,
    capacity: usize,
    /// The live feed; `None` once [`EventBus::close`] has ended it.
    live: Option<broadcast::Sender<Arc<Published>>>,
}

/// How far a follower may fall behind before it is cut off, in events: the publisher's newest id minus the
/// last id the follower handed on, looked at each time the follower is asked for its next event.
pub const FOLLOWER_QUEUE: usize = 1024;
// The live channel holds exactly this many (tokio rounds a capacity up to a power of two), so it reports a
// lag exactly when a follower is more than this far behind.
const _: () = assert!(FOLLOWER_QUEUE.is_power_of_two());
/// Recent events kept in memory for fast resumption.
const RECENT: usize = 8192;
/// Events read from the store per page while replaying.
const PAGE: usize = 500;

/// Why a follower stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    #[error("fell too far behind")]
    Lagged,
    #[error("the server is shutting down")]
    Closed,
    #[error("the event store could not be read")]
    Store,
}

impl EventBus {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        let next_id = store.last_event_id() + 1;
        let (live, _) = broadcast::channel(FOLLOWER_QUEUE);
        let ring = Ring { next_id, recent: VecDeque::new(), capacity: RECENT, live: Some(live) };
        Self { inner: Mutex::new(ring), store }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends to the log (which assigns the id) and fans out. Never waits.
    pub fn publish(&self, event: &CallEvent) -> u64 {
        let data: Arc<str> = match serde_json::to_string(event) {
            Ok(d) => d.into(),
            Err(e) => {
                tracing::error!(error = %e, "an event did not serialize");
                return 0;
            }
        };
        let kind = event.kind();
        let call_sid = event.call_sid().to_owned();
        let published = {
            let mut ring = self.ring();
            let id = ring.next_id;
            ring.next_id += 1;
            crate::telemetry::event_published();
            let p = Arc::new(Published::new(id, call_sid, kind.to_owned(), data));
            if ring.recent.len() == ring.capacity {
                ring.recent.pop_front();
            }
            ring.recent.push_back(p.clone());
            // Queued to the store under the lock (it is only a channel send), so the store receives ids
            // in order and a replay from disk never sees id 6 before id 5.
            self.store.append(StoredEvent {
                id,
                call_sid: Some(p.call_sid.clone()),
                kind: p.kind.clone(),
                data: p.data.to_string(),
                at: OffsetDateTime::now_utc(),
            });
            // No follower (or a closed feed) is not an error: the event is still logged.
            if let Some(live) = &ring.live {
                let _ = live.send(p.clone());
            }
            p
        };
        published.id
    }

    /// The id of the newest event published (0 when none).
    pub fn last_id(&self) -> u64 {
        self.ring().next_id - 1
    }

    /// Ends the live feed, at shutdown: every follower first gets what was published before, then
    /// [`FollowError::Closed`]. Followers learn it from the feed they already wait on, in order, so none
    /// has to watch a shutdown signal on every event. Later events are still logged.
    pub fn close(&self) {
        self.ring().live = None;
    }

    /// Follows the log from after `after` (replaying what was missed), or from now when `None`.
    pub fn follow(self: &Arc<Self>, after: Option<u64>) -> Follower {
        // Subscribed under the ring's lock, with the id read there: every event after `last` is either
        // in the history looked at from here or in `live`.
        let (live, newest) = {
            let ring = self.ring();
            let live = match &ring.live {
                Some(sender) => sender.subscribe(),
                // Closed: a feed that ends at once.
                None => broadcast::channel(1).1,
            };
            (live, ring.next_id - 1)
        };
        let last = after.unwrap_or(newest);
        Follower { bus: self.clone(), live, last, backlog: VecDeque::new(), replaying: after.is_some() }
    }

    /// The oldest event still retained, to tell a client its resume point is older than retention.
    pub async fn oldest_retained(&self) -> Option<u64> {
        let in_store = self.store.oldest_event_id().await.ok().flatten();
        let in_ring = self.ring().recent.front().map(|p| p.id);
        match (in_store, in_ring) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One reader of the log.
#[derive(Debug)]
pub struct Follower {
    bus: Arc<EventBus>,
    live: broadcast::Receiver<Arc<Published>>,
    /// The newest id delivered (or skipped as a duplicate).
    last: u64,
    backlog: VecDeque<Arc<Published>>,
    replaying: bool,
}

impl Follower {
    pub fn last_id(&self) -> u64 {
        self.last
    }

    /// The next event after the last one delivered.
    pub async fn next(&mut self) -> Result<Arc<Published>, FollowError> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if e.id > self.last {
                    self.last = e.id;
                    return Ok(e);
                }
                continue;
            }
            if self.replaying {
                self.refill().await?;
                continue;
            }
            match self.live.recv().await {
                Ok(e) if e.id > self.last => {
                    self.last = e.id;
                    return Ok(e);
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // The channel overwrote events this receiver had not taken. The rule is in ids, against
                    // the publisher: a follower that replayed past them from the log (its receiver still
                    // where it subscribed) has them already, and every id after `last` is still in the
                    // channel while it is at most `FOLLOWER_QUEUE` behind (the channel holds exactly that
                    // many). Only on this path, so the ring's lock is not taken per event.
                    if self.bus.last_id().saturating_sub(self.last) > FOLLOWER_QUEUE as u64 {
                        crate::telemetry::metrics().events_dropped(n);
                        return Err(FollowError::Lagged);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Err(FollowError::Closed),
            }
        }
    }

    /// Loads the next stretch of history: from the ring when it reaches back far enough, else a page
    /// from the store.
    async fn refill(&mut self) -> Result<(), FollowError> {
        let ring_covers = {
            let ring = self.bus.ring();
            // An empty ring (just after a restart) covers only a follower already at the newest id.
            let covers = match ring.recent.front() {
                Some(first) => first.id <= self.last + 1,
                None => self.last + 1 >= ring.next_id,
            };
            if covers {
                self.backlog.extend(ring.recent.iter().filter(|p| p.id > self.last).cloned());
            }
            covers
        };
        if ring_covers {
            self.replaying = false;
            return Ok(());
        }
        let page = self.bus.store.events_after(self.last, PAGE).await.map_err(|_| FollowError::Store)?;
        if page.is_empty() {
            // Nothing older is stored (retention took it): continue from the ring.
            let ring = self.bus.ring();
            self.backlog.extend(ring.recent.iter().filter(|p| p.id > self.last).cloned());
            self.replaying = false;
        } else {
            self.backlog.extend(page.into_iter().map(|e| Arc::new(Published::from(e))));
        }
        Ok(())
    }
}
