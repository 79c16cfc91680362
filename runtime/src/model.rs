//! The forward pass, as building blocks the emitted code calls layer by layer.
//!
//! The emitted crate implements [`Model`]: its config, its weight statics and a `forward`
//! that reads like the model card (`embed`, then `attention` and `ffn` per layer, then
//! `output`). Each block is generic over the tensors it is given, so every call is
//! monomorphised for that layer's quant types. [`Ctx`] owns everything mutable: the
//! batch, the activation buffers, the KV cache and the thread pool.

use crate::float16::f16;
use crate::imatrix::{Collector, Input};

use crate::matmul;
use crate::ops::{self, Rope};
use crate::pool::Pool;
use crate::quant::f32::F32;
use crate::quant::{ActType, WeightType};
use crate::weights::Tensor;

/// Hyperparameters of a compiled model, all fixed at build time.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_vocab: usize,
    /// KV-cache length the binary was compiled for: the most tokens one run can hold.
    pub n_ctx: usize,
    /// Context length the model was trained with (from the GGUF).
    pub n_ctx_train: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

impl Config {
    /// Width of Q and of the attention output: `n_head * head_dim`.
    pub const fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of K and V: `n_head_kv * head_dim`.
    pub const fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Values of one sequence's K (or V) cache: `n_layer x n_head_kv x n_ctx x head_dim`.
    pub const fn kv_seq_len(&self) -> usize {
        self.n_layer * self.n_ctx * self.kv_dim()
    }

    /// Where KV head `h` of `layer` starts in a KV cache of `n_ctx` cells laid out
    /// `n_layer x n_head_kv x n_ctx x head_dim`. Each head's rows are contiguous, so
    /// attention over one head reads one sequential stream, which the hardware
    /// prefetchers follow; rows of all heads interleaved (`kv_dim` apart) made decode
    /// at depth wait on memory latency.
    pub const fn kv_head_offset(&self, layer: usize, h: usize) -> usize {
        (layer * self.n_head_kv + h) * self.n_ctx * self.head_dim
    }
}

/// Appends one token's K and V (`kv_dim` values each, heads in order) at position `pos`
/// of `layer` in caches laid out as [`Config::kv_head_offset`] says.
pub(crate) fn append_kv(
    cfg: &Config,
    layer: usize,
    pos: usize,
    (k, v): (&[f32], &[f32]),
    (k_cache, v_cache): (&mut [f16], &mut [f16]),
) {
    let hd = cfg.head_dim;
    for h in 0..cfg.n_head_kv {
        let at = cfg.kv_head_offset(layer, h) + pos * hd;
        ops::f32_to_f16(&k[h * hd..][..hd], &mut k_cache[at..at + hd]);
        ops::f32_to_f16(&v[h * hd..][..hd], &mut v_cache[at..at + hd]);
    }
}

/// A compiled model: what the emitted crate provides to the runtime.
pub trait Model: 'static {
    const CONFIG: Config;
    /// What `info` prints: source file, quant mix, build options, mcc version.
    const INFO: &'static str;
    /// The weight blob embedded in the binary.
    fn weights() -> &'static [u8];
    /// The serialised tokenizer embedded in the binary.
    fn tokenizer() -> &'static [u8];
    /// Per-frequency RoPE divisors (`rope_freqs.weight`, Llama-3.1 scaling), if any.
    fn rope_freqs() -> Option<&'static [f32]>;
    /// Runs the transformer over the batch `ctx` holds.
    fn forward(ctx: &mut Ctx);
}

/// Error creating a context.
#[derive(Debug, thiserror::Error)]
pub enum CtxError {
    #[error("cannot allocate {bytes} bytes for the {what} (context {n_ctx}); try a smaller -c")]
    OutOfMemory {
        what: &'static str,
        bytes: usize,
        n_ctx: usize,
    },
    #[error(
        "context size {got} is out of range: this binary was compiled for at most {max} tokens"
    )]
    BadContext { got: usize, max: usize },
}

/// Types whose all-zero bit pattern is the value 0.
///
/// # Safety
/// Implementors must be valid when every byte is zero.
unsafe trait ZeroIsZero: Copy {}
unsafe impl ZeroIsZero for f32 {}
unsafe impl ZeroIsZero for f16 {}

/// A zeroed buffer straight from the allocator: large buffers come as untouched pages,
/// so start-up does not pay for memory a short run never uses (the KV cache is sized
/// for the whole context). Failure is an error, not an abort.
fn alloc<T: ZeroIsZero>(n: usize, what: &'static str, n_ctx: usize) -> Result<Vec<T>, CtxError> {
    let oom = || CtxError::OutOfMemory {
        what,
        bytes: n.saturating_mul(std::mem::size_of::<T>()),
        n_ctx,
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| oom())?;
    // SAFETY: the layout is non-zero-sized; a zeroed T is a valid 0 (ZeroIsZero), and the
    // Vec takes ownership of exactly this allocation with the same layout.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<T>();
        if ptr.is_null() {
            return Err(oom());
        }
        Ok(Vec::from_raw_parts(ptr, n, n))
    }
}

/// Quantized activations of the input the next projections read, one slot per
/// activation format: the matmuls that read the same input with the same format (Q, K
/// and V of a layer; gate and up) quantize it once. Whoever hands projections a new input
/// calls [`ActScratch::begin`] first (the forward pass does, at each of its inputs: the
/// normed residual, the attention output, the SwiGLU output), which voids every slot.
#[derive(Default)]
struct ActScratch {
    slots: Vec<ActSlot>,
}

