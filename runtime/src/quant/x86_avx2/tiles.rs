//! Multi-row kernels of the legacy formats: 4 rows × 1 token for the decode matvec
//! (every 32-value format), and 4 rows × 4 tokens for prompt batches of Q4_0 and IQ4_NL
//! and for decode steps of several sequences (the 8-lane formats Q8_0, Q5_0 and Q4_1
//! take `gemm` for prompt batches, whose rounding is llama.cpp's batch kernel's).
//!
//! Several rows (and tokens) share the work that a lone dot repeats: each activation
//! block is loaded once for 4 rows, each weight block unpacked once for 4 tokens, and
//! the f16 scales converted once per block. What stays per (row, token) is the multiply
//! of the bytes and the float accumulation, and that part is kept exactly as in the
//! single-row `vec_dot` of the format (`legacy`): the same integer lanes (integer sums
//! are exact whichever way they are formed), the same f32 scale product, the same fused
//! multiply-add per block into the same accumulator shape, and the same horizontal sum
//! at the end. Every result is therefore bit for bit its `vec_dot`; the tests check that
//! on every format.
//!
//! The integer products: with AVX512-VNNI (`vpdpbusd`, u8 × i8 summed by 4 into i32) a
//! signed weight `w = u - bias` is fed as the unsigned `u`, and the accumulator starts at
//! `-bias * Σ a` over each 4-byte group, which the kernel forms once per token and block
//! (`vpdpbusd` of the bias bytes with the activations). Without VNNI the product is the
//! `maddubs`/`madd` pair on `u - bias` with the sign trick, as in `legacy`.

use std::arch::x86_64::*;

use crate::float16::f16;

use crate::quant::iq4_nl::BlockIQ4NL;
use crate::quant::iq_grids::KVALUES_IQ4NL;
use crate::quant::q4_0::BlockQ4_0;
use crate::quant::q4_1::BlockQ4_1;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::q8_1::BlockQ8_1;

use super::legacy::{hsum_f32x8, load32, q5_high_bits, unpack_nibbles};
use super::vnni::{dpbusd, VNNI};
use crate::quant::TILE;

/// Four f16 values as four f32 lanes (exact conversions, as `f16::to_f32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x4(v: [f16; 4]) -> __m128 {
    let bits = v.map(f16::to_bits);
    _mm_cvtph_ps(_mm_setr_epi16(
        bits[0] as i16,
        bits[1] as i16,
        bits[2] as i16,
        bits[3] as i16,
        0,
        0,
        0,
        0,
    ))
}

/// What a token's activation block contributes to every row of a tile: its bytes and,
/// for signed weights fed as unsigned bytes, the starting value `-bias * Σ a` of each
/// 4-byte group.
#[derive(Clone, Copy)]
pub(super) struct ActBytes {
    pub(super) a: __m256i,
    pub(super) start: __m256i,
}

impl ActBytes {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn new(qs: &[i8; 32], bias: u8) -> ActBytes {
        let a = load32(qs);
        let start = if VNNI && bias != 0 {
            _mm256_sub_epi32(
                _mm256_setzero_si256(),
                dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(bias as i8), a),
            )
        } else {
            _mm256_setzero_si256()
        };
        ActBytes { a, start }
    }

    /// `Σ_{j<4} (u - bias)[4k + j] * a[4k + j]` in lane `k` (`u <= 31 + bias`, `u - bias`
    /// and `a` in -128..=127 with `a != -128`): the lanes of the single-row dot.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(self, u: __m256i, bias: u8) -> __m256i {
        if VNNI {
            dpbusd(self.start, u, self.a)
        } else if bias == 0 {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, self.a), _mm256_set1_epi16(1))
        } else {
            let w = _mm256_sub_epi8(u, _mm256_set1_epi8(bias as i8));
            let (abs_w, signed_a) = (_mm256_sign_epi8(w, w), _mm256_sign_epi8(self.a, w));
            _mm256_madd_epi16(_mm256_maddubs_epi16(abs_w, signed_a), _mm256_set1_epi16(1))
        }
    }
}

