//! The command line of every generated binary. Flags follow llama.cpp's so that users
//! feel at home. Generated text streams to stdout; timings and diagnostics go to stderr.
//!
//! Subcommands: (none) generate from a prompt, `chat`, `bench`, `perplexity`, `logits`,
//! `serve`, `info`.

mod bench;
mod chat;
mod generate;
mod session;
mod tools;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use crate::model::Model;
use crate::sampler::SamplerConfig;
use crate::tokenizer::Tokenizer;

#[derive(Parser, Debug)]
#[command(
    about = "A language model compiled by mcc into this one executable.",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    gen: generate::GenArgs,
    #[command(flatten)]
    gpu: GpuFlags,
}

/// Where the forward pass runs (binaries built with `mcc build --gpu`).
#[derive(clap::Args, Debug, Clone)]
struct GpuFlags {
    /// Run on the GPU: the default of a binary built with `mcc build --gpu`, which falls
    /// back to the CPU (with a one-line notice) when no CUDA driver or device is found.
    #[arg(long = "gpu", global = true)]
    gpu: bool,
    /// Run the first N layers on the GPU and the rest on the CPU (0: all on the CPU)
    /// [default: all on the GPU].
    #[arg(
        long = "gpu-layers",
        visible_alias = "n-gpu-layers",
        value_name = "N",
        global = true
    )]
    gpu_layers: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the baked-in configuration, quant mix and build options.
    Info,
    /// Chat interactively, with the model's chat template.
    Chat(chat::ChatArgs),
    /// Measure prompt processing (pp) and generation (tg) speed, like llama-bench.
    Bench(bench::BenchArgs),
    /// Perplexity of a text by llama.cpp's method (second half of each n_ctx chunk
    /// scored), or KL divergence against a base model's saved log-probabilities.
    Perplexity(tools::PerplexityArgs),
    /// The forward pass of `mcc imatrix`: importance-matrix sums over a calibration text,
    /// written in mcc's raw form (mcc writes llama.cpp's imatrix GGUF from them).
    #[command(hide = true)]
    Imatrix(tools::ImatrixArgs),
    /// Evaluate a prompt and write every position's logits to a file (for comparisons
    /// with other engines): u32 n_tokens, u32 n_vocab, the token ids (u32), then
    /// n_tokens x n_vocab f32.
    Logits(tools::LogitsArgs),
    /// An OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, ...)
    /// generating up to --parallel replies at once.
    Serve(crate::serve::ServeArgs),
}

/// Sampling flags shared by generation and chat.
#[derive(clap::Args, Debug, Clone)]
struct SamplingArgs {
    /// Sampling temperature; 0 (or below, as in llama.cpp) picks the most likely token.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temp: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long = "top-p", default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05, allow_negative_numbers = true)]
    min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1 = off).
    #[arg(
        long = "repeat-penalty",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    repeat_penalty: f32,
    /// Subtract N times its count among the last --repeat-last-n tokens from a token's
    /// logit (0 = off).
    #[arg(
        long = "frequency-penalty",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    frequency_penalty: f32,
    /// Subtract N from the logit of every token among the last --repeat-last-n (0 = off).
    #[arg(
        long = "presence-penalty",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    presence_penalty: f32,
    /// How many recent tokens the penalties look at (0 = off, -1 = the context).
    #[arg(
        long = "repeat-last-n",
        default_value_t = 64,
        allow_negative_numbers = true
    )]
    repeat_last_n: i64,
    /// Random seed; the same seed gives the same output (default: from the clock).
    #[arg(short = 's', long = "seed")]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn config(&self, n_ctx: usize) -> Result<SamplerConfig, String> {
        let in_unit = |v: f32| v.is_finite() && (0.0..=1.0).contains(&v);
        if !self.temp.is_finite() {
            return Err(format!("--temp must be a number, got {}", self.temp));
        }
        if !in_unit(self.top_p) {
            return Err(format!(
                "--top-p must be between 0 and 1, got {}",
                self.top_p
            ));
        }
        if !in_unit(self.min_p) {
            return Err(format!(
                "--min-p must be between 0 and 1, got {}",
                self.min_p
            ));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!(
                "--repeat-penalty must be a number above 0, got {}",
                self.repeat_penalty
            ));
        }
        for (flag, v) in [
            ("--frequency-penalty", self.frequency_penalty),
            ("--presence-penalty", self.presence_penalty),
        ] {
            if !v.is_finite() {
                return Err(format!("{flag} must be a number, got {v}"));
            }
        }
        let repeat_last_n = match self.repeat_last_n {
            -1 => n_ctx,
            n if n >= 0 => n as usize,
            n => return Err(format!("--repeat-last-n must be -1 or more, got {n}")),
        };
        let seed = self.seed.unwrap_or_else(crate::sampler::clock_seed);
        Ok(SamplerConfig {
            temp: self.temp.max(0.0),
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repeat_last_n,
            seed,
        })
    }
}

