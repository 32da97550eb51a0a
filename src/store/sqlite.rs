//! [`SqliteStore`]: the embedded default — one file (or one in-memory database), one writer thread,
//! read-only connections for reads.
//!
//! A file is opened in WAL mode, so readers see every committed batch and never wait for the writer.
//! `sqlite::memory:` is one private in-memory database shared by the writer and the readers through
//! SQLite's `memdb` VFS (`file:/NAME?vfs=memdb`): the same read path as a file, with ordinary locking
//! (a read may wait out a commit, never the other way round for long). It lives as long as the store.

use super::schema::{self, from_ns};
use super::writer::{Op, Retention, Writer};
use super::{CallStore, EventStore, StoreError, StoredCall, StoredEvent, StoredLine};
use futures::future::BoxFuture;
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Idle read connections kept open: enough for the few concurrent reads (a replaying follower, a
/// listing) without holding many file handles. A read that finds none idle opens one more.
const IDLE_READERS: usize = 2;

/// The SQLite-backed [`EventStore`] and [`CallStore`].
#[derive(Debug)]
pub struct SqliteStore {
    /// The writer's queue; the writer thread ends once this is dropped and the queue is drained.
    queue: mpsc::UnboundedSender<Op>,
    writer: std::thread::JoinHandle<()>,
    readers: Arc<Readers>,
    /// Highest event id persisted or queued: read from the file at open, raised by every append.
    last_event_id: AtomicU64,
    /// Set once the writer is found gone, so that is logged once, not per event.
    writer_gone: AtomicBool,
}

/// Where the database is.
#[derive(Debug, Clone)]
enum Target {
    File(PathBuf),
    /// A `file:/NAME?vfs=memdb` URI, unique to one store.
    Memory(String),
}

impl Target {
    fn parse(url: &str) -> Result<Self, StoreError> {
        if matches!(url, "sqlite::memory:" | "sqlite://:memory:") {
            // Unique per store so that two stores in one process (tests) never share data.
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            return Ok(Self::Memory(format!("file:/voice-call-mcp-{}-{n}?vfs=memdb", std::process::id())));
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or_default();
        // A query string would be taken as part of the file name; refuse it rather than surprise.
        if path.is_empty() || path.contains('?') {
            return Err(StoreError::BadUrl { url: url.into() });
        }
        Ok(Self::File(PathBuf::from(path)))
    }

    fn open(&self, flags: OpenFlags) -> rusqlite::Result<Connection> {
        match self {
            Self::File(path) => Connection::open_with_flags(path, flags),
            Self::Memory(uri) => Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI),
        }
    }
}

/// Read-only connections, reused across reads.
#[derive(Debug)]
struct Readers {
    target: Target,
    /// A std mutex: it is held only to push or pop a connection, never across a query or an await.
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Runs `read` on an idle connection (or a new one); blocking, so call it from the blocking pool.
    fn with<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = self.target.open(flags)?;
                schema::configure_reader(&conn)?;
                conn
            }
        };
        let result = read(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        Ok(result?)
    }
}

