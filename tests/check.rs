//! `modelyard check` as a user sees it: the real binary on a config file, its exit
//! code, the summary on stdout, and on stderr one `FILE:LINE: key.path: reason` line
//! per problem.
//!
//! Every YAML below is written one line per array element, so the line an error
//! must name is the element's position (counting from 1).

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_modelyard");
const REPO_ROUTES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../routes.yaml");

/// What one run of the binary left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn assert_ok(&self) {
        assert_eq!(self.code, Some(0), "expected success; {}", self.describe());
        assert!(self.stdout.contains(": OK"), "{}", self.describe());
    }

    fn assert_failed(&self) {
        assert_eq!(self.code, Some(1), "expected exit 1; {}", self.describe());
        assert!(
            self.stdout.is_empty(),
            "nothing on stdout; {}",
            self.describe()
        );
    }

    /// The stderr line whose prefix is `origin: key: `, where `origin` is `FILE:LINE`
    /// or `environment VAR`.
    fn issue(&self, origin: &str, key: &str) -> &str {
        let prefix = format!("{origin}: {key}: ");
        self.stderr
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| {
                panic!(
                    "no error line starting with `{prefix}`; {}",
                    self.describe()
                )
            })
    }

    /// Asserts a failure naming `key` at `line` of `file`, whose reason has every word
    /// of `reason`; returns the line for further checks.
    fn assert_issue_at(&self, file: &Path, line: usize, key: &str, reason: &[&str]) -> &str {
        let origin = format!("{}:{line}", file.display());
        let l = self.issue(&origin, key);
        for word in reason {
            assert!(l.contains(word), "`{word}` missing from: {l}");
        }
        l
    }

    /// The number of errors the header announces, checked against the lines listed.
    fn error_count(&self) -> usize {
        let header = self
            .stderr
            .lines()
            .next()
            .unwrap_or_else(|| panic!("empty stderr; {}", self.describe()));
        let n: usize = header
            .split_once(" is not valid (")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no error count in: {header}"));
        let listed = self
            .stderr
            .lines()
            .skip(1)
            .filter(|l| l.starts_with("  "))
            .count();
        assert_eq!(n, listed, "header count vs lines; {}", self.describe());
        n
    }
}

/// Runs `modelyard check` with `args`; no MODELYARD_* variable of the host gets
/// through, only those in `env`.
fn run(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("check").args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("MODELYARD_")) {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    // A directory without routes.yaml, so nothing is found by accident.
    let cwd = tempfile::tempdir().unwrap();
    cmd.current_dir(cwd.path());
    let out = cmd.output().expect("run modelyard check");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check(file: &Path) -> Run {
    check_env(file, &[])
}

fn check_env(file: &Path, env: &[(&str, &str)]) -> Run {
    run(&["--config".as_ref(), file.as_os_str()], env)
}

/// A temporary routes file holding `lines`, one per element.
fn yaml(lines: &[&str]) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new()
        .prefix("routes-")
        .suffix(".yaml")
        .tempfile()
        .unwrap();
    std::fs::write(f.path(), lines.join("\n") + "\n").unwrap();
    f
}

