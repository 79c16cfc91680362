//! The command line of every generated binary: generate text from a prompt, and the
//! `info` subcommand. Flags follow llama.cpp's so that users feel at home. Generated text
//! streams to stdout; timings and diagnostics go to stderr.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::model::{Ctx, Model};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::{Decoder, Tokenizer};

#[derive(Parser, Debug)]
#[command(
    about = "A language model compiled by mcc into this one executable.",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    gen: GenArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the baked-in configuration, quant mix and build options.
    Info,
    /// Evaluate a prompt and write every position's logits to a file (for comparisons
    /// with other engines): u32 n_tokens, u32 n_vocab, the token ids (u32), then
    /// n_tokens x n_vocab f32.
    Logits(LogitsArgs),
    /// Perplexity of a text by llama.cpp's method (second half of each n_ctx chunk
    /// scored), or KL divergence against a base model's saved log-probabilities.
    Perplexity(PerplexityArgs),
}

#[derive(clap::Args, Debug)]
struct PerplexityArgs {
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
    /// Threads for the forward pass (default: all available cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Without --kl-divergence: save this run's log-probabilities to FILE, as the base
    /// for later comparisons. With it: the base file to compare against.
    #[arg(long = "kl-divergence-base", value_name = "FILE")]
    kl_divergence_base: Option<std::path::PathBuf>,
    /// Compare against --kl-divergence-base: KLD, top-1 agreement and Δp.
    #[arg(long = "kl-divergence", requires = "kl_divergence_base")]
    kl_divergence: bool,
}

#[derive(clap::Args, Debug)]
struct LogitsArgs {
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file")]
    file: std::path::PathBuf,
    /// Where to write the logits.
    #[arg(short = 'o', long = "out")]
    out: std::path::PathBuf,
    /// Threads for the forward pass (default: all available cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Most prompt tokens evaluated in one forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
}

#[derive(clap::Args, Debug)]
struct GenArgs {
    /// Prompt text.
    #[arg(short = 'p', long = "prompt")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
    file: Option<std::path::PathBuf>,
    /// Number of tokens to generate; -1 generates until end of text or a full context.
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// Context size in tokens (prompt + generated); 0 means the size compiled in.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx_size: usize,
    /// Most prompt tokens evaluated in one forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Threads for the forward pass (default: all available cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temp: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed; the same seed gives the same output (default: from the clock).
    #[arg(long = "seed")]
    seed: Option<u64>,
    /// Echo the prompt before the generated text.
    #[arg(long = "display-prompt")]
    display_prompt: bool,
    /// Accepted for llama.cpp compatibility; the prompt is not echoed by default.
    #[arg(long = "no-display-prompt", hide = true)]
    no_display_prompt: bool,
    /// Print the prompt's token ids to stderr.
    #[arg(long = "verbose-prompt")]
    verbose_prompt: bool,
}

/// Entry point of a generated binary.
pub fn main<M: Model>() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Info) => {
            print!("{}", M::INFO);
            Ok(())
        }
        Some(Cmd::Logits(args)) => dump_logits::<M>(&args),
        Some(Cmd::Perplexity(args)) => run_perplexity::<M>(&args),
        None => generate::<M>(&cli.gen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn read_prompt(args: &GenArgs) -> Result<String, String> {
    match (&args.prompt, &args.file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(path)) => read_text(path),
        (None, None) => Err("no prompt: give one with -p TEXT or -f FILE".into()),
    }
}

