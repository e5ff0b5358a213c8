//! How a record is kept: a JSON array of its fields in [`NAMES`] order, with
//! no names (half the bytes of an object), booleans as 0 and 1 (as SQLite's
//! own JSON functions give them). A batch of records is one JSON array of
//! these, one row of the `batches` table; the `requests` view spreads them
//! back into one row per record with these names as columns.
//!
//! Why not a row per record: SQLite's insert of a 24-column row cost 1.5 µs
//! of CPU per record here, most of the log's share of a request. Encoding a
//! record takes a fraction of that, and a batch is one insert.

use std::fmt::{self, Display};

use serde::{Deserialize, Serialize, Serializer};

use crate::{Entry, Record};

/// The fields, in the order a kept record holds them.
pub(crate) const NAMES: [&str; 23] = [
    "at_ms",
    "request_id",
    "peer",
    "key",
    "user_agent",
    "api",
    "route",
    "model_asked",
    "model_served",
    "stream",
    "status",
    "error",
    "queue_ms",
    "swap",
    "unloaded",
    "ttfb_ms",
    "total_ms",
    "prompt_tokens",
    "completion_tokens",
    "tokens_per_s",
    "cancelled",
    "body",
    "priority",
];

/// Records on their way to the writer, already in the form they are kept:
/// the text of one batch's JSON array (its closing bracket added when it is
/// written). Requests append to one of these under a lock and the writer
/// takes it whole, so a record costs no allocation of its own: the buffer
/// grows now and then, and is kept across batches.
#[derive(Default)]
pub(crate) struct Batch {
    /// `[` and the records, comma-separated; empty when `n` is 0.
    pub(crate) text: Vec<u8>,
    pub(crate) n: usize,
    /// When the last of its requests ended (ms since the epoch): the batch is
    /// dated by it, for retention.
    pub(crate) done_ms: u64,
}

impl Batch {
    /// Appends one record, `json` as [`write`] made it; its request ended at
    /// `ended_ms`.
    pub(crate) fn push(&mut self, json: &[u8], ended_ms: u64) {
        self.text.push(if self.n == 0 { b'[' } else { b',' });
        self.text.extend_from_slice(json);
        self.n += 1;
        self.done_ms = self.done_ms.max(ended_ms);
    }

    /// The batch's JSON array, closed; the batch is then to be cleared.
    pub(crate) fn close(&mut self) -> &str {
        if self.n == 0 {
            self.text.push(b'[');
        }
        self.text.push(b']');
        std::str::from_utf8(&self.text).expect("serde_json writes UTF-8")
    }

    /// Empty again, keeping its buffer for the next batch, up to `KEPT`
    /// bytes: a burst of large records (bodies, with `capture` on) is not
    /// held for good.
    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.text.shrink_to(KEPT);
        self.n = 0;
        self.done_ms = 0;
    }
}

/// Bytes a batch's buffer keeps between batches: a quarter of a second at
/// saturation (about 10,000 records of ~250 bytes) fits.
const KEPT: usize = 4 << 20;

/// Text written as its `Display` gives it, escaped for JSON on the way: no
/// string is made for it.
struct Text<'a>(&'a dyn Display);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// Names joined by commas.
struct Joined<'a>(&'a [String]);

impl Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// Serialized by serde as a JSON array (a tuple struct), in [`NAMES`] order.
#[derive(Serialize)]
struct Out<'a>(
    u64,
    Text<'a>,
    Text<'a>,
    Option<Text<'a>>,
    Option<Text<'a>>,
    &'a str,
    Text<'a>,
    Text<'a>,
    &'a str,
    u8,
    u16,
    Option<&'a str>,
    Option<f64>,
    Option<&'a str>,
    Option<Text<'a>>,
    Option<f64>,
    f64,
    Option<u64>,
    Option<u64>,
    Option<f64>,
    u8,
    Option<&'a str>,
    Option<&'a str>,
);

/// The same, read back.
#[derive(Deserialize)]
struct In(
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
    Option<f64>,
    u8,
    Option<String>,
    Option<String>,
);

/// Milliseconds to the microsecond: finer is noise, and 35.712 is fewer
/// bytes (and quicker to write) than 35.71234567890123.
fn us(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// When `r`'s request ended (ms since the epoch).
pub(crate) fn ended_ms(r: &Entry<'_>) -> u64 {
    r.at_ms + r.total_ms.max(0.0).ceil() as u64
}

/// Appends `r`'s JSON array to `out`. Panics when one of its texts' `Display`
/// fails (serde_json turns that into a panic) or panics, and may then have
/// written part of it; the caller catches it.
pub(crate) fn write(r: &Entry<'_>, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let unloaded = Joined(r.unloaded);
    let row = Out(
        r.at_ms,
        Text(r.request_id),
        Text(r.peer),
        r.key.map(Text),
        r.user_agent.map(Text),
        r.api,
        Text(r.route),
        Text(r.model_asked),
        r.model_served,
        r.stream.into(),
        r.status,
        r.error,
        r.queue_ms.map(us),
        r.swap,
        (!r.unloaded.is_empty()).then_some(Text(&unloaded)),
        r.ttfb_ms.map(us),
        us(r.total_ms),
        r.prompt_tokens,
        r.completion_tokens,
        r.tokens_per_s.map(us),
        r.cancelled.into(),
        r.body,
        r.priority,
    );
    serde_json::to_writer(out, &row)
}

/// The records of the batch numbered `batch`, oldest first. A record's id is
/// its batch's number times 2^16 plus its place in it: rising, as records
/// were written.
pub(crate) fn unpack(batch: i64, json: &str) -> Result<Vec<Record>, serde_json::Error> {
    let rows: Vec<In> = serde_json::from_str(json)?;
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| Record {
            id: id(batch, i),
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
            unloaded: r
                .14
                .map(|u| u.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            ttfb_ms: r.15,
            total_ms: r.16,
            prompt_tokens: r.17,
            completion_tokens: r.18,
            tokens_per_s: r.19,
            cancelled: r.20 != 0,
            body: r.21,
            priority: r.22,
        })
        .collect())
}

/// Bits of a record's id that number it within its batch.
pub(crate) const PLACE_BITS: u32 = 16;

/// The id of the `place`-th record of batch `batch`.
pub(crate) fn id(batch: i64, place: usize) -> i64 {
    (batch << PLACE_BITS) + place as i64
}

/// The batch a record's id is in.
pub(crate) fn batch_of(id: i64) -> i64 {
    id >> PLACE_BITS
}
