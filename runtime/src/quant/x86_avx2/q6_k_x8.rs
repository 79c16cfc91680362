//! AVX2 + FMA + F16C kernels of the 8-row-interleaved Q6_K dots
//! ([`crate::quant::q6_k_x8`]): one group of 8 rows times one token (Q6_K's `vec_dot`
//! rounding) or 4 to 8 tokens (the tiled batch rounding), one row per 32-bit lane throughout.
//!
//! Per super-block, half `h` and positions `4m..4m + 4`, three 32-byte loads give the
//! quants of the four 32-weight runs `k` for the 8 rows ([`quants`]); each is multiplied
//! with the 4 activation bytes of its positions, broadcast.
//!
//! - One token: each run has its own sub-block scale, and Q6_K's dot keeps the 8 byte
//!   positions `m` apart (its 8 lanes), so every product is scaled on its own: `maddubs`
//!   (u8 quants × i8 activations, pairs of at most 2 · 63 · 128, no saturation) and a
//!   `madd` with the row's scale as an i16 pair, added into accumulator `m` (one
//!   `vpdpwssd` with AVX512-VNNI). The accumulators start at `-32 Σ scale · bsums` of
//!   Q6_K's lane `m`.
//! - Batches: only each row's super-block total counts, so the 4 position groups `m` of
//!   a sub-block (`h`, `k`, `m / 4`) are summed in integers first: with VNNI `vpdpbusd`
//!   from `-32 bsums_g` into one accumulator per sub-block and token, then one `vpmulld`
//!   by the rows' scales; without, `maddubs` of two position groups added in i16 (at
//!   most 2 · 2 · 63 · 128 = 32256) and one `madd` with the scale pairs.
//!
//! All integer sums are exact, and the f32 steps per lane are Q6_K's per row, so every
//! lane equals Q6_K's result for its row to the bit.

use std::arch::x86_64::*;

use crate::quant::q6_k_x8::{qs_vector, BlockQ6KX8, ROWS};
use crate::quant::q8_k::{BlockQ8K, QK_K};
use crate::quant::{x8, BATCH_TOKENS, TILE};

use super::vnni::{broadcast4, dpbusd, dpwssd, VNNI};

/// Tokens per call of the tiled kernel: 8 with AVX-512's 32 vector registers (3 × 8
/// accumulators; 121 against 110 GMAC/s per core with 4 on the development machine's
/// Zen 4), 4 with AVX2's 16.
const STEP: usize = if VNNI { 8 } else { 4 };

/// Rows of the consecutive 8-row `groups` (`act_row` blocks each) times tokens
/// `0..n_tokens` of `act` (token `t`'s blocks at `act[t * act_row..]`) with the one-token
/// arithmetic: row `i`'s dot with token `t` goes to `out[t * n_rows + i]`, bit for bit
/// [`crate::quant::q6_k_x8::vec_dot_q6_kx8_q8_k_ref`].
pub fn groups_dots(
    groups: &[BlockQ6KX8],
    act: &[BlockQ8K],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    x8::each_group_and_token(
        "Q6_KX8",
        groups,
        act,
        act_row,
        n_tokens,
        out,
        // SAFETY (both): this module is compiled only with AVX2, FMA and F16C enabled.
        (
            |group, tokens| unsafe { dots::<TILE>(group, tokens) },
            |group, token| unsafe { dot(group, token) },
        ),
    );
}

