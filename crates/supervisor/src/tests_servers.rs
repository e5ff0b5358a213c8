//! Servers that load and unload models one by one (oMLX, Ollama), on the paused
//! clock with fake processes and a fake server API.

use std::time::Duration;

use tokio::time::{advance, Instant};

use crate::backends::{Report, Resident};
use crate::owner::Msg;
use crate::tests::{get, ledger, phase, start, GB, LOAD, STOP};
use crate::SupervisorError;

/// The seed's oMLX and Ollama, on fake processes.
const SERVERS: &str = r#"
budget: 48GB
idle_timeout: 10m
backends:
  omlx: {kind: omlx, command: [fake, "${PORT}"], memory: 1GB}
  ollama: {kind: ollama, command: [fake, "${PORT}"]}
models:
  daily: {backend: omlx, memory: 32GB, group: large}
  code:  {backend: omlx, memory: 35GB, group: large}
  embed: {backend: ollama, memory: 1.2GB}
  small: {backend: ollama, memory: 5.5GB, idle_timeout: 1m}
"#;

#[tokio::test(start_paused = true)]
async fn one_server_loads_each_model_through_its_api() {
    let (s, fake) = start(SERVERS);
    drop(get(&s, "embed").await);
    drop(get(&s, "small").await);
    assert_eq!(fake.count("ollama"), 1, "one server for both");
    assert_eq!(
        fake.ops(),
        vec![("embed".into(), false), ("small".into(), false)]
    );
    assert_eq!(ledger(&s).await.1, vec!["embed", "small"]);
    let snap = s.snapshot().await.unwrap();
    let took = snap.model("small").unwrap().typical_load.unwrap();
    assert_eq!(took, LOAD, "a load on a running server is the load alone");
    let took = snap.model("embed").unwrap().typical_load.unwrap();
    assert_eq!(took, LOAD * 2, "the first also waited for the server");
}

#[tokio::test(start_paused = true)]
async fn an_idle_model_is_unloaded_alone_and_the_server_stops_with_its_last() {
    let (s, fake) = start(SERVERS);
    drop(get(&s, "embed").await);
    drop(get(&s, "small").await);
    ledger(&s).await;
    advance(Duration::from_secs(61)).await;
    tokio::time::sleep(STOP * 2).await;
    assert_eq!(ledger(&s).await.1, vec!["embed"], "small idled out alone");
    assert_eq!(fake.ops().last(), Some(&("small".into(), true)));
    assert_eq!(fake.count("ollama"), 1, "the server kept running");
    advance(Duration::from_secs(10 * 60)).await;
    tokio::time::sleep(STOP * 4).await;
    assert_eq!(ledger(&s).await, (0, vec![]));
    // The server was stopped: the next request starts it again.
    drop(get(&s, "embed").await);
    assert_eq!(fake.count("ollama"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_group_swap_unloads_then_loads_on_the_same_server() {
    let (s, fake) = start(SERVERS);
    drop(get(&s, "daily").await);
    assert_eq!(ledger(&s).await.0, 33 * GB, "daily and oMLX's own 1 GB");
    drop(get(&s, "code").await);
    assert_eq!(ledger(&s).await, (36 * GB, vec!["code".to_string()]));
    assert_eq!(fake.count("omlx"), 1, "no restart for a swap");
    assert_eq!(
        fake.ops(),
        vec![
            ("daily".into(), false),
            ("daily".into(), true),
            ("code".into(), false)
        ],
        "unloaded before the other loads"
    );
}

#[tokio::test(start_paused = true)]
async fn a_load_the_server_refuses_fails_its_waiters_and_frees_the_reservation() {
    let (s, fake) = start(SERVERS);
    fake.refuse("code");
    let err = s.acquire("code", crate::tests::soon()).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::StartFailed { reason, .. } if reason.contains("no such model")),
        "{err}"
    );
    tokio::time::sleep(STOP * 2).await;
    assert_eq!(ledger(&s).await.0, 0, "and the idle server stopped");
}

#[tokio::test(start_paused = true)]
async fn the_ledger_follows_what_the_server_says_it_holds() {
    let (s, fake) = start(SERVERS);
    drop(get(&s, "embed").await);
    drop(get(&s, "small").await);
    let generation = fake.latest("ollama").unwrap();
    // A report asked for before a load finished says nothing about that load.
    advance(Duration::from_secs(1)).await;
    let mut events = s.subscribe();
    let report = |names: &[&str]| Msg::Reported {
        key: "ollama".into(),
        generation,
        asked: Instant::now(),
        report: Ok(Report {
            resident: Some(
                names
                    .iter()
                    .map(|n| Resident {
                        name: format!("{n}:latest"),
                        bytes: Some(GB),
                    })
                    .collect(),
            ),
            context_window: None,
            listed: None,
        }),
    };
    // Ollama dropped small on its own: the ledger lets it go.
    s.tx.send(report(&["embed"])).unwrap();
    let (_, loaded) = ledger(&s).await;
    assert_eq!(loaded, vec!["embed"]);
    let e = events.recv().await.unwrap();
    assert_eq!((e.kind.as_str(), e.model.as_str()), ("unloaded", "small"));
    assert!(e.detail.contains("on its own"), "{}", e.detail);
    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        snap.model("embed").unwrap().measured,
        Some(GB),
        "its size as reported"
    );
    // Another client loaded small: adopted, since it fits.
    s.tx.send(report(&["embed", "small"])).unwrap();
    assert_eq!(ledger(&s).await.1, vec!["embed", "small"]);
}

