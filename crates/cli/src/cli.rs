use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "modelyard",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("MODELYARD_COMMIT"), ")"),
    about = "One local base URL for every model server on this machine"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router with routes.yaml
    Serve {
        /// Config file [default: ./routes.yaml, then the user's config dir]
        #[arg(long, env = "MODELYARD_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address (IP:PORT or localhost:PORT), overriding `listen` in the config
        #[arg(long, value_parser = modelyard_config::listen::parse)]
        listen: Option<SocketAddr>,
    },
    /// Validate a config and print what it describes; exits 1 when it is invalid
    Check {
        #[arg(long, env = "MODELYARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the router on simulated models (a built-in config) to try it out
    Demo {
        /// Listen address, IP:PORT or localhost:PORT [default: 127.0.0.1:11434, or MODELYARD_LISTEN]
        #[arg(long, value_parser = modelyard_config::listen::parse)]
        listen: Option<SocketAddr>,
    },
    /// Show what a running router has loaded, its memory and why
    Status {
        #[command(flatten)]
        remote: Remote,
        /// Print the raw JSON of /admin/status
        #[arg(long)]
        json: bool,
    },
    /// Load a model now and keep it warm (it idles out like any other)
    Load {
        /// Model name or alias
        model: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Unload a model (requests in flight finish first), or every unpinned one
    Unload {
        /// Model name or alias
        #[arg(conflicts_with = "all")]
        model: Option<String>,
        /// Unload every model that is not pinned
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show what a model's backend printed (its last lines)
    Logs {
        /// Model name or alias
        model: String,
        /// Keep printing new lines as they come
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to show first
        #[arg(short = 'n', long, default_value_t = 200)]
        lines: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a running router read routes.yaml again (like SIGHUP)
    Reload {
        #[command(flatten)]
        remote: Remote,
    },
    /// The request log: each model request, its model, waits, swaps, times and tokens
    Requests {
        /// Only requests for this model (or alias, as asked)
        #[arg(long)]
        model: Option<String>,
        /// Only requests from this span back from now: 30m, 1h, 7d
        #[arg(long)]
        since: Option<String>,
        /// The slowest first (by total time) instead of the newest
        #[arg(long)]
        slow: bool,
        /// How many requests to show
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
        /// Print the records as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// A live view per model: requests, tokens/s, queue, swaps (redraws until Ctrl-C)
    Top {
        /// The span each view covers, back from now
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        window: std::time::Duration,
        /// How often it redraws
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        every: std::time::Duration,
        /// Print one view and exit
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow what happens to models: loads, evictions and why, crashes
    Events {
        #[command(flatten)]
        remote: Remote,
    },
    /// Run the model simulator (same as the modelyard-sim binary)
    #[command(hide = true, disable_help_flag = true)]
    Sim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Where the router to talk to is.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// Router URL [default: the running router's (serve and demo record it), else
    /// routes.yaml's listen, else http://127.0.0.1:11434]
    #[arg(long, env = "MODELYARD_URL")]
    pub url: Option<String>,
    /// Config file to read the router's address and admin key from
    #[arg(long, env = "MODELYARD_CONFIG")]
    pub config: Option<PathBuf>,
}
