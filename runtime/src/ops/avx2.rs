//! The AVX2 tier's kernels (8 lanes; AVX2, FMA and F16C): the 8-lane twins of `x86`'s
//! AVX-512 kernels, each giving its scalar reference's bits. They compile wherever those
//! features are on, AVX-512 builds included, so an AVX-512 machine tests them too; the
//! AVX2 tier runs them in place of the 16-lane kernels.

use crate::float16::f16;
use std::arch::x86_64::*;

/// [`super::dot_f16_ref`] with 8 lanes: four `__m256` accumulators over blocks of 32.
#[inline]
pub(super) fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    let blocks_end = n - n % 32;
    let pa = a.as_ptr() as *const __m128i;
    let pb = b.as_ptr() as *const __m128i;
    // SAFETY: every 8-value load starts below blocks_end <= n, inside both slices.
    let lanes = unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut block = 0;
        while block < blocks_end {
            for (j, acc_j) in acc.iter_mut().enumerate() {
                let off = (block + 8 * j) / 8;
                let va = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(off)));
                let vb = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(off)));
                *acc_j = _mm256_fmadd_ps(va, vb, *acc_j);
            }
            block += 32;
        }
        let low = _mm256_add_ps(acc[0], acc[2]);
        let high = _mm256_add_ps(acc[1], acc[3]);
        let total = _mm256_add_ps(low, high);
        let quarters = _mm_add_ps(
            _mm256_castps256_ps128(total),
            _mm256_extractf128_ps::<1>(total),
        );
        let pairs = _mm_hadd_ps(quarters, quarters);
        _mm_cvtss_f32(_mm_hadd_ps(pairs, pairs))
    };
    let mut sum = lanes as f64;
    for i in blocks_end..n {
        sum += (a[i].to_f32() * b[i].to_f32()) as f64;
    }
    sum as f32
}

/// `x86::mad_f16` 8 at a time: `acc[i] = f16(fma(x[i], v, f32(acc[i])))`.
#[inline]
pub(super) fn mad_f16(acc: &mut [f16], x: &[f16], v: f32) {
    let n = acc.len().min(x.len());
    let vec_end = n - n % 8;
    let pa = acc.as_mut_ptr() as *mut __m128i;
    let px = x.as_ptr() as *const __m128i;
    // SAFETY: loads and stores of 8 values start below vec_end <= n.
    unsafe {
        let vv = _mm256_set1_ps(v);
        for blk in 0..vec_end / 8 {
            let va = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(blk)));
            let vx = _mm256_cvtph_ps(_mm_loadu_si128(px.add(blk)));
            let sum = _mm256_fmadd_ps(vx, vv, va);
            _mm_storeu_si128(
                pa.add(blk),
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(sum),
            );
        }
    }
    for i in vec_end..n {
        acc[i] = f16::from_f32(x[i].to_f32().mul_add(v, acc[i].to_f32()));
    }
}

/// `acc[i] = f16(f32(acc[i]) * v)` 8 at a time (ggml's `ggml_vec_scale_f16`).
#[inline]
pub(super) fn scale_f16(acc: &mut [f16], v: f32) {
    let n = acc.len();
    let vec_end = n - n % 8;
    let pa = acc.as_mut_ptr() as *mut __m128i;
    // SAFETY: loads and stores of 8 values start below vec_end <= n.
    unsafe {
        let vv = _mm256_set1_ps(v);
        for blk in 0..vec_end / 8 {
            let va = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(blk)));
            let prod = _mm256_mul_ps(va, vv);
            _mm_storeu_si128(
                pa.add(blk),
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(prod),
            );
        }
    }
    for a in acc[vec_end..].iter_mut() {
        *a = f16::from_f32(a.to_f32() * v);
    }
}

/// f32 -> f16 rounding to nearest even, 8 at a time.
#[inline]
pub(super) fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    let n = src.len().min(dst.len());
    let vec_end = n - n % 8;
    // SAFETY: loads and stores of 8 values start below vec_end <= n.
    unsafe {
        for blk in 0..vec_end / 8 {
            let v = _mm256_loadu_ps(src.as_ptr().add(8 * blk));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128((dst.as_mut_ptr() as *mut __m128i).add(blk), h);
        }
    }
    for i in vec_end..n {
        dst[i] = f16::from_f32(src[i]);
    }
}

/// f16 -> f32, 8 at a time (exact).
#[inline]
pub(super) fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let vec_end = n - n % 8;
    // SAFETY: loads and stores of 8 values start below vec_end <= n.
    unsafe {
        for blk in 0..vec_end / 8 {
            let h = _mm_loadu_si128((src.as_ptr() as *const __m128i).add(blk));
            _mm256_storeu_ps(dst.as_mut_ptr().add(8 * blk), _mm256_cvtph_ps(h));
        }
    }
    for i in vec_end..n {
        dst[i] = src[i].to_f32();
    }
}

