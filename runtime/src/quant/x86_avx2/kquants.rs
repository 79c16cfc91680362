//! AVX2 + FMA kernels for the K-quant family: the Q8_K activation quantizer and the
//! `vec_dot_*_q8_k` dot products of Q2_K..Q6_K rows with Q8_K activations.
//!
//! Every dot product keeps a super-block in integers: the quants are unpacked to unsigned
//! bytes, multiplied with the Q8_K quants by `maddubs` (u8 × i8, pairs summed to i16; the
//! largest pair, 2·63·127 for Q6_K, cannot saturate), weighted with the sub-block scales
//! by `madd` (i16 × i16 → i32) and summed in 8 i32 lanes. Offsets and minimums come in
//! through the Q8_K `bsums`. The integer sums are exact, so only the f32 scaling can
//! differ between implementations, and it follows what llama.cpp's CPU backend does on
//! the same CPU, so that logits agree bit for bit:
//!
//! - **block totals** (Q4_K; Q2_K when the CPU has AVX-512): the 8 lanes are summed to
//!   one integer per super-block, scaled by `d_w d_a` with one scalar FMA into a running
//!   sum, the minimum terms likewise into a second one, and the row's result is their
//!   difference. llama.cpp multiplies these types with its 8-row repacked kernels on such
//!   CPUs, which compute exactly this per row.
//! - **8 lanes** (Q3_K, Q5_K, Q6_K; Q2_K without AVX-512): each super-block's 8 i32
//!   lanes are scaled by one FMA into 8 f32 lanes, which are summed once at the end
//!   (halves, pairs, last two), as ggml's AVX2 `vec_dot` kernels do. The lane of a product
//!   is fixed by its byte position in the 32-byte vector, so the unpacking below keeps
//!   the same vector layouts.
//!
//! The public functions are safe: this module is only compiled when the build enables
//! AVX2 and FMA (`cfg(target_feature)`), so the `#[target_feature]` workers they call
//! run on a CPU that has them.

use std::arch::x86_64::*;

use crate::quant::q8_k::{q8k_scales, quantize_block_ref, BlockQ8K, QK_K};

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

/// The two 128-bit halves of 8 i32 lanes, added: 4 lanes with the same total.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn fold_i32x8(v: __m256i) -> __m128i {
    _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v))
}

/// The lane totals of two 4-lane integer sums, as f32 (exact below 2^24, and the integer
/// sums of a super-block are): one reduction for the scaled sum and the minimum sum of
/// the "block totals" scheme.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn two_totals(sums: __m128i, mins: __m128i) -> (f32, f32) {
    let pairs = _mm_hadd_epi32(sums, mins);
    let totals = _mm_cvtepi32_ps(_mm_hadd_epi32(pairs, pairs));
    (
        _mm_cvtss_f32(totals),
        _mm_cvtss_f32(_mm_movehdup_ps(totals)),
    )
}

/// Sum of the 4 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_i32x4(v: __m128i) -> i32 {
    let s2 = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<0b01>(s2)))
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

    // Largest magnitude. A block with a NaN or an infinity (a numerical blow-up
    // upstream) goes to the scalar reference, so both paths give the same blocks for any
    // input; NaNs are noted on the way, infinities show in the maximum.
    let mut vmax = _mm256_setzero_ps();
    let mut nan = _mm256_setzero_ps();
    for i in 0..QK_K / 8 {
        let v = load(i);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, abs_mask));
    }
    let m4 = _mm_max_ps(
        _mm256_castps256_ps128(vmax),
        _mm256_extractf128_ps::<1>(vmax),
    );
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    if _mm256_movemask_ps(nan) != 0 || amax == f32::INFINITY {
        *out = quantize_block_ref(x);
        return;
    }
    if amax == 0.0 {
        *out = BlockQ8K::default();
        return;
    }
    // The sign comes from the first value of that magnitude (one exists: no NaNs).
    let vamax = _mm256_set1_ps(amax);
    let Some(first) = (0..QK_K / 8).find_map(|i| {
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
            _mm256_and_ps(load(i), abs_mask),
            vamax,
        ));
        (hit != 0).then(|| 8 * i + hit.trailing_zeros() as usize)
    }) else {
        *out = quantize_block_ref(x);
        return;
    };
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

