//! Q8_0: blocks of 32 signed bytes with one f16 scale (8.5 bits per weight).
//!
//! The same block serves as weights (type id 8) and as the activation format that Q4_0,
//! Q5_0 and Q8_0 weights are dotted with, so a block dot product is one integer sum
//! scaled once by `d_w * d_a`.

use crate::float16::f16;

use super::quantize::{c_float_to_int, ggml_f16};
use super::{check_quantize_lengths, ActType, Quantize, WeightType};

/// Values per Q8_0 block.
pub const QK8_0: usize = 32;

/// One Q8_0 block: `x[i] = d * qs[i]`.
///
/// Layout (34 bytes): `d: f16` then `qs: [i8; 32]`, values in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Marker for the Q8_0 format (ggml type 8).
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q8_0;

/// Scale and quants of one block of 32 activations, as ggml's x86 CPU path makes them
/// for every matmul input (not the model-file quantizer):
///
/// - `amax = max |x_i|`, `d = amax / 127` (stored as f16, rounded to nearest even);
/// - `q_i = round_ties_even(x_i * (127 / amax))`, with the multiplier `0` when `amax == 0`.
///
/// The multiplier is `127 / amax` computed directly (not `1 / d`) and ties go to even;
/// both decide the last bit of a few quants, and with them the exact sums llama.cpp
/// computes on this CPU. `|x_i * 127 / amax| <= 127` after rounding, so no clamp is needed.
/// A NaN product (a NaN input, or any input of a block holding an infinity) gives -128,
/// the x86 conversion's "integer indefinite" that ggml's quantizer stores too. (Which
/// scale a block with a NaN gets depends on where the NaN sits in the SIMD max tree;
/// such blocks are garbage either way.)
#[inline(always)]
pub(crate) fn quantize_block_q8(x: &[f32], qs: &mut [i8; 32]) -> f32 {
    debug_assert_eq!(x.len(), 32);
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let mul = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        let r = (v * mul).round_ties_even();
        *q = if r.is_nan() { i8::MIN } else { r as i8 };
    }
    d
}

impl ActType for Q8_0 {
    const NAME: &'static str = "Q8_0";
    const BLOCK_ELEMS: usize = QK8_0;
    type Block = BlockQ8_0;

    fn quantize_ref(x: &[f32], out: &mut [BlockQ8_0]) {
        assert_eq!(x.len(), out.len() * QK8_0, "Q8_0 quantize: length");
        for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK8_0)) {
            let d = quantize_block_q8(xs, &mut block.qs);
            block.d = f16::from_f32(d);
        }
    }

    fn dequantize_ref(blocks: &[BlockQ8_0], out: &mut [f32]) {
        dequantize(blocks, out);
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn quantize(x: &[f32], out: &mut [BlockQ8_0]) {
        super::x86_avx2::legacy::quantize_q8_0(x, out)
    }
}

fn dequantize(blocks: &[BlockQ8_0], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * QK8_0, "Q8_0 dequantize: length");
    for (block, ys) in blocks.iter().zip(out.chunks_exact_mut(QK8_0)) {
        let d = block.d.to_f32();
        for (y, &q) in ys.iter_mut().zip(&block.qs) {
            *y = d * q as f32;
        }
    }
}

/// `sum_i q_w[i] * q_a[i]` over one block pair; `|sum| <= 32 * 128 * 127`, exact in i32.
#[inline(always)]
fn block_sumi(w: &BlockQ8_0, a: &BlockQ8_0) -> i32 {
    w.qs.iter()
        .zip(&a.qs)
        .map(|(&x, &y)| x as i32 * y as i32)
        .sum()
}

/// Scalar dot of a Q8_0 row with Q8_0 activations: per block the integer sum, scaled by
/// the f32 product of the two f16 scales, accumulated in f32 in block order.
pub fn vec_dot_q8_0_q8_0_ref(row: &[BlockQ8_0], act: &[BlockQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len(), "Q8_0 vec_dot: length");
    let mut sum = 0f32;
    for (w, a) in row.iter().zip(act) {
        let d = w.d.to_f32() * a.d.to_f32();
        sum += d * block_sumi(w, a) as f32;
    }
    sum
}

