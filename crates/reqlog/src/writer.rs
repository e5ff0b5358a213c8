//! The one thread that writes: batches of records, each in a transaction, and
//! the retention's deletes between them.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::{Record, Settings, Shared};

/// Records written in one transaction at most; more wait for the next.
const BATCH: usize = 16_384;
/// How long the writer lets records gather after the first of a burst: one
/// wake-up and one transaction for all of them, not one per request (a
/// commit per request cost the router more CPU than the request itself). A
/// crash loses at most this much.
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

    /// Writes until every sender is gone and the channel is empty.
    pub(crate) fn run(mut self, rx: Receiver<Record>) {
        self.prune_logged(crate::now_ms());
        let mut last_prune = std::time::SystemTime::now();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            match rx.recv_timeout(PRUNE_EVERY) {
                Ok(first) => {
                    // The gate before the rest is taken: a stalled writer holds
                    // one record, the channel the others.
                    let gate = self.shared.gate.lock().unwrap_or_else(|e| e.into_inner());
                    batch.push(first);
                    std::thread::sleep(GATHER);
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    match insert(&mut self.conn, &batch) {
                        Ok(()) => {
                            self.shared
                                .written
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.shared
                                .dropped
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                            tracing::warn!(
                                path = %self.shared.path.display(),
                                "request log: {} records not written: {e}",
                                batch.len()
                            );
                        }
                    }
                    drop(gate);
                    batch.clear();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
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

fn insert(conn: &mut Connection, batch: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO requests (at_ms, request_id, peer, key, user_agent, api, route, \
             model_asked, model_served, stream, status, error, queue_ms, swap, unloaded, \
             ttfb_ms, total_ms, prompt_tokens, completion_tokens, tokens_per_s, cancelled, body, \
             priority) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
             ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
        )?;
        for r in batch {
            let unloaded = (!r.unloaded.is_empty()).then(|| r.unloaded.join(","));
            stmt.execute(params![
                r.at_ms as i64,
                r.request_id,
                r.peer,
                r.key,
                r.user_agent,
                r.api,
                r.route,
                r.model_asked,
                r.model_served,
                r.stream,
                r.status,
                r.error,
                r.queue_ms,
                r.swap,
                unloaded,
                r.ttfb_ms,
                r.total_ms,
                r.prompt_tokens.map(|n| n as i64),
                r.completion_tokens.map(|n| n as i64),
                r.tokens_per_s,
                r.cancelled,
                r.body,
                r.priority,
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
pub(crate) fn insert_for_test(conn: &mut Connection, batch: &[Record]) {
    insert(conn, batch).unwrap();
}

/// Deletes records older than `keep`, then the oldest until the records take
/// no more than `max_bytes`, and gives the freed pages back to the file system.
pub(crate) fn prune(
    conn: &mut Connection,
    settings: &Settings,
    now_ms: u64,
) -> rusqlite::Result<()> {
    let cutoff = now_ms.saturating_sub(settings.keep.as_millis() as u64);
    // Those that ended before the cutoff: all rows below the first that did not.
    let first_kept = crate::query::first_done_since(conn, cutoff)?;
    let mut deleted = conn.execute("DELETE FROM requests WHERE id < ?1", [first_kept])?;
    // Each round deletes a tenth of what is left, oldest first; a few rounds
    // bring any file under its bound.
    for _ in 0..64 {
        if used_bytes(conn)? <= settings.max_bytes {
            break;
        }
        let rows: i64 = conn.query_row("SELECT count(*) FROM requests", [], |r| r.get(0))?;
        if rows == 0 {
            break;
        }
        deleted += conn.execute(
            "DELETE FROM requests WHERE id <= \
             (SELECT id FROM requests ORDER BY id LIMIT 1 OFFSET ?1)",
            [(rows / 10).max(1) - 1],
        )?;
    }
    if deleted > 0 {
        // Stepped to the end: each step frees some of the pages.
        let mut stmt = conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        drop(rows);
        drop(stmt);
        let mut stmt = conn.prepare("PRAGMA wal_checkpoint(TRUNCATE)")?;
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
