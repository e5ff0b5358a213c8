//! The request log's record of one request, filled in as the request passes:
//! who asked for which model (at the start), which model served it and what it
//! waited for (at the lease), the status, first byte, tokens and end (as the
//! response passes, in [`crate::relay::Observe`]). It is written when dropped,
//! so every request that began leaves exactly one record, including one whose
//! client went away at any point (recorded as cancelled, status 499).

use std::time::Duration;

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Uri};
use modelyard_config::Priority;
use modelyard_reqlog::{Entry, RequestLog};
use modelyard_supervisor::{Event, Reason};
use tokio::time::Instant;

use crate::echo::{Shown, X_REQUEST_ID};
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
    /// The record's parts, kept as they come (a header value, the peer's
    /// address, the path) and written out only when the request ends: beside
    /// the two model names, a request makes no strings of the log's own.
    at_ms: u64,
    request_id: Option<HeaderValue>,
    peer: SocketAddr,
    /// Which of the configured client keys it presented (its index).
    key: Option<usize>,
    user_agent: Option<HeaderValue>,
    api: &'static str,
    uri: Uri,
    model_asked: String,
    model_served: String,
    stream: bool,
    status: u16,
    error: Option<&'static str>,
    queue_ms: Option<f64>,
    swap: Option<&'static str>,
    unloaded: Vec<String>,
    ttfb_ms: Option<f64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    body: Option<String>,
    priority: Option<&'static str>,
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
        peer: SocketAddr,
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
        peer: SocketAddr,
        started: Instant,
    ) -> Draft {
        let config = state.config();
        let key = (!config.client_keys.is_empty())
            .then(|| crate::keys::presented(headers))
            .flatten()
            .and_then(|given| {
                config
                    .client_keys
                    .iter()
                    .position(|k| crate::keys::same(given.as_bytes(), k.as_bytes()))
            });
        Draft {
            log,
            at_ms: modelyard_reqlog::now_ms(),
            request_id: headers.get(&X_REQUEST_ID).cloned(),
            peer,
            key,
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
            api: match Dialect::of(uri.path()) {
                Dialect::OpenAi => "openai",
                Dialect::Ollama => "ollama",
                Dialect::Anthropic => "anthropic",
            },
            uri: uri.clone(),
            model_asked: String::new(),
            model_served: String::new(),
            stream: false,
            status: 0,
            error: None,
            queue_ms: None,
            swap: None,
            unloaded: Vec::new(),
            ttfb_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            body: None,
            priority: None,
            started,
            answered: false,
            ended: false,
            capture: state.capture,
        }
    }

    /// The model as the client named it, whether it asked for a stream, and
    /// (with `capture`) the body.
    pub(crate) fn asked(&mut self, model: &str, stream: bool, body: &[u8]) {
        model.clone_into(&mut self.model_asked);
        self.stream = stream;
        if self.capture {
            let cut = &body[..body.len().min(CAPTURE_MAX)];
            self.body = Some(String::from_utf8_lossy(cut).into_owned());
        }
    }

    /// The configured model that will answer, and the priority it is asked at.
    pub(crate) fn served(&mut self, model: &str, priority: Priority) {
        model.clone_into(&mut self.model_served);
        self.priority = Some(priority.as_str());
    }

    /// The lease came after `waited`, asked for at `asked_ms`: if the model
    /// loaded meanwhile, whether this request started that load or joined it,
    /// and which models were unloaded to make room.
    pub(crate) fn leased(&mut self, state: &Inner, waited: Duration, asked_ms: u64) {
        self.queue_ms = Some(ms(waited));
        if waited < NO_LOAD_UNDER {
            return;
        }
        let events = state.supervisor.recent_events();
        if let Some((swap, unloaded)) = swap_of(&events, &self.model_served, asked_ms) {
            self.swap = Some(swap);
            self.unloaded = unloaded;
        }
    }

    /// The router answered whole, with `status`.
    pub(crate) fn done(&mut self, status: u16) {
        self.status(status);
        self.ended = true;
    }

    /// The response began with `status`.
    pub(crate) fn status(&mut self, status: u16) {
        self.status = status;
        self.answered = true;
    }

    /// The request ends in the router's error `e` (or, already rendered, this
    /// status and code).
    pub(crate) fn failed(&mut self, e: &ApiError) {
        self.failed_with(e.status().as_u16(), e.code());
    }

    pub(crate) fn failed_with(&mut self, status: u16, code: &'static str) {
        self.status = status;
        self.error = Some(code);
        self.answered = true;
        self.ended = true;
    }

    /// The stream broke off on the backend's side (the client got an error event).
    pub(crate) fn broken(&mut self) {
        self.error = Some("backend_stream_broken");
    }

    /// The response ended, to its last byte.
    pub(crate) fn ended(&mut self) {
        self.ended = true;
    }

    pub(crate) fn first_byte(&mut self, after: Duration) {
        self.ttfb_ms = Some(ms(after));
    }

    pub(crate) fn tokens(&mut self, prompt: u64, completion: u64) {
        self.prompt_tokens = Some(prompt);
        self.completion_tokens = Some(completion);
    }
}