impl WeightType for Q8_0 {
    const NAME: &'static str = "Q8_0";
    const GGML_ID: u32 = 8;
    const BLOCK_ELEMS: usize = QK8_0;
    type Block = BlockQ8_0;
    type Act = Q8_0;

    fn dequantize_ref(blocks: &[BlockQ8_0], out: &mut [f32]) {
        dequantize(blocks, out);
    }

    fn vec_dot_ref(row: &[BlockQ8_0], act: &[BlockQ8_0]) -> f32 {
        vec_dot_q8_0_q8_0_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ8_0], act: &[BlockQ8_0]) -> f32 {
        super::x86_avx2::legacy::vec_dot_q8_0_q8_0(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_rows(w: &[BlockQ8_0], act: &[BlockQ8_0], out: &mut [f32]) {
        super::x86_avx2::tiles::rows_q8_0_q8_0(w, act, out)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_tile(
        w: &[BlockQ8_0],
        act: &[BlockQ8_0],
        stride: usize,
        out: &mut [[f32; super::TILE]; super::TILE],
    ) {
        super::x86_avx2::tiles::tile_q8_0_q8_0(w, act, stride, out)
    }

    #[cfg(x86_simd)]
    const GEMM: Option<super::Gemm<Self>> = Some(super::x86_avx2::gemm::matmul_q8_0);
}

impl Quantize for Q8_0 {
    /// The model-file quantizer, which differs from the activation one above in two
    /// places that decide last bits: the quants are `round(x * (1 / d))` with
    /// `d = amax / 127` (the multiplier is the f32 reciprocal of the f32 scale) and ties
    /// round away from zero. ggml has no importance-weighted Q8_0, so `imatrix` is
    /// ignored. (`amax` keeps ggml's comparison `amax > |x| ? amax : |x|`, which a NaN
    /// input resets.)
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ8_0]) {
        check_quantize_lengths::<Q8_0>(x, imatrix, out);
        for (b, xb) in out.iter_mut().zip(x.chunks_exact(QK8_0)) {
            let mut amax = 0f32;
            for &v in xb {
                amax = if amax > v.abs() { amax } else { v.abs() };
            }
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = ggml_f16(d);
            for (q, &v) in b.qs.iter_mut().zip(xb) {
                *q = c_float_to_int((v * id).round()) as i8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<Q8_0>();
    }

    #[test]
    fn quantize_round_trip() {
        // d = amax / 127: 2 amax in 254 steps
        testing::check_quantize_round_trip::<Q8_0>(255);
    }

    #[test]
    fn dequantize_matches_gguf_py() {
        // d * q is one f32 rounding of exact operands on both sides.
        testing::check_dequantize::<Q8_0>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Block sums are exact integers; d_w * d_a (two f16 values, 22 significant bits)
        // is exact in f32, so the only error is the f32 product with the sum and the
        // accumulation over 64 blocks: about 64 * 2^-24 relative to sum |w a| ≈ 4e-6.
        testing::check_vec_dot::<Q8_0>(1e-5);
    }

    /// The formula spelled out independently: f64 division is correctly rounded, and
    /// rounding the f64 quotient to f32 gives the same f32 as an f32 division.
    fn expected_block(x: &[f32]) -> (f16, Vec<i8>) {
        let amax = x.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let d = (amax as f64 / 127.0) as f32;
        let mul = if amax == 0.0 {
            0.0
        } else {
            (127.0 / amax as f64) as f32
        };
        let qs = x
            .iter()
            .map(|&v| (v * mul).round_ties_even() as i8)
            .collect();
        (f16::from_f32(d), qs)
    }

    fn check_quantize(x: &[f32]) {
        let mut blocks = vec![BlockQ8_0::default(); x.len() / QK8_0];
        let mut fast = blocks.clone();
        <Q8_0 as ActType>::quantize_ref(x, &mut blocks);
        <Q8_0 as ActType>::quantize(x, &mut fast);
        for (i, (b, xs)) in blocks.iter().zip(x.chunks_exact(QK8_0)).enumerate() {
            let (d, qs) = expected_block(xs);
            assert_eq!(b.d.to_bits(), d.to_bits(), "block {i}: scale");
            assert_eq!(&b.qs[..], &qs[..], "block {i}: quants");
            assert_eq!(*b, fast[i], "block {i}: SIMD quantize differs");
        }
    }

    #[test]
    fn quantize_edge_cases() {
        // all zeros: d = 0 and every quant 0 (no division by zero)
        let zeros = [0f32; 32];
        check_quantize(&zeros);
        let mut b = [BlockQ8_0::default()];
        <Q8_0 as ActType>::quantize(&zeros, &mut b);
        assert_eq!((b[0].d.to_f32(), b[0].qs), (0.0, [0; 32]));

        // one big outlier: it maps to exactly ±127, everything small to 0
        let mut outlier = [1e-3f32; 32];
        outlier[7] = -1000.0;
        check_quantize(&outlier);
        <Q8_0 as ActType>::quantize(&outlier, &mut b);
        assert_eq!(b[0].qs[7], -127);
        assert!(b[0].qs.iter().enumerate().all(|(i, &q)| i == 7 || q == 0));

        // exact ties: amax = 127 makes the multiplier 1, so x.5 rounds to even
        let mut ties = [0f32; 32];
        for (i, v) in ties.iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        ties[31] = 127.0;
        check_quantize(&ties);
        <Q8_0 as ActType>::quantize(&ties, &mut b);
        assert_eq!(&b[0].qs[..4], &[-16, -14, -14, -12]);

        // random activations of several magnitudes, tiny values (f16-subnormal scale)
        let mut x = testing::activations(32 * 64, 7);
        for (i, v) in x.iter_mut().enumerate() {
            *v *= [1.0, 1e-3, 1e3, 1e-6][i / 512];
        }
        check_quantize(&x);
    }

    #[test]
    fn infinities_agree() {
        // A block holding an infinity: d = inf, the multiplier 127 / inf = 0, so the
        // infinity times 0 is NaN (-> -128) and every finite value 0, in both versions.
        let mut x = testing::activations(96, 5);
        x[40] = f32::INFINITY;
        x[70] = f32::NEG_INFINITY;
        let mut slow = vec![BlockQ8_0::default(); 3];
        let mut fast = slow.clone();
        <Q8_0 as ActType>::quantize_ref(&x, &mut slow);
        <Q8_0 as ActType>::quantize(&x, &mut fast);
        assert_eq!(
            (slow[1].qs[8], slow[1].qs[9], slow[2].qs[6]),
            (-128, 0, -128)
        );
        assert_eq!(slow, fast);
    }

    #[test]
    fn dot_of_known_blocks() {
        let mut w = BlockQ8_0 {
            d: f16::from_f32(0.5),
            qs: [0; 32],
        };
        let mut a = BlockQ8_0 {
            d: f16::from_f32(0.25),
            qs: [0; 32],
        };
        w.qs[0] = 3;
        a.qs[0] = -5;
        w.qs[31] = -128;
        a.qs[31] = -127;
        let want = 0.125 * (3.0 * -5.0 + 128.0 * 127.0);
        assert_eq!(vec_dot_q8_0_q8_0_ref(&[w], &[a]), want);
        assert_eq!(<Q8_0 as WeightType>::vec_dot(&[w], &[a]), want);
    }

    #[test]
    fn quantize_matches_llama_cpp() {
        // llama.cpp's own quantizer (the x86 CPU path) on random blocks, a zero block, a
        // lone outlier, exact halves and f16-subnormal scales: same bytes, both versions.
        let (x, want) = testing::llama_cpp_act_golden::<Q8_0>();
        let mut got = vec![Default::default(); want.len()];
        <Q8_0 as ActType>::quantize_ref(&x, &mut got);
        assert_eq!(got, want);
        <Q8_0 as ActType>::quantize(&x, &mut got);
        assert_eq!(got, want);
    }
}
