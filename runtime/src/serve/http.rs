//! The HTTP side of `serve`: routing, limits, authentication, and turning the
//! scheduler's events into OpenAI responses, whole or streamed as server-sent events.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::api::{self, ApiError, Endpoint, Prompt};
use super::engine::{Event, Finish, Job, Limits, Logprob};
use super::metrics::Metrics;
use crate::chat_template::ChatTemplate;
use crate::stop::StopFilter;
use crate::tokenizer::{Decoder, Tokenizer};

pub type Body = BoxBody<Bytes, Infallible>;

/// Everything the request handlers share.
pub struct Shared {
    pub tok: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub grammars: super::grammar::Grammars,
    pub jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    pub in_flight: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Requests that may wait for a sequence beyond the `parallel` running.
    pub queue: usize,
    pub api_key: Option<String>,
    pub expose_metrics: bool,
    pub model: String,
    pub max_body: usize,
    pub body_timeout: Duration,
    pub started: u64,
    pub next_id: AtomicU64,
}

/// Answers one request; never fails (errors are responses).
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    Ok(match route(req, &shared).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    })
}

async fn route(req: Request<Incoming>, shared: &Arc<Shared>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let allow = |methods: &'static str| -> Result<(), ApiError> {
        if methods.split(", ").any(|m| m == method.as_str()) {
            Ok(())
        } else {
            Err(ApiError {
                header: Some(("allow", methods.to_string())),
                ..ApiError::new(
                    405,
                    "invalid_request_error",
                    format!("{method} is not allowed on {path}; use {methods}"),
                )
            })
        }
    };
    // The page asks for the key itself when the API needs one.
    let public = matches!(path.as_str(), "/health" | "/" | "/index.html");
    if !public {
        check_key(&req, shared)?;
    }
    match path.as_str() {
        "/" | "/index.html" => {
            allow("GET, HEAD")?;
            let mut r = Response::new(full(super::page::PAGE));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            Ok(r)
        }
        "/health" => {
            allow("GET, HEAD")?;
            Ok(json_response(200, &json!({"status": "ok"})))
        }
        "/v1/models" | "/models" => {
            allow("GET, HEAD")?;
            Ok(json_response(
                200,
                &json!({"object": "list", "data": [{
                    "id": shared.model,
                    "object": "model",
                    "created": shared.started,
                    "owned_by": "mcc",
                    "meta": {"n_ctx": shared.limits.n_ctx, "n_vocab": shared.tok.n_vocab()},
                }]}),
            ))
        }
        "/metrics" => {
            allow("GET, HEAD")?;
            if !shared.expose_metrics {
                return Err(ApiError::new(
                    404,
                    "not_found_error",
                    "metrics are off: start the server with --metrics",
                ));
            }
            let mut r = Response::new(full(shared.metrics.render()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(r)
        }
        "/v1/chat/completions" | "/chat/completions" => {
            allow("POST")?;
            let body = read_body(req, shared).await?;
            complete(shared, Endpoint::Chat, &body).await
        }
        "/v1/completions" | "/completions" => {
            allow("POST")?;
            let body = read_body(req, shared).await?;
            complete(shared, Endpoint::Completions, &body).await
        }
        "/tokenize" => {
            allow("POST")?;
            let body = read_body(req, shared).await?;
            tokenize(shared, &body)
        }
        "/detokenize" => {
            allow("POST")?;
            let body = read_body(req, shared).await?;
            detokenize(shared, &body)
        }
        _ => Err(ApiError::new(
            404,
            "not_found_error",
            format!("no such endpoint: {path}"),
        )),
    }
}

/// `Authorization: Bearer KEY`, compared in constant time.
fn check_key(req: &Request<Incoming>, shared: &Shared) -> Result<(), ApiError> {
    let Some(key) = &shared.api_key else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            401,
            "authentication_error",
            "invalid or missing API key: send Authorization: Bearer KEY",
        ))
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