#[tokio::test(start_paused = true)]
async fn a_server_we_do_not_start_still_has_its_models_loaded_and_counted() {
    let (s, fake) = start(
        r#"
budget: 8GB
backends:
  ollama: {kind: ollama, url: "http://127.0.0.1:1"}
models:
  a: {backend: ollama, memory: 5GB}
  b: {backend: ollama, memory: 5GB}
"#,
    );
    drop(get(&s, "a").await);
    assert_eq!(ledger(&s).await, (5 * GB, vec!["a".to_string()]));
    drop(get(&s, "b").await);
    assert_eq!(ledger(&s).await, (5 * GB, vec!["b".to_string()]));
    assert_eq!(fake.count("ollama"), 0, "never started");
    assert_eq!(
        fake.ops(),
        vec![("a".into(), false), ("a".into(), true), ("b".into(), false)]
    );
    // What we loaded there is unloaded when the router stops.
    s.shutdown().await;
    assert_eq!(fake.ops().last(), Some(&("b".into(), true)));
}

/// The machine says this much is available (and our fakes hold nothing measurable).
async fn available(s: &crate::Supervisor, bytes: u64) {
    s.tx.send(Msg::Measured {
        samples: vec![],
        available: Some(bytes),
    })
    .unwrap();
    ledger(s).await;
}

const RESERVED: &str = r#"
budget: 48GB
reserve: 16GB
idle_timeout: 10m
queue_timeout: 30s
backends:
  p: {command: [fake, "${PORT}"]}
models:
  daily: {backend: p, memory: 32GB, group: large}
  embed: {backend: p, memory: 2GB}
  small: {backend: p, memory: 6GB}
"#;

