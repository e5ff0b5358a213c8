//! How a record is kept: a JSON array of its fields in [`NAMES`] order, with
//! no names (half the bytes of an object), and as few bytes as say it all:
//! times in whole microseconds (integers: no float to format), booleans as 0
//! and 1 (as SQLite's own JSON functions give them), the fields most records
//! leave empty last and, when they are, left out (a missing field reads as
//! null, or 0 for a boolean). Tokens per second is not kept: it follows from
//! the tokens and the times ([`speed`]). A batch of records is one JSON array
//! of these, one row of the `record_batches` table; the `requests` view spreads them
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

/// Names as [`Joined`] kept them (none when absent).
pub(crate) fn split(joined: Option<String>) -> Vec<String> {
    joined
        .map(|u| u.split(',').map(str::to_string).collect())
        .unwrap_or_default()
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

    /// Panics when `t`'s `Display` fails (serde_json makes that a panic; a
    /// Vec takes every write) or panics.
    fn text(&mut self, t: &dyn Display) {
        self.next();
        serde_json::to_writer(&mut *self.out, &Text(t)).expect("only a failing Display");
        self.kept();
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

    fn opt_text(&mut self, t: Option<&dyn Display>) {
        match t {
            Some(t) => self.text(t),
            None => self.null(),
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
    // Bounded: a time no clock gives (infinite, say) must neither overflow
    // nor pass SQLite's integers, where the batch's date would turn negative
    // and hide it from every read until retention deleted it.
    r.at_ms
        .saturating_add(r.total_ms.max(0.0).ceil() as u64)
        .min(i64::MAX as u64)
}

/// Appends `r`'s JSON array to `out`. Panics when one of its texts' `Display`
/// fails (serde_json turns that into a panic) or panics, and may then have
/// written part of it; the caller catches it.
pub(crate) fn write(r: &Entry<'_>, out: &mut Vec<u8>) {
    let mut f = Fields::begin(out);
    f.int(r.at_ms);
    f.int(us(r.total_ms));
    f.int(r.status.into());
    f.str(r.api);
    f.text(r.route);
    f.text(r.peer);
    f.text(r.model_asked);
    f.str(r.model_served);
    f.flag(r.stream);
    f.opt_str(r.priority);
    f.opt_int(r.queue_ms.map(us));
    f.opt_int(r.ttfb_ms.map(us));
    f.opt_int(r.prompt_tokens);
    f.opt_int(r.completion_tokens);
    f.opt_text(r.user_agent);
    f.opt_text(r.request_id);
    f.flag(r.cancelled);
    f.opt_str(r.error);
    f.opt_str(r.swap);
    f.opt_text((!r.unloaded.is_empty()).then_some(&Joined(r.unloaded) as &dyn Display));
    f.opt_text(r.key);
    f.opt_str(r.body);
    f.end();
}

/// A kept record, read back: its array's elements are these fields in
/// order ([`NAMES`]); those it left out take their defaults.
#[derive(Deserialize, Default)]
#[serde(default)]
struct In {
    at_ms: u64,
    total_us: u64,
    status: u16,
    api: String,
    route: String,
    peer: String,
    model_asked: String,
    model_served: String,
    stream: u8,
    priority: Option<String>,
    queue_us: Option<u64>,
    ttfb_us: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    user_agent: Option<String>,
    request_id: Option<String>,
    cancelled: u8,
    error: Option<String>,
    swap: Option<String>,
    unloaded: Option<String>,
    key: Option<String>,
    body: Option<String>,
}

/// Completion tokens per second: over the time after the first byte for a
/// stream, else over the time after the lease (times in microseconds). The
/// `requests` view computes the same ([`speed_sql`]).
fn speed(r: &In) -> Option<f64> {
    let tokens = r.completion_tokens?;
    let begun = if r.stream != 0 {
        r.ttfb_us?
    } else {
        r.queue_us.unwrap_or(0)
    };
    let took = r.total_us.checked_sub(begun).filter(|&t| t > 0)?;
    (tokens > 0).then(|| tokens as f64 * 1e6 / took as f64)
}

/// [`speed`] in SQL, over the view's columns (in microseconds).
pub(crate) fn speed_sql() -> String {
    let took = "(total_us - CASE WHEN stream THEN ttfb_us ELSE ifnull(queue_us, 0) END)";
    format!(
        "CASE WHEN completion_tokens > 0 AND {took} > 0 THEN completion_tokens * 1e6 / {took} END"
    )
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
            tokens_per_s: speed(&r),
            at_ms: r.at_ms,
            total_ms: ms(r.total_us),
            status: r.status,
            api: r.api,
            route: r.route,
            peer: r.peer,
            model_asked: r.model_asked,
            model_served: r.model_served,
            stream: r.stream != 0,
            priority: r.priority,
            queue_ms: r.queue_us.map(ms),
            ttfb_ms: r.ttfb_us.map(ms),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            user_agent: r.user_agent,
            request_id: r.request_id.unwrap_or_default(),
            cancelled: r.cancelled != 0,
            error: r.error,
            swap: r.swap,
            unloaded: split(r.unloaded),
            key: r.key,
            body: r.body,
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
