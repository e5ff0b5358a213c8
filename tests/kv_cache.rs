//! The KV cache kept across swaps when things go wrong: a backend speaking
//! llama.cpp's slots API from a raw socket (a save that hangs, a restore that
//! fails, a cache from another build, a file cut short, a directory over its
//! cap). In each the swap goes on and every request is answered; what happened
//! is an event. The happy path on the real llama.cpp server is in real_backend.rs.

mod common;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// How the fake answers a save or a restore.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    /// Writes (or reads) the slot file of this many bytes, as llama.cpp does.
    Ok,
    /// Holds the request without an answer.
    Hang,
    /// Answers this status with llama.cpp's error shape.
    Fail(u16),
}

struct Fake {
    save: Act,
    restore: Act,
    build: String,
    /// How many slots it has (`--parallel`).
    slots: u32,
    /// The slots /slots says served a task (a restored slot says not).
    busy: Vec<u32>,
    /// Bytes a save writes.
    bytes: usize,
    /// Request lines received, in order.
    seen: Vec<String>,
}

/// A llama.cpp server as far as the router's KV cache sees it, on a socket of
/// the test's own. Its `process` (a shell that sleeps) writes the argv the
/// router gave it to `argv_file`, so the fake knows its --slot-save-path.
struct Llama {
    url: String,
    state: Arc<Mutex<Fake>>,
    argv_file: PathBuf,
}

impl Llama {
    fn start(dir: &Path, name: &str) -> Llama {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(Fake {
            save: Act::Ok,
            restore: Act::Ok,
            build: "b100-test".into(),
            slots: 1,
            busy: vec![0],
            bytes: 300_000,
            seen: Vec::new(),
        }));
        let argv_file = dir.join(format!("{name}.argv"));
        let (s, a) = (state.clone(), argv_file.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (s, a) = (s.clone(), a.clone());
                std::thread::spawn(move || serve(conn, &s, &a));
            }
        });
        Llama {
            url,
            state,
            argv_file,
        }
    }

    fn set(&self, f: impl FnOnce(&mut Fake)) {
        f(&mut self.state.lock().unwrap());
    }

    fn seen(&self, what: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.seen.iter().filter(|l| l.contains(what)).count()
    }

    /// The backend entry for routes.yaml: a process that only sleeps (and
    /// records its argv), reached at the fake's url.
    fn backend(&self, kv: &str) -> String {
        format!(
            "{{command: [sh, -c, 'echo \"$2\" > {argv}; exec sleep 600', sh], url: \"{url}\", stop_timeout: 1s, kv_cache: {kv}}}",
            argv = self.argv_file.display(),
            url = self.url,
        )
    }
}

fn reply(out: &mut TcpStream, status: u16, body: &Value) {
    let body = body.to_string();
    let _ = write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

fn serve(conn: TcpStream, state: &Mutex<Fake>, argv_file: &Path) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some(req) = RawRequest::read(&mut reader) {
        let path = req.line.split(' ').nth(1).unwrap_or("").to_string();
        let (save, restore, build, bytes, slots, busy) = {
            let mut s = state.lock().unwrap();
            s.seen.push(req.line.clone());
            (
                s.save,
                s.restore,
                s.build.clone(),
                s.bytes,
                s.slots,
                s.busy.clone(),
            )
        };
        // POST /slots/{id}?action=…
        let (slot, action) = path
            .strip_prefix("/slots/")
            .and_then(|r| r.split_once("?action="))
            .and_then(|(id, a)| Some((id.parse::<u32>().ok()?, a.to_string())))
            .unzip();
        let act = |out: &mut TcpStream, act: Act, ok: &dyn Fn() -> Value| match act {
            Act::Ok => reply(out, 200, &ok()),
            Act::Hang => std::thread::sleep(Duration::from_secs(120)),
            Act::Fail(status) => reply(
                out,
                status,
                &json!({"error": {"code": status, "message": "Unable to restore slot: No available space in KV cache or invalid slot save file", "type": "server_error"}}),
            ),
        };
        let file = || {
            let v: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let dir = std::fs::read_to_string(argv_file).unwrap_or_default();
            // --slot-save-path ends in '/': llama.cpp appends the name as is.
            PathBuf::from(format!(
                "{}{}",
                dir.trim_end_matches('\n'),
                v["filename"].as_str().unwrap_or("")
            ))
        };
        match path.as_str() {
            "/health" => reply(&mut out, 200, &json!({"status": "ok"})),
            "/props" => reply(
                &mut out,
                200,
                &json!({"model_path": "/models/talk.gguf", "build_info": build, "total_slots": slots,
                        "default_generation_settings": {"n_ctx": 4096}}),
            ),
            "/slots" => reply(
                &mut out,
                200,
                &Value::Array(
                    (0..slots)
                        .map(|id| {
                            if busy.contains(&id) {
                                json!({"id": id, "n_ctx": 4096, "is_processing": false, "id_task": 3, "n_prompt_tokens": 500})
                            } else {
                                json!({"id": id, "n_ctx": 4096, "is_processing": false})
                            }
                        })
                        .collect(),
                ),
            ),
            _ if action.as_deref() == Some("save") => act(&mut out, save, &|| {
                let f = file();
                std::fs::write(&f, vec![9u8; bytes]).unwrap();
                json!({"id_slot": slot, "filename": f.file_name().unwrap().to_str(), "n_saved": 500, "n_written": bytes, "timings": {"save_ms": 3.0}})
            }),
            _ if action.as_deref() == Some("restore") => act(&mut out, restore, &|| {
                let n = std::fs::metadata(file()).map_or(0, |m| m.len());
                json!({"id_slot": slot, "n_restored": 500, "n_read": n, "timings": {"restore_ms": 2.0}})
            }),
            _ => reply(
                &mut out,
                200,
                &json!({"id": "x", "object": "chat.completion", "model": "talk",
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                        "timings": {"cache_n": 500, "prompt_n": 5}}),
            ),
        }
    }
}

