//! Forward-pass building blocks: RMS norm, RoPE, attention over the f16 KV cache,
//! SwiGLU and softmax.
//!
//! Every op reproduces the arithmetic of llama.cpp's CPU backend (ggml-cpu, built
//! with `-march=native` on the same machine) step by step: the same precision at
//! every intermediate, the same summation trees, the same `expf` approximation, the
//! same fused multiply-adds. Floating point is not associative, so "the same formula"
//! is not enough for greedy text and logits to agree over hundreds of tokens; the
//! order of the operations is part of the contract here.
//!
//! ggml picks its vector width at compile time, and so do we: [`SIMD_WIDTH`] is the
//! f32 lane count ggml's `GGML_SIMD` macros use for this target (16 with AVX-512F,
//! 8 with AVX2+FMA+F16C, none otherwise). The scalar reference of every reduction
//! takes the width as a parameter so the tests can check the SIMD kernels bit for bit.
//!
//! This module owns arithmetic only: no allocation in the per-token paths beyond
//! small stack buffers, no threading (callers split heads or rows), no knowledge of
//! the model layout beyond the slices it is given.

use crate::float16::f16;
use thiserror::Error;

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod x86;

// AVX-512 builds run `x86` instead, but compile and test these too.
#[cfg(x86_simd)]
#[cfg_attr(target_feature = "avx512f", allow(dead_code))]
mod avx2;

mod tiled;

#[cfg(test)]
mod tests;

pub use tiled::{attend_rows_tiled, attend_rows_tiled_flavor, TiledScratch, TILE_KV, TILE_Q};

/// f32 lanes per vector in ggml's generic SIMD layer (`GGML_F32_EPR`) for this target:
/// the width of its f16 dot-product accumulators. 0 means ggml runs its scalar code.
pub const SIMD_WIDTH: usize = if cfg!(all(target_arch = "x86_64", target_feature = "avx512f")) {
    16
} else if cfg!(x86_simd) {
    8
} else {
    0
};

/// Which vectorised `expf` ggml uses for SiLU and softmax on this target. The AVX-512
/// and AVX2 versions share a polynomial but round differently at the end, so each
/// has its own scalar twin here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpFlavor {
    /// `ggml_v_expf` for `__m512` (needs AVX-512F and DQ): 16 lanes, `scalef` at the end.
    Avx512,
    /// `ggml_v_expf` for `__m256` (needs AVX2 and FMA): 8 lanes, `k + k*j` at the end.
    Avx2,
    /// No vector path: libm `expf` for every element.
    Libm,
}

/// The `expf` flavor of this build target.
pub const EXP_FLAVOR: ExpFlavor = if cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512dq"
)) {
    ExpFlavor::Avx512
} else if cfg!(x86_simd) {
    ExpFlavor::Avx2
} else {
    ExpFlavor::Libm
};

impl ExpFlavor {
    /// Elements per vector block; the tail after the last full block uses libm `expf`.
    pub const fn block(self) -> usize {
        match self {
            ExpFlavor::Avx512 => 16,
            ExpFlavor::Avx2 => 8,
            ExpFlavor::Libm => 1,
        }
    }
}

/// Head sizes up to this use stack scratch in [`attend_head`]; larger ones allocate.
const STACK_HEAD_DIM: usize = 512;

/// A RoPE table that cannot be built from the given hyperparameters.
#[derive(Debug, Error, PartialEq)]
pub enum RopeError {
    #[error("rope_dim {rope_dim} must be even and at most head_dim {head_dim}")]
    BadRopeDim { rope_dim: usize, head_dim: usize },
    #[error("rope_freqs has {found} factors, rope_dim {rope_dim} needs {needed}")]
    ShortFreqFactors {
        found: usize,
        rope_dim: usize,
        needed: usize,
    },
    #[error("rope base {0} must be finite and positive")]
    BadBase(f32),
}

// ---------------------------------------------------------------------------------
// RMS norm
// ---------------------------------------------------------------------------------

/// `out = x / sqrt(mean(x²) + eps) * weight`, all slices of the same length.
///
/// Precision as ggml: each square is an f32 product widened to f64 and summed in f64
/// (sequentially; ggml does not vectorise this loop); the mean is rounded to f32
/// before `eps` is added; the inverse root is f32 (`1/sqrtf`); the output is
/// `(x * scale) * weight` in f32, the order of ggml's fused RMS_NORM+MUL and of the
/// unfused pair alike.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert_eq!(x.len(), weight.len());
    debug_assert_eq!(x.len(), out.len());
    let sum_sq: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum_sq / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

// ---------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------

