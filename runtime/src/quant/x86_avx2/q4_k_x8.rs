//! AVX2 + FMA + F16C kernel of the 8-row-interleaved Q4_K dot ([`crate::quant::q4_k_x8`]):
//! one group of 8 rows times one token (`vec_dot`'s rounding) or four tokens (the
//! rounding of llama.cpp's repacked Q4_K GEMM, which prompt batches take), one row per
//! 32-bit lane throughout.
//!
//! Per super-block, each 32-byte load of quants holds 4 bytes of every row; the 4
//! activation bytes they multiply are broadcast to all lanes, and a dot of 4 u8 × i8
//! products per lane (`vpdpbusd` with AVX512-VNNI; `maddubs` + `madd` with ones
//! otherwise) sums each row's products in its lane. Eight loads cover two sub-blocks
//! (low and high nibbles); their lane sums are multiplied by the rows' scales (8 bytes,
//! zero-extended to 8 lanes) and added up. The minimum terms are a `madd` of the rows'
//! minimum pairs with the activation's sub-block sums. A block's 128 six-bit scales and
//! minimums are unpacked at once, with a few whole-vector shifts and masks. The integer
//! totals are exact, and the f32 steps per lane are Q4_K's per row (see the module doc of
//! `kquants`), so every lane equals `vec_dot_q4_k_q8_k` of its row to the bit.
//!
//! With VNNI the high nibbles are not shifted down: `bits & 0xf0` is 16 times the quant,
//! and `vpdpbusd` does not saturate, so those sums are exactly 16 times the wanted ones;
//! the high sub-block's scaled sum is divided by 16 (an exact shift). `maddubs` saturates
//! its i16 pairs (2 · 240 · 127 does not fit), so without VNNI the high nibbles are
//! shifted.

use std::arch::x86_64::*;

use crate::quant::q4_k_x8::{BlockQ4KX8, ROWS};
use crate::quant::q8_k::BlockQ8K;
use crate::quant::{x8, TILE};

use super::vnni::{broadcast4, dpbusd, dpwssd, VNNI};

/// Whether the high nibbles are used in place (16 × the quant); see the module doc.
const HI_IN_PLACE: bool = VNNI;

/// The block's 128 six-bit scales and minimums (see [`crate::quant::q4_k_x8`]):
/// `([S[0..32], S[32..64]], [M[0..32], M[32..64]])`, one byte each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_scales_mins(b: &BlockQ4KX8) -> ([__m256i; 2], [__m256i; 2]) {
    let low4 = _mm256_set1_epi8(0x0f);
    let bits45 = _mm256_set1_epi8(0x30);
    // SAFETY: 64 and 32 readable bytes; unaligned loads.
    let (lo0, lo1, hi) = unsafe {
        (
            _mm256_loadu_si256(b.scales_lo.as_ptr().cast()),
            _mm256_loadu_si256(b.scales_lo[32..].as_ptr().cast()),
            _mm256_loadu_si256(b.scales_hi.as_ptr().cast()),
        )
    };
    // each byte's own bits land in bits 4..6 (16-bit shifts, the neighbour's masked off)
    let with_hi = |lo: __m256i, hi: __m256i| {
        _mm256_or_si256(_mm256_and_si256(lo, low4), _mm256_and_si256(hi, bits45))
    };
    let s = [
        with_hi(lo0, _mm256_slli_epi16::<4>(hi)),
        with_hi(lo1, _mm256_slli_epi16::<2>(hi)),
    ];
    let m = [
        with_hi(_mm256_srli_epi16::<4>(lo0), hi),
        with_hi(_mm256_srli_epi16::<4>(lo1), _mm256_srli_epi16::<2>(hi)),
    ];
    (s, m)
}

/// One load's step of a sub-block's dot: with VNNI `vpdpbusd` into i32 lanes; without,
/// `maddubs`'s i16 pair sums added up as i16, without the `madd` with ones. That is
/// exact: a pair is at most 2 · 15 · 127 = 3810 in magnitude (quants 0..=15, activations
/// -127..=127), so the 8 loads of a sub-block sum to at most 30480; the scale multiplies
/// the pairs with one `madd` per sub-block. One multiply per load instead of two, and no
/// 32-bit multiply.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_step(acc: __m256i, q: __m256i, a: __m256i) -> __m256i {
    if VNNI {
        dpbusd(acc, q, a)
    } else {
        _mm256_add_epi16(acc, _mm256_maddubs_epi16(q, a))
    }
}

