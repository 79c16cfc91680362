//! The AVX-512 tier's kernels (16 lanes) for the attention inner loops over the f16 KV
//! cache. Each one is the vector twin of a scalar reference in `ops` and gives the same
//! bits; `avx2` has their 8-lane twins.

use crate::float16::f16;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// [`super::dot_f16_ref`] with 16 lanes: four `__m512` accumulators over blocks of 64.
#[cfg(target_feature = "avx512f")]
#[inline]
pub(super) fn dot_f16_w16(a: &[f16], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    let blocks_end = n - n % 64;
    let pa = a.as_ptr() as *const __m256i;
    let pb = b.as_ptr() as *const __m256i;
    // SAFETY: every 16-value load starts below blocks_end <= n, inside both slices.
    let lanes = unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut block = 0;
        while block < blocks_end {
            for (j, acc_j) in acc.iter_mut().enumerate() {
                let off = (block + 16 * j) / 16;
                let va = _mm512_cvtph_ps(_mm256_loadu_si256(pa.add(off)));
                let vb = _mm512_cvtph_ps(_mm256_loadu_si256(pb.add(off)));
                *acc_j = _mm512_fmadd_ps(va, vb, *acc_j);
            }
            block += 64;
        }
        let low = _mm512_add_ps(acc[0], acc[2]);
        let high = _mm512_add_ps(acc[1], acc[3]);
        let total = _mm512_add_ps(low, high);
        // Horizontal sum in GCC's `_mm512_reduce_add_ps` tree (see `reduce_lanes_dot`).
        let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(total)));
        let halves = _mm256_add_ps(upper, _mm512_castps512_ps256(total));
        let quarters = _mm_add_ps(
            _mm256_extractf128_ps::<1>(halves),
            _mm256_castps256_ps128(halves),
        );
        let swapped = _mm_shuffle_ps::<0b01_00_11_10>(quarters, quarters);
        let pairs = _mm_add_ps(quarters, swapped);
        _mm_cvtss_f32(pairs) + _mm_cvtss_f32(_mm_shuffle_ps::<1>(pairs, pairs))
    };
    let mut sum = lanes as f64;
    for i in blocks_end..n {
        sum += (a[i].to_f32() * b[i].to_f32()) as f64;
    }
    sum as f32
}

/// `acc[i] = f16(fma(x[i], v, f32(acc[i])))`, 16 at a time (rounding to nearest even).
#[cfg(target_feature = "avx512f")]
#[inline]
pub(super) fn mad_f16(acc: &mut [f16], x: &[f16], v: f32) {
    let n = acc.len().min(x.len());
    let vec_end = n - n % 16;
    let pa = acc.as_mut_ptr() as *mut __m256i;
    let px = x.as_ptr() as *const __m256i;
    // SAFETY: loads and stores of 16 values start below vec_end <= n.
    unsafe {
        let vv = _mm512_set1_ps(v);
        for blk in 0..vec_end / 16 {
            let va = _mm512_cvtph_ps(_mm256_loadu_si256(pa.add(blk)));
            let vx = _mm512_cvtph_ps(_mm256_loadu_si256(px.add(blk)));
            let sum = _mm512_fmadd_ps(vx, vv, va);
            _mm256_storeu_si256(
                pa.add(blk),
                _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(sum),
            );
        }
    }
    for i in vec_end..n {
        acc[i] = f16::from_f32(x[i].to_f32().mul_add(v, acc[i].to_f32()));
    }
}

/// `acc[i] = f16(f32(acc[i]) * v)`, 16 at a time (ggml's `ggml_vec_scale_f16`).
#[cfg(target_feature = "avx512f")]
#[inline]
pub(super) fn scale_f16(acc: &mut [f16], v: f32) {
    let n = acc.len();
    let vec_end = n - n % 16;
    let pa = acc.as_mut_ptr() as *mut __m256i;
    // SAFETY: loads and stores of 16 values start below vec_end <= n.
    unsafe {
        let vv = _mm512_set1_ps(v);
        for blk in 0..vec_end / 16 {
            let prod = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(pa.add(blk))), vv);
            _mm256_storeu_si256(
                pa.add(blk),
                _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(prod),
            );
        }
    }
    for a in acc[vec_end..].iter_mut() {
        *a = f16::from_f32(a.to_f32() * v);
    }
}

