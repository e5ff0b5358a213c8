//! The request log's record of one request, filled in as the request passes:
//! who asked for which model (at the start), which model served it and what it
//! waited for (at the lease), the status, first byte, tokens and end (as the
//! response passes, in [`crate::relay::Observe`]). It is written when dropped,
//! so every request that began leaves exactly one record, including one whose
//! client went away at any point (recorded as cancelled, status 499).

use std::time::Duration;

use http::{HeaderMap, Uri};
use modelyard_config::Priority;
use modelyard_reqlog::{Record, RequestLog};
use modelyard_supervisor::{Event, Reason};
use tokio::time::Instant;

use crate::error::{ApiError, Dialect};
use crate::Inner;

/// How much of a request's body `capture: true` keeps.
const CAPTURE_MAX: usize = 16 * 1024;

/// A wait shorter than this was no load: the supervisor's events are not read.
const NO_LOAD_UNDER: Duration = Duration::from_millis(5);

/// nginx's status for a client that closed the connection before the answer.
const CLIENT_GONE: u16 = 499;

pub(crate) struct Draft {
    log: RequestLog,
    rec: Record,
    started: Instant,
    /// Whether the status is known (the response began, or an error was given).
    answered: bool,
    ended: bool,
    capture: bool,
}

pub(crate) type Slot = Option<Box<Draft>>;

impl Draft {
    /// A record for the request with this head, or None when the log is off.
    pub(crate) fn begin(
        state: &Inner,
        uri: &Uri,
        headers: &HeaderMap,
        peer: std::net::SocketAddr,
        started: Instant,
    ) -> Slot {
        let log = state.requests.as_ref()?;
        Some(Box::new(Draft::new(
            log.clone(),
            state,
            uri,
            headers,
            peer,
            started,
        )))
    }

