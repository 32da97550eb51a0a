//! Every call this process knows about, safe to share across tasks.
//!
//! The map is behind a `std::sync::RwLock` held only for lookups and inserts (never across an `.await`);
//! each call has its own mutex, so a busy call never slows another. A semaphore holds one permit per
//! live call, which is how `MAX_CONCURRENT_CALLS` is enforced without a check-then-act race: the permit
//! is taken before the carrier is asked to dial and given back the moment the call ends.
//!
//! Twilio may post a status callback before its REST reply naming the new call has reached us. While a
//! dial is in flight, updates for unknown calls are parked and applied when the call is inserted, so no
//! early `initiated` or `ringing` is lost.

use super::{
    Applied, Call, CallRecord, CallSid, CallStatus, CallUpdate, PageRequest, Speaker, Transcript, TranscriptLine,
};
use crate::store::{CallStore, StoredCall, StoredLine};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

/// Ended calls kept in memory for `get-call`/`list-calls`; older ones are forgotten first.
const RETAINED_ENDED_CALLS: usize = 10_000;
/// Calls with early updates parked at once; more than this is not a race but a flood, and is dropped.
const MAX_PARKED_CALLS: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{max} calls are already in progress, the most this server allows at once; wait for one to end")]
    TooManyCalls { max: usize },
    #[error("the server is shutting down and is not placing new calls")]
    Closed,
}

/// What happened to an update.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    /// The call exists; this is what changed and the call as it is now.
    Applied(Applied, Box<Call>),
    /// The call is not known yet but a dial is in flight: held until it is inserted.
    Parked,
    /// No such call.
    Unknown,
}

#[derive(Debug)]
pub struct CallRegistry {
    inner: RwLock<Inner>,
    /// Where every change is saved (queued, never waited on), so history survives a restart.
    store: Option<Arc<dyn CallStore>>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    dials_in_flight: Arc<AtomicUsize>,
    /// Woken whenever a slot is given back: draining waits on it for the last call to end.
    freed: Arc<Notify>,
}

/// A call's place among the concurrent calls. Giving it back wakes whoever waits for the server to be
/// idle (a draining shutdown).
#[derive(Debug)]
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit first, so a woken waiter already counts one call fewer.
        drop(self.permit.take());
        self.freed.notify_waiters();
    }
}

#[derive(Debug, Default)]
struct Inner {
    calls: HashMap<CallSid, Arc<CallEntry>>,
    /// Insertion order, oldest first: listing and forgetting ended calls.
    order: VecDeque<CallSid>,
    parked: HashMap<CallSid, Vec<CallUpdate>>,
}

/// One call's state and the means to watch it.
#[derive(Debug)]
pub struct CallEntry {
    /// A copy of the call's id, readable without the lock.
    call_sid: CallSid,
    call: Mutex<Call>,
    /// Apart from the record, so that a new line is O(line): the record is copied and saved on every
    /// change, the transcript never is.
    transcript: Mutex<Transcript>,
    /// Bumped on every change; `wait-for-call` and notifications wait on it instead of polling.
    version: watch::Sender<u64>,
    /// The concurrency slot, given back when the call's ending has been published.
    slot: Mutex<Option<Slot>>,
    /// Per-call secret the media stream must present (it rides in the TwiML's `<Parameter>`).
    stream_token: String,
    store: Option<Arc<dyn CallStore>>,
}

impl CallEntry {
    pub fn call_sid(&self) -> &str {
        &self.call_sid
    }

    pub fn snapshot(&self) -> Call {
        lock(&self.call).clone()
    }

    /// The record with a page of its transcript, as readers see it.
    pub fn record(&self, page: PageRequest) -> CallRecord {
        let call = self.snapshot();
        let page = lock(&self.transcript).page(page);
        CallRecord { call, page }
    }

    /// Lines in the transcript so far.
    pub fn transcript_len(&self) -> usize {
        lock(&self.transcript).len()
    }

