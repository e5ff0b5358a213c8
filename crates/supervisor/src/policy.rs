//! Which models must go so another can load: a pure function of the ledger, so
//! every rule is tested without a runtime, processes or clocks. It decides; it
//! never logs or acts (the owner does both).

use std::fmt::Write;

use modelyard_config::{ByteSize, Priority};
use tokio::time::Instant;

/// Where a model is in its life. Every phase but Cold and Failed holds a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Cold,
    Starting,
    Ready,
    /// Chosen to go: finishing what is in flight, taking nothing new.
    Draining,
    /// Asked to exit; the memory is back once it has.
    Stopping,
    Failed,
}

impl Phase {
    pub fn holds_memory(self) -> bool {
        matches!(
            self,
            Phase::Starting | Phase::Ready | Phase::Draining | Phase::Stopping
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Cold => "cold",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
        }
    }
}

/// What the policy needs to know of one model.
#[derive(Clone, Debug)]
pub struct View<'a> {
    pub name: &'a str,
    /// Its reservation: declared memory (plus its backend's own, for a process of its own).
    pub memory: u64,
    pub group: Option<&'a str>,
    pub pinned: bool,
    pub phase: Phase,
    pub in_flight: usize,
    pub last_used: Instant,
    /// A person uses it: interactive requests in flight or queued for it, or
    /// one within `interactive_grace`. Background work never evicts it.
    pub interactive: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission<'a> {
    /// Reserve its memory and start it now.
    Start,
    /// Drain and stop these; start once their memory is back.
    Evict(Vec<&'a str>),
    /// Enough memory is already on its way back; wait for it.
    Wait(String),
    /// Nothing that may be unloaded frees enough: says what holds the memory.
    Blocked(String),
    /// Background work that could only start by evicting a model a person
    /// uses: it waits, and is promised nothing.
    Yield(String),
}

fn gb(n: u64) -> ByteSize {
    ByteSize(n)
}

/// Decides how `target` can get its memory under `budget`, given every other model.
/// `promised` is memory earlier waiters are already owed; only the first waiter
/// (promised = 0) may evict, later ones start only if they fit beside it.
pub fn admit<'a>(
    budget: u64,
    promised: u64,
    target: &View<'a>,
    others: &[View<'a>],
) -> Admission<'a> {
    admit_as(budget, promised, Priority::Interactive, target, others)
}

/// [`admit`] for requests of a priority. Background requests follow one more
/// rule: they never evict a model a person uses (`View::interactive`); what
/// only such an eviction could admit yields instead.
pub fn admit_as<'a>(
    budget: u64,
    promised: u64,
    priority: Priority,
    target: &View<'a>,
    others: &[View<'a>],
) -> Admission<'a> {
    let background = priority == Priority::Background;
    let spared = |v: &View| background && v.interactive;
    let held: u64 = others
        .iter()
        .filter(|v| v.phase.holds_memory())
        .map(|v| v.memory)
        .sum();
    let leaving: u64 = others
        .iter()
        .filter(|v| matches!(v.phase, Phase::Draining | Phase::Stopping))
        .map(|v| v.memory)
        .sum();
    let same_group =
        |v: &&View| target.group.is_some() && v.group == target.group && v.phase.holds_memory();
    let rivals: Vec<&View> = others.iter().filter(same_group).collect();
    let free = budget.saturating_sub(held).saturating_sub(promised);

    if rivals.is_empty() && free >= target.memory {
        return Admission::Start;
    }
    if promised > 0 {
        return Admission::Wait(
            "waiting behind requests for another model that need memory first".into(),
        );
    }

    let mut victims: Vec<&'a str> = Vec::new();
    let mut freed = leaving;
    let mut waiting_on: Vec<String> = Vec::new();
    for r in &rivals {
        match r.phase {
            Phase::Ready if r.pinned => {
                return Admission::Blocked(format!(
                    "{} is in group {} with {}, which is pinned",
                    target.name,
                    target.group.unwrap_or_default(),
                    r.name
                ))
            }
            Phase::Ready if spared(r) => {
                return Admission::Yield(format!(
                    "{} (same group) is in use by interactive requests",
                    r.name
                ))
            }
            Phase::Ready => {
                victims.push(r.name);
                freed += r.memory;
            }
            Phase::Starting => waiting_on.push(format!("{} (same group) is starting", r.name)),
            _ => waiting_on.push(format!("{} (same group) is unloading", r.name)),
        }
    }
    let need = target.memory;
    let available = |freed: u64| budget.saturating_sub(held) + freed;
    let mut busy: Vec<&str> = Vec::new();
    if available(freed) < need {
        // Idle before busy, then least recently used; pinned and starting never.
        let mut candidates: Vec<&View<'a>> = others
            .iter()
            .filter(|v| v.phase == Phase::Ready && !v.pinned && !victims.contains(&v.name))
            .collect();
        busy = candidates
            .iter()
            .filter(|v| spared(v))
            .map(|v| v.name)
            .collect();
        candidates.retain(|v| !spared(v));
        candidates.sort_by_key(|v| (v.in_flight > 0, v.last_used));
        for c in candidates {
            if available(freed) >= need {
                break;
            }
            victims.push(c.name);
            freed += c.memory;
        }
    }
    if available(freed) < need {
        if !busy.is_empty() {
            return Admission::Yield(format!(
                "only unloading {} would make room, and interactive requests use {}",
                busy.join(", "),
                if busy.len() == 1 { "it" } else { "them" }
            ));
        }
        return Admission::Blocked(blocked_message(budget, target, others));
    }
    if !victims.is_empty() {
        return Admission::Evict(victims);
    }
    let why = if waiting_on.is_empty() {
        format!("{} of memory is being freed", gb(leaving))
    } else {
        waiting_on.join("; ")
    };
    Admission::Wait(why)
}

