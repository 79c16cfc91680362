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

use std::sync::OnceLock;

use crate::float16::f16;

use super::iq_grids::{IQ2XXS_GRID, KSIGNS_IQ2XS};
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{
    ggml_f16, importance_weights, make_qp_quants, nearest_int, row_sigma2, Lattice, Nearest,
    GROUP_MAX_EPS,
};
use super::superblock::{self, signed_group, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

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

/// The IQ2_XXS lattice with the near points of the 2 nearest distances (ggml's choice).
fn lattice() -> &'static Lattice {
    static LATTICE: OnceLock<Lattice> = OnceLock::new();
    LATTICE.get_or_init(|| Lattice::from_iq2_grid(&IQ2XXS_GRID, 2))
}

impl Quantize for IQ2_XXS {
    /// ggml's `quantize_row_iq2_xxs_impl`. It needs the importance vector: ggml asserts
    /// one (llama-quantize refuses IQ2_XXS without an importance matrix), and so does
    /// this, by panicking.
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockIQ2XXS]) {
        check_quantize_lengths::<IQ2_XXS>(x, imatrix, out);
        let imatrix = imatrix.expect("IQ2_XXS quantization needs an importance vector");
        let lattice = lattice();
        for ((b, x), qw) in out
            .iter_mut()
            .zip(x.chunks_exact(QK_K))
            .zip(imatrix.chunks_exact(QK_K))
        {
            *b = quantize_block(lattice, x, qw);
        }
    }
}

