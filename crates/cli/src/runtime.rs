//! Where a running router says it listens, so `modelyard status` finds a router
//! started on another port (`demo --listen localhost:18434`) without `--url`.
//!
//! `serve` and `demo` write `router.json` (URL, pid, config file) in the user's
//! runtime directory once bound, and remove it when they exit. A file left by a
//! router that was killed names a pid that is gone, and is passed over.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

const FILE: &str = "router.json";

/// `$XDG_RUNTIME_DIR/modelyard` (Linux's per-login tmpfs, honoured on any OS so a
/// test can point it elsewhere), else the user's cache dir (macOS has no runtime
/// dir: `~/Library/Caches/modelyard`).
fn dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(dirs::runtime_dir)
        .or_else(dirs::cache_dir)?;
    Some(base.join("modelyard"))
}

/// A running router as recorded.
pub struct Found {
    pub url: String,
    /// The config it was started with, for its admin key.
    pub config: Option<PathBuf>,
}

/// The router recorded as running, if its process is still there.
pub fn find() -> Option<Found> {
    let text = std::fs::read_to_string(dir()?.join(FILE)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let pid = i32::try_from(v["pid"].as_u64()?).ok()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    Some(Found {
        url: v["url"].as_str()?.to_string(),
        config: v["config"].as_str().map(PathBuf::from),
    })
}

/// Records this router; the record goes when the returned guard is dropped.
/// Failing to write it costs only the CLI's convenience, so it is logged at most.
pub fn record(addr: SocketAddr, config: Option<&Path>) -> Option<Recorded> {
    let dir = dir()?;
    let ip = if addr.ip().is_unspecified() {
        // Bound on every address: loopback reaches it.
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let config = config.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    let text = json!({"url": format!("http://{ip}"), "pid": std::process::id(), "config": config})
        .to_string();
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.{}", std::process::id()));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => Some(Recorded { path }),
        Err(e) => {
            tracing::debug!("cannot record the router's URL in {}: {e}", path.display());
            None
        }
    }
}

pub struct Recorded {
    path: PathBuf,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // Another router may have recorded itself since: leave its record alone.
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(std::process::id())));
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
