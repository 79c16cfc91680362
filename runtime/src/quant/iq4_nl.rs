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
//! `Σ level * q8` in integers per block and adds `(d_w * d_a) * sum` in f32.

use half::f16;

use super::iq_grids::KVALUES_IQ4NL;
use super::q8_0::{BlockQ8_0, Q8_0, QK8_0};
use super::WeightType;

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
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let d = a.d.to_f32() * block.d.to_f32();
            sum += d * levels_dot(&block.qs, &a.qs) as f32;
        }
        sum
    }

    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ4NL], act: &[BlockQ8_0]) -> f32 {
        super::x86_avx2::iquants::vec_dot_iq4_nl_q8_0(row, act)
    }
}

#[cfg(test)]
mod tests {
    use super::IQ4_NL;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // One f32 product d * level, exact (11 + 7 significant bits), as in gguf-py.
        testing::check_dequantize::<IQ4_NL>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Per block: exact integer sum (|sum| <= 32 * 127 * 127 < 2^24, so exact in f32),
        // d_w * d_a (both f16, exact in f32), and one rounding of the product: u. Then an
        // f32 sum over 64 blocks: up to 63u relative to Σ |w a| sequentially, less in the
        // SIMD version (two 8-lane accumulators of 32 terms each, then 3 levels). Plus u
        // from the reference's own d_a * q. About 65u ≈ 4e-6.
        testing::check_vec_dot::<IQ4_NL>(5e-6);
    }

    #[test]
    fn vec_dot_matches_llama_cpp() {
        // Bit-exact with ggml's x86 AVX2 dot on the same blocks (fast path); the scalar
        // reference within the limit derived above.
        crate::quant::iq_golden_dot::check_ggml_dot::<IQ4_NL>(5e-6);
    }
}
