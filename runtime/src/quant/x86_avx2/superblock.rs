//! AVX2 integer sums of a super-block in [`Ints`] form with a Q8_K block (see
//! `quant::superblock`).
//!
//! Per 32 bytes: `maddubs(|q|, sign(a, q))` multiplies and adds pairs of bytes into 16
//! i16 lanes (`|q| <= 127` and `|a| <= 127`, so a pair is at most 32258 and cannot
//! saturate), `madd` with the 16 multipliers (one per 16 weights, 8 lanes each) adds
//! pairs of those into 8 i32 lanes. All exact; the parts are summed once at the end.

use std::arch::x86_64::*;

use crate::quant::q8_k::BlockQ8K;
use crate::quant::superblock::Ints;

use super::vnni::dpwssd;

/// The dots of one row (its blocks in [`Ints`] form) with 4 tokens (`acts[t][b]` is
/// token `t`'s block `b`), with the f32 steps of the tiled kernel (`TILED`) or of the
/// repacked GEMM that sums every `256 / N` weights: `quant::superblock` has the
/// arithmetic; here the 4 tokens are the 4 lanes of each f32 step, which are lane-wise
/// the scalar steps, so the results are the same bits.
#[inline(always)]
pub fn quad_dots<const N: usize, const TILED: bool, const HAS_MIN: bool, const OFFSET: i32>(
    ints: &[Ints],
    acts: [&[BlockQ8K]; 4],
) -> [f32; 4] {
    // SAFETY: this module is compiled only for targets with AVX2 and FMA.
    unsafe { quad_dots_avx2::<N, TILED, HAS_MIN, OFFSET>(ints, acts) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn quad_dots_avx2<const N: usize, const TILED: bool, const HAS_MIN: bool, const OFFSET: i32>(
    ints: &[Ints],
    acts: [&[BlockQ8K]; 4],
) -> [f32; 4] {
    let (mut acc, mut mins) = (_mm_setzero_ps(), _mm_setzero_ps());
    for (b, w) in ints.iter().enumerate() {
        let a = acts.map(|a| &a[b]);
        let d_a = _mm_setr_ps(a[0].d, a[1].d, a[2].d, a[3].d);
        let s = int_sums::<N, OFFSET>(w, a);
        let m = if HAS_MIN {
            min_sums::<N>(w, a)
        } else {
            [_mm_setzero_si128(); N]
        };
        if TILED {
            let mut r = _mm_mul_ps(_mm_cvtepi32_ps(s[0]), _mm_set1_ps(w.d));
            if HAS_MIN {
                r = _mm_fnmadd_ps(_mm_set1_ps(w.dmin), _mm_cvtepi32_ps(m[0]), r);
            }
            acc = _mm_fmadd_ps(r, d_a, acc);
        } else {
            let d = _mm_mul_ps(_mm_set1_ps(w.d), d_a);
            let dmin = _mm_mul_ps(_mm_set1_ps(w.dmin), d_a);
            for k in 0..N {
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(s[k]), d, acc);
                mins = _mm_fmadd_ps(_mm_cvtepi32_ps(m[k]), dmin, mins);
            }
        }
    }
    let mut out = [0f32; 4];
    // SAFETY: 4 writable f32.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc, mins)) };
    out
}

/// `Σ_g scale_g Σ q a` over each of `N` parts of the block, for 4 tokens: part `k`'s
/// sums in the lanes of element `k`. Each 32 weights are loaded once for the 4 tokens.
/// With `OFFSET >= 0` (see `SuperBlock::OFFSET`; -1 stands for none) the unsigned bytes
/// `q + OFFSET` multiply the activations directly, and `OFFSET · Σ_g scale_g bsums_g` is
/// taken off the block total (only whole-block sums, `N = 1`, have offsets); without,
/// the weights' signs move onto the activations and their magnitudes multiply.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn int_sums<const N: usize, const OFFSET: i32>(w: &Ints, a: [&BlockQ8K; 4]) -> [__m128i; N] {
    let per = 8 / N;
    std::array::from_fn(|k| {
        let mut acc = [_mm256_setzero_si256(); 4];
        if OFFSET > 0 {
            debug_assert_eq!(N, 1);
            // SAFETY: 16 i16 each.
            let scales = unsafe { _mm256_loadu_si256(w.group_scale.as_ptr().cast()) };
            let scaled = _mm256_mullo_epi16(scales, _mm256_set1_epi16(OFFSET as i16));
            for (acc, a) in acc.iter_mut().zip(a) {
                // SAFETY: 16 i16.
                let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
                *acc = _mm256_sub_epi32(*acc, _mm256_madd_epi16(bsums, scaled));
            }
        }
        for c in k * per..(k + 1) * per {
            // SAFETY: 32 bytes at 32c of the 256-byte `q` and a 16-lane i16 row; unaligned.
            let (q, s) = unsafe {
                (
                    _mm256_loadu_si256(w.q.as_ptr().add(32 * c).cast()),
                    _mm256_loadu_si256(w.scale[c].as_ptr().cast()),
                )
            };
            // SAFETY: 32 bytes at 32c of the 256-byte `qs`.
            let x = |a: &BlockQ8K| unsafe { _mm256_loadu_si256(a.qs.as_ptr().add(32 * c).cast()) };
            if OFFSET >= 0 {
                let u = _mm256_add_epi8(q, _mm256_set1_epi8(OFFSET as i8));
                for (acc, a) in acc.iter_mut().zip(a) {
                    *acc = dpwssd(*acc, _mm256_maddubs_epi16(u, x(a)), s);
                }
            } else {
                let mag = _mm256_abs_epi8(q);
                for (acc, a) in acc.iter_mut().zip(a) {
                    let pairs = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(x(a), q));
                    *acc = dpwssd(*acc, pairs, s);
                }
            }
        }
        // the 4 tokens' totals in one vector: pairwise adds, then the two halves
        let h = _mm256_hadd_epi32(
            _mm256_hadd_epi32(acc[0], acc[1]),
            _mm256_hadd_epi32(acc[2], acc[3]),
        );
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
    })
}

