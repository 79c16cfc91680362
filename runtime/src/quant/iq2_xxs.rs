//! IQ2_XXS: 2.0625 bits per weight. Eight weights at a time are one point of a fixed
//! lattice ([`IQ2XXS_GRID`], 256 points of magnitudes {8, 25, 43}) with an even-parity
//! sign pattern ([`KSIGNS_IQ2XS`]), scaled per 32 weights by a 4-bit scale.
//!
//! Layout of one super-block of 256 weights (66 bytes):
//!
//! ```text
//! d    f16        super-block scale
//! qs   [u16; 32]  8 sub-blocks of 32 weights, 4 u16 (= two u32, little-endian) each:
//!                   first u32:  bytes 0..4 = grid index of weights 8l..8l+8 (l = 0..3)
//!                   second u32: bits 7l..7l+7 = sign index of group l (l = 0..3),
//!                               bits 28..32 = sub-block scale s
//! ```
//!
//! Weight `j` of group `l`: `d * (0.5 + s) / 4 * grid[idx_l][j] * sign_l(j)`.
//! The dot product with Q8_K keeps `Σ (2s + 1) * Σ grid * sign * q8` in integers per
//! super-block and applies `d_w * d_a / 8` at the end (`(0.5 + s) / 4 = (2s + 1) / 8`).

use crate::float16::f16;

use super::iq_grids::{IQ2XXS_GRID, KSIGNS_IQ2XS};
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::superblock::{self, signed_group, Batched, Ints, SuperBlock};
use super::WeightType;

/// One IQ2_XXS super-block of 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ2XXS {
    /// Super-block scale.
    pub d: f16,
    /// Per sub-block: 4 grid indices, then 4 seven-bit sign indices and the 4-bit scale.
    pub qs: [u16; QK_K / 8],
}

const _: () = assert!(std::mem::size_of::<BlockIQ2XXS>() == 2 + QK_K / 4);

/// Marker for the IQ2_XXS weight format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ2_XXS;

/// The two u32 words of sub-block `ib`: (grid indices, signs and scale).
#[inline(always)]
pub(crate) fn sub_block_words(block: &BlockIQ2XXS, ib: usize) -> (u32, u32) {
    let q = &block.qs[4 * ib..4 * ib + 4];
    let indices = q[0] as u32 | (q[1] as u32) << 16;
    let signs_scale = q[2] as u32 | (q[3] as u32) << 16;
    (indices, signs_scale)
}

/// Signed integer dot of the 32 weights of one sub-block (grid values with signs) with
/// 32 Q8 quants, before any scale.
#[inline(always)]
fn sub_block_dot(indices: u32, signs_scale: u32, q8: &[i8]) -> i32 {
    let mut sum = 0i32;
    for l in 0..4 {
        let grid = IQ2XXS_GRID[(indices >> (8 * l)) as usize & 0xff].to_le_bytes();
        let signs = KSIGNS_IQ2XS[(signs_scale >> (7 * l)) as usize & 127];
        for j in 0..8 {
            let p = grid[j] as i32 * q8[8 * l + j] as i32;
            sum += if signs & (1 << j) != 0 { -p } else { p };
        }
    }
    sum
}

impl WeightType for IQ2_XXS {
    const NAME: &'static str = "IQ2_XXS";
    const GGML_ID: u32 = 16;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockIQ2XXS;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockIQ2XXS], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (block, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let (indices, signs_scale) = sub_block_words(block, ib);
                let db = d * (0.5 + (signs_scale >> 28) as f32) * 0.25;
                for (l, y) in y.chunks_exact_mut(8).enumerate() {
                    let grid = IQ2XXS_GRID[(indices >> (8 * l)) as usize & 0xff].to_le_bytes();
                    let signs = KSIGNS_IQ2XS[(signs_scale >> (7 * l)) as usize & 127];
                    for (j, y) in y.iter_mut().enumerate() {
                        let sign = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                        *y = db * grid[j] as f32 * sign;
                    }
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockIQ2XXS], act: &[BlockQ8K]) -> f32 {
        debug_assert_eq!(row.len(), act.len());
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let mut isum = 0i32;
            for ib in 0..QK_K / 32 {
                let (indices, signs_scale) = sub_block_words(block, ib);
                let ls = 2 * (signs_scale >> 28) as i32 + 1;
                isum += ls * sub_block_dot(indices, signs_scale, &a.qs[32 * ib..32 * ib + 32]);
            }
            sum += block.d.to_f32() * a.d * isum as f32;
        }
        0.125 * sum
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ2XXS], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::iquants::vec_dot_iq2_xxs_q8_k(row, act)
    }
}

impl SuperBlock for IQ2_XXS {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(43);

    fn ints(block: &BlockIQ2XXS, out: &mut Ints) {
        // the scale is (2 ls + 1) / 8: d takes the 1/8
        out.d = block.d.to_f32() * 0.125;
        for ib in 0..QK_K / 32 {
            let (indices, signs_scale) = sub_block_words(block, ib);
            let ls = 2 * (signs_scale >> 28) as i32 + 1;
            out.set_scale(2 * ib, ls);
            out.set_scale(2 * ib + 1, ls);
            for l in 0..4 {
                let grid = IQ2XXS_GRID[(indices >> (8 * l)) as usize & 0xff].to_le_bytes();
                let signs = KSIGNS_IQ2XS[(signs_scale >> (7 * l)) as usize & 127];
                signed_group(&grid, signs, &mut out.q[32 * ib + 8 * l..][..8]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IQ2_XXS;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // Same f32 operations in the same order as gguf-py: (d * (0.5 + s) * 0.25) * grid.
        testing::check_dequantize::<IQ2_XXS>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Integer sums are exact. Rounding (u = 2^-24) enters at: the activations' own
        // dequantization in the f64 reference (d_a * q, u per term), d_w * d_a and its
        // product with the integer sum (2u per super-block; the i32 -> f32 conversion
        // adds u), and the f32 sum over 8 super-blocks (7u, or 8 lanes plus a 3-level
        // horizontal sum in the SIMD version). Each term is bounded by its share of
        // Σ |w a|, so the error is below ~15u ≈ 9e-7 of Σ |w a|.
        testing::check_vec_dot::<IQ2_XXS>(2e-6);
    }

    #[test]
    fn vec_dot_matches_llama_cpp() {
        // Bit-exact with ggml's x86 AVX2 dot on the same blocks (fast path); the scalar
        // reference within the limit derived above.
        crate::quant::iq_golden_dot::check_ggml_dot::<IQ2_XXS>(2e-6);
    }
}