/// Rotary position embedding in the "normal" (GGUF, adjacent pairs) layout, with a
/// precomputed `(cos, sin)` table for every position below `n_ctx`.
///
/// Pair `i` of each head, `(x[2i], x[2i+1])`, turns by
/// `theta_i = pos * base^(-2i/rope_dim) / freq_factor[i]`. The table is built the
/// way ggml builds its per-row cache, because the angle's rounding shows up in the
/// logits: `theta_scale = powf(base, -2/rope_dim)` in f32, `theta_0 = pos` and each
/// next angle is the previous one times `theta_scale` in f32 (not a fresh power), the
/// freq factor divides that product, and `cosf`/`sinf` come from libm in f32.
/// Values past `rope_dim` in each head are left alone.
///
/// Memory: `n_ctx * rope_dim` f32 (4 MiB for 8K context and 128-wide rope).
pub struct Rope {
    head_dim: usize,
    rope_dim: usize,
    n_ctx: usize,
    /// `[pos][pair] -> (cos, sin)`, `rope_dim / 2` pairs per position.
    table: Vec<(f32, f32)>,
}

impl Rope {
    /// Builds the table. `freq_factors` (Llama-3.1 `rope_freqs.weight`) needs at least
    /// `rope_dim / 2` entries.
    ///
    /// # Panics
    /// On hyperparameters [`Rope::try_new`] rejects; the compiler validates them first.
    pub fn new(
        head_dim: usize,
        rope_dim: usize,
        base: f32,
        freq_factors: Option<&[f32]>,
        n_ctx: usize,
    ) -> Rope {
        match Rope::try_new(head_dim, rope_dim, base, freq_factors, n_ctx) {
            Ok(rope) => rope,
            Err(e) => panic!("invalid RoPE parameters: {e}"),
        }
    }

    /// [`Rope::new`] with the checks returned as errors.
    pub fn try_new(
        head_dim: usize,
        rope_dim: usize,
        base: f32,
        freq_factors: Option<&[f32]>,
        n_ctx: usize,
    ) -> Result<Rope, RopeError> {
        if rope_dim & 1 != 0 || rope_dim > head_dim {
            return Err(RopeError::BadRopeDim { rope_dim, head_dim });
        }
        if !(base.is_finite() && base > 0.0) {
            return Err(RopeError::BadBase(base));
        }
        let n_pairs = rope_dim / 2;
        if let Some(ff) = freq_factors {
            if ff.len() < n_pairs {
                return Err(RopeError::ShortFreqFactors {
                    found: ff.len(),
                    rope_dim,
                    needed: n_pairs,
                });
            }
        }
        // ggml divides in f32: `-2.0f/n_dims`.
        let theta_scale = base.powf(-2.0f32 / rope_dim as f32);
        let mut table = Vec::with_capacity(n_ctx * n_pairs);
        for pos in 0..n_ctx {
            // Positions are int32 in ggml, converted to float: exact below 2^24.
            let mut theta = pos as f32;
            for i in 0..n_pairs {
                // Without factors ggml divides by 1.0f, which is exact.
                let angle = match freq_factors {
                    Some(ff) => theta / ff[i],
                    None => theta,
                };
                table.push((angle.cos(), angle.sin()));
                theta *= theta_scale;
            }
        }
        Ok(Rope {
            head_dim,
            rope_dim,
            n_ctx,
            table,
        })
    }

    /// Values per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Rotated values per head.
    pub fn rope_dim(&self) -> usize {
        self.rope_dim
    }

    /// Positions the table covers.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// `(cos, sin)` of every pair at `pos` (`rope_dim / 2` entries).
    pub fn angles(&self, pos: usize) -> &[(f32, f32)] {
        let n_pairs = self.rope_dim / 2;
        &self.table[pos * n_pairs..(pos + 1) * n_pairs]
    }

