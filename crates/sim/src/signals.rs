use tokio::signal::unix::{signal, SignalKind};

/// Makes SIGTERM/SIGINT end the process at once with code 0, or, with
/// `ignore_sigterm`, swallows SIGTERM so supervisors must escalate to SIGKILL.
///
/// Exiting without draining connections is deliberate: the sim stands in for
/// a backend being stopped, and open streams must not delay that.
pub fn install(ignore_sigterm: bool) -> std::io::Result<()> {
    // Registering with tokio replaces the default (fatal) disposition, which
    // is also how SIGTERM gets ignored without touching signal masks.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = terminate.recv() => {
                    if ignore_sigterm {
                        eprintln!("modelyard-sim: ignoring SIGTERM (--ignore-sigterm)");
                    } else {
                        crate::timeline::mark(crate::timeline::Step::Term);
                        eprintln!("modelyard-sim: SIGTERM, exiting");
                        std::process::exit(0);
                    }
                }
                Some(()) = interrupt.recv() => {
                    crate::timeline::mark(crate::timeline::Step::Term);
                    eprintln!("modelyard-sim: SIGINT, exiting");
                    std::process::exit(0);
                }
            }
        }
    });
    Ok(())
}
