//! Prompt-batch GEMM for F16 weights, every result bit for bit llamafile's tinyBLAS dot
//! ([`crate::quant::f16::sgemm_dot_ref`]), which is what llama.cpp computes for F16
//! batches: per (row, token) one accumulator of [`LANES`] f32 lanes, FMA over the row in
//! order, then tinyBLAS's `hsum` tree.
//!
//! The per-(row, token) arithmetic leaves the loop order free, so this is arranged for
//! throughput the way tinyBLAS is: tiles of [`ROWS`] rows × [`TOKENS`] tokens keep their
//! accumulators in registers, so each loaded vector feeds several FMAs; and the
//! activations are widened to f32 once per matmul (exact: they are f16 values), not once
//! per row that reads them. Threads take chunks of rows, as the other batch paths do.

use std::arch::x86_64::*;

use crate::float16::f16;
use crate::matmul::{rows_per_chunk, MATMUL_TASK_BYTES};
use crate::pool::{DisjointOut, Pool};
use crate::quant::f16::F16;

/// f32 lanes of one accumulator: tinyBLAS's vector width on this tier.
#[cfg(target_feature = "avx512f")]
pub const LANES: usize = 16;
#[cfg(not(target_feature = "avx512f"))]
pub const LANES: usize = 8;

/// Rows and tokens of a register tile: 4 × 6 = 24 of AVX-512's 32 registers hold the
/// accumulators; AVX2's 16 hold 2 × 4.
#[cfg(target_feature = "avx512f")]
const ROWS: usize = 4;
#[cfg(target_feature = "avx512f")]
const TOKENS: usize = 6;
#[cfg(not(target_feature = "avx512f"))]
const ROWS: usize = 2;
#[cfg(not(target_feature = "avx512f"))]
const TOKENS: usize = 4;

/// Tokens whose widened activations a thread walks its rows with: 96 tokens of a
/// 9216-wide row are 3.4 MiB, so the block stays in L2 on the machines here.
const TOKEN_BLOCK: usize = 96;

/// `out[t * rows + r]` = tinyBLAS's dot of weight row `r` with token `t`'s activations
/// (`act`, `n_tokens` rows of f16), for rows a whole number of [`LANES`] wide.
pub fn gemm(pool: &Pool, w: &[f16], act: &[f16], n_tokens: usize, out: &mut [f32]) {
    let k = act.len() / n_tokens;
    let rows = out.len() / n_tokens;
    assert!(
        k.is_multiple_of(LANES) && w.len() == rows * k,
        "F16 GEMM: {} weights for {rows} rows of {k}",
        w.len()
    );
    let act: Vec<f32> = act.iter().map(|a| a.to_f32()).collect();
    let row_bytes = k * 2;
    let chunk = rows_per_chunk::<F16>(rows, row_bytes, pool.n_threads())
        .min((MATMUL_TASK_BYTES / row_bytes).max(1))
        .next_multiple_of(ROWS);
    let n_chunks = rows.div_ceil(chunk);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = DisjointOut::new(out);
    pool.run(&|_, _| loop {
        let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if c >= n_chunks {
            break;
        }
        let row_range = c * chunk..((c + 1) * chunk).min(rows);
        for t0 in (0..n_tokens).step_by(TOKEN_BLOCK) {
            let t_end = (t0 + TOKEN_BLOCK).min(n_tokens);
            let mut r = row_range.start;
            while r < row_range.end {
                let n_r = ROWS.min(row_range.end - r);
                let mut t = t0;
                while t < t_end {
                    let n_t = TOKENS.min(t_end - t);
                    let mut dots = [[0f32; TOKENS]; ROWS];
                    if n_r == ROWS {
                        let wr: [&[f16]; ROWS] = std::array::from_fn(|i| &w[(r + i) * k..][..k]);
                        let at = |j: usize| &act[(t + j) * k..][..k];
                        dots = partial_tile(wr, at, n_t);
                    } else {
                        for (i, d) in dots.iter_mut().enumerate().take(n_r) {
                            let row = &w[(r + i) * k..][..k];
                            for (j, v) in d.iter_mut().enumerate().take(n_t) {
                                *v = dot_f32_act(row, &act[(t + j) * k..][..k]);
                            }
                        }
                    }
                    for (i, d) in dots.iter().enumerate().take(n_r) {
                        for (j, &v) in d.iter().enumerate().take(n_t) {
                            // SAFETY: row chunk `c` is claimed by this thread alone, so
                            // (token, row) for rows in the chunk is written by no other.
                            unsafe { out.write((t + j) * rows + r + i, v) };
                        }
                    }
                    t += n_t;
                }
                r += n_r;
            }
        }
    });
}

/// [`sgemm_dot_ref`] with the activations already widened.
fn dot_f32_act(row: &[f16], act: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (w, a) in row.chunks_exact(LANES).zip(act.chunks_exact(LANES)) {
        for ((s, w), a) in acc.iter_mut().zip(w).zip(a) {
            *s += w.to_f32() * a;
        }
    }
    crate::ops::reduce_lanes_softmax(&acc)
}

