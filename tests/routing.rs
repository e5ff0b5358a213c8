//! Requests that name their model somewhere other than a JSON body: multipart
//! uploads (by their `model` field, streamed), `GET …?model=`, `/upstream/{model}/…`
//! and `/v1/models/{alias}`; on simulated backends the router starts itself.

mod common;

use common::*;
use serde_json::Value;

const WHISPER: &str = "mlx-community/whisper-large-v3-turbo";
const BOUNDARY: &str = "----modelyardTestBoundary7MA4YWxkTrZu0gW";
const MB: usize = 1 << 20;

fn config(extra: &str) -> String {
    format!(
        r#"
budget: 1GB
queue_timeout: 20s
{extra}
backends:
  tools: {{command: [$BIN, sim, --port, "${{PORT}}", --model, "${{MODEL}}"], one_shot: true}}
  llm: {{command: [$BIN, sim, --port, "${{PORT}}", --model, "${{MODEL}}"]}}
models:
  whisper: {{backend: tools, upstream: {WHISPER}, memory: 10MB, aliases: [stt]}}
  sd: {{backend: tools, upstream: sd-turbo, memory: 10MB}}
  chat: {{backend: llm, memory: 10MB, aliases: [daily]}}
"#
    )
}

/// Bytes no compression or text handling would leave alone: every value, CRs and
/// LFs and dashes included.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn text_part(name: &str, value: &str) -> Vec<u8> {
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
        .into_bytes()
}

/// A file part up to its content.
fn file_head() -> Vec<u8> {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"take 1.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes()
}

fn file_part(data: &[u8]) -> Vec<u8> {
    let mut p = file_head();
    p.extend_from_slice(data);
    p.extend_from_slice(b"\r\n");
    p
}

fn close() -> Vec<u8> {
    format!("--{BOUNDARY}--\r\n").into_bytes()
}

fn content_type() -> String {
    format!("multipart/form-data; boundary=\"{BOUNDARY}\"")
}

async fn post_form(url: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(url)
        .header("content-type", content_type())
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Checks what the backend said it received: the file whole, the model renamed.
fn assert_arrived(reply: &Value, file: &[u8], upstream: &str) {
    let parts = reply["parts"].as_array().expect("parts");
    let model = parts.iter().find(|p| p["name"] == "model").expect("model");
    assert_eq!(model["value"], upstream, "the model field was renamed");
    let f = parts.iter().find(|p| p["name"] == "file").expect("file");
    assert_eq!(f["filename"], "take 1.wav");
    assert_eq!(f["bytes"], file.len(), "the whole file arrived");
    assert_eq!(f["fnv1a64"], fnv1a64(file), "byte for byte");
}

#[tokio::test]
async fn an_upload_reaches_its_model_byte_for_byte_with_the_field_renamed() {
    let r = Router::start(&config(""));
    let file = noise(8 * MB);

    // The model first, as the OpenAI SDKs send it, with a Content-Length.
    let body = [text_part("model", "stt"), file_part(&file), close()].concat();
    let sent = body.len();
    let resp = post_form(&r.url("/v1/audio/transcriptions"), body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "stt", "the reply names the model as asked");
    assert_arrived(&v, &file, WHISPER);
    assert_eq!(
        v["body_bytes"],
        sent - "stt".len() + WHISPER.len(),
        "the body grew by the longer name and nothing else"
    );
    // The length the backend was told matches what it got.
    let seen = get_json(&r.url("/upstream/whisper/sim/last-request")).await;
    assert_eq!(
        seen["headers"]["content-length"],
        (sent - 3 + WHISPER.len()).to_string()
    );

    // After the file, as `curl -F file=@… -F model=…` sends it, chunked.
    let body = [
        file_part(&file),
        text_part("prompt", "a lighthouse"),
        text_part("model", "sd"),
        close(),
    ]
    .concat();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = client()
        .post(r.url("/v1/images/edits"))
        .header("content-type", content_type())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_arrived(&v, &file, "sd-turbo");
    let seen = get_json(&r.url("/upstream/sd/sim/last-request")).await;
    assert_eq!(seen["path"], "/v1/images/edits");
    assert!(
        seen["headers"].get("content-length").is_none(),
        "no length in, none made up: {seen}"
    );
}

#[tokio::test]
async fn an_upload_is_routed_before_its_file_has_arrived() {
    let r = Router::start(&config(""));
    let file = noise(2 * MB);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tx.send(
        [
            text_part("model", "whisper"),
            file_head(),
            file[..MB].to_vec(),
        ]
        .concat(),
    )
    .unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (Ok::<_, std::io::Error>(c), rx))
    });
    let request = client()
        .post(r.url("/v1/audio/translations"))
        .header("content-type", content_type())
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let pending = tokio::spawn(request);
    // The backend starts and takes the request while half the file is still held
    // back by the client: the router did not wait for the body.
    let started = eventually(std::time::Duration::from_secs(20), || async {
        let s = get_json(&r.url("/admin/status")).await;
        let m = s["models"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == "whisper")?
            .clone();
        (m["in_flight"] == 1).then_some(m)
    })
    .await;
    assert!(started.is_some(), "whisper never took the request");
    let mut rest = file[MB..].to_vec();
    rest.extend_from_slice(b"\r\n");
    rest.extend_from_slice(&close());
    tx.send(rest).unwrap();
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let f = v["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "file")
        .unwrap()
        .clone();
    assert_eq!(f["fnv1a64"], fnv1a64(&file));
}

