//! The scheduler behind `serve`: one thread that owns the model and runs continuous
//! batching over up to `parallel` sequences.
//!
//! Each loop turn takes new requests, drops the ones whose client went away, gives
//! waiting requests free sequences, then runs one prompt chunk of the oldest request
//! still in its prompt and one decode step of every sequence that is generating. A long
//! prompt therefore never holds up the streams already running for more than one chunk.
//!
//! **Batch invariance.** A request's tokens do not depend on what else runs:
//! - a decode step of many sequences computes each of them exactly as a step of that
//!   sequence alone ([`crate::model::Ctx::decode`]);
//! - a prompt is always cut into the same chunks, `chunk` tokens from its own start;
//! - the prefix cache reuses only whole chunks of an earlier prompt, which a fresh run
//!   would have computed the same way, so a cache hit changes no bit either.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::sampler::{Sampler, SamplerConfig};

use super::metrics::Metrics;

/// The model as the scheduler sees it: prompt chunks and decode steps of sequences
/// in one KV cache.
pub trait Forward: Send {
    fn n_vocab(&self) -> usize;
    /// Evaluates `tokens` at positions `pos0..` of sequence `seq` as one batch and
    /// returns the last token's logits.
    fn prefill(&mut self, seq: usize, tokens: &[u32], pos0: usize) -> &[f32];
    /// One decode step of several sequences: `(seq, pos, token)` each; `n_vocab`
    /// logits per step, in order.
    fn decode(&mut self, steps: &[(usize, usize, u32)]) -> &[f32];
}

/// One request for a completion, as the HTTP layer hands it over.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Most tokens to generate (the HTTP layer keeps prompt + max_tokens within the
    /// context).
    pub max_tokens: usize,
    pub sampling: SamplerConfig,
    /// Report each token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// Go on past end-of-generation tokens (as text) until `max_tokens`.
    pub ignore_eos: bool,
    /// The token mask of a structured-output request (`response_format`).
    pub constraint: Option<llguidance::Matcher>,
    pub events: UnboundedSender<Event>,
    pub submitted: Instant,
}

/// A token's log-probability under the model (log-softmax of the raw logits) and the
/// most likely alternatives.
#[derive(Clone, Debug)]
pub struct Logprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Why a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-generation token.
    Stop,
    /// `max_tokens` were generated, or the context is full.
    Length,
}

/// What the scheduler sends back about a job.
#[derive(Debug)]
pub enum Event {
    /// The prompt is evaluated; `cached` of its tokens came from the prefix cache.
    Prompt {
        cached: usize,
    },
    Token {
        id: u32,
        logprob: Option<Logprob>,
    },
    Done {
        finish: Finish,
    },
}

/// Scheduler settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sequences decoded together.
    pub parallel: usize,
    /// Tokens each sequence holds.
    pub n_ctx: usize,
    /// Prompt chunk length.
    pub chunk: usize,
}

/// A generating request.
struct Active {
    job: Job,
    sampler: Sampler,
    prompt_len: usize,
    /// Prompt tokens the prefix cache supplied.
    cached: usize,
    /// Prompt tokens evaluated so far.
    done: usize,
    /// The last sampled token, to be evaluated by the next decode step.
    pending: Option<u32>,
    generated: usize,
    last_token_at: Instant,
}

/// One sequence of the KV cache.
#[derive(Default)]
struct Slot {
    /// Tokens whose cells hold valid keys and values, in order.
    tokens: Vec<u32>,
    /// How many of `tokens` were computed as whole prompt chunks from position 0: the
    /// part a later prompt with the same start may reuse.
    reusable: usize,
    active: Option<Active>,
    /// When the slot last served a request (for choosing which cache to overwrite).
    used: u64,
}

pub struct Engine<F: Forward> {
    fwd: F,
    limits: Limits,
    slots: Vec<Slot>,
    waiting: VecDeque<Job>,
    metrics: Arc<Metrics>,
    /// End-of-generation tokens.
    is_eog: Box<dyn Fn(u32) -> bool + Send>,
    clock: u64,
    /// Jobs submitted and not yet finished (queued or running), shared with the HTTP
    /// layer for admission control.
    pub in_flight: Arc<AtomicUsize>,
}

