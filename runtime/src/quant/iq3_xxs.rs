//! IQ3_XXS: 3.0625 bits per weight. Four weights at a time are one point of a fixed
//! lattice ([`IQ3XXS_GRID`], 256 points of magnitudes {4, 12, ..., 52, 62}); each group
//! of eight weights has an even-parity sign pattern ([`KSIGNS_IQ2XS`]); a 4-bit scale
//! per 32 weights.
//!
//! Layout of one super-block of 256 weights (98 bytes):
//!
//! ```text
//! d             f16       super-block scale
//! qs            [u8; 64]  grid index of each group of 4 weights
//! signs_scales  [u8; 32]  one little-endian u32 per sub-block of 32 weights:
//!                         bits 7l..7l+7 = sign index of weights 8l..8l+8 (l = 0..3),
//!                         bits 28..32 = sub-block scale s
//! ```
//!
//! Weight `j` of a sub-block: `d * (0.5 + s) / 2 * grid[qs[j / 4]][j % 4] * sign(j)`.
//! The dot product with Q8_K sums `(2s + 1) * Σ grid * sign * q8` in integers per
//! super-block and applies `d_w * d_a / 4` at the end.

use crate::float16::f16;

use super::iq3_iq1_search::{iq3_subblock, iq3xxs_grid, Iq3Search};
use super::iq_grids::{IQ3XXS_GRID, KSIGNS_IQ2XS};
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{ggml_f16, importance_weights, nearest_int};
use super::superblock::{self, signed_group, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

/// One IQ3_XXS super-block of 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ3XXS {
    /// Super-block scale.
    pub d: f16,
    /// Grid index per group of 4 weights.
    pub qs: [u8; QK_K / 4],
    /// Per sub-block of 32: four 7-bit sign indices and the 4-bit scale (u32, LE).
    pub signs_scales: [u8; QK_K / 8],
}

const _: () = assert!(std::mem::size_of::<BlockIQ3XXS>() == 2 + 3 * QK_K / 8);

/// Marker for the IQ3_XXS weight format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ3_XXS;

/// The signs-and-scale word of sub-block `ib`.
#[inline(always)]
pub(crate) fn signs_scale_word(block: &BlockIQ3XXS, ib: usize) -> u32 {
    u32::from_le_bytes(
        block.signs_scales[4 * ib..4 * ib + 4]
            .try_into()
            .expect("4 bytes"),
    )
}

/// Grid magnitudes of the 8 weights `8l..8l+8` of sub-block `ib`.
#[inline(always)]
fn group(block: &BlockIQ3XXS, ib: usize, l: usize) -> [u8; 8] {
    let lo = IQ3XXS_GRID[block.qs[8 * ib + 2 * l] as usize];
    let hi = IQ3XXS_GRID[block.qs[8 * ib + 2 * l + 1] as usize];
    (lo as u64 | (hi as u64) << 32).to_le_bytes()
}

impl WeightType for IQ3_XXS {
    const NAME: &'static str = "IQ3_XXS";
    const GGML_ID: u32 = 18;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockIQ3XXS;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockIQ3XXS], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (block, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let word = signs_scale_word(block, ib);
                let db = d * (0.5 + (word >> 28) as f32) * 0.5;
                for (l, y) in y.chunks_exact_mut(8).enumerate() {
                    let grid = group(block, ib, l);
                    let signs = KSIGNS_IQ2XS[(word >> (7 * l)) as usize & 127];
                    for (j, y) in y.iter_mut().enumerate() {
                        let sign = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                        *y = db * grid[j] as f32 * sign;
                    }
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockIQ3XXS], act: &[BlockQ8K]) -> f32 {
        debug_assert_eq!(row.len(), act.len());
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let mut isum = 0i32;
            for ib in 0..QK_K / 32 {
                let word = signs_scale_word(block, ib);
                let mut sub = 0i32;
                for l in 0..4 {
                    let grid = group(block, ib, l);
                    let signs = KSIGNS_IQ2XS[(word >> (7 * l)) as usize & 127];
                    let q8 = &a.qs[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                    for j in 0..8 {
                        let p = grid[j] as i32 * q8[j] as i32;
                        sub += if signs & (1 << j) != 0 { -p } else { p };
                    }
                }
                isum += (2 * (word >> 28) as i32 + 1) * sub;
            }
            sum += block.d.to_f32() * a.d * isum as f32;
        }
        0.25 * sum
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ3XXS], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::iquants::vec_dot_iq3_xxs_q8_k(row, act)
    }
}

impl SuperBlock for IQ3_XXS {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(62);

    fn ints(block: &BlockIQ3XXS, out: &mut Ints) {
        // the scale is (2 ls + 1) / 4: d takes the 1/4
        out.d = block.d.to_f32() * 0.25;
        for ib in 0..QK_K / 32 {
            let word = signs_scale_word(block, ib);
            let ls = 2 * (word >> 28) as i32 + 1;
            out.set_scale(2 * ib, ls);
            out.set_scale(2 * ib + 1, ls);
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[(word >> (7 * l)) as usize & 127];
                signed_group(
                    &group(block, ib, l),
                    signs,
                    &mut out.q[32 * ib + 8 * l..][..8],
                );
            }
        }
    }
}

