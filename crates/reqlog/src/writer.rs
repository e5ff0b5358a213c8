//! The one thread that writes: batches of records, each one row (see
//! crate::row), and the retention's deletes between them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection};

use crate::row::Batch;
use crate::{Settings, Shared};

/// How long the writer lets records gather after the first of a burst: one
/// wake-up and one insert for all of them, not one per request (a commit per
/// request cost the router more CPU than the request itself). A crash loses
/// at most this much.
const GATHER: Duration = Duration::from_millis(250);
/// How often old records are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct Writer {
    conn: Connection,
    settings: Settings,
    shared: Arc<Shared>,
}

impl Writer {
    pub(crate) fn new(conn: Connection, settings: Settings, shared: Arc<Shared>) -> Writer {
        Writer {
            conn,
            settings,
            shared,
        }
    }

    /// Writes until every handle is gone and nothing is left to write.
    pub(crate) fn run(mut self) {
        self.prune_logged(crate::now_ms());
        let mut last_prune = std::time::SystemTime::now();
        // The batch being written. It and the gathering one trade places, so
        // the two buffers (a few megabytes at saturation) are kept, not made
        // anew each time (which costs page faults every time).
        let mut batch = Batch::default();
        loop {
            let (some, closed) = {
                let mut pending = self.shared.pending();
                if pending.batch.n == 0 && !pending.closed {
                    pending = self
                        .shared
                        .arrived
                        .wait_timeout(pending, PRUNE_EVERY)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                (pending.batch.n > 0, pending.closed)
            };
            if some {
                if !closed {
                    std::thread::sleep(GATHER);
                }
                // The gate before the batch is taken: a stalled writer leaves
                // the records gathering, up to the capacity.
                let gate = self.shared.gate.lock().unwrap_or_else(|e| e.into_inner());
                {
                    let mut pending = self.shared.pending();
                    std::mem::swap(&mut batch, &mut pending.batch);
                    self.shared.full.store(false, Ordering::Relaxed);
                }
                let n = batch.n as u64;
                match insert(&self.conn, None, &mut batch) {
                    Ok(()) => {
                        self.shared.written.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.shared.dropped.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(
                            path = %self.shared.path.display(),
                            "request log: {n} records not written: {e}"
                        );
                    }
                }
                drop(gate);
                batch.clear();
            } else if closed {
                return;
            }
            if last_prune.elapsed().unwrap_or(PRUNE_EVERY) >= PRUNE_EVERY {
                self.prune_logged(crate::now_ms());
                last_prune = std::time::SystemTime::now();
            }
        }
    }

    fn prune_logged(&mut self, now_ms: u64) {
        if let Err(e) = prune(&mut self.conn, &self.settings, now_ms) {
            tracing::warn!(path = %self.shared.path.display(), "request log: retention failed: {e}");
        }
    }
}

/// Writes `batch` as one row, numbered `id` (or, None, the next number).
pub(crate) fn insert(
    conn: &Connection,
    id: Option<i64>,
    batch: &mut Batch,
) -> rusqlite::Result<()> {
    let (n, done) = (batch.n as i64, batch.done_ms as i64);
    // Bound as the text it is, unchecked: checking 2 MB of UTF-8 a batch was
    // a share of the log's cost, and the batch holds only what JSON writers
    // wrote.
    let records = ToSqlOutput::Borrowed(ValueRef::Text(batch.close()));
    conn.prepare_cached(
        "INSERT INTO record_batches (id, done_ms, n, records) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, done, n, records])?;
    Ok(())
}

/// Writes owned `records` as one batch, numbered `id` (or the next number):
/// how an older file's records, and the tests', go in.
pub(crate) fn insert_records(
    conn: &Connection,
    id: Option<i64>,
    records: &[crate::Record],
) -> rusqlite::Result<()> {
    let mut batch = Batch::default();
    let mut json = Vec::new();
    for r in records.iter().map(crate::Record::entry) {
        json.clear();
        // A record's own strings always write.
        crate::row::write(&r, &mut json);
        batch.push(&json, crate::row::ended_ms(&r));
    }
    insert(conn, id, &mut batch)
}

/// Deletes records older than `keep`, then the oldest until the records take
/// no more than `max_bytes`, and gives the freed pages back to the file system.
pub(crate) fn prune(
    conn: &mut Connection,
    settings: &Settings,
    now_ms: u64,
) -> rusqlite::Result<()> {
    let cutoff = now_ms.saturating_sub(settings.keep.as_millis() as u64);
    // Batches whose last request ended before the cutoff: all of theirs did.
    let mut deleted = conn.execute(
        "DELETE FROM record_batches WHERE done_ms < ?1",
        [cutoff as i64],
    )?;
    // Each round deletes a tenth of the batches left, oldest first; a few
    // rounds bring any file under its bound.
    for _ in 0..64 {
        if used_bytes(conn)? <= settings.max_bytes {
            break;
        }
        let rows: i64 = conn.query_row("SELECT count(*) FROM record_batches", [], |r| r.get(0))?;
        if rows == 0 {
            break;
        }
        deleted += conn.execute(
            "DELETE FROM record_batches WHERE id <= \
             (SELECT id FROM record_batches ORDER BY id LIMIT 1 OFFSET ?1)",
            [(rows / 10).max(1) - 1],
        )?;
    }
    if deleted > 0 {
        free_pages(conn)?;
    }
    Ok(())
}

/// Gives the pages no table uses back to the file system, and empties the WAL.
pub(crate) fn free_pages(conn: &Connection) -> rusqlite::Result<()> {
    // Stepped to the end: each step frees some of the pages.
    for pragma in [
        "PRAGMA incremental_vacuum",
        "PRAGMA wal_checkpoint(TRUNCATE)",
    ] {
        let mut stmt = conn.prepare(pragma)?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    Ok(())
}

/// Bytes the database's pages hold, free pages not counted.
pub(crate) fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}
