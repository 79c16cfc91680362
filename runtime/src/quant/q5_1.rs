//! Q5_1: blocks of 32 five-bit quants with an f16 scale and an f16 offset
//! (6 bits per weight). Dotted with Q8_1 activations.

use crate::float16::f16;

use super::q4_1::{block_min_max, legacy_min_search};
use super::q5_0::{pack_q5, unpack_q5};
use super::q8_1::{BlockQ8_1, Q8_1};
use super::quantize::{c_float_to_int, ggml_f16, make_qkx_quants, quantize_legacy_row};
use super::{check_quantize_lengths, Quantize, WeightType};

/// Weights per Q5_1 block.
pub const QK5_1: usize = 32;

/// One Q5_1 block: `x[i] = d * q[i] + m`, `q[i]` in 0..32.
///
/// Layout (24 bytes): `d: f16`, `m: f16`, `qh: [u8; 4]`, `qs: [u8; 16]`; the quant bits
/// are laid out as in Q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_1 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// Marker for the Q5_1 format (ggml type 7).
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q5_1;

/// Scalar dot of a Q5_1 row with Q8_1 activations: as Q4_1, per block
/// `(d_w d_a) * sum_i q_i a_i` accumulated in f32, plus the separately accumulated
/// offset terms `m_w * s_a`.
pub fn vec_dot_q5_1_q8_1_ref(row: &[BlockQ5_1], act: &[BlockQ8_1]) -> f32 {
    assert_eq!(row.len(), act.len(), "Q5_1 vec_dot: length");
    let mut sum = 0f32;
    let mut sum_offsets = 0f32;
    for (w, a) in row.iter().zip(act) {
        let q = unpack_q5(&w.qh, &w.qs);
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

impl WeightType for Q5_1 {
    const NAME: &'static str = "Q5_1";
    const GGML_ID: u32 = 7;
    const BLOCK_ELEMS: usize = QK5_1;
    type Block = BlockQ5_1;
    type Act = Q8_1;

    fn dequantize_ref(blocks: &[BlockQ5_1], out: &mut [f32]) {
        assert_eq!(out.len(), blocks.len() * QK5_1, "Q5_1 dequantize: length");
        for (block, ys) in blocks.iter().zip(out.chunks_exact_mut(QK5_1)) {
            let (d, m) = (block.d.to_f32(), block.m.to_f32());
            for (y, q) in ys.iter_mut().zip(unpack_q5(&block.qh, &block.qs)) {
                *y = d * q as f32 + m;
            }
        }
    }

    fn vec_dot_ref(row: &[BlockQ5_1], act: &[BlockQ8_1]) -> f32 {
        vec_dot_q5_1_q8_1_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ5_1], act: &[BlockQ8_1]) -> f32 {
        super::x86_avx2::legacy::vec_dot_q5_1_q8_1(row, act)
    }
}

/// One block without importance weights: `m = min`, `d = (max - min) / 31`, and
/// `q = trunc((x - min) / d + 0.5)` (no clamp: the largest value lands on 31).
fn quantize_block_plain(x: &[f32]) -> BlockQ5_1 {
    let (min, max) = block_min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q: [u8; 32] = std::array::from_fn(|j| c_float_to_int((x[j] - min) * id + 0.5) as u8);
    let (qh, qs) = pack_q5(&q);
    BlockQ5_1 {
        d: ggml_f16(d),
        m: ggml_f16(min),
        qh,
        qs,
    }
}

impl Quantize for Q5_1 {
    /// Without an importance matrix, each block on its own (`quantize_block_plain`).
    /// With one, as Q4_1 does with quants `0..=31`.
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ5_1]) {
        check_quantize_lengths::<Q5_1>(x, imatrix, out);
        let search = legacy_min_search(31);
        quantize_legacy_row(
            x,
            imatrix,
            out,
            quantize_block_plain,
            |xb, w: &[f32; QK5_1]| {
                let mut q = [0u8; QK5_1];
                let (d, neg_min) = make_qkx_quants(xb, w, &search, &mut q);
                let (qh, qs) = pack_q5(&q);
                BlockQ5_1 {
                    d: ggml_f16(d),
                    m: ggml_f16(-neg_min),
                    qh,
                    qs,
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
        testing::check_quantize::<Q5_1>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<Q5_1>(32);
    }

    #[test]
    fn dequantize_matches_gguf_py() {
        // d * q + m, unfused on both sides: bit-exact.
        testing::check_dequantize::<Q5_1>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Same derivation as Q4_1: the offset term m * s differs from the f64
        // reference's m * f16(d_a) * sum a by up to 2^-10 |m s| per block.
        testing::check_vec_dot::<Q5_1>(2f64.powi(-10));
    }

    #[test]
    fn exact_with_stored_s() {
        testing::check_vec_dot_offsets::<Q5_1>(1e-5, |b| b.m.to_f32());
    }
}