/// Entry point of one kernel tier's copy of a generated binary ([`crate::tier`]):
/// `tier` is the line `info` prints about the tier in use.
pub fn main<M: Model>(tier: &'static str) -> ExitCode {
    run::<M>(None, tier)
}

/// Entry point of a generated binary built with `mcc build --gpu`: `gpu` holds its PTX
/// and the tensors the kernels read.
pub fn main_gpu<M: Model>(gpu: &'static crate::gpu::GpuModel, tier: &'static str) -> ExitCode {
    run::<M>(Some(gpu), tier)
}

fn run<M: Model>(gpu: Option<&'static crate::gpu::GpuModel>, tier: &'static str) -> ExitCode {
    let cli = Cli::parse();
    crate::gpu::set_request(crate::gpu::GpuRequest {
        model: gpu,
        layers: cli.gpu.gpu_layers,
        asked: cli.gpu.gpu || cli.gpu.gpu_layers.is_some_and(|n| n > 0),
    });
    let result = match cli.cmd {
        Some(Cmd::Info) => {
            println!("{}kernel tier:  {tier}", M::INFO);
            Ok(())
        }
        Some(Cmd::Chat(args)) => chat::chat::<M>(&args),
        Some(Cmd::Bench(args)) => bench::bench::<M>(&args),
        Some(Cmd::Perplexity(args)) => tools::run_perplexity::<M>(&args),
        Some(Cmd::Logits(args)) => tools::dump_logits::<M>(&args),
        Some(Cmd::Imatrix(args)) => tools::run_imatrix::<M>(&args),
        Some(Cmd::Serve(args)) => crate::serve::serve::<M>(&args),
        None => generate::generate::<M>(&cli.gen),
    };
    match result {
        Ok(()) if crate::gpu::failed() => ExitCode::FAILURE,
        Ok(()) if interrupted() => ExitCode::from(130),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C set a flag that generation loops check, instead of killing the process,
/// so that an interrupted run still prints its timings (and exits 130), and so that in
/// chat it stops the current reply only.
fn catch_interrupts() {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn clear_interrupt() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}

/// Threads to use by default: one per physical core (hyperthreads share the core's
/// vector units and memory bandwidth, so they rarely help here).
fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = std::collections::BTreeSet::new();
    for cpu in 0..logical {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list");
        match std::fs::read_to_string(&path).or_else(|_| {
            std::fs::read_to_string(path.replace("core_cpus_list", "thread_siblings_list"))
        }) {
            Ok(s) => {
                cores.insert(s.trim().to_string());
            }
            Err(_) => return logical,
        }
    }
    cores.len().clamp(1, logical)
}

pub(crate) fn threads_or_default(threads: Option<usize>) -> Result<usize, String> {
    match threads {
        Some(0) => Err("--threads must be at least 1".into()),
        Some(n) => Ok(n),
        None => Ok(default_threads()),
    }
}

pub(crate) fn read_text(path: &std::path::Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

pub(crate) fn load_tokenizer<M: Model>() -> Result<Tokenizer, String> {
    Tokenizer::from_bytes(M::tokenizer()).map_err(|e| format!("embedded tokenizer: {e}"))
}
