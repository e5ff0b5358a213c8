//! The database's one table, and how a connection to it is set up.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::Error;

// No index besides the row id: each would cost the writer more per record
// than the rest of the record together (measured: 2.8 µs for one on model,
// 1.2 µs for one on time). Records are written in the order requests end, so
// the row id orders them by their end, and reads by time find their first row
// by a binary search over it (`crate::query::first_done_since`).

/// Raised when the table changes shape; a file with a higher one is refused.
const VERSION: i64 = 2;

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    peer TEXT NOT NULL,
    key TEXT,
    user_agent TEXT,
    api TEXT NOT NULL,
    route TEXT NOT NULL,
    model_asked TEXT NOT NULL,
    model_served TEXT NOT NULL,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    queue_ms REAL,
    swap TEXT,
    unloaded TEXT,
    ttfb_ms REAL,
    total_ms REAL NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    tokens_per_s REAL,
    cancelled INTEGER NOT NULL,
    body TEXT,
    priority TEXT
);
";

/// The columns in the order [`crate::query`] reads them.
pub(crate) const COLUMNS: &str = "id, at_ms, request_id, peer, key, user_agent, api, route, \
    model_asked, model_served, stream, status, error, queue_ms, swap, unloaded, ttfb_ms, \
    total_ms, prompt_tokens, completion_tokens, tokens_per_s, cancelled, body, priority";

/// How long a reader or the writer waits for the other's lock before failing.
const BUSY: Duration = Duration::from_secs(5);

fn open_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The writer's connection: the table made if it is not there, WAL so readers
/// never block it, and `synchronous = NORMAL`: a commit is in the WAL file (so
/// it survives the process being killed) without an fsync per batch.
pub(crate) fn open_for_writing(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY).map_err(|e| open_error(path, e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    if version > VERSION {
        return Err(Error::Foreign {
            path: path.to_path_buf(),
            reason: format!("its schema is version {version}, this modelyard knows {VERSION}"),
        });
    }
    // Only takes effect on a new file (before the first table): lets the
    // retention's deletes give the space back to the file system.
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
        .map_err(|e| open_error(path, e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_error(
            path,
            format!("it cannot use write-ahead logging (journal mode stays {mode})"),
        ));
    }
    // Version 1 had no priority; its rows are kept and read with none.
    let upgrade = if version == 1 {
        "ALTER TABLE requests ADD COLUMN priority TEXT;"
    } else {
        ""
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; BEGIN; {CREATE} {upgrade} PRAGMA user_version = {VERSION}; COMMIT;"
    ))
    .map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => Error::Foreign {
            path: path.to_path_buf(),
            reason: "it is not an SQLite database".into(),
        },
        _ => open_error(path, e),
    })?;
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
