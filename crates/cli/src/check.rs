//! `modelyard check`: what a config describes, or why it is refused.

use std::collections::BTreeMap;
use std::fmt::Write;

use modelyard_config::{ByteSize, Issue, Loaded};

pub fn summary(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let mut s = String::new();
    let budget = c.budget.map_or("no limit".to_string(), |b| b.to_string());
    let _ = writeln!(s, "{}: OK", loaded.origin);
    let _ = writeln!(
        s,
        "listen {}  budget {budget}  idle_timeout {}  queue_timeout {}",
        c.listen,
        c.idle_timeout,
        humantime::format_duration(c.queue_timeout)
    );
    let _ = writeln!(s, "\nbackends ({}):", c.backends.len());
    for (name, b) in &c.backends {
        let how = match (&b.command, &b.url) {
            (Some(argv), _) => format!("runs `{}`", argv.join(" ")),
            (None, Some(url)) => format!("at {url}"),
            (None, None) => String::new(),
        };
        let one_shot = if b.one_shot { "one-shot, " } else { "" };
        let _ = writeln!(s, "  {name:<12} {:<7} {one_shot}{how}", b.kind.as_str());
        if let Some(kv) = &b.kv_cache {
            let dir = kv.root().map_or("(no cache directory)".to_string(), |d| {
                d.display().to_string()
            });
            let _ = writeln!(
                s,
                "  {:<12} KV cache kept across unloads in {dir} (max {}, save within {}, restore within {})",
                "",
                kv.max,
                humantime::format_duration(kv.save_timeout),
                humantime::format_duration(kv.restore_timeout)
            );
        }
    }
    let _ = writeln!(s, "\nmodels ({}):", c.models.len());
    let _ = writeln!(
        s,
        "  {:<16} {:<10} {:<22} {:>9}  {:<8} ALIASES",
        "NAME", "BACKEND", "UPSTREAM", "MEMORY", "GROUP"
    );
    for (name, m) in &c.models {
        let _ = writeln!(
            s,
            "  {name:<16} {:<10} {:<22} {:>9}  {:<8} {}",
            m.backend,
            m.upstream_name(name),
            m.memory.map_or("-".into(), |b| b.to_string()),
            m.group.as_deref().unwrap_or("-"),
            m.aliases.join(", ")
        );
    }
    // What could be loaded at once: every ungrouped model plus each group's largest.
    let mut groups: BTreeMap<&str, u64> = BTreeMap::new();
    let mut ungrouped = 0u64;
    let mut total = 0u64;
    for m in c.models.values() {
        let mem = m.memory.map_or(0, |b| b.0);
        total += mem;
        match &m.group {
            Some(g) => {
                let e = groups.entry(g.as_str()).or_default();
                *e = (*e).max(mem);
            }
            None => ungrouped += mem,
        }
    }
    let peak = ungrouped + groups.values().sum::<u64>();
    let _ = write!(
        s,
        "\nmemory: {} declared in all; loading every model it can at once (one per group) would take {}",
        ByteSize(total),
        ByteSize(peak)
    );
    let _ = match c.budget {
        Some(b) if b.0 < peak => write!(
            s,
            ", more than the {b} budget: models are unloaded to make room"
        ),
        Some(b) => write!(s, ", within the {b} budget"),
        None => write!(s, "; no budget"),
    };
    let _ = writeln!(s);
    s
}

/// What a valid config most likely does not mean, each line located in its
/// file: the loader's warnings, programs that are not there to run, and a budget
/// the machine cannot hold.
pub fn warnings(loaded: &Loaded) -> Vec<String> {
    let origin = &loaded.origin;
    loaded
        .warnings
        .iter()
        .cloned()
        .chain(missing_programs(loaded))
        .chain(budget_past_memory(
            loaded,
            modelyard_supervisor::physical_memory(),
        ))
        .map(|w| w.located(origin).to_string())
        .chain(
            wired_limit_warnings(&loaded.config, modelyard_supervisor::gpu_wired_limit())
                .into_iter()
                .map(|w| format!("{origin}: {w}")),
        )
        .collect()
}

/// Models that declare more than the GPU may wire (`limit`; None off Apple
/// silicon, where there is no such limit).
fn wired_limit_warnings(config: &modelyard_config::Config, limit: Option<u64>) -> Vec<String> {
    let Some(limit) = limit else {
        return Vec::new();
    };
    config
        .models
        .iter()
        .filter_map(|(name, m)| modelyard_supervisor::gpu_wired_warning(name, m.memory?.0, limit))
        .collect()
}

/// A budget above physical memory is never reached: the machine swaps (or, on
/// macOS, compresses and kills) long before, while the router still thinks there
/// is room. Not an error: the file may be meant for another machine.
fn budget_past_memory(loaded: &Loaded, physical: Option<u64>) -> Option<Issue> {
    let budget = loaded.config.budget?;
    let physical = physical?;
    (budget.0 > physical).then(|| {
        loaded.issue(
            &["budget"],
            format!(
                "{budget} is more than this machine's physical memory ({}); models would be \
                 loaded into swap long before the budget is reached: lower it, or set \
                 `reserve` to let the budget follow free memory",
                ByteSize(physical)
            ),
        )
    })
}

/// Backends whose program is not there to run: not an error (the router's PATH
/// may differ, or the program is installed later), but the first request for
/// such a model would only then find out, with a 502.
fn missing_programs(loaded: &Loaded) -> Vec<Issue> {
    let mut out = Vec::new();
    for (name, b) in &loaded.config.backends {
        let Some(program) = b.command.as_ref().and_then(|argv| argv.first()) else {
            continue;
        };
        // A PATH in the backend's env is the one its program is run with.
        let path = b
            .env
            .get("PATH")
            .map(std::ffi::OsString::from)
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        if modelyard_supervisor::find_program(program, &path).is_none() {
            let where_ = if program.contains('/') {
                "does not exist or is not executable"
            } else {
                "is not on PATH"
            };
            out.push(loaded.issue(
                &["backends", name, "command", "0"],
                format!(
                    "`{program}` {where_}; its models will fail with a 502 until it is installed"
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn models_past_the_gpu_wired_limit_are_warned_about() {
        let loaded = modelyard_config::load_str(
            "t",
            "backends: {omlx: {url: \"http://127.0.0.1:1\"}}\nmodels:\n  small: {backend: omlx, memory: 32GB}\n  large: {backend: omlx, memory: 56GB}\n  unsized: {backend: omlx}\n",
        )
        .unwrap();
        // A 64 GB Mac at the default limit (48 GiB).
        let w = super::wired_limit_warnings(&loaded.config, Some(48 << 30));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("models.large.memory: 56 GB is more than the GPU may wire"),
            "{w:?}"
        );
        assert!(
            super::wired_limit_warnings(&loaded.config, None).is_empty(),
            "Linux"
        );
    }

    #[test]
    fn a_backend_keeping_its_kv_cache_says_where_and_within_what() {
        let loaded = modelyard_config::load_str(
            "t",
            "backends: {llama: {command: [llama-server, --port, \"${PORT}\"], kv_cache: {dir: /var/kv, max: 8GB}}}\nmodels:\n  m: {backend: llama, memory: 1GB}\n",
        )
        .unwrap();
        let s = super::summary(&loaded);
        assert!(
            s.contains("KV cache kept across unloads in /var/kv (max 8 GB, save within 5s, restore within 5s)"),
            "{s}"
        );
    }
}
