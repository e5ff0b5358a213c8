//! The database's tables, and how a connection to it is set up.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::Error;

// Records are kept in batches, one row per write (see crate::row): SQLite's
// work per record is then a share of one insert, where a row per record cost
// more than all the rest of the log. The `requests` view gives them back one
// row per record, for anyone who reads the file with `sqlite3`; the router
// itself reads the batches and decodes them (crate::query). `done_ms` is when
// the batch's last request ended: every request that began at or after some
// instant is in a batch that ended at or after it, which the index finds.
// AUTOINCREMENT: a record's id is its batch's, and a reader pages by ids, so
// a batch's id is never given again, even once retention has emptied the
// table.

/// Raised when the tables change shape; a file with a higher one is refused.
/// 1: a row per record; 2: with priority; 3: batches; 4: batches of spare
/// records (microseconds, rare fields last and left out; see crate::row), in
/// a table of a new name: a router of version 3 still running on the file
/// fails to write (and says so) instead of adding records of its own form.
const VERSION: i64 = 4;

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS record_batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    done_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    records TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS record_batches_done ON record_batches (done_ms);
";

/// The `requests` view: a row per record, its fields by the names (and in
/// the units: milliseconds) a reader expects, as [`crate::Record`] has them.
fn view() -> String {
    let fields: Vec<String> = crate::row::NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| match *name {
            "request_id" => format!("ifnull(json_extract(r.value, '$[{i}]'), '') AS {name}"),
            "stream" | "cancelled" => {
                format!("ifnull(json_extract(r.value, '$[{i}]'), 0) AS {name}")
            }
            _ => format!("json_extract(r.value, '$[{i}]') AS {name}"),
        })
        .collect();
    format!(
        "CREATE VIEW IF NOT EXISTS requests AS SELECT id, at_ms, request_id, peer, key, \
         user_agent, api, route, model_asked, model_served, stream, status, error, \
         queue_us / 1000.0 AS queue_ms, swap, unloaded, ttfb_us / 1000.0 AS ttfb_ms, \
         total_us / 1000.0 AS total_ms, prompt_tokens, completion_tokens, \
         {speed} AS tokens_per_s, cancelled, body, priority \
         FROM (SELECT (b.id << {bits}) + r.key AS id, {fields} \
         FROM record_batches AS b, json_each(b.records) AS r);",
        speed = crate::row::speed_sql(),
        bits = crate::row::PLACE_BITS,
        fields = fields.join(", ")
    )
}

/// How long a reader or the writer waits for the other's lock before failing.
const BUSY: Duration = Duration::from_secs(5);

fn open_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The writer's page cache, KiB.
const CACHE_KIB: u32 = 128;

/// The writer's connection: the table made if it is not there, WAL so readers
/// never block it, and `synchronous = NORMAL`: a commit is in the WAL file (so
/// it survives the process being killed) without an fsync per batch.
pub(crate) fn open_for_writing(path: &Path) -> Result<Connection, Error> {
    let failed = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => Error::Foreign {
            path: path.to_path_buf(),
            reason: "it is not an SQLite database".into(),
        },
        _ => open_error(path, e),
    };
    let mut conn = Connection::open(path).map_err(failed)?;
    conn.busy_timeout(BUSY).map_err(failed)?;
    // Only takes effect on a new file (before the first table): lets the
    // retention's deletes give the space back to the file system.
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
        .map_err(failed)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(failed)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_error(
            path,
            format!("it cannot use write-ahead logging (journal mode stays {mode})"),
        ));
    }
    // The writer appends, and reads back only to prune once a minute: SQLite's
    // page cache (2 MB by default) would mostly keep the pages of each new
    // batch, and grow the router by the log's size up to that bound.
    conn.execute_batch(&format!(
        "PRAGMA cache_size = -{CACHE_KIB}; PRAGMA synchronous = NORMAL;"
    ))
    .map_err(failed)?;
    // The version is read in the transaction that acts on it, which takes the
    // write lock first: two routers opening an old file at once upgrade it
    // once (the second waits, then finds it done).
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(failed)?;
    if version > VERSION {
        return Err(Error::Foreign {
            path: path.to_path_buf(),
            reason: format!("its schema is version {version}, this modelyard knows {VERSION}"),
        });
    }
    tx.execute_batch(CREATE).map_err(failed)?;
    let lost = crate::upgrade::run(&tx, version).map_err(failed)?;
    tx.execute_batch(&format!(
        "{view} PRAGMA user_version = {VERSION};",
        view = view()
    ))
    .map_err(failed)?;
    tx.commit().map_err(failed)?;
    if version != 0 && version != VERSION {
        tracing::info!(path = %path.display(), "request log: brought from version {version} to {VERSION}");
        if lost > 0 {
            tracing::warn!(
                path = %path.display(),
                "request log: {lost} records of version {version} could not be read and are not kept"
            );
        }
        // The older tables' pages go back to the file system; the records
        // are safe already, so a failure here is only said.
        if let Err(e) = crate::writer::free_pages(&conn) {
            tracing::warn!(path = %path.display(), "request log: freeing the older tables' pages failed: {e}");
        }
    }
    Ok(conn)
}

/// A connection that only reads.
pub(crate) fn open_for_reading(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY).map_err(|e| open_error(path, e))?;
    Ok(conn)
}
