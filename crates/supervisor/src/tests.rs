//! The owner's decisions on tokio's paused clock, with fake processes whose start
//! and stop take virtual time. No sleeps, no real processes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelyard_config::load_str;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{advance, Instant};

use crate::effects::{Effects, Handle, Launch, ModelOp};
use crate::owner::{InstanceKey, Msg};
use crate::policy::Phase;
use crate::process::ExitInfo;
use crate::{Lease, Supervisor, SupervisorError};

pub(crate) const GB: u64 = 1_000_000_000;
pub(crate) const LOAD: Duration = Duration::from_secs(2);
pub(crate) const STOP: Duration = Duration::from_millis(300);

#[derive(Clone, Default)]
pub(crate) struct Fake {
    /// Every launch: (instance, generation).
    launches: Arc<Mutex<Vec<(InstanceKey, u64)>>>,
    ops: Arc<Mutex<Vec<(String, bool)>>>,
    /// Loads of these models fail.
    refuse: Arc<Mutex<Vec<String>>>,
}

struct FakeHandle {
    key: InstanceKey,
    generation: u64,
    tx: UnboundedSender<Msg>,
    stopped: bool,
}

impl Handle for FakeHandle {
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let (key, generation, tx) = (self.key.clone(), self.generation, self.tx.clone());
        tokio::spawn(async move {
            tokio::time::sleep(STOP).await;
            let info = ExitInfo {
                status: None,
                requested: true,
            };
            let _ = tx.send(Msg::Exited {
                key,
                generation,
                info: Some(info),
            });
        });
    }
    fn pid(&self) -> Option<u32> {
        None
    }
}

impl Effects for Fake {
    fn start(&mut self, l: Launch, tx: UnboundedSender<Msg>) -> Result<Box<dyn Handle>, String> {
        self.launches
            .lock()
            .unwrap()
            .push((l.key.clone(), l.generation));
        let (key, generation, done) = (l.key.clone(), l.generation, tx.clone());
        tokio::spawn(async move {
            tokio::time::sleep(LOAD).await;
            let _ = done.send(Msg::StartDone {
                key,
                generation,
                result: Ok(()),
            });
        });
        Ok(Box::new(FakeHandle {
            key: l.key,
            generation: l.generation,
            tx,
            stopped: false,
        }))
    }

    fn model_op(&mut self, op: ModelOp, tx: UnboundedSender<Msg>) {
        self.ops
            .lock()
            .unwrap()
            .push((op.model.to_string(), op.unload));
        let refused = !op.unload && self.refuse.lock().unwrap().contains(&op.target.upstream);
        tokio::spawn(async move {
            tokio::time::sleep(if op.unload { STOP } else { LOAD }).await;
            let _ = tx.send(Msg::ModelDone {
                model: op.model,
                generation: op.generation,
                unload: op.unload,
                result: if refused {
                    Err("no such model".into())
                } else {
                    Ok(())
                },
            });
        });
    }
}

impl Fake {
    /// Loads of `upstream` fail (the server says it has no such model).
    pub(crate) fn refuse(&self, upstream: &str) {
        self.refuse.lock().unwrap().push(upstream.to_string());
    }

    /// Loads of `upstream` succeed again.
    pub(crate) fn accept(&self, upstream: &str) {
        self.refuse.lock().unwrap().retain(|u| u != upstream);
    }

    /// Every load and unload asked of a server: (model, unload).
    pub(crate) fn ops(&self) -> Vec<(String, bool)> {
        self.ops.lock().unwrap().clone()
    }

    pub(crate) fn count(&self, instance: &str) -> usize {
        self.launches
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| &**k == instance)
            .count()
    }

    fn generation(&self, instance: &str) -> u64 {
        self.latest(instance).unwrap()
    }

    pub(crate) fn latest(&self, instance: &str) -> Option<u64> {
        let launches = self.launches.lock().unwrap();
        launches
            .iter()
            .rev()
            .find(|(k, _)| &**k == instance)
            .map(|(_, g)| *g)
    }
}

/// The seed's machine on fake processes.
pub(crate) const SEED: &str = r#"
budget: 48GB
idle_timeout: 10m
queue_timeout: 2m
max_queue: 20
backends:
  p: {command: [fake, "${PORT}"]}
models:
  daily: {backend: p, memory: 32GB, group: large}
  code:  {backend: p, memory: 35GB, group: large}
  deep:  {backend: p, memory: 41GB, group: large}
  embed: {backend: p, memory: 1.2GB}
  small: {backend: p, memory: 5.5GB}
  keep:  {backend: p, memory: 2GB, pinned: true}
"#;

pub(crate) fn start(yaml: &str) -> (Supervisor, Fake) {
    let config = load_str("test", yaml).unwrap().config;
    let fake = Fake::default();
    (
        Supervisor::with_effects(Arc::new(config), fake.clone()),
        fake,
    )
}

pub(crate) fn soon() -> Instant {
    Instant::now() + Duration::from_secs(120)
}

/// An acquire that waits in the background, as a client would.
pub(crate) fn acquire_later(
    s: &Supervisor,
    model: &'static str,
) -> tokio::task::JoinHandle<Result<Lease, SupervisorError>> {
    let s = s.clone();
    tokio::spawn(async move { s.acquire(model, soon()).await })
}

pub(crate) async fn phase(s: &Supervisor, model: &str) -> Phase {
    s.snapshot().await.unwrap().model(model).unwrap().phase
}