/// `Σ_g min_g bsums_g` over each of `N` parts of the block, for 4 tokens (as
/// [`int_sums`]).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn min_sums<const N: usize>(w: &Ints, a: [&BlockQ8K; 4]) -> [__m128i; N] {
    // SAFETY: 16 i16 each.
    let min = unsafe { _mm256_loadu_si256(w.min.as_ptr().cast()) };
    // lane i of v[t]: groups 2i and 2i + 1 of token t
    let v = a.map(|a| {
        // SAFETY: 16 i16.
        let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
        _mm256_madd_epi16(bsums, min)
    });
    let (h01, h23) = (_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let quarters = |h: __m256i, lo: bool| {
        if lo {
            _mm256_castsi256_si128(h)
        } else {
            _mm256_extracti128_si256::<1>(h)
        }
    };
    // pick lanes (i, j) of x and (i, j) of y: tokens 0, 1 from x, 2, 3 from y
    let pick = |x: __m128i, y: __m128i, odd: bool| {
        let (x, y) = (_mm_castsi128_ps(x), _mm_castsi128_ps(y));
        _mm_castps_si128(if odd {
            _mm_shuffle_ps::<0b11_01_11_01>(x, y)
        } else {
            _mm_shuffle_ps::<0b10_00_10_00>(x, y)
        })
    };
    match N {
        // h01: per half [t0 (l0+l1), t0 (l2+l3), t1 .., t1 ..] (low half: lanes 0..4)
        4 => std::array::from_fn(|k| {
            let half = k < 2;
            pick(quarters(h01, half), quarters(h23, half), k % 2 == 1)
        }),
        _ => {
            let h = _mm256_hadd_epi32(h01, h23);
            let (lo, hi) = (quarters(h, true), quarters(h, false));
            if N == 2 {
                std::array::from_fn(|k| if k == 0 { lo } else { hi })
            } else {
                [_mm_add_epi32(lo, hi); N]
            }
        }
    }
}