    /// Rotates `n_heads` consecutive heads of `head_dim` values in `x` for position
    /// `pos` (`pos < n_ctx`, `x.len() >= n_heads * head_dim`).
    ///
    /// Per pair, GCC contracts ggml's vectorised loop into one `vfmaddsub`:
    /// `x0' = fma(x0, cos, -(x1*sin))` and `x1' = fma(x0, sin, x1*cos)`: the `x0`
    /// products are fused, the `x1` products rounded first (checked bit for bit
    /// against ggml in the golden test).
    pub fn apply(&self, x: &mut [f32], n_heads: usize, pos: usize) {
        debug_assert!(
            pos < self.n_ctx,
            "position {pos} outside the RoPE table ({})",
            self.n_ctx
        );
        debug_assert!(x.len() >= n_heads * self.head_dim);
        let angles = self.angles(pos);
        for head in x.chunks_exact_mut(self.head_dim).take(n_heads) {
            for (pair, &(cos, sin)) in head[..self.rope_dim].chunks_exact_mut(2).zip(angles) {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0.mul_add(cos, -(x1 * sin));
                pair[1] = x0.mul_add(sin, x1 * cos);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// f16 helpers
// ---------------------------------------------------------------------------------

/// Rounds f32 to f16 (nearest, ties to even), as ggml stores K and V into an f16 cache
/// and converts Q before the K dot product.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        x86::f32_to_f16(src, dst);
    }
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    {
        avx2::f32_to_f16(src, dst);
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx512f"), x86_simd)))]
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s);
    }
}

/// Widens f16 to f32 (exact).
pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        x86::f16_to_f32(src, dst);
    }
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    {
        avx2::f16_to_f32(src, dst);
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx512f"), x86_simd)))]
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Dot product of two f16 rows in ggml's order for lane width `width`
/// (`ggml_vec_dot_f16`): four accumulators of `width` f32 lanes take fused
/// multiply-adds over blocks of `4 * width`; they are added pairwise (0+2, 1+3, then
/// 0+1), the lanes are reduced by the target's horizontal-add tree, and the tail
/// after the last full block is added in f64, one rounded f32 product at a time.
/// `width == 0` is ggml's scalar build: a plain f64 sum of f32 products.
pub fn dot_f16_ref(a: &[f16], b: &[f16], width: usize) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    let mut sum = 0f64;
    let mut done = 0;
    if width > 0 {
        let step = 4 * width;
        let blocks_end = n - n % step;
        let mut acc = [[0f32; 16]; 4];
        for block in (0..blocks_end).step_by(step) {
            for (j, lanes) in acc.iter_mut().enumerate() {
                for (l, lane) in lanes[..width].iter_mut().enumerate() {
                    let i = block + j * width + l;
                    *lane = a[i].to_f32().mul_add(b[i].to_f32(), *lane);
                }
            }
        }
        let mut lanes = [0f32; 16];
        for l in 0..width {
            let low = acc[0][l] + acc[2][l];
            let high = acc[1][l] + acc[3][l];
            lanes[l] = low + high;
        }
        sum = reduce_lanes_dot(&lanes[..width]) as f64;
        done = blocks_end;
    }
    for i in done..n {
        sum += (a[i].to_f32() * b[i].to_f32()) as f64;
    }
    sum as f32
}

/// Horizontal sum of one accumulator in the tree ggml's dot-product reduce macros use:
/// 16 lanes (GCC's `_mm512_reduce_add_ps`): halves, then quarters, then
/// `(t0 + t2) + (t1 + t3)`; 8 lanes (`_mm_hadd_ps` twice): halves, then
/// `(t0 + t1) + (t2 + t3)`.
fn reduce_lanes_dot(v: &[f32]) -> f32 {
    match v.len() {
        16 => {
            let h: [f32; 8] = std::array::from_fn(|i| v[i] + v[i + 8]);
            let q: [f32; 4] = std::array::from_fn(|i| h[i] + h[i + 4]);
            (q[0] + q[2]) + (q[1] + q[3])
        }
        8 => {
            let q: [f32; 4] = std::array::from_fn(|i| v[i] + v[i + 4]);
            (q[0] + q[1]) + (q[2] + q[3])
        }
        _ => v.iter().sum(),
    }
}

/// Horizontal sum of one block in `ggml_vec_soft_max_f32`, and llamafile's `hsum` (its
/// F16 GEMM's): 16 lanes reduce like [`reduce_lanes_dot`]; 8 lanes go halves, then
/// `movehl` and `movehdup`, which gives `(t0 + t2) + (t1 + t3)` (not the dot product's
/// `(t0 + t1) + (t2 + t3)`).
pub(crate) fn reduce_lanes_softmax(v: &[f32]) -> f32 {
    match v.len() {
        16 => reduce_lanes_dot(v),
        8 => {
            let q: [f32; 4] = std::array::from_fn(|i| v[i] + v[i + 4]);
            (q[0] + q[2]) + (q[1] + q[3])
        }
        _ => v.iter().sum(),
    }
}

/// [`dot_f16_ref`] for this target's width, with SIMD where available.
#[inline]
pub fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        x86::dot_f16_w16(a, b)
    }
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    {
        avx2::dot_f16(a, b)
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx512f"), x86_simd)))]
    {
        dot_f16_ref(a, b, SIMD_WIDTH)
    }
}

/// `acc[i] = f16(fma(x[i], v, f32(acc[i])))`: ggml's `ggml_vec_mad_f16`, which
/// accumulates attention values in an f16 buffer, rounding after every position.
#[inline]
fn mad_f16(acc: &mut [f16], x: &[f16], v: f32) {
    debug_assert_eq!(acc.len(), x.len());
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        x86::mad_f16(acc, x, v)
    }
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    {
        avx2::mad_f16(acc, x, v)
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx512f"), x86_simd)))]
    mad_f16_ref(acc, x, v)
}

/// The scalar [`mad_f16`].
#[cfg_attr(x86_simd, allow(dead_code))]
pub(super) fn mad_f16_ref(acc: &mut [f16], x: &[f16], v: f32) {
    for (a, &xv) in acc.iter_mut().zip(x) {
        *a = f16::from_f32(xv.to_f32().mul_add(v, a.to_f32()));
    }
}