async fn read_body(req: Request<Incoming>, shared: &Shared) -> Result<Bytes, ApiError> {
    let limit = shared.max_body;
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(shared.body_timeout, collect).await {
        Err(_) => Err(ApiError::new(
            408,
            "invalid_request_error",
            format!(
                "the request body did not arrive within {} s",
                shared.body_timeout.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            413,
            "invalid_request_error",
            format!("the request body is over the limit of {limit} bytes"),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            400,
            "invalid_request_error",
            format!("reading the request body: {e}"),
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

fn json_response(status: u16, value: &Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.status, &e.body());
    if let Some((name, value)) = &e.header {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

fn parse_json(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::new(
            400,
            "invalid_request_error",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            400,
            "invalid_request_error",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

fn tokenize(shared: &Shared, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let o = parse_json(body)?;
    let Some(content) = o.get("content").and_then(Value::as_str) else {
        return Err(ApiError::invalid("content", "content must be a string"));
    };
    let add_special = match o.get("add_special") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "add_special",
                "add_special must be true or false",
            ))
        }
    };
    let tokens = shared.tok.encode(content, add_special, true);
    Ok(json_response(200, &json!({ "tokens": tokens })))
}

fn detokenize(shared: &Shared, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let o = parse_json(body)?;
    let n_vocab = shared.tok.n_vocab();
    let ids = o
        .get("tokens")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|t| {
                    t.as_u64()
                        .filter(|&t| (t as usize) < n_vocab)
                        .map(|t| t as u32)
                })
                .collect::<Option<Vec<u32>>>()
        })
        .ok_or_else(|| {
            ApiError::invalid(
                "tokens",
                format!("tokens must be a list of token ids below {n_vocab}"),
            )
        })?;
    Ok(json_response(
        200,
        &json!({ "content": shared.tok.decode(&ids, true) }),
    ))
}

/// A completion's tokens, checked against the context, and its jobs submitted.
async fn complete(
    shared: &Arc<Shared>,
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let parallel = shared.limits.parallel;
    let req = api::parse(endpoint, body, parallel, shared.tok.n_vocab())?;
    let (prompt_field, prompt) = match &req.prompt {
        Prompt::Text(s) => ("prompt", shared.tok.encode(s, true, true)),
        Prompt::Tokens(t) => ("prompt", t.clone()),
        Prompt::Chat(m) => {
            let template = shared.template.as_ref().ok_or_else(|| {
                ApiError::new(
                    400,
                    "invalid_request_error",
                    "this model has no chat template: use /v1/completions",
                )
            })?;
            (
                "messages",
                template
                    .prompt(&shared.tok, m)
                    .map_err(|e| ApiError::invalid("messages", e))?,
            )
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            prompt_field,
            "the prompt is empty: nothing to continue from",
        ));
    }
    let n_ctx = shared.limits.n_ctx;
    if prompt.len() >= n_ctx {
        return Err(ApiError::invalid(
            prompt_field,
            format!(
                "the prompt is {} tokens, {} more than fit: the context holds {n_ctx} and one must be left to generate",
                prompt.len(),
                prompt.len() + 1 - n_ctx
            ),
        ));
    }
    let max_tokens = req
        .max_tokens
        .unwrap_or(usize::MAX)
        .min(n_ctx - prompt.len());
    let mut constraints = Vec::with_capacity(req.n);
    if let Some(format) = &req.response_format {
        for _ in 0..req.n {
            let m = shared
                .grammars
                .matcher(format)
                .map_err(|e| ApiError::invalid("response_format", e))?;
            constraints.push(m);
        }
    }
    let mut constraints = constraints.into_iter();
    // Admission: running plus queued stays within parallel + queue.
    let cap = parallel + shared.queue;
    let admitted = shared
        .in_flight
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n + req.n <= cap).then_some(n + req.n)
        });
    if admitted.is_err() {
        shared.metrics.rejected.inc();
        return Err(ApiError {
            header: Some(("retry-after", "1".into())),
            ..ApiError::new(
                503,
                "server_busy_error",
                format!("the server is busy: {cap} requests are running or queued; retry later"),
            )
        });
    }
    shared.metrics.requests.inc_by(req.n as u64);
    let mut receivers = Vec::with_capacity(req.n);
    {
        let jobs = shared.jobs.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..req.n {
            let (tx, rx) = mpsc::unbounded_channel();
            let mut sampling = req.sampling.clone();
            sampling.seed = sampling.seed.wrapping_add(i as u64);
            let job = Job {
                prompt: prompt.clone(),
                max_tokens,
                sampling,
                logprobs: req.logprobs,
                ignore_eos: req.ignore_eos,
                constraint: constraints.next().flatten(),
                events: tx,
                submitted: Instant::now(),
            };
            if jobs.send(job).is_err() {
                return Err(ApiError::new(
                    503,
                    "server_error",
                    "the server is shutting down",
                ));
            }
            receivers.push(rx);
        }
    }
    let id = format!(
        "{}-{}",
        match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        },
        shared.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let meta = Meta {
        id,
        endpoint,
        created: unix_now(),
        model: shared.model.clone(),
        prompt_tokens: prompt.len(),
        stop: req.stop.clone(),
        logprobs: req.logprobs.is_some(),
        echo: req.echo.then(|| match &req.prompt {
            Prompt::Text(s) => s.clone(),
            _ => shared.tok.decode(&prompt, true),
        }),
    };
    if req.stream {
        Ok(stream_response(
            shared.clone(),
            Arc::new(meta),
            receivers,
            req.include_usage,
        ))
    } else {
        let mut choices = Vec::new();
        let (mut completion, mut cached) = (0, 0);
        for (i, rx) in receivers.into_iter().enumerate() {
            let mut c = Choice::new(&shared.tok, &meta, i);
            let mut rx = rx;
            while let Some(ev) = rx.recv().await {
                if c.event(ev).is_some() && c.done() {
                    break;
                }
            }
            completion += c.completion_tokens;
            cached = cached.max(c.cached);
            choices.push(c.whole());
        }
        let object = match endpoint {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        };
        Ok(json_response(
            200,
            &json!({
                "id": meta.id,
                "object": object,
                "created": meta.created,
                "model": meta.model,
                "choices": choices,
                "usage": api::usage(meta.prompt_tokens, completion, cached),
            }),
        ))
    }
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What every choice of one response shares.
struct Meta {
    id: String,
    endpoint: Endpoint,
    created: u64,
    model: String,
    prompt_tokens: usize,
    stop: Vec<String>,
    logprobs: bool,
    echo: Option<String>,
}

