use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::byte_size::parse_byte_size;

/// A simulated model server for demos, tests and benchmarks, speaking the
/// OpenAI, Ollama, oMLX or apfel dialect.
#[derive(Debug, Clone, Parser)]
#[command(name = "modelyard-sim", version)]
pub struct Args {
    /// Port to listen on; 0 picks a free one (the listening line reports it).
    /// Absent (or 0) lets a flavor take its backend's port variable instead:
    /// OLLAMA_HOST, OMLX_PORT, APFEL_PORT (apfel then falls back to 11434).
    #[arg(long)]
    pub port: Option<u16>,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Model name to serve; repeat to serve several. The ollama and omlx
    /// flavors take NAME=SIZE: a model they know but load only on demand,
    /// holding SIZE bytes (default --memory) while loaded. apfel ignores it.
    #[arg(long = "model", value_name = "NAME", default_value = "sim")]
    pub models: Vec<String>,

    /// Bytes to allocate and keep resident (e.g. 512MiB, 1.5GB, 300MB, 4096);
    /// for ollama and omlx, the default size of each model while loaded.
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub memory: Option<u64>,

    /// How long /health reports "loading" after start; for ollama and omlx,
    /// how long loading each model takes.
    #[arg(long, value_name = "DUR", default_value = "0s", value_parser = humantime::parse_duration)]
    pub load_time: Duration,

    /// Delay before each generated token (streamed or not).
    #[arg(long, value_name = "DUR", default_value = "0s", value_parser = humantime::parse_duration)]
    pub token_delay: Duration,

    /// Completion tokens per request, unless the request asks for fewer.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub tokens: u64,

    /// Serve N inference requests, then die with exit code 1 in the middle of the next one.
    #[arg(long, value_name = "N")]
    pub crash_after: Option<u64>,

    /// Stream N tokens, then send nothing more while keeping the connection open,
    /// like a backend hung mid-stream.
    #[arg(long, value_name = "N")]
    pub stall_after: Option<u64>,

    /// Answer inference requests (OpenAI flavor) like a broken backend:
    /// `garbage` (bytes that are not HTTP), `endless` (a JSON body that never
    /// ends) or `huge-header` (a 1 MiB response header).
    #[arg(long, value_enum, value_name = "MODE")]
    pub fail: Option<crate::misbehave::Failure>,

    /// Append a line to FILE when the process starts, when it is ready and when
    /// it is told to stop (ns since the Unix epoch, the step, the model): the
    /// backend's own load and stop time, for a benchmark to subtract.
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<std::path::PathBuf>,

    /// Start but never bind the port, like a backend stuck at start.
    #[arg(long)]
    pub hang_start: bool,

    /// Ignore SIGTERM so a supervisor has to escalate to SIGKILL.
    #[arg(long)]
    pub ignore_sigterm: bool,

    /// API dialect to speak.
    #[arg(long, value_enum, default_value_t = Flavor::Openai)]
    pub flavor: Flavor,

    /// ollama: how long after an unload reply the memory is actually freed.
    #[arg(long, value_name = "DUR", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub unload_time: Duration,

    /// omlx: memory ceiling for loaded models in GiB (1 GB = 1024^3 bytes);
    /// absent means unlimited.
    #[arg(long = "memory-guard-gb", value_name = "GB", value_parser = parse_gigabytes)]
    pub memory_guard: Option<u64>,

    /// omlx: require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// apfel: context window in tokens, reported and enforced.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub context_window: u64,

    /// apfel: requests served at once; more wait for a free slot.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_concurrent: usize,

    /// apfel: how long a request waits for a free slot before a 429.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = humantime::parse_duration)]
    pub concurrency_wait: Duration,
}

/// The API dialect the sim speaks, each standing in for one real backend so
/// the router's adapters can be tested end to end against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flavor {
    /// A plain OpenAI-compatible server with its models always loaded.
    Openai,
    /// Ollama 0.33: native /api routes plus /v1, models loaded on demand
    /// and unloaded by its own keep-alive and max-loaded scheduler.
    Ollama,
    /// oMLX 0.5.0: /v1 plus per-model load/unload/status routes, with LRU
    /// eviction under a memory ceiling.
    Omlx,
    /// apfel 1.8.4: the single "apple-foundationmodel" behind a strict
    /// OpenAI chat route, a context window and a concurrency limit.
    Apfel,
}

