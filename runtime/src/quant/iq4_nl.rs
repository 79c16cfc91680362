//! IQ4_NL: 4.5 bits per weight. Blocks of 32 weights, each a 4-bit index into 16
//! non-linear levels ([`KVALUES_IQ4NL`], denser near zero) times one f16 scale.
//! Dotted with Q8_0 activations (same block size), as ggml does.
//!
//! Layout of one block of 32 weights (18 bytes):
//!
//! ```text
//! d    f16       block scale
//! qs   [u8; 16]  byte i: low nibble = index of weight i, high nibble = weight i + 16
//! ```
//!
//! Weight `i`: `d * KVALUES_IQ4NL[index_i]`. The dot product with Q8_0 sums
//! `Σ level * q8` in integers per block and adds `(d_w * d_a) * sum` in f32 with one fused
//! multiply-add per block, in block order (llama.cpp's repacked kernels round this way).

use crate::float16::f16;

use super::iq_grids::KVALUES_IQ4NL;
use super::q4_0::pack_nibbles;
use super::q8_0::{BlockQ8_0, Q8_0, QK8_0};
use super::quantize::{best_index_int8, ggml_f16, GROUP_MAX_EPS};
use super::{check_quantize_lengths, Quantize, WeightType};

/// Weights per IQ4_NL block.
pub const QK4_NL: usize = 32;

/// One IQ4_NL block of 32 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ4NL {
    /// Block scale.
    pub d: f16,
    /// Two 4-bit level indices per byte: weight `i` low, weight `i + 16` high.
    pub qs: [u8; QK4_NL / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 2 + QK4_NL / 2);
const _: () = assert!(QK4_NL == QK8_0);

/// Marker for the IQ4_NL weight format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ4_NL;

/// Integer dot of the 32 levels that `qs` indexes with 32 quants.
#[inline(always)]
pub(crate) fn levels_dot(qs: &[u8; 16], q8: &[i8]) -> i32 {
    let mut sum = 0i32;
    for (i, &b) in qs.iter().enumerate() {
        sum += KVALUES_IQ4NL[(b & 0xf) as usize] as i32 * q8[i] as i32;
        sum += KVALUES_IQ4NL[(b >> 4) as usize] as i32 * q8[i + 16] as i32;
    }
    sum
}

impl WeightType for IQ4_NL {
    const NAME: &'static str = "IQ4_NL";
    const GGML_ID: u32 = 20;
    const BLOCK_ELEMS: usize = QK4_NL;
    type Block = BlockIQ4NL;
    type Act = Q8_0;

