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

use super::iq3_iq1_search::{glibc_merge_sort, iq1_grid_index, iq1s_grid};
use super::iq_grids::IQ1S_GRID;
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{ggml_f16, importance_weights, nearest_int};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

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

/// Below this largest magnitude a sub-block gets scale 0 and grid point 0.
const GROUP_MAX_EPS: f32 = 1e-12;

/// The values of levels 0, 1, 2 with a shift of +1/8 and of -1/8.
const SHIFTED_UP: [f32; 3] = [-1.0 + IQ1S_DELTA, IQ1S_DELTA, 1.0 + IQ1S_DELTA];
const SHIFTED_DOWN: [f32; 3] = [-1.0 - IQ1S_DELTA, -IQ1S_DELTA, 1.0 - IQ1S_DELTA];

/// `Σ w x v` and `Σ w v²` of a split of sorted weights into levels 0, 1, 2 at `i1 <= i2`,
/// from prefix sums `sumx` (of `w x`) and `sumw` (of `w`), for level values `v`.
#[inline(always)]
fn split_sums(
    sumx: &[f32; 33],
    sumw: &[f32; 33],
    i1: usize,
    i2: usize,
    v: &[f32; 3],
) -> (f32, f32) {
    let sumqx =
        (sumx[i1] - sumx[0]) * v[0] + (sumx[i2] - sumx[i1]) * v[1] + (sumx[32] - sumx[i2]) * v[2];
    let sumq2 = (sumw[i1] - sumw[0]) * v[0] * v[0]
        + (sumw[i2] - sumw[i1]) * v[1] * v[1]
        + (sumw[32] - sumw[i2]) * v[2] * v[2];
    (sumqx, sumq2)
}

/// One super-block as ggml's `quantize_row_iq1_s_impl` quantizes it (`qw`: the
/// importances of its 256 weights, which IQ1_S cannot do without).
///
/// Error weights are `qw_i sqrt(σ² + x_i²)` with `σ² = 2 Σ x² / 256`. Per sub-block
/// of 32, with three levels there is an exact search: the weights sorted by value
/// (stably, as glibc's qsort sorts them), every split into levels 0, 1, 2 at two cut
/// points, and both shifts, is scored by `(Σ w x v)² / Σ w v²` from prefix sums; the
/// first best split wins, with scale `Σ w x v / Σ w v²` (a negative one mirrors the
/// levels and the shift). Each group of 8 levels that is no grid point takes its nearest
/// grid neighbour under that scale, and then the scale is refitted. The super-block
/// scale is `max scale / 15`, stored times 1.125; each sub-block's becomes
/// `round((s / d - 1) / 2)` in 0..=7.
fn quantize_block(x: &[f32], qw: &[f32]) -> BlockIQ1S {
    let grid = iq1s_grid();
    let mut block = BlockIQ1S {
        d: ggml_f16(0.0),
        qs: [0; QK_K / 8],
        qh: [0; QK_K / 32],
    };
    let mut scales = [0f32; QK_K / 32];
    let mut shift_down = [false; QK_K / 32];
    let mut sumx2 = 0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    let mut max_scale = 0f32;
    let mut weight = [0f32; 32];
    let mut pairs = [(0f32, 0u8); 32];
    let mut scratch = [(0f32, 0u8); 32];
    for (ib, xb) in x.chunks_exact(32).enumerate() {
        importance_weights(xb, &qw[32 * ib..32 * ib + 32], sigma2, &mut weight);
        let mut max = xb[0].abs();
        for &v in &xb[1..] {
            let a = v.abs();
            max = if max > a { max } else { a };
        }
        if max < GROUP_MAX_EPS {
            continue;
        }
        for (i, (p, &v)) in pairs.iter_mut().zip(xb).enumerate() {
            *p = (v, i as u8);
        }
        glibc_merge_sort(&mut pairs, &mut scratch);
        let (mut sumx, mut sumw) = ([0f32; 33], [0f32; 33]);
        for (j, &(_, i)) in pairs.iter().enumerate() {
            let i = i as usize;
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        let mut best_score = -f32::MAX;
        let mut scale = max;
        let mut best: Option<(usize, usize, bool)> = None;
        for i1 in 0..=32 {
            for i2 in i1..=32 {
                for (down, v) in [(false, &SHIFTED_UP), (true, &SHIFTED_DOWN)] {
                    let (sumqx, sumq2) = split_sums(&sumx, &sumw, i1, i2, v);
                    if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                        scale = sumqx / sumq2;
                        best_score = scale * sumqx;
                        best = Some((i1, i2, down));
                    }
                }
            }
        }
        let Some((i1, i2, mut down)) = best else {
            continue;
        };
        let mut levels = [0u8; 32];
        for (j, &(_, i)) in pairs.iter().enumerate() {
            levels[i as usize] = (j >= i1) as u8 + (j >= i2) as u8;
        }
        if scale < 0.0 {
            for l in &mut levels {
                *l = 2 - *l;
            }
            scale = -scale;
            down = !down;
        }
        let values = if down { &SHIFTED_DOWN } else { &SHIFTED_UP };
        let mut index = [0usize; 4];
        let mut all_on_grid = true;
        for (k, slot) in index.iter_mut().enumerate() {
            let r = 8 * k..8 * k + 8;
            let l: &[u8; 8] = levels[r.clone()].try_into().expect("8 levels");
            let (j, on_grid) = iq1_grid_index(grid, l, &xb[r.clone()], &weight[r], scale, values);
            *slot = j;
            all_on_grid &= on_grid;
        }
        if !all_on_grid {
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            for (k, &j) in index.iter().enumerate() {
                for (i, &l) in grid.point(j).iter().enumerate() {
                    let w = weight[8 * k + i];
                    let q = values[l as usize];
                    sumqx += w * q * xb[8 * k + i];
                    sumq2 += w * q * q;
                }
            }
            if sumqx > 0.0 && sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        let mut h = 0u16;
        for (k, &j) in index.iter().enumerate() {
            block.qs[4 * ib + k] = j as u8;
            h |= ((j >> 8) as u16) << (3 * k);
        }
        block.qh[ib] = h;
        if scale.is_nan() {
            panic!("IQ1_S quantizer: NaN sub-block scale; ggml aborts here too");
        }
        scales[ib] = scale;
        shift_down[ib] = down;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 15.0;
    block.d = ggml_f16(d * 1.125);
    let id = 1.0 / d;
    for ((qh, &s), &down) in block.qh.iter_mut().zip(&scales).zip(&shift_down) {
        let l = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 7) as u16;
        *qh |= (l | if down { 8 } else { 0 }) << 12;
    }
    block
}

impl Quantize for IQ1_S {
    /// Panics without `imatrix`: ggml's IQ1_S quantizer requires one (llama-quantize
    /// refuses IQ1_S tensors without it).
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockIQ1S]) {
        check_quantize_lengths::<IQ1_S>(x, imatrix, out);
        let imatrix = imatrix.expect("IQ1_S needs an importance matrix (ggml asserts one)");
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            *b = quantize_block(xb, &imatrix[QK_K * i..QK_K * (i + 1)]);
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

    #[test]
    fn quantize_matches_ggml() {
        let (blocks, aborts) = crate::quant::testing::check_quantize_or_abort::<IQ1_S>();
        assert!(blocks > 0 && aborts > 0, "{blocks} blocks, {aborts} aborts");
    }
}
