//! `bench`: prompt processing (ppN) and text generation (tgN) throughput, measured like
//! llama-bench (a warm-up run, then repetitions; mean ± sample standard deviation) and
//! printed as its markdown table. With `-d N` both run after N tokens of context, as
//! `llama-bench -d N` (labelled `pp512 @ d2048`). With `--parallel N` the tg test decodes
//! N sequences at once, one token of each per step, as a server's continuous batching
//! does (`tg128 x16`: the aggregate tokens/s of the 16), like `llama-batched-bench`.

use std::time::Instant;

use crate::model::{Ctx, Model};

#[derive(clap::Args, Debug)]
pub(super) struct BenchArgs {
    /// Prompt tokens evaluated in one batch (0 skips the pp test).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens generated one at a time (0 skips the tg test).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    reps: usize,
    /// Threads (default: one per physical core).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Most tokens evaluated in one forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Tokens of context filled before each test (untimed), which then runs at
    /// positions N.. (as `llama-bench -d`).
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    depth: usize,
    /// Sequences decoded together in the tg test (each filled to the depth first).
    #[arg(long = "parallel", default_value_t = 1)]
    parallel: usize,
}

/// Deterministic stand-in tokens (the content does not change the cost).
fn tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n_vocab as u64) as u32
        })
        .collect()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (mean, var.sqrt())
}

pub(super) fn bench<M: Model>(args: &BenchArgs) -> Result<(), String> {
    if args.reps == 0 {
        return Err("-r must be at least 1".into());
    }
    let cfg = M::CONFIG;
    let test = args.n_prompt.max(args.n_gen).max(1);
    if args.depth + test > cfg.n_ctx {
        return Err(format!(
            "a test of {test} tokens after a depth of {} does not fit the compiled context of {}",
            args.depth, cfg.n_ctx
        ));
    }
    if args.parallel == 0 {
        return Err("--parallel must be at least 1".into());
    }
    let threads = super::threads_or_default(args.threads)?;
    let n_seq = args.parallel;
    // Each sequence holds just what the tests write (16 Minitron sequences of its whole
    // context would take 8 GiB).
    let n_ctx = if n_seq > 1 {
        args.depth + test
    } else {
        cfg.n_ctx
    };
    let mut ctx = Ctx::with_sequences::<M>(threads, n_ctx, args.batch_size, n_seq)
        .map_err(|e| e.to_string())?;
    let mut gpu = crate::gpu::open::<M>(cfg.n_ctx);
    if gpu.is_some() && n_seq > 1 {
        return Err("--parallel runs on the CPU only (MCC_GPU=0)".into());
    }
    let backend = if gpu.is_some() {
        "CUDA (mcc)".to_string()
    } else {
        format!("CPU (mcc, {})", crate::tier::compiled().name())
    };
    // Every sequence is filled to the depth (untimed) on the CPU, the first one below.
    if args.depth > 0 {
        let history = tokens(args.depth, cfg.n_vocab, 3);
        for seq in 1..n_seq {
            ctx.eval_seq::<M>(seq, &history, 0, args.depth - 1);
        }
    }
    // On the GPU, generation steps keep the logits on the device and bring back only
    // the greedy pick (the sampler's work is not part of tg either).
    let mut eval = |tokens: &[u32], pos: usize, first: usize| -> Result<(), String> {
        match &mut gpu {
            Some(g) if tokens.len() == 1 => g
                .decode_greedy::<M>(tokens[0], pos)
                .map(|_| ())
                .map_err(|e| format!("GPU: {e}")),
            Some(g) => g
                .eval::<M>(tokens, pos, first)
                .map(|_| ())
                .map_err(|e| format!("GPU: {e}")),
            None => {
                ctx.eval::<M>(tokens, pos, first);
                Ok(())
            }
        }
    };
    let model = M::INFO
        .lines()
        .next()
        .and_then(|l| l.split_once(':'))
        .map_or("model", |(_, v)| v.trim());
    let size = M::weights().len() as f64 / (1 << 20) as f64;
    println!("| model | size | backend | threads | test | t/s |");
    println!("| --- | ---: | --- | ---: | ---: | ---: |");
    let report = |test: String, rates: &[f64]| {
        let (mean, sd) = mean_sd(rates);
        println!(
            "| {model} | {size:.2} MiB | {backend} | {threads} | {test} | {mean:.2} ± {sd:.2} |"
        );
    };
    // The depth is filled once: every test writes only positions from `depth` on, and
    // a position sees only the cells before it, so each repetition finds the same cache.
    let depth = args.depth;
    let at_depth = if depth > 0 {
        let history = tokens(depth, cfg.n_vocab, 3);
        eval(&history, 0, depth - 1)?;
        format!(" @ d{depth}")
    } else {
        String::new()
    };
    if args.n_prompt > 0 {
        let prompt = tokens(args.n_prompt, cfg.n_vocab, 1);
        eval(&prompt, depth, prompt.len() - 1)?; // warm-up
        let mut rates = Vec::with_capacity(args.reps);
        for _ in 0..args.reps {
            let t0 = Instant::now();
            eval(&prompt, depth, prompt.len() - 1)?;
            rates.push(args.n_prompt as f64 / t0.elapsed().as_secs_f64());
        }
        report(format!("pp{}{at_depth}", args.n_prompt), &rates);
    }
    if args.n_gen > 0 && n_seq == 1 {
        let gen = tokens(args.n_gen, cfg.n_vocab, 2);
        eval(&gen[..1], depth, 0)?; // warm-up
        let mut rates = Vec::with_capacity(args.reps);
        for _ in 0..args.reps {
            let t0 = Instant::now();
            for (i, &t) in gen.iter().enumerate() {
                eval(&[t], depth + i, 0)?;
            }
            rates.push(args.n_gen as f64 / t0.elapsed().as_secs_f64());
        }
        report(format!("tg{}{at_depth}", args.n_gen), &rates);
    } else if args.n_gen > 0 {
        // sequence s decodes its own stand-in tokens, one per step
        let gen: Vec<Vec<u32>> = (0..n_seq)
            .map(|s| tokens(args.n_gen, cfg.n_vocab, 2 + s as u64))
            .collect();
        let step = |ctx: &mut Ctx, i: usize| {
            let steps: Vec<_> = (0..n_seq).map(|s| (s, depth + i, gen[s][i])).collect();
            ctx.decode::<M>(&steps);
        };
        step(&mut ctx, 0); // warm-up
        let mut rates = Vec::with_capacity(args.reps);
        for _ in 0..args.reps {
            let t0 = Instant::now();
            for i in 0..args.n_gen {
                step(&mut ctx, i);
            }
            rates.push((args.n_gen * n_seq) as f64 / t0.elapsed().as_secs_f64());
        }
        report(format!("tg{}{at_depth} x{n_seq}", args.n_gen), &rates);
    }
    Ok(())
}
