//! Text generation from a prompt: the binary's default command.

use super::session::{Session, Stop};
use super::SamplingArgs;
use crate::model::Model;
use crate::sampler::Sampler;

#[derive(clap::Args, Debug)]
pub(super) struct GenArgs {
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
    /// Threads for the forward pass (default: one per physical core).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop when the generated text contains STRING (may be given several times).
    #[arg(long = "stop", value_name = "STRING")]
    stop: Vec<String>,
    /// Echo the prompt before the generated text.
    #[arg(long = "display-prompt")]
    display_prompt: bool,
    /// Accepted for llama.cpp compatibility; the prompt is not echoed by default.
    #[arg(long = "no-display-prompt", hide = true)]
    no_display_prompt: bool,
    /// Print the prompt's tokens (id and text) to stderr.
    #[arg(long = "verbose-prompt")]
    verbose_prompt: bool,
    /// Do not treat special-token text in the prompt (e.g. `<|im_start|>`) as special
    /// tokens.
    #[arg(long = "no-parse-special")]
    no_parse_special: bool,
    /// When the prompt does not fit the context, keep its last tokens instead of failing
    /// (leaves room for -n tokens, or a quarter of the context with -n -1).
    #[arg(long = "truncate")]
    truncate: bool,
}

fn read_prompt(args: &GenArgs) -> Result<String, String> {
    match (&args.prompt, &args.file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(path)) => super::read_text(path),
        (None, None) => Err("no prompt: give one with -p TEXT or -f FILE (see --help)".into()),
    }
}

pub(super) fn generate<M: Model>(args: &GenArgs) -> Result<(), String> {
    let prompt = read_prompt(args)?;
    let n_ctx = if args.ctx_size == 0 {
        M::CONFIG.n_ctx
    } else {
        args.ctx_size
    };
    if n_ctx > M::CONFIG.n_ctx {
        return Err(format!("-c {n_ctx} is more than this binary was compiled for ({}); rebuild with mcc build --ctx", M::CONFIG.n_ctx));
    }
    let threads = super::threads_or_default(args.threads)?;
    let sampler_cfg = args.sampling.config(n_ctx)?;
    let mut session = Session::<M>::new(threads, n_ctx, args.batch_size)?;

    let mut ids = session.tok.encode(&prompt, true, !args.no_parse_special);
    if ids.is_empty() {
        return Err("the prompt is empty: nothing to continue from".into());
    }
    if ids.len() >= n_ctx {
        if !args.truncate {
            return Err(format!(
                "the prompt is {} tokens, but the context holds {n_ctx}: shorten it, raise -c, or pass --truncate",
                ids.len()
            ));
        }
        let room = if args.n_predict > 0 {
            (args.n_predict as usize).min(n_ctx - 1)
        } else {
            n_ctx / 4
        };
        let keep = (n_ctx - room).max(1);
        eprintln!(
            "warning: prompt truncated from {} to its last {keep} tokens",
            ids.len()
        );
        ids.drain(..ids.len() - keep);
    }
    if args.verbose_prompt {
        eprintln!("prompt: {} tokens", ids.len());
        for &id in &ids {
            eprintln!(
                "{id:6} -> {:?}",
                String::from_utf8_lossy(session.tok.token_bytes(id))
            );
        }
    }
    let budget = match args.n_predict {
        n if n < 0 => usize::MAX,
        n => n as usize,
    };
    super::catch_interrupts();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.display_prompt {
        use std::io::Write;
        let _ = write!(out, "{prompt}");
    }
    session.feed(&ids)?;
    let mut sampler = Sampler::new(sampler_cfg);
    let stop = session.generate(&mut sampler, budget, &args.stop, &mut out);
    if stop != Stop::OutputClosed {
        session.print_timings();
    }
    if stop == Stop::ContextFull && args.n_predict >= 0 {
        eprintln!("note: stopped early, the context ({n_ctx} tokens) is full");
    }
    Ok(())
}