#[test]
fn the_repository_routes_yaml_passes_and_is_summarised() {
    let path = Path::new(REPO_ROUTES);
    // The 64 GB Mac it describes, whatever this machine has.
    let dir = tempfile::tempdir().unwrap();
    let meminfo = dir.path().join("meminfo");
    std::fs::write(&meminfo, "MemTotal: 67108864 kB\n").unwrap();
    let r = check_env(path, &[("MODELYARD_MEMINFO", meminfo.to_str().unwrap())]);
    r.assert_ok();
    // oMLX, Ollama and apfel are not installed here: at most a warning each.
    assert!(
        r.stderr
            .lines()
            .all(|l| l.starts_with("warning: ") && l.contains("is not on PATH")),
        "{}",
        r.describe()
    );
    for model in [
        "qwen3-30b-a3b",
        "qwen3.6-27b",
        "qwen3-32b",
        "bge-m3",
        "qwen3-8b",
        "apple-3b",
    ] {
        assert!(r.stdout.contains(model), "model {model}; {}", r.describe());
    }
    for alias in [
        "default", "daily", "code", "deep", "embed", "bge", "small", "apple", "apfel",
    ] {
        assert!(r.stdout.contains(alias), "alias {alias}; {}", r.describe());
    }
    assert!(r.stdout.contains("models (6)"), "{}", r.describe());
    assert!(r.stdout.contains("backends (3)"), "{}", r.describe());
    assert!(r.stdout.contains("budget 48 GB"), "{}", r.describe());
    assert!(
        r.stdout
            .contains("more than the 48 GB budget: models are unloaded to make room"),
        "the peak beside the budget says what it means; {}",
        r.describe()
    );
    assert!(
        r.stdout.contains("listen 127.0.0.1:11434"),
        "{}",
        r.describe()
    );
}

#[test]
fn unknown_top_level_key_is_named_with_a_suggestion() {
    let f = yaml(&[
        "budgt: 10GB", // 1
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        1,
        "budgt",
        &["unknown key", "did you mean `budget`?"],
    );
    assert_eq!(r.error_count(), 1);
}

#[test]
fn unknown_key_inside_a_model_is_named_with_its_path() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  m:",
        "    backend: srv",
        "    memory: 1GB",
        "    pinnd: true", // 8
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        8,
        "models.m.pinnd",
        &["unknown key", "did you mean `pinned`?"],
    );
}

#[test]
fn undefined_backend_is_named_and_a_close_one_suggested() {
    let f = yaml(&[
        "backends:",
        "  ollama:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  m:",
        "    backend: olama", // 6
        "    memory: 1GB",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        6,
        "models.m.backend",
        &["`olama` is not defined", "did you mean `ollama`?"],
    );
}

#[test]
fn a_model_defined_twice_names_both_lines() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  m:", // 5
        "    backend: srv",
        "    memory: 1GB",
        "  m:", // 8
        "    backend: srv",
        "    memory: 2GB",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(f.path(), 8, "models.m", &["defined twice", "line 5"]);
    assert_eq!(
        r.error_count(),
        1,
        "one error for the key, none for its children"
    );
}

#[test]
fn an_alias_may_not_shadow_a_model() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  a:",
        "    backend: srv",
        "    memory: 1GB",
        "  b:",
        "    backend: srv",
        "    memory: 1GB",
        "    aliases:",
        "      - fast",
        "      - a", // 13
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(f.path(), 13, "models.b.aliases.1", &["`a`", "shadows"]);
}

#[test]
fn an_alias_may_belong_to_one_model_only() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  a:",
        "    backend: srv",
        "    memory: 1GB",
        "    aliases: [fast]",
        "  b:",
        "    backend: srv",
        "    memory: 1GB",
        "    aliases:",
        "      - other",
        "      - fast", // 14
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        14,
        "models.b.aliases.1",
        &["`fast`", "already an alias of model `a`"],
    );
}

#[test]
fn a_model_bigger_than_the_budget_is_refused() {
    let f = yaml(&[
        "budget: 8GB",
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  big:",
        "    backend: srv",
        "    memory: 9GB", // 8
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        8,
        "models.big.memory",
        &["9 GB", "more than the whole budget", "8 GB"],
    );
}

#[test]
fn a_command_without_port_needs_a_url() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    command: [llama-server, --model, x.gguf]", // 3
        "models:",
        "  m:",
        "    backend: srv",
        "    memory: 1GB",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(f.path(), 3, "backends.srv.command", &["${PORT}", "url"]);
}

#[test]
fn an_empty_argv_is_refused() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    command: []", // 3
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(f.path(), 3, "backends.srv.command", &["empty argv"]);
}

