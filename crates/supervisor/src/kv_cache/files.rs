//! The on-disk store: one directory per model under the `kv_cache.dir` root,
//! holding llama.cpp's slot files and a manifest that says whose they are. A set
//! without a manifest is never restored (a save that did not finish), and the
//! root is kept within `kv_cache.max` by deleting whole sets, least recently used
//! first. Only files named as ours are counted or deleted, so a root shared with
//! oMLX's SSD cache leaves oMLX's files alone.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MANIFEST: &str = "manifest.json";

/// What a set was saved from; a set is restored only into the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// The router's name for the process (`backend/model`).
    pub instance: String,
    /// The model file, build and context size the server reports (`GET /props`).
    pub model_path: String,
    pub build_info: String,
    pub n_ctx: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedSlot {
    pub id: u32,
    pub file: String,
    pub bytes: u64,
    pub tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub identity: Identity,
    pub slots: Vec<SavedSlot>,
    /// Milliseconds since the epoch of the last save or restore: the LRU order.
    pub used_ms: u64,
}

/// The directory name for an instance: readable, and distinct for names that
/// differ only in characters a file name cannot hold.
pub(crate) fn dir_name(instance: &str) -> String {
    let readable: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    // FNV-1a: stable across runs and versions, unlike std's hasher.
    let hash = instance.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{readable}-{:08x}", hash as u32)
}

/// The file llama.cpp writes slot `id` to (a bare name: it refuses paths).
pub(crate) fn slot_file(id: u32) -> String {
    format!("slot-{id}.bin")
}

fn ours(name: &str) -> bool {
    name == MANIFEST
        || name == "manifest.json.tmp"
        || (name.starts_with("slot-") && name.ends_with(".bin"))
}

/// The set in `dir`, if one was saved completely. A manifest that cannot be
/// read is an error (the caller drops the set).
pub(crate) fn read(dir: &Path) -> io::Result<Option<Manifest>> {
    let text = match std::fs::read(dir.join(MANIFEST)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{MANIFEST}: {e}")))
}

/// Writes the manifest whole or not at all (a crash midway leaves none).
pub(crate) fn write(dir: &Path, m: &Manifest) -> io::Result<()> {
    let tmp = dir.join("manifest.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(m).map_err(io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join(MANIFEST))
}

/// The set in `dir` is no longer one to restore (a save is about to overwrite it).
pub(crate) fn forget(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(MANIFEST)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Deletes every file of ours in `dir`; returns the bytes freed.
pub(crate) fn remove_set(dir: &Path) -> u64 {
    let mut freed = 0;
    for (path, bytes) in files(dir) {
        if std::fs::remove_file(path).is_ok() {
            freed += bytes;
        }
    }
    freed
}

/// The size of a file, if it is there.
pub(crate) fn size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(ours))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect()
}

/// One model's set, for the cap.
struct Set {
    dir: PathBuf,
    bytes: u64,
    used_ms: u64,
}

fn sets(root: &Path) -> Vec<Set> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let dir = e.path();
            let bytes: u64 = files(&dir).iter().map(|(_, b)| b).sum();
            // A set without a manifest (a save cut short) goes first.
            let used_ms = read(&dir).ok().flatten().map_or(0, |m| m.used_ms);
            (bytes > 0).then_some(Set {
                dir,
                bytes,
                used_ms,
            })
        })
        .collect()
}

/// What the cap did: the sets deleted and the bytes they held.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Evicted {
    pub dirs: Vec<PathBuf>,
    pub bytes: u64,
}

