//! `serve`: an OpenAI-compatible HTTP server in every compiled binary.
//!
//! The scheduler ([`engine`]) owns the model on a thread of its own and batches up to
//! `--parallel` sequences per forward pass; the HTTP side ([`http`], on a single-threaded
//! tokio runtime) parses requests ([`api`]), submits jobs and turns the scheduler's
//! events into responses. The two meet through channels: a job carries the sender of its
//! events, and a client that goes away drops the receiver, which frees the sequence.

mod api;
mod engine;
mod grammar;
mod http;
mod metrics;
mod page;

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::chat_template::ChatTemplate;
use crate::model::{Ctx, Model};

pub use engine::{Forward, Limits};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences generated at once; each holds --ctx tokens of KV cache.
    #[arg(long, visible_alias = "np", default_value_t = 4)]
    parallel: usize,
    /// Tokens per sequence (prompt + completion); 0 means the size compiled in.
    #[arg(
        short = 'c',
        long = "ctx",
        visible_alias = "ctx-size",
        default_value_t = 4096
    )]
    ctx: usize,
    /// Prompt chunk length: a prompt is evaluated in chunks of this many tokens from its
    /// start, one chunk between decode steps. The prefix cache reuses whole chunks.
    #[arg(short = 'b', long = "batch-size", default_value_t = 128)]
    batch_size: usize,
    /// Requests that may wait for a free sequence; more get 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Threads for the forward pass (default: one per physical core).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long = "api-key", conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// Read the API key from a file (its first line).
    #[arg(long = "api-key-file")]
    api_key_file: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at /metrics.
    #[arg(long)]
    metrics: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long = "max-body", default_value_t = 4 << 20)]
    max_body: usize,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    #[arg(long = "grace", default_value_t = 30)]
    grace: u64,
    /// Name reported as the model (default: the binary's file name).
    #[arg(long = "alias")]
    alias: Option<String>,
}

/// The CPU forward pass of model `M` for the scheduler.
struct CpuForward<M: Model> {
    ctx: Ctx,
    _model: PhantomData<fn() -> M>,
}

impl<M: Model> Forward for CpuForward<M> {
    fn n_vocab(&self) -> usize {
        self.ctx.cfg.n_vocab
    }

    fn prefill(&mut self, seq: usize, tokens: &[u32], pos0: usize) -> &[f32] {
        self.ctx.eval_seq::<M>(seq, tokens, pos0, tokens.len() - 1)
    }

    fn decode(&mut self, steps: &[(usize, usize, u32)]) -> &[f32] {
        self.ctx.decode::<M>(steps)
    }
}

pub fn serve<M: Model>(args: &ServeArgs) -> Result<(), String> {
    let n_ctx = match args.ctx {
        0 => M::CONFIG.n_ctx,
        n => n,
    };
    if n_ctx > M::CONFIG.n_ctx {
        return Err(format!(
            "--ctx {n_ctx} is more than this binary was compiled for ({}); rebuild with mcc build --ctx",
            M::CONFIG.n_ctx
        ));
    }
    if args.parallel == 0 {
        return Err("--parallel must be at least 1".into());
    }
    if args.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let api_key = match (&args.api_key, &args.api_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(path)) => {
            let text = crate::cli::read_text(path)?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            if key.is_empty() {
                return Err(format!(
                    "{}: the first line (the API key) is empty",
                    path.display()
                ));
            }
            Some(key)
        }
        (None, None) => None,
    };
    let threads = crate::cli::threads_or_default(args.threads)?;
    // One tokenizer for the HTTP side, the scheduler's end-of-generation test and the
    // grammar engine.
    let tok = Arc::new(crate::cli::load_tokenizer::<M>()?);
    let template = ChatTemplate::of(&tok).ok();
    let grammars = grammar::Grammars::new(tok.clone())?;
    let limits = Limits {
        parallel: args.parallel,
        n_ctx,
        chunk: args.batch_size.min(n_ctx),
    };
    let mut ctx = Ctx::with_sequences::<M>(
        threads,
        n_ctx,
        limits.chunk.max(args.parallel),
        args.parallel,
    )
    .map_err(|e| e.to_string())?;
    ctx.take_kv_memory();
    let metrics = Arc::new(metrics::Metrics::new(args.parallel * n_ctx));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
    let eog_tok = tok.clone();
    let engine = engine::Engine::new(
        CpuForward::<M> {
            ctx,
            _model: PhantomData,
        },
        limits,
        metrics.clone(),
        Box::new(move |id| eog_tok.is_eog(id)),
        in_flight.clone(),
    );
    let engine = std::thread::Builder::new()
        .name("mcc-engine".into())
        .spawn(move || engine.run(jobs_rx))
        .map_err(|e| format!("cannot start the scheduler thread: {e}"))?;
    let model = args.alias.clone().unwrap_or_else(|| {
        std::env::args()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "mcc".into())
    });
    let shared = Arc::new(http::Shared {
        tok,
        template,
        grammars,
        jobs: std::sync::Mutex::new(jobs_tx),
        in_flight,
        metrics,
        limits,
        queue: args.queue,
        api_key,
        expose_metrics: args.metrics,
        model,
        max_body: args.max_body,
        body_timeout: Duration::from_secs(30),
        started: http::unix_now(),
        next_id: AtomicU64::new(1),
    });
    let addr = format!("{}:{}", args.host, args.port);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    let grace = Duration::from_secs(args.grace);
    let result = runtime.block_on(listen(&addr, shared.clone(), grace, limits));
    // With the runtime go the tasks of unfinished requests, so their sequences are
    // freed; with the last handle on the job channel the scheduler ends.
    drop(runtime);
    drop(shared);
    let _ = engine.join();
    result
}

async fn listen(
    addr: &str,
    shared: Arc<http::Shared>,
    grace: Duration,
    limits: Limits,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "serve: listening on http://{local} ({} sequences of {} tokens, prompt chunks of {})",
        limits.parallel, limits.n_ctx, limits.chunk
    );
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot catch SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        eprintln!("serve: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Streamed tokens go out as they come, not held back for a fuller packet.
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let service = service_fn(move |req| http::handle(req, shared.clone()));
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(listener);
    eprintln!("serve: stopping; finishing the requests in flight");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            eprintln!("serve: {} s grace period over; exiting with requests unfinished", grace.as_secs());
        }
    }
    Ok(())
}