/// f32 -> f16 rounding to nearest even, 16 at a time.
#[cfg(target_feature = "avx512f")]
#[inline]
pub(super) fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    let n = src.len().min(dst.len());
    let vec_end = n - n % 16;
    // SAFETY: loads and stores of 16 values start below vec_end <= n.
    unsafe {
        for blk in 0..vec_end / 16 {
            let v = _mm512_loadu_ps(src.as_ptr().add(16 * blk));
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_si256((dst.as_mut_ptr() as *mut __m256i).add(blk), h);
        }
    }
    for i in vec_end..n {
        dst[i] = f16::from_f32(src[i]);
    }
}

/// f16 -> f32, 16 at a time (exact).
#[cfg(target_feature = "avx512f")]
#[inline]
pub(super) fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let vec_end = n - n % 16;
    // SAFETY: loads and stores of 16 values start below vec_end <= n.
    unsafe {
        for blk in 0..vec_end / 16 {
            let h = _mm256_loadu_si256((src.as_ptr() as *const __m256i).add(blk));
            _mm512_storeu_ps(dst.as_mut_ptr().add(16 * blk), _mm512_cvtph_ps(h));
        }
    }
    for i in vec_end..n {
        dst[i] = src[i].to_f32();
    }
}

/// Horizontal sum of 16 lanes in GCC's `_mm512_reduce_add_ps` tree: halves, quarters,
/// then `(t0 + t2) + (t1 + t3)`.
#[cfg(target_feature = "avx512f")]
#[inline(always)]
unsafe fn reduce_add_w16(v: __m512) -> f32 {
    let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let halves = _mm256_add_ps(upper, _mm512_castps512_ps256(v));
    let quarters = _mm_add_ps(
        _mm256_extractf128_ps::<1>(halves),
        _mm256_castps256_ps128(halves),
    );
    let swapped = _mm_shuffle_ps::<0b01_00_11_10>(quarters, quarters);
    let pairs = _mm_add_ps(quarters, swapped);
    _mm_cvtss_f32(pairs) + _mm_cvtss_f32(_mm_shuffle_ps::<1>(pairs, pairs))
}

/// 16 lanes of [`super::expf_flavor`] with [`super::ExpFlavor::Avx512`]: the same
/// reduction, polynomial and `scalef`, lane for lane.
#[cfg(all(target_feature = "avx512f", target_feature = "avx512dq"))]
#[inline(always)]
unsafe fn expf_w16(x: __m512) -> __m512 {
    let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
    let shifter = c(0x4b40_0000);
    let z = _mm512_fmadd_ps(x, c(0x3fb8_aa3b), shifter);
    let n = _mm512_sub_ps(z, shifter);
    let b = _mm512_fnmadd_ps(n, c(0x35bf_be8e), _mm512_fnmadd_ps(n, c(0x3f31_7200), x));
    let u = _mm512_mul_ps(b, b);
    let high = _mm512_fmadd_ps(
        _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
        u,
        _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
    );
    let j = _mm512_fmadd_ps(
        high,
        u,
        _mm512_fmadd_ps(c(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
    );
    let scaled = _mm512_scalef_ps(j, n);
    // |n| > 192: 0 below, infinity above (NaN inputs stay NaN through `scaled`).
    let huge = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(n, _mm512_setzero_ps());
    let saturated = _mm512_maskz_mov_ps(positive, _mm512_set1_ps(f32::INFINITY));
    _mm512_mask_blend_ps(huge, scaled, saturated)
}

/// `s = expf(s - max)` over one 64-key tile in four 16-lane blocks, returning the f64
/// total of the block sums (each block reduced like `_mm512_reduce_add_ps`).
#[cfg(all(target_feature = "avx512f", target_feature = "avx512dq"))]
#[inline]
pub(super) fn exp_and_sum_w16(scores: &mut [f32; 64], max: f32) -> f64 {
    let mut total = 0f64;
    // SAFETY: four 16-lane loads and stores inside the 64-value array.
    unsafe {
        let vmax = _mm512_set1_ps(max);
        for blk in 0..4 {
            let p = scores.as_mut_ptr().add(16 * blk);
            let e = expf_w16(_mm512_sub_ps(_mm512_loadu_ps(p), vmax));
            _mm512_storeu_ps(p, e);
            total += reduce_add_w16(e) as f64;
        }
    }
    total
}

/// Scores of `R` query rows against one transposed 64-key tile (`k_t[d * 64 + j]`):
/// `out[r * 64 + j] = fl(fma-chain_d(q_r[d] * k_t[d][j])) * scale`, each chain
/// sequential in `d` from 0, so every value equals the scalar `tile_scores`.
///
/// # Safety
/// `q` holds `R` rows of `hd` values `q_stride` apart; `k_t` holds `hd * 64` values and
/// `out` `R * 64`.
#[cfg(target_feature = "avx512f")]
#[inline(always)]
unsafe fn scores_rows<const R: usize>(
    q: *const f32,
    q_stride: usize,
    hd: usize,
    k_t: *const f32,
    scale: f32,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for d in 0..hd {
        let keys: [__m512; 4] = std::array::from_fn(|c| _mm512_loadu_ps(k_t.add(d * 64 + 16 * c)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let qd = _mm512_set1_ps(*q.add(r * q_stride + d));
            for (a, &k) in acc_r.iter_mut().zip(&keys) {
                *a = _mm512_fmadd_ps(qd, k, *a);
            }
        }
    }
    let scale = _mm512_set1_ps(scale);
    for (r, acc_r) in acc.iter().enumerate() {
        for (c, &a) in acc_r.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * 64 + 16 * c), _mm512_mul_ps(a, scale));
        }
    }
}

