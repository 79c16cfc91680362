//! Q5_1: blocks of 32 five-bit quants with an f16 scale and an f16 offset
//! (6 bits per weight). Dotted with Q8_1 activations.

use crate::float16::f16;

use super::q5_0::unpack_q5;
use super::q8_1::{BlockQ8_1, Q8_1};
use super::WeightType;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

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
