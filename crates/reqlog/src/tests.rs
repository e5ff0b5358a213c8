use std::time::Duration;

use super::*;

fn settings(dir: &Path) -> Settings {
    Settings {
        path: dir.join("sub").join("requests.db"),
        keep: Duration::from_secs(30 * 24 * 3600),
        max_bytes: 100 << 20,
        capacity: CAPACITY,
    }
}

impl RequestLog {
    /// Records an owned record, as the tests build them.
    fn put(&self, r: Record) {
        self.record(&r.entry());
    }
}

fn rec(n: u64, model: &str) -> Record {
    Record {
        at_ms: 1_000_000 + n,
        request_id: format!("req-{n}"),
        peer: "127.0.0.1:5000".into(),
        api: "openai".into(),
        route: "/v1/chat/completions".into(),
        model_asked: "default".into(),
        model_served: model.into(),
        status: 200,
        total_ms: n as f64,
        prompt_tokens: Some(3),
        completion_tokens: Some(n),
        unloaded: if n == 2 {
            vec!["a".into(), "b".into()]
        } else {
            vec![]
        },
        swap: (n == 2).then(|| "caused".into()),
        queue_ms: Some(1.5),
        priority: Some(if n == 3 { "background" } else { "interactive" }.into()),
        ..Record::default()
    }
}

/// Version 2's table, a row per record, empty.
const V2_TABLE: &str = "CREATE TABLE requests (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, \
     request_id TEXT NOT NULL, peer TEXT NOT NULL, key TEXT, user_agent TEXT, \
     api TEXT NOT NULL, route TEXT NOT NULL, model_asked TEXT NOT NULL, \
     model_served TEXT NOT NULL, stream INTEGER NOT NULL, status INTEGER NOT NULL, \
     error TEXT, queue_ms REAL, swap TEXT, unloaded TEXT, ttfb_ms REAL, \
     total_ms REAL NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, \
     tokens_per_s REAL, cancelled INTEGER NOT NULL, body TEXT, priority TEXT); \
     PRAGMA user_version = 2;";

/// Every record, oldest first, their ids (checked to rise) cleared: as
/// comparable with the records that were written.
fn oldest_first(r: &Reader) -> Vec<Record> {
    let mut got = r
        .query(&Query {
            limit: 100_000,
            ..Query::default()
        })
        .unwrap();
    got.reverse();
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "ids rise");
    for g in &mut got {
        g.id = 0;
    }
    got
}

/// Waits (bounded) until the writer has written `n` records.
fn written(log: &RequestLog, n: u64) {
    for _ in 0..500 {
        if log.written() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the writer wrote {} of {n} records", log.written());
}

/// The last ten records, newest first.
fn newest(log: &RequestLog) -> Vec<Record> {
    let q = Query {
        limit: 10,
        ..Query::default()
    };
    log.reader().unwrap().query(&q).unwrap()
}

#[test]
fn records_come_back_newest_first_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    for n in 1..=3 {
        log.put(rec(n, "m"));
    }
    written(&log, 3);
    let got = newest(&log);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].request_id, "req-3");
    let mut second = got[1].clone();
    assert!(second.id > 0);
    second.id = 0;
    // Not kept but worked out: 2 tokens in the 0.5 ms after a 1.5 ms wait.
    let expected = Record {
        tokens_per_s: Some(4000.0),
        ..rec(2, "m")
    };
    assert_eq!(second, expected);
}

/// Tokens per second follows from the tokens and the times: after the first
/// byte for a stream, after the lease otherwise; none without tokens or time.
/// The `requests` view gives the same figures as the reader.
#[test]
fn tokens_per_second_is_worked_out_from_the_tokens_and_times() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    let cases = [
        // (stream, completion, total ms, queue ms, ttfb ms) -> tokens/s
        ((true, Some(30), 40.0, Some(1.0), Some(10.0)), Some(1000.0)),
        (
            (false, Some(30), 40.0, Some(10.0), Some(35.0)),
            Some(1000.0),
        ),
        ((false, Some(30), 30.0, None, None), Some(1000.0)),
        ((true, Some(30), 40.0, Some(1.0), None), None),
        ((false, None, 40.0, Some(1.0), None), None),
        ((false, Some(0), 40.0, Some(1.0), None), None),
        ((false, Some(9), 2.0, Some(2.0), None), None),
        ((false, Some(1), 0.003, None, None), Some(1e6 / 3.0)),
    ];
    for (n, ((stream, completion, total, queue, ttfb), _)) in cases.iter().enumerate() {
        log.put(Record {
            stream: *stream,
            completion_tokens: *completion,
            total_ms: *total,
            queue_ms: *queue,
            ttfb_ms: *ttfb,
            ..rec(n as u64, "m")
        });
    }
    written(&log, cases.len() as u64);
    let mut got = newest(&log);
    got.reverse();
    let read: Vec<Option<f64>> = got.iter().map(|r| r.tokens_per_s).collect();
    let expected: Vec<Option<f64>> = cases.iter().map(|c| c.1).collect();
    assert_eq!(read, expected);
    let conn = rusqlite::Connection::open(log.path()).unwrap();
    let viewed: Vec<Option<f64>> = conn
        .prepare("SELECT tokens_per_s FROM requests ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(viewed, expected);
}