/// 8 lanes of [`super::expf_flavor`] with [`super::ExpFlavor::Avx2`], lane for lane:
/// `k + k*j` with `k = 2^n` from the exponent bits where `|n| <= 126`, the two-factor
/// scaling `(s2 + s2*j) * s1` up to `|n| = 192`, and `s1 * s1` (0 or infinity) past it.
#[inline(always)]
unsafe fn expf_w8(x: __m256) -> __m256 {
    let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let shifter = c(0x4b40_0000);
    let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), shifter);
    let n = _mm256_sub_ps(z, shifter);
    let b = _mm256_fnmadd_ps(n, c(0x35bf_be8e), _mm256_fnmadd_ps(n, c(0x3f31_7200), x));
    let u = _mm256_mul_ps(b, b);
    let high = _mm256_fmadd_ps(
        _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
        u,
        _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
    );
    let j = _mm256_fmadd_ps(high, u, _mm256_mul_ps(c(0x3f7f_fff6), b));
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_set1_epi32(0x3f80_0000)));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let wide = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
    let plain = _mm256_fmadd_ps(j, k, k);
    if _mm256_movemask_ps(wide) == 0 {
        return plain;
    }
    let negative = _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps());
    let g = _mm256_and_si256(
        _mm256_castps_si256(negative),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1);
    let huge = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    let far = _mm256_blendv_ps(scaled, _mm256_mul_ps(s1, s1), huge);
    _mm256_blendv_ps(plain, far, wide)
}

/// glibc's `expf` as it runs on every CPU with FMA (`__expf_fma`, glibc 2.28 on: the
/// ARM optimized-routines method that llama.cpp's one-row attention calls), 4 lanes in
/// f64, each lane the scalar function's bits wherever `|x| < 2^7 - 2^3` (`abstop <=
/// 0x42a`, the whole range of a finite softmax argument that does not underflow).
/// Returns the lanes and a mask of those outside that range, which the caller gives to
/// libm.
///
/// The method: `z = x * 32/ln2` is split as `k + r` with `k` an integer (by adding
/// `1.5 * 2^52`), `2^(k/32)` comes from a 32-entry table plus the exponent bits of `k`,
/// and `2^(r/32)` from a cubic. The fused multiply-adds are where glibc's FMA build has
/// them; `r` is `fma(x, 32/ln2, -kd)`, not `z - kd`.
#[inline(always)]
unsafe fn libm_expf_w4(x: __m128) -> (__m128, __m128i) {
    // 2^(i/32) with i << 47 subtracted, glibc's `__exp2f_data.tab`
    const TAB: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];
    let c = |bits: u64| _mm256_set1_pd(f64::from_bits(bits));
    let inv_ln2_n = c(0x40471547652b82fe); // 32 / ln 2
    let shift = c(0x4338000000000000); // 1.5 * 2^52
    let xd = _mm256_cvtps_pd(x);
    let kd_shifted = _mm256_fmadd_pd(inv_ln2_n, xd, shift);
    let ki = _mm256_castpd_si256(kd_shifted);
    let kd = _mm256_sub_pd(kd_shifted, shift);
    let r = _mm256_fmsub_pd(inv_ln2_n, xd, kd);
    let index = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
    let t = _mm256_i64gather_epi64::<8>(TAB.as_ptr().cast(), index);
    let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
    let z = _mm256_fmadd_pd(r, c(0x3ebc6af84b912394), c(0x3f2ebfce50fac4f3));
    let r2 = _mm256_mul_pd(r, r);
    let y = _mm256_fmadd_pd(r, c(0x3f962e42ff0c52d6), _mm256_set1_pd(1.0));
    let y = _mm256_mul_pd(_mm256_fmadd_pd(z, r2, y), s);
    // glibc's range test: the top 12 bits of x without the sign, past 0x42a
    let top = _mm_and_si128(
        _mm_srli_epi32::<20>(_mm_castps_si128(x)),
        _mm_set1_epi32(0x7ff),
    );
    (
        _mm256_cvtpd_ps(y),
        _mm_cmpgt_epi32(top, _mm_set1_epi32(0x42a)),
    )
}

/// `x = expf(x)` in place, each value glibc's `expf`'s bits (see [`libm_expf_w4`]).
pub(super) fn libm_expf(xs: &mut [f32]) {
    let mut chunks = xs.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let x: [f32; 4] = [chunk[0], chunk[1], chunk[2], chunk[3]];
        // SAFETY: a 4-value load and store of a 4-value chunk.
        let outside = unsafe {
            let (e, outside) = libm_expf_w4(_mm_loadu_ps(x.as_ptr()));
            _mm_storeu_ps(chunk.as_mut_ptr(), e);
            _mm_movemask_ps(_mm_castsi128_ps(outside))
        };
        if outside != 0 {
            for (i, (e, x)) in chunk.iter_mut().zip(x).enumerate() {
                if outside & (1 << i) != 0 {
                    *e = x.exp();
                }
            }
        }
    }
    for x in chunks.into_remainder() {
        *x = x.exp();
    }
}

/// The 8-lane softmax tree of [`super::reduce_lanes_softmax`]: halves, then
/// `(t0 + t2) + (t1 + t3)`.
#[inline(always)]
unsafe fn reduce_softmax_w8(v: __m256) -> f32 {
    let quarters = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pairs = _mm_add_ps(quarters, _mm_movehl_ps(quarters, quarters));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
}