    fn dequantize_ref(blocks: &[BlockIQ4NL], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK4_NL);
        for (block, y) in blocks.iter().zip(out.chunks_exact_mut(QK4_NL)) {
            let d = block.d.to_f32();
            let (lo, hi) = y.split_at_mut(QK4_NL / 2);
            for ((&b, lo), hi) in block.qs.iter().zip(lo).zip(hi) {
                *lo = d * KVALUES_IQ4NL[(b & 0xf) as usize] as f32;
                *hi = d * KVALUES_IQ4NL[(b >> 4) as usize] as f32;
            }
        }
    }

    fn vec_dot_ref(row: &[BlockIQ4NL], act: &[BlockQ8_0]) -> f32 {
        debug_assert_eq!(row.len(), act.len());
        // One fused multiply-add per block, as llama.cpp's repacked kernels (see the
        // AVX2 dot): the same bits as the fast path.
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let d = block.d.to_f32() * a.d.to_f32();
            sum = (levels_dot(&block.qs, &a.qs) as f32).mul_add(d, sum);
        }
        sum
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ4NL], act: &[BlockQ8_0]) -> f32 {
        super::x86_avx2::tiles::vec_dot_iq4_nl_q8_0(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_rows(w: &[BlockIQ4NL], act: &[BlockQ8_0], out: &mut [f32]) {
        super::x86_avx2::tiles::rows_iq4_nl_q8_0(w, act, out)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_tile(
        w: &[BlockIQ4NL],
        act: &[BlockQ8_0],
        stride: usize,
        out: &mut [[f32; super::TILE]; super::TILE],
    ) {
        super::x86_avx2::tiles::tile_iq4_nl_q8_0(w, act, stride, out)
    }
}

/// The weight of each value of a super-block `x` in the IQ4 searches:
/// `imatrix[i] * sqrt(sigma2 + x_i²)` with `sigma2` twice the super-block's mean square,
/// or `x_i²` without an importance matrix.
pub(crate) fn iq4_weights(x: &[f32], imatrix: Option<&[f32]>, out: &mut [f32]) {
    let mut sigma2 = 0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / x.len() as f32;
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        *o = match imatrix {
            Some(qw) => qw[i] * (sigma2 + v * v).sqrt(),
            None => v * v,
        };
    }
}

/// The scale of a block of 32 for the IQ4 levels that minimises `Σ w (x - d level)²`, and
/// its level indices in `idx`; 0, with `idx` untouched, when the block's largest
/// magnitude is below [`GROUP_MAX_EPS`].
///
/// The first candidate maps the value of largest magnitude to the level `-127`; for its
/// indices the best scale is `Σ w level x / Σ w level²`. 15 more inverse scales,
/// `(k - 127) / max` for `k = -7..=7`, give other indices; one whose
/// `(Σ w level x)² / Σ w level²` beats the best so far takes over (its indices are not
/// kept: the caller rounds again against the final scale).
pub(crate) fn iq4_block_scale(x: &[f32], weights: &[f32], idx: &mut [u8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let levels = &KVALUES_IQ4NL;
    // Σ w level x and Σ w level² of the indices an inverse scale gives
    let sums = |id: f32, mut idx: Option<&mut [u8]>| {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for (j, (&v, &w)) in x.iter().zip(weights).enumerate() {
            let l = best_index_int8(levels, id * v);
            if let Some(idx) = idx.as_deref_mut() {
                idx[j] = l as u8;
            }
            let q = levels[l] as f32;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let d = -max / levels[0] as f32;
    let (sumqx, sumq2) = sums(1.0 / d, Some(idx));
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for k in -7..=7 {
        let (sumqx, sumq2) = sums((k + levels[0] as i32) as f32 / max, None);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

impl Quantize for IQ4_NL {
    /// Per block: the scale of `iq4_block_scale` (weights of `iq4_weights`), stored
    /// as f16, and each weight's nearest level against that (unrounded) scale. This is
    /// what `ggml_quantize_chunk` does with and without an importance matrix; ggml's
    /// `quantize_row_iq4_nl_ref`, which skips the candidate scales, is not used to write
    /// model files.
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockIQ4NL]) {
        check_quantize_lengths::<IQ4_NL>(x, imatrix, out);
        let mut weights = [0f32; QK4_NL];
        let mut idx = [0u8; QK4_NL];
        for (ib, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK4_NL)).enumerate() {
            let qw = imatrix.map(|m| &m[QK4_NL * ib..QK4_NL * (ib + 1)]);
            iq4_weights(xb, qw, &mut weights);
            let d = iq4_block_scale(xb, &weights, &mut idx);
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (i, &v) in idx.iter_mut().zip(xb) {
                *i = best_index_int8(&KVALUES_IQ4NL, id * v) as u8;
            }
            *b = BlockIQ4NL {
                d: ggml_f16(d),
                qs: pack_nibbles(&idx),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{IQ4_NL, QK4_NL};
    use crate::quant::q8_0::{BlockQ8_0, Q8_0};
    use crate::quant::{iq_golden_dot, testing, ActType, WeightType};

    #[test]
    fn dequantize_matches_gguf_py() {
        // One f32 product d * level, exact (11 + 7 significant bits), as in gguf-py.
        testing::check_dequantize::<IQ4_NL>(0);
    }

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<IQ4_NL>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<IQ4_NL>(16);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Per block: exact integer sum (|sum| <= 32 * 127 * 127 < 2^24, so exact in f32),
        // d_w * d_a (both f16, exact in f32), rounded once: u. Then a sequential fused sum
        // over 64 blocks: up to 63u relative to Σ |w a|. Plus u from the reference's own
        // d_a * q. About 65u ≈ 4e-6.
        testing::check_vec_dot::<IQ4_NL>(5e-6);
    }

    #[test]
    fn vec_dot_bit_exact_with_llama_cpp_repacked() {
        // llama.cpp's default path for IQ4_NL on AVX2 CPUs (the 8-row repacked kernels,
        // for every batch size): `golden_matvec/IQ4_NL.bin`, from
        // scripts/legacy_matvec_golden.c. Both our dots, bit for bit.
        let g = testing::llama_cpp_golden::<IQ4_NL>();
        assert!(g.repacked, "the golden was not made on the repacked path");
        let blocks = g.cols / QK4_NL;
        let check = |x: &[f32], want: &[f32], what: &str| {
            let mut act = vec![BlockQ8_0::default(); blocks];
            <Q8_0 as ActType>::quantize(x, &mut act);
            for (r, (row, &w)) in g.weights.chunks_exact(blocks).zip(want).enumerate() {
                for (kind, got) in [
                    ("fast", IQ4_NL::vec_dot(row, &act)),
                    ("scalar", IQ4_NL::vec_dot_ref(row, &act)),
                ] {
                    assert_eq!(
                        got.to_bits(),
                        w.to_bits(),
                        "{what} row {r}: {kind} dot {got} vs llama.cpp {w}"
                    );
                }
            }
        };
        for (k, (x, _, y_repack)) in g.matvecs.iter().enumerate() {
            check(x, y_repack, &format!("vector {k}"));
        }
        let (n_tokens, x, y) = &g.matmul;
        for t in 0..*n_tokens {
            let (xt, yt) = (&x[t * g.cols..][..g.cols], &y[t * g.rows..][..g.rows]);
            check(xt, yt, &format!("{n_tokens}-token batch, token {t}"));
        }
    }

    #[test]
    fn vec_dot_equals_scalar_at_every_length() {
        // The AVX2 dot takes four blocks at a time and the rest one by one; both must keep
        // the scalar reference's float sequence exactly, for every row length.
        let g = testing::llama_cpp_golden::<IQ4_NL>();
        let blocks = g.cols / QK4_NL;
        let mut act = vec![BlockQ8_0::default(); blocks];
        <Q8_0 as ActType>::quantize(&g.matvecs[0].0, &mut act);
        for row in g.weights.chunks_exact(blocks).take(4) {
            for n in 1..=blocks {
                let (fast, scalar) = (
                    IQ4_NL::vec_dot(&row[..n], &act[..n]),
                    IQ4_NL::vec_dot_ref(&row[..n], &act[..n]),
                );
                assert_eq!(
                    fast.to_bits(),
                    scalar.to_bits(),
                    "{n} blocks: {fast} vs {scalar}"
                );
            }
        }
    }

    #[test]
    fn vec_dot_near_ggml_plain_vec_dot() {
        // ggml's own `vec_dot` (what llama.cpp uses for IQ4_NL tensors it does not repack:
        // row counts that are not a multiple of 8) sums 8 lanes per block instead: within
        // the limit derived above, on golden_dot's blocks and golden_matvec's plain path.
        let dots = iq_golden_dot::load::<IQ4_NL>();
        let g = testing::llama_cpp_golden::<IQ4_NL>();
        let blocks = g.cols / QK4_NL;
        let mut cases = Vec::new();
        for (act, want) in &dots.acts {
            cases.push((dots.row.clone(), act.clone(), *want));
        }
        for (x, y_plain, _) in &g.matvecs {
            let mut act = vec![BlockQ8_0::default(); blocks];
            <Q8_0 as ActType>::quantize(x, &mut act);
            for (row, &want) in g.weights.chunks_exact(blocks).zip(y_plain) {
                cases.push((row.to_vec(), act.clone(), want));
            }
        }
        for (k, (row, act, want)) in cases.iter().enumerate() {
            let mut w = vec![0f32; row.len() * QK4_NL];
            let mut a = vec![0f32; w.len()];
            IQ4_NL::dequantize_ref(row, &mut w);
            <Q8_0 as ActType>::dequantize_ref(act, &mut a);
            let scale: f64 = w
                .iter()
                .zip(&a)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            for got in [IQ4_NL::vec_dot(row, act), IQ4_NL::vec_dot_ref(row, act)] {
                let err = (got as f64 - *want as f64).abs() / scale;
                assert!(
                    err <= 5e-6,
                    "case {k}: {got} vs ggml vec_dot {want}: {err:e}"
                );
            }
        }
    }
}