/// A record keeps no bytes for the fields it leaves empty at its end, and
/// reads back whole.
#[test]
fn a_records_empty_trailing_fields_take_no_bytes() {
    let plain = Record {
        priority: None,
        queue_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        request_id: String::new(),
        ..rec(1, "m")
    };
    let mut json = Vec::new();
    row::write(&plain.entry(), &mut json);
    assert_eq!(
        String::from_utf8(json).unwrap(),
        r#"[1000001,1000,200,"openai","/v1/chat/completions","127.0.0.1:5000","default","m"]"#
    );
    let full = Record {
        cancelled: true,
        ..plain.clone()
    };
    let mut json = Vec::new();
    row::write(&full.entry(), &mut json);
    assert!(
        String::from_utf8(json)
            .unwrap()
            .ends_with(",0,null,null,null,null,null,null,null,1]"),
        "empty fields before a kept one are written"
    );
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    log.put(plain.clone());
    log.put(full.clone());
    written(&log, 2);
    let mut got = newest(&log);
    for g in &mut got {
        g.id = 0;
    }
    assert_eq!(got, [full, plain]);
}

#[test]
fn the_file_is_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    log.put(rec(1, "m"));
    written(&log, 1);
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", log.path().display());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{path}");
    }
}

#[test]
fn queries_filter_by_model_and_time_sort_by_slowness_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    for n in 1..=6 {
        log.put(rec(n, if n % 2 == 0 { "even" } else { "odd" }));
    }
    written(&log, 6);
    let r = log.reader().unwrap();
    let ids = |q: Query| -> Vec<String> {
        r.query(&q)
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect()
    };
    let q = |f: fn(&mut Query)| {
        let mut q = Query {
            limit: 100,
            ..Query::default()
        };
        f(&mut q);
        q
    };
    assert_eq!(
        ids(q(|q| q.model = Some("even".into()))),
        ["req-6", "req-4", "req-2"]
    );
    assert_eq!(ids(q(|q| q.since_ms = Some(1_000_005))), ["req-6", "req-5"]);
    let slow = q(|q| {
        q.slow = true;
        q.limit = 2;
        q.offset = 1
    });
    assert_eq!(ids(slow), ["req-5", "req-4"]);
    let first = r.query(&q(|q| q.limit = 2)).unwrap();
    let next = q(|q| q.limit = 2);
    let next = Query {
        before: Some(first[1].id),
        ..next
    };
    assert_eq!(ids(next), ["req-4", "req-3"]);
}

#[test]
fn summary_adds_up_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    for n in 1..=4 {
        log.put(rec(n, "m"));
    }
    let mut failed = rec(5, "other");
    failed.status = 503;
    failed.cancelled = true;
    log.put(failed);
    written(&log, 5);
    let s = log.reader().unwrap().summary(0).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0].model.as_str(), s[0].requests, s[0].completion_tokens),
        ("m", 4, 10)
    );
    assert_eq!(
        (s[0].prompt_tokens, s[0].swaps, s[0].swap_wait_ms),
        (12, 1, 1.5)
    );
    assert_eq!((s[1].errors, s[1].cancelled), (1, 1));
}

#[test]
fn a_stalled_writer_drops_and_counts_records_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(Settings {
        capacity: 8,
        ..settings(dir.path())
    })
    .unwrap();
    let stall = log.stall();
    // The writer meets the gate before it takes a batch, so the batch keeps
    // its 8 and every record past them is dropped; each call returns (a call
    // that blocked would hang this test).
    for n in 0..100 {
        log.put(rec(n, "m"));
    }
    let dropped = log.dropped();
    assert_eq!(dropped, 92);
    assert_eq!(log.written(), 0);
    drop(stall);
    written(&log, 100 - dropped);
    assert_eq!(log.reader().unwrap().count().unwrap(), 100 - dropped);
}

#[test]
fn retention_deletes_records_older_than_keep() {
    let dir = tempfile::tempdir().unwrap();
    let s = Settings {
        keep: Duration::from_secs(10),
        ..settings(dir.path())
    };
    let mut conn = schema::open_for_writing(&{
        std::fs::create_dir_all(s.path.parent().unwrap()).unwrap();
        s.path.clone()
    })
    .unwrap();
    // Written as the writer would: the old records' batch, later the young one's.
    let old: Vec<Record> = (0..5).map(|n| rec(n, "m")).collect();
    writer::insert_records(&conn, None, &old).unwrap();
    let mut young = rec(9, "m");
    young.at_ms = 1_020_000;
    writer::insert_records(&conn, None, &[young]).unwrap();
    // "now" is 1 025 000: only the record from 1 020 000 is within 10 s.
    writer::prune(&mut conn, &s, 1_025_000).unwrap();
    let r = Reader::open(&s.path).unwrap();
    let left = r
        .query(&Query {
            limit: 10,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].request_id, "req-9");
}