impl<F: Forward> Engine<F> {
    pub fn new(
        fwd: F,
        limits: Limits,
        metrics: Arc<Metrics>,
        is_eog: Box<dyn Fn(u32) -> bool + Send>,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        Engine {
            fwd,
            limits,
            slots: (0..limits.parallel).map(|_| Slot::default()).collect(),
            waiting: VecDeque::new(),
            metrics,
            is_eog,
            clock: 0,
            in_flight,
        }
    }

    /// Runs until every sender of `jobs` is gone and no work is left.
    pub fn run(mut self, jobs: Receiver<Job>) {
        let mut open = true;
        loop {
            let idle = self.waiting.is_empty() && self.slots.iter().all(|s| s.active.is_none());
            if idle {
                if !open {
                    return;
                }
                match jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            loop {
                match jobs.recv_timeout(Duration::ZERO) {
                    Ok(job) => self.waiting.push_back(job),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.step();
        }
    }

    /// One turn: cancellations, admissions, a prompt chunk, a decode step.
    fn step(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i]
                .active
                .as_ref()
                .is_some_and(|a| a.job.events.is_closed())
            {
                self.finish(i, None);
            }
        }
        self.waiting.retain(|j| {
            let keep = !j.events.is_closed();
            if !keep {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            keep
        });
        while let Some(slot) = self.free_slot() {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.admit(slot, job);
        }
        self.publish_gauges();
        self.prefill_chunk();
        self.decode_step();
        self.publish_gauges();
    }

    /// The free slot to give the next waiting job: the one whose reusable cache shares
    /// the longest start with its prompt, else the least recently used.
    fn free_slot(&self) -> Option<usize> {
        let job = self.waiting.front()?;
        let free = (0..self.slots.len()).filter(|&i| self.slots[i].active.is_none());
        free.max_by_key(|&i| {
            let s = &self.slots[i];
            (self.reuse(s, &job.prompt), std::cmp::Reverse(s.used))
        })
    }

    /// Prompt tokens of `prompt` that `slot`'s cache can supply: whole chunks of a
    /// common start, leaving at least one token to evaluate for the logits.
    fn reuse(&self, slot: &Slot, prompt: &[u32]) -> usize {
        let common = slot
            .tokens
            .iter()
            .zip(prompt)
            .take(slot.reusable)
            .take_while(|(a, b)| a == b)
            .count();
        let limit = common.min(prompt.len().saturating_sub(1));
        limit / self.limits.chunk * self.limits.chunk
    }

    fn admit(&mut self, i: usize, job: Job) {
        let cached = self.reuse(&self.slots[i], &job.prompt);
        self.clock += 1;
        let slot = &mut self.slots[i];
        slot.tokens.truncate(cached);
        slot.reusable = cached;
        slot.used = self.clock;
        self.metrics.prompt_tokens_cached.inc_by(cached as u64);
        slot.active = Some(Active {
            sampler: Sampler::new(job.sampling.clone()),
            prompt_len: job.prompt.len(),
            cached,
            done: cached,
            pending: None,
            generated: 0,
            last_token_at: job.submitted,
            job,
        });
    }

    /// One chunk of the oldest request still evaluating its prompt.
    fn prefill_chunk(&mut self) {
        let oldest = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .active
                    .as_ref()
                    .is_some_and(|a| a.done < a.prompt_len)
            })
            .min_by_key(|&i| self.slots[i].active.as_ref().map(|a| a.job.submitted));
        let Some(i) = oldest else {
            return;
        };
        let chunk = self.limits.chunk;
        let slot = &mut self.slots[i];
        let a = slot.active.as_mut().expect("filtered on active");
        let start = a.done;
        let end = ((start / chunk + 1) * chunk).min(a.prompt_len);
        let logits = self.fwd.prefill(i, &a.job.prompt[start..end], start);
        slot.tokens.extend_from_slice(&a.job.prompt[start..end]);
        a.done = end;
        self.metrics.prompt_tokens.inc_by((end - start) as u64);
        if end - start == chunk {
            slot.reusable = end;
        }
        if end < a.prompt_len {
            return;
        }
        let logits = logits.to_vec();
        let a = self.slots[i].active.as_ref().expect("active");
        let _ = a.job.events.send(Event::Prompt { cached: a.cached });
        self.sample(i, &logits);
    }

