//! AVX2 + FMA + F16C kernel of the 8-row-interleaved 4-bit formats
//! ([`crate::quant::q4_x8`]: `Q4_0X8`, `IQ4_NLX8`): groups of 8 rows times 1 or 4
//! tokens, one row per 32-bit lane throughout.
//!
//! Per block, each 32-byte load holds 4 bytes of every row; their low nibbles are 4
//! weights of the block's first half, their high nibbles the same positions of the
//! second half. The 4 activation bytes each multiplies are broadcast to all lanes, and
//! `vpdpbusd` (u8 × i8, 4 products per lane; `maddubs` + `madd` without AVX512-VNNI)
//! sums each row's products in its lane. The weights go in as unsigned bytes with an
//! offset, `level + B`, and each lane's sum starts at `-B Σ a` (the block's activation
//! sum, computed once per token for all groups), so the integer total is exactly
//! `Σ level · a`:
//!
//! - Q4_0: the nibble itself (`level = q - 8`, `B = 8`).
//! - IQ4_NL with VNNI: a `pshufb` of the level table plus 128 (`B = 128`; the levels are
//!   -127..113). Without VNNI, `maddubs` would saturate such pairs (2 · 241 · 127), so
//!   the table gives the signed levels and the product is `|level| · (a · sign(level))`
//!   (`B = 0`), each pair at most 2 · 127 · 127.
//!
//! Then `acc = fma(total, d_w d_a, acc)` per lane, block after block: the plain format's
//! arithmetic per row, so every lane equals its row's `vec_dot` to the bit.

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::quant::iq_grids::KVALUES_IQ4NL;
use crate::quant::q4_x8::{BlockX8, Nibbles, ROWS};
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::x8;

use super::vnni::{broadcast4, dpbusd, VNNI};

/// The offset `B` of the unsigned weight bytes (see the module doc).
const fn offset<P: Nibbles>() -> i32 {
    match (P::TABLE, VNNI) {
        (false, _) => 8,
        (true, true) => 128,
        (true, false) => 0,
    }
}

thread_local! {
    /// `-B Σ a` of every activation block of the current call.
    static START: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

/// Rows of the consecutive 8-row `groups` (`act_row` blocks each) times tokens
/// `0..n_tokens` of `act` (token `t`'s blocks at `act[t * act_row..]`): row `i`'s dot
/// with token `t` goes to `out[t * n_rows + i]`, bit for bit
/// [`crate::quant::q4_x8::vec_dot_x8_ref`].
pub fn groups_dots<P: Nibbles>(
    groups: &[BlockX8],
    act: &[BlockQ8_0],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    let n_rows = x8::check_groups(
        P::X8_NAME,
        groups.len(),
        act.len(),
        act_row,
        n_tokens,
        out.len(),
    );
    START.with_borrow_mut(|start| {
        let b = offset::<P>();
        start.clear();
        start.extend(
            act[..n_tokens * act_row]
                .iter()
                .map(|a| -b * a.qs.iter().map(|&q| q as i32).sum::<i32>()),
        );
        let mut put = |t: usize, g: usize, dots: &[f32; ROWS]| {
            out[t * n_rows + g * ROWS..][..ROWS].copy_from_slice(dots);
        };
        for (g, group) in groups.chunks_exact(act_row).enumerate() {
            let mut t = 0;
            while t + 4 <= n_tokens {
                let tokens: [usize; 4] = std::array::from_fn(|i| t + i);
                // SAFETY: this module is compiled only with AVX2, FMA and F16C enabled.
                let sums = unsafe { dot::<P, 4>(group, act, start, act_row, tokens) };
                for (i, s) in sums.iter().enumerate() {
                    put(t + i, g, s);
                }
                t += 4;
            }
            for t in t..n_tokens {
                // SAFETY: as above.
                let [s] = unsafe { dot::<P, 1>(group, act, start, act_row, [t]) };
                put(t, g, &s);
            }
        }
    });
}

/// `acc` plus the lane-wise dot of weight bytes `w` (offset levels, or signed levels for
/// IQ4_NL without VNNI) with activation bytes `a`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn products<P: Nibbles>(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    if offset::<P>() == 0 {
        dpbusd(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
    } else {
        dpbusd(acc, w, a)
    }
}

/// The dots of one group's 8 rows with `T` tokens, one `[f32; 8]` per token.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot<P: Nibbles, const T: usize>(
    group: &[BlockX8],
    act: &[BlockQ8_0],
    start: &[i32],
    act_row: usize,
    tokens: [usize; T],
) -> [[f32; ROWS]; T] {
    let low4 = _mm256_set1_epi8(0x0f);
    let table = if P::TABLE {
        let shift = if offset::<P>() == 128 { 128 } else { 0 };
        let bytes: [u8; 16] = KVALUES_IQ4NL.map(|v| (v as i32 + shift) as u8);
        // SAFETY: 16 readable bytes.
        _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) })
    } else {
        _mm256_setzero_si256()
    };
    // One token: the 4 loads' products in 4 chains, so that the dot's latency is not the
    // limit; four tokens are four chains already.
    let chains = if T == 1 { 4 } else { 1 };
    let mut sum = [_mm256_setzero_ps(); T];
    for (i, b) in group.iter().enumerate() {
        let acts: [&BlockQ8_0; T] = tokens.map(|t| &act[t * act_row + i]);
        let mut acc = [[_mm256_setzero_si256(); 4]; T];
        for (acc, &t) in acc.iter_mut().zip(&tokens) {
            acc[0] = _mm256_set1_epi32(start[t * act_row + i]);
        }
        for k in 0..4 {
            let bits: &[u8; 32] = b.qs[32 * k..32 * k + 32].try_into().expect("32 bytes");
            // SAFETY: 32 readable bytes; unaligned load.
            let bits = unsafe { _mm256_loadu_si256(bits.as_ptr().cast()) };
            let mut q_lo = _mm256_and_si256(bits, low4);
            let mut q_hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), low4);
            if P::TABLE {
                q_lo = _mm256_shuffle_epi8(table, q_lo);
                q_hi = _mm256_shuffle_epi8(table, q_hi);
            }
            let c = k % chains;
            for (acc, a) in acc.iter_mut().zip(&acts) {
                acc[c] = products::<P>(acc[c], q_lo, broadcast4(&a.qs, 4 * k));
                acc[c] = products::<P>(acc[c], q_hi, broadcast4(&a.qs, 16 + 4 * k));
            }
        }
        // SAFETY: 8 f16 are 16 readable bytes.
        let d_w = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.d.as_ptr().cast()) });
        for ((sum, acc), a) in sum.iter_mut().zip(&acc).zip(&acts) {
            let total = if chains == 4 {
                _mm256_add_epi32(
                    _mm256_add_epi32(acc[0], acc[1]),
                    _mm256_add_epi32(acc[2], acc[3]),
                )
            } else {
                acc[0]
            };
            let d = _mm256_mul_ps(d_w, _mm256_set1_ps(a.d.to_f32()));
            *sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), d, *sum);
        }
    }
    sum.map(|s| {
        let mut out = [0f32; ROWS];
        // SAFETY: 8 writable f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out
    })
}