#[test]
fn retention_keeps_the_records_under_max_dropping_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let s = Settings {
        max_bytes: 256 << 10,
        ..settings(dir.path())
    };
    std::fs::create_dir_all(s.path.parent().unwrap()).unwrap();
    let mut conn = schema::open_for_writing(&s.path).unwrap();
    // 2000 records in batches of 20, as the writer would write them.
    let records: Vec<Record> = (0..2000)
        .map(|n| Record {
            body: Some("x".repeat(500)),
            ..rec(n, "m")
        })
        .collect();
    for batch in records.chunks(20) {
        writer::insert_records(&conn, None, batch).unwrap();
    }
    assert!(writer::used_bytes(&conn).unwrap() > 1 << 20);
    writer::prune(&mut conn, &s, 1_000_000).unwrap();
    assert!(writer::used_bytes(&conn).unwrap() <= 256 << 10);
    let r = Reader::open(&s.path).unwrap();
    let newest = r
        .query(&Query {
            limit: 1,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(newest[0].request_id, "req-1999", "the newest is kept");
    let n = r.count().unwrap();
    assert!(n > 0 && n < 2000, "{n} left");
    // The file itself shrank too, not only the rows.
    let file = std::fs::metadata(&s.path).unwrap().len();
    assert!(file <= 512 << 10, "file is {file} bytes");
}

#[test]
fn a_file_that_is_not_a_request_log_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "x".repeat(4096)).unwrap();
    let e = RequestLog::open(Settings {
        path: path.clone(),
        ..settings(dir.path())
    })
    .err()
    .expect("refused");
    let text = e.to_string();
    assert!(text.contains("notes.txt"), "{text}");
}

#[test]
fn a_file_of_the_first_version_keeps_its_records_and_gains_priority() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    std::fs::create_dir_all(s.path.parent().unwrap()).unwrap();
    // The table as version 1 made it: no priority column.
    let old = rusqlite::Connection::open(&s.path).unwrap();
    old.execute_batch(
        "CREATE TABLE requests (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, \
         request_id TEXT NOT NULL, peer TEXT NOT NULL, key TEXT, user_agent TEXT, \
         api TEXT NOT NULL, route TEXT NOT NULL, model_asked TEXT NOT NULL, \
         model_served TEXT NOT NULL, stream INTEGER NOT NULL, status INTEGER NOT NULL, \
         error TEXT, queue_ms REAL, swap TEXT, unloaded TEXT, ttfb_ms REAL, \
         total_ms REAL NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, \
         tokens_per_s REAL, cancelled INTEGER NOT NULL, body TEXT); \
         INSERT INTO requests (at_ms, request_id, peer, api, route, model_asked, \
         model_served, stream, status, total_ms, cancelled) \
         VALUES (strftime('%s','now') * 1000, 'old-1', '127.0.0.1:1', 'openai', '/v1/chat/completions', 'm', 'm', \
         0, 200, 3.0, 0); \
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(old);
    let log = RequestLog::open(s).unwrap();
    log.put(rec(3, "m"));
    written(&log, 1);
    let got = newest(&log);
    let seen: Vec<(&str, Option<&str>)> = got
        .iter()
        .map(|r| (r.request_id.as_str(), r.priority.as_deref()))
        .collect();
    assert_eq!(seen, [("req-3", Some("background")), ("old-1", None)]);
}