/// Every state change the owner made so far, and any it refused.
pub(crate) async fn audit(s: &Supervisor) -> crate::lifecycle::Audit {
    let (reply, rx) = tokio::sync::oneshot::channel();
    s.tx.send(Msg::Audit { reply }).unwrap();
    rx.await.unwrap()
}

/// Two people at one router, as the proxy tells clients apart.
pub(crate) const ALICE: u64 = 1;
pub(crate) const BOB: u64 = 2;

/// A lease asked for by `client` at the default (interactive) priority.
pub(crate) async fn get_as(s: &Supervisor, model: &str, client: u64) -> Lease {
    let ask = crate::Ask {
        client,
        ..Default::default()
    };
    s.acquire_as(model, soon(), ask)
        .await
        .unwrap_or_else(|e| panic!("{model}: {e}"))
}

/// [`acquire_later`] for a given client.
pub(crate) fn acquire_later_as(
    s: &Supervisor,
    model: &'static str,
    client: u64,
) -> tokio::task::JoinHandle<Result<Lease, SupervisorError>> {
    let s = s.clone();
    let ask = crate::Ask {
        client,
        ..Default::default()
    };
    tokio::spawn(async move { s.acquire_as(model, soon(), ask).await })
}

pub(crate) async fn get(s: &Supervisor, model: &str) -> Lease {
    s.acquire(model, soon())
        .await
        .unwrap_or_else(|e| panic!("{model}: {e}"))
}

/// Checks the invariant and returns (used bytes, loaded models). While free
/// memory is short the budget may fall below what busy models already hold;
/// the configured budget is never exceeded.
pub(crate) async fn ledger(s: &Supervisor) -> (u64, Vec<String>) {
    audit(s).await.check();
    let snap = s.snapshot().await.unwrap();
    let used: u64 = snap.models.iter().map(|m| m.reserved).sum();
    assert_eq!(used + snap.servers, snap.used);
    let budget = if snap.budget < snap.configured_budget {
        snap.configured_budget
    } else {
        snap.budget
    };
    assert!(
        snap.used <= budget,
        "ledger {} above budget {}",
        snap.used,
        budget
    );
    let large = snap
        .models
        .iter()
        .filter(|m| ["daily", "code", "deep"].contains(&m.name.as_str()) && m.reserved > 0)
        .count();
    assert!(large <= 1, "two models of one group hold memory: {snap:?}");
    let loaded = snap
        .models
        .iter()
        .filter(|m| m.reserved > 0)
        .map(|m| m.name.clone())
        .collect();
    (snap.used, loaded)
}

#[tokio::test(start_paused = true)]
async fn swap_never_exceeds_budget() {
    let (s, fake) = start(SEED);
    for model in [
        "daily", "embed", "code", "small", "deep", "daily", "keep", "deep", "code",
    ] {
        let lease = get(&s, model).await;
        ledger(&s).await;
        drop(lease);
    }
    let (used, loaded) = ledger(&s).await;
    assert!(
        loaded.contains(&"code".to_string()) && loaded.contains(&"keep".to_string()),
        "{loaded:?}"
    );
    assert!(used <= 48 * GB);
    assert_eq!(
        fake.count("p/daily"),
        2,
        "daily was unloaded for code, then loaded again"
    );
}

#[tokio::test(start_paused = true)]
async fn one_swap_serves_every_queued_request_of_the_incoming_model() {
    let (s, fake) = start(SEED);
    let daily = get(&s, "daily").await;
    let waiting: Vec<_> = (0..5).map(|_| acquire_later(&s, "deep")).collect();
    tokio::task::yield_now().await;
    // deep waits while daily is busy; daily takes no new work.
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.model("daily").unwrap().phase, Phase::Draining);
    assert_eq!(snap.model("deep").unwrap().queued, 5);
    drop(daily);
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    assert_eq!(fake.count("p/deep"), 1, "one start served all five");
    ledger(&s).await;
}

#[tokio::test(start_paused = true)]
async fn a_model_draining_for_a_swap_serves_its_own_requests_only_for_max_swap_delay() {
    let (s, fake, daily, deep) = daily_draining_for_deep().await;
    // Within max_swap_delay (10 s): still loaded, so served now rather than after two swaps.
    advance(Duration::from_secs(3)).await;
    let early = s
        .acquire("daily", soon())
        .await
        .expect("served by the draining model");
    drop(early);
    // Past it: the swap goes ahead; new requests for daily wait for it to come back.
    advance(Duration::from_secs(8)).await;
    let late = acquire_later(&s, "daily");
    tokio::task::yield_now().await;
    assert!(
        !late.is_finished(),
        "past max_swap_delay a draining model takes no new work"
    );
    drop(daily);
    let deep = deep.await.unwrap().unwrap();
    assert_eq!(fake.count("p/daily"), 1);
    drop(deep);
    late.await.unwrap().unwrap();
    assert_eq!(fake.count("p/daily"), 2, "daily came back after deep");
    ledger(&s).await;
}

#[tokio::test(start_paused = true)]
async fn a_model_in_a_burst_keeps_serving_it_before_a_swap_for_at_most_its_load_time_of_quiet() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", ALICE).await);
    // Two requests closer together than its load (2 s), from two people: a burst.
    advance(Duration::from_millis(500)).await;
    drop(get_as(&s, "daily", BOB).await);
    advance(Duration::from_millis(500)).await;
    let deep = acquire_later_as(&s, "deep", ALICE);
    tokio::task::yield_now().await;
    // Bob's burst may go on: swapping now and back would cost a load (2 s) more.
    advance(Duration::from_secs(1)).await;
    drop(get_as(&s, "daily", BOB).await);
    advance(Duration::from_millis(1900)).await;
    assert_eq!(fake.count("p/deep"), 0, "quiet for less than a load");
    assert!(!deep.is_finished());
    // Quiet for as long as a load: the swap goes ahead, once.
    advance(Duration::from_millis(200)).await;
    let deep = deep.await.unwrap().unwrap();
    assert_eq!((fake.count("p/daily"), fake.count("p/deep")), (1, 1));
    drop(deep);
    ledger(&s).await;
}

