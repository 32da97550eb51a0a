//! The one writer: a dedicated thread that owns the writing connection and commits in batches.
//!
//! SQLite allows one writer at a time, and a commit costs about the same for one row as for a
//! thousand, so everything that writes goes through this thread's queue: it takes the first item, then
//! whatever else is already waiting (up to [`MAX_BATCH`] items or [`MAX_GATHER`]), and commits them in
//! one transaction. It never waits for more to arrive, so a lone event is on disk within one commit.
//! A plain thread rather than a tokio task, because every call here blocks on disk.
//!
//! Errors are logged and the thread goes on: a row SQLite refuses is skipped, a batch that cannot be
//! committed (a full disk) is dropped, and either is logged at most once a minute with a count of what
//! was lost, so a full disk does not turn every event into a log line.

use super::schema::to_ns;
use super::{StoredCall, StoredEvent, StoredLine};
use rusqlite::{Connection, ErrorCode, params};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// Most items committed in one transaction: bounds how long one commit holds the write lock.
const MAX_BATCH: usize = 1000;
/// Longest spent gathering one batch from the queue before committing it.
const MAX_GATHER: Duration = Duration::from_millis(20);
/// How often retention runs (after a commit, and once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per retention statement: each is its own short transaction, so a large backlog
/// (the first start after a long pause) is cleared without one huge WAL.
const DELETE_CHUNK: i64 = 5000;
/// Writer errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// What the writer's queue carries.
#[derive(Debug)]
pub(super) enum Op {
    Event(StoredEvent),
    Call(StoredCall),
    Line(StoredLine),
    /// Answered once everything queued before it is committed; with `retain`, after retention has run.
    Done {
        retain: bool,
        done: oneshot::Sender<()>,
    },
}

/// How much history to keep.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retention {
    pub(super) max_age: Duration,
    pub(super) max_count: u64,
    /// Ended calls kept, newest first (with their transcripts); the age limit applies to them too.
    pub(super) max_calls: u64,
}

#[derive(Debug)]
pub(super) struct Writer {
    conn: Connection,
    rx: mpsc::UnboundedReceiver<Op>,
    retention: Retention,
    last_retention: Option<Instant>,
    errors: ErrorLog,
}

/// One transaction's worth of queued work.
#[derive(Debug, Default)]
struct Batch {
    events: Vec<StoredEvent>,
    calls: Vec<StoredCall>,
    lines: Vec<StoredLine>,
    waiters: Vec<oneshot::Sender<()>>,
    retain: bool,
}

impl Batch {
    fn push(&mut self, op: Op) {
        match op {
            Op::Event(e) => self.events.push(e),
            Op::Call(c) => self.calls.push(c),
            Op::Line(l) => self.lines.push(l),
            Op::Done { retain, done } => {
                self.retain |= retain;
                self.waiters.push(done);
            }
        }
    }

    fn len(&self) -> usize {
        self.events.len() + self.calls.len() + self.lines.len()
    }
}

impl Writer {
    pub(super) fn new(conn: Connection, rx: mpsc::UnboundedReceiver<Op>, retention: Retention) -> Self {
        Self { conn, rx, retention, last_retention: None, errors: ErrorLog::default() }
    }

    /// Runs until every sender is gone and the queue is drained, so nothing queued is ever lost to a
    /// shutdown that forgot to flush.
    pub(super) fn run(mut self) {
        self.retain();
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = Batch::default();
            batch.push(first);
            let started = Instant::now();
            while batch.len() < MAX_BATCH && started.elapsed() < MAX_GATHER {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
            if batch.retain || self.last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                self.retain();
            }
            for done in batch.waiters {
                // A waiter that gave up is no concern of the writer's.
                let _ = done.send(());
            }
        }
        tracing::debug!("event store writer stopped");
    }

    fn commit(&mut self, batch: &mut Batch) {
        if batch.len() == 0 {
            return;
        }
        // Publishers hand ids out in order but may enqueue a hair out of it; within a batch, restore it.
        batch.events.sort_by_key(|e| e.id);
        if let Err(e) = write(&mut self.conn, &mut self.errors, batch) {
            self.errors.report("the event store could not commit a batch; its rows are lost", &e, batch.len());
        }
    }

    /// Deletes events older than the maximum age and beyond the maximum count (oldest first).
    fn retain(&mut self) {
        self.last_retention = Some(Instant::now());
        match retain(&self.conn, self.retention, OffsetDateTime::now_utc()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old events removed from the store"),
            Err(e) => self.errors.report("the event store could not apply retention", &e, 0),
        }
    }
}

