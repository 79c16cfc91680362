//! AVX2 + FMA dot products of the i-quant formats with Q8_K activations. (IQ4_NL, which
//! pairs with Q8_0 and rounds like Q4_0, shares Q4_0's kernels in `tiles`.)
//!
//! Every kernel has the same shape. One 256-bit register holds 32 consecutive weights of
//! a sub-block as bytes (grid points looked up from the lattice tables, or IQ4 levels
//! from a 16-entry `pshufb` table); the signs are moved onto the Q8 quants; `maddubs`
//! multiplies and sums pairs to i16, and `madd` with the sub-block scale sums pairs of
//! those to i32, so lane `k` of the 8 i32 lanes accumulates weights `4k..4k+4` of every
//! sub-block of the super-block. Each super-block then adds `d_w * d_a * lanes` to an
//! 8-lane f32 accumulator with one FMA, and the lanes are summed at the end. IQ1_S and
//! IQ1_M carry their ±1/8 shift term beside it (a scalar FMA chain for IQ1_S, a second
//! 8-lane accumulator for IQ1_M), added after the horizontal sums.
//!
//! That lane assignment, the FMA per super-block and the order of the final horizontal
//! sum are the ones ggml's x86 kernels use, so on the same blocks these functions return
//! the same f32 bits as its `ggml_vec_dot_*` (the integer lane sums cannot differ, and the
//! float operations are the same ones in the same order; the tests check this against
//! results recorded from llama.cpp's libggml-cpu). The scalar references
//! compute the same integers with a sequential f32 sum instead.
//!
//! Grid indices are gathered with scalar table loads (`pdep` packs the 10- and 11-bit ones
//! where the build has BMI2); everything after the lookup stays in vectors.
//!
//! No i16 can saturate: a `maddubs` pair is at most 2 · 62 · 127 (IQ3_XXS grid) or
//! 2 · 127 · 127 (IQ4 levels, applied to |level| with the sign moved onto q8), and Q8_K /
//! Q8_0 quants never hold -128, so moving a sign onto them cannot overflow.
//!
//! The public functions are safe: this module is only compiled when the build enables
//! AVX2 and FMA (`cfg(target_feature)`), so the `#[target_feature]` workers they call
//! run on a CPU that has them.

use std::arch::x86_64::*;

use crate::quant::iq1_m::{scale_words, super_scale, BlockIQ1M, IQ1M_DELTA};
use crate::quant::iq1_s::{BlockIQ1S, IQ1S_DELTA};
use crate::quant::iq2_s::BlockIQ2S;
use crate::quant::iq2_xs::BlockIQ2XS;
use crate::quant::iq2_xxs::{sub_block_words, BlockIQ2XXS};
use crate::quant::iq3_s::BlockIQ3S;
use crate::quant::iq3_xxs::{signs_scale_word, BlockIQ3XXS};
use crate::quant::iq4_xs::BlockIQ4XS;
use crate::quant::iq_grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS_BYTES,
    KVALUES_IQ4NL,
};
use crate::quant::q8_k::{BlockQ8K, QK_K};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Loads the 32 bytes at `offset` of a byte slice (bounds-checked).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn load32<T: Copy>(s: &[T], offset: usize) -> __m256i {
    debug_assert_eq!(std::mem::size_of::<T>(), 1);
    let bytes = &s[offset..offset + 32];
    // SAFETY: 32 one-byte elements are 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// Four 64-bit table entries, `e0` in the lowest lane: 32 bytes of weights in order.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn u64x4(e0: u64, e1: u64, e2: u64, e3: u64) -> __m256i {
    _mm256_set_epi64x(e3 as i64, e2 as i64, e1 as i64, e0 as i64)
}

/// Eight 32-bit table entries looked up by `index(k)`, k = 0..8, lowest first.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn u32x8(table: &[u32], index: impl Fn(usize) -> usize) -> __m256i {
    let e = |k: usize| table[index(k)] as i32;
    _mm256_set_epi32(e(7), e(6), e(5), e(4), e(3), e(2), e(1), e(0))
}