/// Scores of `rows` query rows (`q[r * q_stride ..][..hd]`) against a 64-key tile, four
/// rows at a time so each K load serves four rows; `out` is `rows x 64`.
#[cfg(target_feature = "avx512f")]
pub(super) fn tile_scores_w16(
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
        while r + 4 <= rows {
            scores_rows::<4>(
                q.as_ptr().add(r * q_stride),
                q_stride,
                hd,
                k_t.as_ptr(),
                scale,
                out.as_mut_ptr().add(r * 64),
            );
            r += 4;
        }
        while r < rows {
            scores_rows::<1>(
                q.as_ptr().add(r * q_stride),
                q_stride,
                hd,
                k_t.as_ptr(),
                scale,
                out.as_mut_ptr().add(r * 64),
            );
            r += 1;
        }
    }
}

/// `N` vectors (16 N values) of the running output kept in registers while every
/// visible key is added: `o[d] = fma(p_j, v_j[d], o[d])` in key order.
///
/// # Safety
/// `o` holds `16 N` values; `v` holds `p.len()` rows of at least `16 N` values `hd` apart.
#[cfg(target_feature = "avx512f")]
#[inline(always)]
unsafe fn accumulate_v_cols<const N: usize>(o: *mut f32, p: &[f32], v: *const f32, hd: usize) {
    let mut acc: [__m512; N] = std::array::from_fn(|c| _mm512_loadu_ps(o.add(16 * c)));
    for (j, &pj) in p.iter().enumerate() {
        let w = _mm512_set1_ps(pj);
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(v.add(j * hd + 16 * c)), *a);
        }
    }
    for (c, &a) in acc.iter().enumerate() {
        _mm512_storeu_ps(o.add(16 * c), a);
    }
}

/// [`accumulate_v_cols`] for two rows over the same keys: each V load serves both.
///
/// # Safety
/// As [`accumulate_v_cols`], for `o0`, `o1` and `p0.len() == p1.len()` keys.
#[cfg(target_feature = "avx512f")]
#[inline(always)]
unsafe fn accumulate_v2_cols<const N: usize>(
    o: [*mut f32; 2],
    p: [&[f32]; 2],
    v: *const f32,
    hd: usize,
) {
    let mut acc: [[__m512; N]; 2] =
        o.map(|o| std::array::from_fn(|c| _mm512_loadu_ps(o.add(16 * c))));
    for (j, (&p0, &p1)) in p[0].iter().zip(p[1]).enumerate() {
        let (w0, w1) = (_mm512_set1_ps(p0), _mm512_set1_ps(p1));
        let [acc0, acc1] = &mut acc;
        for (c, (a0, a1)) in acc0.iter_mut().zip(acc1.iter_mut()).enumerate() {
            let vj = _mm512_loadu_ps(v.add(j * hd + 16 * c));
            *a0 = _mm512_fmadd_ps(w0, vj, *a0);
            *a1 = _mm512_fmadd_ps(w1, vj, *a1);
        }
    }
    for (o, acc) in o.iter().zip(&acc) {
        for (c, &a) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.add(16 * c), a);
        }
    }
}

