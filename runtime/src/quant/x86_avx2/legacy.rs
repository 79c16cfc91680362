//! AVX2 + FMA kernels for the legacy 32-value block formats (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0 with Q8_0 / Q8_1 activations), the two activation quantizers, and the F16 / BF16
//! float dots.
//!
//! A block dot product loads, unpacks the weight quants to one byte each (value `i` of the
//! block in byte `i` of a 256-bit register), multiplies with the 32 activation bytes
//! into 8 i32 lanes (lane `k` holds the sum over bytes `4k..4k+4`), converts those exact
//! integers to f32, and adds `d_w * d_a * lanes` to an 8-lane f32 accumulator with one
//! FMA. One accumulator and one FMA per block, then a horizontal sum: the same sequence
//! of roundings as ggml's AVX2 dots, so our sums match llama.cpp's on this CPU bit for
//! bit. Q4_0 is the exception: llama.cpp repacks it on AVX2 CPUs and takes one scalar FMA
//! per block on the block's whole integer sum, and so do we (its kernels are in `tiles`,
//! shared with IQ4_NL, which rounds the same way).
//!
//! The public functions are safe: this module is only compiled when the build enables
//! AVX2 and FMA (`cfg(target_feature)` on the parent module; F16C too for the F16 dot),
//! so the `#[target_feature]` workers they call run on a CPU that has them.

use std::arch::x86_64::*;

use crate::float16::{bf16, f16};

use crate::quant::q4_1::BlockQ4_1;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::q5_1::BlockQ5_1;
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::q8_1::BlockQ8_1;

/// Loads 32 one-byte integers.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn load32<T: Copy>(bytes: &[T; 32]) -> __m256i {
    const { assert!(std::mem::size_of::<T>() == 1) };
    // SAFETY: 32 one-byte elements are 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// The 32 nibbles of 16 bytes, one per byte: low nibbles in bytes 0..16, high nibbles in
/// bytes 16..32 (the value order of every 4- and 5-bit legacy block).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn unpack_nibbles(qs: &[u8; 16]) -> __m256i {
    // The 16 bytes in both halves (a broadcast load, no shuffle µop), the upper half
    // shifted right by 4 per 32-bit lane: each byte then holds its own high nibble in
    // its low 4 bits (the neighbour's bits land above them and are masked off).
    // SAFETY: 16 readable bytes; the load is unaligned.
    let both = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.as_ptr().cast())) };
    let shifted = _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
}

/// Bit 4 of the 32 five-bit quants: byte `i` is `0x10` where bit `i` of `qh` is set.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn q5_high_bits(qh: &[u8; 4]) -> __m256i {
    let bits = i32::from_le_bytes(*qh);
    // byte i takes byte i / 8 of qh, then keeps only bit i % 8 of it
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let bit_of_byte = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit_of_byte), bit_of_byte);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// `sum_{j<4} u[4k + j] * s[4k + j]` in lane `k`, for unsigned bytes `u` and signed bytes
/// `s`. Here `u <= 128` (a weight quant or its magnitude) and `|s| <= 127` (activation
/// quants never reach -128).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
    {
        // SAFETY: the build enables AVX512-VNNI and AVX512-VL (cfg above).
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s) }
    }
    #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
    {
        dot_u8_i8_maddubs(u, s)
    }
}

/// `dot_u8_i8` without VNNI: pairs of products summed to i16 by `maddubs` (a pair reaches
/// at most 2 * 128 * 127 = 32512 for the inputs here, below i16 saturation), then pairs
/// of i16 summed to i32 by `madd` with ones.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[cfg_attr(
    all(target_feature = "avx512vnni", target_feature = "avx512vl"),
    allow(dead_code)
)]
fn dot_u8_i8_maddubs(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// `dot_u8_i8` for two signed operands: `|x| * (y with x's sign)` is `x * y`, and `|x|`
/// fits an unsigned byte even for x = -128.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Sum of the 8 f32 lanes: upper half onto lower half, then the upper pair onto the lower
/// pair, then lane 1 onto lane 0.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum_f32x8(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}

/// Sum of the 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_i32x8(v: __m256i) -> i32 {
    let quad = _mm_add_epi32(_mm256_extracti128_si256::<1>(v), _mm256_castsi256_si128(v));
    let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
    _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32::<0b01>(pair)))
}

/// Adds `scale * lanes` to the accumulator: one FMA per block.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn accumulate(acc: __m256, scale: f32, lanes: __m256i) -> __m256 {
    _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(lanes), acc)
}

