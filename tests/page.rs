//! The status page in a real browser: headless Chromium driven by Playwright.

mod common;

use std::process::Command;

use common::*;

#[tokio::test]
async fn the_status_page_shows_and_steers_the_router_live() {
    let r = Router::start(
        r#"
budget: 300MB
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}"]}
models:
  big-a: {backend: sim, memory: 200MB, group: large, aliases: [a], args: [--memory, 100MB]}
  big-b: {backend: sim, memory: 200MB, group: large, aliases: [b], args: [--memory, 100MB]}
  kept: {backend: sim, memory: 30MB, pinned: true, args: [--memory, 5MB]}
"#,
    );
    let page = client().get(r.url("/")).send().await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "self-contained: nothing fetched from elsewhere"
    );

    // The icon browsers ask for on every view: an answer, not a logged refusal.
    assert_eq!(get(&r.url("/favicon.ico")).await.status(), 204);
    assert!(!r.logs().contains("refused"), "{}", r.logs());

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/page_check.py");
    let (url, shot2) = (r.url.clone(), shot.clone());
    let browser = chromium();
    let py = python_with("playwright", "playwright==1.65.2");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .arg(&url)
            .arg(&shot2)
            .arg(&browser)
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("page ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot was taken"
    );
}