/// Bytes for `--memory-guard-gb`, which oMLX counts in binary gigabytes.
fn parse_gigabytes(text: &str) -> Result<u64, String> {
    let gb: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of gigabytes"))?;
    if !gb.is_finite() || gb <= 0.0 {
        return Err(format!("{text:?} must be a positive number of gigabytes"));
    }
    Ok((gb * 1024.0 * 1024.0 * 1024.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let args = Args::parse_from(["modelyard-sim"]);
        assert_eq!(args.port, None);
        assert_eq!(args.host, "127.0.0.1");
        assert_eq!(args.models, vec!["sim".to_owned()]);
        assert_eq!(args.memory, None);
        assert_eq!(args.load_time, Duration::ZERO);
        assert_eq!(args.token_delay, Duration::ZERO);
        assert_eq!(args.tokens, 16);
        assert_eq!(args.crash_after, None);
        assert_eq!(args.fail, None);
        assert!(!args.hang_start);
        assert!(!args.ignore_sigterm);
        assert_eq!(args.timeline, None);
        assert_eq!(args.flavor, Flavor::Openai);
        assert_eq!(args.unload_time, Duration::from_millis(200));
        assert_eq!(args.memory_guard, None);
        assert_eq!(args.api_key, None);
        assert_eq!(args.context_window, 4096);
        assert_eq!(args.max_concurrent, 5);
        assert_eq!(args.concurrency_wait, Duration::from_secs(30));
    }

    #[test]
    fn all_flags() {
        let args = Args::parse_from([
            "modelyard-sim",
            "--port",
            "8080",
            "--host",
            "0.0.0.0",
            "--model",
            "a",
            "--model",
            "b",
            "--memory",
            "1.5GB",
            "--load-time",
            "2s",
            "--token-delay",
            "15ms",
            "--tokens",
            "4",
            "--crash-after",
            "3",
            "--hang-start",
            "--ignore-sigterm",
            "--flavor",
            "openai",
        ]);
        assert_eq!(args.port, Some(8080));
        assert_eq!(args.models, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(args.memory, Some(1_500_000_000));
        assert_eq!(args.load_time, Duration::from_secs(2));
        assert_eq!(args.token_delay, Duration::from_millis(15));
        assert_eq!(args.tokens, 4);
        assert_eq!(args.crash_after, Some(3));
        assert!(args.hang_start && args.ignore_sigterm);
    }

    #[test]
    fn flavor_flags() {
        for (name, flavor) in [
            ("ollama", Flavor::Ollama),
            ("omlx", Flavor::Omlx),
            ("apfel", Flavor::Apfel),
        ] {
            let args = Args::parse_from(["modelyard-sim", "--flavor", name]);
            assert_eq!(args.flavor, flavor);
        }
        let args = Args::parse_from([
            "modelyard-sim",
            "--unload-time",
            "1s",
            "--memory-guard-gb",
            "1.5",
            "--api-key",
            "k",
            "--context-window",
            "8192",
            "--max-concurrent",
            "2",
            "--concurrency-wait",
            "100ms",
        ]);
        assert_eq!(args.unload_time, Duration::from_secs(1));
        assert_eq!(args.memory_guard, Some(3 * 512 * 1024 * 1024));
        assert_eq!(args.api_key.as_deref(), Some("k"));
        assert_eq!(args.context_window, 8192);
        assert_eq!(args.max_concurrent, 2);
        assert_eq!(args.concurrency_wait, Duration::from_millis(100));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Args::try_parse_from(["modelyard-sim", "--memory", "lots"]).is_err());
        assert!(Args::try_parse_from(["modelyard-sim", "--flavor", "llamacpp"]).is_err());
        assert!(Args::try_parse_from(["modelyard-sim", "--memory-guard-gb", "-1"]).is_err());
        assert!(Args::try_parse_from(["modelyard-sim", "--token-delay", "soon"]).is_err());
        assert!(Args::try_parse_from(["modelyard-sim", "--fail", "politely"]).is_err());
        let args = Args::parse_from(["modelyard-sim", "--fail", "huge-header"]);
        assert_eq!(args.fail, Some(crate::misbehave::Failure::HugeHeader));
    }
}