/// Q4_1 row · Q8_1 activations. Unsigned quants times the activation bytes, plus the
/// offset terms `m_w * s_a` summed with scalar FMAs and added after the horizontal sum.
pub fn vec_dot_q4_1_q8_1(row: &[BlockQ4_1], act: &[BlockQ8_1]) -> f32 {
    // SAFETY: this module is only built with avx2, fma enabled (see the module doc).
    unsafe { vec_dot_q4_1_q8_1_impl(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn vec_dot_q4_1_q8_1_impl(row: &[BlockQ4_1], act: &[BlockQ8_1]) -> f32 {
    assert_eq!(row.len(), act.len(), "Q4_1 vec_dot: length");
    let mut acc = _mm256_setzero_ps();
    let mut sum_offsets = 0f32;
    for (w, a) in row.iter().zip(act) {
        sum_offsets = w.m.to_f32().mul_add(a.s.to_f32(), sum_offsets);
        let lanes = dot_u8_i8(unpack_nibbles(&w.qs), load32(&a.qs));
        acc = accumulate(acc, w.d.to_f32() * a.d.to_f32(), lanes);
    }
    hsum_f32x8(acc) + sum_offsets
}

/// Q5_0 row · Q8_0 activations. Weights unpack to `(nibble | bit4) - 16` (signed bytes).
pub fn vec_dot_q5_0_q8_0(row: &[BlockQ5_0], act: &[BlockQ8_0]) -> f32 {
    // SAFETY: this module is only built with avx2, fma enabled (see the module doc).
    unsafe { vec_dot_q5_0_q8_0_impl(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn vec_dot_q5_0_q8_0_impl(row: &[BlockQ5_0], act: &[BlockQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len(), "Q5_0 vec_dot: length");
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.iter().zip(act) {
        let q = _mm256_or_si256(unpack_nibbles(&w.qs), q5_high_bits(&w.qh));
        let qw = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        let lanes = dot_i8_i8(qw, load32(&a.qs));
        acc = accumulate(acc, w.d.to_f32() * a.d.to_f32(), lanes);
    }
    hsum_f32x8(acc)
}

/// Q5_1 row · Q8_1 activations: as Q4_1 with the fifth bit or'ed in.
pub fn vec_dot_q5_1_q8_1(row: &[BlockQ5_1], act: &[BlockQ8_1]) -> f32 {
    // SAFETY: this module is only built with avx2, fma enabled (see the module doc).
    unsafe { vec_dot_q5_1_q8_1_impl(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn vec_dot_q5_1_q8_1_impl(row: &[BlockQ5_1], act: &[BlockQ8_1]) -> f32 {
    assert_eq!(row.len(), act.len(), "Q5_1 vec_dot: length");
    let mut acc = _mm256_setzero_ps();
    let mut sum_offsets = 0f32;
    for (w, a) in row.iter().zip(act) {
        sum_offsets = w.m.to_f32().mul_add(a.s.to_f32(), sum_offsets);
        let q = _mm256_or_si256(unpack_nibbles(&w.qs), q5_high_bits(&w.qh));
        let lanes = dot_u8_i8(q, load32(&a.qs));
        acc = accumulate(acc, w.d.to_f32() * a.d.to_f32(), lanes);
    }
    hsum_f32x8(acc) + sum_offsets
}

/// Q8_0 row · Q8_0 activations.
pub fn vec_dot_q8_0_q8_0(row: &[BlockQ8_0], act: &[BlockQ8_0]) -> f32 {
    // SAFETY: this module is only built with avx2, fma enabled (see the module doc).
    unsafe { vec_dot_q8_0_q8_0_impl(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn vec_dot_q8_0_q8_0_impl(row: &[BlockQ8_0], act: &[BlockQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len(), "Q8_0 vec_dot: length");
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.iter().zip(act) {
        let lanes = dot_i8_i8(load32(&w.qs), load32(&a.qs));
        acc = accumulate(acc, w.d.to_f32() * a.d.to_f32(), lanes);
    }
    hsum_f32x8(acc)
}

/// One block of 32 floats quantized to bytes as `quantize_block_q8` specifies; returns
/// the f32 scale `d` and the 8 i32 quants' lane sums' vector (for Q8_1's `s`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn quantize_block_q8(x: &[f32], qs: &mut [i8; 32]) -> (f32, __m256i) {
    assert_eq!(x.len(), 32);
    // SAFETY: x has 32 floats, read as four unaligned 8-float vectors.
    let v: [__m256; 4] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * k)) });

    // max |x|: clear the sign bits, then fold the vectors in order and halve the lanes.
    // Exact, so the order only matters for NaN (which `max` propagates from its second
    // operand only); it is ggml's, so a NaN block gets ggml's scale too.
    let abs = |v| _mm256_andnot_ps(_mm256_set1_ps(-0.0), v);
    let max8 = _mm256_max_ps(
        _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), abs(v[2])),
        abs(v[3]),
    );
    let max4 = _mm_max_ps(
        _mm256_extractf128_ps::<1>(max8),
        _mm256_castps256_ps128(max8),
    );
    let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
    let amax = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));

    let d = amax / 127.0;
    let mul = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    // round half to even (the default rounding mode, selected explicitly), then to i32
    let q: [__m256i; 4] = std::array::from_fn(|k| {
        let scaled = _mm256_mul_ps(v[k], mul);
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(scaled))
    });

    // i32 -> i16 -> i8 with saturation (a no-op: |q| <= 127). The packs interleave the
    // 128-bit halves, leaving the 4-byte groups in order 0 2 4 6 1 3 5 7; a permute of
    // the 32-bit groups restores 0..8.
    let q16_lo = _mm256_packs_epi32(q[0], q[1]);
    let q16_hi = _mm256_packs_epi32(q[2], q[3]);
    let q8 = _mm256_packs_epi16(q16_lo, q16_hi);
    let ordered = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: qs is 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), ordered) };

    let sums = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    (d, sums)
}