/// Run by `survives_kill_9` in a child process: writes records until killed.
#[test]
#[ignore = "a helper: run as a child process by survives_kill_9"]
fn child_writes_until_killed() {
    let Some(path) = std::env::var_os("REQLOG_CHILD_DB") else {
        return;
    };
    let log = RequestLog::open(Settings {
        path: path.into(),
        ..settings(Path::new("/"))
    })
    .unwrap();
    for n in 0.. {
        // Stamped now: the reopening writer's retention must keep them.
        log.put(Record {
            at_ms: now_ms(),
            ..rec(n, "m")
        });
        if n % 64 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::child_writes_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("REQLOG_CHILD_DB", &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed while it writes: once a few thousand records are in.
    let mut seen = 0;
    for _ in 0..1000 {
        seen = Reader::open(&path)
            .and_then(|r| r.count())
            .unwrap_or_default();
        if seen >= 2000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(seen >= 2000, "the child wrote only {seen} records");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Reopened as the next router would: sound, and nothing committed lost.
    let log = RequestLog::open(Settings {
        path: path.clone(),
        ..settings(dir.path())
    })
    .unwrap();
    let r = log.reader().unwrap();
    assert_eq!(r.integrity_check().unwrap(), "ok");
    assert!(r.count().unwrap() >= seen);
}

/// A file with a row per record (version 2) keeps every record, every field
/// of it, in order, once it holds batches.
#[test]
fn a_file_of_rows_becomes_batches_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    std::fs::create_dir_all(s.path.parent().unwrap()).unwrap();
    let old = rusqlite::Connection::open(&s.path).unwrap();
    old.execute_batch(V2_TABLE).unwrap();
    let mut expected = Vec::new();
    old.execute_batch("BEGIN").unwrap();
    for n in 1..=5000u64 {
        let r = Record {
            at_ms: now_ms() - 60_000 + n,
            stream: n % 2 == 0,
            cancelled: n % 3 == 0,
            key: (n % 5 == 0).then(|| "key 1".into()),
            ttfb_ms: Some(0.25),
            tokens_per_s: Some(40.5),
            body: (n == 7).then(|| "{\"model\":\"m\"}".into()),
            ..rec(n, "m")
        };
        old.execute(
            "INSERT INTO requests (at_ms, request_id, peer, key, user_agent, api, route, \
             model_asked, model_served, stream, status, error, queue_ms, swap, unloaded, \
             ttfb_ms, total_ms, prompt_tokens, completion_tokens, tokens_per_s, cancelled, \
             body, priority) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
             ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
            rusqlite::params![
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
                (!r.unloaded.is_empty()).then(|| r.unloaded.join(",")),
                r.ttfb_ms,
                r.total_ms,
                r.prompt_tokens.map(|n| n as i64),
                r.completion_tokens.map(|n| n as i64),
                r.tokens_per_s,
                r.cancelled,
                r.body,
                r.priority,
            ],
        )
        .unwrap();
        // Version 2 kept tokens per second; now it is worked out from the
        // tokens and times (1 token in the -0.5 ms after its wait: none).
        let begun_us = if r.stream { 250 } else { 1500 };
        let took_us = (n * 1000).checked_sub(begun_us).filter(|&t| t > 0);
        expected.push(Record {
            tokens_per_s: took_us.map(|t| n as f64 * 1e6 / t as f64),
            ..r
        });
    }
    old.execute_batch("COMMIT").unwrap();
    drop(old);
    let log = RequestLog::open(s).unwrap();
    let r = log.reader().unwrap();
    assert_eq!(r.count().unwrap(), 5000);
    let got = oldest_first(&r);
    assert_eq!(got, expected);
    assert_eq!(r.integrity_check().unwrap(), "ok");
}

/// A file of version 3 (batches of records of every field, times in
/// milliseconds) keeps every record, every field, in order, once rewritten.
#[test]
fn a_file_of_full_records_becomes_spare_records_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    // Times of an hour ago (retention would delete older ones), as digits
    // the records' times follow: t1000 is t * 10^4 + 1000.
    let t = (now_ms() - 3_600_000) / 10_000;
    v3_file(
        &s.path,
        &[
            format!(
                r#"[
           [{t}1000,"req-a","127.0.0.1:1",null,"curl/8",  "openai","/v1/chat/completions","default","m",1,200,null,0.012,null,null,0.41,35.7,12,32,912.4,0,null,"interactive"],
           [{t}1001,"",     "127.0.0.1:2","key 2",null,"ollama","/api/chat","big","big",0,503,"model_unavailable",1500.25,"caused","a,b",null,1600.5,null,null,null,1,"{{\"model\":\"big\"}}","background"]
         ]"#
            ),
            format!(
                r#"[
           [{t}2000,"req-c","[::1]:3",null,null,"anthropic","/v1/messages","c","c",0,200,null,null,null,null,null,2.0,1,1,null,0,null,null]
         ]"#
            ),
        ],
    );
    let log = RequestLog::open(s).unwrap();
    let r = log.reader().unwrap();
    let got = oldest_first(&r);
    let a = Record {
        at_ms: t * 10_000 + 1000,
        request_id: "req-a".into(),
        peer: "127.0.0.1:1".into(),
        user_agent: Some("curl/8".into()),
        api: "openai".into(),
        route: "/v1/chat/completions".into(),
        model_asked: "default".into(),
        model_served: "m".into(),
        stream: true,
        status: 200,
        queue_ms: Some(0.012),
        ttfb_ms: Some(0.41),
        total_ms: 35.7,
        prompt_tokens: Some(12),
        completion_tokens: Some(32),
        tokens_per_s: Some(32e6 / 35_290.0),
        priority: Some("interactive".into()),
        ..Record::default()
    };
    let b = Record {
        at_ms: t * 10_000 + 1001,
        peer: "127.0.0.1:2".into(),
        key: Some("key 2".into()),
        api: "ollama".into(),
        route: "/api/chat".into(),
        model_asked: "big".into(),
        model_served: "big".into(),
        status: 503,
        error: Some("model_unavailable".into()),
        queue_ms: Some(1500.25),
        swap: Some("caused".into()),
        unloaded: vec!["a".into(), "b".into()],
        total_ms: 1600.5,
        cancelled: true,
        body: Some("{\"model\":\"big\"}".into()),
        priority: Some("background".into()),
        ..Record::default()
    };
    let c = Record {
        at_ms: t * 10_000 + 2000,
        request_id: "req-c".into(),
        peer: "[::1]:3".into(),
        api: "anthropic".into(),
        route: "/v1/messages".into(),
        model_asked: "c".into(),
        model_served: "c".into(),
        status: 200,
        total_ms: 2.0,
        prompt_tokens: Some(1),
        completion_tokens: Some(1),
        tokens_per_s: Some(500.0),
        ..Record::default()
    };
    assert_eq!(got, [a, b, c]);
    let conn = rusqlite::Connection::open(log.path()).unwrap();
    let viewed: Vec<(String, f64, Option<String>)> = conn
        .prepare("SELECT request_id, total_ms, key FROM requests ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        viewed,
        [
            ("req-a".into(), 35.7, None),
            (String::new(), 1600.5, Some("key 2".into())),
            ("req-c".into(), 2.0, None)
        ]
    );
    assert_eq!(r.integrity_check().unwrap(), "ok");
}