/// The same with the tiled batch arithmetic (batches of 8 or more tokens): bit for bit
/// [`crate::quant::q6_k_x8::tiled_q6_kx8_q8_k_ref`], which is Q6_K's batch path. Tokens
/// go in batches of [`BATCH_TOKENS`], each over all the groups (the batch's activations
/// stay in L2 while the weights go by), [`STEP`] at a time.
pub fn groups_tiled_dots(
    groups: &[BlockQ6KX8],
    act: &[BlockQ8K],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    let n_rows = x8::check_groups(
        "Q6_KX8",
        groups.len(),
        act.len(),
        act_row,
        n_tokens,
        out.len(),
    );
    let token = |t: usize| &act[t * act_row..(t + 1) * act_row];
    for t_start in (0..n_tokens).step_by(BATCH_TOKENS) {
        let tokens = t_start..(t_start + BATCH_TOKENS).min(n_tokens);
        for (g, group) in groups.chunks_exact(act_row).enumerate() {
            let mut put = |t: usize, dots: &[f32; ROWS]| {
                out[t * n_rows + g * ROWS..][..ROWS].copy_from_slice(dots);
            };
            let quads_end = tokens.end - tokens.len() % STEP;
            for t0 in (tokens.start..quads_end).step_by(STEP) {
                let acts = std::array::from_fn(|i| token(t0 + i));
                // SAFETY: this module is compiled only with AVX2, FMA and F16C enabled.
                let dots = unsafe { tiled::<STEP>(group, acts) };
                for (i, d) in dots.iter().enumerate() {
                    put(t0 + i, d);
                }
            }
            for t in quads_end..tokens.end {
                // SAFETY: as above.
                let [dots] = unsafe { tiled::<1>(group, [token(t)]) };
                put(t, &dots);
            }
        }
    }
}

/// The quants (`0..=63`, one byte each) of the four runs `k` of half `h` at positions
/// `4m..4m + 4`, 4 bytes per row, row `r` in lane `r`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quants(b: &BlockQ6KX8, h: usize, m: usize) -> [__m256i; 4] {
    let at = qs_vector(h, m, 0);
    let bytes: &[u8; 96] = b.qs[at..at + 96].try_into().expect("96 bytes");
    // SAFETY: 3 × 32 readable bytes; unaligned loads.
    let v = unsafe {
        [
            _mm256_loadu_si256(bytes.as_ptr().cast()),
            _mm256_loadu_si256(bytes.as_ptr().add(32).cast()),
            _mm256_loadu_si256(bytes.as_ptr().add(64).cast()),
        ]
    };
    let low6 = _mm256_set1_epi8(63);
    // the top two bits of each byte of v[k] are bits 2k, 2k + 1 of run 3's quant: shifts
    // of 16-bit lanes by 6, 4, 2 move them to bits 0-1, 2-3, 4-5 of the same byte (the
    // bits that come in from the upper byte are masked off)
    let top = _mm256_or_si256(
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<6>(v[0]), _mm256_set1_epi8(0x03)),
            _mm256_and_si256(_mm256_srli_epi16::<4>(v[1]), _mm256_set1_epi8(0x0c)),
        ),
        _mm256_and_si256(_mm256_srli_epi16::<2>(v[2]), _mm256_set1_epi8(0x30)),
    );
    [
        _mm256_and_si256(v[0], low6),
        _mm256_and_si256(v[1], low6),
        _mm256_and_si256(v[2], low6),
        top,
    ]
}

/// The quants of run `k` alone (`quants(b, h, m)[k]`): one load and a mask for runs
/// 0..3, the three loads and the bit gathering for run 3.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quant_run(b: &BlockQ6KX8, h: usize, m: usize, k: usize) -> __m256i {
    if k == 3 {
        return quants(b, h, m)[3];
    }
    let at = qs_vector(h, m, k);
    let v: &[u8; 32] = b.qs[at..at + 32].try_into().expect("32 bytes");
    // SAFETY: 32 readable bytes; unaligned load.
    let v = unsafe { _mm256_loadu_si256(v.as_ptr().cast()) };
    _mm256_and_si256(v, _mm256_set1_epi8(63))
}

/// `-32 bsums_g` of one token's block for the 16 sub-blocks `g`, as i32.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Starts([i32; QK_K / 16]);

impl Starts {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn set(&mut self, a: &BlockQ8K) {
        // SAFETY: 16 i16 are 32 readable bytes.
        let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
        let halves = [
            _mm256_castsi256_si128(bsums),
            _mm256_extracti128_si256::<1>(bsums),
        ];
        for (half, out) in halves.iter().zip(self.0.chunks_exact_mut(8)) {
            let v = _mm256_slli_epi32::<5>(_mm256_cvtepi16_epi32(*half));
            let v = _mm256_sub_epi32(_mm256_setzero_si256(), v);
            // SAFETY: 8 writable i32.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
        }
    }
}

