//! Faults a test can ask a debug build of the router for, to show what happens
//! when the owner breaks: `TEST_MODELYARD_FAULT=owner-panic` panics the owner on
//! the first request for a model, `owner-stall` makes it stop answering; with
//! `:MODEL` appended, only a request for that model does. Release builds compile
//! none of this. (Not MODELYARD_*: those are config keys.)

/// What the owner does before handling a request for `model`.
pub(crate) async fn on_acquire(model: &str) {
    let Ok(fault) = std::env::var("TEST_MODELYARD_FAULT") else {
        return;
    };
    let (what, only) = match fault.split_once(':') {
        Some((what, only)) => (what, Some(only)),
        None => (fault.as_str(), None),
    };
    if only.is_some_and(|m| m != model) {
        return;
    }
    match what {
        "owner-panic" => panic!("TEST_MODELYARD_FAULT: the owner panics as asked"),
        "owner-stall" => {
            tracing::warn!("TEST_MODELYARD_FAULT: the owner stops answering as asked");
            std::future::pending::<()>().await;
        }
        _ => {}
    }
}
