use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::args::Args;
use crate::flavor::{self, FlavorState};
use crate::memory::allocate_resident;
use crate::routes;
use crate::signals;
use crate::state::SimState;

/// Runs the sim until a signal ends the process; returns only on a startup
/// failure.
pub async fn run(args: Args) -> Result<Infallible, String> {
    signals::install(args.ignore_sigterm)
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    if args.hang_start {
        eprintln!("modelyard-sim: --hang-start given, never binding a port");
        return std::future::pending().await;
    }

    let flavor = FlavorState::new(&args)?;
    let (host, port) = flavor::listen_address(&args)?;
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let on_demand = flavor.loads_models_on_demand();
    let state = Arc::new(SimState::new(&args, flavor));
    if on_demand || (args.memory.is_none() && args.load_time.is_zero()) {
        // Nothing to load: be ready before announcing the port, so a client
        // reacting to the listening line never sees a spurious 503.
        state.finish_loading(Vec::new());
    } else {
        tokio::spawn(load(Arc::clone(&state), args.memory, args.load_time));
    }

    // Supervisors and tests read this exact line to learn the port.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "modelyard-sim listening on http://{address}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);
    eprintln!(
        "modelyard-sim: serving {} (flavor {:?}, {} tokens, {:?} per token)",
        args.models.join(", "),
        args.flavor,
        args.tokens,
        args.token_delay
    );

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually fd exhaustion; back off instead of spinning.
                eprintln!("modelyard-sim: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Streamed tokens are tiny writes; Nagle would batch them and hide
        // the per-token timing the sim exists to reproduce.
        if let Err(e) = stream.set_nodelay(true) {
            eprintln!("modelyard-sim: cannot set TCP_NODELAY for {peer}: {e}");
        }
        let builder = builder.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let stream = match state.fail {
                Some(crate::misbehave::Failure::Garbage) => {
                    match crate::misbehave::garbage_or_http(stream).await {
                        Some(stream) => stream,
                        None => return,
                    }
                }
                _ => stream,
            };
            let service = service_fn(move |request| routes::handle(Arc::clone(&state), request));
            // Errors here are clients hanging up mid-response, which tests do
            // on purpose; the cancellation is already counted and logged.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Becomes ready once both the load time has passed and the memory is
/// resident, like a real backend that must map its weights before serving.
async fn load(state: Arc<SimState>, memory: Option<u64>, load_time: Duration) {
    let allocate = async {
        match memory {
            Some(bytes) => tokio::task::spawn_blocking(move || allocate_resident(bytes))
                .await
                .map_err(|e| format!("memory allocation task failed: {e}"))
                .and_then(|result| result),
            None => Ok(Vec::new()),
        }
    };
    let (memory, ()) = tokio::join!(allocate, tokio::time::sleep(load_time));
    match memory {
        Ok(block) => {
            if !block.is_empty() {
                eprintln!("modelyard-sim: {} bytes resident", block.len());
            }
            state.finish_loading(block);
            eprintln!("modelyard-sim: ready");
        }
        Err(e) => {
            // A backend that cannot load dies; supervisors should see that.
            eprintln!("modelyard-sim: {e}");
            std::process::exit(1);
        }
    }
}
