//! Reading the log: records by model and time, newest or slowest first, and a
//! summary per model.

use std::path::Path;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::schema::open_for_reading;
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
    path: std::path::PathBuf,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, Error> {
        Ok(Reader {
            conn: open_for_reading(path)?,
            path: path.to_path_buf(),
        })
    }

    pub fn query(&self, q: &Query) -> Result<Vec<Record>, Error> {
        let wanted = |r: &Record| {
            q.model
                .as_ref()
                .is_none_or(|m| r.model_served == *m || r.model_asked == *m)
                && q.since_ms.is_none_or(|since| r.at_ms >= since)
                && q.before.is_none_or(|before| r.id < before)
        };
        let mut found = Vec::new();
        // Newest first, a batch at a time: the newest page needs only the
        // newest batches; slowest first needs every batch in the window.
        let last_batch = q.before.map_or(i64::MAX, crate::row::batch_of);
        self.batches(q.since_ms.unwrap_or(0), last_batch, |batch| {
            found.extend(batch.into_iter().rev().filter(|r| wanted(r)));
            q.slow || found.len() < q.offset + q.limit
        })?;
        if q.slow {
            // Stable: equal times stay newest first.
            found.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        }
        Ok(found.into_iter().skip(q.offset).take(q.limit).collect())
    }

    /// Per model, busiest first, for the requests since `since_ms`.
    pub fn summary(&self, since_ms: u64) -> Result<Vec<Summary>, Error> {
        struct Sums {
            s: Summary,
            speeds: (f64, u64),
            ttfbs: (f64, u64),
        }
        let mut by_model: std::collections::HashMap<String, Sums> = Default::default();
        self.batches(since_ms, i64::MAX, |batch| {
            for r in batch.into_iter().filter(|r| r.at_ms >= since_ms) {
                let m = by_model
                    .entry(r.model_served.clone())
                    .or_insert_with(|| Sums {
                        s: Summary {
                            model: r.model_served.clone(),
                            ..Summary::default()
                        },
                        speeds: (0.0, 0),
                        ttfbs: (0.0, 0),
                    });
                m.s.requests += 1;
                m.s.errors += u64::from(r.status >= 400);
                m.s.cancelled += u64::from(r.cancelled);
                // Saturating: a file may hold counts from before the router
                // refused absurd ones, and a summary must not fail on them.
                m.s.prompt_tokens =
                    m.s.prompt_tokens
                        .saturating_add(r.prompt_tokens.unwrap_or(0));
                m.s.completion_tokens =
                    m.s.completion_tokens
                        .saturating_add(r.completion_tokens.unwrap_or(0));
                m.s.swaps += u64::from(r.swap.as_deref() == Some("caused"));
                if r.swap.is_some() {
                    m.s.swap_wait_ms += r.queue_ms.unwrap_or(0.0);
                }
                if let Some(v) = r.tokens_per_s {
                    m.speeds = (m.speeds.0 + v, m.speeds.1 + 1);
                }
                if let Some(v) = r.ttfb_ms {
                    m.ttfbs = (m.ttfbs.0 + v, m.ttfbs.1 + 1);
                }
            }
            true
        })?;
        let mean = |(sum, n): (f64, u64)| (n > 0).then(|| sum / n as f64);
        let mut out: Vec<Summary> = by_model
            .into_values()
            .map(|m| Summary {
                tokens_per_s: mean(m.speeds),
                ttfb_ms: mean(m.ttfbs),
                ..m.s
            })
            .collect();
        out.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.model.cmp(&b.model))
        });
        Ok(out)
    }

    /// Hands `each` the records of every batch that ended at or after
    /// `since_ms` and is numbered at most `last`, newest batch first, each
    /// batch oldest record first, until it says stop (false).
    fn batches(
        &self,
        since_ms: u64,
        last: i64,
        mut each: impl FnMut(Vec<Record>) -> bool,
    ) -> Result<(), Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, records FROM record_batches WHERE done_ms >= ?1 AND id <= ?2 ORDER BY id DESC",
            )
            .map_err(Error::read)?;
        let mut rows = stmt
            .query(rusqlite::params![since_ms as i64, last])
            .map_err(Error::read)?;
        while let Some(row) = rows.next().map_err(Error::read)? {
            let id: i64 = row.get(0).map_err(Error::read)?;
            // A batch that cannot be read is passed over, with a warning: it
            // must not hide every other record for as long as it is kept.
            let text = row.get_ref(1).map_err(Error::read)?;
            let batch = match text
                .as_str()
                .map_err(|e| e.to_string())
                .and_then(|text| crate::row::unpack(id, text).map_err(|e| e.to_string()))
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(
                        path = %self.path.display(),
                        "request log: batch {id} is damaged ({e}); its records are left out"
                    );
                    continue;
                }
            };
            if !each(batch) {
                break;
            }
        }
        Ok(())
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
            .query_row("SELECT coalesce(sum(n), 0) FROM record_batches", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(Error::read)
    }
}