/// Scatters the low bits of `bits` to the set bits of `mask`, in order (BMI2 `pdep`).
#[inline(always)]
fn deposit(bits: u64, mask: u64) -> u64 {
    #[cfg(target_feature = "bmi2")]
    {
        // SAFETY: the build enables BMI2 (cfg above).
        unsafe { _pdep_u64(bits, mask) }
    }
    #[cfg(not(target_feature = "bmi2"))]
    {
        let (mut bits, mut mask, mut out) = (bits, mask, 0u64);
        while mask != 0 {
            if bits & 1 != 0 {
                out |= mask & mask.wrapping_neg();
            }
            bits >>= 1;
            mask &= mask - 1;
        }
        out
    }
}

/// Four grid indices as the u16 lanes of a u64: lane `l` = byte `l` of `low` | the `l`-th
/// group of high bits, taken in order from `high` and placed by `high_lanes` (the mask of
/// the high index bits in all four lanes).
#[inline(always)]
fn grid_indices(low: u32, high: u64, high_lanes: u64) -> u64 {
    deposit(low as u64, 0x00ff_00ff_00ff_00ff) | deposit(high, high_lanes)
}

/// Sum of the 8 f32 lanes: upper half onto lower, then pairs, then the last two; the
/// order ggml uses, so totals agree bit for bit.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_f32x8(v: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    _mm_cvtss_f32(s1)
}

/// Signed bytes × signed bytes, adjacent pairs summed to i16: `maddubs(|x|, y·sign(x))`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot_i8_pairs(x: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// `q8` with the sign of byte `p` flipped where bit `p % 8` of byte `p / 8` of `bits` is
/// set (explicit sign bits: four bytes for 32 weights).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn apply_sign_bits(q8: __m256i, bits: u32) -> __m256i {
    // byte p of the result picks byte p / 8 of the broadcast word (both 128-bit halves
    // hold the word, so the in-lane shuffle reaches bytes 2 and 3 from the upper half)
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), pick);
    let negative = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    // (q ^ m) - m negates q where m = -1 and keeps it where m = 0
    _mm256_sub_epi8(_mm256_xor_si256(q8, negative), negative)
}

/// `q8` with signs from four 7-bit indices into the even-parity sign table.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn apply_sign_indices(q8: __m256i, i0: usize, i1: usize, i2: usize, i3: usize) -> __m256i {
    let t = &KSIGNS_IQ2XS_BYTES;
    _mm256_sign_epi8(q8, u64x4(t[i0], t[i1], t[i2], t[i3]))
}

/// The same i16 scale for every pair of the 32 weights.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn scale_all(ls: i32) -> __m256i {
    _mm256_set1_epi16(ls as i16)
}

/// i16 lane `k` of each 128-bit half of `v`, repeated across that half.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn pick_i16(v: __m256i, k: usize) -> __m256i {
    _mm256_shuffle_epi8(
        v,
        _mm256_set1_epi16(((2 * k as i16 + 1) << 8) | (2 * k as i16)),
    )
}

/// Adds `d * lanes` (the super-block's i32 lane sums) to `acc` with one rounding.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn fma_block(acc: __m256, d: f32, lanes: __m256i) -> __m256 {
    _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc)
}

// ---------------------------------------------------------------------------------------
// IQ4_XS × Q8_K
// ---------------------------------------------------------------------------------------

/// The IQ4 level table as a `pshufb` lookup.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn iq4_table() -> __m128i {
    // SAFETY: KVALUES_IQ4NL is 16 readable bytes.
    unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()) }
}

