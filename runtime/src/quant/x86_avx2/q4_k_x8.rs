//! AVX2 + FMA + F16C kernel of the 8-row-interleaved Q4_K dot ([`crate::quant::q4_k_x8`]):
//! one group of 8 rows times one token, one row per 32-bit lane throughout.
//!
//! Per super-block, each 32-byte load of quants holds 4 bytes of every row; the 4
//! activation bytes they multiply are broadcast to all lanes, and a dot of 4 u8 × i8
//! products per lane (`vpdpbusd` with AVX512-VNNI; `maddubs` + `madd` with ones
//! otherwise) sums each row's products in its lane. Eight loads cover two sub-blocks
//! (low and high nibbles); their lane sums are multiplied by the rows' scales (8 bytes,
//! zero-extended to 8 lanes) and added up. The minimum terms are a `madd` of the rows'
//! minimum pairs with the activation's sub-block sums. The integer totals are exact, and
//! the f32 steps per lane are Q4_K's per row (see the module doc of `kquants`), so every
//! lane equals `vec_dot_q4_k_q8_k` of its row to the bit.
//!
//! With VNNI the high nibbles are not shifted down: `bits & 0xf0` is 16 times the quant,
//! and `vpdpbusd` does not saturate, so those sums are exactly 16 times the wanted ones;
//! the high sub-blocks' scaled sums go to their own accumulator, divided by 16 (an exact
//! shift) once per super-block. `maddubs` saturates its i16 pairs (2 · 240 · 127 does not
//! fit), so without VNNI the high nibbles are shifted.

use std::arch::x86_64::*;

use crate::quant::q4_k_x8::{BlockQ4KX8, ROWS};
use crate::quant::q8_k::BlockQ8K;

use super::vnni::{dpbusd, dpwssd, VNNI};

/// Whether the high nibbles are used in place (16 × the quant); see the module doc.
const HI_IN_PLACE: bool = VNNI;

/// Activation bytes `off..off + 4` in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn broadcast4(qs: &[i8; 256], off: usize) -> __m256i {
    let bytes: [i8; 4] = qs[off..off + 4].try_into().expect("4 bytes");
    _mm256_set1_epi32(i32::from_le_bytes(bytes.map(|b| b as u8)))
}

/// 8 bytes zero-extended to 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn u8x8_to_i32(bytes: &[u8]) -> __m256i {
    let b: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
    _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(b)))
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
    unsafe { dot_q4_kx8(w, act, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_kx8(w: &[BlockQ4KX8], act: &[BlockQ8K], out: &mut [f32; ROWS]) {
    let low4 = _mm256_set1_epi8(0x0f);
    let high4 = _mm256_set1_epi8(0xf0u8 as i8);
    let (mut sum, mut min_sum) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (b, a) in w.iter().zip(act) {
        // sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles), one row per lane
        let (mut isum_lo, mut isum_hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for c in 0..4 {
            // two chains per sub-block (even and odd k), so that the dot's latency is
            // not the limit
            let mut dot_lo = [_mm256_setzero_si256(); 2];
            let mut dot_hi = [_mm256_setzero_si256(); 2];
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
                let e = k % 2;
                dot_lo[e] = dpbusd(dot_lo[e], q_lo, broadcast4(&a.qs, 64 * c + 4 * k));
                dot_hi[e] = dpbusd(dot_hi[e], q_hi, broadcast4(&a.qs, 64 * c + 32 + 4 * k));
            }
            let dot_lo = _mm256_add_epi32(dot_lo[0], dot_lo[1]);
            let dot_hi = _mm256_add_epi32(dot_hi[0], dot_hi[1]);
            let sc_lo = u8x8_to_i32(&b.scales[16 * c..]);
            let sc_hi = u8x8_to_i32(&b.scales[16 * c + 8..]);
            isum_lo = _mm256_add_epi32(isum_lo, _mm256_mullo_epi32(dot_lo, sc_lo));
            isum_hi = _mm256_add_epi32(isum_hi, _mm256_mullo_epi32(dot_hi, sc_hi));
        }
        let isum = if HI_IN_PLACE {
            _mm256_add_epi32(isum_lo, _mm256_srai_epi32::<4>(isum_hi))
        } else {
            _mm256_add_epi32(isum_lo, isum_hi)
        };

        // the activation sums of the 8 sub-blocks as i16, in both 128-bit lanes
        // SAFETY: 16 i16 are 32 readable bytes.
        let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
        let sub_sums = _mm_hadd_epi16(
            _mm256_castsi256_si128(bsums),
            _mm256_extracti128_si256::<1>(bsums),
        );
        let sub_sums = _mm256_broadcastsi128_si256(sub_sums);
        let mut imin = _mm256_setzero_si256();
        macro_rules! min_pair {
            ($p:literal) => {{
                let pair = _mm256_shuffle_epi32::<{ $p * 0x55 }>(sub_sums);
                let m: &[u8; 16] = b.mins[16 * $p..16 * $p + 16].try_into().expect("16");
                // SAFETY: 16 readable bytes.
                let m = unsafe { _mm_loadu_si128(m.as_ptr().cast()) };
                imin = dpwssd(imin, _mm256_cvtepu8_epi16(m), pair);
            }};
        }
        min_pair!(0);
        min_pair!(1);
        min_pair!(2);
        min_pair!(3);

        // SAFETY: 8 f16 are 16 readable bytes.
        let (d, dmin) = unsafe {
            (
                _mm_loadu_si128(b.d.as_ptr().cast()),
                _mm_loadu_si128(b.dmin.as_ptr().cast()),
            )
        };
        let d_a = _mm256_set1_ps(a.d);
        let d = _mm256_mul_ps(_mm256_cvtph_ps(d), d_a);
        let dmin = _mm256_mul_ps(_mm256_cvtph_ps(dmin), d_a);
        sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, sum);
        min_sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), dmin, min_sum);
    }
    // SAFETY: `out` is 8 writable f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(sum, min_sum)) };
}