/// Deletes sets under `root`, least recently used first and `keep` last, until
/// what is left fits in `max` bytes.
pub(crate) fn enforce_cap(root: &Path, max: u64, keep: &Path) -> Evicted {
    let mut all = sets(root);
    let mut total: u64 = all.iter().map(|s| s.bytes).sum();
    all.sort_by_key(|s| (s.dir == keep, s.used_ms));
    let mut out = Evicted::default();
    for s in all {
        if total <= max {
            break;
        }
        let freed = remove_set(&s.dir);
        total = total.saturating_sub(freed);
        out.bytes += freed;
        out.dirs.push(s.dir);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(instance: &str, used_ms: u64, bytes: u64) -> Manifest {
        Manifest {
            identity: Identity {
                instance: instance.into(),
                model_path: "/m.gguf".into(),
                build_info: "b1".into(),
                n_ctx: 2048,
            },
            slots: vec![SavedSlot {
                id: 0,
                file: slot_file(0),
                bytes,
                tokens: 10,
            }],
            used_ms,
        }
    }

    fn saved(root: &Path, instance: &str, used_ms: u64, bytes: usize) -> PathBuf {
        let dir = root.join(dir_name(instance));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(slot_file(0)), vec![7u8; bytes]).unwrap();
        write(&dir, &manifest(instance, used_ms, bytes as u64)).unwrap();
        dir
    }

    #[test]
    fn directory_names_are_safe_and_distinct() {
        let a = dir_name("llama/qwen3:8b");
        assert!(a.starts_with("llama_qwen3_8b-"), "{a}");
        assert_ne!(a, dir_name("llama_qwen3_8b"));
        assert_ne!(a, dir_name("llama/qwen3/8b"));
        assert_eq!(a, dir_name("llama/qwen3:8b"), "stable");
        assert!(!dir_name("../../etc").contains('/'));
    }

    #[test]
    fn a_manifest_round_trips_and_a_forgotten_set_is_no_set() {
        let root = tempfile::tempdir().unwrap();
        let dir = saved(root.path(), "llama/a", 5, 100);
        assert_eq!(read(&dir).unwrap(), Some(manifest("llama/a", 5, 100)));
        forget(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), None);
        forget(&dir).unwrap();
        std::fs::write(dir.join(MANIFEST), b"{not json").unwrap();
        assert!(
            read(&dir).is_err(),
            "a corrupt manifest is an error, not a set"
        );
    }

    #[test]
    fn the_cap_deletes_least_recently_used_sets_first_and_keeps_the_new_one() {
        let root = tempfile::tempdir().unwrap();
        let old = saved(root.path(), "llama/old", 1, 400);
        let mid = saved(root.path(), "llama/mid", 2, 400);
        let new = saved(root.path(), "llama/new", 3, 400);
        // Someone else's files in the root are neither counted nor touched.
        std::fs::create_dir_all(root.path().join("omlx")).unwrap();
        std::fs::write(root.path().join("omlx/block.safetensors"), vec![0u8; 5000]).unwrap();
        // Each set is 400 bytes of slot and a manifest of a few hundred.
        let ev = enforce_cap(root.path(), 1500, &new);
        assert_eq!(ev.dirs, vec![old.clone()]);
        assert!(ev.bytes > 400, "the slot and its manifest: {ev:?}");
        assert_eq!(read(&old).unwrap(), None);
        assert!(read(&mid).unwrap().is_some() && read(&new).unwrap().is_some());
        assert!(root.path().join("omlx/block.safetensors").exists());
        // Under the cap: nothing goes.
        assert_eq!(enforce_cap(root.path(), 10_000, &new), Evicted::default());
        // A set larger than the cap by itself goes too, last.
        let ev = enforce_cap(root.path(), 100, &new);
        assert_eq!(ev.dirs, vec![mid, new.clone()]);
        assert!(files(&new).is_empty());
    }

    #[test]
    fn a_set_cut_short_is_evicted_before_any_complete_one() {
        let root = tempfile::tempdir().unwrap();
        let complete = saved(root.path(), "llama/a", 1, 300);
        let cut = root.path().join(dir_name("llama/b"));
        std::fs::create_dir_all(&cut).unwrap();
        std::fs::write(cut.join(slot_file(0)), vec![1u8; 300]).unwrap();
        let keep = saved(root.path(), "llama/c", 9, 300);
        let held = |d: &Path| files(d).iter().map(|(_, b)| b).sum::<u64>();
        let ev = enforce_cap(root.path(), held(&complete) + held(&keep), &keep);
        assert_eq!(ev.dirs, vec![cut]);
        assert!(read(&complete).unwrap().is_some());
    }
}