/// [`accumulate_v_w16`] for two rows over the same keys (`p[0].len() == p[1].len()`), in
/// register blocks of up to 128 values per row. Returns false (and does nothing) where
/// `accumulate_v_w16` would.
#[cfg(target_feature = "avx512f")]
pub(super) fn accumulate_v2_w16(o: [&mut [f32]; 2], p: [&[f32]; 2], v: &[f32], hd: usize) -> bool {
    let n = p[0].len();
    if !hd.is_multiple_of(16) || o.iter().any(|o| o.len() != hd) || p[1].len() != n {
        return false;
    }
    if v.len() < n * hd {
        return false;
    }
    let [o0, o1] = o;
    let mut col = 0;
    // SAFETY: each block covers columns col..col + 16 N <= hd of both rows and of every
    // v row (n rows, checked).
    unsafe {
        while col < hd {
            let at = [o0.as_mut_ptr().add(col), o1.as_mut_ptr().add(col)];
            let v_at = v.as_ptr().add(col);
            col += match (hd - col) / 16 {
                n if n >= 8 => {
                    accumulate_v2_cols::<8>(at, p, v_at, hd);
                    128
                }
                n if n >= 4 => {
                    accumulate_v2_cols::<4>(at, p, v_at, hd);
                    64
                }
                n if n >= 2 => {
                    accumulate_v2_cols::<2>(at, p, v_at, hd);
                    32
                }
                _ => {
                    accumulate_v2_cols::<1>(at, p, v_at, hd);
                    16
                }
            };
        }
    }
    true
}

/// `o += sum_j p_j * v_j` as sequential fused steps per value (see
/// `tiled::accumulate_v`), for `hd` a multiple of 16; columns in register blocks of up
/// to 128 values. Returns false (and does nothing) for other head sizes.
#[cfg(target_feature = "avx512f")]
pub(super) fn accumulate_v_w16(o: &mut [f32], p: &[f32], v: &[f32], hd: usize) -> bool {
    if !hd.is_multiple_of(16) || o.len() != hd || v.len() < p.len() * hd {
        return false;
    }
    let mut col = 0;
    // SAFETY: each block covers columns col..col + 16 N <= hd of o and of every v row.
    unsafe {
        while col < hd {
            let (o_at, v_at) = (o.as_mut_ptr().add(col), v.as_ptr().add(col));
            col += match (hd - col) / 16 {
                n if n >= 8 => {
                    accumulate_v_cols::<8>(o_at, p, v_at, hd);
                    128
                }
                n if n >= 4 => {
                    accumulate_v_cols::<4>(o_at, p, v_at, hd);
                    64
                }
                n if n >= 2 => {
                    accumulate_v_cols::<2>(o_at, p, v_at, hd);
                    32
                }
                _ => {
                    accumulate_v_cols::<1>(o_at, p, v_at, hd);
                    16
                }
            };
        }
    }
    true
}