/// `acc[i] = f16(f32(acc[i]) * v)`: ggml's `ggml_vec_scale_f16`.
#[inline]
fn scale_f16(acc: &mut [f16], v: f32) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        x86::scale_f16(acc, v)
    }
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    {
        avx2::scale_f16(acc, v)
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx512f"), x86_simd)))]
    scale_f16_ref(acc, v)
}

/// The scalar [`scale_f16`].
#[cfg_attr(x86_simd, allow(dead_code))]
pub(super) fn scale_f16_ref(acc: &mut [f16], v: f32) {
    for a in acc.iter_mut() {
        *a = f16::from_f32(a.to_f32() * v);
    }
}

// ---------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------

/// Attention of one query head over the first `n_kv` cached positions, as ggml's
/// flash-attention kernel computes it for one query row
/// (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`), which is what llama.cpp runs
/// on the CPU by default (`flash_attn = auto` resolves to enabled there):
///
/// 1. Q is rounded to f16, the type of the K cache, and each score is the f16 dot
///    product [`dot_f16`] (f32 accumulators), rounded to f32, times `scale`.
/// 2. Online softmax in key order: a new maximum `M` rescales the running output by
///    `expf(M_old - M)` and counts with weight 1; otherwise the weight is
///    `expf(s - M)`. The running output is an **f16** buffer, updated with one
///    rounding per position ([`mad_f16`]); the running sum `S` is f32, `S*ms + vs`.
/// 3. The output is `f32(acc) * (1/S)` (a multiply by the rounded reciprocal).
///
/// Layout: `k_cache`/`v_cache` hold `kv_stride` f16 values per position; this head's
/// K and V are `kv_off .. kv_off + head_dim` of each row, `head_dim = q.len() =
/// out.len()`. `scores` is scratch of at least `2 * n_kv`. Causality is the
/// caller's choice of `n_kv`.
///
/// With a decode step over 512 or more padded KV cells, llama.cpp splits the keys
/// across threads instead; see [`attend_head_split`].
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    kv_stride: usize,
    kv_off: usize,
    n_kv: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let head_dim = q.len();
    let mut acc_stack = [f16::ZERO; STACK_HEAD_DIM];
    let mut acc_heap;
    let acc: &mut [f16] = if head_dim <= STACK_HEAD_DIM {
        &mut acc_stack[..head_dim]
    } else {
        acc_heap = vec![f16::ZERO; head_dim];
        &mut acc_heap
    };
    let mut stats = [(0f32, 0f32)];
    let keys = KeyChunk {
        k_cache,
        v_cache,
        kv_stride,
        kv_off,
        first: 0,
        len: n_kv,
    };
    attend_group_chunk(q, head_dim, &keys, scale, scores, acc, &mut stats);
    finish_single_chunk(out, acc, stats[0].1);
}

/// The output of a row whose keys were one chunk: `f32(acc) * (1/sum)` (zero when no
/// key was weighed).
pub fn finish_single_chunk(out: &mut [f32], acc: &[f16], sum: f32) {
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a.to_f32() * inv;
    }
}

/// Attention of one query head with the keys split into chunks of `chunk_len`
/// positions, as llama.cpp's decode path does when a single query row meets 512 or
/// more KV cells (`use_split_kv_path`): each chunk runs the online softmax of
/// [`attend_head`] on its own (f16 running output), then the chunks are merged in key
/// order by [`SplitMerge`].
///
/// `chunk_len` comes from [`llama_cpp_split_chunk_len`]; chunks past `n_kv` are empty
/// (llama.cpp masks them) and skipped. Arguments otherwise as [`attend_head`].
#[allow(clippy::too_many_arguments)]
pub fn attend_head_split(
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    kv_stride: usize,
    kv_off: usize,
    n_kv: usize,
    scale: f32,
    chunk_len: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let head_dim = q.len();
    let chunk_len = chunk_len.max(1);
    let mut acc_stack = [f16::ZERO; STACK_HEAD_DIM];
    let mut acc_heap;
    let acc: &mut [f16] = if head_dim <= STACK_HEAD_DIM {
        &mut acc_stack[..head_dim]
    } else {
        acc_heap = vec![f16::ZERO; head_dim];
        &mut acc_heap
    };
    let out = &mut out[..head_dim];
    let mut merged = SplitMerge::new(out);
    for first in (0..n_kv).step_by(chunk_len) {
        let keys = KeyChunk {
            k_cache,
            v_cache,
            kv_stride,
            kv_off,
            first,
            len: chunk_len.min(n_kv - first),
        };
        let mut stats = [(0f32, 0f32)];
        attend_group_chunk(q, head_dim, &keys, scale, scores, acc, &mut stats);
        merged.add(out, acc, stats[0]);
    }
    merged.finish(out);
}

