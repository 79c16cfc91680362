//! Subcommands for measuring the model against a text or another engine: `perplexity`
//! and `logits`; and `imatrix`, the forward pass of `mcc imatrix`.

use std::time::Instant;

use crate::model::{Ctx, Model};
use crate::perplexity::{perplexity, Mode};

#[derive(clap::Args, Debug)]
pub(super) struct PerplexityArgs {
    /// The text to score (not needed with --kl-divergence: the base file has the tokens).
    #[arg(short = 'f', long = "file", required_unless_present = "kl_divergence")]
    file: Option<std::path::PathBuf>,
    /// Chunk length in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Most tokens evaluated in one forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Score at most this many chunks.
    #[arg(long = "chunks")]
    chunks: Option<usize>,
    /// Threads for the forward pass (default: one per physical core).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Without --kl-divergence: save this run's log-probabilities to FILE, as the base
    /// for later comparisons (llama.cpp's format). With it: the base file to compare
    /// against.
    #[arg(long = "kl-divergence-base", value_name = "FILE")]
    kl_divergence_base: Option<std::path::PathBuf>,
    /// Compare against --kl-divergence-base: KLD, top-1 agreement and Δp.
    #[arg(long = "kl-divergence", requires = "kl_divergence_base")]
    kl_divergence: bool,
}

#[derive(clap::Args, Debug)]
pub(super) struct LogitsArgs {
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file")]
    file: std::path::PathBuf,
    /// Where to write the logits.
    #[arg(short = 'o', long = "out")]
    out: std::path::PathBuf,
    /// Threads for the forward pass (default: one per physical core).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Most prompt tokens evaluated in one forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
}

#[derive(clap::Args, Debug)]
pub(super) struct ImatrixArgs {
    /// The calibration text.
    #[arg(short = 'f', long = "file")]
    file: std::path::PathBuf,
    /// Where to write the sums, in the raw form `mcc imatrix` reads (see the runtime's
    /// `imatrix` module).
    #[arg(long = "raw-out", value_name = "FILE")]
    raw_out: std::path::PathBuf,
    /// Chunk length in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Most tokens evaluated in one forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Use at most this many chunks.
    #[arg(long = "chunks")]
    chunks: Option<usize>,
    /// Threads for the forward pass (default: one per physical core).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Also collect the input of output.weight.
    #[arg(long = "process-output")]
    process_output: bool,
    /// Skip the perplexity estimate (and the logits it needs).
    #[arg(long = "no-ppl")]
    no_ppl: bool,
}

pub(super) fn run_perplexity<M: Model>(args: &PerplexityArgs) -> Result<(), String> {
    if args.ctx_size < 4 || args.ctx_size > M::CONFIG.n_ctx {
        return Err(format!(
            "-c must be between 4 and {} (the context this binary was compiled for), got {}",
            M::CONFIG.n_ctx,
            args.ctx_size
        ));
    }
    let tokenizer = super::load_tokenizer::<M>()?;
    let tokens = match &args.file {
        Some(path) if !args.kl_divergence => {
            let t0 = Instant::now();
            // llama.cpp's perplexity tokenizes with BOS per the model and without
            // parsing special tokens.
            let ids = tokenizer.encode(&super::read_text(path)?, true, false);
            eprintln!(
                "perplexity: tokenized {} into {} tokens in {:.0} ms",
                path.display(),
                ids.len(),
                t0.elapsed().as_secs_f64() * 1e3
            );
            ids
        }
        _ => Vec::new(),
    };
    let mode = match (&args.kl_divergence_base, args.kl_divergence) {
        (Some(base), true) => Mode::KlDivergence(base),
        (Some(base), false) => Mode::SaveBase(base),
        (None, _) => Mode::Perplexity,
    };
    let threads = super::threads_or_default(args.threads)?;
    let mut ctx =
        Ctx::new::<M>(threads, args.ctx_size, args.batch_size).map_err(|e| e.to_string())?;
    let bos = if tokenizer.add_bos() {
        tokenizer.bos()
    } else {
        None
    };
    let stdout = std::io::stdout();
    let r = perplexity::<M>(
        &mut ctx,
        &tokens,
        bos,
        args.chunks,
        &mode,
        &mut stdout.lock(),
    )?;
    eprintln!(
        "perplexity: {} chunks of {} tokens, {} tokens scored",
        r.n_chunks, args.ctx_size, r.n_scored
    );
    Ok(())
}