/// "qwen3-32b needs 41 GB; 35 GB held by qwen3.6-27b (busy with 2 requests)".
pub fn blocked_message(budget: u64, target: &View, others: &[View]) -> String {
    let mut s = format!(
        "{} needs {} of the {} budget;",
        target.name,
        gb(target.memory),
        gb(budget)
    );
    let holders: Vec<&View> = others.iter().filter(|v| v.phase.holds_memory()).collect();
    if holders.is_empty() {
        // Only a budget smaller than the model (a reserve at work) stands in the way.
        s.push_str(" nothing else is loaded");
    }
    for (i, v) in holders.iter().enumerate() {
        let why = if v.pinned {
            "pinned".to_string()
        } else if v.phase == Phase::Ready && v.in_flight > 0 {
            format!(
                "busy with {} request{}",
                v.in_flight,
                if v.in_flight == 1 { "" } else { "s" }
            )
        } else {
            v.phase.as_str().to_string()
        };
        let _ = write!(
            s,
            "{} {} held by {} ({why})",
            if i == 0 { "" } else { "," },
            gb(v.memory),
            v.name
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GB: u64 = 1_000_000_000;

    #[test]
    fn a_model_larger_than_an_empty_budget_is_said_without_a_dangling_list() {
        let msg = blocked_message(4 * GB, &v("small", 6, Phase::Cold), &[]);
        assert_eq!(
            msg,
            "small needs 6 GB of the 4 GB budget; nothing else is loaded"
        );
    }

    fn v(name: &'static str, gbs: u64, phase: Phase) -> View<'static> {
        View {
            name,
            memory: gbs * GB,
            group: None,
            pinned: false,
            phase,
            in_flight: 0,
            last_used: Instant::now(),
            interactive: false,
        }
    }

    fn grouped(mut x: View<'static>) -> View<'static> {
        x.group = Some("large");
        x
    }

    #[test]
    fn starts_when_it_fits() {
        let t = v("embed", 1, Phase::Cold);
        assert_eq!(
            admit(48 * GB, 0, &t, &[v("daily", 32, Phase::Ready)]),
            Admission::Start
        );
    }

    #[test]
    fn a_group_admits_one_member_whatever_the_budget() {
        let t = grouped(v("deep", 41, Phase::Cold));
        let others = [
            grouped(v("daily", 32, Phase::Ready)),
            v("embed", 1, Phase::Ready),
        ];
        assert_eq!(
            admit(1000 * GB, 0, &t, &others),
            Admission::Evict(vec!["daily"])
        );
    }

    #[test]
    fn evicts_idle_before_busy_then_least_recently_used() {
        let t0 = Instant::now();
        let mut old_busy = v("old-busy", 10, Phase::Ready);
        old_busy.in_flight = 2;
        old_busy.last_used = t0;
        let mut older_idle = v("older-idle", 10, Phase::Ready);
        older_idle.last_used = t0 + Duration::from_secs(1);
        let mut newer_idle = v("newer-idle", 10, Phase::Ready);
        newer_idle.last_used = t0 + Duration::from_secs(5);
        let others = [old_busy, newer_idle, older_idle];
        let t = v("new", 15, Phase::Cold);
        // 30 held of 40: 10 free, needs 15: one idle model goes, the older one.
        assert_eq!(
            admit(40 * GB, 0, &t, &others),
            Admission::Evict(vec!["older-idle"])
        );
        let big = v("big", 35, Phase::Cold);
        assert_eq!(
            admit(40 * GB, 0, &big, &others),
            Admission::Evict(vec!["older-idle", "newer-idle", "old-busy"])
        );
    }

    #[test]
    fn never_evicts_pinned_or_starting_and_says_who_holds_the_memory() {
        let mut pinned = v("qwen3.6-27b", 35, Phase::Ready);
        pinned.pinned = true;
        let t = v("qwen3-32b", 41, Phase::Cold);
        match admit(48 * GB, 0, &t, &[pinned]) {
            Admission::Blocked(msg) => {
                assert!(
                    msg.contains("qwen3-32b needs 41 GB")
                        && msg.contains("35 GB held by qwen3.6-27b (pinned)"),
                    "{msg}"
                )
            }
            other => panic!("{other:?}"),
        }
        let mut busy = v("qwen3.6-27b", 35, Phase::Starting);
        busy.in_flight = 0;
        assert!(matches!(
            admit(48 * GB, 0, &t, &[busy]),
            Admission::Blocked(_)
        ));
    }

    #[test]
    fn waits_for_memory_already_on_its_way_back() {
        let t = v("deep", 41, Phase::Cold);
        let others = [v("daily", 32, Phase::Stopping)];
        assert!(matches!(admit(48 * GB, 0, &t, &others), Admission::Wait(_)));
        let g = grouped(v("deep", 1, Phase::Cold));
        assert!(matches!(
            admit(48 * GB, 0, &g, &[grouped(v("daily", 1, Phase::Draining))]),
            Admission::Wait(_)
        ));
        assert!(matches!(
            admit(48 * GB, 0, &g, &[grouped(v("daily", 1, Phase::Starting))]),
            Admission::Wait(_)
        ));
    }

    #[test]
    fn later_waiters_do_not_take_memory_promised_to_earlier_ones() {
        let t = v("small", 5, Phase::Cold);
        let others = [v("daily", 32, Phase::Draining)];
        // 16 free, but 41 are promised to the first waiter.
        assert!(matches!(
            admit(48 * GB, 41 * GB, &t, &others),
            Admission::Wait(_)
        ));
        assert_eq!(admit(48 * GB, 5 * GB, &t, &others), Admission::Start);
    }

    #[test]
    fn background_work_never_evicts_a_model_a_person_uses() {
        let t = grouped(v("deep", 41, Phase::Cold));
        let mut daily = grouped(v("daily", 32, Phase::Ready));
        daily.interactive = true;
        let bg = Priority::Background;
        assert!(matches!(
            admit_as(48 * GB, 0, bg, &t, std::slice::from_ref(&daily)),
            Admission::Yield(_)
        ));
        assert_eq!(
            admit_as(
                48 * GB,
                0,
                Priority::Interactive,
                &t,
                std::slice::from_ref(&daily)
            ),
            Admission::Evict(vec!["daily"]),
            "a person's request may"
        );
        // Outside a group: the idle model nobody uses goes, the one a person uses stays.
        let mut chat = v("chat", 20, Phase::Ready);
        chat.interactive = true;
        let batch = v("batch", 20, Phase::Ready);
        let t = v("embed", 10, Phase::Cold);
        assert_eq!(
            admit_as(45 * GB, 0, bg, &t, &[chat.clone(), batch]),
            Admission::Evict(vec!["batch"])
        );
        match admit_as(45 * GB, 0, bg, &v("big", 30, Phase::Cold), &[chat]) {
            Admission::Yield(why) => assert!(why.contains("chat"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    fn any_view(i: usize) -> impl proptest::strategy::Strategy<Value = View<'static>> {
        use proptest::prelude::*;
        const NAMES: [&str; 6] = ["m0", "m1", "m2", "m3", "m4", "m5"];
        let phase = prop_oneof![
            Just(Phase::Cold),
            Just(Phase::Starting),
            Just(Phase::Ready),
            Just(Phase::Draining),
            Just(Phase::Stopping),
        ];
        (
            1u64..40,
            any::<bool>(),
            any::<bool>(),
            phase,
            0usize..3,
            any::<bool>(),
        )
            .prop_map(
                move |(gbs, group, pinned, phase, in_flight, interactive)| View {
                    name: NAMES[i],
                    memory: gbs * GB,
                    group: group.then_some("large"),
                    pinned,
                    phase,
                    in_flight,
                    last_used: Instant::now(),
                    interactive,
                },
            )
    }

    proptest::proptest! {
        /// Whatever the machine holds: background work evicts no model a
        /// person uses, and where no model is a person's, it is admitted
        /// exactly as a person's request would be.
        #[test]
        fn background_admission_spares_people(
            others in (any_view(1), any_view(2), any_view(3), any_view(4), any_view(5)),
            target in any_view(0),
            budget in 20u64..120,
            promised in proptest::prop_oneof![proptest::strategy::Just(0u64), 1u64..20],
        ) {
            let mut target = target;
            target.phase = Phase::Cold;
            let others = [others.0, others.1, others.2, others.3, others.4];
            let bg = admit_as(budget * GB, promised * GB, Priority::Background, &target, &others);
            if let Admission::Evict(victims) = &bg {
                for v in victims {
                    let view = others.iter().find(|o| o.name == *v).unwrap();
                    proptest::prop_assert!(!view.interactive, "evicted {v}, which a person uses");
                }
            }
            if others.iter().all(|o| !o.interactive) {
                proptest::prop_assert_eq!(
                    bg,
                    admit_as(budget * GB, promised * GB, Priority::Interactive, &target, &others)
                );
            }
        }
    }
}