/// A legacy weight block as the tile kernels see it: 32 quants as unsigned bytes `u`
/// with weight value `d * (u - BIAS)` (plus an offset `m` for Q4_1).
pub(super) trait LegacyBlock: Copy {
    const BIAS: u8;
    fn quants(&self) -> __m256i;
    fn d(&self) -> f16;
}

impl LegacyBlock for BlockQ8_0 {
    const BIAS: u8 = 0x80;
    #[inline(always)]
    fn quants(&self) -> __m256i {
        // SAFETY: the kernels calling this are compiled with AVX2 (module doc).
        unsafe { _mm256_xor_si256(load32(&self.qs), _mm256_set1_epi8(0x80u8 as i8)) }
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

impl LegacyBlock for BlockQ5_0 {
    const BIAS: u8 = 16;
    #[inline(always)]
    fn quants(&self) -> __m256i {
        // SAFETY: as above.
        unsafe { _mm256_or_si256(unpack_nibbles(&self.qs), q5_high_bits(&self.qh)) }
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

impl LegacyBlock for BlockQ4_0 {
    const BIAS: u8 = 8;
    #[inline(always)]
    fn quants(&self) -> __m256i {
        // SAFETY: as above.
        unsafe { unpack_nibbles(&self.qs) }
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

impl LegacyBlock for BlockQ4_1 {
    const BIAS: u8 = 0;
    #[inline(always)]
    fn quants(&self) -> __m256i {
        // SAFETY: as above.
        unsafe { unpack_nibbles(&self.qs) }
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

impl LegacyBlock for BlockIQ4NL {
    /// Levels are -127..=113: biased by 128 they are bytes.
    const BIAS: u8 = 128;
    #[inline(always)]
    fn quants(&self) -> __m256i {
        // SAFETY: as above; the table is 16 readable bytes.
        unsafe {
            let table = _mm_loadu_si128(IQ4NL_BIASED.as_ptr().cast());
            let bits = _mm_loadu_si128(self.qs.as_ptr().cast());
            let low = _mm_and_si128(bits, _mm_set1_epi8(0x0f));
            let high = _mm_and_si128(_mm_srli_epi16::<4>(bits), _mm_set1_epi8(0x0f));
            _mm256_set_m128i(_mm_shuffle_epi8(table, high), _mm_shuffle_epi8(table, low))
        }
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

/// The IQ4_NL levels plus 128, as unsigned bytes.
static IQ4NL_BIASED: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (KVALUES_IQ4NL[i] as i16 + 128) as u8;
        i += 1;
    }
    t
};

/// The Q8_0 / Q8_1 activation block fields the kernels read.
pub(super) trait ActBlock: Copy {
    fn qs(&self) -> &[i8; 32];
    fn d(&self) -> f16;
    /// Q8_1's `s` (`d * Σ a`); unused for Q8_0.
    fn s(&self) -> f16;
}

impl ActBlock for BlockQ8_0 {
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn s(&self) -> f16 {
        f16::ZERO
    }
}

impl ActBlock for BlockQ8_1 {
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn s(&self) -> f16 {
        self.s
    }
}

/// Checks the operands of a tile: `w` is 4 rows of `rb` blocks, token `t` starts at
/// `act[t * stride]` and has `rb` blocks. Returns `rb`.
fn tile_shape<W, A, const T: usize>(name: &str, w: &[W], act: &[A], stride: usize) -> usize {
    assert!(
        w.len().is_multiple_of(TILE),
        "{name} tile: {} weight blocks",
        w.len()
    );
    let rb = w.len() / TILE;
    assert!(
        (T == 1 || stride >= rb) && act.len() >= (T - 1) * stride + rb,
        "{name} tile: {} activation blocks, stride {stride}, {rb} per row",
        act.len()
    );
    rb
}

/// The 8-lane scheme of `legacy` (Q8_0, Q5_0, and Q4_1 with `OFFSETS`) for 4 rows and
/// `T` tokens: per (row, token) `acc += (d_w d_a) * lanes` per block and
/// `out = hsum(acc)` (+ the Q4_1 offset sum `Σ fma(m_w, s_a)`, a vector with a lane per
/// row), each weight block unpacked once for the `T` tokens. One token is the decode
/// matvec; 4 tokens a decode step of several sequences, whose columns must be what a
/// one-token step gives (prompt batches take `gemm`, llama.cpp's batch arithmetic).
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes_8<W: LegacyBlock, A: ActBlock, const OFFSETS: bool, const T: usize>(
    rows: [&[W]; TILE],
    tokens: [&[A]; T],
    offset_of: impl Fn(&W) -> f16,
) -> [[f32; T]; TILE] {
    let mut acc = [[_mm256_setzero_ps(); T]; TILE];
    // per token, a lane per row
    let mut offsets = [_mm_setzero_ps(); T];
    // d_w * d_a per row, stored so that each can be broadcast from memory
    let mut scales = [0f32; TILE];
    for k in 0..tokens[0].len() {
        let blocks: [&W; TILE] = rows.map(|row| &row[k]);
        let d_w = f16x4(blocks.map(|b| b.d()));
        let quants = blocks.map(|b| b.quants());
        let m = if OFFSETS {
            f16x4(blocks.map(&offset_of))
        } else {
            _mm_setzero_ps()
        };
        for t in 0..T {
            let a = &tokens[t][k];
            let bytes = ActBytes::new(a.qs(), W::BIAS);
            let d = _mm_mul_ps(d_w, _mm_set1_ps(a.d().to_f32()));
            // SAFETY: 4 writable f32.
            unsafe { _mm_storeu_ps(scales.as_mut_ptr(), d) };
            if OFFSETS {
                offsets[t] = _mm_fmadd_ps(m, _mm_set1_ps(a.s().to_f32()), offsets[t]);
            }
            for r in 0..TILE {
                let lanes = bytes.dot(quants[r], W::BIAS);
                acc[r][t] = _mm256_fmadd_ps(
                    _mm256_set1_ps(scales[r]),
                    _mm256_cvtepi32_ps(lanes),
                    acc[r][t],
                );
            }
        }
    }
    let off: [[f32; TILE]; T] = std::array::from_fn(|t| {
        let mut off = [0f32; TILE];
        // SAFETY: 4 writable f32.
        unsafe { _mm_storeu_ps(off.as_mut_ptr(), offsets[t]) };
        off
    });
    std::array::from_fn(|r| {
        std::array::from_fn(|t| {
            let sum = hsum_f32x8(acc[r][t]);
            if OFFSETS {
                sum + off[t][r]
            } else {
                sum
            }
        })
    })
}

/// [`lanes_8`] for the 4 × 4 tile `vec_dot_tile` asks for.
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_8_lanes<W: LegacyBlock, A: ActBlock, const OFFSETS: bool>(
    w: &[W],
    act: &[A],
    stride: usize,
    out: &mut [[f32; TILE]; TILE],
    offset_of: impl Fn(&W) -> f16,
) {
    let rb = tile_shape::<_, _, TILE>("8-lane", w, act, stride);
    let rows = std::array::from_fn(|r| &w[r * rb..(r + 1) * rb]);
    let tokens = std::array::from_fn(|t| &act[t * stride..t * stride + rb]);
    *out = lanes_8::<W, A, OFFSETS, TILE>(rows, tokens, offset_of);
}

/// Q8_0 rows · Q8_0 activations, 4 × 4, each bit for bit `vec_dot_q8_0_q8_0`.
pub fn tile_q8_0_q8_0(
    w: &[BlockQ8_0],
    act: &[BlockQ8_0],
    stride: usize,
    out: &mut [[f32; TILE]; TILE],
) {
    // SAFETY: this module is only built with AVX2, FMA and F16C enabled.
    unsafe { tile_8_lanes::<_, _, false>(w, act, stride, out, |_| f16::ZERO) }
}

/// Q5_0 rows · Q8_0 activations, 4 × 4, each bit for bit `vec_dot_q5_0_q8_0`.
pub fn tile_q5_0_q8_0(
    w: &[BlockQ5_0],
    act: &[BlockQ8_0],
    stride: usize,
    out: &mut [[f32; TILE]; TILE],
) {
    // SAFETY: as above.
    unsafe { tile_8_lanes::<_, _, false>(w, act, stride, out, |_| f16::ZERO) }
}

/// Q4_1 rows · Q8_1 activations, 4 × 4, each bit for bit `vec_dot_q4_1_q8_1`.
pub fn tile_q4_1_q8_1(
    w: &[BlockQ4_1],
    act: &[BlockQ8_1],
    stride: usize,
    out: &mut [[f32; TILE]; TILE],
) {
    // SAFETY: as above.
    unsafe { tile_8_lanes::<_, _, true>(w, act, stride, out, |b| b.m) }
}

/// `out[r] = dot(row r, act)` for the rows of `w` (`act.len()` blocks each), 4 rows per
/// call of `quad`, the rest through `one`. The 4 rows of a call are not neighbours: the
/// rows are cut into 4 equal runs and the `j`-th row of a call walks run `j`, so that
/// memory sees 4 sequential streams. (Rows taken 4 by 4 make 4 streams that jump at
/// every call; the hardware prefetcher loses them, and from memory the per-block FMA
/// kernel then ran at 7.5 GB/s per core instead of 18.)
#[inline(always)]
fn by_runs<W>(
    w: &[W],
    rb: usize,
    out: &mut [f32],
    mut quad: impl FnMut([&[W]; TILE]) -> [f32; TILE],
    mut one: impl FnMut(&[W]) -> f32,
) {
    assert_eq!(
        w.len(),
        out.len() * rb,
        "rows: {} weight blocks for {} rows of {rb}",
        w.len(),
        out.len()
    );
    if rb == 0 {
        out.fill(0.0);
        return;
    }
    let run = out.len() / TILE;
    for i in 0..run {
        let dots = quad(std::array::from_fn(|j| &w[(j * run + i) * rb..][..rb]));
        for (j, v) in dots.into_iter().enumerate() {
            out[j * run + i] = v;
        }
    }
    for (o, row) in out[TILE * run..]
        .iter_mut()
        .zip(w[TILE * run * rb..].chunks_exact(rb))
    {
        *o = one(row);
    }
}

/// Consecutive rows · one token with the 8-lane scheme, each `out[r]` bit for bit the
/// format's one-row dot (`one`), 4 rows at a time: their accumulations are 4 independent
/// FMA chains, where one row alone waits on one.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_8_lanes<W: LegacyBlock, A: ActBlock, const OFFSETS: bool>(
    w: &[W],
    act: &[A],
    out: &mut [f32],
    offset_of: impl Fn(&W) -> f16 + Copy,
    one: impl Fn(&[W], &[A]) -> f32,
) {
    by_runs(
        w,
        act.len(),
        out,
        |rows| lanes_8::<W, A, OFFSETS, 1>(rows, [act], offset_of).map(|[v]| v),
        |row| one(row, act),
    )
}

/// Q4_0 rows · Q8_0 activations, 4 × 4, bit for bit `vec_dot_q4_0_q8_0`: each block's
/// lanes are summed to one integer and added with `fma(sumi, d_w d_a, acc)`, here for the
/// 4 tokens of a row at once.
pub fn tile_q4_0_q8_0(
    w: &[BlockQ4_0],
    act: &[BlockQ8_0],
    stride: usize,
    out: &mut [[f32; TILE]; TILE],
) {
    // SAFETY: as above.
    unsafe { tile_block_fma(w, act, stride, out) }
}

/// IQ4_NL rows · Q8_0 activations, 4 × 4, bit for bit `vec_dot_iq4_nl_q8_0`: the same
/// per-block FMA as Q4_0 (both are llama.cpp's repacked 8-row kernels).
pub fn tile_iq4_nl_q8_0(
    w: &[BlockIQ4NL],
    act: &[BlockQ8_0],
    stride: usize,
    out: &mut [[f32; TILE]; TILE],
) {
    // SAFETY: as above.
    unsafe { tile_block_fma(w, act, stride, out) }
}

/// One `fma(sumi, d_w d_a, acc)` per block and (row, token), the 4 tokens of a row in
/// one vector.
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_block_fma<W: LegacyBlock>(
    w: &[W],
    act: &[BlockQ8_0],
    stride: usize,
    out: &mut [[f32; TILE]; TILE],
) {
    let rb = tile_shape::<_, _, TILE>("per-block FMA", w, act, stride);
    let mut acc = [_mm_setzero_ps(); TILE];
    for k in 0..rb {
        let a: [&BlockQ8_0; TILE] = std::array::from_fn(|t| &act[t * stride + k]);
        let bytes = a.map(|a| ActBytes::new(&a.qs, W::BIAS));
        let d_a = f16x4(a.map(|a| a.d));
        let blocks: [&W; TILE] = std::array::from_fn(|r| &w[r * rb + k]);
        let d_w = f16x4(blocks.map(|b| b.d()));
        for r in 0..TILE {
            let u = blocks[r].quants();
            let l = bytes.map(|b| b.dot(u, W::BIAS));
            // the 4 tokens' lane totals in one vector (exact integer sums)
            let pairs =
                _mm256_hadd_epi32(_mm256_hadd_epi32(l[0], l[1]), _mm256_hadd_epi32(l[2], l[3]));
            let sumi = _mm_add_epi32(
                _mm256_castsi256_si128(pairs),
                _mm256_extracti128_si256::<1>(pairs),
            );
            let d_r = _mm_permutevar_ps(d_w, _mm_set1_epi32(r as i32));
            acc[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(sumi), _mm_mul_ps(d_r, d_a), acc[r]);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: 4 writable f32.
        unsafe { _mm_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// One row · one token with one `fma(sumi, d_w d_a, acc)` per block (Q4_0, IQ4_NL: the
/// arithmetic of llama.cpp's 8-row repacked kernels). The FMA chain is sequential by
/// definition; everything else is done 4 blocks at a time: their lane sums are reduced
/// side by side into 4 exact i32 sums, and their 8 f16 scales converted at once.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_block_fma<W: LegacyBlock>(row: &[W], act: &[BlockQ8_0]) -> f32 {
    assert_eq!(
        row.len(),
        act.len(),
        "per-block FMA dot: block counts differ"
    );
    let lanes = |w: &W, a: &BlockQ8_0| ActBytes::new(&a.qs, W::BIAS).dot(w.quants(), W::BIAS);
    let mut acc = 0f32;
    let quads = row.len() / 4;
    for (w, a) in row.chunks_exact(4).zip(act.chunks_exact(4)) {
        let h = _mm256_hadd_epi32(
            _mm256_hadd_epi32(lanes(&w[0], &a[0]), lanes(&w[1], &a[1])),
            _mm256_hadd_epi32(lanes(&w[2], &a[2]), lanes(&w[3], &a[3])),
        );
        let sums = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
        let bits: [f16; 8] = std::array::from_fn(|k| if k < 4 { w[k].d() } else { a[k - 4].d });
        // SAFETY: 8 f16 are 16 readable bytes; unaligned load.
        let wide = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(bits.as_ptr().cast()) });
        let scales = _mm_mul_ps(
            _mm256_castps256_ps128(wide),
            _mm256_extractf128_ps::<1>(wide),
        );
        let (mut s, mut d) = ([0f32; 4], [0f32; 4]);
        // SAFETY: 4 writable f32 each; unaligned stores.
        unsafe {
            _mm_storeu_ps(s.as_mut_ptr(), _mm_cvtepi32_ps(sums));
            _mm_storeu_ps(d.as_mut_ptr(), scales);
        }
        for (s, d) in s.iter().zip(d) {
            acc = s.mul_add(d, acc);
        }
    }
    for (w, a) in row[4 * quads..].iter().zip(&act[4 * quads..]) {
        let l = lanes(w, a);
        let quad = _mm_add_epi32(_mm256_castsi256_si128(l), _mm256_extracti128_si256::<1>(l));
        let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
        let sumi = _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32::<0b01>(pair)));
        acc = (sumi as f32).mul_add(w.d().to_f32() * a.d.to_f32(), acc);
    }
    acc
}

/// Consecutive rows · one token, each `out[r]` bit for bit [`dot_block_fma`] of row `r`:
/// 4 rows at a time (from 4 runs, see [`by_runs`]) with their FMA chains in the 4 lanes
/// of one vector, so the chain's latency (4 cycles per block, which bounds a lone row at
/// ~12 GB/s per core) is shared by 4 rows. Per block: each row's lanes by `dot`, the 4
/// rows' lane totals by two rounds of `hadd` (exact integer sums), the 4 scales
/// `d_w d_a` in one multiply.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_block_fma<W: LegacyBlock>(w: &[W], act: &[BlockQ8_0], out: &mut [f32]) {
    let quad = |rows: [&[W]; TILE]| {
        let mut acc = _mm_setzero_ps();
        for (k, a) in act.iter().enumerate() {
            let bytes = ActBytes::new(&a.qs, W::BIAS);
            let blocks: [&W; TILE] = rows.map(|row| &row[k]);
            let l = blocks.map(|b| bytes.dot(b.quants(), W::BIAS));
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(l[0], l[1]), _mm256_hadd_epi32(l[2], l[3]));
            let sumi = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
            let scales = _mm_mul_ps(f16x4(blocks.map(|b| b.d())), _mm_set1_ps(a.d.to_f32()));
            acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sumi), scales, acc);
        }
        let mut dots = [0f32; TILE];
        // SAFETY: 4 writable f32.
        unsafe { _mm_storeu_ps(dots.as_mut_ptr(), acc) };
        dots
    };
    by_runs(w, act.len(), out, quad, |row| dot_block_fma(row, act))
}

/// Q8_0 rows · Q8_0 activations (see [`rows_8_lanes`]).
pub fn rows_q8_0_q8_0(w: &[BlockQ8_0], act: &[BlockQ8_0], out: &mut [f32]) {
    // SAFETY: this module is only built with AVX2, FMA and F16C enabled.
    unsafe {
        rows_8_lanes::<_, _, false>(w, act, out, |_| f16::ZERO, super::legacy::vec_dot_q8_0_q8_0)
    }
}

/// Q5_0 rows · Q8_0 activations (see [`rows_8_lanes`]).
pub fn rows_q5_0_q8_0(w: &[BlockQ5_0], act: &[BlockQ8_0], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe {
        rows_8_lanes::<_, _, false>(w, act, out, |_| f16::ZERO, super::legacy::vec_dot_q5_0_q8_0)
    }
}

/// Q4_1 rows · Q8_1 activations (see [`rows_8_lanes`]).
pub fn rows_q4_1_q8_1(w: &[BlockQ4_1], act: &[BlockQ8_1], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { rows_8_lanes::<_, _, true>(w, act, out, |b| b.m, super::legacy::vec_dot_q4_1_q8_1) }
}

/// Q4_0 rows · Q8_0 activations (see [`rows_block_fma`]).
pub fn rows_q4_0_q8_0(w: &[BlockQ4_0], act: &[BlockQ8_0], out: &mut [f32]) {
    // SAFETY: this module is only built with AVX2, FMA and F16C enabled.
    unsafe { rows_block_fma(w, act, out) }
}

/// IQ4_NL rows · Q8_0 activations (see [`rows_block_fma`]).
pub fn rows_iq4_nl_q8_0(w: &[BlockIQ4NL], act: &[BlockQ8_0], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { rows_block_fma(w, act, out) }
}

/// Q4_0 row · Q8_0 activations (see [`dot_block_fma`]).
pub fn vec_dot_q4_0_q8_0(row: &[BlockQ4_0], act: &[BlockQ8_0]) -> f32 {
    // SAFETY: this module is only built with AVX2, FMA and F16C enabled.
    unsafe { dot_block_fma(row, act) }
}

/// IQ4_NL row · Q8_0 activations (see [`dot_block_fma`]).
pub fn vec_dot_iq4_nl_q8_0(row: &[BlockIQ4NL], act: &[BlockQ8_0]) -> f32 {
    // SAFETY: as above.
    unsafe { dot_block_fma(row, act) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;
    use crate::quant::{q4_0::Q4_0, q4_1::Q4_1, q5_0::Q5_0, q8_0::Q8_0};
    use crate::quant::{ActType, WeightType};

    /// Every element of a tile over golden weight blocks (4 rows of `rb` blocks cycled
    /// with row-dependent strides) and random activations against `W::vec_dot`, bit for
    /// bit, for a few widths and an activation stride wider than a row.
    /// Goes through `W::vec_dot_tile`, so the format's override is checked as well.
    fn check<W: WeightType>() {
        let (blocks, _) = testing::golden::<W>();
        for rb in [1, 2, 7, 18, 48] {
            let w: Vec<W::Block> = (0..TILE * rb)
                .map(|i| blocks[(i * 5 + i / rb) % blocks.len()])
                .collect();
            let stride = rb + 3;
            let cols = stride * W::Act::BLOCK_ELEMS;
            let x = testing::activations(TILE * cols, rb as u64);
            let mut act = vec![Default::default(); TILE * stride];
            W::Act::quantize(&x, &mut act);
            let mut out = [[f32::NAN; TILE]; TILE];
            W::vec_dot_tile(&w, &act, stride, &mut out);
            for r in 0..TILE {
                for t in 0..TILE {
                    let want =
                        W::vec_dot(&w[r * rb..(r + 1) * rb], &act[t * stride..t * stride + rb]);
                    assert_eq!(
                        out[r][t].to_bits(),
                        want.to_bits(),
                        "{} rb {rb} r{r} t{t}: {} vs {want}",
                        W::NAME,
                        out[r][t]
                    );
                }
            }
        }
    }

    /// `vec_dot_rows` over 1..=9 rows (whole quads and leftovers) is `vec_dot` per row,
    /// bit for bit.
    fn check_rows<W: WeightType>() {
        let (blocks, _) = testing::golden::<W>();
        for rb in [1, 3, 18, 96] {
            for rows in 1..=9 {
                let w: Vec<W::Block> = (0..rows * rb)
                    .map(|i| blocks[(i * 7 + i / rb) % blocks.len()])
                    .collect();
                let x = testing::activations(rb * W::Act::BLOCK_ELEMS, (rb * rows) as u64);
                let mut act = vec![Default::default(); rb];
                W::Act::quantize(&x, &mut act);
                let mut out = vec![f32::NAN; rows];
                W::vec_dot_rows(&w, &act, &mut out);
                for (r, got) in out.iter().enumerate() {
                    let want = W::vec_dot(&w[r * rb..(r + 1) * rb], &act);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{} rb {rb} rows {rows} r{r}",
                        W::NAME
                    );
                }
            }
        }
    }

    #[test]
    fn eight_lane_tiles_are_vec_dots() {
        check::<Q8_0>();
        check::<Q5_0>();
        check::<Q4_1>();
    }

    #[test]
    fn q8_0_rows_are_vec_dots() {
        check_rows::<Q8_0>();
    }

    #[test]
    fn q5_0_rows_are_vec_dots() {
        check_rows::<Q5_0>();
    }

    #[test]
    fn q4_1_rows_are_vec_dots() {
        check_rows::<Q4_1>();
    }

    #[test]
    fn q4_0_rows_are_vec_dots() {
        check_rows::<Q4_0>();
    }

    #[test]
    fn iq4_nl_rows_are_vec_dots() {
        check_rows::<crate::quant::iq4_nl::IQ4_NL>();
    }

    #[test]
    fn q4_0_tile_is_vec_dot() {
        check::<Q4_0>();
    }

    #[test]
    fn iq4_nl_tile_is_vec_dot() {
        check::<crate::quant::iq4_nl::IQ4_NL>();
    }
}