    fn new(
        log: RequestLog,
        state: &Inner,
        uri: &Uri,
        headers: &HeaderMap,
        peer: std::net::SocketAddr,
        started: Instant,
    ) -> Draft {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(crate::echo::shown)
        };
        let path = uri.path();
        let config = state.config();
        let key = (!config.client_keys.is_empty())
            .then(|| crate::keys::presented(headers))
            .flatten()
            .and_then(|given| {
                config
                    .client_keys
                    .iter()
                    .position(|k| crate::keys::same(given.as_bytes(), k.as_bytes()))
            })
            .map(|i| format!("key {}", i + 1));
        Draft {
            log,
            rec: Record {
                at_ms: modelyard_reqlog::now_ms(),
                request_id: header("x-request-id").unwrap_or_default(),
                peer: peer.to_string(),
                key,
                user_agent: header("user-agent"),
                api: match Dialect::of(path) {
                    Dialect::OpenAi => "openai",
                    Dialect::Ollama => "ollama",
                    Dialect::Anthropic => "anthropic",
                }
                .into(),
                route: crate::echo::shown(path),
                ..Record::default()
            },
            started,
            answered: false,
            ended: false,
            capture: state.capture,
        }
    }

    /// The model as the client named it, whether it asked for a stream, and
    /// (with `capture`) the body.
    pub(crate) fn asked(&mut self, model: &str, stream: bool, body: &[u8]) {
        self.rec.model_asked = crate::echo::shown(model);
        self.rec.stream = stream;
        if self.capture {
            let cut = &body[..body.len().min(CAPTURE_MAX)];
            self.rec.body = Some(String::from_utf8_lossy(cut).into_owned());
        }
    }

    /// The configured model that will answer, and the priority it is asked at.
    pub(crate) fn served(&mut self, model: &str, priority: Priority) {
        self.rec.model_served = model.to_string();
        self.rec.priority = Some(priority.as_str().into());
    }

    /// The lease came after `waited`, asked for at `asked_ms`: if the model
    /// loaded meanwhile, whether this request started that load or joined it,
    /// and which models were unloaded to make room.
    pub(crate) fn leased(&mut self, state: &Inner, waited: Duration, asked_ms: u64) {
        self.rec.queue_ms = Some(ms(waited));
        if waited < NO_LOAD_UNDER {
            return;
        }
        let events = state.supervisor.recent_events();
        if let Some((swap, unloaded)) = swap_of(&events, &self.rec.model_served, asked_ms) {
            self.rec.swap = Some(swap.into());
            self.rec.unloaded = unloaded;
        }
    }

    /// The router answered whole, with `status`.
    pub(crate) fn done(&mut self, status: u16) {
        self.status(status);
        self.ended = true;
    }

    /// The response began with `status`.
    pub(crate) fn status(&mut self, status: u16) {
        self.rec.status = status;
        self.answered = true;
    }

    /// The request ends in the router's error `e` (or, already rendered, this
    /// status and code).
    pub(crate) fn failed(&mut self, e: &ApiError) {
        self.failed_with(e.status().as_u16(), e.code());
    }

    pub(crate) fn failed_with(&mut self, status: u16, code: &str) {
        self.rec.status = status;
        self.rec.error = Some(code.to_string());
        self.answered = true;
        self.ended = true;
    }

    /// The stream broke off on the backend's side (the client got an error event).
    pub(crate) fn broken(&mut self) {
        self.rec.error = Some("backend_stream_broken".into());
    }

    /// The response ended, to its last byte.
    pub(crate) fn ended(&mut self) {
        self.ended = true;
    }

    pub(crate) fn first_byte(&mut self, after: Duration) {
        self.rec.ttfb_ms = Some(ms(after));
    }

    pub(crate) fn tokens(&mut self, prompt: u64, completion: u64) {
        self.rec.prompt_tokens = Some(prompt);
        self.rec.completion_tokens = Some(completion);
    }

    /// Completion tokens per second, once the record is complete: over the time
    /// after the first byte for a stream, else after the lease.
    fn speed(&self) -> Option<f64> {
        let tokens = self.rec.completion_tokens? as f64;
        let begun = if self.rec.stream {
            self.rec.ttfb_ms?
        } else {
            self.rec.queue_ms.unwrap_or(0.0)
        };
        let secs = (self.rec.total_ms - begun) / 1000.0;
        (tokens > 0.0 && secs > 0.0).then(|| tokens / secs)
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        self.rec.total_ms = ms(self.started.elapsed());
        if !self.ended {
            self.rec.cancelled = true;
            if !self.answered {
                self.rec.status = CLIENT_GONE;
            }
        }
        // Refused before a model was chosen (an unknown name, bad JSON): "-",
        // as in the metrics, so a client's made-up names make no rows of their own.
        if self.rec.model_served.is_empty() {
            self.rec.model_served = "-".into();
        }
        self.rec.tokens_per_s = self.speed();
        self.log.record(std::mem::take(&mut self.rec));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whether `model` loaded while a request that arrived at `asked_ms` waited:
/// `caused` when the first request to queue for that load came at or after
/// `asked_ms` (this one), `waited` when it joined a load already asked for;
/// and the models unloaded to make room for it. `events` are oldest first.
pub(crate) fn swap_of(
    events: &[Event],
    model: &str,
    asked_ms: u64,
) -> Option<(&'static str, Vec<String>)> {
    let of = |e: &Event, kind: &str| e.model == model && e.kind == kind;
    let ready = events
        .iter()
        .rposition(|e| of(e, "ready") && e.at_ms >= asked_ms)?;
    let loading = events[..ready].iter().rposition(|e| of(e, "loading"))?;
    let queued = events[..loading]
        .iter()
        .rposition(|e| of(e, "queued") && e.detail == "1 waiting");
    let caused = queued.is_none_or(|q| events[q].at_ms >= asked_ms);
    let for_it = format!("to make room for {model}");
    let unloaded = events[queued.unwrap_or(0)..loading]
        .iter()
        .filter(|e| {
            e.kind == "evicting"
                && e.reason == Some(Reason::MakeRoom)
                && e.detail.starts_with(&for_it)
        })
        .map(|e| e.model.clone())
        .collect();
    Some((if caused { "caused" } else { "waited" }, unloaded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelyard_supervisor::Kind;

    fn ev(at_ms: u64, kind: &'static str, model: &str, detail: &str) -> Event {
        let kind = match kind {
            "ready" => Kind::Ready,
            "queued" => Kind::Queued,
            "evicting" => Kind::Evicting,
            "loading" => Kind::Loading,
            "unloaded" => Kind::Unloaded,
            other => panic!("no kind {other} in these tests"),
        };
        Event {
            at_ms,
            kind,
            model: model.into(),
            detail: detail.into(),
            load_ms: None,
            reason: (kind == "evicting").then_some(Reason::MakeRoom),
        }
    }

    fn swap() -> Vec<Event> {
        vec![
            ev(5, "ready", "big", ""),
            ev(10, "queued", "small", "1 waiting"),
            ev(11, "evicting", "big", "to make room for small"),
            ev(11, "evicting", "other", "idle for 10m"),
            ev(12, "queued", "small", "2 waiting"),
            ev(20, "loading", "small", ""),
            ev(30, "ready", "small", ""),
        ]
    }

    #[test]
    fn the_first_request_caused_the_swap_and_names_what_it_unloaded() {
        assert_eq!(
            swap_of(&swap(), "small", 10),
            Some(("caused", vec!["big".to_string()]))
        );
    }

    #[test]
    fn a_request_that_joined_the_load_waited_for_it() {
        assert_eq!(
            swap_of(&swap(), "small", 12),
            Some(("waited", vec!["big".to_string()]))
        );
    }

    #[test]
    fn no_load_after_the_request_arrived_is_no_swap() {
        assert_eq!(swap_of(&swap(), "small", 31), None);
        assert_eq!(swap_of(&swap(), "big", 1), None);
    }
}