fn read_text(path: &std::path::Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn run_perplexity<M: Model>(args: &PerplexityArgs) -> Result<(), String> {
    use crate::perplexity::{perplexity, Mode};
    if args.ctx_size < 4 || args.ctx_size > M::CONFIG.n_ctx {
        return Err(format!(
            "-c must be between 4 and {} (the context this binary was compiled for), got {}",
            M::CONFIG.n_ctx,
            args.ctx_size
        ));
    }
    let tokenizer =
        Tokenizer::from_bytes(M::tokenizer()).map_err(|e| format!("embedded tokenizer: {e}"))?;
    let tokens = match &args.file {
        Some(path) if !args.kl_divergence => {
            let t0 = Instant::now();
            // llama.cpp's perplexity tokenizes with BOS per the model and without
            // parsing special tokens.
            let ids = tokenizer.encode(&read_text(path)?, true, false);
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
    let threads = args.threads.unwrap_or_else(default_threads).max(1);
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

fn dump_logits<M: Model>(args: &LogitsArgs) -> Result<(), String> {
    let text = read_text(&args.file)?;
    let tokenizer =
        Tokenizer::from_bytes(M::tokenizer()).map_err(|e| format!("embedded tokenizer: {e}"))?;
    let ids = tokenizer.encode(&text, true, true);
    if ids.is_empty() || ids.len() > M::CONFIG.n_ctx {
        return Err(format!(
            "{}: {} tokens; this binary holds 1 to {}",
            args.file.display(),
            ids.len(),
            M::CONFIG.n_ctx
        ));
    }
    let threads = args.threads.unwrap_or_else(default_threads).max(1);
    let mut ctx =
        Ctx::new::<M>(threads, M::CONFIG.n_ctx, args.batch_size).map_err(|e| e.to_string())?;
    let logits = ctx.eval::<M>(&ids, 0, 0);
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

fn generate<M: Model>(args: &GenArgs) -> Result<(), String> {
    let t_start = Instant::now();
    let prompt = read_prompt(args)?;
    if !(args.temp.is_finite() && args.temp >= 0.0) {
        return Err(format!("--temp must be a number >= 0, got {}", args.temp));
    }
    let n_ctx = if args.ctx_size == 0 {
        M::CONFIG.n_ctx
    } else {
        args.ctx_size
    };
    let threads = args.threads.unwrap_or_else(default_threads);
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let tokenizer =
        Tokenizer::from_bytes(M::tokenizer()).map_err(|e| format!("embedded tokenizer: {e}"))?;
    let mut ctx = Ctx::new::<M>(threads, n_ctx, args.batch_size).map_err(|e| e.to_string())?;
    let t_loaded = Instant::now();

    let prompt_ids = tokenizer.encode(&prompt, true, true);
    if prompt_ids.is_empty() {
        return Err("the prompt is empty: nothing to continue from".into());
    }
    if prompt_ids.len() >= n_ctx {
        return Err(format!(
            "the prompt is {} tokens, but the context holds {n_ctx}: shorten it or raise -c",
            prompt_ids.len()
        ));
    }
    if args.verbose_prompt {
        eprintln!("prompt: {} tokens: {:?}", prompt_ids.len(), prompt_ids);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut sampler = Sampler::new(SamplerConfig {
        temp: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed,
    });

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.display_prompt {
        let _ = write!(out, "{prompt}");
    }
    let budget = n_ctx - prompt_ids.len();
    let n_predict = if args.n_predict < 0 {
        budget
    } else {
        (args.n_predict as usize).min(budget)
    };

    let mut history = prompt_ids.clone();
    let mut decoder = Decoder::new(&tokenizer, false);
    let t_prompt = Instant::now();
    let mut logits = ctx.eval::<M>(&prompt_ids, 0, prompt_ids.len() - 1).to_vec();
    let t_prompt_done = Instant::now();
    let mut n_gen = 0;
    while n_gen < n_predict {
        let next = sampler.sample(&logits, &history);
        if tokenizer.is_eog(next) {
            break;
        }
        n_gen += 1;
        history.push(next);
        let piece = decoder.push(next);
        if out
            .write_all(piece.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            // stdout closed (e.g. piped into `head`): stop quietly.
            return Ok(());
        }
        if n_gen == n_predict {
            break;
        }
        logits.copy_from_slice(ctx.eval::<M>(&[next], history.len() - 1, 0));
    }
    let _ = out.write_all(decoder.finish().as_bytes());
    let _ = out.flush();
    let t_end = Instant::now();

    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let rate = |ms: f64, n: usize| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    let (pp_ms, tg_ms) = (ms(t_prompt, t_prompt_done), ms(t_prompt_done, t_end));
    eprintln!();
    eprintln!("load time        = {:10.2} ms", ms(t_start, t_loaded));
    eprintln!(
        "prompt eval time = {:10.2} ms / {:5} tokens ({:8.2} tokens per second)",
        pp_ms,
        prompt_ids.len(),
        rate(pp_ms, prompt_ids.len())
    );
    eprintln!(
        "eval time        = {:10.2} ms / {:5} runs   ({:8.2} tokens per second)",
        tg_ms,
        n_gen.saturating_sub(1),
        rate(tg_ms, n_gen.saturating_sub(1))
    );
    eprintln!(
        "total time       = {:10.2} ms / {:5} tokens",
        ms(t_start, t_end),
        prompt_ids.len() + n_gen
    );
    Ok(())
}