/// A 16 × 16 block of f32 transposed in registers: `out[c]` lane `i` is `rows[i]` lane
/// `c` (pairs of values, then of pairs, then the 128-bit lanes twice).
#[cfg(target_feature = "avx512f")]
#[inline(always)]
unsafe fn transpose_16x16(rows: [__m512; 16]) -> [__m512; 16] {
    // t[2k], t[2k+1]: rows 2k and 2k+1 interleaved by value
    let mut t = [_mm512_setzero_ps(); 16];
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_ps(rows[2 * k], rows[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(rows[2 * k], rows[2 * k + 1]);
    }
    // u[4m + c]: column c + 4L of rows 4m..4m+4 in 128-bit lane L
    let pd = _mm512_castps_pd;
    let mut u = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        let (a, b, c, d) = (t[4 * m], t[4 * m + 1], t[4 * m + 2], t[4 * m + 3]);
        u[4 * m] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
        u[4 * m + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
        u[4 * m + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
        u[4 * m + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        // lanes 0, 2 (even) and 1, 3 (odd) of the row groups 0-1 and 2-3
        let even_lo = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let odd_lo = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
        let even_hi = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let odd_hi = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi);
        out[c + 8] = _mm512_shuffle_f32x4::<0xdd>(even_lo, even_hi);
        out[c + 4] = _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi);
        out[c + 12] = _mm512_shuffle_f32x4::<0xdd>(odd_lo, odd_hi);
    }
    out
}

/// `k_t[d * 64 + j] = f32(k[j][d])` for the `len` keys of a tile (key `j` at
/// `k_cache[j * kv_stride..][..hd]`), 16 keys × 16 values per register transpose; key
/// columns from `len` up to the next multiple of 16 get zeros. Returns false (and
/// does nothing) unless `hd` is a multiple of 16.
#[cfg(target_feature = "avx512f")]
pub(super) fn load_k_transposed_w16(
    k_cache: &[f16],
    kv_stride: usize,
    len: usize,
    hd: usize,
    k_t: &mut [f32],
) -> bool {
    if !hd.is_multiple_of(16) {
        return false;
    }
    assert!(len <= 64 && k_t.len() >= hd * 64);
    assert!(len == 0 || k_cache.len() >= (len - 1) * kv_stride + hd);
    for j0 in (0..len).step_by(16) {
        for d0 in (0..hd).step_by(16) {
            // SAFETY: key j0 + i < len starts at (j0 + i) * kv_stride and has hd values
            // (asserted); the stores write k_t[(d0 + c) * 64 + j0..][..16] with
            // d0 + c < hd and j0 + 16 <= 64.
            unsafe {
                let rows: [__m512; 16] = std::array::from_fn(|i| {
                    if j0 + i < len {
                        let p = k_cache.as_ptr().add((j0 + i) * kv_stride + d0);
                        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for (c, col) in transpose_16x16(rows).into_iter().enumerate() {
                    _mm512_storeu_ps(k_t.as_mut_ptr().add((d0 + c) * 64 + j0), col);
                }
            }
        }
    }
    true
}

/// The largest of 64 NaN-free scores (lane-wise maxima, then a tree). `MAX` over
/// NaN-free values is the same in any order up to the sign of a zero maximum, which no
/// later step can see (`s - max` and `expf(m - max)` are the same for ±0).
#[cfg(target_feature = "avx512f")]
pub(super) fn max_w16(scores: &[f32; 64]) -> f32 {
    // SAFETY: four 16-lane loads inside the 64-value array.
    unsafe {
        let p = scores.as_ptr();
        let m = _mm512_max_ps(
            _mm512_max_ps(_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))),
            _mm512_max_ps(_mm512_loadu_ps(p.add(32)), _mm512_loadu_ps(p.add(48))),
        );
        _mm512_reduce_max_ps(m)
    }
}

/// ggml's four accumulators of one dot product (`H` of them: one K row against `H`
/// widened queries `q[h * hd..]`, `hd` a multiple of 64), added lane-wise as
/// [`dot_f16_w16`] does first: `(a0 + a2) + (a1 + a3)`. The K row is widened once.
///
/// # Safety
/// `k` holds `hd` values and `q` `H * hd`.
#[inline(always)]
unsafe fn dot_lanes_w16<const H: usize>(k: *const f16, q: *const f32, hd: usize) -> [__m512; H] {
    let mut acc = [[_mm512_setzero_ps(); 4]; H];
    for b in (0..hd).step_by(64) {
        let kv: [__m512; 4] =
            std::array::from_fn(|i| _mm512_cvtph_ps(_mm256_loadu_si256(k.add(b + 16 * i).cast())));
        for (h, acc_h) in acc.iter_mut().enumerate() {
            for (i, a) in acc_h.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(kv[i], _mm512_loadu_ps(q.add(h * hd + b + 16 * i)), *a);
            }
        }
    }
    acc.map(|a| _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3])))
}