struct ActSlot {
    /// Activation format of `blocks`.
    format: std::any::TypeId,
    /// Whether the blocks are the current input's.
    live: bool,
    /// 8-byte aligned storage reinterpreted as blocks of `format`.
    blocks: Vec<u64>,
    n_blocks: usize,
}

impl ActScratch {
    /// A new input: the quantizations of the previous one are void.
    fn begin(&mut self) {
        for slot in &mut self.slots {
            slot.live = false;
        }
    }

    /// Index of the slot holding the current input (`n` rows of `cols`) quantized to `A`,
    /// quantizing it on the first call since [`ActScratch::begin`].
    fn quantize<A: ActType>(&mut self, pool: &Pool, input: &[f32], cols: usize) -> usize {
        let format = std::any::TypeId::of::<A>();
        let n_blocks = input.len() / A::BLOCK_ELEMS;
        if let Some(i) = self.slots.iter().position(|s| s.live && s.format == format) {
            assert_eq!(
                self.slots[i].n_blocks,
                n_blocks,
                "{}: the same input quantized at two sizes (missing ActScratch::begin)",
                A::NAME
            );
            return i;
        }
        let i = match self.slots.iter().position(|s| !s.live) {
            Some(i) => i,
            None => {
                self.slots.push(ActSlot {
                    format,
                    live: false,
                    blocks: Vec::new(),
                    n_blocks: 0,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[i];
        assert!(std::mem::align_of::<A::Block>() <= 8);
        let words = (n_blocks * std::mem::size_of::<A::Block>()).div_ceil(8);
        if slot.blocks.len() < words {
            slot.blocks.resize(words, 0);
        }
        let per_row = cols / A::BLOCK_ELEMS;
        let blocks = Self::view_mut::<A>(&mut slot.blocks, n_blocks);
        let rows = per_thread_rows(input.len() / cols, pool);
        pool.for_each_chunk(blocks, rows * per_row, |start, blocks| {
            let input = &input[start / per_row * cols..];
            for (x, b) in input
                .chunks_exact(cols)
                .zip(blocks.chunks_exact_mut(per_row))
            {
                A::quantize(x, b);
            }
        });
        (slot.format, slot.n_blocks, slot.live) = (format, n_blocks, true);
        i
    }

    /// The blocks of slot `i`, which `quantize::<A>` returned.
    fn get<A: ActType>(&self, i: usize) -> &[A::Block] {
        let slot = &self.slots[i];
        assert!(slot.live && slot.format == std::any::TypeId::of::<A>());
        // SAFETY: as in `view_mut`; the slot holds `n_blocks` blocks of `A`.
        unsafe { std::slice::from_raw_parts(slot.blocks.as_ptr().cast(), slot.n_blocks) }
    }

    fn view_mut<A: ActType>(words: &mut [u64], n: usize) -> &mut [A::Block] {
        assert!(n * std::mem::size_of::<A::Block>() <= words.len() * 8);
        // SAFETY: the storage is 8-byte aligned and large enough (checked), and
        // activation blocks are plain integers/floats for which any bit pattern is valid.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<A::Block>(), n) }
    }
}

/// Shares a mutable buffer with pool threads that write disjoint parts of it.
struct SharedMut<T>(*mut T);
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: only used where each thread writes a distinct range (see `attention`).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

/// The run-time state of one model instance: batch, activations, KV cache, threads.
pub struct Ctx {
    pub cfg: Config,
    blob: &'static [u8],
    pool: Pool,
    rope: Rope,
    /// Tokens of the batch being evaluated, and each one's sequence and position.
    tokens: Vec<u32>,
    rows: Vec<(usize, usize)>,
    /// Whether every token of the batch is a one-token step of its own sequence (a
    /// decoded token, or one decoded token of each of several sequences): each is then
    /// computed exactly as a batch of that token alone, matvecs and split attention.
    /// Otherwise the batch is consecutive tokens of one sequence (a prompt chunk).
    decode: bool,
    /// Sequences the KV cache holds, `n_ctx` cells each.
    n_seq: usize,
    /// Most tokens evaluated in one forward call.
    n_batch: usize,
    /// First token of the batch whose logits `output` computes, and where in `logits`
    /// its row goes.
    out_from: usize,
    out_at: usize,
    /// Residual stream, `n x n_embd`.
    x: Vec<f32>,
    /// Normed input of the current block, `n x n_embd`.
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output before the output projection, `n x q_dim`.
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Output of a projection that is added to the residual, `n x n_embd`.
    proj: Vec<f32>,
    logits: Vec<f32>,
    /// f16 like llama.cpp's default cache: per sequence, `n_layer x n_head_kv x n_ctx x
    /// head_dim` ([`Config::kv_head_offset`]), sequence after sequence.
    k_cache: Vec<f16>,
    v_cache: Vec<f16>,
    /// Attention scores and weights, `n_threads x 2 x group x n_ctx` (`group` query
    /// heads per KV head).
    scores: Vec<f32>,
    /// Split decode rows' per-chunk results: f16 running outputs, `q_dim` per chunk, and
    /// each head's `(max, sum)`, `n_head` per chunk; grown to the chunks of a step.
    split_acc: Vec<f16>,
    split_stats: Vec<(f32, f32)>,
    /// Per-thread scratch of the tiled prompt-batch attention, made on first use.
    tiled: Vec<std::sync::Mutex<ops::TiledScratch>>,
    act: ActScratch,
    /// Importance-matrix sums of the projections' inputs, while `imatrix` collects.
    imatrix: Option<Box<Collector>>,
}

impl Ctx {
    /// A context for model `M` holding up to `n_ctx` tokens (at most the compiled
    /// context), evaluating up to `n_batch` tokens per forward call.
    pub fn new<M: Model>(n_threads: usize, n_ctx: usize, n_batch: usize) -> Result<Ctx, CtxError> {
        Ctx::with_sequences::<M>(n_threads, n_ctx, n_batch, 1)
    }

    /// A context whose KV cache holds `n_seq` sequences of up to `n_ctx` tokens each, for
    /// [`Ctx::eval_seq`] and [`Ctx::decode`].
    pub fn with_sequences<M: Model>(
        n_threads: usize,
        n_ctx: usize,
        n_batch: usize,
        n_seq: usize,
    ) -> Result<Ctx, CtxError> {
        let cfg = Config { n_ctx, ..M::CONFIG };
        if n_ctx == 0 || n_ctx > M::CONFIG.n_ctx {
            return Err(CtxError::BadContext {
                got: n_ctx,
                max: M::CONFIG.n_ctx,
            });
        }
        let n_batch = n_batch.clamp(1, n_ctx.max(n_seq));
        let n_threads = n_threads.max(1);
        let n_seq = n_seq.max(1);
        let cache = n_seq
            .checked_mul(cfg.kv_seq_len())
            .ok_or(CtxError::OutOfMemory {
                what: "KV cache",
                bytes: usize::MAX,
                n_ctx,
            })?;
        Ok(Ctx {
            blob: M::weights(),
            pool: Pool::new(n_threads),
            rope: Rope::new(
                cfg.head_dim,
                cfg.rope_dim,
                cfg.rope_base,
                M::rope_freqs(),
                n_ctx,
            ),
            tokens: Vec::new(),
            rows: Vec::new(),
            decode: false,
            n_seq,
            n_batch,
            out_from: 0,
            out_at: 0,
            x: alloc(n_batch * cfg.n_embd, "activations", n_ctx)?,
            xn: alloc(n_batch * cfg.n_embd, "activations", n_ctx)?,
            q: alloc(n_batch * cfg.q_dim(), "activations", n_ctx)?,
            k: alloc(n_batch * cfg.kv_dim(), "activations", n_ctx)?,
            v: alloc(n_batch * cfg.kv_dim(), "activations", n_ctx)?,
            att: alloc(n_batch * cfg.q_dim(), "activations", n_ctx)?,
            gate: alloc(n_batch * cfg.n_ff, "activations", n_ctx)?,
            up: alloc(n_batch * cfg.n_ff, "activations", n_ctx)?,
            proj: alloc(n_batch * cfg.n_embd, "activations", n_ctx)?,
            logits: Vec::new(),
            k_cache: alloc(cache, "KV cache", n_ctx)?,
            v_cache: alloc(cache, "KV cache", n_ctx)?,
            scores: alloc(
                n_threads * 2 * (cfg.n_head / cfg.n_head_kv) * n_ctx,
                "attention scores",
                n_ctx,
            )?,
            split_acc: alloc(n_threads * cfg.q_dim(), "split attention outputs", n_ctx)?,
            split_stats: vec![(0.0, 0.0); n_threads * cfg.n_head],
            tiled: Vec::new(),
            act: ActScratch::default(),
            imatrix: None,
            cfg,
        })
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    pub fn n_ctx(&self) -> usize {
        self.cfg.n_ctx
    }

    /// Starts collecting importance-matrix sums of every projection's input into
    /// `collector` (`Some`), or stops (`None`); returns the collector that was running.
    pub fn set_imatrix(&mut self, collector: Option<Collector>) -> Option<Collector> {
        std::mem::replace(&mut self.imatrix, collector.map(Box::new)).map(|c| *c)
    }

    /// Adds the batch's rows of `x` to the importance-matrix sums of `input`, if collecting.
    fn collect(imatrix: &mut Option<Box<Collector>>, layer: usize, input: Input, x: &[f32]) {
        if let Some(c) = imatrix {
            c.add(layer, input, x);
        }
    }

    /// Writes every page of the KV cache now. Its zeroed allocation is only mapped
    /// where it is first written, so a server's resident memory would otherwise grow
    /// for as long as its sequences keep reaching cells they have not reached before;
    /// this takes the whole cache at start (as llama.cpp's cache clear does), so that
    /// memory stays flat under load and a machine without room fails at once.
    pub fn take_kv_memory(&mut self) {
        self.k_cache.fill(f16::ZERO);
        self.v_cache.fill(f16::ZERO);
    }

    /// Evaluates `tokens` at positions `pos0..`, in batches of at most `n_batch`, and
    /// returns the logits of `tokens[first_logit..]`, `n_vocab` per token (pass
    /// `tokens.len() - 1` for the last token only). The caller keeps
    /// `pos0 + tokens.len() <= n_ctx` and `first_logit < tokens.len()`.
    pub fn eval<M: Model>(&mut self, tokens: &[u32], pos0: usize, first_logit: usize) -> &[f32] {
        self.eval_seq::<M>(0, tokens, pos0, first_logit)
    }

    /// [`Ctx::eval`] in sequence `seq` of the cache: the same arithmetic, whatever the
    /// other sequences hold.
    pub fn eval_seq<M: Model>(
        &mut self,
        seq: usize,
        tokens: &[u32],
        pos0: usize,
        first_logit: usize,
    ) -> &[f32] {
        assert!(seq < self.n_seq, "sequence {seq} of {}", self.n_seq);
        assert!(
            pos0 + tokens.len() <= self.cfg.n_ctx,
            "batch past the end of the context"
        );
        assert!(first_logit < tokens.len(), "no logits requested");
        let n_vocab = self.cfg.n_vocab;
        let n_out = tokens.len() - first_logit;
        if self.logits.len() < n_out * n_vocab {
            self.logits.resize(n_out * n_vocab, 0.0);
        }
        for (i, chunk) in tokens.chunks(self.n_batch).enumerate() {
            let start = i * self.n_batch;
            self.tokens.clear();
            self.tokens.extend_from_slice(chunk);
            self.rows.clear();
            self.rows
                .extend((0..chunk.len()).map(|t| (seq, pos0 + start + t)));
            self.decode = chunk.len() == 1;
            // Rows of this batch whose logits are wanted, and where they go.
            self.out_from = first_logit.saturating_sub(start).min(chunk.len());
            self.out_at = (start + self.out_from).saturating_sub(first_logit) * n_vocab;
            M::forward(self);
        }
        &self.logits[..n_out * n_vocab]
    }

    /// One decode step of several sequences at once: `steps` holds `(seq, pos, token)`
    /// for distinct sequences, and the result is each token's logits, `n_vocab` per step
    /// in order. Every weight row is read once per batch of up to `n_batch` steps, and
    /// each step's logits are bit for bit what `eval_seq(seq, &[token], pos, 0)` gives:
    /// whatever else runs beside a sequence, its arithmetic does not change.
    pub fn decode<M: Model>(&mut self, steps: &[(usize, usize, u32)]) -> &[f32] {
        let n_vocab = self.cfg.n_vocab;
        for (i, &(seq, pos, _)) in steps.iter().enumerate() {
            assert!(seq < self.n_seq, "sequence {seq} of {}", self.n_seq);
            assert!(pos < self.cfg.n_ctx, "decode past the end of the context");
            assert!(
                steps[..i].iter().all(|s| s.0 != seq),
                "sequence {seq} twice in one decode step"
            );
        }
        if self.logits.len() < steps.len() * n_vocab {
            self.logits.resize(steps.len() * n_vocab, 0.0);
        }
        for (i, chunk) in steps.chunks(self.n_batch).enumerate() {
            self.tokens.clear();
            self.tokens.extend(chunk.iter().map(|s| s.2));
            self.rows.clear();
            self.rows.extend(chunk.iter().map(|s| (s.0, s.1)));
            self.decode = true;
            self.out_from = 0;
            self.out_at = i * self.n_batch * n_vocab;
            M::forward(self);
        }
        &self.logits[..steps.len() * n_vocab]
    }

    fn n(&self) -> usize {
        self.tokens.len()
    }

    /// x[t] = row `tokens[t]` of the embedding table.
    pub fn embed<E: Tensor>(&mut self, table: &E) {
        let n_embd = self.cfg.n_embd;
        let blocks = table.blocks(self.blob);
        let per_row = E::COLS / E::W::BLOCK_ELEMS;
        for (t, &tok) in self.tokens.iter().enumerate() {
            let tok = tok as usize;
            assert!(tok < E::ROWS, "token id {tok} out of range");
            let row = &blocks[tok * per_row..(tok + 1) * per_row];
            E::W::dequantize_ref(row, &mut self.x[t * n_embd..(t + 1) * n_embd]);
        }
    }

    /// One attention block: x += Wo · attn(rope(Wq·xn), rope(Wk·xn), Wv·xn), xn = rmsnorm(x).
    #[allow(clippy::too_many_arguments)]
    pub fn attention<N: Tensor<W = F32>, Q: Tensor, K: Tensor, V: Tensor, O: Tensor>(
        &mut self,
        layer: usize,
        norm: &N,
        wq: &Q,
        wk: &K,
        wv: &V,
        wo: &O,
    ) {
        let cfg = self.cfg;
        let n = self.n();
        let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
        self.rms_norm(norm);
        Self::collect(
            &mut self.imatrix,
            layer,
            Input::Attention,
            &self.xn[..n * cfg.n_embd],
        );
        self.act.begin();
        project_all(
            &self.pool,
            self.blob,
            &mut self.act,
            &self.xn,
            (n, self.decode),
            [
                &mut (wq, &mut self.q[..]),
                &mut (wk, &mut self.k[..]),
                &mut (wv, &mut self.v[..]),
            ],
        );

        // Rotate Q and K, then append K and V to their sequence's cache.
        let seq_len = cfg.kv_seq_len();
        for t in 0..n {
            let (seq, pos) = self.rows[t];
            self.rope
                .apply(&mut self.q[t * q_dim..(t + 1) * q_dim], cfg.n_head, pos);
            let (k, v) = (
                &mut self.k[t * kv_dim..(t + 1) * kv_dim],
                &self.v[t * kv_dim..(t + 1) * kv_dim],
            );
            self.rope.apply(k, cfg.n_head_kv, pos);
            let cells = seq * seq_len..(seq + 1) * seq_len;
            append_kv(
                &cfg,
                layer,
                pos,
                (k, v),
                (&mut self.k_cache[cells.clone()], &mut self.v_cache[cells]),
            );
        }

        if n >= ops::TILE_Q && !self.decode {
            self.attend_batch_tiled(layer);
        } else {
            self.attend_rows(layer);
        }

        Self::collect(
            &mut self.imatrix,
            layer,
            Input::AttentionOut,
            &self.att[..n * q_dim],
        );
        self.act.begin();
        project(
            &self.pool,
            self.blob,
            &mut self.act,
            wo,
            &self.att,
            (n, self.decode),
            &mut self.proj,
        );
        self.add_proj();
    }

    /// The first `n_kv` cached K and V rows (`head_dim` apart) of each KV head of
    /// `layer` in sequence `seq` of the caches `k` and `v`, by head.
    fn head_cache<'a>(
        cfg: Config,
        (k, v): (&'a [f16], &'a [f16]),
        (seq, layer): (usize, usize),
        n_kv: usize,
    ) -> impl Fn(usize) -> (&'a [f16], &'a [f16]) + Sync + 'a {
        let base = seq * cfg.kv_seq_len();
        move |h| {
            let at = base + cfg.kv_head_offset(layer, h);
            let len = n_kv * cfg.head_dim;
            (&k[at..at + len], &v[at..at + len])
        }
    }

    /// Attention of a batch under [`ops::TILE_Q`] tokens, or of a decode step: each
    /// (token, head) row by itself, as llama.cpp's one-row kernel does. A decoded token
    /// over a long cache splits its keys into chunks like llama.cpp's lone decoded token,
    /// also when other sequences' tokens share the step.
    ///
    /// Work units are (token, KV head, key chunk): one unit computes the chunk for all
    /// the query heads of the KV head, reading each K and V row once for them
    /// ([`ops::attend_group_chunk`]). Units are claimed from a shared counter, costliest
    /// first, so the threads stay busy whichever heads and chunks they get; split tokens'
    /// chunks are merged in key order afterwards, which is cheap (one row per head and
    /// chunk).
    fn attend_rows(&mut self, layer: usize) {
        let cfg = self.cfg;
        let n = self.n();
        let (q_dim, hd, n_head_kv) = (cfg.q_dim(), cfg.head_dim, cfg.n_head_kv);
        let group = cfg.n_head / n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        // Per token: its key chunk length when its keys are split (the chunking changes
        // rounding, so match llama.cpp's), its chunk count, and its first chunk's slot
        // in `split_acc`.
        let mut plan = Vec::with_capacity(n);
        let mut n_split = 0;
        for &(_, pos) in &self.rows {
            let n_kv = pos + 1;
            let chunk = match self.decode {
                true => ops::llama_cpp_split_chunk_len(n_kv, cfg.n_ctx, self.pool.n_threads()),
                false => None,
            };
            let chunks = chunk.map_or(1, |c| n_kv.div_ceil(c));
            plan.push((chunk, chunks, n_split));
            if chunk.is_some() {
                n_split += chunks;
            }
        }
        if self.split_acc.len() < n_split * q_dim {
            self.split_acc.resize(n_split * q_dim, f16::ZERO);
        }
        if self.split_stats.len() < n_split * cfg.n_head {
            self.split_stats.resize(n_split * cfg.n_head, (0.0, 0.0));
        }
        // (token, chunk) pairs, chunk-major (the last, shortest chunks last), then the
        // latest token first; each is `n_head_kv` units.
        let max_chunks = plan.iter().map(|p| p.1).max().unwrap_or(0);
        let plan = &plan;
        let pairs: Vec<(usize, usize)> = (0..max_chunks)
            .flat_map(|c| {
                (0..n)
                    .rev()
                    .filter(move |&t| c < plan[t].1)
                    .map(move |t| (t, c))
            })
            .collect();
        let n_units = pairs.len() * n_head_kv;
        let kv = (&self.k_cache[..], &self.v_cache[..]);
        let (q, rows) = (&self.q, &self.rows);
        let n_ctx = cfg.n_ctx;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let att = SharedMut(self.att.as_mut_ptr());
        let scores = SharedMut(self.scores.as_mut_ptr());
        let split_acc = SharedMut(self.split_acc.as_mut_ptr());
        let split_stats = SharedMut(self.split_stats.as_mut_ptr());
        self.pool.run(&|ith, _| {
            let (att, scores, split_acc, split_stats) = (att, scores, split_acc, split_stats);
            // SAFETY: thread `ith` alone uses scores row `ith`.
            let per_thread = 2 * group * n_ctx;
            let scores = unsafe {
                std::slice::from_raw_parts_mut(scores.0.add(ith * per_thread), per_thread)
            };
            let mut acc_stack = [f16::ZERO; 1024];
            let mut acc_heap;
            let acc: &mut [f16] = if group * hd <= acc_stack.len() {
                &mut acc_stack[..group * hd]
            } else {
                acc_heap = vec![f16::ZERO; group * hd];
                &mut acc_heap
            };
            let mut stats_stack = [(0f32, 0f32); 64];
            let mut stats_heap;
            let stats: &mut [(f32, f32)] = if group <= stats_stack.len() {
                &mut stats_stack[..group]
            } else {
                stats_heap = vec![(0f32, 0f32); group];
                &mut stats_heap
            };
            loop {
                let unit = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if unit >= n_units {
                    break;
                }
                let ((t, c), kvh) = (pairs[unit / n_head_kv], unit % n_head_kv);
                let ((seq, pos), (split, _, slot0)) = (rows[t], plan[t]);
                let n_kv = pos + 1;
                let (first, len) = match split {
                    Some(chunk) => (c * chunk, chunk.min(n_kv - c * chunk)),
                    None => (0, n_kv),
                };
                let (k_cache, v_cache) = Self::head_cache(cfg, kv, (seq, layer), n_kv)(kvh);
                let keys = ops::KeyChunk {
                    k_cache,
                    v_cache,
                    kv_stride: hd,
                    kv_off: 0,
                    first,
                    len,
                };
                let h0 = kvh * group;
                let q_group = &q[t * q_dim + h0 * hd..t * q_dim + (h0 + group) * hd];
                if split.is_some() {
                    // SAFETY: unit (token t, chunk c, KV head kvh) alone writes these
                    // heads' rows of the chunk's slot.
                    let (acc, stats) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(
                                split_acc.0.add((slot0 + c) * q_dim + h0 * hd),
                                group * hd,
                            ),
                            std::slice::from_raw_parts_mut(
                                split_stats.0.add((slot0 + c) * cfg.n_head + h0),
                                group,
                            ),
                        )
                    };
                    ops::attend_group_chunk(q_group, hd, &keys, scale, scores, acc, stats);
                    continue;
                }
                ops::attend_group_chunk(q_group, hd, &keys, scale, scores, acc, stats);
                // SAFETY: unit (t, kvh) alone writes att[t][h0*hd..(h0+group)*hd].
                let out = unsafe {
                    std::slice::from_raw_parts_mut(att.0.add(t * q_dim + h0 * hd), group * hd)
                };
                for ((o, a), &(_, sum)) in out
                    .chunks_exact_mut(hd)
                    .zip(acc.chunks_exact(hd))
                    .zip(&*stats)
                {
                    ops::finish_single_chunk(o, a, sum);
                }
            }
        });
        for (t, &(split, chunks, slot0)) in plan.iter().enumerate() {
            if split.is_none() {
                continue;
            }
            for h in 0..cfg.n_head {
                let out = &mut self.att[t * q_dim + h * hd..][..hd];
                let mut merged = ops::SplitMerge::new(out);
                for slot in slot0..slot0 + chunks {
                    let acc = &self.split_acc[slot * q_dim + h * hd..][..hd];
                    merged.add(out, acc, self.split_stats[slot * cfg.n_head + h]);
                }
                merged.finish(out);
            }
        }
    }

    /// Attention of a batch of [`ops::TILE_Q`] or more tokens with llama.cpp's tiled
    /// prefill arithmetic ([`ops::attend_rows_tiled`]). Jobs are (head, group of up to
    /// `TILE_Q` consecutive tokens), claimed from a shared counter, costliest (latest
    /// tokens) first; the grouping does not change any result.
    fn attend_batch_tiled(&mut self, layer: usize) {
        let cfg = self.cfg;
        let n = self.n();
        let (q_dim, hd) = (cfg.q_dim(), cfg.head_dim);
        let n_threads = self.pool.n_threads();
        if self.tiled.len() < n_threads {
            self.tiled = (0..n_threads)
                .map(|_| std::sync::Mutex::new(ops::TiledScratch::new(hd, ops::TILE_Q)))
                .collect();
        }
        let group = cfg.n_head / cfg.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        let kv = (&self.k_cache[..], &self.v_cache[..]);
        let (seq, pos0) = self.rows[0];
        let head_cache = Self::head_cache(cfg, kv, (seq, layer), pos0 + n);
        let (q, tiled) = (&self.q, &self.tiled);
        let n_groups = n.div_ceil(ops::TILE_Q);
        let n_jobs = n_groups * cfg.n_head;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let att = SharedMut(self.att.as_mut_ptr());
        self.pool.run(&|ith, _| {
            let att = &att;
            let mut scratch = tiled[ith].lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let job = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if job >= n_jobs {
                    break;
                }
                let (g, h) = (n_groups - 1 - job / cfg.n_head, job % cfg.n_head);
                let t0 = g * ops::TILE_Q;
                let rows = ops::TILE_Q.min(n - t0);
                let (k_cache, v_cache) = head_cache(h / group);
                let out = ops::attend_rows_tiled(
                    &q[t0 * q_dim + h * hd..],
                    q_dim,
                    rows,
                    pos0 + t0 + 1,
                    k_cache,
                    v_cache,
                    hd,
                    0,
                    scale,
                    &mut scratch,
                );
                for (r, o) in out.chunks_exact(hd).enumerate() {
                    // SAFETY: job (g, h) alone writes att[t][h*hd..(h+1)*hd] for the
                    // tokens t of group g.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(att.0.add((t0 + r) * q_dim + h * hd), hd)
                    };
                    dst.copy_from_slice(o);
                }
            }
        });
    }

    /// One feed-forward block: x += Wdown · (silu(Wgate·xn) * Wup·xn), xn = rmsnorm(x).
    pub fn ffn<N: Tensor<W = F32>, G: Tensor, U: Tensor, D: Tensor>(
        &mut self,
        layer: usize,
        norm: &N,
        w_gate: &G,
        w_up: &U,
        w_down: &D,
    ) {
        let (n, n_ff) = (self.n(), self.cfg.n_ff);
        self.rms_norm(norm);
        Self::collect(
            &mut self.imatrix,
            layer,
            Input::Ffn,
            &self.xn[..n * self.cfg.n_embd],
        );
        self.act.begin();
        project_all(
            &self.pool,
            self.blob,
            &mut self.act,
            &self.xn,
            (n, self.decode),
            [
                &mut (w_gate, &mut self.gate[..]),
                &mut (w_up, &mut self.up[..]),
            ],
        );
        let up = &self.up;
        let rows = per_thread_rows(n, &self.pool);
        self.pool
            .for_each_chunk(&mut self.gate[..n * n_ff], rows * n_ff, |start, gate| {
                // row by row, as ggml's op (a vector body and a scalar tail per row)
                for (g, u) in gate
                    .chunks_exact_mut(n_ff)
                    .zip(up[start..].chunks_exact(n_ff))
                {
                    ops::swiglu(g, u);
                }
            });
        Self::collect(
            &mut self.imatrix,
            layer,
            Input::FfnDown,
            &self.gate[..n * n_ff],
        );
        self.act.begin();
        project(
            &self.pool,
            self.blob,
            &mut self.act,
            w_down,
            &self.gate,
            (n, self.decode),
            &mut self.proj,
        );
        self.add_proj();
    }

    /// Final norm and the vocabulary projection, for the tokens of the batch whose logits
    /// `eval` asked for.
    pub fn output<N: Tensor<W = F32>, O: Tensor>(&mut self, norm: &N, w_out: &O) {
        let (n, n_embd, n_vocab) = (self.n(), self.cfg.n_embd, self.cfg.n_vocab);
        if self.out_from >= n {
            return;
        }
        self.rms_norm(norm);
        let rows = n - self.out_from;
        let collected = &self.xn[self.out_from * n_embd..n * n_embd];
        Self::collect(&mut self.imatrix, 0, Input::Output, collected);
        let xn = &self.xn[self.out_from * n_embd..n * n_embd];
        let out = &mut self.logits[self.out_at..self.out_at + rows * n_vocab];
        self.act.begin();
        project(
            &self.pool,
            self.blob,
            &mut self.act,
            w_out,
            xn,
            (rows, self.decode),
            out,
        );
    }

    /// xn = rmsnorm(x) * weight, per token.
    fn rms_norm<N: Tensor<W = F32>>(&mut self, norm: &N) {
        let n_embd = self.cfg.n_embd;
        let (w, eps, n) = (norm.blocks(self.blob), self.cfg.rms_eps, self.n());
        let x = &self.x;
        let rows = per_thread_rows(n, &self.pool);
        self.pool
            .for_each_chunk(&mut self.xn[..n * n_embd], rows * n_embd, |start, xn| {
                for (o, x) in xn
                    .chunks_exact_mut(n_embd)
                    .zip(x[start..].chunks_exact(n_embd))
                {
                    ops::rms_norm(x, w, eps, o);
                }
            });
    }

    fn add_proj(&mut self) {
        let (n, n_embd) = (self.n(), self.cfg.n_embd);
        let proj = &self.proj;
        let rows = per_thread_rows(n, &self.pool);
        self.pool
            .for_each_chunk(&mut self.x[..n * n_embd], rows * n_embd, |start, x| {
                for (x, p) in x.iter_mut().zip(&proj[start..]) {
                    *x += p;
                }
            });
    }
}

