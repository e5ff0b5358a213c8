//! A simulated model server: OpenAI-compatible, or speaking the dialect of
//! Ollama, oMLX or apfel (`--flavor`).
//!
//! The router's demo, end-to-end tests and benchmarks run it in place of a
//! real backend: it loads slowly, streams tokens at a set pace, holds real
//! memory, and can crash or ignore SIGTERM on request, all deterministically.
//! Enough of the API for agent frameworks: a chat that offers `tools` gets a
//! call to the first one, its arguments following the tool's schema (and,
//! once the conversation ends with its result, an answer in words); a
//! `response_format` gets JSON that follows its schema; embeddings come as
//! base64 when asked for; and Anthropic's `/v1/messages` is served, tool use
//! included.

mod args;
mod byte_size;
mod completions;
mod embeddings;
mod flavor;
mod forms;
mod memory;
mod messages;
mod misbehave;
mod reply;
mod response;
mod responses;
mod routes;
mod schema;
mod server;
mod signals;
mod state;
mod stats;
mod streaming;
mod timeline;

use std::process::ExitCode;

pub use args::{Args, Flavor};
pub use byte_size::parse_byte_size;
pub use forms::fnv1a64;

/// Runs the sim to completion. Builds its own runtime, so it must not be
/// called from inside one (the router's `sim` subcommand calls it before
/// starting any).
pub fn main_with(args: Args) -> ExitCode {
    if let Some(path) = &args.timeline {
        let model = args.models.first().map_or("", String::as_str);
        if let Err(e) = timeline::open(path, model) {
            eprintln!("modelyard-sim: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("modelyard-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(args)) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("modelyard-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
