//! The two integer multiply-accumulates every kernel of this module builds on, each one
//! instruction with AVX512-VNNI (+VL, on 256-bit vectors) and the AVX2 pair that computes
//! the same lanes without it. Both are exact (no saturation in either form for the
//! operands the kernels pass; see each function). Also the broadcast of 4 activation
//! bytes that the row-interleaved kernels multiply every row's 4 weight bytes with.

use std::arch::x86_64::*;

/// Whether the build has AVX512-VNNI on 256-bit vectors (`vpdpbusd`, `vpdpwssd`).
pub(super) const VNNI: bool = cfg!(all(
    target_feature = "avx512vnni",
    target_feature = "avx512vl"
));

/// `acc + Σ_{j<4} u[4k + j] * s[4k + j]` in i32 lane `k` (u8 × i8). Without VNNI:
/// `maddubs` (pairs to i16, which saturates above 32767: callers keep `u * |s|` pairs
/// below that, e.g. `u <= 128` and `|s| <= 127`) then `madd` with ones.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
    {
        // SAFETY: the build enables AVX512-VNNI and AVX512-VL (cfg above).
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }
    #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
    {
        _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
        )
    }
}

/// `acc + madd(p, s)`: i16 pairs times i16 multipliers, summed into i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn dpwssd(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
    #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
    {
        // SAFETY: the build enables AVX512-VNNI and AVX512-VL (cfg above).
        unsafe { _mm256_dpwssd_epi32(acc, p, s) }
    }
    #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
    {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    }
}

/// Bytes `off..off + 4` of `bytes` (i8 or u8) in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn broadcast4<B: Copy>(bytes: &[B], off: usize) -> __m256i {
    const { assert!(size_of::<B>() == 1, "broadcast4 takes bytes") };
    let four = &bytes[off..off + 4];
    // SAFETY: 4 readable one-byte elements (bounds-checked above); unaligned read.
    _mm256_set1_epi32(unsafe { four.as_ptr().cast::<i32>().read_unaligned() })
}
