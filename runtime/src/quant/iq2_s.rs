//! IQ2_S: 2.5625 bits per weight. Eight weights at a time are one point of a fixed
//! lattice ([`IQ2S_GRID`], 1024 points of magnitudes {8, 25, 43}) with eight explicit
//! sign bits, scaled per 16 weights by a 4-bit scale.
//!
//! Layout of one super-block of 256 weights (82 bytes):
//!
//! ```text
//! d       f16        super-block scale
//! qs      [u8; 32]   low 8 bits of the grid index of each group of 8 weights
//! signs   [u8; 32]   sign bits of each group of 8 (bit j set = weight j negative)
//! qh      [u8; 8]    per sub-block of 32: bits 2l..2l+2 = high 2 bits of group l's index
//! scales  [u8; 8]    per sub-block of 32: low nibble scales its first 16 weights,
//!                    high nibble its last 16
//! ```
//!
//! (ggml declares `qs` as one 64-byte array holding the indices and then the signs; the
//! bytes are the same.) Weight `j` of group `g`: `d * (0.5 + s) / 4 * grid[idx_g][j] *
//! sign_g(j)`. The dot product with Q8_K sums `(2s + 1) * Σ grid * sign * q8` in
//! integers per super-block and applies `d_w * d_a / 8` at the end.

use std::sync::OnceLock;

use crate::float16::f16;

use super::iq2_xs::search_pair;
use super::iq_grids::IQ2S_GRID;
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{ggml_f16, importance_weights, nearest_int, Lattice};
use super::superblock::{self, signed_group, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

/// One IQ2_S super-block of 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ2S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of each group's grid index.
    pub qs: [u8; QK_K / 8],
    /// Eight sign bits per group.
    pub signs: [u8; QK_K / 8],
    /// High 2 bits of the grid indices, four groups per byte.
    pub qh: [u8; QK_K / 32],
    /// Two 4-bit scales per sub-block of 32.
    pub scales: [u8; QK_K / 32],
}

const _: () = assert!(std::mem::size_of::<BlockIQ2S>() == 2 + QK_K / 4 + QK_K / 16);

/// Marker for the IQ2_S weight format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ2_S;

/// Grid magnitudes of group `g` (0..32) of a block.
#[inline(always)]
fn grid(block: &BlockIQ2S, g: usize) -> [u8; 8] {
    let high = (block.qh[g / 4] as usize >> (2 * (g % 4))) & 3;
    IQ2S_GRID[block.qs[g] as usize | high << 8].to_le_bytes()
}

/// Signed integer dot of groups `g0` and `g0 + 1` with 16 Q8 quants.
#[inline(always)]
fn half_dot(block: &BlockIQ2S, g0: usize, q8: &[i8]) -> i32 {
    let mut sum = 0i32;
    for l in 0..2 {
        let (grid, signs) = (grid(block, g0 + l), block.signs[g0 + l]);
        for j in 0..8 {
            let p = grid[j] as i32 * q8[8 * l + j] as i32;
            sum += if signs & (1 << j) != 0 { -p } else { p };
        }
    }
    sum
}

impl WeightType for IQ2_S {
    const NAME: &'static str = "IQ2_S";
    const GGML_ID: u32 = 22;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockIQ2S;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockIQ2S], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (block, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            for (g, y) in y.chunks_exact_mut(8).enumerate() {
                let nibble = (block.scales[g / 4] >> (4 * ((g / 2) % 2))) & 0xf;
                let db = d * (0.5 + nibble as f32) * 0.25;
                let (grid, signs) = (grid(block, g), block.signs[g]);
                for (j, y) in y.iter_mut().enumerate() {
                    let sign = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                    *y = db * grid[j] as f32 * sign;
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockIQ2S], act: &[BlockQ8K]) -> f32 {
        debug_assert_eq!(row.len(), act.len());
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let mut isum = 0i32;
            for ib in 0..QK_K / 32 {
                let ls_lo = 2 * (block.scales[ib] & 0xf) as i32 + 1;
                let ls_hi = 2 * (block.scales[ib] >> 4) as i32 + 1;
                let q8 = &a.qs[32 * ib..32 * ib + 32];
                isum += ls_lo * half_dot(block, 4 * ib, &q8[..16])
                    + ls_hi * half_dot(block, 4 * ib + 2, &q8[16..]);
            }
            sum += block.d.to_f32() * a.d * isum as f32;
        }
        0.125 * sum
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ2S], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::iquants::vec_dot_iq2_s_q8_k(row, act)
    }
}

impl SuperBlock for IQ2_S {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(43);

    fn ints(block: &BlockIQ2S, out: &mut Ints) {
        // the scale is (2 ls + 1) / 8: d takes the 1/8
        out.d = block.d.to_f32() * 0.125;
        for (ib, &sc) in block.scales.iter().enumerate() {
            out.set_scale(2 * ib, 2 * (sc & 0x0f) as i32 + 1);
            out.set_scale(2 * ib + 1, 2 * (sc >> 4) as i32 + 1);
        }
        for g in 0..QK_K / 8 {
            signed_group(
                &grid(block, g),
                block.signs[g],
                &mut out.q[8 * g..8 * g + 8],
            );
        }
    }
}

