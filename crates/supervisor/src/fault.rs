//! Faults a test can ask a debug build of the router for, to show what happens
//! when the owner breaks: `TEST_MODELYARD_FAULT=owner-panic` panics the owner on
//! the first request for a model, `owner-stall` makes it stop answering.
//! Release builds compile none of this. (Not MODELYARD_*: those are config keys.)

/// What the owner does before handling a request for a model.
pub(crate) async fn on_acquire() {
    match std::env::var("TEST_MODELYARD_FAULT").as_deref() {
        Ok("owner-panic") => panic!("TEST_MODELYARD_FAULT: the owner panics as asked"),
        Ok("owner-stall") => {
            tracing::warn!("TEST_MODELYARD_FAULT: the owner stops answering as asked");
            std::future::pending::<()>().await;
        }
        _ => {}
    }
}