/// Rows (tokens) per chunk of a per-token step (norms, SwiGLU, residual adds, activation
/// quantization) run on `pool`: a few chunks per thread for a batch, so that a thread that
/// loses its core does not hold the others up; one chunk for a single token, which
/// `for_each_chunk` then runs on the calling thread.
fn per_thread_rows(n_rows: usize, pool: &Pool) -> usize {
    n_rows.div_ceil(4 * pool.n_threads()).max(1)
}

/// Activation format of tensor `T`'s weights.
type ActOf<T> = <<T as Tensor>::W as WeightType>::Act;

/// out[t] = W · input[t] for the n tokens of the batch: quantize the input rows into the
/// weight type's activation format (once per input and format: the caller starts each
/// new input with [`ActScratch::begin`]), then one matmul, or for a decode step (`n == 1`,
/// or `decode`: each token a step of its own sequence) one matvec per token, all in one
/// pass over the weights.
fn project<T: Tensor>(
    pool: &Pool,
    blob: &[u8],
    act: &mut ActScratch,
    w: &T,
    input: &[f32],
    (n, decode): (usize, bool),
    out: &mut [f32],
) {
    let slot = act.quantize::<ActOf<T>>(pool, &input[..n * T::COLS], T::COLS);
    let blocks = act.get::<ActOf<T>>(slot);
    let out = &mut out[..n * T::ROWS];
    if n == 1 || decode {
        matmul::matvecs::<T::W>(pool, w.blocks(blob), blocks, n, out);
    } else {
        matmul::matmul::<T::W>(pool, w.blocks(blob), blocks, n, out);
    }
}