/// Below this largest magnitude 16 weights count as all zero (ggml's
/// `GROUP_MAX_EPS_IQ2_S`).
const GROUP_MAX_EPS_IQ2_S: f32 = 1e-8;

/// The IQ2_S lattice with the near points of the nearest distance only (ggml's choice).
fn lattice() -> &'static Lattice {
    static LATTICE: OnceLock<Lattice> = OnceLock::new();
    LATTICE.get_or_init(|| Lattice::from_iq2_grid(&IQ2S_GRID, 1))
}

impl Quantize for IQ2_S {
    /// ggml's `quantize_row_iq2_s_impl`.
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockIQ2S]) {
        check_quantize_lengths::<IQ2_S>(x, imatrix, out);
        let lattice = lattice();
        for (i, (b, x)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            *b = quantize_block(lattice, x, imatrix.map(|q| &q[QK_K * i..QK_K * (i + 1)]));
        }
    }
}

/// One super-block, as IQ2_XS quantizes it ([`search_pair`] per 16 weights) but with
/// eight plain sign bits per group, weights `qw sqrt(σ² + x²)` with σ² twice the
/// super-block's mean square (`σ²/4 + x²` without an importance vector), a higher
/// all-zero threshold, and `d` stored 1.25% smaller (`0.9875 max / 31`).
fn quantize_block(lattice: &Lattice, x: &[f32], qw: Option<&[f32]>) -> BlockIQ2S {
    let mut block = BlockIQ2S {
        d: ggml_f16(0.0),
        qs: [0; QK_K / 8],
        signs: [0; QK_K / 8],
        qh: [0; QK_K / 32],
        scales: [0; QK_K / 32],
    };
    let mut sumx2 = 0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    let mut scales = [0f32; QK_K / 16];
    let mut max_scale = 0f32;
    for (ib, xb) in x.chunks_exact(16).enumerate() {
        let mut weight = [0f32; 16];
        match qw {
            Some(qw) => {
                importance_weights(xb, &qw[16 * ib..16 * ib + 16], sigma2, &mut weight);
            }
            None => {
                for (w, &v) in weight.iter_mut().zip(xb) {
                    *w = 0.25 * sigma2 + v * v;
                }
            }
        }
        let waux = weight.map(f32::sqrt);
        let mut xval = [0f32; 16];
        let mut signs = [0u8; 2];
        for (i, (v, &x)) in xval.iter_mut().zip(xb).enumerate() {
            if x >= 0.0 {
                *v = x;
            } else {
                *v = -x;
                signs[i / 8] |= 1 << (i % 8);
            }
        }
        let max = xval[1..]
            .iter()
            .fold(xval[0], |m, &v| if m > v { m } else { v });
        if max < GROUP_MAX_EPS_IQ2_S {
            continue;
        }
        let (mut scale, levels) = search_pair(lattice, &xval, &weight, &waux, max);
        if scale < 0.0 {
            // ggml's guard: the stored scale is unsigned, so the signs turn instead
            scale = -scale;
            signs = signs.map(|s| !s);
        }
        for (k, &s) in signs.iter().enumerate() {
            let index = lattice.index_of(&levels[8 * k..]);
            let g = 2 * ib + k;
            block.qs[g] = index as u8;
            block.qh[g / 4] |= ((index >> 8) as u8) << (2 * (g % 4));
            block.signs[g] = s;
        }
        assert!(scale >= 0.0, "IQ2_S quantize: scale {scale}");
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    // Without a scale, ggml leaves the indices and signs written (d and scales stay 0).
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 31.0;
    block.d = ggml_f16(d * 0.9875);
    let id = 1.0 / d;
    for (ib, &scale) in scales.iter().enumerate() {
        let l = nearest_int(0.5 * (id * scale - 1.0)).clamp(0, 15) as u8;
        block.scales[ib / 2] |= l << (4 * (ib % 2));
    }
    block
}

#[cfg(test)]
mod tests {
    use super::IQ2_S;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // Same f32 operations in the same order as gguf-py: (d * (0.5 + s) * 0.25) * grid.
        testing::check_dequantize::<IQ2_S>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Integer sums, then the same f32 scaling as IQ2_XXS (see its derivation):
        // below ~15u ≈ 9e-7 of Σ |w a|.
        testing::check_vec_dot::<IQ2_S>(2e-6);
    }

    #[test]
    fn vec_dot_matches_llama_cpp() {
        // Bit-exact with ggml's x86 AVX2 dot on the same blocks (fast path); the scalar
        // reference within the limit derived above.
        crate::quant::iq_golden_dot::check_ggml_dot::<IQ2_S>(2e-6);
    }

    #[test]
    fn quantize_matches_ggml() {
        let _ = testing::check_quantize_or_abort::<IQ2_S>();
    }

    #[test]
    fn quantize_round_trip() {
        // Magnitudes 1, 3, 5 times the scale, with signs: 6 evenly spaced levels, fewer
        // where the lattice (and parity of the signs) rules out combinations. Counted as
        // 6 levels (limit 0.45); this row gives 0.31. A wrong layout gives ~1.
        testing::check_quantize_round_trip::<IQ2_S>(6);
    }
}