/// `s = expf(s - max)` over one 64-key tile in eight 8-lane blocks, returning the f64
/// total of the block sums (each block reduced in the softmax tree).
#[inline]
pub(super) fn exp_and_sum(scores: &mut [f32; 64], max: f32) -> f64 {
    let mut total = 0f64;
    // SAFETY: eight 8-lane loads and stores inside the 64-value array.
    unsafe {
        let vmax = _mm256_set1_ps(max);
        for blk in 0..8 {
            let p = scores.as_mut_ptr().add(8 * blk);
            let e = expf_w8(_mm256_sub_ps(_mm256_loadu_ps(p), vmax));
            _mm256_storeu_ps(p, e);
            total += reduce_softmax_w8(e) as f64;
        }
    }
    total
}

/// `gate[i] = silu(gate[i]) * up[i]` with [`super::ExpFlavor::Avx2`]'s `expf` for the
/// whole 8-lane blocks; returns how many values it did (the caller finishes the tail).
#[inline]
pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) -> usize {
    let n = gate.len().min(up.len());
    let vec_end = n - n % 8;
    // SAFETY: loads and stores of 8 values start below vec_end <= n.
    unsafe {
        let one = _mm256_set1_ps(1.0);
        for i in (0..vec_end).step_by(8) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = expf_w8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
            let out = _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i)));
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), out);
        }
    }
    vec_end
}

/// Scores of `R` query rows against `8 C` keys of a transposed tile (`k_t[d * 64 + j]`,
/// keys from `k_t`'s start): the fma chain over `d` from 0 per (row, key), then
/// `* scale`, as `x86::scores_rows`.
///
/// # Safety
/// `q` holds `R` rows of `hd` values `q_stride` apart; `k_t` `hd` rows of 64 values
/// (from the pointer on, `8 C` used per row); `out` `R` rows of 64 (`8 C` written).
#[inline(always)]
unsafe fn scores_rows_w8<const R: usize, const C: usize>(
    q: *const f32,
    q_stride: usize,
    hd: usize,
    k_t: *const f32,
    scale: f32,
    out: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for d in 0..hd {
        let keys: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(k_t.add(d * 64 + 8 * c)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let qd = _mm256_set1_ps(*q.add(r * q_stride + d));
            for (a, &k) in acc_r.iter_mut().zip(&keys) {
                *a = _mm256_fmadd_ps(qd, k, *a);
            }
        }
    }
    let scale = _mm256_set1_ps(scale);
    for (r, acc_r) in acc.iter().enumerate() {
        for (c, &a) in acc_r.iter().enumerate() {
            _mm256_storeu_ps(out.add(r * 64 + 8 * c), _mm256_mul_ps(a, scale));
        }
    }
}

/// `x86::tile_scores_w16` in 8 lanes: four rows × 16 keys per register block (8
/// accumulators of the 16 registers), single rows × 32 keys for the rest.
pub(super) fn tile_scores(
    q: &[f32],
    q_stride: usize,
    rows: usize,
    hd: usize,
    k_t: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    assert!(rows == 0 || q.len() >= (rows - 1) * q_stride + hd);
    assert!(k_t.len() >= hd * 64 && out.len() >= rows * 64);
    let mut r = 0;
    // SAFETY: the asserts above bound every row of q, k_t and out the kernels touch.
    unsafe {
        let (q, k_t, out) = (q.as_ptr(), k_t.as_ptr(), out.as_mut_ptr());
        while r + 4 <= rows {
            for j in (0..64).step_by(16) {
                scores_rows_w8::<4, 2>(
                    q.add(r * q_stride),
                    q_stride,
                    hd,
                    k_t.add(j),
                    scale,
                    out.add(r * 64 + j),
                );
            }
            r += 4;
        }
        while r < rows {
            for j in (0..64).step_by(32) {
                scores_rows_w8::<1, 4>(
                    q.add(r * q_stride),
                    q_stride,
                    hd,
                    k_t.add(j),
                    scale,
                    out.add(r * 64 + j),
                );
            }
            r += 1;
        }
    }
}

/// `x86::accumulate_v_cols` in 8 lanes: `N` vectors (8 N values) of each of `M` rows kept
/// in registers while every key is added, each V load serving the `M` rows.
///
/// # Safety
/// Each `o[m]` holds `8 N` values; `v` holds `p[m].len()` (all equal) rows of at least
/// `8 N` values `hd` apart.
#[inline(always)]
unsafe fn accumulate_v_cols_w8<const M: usize, const N: usize>(
    o: [*mut f32; M],
    p: [&[f32]; M],
    v: *const f32,
    hd: usize,
) {
    let mut acc: [[__m256; N]; M] =
        o.map(|o| std::array::from_fn(|c| _mm256_loadu_ps(o.add(8 * c))));
    for j in 0..p[0].len() {
        let w: [__m256; M] = std::array::from_fn(|m| _mm256_set1_ps(*p[m].get_unchecked(j)));
        // column-major over the rows, so each V load serves all M rows
        #[allow(clippy::needless_range_loop)]
        for c in 0..N {
            let vj = _mm256_loadu_ps(v.add(j * hd + 8 * c));
            for (acc_m, &w_m) in acc.iter_mut().zip(&w) {
                acc_m[c] = _mm256_fmadd_ps(w_m, vj, acc_m[c]);
            }
        }
    }
    for (o, acc) in o.iter().zip(&acc) {
        for (c, &a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * c), a);
        }
    }
}

