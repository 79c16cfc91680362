//! A model instance with its context window: what generation and chat share.

use std::io::Write;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use crate::model::{Ctx, Model};
use crate::sampler::Sampler;
use crate::stop::StopFilter;
use crate::tokenizer::{Decoder, Tokenizer};

/// Why a reply ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// The model produced an end-of-generation token.
    EndOfText,
    /// The token budget (-n) is spent.
    Budget,
    /// The context window is full.
    ContextFull,
    /// A --stop string appeared in the text.
    Matched,
    /// Ctrl-C.
    Interrupted,
    /// stdout was closed (e.g. piped into `head`).
    OutputClosed,
}

pub(super) struct Session<M: Model> {
    pub ctx: Ctx,
    /// The GPU path, when the binary has one and a device was found.
    gpu: Option<crate::gpu::GpuCtx>,
    pub tok: Tokenizer,
    /// Tokens whose keys and values are in the cache, in order.
    pub history: Vec<u32>,
    /// Logits after the last token of `history`.
    logits: Vec<f32>,
    pub t_load: Duration,
    pub prompt_time: Duration,
    pub prompt_tokens: usize,
    pub gen_time: Duration,
    pub gen_evals: usize,
    _model: PhantomData<M>,
}

impl<M: Model> Session<M> {
    pub fn new(threads: usize, n_ctx: usize, n_batch: usize) -> Result<Self, String> {
        let t0 = Instant::now();
        let tok = super::load_tokenizer::<M>()?;
        let ctx = Ctx::new::<M>(threads, n_ctx, n_batch).map_err(|e| e.to_string())?;
        let gpu = crate::gpu::open::<M>(n_ctx);
        Ok(Session {
            ctx,
            gpu,
            tok,
            history: Vec::new(),
            logits: Vec::new(),
            t_load: t0.elapsed(),
            prompt_time: Duration::ZERO,
            prompt_tokens: 0,
            gen_time: Duration::ZERO,
            gen_evals: 0,
            _model: PhantomData,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.ctx.n_ctx()
    }

    /// Forgets everything after the first `n` tokens (their cache entries get overwritten).
    pub fn truncate(&mut self, n: usize) {
        self.history.truncate(n);
    }

    /// Evaluates `ids` after the history (a prompt or a chat turn).
    pub fn feed(&mut self, ids: &[u32]) -> Result<(), String> {
        if ids.is_empty() {
            return Ok(());
        }
        let n_past = self.history.len();
        if n_past + ids.len() > self.n_ctx() {
            return Err(format!(
                "{} tokens do not fit: the context holds {} and {} are in use; raise -c (this binary allows up to {})",
                ids.len(),
                self.n_ctx(),
                n_past,
                M::CONFIG.n_ctx
            ));
        }
        let t0 = Instant::now();
        let logits = match &mut self.gpu {
            Some(gpu) => gpu
                .eval::<M>(ids, n_past, ids.len() - 1)
                .map_err(|e| format!("GPU: {e}"))?,
            None => self.ctx.eval::<M>(ids, n_past, ids.len() - 1),
        };
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.history.extend_from_slice(ids);
        self.prompt_time += t0.elapsed();
        self.prompt_tokens += ids.len();
        Ok(())
    }

    /// Samples up to `budget` tokens, streaming their text to `out`, until end of text, a
    /// stop string, a full context or Ctrl-C. Every sampled token is left in the history
    /// except an end-of-generation token.
    pub fn generate(
        &mut self,
        sampler: &mut Sampler,
        budget: usize,
        stops: &[String],
        out: &mut dyn Write,
    ) -> Stop {
        let mut decoder = Decoder::new(&self.tok, false);
        let mut filter = StopFilter::new(stops);
        let mut n = 0;
        let stop = loop {
            if super::interrupted() {
                break Stop::Interrupted;
            }
            if n == budget {
                break Stop::Budget;
            }
            let next = sampler.sample(&self.logits, &self.history);
            if self.tok.is_eog(next) {
                break Stop::EndOfText;
            }
            n += 1;
            let (text, hit) = filter.push(&decoder.push(next));
            if out
                .write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                break Stop::OutputClosed;
            }
            if hit {
                self.history.push(next);
                break Stop::Matched;
            }
            if self.history.len() + 1 > self.n_ctx() {
                break Stop::ContextFull;
            }
            if n == budget {
                // The last token is not evaluated: nothing would read its logits.
                self.history.push(next);
                continue;
            }
            let t0 = Instant::now();
            let logits = match &mut self.gpu {
                Some(gpu) => match gpu.eval::<M>(&[next], self.history.len(), 0) {
                    Ok(l) => l,
                    Err(e) => {
                        crate::gpu::record_failure(&e);
                        break Stop::OutputClosed;
                    }
                },
                None => self.ctx.eval::<M>(&[next], self.history.len(), 0),
            };
            self.logits.copy_from_slice(logits);
            self.history.push(next);
            self.gen_time += t0.elapsed();
            self.gen_evals += 1;
        };
        if stop != Stop::OutputClosed && stop != Stop::Matched {
            let (text, _) = filter.push(&decoder.finish());
            let _ = out.write_all((text + &filter.flush()).as_bytes());
            let _ = out.flush();
        }
        stop
    }

    /// llama.cpp-style timing lines on stderr.
    pub fn print_timings(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let rate = |d: Duration, n: usize| {
            if d.is_zero() {
                0.0
            } else {
                n as f64 / d.as_secs_f64()
            }
        };
        let line = |what: &str, d: Duration, n: usize, unit: &str| {
            let per = if n > 0 { ms(d) / n as f64 } else { 0.0 };
            eprintln!(
                "{what:<16} = {:10.2} ms / {n:5} {unit} ({per:8.2} ms per token, {:8.2} tokens per second)",
                ms(d),
                rate(d, n)
            );
        };
        eprintln!();
        eprintln!("{:<16} = {:10.2} ms", "load time", ms(self.t_load));
        line(
            "prompt eval time",
            self.prompt_time,
            self.prompt_tokens,
            "tokens",
        );
        line("eval time", self.gen_time, self.gen_evals, "runs  ");
        eprintln!(
            "{:<16} = {:10.2} ms / {:5} tokens",
            "total time",
            ms(self.t_load + self.prompt_time + self.gen_time),
            self.history.len()
        );
    }
}