    /// Up to `max_lines` transcript lines from index `from` on.
    pub fn transcript_since(&self, from: usize, max_lines: usize) -> Vec<TranscriptLine> {
        lock(&self.transcript).since(from, max_lines).to_vec()
    }

    /// The latest transcript lines whose text fits in `max_bytes`.
    pub fn transcript_latest_within(&self, max_bytes: usize) -> Vec<TranscriptLine> {
        lock(&self.transcript).latest_within(max_bytes).to_vec()
    }

    /// Adds what someone said to the transcript, bounded (see [`TranscriptLine::bounded`]), stores it as a
    /// row of its own and wakes watchers: O(line), however long the call has been. Returns the line as
    /// kept, for its event; `None` when there was nothing to say.
    pub fn append_line(&self, speaker: Speaker, text: &str) -> Option<TranscriptLine> {
        let line = TranscriptLine::bounded(speaker, text, time::OffsetDateTime::now_utc())?;
        let index = lock(&self.transcript).push(line.clone());
        if let (Some(index), Some(store)) = (index, &self.store) {
            match serde_json::to_string(&line) {
                Ok(data) => store.append_line(StoredLine {
                    call_sid: self.call_sid.clone(),
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    data,
                }),
                Err(e) => tracing::error!(call_sid = %self.call_sid, error = %e, "a transcript line did not serialize"),
            }
        }
        self.version.send_modify(|v| *v += 1);
        Some(line)
    }

    pub fn stream_token(&self) -> &str {
        &self.stream_token
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Applies an update and returns what changed plus the call afterwards.
    pub fn apply(&self, update: CallUpdate) -> (Applied, Call) {
        let (applied, snapshot) = {
            let mut call = lock(&self.call);
            let applied = call.apply(update);
            (applied, call.clone())
        };
        if applied.changed() {
            self.save(&snapshot);
            self.version.send_modify(|v| *v += 1);
        }
        (applied, snapshot)
    }

    /// Gives the call's concurrency slot back once it has ended. Called by whoever publishes the ending
    /// (the switchboard), after the call's last events are out: a draining shutdown waits for every slot,
    /// so it must not see the call gone before its `call-ended` event is.
    pub fn release_if_ended(&self) {
        if lock(&self.call).status.is_terminal() {
            lock(&self.slot).take();
        }
    }

    /// Changes the call with `f` (for edges that add to it, e.g. key presses) and wakes watchers.
    pub fn modify<R>(&self, f: impl FnOnce(&mut Call) -> R) -> R {
        let (r, snapshot) = {
            let mut call = lock(&self.call);
            let r = f(&mut call);
            (r, self.store.as_ref().map(|_| call.clone()))
        };
        if let Some(snapshot) = snapshot {
            self.save(&snapshot);
        }
        self.version.send_modify(|v| *v += 1);
        r
    }

    fn save(&self, call: &Call) {
        let Some(store) = &self.store else { return };
        match serde_json::to_string(call) {
            Ok(data) => store.save_call(StoredCall {
                call_sid: call.call_sid.clone(),
                data,
                created_at: call.created_at,
                updated_at: time::OffsetDateTime::now_utc(),
            }),
            Err(e) => tracing::error!(call_sid = %call.call_sid, error = %e, "a call record did not serialize"),
        }
    }
}

/// A reserved place for one more call, taken before any money is spent. Dropping it unused gives the
/// place back.
#[derive(Debug)]
pub struct DialTicket {
    permit: Option<Slot>,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for DialTicket {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CallRegistry {
    pub fn new(max_concurrent: usize) -> Self {
        Self::with_store(max_concurrent, None)
    }

    pub fn with_store(max_concurrent: usize, store: Option<Arc<dyn CallStore>>) -> Self {
        Self {
            inner: RwLock::default(),
            store,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            dials_in_flight: Arc::default(),
            freed: Arc::default(),
        }
    }

    /// Reserves a place for a new call, or says why not.
    pub fn reserve(&self) -> Result<DialTicket, RegistryError> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(RegistryError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                return Err(RegistryError::TooManyCalls { max: self.max_concurrent });
            }
        };
        self.dials_in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot { permit: Some(permit), freed: self.freed.clone() };
        Ok(DialTicket { permit: Some(slot), in_flight: self.dials_in_flight.clone() })
    }

