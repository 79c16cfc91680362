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

use super::iq3_iq1_search::{glibc_merge_sort, iq1_grid_index, iq1s_grid};
use super::iq_grids::IQ1S_GRID;
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{ggml_f16, importance_weights, nearest_int};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

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

/// Below this largest magnitude a 16-weight half gets scale 0 and grid point 0.
const GROUP_MAX_EPS: f32 = 1e-7;

/// The values of levels 0, 1, 2 with a shift of +1/8 and of -1/8.
const SHIFTED_UP: [f32; 3] = [-1.0 + IQ1M_DELTA, IQ1M_DELTA, 1.0 + IQ1M_DELTA];
const SHIFTED_DOWN: [f32; 3] = [-1.0 - IQ1M_DELTA, -IQ1M_DELTA, 1.0 - IQ1M_DELTA];

/// The level values of group `k` (0, 1) of a 16-weight half with shift choice `shifts`:
/// bit 1 set = the first group shifted down, bit 0 set = the second.
#[inline(always)]
fn group_values(shifts: u8, k: usize) -> &'static [f32; 3] {
    if shifts >> (1 - k) & 1 == 1 {
        &SHIFTED_DOWN
    } else {
        &SHIFTED_UP
    }
}

/// The best split of a 16-weight half into levels 0, 1, 2 and its shifts, as ggml's
/// IQ1_M search finds it: `(i1, i2, shifts, scale)` for the weights in `order` (sorted
/// by value), the first split and shift choice of largest `(Σ w x v)² / Σ w v²`.
///
/// Each group of 8 has its own shift, so the prefix sums of `w x` and `w` are kept per
/// group; since the level values step by 1, `Σ w x v` of a split is
/// `T v_2 - S(i1) - S(i2)` per group, and `Σ w v²` is `W v_2² + W(i1) (v_0² - v_1²) +
/// W(i2) (v_1² - v_2²)`, in ggml's order of operations.
fn best_split(
    xb: &[f32],
    weight: &[f32],
    order: &[(f32, u8); 16],
) -> Option<(usize, usize, u8, f32)> {
    let (mut px, mut pw) = ([[0f32; 17]; 2], [[0f32; 17]; 2]);
    for (j, &(_, i)) in order.iter().enumerate() {
        let i = i as usize;
        let h = i / 8;
        px[h][j + 1] = px[h][j] + weight[i] * xb[i];
        px[1 - h][j + 1] = px[1 - h][j];
        pw[h][j + 1] = pw[h][j] + weight[i];
        pw[1 - h][j + 1] = pw[1 - h][j];
    }
    let (up, down) = (&SHIFTED_UP, &SHIFTED_DOWN);
    let (p2, m2) = (up[2], down[2]);
    let cp1 = up[0] * up[0] - up[1] * up[1];
    let cp2 = up[1] * up[1] - up[2] * up[2];
    let cm1 = down[0] * down[0] - down[1] * down[1];
    let cm2 = down[1] * down[1] - down[2] * down[2];
    let mut best_score = -f32::MAX;
    let mut best = None;
    for i1 in 0..=16 {
        for i2 in i1..=16 {
            let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) =
                ([0f32; 2], [0f32; 2], [0f32; 2], [0f32; 2]);
            for h in 0..2 {
                let sx = px[h][i1] + px[h][i2];
                qx_p[h] = px[h][16] * p2 - sx;
                qx_m[h] = px[h][16] * m2 - sx;
                q2_p[h] = pw[h][16] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                q2_m[h] = pw[h][16] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
            }
            let sumqx = [
                qx_p[0] + qx_p[1],
                qx_p[0] + qx_m[1],
                qx_m[0] + qx_p[1],
                qx_m[0] + qx_m[1],
            ];
            let sumq2 = [
                q2_p[0] + q2_p[1],
                q2_p[0] + q2_m[1],
                q2_m[0] + q2_p[1],
                q2_m[0] + q2_m[1],
            ];
            for k in 0..4 {
                if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                    let scale = sumqx[k] / sumq2[k];
                    best_score = scale * sumqx[k];
                    best = Some((i1, i2, k as u8, scale));
                }
            }
        }
    }
    best
}