/// Dot product of an IQ4_XS row with Q8_K activations (same block count).
pub fn vec_dot_iq4_xs_q8_k(row: &[BlockIQ4XS], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len(), "IQ4_XS dot: block counts differ");
    // SAFETY: compiled only with AVX2 and FMA enabled (module cfg).
    unsafe { dot_iq4_xs(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_iq4_xs(row: &[BlockIQ4XS], act: &[BlockQ8K]) -> f32 {
    let table = _mm256_broadcastsi128_si256(iq4_table());
    let nibble = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.iter().zip(act) {
        let scales = iq4_xs_scales(w);
        // Two sub-blocks at a time, kept as their index bytes lie: the low nibbles (weights
        // 0..16 of each) in one register, the high nibbles (weights 16..32) in another, with
        // the activations gathered to match. `low` lane k sums weights 4k..4k+4 of the even
        // sub-blocks (k < 4) or of the odd ones (k >= 4); `high` likewise for 16 + 4k.
        let (mut low, mut high) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for pair in 0..QK_K / 64 {
            let bits = load32(&w.qs, 32 * pair);
            let levels_low = _mm256_shuffle_epi8(table, _mm256_and_si256(bits, nibble));
            let levels_high = _mm256_shuffle_epi8(
                table,
                _mm256_and_si256(_mm256_srli_epi16::<4>(bits), nibble),
            );
            let q8 = &a.qs[64 * pair..64 * pair + 64];
            // SAFETY: each pointer starts 16 readable bytes inside the 64-byte `q8`.
            let (q8_low, q8_high) = unsafe {
                let at = |k: usize| q8[16 * k..16 * k + 16].as_ptr().cast::<__m128i>();
                (
                    _mm256_loadu2_m128i(at(2), at(0)),
                    _mm256_loadu2_m128i(at(3), at(1)),
                )
            };
            // scale of the even sub-block in the lower half, of the odd one in the upper
            let ls = pick_i16(scales, pair);
            low = _mm256_add_epi32(low, _mm256_madd_epi16(dot_i8_pairs(levels_low, q8_low), ls));
            high = _mm256_add_epi32(
                high,
                _mm256_madd_epi16(dot_i8_pairs(levels_high, q8_high), ls),
            );
        }
        // lane k of the sum: halves of `low` added for k < 4, of `high` for k >= 4
        let lanes = _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(low, high),
            _mm256_permute2x128_si256::<0x31>(low, high),
        );
        acc = fma_block(acc, w.d.to_f32() * a.d, lanes);
    }
    hsum_f32x8(acc)
}

/// The 8 signed sub-block scales `ls - 32` of an IQ4_XS block as i16: even sub-blocks in
/// lanes 0..4 of the lower 128 bits, odd ones in lanes 0..4 of the upper, so
/// [`pick_i16`] gives a pair of sub-blocks their scales. The 4-bit lows and the 2-bit
/// highs are deposited into one byte each.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn iq4_xs_scales(w: &BlockIQ4XS) -> __m256i {
    let low = deposit(u32::from_le_bytes(w.scales_l) as u64, 0x0f0f_0f0f_0f0f_0f0f);
    let high = deposit(w.scales_h as u64, 0x3030_3030_3030_3030);
    let bytes = _mm_cvtsi64_si128((low | high) as i64);
    let split = _mm_shuffle_epi8(
        bytes,
        _mm_setr_epi8(0, 2, 4, 6, -1, -1, -1, -1, 1, 3, 5, 7, -1, -1, -1, -1),
    );
    _mm256_sub_epi16(_mm256_cvtepu8_epi16(split), _mm256_set1_epi16(32))
}

// ---------------------------------------------------------------------------------------
// IQ2_XXS, IQ2_XS, IQ2_S × Q8_K
// ---------------------------------------------------------------------------------------