/// One choice being generated: its text so far and how it ended.
struct Choice<'a> {
    tok: &'a Tokenizer,
    meta: &'a Meta,
    index: usize,
    decoder: Decoder<'a>,
    filter: StopFilter<'a>,
    text: String,
    finish: Option<&'static str>,
    completion_tokens: usize,
    cached: usize,
    /// Log-probability entries not yet sent (streaming) or all of them (whole).
    logprobs: Vec<(u32, Logprob)>,
}

impl<'a> Choice<'a> {
    fn new(tok: &'a Tokenizer, meta: &'a Meta, index: usize) -> Choice<'a> {
        Choice {
            tok,
            meta,
            index,
            decoder: Decoder::new(tok, false),
            filter: StopFilter::new(&meta.stop),
            text: String::new(),
            finish: None,
            completion_tokens: 0,
            cached: 0,
            logprobs: Vec::new(),
        }
    }

    fn done(&self) -> bool {
        self.finish.is_some()
    }

    /// Takes one event; returns the new text it releases, if any event was taken.
    fn event(&mut self, ev: Event) -> Option<String> {
        if self.done() {
            return None;
        }
        match ev {
            Event::Prompt { cached } => {
                self.cached = cached;
                Some(String::new())
            }
            Event::Token { id, logprob } => {
                self.completion_tokens += 1;
                if let Some(lp) = logprob {
                    self.logprobs.push((id, lp));
                }
                let (piece, hit) = self.filter.push(&self.decoder.push(id));
                if hit {
                    self.finish = Some("stop");
                }
                self.text.push_str(&piece);
                Some(piece)
            }
            Event::Done { finish, .. } => {
                let (tail, hit) = self.filter.push(&self.decoder.finish());
                let mut piece = tail;
                if !hit {
                    piece.push_str(&self.filter.flush());
                }
                self.text.push_str(&piece);
                self.finish = Some(match (hit, finish) {
                    (true, _) | (_, Finish::Stop) => "stop",
                    (_, Finish::Length) => "length",
                });
                Some(piece)
            }
        }
    }

    /// The pending log-probabilities in the endpoint's shape (and forgets them).
    fn take_logprobs(&mut self) -> Value {
        if !self.meta.logprobs {
            return Value::Null;
        }
        let entries = std::mem::take(&mut self.logprobs);
        let bytes = |t: u32| self.tok.token_bytes(t).to_vec();
        match self.meta.endpoint {
            Endpoint::Chat => json!({"content": entries.iter().map(|(id, lp)| {
                let top: Vec<_> = lp.top.iter().map(|&(t, l)| (bytes(t), l)).collect();
                api::chat_logprob(&bytes(*id), lp.logprob, &top)
            }).collect::<Vec<_>>()}),
            Endpoint::Completions => {
                let text = |t: u32| String::from_utf8_lossy(&bytes(t)).into_owned();
                json!({
                    "tokens": entries.iter().map(|e| text(e.0)).collect::<Vec<_>>(),
                    "token_logprobs": entries.iter().map(|e| e.1.logprob).collect::<Vec<_>>(),
                    "top_logprobs": entries.iter().map(|e| {
                        e.1.top.iter().map(|&(t, l)| (text(t), json!(l))).collect::<serde_json::Map<_, _>>()
                    }).collect::<Vec<_>>(),
                })
            }
        }
    }

    /// The choice of a whole (not streamed) response.
    fn whole(mut self) -> Value {
        let logprobs = self.take_logprobs();
        match self.meta.endpoint {
            Endpoint::Chat => json!({
                "index": self.index,
                "message": {"role": "assistant", "content": self.text},
                "logprobs": logprobs,
                "finish_reason": self.finish,
            }),
            Endpoint::Completions => json!({
                "index": self.index,
                "text": format!("{}{}", self.meta.echo.as_deref().unwrap_or(""), self.text),
                "logprobs": logprobs,
                "finish_reason": self.finish,
            }),
        }
    }

    /// A streamed chunk's choice carrying `piece`.
    fn delta(&mut self, piece: &str, first: bool) -> Value {
        let logprobs = self.take_logprobs();
        match self.meta.endpoint {
            Endpoint::Chat => {
                let mut delta = json!({"content": piece});
                if first {
                    delta["role"] = json!("assistant");
                }
                json!({"index": self.index, "delta": delta, "logprobs": logprobs, "finish_reason": self.finish})
            }
            Endpoint::Completions => {
                json!({"index": self.index, "text": piece, "logprobs": logprobs, "finish_reason": self.finish})
            }
        }
    }
}