/// `acc + d * sumi` in 8 lanes: the per-super-block scaling of the "8 lanes" scheme.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn scale_acc(acc: __m256, d: f32, sumi: __m256i) -> __m256 {
    _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc)
}

/// `Σ scale * (q · a)` over 32 weights: 32 unsigned quants `q` times 32 activations `a`,
/// pair sums in i16 weighted by the i16 lanes of `scale`, in 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn scaled_dot32(q: __m256i, a: __m256i, scale: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scale)
}

/// `acc + scaled_dot32(q, a, scale)`: with AVX512-VNNI the `madd` and the add are one
/// `vpdpwssd`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn scaled_dot32_acc(acc: __m256i, q: __m256i, a: __m256i, scale: __m256i) -> __m256i {
    super::vnni::dpwssd(acc, _mm256_maddubs_epi16(q, a), scale)
}

// ---------------------------------------------------------------------------------------
// Q4_K
// ---------------------------------------------------------------------------------------

use crate::quant::q4_k::{unpack_scales_mins, BlockQ4K};

/// The minimum terms of a Q4_K / Q5_K block in 4 i32 lanes: lane `k` is
/// `m[2k] S[2k] + m[2k + 1] S[2k + 1]`, where `S[j] = bsums[2j] + bsums[2j + 1]` is the
/// activation sum of sub-block `j` (at most 32 * 127, so the pair sums fit in i16).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn min_products(m: &[u8; 8], bsums: &[i16; 16]) -> __m128i {
    // SAFETY: 16 i16 are 32 readable bytes; 8 u8 are 8 readable bytes.
    let (sums, mins) = unsafe {
        (
            _mm256_loadu_si256(bsums.as_ptr().cast()),
            _mm_loadl_epi64(m.as_ptr().cast()),
        )
    };
    let sub_sums = _mm_hadd_epi16(
        _mm256_castsi256_si128(sums),
        _mm256_extracti128_si256::<1>(sums),
    );
    _mm_madd_epi16(_mm_cvtepu8_epi16(mins), sub_sums)
}

/// Byte shuffles that spread i16 lane `j` (of 8, present in both 128-bit lanes) over all
/// 16 i16 lanes.
static SPREAD_I16: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut j = 0;
    while j < 8 {
        let mut i = 0;
        while i < 32 {
            t[j][i] = (2 * j + i % 2) as u8;
            i += 1;
        }
        j += 1;
    }
    t
};

/// Q4_K row · Q8_K activations; block totals, bit for bit
/// [`crate::quant::q4_k::vec_dot_q4_k_q8_k_ref`].
pub fn vec_dot_q4_k_q8_k(row: &[BlockQ4K], act: &[BlockQ8K]) -> f32 {
    assert_eq!(
        row.len(),
        act.len(),
        "Q4_K dot: {} weight blocks, {} activation blocks",
        row.len(),
        act.len()
    );
    // SAFETY: this module is compiled only with AVX2 and FMA enabled.
    unsafe { dot_q4_k(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_q4_k(row: &[BlockQ4K], act: &[BlockQ8K]) -> f32 {
    let low4 = _mm256_set1_epi8(0x0f);
    let spread = SPREAD_I16.map(|s| load32(&s));
    // block totals: see the module doc
    let (mut sum, mut min_sum) = (0f32, 0f32);
    for (b, a) in row.iter().zip(act) {
        let (sc, m) = unpack_scales_mins(&b.scales);
        let d = b.d.to_f32() * a.d;
        let dmin = b.dmin.to_f32() * a.d;

        // the 8 scales as i16 in both lanes; `spread[j]` broadcasts scale j
        let sc8 = _mm_cvtsi64_si128(i64::from_le_bytes(sc));
        let scales16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc8));
        let (mut sum_lo, mut sum_hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for c in 0..4 {
            let bits = load32(at32(&b.qs, 32 * c));
            let q_lo = _mm256_and_si256(bits, low4);
            let q_hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
            let a_lo = load32(at32(&a.qs, 64 * c));
            let a_hi = load32(at32(&a.qs, 64 * c + 32));
            let s_lo = _mm256_shuffle_epi8(scales16, spread[2 * c]);
            let s_hi = _mm256_shuffle_epi8(scales16, spread[2 * c + 1]);
            sum_lo = scaled_dot32_acc(sum_lo, q_lo, a_lo, s_lo);
            sum_hi = scaled_dot32_acc(sum_hi, q_hi, a_hi, s_hi);
        }
        let (isum, imin) = two_totals(
            fold_i32x8(_mm256_add_epi32(sum_lo, sum_hi)),
            min_products(&m, &a.bsums),
        );
        sum = isum.mul_add(d, sum);
        min_sum = imin.mul_add(dmin, min_sum);
    }
    sum - min_sum
}

// ---------------------------------------------------------------------------------------
// Q6_K
// ---------------------------------------------------------------------------------------

use crate::quant::q6_k::BlockQ6K;

/// Byte shuffle that spreads i16 scale `2k` over the low 128-bit lane and `2k + 1` over
/// the high lane (indices are within each lane, as `vpshufb` works; the scales must be
/// present in both lanes).
const fn scale_pair_shuffle(k: usize) -> [u8; 32] {
    let mut s = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let scale = 2 * k + i / 16;
        s[i] = (2 * scale + i % 2) as u8;
        i += 1;
    }
    s
}

static SCALE_PAIR_SHUFFLES: [[u8; 32]; 4] = [
    scale_pair_shuffle(0),
    scale_pair_shuffle(1),
    scale_pair_shuffle(2),
    scale_pair_shuffle(3),
];

/// The i16 scales `8h..8h + 8` of 16 (`scales16`, one per 16 weights) in both lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn half_scales(scales16: __m256i, h: usize) -> __m256i {
    if h == 0 {
        _mm256_permute2x128_si256::<0x00>(scales16, scales16)
    } else {
        _mm256_permute2x128_si256::<0x11>(scales16, scales16)
    }
}