/// routes.yaml: the fakes' models and a simulated `other`, one at a time.
fn config(backends: &[(&str, String)]) -> String {
    let mut y = String::from("budget: 1GB\nqueue_timeout: 30s\nbackends:\n  sim: {command: [$BIN, sim, --port, \"${PORT}\", --model, \"${MODEL}\"]}\n");
    for (name, b) in backends {
        y.push_str(&format!("  {name}: {b}\n"));
    }
    y.push_str("models:\n  other: {backend: sim, memory: 600MB}\n");
    for (name, _) in backends {
        y.push_str(&format!("  {name}: {{backend: {name}, memory: 600MB}}\n"));
    }
    y
}

async fn chat_ok(r: &Router, model: &str) {
    let resp = post(&r.url("/v1/chat/completions"), &chat(model)).await;
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{model}: {body}\n{}", r.logs());
}

/// Waits until an event starting with `prefix` is there; returns all KV events.
async fn wait_event(r: &Router, prefix: &str) -> Vec<String> {
    let found = eventually(Duration::from_secs(20), || async {
        let ev = kv_events(r).await;
        ev.iter().any(|e| e.starts_with(prefix)).then_some(ev)
    })
    .await;
    match found {
        Some(ev) => ev,
        None => panic!(
            "no `{prefix}` event in {:?}\n{}",
            kv_events(r).await,
            r.logs()
        ),
    }
}

/// Swaps `model` out (by asking for `other`) and back in.
async fn swap_out_and_back(r: &Router, model: &str) {
    chat_ok(r, "other").await;
    chat_ok(r, model).await;
}

fn slot_files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("slot-") {
                out.push((f.path(), f.metadata().unwrap().len()));
            }
        }
    }
    out
}

/// One fake llama.cpp `talk` with a KV cache in `<tmp>/kv`, behind a router.
struct Talk {
    /// Holds the temporary directory for the test's length.
    _tmp: tempfile::TempDir,
    kv: PathBuf,
    talk: Llama,
    r: Router,
}

/// Starts `talk` with `kv_cache: {dir: <tmp>/kv<extra>}`; `prep` sets the fake
/// up before the router starts.
fn talk_with(extra: &str, prep: impl FnOnce(&mut Fake)) -> Talk {
    let tmp = tempfile::tempdir().unwrap();
    let kv = tmp.path().join("kv");
    let talk = Llama::start(tmp.path(), "talk");
    talk.set(prep);
    let r = Router::start(&config(&[(
        "talk",
        talk.backend(&format!("{{dir: {}{extra}}}", kv.display())),
    )]));
    Talk {
        _tmp: tmp,
        kv,
        talk,
        r,
    }
}

