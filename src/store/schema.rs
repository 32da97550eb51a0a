//! The tables, as numbered migrations, and the settings every connection gets.
//!
//! The schema's version is SQLite's own `PRAGMA user_version`: migration `n` (counting from 1) runs once,
//! in a transaction with the version bump, so a crash mid-migration leaves the old version intact. A file
//! written by a newer build is refused rather than guessed at.

use rusqlite::Connection;
use std::time::Duration;

/// Each entry moves the schema one version up; append, never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the event log, its id high-water mark, and the call records.
    "CREATE TABLE events (
        id      INTEGER PRIMARY KEY,  -- the log's id, assigned by the publisher
        call_sid TEXT,
        kind    TEXT NOT NULL,
        data    TEXT NOT NULL,        -- the event's JSON
        at_ns   INTEGER NOT NULL      -- unix time in nanoseconds, UTC
    ) STRICT;
    -- Age-based retention finds the old rows without a scan.
    CREATE INDEX events_at ON events (at_ns);
    -- Retention may delete every event; ids must still never be handed out twice.
    CREATE TABLE event_log (
        only          INTEGER PRIMARY KEY CHECK (only = 1),
        last_event_id INTEGER NOT NULL
    ) STRICT;
    INSERT INTO event_log (only, last_event_id) VALUES (1, 0);
    CREATE TABLE calls (
        call_sid      TEXT PRIMARY KEY,
        data          TEXT NOT NULL,    -- the call record's JSON
        created_at_ns INTEGER NOT NULL,
        updated_at_ns INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX calls_created ON calls (created_at_ns);",
    // 2: transcripts, a row per line, appended: a call record no longer carries (and rewrites) them.
    "CREATE TABLE transcript_lines (
        call_sid TEXT NOT NULL,
        idx      INTEGER NOT NULL,    -- the line's place in its call's transcript, from 0
        data     TEXT NOT NULL,       -- the line's JSON
        PRIMARY KEY (call_sid, idx)
    ) STRICT, WITHOUT ROWID;",
];

/// Brings the schema to the newest version. `Ok(Err(found))` when the file is newer than this build.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<(), i64>> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if found > known {
        return Ok(Err(found));
    }
    for (n, sql) in (1..).zip(MIGRATIONS).skip(usize::try_from(found).unwrap_or(0)) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", n)?;
        tx.commit()?;
        tracing::info!(version = n, "database schema migrated");
    }
    Ok(Ok(()))
}

pub(super) fn known_version() -> usize {
    MIGRATIONS.len()
}

/// How long a connection waits for another's lock before failing. In WAL mode only the in-memory
/// database and checkpoints ever wait; a generous bound keeps a slow disk from failing a read.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings for the one writing connection.
pub(super) fn configure_writer(conn: &Connection, in_memory: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if !in_memory {
        // WAL: readers never block the writer nor it them. NORMAL sync: a commit survives the process
        // dying; only a power cut can lose the last moments, which is fine for an event log.
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "the database did not switch to WAL; reads may wait on writes");
        }
        conn.pragma_update(None, "synchronous", "normal")?;
    }
    Ok(())
}

/// Settings for a read-only connection.
pub(super) fn configure_reader(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)
}

/// Timestamps are stored as unix nanoseconds: exact round trips, and ordered comparisons in SQL.
/// An `i64` spans the years 1677–2262; anything outside is clamped.
pub(super) fn to_ns(t: time::OffsetDateTime) -> i64 {
    let ns = t.unix_timestamp_nanos();
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

pub(super) fn from_ns(ns: i64) -> time::OffsetDateTime {
    // Every i64 of nanoseconds is a valid date, so the fallback is never taken.
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
