//! Reading the log: records by model and time, newest or slowest first, and a
//! summary per model.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use serde::{Deserialize, Serialize};

use crate::schema::{open_for_reading, COLUMNS};
use crate::{Error, Record};

/// Which records to read.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only requests this model served (or that named it).
    pub model: Option<String>,
    /// Only requests that arrived at or after this instant (Unix ms).
    pub since_ms: Option<u64>,
    /// Slowest first (by total time) instead of newest first.
    pub slow: bool,
    /// Only records with an id below this one (the next page, newest first).
    pub before: Option<i64>,
    /// Records skipped first (the next page, slowest first).
    pub offset: usize,
    pub limit: usize,
}

/// One model's figures over a period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Loads this model's requests started (swaps in).
    pub swaps: u64,
    /// Time requests spent waiting for those loads, added up.
    pub swap_wait_ms: f64,
    /// Mean over the requests that reported tokens.
    pub tokens_per_s: Option<f64>,
    /// Mean time to first byte.
    pub ttfb_ms: Option<f64>,
}

/// A read-only connection to a request log.
pub struct Reader {
    conn: Connection,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, Error> {
        Ok(Reader {
            conn: open_for_reading(path)?,
        })
    }

    pub fn query(&self, q: &Query) -> Result<Vec<Record>, Error> {
        let mut sql = format!("SELECT {COLUMNS} FROM requests WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(since) = q.since_ms {
            sql.push_str(" AND id >= ?");
            args.push(Value::Integer(
                first_done_since(&self.conn, since).map_err(Error::read)?,
            ));
        }
        if let Some(m) = &q.model {
            sql.push_str(" AND (model_served = ? OR model_asked = ?)");
            args.push(Value::Text(m.clone()));
            args.push(Value::Text(m.clone()));
        }
        if let Some(since) = q.since_ms {
            sql.push_str(" AND at_ms >= ?");
            args.push(Value::Integer(since as i64));
        }
        if let Some(before) = q.before {
            sql.push_str(" AND id < ?");
            args.push(Value::Integer(before));
        }
        sql.push_str(if q.slow {
            " ORDER BY total_ms DESC, id DESC"
        } else {
            " ORDER BY id DESC"
        });
        sql.push_str(" LIMIT ? OFFSET ?");
        args.push(Value::Integer(q.limit as i64));
        args.push(Value::Integer(q.offset as i64));
        let mut stmt = self.conn.prepare(&sql).map_err(Error::read)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), record)
            .map_err(Error::read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Error::read)
    }

    /// Per model, busiest first, for the requests since `since_ms`.
    pub fn summary(&self, since_ms: u64) -> Result<Vec<Summary>, Error> {
        let first = first_done_since(&self.conn, since_ms).map_err(Error::read)?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT model_served, count(*), \
                 sum(status >= 400), sum(cancelled), \
                 coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), \
                 sum(swap = 'caused'), coalesce(sum(CASE WHEN swap IS NOT NULL THEN queue_ms END), 0), \
                 avg(tokens_per_s), avg(ttfb_ms) \
                 FROM requests WHERE id >= ?2 AND at_ms >= ?1 GROUP BY model_served \
                 ORDER BY count(*) DESC, model_served",
            )
            .map_err(Error::read)?;
        let rows = stmt
            .query_map([since_ms as i64, first], |r| {
                Ok(Summary {
                    model: r.get(0)?,
                    requests: r.get::<_, i64>(1)? as u64,
                    errors: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                    cancelled: r.get::<_, Option<i64>>(3)?.unwrap_or(0) as u64,
                    prompt_tokens: r.get::<_, i64>(4)? as u64,
                    completion_tokens: r.get::<_, i64>(5)? as u64,
                    swaps: r.get::<_, Option<i64>>(6)?.unwrap_or(0) as u64,
                    swap_wait_ms: r.get(7)?,
                    tokens_per_s: r.get(8)?,
                    ttfb_ms: r.get(9)?,
                })
            })
            .map_err(Error::read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Error::read)
    }

    /// SQLite's own check of the file: "ok" when it is sound.
    pub fn integrity_check(&self) -> Result<String, Error> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(Error::read)
    }

    /// How many records the log holds.
    pub fn count(&self) -> Result<u64, Error> {
        self.conn
            .query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(Error::read)
    }
}

/// How far the order records are written in may stray from the order their
/// requests ended in (clocks read on different threads).
const STRAY_MS: u64 = 1000;

/// The first row id whose request ended at or after `ms` (or one past the last
/// row): rows are written as requests end, so their end times rise with the
/// id, and a binary search over the id finds it in a few dozen reads. Every
/// request that began at or after `ms` has an id at least this.
pub(crate) fn first_done_since(conn: &Connection, ms: u64) -> rusqlite::Result<i64> {
    let target = ms.saturating_sub(STRAY_MS) as f64;
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(id), max(id) FROM requests", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(max)) = (min, max) else {
        return Ok(0);
    };
    let mut hi = max + 1;
    let mut next = conn.prepare_cached(
        "SELECT id, at_ms + total_ms FROM requests WHERE id >= ?1 ORDER BY id LIMIT 1",
    )?;
    // Invariant: every row below `lo` ended before `target`, the row at `hi`
    // (or the end) at or after it.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let row: Option<(i64, f64)> = next
            .query_row([mid], |r| Ok((r.get(0)?, r.get(1)?)))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        match row {
            // No row in [mid, hi): the answer is at or below mid.
            None => hi = mid,
            Some((id, _)) if id >= hi => hi = mid,
            Some((id, done)) if done < target => lo = id + 1,
            Some((id, _)) => hi = id,
        }
    }
    Ok(lo)
}

fn record(r: &Row<'_>) -> rusqlite::Result<Record> {
    let unloaded: Option<String> = r.get(15)?;
    Ok(Record {
        id: r.get(0)?,
        at_ms: r.get::<_, i64>(1)? as u64,
        request_id: r.get(2)?,
        peer: r.get(3)?,
        key: r.get(4)?,
        user_agent: r.get(5)?,
        api: r.get(6)?,
        route: r.get(7)?,
        model_asked: r.get(8)?,
        model_served: r.get(9)?,
        stream: r.get(10)?,
        status: r.get(11)?,
        error: r.get(12)?,
        queue_ms: r.get(13)?,
        swap: r.get(14)?,
        unloaded: unloaded
            .map(|u| u.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        ttfb_ms: r.get(16)?,
        total_ms: r.get(17)?,
        prompt_tokens: r.get::<_, Option<i64>>(18)?.map(|n| n as u64),
        completion_tokens: r.get::<_, Option<i64>>(19)?.map(|n| n as u64),
        tokens_per_s: r.get(20)?,
        cancelled: r.get(21)?,
        body: r.get(22)?,
        priority: r.get(23)?,
    })
}