    /// Samples slot `i`'s next token from `logits` and sends it, or finishes the job.
    fn sample(&mut self, i: usize, logits: &[f32]) {
        let n_ctx = self.limits.n_ctx;
        let slot = &mut self.slots[i];
        let a = slot.active.as_mut().expect("sampling an active slot");
        let id = match a.job.constraint.as_mut() {
            None => a.sampler.sample(logits, &slot.tokens),
            Some(matcher) => {
                let mut masked = logits.to_vec();
                if super::grammar::mask_logits(matcher, &mut masked).is_err() {
                    self.finish(i, Some(Finish::Stop));
                    return;
                }
                a.sampler.sample(&masked, &slot.tokens)
            }
        };
        let now = Instant::now();
        if a.generated == 0 {
            self.metrics
                .time_to_first_token
                .observe((now - a.job.submitted).as_secs_f64());
        } else {
            self.metrics
                .time_per_output_token
                .observe((now - a.last_token_at).as_secs_f64());
        }
        a.last_token_at = now;
        if (!a.job.ignore_eos || a.job.constraint.is_some()) && (self.is_eog)(id) {
            self.finish(i, Some(Finish::Stop));
            return;
        }
        let logprob = a.job.logprobs.map(|top| logprob_of(logits, id, top));
        a.generated += 1;
        self.metrics.generated_tokens.inc();
        let _ = a.job.events.send(Event::Token { id, logprob });
        if let Some(matcher) = a.job.constraint.as_mut() {
            // The grammar is complete (or the token was refused): nothing may follow.
            if matcher.consume_token(id).is_err() || matcher.is_stopped() {
                self.finish(i, Some(Finish::Stop));
                return;
            }
        }
        if a.generated >= a.job.max_tokens || slot.tokens.len() + 1 >= n_ctx {
            // The last token is not evaluated: nothing would read its logits.
            self.finish(i, Some(Finish::Length));
            return;
        }
        a.pending = Some(id);
    }

    /// One decode step of every generating sequence.
    fn decode_step(&mut self) {
        let steps: Vec<(usize, usize, u32)> = (0..self.slots.len())
            .filter_map(|i| {
                let s = &self.slots[i];
                let tok = s.active.as_ref()?.pending?;
                Some((i, s.tokens.len(), tok))
            })
            .collect();
        if steps.is_empty() {
            return;
        }
        let n_vocab = self.fwd.n_vocab();
        let logits = self.fwd.decode(&steps).to_vec();
        for (&(i, _, tok), logits) in steps.iter().zip(logits.chunks_exact(n_vocab)) {
            let slot = &mut self.slots[i];
            slot.tokens.push(tok);
            slot.active
                .as_mut()
                .expect("decoding an active slot")
                .pending = None;
            self.sample(i, logits);
        }
    }

    /// Ends slot `i`'s job: with an event when the client is still there.
    fn finish(&mut self, i: usize, finish: Option<Finish>) {
        let Some(a) = self.slots[i].active.take() else {
            return;
        };
        if let Some(finish) = finish {
            let _ = a.job.events.send(Event::Done { finish });
        } else {
            self.metrics.cancelled.inc();
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn publish_gauges(&self) {
        let running = self.slots.iter().filter(|s| s.active.is_some()).count();
        let cells: usize = self
            .slots
            .iter()
            .filter(|s| s.active.is_some())
            .map(|s| s.tokens.len())
            .sum();
        self.metrics.requests_running.set(running as i64);
        self.metrics.requests_waiting.set(self.waiting.len() as i64);
        self.metrics.kv_cells_used.set(cells as i64);
    }
}

/// `id`'s log-probability under `logits` and the `top` most likely tokens' (ties by
/// lower id), all as log-softmax of the raw logits in f64.
fn logprob_of(logits: &[f32], id: u32, top: usize) -> Logprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    let lp = |i: u32| (logits[i as usize] as f64 - lse) as f32;
    let mut best: Vec<u32> = (0..logits.len() as u32).collect();
    let by = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let top = top.min(best.len());
    if top > 0 && top < best.len() {
        best.select_nth_unstable_by(top - 1, by);
    }
    best.truncate(top);
    best.sort_unstable_by(by);
    Logprob {
        logprob: lp(id),
        top: best.into_iter().map(|t| (t, lp(t))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_log_softmax_with_the_best_alternatives() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let l = logprob_of(&logits, 2, 2);
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        assert!((l.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(l.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(logprob_of(&logits, 0, 0).top.len(), 0);
        assert_eq!(logprob_of(&logits, 0, 9).top.len(), 4);
    }
}
