//! F16: IEEE half floats, one "block" per weight (16 bits per weight). Activations are
//! rounded to f16 (nearest even) before the dot, as ggml does for F16 weights, so each
//! product of two f16 is exact in f32 and only the summation rounds.

use crate::float16::f16;

use super::{check_quantize_lengths, ActType, Quantize, WeightType};

/// Marker for the F16 format (ggml type 1), as weights and as activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct F16;

impl ActType for F16 {
    const NAME: &'static str = "F16";
    const BLOCK_ELEMS: usize = 1;
    type Block = f16;

    fn quantize_ref(x: &[f32], out: &mut [f16]) {
        assert_eq!(x.len(), out.len(), "F16 quantize: length");
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f16::from_f32(v);
        }
    }

    fn dequantize_ref(blocks: &[f16], out: &mut [f32]) {
        assert_eq!(out.len(), blocks.len(), "F16 dequantize: length");
        for (o, v) in out.iter_mut().zip(blocks) {
            *o = v.to_f32();
        }
    }

    /// Rounded to nearest even (F16C where the tier has it).
    fn quantize(x: &[f32], out: &mut [f16]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f16::from_f32(v);
        }
    }
}

/// Scalar dot: the exact f32 products summed in f64, then rounded once to f32.
pub fn vec_dot_f16_f16_ref(row: &[f16], act: &[f16]) -> f32 {
    assert_eq!(row.len(), act.len(), "F16 vec_dot: length");
    row.iter()
        .zip(act)
        .map(|(w, a)| (w.to_f32() * a.to_f32()) as f64)
        .sum::<f64>() as f32
}

impl WeightType for F16 {
    const NAME: &'static str = "F16";
    const GGML_ID: u32 = 1;
    const BLOCK_ELEMS: usize = 1;
    type Block = f16;
    type Act = F16;

    fn dequantize_ref(blocks: &[f16], out: &mut [f32]) {
        <F16 as ActType>::dequantize_ref(blocks, out);
    }

    fn vec_dot_ref(row: &[f16], act: &[f16]) -> f32 {
        vec_dot_f16_f16_ref(row, act)
    }

    /// ggml's `ggml_vec_dot_f16` for this tier ([`crate::ops::dot_f16`], which the
    /// attention's Q·K takes too), as llama.cpp computes a one-token matvec.
    #[inline(always)]
    fn vec_dot(row: &[f16], act: &[f16]) -> f32 {
        crate::ops::dot_f16(row, act)
    }

    /// llama.cpp sends every batch of two or more tokens through llamafile's tinyBLAS
    /// GEMM on the SIMD tiers (its portable build has no tinyBLAS for F16).
    #[inline(always)]
    fn batched(n_tokens: usize) -> bool {
        SGEMM_LANES > 0 && n_tokens >= 2
    }

    /// tinyBLAS's dots ([`sgemm_dot_ref`]) when the row is a whole number of its vectors;
    /// otherwise tinyBLAS declines and ggml takes its one-token dot per token.
    fn batch_row_dots(
        row: &[f16],
        act: &[f16],
        act_row: usize,
        tokens: std::ops::Range<usize>,
        _n_tokens: usize,
        out: &mut [f32],
    ) {
        let token = |t: usize| &act[t * act_row..t * act_row + row.len()];
        if SGEMM_LANES == 0 || !row.len().is_multiple_of(SGEMM_LANES) {
            for (o, t) in out.iter_mut().zip(tokens) {
                *o = Self::vec_dot(row, token(t));
            }
            return;
        }
        sgemm_dots(row, act, act_row, tokens, out);
    }
}

/// Lanes of llamafile's tinyBLAS F16 GEMM in llama.cpp's build for this tier: 16 with
/// AVX-512, 8 with AVX2 and F16C, none in the portable build.
const SGEMM_LANES: usize = if cfg!(all(target_arch = "x86_64", target_feature = "avx512f")) {
    16
} else if cfg!(x86_simd) {
    8
} else {
    0
};

/// One dot of llamafile's tinyBLAS GEMM (`gemm_bloc`, F16 × F16 → F32), as llama.cpp
/// computes every (row, token) of a batch: `lanes` f32 accumulators, lane `l` taking the
/// products at `l, l + lanes, ...` in order with FMA (a product of two f16 is exact in
/// f32, so each FMA rounds like an add), then its `hsum` tree
/// ([`crate::ops::reduce_lanes_softmax`]). `row.len()` is a multiple of `lanes`.
pub fn sgemm_dot_ref(row: &[f16], act: &[f16], lanes: usize) -> f32 {
    let mut acc = [0f32; 16];
    for (w, a) in row.chunks_exact(lanes).zip(act.chunks_exact(lanes)) {
        for ((s, w), a) in acc.iter_mut().zip(w).zip(a) {
            *s += w.to_f32() * a.to_f32();
        }
    }
    crate::ops::reduce_lanes_softmax(&acc[..lanes])
}