/// The dots of [`ROWS`] rows with `n_t` (1 to [`TOKENS`]) tokens, `act(j)` token `j`'s
/// activations: one register tile of that many tokens.
fn partial_tile<'a>(
    w: [&[f16]; ROWS],
    act: impl Fn(usize) -> &'a [f32],
    n_t: usize,
) -> [[f32; TOKENS]; ROWS] {
    fn widen<const T: usize>(d: [[f32; T]; ROWS]) -> [[f32; TOKENS]; ROWS] {
        d.map(|row| std::array::from_fn(|j| if j < T { row[j] } else { 0.0 }))
    }
    match n_t {
        1 => widen(tile::<1>(w, [act(0)])),
        2 => widen(tile::<2>(w, std::array::from_fn(&act))),
        3 => widen(tile::<3>(w, std::array::from_fn(&act))),
        4 => widen(tile::<4>(w, std::array::from_fn(&act))),
        #[cfg(target_feature = "avx512f")]
        5 => widen(tile::<5>(w, std::array::from_fn(&act))),
        #[cfg(target_feature = "avx512f")]
        6 => widen(tile::<6>(w, std::array::from_fn(&act))),
        _ => unreachable!("{n_t} tokens in a tile of {TOKENS}"),
    }
}

/// The dots of a [`ROWS`] × `T` tile.
#[cfg(target_feature = "avx512f")]
fn tile<const T: usize>(w: [&[f16]; ROWS], a: [&[f32]; T]) -> [[f32; T]; ROWS] {
    // SAFETY: the build enables AVX-512F (cfg above).
    unsafe { tile_impl(w, a) }
}

#[cfg(target_feature = "avx512f")]
#[target_feature(enable = "avx512f")]
fn tile_impl<const T: usize>(w: [&[f16]; ROWS], a: [&[f32]; T]) -> [[f32; T]; ROWS] {
    let k = w[0].len();
    let mut acc = [[_mm512_setzero_ps(); T]; ROWS];
    for l in (0..k).step_by(LANES) {
        // SAFETY: l + 16 <= k, the length of every row and token slice; unaligned loads.
        let wv: [__m512; ROWS] = std::array::from_fn(|i| unsafe {
            _mm512_cvtph_ps(_mm256_loadu_si256(w[i].as_ptr().add(l).cast()))
        });
        for (j, a) in a.iter().enumerate() {
            // SAFETY: as above.
            let av = unsafe { _mm512_loadu_ps(a.as_ptr().add(l)) };
            for (acc, wv) in acc.iter_mut().zip(&wv) {
                acc[j] = _mm512_fmadd_ps(*wv, av, acc[j]);
            }
        }
    }
    acc.map(|row| {
        row.map(|v| {
            let mut lanes = [0f32; LANES];
            // SAFETY: 16 f32 of room; unaligned store.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
            crate::ops::reduce_lanes_softmax(&lanes)
        })
    })
}

#[cfg(not(target_feature = "avx512f"))]
fn tile<const T: usize>(w: [&[f16]; ROWS], a: [&[f32]; T]) -> [[f32; T]; ROWS] {
    // SAFETY: this module is only built with avx2, fma, f16c enabled (see `super`).
    unsafe { tile_impl(w, a) }
}

#[cfg(not(target_feature = "avx512f"))]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_impl<const T: usize>(w: [&[f16]; ROWS], a: [&[f32]; T]) -> [[f32; T]; ROWS] {
    let k = w[0].len();
    let mut acc = [[_mm256_setzero_ps(); T]; ROWS];
    for l in (0..k).step_by(LANES) {
        // SAFETY: l + 8 <= k, the length of every row and token slice; unaligned loads.
        let wv: [__m256; ROWS] = std::array::from_fn(|i| unsafe {
            _mm256_cvtph_ps(_mm_loadu_si128(w[i].as_ptr().add(l).cast()))
        });
        for (j, a) in a.iter().enumerate() {
            // SAFETY: as above.
            let av = unsafe { _mm256_loadu_ps(a.as_ptr().add(l)) };
            for (acc, wv) in acc.iter_mut().zip(&wv) {
                acc[j] = _mm256_fmadd_ps(*wv, av, acc[j]);
            }
        }
    }
    acc.map(|row| row.map(|v| super::legacy::hsum_f32x8(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::f16::sgemm_dot_ref;

    #[test]
    fn every_result_is_tinyblas_dot() {
        // Rows and tokens that leave partial tiles; values over many binades.
        let (rows, k, n) = (4 * ROWS + 3, 9 * LANES, 2 * TOKENS + 1);
        let val = |i: usize| {
            f16::from_f32(((i * 7919 % 1013) as f32 - 506.0) * 1.37f32.powi((i % 23) as i32 - 11))
        };
        let w: Vec<f16> = (0..rows * k).map(val).collect();
        let act: Vec<f16> = (0..n * k).map(|i| val(i * 31 + 5)).collect();
        for threads in [1, 2] {
            let pool = Pool::new(threads);
            let mut out = vec![f32::NAN; n * rows];
            gemm(&pool, &w, &act, n, &mut out);
            for t in 0..n {
                for r in 0..rows {
                    let want = sgemm_dot_ref(&w[r * k..][..k], &act[t * k..][..k], LANES);
                    let got = out[t * rows + r];
                    assert_eq!(got.to_bits(), want.to_bits(), "row {r} token {t}");
                }
            }
        }
    }
}
