mod check;
mod cli;
mod remote;
mod requests;
mod runtime;
mod serve;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use modelyard_config::{load_file, load_str, locate, ConfigError, Loaded};

use cli::{Cli, Command};

const DEMO_CONFIG: &str = include_str!("demo.yaml");

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim { args } => {
            // Its usage lines name the command as it was typed.
            let argv = std::iter::once("modelyard sim".to_string()).chain(args);
            let command = <modelyard_sim::Args as clap::CommandFactory>::command()
                .name("modelyard sim")
                .bin_name("modelyard sim");
            let matches = command.get_matches_from(argv);
            match <modelyard_sim::Args as clap::FromArgMatches>::from_arg_matches(&matches) {
                Ok(args) => modelyard_sim::main_with(args),
                Err(e) => e.exit(),
            }
        }
        Command::Check { config } => match load(config.as_deref()) {
            Ok(loaded) => {
                print!("{}", check::summary(&loaded));
                for w in check::warnings(&loaded) {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Serve { config, listen } => {
            let loaded = match load(config.as_deref()) {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
            run(loaded, listen, |addr| {
                say(&format!("modelyard listening on http://{addr}"));
            })
        }
        Command::Status { remote, json } => {
            client(&remote, |t| async move { remote::status(&t, json).await })
        }
        Command::Load { model, remote } => {
            client(&remote, |t| async move { remote::load(&t, &model).await })
        }
        Command::Unload {
            model: None,
            all: false,
            ..
        } => {
            fail("name the model to unload, or pass --all to unload every model that is not pinned")
        }
        Command::Unload { model, remote, .. } => client(&remote, |t| async move {
            remote::unload(&t, model.as_deref()).await
        }),
        Command::Logs {
            model,
            follow,
            lines,
            remote,
        } => client(&remote, |t| async move {
            remote::logs(&t, &model, lines, follow).await
        }),
        Command::Reload { remote } => client(&remote, |t| async move { remote::reload(&t).await }),
        Command::Events { remote } => client(&remote, |t| async move { remote::events(&t).await }),
        Command::Requests {
            model,
            since,
            slow,
            limit,
            json,
            remote,
        } => client(&remote, |t| async move {
            let filter = requests::Filter {
                model,
                since,
                slow,
                limit,
            };
            requests::requests(&t, filter, json).await
        }),
        Command::Top {
            window,
            every,
            once,
            remote,
        } => client(&remote, |t| async move {
            requests::top(&t, window, every, once).await
        }),
        Command::Demo { listen } => {
            let loaded = match load_str("built-in demo config", DEMO_CONFIG) {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
            run(loaded, listen, demo_banner)
        }
    }
}

/// Runs one admin-API command on a small runtime of its own.
fn client<F, Fut>(remote: &cli::Remote, f: F) -> ExitCode
where
    F: FnOnce(remote::Target) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let target = match remote::Target::new(remote) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(f(target)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Loaded, ConfigError> {
    load_file(&locate(path)?)
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

fn run(loaded: Loaded, listen: Option<SocketAddr>, banner: impl FnOnce(SocketAddr)) -> ExitCode {
    init_logging();
    for w in check::warnings(&loaded) {
        tracing::warn!("{w}");
    }
    let source = loaded.path.clone();
    let mut config = loaded.config;
    if let Some(addr) = listen {
        // The flag meets the same rule as the file's `listen`: no other machine
        // reaches the router by a flag typed without thinking of it.
        if !addr.ip().is_loopback() && !config.expose {
            return fail(format!(
                "--listen {addr} is reachable from other machines (every model, and the status page); set `expose: true` in routes.yaml (or MODELYARD_EXPOSE=true) if that is meant"
            ));
        }
        config.listen = addr;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let banner = |addr| {
        banner(addr);
        let _ = std::io::stdout().flush();
    };
    match runtime.block_on(serve::run(config, source, banner)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MODELYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log file (launchd's, a
    // redirect) gets plain lines. NO_COLOR (no-color.org) turns it off too.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// Writes a line to stdout for whoever started the router. A reader that has
/// gone (`modelyard serve | head -1`, a test that read the first line) is no
/// reason to stop serving: println! would panic on the broken pipe.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn demo_banner(addr: SocketAddr) {
    let url = format!("http://{addr}");
    say(&format!("modelyard listening on {url}"));
    say(&format!(
        r#"
demo: six simulated models shaped like a 64 GB Mac's (sizes scaled 1:100, budget 480 MB).
try:
  curl -s {url}/v1/models
  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \
       -d '{{"model":"default","messages":[{{"role":"user","content":"hi"}}]}}'
  curl -sN {url}/v1/chat/completions -H 'content-type: application/json' \
       -d '{{"model":"deep","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'
  modelyard status      (what is loaded, and why; it finds this router by itself)
stop with Ctrl-C"#
    ));
}