/// [`sgemm_dot_ref`] of `row` with tokens `tokens` (token `t`'s activations at
/// `act[t * act_row..]`), four tokens' accumulators side by side, in vector registers
/// where the tier has them.
fn sgemm_dots(
    row: &[f16],
    act: &[f16],
    act_row: usize,
    tokens: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let k = row.len();
    let token = |t: usize| &act[t * act_row..t * act_row + k];
    let mut t = tokens.start;
    let mut o = 0;
    while t + 4 <= tokens.end {
        let acts = [token(t), token(t + 1), token(t + 2), token(t + 3)];
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
        let dots = super::x86_avx2::legacy::sgemm_dots4_w16(row, acts);
        #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
        let dots = super::x86_avx2::legacy::sgemm_dots4_w8(row, acts);
        #[cfg(not(x86_simd))]
        let dots = acts.map(|a| sgemm_dot_ref(row, a, SGEMM_LANES));
        out[o..o + 4].copy_from_slice(&dots);
        (t, o) = (t + 4, o + 4);
    }
    for t in t..tokens.end {
        out[o] = sgemm_dot_ref(row, token(t), SGEMM_LANES);
        o += 1;
    }
}

/// ggml's model-file conversion to F16: each value rounded to nearest even, overflowing
/// to infinity, a NaN becoming the quiet NaN `sign | 0x7e00` (ggml converts in software;
/// the importance vector has no use here).
impl Quantize for F16 {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [f16]) {
        check_quantize_lengths::<F16>(x, imatrix, out);
        for (o, &v) in out.iter_mut().zip(x) {
            *o = super::quantize::ggml_f16(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // widening f16 -> f32 is exact
        testing::check_dequantize::<F16>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Products are exact; the SIMD dot sums 2048 of them in f32 over 32 lanes (64
        // sequential adds per lane, then 5 levels), so the error stays below
        // ~70 * 2^-24 ≈ 4e-6 of sum |w a|; the scalar one rounds once.
        testing::check_vec_dot::<F16>(1e-5);
    }

    #[test]
    fn tail_and_rounding() {
        // 35 values: one SIMD step and a 3-value tail
        let w: Vec<f16> = (0..35)
            .map(|i| f16::from_f32(i as f32 * 0.25 - 4.0))
            .collect();
        let x: Vec<f32> = (0..35).map(|i| 1.0 + i as f32 * 1e-4).collect();
        let mut a = vec![f16::ZERO; 35];
        F16::quantize(&x, &mut a);
        let mut a_ref = a.clone();
        F16::quantize_ref(&x, &mut a_ref);
        assert_eq!(a, a_ref);
        let want: f64 = w.iter().zip(&a).map(|(w, a)| w.to_f64() * a.to_f64()).sum();
        assert!((F16::vec_dot(&w, &a) as f64 - want).abs() < 1e-5 * 300.0);
        assert_eq!(F16::vec_dot_ref(&w, &a), want as f32);
    }

    #[test]
    fn batch_dots_are_tinyblas_dots() {
        // Values spanning many binades, so that any change of summation order shows.
        let k = 576;
        let val = |i: usize| {
            f16::from_f32(((i * 7919 % 1013) as f32 - 506.0) * 1.37f32.powi((i % 23) as i32 - 11))
        };
        let row: Vec<f16> = (0..k).map(val).collect();
        let n = 7;
        let act: Vec<f16> = (0..n * k).map(|i| val(i * 31 + 5)).collect();
        if !F16::batched(n) {
            return; // the portable build has no tinyBLAS
        }
        let mut out = vec![0f32; n];
        F16::batch_row_dots(&row, &act, k, 0..n, n, &mut out);
        for (t, &o) in out.iter().enumerate() {
            let want = sgemm_dot_ref(&row, &act[t * k..(t + 1) * k], SGEMM_LANES);
            assert_eq!(o.to_bits(), want.to_bits(), "token {t}: {o} vs {want}");
        }
        // A width tinyBLAS declines takes the one-token dot.
        let short = &row[..k - 4];
        let acts: Vec<f16> = (0..n)
            .flat_map(|t| act[t * k..t * k + k - 4].to_vec())
            .collect();
        F16::batch_row_dots(short, &acts, k - 4, 1..3, n, &mut out[..2]);
        assert_eq!(
            out[0].to_bits(),
            F16::vec_dot(short, &acts[k - 4..2 * (k - 4)]).to_bits()
        );
    }

    #[test]
    fn model_file_conversion_is_ggmls() {
        // Ties to even, overflow to infinity, NaN to the quiet NaN without payload.
        let x = [
            1.0 + 1.0 / 2048.0,
            70000.0,
            f32::from_bits(0xffc1_2345),
            -0.0,
        ];
        let mut out = [f16::ZERO; 4];
        <F16 as Quantize>::quantize_row(&x, None, &mut out);
        let bits: Vec<u16> = out.iter().map(|h| h.to_bits()).collect();
        assert_eq!(bits, [0x3c00, 0x7c00, 0xfe00, 0x8000]);
    }
}