/// Bytes `16c..16c + 16` of the 64 in `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn part(v: &[__m256i; 2], c: usize) -> __m128i {
    if c.is_multiple_of(2) {
        _mm256_castsi256_si128(v[c / 2])
    } else {
        _mm256_extracti128_si256::<1>(v[c / 2])
    }
}

/// Group of 8 rows (`w`: their interleaved blocks) · `act`: `out[r]` is row `r`'s dot,
/// bit for bit [`crate::quant::q4_k_x8::vec_dot_q4_kx8_q8_k_ref`].
pub fn vec_dot_q4_kx8_q8_k(w: &[BlockQ4KX8], act: &[BlockQ8K], out: &mut [f32; ROWS]) {
    assert_eq!(
        w.len(),
        act.len(),
        "Q4_KX8 dot: {} weight blocks, {} activation blocks",
        w.len(),
        act.len()
    );
    // SAFETY: this module is compiled only with AVX2, FMA and F16C enabled.
    [*out] = unsafe { dot_q4_kx8::<1, false>(w, [act]) };
}

/// Rows of the consecutive 8-row `groups` (`act_row` blocks each) times tokens
/// `0..n_tokens` of `act` (token `t`'s blocks at `act[t * act_row..]`), each with the
/// one-token arithmetic (a decode step of several sequences), 4 tokens per kernel call:
/// row `i`'s dot with token `t` goes to `out[t * n_rows + i]`, bit for bit
/// [`crate::quant::q4_k_x8::vec_dot_q4_kx8_q8_k_ref`].
pub fn groups_dots(
    groups: &[BlockQ4KX8],
    act: &[BlockQ8K],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    x8::each_group_and_token(
        "Q4_KX8",
        groups,
        act,
        act_row,
        n_tokens,
        out,
        // SAFETY (both): this module is compiled only with AVX2, FMA and F16C enabled.
        (
            |group, tokens| unsafe { dot_q4_kx8::<TILE, false>(group, tokens) },
            |group, token| unsafe { dot_q4_kx8::<1, false>(group, [token])[0] },
        ),
    );
}

/// Group of 8 rows · 4 tokens with the f32 steps of llama.cpp's repacked Q4_K GEMM
/// (`quant::superblock`, `Batched::Repacked { step: 64 }`): per 64 weights
/// `acc = fma(s, d d_a, acc)` and `mins = fma(m, dmin d_a, mins)`, then `acc - mins`.
/// `out[t][r]` is row `r` · token `t`, bit for bit `superblock::quad_dots_ref::<4, false,
/// true, 0>` of the row.
pub fn gemm_q4_kx8_q8_k(w: &[BlockQ4KX8], acts: [&[BlockQ8K]; 4]) -> [[f32; ROWS]; 4] {
    for a in acts {
        assert_eq!(
            w.len(),
            a.len(),
            "Q4_KX8 GEMM: {} weight blocks, {} activation blocks",
            w.len(),
            a.len()
        );
    }
    // SAFETY: this module is compiled only with AVX2, FMA and F16C enabled.
    unsafe { dot_q4_kx8::<4, true>(w, acts) }
}

