//! The load generator: a hyper client with keep-alive, paced from a plain thread
//! (open loop: every latency is measured from the time the request was *meant*
//! to be sent, which corrects for coordinated omission), or as many loops as
//! connections (closed loop, for peak throughput only).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Handle;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(100_000)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(c)
}

/// `n` clients speaking h2 with prior knowledge, each on a connection of its own.
/// Many streams then need few sockets on the client leg: with one connection per
/// stream, 10,000 streams would take the router past a 20,000-descriptor hard
/// limit (its upstream leg holds one socket per stream too), and an h2 server
/// allows 200 streams per connection.
pub fn h2_clients(n: usize) -> Vec<HttpClient> {
    (0..n)
        .map(|_| {
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(c)
        })
        .collect()
}

/// Where requests go: the backend itself, the router, or the peer.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: &'static str,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub auth: Option<String>,
}

impl Target {
    pub fn request(&self, body: &Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = format!("{}/v1/chat/completions", self.base)
            .parse()
            .expect("valid URI");
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(key) = &self.auth {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
                h.insert(header::AUTHORIZATION, v);
            }
        }
        req
    }
}

pub fn chat_body(model: &str, stream: bool, max_tokens: Option<u32>) -> Bytes {
    let mut v = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
    });
    if stream {
        v["stream"] = true.into();
    }
    if let Some(n) = max_tokens {
        v["max_tokens"] = n.into();
    }
    Bytes::from(serde_json::to_vec(&v).expect("json"))
}

/// One round of one leg.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Sorted latencies of successful requests, ns.
    pub lat: Vec<u64>,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Round {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn one(client: &HttpClient, req: Request<Full<Bytes>>) -> bool {
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) => return failed(format_args!("{e:?}")),
    };
    let status = resp.status();
    match resp.into_body().collect().await {
        Ok(_) if status == http::StatusCode::OK => true,
        Ok(body) => failed(format_args!(
            "{status}: {}",
            String::from_utf8_lossy(&body.to_bytes())
        )),
        Err(e) => failed(format_args!("{status}, body: {e}")),
    }
}

/// Says why a request failed, for the first few: an error count alone does
/// not tell a timeout from a refusal.
fn failed(why: std::fmt::Arguments) -> bool {
    static SAID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if SAID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 10 {
        eprintln!("request failed: {why}");
    }
    false
}

/// Sleeps the pacing thread until `at` (nanosleep: tens of µs of slack).
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Starts `rate` requests a second for `dur` from this (pacing) thread, each at
/// its intended instant whatever the earlier ones are doing: open loop. `run`
/// turns one request, due at `at`, into its outcome; the receiver yields every
/// outcome and ends once all are in. Returns the first request's instant too.
fn paced<T, Fut>(
    rt: &Handle,
    client: &HttpClient,
    target: &Target,
    body: &Bytes,
    rate: f64,
    dur: Duration,
    run: impl Fn(HttpClient, Request<Full<Bytes>>, Instant) -> Fut,
) -> (Instant, mpsc::Receiver<T>)
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let n = (rate * dur.as_secs_f64()).round() as usize;
    let (tx, rx) = mpsc::channel::<T>();
    let start = Instant::now() + Duration::from_millis(2);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        sleep_until(at);
        let outcome = run(client.clone(), target.request(body), at);
        let tx = tx.clone();
        rt.spawn(async move {
            let _ = tx.send(outcome.await);
        });
    }
    (start, rx)
}

/// Open loop: `rate` requests per second for `dur`.
pub fn open_loop(
    rt: &Handle,
    client: &HttpClient,
    target: &Target,
    body: &Bytes,
    rate: f64,
    dur: Duration,
    timeout: Duration,
) -> Round {
    let (start, rx) = paced(
        rt,
        client,
        target,
        body,
        rate,
        dur,
        move |client, req, at| async move {
            let ok = tokio::time::timeout(timeout, one(&client, req))
                .await
                .unwrap_or(false);
            ok.then(|| at.elapsed().as_nanos() as u64)
        },
    );
    let mut round = Round::default();
    for r in rx {
        match r {
            Some(ns) => {
                round.ok += 1;
                round.lat.push(ns);
            }
            None => round.errors += 1,
        }
    }
    round.elapsed = start.elapsed();
    round.lat.sort_unstable();
    round
}