    /// Refuses every later `reserve`; calls already placed go on.
    pub fn close(&self) {
        self.slots.close();
    }

    /// Stores a newly placed call and applies any updates that raced ahead of it; returns its entry and
    /// what each of those updates changed (so the caller can publish them).
    pub fn insert(
        &self,
        mut ticket: DialTicket,
        call: Call,
        stream_token: String,
    ) -> (Arc<CallEntry>, Vec<(Applied, Call)>) {
        let sid = call.call_sid.clone();
        let entry = Arc::new(CallEntry {
            call_sid: sid.clone(),
            call: Mutex::new(call),
            transcript: Mutex::default(),
            version: watch::Sender::new(0),
            slot: Mutex::new(ticket.permit.take()),
            stream_token,
            store: self.store.clone(),
        });
        entry.save(&lock(&entry.call).clone());
        let early = {
            let mut inner = write(&self.inner);
            inner.calls.insert(sid.clone(), entry.clone());
            inner.order.push_back(sid.clone());
            inner.forget_old_ended_calls();
            let early = inner.parked.remove(&sid).unwrap_or_default();
            // The last dial in flight has landed: whatever is still parked belongs to no call of ours.
            if self.dials_in_flight.load(Ordering::Acquire) <= 1 {
                inner.parked.clear();
            }
            early
        };
        let applied = early.into_iter().map(|update| entry.apply(update)).collect();
        (entry, applied)
    }

    /// Puts back calls from a previous run (oldest first), for history. They hold no concurrency slot
    /// and have no media token: a call still live on Twilio's side keeps getting its status callbacks.
    pub fn restore(&self, calls: Vec<(Call, Transcript)>) {
        let mut inner = write(&self.inner);
        for (call, transcript) in calls {
            let sid = call.call_sid.clone();
            if inner.calls.contains_key(&sid) {
                continue;
            }
            let entry = Arc::new(CallEntry {
                call_sid: sid.clone(),
                call: Mutex::new(call),
                transcript: Mutex::new(transcript),
                version: watch::Sender::new(0),
                slot: Mutex::new(None),
                stream_token: String::new(),
                store: self.store.clone(),
            });
            inner.calls.insert(sid.clone(), entry);
            inner.order.push_back(sid);
        }
    }

    pub fn entry(&self, sid: &str) -> Option<Arc<CallEntry>> {
        read(&self.inner).calls.get(sid).cloned()
    }

    pub fn get(&self, sid: &str) -> Option<Call> {
        self.entry(sid).map(|e| e.snapshot())
    }

    /// A call's record with a page of its transcript.
    pub fn record(&self, sid: &str, page: PageRequest) -> Option<CallRecord> {
        self.entry(sid).map(|e| e.record(page))
    }

    /// Applies an update to a call, parking it if the call's dial has not returned yet.
    pub fn update(&self, sid: &str, update: CallUpdate) -> UpdateOutcome {
        if let Some(entry) = self.entry(sid) {
            let (applied, call) = entry.apply(update);
            return UpdateOutcome::Applied(applied, Box::new(call));
        }
        let mut inner = write(&self.inner);
        // Re-check under the write lock: `insert` may have landed since the read.
        if let Some(entry) = inner.calls.get(sid).cloned() {
            drop(inner);
            let (applied, call) = entry.apply(update);
            return UpdateOutcome::Applied(applied, Box::new(call));
        }
        let parkable = inner.parked.contains_key(sid) || inner.parked.len() < MAX_PARKED_CALLS;
        if self.dials_in_flight.load(Ordering::Acquire) > 0 && parkable {
            inner.parked.entry(sid.to_owned()).or_default().push(update);
            UpdateOutcome::Parked
        } else {
            UpdateOutcome::Unknown
        }
    }