/// One super-block as ggml's `quantize_row_iq1_m_impl` quantizes it (`qw`: the
/// importances of its 256 weights).
///
/// Error weights are `qw_i sqrt(σ² + x_i²)` with `σ² = 2 Σ x² / 256` (or `x_i²`
/// without importances). Per half of 16: the exact search of [`best_split`] over the
/// weights sorted by value (stably, as glibc's qsort sorts them); a negative scale
/// mirrors the levels and both shifts. Each group of 8 levels that is no grid point
/// takes its nearest grid neighbour under that scale, and then the scale is refitted.
/// The 3-bit scales are `round((s / d - 1) / 2)` with `d = max scale / 15`; the stored
/// super-block scale is then refitted to the whole block, `Σ w x q / Σ w q²` over all
/// 256 weights with their final grid values and scales, times 1.1125.
fn quantize_block(x: &[f32], qw: Option<&[f32]>) -> BlockIQ1M {
    let grid = iq1s_grid();
    let mut block = BlockIQ1M {
        qs: [0; QK_K / 8],
        qh: [0; QK_K / 16],
        scales: [0; QK_K / 32],
    };
    let mut scales = [0f32; QK_K / 16];
    let mut shifts = [0u8; QK_K / 16];
    let mut sumx2 = 0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    let mut weights = [0f32; QK_K];
    match qw {
        Some(qw) => {
            for ((w, xb), qw) in weights
                .chunks_exact_mut(16)
                .zip(x.chunks_exact(16))
                .zip(qw.chunks_exact(16))
            {
                importance_weights(xb, qw, sigma2, w);
            }
        }
        None => {
            for (w, &v) in weights.iter_mut().zip(x) {
                *w = v * v;
            }
        }
    }
    let mut max_scale = 0f32;
    let mut pairs = [(0f32, 0u8); 16];
    let mut scratch = [(0f32, 0u8); 16];
    for (ib, (xb, weight)) in x.chunks_exact(16).zip(weights.chunks_exact(16)).enumerate() {
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
        let Some((i1, i2, mut shift, mut scale)) = best_split(xb, weight, &pairs) else {
            continue;
        };
        let mut levels = [0u8; 16];
        for (j, &(_, i)) in pairs.iter().enumerate() {
            levels[i as usize] = (j >= i1) as u8 + (j >= i2) as u8;
        }
        if scale < 0.0 {
            for l in &mut levels {
                *l = 2 - *l;
            }
            scale = -scale;
            shift = 3 - shift;
        }
        let mut index = [0usize; 2];
        let mut all_on_grid = true;
        for (k, slot) in index.iter_mut().enumerate() {
            let r = 8 * k..8 * k + 8;
            let l: &[u8; 8] = levels[r.clone()].try_into().expect("8 levels");
            let values = group_values(shift, k);
            let (j, on_grid) = iq1_grid_index(grid, l, &xb[r.clone()], &weight[r], scale, values);
            *slot = j;
            all_on_grid &= on_grid;
        }
        if !all_on_grid {
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            for (k, &j) in index.iter().enumerate() {
                let values = group_values(shift, k);
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
        block.qs[2 * ib] = index[0] as u8;
        block.qs[2 * ib + 1] = index[1] as u8;
        block.qh[ib] = (index[0] >> 8) as u8 | ((index[1] >> 8) as u8) << 4;
        if scale.is_nan() {
            panic!("IQ1_M quantizer: NaN scale; ggml aborts here too");
        }
        scales[ib] = scale;
        shifts[ib] = shift;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    if max_scale == 0.0 {
        return block;
    }
    let mut words = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for (ib, (xb, weight)) in x.chunks_exact(16).zip(weights.chunks_exact(16)).enumerate() {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        words[ib / 4] |= (l as u16) << (3 * (ib % 4));
        // the shift signs: bit 3 for the first group of 8, bit 7 for the second
        block.qh[ib] |= (shifts[ib] & 2) << 2 | (shifts[ib] & 1) << 7;
        let mult = (2 * l + 1) as f32;
        for k in 0..2 {
            let values = group_values(shifts[ib], k);
            let j = block.qs[2 * ib + k] as usize | (block.qh[ib] as usize >> (4 * k) & 7) << 8;
            for (i, &g) in grid.point(j).iter().enumerate() {
                let w = weight[8 * k + i];
                let q = values[g as usize] * mult;
                sumqx += w * q * xb[8 * k + i];
                sumq2 += w * q * q;
            }
        }
    }
    if sumq2 > 0.0 {
        d = sumqx / sumq2;
    }
    let bits = ggml_f16(d * 1.1125).to_bits();
    words[0] |= (bits & 0x000f) << 12;
    words[1] |= (bits & 0x00f0) << 8;
    words[2] |= (bits & 0x0f00) << 4;
    words[3] |= bits & 0xf000;
    for (out, w) in block.scales.chunks_exact_mut(2).zip(words) {
        out.copy_from_slice(&w.to_le_bytes());
    }
    block
}

impl Quantize for IQ1_M {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockIQ1M]) {
        check_quantize_lengths::<IQ1_M>(x, imatrix, out);
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            *b = quantize_block(xb, imatrix.map(|qw| &qw[QK_K * i..QK_K * (i + 1)]));
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

    #[test]
    fn quantize_matches_ggml() {
        let (blocks, aborts) = crate::quant::testing::check_quantize_or_abort::<IQ1_M>();
        assert!(blocks > 0 && aborts > 0, "{blocks} blocks, {aborts} aborts");
    }
}