/// A version 3 file of `batches` (each a JSON array of version 3 records),
/// an hour old.
fn v3_file(path: &Path, batches: &[String]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let old = rusqlite::Connection::open(path).unwrap();
    old.execute_batch(
        "PRAGMA journal_mode = WAL; \
         CREATE TABLE batches (id INTEGER PRIMARY KEY, done_ms INTEGER NOT NULL, \
             n INTEGER NOT NULL, records TEXT NOT NULL); \
         CREATE INDEX batches_done ON batches (done_ms); \
         CREATE VIEW requests AS SELECT (b.id << 16) + r.key AS id, \
             json_extract(r.value, '$[0]') AS at_ms FROM batches AS b, json_each(b.records) AS r; \
         PRAGMA user_version = 3;",
    )
    .unwrap();
    for b in batches {
        let n = serde_json::from_str::<Vec<serde_json::Value>>(b).map_or(1, |v| v.len());
        old.execute(
            "INSERT INTO batches (done_ms, n, records) VALUES (?1, ?2, ?3)",
            rusqlite::params![(now_ms() - 3_600_000) as i64, n as i64, b],
        )
        .unwrap();
    }
}

/// A version 3 record, request id `id`, with counts and times as given.
fn v3_record(id: &str, prompt: &str, completion: &str, queue: &str, total: &str) -> String {
    format!(
        "[{at},\"{id}\",\"127.0.0.1:1\",null,null,\"openai\",\"/v1/chat/completions\",\"m\",\"m\",\
         0,200,null,{queue},null,null,null,{total},{prompt},{completion},null,0,null,null]",
        at = now_ms() - 3_600_000 - 1000
    )
}

/// What SQLite's JSON functions would have mangled comes through: counts
/// above 2^63 (a float in SQL), negative times (0 now, as a new record's
/// would be). A batch or a record that cannot be read is left out, the rest kept.
#[test]
fn an_old_files_odd_records_come_through_and_a_damaged_batch_does_not_stop_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    v3_file(
        &s.path,
        &[
            format!(
                "[{}]",
                v3_record(
                    "big",
                    "9223372036854775808",
                    "18446744073709551615",
                    "1",
                    "5"
                )
            ),
            "[[1,2".into(),
            format!("[{}]", v3_record("negative", "1", "1", "-0.5", "-1.0")),
            // A record version 3 could not have read (no total) costs only itself.
            format!(
                "[{},{}]",
                v3_record("beside", "1", "1", "1", "2"),
                v3_record("no total", "1", "1", "1", "null")
            ),
        ],
    );
    let log = RequestLog::open(s).unwrap();
    let got = newest(&log);
    let got: Vec<_> = got
        .iter()
        .map(|r| {
            (
                r.request_id.as_str(),
                r.prompt_tokens,
                r.completion_tokens,
                r.queue_ms,
                r.total_ms,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("beside", Some(1), Some(1), Some(1.0), 2.0),
            ("negative", Some(1), Some(1), Some(0.0), 0.0),
            ("big", Some(1 << 63), Some(u64::MAX), Some(1.0), 5.0),
        ]
    );
}

/// A router of version 3 still running on the file once a newer one has
/// upgraded it cannot add records of its form among the new ones: its
/// table is gone, so its writes fail (it says so in its log) and every
/// record the new router keeps reads back.
#[test]
fn a_router_of_the_old_version_cannot_write_into_the_upgraded_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    v3_file(
        &s.path,
        &[format!("[{}]", v3_record("old", "1", "2", "1", "5"))],
    );
    let log = RequestLog::open(s.clone()).unwrap();
    let old = rusqlite::Connection::open(&s.path).unwrap();
    let refused = old.execute(
        "INSERT INTO batches (done_ms, n, records) VALUES (?1, 1, ?2)",
        rusqlite::params![
            now_ms() as i64,
            format!("[{}]", v3_record("stray", "1", "2", "1", "5"))
        ],
    );
    assert!(refused.is_err(), "an old router's insert went in");
    log.put(rec(1, "m"));
    written(&log, 1);
    let ids: Vec<String> = newest(&log).into_iter().map(|r| r.request_id).collect();
    assert_eq!(ids, ["req-1", "old"]);
}

