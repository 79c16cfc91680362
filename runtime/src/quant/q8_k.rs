//! Q8_K: the activation format every K-quant and IQ weight type is dotted with.
//!
//! Layout of one block of `QK_K = 256` activations (292 bytes, 9.125 bits per value):
//!
//! ```text
//! d      f32          scale: x ≈ d * q
//! qs     [i8; 256]    quants, in -127..=127
//! bsums  [i16; 16]    sum of qs over each group of 16, so the weight formats can apply
//!                     per-sub-block minimums/offsets without touching qs again
//! ```
//!
//! Quantization: `max` is the value of largest magnitude (the first one, when several
//! share it); `iscale = -127 / max`, `q = min(127, round_half_even(iscale * x))` and
//! `d = 1 / iscale`. The scale is negative when `max` is positive: the value with the
//! largest magnitude always maps to `-127`, so the quants never reach `-128` and a sign
//! flip of a quant (the IQ formats' sign bits) stays in range. A block of zeros gets
//! `d = 0` and zero quants.

use super::ActType;

/// Values per K-quant super-block (and per Q8_K block).
pub const QK_K: usize = 256;

/// One Q8_K block: 256 activations.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    /// Scale, `x ≈ d * q`.
    pub d: f32,
    /// Quants, in `-127..=127`.
    pub qs: [i8; QK_K],
    /// `bsums[g] = Σ qs[16g .. 16g + 16]`.
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 4 + QK_K + 2 * (QK_K / 16));

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// Marker for the Q8_K activation format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q8_K;

/// Scale and inverse scale of a block from its value of largest magnitude `max`
/// (`max != 0`): `(iscale, d)` with `iscale = -127 / max`, `d = 1 / iscale`.
#[inline(always)]
pub(crate) fn q8k_scales(max: f32) -> (f32, f32) {
    let iscale = -127.0 / max;
    (iscale, 1.0 / iscale)
}