/// Commits one batch: events inserted, calls upserted, transcript lines appended, the id high-water
/// mark raised.
fn write(conn: &mut Connection, errors: &mut ErrorLog, batch: &Batch) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO events (id, call_sid, kind, data, at_ns) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        let mut highest = 0;
        for e in &batch.events {
            let id = i64::try_from(e.id).unwrap_or(i64::MAX);
            let row = insert.execute(params![id, e.call_sid, e.kind, e.data, to_ns(e.at)]);
            skip_bad_row(row, errors, "an event was not stored")?;
            highest = highest.max(id);
        }
        if highest > 0 {
            tx.prepare_cached("UPDATE event_log SET last_event_id = max(last_event_id, ?1)")?.execute([highest])?;
        }
        // The first save fixes when the call was created; later saves replace the rest.
        let mut upsert = tx.prepare_cached(
            "INSERT INTO calls (call_sid, data, created_at_ns, updated_at_ns) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (call_sid) DO UPDATE SET data = excluded.data, updated_at_ns = excluded.updated_at_ns",
        )?;
        for c in &batch.calls {
            let row = upsert.execute(params![c.call_sid, c.data, to_ns(c.created_at), to_ns(c.updated_at)]);
            skip_bad_row(row, errors, "a call record was not stored")?;
        }
        // A line is written once; the same line again (a retried save) changes nothing.
        let mut line = tx.prepare_cached(
            "INSERT INTO transcript_lines (call_sid, idx, data) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?;
        for l in &batch.lines {
            let row = line.execute(params![l.call_sid, l.index, l.data]);
            skip_bad_row(row, errors, "a transcript line was not stored")?;
        }
    }
    tx.commit()
}

/// A row SQLite refuses on its own merits (a duplicate id, an oversized value) is logged and skipped;
/// any other failure (disk full, I/O) may have ended the transaction, so it fails the batch.
fn skip_bad_row(row: rusqlite::Result<usize>, errors: &mut ErrorLog, what: &str) -> rusqlite::Result<()> {
    match row {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.sqlite_error_code(), Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig)) => {
            errors.report(what, &e, 1);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Applies retention as of `now` — events, and ended calls with their transcripts, older than the
/// maximum age or beyond their maximum count, oldest first; calls still live are never deleted, however
/// old. Returns how many events and calls were deleted.
fn retain(conn: &Connection, retention: Retention, now: OffsetDateTime) -> rusqlite::Result<usize> {
    Ok(retain_events(conn, retention, now)? + retain_calls(conn, retention, now)?)
}

/// A call that has ended, in SQL over its record's JSON.
const ENDED: &str = "json_extract(data, '$.status') IN ('completed', 'busy', 'failed', 'no-answer', 'canceled')";
/// Calls deleted per transaction, each with its transcript lines.
const CALL_CHUNK: i64 = 500;

fn retain_calls(conn: &Connection, retention: Retention, now: OffsetDateTime) -> rusqlite::Result<usize> {
    let age_ns = i128::try_from(retention.max_age.as_nanos()).unwrap_or(i128::MAX);
    let cutoff = i64::try_from(i128::from(to_ns(now)).saturating_sub(age_ns)).unwrap_or(i64::MIN);
    // The creation time of the newest ended call past the count: it and every older ended call go.
    let offset = i64::try_from(retention.max_calls).unwrap_or(i64::MAX);
    let past_count: Option<i64> = conn
        .query_row(
            &format!("SELECT created_at_ns FROM calls WHERE {ENDED} ORDER BY created_at_ns DESC LIMIT 1 OFFSET ?1"),
            [offset],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    // Delete what was created before this (exclusive).
    let before = past_count.map_or(cutoff, |t| cutoff.max(t.saturating_add(1)));
    let mut deleted = 0;
    loop {
        let sids: Vec<String> = conn
            .prepare_cached(&format!("SELECT call_sid FROM calls WHERE created_at_ns < ?1 AND {ENDED} LIMIT ?2"))?
            .query_map([before, CALL_CHUNK], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if sids.is_empty() {
            return Ok(deleted);
        }
        // A call and its lines go together, so no line outlives its call.
        let tx = conn.unchecked_transaction()?;
        for sid in &sids {
            tx.prepare_cached("DELETE FROM transcript_lines WHERE call_sid = ?1")?.execute([sid])?;
            tx.prepare_cached("DELETE FROM calls WHERE call_sid = ?1")?.execute([sid])?;
        }
        tx.commit()?;
        deleted += sids.len();
    }
}

fn retain_events(conn: &Connection, retention: Retention, now: OffsetDateTime) -> rusqlite::Result<usize> {
    let mut deleted = 0;
    let age_ns = i128::try_from(retention.max_age.as_nanos()).unwrap_or(i128::MAX);
    let cutoff = i128::from(to_ns(now)).saturating_sub(age_ns);
    if let Ok(cutoff) = i64::try_from(cutoff) {
        deleted += delete_chunked(
            conn,
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at_ns < ?1 LIMIT ?2)",
            cutoff,
        )?;
    }
    // The newest id that falls outside the count; everything up to it goes.
    let offset = i64::try_from(retention.max_count).unwrap_or(i64::MAX);
    let boundary: Option<i64> = conn
        .query_row("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1", [offset], |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    if let Some(boundary) = boundary {
        deleted += delete_chunked(
            conn,
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id <= ?1 ORDER BY id LIMIT ?2)",
            boundary,
        )?;
    }
    Ok(deleted)
}

fn delete_chunked(conn: &Connection, sql: &str, bound: i64) -> rusqlite::Result<usize> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut total = 0;
    loop {
        let n = statement.execute([bound, DELETE_CHUNK])?;
        total += n;
        if n < usize::try_from(DELETE_CHUNK).unwrap_or(usize::MAX) {
            return Ok(total);
        }
    }
}

/// Logs writer errors at most once per [`ERROR_LOG_EVERY`], with what was suppressed and lost since.
#[derive(Debug, Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
    lost: u64,
}