/// A batch that cannot be read (written by hand, or damaged) leaves out its
/// own records, not every other one.
#[test]
fn a_damaged_batch_hides_only_its_own_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    log.put(rec(1, "m"));
    written(&log, 1);
    let conn = rusqlite::Connection::open(log.path()).unwrap();
    conn.execute(
        "INSERT INTO record_batches (done_ms, n, records) VALUES (?1, 1, '[[\"not a time\"]]')",
        [now_ms() as i64],
    )
    .unwrap();
    log.put(rec(2, "m"));
    written(&log, 2);
    let ids: Vec<String> = newest(&log).into_iter().map(|r| r.request_id).collect();
    assert_eq!(ids, ["req-2", "req-1"]);
    let summary = log.reader().unwrap().summary(0).unwrap();
    assert_eq!(summary[0].requests, 2);
}

/// Two routers that open an old file at the same moment upgrade it once:
/// both start, and every record reads back once.
#[test]
fn two_routers_opening_an_old_file_at_once_upgrade_it_once() {
    for round in 0..40u64 {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let records: Vec<String> = (0..50)
            .map(|n| v3_record(&format!("r{n}"), "1", "2", "1", "5"))
            .collect();
        v3_file(&s.path, &[format!("[{}]", records.join(","))]);
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let opens: Vec<_> = (0..2u64)
            .map(|k| {
                let (start, path) = (start.clone(), s.path.clone());
                std::thread::spawn(move || {
                    start.wait();
                    // Staggered by a few hundred microseconds, round by round.
                    std::thread::sleep(Duration::from_micros(k * (round * 97 % 800)));
                    schema::open_for_writing(&path).map(drop)
                })
            })
            .collect();
        for open in opens {
            open.join().unwrap().unwrap();
        }
        let r = Reader::open(&s.path).unwrap();
        let got = r
            .query(&Query {
                limit: 100,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(got.len(), 50, "round {round}");
        assert!(
            got.iter().all(|r| r.completion_tokens == Some(2)),
            "round {round}"
        );
    }
}

/// A version 1 or 2 file kept a count above 2^63 as a negative integer (its
/// bits); it comes back as the count.
#[test]
fn a_row_files_count_above_2_63_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    std::fs::create_dir_all(s.path.parent().unwrap()).unwrap();
    let old = rusqlite::Connection::open(&s.path).unwrap();
    old.execute_batch(V2_TABLE).unwrap();
    old.execute(
        "INSERT INTO requests VALUES (1, ?1, 'r', 'p', NULL, NULL, 'openai', '/', 'm', 'm', \
           0, 200, NULL, NULL, NULL, NULL, NULL, 5.0, 3, -1, NULL, 0, NULL, NULL)",
        [now_ms() as i64 - 60_000],
    )
    .unwrap();
    drop(old);
    let log = RequestLog::open(s).unwrap();
    assert_eq!(newest(&log)[0].completion_tokens, Some(u64::MAX));
}

/// A time no clock gives (infinite) is recorded, not a panic on the
/// request's thread, and its batch reads back whole (its date once turned
/// negative, hiding the batch from every read), also after a prune.
#[test]
fn an_infinite_time_is_recorded_and_read_back_with_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let log = RequestLog::open(s.clone()).unwrap();
    let stall = log.stall();
    log.put(rec(1, "m"));
    log.put(Record {
        total_ms: f64::INFINITY,
        ..rec(2, "m")
    });
    drop(stall);
    written(&log, 2);
    let mut conn = rusqlite::Connection::open(log.path()).unwrap();
    writer::prune(&mut conn, &s, now_ms()).unwrap();
    let ids: Vec<String> = newest(&log).into_iter().map(|r| r.request_id).collect();
    assert_eq!(ids, ["req-2", "req-1"]);
}

/// Anyone may read the file with `sqlite3`: the `requests` view is a row
/// per record, its fields by name, booleans 0 and 1.
#[test]
fn the_requests_view_reads_a_row_per_record_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    for n in 1..=3 {
        log.put(Record {
            stream: n == 2,
            ..rec(n, "m")
        });
    }
    written(&log, 3);
    let conn = rusqlite::Connection::open(log.path()).unwrap();
    let rows: Vec<(String, i64, Option<String>, Option<String>)> = conn
        .prepare(
            "SELECT request_id, stream, unloaded, priority FROM requests \
             WHERE model_served = 'm' ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let interactive = Some("interactive".to_string());
    assert_eq!(
        rows,
        [
            ("req-1".into(), 0, None, interactive.clone()),
            ("req-2".into(), 1, Some("a,b".into()), interactive),
            ("req-3".into(), 0, None, Some("background".into())),
        ]
    );
}

