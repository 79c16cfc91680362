//! AVX2 + FMA kernels for the K-quant family: the Q8_K activation quantizer and the
//! `vec_dot_*_q8_k` dot products of Q2_K..Q6_K rows with Q8_K activations.
//!
//! Every dot product keeps the whole super-block in integers: the quants are unpacked to
//! unsigned bytes, multiplied with the Q8_K quants by `maddubs` (u8 × i8 → pairs summed
//! to i16; the largest pair, 2·63·127 for Q6_K, cannot saturate), weighted with the
//! sub-block scales by `madd` (i16 × i16 → i32), and summed in 8 i32 lanes. Offsets and
//! minimums come in through the Q8_K `bsums`. Each super-block then adds
//! `d_w * d_a * sum` to an 8-lane f32 accumulator with one FMA, as the scalar
//! references do per block, so both agree up to f32 rounding of the scaling.
//!
//! The public functions are safe: this module is only compiled when the build enables
//! AVX2 and FMA (`cfg(target_feature)`), so the `#[target_feature]` workers they call
//! run on a CPU that has them.

use std::arch::x86_64::*;

use crate::quant::q8_k::{q8k_scales, BlockQ8K, QK_K};

/// Loads 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn load32<T>(bytes: &[T; 32]) -> __m256i
where
    T: Copy,
{
    debug_assert_eq!(std::mem::size_of::<T>(), 1);
    // SAFETY: a 32-element array of one-byte integers is 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// Loads 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn load16<T: Copy>(bytes: &[T; 16]) -> __m128i {
    debug_assert_eq!(std::mem::size_of::<T>(), 1);
    // SAFETY: a 16-element array of one-byte integers is 16 readable bytes.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

/// The 32 bytes at `offset` of a slice (bounds-checked, folded away for constant offsets).
#[inline(always)]
fn at32<T>(s: &[T], offset: usize) -> &[T; 32] {
    s[offset..offset + 32].try_into().expect("32 elements")
}

/// Sum of the 8 f32 lanes: halves, then pairs, then the last two.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_f32x8(v: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    _mm_cvtss_f32(s1)
}

/// Sum of the 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_i32x8(v: __m256i) -> i32 {
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b01>(s2));
    _mm_cvtsi128_si32(s1)
}

// ---------------------------------------------------------------------------------------
// Q8_K quantization
// ---------------------------------------------------------------------------------------

/// Q8_K quantization of `x` into `out` (`x.len() == out.len() * 256`); gives exactly the
/// blocks of [`crate::quant::q8_k::quantize_block_ref`].
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(
        x.len(),
        out.len() * QK_K,
        "Q8_K quantize: {} values for {} blocks",
        x.len(),
        out.len()
    );
    for (block, chunk) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        // SAFETY: this module is compiled only with AVX2 and FMA enabled.
        unsafe { quantize_block_q8_k(chunk.try_into().expect("QK_K values"), block) }
    }
}

#[target_feature(enable = "avx2,fma")]
fn quantize_block_q8_k(x: &[f32; QK_K], out: &mut BlockQ8K) {
    let load = |i: usize| -> __m256 {
        let chunk: &[f32; 8] = x[8 * i..8 * i + 8].try_into().expect("8 values");
        // SAFETY: 8 f32 are 32 readable bytes; unaligned load.
        unsafe { _mm256_loadu_ps(chunk.as_ptr()) }
    };
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));

    // Largest magnitude. NaN-free input is assumed, as for the scalar reference.
    let mut vmax = _mm256_setzero_ps();
    for i in 0..QK_K / 8 {
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(load(i), abs_mask));
    }
    let m4 = _mm_max_ps(
        _mm256_castps256_ps128(vmax),
        _mm256_extractf128_ps::<1>(vmax),
    );
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    if amax == 0.0 {
        *out = BlockQ8K::default();
        return;
    }
    // The sign comes from the first value of that magnitude.
    let vamax = _mm256_set1_ps(amax);
    let first = (0..QK_K / 8)
        .find_map(|i| {
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                _mm256_and_ps(load(i), abs_mask),
                vamax,
            ));
            (hit != 0).then(|| 8 * i + hit.trailing_zeros() as usize)
        })
        .expect("amax is one of the values");
    let (iscale, d) = q8k_scales(x[first]);

    let viscale = _mm256_set1_ps(iscale);
    let top = _mm256_set1_epi32(127);
    let quant = |i: usize| -> __m256i {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(viscale, load(i)),
        );
        _mm256_min_epi32(_mm256_cvtps_epi32(r), top)
    };
    // 32 values per step: four i32 vectors packed to bytes, plus the two group sums.
    let mut sums = [0i32; QK_K / 16];
    for step in 0..QK_K / 32 {
        let q0 = quant(4 * step);
        let q1 = quant(4 * step + 1);
        let q2 = quant(4 * step + 2);
        let q3 = quant(4 * step + 3);
        sums[2 * step] = hsum_i32x8(_mm256_add_epi32(q0, q1));
        sums[2 * step + 1] = hsum_i32x8(_mm256_add_epi32(q2, q3));
        // packs work within 128-bit lanes; the permute restores value order.
        let w01 = _mm256_packs_epi32(q0, q1);
        let w23 = _mm256_packs_epi32(q2, q3);
        let b = _mm256_packs_epi16(w01, w23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let dst: &mut [i8; 32] = (&mut out.qs[32 * step..32 * step + 32])
            .try_into()
            .expect("32 quants");
        // SAFETY: dst is 32 writable bytes; unaligned store.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), b) };
    }
    for (b, s) in out.bsums.iter_mut().zip(sums) {
        *b = s as i16;
    }
    out.d = d;
}
