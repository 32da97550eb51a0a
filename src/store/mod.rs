//! Persistence for the event log and the call records, so history survives a restart.
//!
//! The rest of the server sees only two small traits, [`EventStore`] and [`CallStore`], because the
//! embedded SQLite file is the single-machine default and a shared store (Redis Streams) is the planned
//! next step for replicas. The domain stays out: an event or a call is stored as its JSON text plus the
//! few columns the store itself needs to index (id, call SID, kind, timestamps).
//!
//! Nothing on the publish path waits on disk: [`EventStore::append`] and [`CallStore::save_call`] only
//! queue the row for one writer thread, which batches whatever has piled up into a single transaction.
//! Reads run on blocking-pool threads over their own read-only connections, beside the writer.

mod schema;
mod sqlite;
#[cfg(test)]
mod tests;
mod writer;

pub use sqlite::SqliteStore;

use futures::future::BoxFuture;
use time::OffsetDateTime;

/// One event of the log as it is stored: the log's id, the few columns it is queried by, its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: u64,
    pub call_sid: Option<String>,
    /// The event's `type` on the wire: `call-status`, `transcription`, …
    pub kind: String,
    /// The event's JSON, exactly as published.
    pub data: String,
    pub at: OffsetDateTime,
}

/// The latest record of one call, as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCall {
    pub call_sid: String,
    /// The call record's JSON.
    pub data: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// One line of a call's transcript, as it is stored: appended once, never rewritten.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLine {
    pub call_sid: String,
    /// The line's place in its call's transcript, from 0.
    pub index: u32,
    /// The line's JSON.
    pub data: String,
}

/// The durable side of the event log.
///
/// Ids are assigned by the caller, from `last_event_id() + 1` onward: the in-memory publisher hands them
/// out synchronously so that publishing never waits on disk. Append in id order (e.g. under the lock that
/// assigns the id): the store keeps what it is given and readers page by id.
pub trait EventStore: Send + Sync + std::fmt::Debug {
    /// Queues the event for the writer; returns at once.
    fn append(&self, event: StoredEvent);
    /// The highest id persisted or queued, 0 when none ever was. Ids are never reused, even after
    /// retention has deleted every stored event.
    fn last_event_id(&self) -> u64;
    /// Up to `limit` stored events with ids above `after`, in ascending id order.
    fn events_after(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>>;
    /// The oldest id still stored, to tell a client that its `Last-Event-ID` is older than retention.
    fn oldest_event_id(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
}

/// The durable side of the call registry.
pub trait CallStore: Send + Sync + std::fmt::Debug {
    /// Queues an upsert of the call for the writer; returns at once. Later saves of the same call win.
    fn save_call(&self, call: StoredCall);
    /// Queues one transcript line for the writer; returns at once. A line is written once: appending costs
    /// the same on a call's thousandth line as on its first.
    fn append_line(&self, line: StoredLine);
    /// Up to `limit` calls, newest created first, to refill the registry at start.
    fn load_calls(&self, limit: usize) -> BoxFuture<'_, Result<Vec<StoredCall>, StoreError>>;
    /// The transcript lines of the `limit` newest calls (those `load_calls(limit)` returns), in order
    /// within each call.
    fn load_lines(&self, limit: usize) -> BoxFuture<'_, Result<Vec<StoredLine>, StoreError>>;
}

/// Why the store could not be opened or read. Opening errors name `DATABASE_URL`, the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DATABASE_URL: '{url}' is not sqlite://PATH or sqlite::memory:")]
    BadUrl { url: String },
    #[error("DATABASE_URL: cannot create the directory '{dir}' for '{url}': {source}")]
    Directory { url: String, dir: String, source: std::io::Error },
    #[error("DATABASE_URL: cannot open the database '{url}': {source}")]
    Open { url: String, source: rusqlite::Error },
    #[error("DATABASE_URL: '{url}' holds schema version {found}, newer than this build knows ({known})")]
    TooNew { url: String, found: i64, known: usize },
    #[error("cannot start the database writer thread: {0}")]
    Thread(std::io::Error),
    #[error("the database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a database read did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}