/// Serves `model` once, then swaps it out and waits for its save.
async fn served_and_saved(r: &Router, model: &str) {
    chat_ok(r, model).await;
    chat_ok(r, "other").await;
    wait_event(r, &format!("kv_saved {model}")).await;
}

/// Waits until there are `n` events starting with `prefix`; all KV events then.
async fn wait_count(r: &Router, prefix: &str, n: usize) -> Option<Vec<String>> {
    eventually(Duration::from_secs(10), || async {
        let ev = kv_events(r).await;
        (ev.iter().filter(|e| e.starts_with(prefix)).count() == n).then_some(ev)
    })
    .await
}

/// Waits for the swap out to save a slot file; returns it.
async fn saved_file(kv: &Path) -> (PathBuf, u64) {
    eventually(Duration::from_secs(10), || async { slot_files(kv).pop() })
        .await
        .expect("a slot file")
}

#[tokio::test]
async fn a_save_that_hangs_holds_the_swap_no_longer_than_save_timeout() {
    let Talk { _tmp, kv, talk, r } = talk_with(", save_timeout: 1s", |f| f.save = Act::Hang);
    chat_ok(&r, "talk").await;
    // The argv the router gave the server: its own directory, ending in '/'.
    let dir = std::fs::read_to_string(&talk.argv_file).unwrap();
    assert!(
        dir.trim_end().starts_with(&kv.display().to_string()) && dir.trim_end().ends_with('/'),
        "{dir}"
    );
    assert!(Path::new(dir.trim_end()).is_dir(), "the router made {dir}");

    // The swap to `other` waits for the save, which never answers: past
    // save_timeout the server stops anyway and `other` is served.
    chat_ok(&r, "other").await;
    let ev = wait_event(&r, "kv_failed talk").await;
    assert!(
        ev.iter()
            .any(|e| e.contains("save did not finish within kv_cache.save_timeout (1s)")),
        "{ev:?}"
    );
    assert_eq!(talk.seen("action=save"), 1);

    // Back to talk: nothing half-saved is restored, and it serves.
    chat_ok(&r, "talk").await;
    assert_eq!(talk.seen("action=restore"), 0, "{ev:?}");
    let s = get_json(&r.url("/admin/status")).await;
    assert_eq!(s["kv_cache"]["talk"]["failures"], 1, "{s}");
    assert_eq!(s["kv_cache"]["talk"]["saves"], 0, "{s}");
}