/// [`reduce_add_w16`] for sixteen dot products at once (`t[k]`: key `k`'s lane-wise
/// sums): every key's tree is the same additions of the same values (halves, quarters,
/// `(t0 + t2) + (t1 + t3)`), done for two to sixteen keys per instruction. Returns the
/// sixteen sums in key order.
#[inline(always)]
unsafe fn reduce_16keys(t: &[__m512; 16]) -> __m512 {
    // halves: [key 2i | key 2i + 1], 8 values each
    let h: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (t[2 * i], t[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xee>(a, b),
        )
    });
    // quarters: keys 4m..4m + 4, one per 128-bit lane
    let q: [__m512; 4] = std::array::from_fn(|m| {
        let (x, y) = (h[2 * m], h[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xdd>(x, y),
        )
    });
    // pairs [t0 + t2, t1 + t3]: lane l of p[n] holds keys 8n + l and 8n + 4 + l
    let p: [__m512; 2] = std::array::from_fn(|n| {
        let (x, y) = (q[2 * n], q[2 * n + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(x, y),
            _mm512_shuffle_ps::<0xee>(x, y),
        )
    });
    // sums: lane l holds keys l, 4 + l, 8 + l, 12 + l
    let sums = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(p[0], p[1]),
        _mm512_shuffle_ps::<0xdd>(p[0], p[1]),
    );
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(order, sums)
}

/// `super::group_scores` for `hd` a multiple of 64: each K row is widened once per four
/// heads, and the horizontal sums of sixteen keys share their instructions
/// ([`reduce_16keys`]); every score is [`dot_f16_w16`]'s, bit for bit. Returns false
/// (and does nothing) otherwise.
pub(super) fn group_scores(
    q: &[f32],
    hd: usize,
    k: &[f16],
    kv_stride: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
) -> bool {
    if !hd.is_multiple_of(64) || q.is_empty() || !q.len().is_multiple_of(hd) {
        return false;
    }
    let heads = q.len() / hd;
    assert!(len == 0 || k.len() >= (len - 1) * kv_stride + hd);
    assert!(scores.len() >= heads * len);
    let (q, out) = (q.as_ptr(), scores.as_mut_ptr());
    // SAFETY: key j < len's row is k[j * kv_stride..][..hd] (asserted); head g < heads
    // has its query at q[g * hd..][..hd] and its scores at scores[g * len..][..len].
    unsafe {
        let vscale = _mm512_set1_ps(scale);
        let mut j = 0;
        while j + 16 <= len {
            let row = |kk: usize| k.as_ptr().add((j + kk) * kv_stride);
            // ask for the next block while this one computes
            if j + 32 <= len {
                for kk in 16..32 {
                    super::prefetch_row::<_MM_HINT_T0>(row(kk), hd);
                }
            }
            let mut g = 0;
            while g < heads {
                macro_rules! heads_at_once {
                    ($n:literal) => {{
                        let lanes: [[__m512; $n]; 16] = std::array::from_fn(|kk| {
                            dot_lanes_w16::<$n>(row(kk), q.add(g * hd), hd)
                        });
                        for h in 0..$n {
                            let t: [__m512; 16] = std::array::from_fn(|kk| lanes[kk][h]);
                            let sums = _mm512_mul_ps(reduce_16keys(&t), vscale);
                            _mm512_storeu_ps(out.add((g + h) * len + j), sums);
                        }
                        g += $n;
                    }};
                }
                match heads - g {
                    1 => heads_at_once!(1),
                    2 => heads_at_once!(2),
                    3 => heads_at_once!(3),
                    _ => heads_at_once!(4),
                }
            }
            j += 16;
        }
        for j in j..len {
            let row = k.as_ptr().add(j * kv_stride);
            for g in 0..heads {
                let [t] = dot_lanes_w16::<1>(row, q.add(g * hd), hd);
                *out.add(g * len + j) = reduce_add_w16(t) * scale;
            }
        }
    }
    true
}