#[tokio::test(start_paused = true)]
async fn a_linger_that_ends_while_a_message_is_handled_still_ends() {
    use futures_util::FutureExt;
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", ALICE).await);
    advance(Duration::from_millis(500)).await;
    drop(get_as(&s, "daily", BOB).await);
    let deep = acquire_later_as(&s, "deep", ALICE);
    tokio::task::yield_now().await;
    // daily lingers for a load's time (2 s) of quiet. Its end comes with a
    // message waiting, which the owner takes first.
    advance(Duration::from_millis(1990)).await;
    assert!(!deep.is_finished());
    let _ = s.snapshot().now_or_never();
    advance(Duration::from_millis(20)).await;
    let ended = Instant::now();
    drop(deep.await.unwrap().unwrap());
    assert!(
        ended.elapsed() <= STOP + LOAD + Duration::from_millis(100),
        "the swap waited {:?} past the linger's end",
        ended.elapsed()
    );
    assert_eq!(fake.count("p/deep"), 1);
    ledger(&s).await;
}

#[tokio::test(start_paused = true)]
async fn a_model_the_user_moved_away_from_is_swapped_out_at_once() {
    let (s, fake) = start(SEED);
    drop(get(&s, "daily").await);
    advance(Duration::from_secs(5)).await;
    drop(get(&s, "daily").await);
    // One request, then another model: no burst to wait out.
    advance(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let deep = get(&s, "deep").await;
    assert_eq!(fake.count("p/deep"), 1);
    assert!(
        asked.elapsed() <= STOP + LOAD + Duration::from_millis(100),
        "a stop and a load, no lingering: {:?}",
        asked.elapsed()
    );
    drop(deep);
    ledger(&s).await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_that_never_pauses_yields_after_max_swap_delay() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", BOB).await);
    drop(get_as(&s, "daily", BOB).await);
    let deep = acquire_later_as(&s, "deep", ALICE);
    tokio::task::yield_now().await;
    // Bob goes on: a request a second, never a pause as long as a load (2 s).
    let mut served = 0;
    let mut deep_loaded_at = None;
    for second in 1..=15 {
        let daily = acquire_later_as(&s, "daily", BOB);
        advance(Duration::from_millis(100)).await;
        if daily.is_finished() {
            served += 1;
            drop(daily.await.unwrap().unwrap());
        } else {
            daily.abort();
        }
        advance(Duration::from_millis(900)).await;
        if fake.count("p/deep") == 1 && deep_loaded_at.is_none() {
            deep_loaded_at = Some(second);
        }
    }
    // max_swap_delay (10 s), then the stop (0.3 s) and deep's load (2 s).
    assert_eq!(deep_loaded_at, Some(12), "deep's wait is bounded");
    assert_eq!(served, 10, "daily served its burst until then");
    drop(deep.await.unwrap().unwrap());
    assert_eq!(fake.count("p/deep"), 1);
    ledger(&s).await;
}

/// The seed's user in Open WebUI: a chat, then its title and tags requests
/// within 300 ms, a pause, then another model. Each switch costs one stop and
/// one load: nobody else uses the model they left, so nothing lingers.
#[tokio::test(start_paused = true)]
async fn one_person_with_a_bursty_client_pays_one_load_per_switch() {
    let (s, fake) = start(SEED);
    let models = ["daily", "code", "deep", "daily", "code", "deep"];
    for (i, model) in models.into_iter().enumerate() {
        let asked = Instant::now();
        drop(get_as(&s, model, ALICE).await);
        let switch = asked.elapsed();
        if i > 0 {
            assert!(
                switch <= STOP + LOAD + Duration::from_millis(20),
                "switch {i} to {model} took {switch:?}: more than a stop and a load"
            );
        }
        // The two follow-ups, 150 ms apart: a burst, but one person's.
        for _ in 0..2 {
            advance(Duration::from_millis(150)).await;
            drop(get_as(&s, model, ALICE).await);
        }
        advance(Duration::from_secs(3)).await;
    }
    let loads = ["p/daily", "p/code", "p/deep"].map(|m| fake.count(m));
    assert_eq!(loads, [2, 2, 2], "one load per switch");
    ledger(&s).await;
}

/// Bob still uses daily when Alice moves to deep: his request during the swap
/// is served, and daily stays for a load's time after it before it goes.
#[tokio::test(start_paused = true)]
async fn a_request_from_another_person_during_the_swap_keeps_the_model_a_while() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", ALICE).await);
    advance(Duration::from_secs(5)).await;
    // Alice's long answer is still streaming when she asks for deep.
    let long = get_as(&s, "daily", ALICE).await;
    let deep = acquire_later_as(&s, "deep", ALICE);
    tokio::task::yield_now().await;
    advance(Duration::from_millis(100)).await;
    drop(get_as(&s, "daily", BOB).await);
    drop(long);
    // Bob's request was evidence: daily waits out a load's time (2 s) for more.
    advance(Duration::from_millis(1500)).await;
    drop(get_as(&s, "daily", BOB).await);
    assert_eq!(fake.count("p/deep"), 0, "daily still lingers for Bob");
    advance(Duration::from_millis(2100)).await;
    assert!(!deep.is_finished(), "deep's load is under way");
    drop(deep.await.unwrap().unwrap());
    assert_eq!((fake.count("p/daily"), fake.count("p/deep")), (1, 1));
    ledger(&s).await;
}

