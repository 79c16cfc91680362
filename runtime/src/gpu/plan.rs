//! The decode step as data: which kernel runs with which grid and which buffers, in
//! order. [`GpuCtx`](super::GpuCtx) maps the buffers to device memory and captures the
//! launches as a CUDA graph; the compiler's tests run the same plan through their PTX
//! interpreter, so the launch sequence is checked without a GPU.

use super::{GpuError, GpuModel, GpuTensor};
use crate::model::Config;
use crate::ops::Rope;

/// A buffer of the decode step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// The tensor at this offset of the weight blob.
    Weight(usize),
    /// Residual stream, `n_embd` f32.
    X,
    /// Normed residual, `n_embd` f32.
    Xn,
    /// Query, `n_head * head_dim` f32.
    Q,
    /// Key and value of the token, `n_head_kv * head_dim` f32 each.
    K,
    V,
    /// Attention output, `n_head * head_dim` f32.
    Att,
    /// Feed-forward gate and up projections, `n_ff` f32 each.
    Gate,
    Up,
    /// `n_vocab` f32.
    Logits,
    /// Attention scores, `n_head x` compiled context f32 (the kernel's row stride).
    Scores,
    /// RoPE `(cos, sin)` f32 pairs, `[pos][rope_dim / 2]`.
    Rope,
    /// `{token, pos, argmax, 0}` u32.
    Params,
    /// Layer `l`'s f16 K and V caches, `n_ctx x n_head_kv * head_dim`.
    KCache(usize),
    VCache(usize),
}

impl Buf {
    /// Bytes of an activation buffer for a context of `n_ctx` positions (weights: 0,
    /// their size is the tensor's).
    pub fn bytes(self, cfg: &Config, n_ctx: usize) -> usize {
        let f = 4;
        match self {
            Buf::Weight(_) => 0,
            Buf::X | Buf::Xn => cfg.n_embd * f,
            Buf::Q | Buf::Att => cfg.q_dim() * f,
            Buf::K | Buf::V => cfg.kv_dim() * f,
            Buf::Gate | Buf::Up => cfg.n_ff * f,
            Buf::Logits => cfg.n_vocab * f,
            Buf::Scores => cfg.n_head * cfg.n_ctx * f,
            Buf::Rope => n_ctx * cfg.rope_dim / 2 * 2 * f,
            Buf::Params => 16,
            Buf::KCache(_) | Buf::VCache(_) => n_ctx * cfg.kv_dim() * 2,
        }
    }
}

/// One kernel launch: `grid` CTAs of `block` threads, the buffers' addresses as its
/// 64-bit parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: u32,
    pub block: u32,
    pub args: Vec<Buf>,
}

/// Threads of an attention CTA: at least 128, and one per head dimension (the
/// compiler's `attention_threads` makes the kernel for the same count).
pub fn attention_threads(head_dim: usize) -> u32 {
    head_dim.next_multiple_of(32).max(128) as u32
}

/// The decode step of one token with layers `0..n_gpu` on the GPU (`cfg.n_ctx` is the
/// compiled context). With every layer offloaded the step ends with the final norm, the
/// output matrix and the device argmax; otherwise it ends with the residual stream in
/// [`Buf::X`], for the CPU tail.
pub fn decode_plan(model: &GpuModel, cfg: &Config, n_gpu: usize) -> Vec<Launch> {
    let mut plan = Vec::new();
    let mut push = |kernel: &'static str, grid: usize, block: u32, args: Vec<Buf>| {
        plan.push(Launch {
            kernel,
            grid: grid as u32,
            block,
            args,
        })
    };
    let w = |t: &GpuTensor| Buf::Weight(t.offset);
    let matvec = |t: &GpuTensor, x: Buf, y: Buf| (t.kernel, t.rows.div_ceil(4), vec![w(t), x, y]);
    push(
        model.token_embd.kernel,
        (cfg.n_embd / 32).div_ceil(128),
        128,
        vec![w(&model.token_embd), Buf::Params, Buf::X],
    );
    let rope_threads = cfg.q_dim() / 2 + cfg.kv_dim();
    for (l, t) in model.layers.iter().enumerate().take(n_gpu) {
        let rms = |norm: &GpuTensor| ("rmsnorm", 1, vec![Buf::X, w(norm), Buf::Xn]);
        let steps = [
            (rms(&t.attn_norm), 256),
            (matvec(&t.attn_q, Buf::Xn, Buf::Q), 128),
            (matvec(&t.attn_k, Buf::Xn, Buf::K), 128),
            (matvec(&t.attn_v, Buf::Xn, Buf::V), 128),
            (
                (
                    "rope_kv",
                    rope_threads.div_ceil(256),
                    vec![
                        Buf::Q,
                        Buf::K,
                        Buf::V,
                        Buf::KCache(l),
                        Buf::VCache(l),
                        Buf::Rope,
                        Buf::Params,
                    ],
                ),
                256,
            ),
            (
                (
                    "attention",
                    cfg.n_head,
                    vec![
                        Buf::Q,
                        Buf::KCache(l),
                        Buf::VCache(l),
                        Buf::Scores,
                        Buf::Att,
                        Buf::Params,
                    ],
                ),
                attention_threads(cfg.head_dim),
            ),
            (matvec(&t.attn_output, Buf::Att, Buf::X), 128),
            (rms(&t.ffn_norm), 256),
            (matvec(&t.ffn_gate, Buf::Xn, Buf::Gate), 128),
            (matvec(&t.ffn_up, Buf::Xn, Buf::Up), 128),
            (
                ("swiglu", cfg.n_ff.div_ceil(256), vec![Buf::Gate, Buf::Up]),
                256,
            ),
            (matvec(&t.ffn_down, Buf::Gate, Buf::X), 128),
        ];
        for ((kernel, grid, args), block) in steps {
            push(kernel, grid, block, args);
        }
    }
    if n_gpu >= cfg.n_layer {
        push(
            "rmsnorm",
            1,
            256,
            vec![Buf::X, w(&model.output_norm), Buf::Xn],
        );
        let (k, g, a) = matvec(&model.output, Buf::Xn, Buf::Logits);
        push(k, g, 128, a);
        push("argmax", 1, 1024, vec![Buf::Logits, Buf::Params]);
    }
    plan
}

/// The RoPE table the `rope_kv` kernel reads: for each position below `n_ctx`, the
/// `(cos, sin)` of every pair as f32, exactly the CPU path's table.
pub fn rope_table(cfg: &Config, freqs: Option<&[f32]>, n_ctx: usize) -> Result<Vec<u8>, GpuError> {
    let rope =
        Rope::try_new(cfg.head_dim, cfg.rope_dim, cfg.rope_base, freqs, n_ctx).map_err(|e| {
            GpuError::NoDriver {
                reason: format!("RoPE: {e}"),
            }
        })?;
    let mut table = Vec::with_capacity(n_ctx * cfg.rope_dim * 4);
    for pos in 0..n_ctx {
        for &(cos, sin) in rope.angles(pos) {
            table.extend_from_slice(&cos.to_le_bytes());
            table.extend_from_slice(&sin.to_le_bytes());
        }
    }
    Ok(table)
}