/// Below this largest magnitude a sub-block gets scale 0 and all-zero bytes.
const GROUP_MAX_EPS: f32 = 1e-8;

/// Magnitudes and sign pattern of 8 weights, in IQ3_XXS's even parity: the weights'
/// signs, except that with an odd number of negative weights the one of least
/// `w x²` (the first on ties) keeps the wrong sign, its magnitude negated instead.
/// Returns the 7 stored sign bits (the eighth follows from the parity).
#[inline]
fn even_signs(x: &[f32], weight: &[f32], xval: &mut [f32]) -> u8 {
    let mut signs = 0u8;
    for (i, (&v, xv)) in x.iter().zip(xval.iter_mut()).enumerate() {
        if v >= 0.0 {
            *xv = v;
        } else {
            *xv = -v;
            signs |= 1 << i;
        }
    }
    if signs.count_ones() % 2 == 1 {
        let (mut imin, mut min) = (0, weight[0] * x[0] * x[0]);
        for i in 1..8 {
            let ax = weight[i] * x[i] * x[i];
            if ax < min {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        signs ^= 1 << imin;
    }
    signs & 127
}

/// One super-block as ggml's `quantize_row_iq3_xxs_impl` quantizes it (`qw`: the
/// importances of its 256 weights).
///
/// Error weights are `qw_i sqrt(σ² + x_i²)` with `σ² = 2 Σ x² / 256` (or `x_i²`
/// without importances). Per sub-block of 32: the signs go to even parity
/// ([`even_signs`]), [`iq3_subblock`] finds the grid points and the scale of the
/// magnitudes (31 candidates), and a negative scale flips the 7 stored sign bits. The
/// super-block scale is `max scale / 31`, stored times 1.0125; each sub-block scale
/// becomes `round((s / d - 1) / 2)` in 0..=15.
fn quantize_block(x: &[f32], qw: Option<&[f32]>) -> BlockIQ3XXS {
    let search = Iq3Search {
        grid: iq3xxs_grid(),
        steps: 15,
        refine_all: false,
        on_grid_at_start: true,
    };
    let mut block = BlockIQ3XXS {
        d: ggml_f16(0.0),
        qs: [0; QK_K / 4],
        signs_scales: [0; QK_K / 8],
    };
    let mut words = [0u32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut sumx2 = 0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    let mut max_scale = 0f32;
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
        for (k, s) in signs.iter_mut().enumerate() {
            let r = 8 * k..8 * k + 8;
            *s = even_signs(&xb[r.clone()], &weight[r.clone()], &mut xval[r]);
        }
        let mut max = xval[0];
        for &v in &xval[1..] {
            max = if max > v { max } else { v };
        }
        if max < GROUP_MAX_EPS {
            continue;
        }
        let (mut scale, index) = iq3_subblock(&search, &xval, &weight, &waux, max);
        if scale < 0.0 {
            scale = -scale;
            for s in &mut signs {
                *s = !*s & 127;
            }
        }
        for (q, &j) in block.qs[8 * ib..8 * ib + 8].iter_mut().zip(&index) {
            *q = j as u8;
        }
        words[ib] = signs
            .iter()
            .enumerate()
            .fold(0, |w, (k, &s)| w | (s as u32) << (7 * k));
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    if max_scale == 0.0 {
        block.qs = [0; QK_K / 4];
        return block;
    }
    let d = max_scale / 31.0;
    block.d = ggml_f16(d * 1.0125);
    let id = 1.0 / d;
    for ((word, &s), out) in words
        .iter_mut()
        .zip(&scales)
        .zip(block.signs_scales.chunks_exact_mut(4))
    {
        let l = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15);
        *word |= (l as u32) << 28;
        out.copy_from_slice(&word.to_le_bytes());
    }
    block
}

impl Quantize for IQ3_XXS {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockIQ3XXS]) {
        check_quantize_lengths::<IQ3_XXS>(x, imatrix, out);
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            *b = quantize_block(xb, imatrix.map(|qw| &qw[QK_K * i..QK_K * (i + 1)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IQ3_XXS;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // Same f32 operations in the same order as gguf-py: (d * (0.5 + s) * 0.5) * grid.
        testing::check_dequantize::<IQ3_XXS>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Integer sums (at most 8 * 31 * 32 * 62 * 127 < 2^31), then the same f32 scaling
        // as IQ2_XXS (see its derivation): below ~15u ≈ 9e-7 of Σ |w a|.
        testing::check_vec_dot::<IQ3_XXS>(2e-6);
    }

    #[test]
    fn vec_dot_matches_llama_cpp() {
        // Bit-exact with ggml's x86 AVX2 dot on the same blocks (fast path); the scalar
        // reference within the limit derived above.
        crate::quant::iq_golden_dot::check_ggml_dot::<IQ3_XXS>(2e-6);
    }

    #[test]
    fn quantize_matches_ggml() {
        let (blocks, aborts) = crate::quant::testing::check_quantize_or_abort::<IQ3_XXS>();
        assert!(blocks > 0 && aborts > 0, "{blocks} blocks, {aborts} aborts");
    }
}