/// Dot product of an IQ2_XXS row with Q8_K activations (same block count).
pub fn vec_dot_iq2_xxs_q8_k(row: &[BlockIQ2XXS], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len(), "IQ2_XXS dot: block counts differ");
    // SAFETY: compiled only with AVX2 and FMA enabled (module cfg).
    unsafe { dot_iq2_xxs(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_iq2_xxs(row: &[BlockIQ2XXS], act: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.iter().zip(act) {
        // one sub-block of 32 weights -> 8 i32 lanes
        let sub_block = |ib: usize| {
            let (indices, signs_scale) = sub_block_words(w, ib);
            let g = |l: u32| IQ2XXS_GRID[(indices >> (8 * l)) as usize & 0xff];
            let s = |l: u32| (signs_scale >> (7 * l)) as usize & 127;
            let grid = u64x4(g(0), g(1), g(2), g(3));
            let q8 = apply_sign_indices(load32(&a.qs, 32 * ib), s(0), s(1), s(2), s(3));
            let ls = 2 * (signs_scale >> 28) as i32 + 1;
            _mm256_madd_epi16(_mm256_maddubs_epi16(grid, q8), scale_all(ls))
        };
        // even and odd sub-blocks in separate i32 chains
        let (mut sum_even, mut sum_odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for ib in (0..QK_K / 32).step_by(2) {
            sum_even = _mm256_add_epi32(sum_even, sub_block(ib));
            sum_odd = _mm256_add_epi32(sum_odd, sub_block(ib + 1));
        }
        acc = fma_block(acc, w.d.to_f32() * a.d, _mm256_add_epi32(sum_even, sum_odd));
    }
    0.125 * hsum_f32x8(acc)
}

/// Dot product of an IQ2_XS row with Q8_K activations (same block count).
pub fn vec_dot_iq2_xs_q8_k(row: &[BlockIQ2XS], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len(), "IQ2_XS dot: block counts differ");
    // SAFETY: compiled only with AVX2 and FMA enabled (module cfg).
    unsafe { dot_iq2_xs(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_iq2_xs(row: &[BlockIQ2XS], act: &[BlockQ8K]) -> f32 {
    // low nibble of each of the 16 nibbles of 7-bit values: parity << 7
    let parity = _mm_setr_epi8(
        0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0,
    );
    let parity = _mm256_broadcastsi128_si256(parity);
    let nibble = _mm256_set1_epi8(0x0f);
    // byte p of a sub-block's 32 weights takes the sign byte of group p / 8, which sits at
    // byte 2 * (p / 8) of its sub-block's 8-byte slot (low byte of each u16)
    let pick_even = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, //
        4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6,
    );
    let pick_odd = _mm256_add_epi8(pick_even, _mm256_set1_epi8(8));
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.iter().zip(act) {
        let scales = iq2_half_scales(&w.scales);
        let mut sums = [_mm256_setzero_si256(); 2];
        for quad in 0..QK_K / 128 {
            // 16 groups of 8 (4 sub-blocks): 7 sign bits each, completed with their parity
            // SAFETY: 16 u16 from index 16 * quad are 32 readable bytes; unaligned load.
            let q = unsafe { _mm256_loadu_si256(w.qs[16 * quad..16 * quad + 16].as_ptr().cast()) };
            let bits7 = _mm256_srli_epi16::<9>(q);
            let odd = _mm256_xor_si256(
                _mm256_shuffle_epi8(parity, _mm256_and_si256(bits7, nibble)),
                _mm256_shuffle_epi8(parity, _mm256_srli_epi16::<4>(bits7)),
            );
            let signs8 = _mm256_or_si256(bits7, odd);
            let lanes = [
                _mm256_permute2x128_si256::<0x00>(signs8, signs8),
                _mm256_permute2x128_si256::<0x11>(signs8, signs8),
            ];
            for k in 0..4 {
                let ib = 4 * quad + k;
                let pick = if k % 2 == 0 { pick_even } else { pick_odd };
                let spread = _mm256_shuffle_epi8(lanes[k / 2], pick);
                let negative = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
                let q8 = load32(&a.qs, 32 * ib);
                let q8 = _mm256_sub_epi8(_mm256_xor_si256(q8, negative), negative);
                let g = |l: usize| IQ2XS_GRID[(w.qs[4 * ib + l] & 511) as usize];
                let grid = u64x4(g(0), g(1), g(2), g(3));
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(grid, q8), pick_i16(scales, ib));
                sums[ib % 2] = _mm256_add_epi32(sums[ib % 2], p);
            }
        }
        acc = fma_block(acc, w.d.to_f32() * a.d, _mm256_add_epi32(sums[0], sums[1]));
    }
    0.125 * hsum_f32x8(acc)
}

/// The 16 odd multipliers `2s + 1` of the 4-bit half-sub-block scales of IQ2_XS / IQ2_S
/// as i16: the first halves of the 8 sub-blocks (low nibbles) in the lower 128 bits, the
/// second halves (high nibbles) in the upper, so [`pick_i16`] gives sub-block `ib` its
/// pair.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn iq2_half_scales(scales: &[u8; 8]) -> __m256i {
    let packed = _mm_set1_epi64x(u64::from_le_bytes(*scales) as i64);
    let low = _mm_and_si128(packed, _mm_set1_epi8(0x0f));
    let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), _mm_set1_epi8(0x0f));
    let s = _mm256_cvtepu8_epi16(_mm_unpacklo_epi64(low, high));
    _mm256_add_epi16(_mm256_add_epi16(s, s), _mm256_set1_epi16(1))
}