/// The client's address as `SocketAddr` shows it, an IPv4 one written in
/// one piece: std's formatting goes through the formatter number by number,
/// a share of the log's cost a request can feel at saturation.
struct Peer(SocketAddr);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SocketAddr::V4(addr) = self.0 else {
            return self.0.fmt(f);
        };
        // 255.255.255.255:65535 at most.
        let mut text = [0u8; 21];
        let mut len = 0;
        let mut put = |part: &[u8]| {
            text[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        };
        for (i, octet) in addr.ip().octets().into_iter().enumerate() {
            if i > 0 {
                put(b".");
            }
            put(itoa::Buffer::new().format(octet).as_bytes());
        }
        put(b":");
        put(itoa::Buffer::new().format(addr.port()).as_bytes());
        f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| std::fmt::Error)?)
    }
}

/// A client key by its place in the config, never the key itself.
struct KeyName(usize);

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {}", self.0 + 1)
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        let total_ms = ms(self.started.elapsed());
        let cancelled = !self.ended;
        if cancelled && !self.answered {
            self.status = CLIENT_GONE;
        }
        let request_id = self.request_id.as_ref().map(crate::echo::header_text);
        let user_agent = self.user_agent.as_ref().map(crate::echo::header_text);
        let request_id = request_id.as_deref().map(Shown);
        let user_agent = user_agent.as_deref().map(Shown);
        let key = self.key.map(KeyName);
        let (route, model_asked) = (Shown(self.uri.path()), Shown(&self.model_asked));
        self.log.record(&Entry {
            at_ms: self.at_ms,
            request_id: request_id.as_ref().map(|r| r as &dyn std::fmt::Display),
            peer: &Peer(self.peer),
            key: key.as_ref().map(|k| k as &dyn std::fmt::Display),
            user_agent: user_agent.as_ref().map(|u| u as &dyn std::fmt::Display),
            api: self.api,
            route: &route,
            model_asked: &model_asked,
            // Refused before a model was chosen (an unknown name, bad JSON): "-",
            // as in the metrics, so a client's made-up names make no rows of their own.
            model_served: match self.model_served.as_str() {
                "" => "-",
                served => served,
            },
            stream: self.stream,
            status: self.status,
            error: self.error,
            queue_ms: self.queue_ms,
            swap: self.swap,
            unloaded: &self.unloaded,
            ttfb_ms: self.ttfb_ms,
            total_ms,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cancelled,
            body: self.body.as_deref(),
            priority: self.priority,
        });
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
    fn a_peer_is_written_as_std_writes_it() {
        for peer in [
            "127.0.0.1:5000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.30.4:443",
            "[::1]:8080",
            "[fe80::1%2]:1",
        ] {
            let addr: SocketAddr = peer.parse().unwrap();
            assert_eq!(Peer(addr).to_string(), addr.to_string());
            assert_eq!(Peer(addr).to_string(), peer);
        }
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