/// Every column of the view holds its own field: a record with a value in
/// every field, each unlike the others, reads the same through the view as
/// through the reader (the field order is written down in `NAMES` for the
/// view, and in `write` and `In` for the router).
#[test]
fn every_column_of_the_view_holds_its_own_field() {
    use rusqlite::types::Value::{Integer, Real, Text};
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    let full = Record {
        at_ms: 1_700_000_000_001,
        request_id: "rid".into(),
        peer: "10.0.0.2:3".into(),
        key: Some("key 4".into()),
        user_agent: Some("ua/5".into()),
        api: "ollama".into(),
        route: "/api/chat".into(),
        model_asked: "asked".into(),
        model_served: "served".into(),
        stream: true,
        status: 206,
        error: Some("err_7".into()),
        queue_ms: Some(8.001),
        swap: Some("waited".into()),
        unloaded: vec!["u9".into(), "u10".into()],
        ttfb_ms: Some(11.5),
        total_ms: 1011.5,
        prompt_tokens: Some(13),
        completion_tokens: Some(14),
        cancelled: true,
        body: Some("b16".into()),
        priority: Some("background".into()),
        ..Record::default()
    };
    log.put(full.clone());
    written(&log, 1);
    let read = &newest(&log)[0];
    assert_eq!(read.tokens_per_s, Some(14.0));
    let conn = rusqlite::Connection::open(log.path()).unwrap();
    let expected = [
        ("id", Integer(read.id)),
        ("at_ms", Integer(1_700_000_000_001)),
        ("request_id", Text("rid".into())),
        ("peer", Text("10.0.0.2:3".into())),
        ("key", Text("key 4".into())),
        ("user_agent", Text("ua/5".into())),
        ("api", Text("ollama".into())),
        ("route", Text("/api/chat".into())),
        ("model_asked", Text("asked".into())),
        ("model_served", Text("served".into())),
        ("stream", Integer(1)),
        ("status", Integer(206)),
        ("error", Text("err_7".into())),
        ("queue_ms", Real(8.001)),
        ("swap", Text("waited".into())),
        ("unloaded", Text("u9,u10".into())),
        ("ttfb_ms", Real(11.5)),
        ("total_ms", Real(1011.5)),
        ("prompt_tokens", Integer(13)),
        ("completion_tokens", Integer(14)),
        ("tokens_per_s", Real(14.0)),
        ("cancelled", Integer(1)),
        ("body", Text("b16".into())),
        ("priority", Text("background".into())),
    ];
    for (column, value) in expected {
        let got: rusqlite::types::Value = conn
            .query_row(&format!("SELECT {column} FROM requests"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(got, value, "{column}");
    }
    let mut read = read.clone();
    read.id = 0;
    assert_eq!(
        read,
        Record {
            tokens_per_s: Some(14.0),
            ..full
        }
    );
}

/// Pages newest first across many batches see every record once, in order,
/// and a model's records are found in whichever batches they are.
#[test]
fn pages_run_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    std::fs::create_dir_all(s.path.parent().unwrap()).unwrap();
    let conn = schema::open_for_writing(&s.path).unwrap();
    let records: Vec<Record> = (0..100)
        .map(|n| rec(n, if n % 10 == 0 { "rare" } else { "m" }))
        .collect();
    for batch in records.chunks(7) {
        writer::insert_records(&conn, None, batch).unwrap();
    }
    let r = Reader::open(&s.path).unwrap();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = r
            .query(&Query {
                limit: 9,
                before,
                ..Query::default()
            })
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        seen.extend(page.iter().map(|r| r.request_id.clone()));
    }
    let expected: Vec<String> = (0..100).rev().map(|n| format!("req-{n}")).collect();
    assert_eq!(seen, expected);
    let rare = r
        .query(&Query {
            model: Some("rare".into()),
            limit: 4,
            ..Query::default()
        })
        .unwrap();
    let ids: Vec<&str> = rare.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, ["req-90", "req-80", "req-70", "req-60"]);
}

/// Ids are never given twice: a reader pages by them, and a page's cursor
/// from before retention emptied the table must not find new records.
#[test]
fn ids_keep_rising_after_retention_empties_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    std::fs::create_dir_all(s.path.parent().unwrap()).unwrap();
    let mut conn = schema::open_for_writing(&s.path).unwrap();
    let ids = |conn: &rusqlite::Connection| -> Vec<i64> {
        conn.prepare("SELECT id FROM record_batches ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    writer::insert_records(&conn, None, &[rec(1, "m")]).unwrap();
    writer::insert_records(&conn, None, &[rec(2, "m")]).unwrap();
    assert_eq!(ids(&conn), [1, 2]);
    // Everything is older than `keep` a year from now.
    writer::prune(&mut conn, &s, now_ms() + 365 * 24 * 3_600_000).unwrap();
    assert!(ids(&conn).is_empty());
    drop(conn);
    let conn = schema::open_for_writing(&s.path).unwrap();
    writer::insert_records(&conn, None, &[rec(3, "m")]).unwrap();
    assert_eq!(ids(&conn), [3]);
}

#[test]
fn times_are_kept_to_the_microsecond() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    log.put(Record {
        total_ms: 35.712_345_678,
        ttfb_ms: Some(0.000_4),
        queue_ms: Some(1.000_5),
        ..rec(1, "m")
    });
    written(&log, 1);
    let r = &newest(&log)[0];
    assert_eq!(
        (r.total_ms, r.ttfb_ms, r.queue_ms, r.tokens_per_s),
        // One token in the 34.711 ms after the wait.
        (35.712, Some(0.0), Some(1.001), Some(1e6 / 34_711.0))
    );
}

/// Text a client of the crate wrote that breaks halfway: an error, or a panic.
struct Breaks(bool);

impl std::fmt::Display for Breaks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("half of it")?;
        if self.0 {
            panic!("a Display that panics");
        }
        Err(std::fmt::Error)
    }
}