    /// Calls newest first, optionally only those with one of `statuses`.
    pub fn list(&self, statuses: Option<&[CallStatus]>, limit: usize) -> Vec<Call> {
        let entries: Vec<Arc<CallEntry>> = {
            let inner = read(&self.inner);
            inner.order.iter().rev().filter_map(|sid| inner.calls.get(sid).cloned()).collect()
        };
        entries
            .iter()
            .map(|e| e.snapshot())
            .filter(|c| statuses.is_none_or(|s| s.contains(&c.status)))
            .take(limit)
            .collect()
    }

    /// The most recently placed call, if any.
    pub fn latest(&self) -> Option<Arc<CallEntry>> {
        let inner = read(&self.inner);
        inner.order.back().and_then(|sid| inner.calls.get(sid)).cloned()
    }

    /// Calls that have not ended.
    pub fn active_count(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Calls restored from a previous run that had not ended there: they have no media token, so
    /// nothing here can carry their voice (see `recovery`).
    pub fn restored_unfinished(&self) -> Vec<Arc<CallEntry>> {
        let inner = read(&self.inner);
        inner
            .calls
            .values()
            .filter(|e| e.stream_token.is_empty() && !e.snapshot().status.is_terminal())
            .cloned()
            .collect()
    }

    /// Calls that have not ended, newest first.
    pub fn active(&self) -> Vec<Call> {
        self.list(None, usize::MAX).into_iter().filter(|c| !c.status.is_terminal()).collect()
    }

    /// Resolves once no call is active (none ringing, none connected, none being dialed).
    pub async fn until_idle(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the count is read, so a call ending in between is not missed.
            freed.as_mut().enable();
            if self.active_count() == 0 {
                return;
            }
            freed.await;
        }
    }
}

impl Inner {
    fn forget_old_ended_calls(&mut self) {
        let mut excess = self.order.len().saturating_sub(RETAINED_ENDED_CALLS);
        let mut i = 0;
        while excess > 0 && i < self.order.len() {
            let ended = self
                .order
                .get(i)
                .and_then(|sid| self.calls.get(sid))
                .is_some_and(|e| e.snapshot().status.is_terminal());
            if ended {
                if let Some(sid) = self.order.remove(i) {
                    self.calls.remove(&sid);
                }
                excess -= 1;
            } else {
                i += 1;
            }
        }
    }
}

// A poisoned lock means a panic mid-update elsewhere; the data is plain and still consistent enough to
// serve, and refusing every later request would turn one bug into an outage.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use time::OffsetDateTime;

    fn call(sid: &str) -> Call {
        Call::new(sid.into(), crate::calls::test_request(), CallStatus::Queued, false)
    }