#[test]
fn a_backend_needs_a_command_or_a_url() {
    let f = yaml(&[
        "backends:",
        "  srv:", // 2
        "    kind: openai",
        "    health: /health",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(f.path(), 2, "backends.srv", &["needs command", "or url"]);
}

/// The ```yaml blocks of a doc page that are whole files (they set `listen`).
fn doc_configs(page: &str) -> Vec<String> {
    let path = format!("{}/../../docs/{page}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.lines().any(|l| l.starts_with("listen:")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_configs_in_the_day_and_multimodal_pages_pass_check() {
    for (page, want) in [("day.md", 1), ("multimodal.md", 1)] {
        let configs = doc_configs(page);
        assert_eq!(configs.len(), want, "{page}");
        for c in configs {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(&mut f, c.as_bytes()).unwrap();
            let r = check(f.path());
            r.assert_ok();
            assert!(r.stdout.contains("one-shot"), "{page}: {}", r.stdout);
        }
    }
}

#[test]
fn one_shot_backends_are_summarised_and_refused_on_a_remote() {
    let f = yaml(&[
        "backends:",
        "  tts: {command: [mlx_audio.server, --port, \"${PORT}\"], one_shot: true}",
        "models:",
        "  kokoro: {backend: tts, memory: 1GB}",
    ]);
    let r = check(f.path());
    r.assert_ok();
    assert!(
        r.stdout.contains("one-shot, runs `mlx_audio.server"),
        "{}",
        r.stdout
    );
    let f = yaml(&[
        "backends:",
        "  far:",
        "    kind: remote",
        "    url: http://10.0.0.2:8000",
        "    one_shot: true", // 5
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(f.path(), 5, "backends.far.one_shot", &["never unloaded"]);
}

#[test]
fn a_bad_size_names_its_unit() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  m:",
        "    backend: srv",
        "    memory: 12 parsecs", // 7
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        7,
        "models.m.memory",
        &["not a size", "unknown unit `parsecs`", "GiB"],
    );
}

#[test]
fn a_bad_duration_is_refused() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  m:",
        "    backend: srv",
        "    memory: 1GB",
        "    idle_timeout: soon", // 8
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        8,
        "models.m.idle_timeout",
        &["`soon` is not a duration", "10m"],
    );
}

#[test]
fn a_duration_past_a_year_is_refused_however_it_is_written() {
    // One file each: deserialising stops at the first bad value.
    for (line, key, said) in [
        ("queue_timeout: 1e300", "queue_timeout", "`1e300"),
        (
            "header_timeout: 18446744073709551615",
            "header_timeout",
            "`18446744073709551615`",
        ),
        ("idle_timeout: 400d", "idle_timeout", "`400d`"),
    ] {
        let f = yaml(&[line]);
        let r = check(f.path());
        r.assert_failed();
        let msg = r.assert_issue_at(
            f.path(),
            1,
            key,
            &[said, "longer than the longest", "(365d)"],
        );
        assert_eq!(
            msg.contains("write `never`"),
            key == "idle_timeout",
            "`never` offered where it is allowed: {msg}"
        );
    }
}

#[test]
fn an_https_backend_is_refused_with_the_way_to_reach_it() {
    let f = yaml(&[
        "backends:",
        "  far:",
        "    kind: remote",
        "    url: https://api.example", // 4
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        4,
        "backends.far.url",
        &["only http://", "TLS-terminating proxy"],
    );
}

#[test]
fn never_is_accepted_for_idle_timeout() {
    let f = yaml(&[
        "idle_timeout: never",
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  m:",
        "    backend: srv",
        "    memory: 1GB",
        "    idle_timeout: never",
    ]);
    let r = check(f.path());
    r.assert_ok();
    assert!(r.stdout.contains("idle_timeout never"), "{}", r.describe());
}

#[test]
fn never_is_refused_where_a_duration_is_needed() {
    let f = yaml(&[
        "queue_timeout: never", // 1
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(f.path(), 1, "queue_timeout", &["`never` is not allowed"]);
}

#[test]
fn invalid_yaml_names_the_line() {
    let f = yaml(&[
        "budget: 8GB",
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "   health: /health", // 5: indented neither as a key of srv nor of backends
    ]);
    let r = check(f.path());
    r.assert_failed();
    let origin = format!("{}:5", f.path().display());
    let l = r.issue(&origin, "column 10");
    assert!(l.contains("not valid YAML"), "{l}");
    assert_eq!(r.error_count(), 1);
}

#[test]
fn a_model_without_backend_is_refused() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  m:", // 5: the key is absent, so the error stands at its model
        "    memory: 1GB",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(f.path(), 5, "models.m.backend", &["missing (required)"]);
}

#[test]
fn several_errors_are_reported_in_one_run() {
    let f = yaml(&[
        "budget: 8GB",
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "  dead:", // 5
        "    kind: openai",
        "models:",
        "  a:",
        "    backend: srv",
        "    memory: 9GB",  // 10
        "    aliases: [b]", // 11
        "  b:",
        "    backend: nope", // 13
        "    memory: 1GB",
        "  c: {backend: srv, memory: 1GB}", // 15
        "  c: {backend: srv, memory: 1GB}", // 16
    ]);
    let r = check(f.path());
    r.assert_failed();
    let p = f.path();
    r.assert_issue_at(p, 16, "models.c", &["defined twice", "line 15"]);
    r.assert_issue_at(p, 5, "backends.dead", &["needs command"]);
    r.assert_issue_at(p, 10, "models.a.memory", &["more than the whole budget"]);
    r.assert_issue_at(p, 13, "models.b.backend", &["`nope` is not defined"]);
    r.assert_issue_at(p, 11, "models.a.aliases.0", &["shadows"]);
    assert_eq!(r.error_count(), 5);
    assert!(r.stderr.contains("(5 errors)"), "{}", r.describe());
}

/// A model of 9 GB, too big for its 8 GB budget.
fn too_big() -> tempfile::NamedTempFile {
    yaml(&[
        "budget: 8GB",
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  big:",
        "    backend: srv",
        "    memory: 9GB",
    ])
}

#[test]
fn a_bad_budget_from_the_environment_names_the_variable() {
    let f = too_big();
    let r = check_env(f.path(), &[("MODELYARD_BUDGET", "lots")]);
    r.assert_failed();
    let l = r.issue("environment MODELYARD_BUDGET", "budget");
    assert!(l.contains("`lots` is not a size"), "{l}");
}

#[test]
fn the_environment_budget_overrides_the_file() {
    let f = too_big();
    let r = check_env(f.path(), &[("MODELYARD_BUDGET", "100GB")]);
    r.assert_ok();
    assert!(r.stdout.contains("budget 100 GB"), "{}", r.describe());
}

#[test]
fn the_environment_listen_address_shows_in_the_summary() {
    let f = yaml(&["listen: 127.0.0.1:11434"]);
    let r = check_env(f.path(), &[("MODELYARD_LISTEN", "127.0.0.1:9999")]);
    r.assert_ok();
    assert!(
        r.stdout.contains("listen 127.0.0.1:9999"),
        "{}",
        r.describe()
    );
}

#[test]
fn a_nested_key_is_overridden_with_double_underscores() {
    let f = too_big();
    let r = check_env(f.path(), &[("MODELYARD_MODELS__BIG__MEMORY", "2GB")]);
    r.assert_ok();
    assert!(r.stdout.contains("2 GB"), "{}", r.describe());
}

#[test]
fn a_modelyard_variable_that_is_no_key_is_ignored() {
    let f = yaml(&["listen: 127.0.0.1:11434"]);
    let r = check_env(
        f.path(),
        &[("MODELYARD_FOO", "1"), ("MODELYARD_TEST_PYTHON", "x")],
    );
    r.assert_ok();
    assert!(!r.stderr.contains("MODELYARD_"), "{}", r.describe());
}

#[test]
fn a_misspelt_key_variable_is_a_warning_naming_the_key() {
    let f = yaml(&["listen: 127.0.0.1:11434"]);
    let r = check_env(f.path(), &[("MODELYARD_BUGDET", "8GB")]);
    r.assert_ok();
    assert!(
        r.stderr.contains(
            "environment MODELYARD_BUGDET: bugdet: not a routes.yaml key, so ignored; \
             did you mean MODELYARD_BUDGET?"
        ),
        "{}",
        r.describe()
    );
}

#[test]
fn modelyard_config_and_log_are_not_keys() {
    let f = yaml(&["listen: 127.0.0.1:11434"]);
    let path = f.path().to_str().unwrap();
    let r = run(
        &[],
        &[("MODELYARD_CONFIG", path), ("MODELYARD_LOG", "debug")],
    );
    r.assert_ok();
    assert!(r.stdout.starts_with(path), "{}", r.describe());
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").join("routes.yaml");
    let r = check(&missing);
    r.assert_failed();
    assert!(
        r.stderr.contains(&missing.display().to_string()),
        "{}",
        r.describe()
    );
    assert!(r.stderr.contains("cannot read"), "{}", r.describe());
}

#[test]
fn sizes_in_iec_si_fractions_and_plain_bytes_are_accepted() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  a: {backend: srv, memory: 512MiB}",
        "  b: {backend: srv, memory: 1.5GB}",
        "  c: {backend: srv, memory: 3000000}",
    ]);
    let r = check(f.path());
    r.assert_ok();
    for shown in ["512 MiB", "1.5 GB", "3 MB"] {
        assert!(r.stdout.contains(shown), "{shown}; {}", r.describe());
    }
}