/// Two people taking turns: Bob's request for daily is being answered when
/// Alice asks for deep. Bob uses daily, so it stays while he does; his next
/// request, 150 ms after his answer, is served with no swap back and forth.
#[tokio::test(start_paused = true)]
async fn another_person_s_request_being_answered_when_the_swap_is_decided_keeps_the_model() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", BOB).await);
    advance(Duration::from_secs(5)).await;
    let bobs = get_as(&s, "daily", BOB).await;
    // Admitted before the swap is decided: not a request "during the swap".
    advance(Duration::from_millis(10)).await;
    let deep = acquire_later_as(&s, "deep", ALICE);
    tokio::task::yield_now().await;
    advance(Duration::from_millis(40)).await;
    drop(bobs);
    advance(Duration::from_millis(150)).await;
    let asked = Instant::now();
    drop(get_as(&s, "daily", BOB).await);
    assert_eq!(asked.elapsed(), Duration::ZERO, "daily still serves Bob");
    assert_eq!(fake.count("p/deep"), 0, "daily lingers while Bob uses it");
    drop(deep.await.unwrap().unwrap());
    assert_eq!((fake.count("p/daily"), fake.count("p/deep")), (1, 1));
    ledger(&s).await;
}

/// Bob's request for daily ended a while ago; Alice's long answer is still
/// streaming when she asks for deep. Nobody but Alice is being answered, so
/// daily goes the moment her answer ends: an old request is no evidence.
#[tokio::test(start_paused = true)]
async fn another_person_s_finished_request_keeps_nothing() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", BOB).await);
    advance(Duration::from_secs(5)).await;
    let long = get_as(&s, "daily", ALICE).await;
    let asked = Instant::now();
    let deep = acquire_later_as(&s, "deep", ALICE);
    tokio::task::yield_now().await;
    advance(Duration::from_millis(100)).await;
    drop(long);
    drop(deep.await.unwrap().unwrap());
    assert!(
        asked.elapsed() <= Duration::from_millis(100) + STOP + LOAD + Duration::from_millis(20),
        "no lingering: {:?}",
        asked.elapsed()
    );
    assert_eq!(fake.count("p/deep"), 1);
    ledger(&s).await;
}

/// Bob's long answer from daily is still streaming when Alice, who sent two
/// quick requests to daily since, asks for deep. Bob is being answered when
/// the swap is decided, whoever was admitted last: daily stays a while after
/// his answer, and his next request, 150 ms later, is served with no swap.
#[tokio::test(start_paused = true)]
async fn another_person_s_request_in_flight_keeps_the_model_whoever_came_last() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", BOB).await);
    advance(Duration::from_secs(5)).await;
    let bobs = get_as(&s, "daily", BOB).await;
    for _ in 0..2 {
        advance(Duration::from_millis(10)).await;
        drop(get_as(&s, "daily", ALICE).await);
    }
    advance(Duration::from_millis(10)).await;
    let deep = acquire_later_as(&s, "deep", ALICE);
    tokio::task::yield_now().await;
    advance(Duration::from_millis(40)).await;
    drop(bobs);
    advance(Duration::from_millis(150)).await;
    let asked = Instant::now();
    drop(get_as(&s, "daily", BOB).await);
    assert_eq!(asked.elapsed(), Duration::ZERO, "daily still serves Bob");
    assert_eq!(fake.count("p/deep"), 0, "daily lingers while Bob uses it");
    drop(deep.await.unwrap().unwrap());
    assert_eq!((fake.count("p/daily"), fake.count("p/deep")), (1, 1));
    ledger(&s).await;
}

/// The same request from the same person during the swap is no such evidence.
#[tokio::test(start_paused = true)]
async fn the_mover_s_own_request_during_the_swap_keeps_nothing() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", ALICE).await);
    advance(Duration::from_secs(5)).await;
    let long = get_as(&s, "daily", ALICE).await;
    let asked = Instant::now();
    let deep = acquire_later_as(&s, "deep", ALICE);
    tokio::task::yield_now().await;
    advance(Duration::from_millis(100)).await;
    drop(get_as(&s, "daily", ALICE).await);
    drop(long);
    drop(deep.await.unwrap().unwrap());
    assert!(
        asked.elapsed() <= Duration::from_millis(100) + STOP + LOAD + Duration::from_millis(20),
        "no lingering: {:?}",
        asked.elapsed()
    );
    assert_eq!(fake.count("p/deep"), 1);
    ledger(&s).await;
}

/// A background request (an indexer's, say) that waits in the background.
fn background_later(
    s: &Supervisor,
    model: &'static str,
    patience: Duration,
) -> tokio::task::JoinHandle<Result<Lease, SupervisorError>> {
    let s = s.clone();
    let ask = crate::Ask {
        client: 99,
        priority: crate::Priority::Background,
    };
    tokio::spawn(async move { s.acquire_as(model, Instant::now() + patience, ask).await })
}

async fn queued(s: &Supervisor, model: &str) -> (usize, usize) {
    let snap = s.snapshot().await.unwrap();
    let m = snap.model(model).unwrap();
    (m.queued, m.queued_background)
}

