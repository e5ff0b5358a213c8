//! routes.yaml: the one file users edit. Its schema, how it is found and loaded
//! (file, then `MODELYARD_*` environment overrides), and the validation that runs
//! before anything starts, naming the key, the line and the reason for each error.

mod argv;
mod count;
mod env;
mod error;
mod keys;
pub mod listen;
mod load;
mod locate;
#[cfg(test)]
mod proptests;
mod request_log;
mod schema;
mod size;
mod suggest;
mod syntax;
mod timeout;
mod validate;
mod yaml;

pub use error::{ConfigError, Issue, Origin};
pub use load::{load_file, load_str, locate, Loaded};
pub use request_log::{RequestLog, RequestLogSettings};
pub use schema::{
    Backend, BackendKind, Capability, Config, KvCache, LoadingProgress, Model, Priority,
};
pub use size::ByteSize;
pub use suggest::{close_names, closest};
pub use timeout::Timeout;

/// How long a model of a `one_shot` backend stays loaded after its last request
/// unless it sets its own idle_timeout: long enough for a short batch of jobs, short
/// enough that a diffusion or speech model does not sit on memory the chat
/// models want back.
pub const ONE_SHOT_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

impl Config {
    /// How long `model` may sit unused before it is unloaded: its own setting, else
    /// for a one-shot backend the shorter of ONE_SHOT_IDLE and the top level's,
    /// else the top level's.
    pub fn idle_timeout_of(&self, model: &Model) -> Timeout {
        if let Some(t) = model.idle_timeout {
            return t;
        }
        let one_shot = self
            .backends
            .get(&model.backend)
            .is_some_and(|b| b.one_shot);
        match (one_shot, self.idle_timeout) {
            (true, Timeout::After(d)) => Timeout::After(d.min(ONE_SHOT_IDLE)),
            (true, Timeout::Never) => Timeout::After(ONE_SHOT_IDLE),
            (false, t) => t,
        }
    }

    /// The model a client's name refers to: the name itself, or an alias of it.
    pub fn resolve(&self, name: &str) -> Option<&str> {
        if let Some((k, _)) = self.models.get_key_value(name) {
            return Some(k.as_str());
        }
        self.models
            .iter()
            .find(|(_, m)| m.aliases.iter().any(|a| a == name))
            .map(|(k, _)| k.as_str())
    }