/// Quantizes `x` into Q8_0 blocks; same blocks as `Q8_0::quantize_ref`.
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    // SAFETY: this module is only built with avx2, fma enabled (see the module doc).
    unsafe { quantize_q8_0_impl(x, out) }
}

#[target_feature(enable = "avx2,fma")]
fn quantize_q8_0_impl(x: &[f32], out: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), out.len() * 32, "Q8_0 quantize: length");
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let (d, _) = quantize_block_q8(xs, &mut block.qs);
        block.d = f16::from_f32(d);
    }
}

/// Quantizes `x` into Q8_1 blocks; same blocks as `Q8_1::quantize_ref`.
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    // SAFETY: this module is only built with avx2, fma enabled (see the module doc).
    unsafe { quantize_q8_1_impl(x, out) }
}

#[target_feature(enable = "avx2,fma")]
fn quantize_q8_1_impl(x: &[f32], out: &mut [BlockQ8_1]) {
    assert_eq!(x.len(), out.len() * 32, "Q8_1 quantize: length");
    for (block, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let (d, sums) = quantize_block_q8(xs, &mut block.qs);
        block.d = f16::from_f32(d);
        block.s = f16::from_f32(d * hsum_i32x8(sums) as f32);
    }
}

/// BF16 row · bf16 activations. A bf16 is the top half of an f32, so widening is a
/// zero-extend and a 16-bit shift; the products are summed with FMA into four 8-lane
/// f32 accumulators (32 values per step), the tail in scalar f32.
pub fn vec_dot_bf16_bf16(row: &[bf16], act: &[bf16]) -> f32 {
    // SAFETY: this module is only built with avx2, fma enabled (see the module doc).
    unsafe { vec_dot_bf16_bf16_impl(row, act) }
}

#[target_feature(enable = "avx2,fma")]
fn vec_dot_bf16_bf16_impl(row: &[bf16], act: &[bf16]) -> f32 {
    assert_eq!(row.len(), act.len(), "BF16 vec_dot: length");
    let load = |p: &[bf16]| {
        // SAFETY: 8 bf16 are 16 readable bytes; unaligned load.
        let halves = unsafe { _mm_loadu_si128(p.as_ptr().cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
    };
    let mut acc = [_mm256_setzero_ps(); 4];
    let (w_main, w_tail) = row.split_at(row.len() / 32 * 32);
    let (a_main, a_tail) = act.split_at(w_main.len());
    for (w, a) in w_main.chunks_exact(32).zip(a_main.chunks_exact(32)) {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(load(&w[8 * k..]), load(&a[8 * k..]), *acc);
        }
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail: f32 = w_tail
        .iter()
        .zip(a_tail)
        .map(|(w, a)| w.to_f32() * a.to_f32())
        .sum();
    hsum_f32x8(acc) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The non-VNNI integer dot must give the same lanes as the one in use, over the full
    /// operand ranges the kernels feed it (unsigned 0..=128 with signed -127..=127).
    #[test]
    fn maddubs_dot_matches() {
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..1000 {
            let u: [u8; 32] = std::array::from_fn(|_| (next() % 129) as u8);
            let v: [i8; 32] = std::array::from_fn(|_| ((next() % 255) as i32 - 127) as i8);
            // SAFETY: the module is built with AVX2 (and VNNI when dot_u8_i8 uses it); a
            // __m256i is 8 i32.
            let (a, b): ([i32; 8], [i32; 8]) = unsafe {
                let (uv, vv) = (load32(&u), load32(&v));
                (
                    std::mem::transmute::<__m256i, [i32; 8]>(dot_u8_i8(uv, vv)),
                    std::mem::transmute::<__m256i, [i32; 8]>(dot_u8_i8_maddubs(uv, vv)),
                )
            };
            let want: [i32; 8] = std::array::from_fn(|k| {
                (0..4)
                    .map(|j| u[4 * k + j] as i32 * v[4 * k + j] as i32)
                    .sum()
            });
            assert_eq!(a, want);
            assert_eq!(b, want);
        }
    }

    #[test]
    fn high_bits_spread() {
        let qh = 0x8000_0101u32.to_le_bytes();
        // SAFETY: built with AVX2; a __m256i is 32 bytes.
        let got: [u8; 32] = unsafe { std::mem::transmute::<__m256i, [u8; 32]>(q5_high_bits(&qh)) };
        let want: [u8; 32] =
            std::array::from_fn(|i| if [0, 8, 31].contains(&i) { 0x10 } else { 0 });
        assert_eq!(got, want);
    }
}