/// The keys of one chunk of one KV head: positions `first .. first + len` of the cache,
/// which holds `kv_stride` f16 values per position; the head's K and V are
/// `kv_off .. kv_off + head_dim` of each.
#[derive(Clone, Copy, Debug)]
pub struct KeyChunk<'a> {
    pub k_cache: &'a [f16],
    pub v_cache: &'a [f16],
    pub kv_stride: usize,
    pub kv_off: usize,
    pub first: usize,
    pub len: usize,
}

/// One key chunk of the one-row attention ([`attend_head`]'s arithmetic) for the
/// `G = q.len() / head_dim` query heads that share a KV head (grouped-query attention):
/// head `g`'s query is `q[g * head_dim..][..head_dim]`. Each head's result is exactly
/// what it would get alone; the heads share the work that does not round differently
/// per head (reading and widening each K and V row once for all of them).
///
/// Writes each head's f16 running output to `acc[g * head_dim..][..head_dim]` and its
/// `(max, sum)` to `stats[g]`. `scores` is scratch of at least `2 * G * keys.len`.
pub fn attend_group_chunk(
    q: &[f32],
    head_dim: usize,
    keys: &KeyChunk,
    scale: f32,
    scores: &mut [f32],
    acc: &mut [f16],
    stats: &mut [(f32, f32)],
) {
    let heads = q.len() / head_dim;
    let len = keys.len;
    let mut q_stack = [f16::ZERO; 2 * STACK_HEAD_DIM];
    let mut q_heap;
    let q16: &mut [f16] = if q.len() <= q_stack.len() {
        &mut q_stack[..q.len()]
    } else {
        q_heap = vec![f16::ZERO; q.len()];
        &mut q_heap
    };
    // ggml rounds Q to the K cache's type before the dot products.
    f32_to_f16(q, q16);
    let first_row = keys.first * keys.kv_stride + keys.kv_off;
    let (weights, rescales) = scores[..2 * heads * len].split_at_mut(heads * len);
    group_scores(
        q16,
        head_dim,
        &keys.k_cache[first_row..],
        keys.kv_stride,
        len,
        scale,
        weights,
    );
    // The online softmax's scalar steps, per head in key order; the scores become the
    // weights of the V rows.
    for ((w, r), stats) in weights
        .chunks_mut(4 * len)
        .zip(rescales.chunks_mut(4 * len))
        .zip(stats[..heads].chunks_mut(4))
    {
        match stats.len() {
            1 => softmax_weights::<1>(w, r, stats),
            2 => softmax_weights::<2>(w, r, stats),
            3 => softmax_weights::<3>(w, r, stats),
            _ => softmax_weights::<4>(w, r, stats),
        }
    }
    acc[..heads * head_dim].fill(f16::ZERO);
    let v = &keys.v_cache[first_row..];
    group_accumulate_v(weights, rescales, v, keys.kv_stride, len, head_dim, acc);
}

/// The scalar steps of the online softmax of `G` heads, each over its `len =
/// scores.len() / G` scores (in key order), in place: each score becomes its key's
/// weight, and `rescale[j]` is the factor the running output is multiplied by before
/// key `j` is added (1 when the maximum does not grow there, and exactly 1 where it
/// grows too little to change anything). Writes each head's `(max, sum)` to `stats`.
/// See [`attend_head`] for the arithmetic.
///
/// Each key takes one `expf`: of `old_max - s` where `s` raises the maximum (the
/// rescale; the weight is 1), else of `s - max` (the weight). Both are `-|s - M|`, `M`
/// the maximum before the key, so the arguments come first, in one pass, and the
/// `expf`s run as a vector ([`libm_expf`]); the heads' chains (the maximum, then the
/// sum) run side by side.
fn softmax_weights<const G: usize>(
    scores: &mut [f32],
    rescale: &mut [f32],
    stats: &mut [(f32, f32)],
) {
    let len = scores.len() / G;
    let (scores, rescale) = (&mut scores[..G * len], &mut rescale[..G * len]);
    let mut max = [f32::NEG_INFINITY; G];
    for j in 0..len {
        for (g, max) in max.iter_mut().enumerate() {
            let (s, grew) = (&mut scores[g * len + j], &mut rescale[g * len + j]);
            // `grew` marks the keys that raise the maximum until their rescale is known
            if *s > *max {
                (*s, *max, *grew) = (*max - *s, *s, f32::NAN);
            } else {
                (*s, *grew) = (*s - *max, 1.0);
            }
        }
    }
    libm_expf(scores);
    let mut sum = [0f32; G];
    for j in 0..len {
        for (g, sum) in sum.iter_mut().enumerate() {
            let (s, r) = (&mut scores[g * len + j], &mut rescale[g * len + j]);
            if r.is_nan() {
                (*s, *r) = (1.0, *s);
            }
            *sum = sum.mul_add(*r, *s);
        }
    }
    for (stats, (max, sum)) in stats.iter_mut().zip(max.into_iter().zip(sum)) {
        *stats = (max, sum);
    }
}

