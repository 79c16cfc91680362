//! AVX2 + FMA + F16C kernel of the 8-row-interleaved IQ4_XS dot
//! ([`crate::quant::iq4_xs_x8`]): groups of 8 rows times tokens, one row per 32-bit lane
//! throughout.
//!
//! Per super-block, each 32-byte load of quants holds 4 bytes of every row (bytes
//! `4g..4g + 4` of sub-block `j`); a table lookup of their nibbles gives the levels of
//! the row's weights `4g..4g + 4` (low nibbles) and `16 + 4g..` (high nibbles). The 4
//! activation bytes of those positions are broadcast to all lanes, and each lane gets the
//! exact integer `D` = Σ level · a of its row, which is multiplied by the row's sub-block
//! scale and added to the lane's accumulator of lane `k` of IQ4_XS's dot (`k = g` for the
//! low nibbles, `4 + g` for the high ones): 8 accumulators, one vector each. Then
//! `acc_k = fma(d_w d_a, lane_k, acc_k)` per super-block and the final sum in
//! `hsum_f32x8`'s order, lane-wise, so every lane equals `vec_dot_iq4_xs_q8_k` of its row
//! to the bit.
//!
//! The products, exact either way:
//!
//! - With AVX512-VNNI: `vpdpbusd` of the levels plus 128 (unsigned bytes) with the
//!   activations, starting from `-128 Σ a` of the 4 positions, then `vpmulld` by the
//!   scales.
//! - Without: `maddubs` would saturate such pairs (2 · 241 · 127), so the activations'
//!   signs move onto the signed levels and `maddubs(|a|, sign(level, a))` gives pairs of
//!   at most 2 · 128 · 127; a `madd` with the scales as i16 pairs sums them into the
//!   lanes.
//!
//! The starts (or `|a|`) of a super-block are made as the dot reaches it, into a buffer
//! that stays in L1 ([`Aux`]). With AVX512-VBMI the levels are one `vpermb` of a
//! 32-entry table (bit 4 of the index ignored) rather than a mask and a `pshufb`.
//!
//! One group at a time, so that the weights are one sequential stream. (Two groups side
//! by side share the activation broadcasts and were as fast in cache, but half as fast
//! from memory on the development machine; so was a per-call table of the starts at
//! wide rows, whose re-reads from L2 interleave with the weights' stream.)

use std::arch::x86_64::*;

use crate::quant::iq4_xs_x8::{BlockIQ4XSX8, ROWS};
use crate::quant::iq_grids::KVALUES_IQ4NL;
use crate::quant::q8_k::{BlockQ8K, QK_K};
use crate::quant::x8;

use super::vnni::{broadcast4, dpbusd, VNNI};

/// Per activation block, what the products need besides the block, as 256 bytes whose 4
/// bytes at `4i` go with activations `4i..4i + 4`: with VNNI `-128 Σ a` of those 4 (an
/// i32, little-endian), otherwise their `|a|`. Made per block as the dot reaches it (8
/// loads, 8 stores and at most 16 operations per 1104 bytes of weights).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Aux([u8; QK_K]);

impl Aux {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn of(a: &BlockQ8K) -> Aux {
        let mut aux = Aux([0; QK_K]);
        for (q, out) in a.qs.chunks_exact(32).zip(aux.0.chunks_exact_mut(32)) {
            // SAFETY: 32 readable bytes; unaligned load.
            let q = unsafe { _mm256_loadu_si256(q.as_ptr().cast()) };
            let v = if VNNI {
                let sums = dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(-128), q);
                _mm256_sub_epi32(_mm256_setzero_si256(), sums)
            } else {
                _mm256_abs_epi8(q)
            };
            // SAFETY: 32 writable bytes (aligned, as `Aux` is); store.
            unsafe { _mm256_store_si256(out.as_mut_ptr().cast(), v) };
        }
        aux
    }
}

/// Rows of the consecutive 8-row `groups` (`act_row` blocks each) times tokens
/// `0..n_tokens` of `act` (token `t`'s blocks at `act[t * act_row..]`): row `i`'s dot
/// with token `t` goes to `out[t * n_rows + i]`, bit for bit
/// [`crate::quant::iq4_xs_x8::vec_dot_iq4_xsx8_q8_k_ref`].
pub fn groups_dots(
    groups: &[BlockIQ4XSX8],
    act: &[BlockQ8K],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    x8::each_group_and_token(
        "IQ4_XSX8",
        groups,
        act,
        act_row,
        n_tokens,
        out,
        // SAFETY (both): this module is compiled only with AVX2, FMA and F16C enabled.
        (
            |group, tokens| tokens.map(|token| unsafe { dot(group, token) }),
            |group, token| unsafe { dot(group, token) },
        ),
    );
}

