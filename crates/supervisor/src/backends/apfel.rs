//! apfel (written against 1.8.4): Apple's on-device model behind `apfel --serve`.
//! One model, owned by the OS: no load or unload, only the process. It knows the
//! model by one fixed name and reports its context window on /health. Its default
//! port is Ollama's (and so the router's), so it is always given one.

use serde_json::Value;

use super::{default_env, healthy, Adapter, Http, Pending, Prepare, Probe, Report};
use crate::process::Spec;

pub(crate) struct Apfel;

/// The only model name apfel accepts.
pub(crate) const MODEL: &str = "apple-foundationmodel";

impl Adapter for Apfel {
    fn prepare(&self, spec: &mut Spec, ctx: &Prepare) {
        default_env(spec, "APFEL_HOST", "127.0.0.1");
        default_env(spec, "APFEL_PORT", ctx.port.clone());
    }

    fn default_upstream(&self) -> Option<&'static str> {
        Some(MODEL)
    }

    fn report(&self, http: Http, p: Probe) -> Pending<Result<Report, String>> {
        Box::pin(async move {
            let a = healthy(&http, &p).await?;
            Ok(Report {
                resident: None,
                context_window: a
                    .json
                    .get("context_window")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok()),
                listed: None,
            })
        })
    }
}
