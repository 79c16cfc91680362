//! IQ3_S: 3.4375 bits per weight. Four weights at a time are one point of a fixed
//! lattice ([`IQ3S_GRID`], 512 points of magnitudes {1, 3, ..., 15}) with explicit sign
//! bits and a 4-bit scale per 32 weights.
//!
//! Layout of one super-block of 256 weights (110 bytes):
//!
//! ```text
//! d       f16       super-block scale
//! qs      [u8; 64]  low 8 bits of the grid index of each group of 4 weights
//! qh      [u8; 8]   per sub-block of 32: bit k = bit 8 of the index of its group k
//! signs   [u8; 32]  sign bits of each group of 8 weights (bit j set = weight j negative)
//! scales  [u8; 4]   4-bit scale s of sub-block 2i in the low nibble of byte i,
//!                   of sub-block 2i + 1 in the high nibble
//! ```
//!
//! Weight `j` of a sub-block: `d * (1 + 2s) * grid[idx_{j / 4}][j % 4] * sign(j)`.
//! The dot product with Q8_K sums `(2s + 1) * Σ grid * sign * q8` in integers per
//! super-block and applies `d_w * d_a` at the end.

use crate::float16::f16;

use super::iq3_iq1_search::{iq3_subblock, iq3s_grid, Iq3Search};
use super::iq_grids::IQ3S_GRID;
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{ggml_f16, importance_weights, nearest_int};
use super::superblock::{self, signed_group, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

/// One IQ3_S super-block of 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ3S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of the grid index per group of 4 weights.
    pub qs: [u8; QK_K / 4],
    /// Bit 8 of the grid indices, one byte per sub-block of 32.
    pub qh: [u8; QK_K / 32],
    /// Sign bits, one byte per 8 weights.
    pub signs: [u8; QK_K / 8],
    /// Two 4-bit sub-block scales per byte.
    pub scales: [u8; QK_K / 64],
}

const _: () = assert!(std::mem::size_of::<BlockIQ3S>() == 2 + 13 * QK_K / 32 + QK_K / 64);

/// Marker for the IQ3_S weight format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ3_S;

/// Grid magnitudes of the 8 weights `8l..8l+8` of sub-block `ib`.
#[inline(always)]
fn group(block: &BlockIQ3S, ib: usize, l: usize) -> [u8; 8] {
    let index = |k: usize| block.qs[8 * ib + k] as usize | ((block.qh[ib] as usize >> k) & 1) << 8;
    let lo = IQ3S_GRID[index(2 * l)];
    let hi = IQ3S_GRID[index(2 * l + 1)];
    (lo as u64 | (hi as u64) << 32).to_le_bytes()
}

/// The odd multiplier `2s + 1` of sub-block `ib`.
#[inline(always)]
fn scale(block: &BlockIQ3S, ib: usize) -> i32 {
    2 * ((block.scales[ib / 2] >> (4 * (ib % 2))) & 0xf) as i32 + 1
}

impl WeightType for IQ3_S {
    const NAME: &'static str = "IQ3_S";
    const GGML_ID: u32 = 21;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockIQ3S;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockIQ3S], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (block, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let db = d * scale(block, ib) as f32;
                for (l, y) in y.chunks_exact_mut(8).enumerate() {
                    let grid = group(block, ib, l);
                    let signs = block.signs[4 * ib + l];
                    for (j, y) in y.iter_mut().enumerate() {
                        let sign = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                        *y = db * grid[j] as f32 * sign;
                    }
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockIQ3S], act: &[BlockQ8K]) -> f32 {
        debug_assert_eq!(row.len(), act.len());
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let mut isum = 0i32;
            for ib in 0..QK_K / 32 {
                let mut sub = 0i32;
                for l in 0..4 {
                    let grid = group(block, ib, l);
                    let signs = block.signs[4 * ib + l];
                    let q8 = &a.qs[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                    for j in 0..8 {
                        let p = grid[j] as i32 * q8[j] as i32;
                        sub += if signs & (1 << j) != 0 { -p } else { p };
                    }
                }
                isum += scale(block, ib) * sub;
            }
            sum += block.d.to_f32() * a.d * isum as f32;
        }
        sum
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ3S], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::iquants::vec_dot_iq3_s_q8_k(row, act)
    }
}

impl SuperBlock for IQ3_S {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(15);

    fn ints(block: &BlockIQ3S, out: &mut Ints) {
        out.d = block.d.to_f32();
        for ib in 0..QK_K / 32 {
            let ls = scale(block, ib);
            out.set_scale(2 * ib, ls);
            out.set_scale(2 * ib + 1, ls);
            for l in 0..4 {
                let signs = block.signs[4 * ib + l];
                signed_group(
                    &group(block, ib, l),
                    signs,
                    &mut out.q[32 * ib + 8 * l..][..8],
                );
            }
        }
    }
}

