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
    /// Feed-forward hidden state `silu(W_gate xn) * (W_up xn)`, `n_ff` f32.
    Gate,
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

/// Tokens of a prefill tile: the matmul kernels (`mm_*`) take this many activation
/// rows; must equal the compiler's `PREFILL_TILE`.
pub const PREFILL_TILE: usize = 8;

impl Buf {
    /// Bytes of an activation buffer for a context of `n_ctx` positions (weights: 0,
    /// their size is the tensor's). Per-token buffers hold a prefill tile of rows; a
    /// decode step uses row 0.
    pub fn bytes(self, cfg: &Config, n_ctx: usize) -> usize {
        self.row_bytes(cfg, n_ctx) * if self.per_token() { PREFILL_TILE } else { 1 }
    }

    /// Whether the buffer has one row per token of a prefill tile (the attention
    /// scores too: the tile's tokens are attended to at the same time).
    pub fn per_token(self) -> bool {
        !matches!(
            self,
            Buf::Weight(_) | Buf::Rope | Buf::KCache(_) | Buf::VCache(_)
        )
    }

    /// Bytes of one token's row (of the whole buffer for the shared ones).
    pub fn row_bytes(self, cfg: &Config, n_ctx: usize) -> usize {
        let f = 4;
        match self {
            Buf::Weight(_) => 0,
            Buf::X | Buf::Xn => cfg.n_embd * f,
            Buf::Q | Buf::Att => cfg.q_dim() * f,
            Buf::K | Buf::V => cfg.kv_dim() * f,
            Buf::Gate => cfg.n_ff * f,
            Buf::Logits => cfg.n_vocab * f,
            Buf::Scores => cfg.n_head * cfg.n_ctx * f,
            Buf::Rope => n_ctx * cfg.rope_dim / 2 * 2 * f,
            Buf::Params => 16,
            Buf::KCache(_) | Buf::VCache(_) => n_ctx * cfg.kv_dim() * 2,
        }
    }
}

/// One kernel launch: `grid x grid_y` CTAs of `block` threads; its 64-bit parameters
/// are the buffers' addresses. The per-token kernels take the token of a prefill tile
/// from `ctaid.y` (`grid_y` is the tile's size, 1 in a decode step) and find its rows
/// themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: u32,
    pub grid_y: u32,
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
    step_plan(model, cfg, n_gpu, None)
}

/// The prefill step of [`PREFILL_TILE`] tokens (row `t` of every per-token buffer and of
/// `params` is token `t`): the matrices run as one matmul per tile, the embedding,
/// norms, RoPE, attention, SwiGLU and argmax as one launch each with the tile's tokens
/// along the grid's y (token `t` attends to positions up to its own, so causality holds
/// although all K and V of the tile are in the cache first). Per token the arithmetic
/// is the decode step's, so the logits are too.
pub fn prefill_plan(model: &GpuModel, cfg: &Config, n_gpu: usize) -> Vec<Launch> {
    step_plan(model, cfg, n_gpu, Some(PREFILL_TILE))
}

fn step_plan(model: &GpuModel, cfg: &Config, n_gpu: usize, tile: Option<usize>) -> Vec<Launch> {
    let tokens = tile.unwrap_or(1) as u32;
    let mut plan = Vec::new();
    // A per-token kernel: one launch, the tile's tokens along the grid's y.
    let per_token =
        |plan: &mut Vec<Launch>, kernel: &'static str, grid: usize, block: u32, args: &[Buf]| {
            plan.push(Launch {
                kernel,
                grid: grid as u32,
                grid_y: tokens,
                block,
                args: args.to_vec(),
            })
        };
    let w = |t: &GpuTensor| Buf::Weight(t.offset);
    // A matrix: its matvec in a decode step, its matmul over the whole tile in prefill.
    let matrix = |plan: &mut Vec<Launch>, t: &GpuTensor, x: Buf, y: Buf| {
        plan.push(Launch {
            kernel: if tile.is_some() { t.prefill } else { t.kernel },
            grid: t.rows.div_ceil(4) as u32,
            grid_y: 1,
            block: 128,
            args: vec![w(t), x, y],
        })
    };
    let p = &mut plan;
    per_token(
        p,
        model.token_embd.kernel,
        (cfg.n_embd / 32).div_ceil(128),
        128,
        &[w(&model.token_embd), Buf::Params, Buf::X],
    );
    let rope_threads = cfg.q_dim() / 2 + cfg.kv_dim();
    for (l, t) in model.layers.iter().enumerate().take(n_gpu) {
        per_token(p, "rmsnorm", 1, 256, &[Buf::X, w(&t.attn_norm), Buf::Xn]);
        matrix(p, &t.attn_q, Buf::Xn, Buf::Q);
        matrix(p, &t.attn_k, Buf::Xn, Buf::K);
        matrix(p, &t.attn_v, Buf::Xn, Buf::V);
        per_token(
            p,
            "rope_kv",
            rope_threads.div_ceil(256),
            256,
            &[
                Buf::Q,
                Buf::K,
                Buf::V,
                Buf::KCache(l),
                Buf::VCache(l),
                Buf::Rope,
                Buf::Params,
            ],
        );
        per_token(
            p,
            "attention",
            cfg.n_head,
            attention_threads(cfg.head_dim),
            &[
                Buf::Q,
                Buf::KCache(l),
                Buf::VCache(l),
                Buf::Scores,
                Buf::Att,
                Buf::Params,
            ],
        );
        matrix(p, &t.attn_output, Buf::Att, Buf::X);
        per_token(p, "rmsnorm", 1, 256, &[Buf::X, w(&t.ffn_norm), Buf::Xn]);
        // gate = silu(W_gate xn) * (W_up xn), one fused launch
        p.push(Launch {
            kernel: if tile.is_some() {
                t.gate_up_prefill
            } else {
                t.gate_up
            },
            grid: t.ffn_gate.rows.div_ceil(4) as u32,
            grid_y: 1,
            block: 128,
            args: vec![w(&t.ffn_gate), w(&t.ffn_up), Buf::Xn, Buf::Gate],
        });
        matrix(p, &t.ffn_down, Buf::Gate, Buf::X);
    }
    if n_gpu >= cfg.n_layer {
        per_token(
            p,
            "rmsnorm",
            1,
            256,
            &[Buf::X, w(&model.output_norm), Buf::Xn],
        );
        matrix(p, &model.output, Buf::Xn, Buf::Logits);
        per_token(p, "argmax", 1, 1024, &[Buf::Logits, Buf::Params]);
    }
    plan
}

/// The RoPE table the `rope_kv` kernel reads: for each position below `n_ctx`, the
/// `(cos, sin)` of every pair as f32, exactly the CPU path's table.
pub fn rope_table(cfg: &Config, freqs: Option<&[f32]>, n_ctx: usize) -> Result<Vec<u8>, GpuError> {
    let rope = Rope::try_new(cfg.head_dim, cfg.rope_dim, cfg.rope_base, freqs, n_ctx)
        .map_err(|e| GpuError::Setup(format!("RoPE: {e}")))?;
    let mut table = Vec::with_capacity(n_ctx * cfg.rope_dim * 4);
    for pos in 0..n_ctx {
        for &(cos, sin) in rope.angles(pos) {
            table.extend_from_slice(&cos.to_le_bytes());
            table.extend_from_slice(&sin.to_le_bytes());
        }
    }
    Ok(table)
}