/// A body fed from a channel: the stream of server-sent events.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// Streams the choices as chunks, then usage (if asked), then `data: [DONE]`. When the
/// client goes away the sends fail, the tasks end and drop their event receivers, and
/// the scheduler frees the sequences at its next step.
fn stream_response(
    shared: Arc<Shared>,
    meta: Arc<Meta>,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    include_usage: bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let object = match meta.endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completions => "text_completion",
    };
    let chunk = {
        let meta = meta.clone();
        move |choices: Value, usage: Value| {
            let mut c = json!({
                "id": meta.id,
                "object": object,
                "created": meta.created,
                "model": meta.model,
                "choices": choices,
            });
            if !usage.is_null() {
                c["usage"] = usage;
            }
            sse(&c)
        }
    };
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for (i, mut events) in receivers.into_iter().enumerate() {
            let (shared, meta, tx, chunk) =
                (shared.clone(), meta.clone(), tx.clone(), chunk.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = Choice::new(&shared.tok, &meta, i);
                let mut first = true;
                if let Some(echo) = meta.echo.clone() {
                    let piece = c.delta(&echo, false);
                    if tx.send(chunk(json!([piece]), Value::Null)).await.is_err() {
                        return (0, 0);
                    }
                }
                while let Some(ev) = events.recv().await {
                    let Some(piece) = c.event(ev) else { break };
                    let has_logprobs = !c.logprobs.is_empty();
                    if piece.is_empty() && !first && !c.done() && !has_logprobs {
                        continue;
                    }
                    if piece.is_empty()
                        && first
                        && !c.done()
                        && !has_logprobs
                        && meta.endpoint == Endpoint::Completions
                    {
                        continue;
                    }
                    let choice = c.delta(&piece, first);
                    first = false;
                    if tx.send(chunk(json!([choice]), Value::Null)).await.is_err() {
                        return (0, 0);
                    }
                    if c.done() {
                        break;
                    }
                }
                (c.completion_tokens, c.cached)
            }));
        }
        let (mut completion, mut cached) = (0, 0);
        for t in tasks {
            if let Ok((n, c)) = t.await {
                completion += n;
                cached = cached.max(c);
            }
        }
        if include_usage {
            let usage = api::usage(meta.prompt_tokens, completion, cached);
            let _ = tx.send(chunk(json!([]), usage)).await;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
