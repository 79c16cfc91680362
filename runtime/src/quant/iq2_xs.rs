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

use std::sync::OnceLock;

use crate::float16::f16;

use super::iq2_xxs::{even_signs, fit_group, level_sums};
use super::iq_grids::{IQ2XS_GRID, KSIGNS_IQ2XS};
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{
    ggml_f16, importance_weights, nearest_int, row_sigma2, Lattice, GROUP_MAX_EPS,
};
use super::superblock::{self, signed_group, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

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

/// The IQ2_XS lattice with the near points of the 2 nearest distances (ggml's choice).
fn lattice() -> &'static Lattice {
    static LATTICE: OnceLock<Lattice> = OnceLock::new();
    LATTICE.get_or_init(|| Lattice::from_iq2_grid(&IQ2XS_GRID, 2))
}

impl Quantize for IQ2_XS {
    /// ggml's `quantize_row_iq2_xs_impl`. It needs the importance vector: ggml asserts
    /// one (llama-quantize refuses IQ2_XS without an importance matrix), and so does
    /// this, by panicking.
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockIQ2XS]) {
        check_quantize_lengths::<IQ2_XS>(x, imatrix, out);
        let imatrix = imatrix.expect("IQ2_XS quantization needs an importance vector");
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

/// The scale and lattice levels of 16 weights, two groups of 8, given their magnitudes
/// `xval` (largest `max`), weights `w` and `waux = sqrt(w)`. (The search of IQ2_XS and
/// IQ2_S.)
///
/// Starts from `max / 5` with all levels 0; then 19 candidate inverse scales
/// `(5 + k / 10) / max`, `k = -9..=9`: each rounds the magnitudes to levels (moved onto
/// the lattice where off it) and takes over when it raises `(Σ w x q)² / Σ w q²`. If the
/// winner moved a group, that group is re-rounded against the winner's scale and the
/// scale refitted.
pub(super) fn search_pair(
    lattice: &Lattice,
    xval: &[f32; 16],
    w: &[f32; 16],
    waux: &[f32; 16],
    max: f32,
) -> (f32, [i8; 16]) {
    let mut scale = max / 5.0;
    let mut levels = [0i8; 16];
    let mut on_grid = [true; 2];
    let mut aux = [0i8; 16];
    let mut best = 0f32;
    for k in -9..=9 {
        let id = (5.0 + k as f32 * 0.1) / max;
        let this_scale = 1.0 / id;
        let mut on_grid_aux = [true; 2];
        for (g, on) in on_grid_aux.iter_mut().enumerate() {
            let r = 8 * g..8 * g + 8;
            *on = fit_group(
                lattice,
                &xval[r.clone()],
                &waux[r.clone()],
                id,
                this_scale,
                &mut aux[r],
            );
        }
        let (sumqx, sumq2) = level_sums(w, xval, &aux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            levels = aux;
            on_grid = on_grid_aux;
        }
    }
    if on_grid.contains(&false) && scale > 0.0 {
        let id = 1.0 / scale;
        for g in (0..2).filter(|&g| !on_grid[g]) {
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
        let (sumqx, sumq2) = level_sums(w, xval, &levels);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    (scale, levels)
}

/// One super-block. Per 16 weights: weights `qw sqrt(σ² + x²)` (σ² the super-block's
/// mean square), magnitudes with even signs per group of 8, and [`search_pair`]'s
/// scale and levels. The scales become 4-bit multiples of `d = max / 31`
/// (`scale ≈ d (2 l + 1)`).
fn quantize_block(lattice: &Lattice, x: &[f32], qw: &[f32]) -> BlockIQ2XS {
    let sigma2 = row_sigma2(x);
    let mut qs = [0u16; QK_K / 8];
    let mut scales = [0f32; QK_K / 16];
    let mut max_scale = 0f32;
    for (ib, (xb, qw)) in x.chunks_exact(16).zip(qw.chunks_exact(16)).enumerate() {
        let mut weight = [0f32; 16];
        importance_weights(xb, qw, sigma2, &mut weight);
        let waux = weight.map(f32::sqrt);
        let mut xval = [0f32; 16];
        let mut signs = [0u8; 2];
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
        let (mut scale, levels) = search_pair(lattice, &xval, &weight, &waux, max);
        if scale < 0.0 {
            // ggml's guard: the stored scale is unsigned, so the signs turn instead
            scale = -scale;
            for s in &mut signs {
                *s = !*s & 127;
            }
        }
        for (g, &s) in signs.iter().enumerate() {
            qs[2 * ib + g] = lattice.index_of(&levels[8 * g..]) | (s as u16) << 9;
        }
        assert!(scale >= 0.0, "IQ2_XS quantize: scale {scale}");
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    let mut block = BlockIQ2XS {
        d: ggml_f16(0.0),
        qs: [0; QK_K / 8],
        scales: [0; QK_K / 32],
    };
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 31.0;
    block.d = ggml_f16(d);
    let id = 1.0 / d;
    for (ib, &scale) in scales.iter().enumerate() {
        let l = nearest_int(0.5 * (id * scale - 1.0)).clamp(0, 15) as u8;
        block.scales[ib / 2] |= l << (4 * (ib % 2));
    }
    block.qs = qs;
    block
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

    #[test]
    fn quantize_matches_ggml() {
        let _ = testing::check_quantize_or_abort::<IQ2_XS>();
    }

    #[test]
    fn quantize_round_trip() {
        // Magnitudes 1, 3, 5 times the scale, with signs: 6 evenly spaced levels, fewer
        // where the lattice (and parity of the signs) rules out combinations. Counted as
        // 6 levels (limit 0.45); this row gives 0.41. A wrong layout gives ~1.
        testing::check_quantize_round_trip_weighted::<IQ2_XS>(6);
    }
}