    /// The largest body a request to `path` may send.
    pub fn max_body_for(&self, path: &str) -> u64 {
        self.max_body_by_path
            .get(path)
            .unwrap_or(&self.max_body)
            .bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn idle(top: &str, model: &str) -> Timeout {
        let yaml = format!(
            "{top}\nbackends:\n  tts: {{command: [t, \"${{PORT}}\"], one_shot: true}}\n  llm: {{command: [l, \"${{PORT}}\"]}}\nmodels:\n  kokoro: {{backend: tts, memory: 1GB}}\n  whisper: {{backend: tts, memory: 1GB, idle_timeout: 5m}}\n  chat: {{backend: llm, memory: 1GB}}\n"
        );
        let c = load_str("t", &yaml).unwrap().config;
        c.idle_timeout_of(&c.models[model])
    }

    #[test]
    fn a_file_without_models_loads_with_a_warning_naming_models() {
        for (text, line) in [("", None), ("budget: 8GB\nmodels: {}\n", Some(2))] {
            let loaded = load_str("t", text).unwrap();
            let [w] = loaded.warnings.as_slice() else {
                panic!("one warning: {:?}", loaded.warnings);
            };
            assert_eq!(w.key, "models");
            assert_eq!(w.origin, line.map(Origin::Line));
            assert!(w.message.contains("no models are defined"), "{w:?}");
        }
        let one = "backends: {s: {url: \"http://127.0.0.1:1\"}}\nmodels: {m: {backend: s}}\n";
        assert!(load_str("t", one).unwrap().warnings.is_empty());
    }

    #[test]
    fn one_shot_models_idle_out_after_a_minute_unless_they_say_otherwise() {
        let min = |m: u64| Timeout::After(Duration::from_secs(m * 60));
        assert_eq!(idle("idle_timeout: 10m", "kokoro"), min(1));
        assert_eq!(idle("idle_timeout: 10m", "whisper"), min(5));
        assert_eq!(idle("idle_timeout: 10m", "chat"), min(10));
        // Never keeps chat models, not a tool that was meant to be put away.
        assert_eq!(idle("idle_timeout: never", "kokoro"), min(1));
        assert_eq!(idle("idle_timeout: never", "chat"), Timeout::Never);
        // A machine tuned tighter than a minute stays tighter.
        assert_eq!(
            idle("idle_timeout: 20s", "kokoro"),
            Timeout::After(Duration::from_secs(20))
        );
    }

    #[test]
    fn priorities_load_and_bad_ones_name_their_key() {
        let base = "backends: {s: {url: \"http://127.0.0.1:1\"}}\n";
        let ok = format!("{base}background_keys: [indexer]\ninteractive_grace: 30s\nmodels: {{e: {{backend: s, priority: background}}}}\n");
        let c = load_str("t", &ok).unwrap().config;
        assert_eq!(c.models["e"].priority, Some(Priority::Background));
        assert_eq!(c.interactive_grace, Duration::from_secs(30));
        assert_eq!(c.background_queue_timeout, Duration::from_secs(600));
        let keys = |yaml: String| match load_str("t", &yaml) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid { issues, .. }) => issues
                .into_iter()
                .map(|i| format!("{}: {}", i.key, i.message))
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        let bad = keys(format!(
            "{base}models: {{e: {{backend: s, priority: urgent}}}}\n"
        ));
        assert!(bad.iter().any(|i| i.contains("priority")), "{bad:?}");
        let bad = keys(format!("{base}background_keys: [\" \"]\nbackground_queue_timeout: 0s\nmodels: {{e: {{backend: s}}}}\n"));
        assert!(
            bad.iter().any(|i| i.starts_with("background_keys.0:")),
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|i| i.starts_with("background_queue_timeout:")),
            "{bad:?}"
        );
    }

    /// The issues routes.yaml with `backend` as its one backend gets, as `key: message`.
    fn kv_issues(backend: &str) -> Vec<String> {
        let yaml =
            format!("backends:\n  b: {backend}\nmodels:\n  m: {{backend: b, memory: 1GB}}\n");
        match load_str("t", &yaml) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid { issues, .. }) => issues
                .into_iter()
                .map(|i| format!("{}: {}", i.key, i.message))
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn kv_cache_defaults_to_20gb_and_5s_under_the_users_cache_dir() {
        let yaml = "backends:\n  b: {command: [llama-server, --port, \"${PORT}\"], kv_cache: {}}\nmodels:\n  m: {backend: b, memory: 1GB}\n";
        let c = load_str("t", yaml).unwrap().config;
        let kv = c.backends["b"].kv_cache.clone().unwrap();
        assert_eq!(kv.max, ByteSize(20_000_000_000));
        assert_eq!(kv.save_timeout, Duration::from_secs(5));
        assert_eq!(kv.restore_timeout, Duration::from_secs(5));
        assert!(kv.root().unwrap().ends_with("modelyard/kv-cache"));
        let off = "backends:\n  b: {command: [x, \"${PORT}\"]}\nmodels:\n  m: {backend: b, memory: 1GB}\n";
        assert_eq!(
            load_str("t", off).unwrap().config.backends["b"].kv_cache,
            None
        );
    }

    #[test]
    fn kv_cache_mistakes_name_their_key() {
        let cmd = "command: [llama-server, --port, \"${PORT}\"]";
        let cases = [
            (format!("{{{cmd}, kv_cache: {{max: 0}}}}"), "backends.b.kv_cache.max: must be more than 0"),
            (format!("{{{cmd}, kv_cache: {{save_timeout: 0s}}}}"), "backends.b.kv_cache.save_timeout: must be more than 0s"),
            (format!("{{{cmd}, kv_cache: {{restore_timeout: 0s}}}}"), "backends.b.kv_cache.restore_timeout: must be more than 0s"),
            (format!("{{{cmd}, kv_cache: {{dir: kv}}}}"), "backends.b.kv_cache.dir: `kv` must be an absolute path"),
            (format!("{{{cmd}, kv_cache: {{sav_timeout: 1s}}}}"), "backends.b.kv_cache.sav_timeout: unknown"),
            ("{url: \"http://127.0.0.1:1\", kv_cache: {}}".to_string(), "backends.b.kv_cache: only a server the router starts"),
            ("{kind: ollama, command: [ollama, serve], kv_cache: {}}".to_string(), "this backend is kind ollama"),
            ("{command: [llama-server, --port, \"${PORT}\", --slot-save-path, /x/], kv_cache: {}}".to_string(), "sets --slot-save-path itself"),
        ];
        for (backend, wanted) in cases {
            let issues = kv_issues(&backend);
            assert!(
                issues.iter().any(
                    |i| i.starts_with(wanted) || (i.contains(wanted) && !wanted.contains(": "))
                ),
                "{backend}: wanted `{wanted}` in {issues:?}"
            );
        }
        assert!(kv_issues(
            "{kind: omlx, command: [omlx, serve], kv_cache: {dir: /var/kv, max: 50GB}}"
        )
        .is_empty());
    }

    #[test]
    fn request_log_is_on_by_default_off_when_said_and_its_keys_are_checked() {
        let base = "backends: {s: {url: \"http://127.0.0.1:1\"}}\nmodels: {m: {backend: s}}\n";
        let load = |top: &str| load_str("t", &format!("{top}\n{base}"));
        let c = load("").unwrap().config;
        let s = c.request_log.settings().expect("on by default");
        assert_eq!(
            (s.keep, s.max.bytes(), s.capture),
            (Duration::from_secs(30 * 86400), 100_000_000, false)
        );
        assert_eq!(
            load("request_log: off").unwrap().config.request_log,
            RequestLog::Off
        );
        let c = load("request_log: {path: /tmp/r.db, keep: 7d, max: 10MB, capture: true}")
            .unwrap()
            .config;
        let s = c.request_log.settings().unwrap();
        assert_eq!(s.path_or_default(), Some("/tmp/r.db".into()));
        assert_eq!(
            (s.keep, s.max.bytes(), s.capture),
            (Duration::from_secs(7 * 86400), 10_000_000, true)
        );
        let e = load("request_log: {keep: 7d, kep: 1}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kep"), "{e}");
        let e = load("request_log: sometimes").unwrap_err().to_string();
        assert!(e.contains("request_log") && e.contains("sometimes"), "{e}");
        let e = load("request_log: {keep: soon}").unwrap_err().to_string();
        assert!(e.contains("keep") && e.contains("soon"), "{e}");
    }
}
