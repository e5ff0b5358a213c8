//! How a record is kept: a JSON array of its fields in [`NAMES`] order, with
//! no names (half the bytes of an object), and as few bytes as say it all:
//! times in whole microseconds (integers: no float to format), booleans as 0
//! and 1 (as SQLite's own JSON functions give them), the fields most records
//! leave empty last and, when they are, left out (a missing field reads as
//! null, or 0 for a boolean). Tokens per second is not kept: it follows from
//! the tokens and the times ([`speed`]). A batch of records is one JSON array
//! of these, one row of the `batches` table; the `requests` view spreads them
//! back into one row per record with the names a reader expects.
//!
//! Why so spare: the log's share of a request's CPU is mostly bytes — encoded
//! on the request's thread, then copied by SQLite into its pages, its WAL and
//! the file. Why not a row per record: SQLite's insert of a 24-column row cost
//! 1.5 µs of CPU per record here, most of the log's share of a request.

use std::fmt::{self, Display};

use serde::{Deserialize, Serialize, Serializer};

use crate::{Entry, Record};

/// The fields, in the order a kept record holds them: always there first,
/// rarely there last.
pub(crate) const NAMES: [&str; 22] = [
    "at_ms",
    "total_us",
    "status",
    "api",
    "route",
    "peer",
    "model_asked",
    "model_served",
    "stream",
    "priority",
    "queue_us",
    "ttfb_us",
    "prompt_tokens",
    "completion_tokens",
    "user_agent",
    "request_id",
    "cancelled",
    "error",
    "swap",
    "unloaded",
    "key",
    "body",
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

    /// The batch's JSON array, closed (UTF-8: serde_json and `Fields` write
    /// nothing else); the batch is then to be cleared.
    pub(crate) fn close(&mut self) -> &[u8] {
        if self.n == 0 {
            self.text.push(b'[');
        }
        self.text.push(b']');
        &self.text
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

/// A JSON array being written field by field. An empty field (null, or a
/// false flag) is written, but the array is cut after its last field that
/// is not: a record's trailing empty fields cost no bytes.
struct Fields<'o> {
    out: &'o mut Vec<u8>,
    /// Where its first field begins.
    start: usize,
    /// Where the array ends if no other field has a value.
    end: usize,
}

impl<'o> Fields<'o> {
    fn begin(out: &'o mut Vec<u8>) -> Self {
        out.push(b'[');
        let start = out.len();
        Fields {
            out,
            start,
            end: start,
        }
    }

    fn next(&mut self) {
        if self.out.len() > self.start {
            self.out.push(b',');
        }
    }

    fn kept(&mut self) {
        self.end = self.out.len();
    }

    fn null(&mut self) {
        self.next();
        self.out.extend_from_slice(b"null");
    }

    fn int(&mut self, n: u64) {
        self.next();
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.kept();
    }

    fn flag(&mut self, on: bool) {
        self.next();
        self.out.push(if on { b'1' } else { b'0' });
        if on {
            self.kept();
        }
    }

    fn str(&mut self, s: &str) {
        self.next();
        serde_json::to_writer(&mut *self.out, s).expect("a Vec takes every write");
        self.kept();
    }

    fn text(&mut self, t: &dyn Display) -> serde_json::Result<()> {
        self.next();
        serde_json::to_writer(&mut *self.out, &Text(t))?;
        self.kept();
        Ok(())
    }

    fn opt_int(&mut self, n: Option<u64>) {
        match n {
            Some(n) => self.int(n),
            None => self.null(),
        }
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.null(),
        }
    }

    fn opt_text(&mut self, t: Option<&dyn Display>) -> serde_json::Result<()> {
        match t {
            Some(t) => self.text(t),
            None => {
                self.null();
                Ok(())
            }
        }
    }

    fn end(self) {
        self.out.truncate(self.end);
        self.out.push(b']');
    }
}

/// Milliseconds as whole microseconds: finer is noise.
fn us(ms: f64) -> u64 {
    (ms * 1000.0).round().max(0.0) as u64
}

/// Whole microseconds as milliseconds.
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// When `r`'s request ended (ms since the epoch).
pub(crate) fn ended_ms(r: &Entry<'_>) -> u64 {
    r.at_ms + r.total_ms.max(0.0).ceil() as u64
}

