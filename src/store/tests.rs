//! The store through its public face: what is appended and saved comes back, in order, across a reopen.

#![allow(clippy::unwrap_used)]

use super::{CallStore, EventStore, SqliteStore, StoreError, StoredCall, StoredEvent, StoredLine};
use crate::config::StoreConfig;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;

/// A fresh directory under the system temp dir, removed when dropped (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        let dir = std::env::temp_dir().join(format!("voice-call-store-{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn config(&self) -> StoreConfig {
        // A subdirectory that does not exist yet: open must create it.
        config(&format!("sqlite://{}", self.0.join("data/voice-call.db").display()))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(url: &str) -> StoreConfig {
    StoreConfig {
        database_url: url.into(),
        retention: Duration::from_secs(30 * 86_400),
        retention_count: 1_000_000,
        call_retention_count: 100_000,
    }
}

fn event(id: u64) -> StoredEvent {
    StoredEvent {
        id,
        call_sid: Some(format!("CA{:032x}", id % 3)),
        kind: "transcription".into(),
        data: format!(r#"{{"type":"transcription","n":{id}}}"#),
        at: OffsetDateTime::now_utc(),
    }
}

/// Calls are created a day before the tests run (within the age limit), a second apart per `created_secs`.
static CREATED: std::sync::LazyLock<OffsetDateTime> =
    std::sync::LazyLock::new(|| OffsetDateTime::now_utc() - time::Duration::days(1));

fn call(sid: &str, data: &str, created_secs: i64) -> StoredCall {
    let created_at = *CREATED + time::Duration::seconds(created_secs);
    StoredCall { call_sid: sid.into(), data: data.into(), created_at, updated_at: OffsetDateTime::now_utc() }
}

fn ids(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn appended_events_read_back_in_id_order_with_a_limit() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.config()).unwrap();
    assert_eq!(store.last_event_id(), 0);
    assert_eq!(store.oldest_event_id().await.unwrap(), None);
    let sent: Vec<_> = (1..=10).map(event).collect();
    // Enqueued slightly out of order, as concurrent publishers may.
    for e in sent[..4].iter().rev().chain(&sent[4..]) {
        store.append(e.clone());
    }
    assert_eq!(store.last_event_id(), 10, "counts what is queued, before it is written");
    store.flush().await;

    assert_eq!(store.events_after(0, 100).await.unwrap(), sent);
    assert_eq!(ids(&store.events_after(3, 4).await.unwrap()), [4, 5, 6, 7]);
    assert!(store.events_after(10, 100).await.unwrap().is_empty());
    assert_eq!(store.oldest_event_id().await.unwrap(), Some(1));
    store.close().await;
}

#[tokio::test]
async fn events_and_calls_survive_a_reopen() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.config()).unwrap();
    for id in 1..=5 {
        store.append(event(id));
    }
    store.save_call(call("CA1", r#"{"status":"completed"}"#, 0));
    store.close().await;

    let store = SqliteStore::open(&dir.config()).unwrap();
    assert_eq!(store.last_event_id(), 5);
    assert_eq!(ids(&store.events_after(0, 100).await.unwrap()), [1, 2, 3, 4, 5]);
    let calls = store.load_calls(10).await.unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].data, r#"{"status":"completed"}"#);
    store.append(event(6));
    store.close().await;
    assert!(dir.path().join("data/voice-call.db").is_file());
}