/// Alice chatted with daily a moment ago; an indexer asks for deep, which
/// only evicting daily would make room for. It waits out her grace
/// (interactive_grace, 60 s), then deep loads.
#[tokio::test(start_paused = true)]
async fn background_work_never_evicts_a_model_a_person_uses_and_runs_once_they_are_done() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", ALICE).await);
    advance(Duration::from_secs(10)).await;
    let job = background_later(&s, "deep", Duration::from_secs(600));
    advance(Duration::from_secs(40)).await;
    assert_eq!(queued(&s, "deep").await, (1, 1));
    assert_eq!(
        phase(&s, "daily").await,
        Phase::Ready,
        "daily stays for Alice"
    );
    assert_eq!(fake.count("p/deep"), 0);
    // Alice asks again 50 s after her first: her grace starts over.
    drop(get_as(&s, "daily", ALICE).await);
    advance(Duration::from_secs(59)).await;
    assert_eq!(fake.count("p/deep"), 0, "within 60 s of her last request");
    advance(Duration::from_secs(1) + STOP + LOAD).await;
    drop(job.await.unwrap().expect("served once the grace ran out"));
    assert_eq!(fake.count("p/deep"), 1);
    ledger(&s).await;
}

/// Background work is served at once by a model already loaded, and may
/// take free memory; only evictions are a person's to cause.
#[tokio::test(start_paused = true)]
async fn background_work_takes_what_is_loaded_or_free() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", ALICE).await);
    let asked = Instant::now();
    let embed = background_later(&s, "embed", Duration::from_secs(600));
    drop(embed.await.unwrap().expect("fits beside daily"));
    assert_eq!(asked.elapsed(), LOAD);
    let again = background_later(&s, "daily", Duration::from_secs(1));
    drop(
        again
            .await
            .unwrap()
            .expect("daily is loaded: served at once"),
    );
    assert_eq!(fake.count("p/daily"), 1);
    ledger(&s).await;
}