#[test]
fn a_record_whose_text_breaks_halfway_is_dropped_and_counted_and_the_batch_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    // Held so all four land in one batch, the broken ones between good ones.
    let stall = log.stall();
    log.put(rec(1, "m"));
    for panics in [false, true] {
        let r = rec(9, "m");
        let mut e = r.entry();
        let breaks = Breaks(panics);
        e.user_agent = Some(&breaks);
        log.record(&e);
    }
    log.put(rec(4, "m"));
    drop(stall);
    written(&log, 2);
    let got: Vec<_> = newest(&log).into_iter().map(|r| r.request_id).collect();
    assert_eq!(got, ["req-4", "req-1"]);
    assert_eq!((log.written(), log.dropped()), (2, 2));
}

/// Text that takes its time to write: it says it has begun, then waits (up to
/// a minute) to hear that another record went in meanwhile.
struct Slow {
    begun: std::sync::mpsc::SyncSender<()>,
    other_went_in: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    heard: std::sync::atomic::AtomicBool,
}

impl std::fmt::Display for Slow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let _ = self.begun.send(());
        let heard = self
            .other_went_in
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(60));
        self.heard.store(heard.is_ok(), Ordering::Relaxed);
        f.write_str("slow")
    }
}

#[test]
fn a_record_slow_to_encode_keeps_no_other_request_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    let (begun, has_begun) = std::sync::mpsc::sync_channel(1);
    let (went_in, other_went_in) = std::sync::mpsc::sync_channel(1);
    let slow = Slow {
        begun,
        other_went_in: std::sync::Mutex::new(other_went_in),
        heard: false.into(),
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let r = rec(1, "m");
            let mut e = r.entry();
            e.user_agent = Some(&slow);
            log.record(&e);
        });
        has_begun.recv().unwrap();
        // While the slow one is still being encoded, another request's record
        // goes in (with the encoding under the batch's lock, it waited).
        log.put(rec(2, "m"));
        went_in.send(()).unwrap();
    });
    assert!(
        slow.heard.load(Ordering::Relaxed),
        "the other record waited"
    );
    written(&log, 2);
    let got: Vec<_> = newest(&log).into_iter().map(|r| r.user_agent).collect();
    assert_eq!(got, [Some("slow".to_string()), None]);
}

/// A request still open when its thread ends records as it goes.
struct RecordsOnExit(RequestLog);

impl Drop for RecordsOnExit {
    fn drop(&mut self) {
        self.0.put(rec(2, "m"));
    }
}

thread_local! {
    static ON_EXIT: std::cell::RefCell<Option<RecordsOnExit>> = const { std::cell::RefCell::new(None) };
}

#[test]
fn a_record_made_as_its_thread_ends_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    let on_exit = log.clone();
    std::thread::spawn(move || {
        // Made before the log's own buffer, so (thread-locals going in the
        // reverse order) it is dropped after that buffer is gone.
        ON_EXIT.with_borrow_mut(|r| *r = Some(RecordsOnExit(on_exit)));
        ON_EXIT.with_borrow(|r| r.as_ref().unwrap().0.put(rec(1, "m")));
    })
    .join()
    .expect("the thread ended cleanly");
    written(&log, 2);
    assert_eq!(newest(&log).len(), 2);
}

#[test]
fn a_batch_holds_a_bounded_number_of_bytes_and_takes_records_again_once_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open_bounded(settings(dir.path()), 1000).unwrap();
    let stall = log.stall();
    // Longer than a batch may be: dropped, and the batch still takes others.
    let mut huge = rec(0, "m");
    huge.user_agent = Some("u".repeat(2000));
    log.put(huge);
    assert_eq!(log.dropped(), 1);
    for n in 1..=20 {
        log.put(rec(n, "m"));
    }
    let dropped = log.dropped();
    let kept = 21 - dropped;
    // As many as fit in 1000 bytes (each with its comma), the rest dropped.
    let size = |n| {
        let mut json = Vec::new();
        row::write(&rec(n, "m").entry(), &mut json);
        json.len() as u64 + 1
    };
    assert!(
        (1000 / size(20)..=1000 / size(1)).contains(&kept) && kept < 20,
        "kept {kept}"
    );
    drop(stall);
    written(&log, kept);
    // Once the writer has taken the batch, records go in again.
    log.put(rec(30, "m"));
    written(&log, kept + 1);
    assert_eq!(log.dropped(), dropped);
    assert_eq!(newest(&log)[0].request_id, "req-30");
}

#[test]
fn a_summary_of_absurd_token_counts_saturates_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(settings(dir.path())).unwrap();
    for n in 1..=2 {
        log.put(Record {
            prompt_tokens: Some(u64::MAX),
            completion_tokens: Some(u64::MAX),
            ..rec(n, "m")
        });
    }
    written(&log, 2);
    let s = log.reader().unwrap().summary(0).unwrap();
    assert_eq!(
        (s[0].requests, s[0].prompt_tokens, s[0].completion_tokens),
        (2, u64::MAX, u64::MAX)
    );
}