/// Q6_K row · Q8_K activations; 8 lanes.
pub fn vec_dot_q6_k_q8_k(row: &[BlockQ6K], act: &[BlockQ8K]) -> f32 {
    assert_eq!(
        row.len(),
        act.len(),
        "Q6_K dot: {} weight blocks, {} activation blocks",
        row.len(),
        act.len()
    );
    // SAFETY: this module is compiled only with AVX2 and FMA enabled.
    unsafe { dot_q6_k(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_q6_k(row: &[BlockQ6K], act: &[BlockQ8K]) -> f32 {
    let low4 = _mm256_set1_epi8(0x0f);
    let two = _mm256_set1_epi8(0x03);
    let shuffles = SCALE_PAIR_SHUFFLES.map(|s| load32(&s));
    let mut acc = _mm256_setzero_ps();
    for (b, a) in row.iter().zip(act) {
        let d = a.d * b.d.to_f32();
        // 16 scales as i16; the offset 32 comes off as 32 * Σ scale[g] * bsums[g].
        let scales16 = _mm256_cvtepi8_epi16(load16(&b.scales));
        // SAFETY: 16 i16 are 32 readable bytes.
        let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
        let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(scales16, bsums));

        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let half_scales = half_scales(scales16, h);
            let ql0 = load32(at32(&b.ql, 64 * h));
            let ql1 = load32(at32(&b.ql, 64 * h + 32));
            let qh = load32(at32(&b.qh, 32 * h));
            let quants = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, low4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh, two)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, low4),
                    _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0c))),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4),
                    _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(qh), _mm256_set1_epi8(0x30)),
                ),
            ];
            for (k, &q) in quants.iter().enumerate() {
                let av = load32(at32(&a.qs, 128 * h + 32 * k));
                let scale = _mm256_shuffle_epi8(half_scales, shuffles[k]);
                sumi = scaled_dot32_acc(sumi, q, av, scale);
            }
        }
        acc = scale_acc(acc, d, _mm256_sub_epi32(sumi, offset));
    }
    hsum_f32x8(acc)
}

// ---------------------------------------------------------------------------------------
// Q5_K
// ---------------------------------------------------------------------------------------

use crate::quant::q5_k::BlockQ5K;

