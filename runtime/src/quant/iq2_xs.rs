//! IQ2_XS: 2.3125 bits per weight. Eight weights at a time are one point of a fixed
//! lattice ([`IQ2XS_GRID`], 512 points of magnitudes {8, 25, 43}) with an even-parity
//! sign pattern ([`KSIGNS_IQ2XS`]), scaled per 16 weights by a 4-bit scale.
//!
//! Layout of one super-block of 256 weights (74 bytes):
//!
//! ```text
//! d       f16        super-block scale
//! qs      [u16; 32]  one per group of 8 weights: bits 0..9 grid index,
//!                    bits 9..16 sign index into KSIGNS_IQ2XS
//! scales  [u8; 8]    per sub-block of 32: low nibble scales its first 16 weights,
//!                    high nibble its last 16
//! ```
//!
//! Weight `j` of group `g`: `d * (0.5 + s) / 4 * grid[idx_g][j] * sign_g(j)`, with `s`
//! the nibble of the half sub-block `g` lies in. The dot product with Q8_K sums
//! `(2s + 1) * Σ grid * sign * q8` in integers per super-block and applies
//! `d_w * d_a / 8` at the end.

use crate::float16::f16;

use super::iq_grids::{IQ2XS_GRID, KSIGNS_IQ2XS};
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::superblock::{self, signed_group, Batched, Ints, SuperBlock};
use super::WeightType;

/// One IQ2_XS super-block of 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ2XS {
    /// Super-block scale.
    pub d: f16,
    /// Per group of 8: grid index (9 bits) and sign index (7 bits).
    pub qs: [u16; QK_K / 8],
    /// Two 4-bit scales per sub-block of 32.
    pub scales: [u8; QK_K / 32],
}

const _: () = assert!(std::mem::size_of::<BlockIQ2XS>() == 2 + QK_K / 4 + QK_K / 32);

/// Marker for the IQ2_XS weight format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ2_XS;

/// Grid magnitudes and sign bits of the group of 8 weights that `q` encodes.
#[inline(always)]
fn group(q: u16) -> ([u8; 8], u8) {
    (
        IQ2XS_GRID[(q & 511) as usize].to_le_bytes(),
        KSIGNS_IQ2XS[(q >> 9) as usize],
    )
}

/// Signed integer dot of the 16 weights of two groups with 16 Q8 quants.
#[inline(always)]
fn half_dot(qs: &[u16], q8: &[i8]) -> i32 {
    let mut sum = 0i32;
    for (l, &q) in qs.iter().enumerate() {
        let (grid, signs) = group(q);
        for j in 0..8 {
            let p = grid[j] as i32 * q8[8 * l + j] as i32;
            sum += if signs & (1 << j) != 0 { -p } else { p };
        }
    }
    sum
}

impl WeightType for IQ2_XS {
    const NAME: &'static str = "IQ2_XS";
    const GGML_ID: u32 = 17;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockIQ2XS;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockIQ2XS], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (block, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            for (g, y) in y.chunks_exact_mut(8).enumerate() {
                let nibble = (block.scales[g / 4] >> (4 * ((g / 2) % 2))) & 0xf;
                let db = d * (0.5 + nibble as f32) * 0.25;
                let (grid, signs) = group(block.qs[g]);
                for (j, y) in y.iter_mut().enumerate() {
                    let sign = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                    *y = db * grid[j] as f32 * sign;
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockIQ2XS], act: &[BlockQ8K]) -> f32 {
        debug_assert_eq!(row.len(), act.len());
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let mut isum = 0i32;
            for ib in 0..QK_K / 32 {
                let ls_lo = 2 * (block.scales[ib] & 0xf) as i32 + 1;
                let ls_hi = 2 * (block.scales[ib] >> 4) as i32 + 1;
                let qs = &block.qs[4 * ib..4 * ib + 4];
                let q8 = &a.qs[32 * ib..32 * ib + 32];
                isum +=
                    ls_lo * half_dot(&qs[..2], &q8[..16]) + ls_hi * half_dot(&qs[2..], &q8[16..]);
            }
            sum += block.d.to_f32() * a.d * isum as f32;
        }
        0.125 * sum
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ2XS], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::iquants::vec_dot_iq2_xs_q8_k(row, act)
    }
}

impl SuperBlock for IQ2_XS {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(43);

    fn ints(block: &BlockIQ2XS, out: &mut Ints) {
        // the scale is (2 ls + 1) / 8: d takes the 1/8
        out.d = block.d.to_f32() * 0.125;
        for (ib, &sc) in block.scales.iter().enumerate() {
            out.set_scale(2 * ib, 2 * (sc & 0x0f) as i32 + 1);
            out.set_scale(2 * ib + 1, 2 * (sc >> 4) as i32 + 1);
        }
        for (g, &q) in block.qs.iter().enumerate() {
            let (grid, signs) = group(q);
            signed_group(&grid, signs, &mut out.q[8 * g..8 * g + 8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IQ2_XS;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // Same f32 operations in the same order as gguf-py: (d * (0.5 + s) * 0.25) * grid.
        testing::check_dequantize::<IQ2_XS>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Integer sums, then the same f32 scaling as IQ2_XXS (see its derivation):
        // below ~15u ≈ 9e-7 of Σ |w a|.
        testing::check_vec_dot::<IQ2_XS>(2e-6);
    }

    #[test]
    fn vec_dot_matches_llama_cpp() {
        // Bit-exact with ggml's x86 AVX2 dot on the same blocks (fast path); the scalar
        // reference within the limit derived above.
        crate::quant::iq_golden_dot::check_ggml_dot::<IQ2_XS>(2e-6);
    }
}