/// Quantizes one block of 256 values (scalar reference).
pub fn quantize_block_ref(x: &[f32; QK_K]) -> BlockQ8K {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut out = BlockQ8K::default();
    if amax == 0.0 {
        return out;
    }
    let (iscale, d) = q8k_scales(max);
    for (q, &v) in out.qs.iter_mut().zip(x) {
        // |iscale * v| <= 127 up to one rounding, so only the top needs a clamp.
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (s, group) in out.bsums.iter_mut().zip(out.qs.chunks_exact(16)) {
        *s = group.iter().map(|&q| q as i16).sum();
    }
    out.d = d;
    out
}

impl ActType for Q8_K {
    const NAME: &'static str = "Q8_K";
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockQ8K;

    fn quantize_ref(x: &[f32], out: &mut [BlockQ8K]) {
        debug_assert_eq!(x.len(), out.len() * QK_K);
        for (block, chunk) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            *block = quantize_block_ref(chunk.try_into().expect("chunks_exact gives QK_K"));
        }
    }

    fn dequantize_ref(blocks: &[BlockQ8K], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (block, chunk) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            for (y, &q) in chunk.iter_mut().zip(&block.qs) {
                *y = block.d * q as f32;
            }
        }
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn quantize(x: &[f32], out: &mut [BlockQ8K]) {
        super::x86_avx2::kquants::quantize_q8_k(x, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing::activations;

    fn both(x: &[f32]) -> Vec<BlockQ8K> {
        let mut r = vec![BlockQ8K::default(); x.len() / QK_K];
        let mut f = r.clone();
        Q8_K::quantize_ref(x, &mut r);
        Q8_K::quantize(x, &mut f);
        // The fast path uses the same scale arithmetic, so it must agree exactly.
        assert_eq!(r, f, "quantize vs quantize_ref");
        r
    }

    /// Independent restatement of the formula in f64 for one value (exact here: the
    /// product `iscale * x` is computed in f32 first, as the format defines).
    fn expect_q(iscale: f32, v: f32) -> i8 {
        let p = (iscale * v) as f64;
        let r = p.round();
        // halfway cases go to the even neighbour
        let r = if (p - p.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
            r - p.signum()
        } else {
            r
        };
        r.min(127.0) as i8
    }

    /// ggml's `quantize_row_q8_K` output, recorded by `scripts/kquant_matvec_golden.c`
    /// on inputs with a zero block, equal magnitudes of both signs and halfway values.
    #[test]
    fn bit_exact_with_ggml() {
        let path = format!(
            "{}/src/quant/golden_matvec/Q8_K.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let n = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let x: Vec<f32> = bytes[4..4 + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let want = &bytes[4 + 4 * n..];
        assert_eq!(
            want.len(),
            n / QK_K * std::mem::size_of::<BlockQ8K>(),
            "{path}: size"
        );
        for (bi, block) in both(&x).iter().enumerate() {
            // SAFETY: BlockQ8K is repr(C) without padding (size asserted), so its bytes
            // are its fields' bytes.
            let got: &[u8] = unsafe {
                std::slice::from_raw_parts(
                    (block as *const BlockQ8K).cast(),
                    std::mem::size_of::<BlockQ8K>(),
                )
            };
            let size = got.len();
            assert_eq!(got, &want[bi * size..(bi + 1) * size], "block {bi}");
        }
    }

    #[test]
    fn zeros_give_zero_block() {
        let b = both(&[0.0; QK_K]);
        assert_eq!(b[0], BlockQ8K::default());
        let mut neg_zero = [0.0f32; QK_K];
        neg_zero[7] = -0.0;
        assert_eq!(both(&neg_zero)[0], BlockQ8K::default());
    }

    #[test]
    fn largest_magnitude_maps_to_minus_127() {
        for &sign in &[1.0f32, -1.0] {
            let mut x = activations(QK_K, 3);
            x[100] = 50.0 * sign; // an outlier
            let b = both(&x)[0];
            assert_eq!(b.qs[100], -127);
            assert_eq!(b.d, 1.0 / (-127.0 / x[100]));
            assert!(b.qs.iter().all(|&q| q > -128));
            let iscale = -127.0 / x[100];
            for (i, (&q, &v)) in b.qs.iter().zip(&x).enumerate() {
                assert_eq!(q, expect_q(iscale, v), "value {i}");
            }
        }
    }

    #[test]
    fn first_of_equal_magnitudes_sets_the_sign() {
        let mut x = [0.0f32; QK_K];
        x[3] = -2.0;
        x[200] = 2.0;
        let b = both(&x)[0];
        // max is x[3] = -2, so iscale = 63.5 and d = 1 / 63.5
        assert_eq!(b.d, 1.0 / 63.5);
        assert_eq!((b.qs[3], b.qs[200]), (-127, 127));
        x[3] = 2.0;
        x[200] = -2.0;
        let b = both(&x)[0];
        assert_eq!(b.d, -1.0 / 63.5);
        assert_eq!((b.qs[3], b.qs[200]), (-127, 127));
    }

    #[test]
    fn ties_round_to_even() {
        // max = -127 gives iscale = 1 exactly, so iscale * x is x itself.
        let mut x = [0.0f32; QK_K];
        x[0] = -127.0;
        let halves = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -3.51];
        x[1..1 + halves.len()].copy_from_slice(&halves);
        let b = both(&x)[0];
        assert_eq!(b.d, 1.0);
        assert_eq!(&b.qs[1..1 + halves.len()], &[0, 2, 2, 0, -2, -2, 3, -4]);
    }

    #[test]
    fn non_finite_input_gives_the_same_blocks_on_both_paths() {
        let mut x = activations(4 * QK_K, 2);
        x[10] = f32::NAN; // block 0: NaN among ordinary values
        x[QK_K + 255] = f32::NAN; // block 1: NaN in the last lane group
        x[2 * QK_K + 3] = f32::INFINITY; // block 2: an infinity
        x[3 * QK_K + 7] = f32::NEG_INFINITY;
        let blocks = both(&x);
        // an infinite maximum gives iscale = -0: every quant rounds to zero
        assert!(blocks[2].qs.iter().all(|&q| q == 0));
    }

    #[test]
    fn bsums_are_group_sums() {
        let x = activations(4 * QK_K, 11);
        for b in both(&x) {
            for g in 0..16 {
                let s: i32 = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i32).sum();
                assert_eq!(b.bsums[g] as i32, s);
            }
        }
    }

    #[test]
    fn random_blocks_follow_the_formula() {
        let x = activations(64 * QK_K, 5);
        for (b, chunk) in both(&x).iter().zip(x.chunks_exact(QK_K)) {
            let (mut max, mut amax) = (0f32, 0f32);
            for &v in chunk {
                if v.abs() > amax {
                    (max, amax) = (v, v.abs());
                }
            }
            let iscale = -127.0 / max;
            assert_eq!(b.d, 1.0 / iscale);
            for (&q, &v) in b.qs.iter().zip(chunk) {
                assert_eq!(q, expect_q(iscale, v));
                // error bound: half a step
                assert!(((b.d * q as f32) - v).abs() <= 0.5001 * b.d.abs());
            }
        }
    }
}