/// `x = expf(x)` for each value, the bits of the C library's `expf` (which llama.cpp's
/// one-row attention calls): 4 lanes at a time on the SIMD tiers, where glibc runs
/// `__expf_fma`.
fn libm_expf(xs: &mut [f32]) {
    #[cfg(x86_simd)]
    avx2::libm_expf(xs);
    #[cfg(not(x86_simd))]
    for x in xs {
        *x = x.exp();
    }
}

/// The V half of the online softmax for the heads of a KV group: for each key `j` in
/// order and each head `g`, `acc_g = scale_f16(acc_g, rescale[g][j])` where that is not
/// 1 (multiplying by 1 changes no f16), then `acc_g = mad_f16(acc_g, V_j, weight[g][j])`.
/// `v` holds the keys' V rows `kv_stride` apart; `acc` the heads' f16 outputs.
fn group_accumulate_v(
    weights: &[f32],
    rescales: &[f32],
    v: &[f16],
    kv_stride: usize,
    len: usize,
    head_dim: usize,
    acc: &mut [f16],
) {
    if len == 0 {
        return;
    }
    assert!(v.len() >= (len - 1) * kv_stride + head_dim);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if x86::group_accumulate_v(weights, rescales, v, kv_stride, len, head_dim, acc) {
        return;
    }
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    if avx2::group_accumulate_v(weights, rescales, v, kv_stride, len, head_dim, acc) {
        return;
    }
    group_accumulate_v_ref(weights, rescales, v, kv_stride, len, head_dim, acc);
}

/// [`group_accumulate_v`] one head and key at a time.
fn group_accumulate_v_ref(
    weights: &[f32],
    rescales: &[f32],
    v: &[f16],
    kv_stride: usize,
    len: usize,
    head_dim: usize,
    acc: &mut [f16],
) {
    let rows = weights.chunks_exact(len).zip(rescales.chunks_exact(len));
    for ((w, r), acc) in rows.zip(acc.chunks_exact_mut(head_dim)) {
        for j in 0..len {
            if r[j] != 1.0 {
                scale_f16(acc, r[j]);
            }
            mad_f16(acc, &v[j * kv_stride..j * kv_stride + head_dim], w[j]);
        }
    }
}

/// `scores[g * len + j] = f32(dot_f16(K_j, q16_g)) * scale` for the heads of `q16`
/// (`head_dim` values each) and the `len` keys starting at `k` (`kv_stride` apart).
fn group_scores(
    q16: &[f16],
    head_dim: usize,
    k: &[f16],
    kv_stride: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
) {
    if len == 0 {
        return;
    }
    assert!(k.len() >= (len - 1) * kv_stride + head_dim);
    #[cfg(x86_simd)]
    {
        // the vector kernels take the f16 queries widened (exactly) once
        let mut q_stack = [0f32; 2 * STACK_HEAD_DIM];
        let mut q_heap;
        let q: &mut [f32] = if q16.len() <= q_stack.len() {
            &mut q_stack[..q16.len()]
        } else {
            q_heap = vec![0f32; q16.len()];
            &mut q_heap
        };
        f16_to_f32(q16, q);
        #[cfg(target_feature = "avx512f")]
        if x86::group_scores(q, head_dim, k, kv_stride, len, scale, scores) {
            return;
        }
        #[cfg(not(target_feature = "avx512f"))]
        if avx2::group_scores(q, head_dim, k, kv_stride, len, scale, scores) {
            return;
        }
    }
    group_scores_ref(q16, head_dim, k, kv_stride, len, scale, scores);
}

/// Keys per pass of the vector `group_accumulate_v` kernels: their V rows (16 KiB at
/// head_dim 128) stay in L1 while every column block of every head runs over them.
/// A head's rows are contiguous in the cache ([`crate::model::Config::kv_head_offset`]);
/// with rows `kv_dim` apart, a power of two on Minitron, a tile's lines of one column
/// block shared two L1 sets, and the AVX2 kernel needed 16-key tiles. Now 64 is faster
/// on both tiers (Minitron tg at depth 2048, AVX2 tier: 9.07-9.62 t/s against
/// 7.17-8.33 with 16).
#[cfg(x86_simd)]
const V_TILE: usize = 64;

