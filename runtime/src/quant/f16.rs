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

    /// Batches through [`gemm`]: register tiles of tinyBLAS's dots.
    const GEMM: Option<super::Gemm<Self>> = if SGEMM_LANES > 0 { Some(gemm) } else { None };
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

/// A prompt batch (2 or more tokens) as llama.cpp computes it: tinyBLAS's dots, in the
/// SIMD tiers' register-tiled kernel; rows that are not a whole number of its vectors
/// take ggml's one-token dot per token, as llama.cpp does when tinyBLAS declines them.
fn gemm(pool: &crate::pool::Pool, w: &[f16], act: &[f16], n_tokens: usize, out: &mut [f32]) {
    let k = act.len() / n_tokens;
    #[cfg(x86_simd)]
    if k.is_multiple_of(SGEMM_LANES) {
        return super::x86_avx2::f16_gemm::gemm(pool, w, act, n_tokens, out);
    }
    let rows = out.len() / n_tokens;
    for (r, row) in w.chunks_exact(k).enumerate() {
        for t in 0..n_tokens {
            out[t * rows + r] = F16::vec_dot(row, &act[t * k..(t + 1) * k]);
        }
    }
    let _ = pool;
}

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
    fn batches_are_tinyblas_dots_and_fall_back_where_it_declines() {
        let val = |i: usize| {
            f16::from_f32(((i * 7919 % 1013) as f32 - 506.0) * 1.37f32.powi((i % 23) as i32 - 11))
        };
        let pool = crate::pool::Pool::new(2);
        let gemm = F16::GEMM.unwrap_or(|_, _, _, _, _| {});
        if F16::GEMM.is_none() {
            return; // the portable build has no tinyBLAS: the generic tiles
        }
        // 576 wide (tinyBLAS), and 572 (not a whole number of its vectors: ggml's dot).
        for k in [576, 572] {
            let (rows, n) = (5, 7);
            let w: Vec<f16> = (0..rows * k).map(val).collect();
            let act: Vec<f16> = (0..n * k).map(|i| val(i * 31 + 5)).collect();
            let mut out = vec![f32::NAN; n * rows];
            gemm(&pool, &w, &act, n, &mut out);
            for t in 0..n {
                for r in 0..rows {
                    let (row, a) = (&w[r * k..][..k], &act[t * k..][..k]);
                    let want = match k % SGEMM_LANES {
                        0 => sgemm_dot_ref(row, a, SGEMM_LANES),
                        _ => F16::vec_dot(row, a),
                    };
                    assert_eq!(
                        out[t * rows + r].to_bits(),
                        want.to_bits(),
                        "k {k} r {r} t {t}"
                    );
                }
            }
        }
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