#[tokio::test]
async fn a_saved_conversation_is_restored_into_its_slot_and_a_failed_restore_still_serves() {
    let Talk { _tmp, kv, talk, r } = talk_with("", |_| {});
    chat_ok(&r, "talk").await;
    swap_out_and_back(&r, "talk").await;
    let ev = wait_event(&r, "kv_restored talk").await;
    assert!(
        ev.iter()
            .any(|e| e.starts_with("kv_saved talk: slot 0: 500 tokens, 300 KB")),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e.starts_with("kv_restored talk: slot 0: 500 tokens, 300 KB")),
        "{ev:?}"
    );
    assert_eq!(talk.seen("POST /slots/0?action=restore"), 1);
    // Restored before the model was ready: the restore came before the chat.
    {
        let s = talk.state.lock().unwrap();
        let restore = s
            .seen
            .iter()
            .position(|l| l.contains("action=restore"))
            .unwrap();
        let chats: Vec<usize> = s
            .seen
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("/v1/chat"))
            .map(|(i, _)| i)
            .collect();
        assert!(
            chats.len() == 2 && chats[0] < restore && restore < chats[1],
            "{:?}",
            s.seen
        );
    }

    // `modelyard status` tells it too.
    let out = std::process::Command::new(BIN)
        .args(["status", "--url", &r.url("")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("kv_restored") && text.contains("slot 0: 500 tokens, 300 KB"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Next time the server refuses the file: the model serves all the same,
    // and the set it refused is gone.
    // Someone deletes the cache directory meanwhile: the next save makes it again.
    std::fs::remove_dir_all(&kv).unwrap();
    talk.set(|f| f.restore = Act::Fail(400));
    swap_out_and_back(&r, "talk").await;
    let ev = wait_event(&r, "kv_failed talk").await;
    assert!(
        ev.iter().any(
            |e| e.contains("restore failed, the model serves without it")
                && e.contains("invalid slot save file")
                && e.contains("deleted")
        ),
        "{ev:?}"
    );
    assert!(slot_files(&kv).is_empty(), "{:?}", slot_files(&kv));
    let s = get_json(&r.url("/admin/status")).await;
    let c = &s["kv_cache"]["talk"];
    assert_eq!(
        (
            c["saves"].as_u64(),
            c["restores"].as_u64(),
            c["failures"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(c["restored_tokens"], 500, "{s}");
    let metrics = get(&r.url("/metrics")).await.text().await.unwrap();
    assert!(
        metrics.contains("modelyard_kv_cache_operations_total{model=\"talk\",op=\"restore\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("modelyard_kv_cache_failures_total{model=\"talk\"} 1"),
        "{metrics}"
    );
    // Three answers from talk, each saying 500 prompt tokens came from its cache.
    assert!(
        metrics.contains("modelyard_prompt_cached_tokens_total{model=\"talk\"} 1500"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_cache_from_another_build_or_cut_short_is_never_restored() {
    let Talk { _tmp, kv, talk, r } = talk_with("", |_| {});
    chat_ok(&r, "talk").await;

    // Saved by build b100; the server comes back as b101.
    chat_ok(&r, "other").await;
    wait_event(&r, "kv_saved talk").await;
    talk.set(|f| f.build = "b101-test".into());
    chat_ok(&r, "talk").await;
    let ev = wait_event(&r, "kv_failed talk").await;
    assert!(
        ev.iter()
            .any(|e| e.contains("build b100-test") && e.contains("build b101-test")),
        "{ev:?}"
    );
    assert_eq!(
        talk.seen("action=restore"),
        0,
        "never offered to the server"
    );
    assert!(slot_files(&kv).is_empty());

    // Saved whole, then cut short on disk: not offered either.
    chat_ok(&r, "other").await;
    let saved = saved_file(&kv).await;
    std::fs::write(&saved.0, b"short").unwrap();
    chat_ok(&r, "talk").await;
    let ev = wait_count(&r, "kv_failed", 2).await.unwrap();
    assert!(
        ev.iter()
            .any(|e| e.contains("slot-0.bin has 5 bytes, 300000 were saved")),
        "{ev:?}"
    );

    // Saved, then deleted by someone: not offered either.
    chat_ok(&r, "other").await;
    let saved = saved_file(&kv).await;
    std::fs::remove_file(&saved.0).unwrap();
    chat_ok(&r, "talk").await;
    let ev = wait_count(&r, "kv_failed", 3).await.unwrap();
    assert!(
        ev.iter().any(|e| e.contains("slot-0.bin is missing")),
        "{ev:?}"
    );
    assert_eq!(talk.seen("action=restore"), 0);
}

#[tokio::test]
async fn a_restore_that_hangs_holds_the_model_no_longer_than_restore_timeout() {
    let Talk { _tmp, talk, r, .. } = talk_with(", restore_timeout: 1s", |_| {});
    served_and_saved(&r, "talk").await;
    talk.set(|f| f.restore = Act::Hang);
    // Were the restore waited for, this would wait out queue_timeout (30s) and fail.
    chat_ok(&r, "talk").await;
    let ev = wait_event(&r, "kv_failed talk").await;
    assert!(
        ev.iter().any(|e| e.contains("restore did not finish within kv_cache.restore_timeout (1s); the model serves without it")),
        "{ev:?}"
    );
    assert_eq!(talk.seen("action=restore"), 1);
}

#[tokio::test]
async fn the_cache_directory_stays_within_max_and_a_full_disk_only_costs_the_save() {
    let tmp = tempfile::tempdir().unwrap();
    let kv = tmp.path().join("kv");
    let (a, b) = (Llama::start(tmp.path(), "a"), Llama::start(tmp.path(), "b"));
    let cap = format!("{{dir: {}, max: 500kB}}", kv.display());
    let r = Router::start(&config(&[("a", a.backend(&cap)), ("b", b.backend(&cap))]));
    chat_ok(&r, "a").await;
    chat_ok(&r, "b").await; // a saved: 300 kB
    wait_event(&r, "kv_saved a").await;
    chat_ok(&r, "a").await; // b saved: 600 kB together, so a's older set goes
    let ev = wait_event(&r, "kv_saved b").await;
    assert!(
        ev.iter().any(|e| e.starts_with("kv_saved b")
            && e.contains("1 older set deleted to stay within kv_cache.max")),
        "{ev:?}"
    );
    let files = slot_files(&kv);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files.iter().map(|f| f.1).sum::<u64>() <= 500_000);

    // The disk is full: llama.cpp's save fails; the swap goes on.
    a.set(|f| f.save = Act::Fail(500));
    chat_ok(&r, "b").await;
    let ev = wait_event(&r, "kv_failed a").await;
    assert!(
        ev.iter()
            .any(|e| e.contains("save failed, the server stops without it") && e.contains("500")),
        "{ev:?}"
    );
    chat_ok(&r, "a").await;
}

#[tokio::test]
async fn a_model_loaded_and_let_go_unused_keeps_its_saved_conversation() {
    let Talk { _tmp, talk, r, .. } = talk_with("", |_| {});
    served_and_saved(&r, "talk").await;

    // Loaded (and restored) by a load that sends no chat: llama.cpp's /slots
    // then lists no task, though the slot holds the restored conversation.
    talk.set(|f| f.busy.clear());
    let load = client()
        .post(r.url("/admin/models/talk/load"))
        .send()
        .await
        .unwrap();
    assert!(load.status().is_success(), "{}", load.text().await.unwrap());
    wait_event(&r, "kv_restored talk").await;
    chat_ok(&r, "other").await;
    chat_ok(&r, "talk").await;
    let ev = wait_count(&r, "kv_restored", 2).await;
    assert!(ev.is_some(), "restored again: {:?}", kv_events(&r).await);
    assert_eq!(
        talk.seen("action=save"),
        1,
        "the set on disk was kept, not overwritten"
    );
}

#[tokio::test]
async fn each_slot_comes_back_into_the_id_it_was_saved_from() {
    // Four slots (--parallel 4); two conversations, in slots 1 and 3.
    let Talk { _tmp, talk, r, .. } = talk_with("", |f| {
        f.slots = 4;
        f.busy = vec![1, 3];
    });
    chat_ok(&r, "talk").await;
    swap_out_and_back(&r, "talk").await;
    let ev = wait_event(&r, "kv_restored talk").await;
    assert!(
        ev.iter()
            .any(|e| e.starts_with("kv_saved talk: slots 1, 3: 1000 tokens, 600 KB")),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e.starts_with("kv_restored talk: slots 1, 3: 1000 tokens, 600 KB")),
        "{ev:?}"
    );
    for id in [1, 3] {
        assert_eq!(talk.seen(&format!("POST /slots/{id}?action=save")), 1);
        assert_eq!(talk.seen(&format!("POST /slots/{id}?action=restore")), 1);
    }
    assert_eq!(
        talk.seen("/slots/0?"),
        0,
        "an empty slot is neither saved nor restored"
    );
    assert_eq!(talk.seen("/slots/2?"), 0);

    // The server comes back with fewer slots: what no longer has a slot stays out.
    talk.set(|f| f.slots = 2);
    swap_out_and_back(&r, "talk").await;
    let ev = wait_count(&r, "kv_restored", 2).await.unwrap_or_default();
    assert!(
        ev.iter()
            .any(|e| e.starts_with("kv_restored talk: slot 1: 500 tokens")),
        "{ev:?}"
    );
    assert_eq!(talk.seen("POST /slots/3?action=restore"), 1);
}

#[tokio::test]
async fn a_conversation_larger_than_max_is_not_kept() {
    let Talk { _tmp, kv, talk, r } = talk_with(", max: 100kB", |_| {});
    chat_ok(&r, "talk").await;
    chat_ok(&r, "other").await;
    let ev = wait_event(&r, "kv_failed talk").await;
    assert!(
        ev.iter()
            .any(|e| e.contains("saved 300 KB but deleted it: larger than kv_cache.max (100 KB)")),
        "{ev:?}"
    );
    assert!(slot_files(&kv).is_empty(), "{:?}", slot_files(&kv));
    chat_ok(&r, "talk").await;
    assert_eq!(talk.seen("action=restore"), 0);
    let s = get_json(&r.url("/admin/status")).await;
    let c = &s["kv_cache"]["talk"];
    assert_eq!(
        (c["saves"].as_u64(), c["failures"].as_u64()),
        (Some(0), Some(1)),
        "{s}"
    );
}