/// The magnitudes of 8 weights (into `xval`) and their sign bits, with an even number
/// of them set as KSIGNS_IQ2XS stores them (7 bits; the 8th is the parity). Where an odd
/// number of weights are negative, the one of least `w x²` gets the other sign bit and
/// its value in `xval` changes sign, so that `sign * xval = x` still holds: the search
/// then fits a negative value to the non-negative grid. (Shared with IQ2_XS.)
pub(super) fn even_signs(x: &[f32], w: &[f32], xval: &mut [f32]) -> u8 {
    let mut signs = 0u8;
    for (i, (v, &x)) in xval[..8].iter_mut().zip(x).enumerate() {
        if x >= 0.0 {
            *v = x;
        } else {
            *v = -x;
            signs |= 1 << i;
        }
    }
    if signs.count_ones() % 2 == 1 {
        let mut imin = 0;
        let mut min = w[0] * x[0] * x[0];
        for i in 1..8 {
            let ax = w[i] * x[i] * x[i];
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

/// `Σ w x q` and `Σ w q²` for the quants `q = 2 level + 1`. (Shared with IQ2_XS and
/// IQ2_S.)
#[inline(always)]
pub(super) fn level_sums(w: &[f32], xval: &[f32], levels: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for ((&w, &x), &l) in w.iter().zip(xval).zip(levels) {
        let q = (2 * l as i32 + 1) as f32;
        sumqx += w * x * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The levels `round((x / scale - 1) / 2)` in `0..=2` of the 8 values `xval` (times
/// `id = 1 / scale`) into `levels`, moved to the nearest lattice point (under the
/// weights `waux`) where they are off the lattice. Returns whether they were on it.
/// (Shared with IQ2_XS and IQ2_S.)
#[inline(always)]
pub(super) fn fit_group(
    lattice: &Lattice,
    xval: &[f32],
    waux: &[f32],
    id: f32,
    scale: f32,
    levels: &mut [i8],
) -> bool {
    for (l, &x) in levels[..8].iter_mut().zip(xval) {
        *l = nearest_int(0.5 * (id * x - 1.0)).clamp(0, 2) as i8;
    }
    match lattice.find(levels) {
        Nearest::On(_) => true,
        Nearest::Near(near) => {
            lattice.best_neighbour(near, xval, waux, scale, levels);
            false
        }
    }
}

/// One super-block. Per sub-block of 32: weights `qw sqrt(σ² + x²)` (σ² the
/// super-block's mean square), magnitudes with even signs per group of 8; a first scale
/// from [`make_qp_quants`] (levels 0..4), then 13 candidate inverse scales
/// `(5 + k / 10) / (3 scale)`, `k = -6..=6`: each rounds the magnitudes to levels
/// (moved onto the lattice where off it) and takes over when it raises
/// `(Σ w x q)² / Σ w q²`. The best scale is refined once: every group re-rounded
/// against it and the scale refitted. The sub-block scales become 4-bit multiples of
/// `d = max / 31` (`scale ≈ d (2 l + 1)`).
fn quantize_block(lattice: &Lattice, x: &[f32], qw: &[f32]) -> BlockIQ2XXS {
    let sigma2 = row_sigma2(x);
    // per sub-block: grid indices, then signs and the 4-bit scale
    let mut words = [0u32; QK_K / 16];
    let mut scales = [0f32; QK_K / 32];
    let mut max_scale = 0f32;
    for (ib, (xb, qw)) in x.chunks_exact(32).zip(qw.chunks_exact(32)).enumerate() {
        let mut weight = [0f32; 32];
        importance_weights(xb, qw, sigma2, &mut weight);
        let waux = weight.map(f32::sqrt);
        let mut xval = [0f32; 32];
        let mut signs = [0u8; 4];
        for (k, s) in signs.iter_mut().enumerate() {
            let g = 8 * k..8 * k + 8;
            *s = even_signs(&xb[g.clone()], &weight[g.clone()], &mut xval[g]);
        }
        let max = xval[1..]
            .iter()
            .fold(xval[0], |m, &v| if m > v { m } else { v });
        if max < GROUP_MAX_EPS {
            continue;
        }
        let mut first = [0u8; 32];
        let mut scale = make_qp_quants(&xval, 4, &mut first, &weight);
        let eff_max = scale * 3.0;
        if eff_max <= 0.0 {
            continue;
        }
        // ggml keeps the first levels (possibly 3 or 4, off the lattice) where no
        // candidate wins and the scale is not positive, which happens only for NaN.
        let mut levels = first.map(|l| l as i8);
        let mut aux = [0i8; 32];
        let mut best = 0f32;
        for k in -6..=6 {
            let id = (5.0 + k as f32 * 0.1) / eff_max;
            let this_scale = 1.0 / id;
            for g in 0..4 {
                let r = 8 * g..8 * g + 8;
                fit_group(
                    lattice,
                    &xval[r.clone()],
                    &waux[r.clone()],
                    id,
                    this_scale,
                    &mut aux[r],
                );
            }
            let (sumqx, sumq2) = level_sums(&weight, &xval, &aux);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                scale = sumqx / sumq2;
                best = scale * sumqx;
                levels = aux;
            }
        }
        if scale > 0.0 {
            let id = 1.0 / scale;
            for g in 0..4 {
                let r = 8 * g..8 * g + 8;
                fit_group(
                    lattice,
                    &xval[r.clone()],
                    &waux[r.clone()],
                    id,
                    scale,
                    &mut levels[r],
                );
            }
            let (sumqx, sumq2) = level_sums(&weight, &xval, &levels);
            if sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        if scale < 0.0 {
            // ggml's guard: the stored scale is unsigned, so the signs turn instead
            scale = -scale;
            for s in &mut signs {
                *s = !*s & 127;
            }
        }
        for (g, &s) in signs.iter().enumerate() {
            let index = lattice.index_of(&levels[8 * g..]);
            words[2 * ib] |= (index as u32) << (8 * g);
            words[2 * ib + 1] |= (s as u32) << (7 * g);
        }
        assert!(scale >= 0.0, "IQ2_XXS quantize: scale {scale}");
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    let mut block = BlockIQ2XXS {
        d: ggml_f16(0.0),
        qs: [0; QK_K / 8],
    };
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 31.0;
    block.d = ggml_f16(d);
    let id = 1.0 / d;
    for (ib, &scale) in scales.iter().enumerate() {
        let l = nearest_int(0.5 * (id * scale - 1.0)).clamp(0, 15);
        words[2 * ib + 1] |= (l as u32) << 28;
    }
    for (q, w) in block.qs.chunks_exact_mut(2).zip(words) {
        q[0] = w as u16;
        q[1] = (w >> 16) as u16;
    }
    block
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

    #[test]
    fn quantize_matches_ggml() {
        let _ = testing::check_quantize_or_abort::<IQ2_XXS>();
    }

    #[test]
    fn lattice_lookups_are_ggml_neighbour_lists() {
        use crate::quant::iq_grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID};
        use crate::quant::quantize::{Lattice, Nearest};
        let levels_of = |p: u64| {
            p.to_le_bytes()
                .map(|b| [8, 25, 43].iter().position(|&m| m == b).unwrap() as i8)
        };
        // (a spread of the cube points: steps prime to 3 vary every level)
        for (grid, nwant, step) in [
            (&IQ2XXS_GRID[..], 2, 2),
            (&IQ2XS_GRID[..], 2, 5),
            (&IQ2S_GRID[..], 1, 11),
        ] {
            let lattice = Lattice::from_iq2_grid(grid, nwant);
            let points: Vec<[i8; 8]> = grid.iter().map(|&p| levels_of(p)).collect();
            let dist = |a: &[i8; 8], b: &[i8; 8]| -> i32 {
                a.iter()
                    .zip(b)
                    .map(|(&x, &y)| (x as i32 - y as i32).pow(2))
                    .sum()
            };
            for code in (0..6561).step_by(step) {
                let c: [i8; 8] = std::array::from_fn(|i| (code / 3usize.pow(i as u32) % 3) as i8);
                match lattice.find(&c) {
                    Nearest::On(j) => assert_eq!(points[j as usize], c),
                    Nearest::Near(near) => {
                        assert!(!points.contains(&c), "{c:?} is on the lattice");
                        // every point at the nwant smallest distances, by distance then
                        // index, and nothing else
                        let mut all: Vec<(i32, u16)> = (0..points.len() as u16)
                            .map(|j| (dist(&points[j as usize], &c), j))
                            .collect();
                        all.sort_unstable();
                        let mut distinct: Vec<i32> = all.iter().map(|a| a.0).collect();
                        distinct.dedup();
                        let cut = distinct[nwant.min(distinct.len()) - 1];
                        let want: Vec<u16> =
                            all.iter().take_while(|a| a.0 <= cut).map(|a| a.1).collect();
                        assert_eq!(near, &want[..], "{c:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn quantize_round_trip() {
        // Magnitudes 1, 3, 5 times the scale, with signs: 6 evenly spaced levels, fewer
        // where the lattice (and parity of the signs) rules out combinations. Counted as
        // 5 levels (limit 0.57); this row gives 0.53. A wrong layout gives ~1.
        testing::check_quantize_round_trip_weighted::<IQ2_XXS>(5);
    }
}
