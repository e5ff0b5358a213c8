//! The request log: one [`Record`] per model request, kept in SQLite.
//!
//! Requests never wait for the database. [`RequestLog::record`] appends a
//! record, in the form it is kept, to the batch that is gathering (a bounded
//! buffer behind a lock the writer takes only to swap the batch out) and
//! returns; one writer thread takes the batch every quarter of a second while
//! requests come and writes it as one row (see `row` for the form), so a
//! record is on disk well within a second of its request ending. A full
//! batch (a disk that stalls, a burst larger than the writer can take) drops
//! the record and counts it: the log gives way, the requests do not. The
//! writer also enforces retention (`keep`, `max`) with a periodic delete.

mod error;
mod query;
mod record;
mod row;
mod schema;
mod upgrade;
mod writer;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use error::Error;
pub use query::{Query, Reader, Summary};
pub use record::{Entry, Record};

/// Records that may wait for the writer before new ones are dropped: at a few
/// hundred bytes each, a few megabytes; 64,000 requests a second between two
/// of its writes (twice what the router answers at saturation here).
pub const CAPACITY: usize = 16_384;

/// Records one batch may hold: a record's id numbers it within its batch in
/// [`row::PLACE_BITS`] bits.
const MOST: usize = (1 << row::PLACE_BITS) - 1;

/// Bytes of records one batch may hold: one SQLite value, well under its
/// limit (1 GB) even with `capture` on (records of up to ~100 KiB each).
const BATCH_BYTES: usize = 64 << 20;

/// Bytes a thread keeps for encoding its records: a record with a captured
/// body may take more, and gives it back.
const SCRATCH_KEPT: usize = 64 << 10;

/// Where the log is kept and for how long.
#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    /// Records older than this are deleted.
    pub keep: Duration,
    /// When the records take more than this many bytes, the oldest are deleted.
    pub max_bytes: u64,
    /// Records waiting for the writer before new ones are dropped.
    pub capacity: usize,
}

/// The handle requests write through; cheap to clone. When the last clone
/// goes, the writer writes what is gathering and ends.
#[derive(Clone)]
pub struct RequestLog {
    shared: Arc<Shared>,
    _open: Arc<Open>,
}

pub(crate) struct Shared {
    pub dropped: AtomicU64,
    pub written: AtomicU64,
    pub path: PathBuf,
    /// Held by the writer while it writes a batch; a test holds it to stall the
    /// writer as a slow disk would.
    pub gate: Mutex<()>,
    pub pending: Mutex<Pending>,
    /// Told when a record arrives to an empty batch, or the log closes.
    pub arrived: Condvar,
    pub capacity: usize,
    /// Bytes of records one batch may hold.
    pub batch_bytes: usize,
    /// The gathering batch refused a record: the next ones are dropped before
    /// they are encoded, until the writer takes the batch.
    pub full: AtomicBool,
}

/// The batch that is gathering.
#[derive(Default)]
pub(crate) struct Pending {
    pub batch: row::Batch,
    /// No handle is left: nothing more will come.
    pub closed: bool,
}

impl Shared {
    pub(crate) fn pending(&self) -> MutexGuard<'_, Pending> {
        // A record is appended whole (it is encoded before the lock is
        // taken), so a batch behind a poisoned lock is still a batch.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Held by every handle; its drop is the last handle's.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.pending().closed = true;
        self.0.arrived.notify_one();
    }
}

impl RequestLog {
    /// Opens (creating it and its directory if need be) the database at
    /// `settings.path` and starts the writer. Fails when the file cannot be
    /// opened or is not a request log.
    pub fn open(settings: Settings) -> Result<RequestLog, Error> {
        RequestLog::open_bounded(settings, BATCH_BYTES)
    }

    /// As `open`, with batches of at most `batch_bytes` bytes.
    fn open_bounded(settings: Settings, batch_bytes: usize) -> Result<RequestLog, Error> {
        if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Open {
                path: settings.path.clone(),
                reason: e.to_string(),
            })?;
        }
        private_file(&settings.path)?;
        let conn = schema::open_for_writing(&settings.path)?;
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            path: settings.path.clone(),
            gate: Mutex::new(()),
            pending: Mutex::default(),
            arrived: Condvar::new(),
            capacity: settings.capacity.clamp(1, MOST),
            batch_bytes,
            full: AtomicBool::new(false),
        });
        let writer = writer::Writer::new(conn, settings, shared.clone());
        std::thread::Builder::new()
            .name("request-log".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Open {
                path: shared.path.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(RequestLog {
            _open: Arc::new(Open(shared.clone())),
            shared,
        })
    }

    /// Hands `record` to the writer without waiting for it; when the writer is
    /// behind by `capacity` records (or a batch's bytes), or a text of the
    /// record fails to write, the record is dropped and counted instead.
    pub fn record(&self, record: &Entry<'_>) {
        thread_local! {
            /// Each thread encodes its records here, before it takes the
            /// batch's lock: with `capture` on a record carries up to 16 KiB
            /// of escaped body, which no other request should wait on.
            static JSON: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        // A record made while the thread ends (a request dropped with its
        // runtime) or from within another's encoding gets a buffer of its own.
        let appended = JSON
            .try_with(|json| match json.try_borrow_mut() {
                Ok(mut json) => {
                    self.append(record, &mut json);
                    json.shrink_to(SCRATCH_KEPT);
                    true
                }
                Err(_) => false,
            })
            .unwrap_or(false);
        if !appended {
            self.append(record, &mut Vec::new());
        }
    }

    /// Encodes `record` into `json`, then appends it to the batch (or drops
    /// and counts it).
    fn append(&self, record: &Entry<'_>, json: &mut Vec<u8>) {
        // A batch that is full stays full until the writer takes it: a
        // request then pays for no encoding (a captured body's escaping).
        if self.shared.full.load(Ordering::Relaxed) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // What a text that broke halfway left here goes; the batch never saw
        // it. An Entry's text is any Display, and one may fail or panic (serde
        // turns a failure into a panic): the record is lost and counted, and
        // the request that made it goes on.
        json.clear();
        let written =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| row::write(record, json)));
        if written.is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut pending = self.shared.pending();
        let batch = &mut pending.batch;
        let too_long = batch.text.len() + json.len() >= self.shared.batch_bytes;
        if batch.n >= self.shared.capacity || too_long {
            // A record too long for even an empty batch is dropped alone: an
            // empty batch is never taken, so it must not refuse the next.
            if batch.n > 0 {
                self.shared.full.store(true, Ordering::Relaxed);
            }
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let first = batch.n == 0;
        batch.push(json, row::ended_ms(record));
        drop(pending);
        // One wake-up a batch: the writer then gathers for a while.
        if first {
            self.shared.arrived.notify_one();
        }
    }

    /// Records dropped because the writer was behind (or gone), or because
    /// one of their texts failed to write.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records written to the database so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A connection for reading, apart from the writer's.
    pub fn reader(&self) -> Result<Reader, Error> {
        Reader::open(&self.shared.path)
    }

    /// Stops the writer until the guard is dropped, as a disk that stalls would.
    #[doc(hidden)]
    pub fn stall(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared.gate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates the file readable by its owner alone (records name clients and may
/// hold prompts); SQLite gives its WAL and shared-memory files the same mode.
/// A file that exists keeps the mode its owner gave it.
fn private_file(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