#[test]
fn a_gib_is_more_than_a_gb() {
    let f = yaml(&[
        "budget: 1GB",
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "models:",
        "  m: {backend: srv, memory: 1GiB}", // 6
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        6,
        "models.m.memory",
        &["1 GiB", "more than the whole budget"],
    );
}

#[test]
fn the_port_placeholder_is_accepted_in_a_url() {
    // The supervisor fills `${PORT}` into url as it does into argv and env.
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    command: [llama-server, --port, \"${PORT}\"]",
        "    url: \"http://localhost:${PORT}\"",
        "models:",
        "  m: {backend: srv, memory: 1GB}",
    ]);
    check(f.path()).assert_ok();
}

#[test]
fn servers_told_their_port_by_environment_need_no_port_in_the_command() {
    let f = yaml(&[
        "backends:",
        "  ollama:",
        "    kind: ollama",
        "    command: [ollama, serve]",
        "  apfel:",
        "    kind: apfel",
        "    command: [apfel, --serve]",
        "models:",
        "  small:",
        "    backend: ollama",
        "    memory: 5GB",
        "  apple:",
        "    backend: apfel",
        "    memory: 1GB",
        "    fallback: small",
    ]);
    check(f.path()).assert_ok();
}

#[test]
fn a_fallback_must_name_another_configured_model() {
    let f = yaml(&[
        "backends:",
        "  apfel:",
        "    kind: apfel",
        "    command: [apfel, --serve]",
        "models:",
        "  apple:",
        "    backend: apfel",
        "    memory: 1GB",
        "    fallback: smal", // 9
        "  small:",
        "    backend: apfel",
        "    memory: 1GB",
        "    fallback: small", // 13
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        9,
        "models.apple.fallback",
        &["`smal`", "did you mean `small`"],
    );
    r.assert_issue_at(f.path(), 13, "models.small.fallback", &["its own fallback"]);
}

#[test]
fn a_model_on_a_server_someone_else_runs_needs_no_memory() {
    let f = yaml(&[
        "backends:",
        "  mine:",
        "    url: http://127.0.0.1:8080",
        "models:",
        "  always-there:",
        "    backend: mine",
    ]);
    check(f.path()).assert_ok();
}

#[test]
fn limits_of_zero_and_body_limits_for_non_paths_are_refused_by_line() {
    let f = yaml(&[
        "max_connections: 0",
        "header_timeout: 0s",
        "max_json_depth: 0",
        "max_body_by_path:",
        "  /v1/embeddings: 64MiB",
        "  embeddings: 1MB",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(f.path(), 1, "max_connections", &["more than 0"]);
    r.assert_issue_at(f.path(), 2, "header_timeout", &["more than 0"]);
    r.assert_issue_at(f.path(), 3, "max_json_depth", &["more than 0"]);
    r.assert_issue_at(
        f.path(),
        6,
        "max_body_by_path.embeddings",
        &["not a request path"],
    );
    assert_eq!(r.error_count(), 4, "{}", r.describe());
}

#[test]
fn every_max_limit_of_zero_is_refused_in_one_run_saying_what_it_would_refuse() {
    let f = yaml(&[
        "max_queue: 0",        // 1
        "max_body: 0",         // 2
        "max_body_by_path:",   // 3
        "  /v1/embeddings: 0", // 4
        "max_json_depth: 0",   // 5
        "max_headers: 0",      // 6
        "max_header_size: 0",  // 7
        "max_uri_length: 0B",  // 8
        "max_connections: 0",  // 9
        "max_response: 0",     // 10
    ]);
    let r = check(f.path());
    r.assert_failed();
    let p = f.path();
    r.assert_issue_at(
        p,
        1,
        "max_queue",
        &["more than 0", "no model would ever load"],
    );
    r.assert_issue_at(
        p,
        2,
        "max_body",
        &["more than 0", "every request that has a body"],
    );
    r.assert_issue_at(
        p,
        4,
        "max_body_by_path./v1/embeddings",
        &["more than 0", "every request to /v1/embeddings", "max_body"],
    );
    for (line, key) in [
        (5, "max_json_depth"),
        (6, "max_headers"),
        (7, "max_header_size"),
        (8, "max_uri_length"),
        (9, "max_connections"),
        (10, "max_response"),
    ] {
        r.assert_issue_at(p, line, key, &["more than 0", "would refuse every", key]);
    }
    assert_eq!(r.error_count(), 9, "{}", r.describe());
}

#[test]
fn values_that_cannot_be_right_say_what_to_write_instead() {
    // One file each: reading stops at the first value of the wrong kind.
    for (line, key, reason) in [
        (
            "budget: -5GB",
            "budget",
            &["`-5GB`", "cannot be negative"][..],
        ),
        (
            "max_queue: -1",
            "max_queue",
            &["whole number of at least 1", "`-1`"],
        ),
        (
            "max_queue: 1.5",
            "max_queue",
            &["whole number of at least 1", "`1.5`"],
        ),
        (
            "max_connections: lots",
            "max_connections",
            &["whole number of at least 1", "`lots`"],
        ),
        (
            "idle_timeout: -5s",
            "idle_timeout",
            &["`-5s`", "cannot be negative"],
        ),
        (
            "listen: router.lan:8080",
            "listen",
            &["IP address and a port", "127.0.0.1:11434", "not resolved"],
        ),
        (
            "listen: 127.0.0.1",
            "listen",
            &["has no port", "127.0.0.1:11434"],
        ),
    ] {
        let f = yaml(&[line]);
        let r = check(f.path());
        r.assert_failed();
        r.assert_issue_at(f.path(), 1, key, reason);
        assert_eq!(r.error_count(), 1, "{line}: {}", r.describe());
    }
}

#[test]
fn a_negative_count_from_the_environment_names_the_variable() {
    let f = yaml(&["listen: 127.0.0.1:11434"]);
    let r = check_env(f.path(), &[("MODELYARD_MAX_QUEUE", "-1")]);
    r.assert_failed();
    let l = r.issue("environment MODELYARD_MAX_QUEUE", "max_queue");
    assert!(l.contains("whole number of at least 1"), "{l}");
}

#[test]
fn a_file_without_models_passes_with_a_warning() {
    for lines in [&[""][..], &["budget: 8GB", "models: {}"]] {
        let f = yaml(lines);
        let r = check(f.path());
        r.assert_ok();
        assert!(r.stdout.contains("models (0)"), "{}", r.describe());
        let warning = r
            .stderr
            .lines()
            .find(|l| l.starts_with("warning: "))
            .unwrap_or_else(|| panic!("no warning line; {}", r.describe()));
        assert!(
            warning.contains("models: no models are defined"),
            "{warning}"
        );
    }
}

#[test]
fn a_program_that_is_not_there_is_a_warning_not_an_error() {
    let f = yaml(&[
        "backends:",
        "  gone:",
        "    command: [no-such-program-here, --port, \"${PORT}\"]",
        "  path:",
        "    command: [/nowhere/bin/server, --port, \"${PORT}\"]",
        "  found:",
        "    command: [sh, -c, \"exec sleep ${PORT}\"]",
        "models:",
        "  a: {backend: gone, memory: 1GB}",
        "  b: {backend: path, memory: 1GB}",
        "  c: {backend: found, memory: 1GB}",
    ]);
    let r = check(f.path());
    r.assert_ok();
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{}", r.describe());
    let file = f.path().display();
    assert!(
        warnings[0].contains(&format!(
            "{file}:3: backends.gone.command.0: `no-such-program-here` is not on PATH"
        )),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains(&format!(
            "{file}:5: backends.path.command.0: `/nowhere/bin/server` does not exist"
        )),
        "{warnings:?}"
    );
    assert!(warnings.iter().all(|w| w.contains("502")), "{warnings:?}");
}

#[test]
fn a_limit_meant_as_no_limit_is_refused_before_it_costs_memory() {
    for (line, key) in [
        ("max_headers: 1000000000", "max_headers"),
        ("max_header_size: 18446744073709551615", "max_header_size"),
        ("max_uri_length: 1GB", "max_uri_length"),
        ("max_json_depth: 100000", "max_json_depth"),
        ("max_queue: 10000000", "max_queue"),
    ] {
        let f = yaml(&[line]);
        let r = check(f.path());
        r.assert_failed();
        r.assert_issue_at(f.path(), 1, key, &["past the most this router accepts"]);
    }
    let f = yaml(&["max_queue: 1e10"]);
    check(f.path()).assert_issue_at(f.path(), 1, "max_queue", &["`1e10` is too large"]);
}

#[test]
fn the_version_names_the_release_and_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let head = Command::new("git")
        .args(["-C", repo, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("modelyard {} (commit {head})\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn numbers_and_booleans_in_a_command_or_args_are_taken_as_their_text() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    command: [llama-server, --port, \"${PORT}\", -c, 4096, --flash-attn, true]",
        "models:",
        "  a: {backend: srv, memory: 1GB, args: [--temp, 0.5, --seed, -1]}",
    ]);
    let r = check(f.path());
    r.assert_ok();
    assert!(
        r.stdout
            .contains("runs `llama-server --port ${PORT} -c 4096 --flash-attn true`"),
        "{}",
        r.describe()
    );
}

#[test]
fn a_command_written_as_one_string_is_refused_with_the_list_written_out() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    command: llama-server --port ${PORT} -c 4096 --alias 'my model'",
        "models:",
        "  a: {backend: srv, memory: 1GB}",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        3,
        "backends.srv.command",
        &[
            "a list of words, not one string",
            r#"write [llama-server, --port, "${PORT}", -c, 4096, --alias, "my model"]"#,
        ],
    );
}

#[test]
fn a_size_without_a_unit_under_a_megabyte_is_refused() {
    let f = yaml(&[
        "budget: 8GB",
        "backends:",
        "  srv: {url: \"http://127.0.0.1:8000\"}",
        "models:",
        "  a: {backend: srv, memory: 50}",
        "  b: {backend: srv, memory: 2000000}",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        5,
        "models.a.memory",
        &["`50` has no unit, so it is 50 bytes", "write 50MB or 50GB"],
    );
    assert_eq!(
        r.error_count(),
        1,
        "2000000 bytes is a size someone may mean"
    );
    let r = check_env(f.path(), &[("MODELYARD_BUDGET", "48")]);
    r.issue("environment MODELYARD_BUDGET", "budget");
    assert!(r.stderr.contains("`48` has no unit"), "{}", r.describe());
}

#[test]
fn a_budget_past_physical_memory_is_a_warning_naming_both_figures() {
    let dir = tempfile::tempdir().unwrap();
    let meminfo = dir.path().join("meminfo");
    std::fs::write(
        &meminfo,
        "MemTotal: 24000000 kB\nMemAvailable: 12000000 kB\n",
    )
    .unwrap();
    let f = yaml(&[
        "budget: 48GB",
        "backends:",
        "  srv: {url: \"http://127.0.0.1:8000\"}",
        "models:",
        "  a: {backend: srv, memory: 1GB}",
    ]);
    let r = check_env(
        f.path(),
        &[("MODELYARD_MEMINFO", meminfo.to_str().unwrap())],
    );
    r.assert_ok();
    let want = format!(
        "warning: {}:1: budget: 48 GB is more than this machine's physical memory (24.6 GB)",
        f.path().display()
    );
    assert!(r.stderr.contains(&want), "{want}\n{}", r.describe());
    // Within the machine's memory: no warning.
    let r = check_env(
        f.path(),
        &[
            ("MODELYARD_BUDGET", "20GB"),
            ("MODELYARD_MEMINFO", meminfo.to_str().unwrap()),
        ],
    );
    r.assert_ok();
    assert!(!r.stderr.contains("physical memory"), "{}", r.describe());
}

/// `check` fails on `f` with an issue at `line`, `column`, that says `says`.
fn refused_at(f: &tempfile::NamedTempFile, line: usize, column: &str, says: &str) {
    let r = check(f.path());
    r.assert_failed();
    let l = r.issue(&format!("{}:{line}", f.path().display()), column);
    assert!(l.contains(says), "{l}");
}

#[test]
fn an_unclosed_bracket_is_named_on_its_own_line() {
    let f = yaml(&[
        "budget: 8GB",
        "backends:",
        "  srv:",
        "    command: [llama-server, --port, \"${PORT}\"",
        "    health: /health",
        "models:",
        "  a: {backend: srv, memory: 1GB}",
    ]);
    refused_at(
        &f,
        4,
        "column 14",
        "not valid YAML: the `[` on this line is never closed; end it with `]`",
    );
}

#[test]
fn a_bare_port_placeholder_in_a_flow_list_is_told_to_be_quoted() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    command: [llama-server, --port, ${PORT}]",
        "models:",
        "  a: {backend: srv, memory: 1GB}",
    ]);
    refused_at(
        &f,
        3,
        "column 37",
        r#"`${PORT}` must be quoted inside [ ]: write "${PORT}""#,
    );
}

#[test]
fn a_tab_in_the_indentation_is_told_to_be_spaces() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    url: http://127.0.0.1:8000",
        "\thealth: /health",
    ]);
    refused_at(
        &f,
        4,
        "column 1",
        "a tab in the indentation; indent with spaces",
    );
}

#[test]
fn a_lower_case_placeholder_gets_did_you_mean() {
    let f = yaml(&[
        "backends:",
        "  srv:",
        "    command: [llama-server, --port, \"${port}\"]",
        "models:",
        "  a: {backend: srv, memory: 1GB}",
    ]);
    let r = check(f.path());
    r.assert_failed();
    r.assert_issue_at(
        f.path(),
        3,
        "backends.srv.command.2",
        &["`${port}` is not filled in; did you mean ${PORT}?"],
    );
    assert_eq!(
        r.error_count(),
        1,
        "not also the generic `has no ${{PORT}}`"
    );
}