#[tokio::test]
async fn forms_without_a_usable_model_are_refused_in_openai_shape() {
    // Small enough that a refused body is already in the router's socket buffer,
    // so the 413 is read rather than lost to a reset.
    let r = Router::start(&config("max_body: 64KB"));
    let url = r.url("/v1/audio/transcriptions");
    let small = noise(1000);

    let resp = post_form(
        &url,
        [file_part(&small), text_part("language", "en"), close()].concat(),
    )
    .await;
    let msg = expect_error(resp, 400, "missing_model").await;
    assert!(msg.contains("model"), "{msg}");

    let resp = post_form(
        &url,
        [text_part("model", "whisperr"), file_part(&small), close()].concat(),
    )
    .await;
    let msg = expect_error(resp, 404, "model_not_found").await;
    assert!(msg.contains("did you mean `whisper`?"), "{msg}");

    // Past max_body with no model yet: the router will not hold more of the file.
    let over = noise(100_000);
    let resp = post_form(
        &url,
        [file_part(&over), text_part("model", "whisper"), close()].concat(),
    )
    .await;
    let msg = expect_error(resp, 413, "model_field_too_late").await;
    assert!(msg.contains("before the file"), "{msg}");
    // …but an upload with the model first streams whatever its size.
    let big = noise(2 * MB);
    let resp = post_form(
        &url,
        [text_part("model", "whisper"), file_part(&big), close()].concat(),
    )
    .await;
    assert_eq!(resp.status(), 200);

    let resp = client()
        .post(&url)
        .header("content-type", "multipart/form-data")
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "invalid_multipart").await;
    let resp = post_form(&url, b"--nope\r\n\r\n".to_vec()).await;
    expect_error(resp, 400, "invalid_multipart").await;
}

#[tokio::test]
async fn a_get_with_a_model_query_goes_to_that_model_renamed() {
    let r = Router::start(&config(""));
    let resp = get(&r.url("/v1/audio/voices?lang=en&model=stt&x=%2F")).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let seen = &v["request"];
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/v1/audio/voices");
    assert_eq!(
        seen["query"],
        "lang=en&model=mlx-community%2Fwhisper-large-v3-turbo&x=%2F"
    );
    let resp = get(&r.url("/v1/audio/voices?model=nope")).await;
    expect_error(resp, 404, "model_not_found").await;
    // Without a model a GET is still no route.
    let resp = get(&r.url("/v1/audio/voices")).await;
    expect_error(resp, 404, "unknown_route").await;
}

#[tokio::test]
async fn upstream_paths_reach_the_models_server_verbatim_and_load_it() {
    let r = Router::start(&config(""));
    let status = get_json(&r.url("/admin/status")).await;
    let sd = |s: &Value| {
        s["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "sd")
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(sd(&status), "cold");
    let body = noise(300_000);
    let resp = client()
        .put(r.url("/upstream/sd/sim/echo/a%20b/c?model=keep&z=1"))
        .header("authorization", "Bearer for-the-router")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let seen = &v["request"];
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/sim/echo/a%20b/c");
    assert_eq!(seen["query"], "model=keep&z=1", "the query goes as sent");
    assert_eq!(seen["body_fnv1a64"], fnv1a64(&body));
    assert!(seen["headers"].get("authorization").is_none());
    let status = get_json(&r.url("/admin/status")).await;
    assert_eq!(sd(&status), "ready");
    let idle_in = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "sd")
        .unwrap()["idle_unload_in_secs"]
        .as_u64()
        .unwrap();
    assert!(
        idle_in <= 60,
        "a one-shot tool goes after a minute, not {idle_in}s"
    );

    let resp = get(&r.url("/upstream/nope/health")).await;
    expect_error(resp, 404, "model_not_found").await;
}

#[tokio::test]
async fn client_keys_guard_upstream_paths_as_they_guard_v1() {
    let r = Router::start(&config("api_keys: [k-123]"));
    let resp = get(&r.url("/upstream/chat/health")).await;
    expect_error(resp, 401, "invalid_api_key").await;
    let resp = client()
        .get(r.url("/upstream/chat/health"))
        .header("authorization", "Bearer k-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_model_is_looked_up_by_its_alias() {
    let r = Router::start(&config(""));
    let v = get_json(&r.url("/v1/models/stt")).await;
    assert_eq!(v["id"], "stt");
    assert_eq!(v["alias_for"], "whisper");
}