/// The dots of 8 rows with `T` tokens. Per super-block and token, part `c` (sub-blocks
/// `2c`, `2c + 1`: 64 weights) gives the exact `s_c = Σ scale · Σ q a` and
/// `m_c = Σ min · Σ a` in each row's lane. `GEMM`: each part is scaled on its own (the
/// repacked GEMM's rounding); otherwise the parts are added up in integers and the
/// super-block scaled once (`vec_dot`'s).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_kx8<const T: usize, const GEMM: bool>(
    w: &[BlockQ4KX8],
    acts: [&[BlockQ8K]; T],
) -> [[f32; ROWS]; T] {
    let low4 = _mm256_set1_epi8(0x0f);
    let high4 = _mm256_set1_epi8(0xf0u8 as i8);
    let (mut sum, mut min_sum) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
    for (i, b) in w.iter().enumerate() {
        let a: [&BlockQ8K; T] = acts.map(|a| &a[i]);
        let (scales, mins) = unpack_scales_mins(b);
        // SAFETY: 8 f16 are 16 readable bytes.
        let (d_w, dmin_w) = unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(b.d.as_ptr().cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(b.dmin.as_ptr().cast())),
            )
        };
        // The minimum terms first (their own f32 chain, so the order against the sums
        // does not matter), so that only the sums' registers live through the quants.
        for t in 0..T {
            let dmin = _mm256_mul_ps(dmin_w, _mm256_set1_ps(a[t].d));
            // the activation sums of the 8 sub-blocks as i16, in both 128-bit lanes
            // SAFETY: 16 i16 are 32 readable bytes.
            let bsums = unsafe { _mm256_loadu_si256(a[t].bsums.as_ptr().cast()) };
            let sub_sums = _mm256_broadcastsi128_si256(_mm_hadd_epi16(
                _mm256_castsi256_si128(bsums),
                _mm256_extracti128_si256::<1>(bsums),
            ));
            let mut imin = _mm256_setzero_si256();
            for c in 0..4 {
                // minimums of sub-blocks 2c, 2c + 1 (i16 pairs) · their activation sums
                let m = _mm256_cvtepu8_epi16(part(&mins, c));
                let pair = match c {
                    0 => _mm256_shuffle_epi32::<0x00>(sub_sums),
                    1 => _mm256_shuffle_epi32::<0x55>(sub_sums),
                    2 => _mm256_shuffle_epi32::<0xaa>(sub_sums),
                    _ => _mm256_shuffle_epi32::<0xff>(sub_sums),
                };
                if GEMM {
                    let mc = _mm256_cvtepi32_ps(dpwssd(_mm256_setzero_si256(), m, pair));
                    min_sum[t] = _mm256_fmadd_ps(mc, dmin, min_sum[t]);
                } else {
                    imin = dpwssd(imin, m, pair);
                }
            }
            if !GEMM {
                min_sum[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), dmin, min_sum[t]);
            }
        }
        let d = a.map(|a| _mm256_mul_ps(d_w, _mm256_set1_ps(a.d)));
        // `vec_dot`: the super-block's integer total
        let mut isum = [_mm256_setzero_si256(); T];
        for c in 0..4 {
            // sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles), one row per lane;
            // with one token two chains per sub-block (even and odd k), so that the dot's
            // latency is not the limit
            let chains = if T == 1 { 2 } else { 1 };
            let mut dot_lo = [[_mm256_setzero_si256(); 2]; T];
            let mut dot_hi = [[_mm256_setzero_si256(); 2]; T];
            for k in 0..8 {
                let off = 256 * c + 32 * k;
                let bits: &[u8; 32] = b.qs[off..off + 32].try_into().expect("32 bytes");
                // SAFETY: 32 readable bytes; unaligned load.
                let bits = unsafe { _mm256_loadu_si256(bits.as_ptr().cast()) };
                let q_lo = _mm256_and_si256(bits, low4);
                let q_hi = if HI_IN_PLACE {
                    _mm256_and_si256(bits, high4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4)
                };
                let e = k % chains;
                for t in 0..T {
                    let lo = broadcast4(&a[t].qs, 64 * c + 4 * k);
                    let hi = broadcast4(&a[t].qs, 64 * c + 32 + 4 * k);
                    dot_lo[t][e] = dot_step(dot_lo[t][e], q_lo, lo);
                    dot_hi[t][e] = dot_step(dot_hi[t][e], q_hi, hi);
                }
            }
            let sc = part(&scales, c);
            for t in 0..T {
                let s = if VNNI {
                    let lo = _mm256_add_epi32(dot_lo[t][0], dot_lo[t][1]);
                    let hi = _mm256_add_epi32(dot_hi[t][0], dot_hi[t][1]);
                    let sc_lo = _mm256_cvtepu8_epi32(sc);
                    let sc_hi = _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(sc));
                    // the high nibbles in place (HI_IN_PLACE): 16 × the products,
                    // exactly, so an exact shift back
                    let hi = _mm256_srai_epi32::<4>(_mm256_mullo_epi32(hi, sc_hi));
                    _mm256_add_epi32(_mm256_mullo_epi32(lo, sc_lo), hi)
                } else {
                    // i16 pair sums; each row's scale in both i16 halves of its lane
                    let lo = _mm256_add_epi16(dot_lo[t][0], dot_lo[t][1]);
                    let hi = _mm256_add_epi16(dot_hi[t][0], dot_hi[t][1]);
                    let sc_lo = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(sc, sc));
                    let sc_hi = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sc, sc));
                    _mm256_add_epi32(_mm256_madd_epi16(lo, sc_lo), _mm256_madd_epi16(hi, sc_hi))
                };
                if GEMM {
                    sum[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d[t], sum[t]);
                } else {
                    isum[t] = _mm256_add_epi32(isum[t], s);
                }
            }
        }
        if !GEMM {
            for t in 0..T {
                sum[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), d[t], sum[t]);
            }
        }
    }
    std::array::from_fn(|t| {
        let mut out = [0f32; ROWS];
        // SAFETY: 8 writable f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(sum[t], min_sum[t])) };
        out
    })
}