/// `o[m] += sum_j p[m]_j * v_j` for `M` (1 or 2) rows over the same keys, as sequential
/// fused steps per value, for `hd` a multiple of 8: columns in register blocks of up to
/// 64 values for one row, 32 for two. Returns false (and does nothing) for other head
/// sizes or unequal key counts.
pub(super) fn accumulate_v<const M: usize>(
    o: [&mut [f32]; M],
    p: [&[f32]; M],
    v: &[f32],
    hd: usize,
) -> bool {
    let n = p[0].len();
    if !hd.is_multiple_of(8) || o.iter().any(|o| o.len() != hd) || p.iter().any(|p| p.len() != n) {
        return false;
    }
    if v.len() < n * hd {
        return false;
    }
    let o = o.map(|o| o.as_mut_ptr());
    let widest = 8 / M;
    let mut col = 0;
    // SAFETY: each block covers columns col..col + 8 N <= hd of every row and of every v
    // row (n rows, checked).
    unsafe {
        while col < hd {
            let at = o.map(|o| o.add(col));
            let v_at = v.as_ptr().add(col);
            col += 8 * match ((hd - col) / 8).min(widest) {
                8 => {
                    accumulate_v_cols_w8::<M, 8>(at, p, v_at, hd);
                    8
                }
                4..=7 => {
                    accumulate_v_cols_w8::<M, 4>(at, p, v_at, hd);
                    4
                }
                2 | 3 => {
                    accumulate_v_cols_w8::<M, 2>(at, p, v_at, hd);
                    2
                }
                _ => {
                    accumulate_v_cols_w8::<M, 1>(at, p, v_at, hd);
                    1
                }
            };
        }
    }
    true
}

/// An 8 × 8 block of f32 transposed in registers: `out[c]` lane `i` is `rows[i]` lane `c`.
#[inline(always)]
unsafe fn transpose_8x8(r: [__m256; 8]) -> [__m256; 8] {
    // t: rows 2k, 2k+1 interleaved by value (within 128-bit lanes)
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // u[4m + c]: columns c and c + 4 of rows 4m..4m+4 (one per 128-bit lane)
    let mut u = [_mm256_setzero_ps(); 8];
    for m in 0..2 {
        let (a, b, c, d) = (t[4 * m], t[4 * m + 1], t[4 * m + 2], t[4 * m + 3]);
        u[4 * m] = _mm256_shuffle_ps::<0x44>(a, c);
        u[4 * m + 1] = _mm256_shuffle_ps::<0xee>(a, c);
        u[4 * m + 2] = _mm256_shuffle_ps::<0x44>(b, d);
        u[4 * m + 3] = _mm256_shuffle_ps::<0xee>(b, d);
    }
    std::array::from_fn(|c| {
        let (lo, hi) = (u[c % 4], u[4 + c % 4]);
        if c < 4 {
            _mm256_permute2f128_ps::<0x20>(lo, hi)
        } else {
            _mm256_permute2f128_ps::<0x31>(lo, hi)
        }
    })
}

/// `x86::load_k_transposed_w16` with 8 × 8 register transposes, for `hd` a multiple of 8;
/// key columns from `len` up to the next multiple of 8 get zeros.
pub(super) fn load_k_transposed(
    k_cache: &[f16],
    kv_stride: usize,
    len: usize,
    hd: usize,
    k_t: &mut [f32],
) -> bool {
    if !hd.is_multiple_of(8) {
        return false;
    }
    assert!(len <= 64 && k_t.len() >= hd * 64);
    assert!(len == 0 || k_cache.len() >= (len - 1) * kv_stride + hd);
    for j0 in (0..len).step_by(8) {
        for d0 in (0..hd).step_by(8) {
            // SAFETY: key j0 + i < len starts at (j0 + i) * kv_stride and has hd values
            // (asserted); the stores write k_t[(d0 + c) * 64 + j0..][..8] with d0 + c < hd
            // and j0 + 8 <= 64.
            unsafe {
                let rows: [__m256; 8] = std::array::from_fn(|i| {
                    if j0 + i < len {
                        let p = k_cache.as_ptr().add((j0 + i) * kv_stride + d0);
                        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                for (c, col) in transpose_8x8(rows).into_iter().enumerate() {
                    _mm256_storeu_ps(k_t.as_mut_ptr().add((d0 + c) * 64 + j0), col);
                }
            }
        }
    }
    true
}

/// `x86::max_w16` in 8 lanes.
pub(super) fn max(scores: &[f32; 64]) -> f32 {
    // SAFETY: eight 8-lane loads inside the 64-value array.
    unsafe {
        let p = scores.as_ptr();
        let mut m = _mm256_loadu_ps(p);
        for blk in 1..8 {
            m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(8 * blk)));
        }
        let q = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let h = _mm_max_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
    }
}

/// ggml's four accumulators of one dot product (`H` of them: one K row against `H`
/// widened queries `q[h * hd..]`, `hd` a multiple of 32), added lane-wise as its reduce
/// does first: `(a0 + a2) + (a1 + a3)`. The K row is widened once for all of them.
///
/// # Safety
/// `k` holds `hd` values and `q` `H * hd`.
#[inline(always)]
unsafe fn dot_lanes_w8<const H: usize>(k: *const f16, q: *const f32, hd: usize) -> [__m256; H] {
    let mut acc = [[_mm256_setzero_ps(); 4]; H];
    for b in (0..hd).step_by(32) {
        let kv: [__m256; 4] =
            std::array::from_fn(|i| _mm256_cvtph_ps(_mm_loadu_si128(k.add(b + 8 * i).cast())));
        for (h, acc_h) in acc.iter_mut().enumerate() {
            for (i, a) in acc_h.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(kv[i], _mm256_loadu_ps(q.add(h * hd + b + 8 * i)), *a);
            }
        }
    }
    acc.map(|a| _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3])))
}