/// A projection `out = W · input` of an input that several share (Q, K and V; gate and
/// up), its weight type erased so that [`project_all`] can take them together.
trait Projection {
    /// `out = W · input` for a batch of `n` tokens: one `project`.
    fn batch(
        &mut self,
        pool: &Pool,
        blob: &[u8],
        act: &mut ActScratch,
        input: &[f32],
        batch: (usize, bool),
    );
    /// One token's input in the weights' activation format: its `act` slot.
    fn quantize(&self, pool: &Pool, act: &mut ActScratch, input: &[f32]) -> usize;
    /// The matvec of one token, from its quantized input in `slot`.
    fn part<'a>(
        &'a mut self,
        pool: &Pool,
        blob: &'a [u8],
        act: &'a ActScratch,
        slot: usize,
    ) -> matmul::MatvecPart<'a>;
}

impl<T: Tensor> Projection for (&T, &mut [f32]) {
    fn batch(
        &mut self,
        pool: &Pool,
        blob: &[u8],
        act: &mut ActScratch,
        input: &[f32],
        batch: (usize, bool),
    ) {
        project(pool, blob, act, self.0, input, batch, self.1);
    }

    fn quantize(&self, pool: &Pool, act: &mut ActScratch, input: &[f32]) -> usize {
        act.quantize::<ActOf<T>>(pool, &input[..T::COLS], T::COLS)
    }