/// Asks for the cache lines of `hd` f16 values from `p` (a hint: no access is made),
/// into L1 and L2 (`HINT` = `_MM_HINT_T0`) or L2 only (`_MM_HINT_T1`: rows wanted later,
/// which must not evict the L1 lines in use). The attention kernels ask for the K and V
/// rows they read next. With each head's rows contiguous, Minitron's decode at depth
/// 2048 on a Zen 4 ran 8.88-9.62 t/s with these hints on the AVX2 tier and 7.56-8.99
/// without; on the AVX-512 tier, 8.76-10.55 with and 10.04-10.95 without (noise).
#[cfg(x86_simd)]
#[inline(always)]
fn prefetch_row<const HINT: i32>(p: *const f16, hd: usize) {
    use std::arch::x86_64::_mm_prefetch;
    for off in (0..hd).step_by(32) {
        // SAFETY: prefetching is a hint and never faults; the address is only computed.
        unsafe { _mm_prefetch::<HINT>(p.wrapping_add(off).cast()) };
    }
}

/// [`group_scores`] one dot product at a time.
fn group_scores_ref(
    q16: &[f16],
    head_dim: usize,
    k: &[f16],
    kv_stride: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
) {
    for (qh, out) in q16.chunks_exact(head_dim).zip(scores.chunks_exact_mut(len)) {
        for (j, s) in out.iter_mut().enumerate() {
            *s = dot_f16(&k[j * kv_stride..j * kv_stride + head_dim], qh) * scale;
        }
    }
}

/// llama.cpp's merge of the key chunks of one query row, in key order, in f32:
/// `M = max(M, M_c)`, `out = out*expf(M_old - M) + f32(acc_c)*expf(M_c - M)`,
/// `S = S*expf(M_old - M) + S_c*expf(M_c - M)`, and finally `out *= 1/S`.
pub struct SplitMerge {
    max: f32,
    sum: f32,
}