#[tokio::test]
async fn calls_upsert_and_load_newest_first() {
    let store = SqliteStore::open(&config("sqlite::memory:")).unwrap();
    store.save_call(call("CAold", r#"{"status":"queued"}"#, 10));
    store.save_call(call("CAnew", r#"{"status":"queued"}"#, 20));
    store.save_call(call("CAold", r#"{"status":"ringing"}"#, 10));
    store.flush().await;
    // A later save in a later batch wins too; the first save's creation time stays.
    let mut last = call("CAold", r#"{"status":"completed"}"#, 99);
    store.save_call(last.clone());
    store.flush().await;

    let calls = store.load_calls(10).await.unwrap();
    let sids: Vec<_> = calls.iter().map(|c| c.call_sid.as_str()).collect();
    assert_eq!(sids, ["CAnew", "CAold"]);
    last.created_at = call("CAold", "", 10).created_at;
    assert_eq!(calls[1], last);
    assert_eq!(store.load_calls(1).await.unwrap().len(), 1);
    store.close().await;
}

fn line(sid: &str, index: u32) -> StoredLine {
    StoredLine { call_sid: sid.into(), index, data: format!(r#"{{"text":"line {index}"}}"#) }
}

#[tokio::test]
async fn transcript_lines_are_appended_once_and_load_with_their_calls() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.config()).unwrap();
    store.save_call(call("CAold", "{}", 10));
    store.save_call(call("CAnew", "{}", 20));
    for i in 0..3 {
        store.append_line(line("CAold", i));
    }
    store.append_line(line("CAnew", 0));
    // The same line again (a retried save) is not a second line, and does not fail the batch.
    store.append_line(StoredLine { data: "changed".into(), ..line("CAold", 1) });
    store.close().await;

    let store = SqliteStore::open(&dir.config()).unwrap();
    let lines = store.load_lines(10).await.unwrap();
    let got: Vec<_> = lines.iter().map(|l| (l.call_sid.as_str(), l.index, l.data.as_str())).collect();
    assert_eq!(
        got,
        [
            ("CAnew", 0, r#"{"text":"line 0"}"#),
            ("CAold", 0, r#"{"text":"line 0"}"#),
            ("CAold", 1, r#"{"text":"line 1"}"#),
            ("CAold", 2, r#"{"text":"line 2"}"#),
        ]
    );
    // Only the lines of the calls that are loaded.
    let newest: Vec<_> = store.load_lines(1).await.unwrap().into_iter().map(|l| l.call_sid).collect();
    assert_eq!(newest, ["CAnew"]);
    store.close().await;
}

#[tokio::test]
async fn retention_keeps_the_newest_by_count() {
    let store = SqliteStore::open(&StoreConfig { retention_count: 3, ..config("sqlite::memory:") }).unwrap();
    for id in 1..=10 {
        store.append(event(id));
    }
    store.run_retention_now().await;
    assert_eq!(ids(&store.events_after(0, 100).await.unwrap()), [8, 9, 10]);
    assert_eq!(store.oldest_event_id().await.unwrap(), Some(8));
    store.close().await;
}

#[tokio::test]
async fn retention_keeps_the_newest_ended_calls_with_their_lines_and_every_live_call() {
    let store = SqliteStore::open(&StoreConfig { call_retention_count: 2, ..config("sqlite::memory:") }).unwrap();
    let ended = r#"{"status":"completed"}"#;
    // Oldest first: an old call still live, four ended ones, each with two lines.
    store.save_call(call("CAlive", r#"{"status":"in-progress"}"#, 1));
    for (n, sid) in ["CA1", "CA2", "CA3", "CA4"].into_iter().enumerate() {
        store.save_call(call(sid, ended, 10 + n as i64));
        store.append_line(line(sid, 0));
        store.append_line(line(sid, 1));
    }
    store.run_retention_now().await;
    let calls: Vec<_> = store.load_calls(10).await.unwrap().into_iter().map(|c| c.call_sid).collect();
    assert_eq!(calls, ["CA4", "CA3", "CAlive"], "the 2 newest ended calls, and the live one however old");
    let lines: Vec<_> = store.load_lines(10).await.unwrap().into_iter().map(|l| (l.call_sid, l.index)).collect();
    let kept = |sid: &str| [(sid.to_owned(), 0), (sid.to_owned(), 1)];
    assert_eq!(lines, [kept("CA3"), kept("CA4")].concat(), "no line outlives its call");
    store.close().await;

    // By age: ended calls older than the limit go, whatever the count.
    let aged = StoreConfig { retention: Duration::from_nanos(1), ..config("sqlite::memory:") };
    let store = SqliteStore::open(&aged).unwrap();
    store.flush().await;
    store.save_call(call("CAold", ended, 5));
    store.save_call(call("CAlive", r#"{"status":"ringing"}"#, 5));
    store.run_retention_now().await;
    let calls: Vec<_> = store.load_calls(10).await.unwrap().into_iter().map(|c| c.call_sid).collect();
    assert_eq!(calls, ["CAlive"]);
    store.close().await;
}

#[tokio::test]
async fn retention_drops_old_events_at_open_and_never_reuses_their_ids() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.config()).unwrap();
    let long_ago = OffsetDateTime::now_utc() - time::Duration::days(60);
    for id in 1..=4 {
        store.append(StoredEvent { at: long_ago, ..event(id) });
    }
    store.append(event(5));
    store.close().await;

    let week = StoreConfig { retention: Duration::from_secs(7 * 86_400), ..dir.config() };
    let store = SqliteStore::open(&week).unwrap();
    store.flush().await; // retention runs first thing on the writer thread
    assert_eq!(ids(&store.events_after(0, 100).await.unwrap()), [5]);

    store.close().await;

    // Everything is old enough to go: the log is empty, and still its next id is 6.
    let store = SqliteStore::open(&StoreConfig { retention: Duration::from_nanos(1), ..dir.config() }).unwrap();
    store.flush().await;
    assert_eq!(store.oldest_event_id().await.unwrap(), None);
    assert_eq!(store.last_event_id(), 5);
    store.close().await;
}

#[tokio::test]
async fn memory_mode_reads_see_the_writers_data_and_stores_are_separate() {
    let a = SqliteStore::open(&config("sqlite::memory:")).unwrap();
    let b = SqliteStore::open(&config("sqlite::memory:")).unwrap();
    for id in 1..=3 {
        a.append(event(id));
    }
    a.flush().await;
    b.flush().await;
    assert_eq!(ids(&a.events_after(0, 10).await.unwrap()), [1, 2, 3]);
    assert!(b.events_after(0, 10).await.unwrap().is_empty());
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_path_under_a_regular_file_is_a_clear_error() {
    let dir = TempDir::new();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let url = format!("sqlite://{}/x.db", file.display());
    let err = SqliteStore::open(&config(&url)).unwrap_err();
    assert!(matches!(err, StoreError::Directory { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("DATABASE_URL: "), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");

    let err = SqliteStore::open(&config("sqlite:///etc/passwd/x.db")).unwrap_err();
    assert!(err.to_string().starts_with("DATABASE_URL: "), "{err}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = TempDir::new();
    let file = dir.path().join("junk.db");
    std::fs::write(&file, vec![b'x'; 4096]).unwrap();
    let err = SqliteStore::open(&config(&format!("sqlite://{}", file.display()))).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().starts_with("DATABASE_URL: cannot open"), "{err}");
    assert!(matches!(SqliteStore::open(&config("sqlite://")), Err(StoreError::BadUrl { .. })));
}