/// The levels (plus 128 with VNNI) of the low and the high nibbles of `bits`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn levels(bits: __m256i) -> (__m256i, __m256i) {
    let shift = if VNNI { 128 } else { 0 };
    let table: [u8; 32] = std::array::from_fn(|i| (KVALUES_IQ4NL[i % 16] as i32 + shift) as u8);
    // SAFETY: 32 readable bytes.
    let table = unsafe { _mm256_loadu_si256(table.as_ptr().cast()) };
    let high = _mm256_srli_epi16::<4>(bits);
    #[cfg(all(target_feature = "avx512vbmi", target_feature = "avx512vl"))]
    {
        // the index's bit 4 picks the table's upper half, a copy of the lower
        // SAFETY: the build enables AVX512-VBMI and AVX512-VL (cfg above).
        unsafe {
            (
                _mm256_permutexvar_epi8(bits, table),
                _mm256_permutexvar_epi8(high, table),
            )
        }
    }
    #[cfg(not(all(target_feature = "avx512vbmi", target_feature = "avx512vl")))]
    {
        let low4 = _mm256_set1_epi8(0x0f);
        (
            _mm256_shuffle_epi8(table, _mm256_and_si256(bits, low4)),
            _mm256_shuffle_epi8(table, _mm256_and_si256(high, low4)),
        )
    }
}

/// The 8 rows' scales of sub-block `j` (8 bytes, one per row) as the products below
/// take them: an i32 per lane (VNNI), or an i16 pair per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_scales(b: &BlockIQ4XSX8, j: usize) -> __m256i {
    let s: [i8; 8] = b.scales[8 * j..8 * j + 8].try_into().expect("8 bytes");
    let s = _mm_cvtsi64_si128(i64::from_le_bytes(s.map(|b| b as u8)));
    if VNNI {
        _mm256_cvtepi8_epi32(s)
    } else {
        _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(s, s))
    }
}

/// `acc + scale · Σ level · a` per lane, for the levels `w` of 4 weights per row (as
/// [`levels`] gives them) and their activations `a` broadcast; `aux` is the same 4
/// positions' [`Aux`] (`-128 Σ a` or `|a|`, broadcast).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn products(acc: __m256i, w: __m256i, a: __m256i, aux: __m256i, scale: __m256i) -> __m256i {
    if VNNI {
        let exact = dpbusd(aux, w, a);
        _mm256_add_epi32(acc, _mm256_mullo_epi32(exact, scale))
    } else {
        let pairs = _mm256_maddubs_epi16(aux, _mm256_sign_epi8(w, a));
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, scale))
    }
}

/// The dots of one group's 8 rows (`group`: its blocks) with one token.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot(group: &[BlockIQ4XSX8], act: &[BlockQ8K]) -> [f32; ROWS] {
    let mut acc = [_mm256_setzero_ps(); 8];
    for (b, a) in group.iter().zip(act) {
        let aux = Aux::of(a);
        // lane k of IQ4_XS's dot, one row per 32-bit lane
        let mut lanes = [_mm256_setzero_si256(); 8];
        for j in 0..8 {
            let scale = row_scales(b, j);
            for g in 0..4 {
                let off = 128 * j + 32 * g;
                let bits: &[u8; 32] = b.qs[off..off + 32].try_into().expect("32 bytes");
                // SAFETY: 32 readable bytes; unaligned load.
                let bits = unsafe { _mm256_loadu_si256(bits.as_ptr().cast()) };
                let (w_lo, w_hi) = levels(bits);
                let (lo, hi) = (8 * j + g, 8 * j + 4 + g);
                let (a_lo, a_hi) = (broadcast4(&a.qs, 4 * lo), broadcast4(&a.qs, 4 * hi));
                let (aux_lo, aux_hi) = (broadcast4(&aux.0, 4 * lo), broadcast4(&aux.0, 4 * hi));
                lanes[g] = products(lanes[g], w_lo, a_lo, aux_lo, scale);
                lanes[4 + g] = products(lanes[4 + g], w_hi, a_hi, aux_hi, scale);
            }
        }
        // SAFETY: 8 f16 are 16 readable bytes.
        let d_w = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.d.as_ptr().cast()) });
        let d = _mm256_mul_ps(d_w, _mm256_set1_ps(a.d));
        for (acc, &lane) in acc.iter_mut().zip(&lanes) {
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lane), *acc);
        }
    }
    let v = acc;
    let sum = _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(v[0], v[4]), _mm256_add_ps(v[2], v[6])),
        _mm256_add_ps(_mm256_add_ps(v[1], v[5]), _mm256_add_ps(v[3], v[7])),
    );
    let mut out = [0f32; ROWS];
    // SAFETY: 8 writable f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    out
}