/// Closed loop: `conns` clients back to back for `dur`.
pub fn closed_loop(
    rt: &Handle,
    client: &HttpClient,
    target: &Target,
    body: &Bytes,
    conns: usize,
    dur: Duration,
) -> Round {
    let start = Instant::now();
    let end = start + dur;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (client, target, body) = (client.clone(), target.clone(), body.clone());
            rt.spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                while Instant::now() < end {
                    let t = Instant::now();
                    let ok = tokio::time::timeout(Duration::from_secs(10), {
                        one(&client, target.request(&body))
                    })
                    .await
                    .unwrap_or(false);
                    if ok {
                        lat.push(t.elapsed().as_nanos() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut round = Round::default();
    for t in tasks {
        if let Ok((lat, errors)) = rt.block_on(t) {
            round.ok += lat.len() as u64;
            round.lat.extend(lat);
            round.errors += errors;
        }
    }
    round.elapsed = start.elapsed();
    round.lat.sort_unstable();
    round
}

/// What one streamed response looked like.
#[derive(Clone, Debug, Default)]
pub struct StreamRound {
    /// Time to first body byte from the intended send time, ns (sorted).
    pub ttfb: Vec<u64>,
    /// Gaps between consecutive body frames, ns (sorted).
    pub gaps: Vec<u64>,
    /// Body frames per stream, summed.
    pub frames: u64,
    pub ok: u64,
    pub errors: u64,
}

struct StreamOutcome {
    ttfb: u64,
    gaps: Vec<u64>,
    complete: bool,
}

async fn stream_one(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    at: Instant,
    open: Option<&AtomicUsize>,
) -> Option<StreamOutcome> {
    let resp = client.request(req).await.ok()?;
    if resp.status() != http::StatusCode::OK {
        return None;
    }
    let mut body = resp.into_body();
    let mut last: Option<Instant> = None;
    let mut out = StreamOutcome {
        ttfb: 0,
        gaps: Vec::new(),
        complete: false,
    };
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        let now = Instant::now();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match last {
            None => {
                out.ttfb = now.duration_since(at).as_nanos() as u64;
                if let Some(o) = open {
                    o.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(prev) => out.gaps.push(now.duration_since(prev).as_nanos() as u64),
        }
        last = Some(now);
        tail.extend_from_slice(&data[data.len().saturating_sub(32)..]);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    if last.is_some() {
        if let Some(o) = open {
            o.fetch_sub(1, Ordering::Relaxed);
        }
    }
    out.complete = memchr_done(&tail);
    Some(out)
}

fn memchr_done(tail: &[u8]) -> bool {
    tail.windows(6).any(|w| w == b"[DONE]")
}

/// Open loop of streamed requests: `rate` streams a second for `dur`.
pub fn stream_loop(
    rt: &Handle,
    client: &HttpClient,
    target: &Target,
    body: &Bytes,
    rate: f64,
    dur: Duration,
) -> StreamRound {
    let (_, rx) = paced(
        rt,
        client,
        target,
        body,
        rate,
        dur,
        |client, req, at| async move {
            tokio::time::timeout(Duration::from_secs(30), stream_one(&client, req, at, None))
                .await
                .ok()
                .flatten()
        },
    );
    let mut round = StreamRound::default();
    for r in rx {
        match r {
            Some(o) if o.complete => {
                round.ok += 1;
                round.ttfb.push(o.ttfb);
                round.frames += o.gaps.len() as u64 + 1;
                round.gaps.extend(o.gaps);
            }
            _ => round.errors += 1,
        }
    }
    round.ttfb.sort_unstable();
    round.gaps.sort_unstable();
    round
}

/// Many streams held open at once.
pub struct Held {
    pub open: Arc<AtomicUsize>,
    pub done: mpsc::Receiver<bool>,
}

/// Opens `n` streams at `rate` per second; each reports whether it completed.
pub fn hold_streams(
    rt: &Handle,
    clients: &[HttpClient],
    target: &Target,
    body: &Bytes,
    n: usize,
    rate: f64,
) -> Held {
    let open = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        sleep_until(at);
        let req = target.request(body);
        let client = clients[i % clients.len()].clone();
        let (tx, open) = (tx.clone(), open.clone());
        rt.spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(120),
                stream_one(&client, req, at, Some(&open)),
            )
            .await
            .ok()
            .flatten();
            let _ = tx.send(r.is_some_and(|o| o.complete));
        });
    }
    Held { open, done: rx }
}

/// Sends each `(offset, body)` at its time; returns each latency from its
/// intended time (None: failed), in order.
pub fn trace(
    rt: &Handle,
    client: &HttpClient,
    target: &Target,
    items: &[(Duration, Bytes)],
) -> Vec<Option<Duration>> {
    let start = Instant::now() + Duration::from_millis(2);
    let tasks: Vec<_> = items
        .iter()
        .map(|(off, body)| {
            let at = start + *off;
            sleep_until(at);
            let req = target.request(body);
            let client = client.clone();
            rt.spawn(async move {
                let ok = tokio::time::timeout(Duration::from_secs(120), one(&client, req))
                    .await
                    .unwrap_or(false);
                ok.then(|| at.elapsed())
            })
        })
        .collect();
    tasks
        .into_iter()
        .map(|t| rt.block_on(t).ok().flatten())
        .collect()
}

/// One request of a person: sent `think` after their previous answer (after the
/// start, for their first), to `path` with `body`.
#[derive(Clone, Debug)]
pub struct Ask {
    pub think: Duration,
    pub body: Bytes,
}

/// What became of one request of a person.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    /// When it was sent, on the wall clock (the clock a backend's timeline shares).
    pub sent: std::time::SystemTime,
    /// From sending to the first body byte.
    pub first_byte: Duration,
    /// From sending to the end of the answer.
    pub latency: Duration,
    pub ok: bool,
}

