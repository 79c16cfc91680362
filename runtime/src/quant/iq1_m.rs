//! IQ1_M: 1.75 bits per weight. Eight weights at a time are one point of the ternary
//! IQ1 lattice ([`IQ1S_GRID`], values {-1, 0, 1}), each group of 8 shifted by its own
//! ±1/8, with a 3-bit scale per 16 weights. There is no separate f16 field: the f16
//! super-block scale is spread over the top nibbles of the four scale words.
//!
//! Layout of one super-block of 256 weights (56 bytes):
//!
//! ```text
//! qs      [u8; 32]  low 8 bits of the grid index of each group of 8 weights
//! qh      [u8; 16]  one nibble per group of 8 (group 2i low, 2i + 1 high nibble of
//!                   byte i): bits 0..3 = high 3 bits of the index, bit 3 = shift sign
//!                   (set = -1/8)
//! scales  [u8; 8]   four little-endian u16 words w0..w3: word k holds the 3-bit
//!                   scales of the 16-weight halves 4k..4k+4 in bits 0..12 (3 each),
//!                   and bits 12..16 of w_k are bits 4k..4k+4 of the f16 scale d
//! ```
//!
//! Weight `j` of group `g`: `d * (2s + 1) * (grid[idx_g][j] + delta_g)`, with `s` the
//! scale of the 16-weight half `g / 2`. The dot product with Q8_K keeps
//! `Σ (2s + 1) Σ grid * q8` and `Σ (2s + 1) * ±1 * Σ q8` in integers and applies
//! `d * d_a * (sum + shift_sum / 8)` per super-block.

use crate::float16::f16;

use super::iq_grids::IQ1S_GRID;
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::WeightType;

/// The shift added to every grid value, in units of the scale.
pub const IQ1M_DELTA: f32 = 0.125;

/// One IQ1_M super-block of 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ1M {
    /// Low 8 bits of the grid index per group of 8 weights.
    pub qs: [u8; QK_K / 8],
    /// Per group of 8: high 3 bits of the index and the shift sign, a nibble each.
    pub qh: [u8; QK_K / 16],
    /// 3-bit scales per 16 weights, with the f16 super-block scale in the top nibbles.
    pub scales: [u8; QK_K / 32],
}

const _: () = assert!(std::mem::size_of::<BlockIQ1M>() == QK_K / 8 + QK_K / 16 + QK_K / 32);

/// Marker for the IQ1_M weight format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ1_M;

/// The four scale words of a block.
#[inline(always)]
pub(crate) fn scale_words(block: &BlockIQ1M) -> [u16; 4] {
    std::array::from_fn(|k| u16::from_le_bytes([block.scales[2 * k], block.scales[2 * k + 1]]))
}

/// The f16 super-block scale, gathered from the top nibble of each scale word.
#[inline(always)]
pub(crate) fn super_scale(words: &[u16; 4]) -> f16 {
    let bits =
        (words[0] >> 12) | (words[1] >> 8) & 0x00f0 | (words[2] >> 4) & 0x0f00 | words[3] & 0xf000;
    f16::from_bits(bits)
}

/// Multiplier `2s + 1` of 16-weight half `h` (0..16).
#[inline(always)]
fn half_scale(words: &[u16; 4], h: usize) -> i32 {
    2 * ((words[h / 4] >> (3 * (h % 4))) & 7) as i32 + 1
}

/// Grid values (as i8) of group `g` (0..32) and the sign (±1) of its shift.
#[inline(always)]
fn group(block: &BlockIQ1M, g: usize) -> ([u8; 8], i32) {
    let nibble = (block.qh[g / 2] >> (4 * (g % 2))) & 0xf;
    let grid = IQ1S_GRID[block.qs[g] as usize | ((nibble & 7) as usize) << 8].to_le_bytes();
    (grid, if nibble & 8 != 0 { -1 } else { 1 })
}

impl WeightType for IQ1_M {
    const NAME: &'static str = "IQ1_M";
    const GGML_ID: u32 = 29;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockIQ1M;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockIQ1M], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (block, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let words = scale_words(block);
            let d = super_scale(&words).to_f32();
            for (g, y) in y.chunks_exact_mut(8).enumerate() {
                let dl = d * half_scale(&words, g / 2) as f32;
                let (grid, shift_sign) = group(block, g);
                let delta = shift_sign as f32 * IQ1M_DELTA;
                for (y, &v) in y.iter_mut().zip(&grid) {
                    *y = dl * (v as i8 as f32 + delta);
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockIQ1M], act: &[BlockQ8K]) -> f32 {
        debug_assert_eq!(row.len(), act.len());
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let words = scale_words(block);
            let (mut isum, mut ishift) = (0i32, 0i32);
            for g in 0..QK_K / 8 {
                let ls = half_scale(&words, g / 2);
                let (grid, shift_sign) = group(block, g);
                let q8 = &a.qs[8 * g..8 * g + 8];
                isum += ls
                    * grid
                        .iter()
                        .zip(q8)
                        .map(|(&v, &q)| v as i8 as i32 * q as i32)
                        .sum::<i32>();
                ishift += ls * shift_sign * q8.iter().map(|&q| q as i32).sum::<i32>();
            }
            sum += super_scale(&words).to_f32() * a.d * (isum as f32 + IQ1M_DELTA * ishift as f32);
        }
        sum
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ1M], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::iquants::vec_dot_iq1_m_q8_k(row, act)
    }
}

impl SuperBlock for IQ1_M {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(9);

    fn ints(block: &BlockIQ1M, out: &mut Ints) {
        // the ±1/8 shift becomes an integer: q = 8 g ± 1, and d takes the 1/8
        let words = scale_words(block);
        out.d = super_scale(&words).to_f32() * 0.125;
        for h in 0..QK_K / 16 {
            out.set_scale(h, half_scale(&words, h));
        }
        for g in 0..QK_K / 8 {
            let (grid, shift_sign) = group(block, g);
            for (j, &v) in grid.iter().enumerate() {
                out.q[8 * g + j] = 8 * v as i8 + shift_sign as i8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IQ1_M;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // Same f32 operations in the same order as gguf-py: (d * (2s + 1)) * (grid + delta).
        testing::check_dequantize::<IQ1_M>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // As IQ1_S (see its derivation): about 20u ≈ 1.2e-6 of Σ |w a|.
        testing::check_vec_dot::<IQ1_M>(3e-6);
    }

    #[test]
    fn vec_dot_matches_llama_cpp() {
        // Bit-exact with ggml's x86 AVX2 dot on the same blocks (fast path); the scalar
        // reference within the limit derived above.
        crate::quant::iq_golden_dot::check_ggml_dot::<IQ1_M>(3e-6);
    }
}