impl SqliteStore {
    /// Opens (creating the directory and file if need be) the database named by `DATABASE_URL`, brings
    /// its schema up to date, and starts the writer thread, which first applies retention.
    pub fn open(config: &crate::config::StoreConfig) -> Result<Self, StoreError> {
        let url = config.database_url.as_str();
        let target = Target::parse(url)?;
        if let Target::File(path) = &target
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                url: url.into(),
                dir: dir.display().to_string(),
                source,
            })?;
        }
        let opened = |source| StoreError::Open { url: url.into(), source };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = target.open(flags).map_err(opened)?;
        // The first statements are where a file that is not a database, or is read-only, shows itself.
        schema::configure_writer(&conn, matches!(target, Target::Memory(_))).map_err(opened)?;
        if let Err(found) = schema::migrate(&mut conn).map_err(opened)? {
            return Err(StoreError::TooNew { url: url.into(), found, known: schema::known_version() });
        }
        let last: i64 = conn
            .query_row("SELECT max(last_event_id, coalesce((SELECT max(id) FROM events), 0)) FROM event_log", [], |r| {
                r.get(0)
            })
            .map_err(opened)?;

        let (queue, rx) = mpsc::unbounded_channel();
        let retention = Retention {
            max_age: config.retention,
            max_count: config.retention_count,
            max_calls: config.call_retention_count,
        };
        let writer = Writer::new(conn, rx, retention);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Thread)?;
        tracing::info!(database = %url, last_event_id = last, "event store opened");
        Ok(Self {
            queue,
            writer,
            readers: Arc::new(Readers { target, idle: Mutex::new(Vec::new()) }),
            last_event_id: AtomicU64::new(u64::try_from(last).unwrap_or(0)),
            writer_gone: AtomicBool::new(false),
        })
    }

    /// Resolves once everything queued before the call is committed (or has failed and been logged).
    pub async fn flush(&self) {
        self.done(false).await;
    }

    /// Flushes, stops the writer thread and waits for it to finish.
    pub async fn close(self) {
        self.flush().await;
        let Self { queue, writer, .. } = self;
        // The writer ends when its queue closes, after draining whatever is still in it.
        drop(queue);
        match tokio::task::spawn_blocking(move || writer.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("the event store writer thread panicked"),
        }
    }

    /// Applies retention now (after everything already queued), rather than at the next minute.
    #[cfg(test)]
    pub(crate) async fn run_retention_now(&self) {
        self.done(true).await;
    }

    async fn done(&self, retain: bool) {
        let (done, finished) = oneshot::channel();
        if self.enqueue(Op::Done { retain, done }) {
            // An error means the writer is gone; there is nothing left to wait for.
            let _ = finished.await;
        }
    }

    /// Queues for the writer without waiting; false (logged once) when the writer is gone.
    fn enqueue(&self, op: Op) -> bool {
        if self.queue.send(op).is_ok() {
            return true;
        }
        if !self.writer_gone.swap(true, Ordering::Relaxed) {
            tracing::error!("the event store writer has stopped; events and calls are no longer saved");
        }
        false
    }

    /// Runs a read on the blocking pool, beside the writer.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let readers = self.readers.clone();
        Box::pin(async move { tokio::task::spawn_blocking(move || readers.with(read)).await? })
    }
}

fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl EventStore for SqliteStore {
    fn append(&self, event: StoredEvent) {
        self.last_event_id.fetch_max(event.id, Ordering::Relaxed);
        self.enqueue(Op::Event(event));
    }

    fn last_event_id(&self) -> u64 {
        self.last_event_id.load(Ordering::Relaxed)
    }

    fn events_after(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        let (after, limit) = (to_i64(after), to_i64(limit));
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, call_sid, kind, data, at_ns FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = statement.query_map([after, limit], |r| {
                Ok(StoredEvent {
                    id: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                    call_sid: r.get(1)?,
                    kind: r.get(2)?,
                    data: r.get(3)?,
                    at: from_ns(r.get(4)?),
                })
            })?;
            rows.collect()
        })
    }

    fn oldest_event_id(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        self.read(|conn| {
            let oldest: Option<i64> = conn.query_row("SELECT min(id) FROM events", [], |r| r.get(0))?;
            Ok(oldest.and_then(|id| u64::try_from(id).ok()))
        })
    }
}

impl CallStore for SqliteStore {
    fn save_call(&self, call: StoredCall) {
        self.enqueue(Op::Call(call));
    }

    fn append_line(&self, line: StoredLine) {
        self.enqueue(Op::Line(line));
    }

    fn load_lines(&self, limit: usize) -> BoxFuture<'_, Result<Vec<StoredLine>, StoreError>> {
        let limit = to_i64(limit);
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT call_sid, idx, data FROM transcript_lines WHERE call_sid IN
                   (SELECT call_sid FROM calls ORDER BY created_at_ns DESC, updated_at_ns DESC LIMIT ?1)
                 ORDER BY call_sid, idx",
            )?;
            let rows = statement.query_map([limit], |r| {
                Ok(StoredLine {
                    call_sid: r.get(0)?,
                    index: r.get::<_, i64>(1)?.try_into().unwrap_or(u32::MAX),
                    data: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    fn load_calls(&self, limit: usize) -> BoxFuture<'_, Result<Vec<StoredCall>, StoreError>> {
        let limit = to_i64(limit);
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT call_sid, data, created_at_ns, updated_at_ns FROM calls
                 ORDER BY created_at_ns DESC, updated_at_ns DESC LIMIT ?1",
            )?;
            let rows = statement.query_map([limit], |r| {
                Ok(StoredCall {
                    call_sid: r.get(0)?,
                    data: r.get(1)?,
                    created_at: from_ns(r.get(2)?),
                    updated_at: from_ns(r.get(3)?),
                })
            })?;
            rows.collect()
        })
    }
}
