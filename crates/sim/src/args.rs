use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::byte_size::parse_byte_size;

/// A simulated OpenAI-compatible model server for demos, tests and benchmarks.
#[derive(Debug, Clone, Parser)]
#[command(name = "modelyard-sim", version)]
pub struct Args {
    /// Port to listen on; 0 picks a free one (the listening line reports it).
    #[arg(long, default_value_t = 0)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Model name to serve; repeat to serve several.
    #[arg(long = "model", value_name = "NAME", default_value = "sim")]
    pub models: Vec<String>,

    /// Bytes to allocate and keep resident (e.g. 512MiB, 1.5GB, 300MB, 4096).
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub memory: Option<u64>,

    /// How long /health reports "loading" after start.
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

    /// Start but never bind the port, like a backend stuck at start.
    #[arg(long)]
    pub hang_start: bool,

    /// Ignore SIGTERM so a supervisor has to escalate to SIGKILL.
    #[arg(long)]
    pub ignore_sigterm: bool,

    /// API dialect to speak.
    #[arg(long, value_enum, default_value_t = Flavor::Openai)]
    pub flavor: Flavor,
}

/// The API dialect the sim speaks. Only OpenAI for now; the enum exists so
/// other backends' dialects (ollama, omlx, apfel) can be added without
/// changing the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flavor {
    Openai,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let args = Args::parse_from(["modelyard-sim"]);
        assert_eq!(args.port, 0);
        assert_eq!(args.host, "127.0.0.1");
        assert_eq!(args.models, vec!["sim".to_owned()]);
        assert_eq!(args.memory, None);
        assert_eq!(args.load_time, Duration::ZERO);
        assert_eq!(args.token_delay, Duration::ZERO);
        assert_eq!(args.tokens, 16);
        assert_eq!(args.crash_after, None);
        assert!(!args.hang_start);
        assert!(!args.ignore_sigterm);
        assert_eq!(args.flavor, Flavor::Openai);
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
        assert_eq!(args.port, 8080);
        assert_eq!(args.models, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(args.memory, Some(1_500_000_000));
        assert_eq!(args.load_time, Duration::from_secs(2));
        assert_eq!(args.token_delay, Duration::from_millis(15));
        assert_eq!(args.tokens, 4);
        assert_eq!(args.crash_after, Some(3));
        assert!(args.hang_start && args.ignore_sigterm);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Args::try_parse_from(["modelyard-sim", "--memory", "lots"]).is_err());
        assert!(Args::try_parse_from(["modelyard-sim", "--flavor", "ollama"]).is_err());
        assert!(Args::try_parse_from(["modelyard-sim", "--token-delay", "soon"]).is_err());
    }
}