/// Q5_K row · Q8_K activations; 8 lanes, with the minimum terms in one scalar sum.
pub fn vec_dot_q5_k_q8_k(row: &[BlockQ5K], act: &[BlockQ8K]) -> f32 {
    assert_eq!(
        row.len(),
        act.len(),
        "Q5_K dot: {} weight blocks, {} activation blocks",
        row.len(),
        act.len()
    );
    // SAFETY: this module is compiled only with AVX2 and FMA enabled.
    unsafe { dot_q5_k(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_q5_k(row: &[BlockQ5K], act: &[BlockQ8K]) -> f32 {
    let low4 = _mm256_set1_epi8(0x0f);
    let bit4 = _mm256_set1_epi8(0x10);
    let spread = SPREAD_I16.map(|s| load32(&s));
    // 8 lanes for the scaled sums; the minimum terms go into one scalar sum, one FMA per
    // block, which is added at the end.
    let mut acc = _mm256_setzero_ps();
    let mut min_sum = 0f32;
    for (b, a) in row.iter().zip(act) {
        let (sc, m) = unpack_scales_mins(&b.scales);
        let d = a.d * b.d.to_f32();
        let neg_dmin = -a.d * b.dmin.to_f32();
        let imin = hsum_i32x4(min_products(&m, &a.bsums));
        min_sum = neg_dmin.mul_add(imin as f32, min_sum);

        let sc8 = _mm_cvtsi64_si128(i64::from_le_bytes(sc));
        let scales16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc8));
        // Fifth bits: chunk c takes bits 2c and 2c + 1 of every qh byte. Shifting the
        // 16-bit lanes right by 2 per chunk keeps each byte's next two bits at 0 and 1.
        let mut high = load32(&b.qh);
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let bits = load32(at32(&b.qs, 32 * c));
            let q_lo = _mm256_or_si256(
                _mm256_and_si256(bits, low4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(high), bit4),
            );
            let q_hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4),
                _mm256_and_si256(_mm256_slli_epi16::<3>(high), bit4),
            );
            high = _mm256_srli_epi16::<2>(high);
            let a_lo = load32(at32(&a.qs, 64 * c));
            let a_hi = load32(at32(&a.qs, 64 * c + 32));
            let p_lo = scaled_dot32(q_lo, a_lo, _mm256_shuffle_epi8(scales16, spread[2 * c]));
            let p_hi = scaled_dot32(q_hi, a_hi, _mm256_shuffle_epi8(scales16, spread[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
        }
        acc = scale_acc(acc, d, sumi);
    }
    hsum_f32x8(acc) + min_sum
}

// ---------------------------------------------------------------------------------------
// Q3_K
// ---------------------------------------------------------------------------------------

use crate::quant::q3_k::BlockQ3K;

/// The 16 signed scales of a Q3_K block (`-32..=31`) as bytes, unpacked as
/// [`crate::quant::q3_k::unpack_scales`] describes: low nibbles from bytes 0..8 (scales
/// 0..8 in the low nibbles, 8..16 in the high ones), two high bits from byte `8 + g % 4`
/// shifted by `2 (g / 4)`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn q3_scales(packed: &[u8; 12]) -> __m128i {
    let (low_bytes, high_bytes) = packed.split_at(8);
    let low = _mm_cvtsi64_si128(i64::from_le_bytes(low_bytes.try_into().expect("8 bytes")));
    let high = _mm_set1_epi32(i32::from_le_bytes(high_bytes.try_into().expect("4 bytes")));
    let nibble = _mm_set1_epi8(0x0f);
    let low = _mm_unpacklo_epi64(
        _mm_and_si128(low, nibble),
        _mm_and_si128(_mm_srli_epi16::<4>(low), nibble),
    );
    // dword k of `high` shifted by 2k puts scale 4k + j's two bits at the bottom of byte j
    let high = _mm_and_si128(
        _mm_srlv_epi32(high, _mm_setr_epi32(0, 2, 4, 6)),
        _mm_set1_epi8(0x03),
    );
    _mm_sub_epi8(
        _mm_or_si128(low, _mm_slli_epi16::<4>(high)),
        _mm_set1_epi8(32),
    )
}

