//! Q4_1: blocks of 32 four-bit quants with an f16 scale and an f16 offset
//! (5 bits per weight). Dotted with Q8_1 activations, whose `s` field carries the
//! offset's contribution.

use crate::float16::f16;

use super::q4_0::{pack_nibbles, unpack_nibbles};
use super::q8_1::{BlockQ8_1, Q8_1};
use super::quantize::{c_float_to_int, ggml_f16, make_qkx_quants, quantize_legacy_row, MinSearch};
use super::{check_quantize_lengths, Quantize, WeightType};

/// Weights per Q4_1 block.
pub const QK4_1: usize = 32;

/// One Q4_1 block: `x[i] = d * q[i] + m`, `q[i]` in 0..16.
///
/// Layout (20 bytes): `d: f16`, `m: f16`, `qs: [u8; 16]`; nibble order as in Q4_0
/// (low nibbles hold values 0..16, high nibbles values 16..32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK4_1 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// Marker for the Q4_1 format (ggml type 3).
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q4_1;

/// Scalar dot of a Q4_1 row with Q8_1 activations. Per block,
/// `sum_i (d_w q_i + m_w) d_a a_i = (d_w d_a) * sum_i q_i a_i + m_w * s_a`:
/// the integer sum scaled by the f32 product of the scales, accumulated in f32, and the
/// offset terms `m_w * s_a` accumulated separately with fused multiply-adds (as ggml's
/// compiled x86 kernel does: GCC contracts `summs += m * s` into an FMA) and added at the
/// end.
pub fn vec_dot_q4_1_q8_1_ref(row: &[BlockQ4_1], act: &[BlockQ8_1]) -> f32 {
    assert_eq!(row.len(), act.len(), "Q4_1 vec_dot: length");
    let mut sum = 0f32;
    let mut sum_offsets = 0f32;
    for (w, a) in row.iter().zip(act) {
        let q = unpack_nibbles(&w.qs);
        let sumi: i32 = q
            .iter()
            .zip(&a.qs)
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
        sum += (w.d.to_f32() * a.d.to_f32()) * sumi as f32;
        sum_offsets = w.m.to_f32().mul_add(a.s.to_f32(), sum_offsets);
    }
    sum + sum_offsets
}

impl WeightType for Q4_1 {
    const NAME: &'static str = "Q4_1";
    const GGML_ID: u32 = 3;
    const BLOCK_ELEMS: usize = QK4_1;
    type Block = BlockQ4_1;
    type Act = Q8_1;

    fn dequantize_ref(blocks: &[BlockQ4_1], out: &mut [f32]) {
        assert_eq!(out.len(), blocks.len() * QK4_1, "Q4_1 dequantize: length");
        for (block, ys) in blocks.iter().zip(out.chunks_exact_mut(QK4_1)) {
            let (d, m) = (block.d.to_f32(), block.m.to_f32());
            for (y, q) in ys.iter_mut().zip(unpack_nibbles(&block.qs)) {
                *y = d * q as f32 + m;
            }
        }
    }

    fn vec_dot_ref(row: &[BlockQ4_1], act: &[BlockQ8_1]) -> f32 {
        vec_dot_q4_1_q8_1_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ4_1], act: &[BlockQ8_1]) -> f32 {
        super::x86_avx2::legacy::vec_dot_q4_1_q8_1(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_rows(w: &[BlockQ4_1], act: &[BlockQ8_1], out: &mut [f32]) {
        super::x86_avx2::tiles::rows_q4_1_q8_1(w, act, out)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_tile(
        w: &[BlockQ4_1],
        act: &[BlockQ8_1],
        stride: usize,
        out: &mut [[f32; super::TILE]; super::TILE],
    ) {
        super::x86_avx2::tiles::tile_q4_1_q8_1(w, act, stride, out)
    }

    #[cfg(x86_simd)]
    const GEMM: Option<super::Gemm<Self>> = Some(super::x86_avx2::gemm::matmul_q4_1);
}

/// The smallest and largest value of a block (`min` from `f32::MAX`, `max` from
/// `-f32::MAX`, compared in order).
#[inline(always)]
pub(crate) fn block_min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// The search for the scale and minimum of a legacy block under importance weights:
/// quants `0..=nmax`, 37 candidate scales around `(nmax - 0.9 + k / 20) / (max - min)`.
pub(crate) const fn legacy_min_search(nmax: i32) -> MinSearch {
    MinSearch {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    }
}

/// One block without importance weights: `m = min`, `d = (max - min) / 15`, and
/// `q = trunc((x - min) / d + 0.5)`, at most 15.
fn quantize_block_plain(x: &[f32]) -> BlockQ4_1 {
    let (min, max) = block_min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q: [u8; 32] =
        std::array::from_fn(|j| (c_float_to_int((x[j] - min) * id + 0.5) as i8).min(15) as u8);
    BlockQ4_1 {
        d: ggml_f16(d),
        m: ggml_f16(min),
        qs: pack_nibbles(&q),
    }
}

impl Quantize for Q4_1 {
    /// Without an importance matrix, each block on its own (`quantize_block_plain`).
    /// With one, the weight of value `i` is `imatrix[i] * sqrt(sigma2 + x_i²)` (`sigma2`
    /// the row's mean square), and scale and minimum come from the weighted
    /// least-squares search `make_qkx_quants`.
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ4_1]) {
        check_quantize_lengths::<Q4_1>(x, imatrix, out);
        let search = legacy_min_search(15);
        quantize_legacy_row(
            x,
            imatrix,
            out,
            quantize_block_plain,
            |xb, w: &[f32; QK4_1]| {
                let mut q = [0u8; QK4_1];
                let (d, neg_min) = make_qkx_quants(xb, w, &search, &mut q);
                BlockQ4_1 {
                    d: ggml_f16(d),
                    m: ggml_f16(-neg_min),
                    qs: pack_nibbles(&q),
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<Q4_1>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<Q4_1>(16);
    }

    #[test]
    fn dequantize_matches_gguf_py() {
        // d * q + m: a rounded product then a rounded sum, in the same order and without
        // fusing on both sides (numpy and Rust), so bit-exact.
        testing::check_dequantize::<Q4_1>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // The f64 reference uses the dequantized activations d_a (f16) * a_i, so its
        // offset term is m * f16(d_a) * sum a; ours is m * s with s = f16(d_a_f32 * sum a).
        // The two differ by the f16 rounding of d_a and of s, each at most 2^-11 relative,
        // so by up to 2^-10 |m s| per block. With the golden blocks' |m| and d of the same
        // magnitude, sum |m s| stays below sum |w a|, hence 2^-10 ≈ 1e-3. The integer part
        // adds only f32 rounding (~4e-6). `exact_with_stored_s` checks that part tightly.
        testing::check_vec_dot::<Q4_1>(2f64.powi(-10));
    }

    #[test]
    fn exact_with_stored_s() {
        testing::check_vec_dot_offsets::<Q4_1>(1e-5, |b| b.m.to_f32());
    }
}