/// People, each on one keep-alive connection of their own with their own
/// User-Agent, sending one request at a time: the next goes its `think` after
/// the previous answer ended. To the router each is one client (same peer
/// address and port, same agent), as a chat app is. Returns each person's
/// answers in order; a person whose connection fails stops there.
pub fn people(rt: &Handle, target: &Target, who: &[(&str, Vec<Ask>)]) -> Vec<Vec<Answer>> {
    let start = Instant::now();
    let tasks: Vec<_> = who
        .iter()
        .map(|(agent, asks)| {
            let (target, agent, asks) = (target.clone(), agent.to_string(), asks.clone());
            rt.spawn(async move {
                let mut out = Vec::new();
                if let Err(e) = person(&target, &agent, &asks, start, &mut out).await {
                    failed(format_args!("{agent}: {e}"));
                }
                out
            })
        })
        .collect();
    tasks
        .into_iter()
        .map(|t| rt.block_on(t).unwrap_or_default())
        .collect()
}

async fn person(
    target: &Target,
    agent: &str,
    asks: &[Ask],
    start: Instant,
    out: &mut Vec<Answer>,
) -> Result<(), String> {
    let host = target.base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    // The connection's driver ends when `send` is dropped at the end.
    tokio::spawn(conn);
    let mut next = start;
    for ask in asks {
        next += ask.think;
        tokio::time::sleep_until(next.into()).await;
        send.ready().await.map_err(|e| e.to_string())?;
        let mut req = target.request(&ask.body);
        *req.uri_mut() = "/v1/chat/completions".parse().expect("valid path");
        let h = req.headers_mut();
        h.insert(
            header::HOST,
            HeaderValue::from_str(host).map_err(|e| e.to_string())?,
        );
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_str(agent).map_err(|e| e.to_string())?,
        );
        let sent = std::time::SystemTime::now();
        let t0 = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(120), send.send_request(req))
            .await
            .map_err(|_| "no answer within 120 s".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut first_byte = None;
        let mut head = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Ok(data) = frame.into_data() {
                first_byte.get_or_insert_with(|| t0.elapsed());
                if head.len() < 200 {
                    head.extend_from_slice(&data[..data.len().min(200)]);
                }
            }
        }
        let latency = t0.elapsed();
        let ok = status == http::StatusCode::OK;
        if !ok {
            failed(format_args!("{status}: {}", String::from_utf8_lossy(&head)));
        }
        out.push(Answer {
            sent,
            first_byte: first_byte.unwrap_or(latency),
            latency,
            ok,
        });
        next = Instant::now();
    }
    Ok(())
}