    fn status(status: CallStatus, seq: u32) -> CallUpdate {
        CallUpdate::Status {
            status,
            sequence: Some(seq),
            duration_secs: None,
            answered_by: None,
            at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn the_cap_is_enforced_before_dialing_and_freed_when_a_call_ends() {
        let reg = CallRegistry::new(2);
        let a = reg.reserve().unwrap();
        let b = reg.reserve().unwrap();
        assert_eq!(reg.reserve().unwrap_err(), RegistryError::TooManyCalls { max: 2 });
        drop(b); // a dial that failed gives its place back
        let b = reg.reserve().unwrap();
        let (entry, _) = reg.insert(a, call("CA1"), "t".into());
        reg.insert(b, call("CA2"), "t".into());
        assert_eq!(reg.active_count(), 2);
        assert!(reg.reserve().is_err());
        entry.apply(status(CallStatus::Completed, 4));
        assert_eq!(reg.active_count(), 2, "the slot is held until the ending is published");
        entry.release_if_ended();
        assert_eq!(reg.active_count(), 1);
        assert!(reg.reserve().is_ok());
    }

    #[test]
    fn updates_that_beat_the_dial_reply_are_kept_and_applied() {
        let reg = CallRegistry::new(4);
        let ticket = reg.reserve().unwrap();
        assert_eq!(reg.update("CA9", status(CallStatus::Ringing, 1)), UpdateOutcome::Parked);
        let (entry, early) = reg.insert(ticket, call("CA9"), "t".into());
        assert_eq!(entry.snapshot().status, CallStatus::Ringing);
        assert_eq!(early[0].0.status, Some(CallStatus::Ringing));
        // With nothing in flight, an unknown call is just unknown.
        assert_eq!(reg.update("CA404", status(CallStatus::Ringing, 1)), UpdateOutcome::Unknown);
    }

    /// Counts what the registry hands the store, in bytes.
    #[derive(Debug, Default)]
    struct CountingStore {
        saved: std::sync::atomic::AtomicUsize,
        lines: std::sync::atomic::AtomicUsize,
    }

    impl CallStore for CountingStore {
        fn save_call(&self, call: StoredCall) {
            self.saved.fetch_add(call.data.len(), Ordering::Relaxed);
        }
        fn append_line(&self, line: StoredLine) {
            self.lines.fetch_add(line.data.len(), Ordering::Relaxed);
        }
        fn load_calls(
            &self,
            _: usize,
        ) -> futures::future::BoxFuture<'_, Result<Vec<StoredCall>, crate::store::StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn load_lines(
            &self,
            _: usize,
        ) -> futures::future::BoxFuture<'_, Result<Vec<StoredLine>, crate::store::StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    #[test]
    fn a_long_transcript_costs_what_its_lines_cost_not_their_square() {
        let store = Arc::new(CountingStore::default());
        let reg = CallRegistry::with_store(1, Some(store.clone()));
        let (entry, _) = reg.insert(reg.reserve().unwrap(), call("CA1"), "t".into());
        let record_bytes = store.saved.load(Ordering::Relaxed);
        // 500 lines of 8 KiB: each is cut to the line bound, and each is written once.
        let text = "word ".repeat(8 * 1024 / 5);
        for _ in 0..500 {
            entry.append_line(Speaker::Human, &text).unwrap();
        }
        let line_bytes = store.lines.load(Ordering::Relaxed);
        assert!(line_bytes <= 500 * (super::super::MAX_LINE_BYTES + 200), "{line_bytes} bytes of lines stored");
        assert_eq!(store.saved.load(Ordering::Relaxed), record_bytes, "no line rewrote the record");
        // A key press saves the record again: still the record's size, not the transcript's.
        entry.modify(|c| c.push_dtmf("1".into()));
        assert!(store.saved.load(Ordering::Relaxed) < 3 * record_bytes);
        assert_eq!(entry.transcript_len(), 500);
        assert!(entry.snapshot() == entry.record(PageRequest::default()).call, "the record is the same call");
    }

    #[test]
    fn closing_refuses_new_calls() {
        let reg = CallRegistry::new(4);
        reg.close();
        assert_eq!(reg.reserve().unwrap_err(), RegistryError::Closed);
    }

    #[test]
    fn lists_newest_first_and_filters_by_status() {
        let reg = CallRegistry::new(4);
        for sid in ["CA1", "CA2", "CA3"] {
            let t = reg.reserve().unwrap();
            reg.insert(t, call(sid), "t".into());
        }
        reg.update("CA2", status(CallStatus::InProgress, 2));
        let sids: Vec<_> = reg.list(None, 10).into_iter().map(|c| c.call_sid).collect();
        assert_eq!(sids, ["CA3", "CA2", "CA1"]);
        let live = reg.list(Some(&[CallStatus::InProgress]), 10);
        assert_eq!(live.len(), 1);
        assert_eq!(reg.latest().unwrap().call_sid(), "CA3");
    }
}