/// The rest of [`dot_f16`]'s reduce for one dot product's lane-wise sums: halves, then
/// `(t0 + t1) + (t2 + t3)`.
#[inline(always)]
unsafe fn reduce_dot_w8(total: __m256) -> f32 {
    let quarters = _mm_add_ps(
        _mm256_castps256_ps128(total),
        _mm256_extractf128_ps::<1>(total),
    );
    let pairs = _mm_hadd_ps(quarters, quarters);
    _mm_cvtss_f32(_mm_hadd_ps(pairs, pairs))
}

/// [`reduce_dot_w8`] for eight dot products at once (`t[k]`: key `k`'s lane-wise sums):
/// every key's tree is the same additions of the same values, done for two to four
/// keys per instruction. Returns the eight sums in key order.
#[inline(always)]
unsafe fn reduce_dot_8keys(t: &[__m256; 8]) -> __m256 {
    // [quarters of key 2i | quarters of key 2i + 1]
    let q: [__m256; 4] = std::array::from_fn(|i| {
        let (a, b) = (t[2 * i], t[2 * i + 1]);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    });
    // pairs of keys 0, 2 | 1, 3 and 4, 6 | 5, 7: [t0 + t1, t2 + t3] each
    let low = _mm256_hadd_ps(q[0], q[1]);
    let high = _mm256_hadd_ps(q[2], q[3]);
    // [k0 k2 k4 k6 | k1 k3 k5 k7]
    let sums = _mm256_hadd_ps(low, high);
    _mm256_permutevar8x32_ps(sums, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `super::group_scores` for `hd` a multiple of 32: each K row is widened once per pair
/// of heads (eight accumulators and four K vectors fit the 16 registers), and the
/// horizontal sums of eight keys share their instructions ([`reduce_dot_8keys`]); every
/// score is [`dot_f16`]'s, bit for bit. Returns false (and does nothing) otherwise.
pub(super) fn group_scores(
    q: &[f32],
    hd: usize,
    k: &[f16],
    kv_stride: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
) -> bool {
    if !hd.is_multiple_of(32) || q.is_empty() || !q.len().is_multiple_of(hd) {
        return false;
    }
    let heads = q.len() / hd;
    assert!(len == 0 || k.len() >= (len - 1) * kv_stride + hd);
    assert!(scores.len() >= heads * len);
    let (q, out) = (q.as_ptr(), scores.as_mut_ptr());
    // SAFETY: key j < len's row is k[j * kv_stride..][..hd] (asserted); head g < heads
    // has its query at q[g * hd..][..hd] and its scores at scores[g * len..][..len].
    unsafe {
        let vscale = _mm256_set1_ps(scale);
        let mut j = 0;
        while j + 8 <= len {
            let row = |kk: usize| k.as_ptr().add((j + kk) * kv_stride);
            // ask for the block after next while this one computes
            if j + 24 <= len {
                for kk in 16..24 {
                    super::prefetch_row::<_MM_HINT_T0>(row(kk), hd);
                }
            }
            // and further ahead into L2, so that DRAM's latency is hidden too
            if j + 48 <= len {
                for kk in 40..48 {
                    super::prefetch_row::<_MM_HINT_T1>(row(kk), hd);
                }
            }
            let mut g = 0;
            while g + 2 <= heads {
                let pairs: [[__m256; 2]; 8] =
                    std::array::from_fn(|kk| dot_lanes_w8::<2>(row(kk), q.add(g * hd), hd));
                let t: [[__m256; 8]; 2] = std::array::from_fn(|h| pairs.map(|p| p[h]));
                for (h, t) in t.iter().enumerate() {
                    let sums = _mm256_mul_ps(reduce_dot_8keys(t), vscale);
                    _mm256_storeu_ps(out.add((g + h) * len + j), sums);
                }
                g += 2;
            }
            if g < heads {
                let t: [__m256; 8] =
                    std::array::from_fn(|kk| dot_lanes_w8::<1>(row(kk), q.add(g * hd), hd)[0]);
                let sums = _mm256_mul_ps(reduce_dot_8keys(&t), vscale);
                _mm256_storeu_ps(out.add(g * len + j), sums);
            }
            j += 8;
        }
        for j in j..len {
            let row = k.as_ptr().add(j * kv_stride);
            for g in 0..heads {
                let [t] = dot_lanes_w8::<1>(row, q.add(g * hd), hd);
                *out.add(g * len + j) = reduce_dot_w8(t) * scale;
            }
        }
    }
    true
}

/// f32 rounded to f16 and back: the value an f16 store and load would give.
#[inline(always)]
unsafe fn round_f16_w8(x: __m256) -> __m256 {
    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// Columns `0..8 C` (`C` vectors) of `G` heads' running outputs over `len` keys, the
/// outputs kept in registers as f32 values that are exactly f16 (each step rounds to
/// f16 and back, as an f16 buffer would), each V vector widened once for the `G` heads.
/// Each (head, vector) is a chain of dependent steps, so `G * C` chains run side by
/// side.
///
/// # Safety
/// Head `g`'s output is `acc[g * hd..][..8 C]`, its weights and rescales
/// `w[g * w_stride..][..len]` and `r[..]` likewise; key `j`'s V columns are
/// `v[j * kv_stride..][..8 C]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn v_cols_w8<const G: usize, const C: usize>(
    w: *const f32,
    r: *const f32,
    w_stride: usize,
    len: usize,
    v: *const f16,
    kv_stride: usize,
    acc: *mut f16,
    hd: usize,
) {
    let mut a: [[__m256; C]; G] = std::array::from_fn(|g| {
        std::array::from_fn(|c| _mm256_cvtph_ps(_mm_loadu_si128(acc.add(g * hd + 8 * c).cast())))
    });
    for j in 0..len {
        for (g, a_g) in a.iter_mut().enumerate() {
            let rescale = *r.add(g * w_stride + j);
            if rescale != 1.0 {
                let m = _mm256_set1_ps(rescale);
                *a_g = a_g.map(|a| round_f16_w8(_mm256_mul_ps(a, m)));
            }
        }
        let weight: [__m256; G] = std::array::from_fn(|g| _mm256_set1_ps(*w.add(g * w_stride + j)));
        let row = v.add(j * kv_stride);
        // one V vector at a time, each serving every head
        #[allow(clippy::needless_range_loop)]
        for c in 0..C {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * c).cast()));
            for (a_g, &w_g) in a.iter_mut().zip(&weight) {
                a_g[c] = round_f16_w8(_mm256_fmadd_ps(x, w_g, a_g[c]));
            }
        }
    }
    for (g, a_g) in a.iter().enumerate() {
        for (c, &a) in a_g.iter().enumerate() {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a);
            _mm_storeu_si128(acc.add(g * hd + 8 * c).cast(), h);
        }
    }
}