/// Q3_K row · Q8_K activations; 8 lanes.
pub fn vec_dot_q3_k_q8_k(row: &[BlockQ3K], act: &[BlockQ8K]) -> f32 {
    assert_eq!(
        row.len(),
        act.len(),
        "Q3_K dot: {} weight blocks, {} activation blocks",
        row.len(),
        act.len()
    );
    // SAFETY: this module is compiled only with AVX2 and FMA enabled.
    unsafe { dot_q3_k(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_q3_k(row: &[BlockQ3K], act: &[BlockQ8K]) -> f32 {
    let two = _mm256_set1_epi8(0x03);
    let bit2 = _mm256_set1_epi8(0x04);
    let shuffles = SCALE_PAIR_SHUFFLES.map(|s| load32(&s));
    let mut acc = _mm256_setzero_ps();
    for (b, a) in row.iter().zip(act) {
        let d = a.d * b.d.to_f32();
        let scales16 = _mm256_cvtepi8_epi16(q3_scales(&b.scales));

        // High bits: vector 4h + k uses bit 4h + k of every hmask byte; shifting the
        // 16-bit lanes right by one per vector keeps each byte's next bit at bit 0.
        let mut high = load32(&b.hmask);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let half_scales = half_scales(scales16, h);
            let mut low = load32(at32(&b.qs, 32 * h));
            for (k, shuffle) in shuffles.iter().enumerate() {
                // q = lo - 4 (1 - hi): both parts unsigned for maddubs, then subtracted
                let lo = _mm256_and_si256(low, two);
                let minus4 = _mm256_andnot_si256(_mm256_slli_epi16::<2>(high), bit2);
                low = _mm256_srli_epi16::<2>(low);
                high = _mm256_srli_epi16::<1>(high);
                let av = load32(at32(&a.qs, 128 * h + 32 * k));
                let p16 = _mm256_sub_epi16(
                    _mm256_maddubs_epi16(lo, av),
                    _mm256_maddubs_epi16(minus4, av),
                );
                let scale = _mm256_shuffle_epi8(half_scales, *shuffle);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, scale));
            }
        }
        acc = scale_acc(acc, d, sumi);
    }
    hsum_f32x8(acc)
}

// ---------------------------------------------------------------------------------------
// Q2_K
// ---------------------------------------------------------------------------------------

use crate::quant::q2_k::BlockQ2K;

/// Q2_K row · Q8_K activations; block totals on CPUs with AVX-512 (bit for bit
/// [`crate::quant::q2_k::vec_dot_q2_k_q8_k_ref`]), 8 lanes otherwise.
pub fn vec_dot_q2_k_q8_k(row: &[BlockQ2K], act: &[BlockQ8K]) -> f32 {
    assert_eq!(
        row.len(),
        act.len(),
        "Q2_K dot: {} weight blocks, {} activation blocks",
        row.len(),
        act.len()
    );
    // SAFETY: this module is compiled only with AVX2 and FMA enabled.
    unsafe { dot_q2_k(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_q2_k(row: &[BlockQ2K], act: &[BlockQ8K]) -> f32 {
    let two = _mm256_set1_epi8(0x03);
    let shuffles = SCALE_PAIR_SHUFFLES.map(|s| load32(&s));
    // block totals with AVX-512 (sum, min_sum), 8 lanes without (acc); see the module doc
    let block_totals = cfg!(target_feature = "avx512f");
    let (mut sum, mut min_sum) = (0f32, 0f32);
    let mut acc = _mm256_setzero_ps();
    for (b, a) in row.iter().zip(act) {
        let packed = load16(&b.scales);
        let nibble = _mm_set1_epi8(0x0f);
        let scales16 = _mm256_cvtepu8_epi16(_mm_and_si128(packed, nibble));
        let mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed), nibble));
        // SAFETY: 16 i16 are 32 readable bytes.
        let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
        let min_prod = _mm256_madd_epi16(mins16, bsums);

        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let half_scales = half_scales(scales16, h);
            let mut bits = load32(at32(&b.qs, 32 * h));
            for (k, shuffle) in shuffles.iter().enumerate() {
                let q = _mm256_and_si256(bits, two);
                bits = _mm256_srli_epi16::<2>(bits);
                let av = load32(at32(&a.qs, 128 * h + 32 * k));
                let scale = _mm256_shuffle_epi8(half_scales, *shuffle);
                sumi = scaled_dot32_acc(sumi, q, av, scale);
            }
        }
        if block_totals {
            let d = b.d.to_f32() * a.d;
            let dmin = b.dmin.to_f32() * a.d;
            let (isum, imin) = two_totals(fold_i32x8(sumi), fold_i32x8(min_prod));
            sum = isum.mul_add(d, sum);
            min_sum = imin.mul_add(dmin, min_sum);
        } else {
            // the minimum term first, then the scaled sum, as ggml's AVX2 kernel
            let d = a.d * b.d.to_f32();
            let neg_dmin = -a.d * b.dmin.to_f32();
            acc = _mm256_fmadd_ps(_mm256_set1_ps(neg_dmin), _mm256_cvtepi32_ps(min_prod), acc);
            acc = scale_acc(acc, d, sumi);
        }
    }
    if block_totals {
        sum - min_sum
    } else {
        hsum_f32x8(acc)
    }
}