/// f32 rounded to f16 and back: the value an f16 store and load would give.
#[inline(always)]
unsafe fn round_f16_w16(x: __m512) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// Columns `0..32` (two vectors) of `G` heads' running outputs over `len` keys, kept in
/// registers as f32 values that are exactly f16, each V vector widened once for the `G`
/// heads (the 16-lane `avx2::v_cols_w8`).
///
/// # Safety
/// Head `g`'s output is `acc[g * hd..][..32]`, its weights and rescales
/// `w[g * w_stride..][..len]` and `r[..]` likewise; key `j`'s V columns are
/// `v[j * kv_stride..][..32]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn v_cols_w16<const G: usize>(
    w: *const f32,
    r: *const f32,
    w_stride: usize,
    len: usize,
    v: *const f16,
    kv_stride: usize,
    acc: *mut f16,
    hd: usize,
) {
    let mut a: [[__m512; 2]; G] = std::array::from_fn(|g| {
        std::array::from_fn(|c| {
            _mm512_cvtph_ps(_mm256_loadu_si256(acc.add(g * hd + 16 * c).cast()))
        })
    });
    for j in 0..len {
        let row = v.add(j * kv_stride);
        let x = [
            _mm512_cvtph_ps(_mm256_loadu_si256(row.cast())),
            _mm512_cvtph_ps(_mm256_loadu_si256(row.add(16).cast())),
        ];
        for (g, a_g) in a.iter_mut().enumerate() {
            let rescale = *r.add(g * w_stride + j);
            if rescale != 1.0 {
                let m = _mm512_set1_ps(rescale);
                *a_g = a_g.map(|a| round_f16_w16(_mm512_mul_ps(a, m)));
            }
            let weight = _mm512_set1_ps(*w.add(g * w_stride + j));
            for (a, &x) in a_g.iter_mut().zip(&x) {
                *a = round_f16_w16(_mm512_fmadd_ps(x, weight, *a));
            }
        }
    }
    for (g, a_g) in a.iter().enumerate() {
        for (c, &a) in a_g.iter().enumerate() {
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a);
            _mm256_storeu_si256(acc.add(g * hd + 16 * c).cast(), h);
        }
    }
}

/// `super::group_accumulate_v` for `hd` a multiple of 32 (the 16-lane
/// `avx2::group_accumulate_v`). Returns false (and does nothing) for other head sizes.
pub(super) fn group_accumulate_v(
    weights: &[f32],
    rescales: &[f32],
    v: &[f16],
    kv_stride: usize,
    len: usize,
    hd: usize,
    acc: &mut [f16],
) -> bool {
    if !hd.is_multiple_of(32) || len == 0 {
        return false;
    }
    let heads = weights.len() / len;
    assert!(rescales.len() >= heads * len && acc.len() >= heads * hd);
    assert!(v.len() >= (len - 1) * kv_stride + hd);
    for j0 in (0..len).step_by(super::V_TILE) {
        let n = super::V_TILE.min(len - j0);
        // the next tile's rows arrive while this one computes
        for j in j0 + super::V_TILE..(j0 + 2 * super::V_TILE).min(len) {
            // SAFETY: only an address inside the slice (j < len) is computed.
            super::prefetch_row::<_MM_HINT_T0>(unsafe { v.as_ptr().add(j * kv_stride) }, hd);
        }
        for g0 in (0..heads).step_by(4) {
            for col in (0..hd).step_by(32) {
                // SAFETY: heads g0.. < heads, keys j0..j0 + n <= len and columns
                // col..col + 32 <= hd, all inside the slices (asserted above).
                unsafe {
                    let w = weights.as_ptr().add(g0 * len + j0);
                    let r = rescales.as_ptr().add(g0 * len + j0);
                    let vv = v.as_ptr().add(j0 * kv_stride + col);
                    let a = acc.as_mut_ptr().add(g0 * hd + col);
                    match heads - g0 {
                        1 => v_cols_w16::<1>(w, r, len, n, vv, kv_stride, a, hd),
                        2 => v_cols_w16::<2>(w, r, len, n, vv, kv_stride, a, hd),
                        3 => v_cols_w16::<3>(w, r, len, n, vv, kv_stride, a, hd),
                        _ => v_cols_w16::<4>(w, r, len, n, vv, kv_stride, a, hd),
                    }
                }
            }
        }
    }
    true
}