    fn part<'a>(
        &'a mut self,
        pool: &Pool,
        blob: &'a [u8],
        act: &'a ActScratch,
        slot: usize,
    ) -> matmul::MatvecPart<'a> {
        let out = &mut self.1[..T::ROWS];
        let act = act.get::<ActOf<T>>(slot);
        matmul::MatvecPart::new::<T::W>(pool, self.0.blocks(blob), act, 1, out)
    }
}

/// Projections of the same input: for one token in a single dispatch of the pool
/// ([`matmul::matvec_parts`]: K and V alone are too small to stream at full speed, and
/// each dispatch wakes and joins the pool), for a batch as one `project` each. Results
/// are those of one `project` per projection.
fn project_all<const N: usize>(
    pool: &Pool,
    blob: &[u8],
    act: &mut ActScratch,
    input: &[f32],
    batch: (usize, bool),
    mut projections: [&mut dyn Projection; N],
) {
    if batch.0 != 1 {
        for p in projections {
            p.batch(pool, blob, act, input, batch);
        }
        return;
    }
    let slots = projections.each_ref().map(|p| p.quantize(pool, act, input));
    let act = &*act;
    let parts: Vec<_> = projections
        .iter_mut()
        .zip(slots)
        .map(|(p, slot)| p.part(pool, blob, act, slot))
        .collect();
    matmul::matvec_parts(pool, &parts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{q8_0::Q8_0, q8_k::Q8_K};

    /// Sequences decoded together, joining at different times and at depths where the
    /// keys are split, get each step's logits bit for bit as a context of their own.
    #[test]
    fn decoding_sequences_together_changes_no_bit() {
        use crate::toy::{Toy, CTX, V};
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let argmax =
            |l: &[f32]| (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
        let prompts: [Vec<u32>; 3] = [
            (0..5).map(|i| (i * 7 + 1) % V as u32).collect(),
            (0..270).map(|i| (i * 13 + 5) % V as u32).collect(),
            (0..40).map(|i| (i * 3 + 2) % V as u32).collect(),
        ];
        // Each sequence alone: its prompt in chunks of 64, then greedy decode steps.
        let steps = 12;
        let mut solo = Vec::new();
        for p in &prompts {
            let mut ctx = Ctx::new::<Toy>(2, CTX, 64).unwrap();
            let mut logits = vec![ctx.eval::<Toy>(p, 0, p.len() - 1).to_vec()];
            for pos in p.len()..p.len() + steps {
                let next = argmax(logits.last().unwrap());
                logits.push(ctx.eval::<Toy>(&[next], pos, 0).to_vec());
            }
            solo.push(logits);
        }
        // Together: sequence s joins at step 4 * s; one cache, one decode call per step.
        let mut ctx = Ctx::with_sequences::<Toy>(2, CTX, 64, 3).unwrap();
        let mut state: Vec<Option<(usize, Vec<f32>, usize)>> = vec![None, None, None];
        for step in 0..steps + 8 {
            for (s, p) in prompts.iter().enumerate() {
                if step == 4 * s {
                    let l = ctx.eval_seq::<Toy>(s, p, 0, p.len() - 1).to_vec();
                    assert_eq!(bits(&l), bits(&solo[s][0]), "prompt of sequence {s}");
                    state[s] = Some((p.len(), l, 1));
                }
            }
            let batch: Vec<(usize, usize, u32)> = state
                .iter()
                .enumerate()
                .filter_map(|(s, st)| {
                    st.as_ref()
                        .filter(|st| st.2 <= steps)
                        .map(|st| (s, st.0, argmax(&st.1)))
                })
                .collect();
            if batch.is_empty() {
                continue;
            }
            let out = ctx.decode::<Toy>(&batch).to_vec();
            for (&(s, _, _), l) in batch.iter().zip(out.chunks_exact(V)) {
                let st = state[s].as_mut().unwrap();
                assert_eq!(bits(l), bits(&solo[s][st.2]), "sequence {s}, step {}", st.2);
                (st.0, st.1, st.2) = (st.0 + 1, l.to_vec(), st.2 + 1);
            }
        }
        assert!(state.iter().all(|st| st.as_ref().unwrap().2 == steps + 1));
    }

    #[test]
    fn act_scratch_quantizes_each_input_once_per_format() {
        let (x, y) = (vec![1.0f32; 512], vec![-3.0f32; 512]);
        let pool = Pool::new(2);
        let mut act = ActScratch::default();
        act.begin();
        let a = act.quantize::<Q8_0>(&pool, &x, 256);
        let k = act.quantize::<Q8_K>(&pool, &x, 256);
        assert_ne!(a, k);
        assert_eq!(act.get::<Q8_0>(a).len(), 16);
        assert_eq!(act.get::<Q8_K>(k).len(), 2);
        // Until the next begin, a projection of the same input reuses the blocks as they
        // are: nothing is compared or quantized again.
        assert_eq!(act.quantize::<Q8_0>(&pool, &y, 256), a);
        assert_eq!(act.get::<Q8_0>(a)[0].qs[0], 127);
        act.begin();
        let a = act.quantize::<Q8_0>(&pool, &y, 256);
        assert_eq!(act.get::<Q8_0>(a)[0].qs[0], -127);
        assert_eq!(act.slots.len(), 2, "slots are reused across inputs");
    }
}
