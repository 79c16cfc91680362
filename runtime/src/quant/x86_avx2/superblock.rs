//! AVX2 integer sums of a super-block in [`Ints`] form with a Q8_K block (see
//! `quant::superblock`).
//!
//! Per 32 bytes: `maddubs(|q|, sign(a, q))` multiplies and adds pairs of bytes into 16
//! i16 lanes (`|q| <= 127` and `|a| <= 127`, so a pair is at most 32258 and cannot
//! saturate), `madd` with the 16 multipliers (one per 16 weights, 8 lanes each) adds
//! pairs of those into 8 i32 lanes. All exact; the parts are summed once at the end.

use std::arch::x86_64::*;

use super::kquants::hsum_i32x8;
use crate::quant::q8_k::BlockQ8K;
use crate::quant::superblock::Ints;

/// `Σ_g scale_g Σ q a` over each of `N` equal parts of the block (`N` = 1, 2 or 4).
#[inline(always)]
pub fn int_sums<const N: usize>(w: &Ints, a: &BlockQ8K) -> [i32; N] {
    // SAFETY: this module is compiled only for targets with AVX2 and FMA.
    unsafe { int_sums_avx2::<N>(w, a) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn int_sums_avx2<const N: usize>(w: &Ints, a: &BlockQ8K) -> [i32; N] {
    let per = 8 / N;
    std::array::from_fn(|k| {
        let mut acc = _mm256_setzero_si256();
        for c in k * per..(k + 1) * per {
            // SAFETY: 32 bytes at 32c of 256-byte arrays (q, qs) and a 16-lane i16 row;
            // unaligned loads.
            let (q, x, s) = unsafe {
                (
                    _mm256_loadu_si256(w.q.as_ptr().add(32 * c).cast()),
                    _mm256_loadu_si256(a.qs.as_ptr().add(32 * c).cast()),
                    _mm256_loadu_si256(w.scale[c].as_ptr().cast()),
                )
            };
            let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(x, q));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, s));
        }
        hsum_i32x8(acc)
    })
}