/// VNNI: adds to `s1[t]` the scaled sums of run `K` of half `h` (sub-blocks
/// `g = 8h + 2K` at positions `4m..` for `m < 4` and `g + 1` at `m >= 4`) with token `t`,
/// each `scale_g (Σ q a - 32 bsums_g)`; `start[t][g]` is `-32 bsums_g` of token `t`. The
/// two sub-blocks side by side give 2T independent chains of `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn run_sums<const T: usize, const K: usize>(
    b: &BlockQ6KX8,
    a: &[&BlockQ8K; T],
    start: &[Starts; T],
    h: usize,
    s1: &mut [__m256i; T],
) {
    let g = 8 * h + 2 * K;
    let (mut lo, mut hi) = ([_mm256_setzero_si256(); T], [_mm256_setzero_si256(); T]);
    for t in 0..T {
        lo[t] = _mm256_set1_epi32(start[t].0[g]);
        hi[t] = _mm256_set1_epi32(start[t].0[g + 1]);
    }
    for m in 0..4 {
        let (q_lo, q_hi) = (quant_run(b, h, m, K), quant_run(b, h, m + 4, K));
        for t in 0..T {
            let at = 128 * h + 32 * K + 4 * m;
            lo[t] = dpbusd(lo[t], q_lo, broadcast4(&a[t].qs, at));
            hi[t] = dpbusd(hi[t], q_hi, broadcast4(&a[t].qs, at + 16));
        }
    }
    // the rows' scales of sub-blocks g and g + 1 as i32
    let pairs = scale_pairs(b, 4 * h + K);
    let scale_lo = _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(pairs));
    let scale_hi = _mm256_srai_epi32::<16>(pairs);
    for t in 0..T {
        let sums = _mm256_add_epi32(
            _mm256_mullo_epi32(lo[t], scale_lo),
            _mm256_mullo_epi32(hi[t], scale_hi),
        );
        s1[t] = _mm256_add_epi32(s1[t], sums);
    }
}

/// The rows' scales of sub-block pair `p` (sub-blocks `2p`, `2p + 1`): in lane `r` the
/// i16 pair (scale `2p`, scale `2p + 1`) of row `r`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_pairs(b: &BlockQ6KX8, p: usize) -> __m256i {
    let s: &[i8; 16] = b.scales[16 * p..16 * p + 16].try_into().expect("16 bytes");
    // SAFETY: 16 readable bytes.
    _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(s.as_ptr().cast()) })
}

/// Byte shuffles that copy the first (`SPREAD[0]`) or second (`SPREAD[1]`) i16 of each
/// 32-bit lane over both of its halves.
const SPREAD: [[u8; 32]; 2] = {
    let mut s = [[0u8; 32]; 2];
    let mut i = 0;
    while i < 32 {
        let lane = i / 4 * 4 % 16;
        s[0][i] = (lane + i % 2) as u8;
        s[1][i] = (lane + 2 + i % 2) as u8;
        i += 1;
    }
    s
};

/// [`SPREAD`] as vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn spread() -> [__m256i; 2] {
    // SAFETY: 32 readable bytes each.
    unsafe {
        [
            _mm256_loadu_si256(SPREAD[0].as_ptr().cast()),
            _mm256_loadu_si256(SPREAD[1].as_ptr().cast()),
        ]
    }
}

/// `-bsums` of a token's block (each at most 16 · 127 in magnitude, so an i16) as 8 i16
/// pairs, each pair one i32: what the scale pairs are `madd`ed with for the offset term.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn neg_pairs(a: &BlockQ8K) -> [i32; 8] {
    // SAFETY: 16 i16 are 32 readable bytes.
    let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
    let mut out = [0i32; 8];
    // SAFETY: 8 writable i32.
    unsafe {
        _mm256_storeu_si256(
            out.as_mut_ptr().cast(),
            _mm256_sub_epi16(_mm256_setzero_si256(), bsums),
        )
    };
    out
}