/// A background request that waits past its background_queue_timeout gets
/// `Yielded`, which says why.
#[tokio::test(start_paused = true)]
async fn background_work_that_waits_too_long_says_it_yielded() {
    let (s, fake) = start(SEED);
    let chat = get_as(&s, "daily", ALICE).await;
    let job = background_later(&s, "deep", Duration::from_secs(120));
    advance(Duration::from_secs(121)).await;
    match job.await.unwrap() {
        Err(SupervisorError::Yielded { model, why, .. }) => {
            assert_eq!(model, "deep");
            assert!(why.contains("daily"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.count("p/deep"), 0);
    drop(chat);
    ledger(&s).await;
}

/// An indexer waits for deep behind Alice's use of daily; then Alice asks for
/// deep herself. Her request goes first: deep loads now, and both are served.
#[tokio::test(start_paused = true)]
async fn an_interactive_request_overtakes_background_ones_queued_earlier() {
    let (s, fake) = start(SEED);
    drop(get_as(&s, "daily", ALICE).await);
    let job = background_later(&s, "deep", Duration::from_secs(600));
    advance(Duration::from_secs(5)).await;
    assert_eq!(fake.count("p/deep"), 0);
    let asked = Instant::now();
    let alice = acquire_later_as(&s, "deep", ALICE);
    let lease = alice.await.unwrap().expect("Alice's request loads deep");
    assert_eq!(
        asked.elapsed(),
        STOP + LOAD,
        "one stop and one load, no grace"
    );
    drop(job.await.unwrap().expect("served with her"));
    drop(lease);
    assert_eq!(fake.count("p/deep"), 1);
    ledger(&s).await;
}

#[tokio::test(start_paused = true)]
async fn idle_models_unload_after_their_timeout_and_pinned_ones_stay() {
    let (s, _) = start(SEED);
    drop(get(&s, "embed").await);
    drop(get(&s, "keep").await);
    advance(Duration::from_secs(9 * 60)).await;
    assert_eq!(ledger(&s).await.1, vec!["embed", "keep"]);
    advance(Duration::from_secs(61)).await;
    tokio::time::sleep(STOP * 2).await;
    let (used, loaded) = ledger(&s).await;
    assert_eq!(loaded, vec!["keep"], "embed unloaded after 10 idle minutes");
    assert_eq!(used, 2 * GB);
}

#[tokio::test(start_paused = true)]
async fn a_one_shot_tool_is_put_away_a_minute_after_its_last_job() {
    let (s, _) = start(
        r#"
budget: 48GB
idle_timeout: 10m
backends:
  p: {command: [fake, "${PORT}"]}
  tools: {command: [fake, "${PORT}"], one_shot: true}
models:
  daily: {backend: p, memory: 32GB}
  sd:    {backend: tools, memory: 6GB}
  tts:   {backend: tools, memory: 1GB, idle_timeout: 5m}
"#,
    );
    // Loaded without a request, as a preload or `modelyard load` does; sd last,
    // so its minute starts now.
    for m in ["tts", "daily", "sd"] {
        s.load(m, soon()).await.unwrap();
    }
    // A round trip to the owner: the released leases are counted before time moves.
    ledger(&s).await;
    advance(Duration::from_secs(59)).await;
    assert_eq!(ledger(&s).await.1, vec!["daily", "sd", "tts"]);
    advance(Duration::from_secs(2)).await;
    tokio::time::sleep(STOP * 2).await;
    assert_eq!(
        ledger(&s).await.1,
        vec!["daily", "tts"],
        "sd idles out after the one-shot minute; tts keeps its own 5m"
    );
    advance(Duration::from_secs(5 * 60)).await;
    tokio::time::sleep(STOP * 2).await;
    assert_eq!(ledger(&s).await.1, vec!["daily"]);
}

#[tokio::test(start_paused = true)]
async fn idle_time_counts_from_the_end_of_the_last_request() {
    let (s, _) = start(SEED);
    let lease = get(&s, "embed").await;
    advance(Duration::from_secs(30 * 60)).await;
    assert_eq!(
        ledger(&s).await.1,
        vec!["embed"],
        "busy models are not idle"
    );
    drop(lease);
    advance(Duration::from_secs(9 * 60)).await;
    assert_eq!(ledger(&s).await.1, vec!["embed"]);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_get_memory_in_time_is_told_why() {
    let (s, _) = start(
        r#"
budget: 48GB
backends:
  p: {command: [fake, "${PORT}"]}
models:
  code: {backend: p, memory: 35GB, pinned: true}
  deep: {backend: p, memory: 41GB}
"#,
    );
    let _code = get(&s, "code").await;
    let err = s
        .acquire("deep", Instant::now() + Duration::from_secs(5))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SupervisorError::Timeout { .. }), "{msg}");
    assert!(
        msg.contains("deep needs 41 GB") && msg.contains("35 GB held by code (pinned)"),
        "{msg}"
    );
}

#[tokio::test(start_paused = true)]
async fn past_max_queue_requests_are_refused_at_once() {
    let (s, _) = start(SEED);
    let _daily = get(&s, "daily").await;
    let mut waiting = Vec::new();
    for _ in 0..20 {
        let s = s.clone();
        waiting.push(tokio::spawn(async move { s.acquire("deep", soon()).await }));
    }
    tokio::task::yield_now().await;
    let err = s.acquire("code", soon()).await.unwrap_err();
    assert!(
        matches!(err, SupervisorError::QueueFull { max_queue: 20, .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_given_up_while_queued_free_their_places_and_load_nothing() {
    let (s, fake) = start(SEED);
    let daily = get(&s, "daily").await;
    let waiting: Vec<_> = (0..20).map(|_| acquire_later(&s, "deep")).collect();
    tokio::task::yield_now().await;
    // Every client waiting for deep leaves: the queue is full of nobody.
    for w in &waiting {
        w.abort();
    }
    tokio::task::yield_now().await;
    let code = acquire_later(&s, "code");
    tokio::task::yield_now().await;
    drop(daily);
    let code = code
        .await
        .unwrap()
        .expect("a place in the queue, then served");
    assert_eq!(fake.count("p/deep"), 0, "nobody waited for deep");
    drop(code);
    ledger(&s).await;
}

/// `daily` in use, and one client's request for `deep` (same group) that has
/// set `daily` draining for a swap: the set-up the swap tests share.
async fn daily_draining_for_deep() -> (
    Supervisor,
    Fake,
    Lease,
    tokio::task::JoinHandle<Result<Lease, SupervisorError>>,
) {
    let (s, fake) = start(SEED);
    let daily = get(&s, "daily").await;
    let deep = acquire_later(&s, "deep");
    tokio::task::yield_now().await;
    assert_eq!(phase(&s, "daily").await, Phase::Draining);
    (s, fake, daily, deep)
}

#[tokio::test(start_paused = true)]
async fn a_swap_whose_requests_were_all_abandoned_keeps_the_model() {
    let (s, fake, daily, deep) = daily_draining_for_deep().await;
    deep.abort();
    tokio::task::yield_now().await;
    drop(daily);
    advance(STOP + LOAD).await;
    assert_eq!(
        phase(&s, "daily").await,
        Phase::Ready,
        "kept for its next request"
    );
    let again = get(&s, "daily").await;
    assert_eq!((fake.count("p/daily"), fake.count("p/deep")), (1, 0));
    drop(again);
    ledger(&s).await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_gives_up_leaves_its_place_at_once() {
    let (s, fake, daily, deep) = daily_draining_for_deep().await;
    assert_eq!(s.snapshot().await.unwrap().model("deep").unwrap().queued, 1);
    deep.abort();
    tokio::task::yield_now().await;
    // Nothing else happens meanwhile: no release, no tick. The owner hears of
    // the client leaving, so the very next look shows the swap called off.
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.model("deep").unwrap().queued, 0);
    assert_eq!(snap.model("daily").unwrap().phase, Phase::Ready);
    drop(daily);
    advance(STOP + LOAD).await;
    assert_eq!(fake.count("p/deep"), 0, "nothing loaded for nobody");
    ledger(&s).await;
}

/// A swap called off takes its reason with it: the model it kept, stopped
/// later at shutdown, is not said to go "to make room" for anyone.
#[tokio::test(start_paused = true)]
async fn a_swap_called_off_leaves_no_reason_behind() {
    let (s, _fake, daily, deep) = daily_draining_for_deep().await;
    deep.abort();
    tokio::task::yield_now().await;
    assert_eq!(phase(&s, "daily").await, Phase::Ready);
    drop(daily);
    let mut events = s.subscribe();
    s.shutdown().await;
    let mut unloaded = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.kind == crate::Kind::Unloaded && e.model == "daily" {
            unloaded.push(e.detail);
        }
    }
    assert_eq!(unloaded.len(), 1, "{unloaded:?}");
    assert!(!unloaded[0].contains("make room"), "{unloaded:?}");
}

/// A shutdown fails every waiter, the one a swap was for too; a lease that
/// ends while the processes stop does not call the swap off: the drained
/// model is not "kept" on its way out, and its unload still says why it went.
#[tokio::test(start_paused = true)]
async fn a_shutdown_keeps_nothing_on_its_way_out() {
    let (s, _fake, daily, deep) = daily_draining_for_deep().await;
    let mut events = s.subscribe();
    let stopping = tokio::spawn({
        let s = s.clone();
        async move { s.shutdown().await }
    });
    tokio::task::yield_now().await;
    assert!(matches!(
        deep.await.unwrap(),
        Err(SupervisorError::ShuttingDown)
    ));
    drop(daily);
    stopping.await.unwrap();
    let mut daily_events = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.model == "daily" {
            daily_events.push((e.kind, e.detail));
        }
    }
    assert_eq!(
        daily_events,
        [(crate::Kind::Unloaded, "to make room for deep".to_string())]
    );
}

#[tokio::test(start_paused = true)]
async fn repeated_crashes_back_off_and_say_so() {
    let (s, fake) = start(SEED);
    let crash = |gen: u64| Msg::Exited {
        key: "p/embed".into(),
        generation: gen,
        info: None,
    };
    drop(get(&s, "embed").await);
    s.tx.send(crash(fake.generation("p/embed"))).unwrap();
    // First crash: the next request restarts it at once.
    drop(get(&s, "embed").await);
    assert_eq!(fake.count("p/embed"), 2);
    s.tx.send(crash(fake.generation("p/embed"))).unwrap();
    // Second in a row: a 1 s backoff; a request that cannot wait is told so.
    let err = s
        .acquire("embed", Instant::now() + Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SupervisorError::BackingOff { failures: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("failed 2 times"), "{err}");
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.model("embed").unwrap().phase, Phase::Failed);
    assert!(snap.model("embed").unwrap().last_error.is_some());
    // One that can wait is served once the backoff ends.
    let started = Instant::now();
    drop(get(&s, "embed").await);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(fake.count("p/embed"), 3);
    assert_eq!(ledger(&s).await.1, vec!["embed"]);
}

/// A start that fails while its process still runs stops that process; the
/// backoff of a second failure in a row holds from then on, while it is still
/// stopping and once it is cold.
#[tokio::test(start_paused = true)]
async fn a_backoff_set_while_a_failed_start_stops_holds_once_it_is_cold() {
    let (s, fake) = start(SEED);
    for n in 1..=2 {
        let waiting = acquire_later(&s, "embed");
        while fake.count("p/embed") < n {
            tokio::task::yield_now().await;
        }
        s.tx.send(Msg::StartDone {
            key: "p/embed".into(),
            generation: fake.generation("p/embed"),
            result: Err("/health answered 500".into()),
        })
        .unwrap();
        let Err(err) = waiting.await.unwrap() else {
            panic!("the start failed")
        };
        assert!(matches!(err, SupervisorError::StartFailed { .. }), "{err}");
        assert_eq!(phase(&s, "embed").await, Phase::Stopping);
        if n == 1 {
            // No backoff after one failure: once stopped, the next starts at once.
            tokio::time::sleep(STOP * 2).await;
            assert_eq!(phase(&s, "embed").await, Phase::Cold);
        }
    }
    // Still stopping, already backing off.
    let err = s
        .acquire("embed", Instant::now() + Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SupervisorError::BackingOff { failures: 2, .. }),
        "{err}"
    );
    tokio::time::sleep(STOP * 2).await;
    assert_eq!(phase(&s, "embed").await, Phase::Failed, "cold, backing off");
    // A load alone would take LOAD; it starts only once the 1 s backoff ends.
    let started = Instant::now();
    drop(get(&s, "embed").await);
    assert!(started.elapsed() > LOAD, "waited out the backoff");
    assert_eq!(fake.count("p/embed"), 3);
    ledger(&s).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_frees_the_reservation() {
    let (s, fake) = start(SEED);
    let lease = get(&s, "deep").await;
    assert_eq!(ledger(&s).await.0, 41 * GB);
    s.tx.send(Msg::Exited {
        key: "p/deep".into(),
        generation: fake.generation("p/deep"),
        info: None,
    })
    .unwrap();
    assert_eq!(ledger(&s).await.0, 0);
    drop(lease);
    assert_eq!(
        ledger(&s).await.0,
        0,
        "a late release of the dead instance changes nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_everything_and_refuses_new_work() {
    let (s, _) = start(SEED);
    drop(get(&s, "daily").await);
    drop(get(&s, "embed").await);
    s.shutdown().await;
    assert!(matches!(
        s.acquire("embed", soon()).await,
        Err(SupervisorError::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_shared_servers_own_memory_is_charged_while_it_runs() {
    let (s, fake) = start(
        r#"
budget: 10GB
backends:
  srv: {kind: ollama, command: [fake, "${PORT}"], memory: 4GB}
  p: {command: [fake, "${PORT}"]}
models:
  e1: {backend: srv, memory: 2GB}
  e2: {backend: srv, memory: 2GB}
  big: {backend: p, memory: 6GB}
"#,
    );
    drop(get(&s, "e1").await);
    assert_eq!(ledger(&s).await.0, 6 * GB, "server 4 GB + e1 2 GB");
    drop(get(&s, "e2").await);
    assert_eq!(ledger(&s).await.0, 8 * GB, "one server for both");
    assert_eq!(fake.count("srv"), 1);
    // 6 GB more does not fit: the server's models go, and its own memory with them.
    drop(get(&s, "big").await);
    let (used, loaded) = ledger(&s).await;
    assert_eq!((used, loaded), (6 * GB, vec!["big".to_string()]));
}

fn config(yaml: &str) -> Arc<modelyard_config::Config> {
    Arc::new(load_str("test", yaml).unwrap().config)
}

#[tokio::test(start_paused = true)]
async fn a_reload_adds_now_and_removes_or_redefines_once_idle() {
    let (s, fake) = start(SEED);
    let busy = get(&s, "small").await;
    drop(get(&s, "embed").await);
    let next = SEED
        .replace("  small: {backend: p, memory: 5.5GB}\n", "")
        .replace(
            "embed: {backend: p, memory: 1.2GB}",
            "embed: {backend: p, memory: 1.5GB}",
        )
        + "  extra: {backend: p, memory: 1GB}\n";
    let changes = s.reload(config(&next)).await.unwrap();
    assert!(
        changes.contains(&"removed small".to_string())
            && changes.contains(&"changed embed".to_string())
            && changes.contains(&"added extra".to_string()),
        "{changes:?}"
    );
    // Added: usable at once.
    drop(get(&s, "extra").await);
    // Removed but busy: its request finishes, then it goes; new requests are refused.
    assert!(matches!(
        s.acquire("small", soon()).await,
        Err(SupervisorError::UnknownModel(_))
    ));
    assert!(ledger(&s).await.1.contains(&"small".to_string()));
    drop(busy);
    tokio::time::sleep(STOP * 2).await;
    let snap = s.snapshot().await.unwrap();
    assert!(snap.model("small").is_none(), "dropped once idle");
    // Redefined while idle: restarted with the new size on its next use.
    assert_eq!(fake.count("p/embed"), 1);
    drop(get(&s, "embed").await);
    assert_eq!(fake.count("p/embed"), 2);
    assert_eq!(
        s.snapshot().await.unwrap().model("embed").unwrap().reserved,
        1_500_000_000
    );
}

#[tokio::test(start_paused = true)]
async fn a_smaller_budget_on_reload_unloads_idle_models() {
    let small = "budget: 10GB\nbackends:\n  p: {command: [fake, \"${PORT}\"]}\nmodels:\n  a: {backend: p, memory: 4GB}\n  b: {backend: p, memory: 4GB}\n";
    let (s, _) = start(small);
    drop(get(&s, "a").await);
    drop(get(&s, "b").await);
    assert_eq!(ledger(&s).await.0, 8 * GB);
    s.reload(config(&small.replace("budget: 10GB", "budget: 6GB")))
        .await
        .unwrap();
    tokio::time::sleep(STOP * 2).await;
    let (used, loaded) = ledger(&s).await;
    assert_eq!(
        (used, loaded),
        (4 * GB, vec!["b".to_string()]),
        "the least recently used went"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_says_how_long_the_model_usually_takes_to_load() {
    let (s, _) = start(SEED);
    drop(get(&s, "daily").await);
    s.unload(Some("daily")).await.unwrap();
    tokio::time::sleep(STOP * 2).await;
    let err = s
        .acquire("daily", Instant::now() + Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("daily usually loads in ~2s"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_requests_keep_alive_sets_the_idle_timeout_until_the_next_unload() {
    let (s, _) = start(SEED);
    // keep_alive 0: gone once its last request ends, not before.
    let lease = get(&s, "embed").await;
    s.keep_alive("embed", Some(Duration::ZERO));
    advance(Duration::from_secs(5)).await;
    assert_eq!(ledger(&s).await.1, vec!["embed"], "busy models stay");
    drop(lease);
    tokio::time::sleep(STOP * 2).await;
    assert!(ledger(&s).await.1.is_empty(), "unloaded after the request");

    // A duration replaces idle_timeout for this load only.
    drop(get(&s, "small").await);
    s.keep_alive("small", Some(Duration::from_secs(30)));
    ledger(&s).await;
    advance(Duration::from_secs(31)).await;
    tokio::time::sleep(STOP * 2).await;
    assert!(ledger(&s).await.1.is_empty(), "30s keep_alive ran out");
    drop(get(&s, "small").await);
    advance(Duration::from_secs(5 * 60)).await;
    assert_eq!(
        ledger(&s).await.1,
        vec!["small"],
        "the next load has idle_timeout again"
    );

    // Negative (None): kept past idle_timeout; pinned models ignore keep_alive 0.
    s.keep_alive("small", None);
    drop(get(&s, "keep").await);
    s.keep_alive("keep", Some(Duration::ZERO));
    ledger(&s).await;
    advance(Duration::from_secs(60 * 60)).await;
    assert_eq!(ledger(&s).await.1, vec!["keep", "small"]);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_task_that_must_live_fails_the_supervisor_with_its_message() {
    let (s, _fake) = start(SEED);
    crate::must_live("test", &s.failure, async {
        panic!("an invariant broke");
    });
    // Nobody waits for the failure until after it happened.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let why = tokio::time::timeout(Duration::from_secs(1), s.failed())
        .await
        .expect("failed() resolves");
    assert_eq!(why, "test: an invariant broke");
}

#[tokio::test(start_paused = true)]
async fn an_owner_that_answers_is_alive_and_a_normal_shutdown_is_no_failure() {
    let (s, _fake) = start(SEED);
    assert!(s.responds_within(Duration::from_secs(1)).await);
    s.shutdown().await;
    assert!(
        !s.responds_within(Duration::from_secs(1)).await,
        "the owner is gone after shutdown"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(60), s.failed())
            .await
            .is_err(),
        "a shutdown is not a failure"
    );
}