/// `super::group_accumulate_v` for `hd` a multiple of 16: up to four heads at a time,
/// 32 columns of each (16 for four heads) in registers over a tile of keys, so each V
/// vector is loaded and widened once for all of them, with enough independent chains to
/// hide the f16 round trip's latency; every step is `mad_f16`'s (and `scale_f16`'s).
/// Returns false (and does nothing) for other head sizes.
pub(super) fn group_accumulate_v(
    weights: &[f32],
    rescales: &[f32],
    v: &[f16],
    kv_stride: usize,
    len: usize,
    hd: usize,
    acc: &mut [f16],
) -> bool {
    if !hd.is_multiple_of(16) || len == 0 {
        return false;
    }
    let heads = weights.len() / len;
    assert!(rescales.len() >= heads * len && acc.len() >= heads * hd);
    assert!(v.len() >= (len - 1) * kv_stride + hd);
    for j0 in (0..len).step_by(super::V_TILE) {
        let n = super::V_TILE.min(len - j0);
        // the next tiles' rows arrive in L2 while this one computes (into L1 they
        // would evict this tile's rows: see V_TILE)
        for j in j0 + 2 * super::V_TILE..(j0 + 3 * super::V_TILE).min(len) {
            // SAFETY: only an address inside the slice (j < len) is computed.
            super::prefetch_row::<_MM_HINT_T1>(unsafe { v.as_ptr().add(j * kv_stride) }, hd);
        }
        for g0 in (0..heads).step_by(4) {
            let g_n = (heads - g0).min(4);
            let mut col = 0;
            while col < hd {
                // 32 columns where they fit the registers (G <= 3) and the head, else 16
                let wide = g_n <= 3 && col + 32 <= hd;
                // SAFETY: heads g0..g0 + g_n <= heads, keys j0..j0 + n <= len and
                // columns col..col + 16 or 32 <= hd, all inside the slices (asserted).
                unsafe {
                    let w = weights.as_ptr().add(g0 * len + j0);
                    let r = rescales.as_ptr().add(g0 * len + j0);
                    let vv = v.as_ptr().add(j0 * kv_stride + col);
                    let a = acc.as_mut_ptr().add(g0 * hd + col);
                    match (g_n, wide) {
                        (1, true) => v_cols_w8::<1, 4>(w, r, len, n, vv, kv_stride, a, hd),
                        (2, true) => v_cols_w8::<2, 4>(w, r, len, n, vv, kv_stride, a, hd),
                        (3, true) => v_cols_w8::<3, 4>(w, r, len, n, vv, kv_stride, a, hd),
                        (1, false) => v_cols_w8::<1, 2>(w, r, len, n, vv, kv_stride, a, hd),
                        (2, false) => v_cols_w8::<2, 2>(w, r, len, n, vv, kv_stride, a, hd),
                        (3, false) => v_cols_w8::<3, 2>(w, r, len, n, vv, kv_stride, a, hd),
                        _ => v_cols_w8::<4, 2>(w, r, len, n, vv, kv_stride, a, hd),
                    }
                }
                col += if wide { 32 } else { 16 };
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::tiled::{accumulate_v_ref, tile_max_ref, tile_scores_ref};
    use super::super::{expf_flavor, mad_f16_ref, scale_f16_ref, swiglu_flavor, ExpFlavor};
    use super::*;

    /// Deterministic values in [-amp, amp), with a few huge, tiny and zero ones mixed in
    /// (f16 overflow, subnormals, signed zeros).
    fn values(n: usize, seed: u32, amp: f32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(2_246_822_519);
                let x = ((h >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * amp;
                match h % 29 {
                    0 => x * 70_000.0,
                    1 => x * 1e-6,
                    2 => -0.0,
                    _ => x,
                }
            })
            .collect()
    }

    fn halves(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    fn bits32(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn bits16(v: &[f16]) -> Vec<u16> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn f16_kernels_match_scalar_bitwise() {
        for n in [0usize, 1, 7, 8, 9, 64, 128, 131] {
            let x = halves(&values(n, 1, 3.0));
            for v in [0.37f32, -1.5, 1.0, 0.0, 3e4] {
                let mut got = halves(&values(n, 2, 2.0));
                let mut want = got.clone();
                mad_f16(&mut got, &x, v);
                mad_f16_ref(&mut want, &x, v);
                assert_eq!(bits16(&got), bits16(&want), "mad n {n} v {v}");
                scale_f16(&mut got, v);
                scale_f16_ref(&mut want, v);
                assert_eq!(bits16(&got), bits16(&want), "scale n {n} v {v}");
            }
            let wide = values(n, 3, 5.0);
            let mut got = vec![f16::ZERO; n];
            f32_to_f16(&wide, &mut got);
            assert_eq!(bits16(&got), bits16(&halves(&wide)), "to f16 n {n}");
            let mut back = vec![0f32; n];
            f16_to_f32(&got, &mut back);
            let want: Vec<f32> = got.iter().map(|h| h.to_f32()).collect();
            assert_eq!(bits32(&back), bits32(&want), "to f32 n {n}");
        }
    }

    /// Every 251st f32 from -0 down to -104 (past the underflow), a stride of bit
    /// patterns that also covers every table index and both sides of the range test,
    /// plus the positive side, infinities and NaN: the C library's bits for each.
    #[test]
    fn libm_expf_is_the_c_librarys() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let mut xs: Vec<f32> = (0x8000_0000u32..=0xc2d0_0000)
            .step_by(251)
            .map(f32::from_bits)
            .collect();
        xs.extend((0u32..=0x42c0_0000).step_by(4999).map(f32::from_bits));
        xs.extend([
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -87.5,
            88.7,
            89.0,
        ]);
        let mut got = xs.clone();
        libm_expf(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            assert!(
                g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                "expf({x:e}) = {want:e}, got {g:e}"
            );
        }
    }

    #[test]
    fn exp_and_silu_match_the_avx2_flavor_bitwise() {
        // Ordinary values, both saturation ends, the masked -inf, and the |n| > 126 band.
        let mut tile = [0f32; 64];
        for (i, s) in tile.iter_mut().enumerate() {
            *s = match i % 8 {
                0 => f32::NEG_INFINITY,
                1 => -100.0 - i as f32,
                2 => -89.5,
                3 => 50.0 + i as f32,
                _ => (i as f32 * 0.37).sin() * 20.0,
            };
        }
        for max in [0.0f32, 12.5, -3.0, 100.0] {
            let mut got = tile;
            let total = exp_and_sum(&mut got, max);
            let mut want = tile.map(|s| expf_flavor(s - max, ExpFlavor::Avx2));
            assert_eq!(bits32(&got), bits32(&want), "exp max {max}");
            let sums: f64 = want
                .chunks_exact_mut(8)
                .map(|b| {
                    let q: [f32; 4] = std::array::from_fn(|i| b[i] + b[i + 4]);
                    ((q[0] + q[2]) + (q[1] + q[3])) as f64
                })
                .sum();
            assert_eq!(total.to_bits(), sums.to_bits(), "sum max {max}");
        }
        // silu(g) * u = g / (1 + expf(0 - g)) * u; swiglu's tail past the last block is libm.
        for n in [0usize, 5, 8, 67] {
            let up = values(n, 4, 3.0);
            let gate = values(n, 5, 40.0);
            let blocks = n - n % 8;
            let want: Vec<f32> = gate
                .iter()
                .zip(&up)
                .enumerate()
                .map(|(i, (&g, &u))| {
                    let flavor = if i < blocks {
                        ExpFlavor::Avx2
                    } else {
                        ExpFlavor::Libm
                    };
                    g / (1.0 + expf_flavor(0.0 - g, flavor)) * u
                })
                .collect();
            let mut got = gate.clone();
            assert_eq!(silu_mul(&mut got, &up), blocks);
            assert_eq!(
                bits32(&got[..blocks]),
                bits32(&want[..blocks]),
                "silu n {n}"
            );
            let mut got = gate.clone();
            swiglu_flavor(&mut got, &up, ExpFlavor::Avx2);
            assert_eq!(bits32(&got), bits32(&want), "swiglu n {n}");
        }
    }

    #[test]
    fn group_scores_match_dot_products() {
        for hd in [32usize, 64, 128] {
            for heads in [1usize, 2, 3, 4] {
                let kv_stride = 3 * hd + 8;
                let len = 37;
                let k = halves(&values(len * kv_stride, 15, 2.0));
                let q16 = halves(&values(heads * hd, 16, 3.0));
                let q: Vec<f32> = q16.iter().map(|h| h.to_f32()).collect();
                let mut got = vec![0f32; heads * len];
                assert!(group_scores(
                    &q,
                    hd,
                    &k[5..],
                    kv_stride,
                    len,
                    0.125,
                    &mut got
                ));
                for g in 0..heads {
                    for j in 0..len {
                        let row = &k[5 + j * kv_stride..][..hd];
                        let want = dot_f16(row, &q16[g * hd..(g + 1) * hd]) * 0.125;
                        assert_eq!(got[g * len + j].to_bits(), want.to_bits(), "hd {hd} g {g}");
                    }
                }
            }
        }
    }

    #[test]
    fn tile_kernels_match_scalar_bitwise() {
        for hd in [8usize, 24, 64, 80, 128] {
            let k_t = values(hd * 64, 6, 1.0);
            for rows in [1usize, 3, 4, 9] {
                let q_stride = hd + 5;
                let q = values(rows * q_stride, 7, 3.0);
                let mut got = vec![0f32; rows * 64];
                let mut want = got.clone();
                tile_scores(&q, q_stride, rows, hd, &k_t, 0.125, &mut got);
                tile_scores_ref(&q, q_stride, rows, hd, &k_t, 0.125, &mut want);
                assert_eq!(bits32(&got), bits32(&want), "scores hd {hd} rows {rows}");
            }
            let v = values(64 * hd, 8, 1.0);
            for keys in [0usize, 1, 17, 64] {
                let (p0, p1) = (values(keys, 9, 1.0), values(keys, 10, 1.0));
                let (mut a0, mut a1) = (values(hd, 11, 2.0), values(hd, 12, 2.0));
                let (mut b0, mut b1) = (a0.clone(), a1.clone());
                assert!(accumulate_v([&mut a0, &mut a1], [&p0, &p1], &v, hd));
                accumulate_v_ref(&mut b0, &p0, &v, hd);
                accumulate_v_ref(&mut b1, &p1, &v, hd);
                assert_eq!(
                    (bits32(&a0), bits32(&a1)),
                    (bits32(&b0), bits32(&b1)),
                    "V pair hd {hd} keys {keys}"
                );
                assert!(accumulate_v([&mut a0], [&p0], &v, hd));
                accumulate_v_ref(&mut b0, &p0, &v, hd);
                assert_eq!(bits32(&a0), bits32(&b0), "V hd {hd} keys {keys}");
            }
            let kv_stride = 2 * hd + 8;
            let cache = halves(&values(70 * kv_stride, 13, 4.0));
            for len in [1usize, 8, 17, 64] {
                let mut k_t = vec![f32::NAN; hd * 64];
                assert!(load_k_transposed(&cache[3..], kv_stride, len, hd, &mut k_t));
                for j in 0..len {
                    for d in 0..hd {
                        let want = cache[3 + j * kv_stride + d].to_f32();
                        assert_eq!(k_t[d * 64 + j].to_bits(), want.to_bits(), "k hd {hd}");
                    }
                }
            }
        }
        let mut tile: [f32; 64] = values(64, 14, 30.0).try_into().unwrap();
        assert_eq!(max(&tile), tile_max_ref(&tile));
        tile[..20].fill(f32::NEG_INFINITY);
        tile[41] = 3e7;
        assert_eq!(max(&tile), 3e7);
        assert_eq!(max(&[f32::NEG_INFINITY; 64]), f32::NEG_INFINITY);
    }
}