impl ErrorLog {
    fn report(&mut self, what: &str, error: &rusqlite::Error, lost_rows: usize) {
        let lost_rows = u64::try_from(lost_rows).unwrap_or(u64::MAX);
        // Counted at once (`/metrics`), whatever the log shows of it.
        if lost_rows > 0 {
            crate::telemetry::metrics().store_rows_lost(lost_rows);
        }
        self.lost += lost_rows;
        if self.last.is_some_and(|t| t.elapsed() < ERROR_LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::error!(%error, rows_lost = self.lost, similar_errors_suppressed = self.suppressed, "{what}");
        self.last = Some(Instant::now());
        self.suppressed = 0;
        self.lost = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn log_db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap().unwrap();
        conn
    }

    fn event(id: u64, at: OffsetDateTime) -> StoredEvent {
        StoredEvent { id, call_sid: None, kind: "call-status".into(), data: "{}".into(), at }
    }

    fn ids(conn: &Connection) -> Vec<i64> {
        let mut s = conn.prepare("SELECT id FROM events ORDER BY id").unwrap();
        s.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn a_duplicate_id_is_skipped_and_the_rest_of_the_batch_commits() {
        let mut conn = log_db();
        let now = OffsetDateTime::now_utc();
        let batch = Batch { events: vec![event(1, now), event(1, now), event(2, now)], ..Batch::default() };
        let mut errors = ErrorLog::default();
        write(&mut conn, &mut errors, &batch).unwrap();
        assert_eq!(ids(&conn), [1, 2]);
        assert!(errors.last.is_some(), "the skipped row was reported");
    }

    #[test]
    fn retention_keeps_the_newest_by_count_and_drops_by_age() {
        let mut conn = log_db();
        let now = OffsetDateTime::now_utc();
        let old = now - time::Duration::days(10);
        let events = (1..=10).map(|id| event(id, if id <= 3 { old } else { now })).collect();
        write(&mut conn, &mut ErrorLog::default(), &Batch { events, ..Batch::default() }).unwrap();
        let week = Retention { max_age: Duration::from_secs(7 * 86_400), max_count: 5, max_calls: 10 };
        assert_eq!(retain(&conn, week, now).unwrap(), 5);
        assert_eq!(ids(&conn), [6, 7, 8, 9, 10]);
        // Far-out settings neither overflow nor delete anything.
        let forever = Retention { max_age: Duration::MAX, max_count: u64::MAX, max_calls: u64::MAX };
        assert_eq!(retain(&conn, forever, now).unwrap(), 0);
    }

    #[test]
    fn errors_are_logged_once_a_minute_with_a_count() {
        let mut log = ErrorLog::default();
        let e = rusqlite::Error::QueryReturnedNoRows;
        log.report("x", &e, 10);
        log.report("x", &e, 10);
        log.report("x", &e, 5);
        assert_eq!((log.suppressed, log.lost), (2, 15));
    }
}