#[tokio::test(start_paused = true)]
async fn short_free_memory_unloads_idle_models_first_and_never_busy_ones() {
    let (s, _) = start(RESERVED);
    available(&s, 60 * GB).await;
    drop(get(&s, "embed").await);
    advance(Duration::from_secs(1)).await;
    drop(get(&s, "small").await);
    let busy = get(&s, "daily").await;
    assert_eq!(ledger(&s).await.0, 40 * GB);
    // An app took memory: 36 GB available + 0 measured of ours - 16 = 20 GB.
    let mut events = s.subscribe();
    available(&s, 36 * GB).await;
    tokio::time::sleep(STOP * 2).await;
    let (used, loaded) = ledger(&s).await;
    assert_eq!(
        loaded,
        vec!["daily"],
        "the idle ones went, the busy one stayed"
    );
    assert_eq!(used, 32 * GB);
    // First the budget, and why; then what goes for it.
    let e = events.recv().await.unwrap();
    assert_eq!(
        (e.kind.as_str(), e.detail.as_str()),
        (
            "budget",
            "down to 20 GB (routes.yaml says 48 GB): 36 GB available, 16 GB reserved for the system"
        )
    );
    let e = events.recv().await.unwrap();
    assert_eq!(e.kind, "evicting");
    assert_eq!(e.reason, Some(crate::Reason::MemoryPressure));
    assert!(e.detail.contains("free memory is short"), "{}", e.detail);
    // Kept for whoever looks later, the unload with its reason too.
    let recent = s.recent_events();
    assert!(
        recent.iter().any(|e| e.kind == "unloaded"
            && e.detail
                .starts_with("free memory is short: 36 GB available")),
        "{recent:?}"
    );
    let snap = s.snapshot().await.unwrap();
    assert_eq!((snap.budget, snap.configured_budget), (20 * GB, 48 * GB));
    assert_eq!(snap.available, Some(36 * GB));

    // A new load waits for room, and says why.
    let err = s
        .acquire("small", Instant::now() + Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("down from 48 GB"), "{err}");
    // Memory is back: the budget follows, and loads fit again.
    drop(busy);
    available(&s, 60 * GB).await;
    assert_eq!(s.snapshot().await.unwrap().budget, 44 * GB);
    let e = s.recent_events().pop().unwrap();
    assert_eq!(
        (e.kind.as_str(), e.detail.as_str()),
        (
            "budget",
            "up to 44 GB (routes.yaml says 48 GB): 60 GB available, 16 GB reserved for the system"
        )
    );
    // A few MB more or less free is not news.
    available(&s, 60 * GB + 500_000_000).await;
    assert_eq!(s.recent_events().last().unwrap().detail, e.detail);
    drop(get(&s, "small").await);
}

#[tokio::test(start_paused = true)]
async fn without_a_reserve_the_budget_is_the_configured_one_whatever_is_free() {
    let (s, _) = start(&RESERVED.replace("reserve: 16GB\n", ""));
    drop(get(&s, "embed").await);
    available(&s, GB).await;
    let snap = s.snapshot().await.unwrap();
    assert_eq!((snap.budget, snap.available), (48 * GB, None));
    assert_eq!(ledger(&s).await.1, vec!["embed"]);
}

/// A load Ollama refused, then a good one, served and unloaded cleanly: the
/// next refusal is the first of a new run, not the second "in a row" (no
/// backoff), as a clean stop of a process of its own ends a run too.
#[tokio::test(start_paused = true)]
async fn a_clean_unload_ends_a_run_of_failed_loads() {
    let (s, fake) = start(SERVERS);
    // embed keeps the server up throughout.
    drop(get(&s, "embed").await);
    let refused = |s: crate::Supervisor| async move {
        let err = s.acquire("small", crate::tests::soon()).await.unwrap_err();
        assert!(matches!(&err, SupervisorError::StartFailed { .. }), "{err}");
    };
    fake.refuse("small");
    refused(s.clone()).await;
    fake.accept("small");
    drop(get(&s, "small").await);
    assert_eq!(s.unload(Some("small")).await.unwrap(), vec!["small"]);
    tokio::time::sleep(STOP * 2).await;
    assert_eq!(phase(&s, "small").await, crate::policy::Phase::Cold);
    fake.refuse("small");
    refused(s.clone()).await;
    let snap = s.snapshot().await.unwrap();
    let small = snap.model("small").unwrap();
    assert_eq!(small.failures, 1, "a new run of failures");
    assert_eq!(small.phase, crate::policy::Phase::Cold, "no backoff");
    assert_eq!(fake.count("ollama"), 1);
}