#[cfg(test)]
mod tests {
    //! The AVX2 dots against the scalar references and an f64 reference on blocks the
    //! golden vectors may miss: all quant bits set (largest quants, scales and minimums,
    //! where `maddubs` would saturate first), all clear, and random; with activations at
    //! full scale of both signs.
    use crate::float16::f16;
    use crate::quant::q2_k::Q2_K;
    use crate::quant::q3_k::Q3_K;
    use crate::quant::q4_k::Q4_K;
    use crate::quant::q5_k::Q5_K;
    use crate::quant::q6_k::Q6_K;
    use crate::quant::q8_k::{BlockQ8K, Q8_K, QK_K};
    use crate::quant::testing::activations;
    use crate::quant::{ActType, WeightType};

    /// `n` blocks whose bytes come from `fill(block, byte)`, with the f16 fields at
    /// `f16_at` set to `scale`.
    fn blocks<W: WeightType>(
        n: usize,
        f16_at: &[usize],
        scale: f32,
        fill: impl Fn(usize, usize) -> u8,
    ) -> Vec<W::Block> {
        let size = std::mem::size_of::<W::Block>();
        let mut bytes: Vec<u8> = (0..n * size).map(|i| fill(i / size, i % size)).collect();
        for block in bytes.chunks_exact_mut(size) {
            for &off in f16_at {
                block[off..off + 2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
            }
        }
        let mut out = Vec::<W::Block>::with_capacity(n);
        // SAFETY: K-quant blocks are plain integers and f16; n blocks of bytes are copied
        // into the reserved capacity.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                out.as_mut_ptr().cast::<u8>(),
                bytes.len(),
            );
            out.set_len(n);
        }
        out
    }

    fn check<W: WeightType<Act = Q8_K>>(f16_at: &[usize]) {
        let n = 16;
        let mut seed = 0x9e37_79b9u32;
        let random = move |_: usize, _: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        };
        let random = std::cell::RefCell::new(random);
        let sets = [
            blocks::<W>(n, f16_at, 0.07, |_, _| 0xff),
            blocks::<W>(n, f16_at, 0.07, |_, _| 0x00),
            blocks::<W>(n, f16_at, 0.03, |b, i| random.borrow_mut()(b, i)),
            // positive and negative f16 scales
            blocks::<W>(n, f16_at, -0.05, |b, i| random.borrow_mut()(b, i)),
        ];
        let acts: Vec<Vec<f32>> = vec![
            vec![1.5; n * QK_K],
            vec![-2.0; n * QK_K],
            (0..n * QK_K)
                .map(|i| if i % 2 == 0 { 3.0 } else { -3.0 })
                .collect(),
            activations(n * QK_K, 9),
        ];
        for (si, w) in sets.iter().enumerate() {
            let mut wf = vec![0f32; n * QK_K];
            W::dequantize_ref(w, &mut wf);
            for (ai, x) in acts.iter().enumerate() {
                let mut act = vec![BlockQ8K::default(); n];
                Q8_K::quantize(x, &mut act);
                let mut xq = vec![0f32; n * QK_K];
                Q8_K::dequantize_ref(&act, &mut xq);
                let exact: f64 = wf.iter().zip(&xq).map(|(&a, &b)| a as f64 * b as f64).sum();
                let scale: f64 = wf
                    .iter()
                    .zip(&xq)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum::<f64>()
                    .max(1e-30);
                let fast = W::vec_dot(w, &act) as f64;
                let slow = W::vec_dot_ref(w, &act) as f64;
                for (what, got) in [("avx2", fast), ("scalar", slow)] {
                    let err = (got - exact).abs() / scale;
                    assert!(err <= 1e-5, "{} {what}: blocks {si}, activations {ai}: {got} vs f64 {exact} (rel {err:e})", W::NAME);
                }
            }
        }
    }

    /// One golden file from `scripts/kquant_matvec_golden.c`: the weights, and per
    /// activation vector `(x, y_plain, y_repack)`, where `y_*` is llama.cpp's `W x`.
    #[allow(clippy::type_complexity)]
    fn golden_matvec<W: WeightType>() -> (
        usize,
        Vec<W::Block>,
        Vec<(Vec<f32>, Vec<f32>, Vec<f32>)>,
        bool,
    ) {
        let path = format!(
            "{}/src/quant/golden_matvec/{}.bin",
            env!("CARGO_MANIFEST_DIR"),
            W::NAME
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let word =
            |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as usize;
        let (rows, cols, n_acts, repacked) = (word(0), word(1), word(2), word(3) == 1);
        let n_blocks = rows * cols / W::BLOCK_ELEMS;
        let wbytes = n_blocks * std::mem::size_of::<W::Block>();
        let mut blocks = Vec::<W::Block>::with_capacity(n_blocks);
        // SAFETY: K-quant blocks are plain integers and f16; n_blocks of bytes are copied
        // into the reserved capacity.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes[16..].as_ptr(),
                blocks.as_mut_ptr().cast::<u8>(),
                wbytes,
            );
            blocks.set_len(n_blocks);
        }
        let floats: Vec<f32> = bytes[16 + wbytes..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(floats.len(), n_acts * (cols + 2 * rows), "{path}: size");
        let acts = floats
            .chunks_exact(cols + 2 * rows)
            .map(|c| {
                (
                    c[..cols].to_vec(),
                    c[cols..cols + rows].to_vec(),
                    c[cols + rows..].to_vec(),
                )
            })
            .collect();
        (rows, blocks, acts, repacked)
    }

    /// Our dots, row by row, against llama.cpp's matrix-vector product on the path its
    /// CPU backend takes on this CPU by default: repacked (Q4_K; Q2_K with AVX-512) or
    /// ggml's AVX2 `vec_dot`. Bit for bit; on the repacked path the scalar reference too,
    /// since it takes the same f32 steps.
    fn check_llama_cpp<W: WeightType<Act = Q8_K>>(repack_path: bool) {
        let (rows, w, acts, repacked) = golden_matvec::<W>();
        assert!(
            !repack_path || repacked,
            "{}: the golden file has no repacked results",
            W::NAME
        );
        let per_row = w.len() / rows;
        for (ai, (x, y_plain, y_repack)) in acts.iter().enumerate() {
            let want = if repack_path { y_repack } else { y_plain };
            let mut act = vec![BlockQ8K::default(); per_row];
            Q8_K::quantize(x, &mut act);
            for (r, row) in w.chunks_exact(per_row).enumerate() {
                let got = W::vec_dot(row, &act);
                if repack_path {
                    let slow = W::vec_dot_ref(row, &act);
                    assert_eq!(
                        slow.to_bits(),
                        want[r].to_bits(),
                        "{}: scalar, activation {ai}, row {r}",
                        W::NAME
                    );
                }
                assert_eq!(
                    got.to_bits(),
                    want[r].to_bits(),
                    "{}: activation {ai}, row {r}: {got} vs llama.cpp {} (other path {})",
                    W::NAME,
                    want[r],
                    if repack_path { y_plain[r] } else { y_repack[r] }
                );
            }
        }
    }

    #[test]
    fn q2_k_bit_exact_with_llama_cpp() {
        check_llama_cpp::<Q2_K>(cfg!(target_feature = "avx512f"));
    }

    #[test]
    fn q3_k_bit_exact_with_llama_cpp() {
        check_llama_cpp::<Q3_K>(false);
    }

    #[test]
    fn q4_k_bit_exact_with_llama_cpp() {
        check_llama_cpp::<Q4_K>(true);
    }

    #[test]
    fn q5_k_bit_exact_with_llama_cpp() {
        check_llama_cpp::<Q5_K>(false);
    }

    #[test]
    fn q6_k_bit_exact_with_llama_cpp() {
        check_llama_cpp::<Q6_K>(false);
    }

    #[test]
    fn q2_k_matches_scalar() {
        check::<Q2_K>(&[80, 82]);
    }

    #[test]
    fn q3_k_matches_scalar() {
        check::<Q3_K>(&[108]);
    }

    #[test]
    fn q4_k_matches_scalar() {
        check::<Q4_K>(&[0, 2]);
    }

    #[test]
    fn q5_k_matches_scalar() {
        check::<Q5_K>(&[0, 2]);
    }

    #[test]
    fn q6_k_matches_scalar() {
        check::<Q6_K>(&[208]);
    }
}