/// The one-token dots of one group's 8 rows (`group`: its blocks) with one token.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot(group: &[BlockQ6KX8], act: &[BlockQ8K]) -> [f32; ROWS] {
    let spread = spread();
    let mut acc = [_mm256_setzero_ps(); 8];
    for (b, a) in group.iter().zip(act) {
        let neg = neg_pairs(a);
        // lane m starts at -32 (scale[2m] bsums[2m] + scale[2m + 1] bsums[2m + 1]);
        // scale[p][e]: sub-block 2p + e's scale of each row as an i16 pair
        let mut lanes = [_mm256_setzero_si256(); 8];
        let mut scale = [[_mm256_setzero_si256(); 2]; 8];
        for p in 0..8 {
            let pairs = scale_pairs(b, p);
            let offset = _mm256_madd_epi16(pairs, _mm256_set1_epi32(neg[p]));
            lanes[p] = _mm256_slli_epi32::<5>(offset);
            scale[p] = [
                _mm256_shuffle_epi8(pairs, spread[0]),
                _mm256_shuffle_epi8(pairs, spread[1]),
            ];
        }
        for h in 0..2 {
            for m in 0..8 {
                let q = quants(b, h, m);
                for (k, &q) in q.iter().enumerate() {
                    let a = broadcast4(&a.qs, 128 * h + 32 * k + 4 * m);
                    let pairs = _mm256_maddubs_epi16(q, a);
                    lanes[m] = dpwssd(lanes[m], pairs, scale[4 * h + k][m / 4]);
                }
            }
        }
        // SAFETY: 8 f16 are 16 readable bytes.
        let d_w = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.d.as_ptr().cast()) });
        let d = _mm256_mul_ps(d_w, _mm256_set1_ps(a.d));
        for (acc, &lane) in acc.iter_mut().zip(&lanes) {
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lane), *acc);
        }
    }
    let v = acc;
    let sum = _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(v[0], v[4]), _mm256_add_ps(v[2], v[6])),
        _mm256_add_ps(_mm256_add_ps(v[1], v[5]), _mm256_add_ps(v[3], v[7])),
    );
    let mut out = [0f32; ROWS];
    // SAFETY: 8 writable f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    out
}

/// The one-token dots of one group's 8 rows (`group`: its blocks) with `T` tokens, each
/// bit for bit [`dot`] of the token alone: `out[t][r]` is row `r` · token `t`. Per block,
/// each position group `m`'s quants are unpacked once for the `T` tokens. (With one
/// token this loop order is 7% slower than [`dot`]'s on Minitron's decode, so one token
/// takes [`dot`].)
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dots<const T: usize>(group: &[BlockQ6KX8], acts: [&[BlockQ8K]; T]) -> [[f32; ROWS]; T] {
    let spread = spread();
    let mut acc = [[_mm256_setzero_ps(); 8]; T];
    for (i, b) in group.iter().enumerate() {
        let mut a: [&BlockQ8K; T] = [&acts[0][i]; T];
        let mut neg = [[0i32; 8]; T];
        for t in 0..T {
            a[t] = &acts[t][i];
            neg[t] = neg_pairs(a[t]);
        }
        // scale[p][e]: sub-block 2p + e's scale of each row as an i16 pair
        let mut pairs = [_mm256_setzero_si256(); 8];
        let mut scale = [[_mm256_setzero_si256(); 2]; 8];
        for p in 0..8 {
            pairs[p] = scale_pairs(b, p);
            scale[p] = [
                _mm256_shuffle_epi8(pairs[p], spread[0]),
                _mm256_shuffle_epi8(pairs[p], spread[1]),
            ];
        }
        // SAFETY: 8 f16 are 16 readable bytes.
        let d_w = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.d.as_ptr().cast()) });
        for m in 0..8 {
            // lane m starts at -32 (scale[2m] bsums[2m] + scale[2m + 1] bsums[2m + 1])
            let mut lanes = [_mm256_setzero_si256(); T];
            for t in 0..T {
                let offset = _mm256_madd_epi16(pairs[m], _mm256_set1_epi32(neg[t][m]));
                lanes[t] = _mm256_slli_epi32::<5>(offset);
            }
            for h in 0..2 {
                let q = quants(b, h, m);
                for (k, &q) in q.iter().enumerate() {
                    for t in 0..T {
                        let x = broadcast4(&a[t].qs, 128 * h + 32 * k + 4 * m);
                        let products = _mm256_maddubs_epi16(q, x);
                        lanes[t] = dpwssd(lanes[t], products, scale[4 * h + k][m / 4]);
                    }
                }
            }
            for t in 0..T {
                let d = _mm256_mul_ps(d_w, _mm256_set1_ps(a[t].d));
                acc[t][m] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes[t]), acc[t][m]);
            }
        }
    }
    let mut out = [[0f32; ROWS]; T];
    for (out, v) in out.iter_mut().zip(&acc) {
        let sum = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(v[0], v[4]), _mm256_add_ps(v[2], v[6])),
            _mm256_add_ps(_mm256_add_ps(v[1], v[5]), _mm256_add_ps(v[3], v[7])),
        );
        // SAFETY: 8 writable f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    }
    out
}