/// Dot product of an IQ2_S row with Q8_K activations (same block count).
pub fn vec_dot_iq2_s_q8_k(row: &[BlockIQ2S], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len(), "IQ2_S dot: block counts differ");
    // SAFETY: compiled only with AVX2 and FMA enabled (module cfg).
    unsafe { dot_iq2_s(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_iq2_s(row: &[BlockIQ2S], act: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.iter().zip(act) {
        let scales = iq2_half_scales(&w.scales);
        // one sub-block of 32 weights -> 8 i32 lanes
        let sub_block = |ib: usize| {
            let low = u32::from_le_bytes(w.qs[4 * ib..4 * ib + 4].try_into().unwrap());
            let indices = grid_indices(low, w.qh[ib] as u64, 0x0300_0300_0300_0300);
            let g = |l: u32| IQ2S_GRID[(indices >> (16 * l)) as usize & 0x3ff];
            let grid = u64x4(g(0), g(1), g(2), g(3));
            let signs = u32::from_le_bytes(w.signs[4 * ib..4 * ib + 4].try_into().unwrap());
            let q8 = apply_sign_bits(load32(&a.qs, 32 * ib), signs);
            _mm256_madd_epi16(_mm256_maddubs_epi16(grid, q8), pick_i16(scales, ib))
        };
        // even and odd sub-blocks in separate i32 chains
        let (mut sum_even, mut sum_odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for ib in (0..QK_K / 32).step_by(2) {
            sum_even = _mm256_add_epi32(sum_even, sub_block(ib));
            sum_odd = _mm256_add_epi32(sum_odd, sub_block(ib + 1));
        }
        acc = fma_block(acc, w.d.to_f32() * a.d, _mm256_add_epi32(sum_even, sum_odd));
    }
    0.125 * hsum_f32x8(acc)
}

// ---------------------------------------------------------------------------------------
// IQ3_XXS, IQ3_S × Q8_K
// ---------------------------------------------------------------------------------------

/// Dot product of an IQ3_XXS row with Q8_K activations (same block count).
pub fn vec_dot_iq3_xxs_q8_k(row: &[BlockIQ3XXS], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len(), "IQ3_XXS dot: block counts differ");
    // SAFETY: compiled only with AVX2 and FMA enabled (module cfg).
    unsafe { dot_iq3_xxs(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_iq3_xxs(row: &[BlockIQ3XXS], act: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.iter().zip(act) {
        // one sub-block of 32 weights -> 8 i32 lanes
        let sub_block = |ib: usize| {
            let qs = &w.qs[8 * ib..8 * ib + 8];
            let grid = u32x8(&IQ3XXS_GRID, |k| qs[k] as usize);
            let word = signs_scale_word(w, ib);
            let s = |l: u32| (word >> (7 * l)) as usize & 127;
            let q8 = apply_sign_indices(load32(&a.qs, 32 * ib), s(0), s(1), s(2), s(3));
            let ls = 2 * (word >> 28) as i32 + 1;
            _mm256_madd_epi16(_mm256_maddubs_epi16(grid, q8), scale_all(ls))
        };
        // even and odd sub-blocks in separate i32 chains
        let (mut sum_even, mut sum_odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for ib in (0..QK_K / 32).step_by(2) {
            sum_even = _mm256_add_epi32(sum_even, sub_block(ib));
            sum_odd = _mm256_add_epi32(sum_odd, sub_block(ib + 1));
        }
        acc = fma_block(acc, w.d.to_f32() * a.d, _mm256_add_epi32(sum_even, sum_odd));
    }
    0.25 * hsum_f32x8(acc)
}

/// Dot product of an IQ3_S row with Q8_K activations (same block count).
pub fn vec_dot_iq3_s_q8_k(row: &[BlockIQ3S], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len(), "IQ3_S dot: block counts differ");
    // SAFETY: compiled only with AVX2 and FMA enabled (module cfg).
    unsafe { dot_iq3_s(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_iq3_s(row: &[BlockIQ3S], act: &[BlockQ8K]) -> f32 {
    // index k takes bit k of the sub-block's qh byte as its bit 8
    let index_bit8_shift = _mm256_setr_epi32(8, 7, 6, 5, 4, 3, 2, 1);
    let bit8 = _mm256_set1_epi32(256);
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.iter().zip(act) {
        // one sub-block of 32 weights -> 8 i32 lanes
        let sub_block = |ib: usize| {
            // the 8 grid indices, computed in a vector and read back as u32s
            let low = _mm_set1_epi64x(u64::from_le_bytes(
                w.qs[8 * ib..8 * ib + 8].try_into().unwrap(),
            ) as i64);
            let high = _mm256_sllv_epi32(_mm256_set1_epi32(w.qh[ib] as i32), index_bit8_shift);
            let index = _mm256_or_si256(_mm256_cvtepu8_epi32(low), _mm256_and_si256(high, bit8));
            let mut indices = [0u32; 8];
            // SAFETY: `indices` is 32 writable bytes; unaligned store.
            unsafe { _mm256_storeu_si256(indices.as_mut_ptr().cast(), index) };
            let grid = u32x8(&IQ3S_GRID, |k| indices[k] as usize & 511);
            let signs = u32::from_le_bytes(w.signs[4 * ib..4 * ib + 4].try_into().unwrap());
            let q8 = apply_sign_bits(load32(&a.qs, 32 * ib), signs);
            let ls = 2 * ((w.scales[ib / 2] >> (4 * (ib % 2))) & 0xf) as i32 + 1;
            _mm256_madd_epi16(_mm256_maddubs_epi16(grid, q8), scale_all(ls))
        };
        // even and odd sub-blocks in separate i32 chains
        let (mut sum_even, mut sum_odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for ib in (0..QK_K / 32).step_by(2) {
            sum_even = _mm256_add_epi32(sum_even, sub_block(ib));
            sum_odd = _mm256_add_epi32(sum_odd, sub_block(ib + 1));
        }
        acc = fma_block(acc, w.d.to_f32() * a.d, _mm256_add_epi32(sum_even, sum_odd));
    }
    hsum_f32x8(acc)
}

// ---------------------------------------------------------------------------------------
// IQ1_S, IQ1_M × Q8_K
// ---------------------------------------------------------------------------------------

/// The 32 grid bytes of an IQ1 sub-block from its packed indices.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn iq1_grid(indices: u64) -> __m256i {
    // (the mask only tells the compiler the index is in range: indices are 11 bits)
    let g = |l: u32| IQ1S_GRID[(indices >> (16 * l)) as usize & 0x7ff];
    u64x4(g(0), g(1), g(2), g(3))
}

/// Dot product of an IQ1_S row with Q8_K activations (same block count).
pub fn vec_dot_iq1_s_q8_k(row: &[BlockIQ1S], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len(), "IQ1_S dot: block counts differ");
    // SAFETY: compiled only with AVX2 and FMA enabled (module cfg).
    unsafe { dot_iq1_s(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_iq1_s(row: &[BlockIQ1S], act: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    // The shift terms, Σ d * Σ (2s + 1) * ±1 * Σ q8, in a scalar f32 (fused multiply-add).
    let mut acc_shift = 0f32;
    for (w, a) in row.iter().zip(act) {
        let mut sum = _mm256_setzero_si256();
        let mut shift = 0i32;
        for ib in 0..QK_K / 32 {
            let qh = w.qh[ib] as usize;
            let low = u32::from_le_bytes(w.qs[4 * ib..4 * ib + 4].try_into().unwrap());
            let grid = iq1_grid(grid_indices(low, qh as u64 & 0x0fff, 0x0700_0700_0700_0700));
            let ls = 2 * ((qh >> 12) & 7) as i32 + 1;
            let p = _mm256_madd_epi16(dot_i8_pairs(grid, load32(&a.qs, 32 * ib)), scale_all(ls));
            sum = _mm256_add_epi32(sum, p);
            let q8_sum = a.bsums[2 * ib] as i32 + a.bsums[2 * ib + 1] as i32;
            shift += if qh & 0x8000 != 0 {
                -ls * q8_sum
            } else {
                ls * q8_sum
            };
        }
        let d = a.d * w.d.to_f32();
        acc = fma_block(acc, d, sum);
        acc_shift = d.mul_add(shift as f32, acc_shift);
    }
    hsum_f32x8(acc) + IQ1S_DELTA * acc_shift
}

/// The 16 multipliers `2s + 1` of IQ1_M's 3-bit half-sub-block scales as i16: the first
/// halves of the 8 sub-blocks in the lower 128 bits, the second halves in the upper, so
/// one in-lane shuffle gives a sub-block its pair. `scales` holds four 16-bit words with
/// four 3-bit fields each in bits 0..12.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn iq1_m_half_scales(scales: u64) -> __m256i {
    let fields = |w: u32| (scales >> (16 * w)) & 0x0fff;
    let bytes = |lo: u64, hi: u64| deposit(lo | hi << 12, 0x0707_0707_0707_0707) as i64;
    // one field per byte, halves 0..16 in order
    let halves = _mm_set_epi64x(bytes(fields(2), fields(3)), bytes(fields(0), fields(1)));
    let split = _mm_shuffle_epi8(
        halves,
        _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15),
    );
    let s = _mm256_cvtepu8_epi16(split);
    _mm256_add_epi16(_mm256_add_epi16(s, s), _mm256_set1_epi16(1))
}

/// Dot product of an IQ1_M row with Q8_K activations (same block count).
pub fn vec_dot_iq1_m_q8_k(row: &[BlockIQ1M], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len(), "IQ1_M dot: block counts differ");
    // SAFETY: compiled only with AVX2 and FMA enabled (module cfg).
    unsafe { dot_iq1_m(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_iq1_m(row: &[BlockIQ1M], act: &[BlockQ8K]) -> f32 {
    let ones = _mm256_set1_epi8(1);
    // 64-bit lane l: bit 3 of nibble l of a sub-block's 16-bit shift/index word
    let sign_bit = _mm256_setr_epi64x(
        0x0008_0008_0008_0008,
        0x0080_0080_0080_0080,
        0x0800_0800_0800_0800,
        0x8000_8000_8000_8000u64 as i64,
    );
    // grid part and shift part in separate 8-lane accumulators
    let (mut acc, mut acc_shift) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (w, a) in row.iter().zip(act) {
        let words = scale_words(w);
        let half_scales = iq1_m_half_scales(u64::from_le_bytes(w.scales));
        // (grid lanes, shift lanes) of sub-block ib
        let sub_block = |ib: usize| {
            // four nibbles, one per group of 8: index bits 8..11 and the shift sign
            let nibbles = u16::from_le_bytes([w.qh[2 * ib], w.qh[2 * ib + 1]]) as usize;
            let low = u32::from_le_bytes(w.qs[4 * ib..4 * ib + 4].try_into().unwrap());
            let grid = iq1_grid(grid_indices(
                low,
                nibbles as u64 & 0x7777,
                0x0f00_0f00_0f00_0f00,
            ));
            let negative = _mm256_cmpeq_epi16(
                _mm256_and_si256(_mm256_set1_epi16(nibbles as i16), sign_bit),
                sign_bit,
            );
            // -1 or +1 bytes per group of 8
            let signs = _mm256_or_si256(negative, ones);
            let ls = pick_i16(half_scales, ib);
            let q8 = load32(&a.qs, 32 * ib);
            let p_grid = _mm256_madd_epi16(dot_i8_pairs(grid, q8), ls);
            let p_shift =
                _mm256_madd_epi16(_mm256_maddubs_epi16(ones, _mm256_sign_epi8(q8, signs)), ls);
            (p_grid, p_shift)
        };
        // even and odd sub-blocks in separate i32 chains
        let mut sums = [_mm256_setzero_si256(); 4];
        for ib in (0..QK_K / 32).step_by(2) {
            let (g0, s0) = sub_block(ib);
            let (g1, s1) = sub_block(ib + 1);
            sums[0] = _mm256_add_epi32(sums[0], g0);
            sums[1] = _mm256_add_epi32(sums[1], s0);
            sums[2] = _mm256_add_epi32(sums[2], g1);
            sums[3] = _mm256_add_epi32(sums[3], s1);
        }
        let d = a.d * super_scale(&words).to_f32();
        acc = fma_block(acc, d, _mm256_add_epi32(sums[0], sums[2]));
        acc_shift = fma_block(acc_shift, d, _mm256_add_epi32(sums[1], sums[3]));
    }
    hsum_f32x8(acc) + IQ1M_DELTA * hsum_f32x8(acc_shift)
}