impl SplitMerge {
    /// Starts a merge into `out` (zeroed here).
    pub fn new(out: &mut [f32]) -> SplitMerge {
        out.fill(0.0);
        SplitMerge {
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }

    /// Adds the next chunk's running output and `(max, sum)`; empty chunks add nothing.
    pub fn add(&mut self, out: &mut [f32], acc: &[f16], (chunk_max, chunk_sum): (f32, f32)) {
        if chunk_sum == 0.0 {
            return;
        }
        let new_max = self.max.max(chunk_max);
        let old_weight = (self.max - new_max).exp();
        let chunk_weight = (chunk_max - new_max).exp();
        for (o, a) in out.iter_mut().zip(acc.iter()) {
            *o = merge(*o, old_weight, a.to_f32(), chunk_weight);
        }
        self.sum = merge(self.sum, old_weight, chunk_sum, chunk_weight);
        self.max = new_max;
    }

    /// `out *= 1/S` (nothing when no key was weighed).
    pub fn finish(self, out: &mut [f32]) {
        if self.sum != 0.0 {
            let inv = 1.0 / self.sum;
            for o in out.iter_mut() {
                *o *= inv;
            }
        }
    }
}

/// `a*wa + b*wb` as GCC contracts it in ggml's partial-merge loop: the first
/// product fused, the second rounded (checked against ggml in the golden test).
#[inline(always)]
fn merge(a: f32, wa: f32, b: f32, wb: f32) -> f32 {
    a.mul_add(wa, b * wb)
}

/// The key-chunk length llama.cpp's split decode path uses, or `None` when it takes the
/// single-pass path.
///
/// llama.cpp pads the KV view to a multiple of 256 cells (at least 256, at most the
/// cache size `n_ctx_cells`); a single query row over 512 or more padded cells is split
/// into `n_threads` chunks of `ceil(padded / n_threads)` cells. `n_kv` counts the
/// cells in use including the token being decoded.
pub fn llama_cpp_split_chunk_len(
    n_kv: usize,
    n_ctx_cells: usize,
    n_threads: usize,
) -> Option<usize> {
    let padded = n_kv.div_ceil(256).max(1) * 256;
    let padded = padded.min(n_ctx_cells);
    if padded >= 512 {
        let threads = n_threads.max(1);
        Some(padded.div_ceil(threads))
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------
// SwiGLU, SiLU, softmax
// ---------------------------------------------------------------------------------

/// `ggml_v_expf` of the given flavor, one lane at a time (libm `expf` for
/// [`ExpFlavor::Libm`]).
///
/// Both vector flavors split `x = n*ln2 + b` (n by the 1.5*2^23 rounding trick, ln2 in
/// two parts), evaluate a degree-5 polynomial in `b` with fused multiply-adds, and
/// scale by `2^n`. AVX-512 folds the constant 1 into the polynomial and scales with
/// `scalef` (one rounding); AVX2 builds `k = 2^n` from the exponent bits and returns
/// `k + k*j` in one fma, with special cases for `|n| > 126`.
pub fn expf_flavor(x: f32, flavor: ExpFlavor) -> f32 {
    const SHIFTER: u32 = 0x4b40_0000; // 0x1.8p23
    const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
    const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
    const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
    const C5: u32 = 0x3c07_2010; // 0x1.0e4020p-7
    const C4: u32 = 0x3d2b_9f17; // 0x1.573e2ep-5
    const C3: u32 = 0x3e2a_af33; // 0x1.555e66p-3
    const C2: u32 = 0x3eff_fedb; // 0x1.fffdb6p-2
    const C1: u32 = 0x3f7f_fff6; // 0x1.ffffecp-1
    let c = f32::from_bits;

    if flavor == ExpFlavor::Libm {
        return x.exp();
    }
    let shifter = c(SHIFTER);
    let z = x.mul_add(c(LOG2E), shifter);
    let n = z - shifter;
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    let u = b * b;
    let high = c(C5).mul_add(b, c(C4)).mul_add(u, c(C3).mul_add(b, c(C2)));
    match flavor {
        ExpFlavor::Avx512 => {
            if n.abs() > 192.0 {
                return if n <= 0.0 { 0.0 } else { f32::INFINITY };
            }
            let j = high.mul_add(u, c(C1).mul_add(b, 1.0));
            scalef(j, n as i32)
        }
        _ => {
            let j = high.mul_add(u, c(C1) * b);
            let e = z.to_bits() << 23;
            let k = c(e.wrapping_add(1.0f32.to_bits()));
            if n.abs() <= 126.0 {
                return j.mul_add(k, k);
            }
            let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
            let s1 = c(g.wrapping_add(0x7f00_0000));
            if n.abs() > 192.0 {
                return s1 * s1;
            }
            let s2 = c(e.wrapping_sub(g));
            s2.mul_add(j, s2) * s1
        }
    }
}

/// `j * 2^n` with a single rounding, like `vscalefps`, for `|n| <= 192`.
fn scalef(j: f32, n: i32) -> f32 {
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    if (-126..=127).contains(&n) {
        j * pow2(n)
    } else if n < -126 {
        // j*2^(n+100) stays normal and exact; the second product rounds once.
        (j * pow2(n + 100)) * pow2(-100)
    } else {
        (j * pow2(n - 100)) * pow2(100)
    }
}

/// SiLU of one element as ggml's vector path computes it: `x / (1 + expf(0 - x))`.
#[inline(always)]
fn silu_flavor(x: f32, flavor: ExpFlavor) -> f32 {
    x / (1.0 + expf_flavor(0.0 - x, flavor))
}

/// `gate[i] = silu(gate[i]) * up[i]`, as `ggml_vec_swiglu_f32`: full vector blocks use
/// the target's `ggml_v_expf`, the tail uses libm `expf`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    swiglu_flavor(gate, up, EXP_FLAVOR);
}

/// [`swiglu`] for a given flavor (exposed for tests on other targets' arithmetic).
pub fn swiglu_flavor(gate: &mut [f32], up: &[f32], flavor: ExpFlavor) {
    debug_assert_eq!(gate.len(), up.len());
    let block = flavor.block();
    let vec_end = gate.len() - gate.len() % block;
    // The vector kernel does whole blocks, lane for lane as `silu_flavor`.
    #[cfg(x86_simd)]
    let done = if flavor == ExpFlavor::Avx2 {
        avx2::silu_mul(gate, up)
    } else {
        0
    };
    #[cfg(not(x86_simd))]
    let done = 0;
    for (g, &u) in gate[done..vec_end].iter_mut().zip(&up[done..]) {
        *g = silu_flavor(*g, flavor) * u;
    }
    for (g, &u) in gate[vec_end..].iter_mut().zip(&up[vec_end..]) {
        *g = silu_flavor(*g, ExpFlavor::Libm) * u;
    }
}

/// In-place softmax as ggml's SOFT_MAX op computes one row: the max (first-wins
/// `>` scan), `expf(x - max)` per vector block with each block's horizontal f32 sum
/// added to an f64 total (tail: libm `expf`, added one by one), then a multiply by
/// `f32(1.0 / total)`.
pub fn softmax(x: &mut [f32]) {
    softmax_flavor(x, EXP_FLAVOR);
}

/// [`softmax`] for a given flavor.
pub fn softmax_flavor(x: &mut [f32], flavor: ExpFlavor) {
    if x.is_empty() {
        return;
    }
    let max = x
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if m > v { m } else { v });
    let block = flavor.block();
    let vec_end = x.len() - x.len() % block;
    let mut total = 0f64;
    if flavor != ExpFlavor::Libm {
        for chunk in x[..vec_end].chunks_exact_mut(block) {
            for v in chunk.iter_mut() {
                *v = expf_flavor(*v - max, flavor);
            }
            total += reduce_lanes_softmax(chunk) as f64;
        }
    }
    let tail_start = if flavor == ExpFlavor::Libm {
        0
    } else {
        vec_end
    };
    for v in x[tail_start..].iter_mut() {
        *v = (*v - max).exp();
        total += *v as f64;
    }
    let inv = (1.0 / total) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}