/// The dots of one group's 8 rows with `T` tokens with the tiled batch arithmetic: per
/// super-block and token the exact `s1` of each row (module doc), `r = s1 · d_w`,
/// `acc = fma(r, d_a, acc)`. `out[t][r]` is row `r` · token `t`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tiled<const T: usize>(group: &[BlockQ6KX8], acts: [&[BlockQ8K]; T]) -> [[f32; ROWS]; T] {
    for a in acts {
        assert_eq!(
            group.len(),
            a.len(),
            "Q6_KX8 GEMM: {} weight blocks, {} activation blocks",
            group.len(),
            a.len()
        );
    }
    let spread = spread();
    let mut acc = [_mm256_setzero_ps(); T];
    for (i, b) in group.iter().enumerate() {
        let mut a: [&BlockQ8K; T] = [&acts[0][i]; T];
        for t in 0..T {
            a[t] = &acts[t][i];
        }
        let mut s1 = [_mm256_setzero_si256(); T];
        if VNNI {
            // -32 bsums_g of each token, where sub-block g's sums start
            let mut start = [Starts([0; QK_K / 16]); T];
            for (start, a) in start.iter_mut().zip(a) {
                start.set(a);
            }
            for h in 0..2 {
                run_sums::<T, 0>(b, &a, &start, h, &mut s1);
                run_sums::<T, 1>(b, &a, &start, h, &mut s1);
                run_sums::<T, 2>(b, &a, &start, h, &mut s1);
                run_sums::<T, 3>(b, &a, &start, h, &mut s1);
            }
        } else {
            // -32 Σ scale · bsums, with -bsums as i16 pairs
            let mut neg = [[0i32; 8]; T];
            for (neg, a) in neg.iter_mut().zip(a) {
                *neg = neg_pairs(a);
            }
            for (s1, neg) in s1.iter_mut().zip(&neg) {
                let mut offset = _mm256_setzero_si256();
                for (p, &n) in neg.iter().enumerate() {
                    offset = dpwssd(offset, scale_pairs(b, p), _mm256_set1_epi32(n));
                }
                *s1 = _mm256_slli_epi32::<5>(offset);
            }
            for h in 0..2 {
                let mut scale = [[_mm256_setzero_si256(); 2]; 4];
                for (k, scale) in scale.iter_mut().enumerate() {
                    let pairs = scale_pairs(b, 4 * h + k);
                    *scale = [
                        _mm256_shuffle_epi8(pairs, spread[0]),
                        _mm256_shuffle_epi8(pairs, spread[1]),
                    ];
                }
                for m in (0..8).step_by(2) {
                    let (q0, q1) = (quants(b, h, m), quants(b, h, m + 1));
                    for k in 0..4 {
                        for t in 0..T {
                            let x0 = broadcast4(&a[t].qs, 128 * h + 32 * k + 4 * m);
                            let x1 = broadcast4(&a[t].qs, 128 * h + 32 * k + 4 * m + 4);
                            let pairs = _mm256_add_epi16(
                                _mm256_maddubs_epi16(q0[k], x0),
                                _mm256_maddubs_epi16(q1[k], x1),
                            );
                            s1[t] = dpwssd(s1[t], pairs, scale[k][m / 4]);
                        }
                    }
                }
            }
        }
        // SAFETY: 8 f16 are 16 readable bytes.
        let d_w = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.d.as_ptr().cast()) });
        for t in 0..T {
            let r = _mm256_mul_ps(_mm256_cvtepi32_ps(s1[t]), d_w);
            acc[t] = _mm256_fmadd_ps(r, _mm256_set1_ps(a[t].d), acc[t]);
        }
    }
    let mut out = [[0f32; ROWS]; T];
    for (out, acc) in out.iter_mut().zip(&acc) {
        // SAFETY: 8 writable f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), *acc) };
    }
    out
}
