//! Files of older versions, brought to this one when the writer opens them:
//! each record is read as its version kept it and written again as this one
//! does (crate::row), in the transaction that opens the file. Done in Rust,
//! not SQL: SQLite's JSON functions turn a count above 2^63 into a float and
//! keep a negative time, which this version's reader would then refuse.

use rusqlite::{Connection, Row};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Record;

/// Records of a row-per-record file (versions 1 and 2) that go in one batch.
const ROWS_PER_BATCH: usize = 4096;

/// Brings the file's records from `version` to this one. Returns how many
/// could not be read (a damaged batch or row): they are not kept, and the
/// caller says so; every other record is.
pub(crate) fn run(conn: &Connection, version: i64) -> rusqlite::Result<u64> {
    match version {
        1 | 2 => rows(conn, version),
        3 => batches(conn),
        _ => Ok(0),
    }
}

/// Versions 1 and 2: a `requests` table, a row per record, in the order they
/// were written; version 1 had no priority. Counts were kept as SQLite's
/// signed integers, so one above 2^63 reads back negative: its bits are the
/// count's.
fn rows(conn: &Connection, version: i64) -> rusqlite::Result<u64> {
    let priority = if version == 1 { "NULL" } else { "priority" };
    let mut lost = 0;
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT at_ms, request_id, peer, key, user_agent, api, route, model_asked, \
             model_served, stream, status, error, queue_ms, swap, unloaded, ttfb_ms, total_ms, \
             prompt_tokens, completion_tokens, cancelled, body, {priority} \
             FROM requests ORDER BY id"
        ))?;
        let mut rows = stmt.query([])?;
        let mut batch = Vec::with_capacity(ROWS_PER_BATCH);
        while let Some(row) = rows.next()? {
            match record_of(row) {
                Ok(r) => batch.push(r),
                Err(_) => lost += 1,
            }
            if batch.len() == ROWS_PER_BATCH {
                crate::writer::insert_records(conn, None, &batch)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            crate::writer::insert_records(conn, None, &batch)?;
        }
    }
    conn.execute_batch("DROP TABLE requests;")?;
    Ok(lost)
}

fn record_of(row: &Row<'_>) -> rusqlite::Result<Record> {
    let count = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|n| n as u64))
    };
    Ok(Record {
        at_ms: row.get::<_, i64>(0)?.max(0) as u64,
        request_id: row.get(1)?,
        peer: row.get(2)?,
        key: row.get(3)?,
        user_agent: row.get(4)?,
        api: row.get(5)?,
        route: row.get(6)?,
        model_asked: row.get(7)?,
        model_served: row.get(8)?,
        stream: row.get(9)?,
        status: row.get(10)?,
        error: row.get(11)?,
        queue_ms: row.get(12)?,
        swap: row.get(13)?,
        unloaded: crate::row::split(row.get(14)?),
        ttfb_ms: row.get(15)?,
        total_ms: row.get(16)?,
        prompt_tokens: count(17)?,
        completion_tokens: count(18)?,
        cancelled: row.get(19)?,
        body: row.get(20)?,
        priority: row.get(21)?,
        ..Record::default()
    })
}

/// Version 3: a `batches` table of JSON arrays of every field, times in
/// milliseconds. Each batch keeps its id (a reader's page cursor stays good).
fn batches(conn: &Connection) -> rusqlite::Result<u64> {
    conn.execute_batch("DROP VIEW IF EXISTS requests;")?;
    let mut lost = 0;
    {
        let mut stmt = conn.prepare("SELECT id, n, records FROM batches ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (id, n): (i64, i64) = (row.get(0)?, row.get(1)?);
            // Record by record: one that cannot be read costs only itself.
            let items = row
                .get_ref(2)?
                .as_str()
                .ok()
                .and_then(|text| serde_json::from_str::<Vec<&RawValue>>(text).ok());
            let Some(items) = items else {
                lost += n.max(0) as u64;
                continue;
            };
            let mut records = Vec::with_capacity(items.len());
            for item in items {
                match serde_json::from_str::<V3>(item.get()) {
                    Ok(r) => records.push(Record::from(r)),
                    Err(_) => lost += 1,
                }
            }
            crate::writer::insert_records(conn, Some(id), &records)?;
        }
    }
    conn.execute_batch("DROP TABLE batches;")?;
    Ok(lost)
}

/// A record as version 3 kept it: every field, in this order (all of them,
/// as version 3's reader required).
#[derive(Deserialize)]
struct V3(
    u64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    String,
    u8,
    u16,
    Option<String>,
    Option<f64>,
    Option<String>,
    Option<String>,
    Option<f64>,
    f64,
    Option<u64>,
    Option<u64>,
    // Tokens per second: worked out from the rest now.
    serde::de::IgnoredAny,
    u8,
    Option<String>,
    Option<String>,
);

impl From<V3> for Record {
    fn from(r: V3) -> Record {
        Record {
            at_ms: r.0,
            request_id: r.1,
            peer: r.2,
            key: r.3,
            user_agent: r.4,
            api: r.5,
            route: r.6,
            model_asked: r.7,
            model_served: r.8,
            stream: r.9 != 0,
            status: r.10,
            error: r.11,
            queue_ms: r.12,
            swap: r.13,
            unloaded: crate::row::split(r.14),
            ttfb_ms: r.15,
            total_ms: r.16,
            prompt_tokens: r.17,
            completion_tokens: r.18,
            cancelled: r.20 != 0,
            body: r.21,
            priority: r.22,
            ..Record::default()
        }
    }
}