pub(super) fn dump_logits<M: Model>(args: &LogitsArgs) -> Result<(), String> {
    let text = super::read_text(&args.file)?;
    let tokenizer = super::load_tokenizer::<M>()?;
    let ids = tokenizer.encode(&text, true, true);
    if ids.is_empty() || ids.len() > M::CONFIG.n_ctx {
        return Err(format!(
            "{}: {} tokens; this binary holds 1 to {}",
            args.file.display(),
            ids.len(),
            M::CONFIG.n_ctx
        ));
    }
    let threads = super::threads_or_default(args.threads)?;
    let mut ctx =
        Ctx::new::<M>(threads, M::CONFIG.n_ctx, args.batch_size).map_err(|e| e.to_string())?;
    let mut gpu = crate::gpu::open::<M>(M::CONFIG.n_ctx);
    let logits = match &mut gpu {
        Some(gpu) => gpu.eval::<M>(&ids, 0, 0).map_err(|e| format!("GPU: {e}"))?,
        None => ctx.eval::<M>(&ids, 0, 0),
    };
    let mut bytes = Vec::with_capacity(8 + ids.len() * 4 + logits.len() * 4);
    bytes.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(M::CONFIG.n_vocab as u32).to_le_bytes());
    ids.iter()
        .for_each(|id| bytes.extend_from_slice(&id.to_le_bytes()));
    logits
        .iter()
        .for_each(|l| bytes.extend_from_slice(&l.to_le_bytes()));
    std::fs::write(&args.out, bytes).map_err(|e| format!("{}: {e}", args.out.display()))
}

pub(super) fn run_imatrix<M: Model>(args: &ImatrixArgs) -> Result<(), String> {
    if args.ctx_size < 4 || args.ctx_size > M::CONFIG.n_ctx {
        return Err(format!(
            "-c must be between 4 and {} (the context this binary was compiled for), got {}",
            M::CONFIG.n_ctx,
            args.ctx_size
        ));
    }
    let tokenizer = super::load_tokenizer::<M>()?;
    let t0 = Instant::now();
    // llama-imatrix tokenizes as perplexity does: BOS per the model, no special tokens.
    let tokens = tokenizer.encode(&super::read_text(&args.file)?, true, false);
    eprintln!(
        "imatrix: tokenized {} into {} tokens in {:.0} ms",
        args.file.display(),
        tokens.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let threads = super::threads_or_default(args.threads)?;
    let mut ctx =
        Ctx::new::<M>(threads, args.ctx_size, args.batch_size).map_err(|e| e.to_string())?;
    let bos = tokenizer.add_bos().then(|| tokenizer.bos()).flatten();
    super::catch_interrupts();
    let stdout = std::io::stdout();
    let start = Instant::now();
    let mut progress = |done: usize, all: usize| {
        let secs = start.elapsed().as_secs_f64();
        let eta = secs / done as f64 * (all - done) as f64;
        eprintln!(
            "imatrix: chunk {done}/{all}, {:.2} s per chunk, {:.0} s elapsed, ETA {:.0} s",
            secs / done as f64,
            secs,
            eta
        );
    };
    let (collector, done) = crate::imatrix::collect::<M>(
        &mut ctx,
        crate::imatrix::Collector::new::<M>(args.process_output),
        &tokens,
        &crate::imatrix::Pass {
            bos,
            max_chunks: args.chunks,
            ppl: !args.no_ppl,
        },
        &mut stdout.lock(),
        &mut progress,
    )?;
    if super::interrupted() {
        return Err(format!(
            "interrupted after {} chunks; nothing written",
            done.n_chunks
        ));
    }
    let raw = collector.to_raw(done.n_chunks as u32, args.ctx_size as u32);
    std::fs::write(&args.raw_out, raw).map_err(|e| format!("{}: {e}", args.raw_out.display()))?;
    if let Some(ppl) = done.ppl {
        eprintln!("imatrix: final estimate: PPL = {ppl:.4}");
    }
    eprintln!(
        "imatrix: {} chunks of {} tokens in {:.2} s",
        done.n_chunks,
        args.ctx_size,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
