use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "modelyard",
    version,
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
        /// Listen address, overriding `listen` in the config
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate a config and print what it describes; exits 1 when it is invalid
    Check {
        #[arg(long, env = "MODELYARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the router on simulated models (a built-in config) to try it out
    Demo {
        /// Listen address [default: 127.0.0.1:11434, or MODELYARD_LISTEN]
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run the model simulator (same as the modelyard-sim binary)
    #[command(hide = true, disable_help_flag = true)]
    Sim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}
