//! IQ1_S: 1.5625 bits per weight. Eight weights at a time are one point of a ternary
//! lattice ([`IQ1S_GRID`], 2048 points of values {-1, 0, 1}), shifted by ±1/8 and scaled
//! per 32 weights by a 3-bit scale.
//!
//! Layout of one super-block of 256 weights (50 bytes):
//!
//! ```text
//! d    f16        super-block scale
//! qs   [u8; 32]   low 8 bits of the grid index of each group of 8 weights
//! qh   [u16; 8]   per sub-block of 32: bits 3l..3l+3 = high 3 bits of group l's index,
//!                 bits 12..15 = scale s, bit 15 = sign of the shift (set = -1/8)
//! ```
//!
//! Weight `j` of group `l`: `d * (2s + 1) * (grid[idx_l][j] + delta)`, `delta = ±1/8`.
//! The dot product with Q8_K keeps `Σ (2s + 1) Σ grid * q8` and the shift term
//! `Σ (2s + 1) * ±1 * Σ q8` (from the Q8_K group sums `bsums`) in integers and applies
//! `d_w * d_a * (sum + sum_shift / 8)` per super-block.

use crate::float16::f16;

use super::iq_grids::IQ1S_GRID;
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::WeightType;

/// The shift added to every grid value, in units of the sub-block scale.
pub const IQ1S_DELTA: f32 = 0.125;

/// One IQ1_S super-block of 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ1S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of the grid index per group of 8 weights.
    pub qs: [u8; QK_K / 8],
    /// Per sub-block of 32: four 3-bit index highs, the 3-bit scale, the shift sign.
    pub qh: [u16; QK_K / 32],
}

const _: () = assert!(std::mem::size_of::<BlockIQ1S>() == 2 + QK_K / 8 + QK_K / 16);

/// Marker for the IQ1_S weight format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ1_S;

/// Grid values (as i8) of group `l` of sub-block `ib`.
#[inline(always)]
fn group(block: &BlockIQ1S, ib: usize, l: usize) -> [u8; 8] {
    let high = (block.qh[ib] as usize >> (3 * l)) & 7;
    IQ1S_GRID[block.qs[4 * ib + l] as usize | high << 8].to_le_bytes()
}

/// Multiplier `2s + 1` of sub-block `ib` and the sign (±1) of its shift.
#[inline(always)]
fn scale_and_shift_sign(block: &BlockIQ1S, ib: usize) -> (i32, i32) {
    let qh = block.qh[ib];
    (
        2 * ((qh >> 12) & 7) as i32 + 1,
        if qh & 0x8000 != 0 { -1 } else { 1 },
    )
}

impl WeightType for IQ1_S {
    const NAME: &'static str = "IQ1_S";
    const GGML_ID: u32 = 19;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockIQ1S;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockIQ1S], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (block, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let (ls, shift_sign) = scale_and_shift_sign(block, ib);
                let dl = d * ls as f32;
                let delta = shift_sign as f32 * IQ1S_DELTA;
                for (l, y) in y.chunks_exact_mut(8).enumerate() {
                    let grid = group(block, ib, l);
                    for (y, &g) in y.iter_mut().zip(&grid) {
                        *y = dl * (g as i8 as f32 + delta);
                    }
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockIQ1S], act: &[BlockQ8K]) -> f32 {
        debug_assert_eq!(row.len(), act.len());
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let (mut isum, mut ishift) = (0i32, 0i32);
            for ib in 0..QK_K / 32 {
                let (ls, shift_sign) = scale_and_shift_sign(block, ib);
                let mut sub = 0i32;
                for l in 0..4 {
                    let grid = group(block, ib, l);
                    let q8 = &a.qs[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                    sub += grid
                        .iter()
                        .zip(q8)
                        .map(|(&g, &q)| g as i8 as i32 * q as i32)
                        .sum::<i32>();
                }
                isum += ls * sub;
                ishift += ls * shift_sign * (a.bsums[2 * ib] as i32 + a.bsums[2 * ib + 1] as i32);
            }
            sum += block.d.to_f32() * a.d * (isum as f32 + IQ1S_DELTA * ishift as f32);
        }
        sum
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ1S], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::iquants::vec_dot_iq1_s_q8_k(row, act)
    }
}

impl SuperBlock for IQ1_S {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(9);

    fn ints(block: &BlockIQ1S, out: &mut Ints) {
        // the ±1/8 shift becomes an integer: q = 8 g ± 1, and d takes the 1/8
        out.d = block.d.to_f32() * 0.125;
        for ib in 0..QK_K / 32 {
            let (ls, shift_sign) = scale_and_shift_sign(block, ib);
            out.set_scale(2 * ib, ls);
            out.set_scale(2 * ib + 1, ls);
            for l in 0..4 {
                for (j, &g) in group(block, ib, l).iter().enumerate() {
                    out.q[32 * ib + 8 * l + j] = 8 * g as i8 + shift_sign as i8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IQ1_S;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // Same f32 operations in the same order as gguf-py: (d * (2s + 1)) * (grid + delta).
        testing::check_dequantize::<IQ1_S>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Integer sums; then as IQ2_XXS (see its derivation) plus the shift term: the
        // grid part and the shift part are each at most 8/7 of Σ |w a| (|g + δ| >= 7/8 |g|
        // and >= 1/8), and each adds one rounding when converted to f32. About 20u ≈ 1.2e-6.
        testing::check_vec_dot::<IQ1_S>(3e-6);
    }

    #[test]
    fn vec_dot_matches_llama_cpp() {
        // Bit-exact with ggml's x86 AVX2 dot on the same blocks (fast path); the scalar
        // reference within the limit derived above.
        crate::quant::iq_golden_dot::check_ggml_dot::<IQ1_S>(3e-6);
    }
}
