//! Random sequences of requests, releases, clients leaving, crashes, servers'
//! reports, free-memory samples and time against the owner:
//! after every step the ledger is within budget, agrees with the models' states
//! and never refused a reservation the policy made room for, one model per group
//! holds memory, and every state change the owner made is in lifecycle.rs's
//! table; at the end every request still waited for has had its answer, and the
//! runs together have taken every move on the main line and the usual detours.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use proptest::prelude::*;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lifecycle::Run;
use crate::owner::Msg;
use crate::policy::Phase;
use crate::tests::{audit, ledger, start, Fake};
use crate::{Lease, SupervisorError};

const MODELS: [&str; 6] = ["daily", "code", "deep", "embed", "small", "keep"];

/// The seed's machine, with the small models on one shared server of 1 GB.
const WORLD: &str = r#"
budget: 48GB
reserve: 16GB
idle_timeout: 10m
queue_timeout: 2m
max_queue: 20
backends:
  p: {command: [fake, "${PORT}"]}
  o: {kind: ollama, command: [fake, "${PORT}"], memory: 1GB}
models:
  daily: {backend: p, memory: 32GB, group: large}
  code:  {backend: p, memory: 35GB, group: large}
  deep:  {backend: p, memory: 41GB, group: large}
  embed: {backend: o, memory: 1.2GB}
  small: {backend: o, memory: 5.5GB}
  keep:  {backend: p, memory: 2GB, pinned: true}
"#;

fn instance(model: &str) -> String {
    match model {
        "embed" | "small" => "o".into(),
        m => format!("p/{m}"),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        model: usize,
        patience_s: u64,
    },
    Release {
        pick: usize,
    },
    /// A waiting client goes away.
    Abandon {
        pick: usize,
    },
    Crash {
        model: usize,
    },
    /// The shared server reports holding only this subset of its models (it
    /// dropped the others on its own, or another client loaded some).
    Holds {
        mask: u8,
    },
    /// The machine reports this many GB available.
    Available {
        gb: u64,
    },
    Wait {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..MODELS.len(), 1u64..200).prop_map(|(model, patience_s)| Op::Acquire { model, patience_s }),
        3 => (0usize..64).prop_map(|pick| Op::Release { pick }),
        1 => (0usize..64).prop_map(|pick| Op::Abandon { pick }),
        1 => (0..MODELS.len()).prop_map(|model| Op::Crash { model }),
        1 => (0u8..4).prop_map(|mask| Op::Holds { mask }),
        1 => (10u64..80).prop_map(|gb| Op::Available { gb }),
        2 => (1u64..5_000).prop_map(|ms| Op::Wait { ms }),
    ]
}

type Pending = JoinHandle<Result<Lease, SupervisorError>>;

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Moves finished requests' leases into `held`; counts their answers.
async fn collect(pending: &mut Vec<Pending>, held: &mut Vec<Lease>, answered: &mut usize) {
    let mut still = Vec::new();
    for p in pending.drain(..) {
        if p.is_finished() {
            *answered += 1;
            if let Ok(lease) = p.await.expect("acquire task does not panic") {
                held.push(lease);
            }
        } else {
            still.push(p);
        }
    }
    *pending = still;
}

/// Every move any run made, for the check that the runs reach them all.
static SEEN: Mutex<Option<HashSet<(Phase, Phase)>>> = Mutex::new(None);
static SEEN_RUNS: Mutex<Option<HashSet<(Run, Run)>>> = Mutex::new(None);

async fn run(ops: Vec<Op>, fake: Fake, s: crate::Supervisor) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut held: Vec<Lease> = Vec::new();
    let mut asked = 0usize;
    let mut answered = 0usize;
    for op in ops {
        match op {
            Op::Acquire { model, patience_s } => {
                asked += 1;
                let s = s.clone();
                let deadline = Instant::now() + Duration::from_secs(patience_s);
                pending.push(tokio::spawn(async move {
                    s.acquire(MODELS[model], deadline).await
                }));
            }
            Op::Release { pick } => {
                if !held.is_empty() {
                    let i = pick % held.len();
                    drop(held.swap_remove(i));
                }
            }
            Op::Abandon { pick } => {
                if !pending.is_empty() {
                    let i = pick % pending.len();
                    pending.swap_remove(i).abort();
                    // Nobody is left to answer; it is owed nothing.
                    asked -= 1;
                }
            }
            Op::Crash { model } => {
                let key = instance(MODELS[model]);
                if let Some(generation) = fake.latest(&key) {
                    let _ = s.tx.send(Msg::Exited {
                        key: key.into(),
                        generation,
                        info: None,
                    });
                }
            }
            Op::Holds { mask } => {
                if let Some(generation) = fake.latest("o") {
                    let resident = ["embed", "small"]
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << i) != 0)
                        .map(|(_, n)| crate::backends::Resident {
                            name: n.to_string(),
                            bytes: None,
                        })
                        .collect();
                    let _ = s.tx.send(Msg::Reported {
                        key: "o".into(),
                        generation,
                        asked: Instant::now(),
                        report: Ok(crate::backends::Report {
                            resident: Some(resident),
                            context_window: None,
                            listed: None,
                        }),
                    });
                }
            }
            Op::Available { gb } => {
                let _ = s.tx.send(Msg::Measured {
                    samples: vec![],
                    available: Some(gb * 1_000_000_000),
                });
            }
            Op::Wait { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        settle().await;
        ledger(&s).await;
        collect(&mut pending, &mut held, &mut answered).await;
    }
    // Give everything back and let time run: every request gets its answer.
    for _ in 0..20 {
        held.clear();
        tokio::time::sleep(Duration::from_secs(300)).await;
        settle().await;
        ledger(&s).await;
        collect(&mut pending, &mut held, &mut answered).await;
        if pending.is_empty() {
            break;
        }
    }
    assert!(
        pending.is_empty(),
        "{} requests never got an answer",
        pending.len()
    );
    assert_eq!(asked, answered);
    let audit = audit(&s).await;
    SEEN.lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .extend(audit.moves);
    SEEN_RUNS
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .extend(audit.runs);
}

#[test]
fn ledger_invariant_holds_and_every_request_is_answered() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..80), |ops| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async move {
                let (s, fake) = start(WORLD);
                run(ops, fake, s).await;
            });
            Ok(())
        })
        .unwrap();
    // What these runs can reach (a start that fails, a model adopted from its
    // server, are the tests' own cases): if the runs stop reaching a move, the
    // checks above no longer cover it.
    let seen = SEEN.lock().unwrap().take().unwrap_or_default();
    for (from, to) in [
        (Phase::Cold, Phase::Starting),
        (Phase::Starting, Phase::Ready),
        (Phase::Starting, Phase::Cold),
        (Phase::Ready, Phase::Draining),
        (Phase::Ready, Phase::Cold),
        (Phase::Draining, Phase::Ready),
        (Phase::Draining, Phase::Stopping),
        (Phase::Stopping, Phase::Cold),
    ] {
        assert!(
            seen.contains(&(from, to)),
            "no run moved {from:?} → {to:?}; seen: {seen:?}"
        );
    }
    let seen = SEEN_RUNS.lock().unwrap().take().unwrap_or_default();
    for (from, to) in [
        (Run::Down, Run::Starting),
        (Run::Starting, Run::Up),
        (Run::Starting, Run::Down),
        (Run::Up, Run::Stopping),
        (Run::Up, Run::Down),
        (Run::Stopping, Run::Down),
    ] {
        assert!(
            seen.contains(&(from.clone(), to.clone())),
            "no instance moved {from:?} → {to:?}; seen: {seen:?}"
        );
    }
}