/// Appends `r`'s JSON array to `out`. Panics when one of its texts' `Display`
/// fails (serde_json turns that into a panic) or panics, and may then have
/// written part of it; the caller catches it.
pub(crate) fn write(r: &Entry<'_>, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let mut f = Fields::begin(out);
    f.int(r.at_ms);
    f.int(us(r.total_ms));
    f.int(r.status.into());
    f.str(r.api);
    f.text(r.route)?;
    f.text(r.peer)?;
    f.text(r.model_asked)?;
    f.str(r.model_served);
    f.flag(r.stream);
    f.opt_str(r.priority);
    f.opt_int(r.queue_ms.map(us));
    f.opt_int(r.ttfb_ms.map(us));
    f.opt_int(r.prompt_tokens);
    f.opt_int(r.completion_tokens);
    f.opt_text(r.user_agent)?;
    f.opt_text(r.request_id)?;
    f.flag(r.cancelled);
    f.opt_str(r.error);
    f.opt_str(r.swap);
    f.opt_text((!r.unloaded.is_empty()).then_some(&Joined(r.unloaded) as &dyn Display))?;
    f.opt_text(r.key)?;
    f.opt_str(r.body);
    f.end();
    Ok(())
}

/// A kept record, read back: the fields it left out take their defaults.
#[derive(Deserialize, Default)]
#[serde(default)]
struct In(
    u64,
    u64,
    u16,
    String,
    String,
    String,
    String,
    String,
    u8,
    Option<String>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<String>,
    Option<String>,
    u8,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Completion tokens per second: over the time after the first byte for a
/// stream, else over the time after the lease (times in microseconds). The
/// `requests` view computes the same ([`SPEED_SQL`]).
fn speed(
    stream: bool,
    completion: Option<u64>,
    total: u64,
    queue: Option<u64>,
    ttfb: Option<u64>,
) -> Option<f64> {
    let tokens = completion?;
    let begun = if stream { ttfb? } else { queue.unwrap_or(0) };
    let took = total.checked_sub(begun).filter(|&t| t > 0)?;
    (tokens > 0).then(|| tokens as f64 * 1e6 / took as f64)
}

/// [`speed`] in SQL, over the view's own columns in microseconds.
pub(crate) const SPEED_SQL: &str = "CASE WHEN completion_tokens > 0 AND total_us -      (CASE WHEN stream THEN ttfb_us ELSE ifnull(queue_us, 0) END) > 0 THEN      completion_tokens * 1e6 / (total_us - (CASE WHEN stream THEN ttfb_us ELSE ifnull(queue_us, 0) END)) END";

/// A record of an older version, kept a field per name (`field` gives the
/// SQL of each: a column, or a place in an older array), as an SQL
/// expression making it a record of this one.
pub(crate) fn from_named(field: impl Fn(&str) -> String) -> String {
    let us = |name: &str| format!("CAST(round({} * 1000) AS INTEGER)", field(name));
    let fields: Vec<String> = NAMES
        .iter()
        .map(|&name| match name {
            "total_us" => us("total_ms"),
            "queue_us" => us("queue_ms"),
            "ttfb_us" => us("ttfb_ms"),
            "request_id" => format!("nullif({}, '')", field(name)),
            _ => field(name),
        })
        .collect();
    format!("json_array({})", fields.join(", "))
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
            total_ms: ms(r.1),
            status: r.2,
            api: r.3,
            route: r.4,
            peer: r.5,
            model_asked: r.6,
            model_served: r.7,
            stream: r.8 != 0,
            priority: r.9,
            queue_ms: r.10.map(ms),
            ttfb_ms: r.11.map(ms),
            prompt_tokens: r.12,
            completion_tokens: r.13,
            tokens_per_s: speed(r.8 != 0, r.13, r.1, r.10, r.11),
            user_agent: r.14,
            request_id: r.15.unwrap_or_default(),
            cancelled: r.16 != 0,
            error: r.17,
            swap: r.18,
            unloaded: r
                .19
                .map(|u| u.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            key: r.20,
            body: r.21,
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