/// One super-block as ggml's `quantize_row_iq3_s_impl` quantizes it (`qw`: the
/// importances of its 256 weights).
///
/// Error weights are `qw_i sqrt(σ² + x_i²)` with `σ² = 2 Σ x² / 256` (or `x_i²`
/// without importances). Per sub-block of 32: the sign bits are the weights' signs, and
/// [`iq3_subblock`] finds the grid points and the scale of the magnitudes (19
/// candidates, every group re-rounded); a negative scale flips the sign bits. The
/// super-block scale is `max scale / 31`, stored times 1.033; each sub-block scale
/// becomes `round((s / d - 1) / 2)` in 0..=15.
///
/// A sub-block whose magnitudes are all zero is skipped, and ggml then does not advance
/// its write positions in `qs` and `signs`: the next sub-block's grid indices and signs
/// land in the skipped one's place (the high index bits in `qh` and the scales keep
/// their places). The bytes keep that quirk.
fn quantize_block(x: &[f32], qw: Option<&[f32]>) -> BlockIQ3S {
    let search = Iq3Search {
        grid: iq3s_grid(),
        steps: 9,
        refine_all: true,
        on_grid_at_start: false,
    };
    let mut block = BlockIQ3S {
        d: ggml_f16(0.0),
        qs: [0; QK_K / 4],
        qh: [0; QK_K / 32],
        signs: [0; QK_K / 8],
        scales: [0; QK_K / 64],
    };
    let mut scales = [0f32; QK_K / 32];
    let mut sumx2 = 0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    let mut max_scale = 0f32;
    // sub-blocks written so far: where the next one's qs and signs go
    let mut written = 0;
    let (mut weight, mut waux, mut xval) = ([0f32; 32], [0f32; 32], [0f32; 32]);
    for (ib, xb) in x.chunks_exact(32).enumerate() {
        match qw {
            Some(qw) => {
                importance_weights(xb, &qw[32 * ib..32 * ib + 32], sigma2, &mut weight);
            }
            None => {
                for (w, &v) in weight.iter_mut().zip(xb) {
                    *w = v * v;
                }
            }
        }
        for (a, &w) in waux.iter_mut().zip(&weight) {
            *a = w.sqrt();
        }
        let mut signs = [0u8; 4];
        for (i, (&v, xv)) in xb.iter().zip(xval.iter_mut()).enumerate() {
            if v >= 0.0 {
                *xv = v;
            } else {
                *xv = -v;
                signs[i / 8] |= 1 << (i % 8);
            }
        }
        let mut max = xval[0];
        for &v in &xval[1..] {
            max = if max > v { max } else { v };
        }
        if max == 0.0 {
            continue;
        }
        let (mut scale, index) = iq3_subblock(&search, &xval, &weight, &waux, max);
        if scale < 0.0 {
            scale = -scale;
            for s in &mut signs {
                *s = !*s;
            }
        }
        for (k, &j) in index.iter().enumerate() {
            block.qs[8 * written + k] = j as u8;
            block.qh[ib] |= ((j >> 8) as u8) << k;
        }
        block.signs[4 * written..4 * written + 4].copy_from_slice(&signs);
        written += 1;
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 31.0;
    block.d = ggml_f16(d * 1.033);
    let id = 1.0 / d;
    for (byte, pair) in block.scales.iter_mut().zip(scales.chunks_exact(2)) {
        let l = |s: f32| nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15) as u8;
        *byte = l(pair[0]) | l(pair[1]) << 4;
    }
    block
}

impl Quantize for IQ3_S {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockIQ3S]) {
        check_quantize_lengths::<IQ3_S>(x, imatrix, out);
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            *b = quantize_block(xb, imatrix.map(|qw| &qw[QK_K * i..QK_K * (i + 1)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IQ3_S;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // Same f32 operations in the same order as gguf-py: (d * (1 + 2s)) * grid.
        testing::check_dequantize::<IQ3_S>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Integer sums, then the same f32 scaling as IQ2_XXS (see its derivation):
        // below ~15u ≈ 9e-7 of Σ |w a|.
        testing::check_vec_dot::<IQ3_S>(2e-6);
    }

    #[test]
    fn vec_dot_matches_llama_cpp() {
        // Bit-exact with ggml's x86 AVX2 dot on the same blocks (fast path); the scalar
        // reference within the limit derived above.
        crate::quant::iq_golden_dot::check_ggml_dot::<IQ3_S>(2e-6);
    }

    #[test]
    fn quantize_matches_ggml() {
        let (blocks, aborts) = crate::quant::testing::check_quantize_or_abort::<IQ3_S>();
        assert!(blocks > 0 && aborts > 0, "{blocks} blocks, {aborts} aborts");
    }
}
