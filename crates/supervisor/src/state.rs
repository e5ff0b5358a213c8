//! The state file: which process groups this router started. A router killed
//! outright (SIGKILL, a crash, a power-cut laptop lid) leaves them running and
//! holding memory its next run would not count; on start it reads the file and
//! ends them before admitting anything, so the ledger starts true.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::os::{Host, ProcessTable};

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    router_pid: u32,
    router_started: Option<u64>,
    groups: Vec<Group>,
}

/// A backend's process group; its leader is the process the router spawned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Group {
    pub pid: u32,
    /// The leader's start time, to tell it from a later process given the same pid.
    pub started: Option<u64>,
    pub name: String,
}

pub(crate) struct StateFile {
    path: PathBuf,
}

/// Where a router listening on `port` keeps its state unless told otherwise.
pub fn default_path(port: u16) -> Option<PathBuf> {
    let base = dirs::state_dir().or_else(dirs::data_local_dir)?;
    Some(base.join("modelyard").join(format!("children-{port}.json")))
}

impl StateFile {
    pub fn new(path: PathBuf) -> StateFile {
        StateFile { path }
    }

    /// Ends the process groups a previous run left behind; returns how many.
    pub async fn reap(&self) -> usize {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return 0;
        };
        let Ok(old) = serde_json::from_str::<State>(&text) else {
            tracing::warn!(path = %self.path.display(), "state file unreadable; ignoring it");
            return 0;
        };
        if old.router_pid != std::process::id()
            && same_process(old.router_pid, old.router_started, &Host)
        {
            tracing::warn!(
                pid = old.router_pid,
                path = %self.path.display(),
                "another modelyard with this state file is running; leaving its backends alone"
            );
            return 0;
        }
        let mut ended = 0;
        for g in old.groups.iter().filter(|g| ours(g, &Host)) {
            tracing::warn!(pid = g.pid, backend = %g.name, "ending a backend left running by a previous run");
            end_group(g.pid).await;
            ended += 1;
        }
        self.write(&[]);
        ended
    }

    /// Records the groups running now (written whole, then renamed into place).
    pub fn write(&self, groups: &[Group]) {
        let state = State {
            router_pid: std::process::id(),
            router_started: start_time(std::process::id()),
            groups: groups.to_vec(),
        };
        if let Err(e) = write_private(
            &self.path,
            &serde_json::to_vec_pretty(&state).unwrap_or_default(),
        ) {
            tracing::warn!(path = %self.path.display(), "cannot write state file: {e}");
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(tmp, path)
}

/// Whether the group is still the one we started: its leader is that same
/// process, or the leader is gone but members remain (the kernel does not hand
/// out a pid that is still some group's id, so the group is ours).
pub(crate) fn ours(g: &Group, procs: &impl ProcessTable) -> bool {
    if !procs.group_alive(g.pid) {
        return false;
    }
    match procs.start_time(g.pid) {
        Some(now) => Some(now) == g.started,
        None => !procs.exists(g.pid),
    }
}

/// Whether the router that wrote a state file still runs.
pub(crate) fn same_process(pid: u32, started: Option<u64>, procs: &impl ProcessTable) -> bool {
    procs.exists(pid) && procs.start_time(pid) == started
}

async fn end_group(pgid: u32) {
    let group = Pid::from_raw(pgid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    for _ in 0..100 {
        if !Host.group_alive(pgid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let _ = killpg(group, Signal::SIGKILL);
}

/// A process's start time (clock ticks since boot on Linux, microseconds since
/// the epoch on macOS), None if it is gone.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    Host.start_time(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// A process table as captured from a machine: start times of the pids that
    /// exist, and the groups that still have a running member.
    #[derive(Default)]
    struct Captured {
        started: HashMap<u32, Option<u64>>,
        live_groups: HashSet<u32>,
    }

    impl ProcessTable for Captured {
        fn start_time(&self, pid: u32) -> Option<u64> {
            self.started.get(&pid).copied().flatten()
        }
        fn exists(&self, pid: u32) -> bool {
            self.started.contains_key(&pid)
        }
        fn group_alive(&self, pgid: u32) -> bool {
            self.live_groups.contains(&pgid)
        }
    }

    fn group(pid: u32, started: u64) -> Group {
        Group {
            pid,
            started: Some(started),
            name: "omlx".into(),
        }
    }

    #[test]
    fn a_group_whose_leader_started_when_recorded_is_ours() {
        // macOS values: pbi_start_tvsec/usec as microseconds since the epoch.
        let t = Captured {
            started: HashMap::from([(5151, Some(1_796_400_048_123_456))]),
            live_groups: HashSet::from([5151]),
        };
        assert!(ours(&group(5151, 1_796_400_048_123_456), &t));
    }

    #[test]
    fn a_pid_reused_by_another_process_is_not_ours() {
        let t = Captured {
            started: HashMap::from([(5151, Some(351_646))]),
            live_groups: HashSet::from([5151]),
        };
        assert!(!ours(&group(5151, 351_600), &t));
    }

    #[test]
    fn a_group_that_outlived_its_leader_is_ours() {
        // `sh -c 'server & wait'` killed: the server runs on in the group.
        let t = Captured {
            started: HashMap::new(),
            live_groups: HashSet::from([5151]),
        };
        assert!(ours(&group(5151, 351_646), &t));
    }

    #[test]
    fn a_group_with_nothing_running_is_left_alone() {
        let t = Captured {
            started: HashMap::from([(5151, Some(351_646))]),
            live_groups: HashSet::new(),
        };
        assert!(!ours(&group(5151, 351_646), &t), "zombies only, or gone");
    }

    #[test]
    fn a_leader_whose_start_cannot_be_read_is_not_killed() {
        let t = Captured {
            started: HashMap::from([(5151, None)]),
            live_groups: HashSet::from([5151]),
        };
        assert!(!ours(&group(5151, 351_646), &t));
    }

    #[test]
    fn a_router_still_running_is_told_from_one_whose_pid_was_reused() {
        let t = Captured {
            started: HashMap::from([(700, Some(42))]),
            live_groups: HashSet::new(),
        };
        assert!(same_process(700, Some(42), &t));
        assert!(!same_process(700, Some(41), &t), "pid reused");
        assert!(!same_process(701, Some(42), &t), "gone");
    }

    #[test]
    fn start_time_tells_processes_apart() {
        let me = start_time(std::process::id()).unwrap();
        assert!(me > 0);
        assert_eq!(start_time(u32::MAX - 1), None);
        let g = Group {
            pid: std::process::id(),
            started: Some(me + 1),
            name: "x".into(),
        };
        assert!(!ours(&g, &Host), "a different start time is someone else");
    }

    #[tokio::test]
    async fn reaps_a_surviving_group_and_writes_private_files() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let file = StateFile::new(path.clone());
        file.write(&[Group {
            pid,
            started: start_time(pid),
            name: "sleep".into(),
        }]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Pretend a previous router wrote it: a pid that is surely not running.
        let text = std::fs::read_to_string(&path).unwrap().replace(
            &format!("\"router_pid\": {}", std::process::id()),
            "\"router_pid\": 4000000",
        );
        std::fs::write(&path, text).unwrap();
        // Reaped as it dies, as init would reap a real orphan.
        let waiter = std::thread::spawn(move || child.wait().unwrap());
        assert_eq!(file.reap().await, 1);
        let status = waiter.join().unwrap();
        assert!(!status.success(), "the survivor was ended");
        assert_eq!(file.reap().await, 0, "the file is emptied after reaping");
    }
}
