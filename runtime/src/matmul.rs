//! Weight matrix times activations, for any weight format: `matvec` for decode (one
//! token), `matmul` for prefill batches, and `quantize_act` to turn the f32 inputs into
//! the activation format the weights pair with, once per matmul input.
//!
//! Weights are row-major: row `r` is `cols / W::BLOCK_ELEMS` consecutive blocks, and
//! output `r` is that row's dot with the activations. Work is split across the pool by
//! rows; every output element is one `W::vec_dot`, so the results do not depend on the
//! number of threads or on the tiling.

use crate::pool::{DisjointOut, Pool};
use crate::quant::{ActBlock, ActType, WeightType, BATCH_TOKENS, TILE};

/// Bytes of weights a thread should get per claimed chunk of rows at least: enough that
/// claiming (one atomic add) is noise next to streaming the rows.
const MIN_CHUNK_BYTES: usize = 16 << 10;

/// Chunks per thread a matrix is cut into at most, so that threads that get slower chunks
/// (or lose their core for a while on a shared machine) can be compensated.
const CHUNKS_PER_THREAD: usize = 8;

/// Tokens whose dots with one weight row are taken while the row is in L1: each row is
/// read from memory once per `TOKEN_TILE` tokens.
const TOKEN_TILE: usize = 16;

/// Weight bytes of the rows one matmul task covers at most: the rows stay in L2 while the
/// task walks over the token tiles.
pub(crate) const MATMUL_TASK_BYTES: usize = 256 << 10;

/// Weight blocks per row for a row of activations of `act_blocks` blocks.
fn row_blocks<W: WeightType>(act_blocks: usize) -> usize {
    let cols = act_blocks * W::Act::BLOCK_ELEMS;
    assert!(
        cols.is_multiple_of(W::BLOCK_ELEMS),
        "{}: {cols} columns is not a whole number of blocks",
        W::NAME
    );
    cols / W::BLOCK_ELEMS
}

/// Rows per chunk for a matrix of `rows` rows of `row_bytes` bytes on `n_threads` threads:
/// whole row groups of `W`.
pub(crate) fn rows_per_chunk<W: WeightType>(
    rows: usize,
    row_bytes: usize,
    n_threads: usize,
) -> usize {
    let balanced = rows.div_ceil(n_threads * CHUNKS_PER_THREAD);
    let min_rows = MIN_CHUNK_BYTES.div_ceil(row_bytes.max(1));
    balanced.max(min_rows).max(1).next_multiple_of(W::ROW_GROUP)
}

/// Blocks of `rows` rows of `rb` blocks each (`rows` a whole number of row groups).
fn blocks_of_rows<W: WeightType>(rows: usize, rb: usize) -> usize {
    debug_assert!(rows.is_multiple_of(W::ROW_GROUP));
    rows / W::ROW_GROUP * rb
}

/// Checks that `w` holds `rows` rows of `rb` blocks for a `what` of format `W`.
fn check_weights<W: WeightType>(what: &str, w_len: usize, rows: usize, rb: usize) {
    assert!(
        rows.is_multiple_of(W::ROW_GROUP),
        "{} {what}: {rows} rows is not a whole number of groups of {}",
        W::NAME,
        W::ROW_GROUP
    );
    assert_eq!(
        w_len,
        blocks_of_rows::<W>(rows, rb),
        "{} {what}: {w_len} weight blocks for {rows} rows of {rb}",
        W::NAME,
    );
}

/// `W (rows × cols) @ x -> out (rows)`. `w` holds `rows` rows of blocks, `act` is `x`
/// quantized to `W::Act` (`cols / Act::BLOCK_ELEMS` blocks), `out.len()` is `rows`.
pub fn matvec<W: WeightType>(pool: &Pool, w: &[W::Block], act: &[ActBlock<W>], out: &mut [f32]) {
    let rows = out.len();
    let rb = row_blocks::<W>(act.len());
    check_weights::<W>("matvec", w.len(), rows, rb);
    if rb == 0 {
        out.fill(0.0);
        return;
    }
    let row_bytes = rb * size_of::<W::Block>() / W::ROW_GROUP;
    let chunk = rows_per_chunk::<W>(rows, row_bytes, pool.n_threads());
    pool.for_each_chunk(out, chunk, |start, out| {
        let blocks = blocks_of_rows::<W>(start, rb)..blocks_of_rows::<W>(start + out.len(), rb);
        W::vec_dot_rows(&w[blocks], act, out)
    });
}

/// Weight bytes a decode step of several tokens dots with every token before moving on:
/// the rows stay in L1/L2 while each token's activations stream past them.
const COLS_TILE_BYTES: usize = 32 << 10;

/// One matvec of a shared dispatch ([`matvec_parts`]): its number of row chunks and the
/// work of chunk `c`. It holds the output's mutable borrow for `'a`.
pub struct MatvecPart<'a> {
    chunks: usize,
    run: Box<dyn Fn(usize) + Sync + 'a>,
}

impl<'a> MatvecPart<'a> {
    /// `out = W · act` for `n_cols` tokens, each exactly as [`matvec`] computes it: `act`
    /// holds the tokens' quantized rows one after another and `out` is token-major
    /// (`out[t * rows + r]`). The rows go in chunks sized for `pool` as [`matvec`]'s,
    /// and each chunk is dotted with every token in pieces that stay in cache, so the
    /// weights are read from memory once for all the tokens.
    pub fn new<W: WeightType>(
        pool: &Pool,
        w: &'a [W::Block],
        act: &'a [ActBlock<W>],
        n_cols: usize,
        out: &'a mut [f32],
    ) -> MatvecPart<'a> {
        assert!(n_cols > 0 && act.len().is_multiple_of(n_cols) && out.len().is_multiple_of(n_cols));
        let (act_row, rows) = (act.len() / n_cols, out.len() / n_cols);
        let rb = row_blocks::<W>(act_row);
        check_weights::<W>("matvec", w.len(), rows, rb);
        let row_bytes = rb * size_of::<W::Block>() / W::ROW_GROUP;
        let chunk = rows_per_chunk::<W>(rows, row_bytes, pool.n_threads());
        let piece = match n_cols {
            1 => chunk,
            _ => (COLS_TILE_BYTES / row_bytes.max(1))
                .max(TILE)
                .next_multiple_of(W::ROW_GROUP.max(TILE)),
        };
        let out = DisjointOut::new(out);
        MatvecPart {
            chunks: rows.div_ceil(chunk),
            run: Box::new(move |c| {
                let chunk_rows = c * chunk..((c + 1) * chunk).min(rows);
                let token = |t: usize| &act[t * act_row..(t + 1) * act_row];
                let blocks = |r: &std::ops::Range<usize>| {
                    &w[blocks_of_rows::<W>(r.start, rb)..blocks_of_rows::<W>(r.end, rb)]
                };
                // SAFETY (every write to `out` below): chunk `c` is claimed by one thread
                // alone (`matvec_parts`); chunks are disjoint row ranges of each token's
                // output.
                if n_cols == 1 {
                    let out = unsafe { out.slice(chunk_rows.clone()) };
                    return W::vec_dot_rows(blocks(&chunk_rows), token(0), out);
                }
                // Each piece's dots with every token, token-major, then into place.
                PIECE_DOTS.with_borrow_mut(|dots| {
                    for start in chunk_rows.clone().step_by(piece) {
                        let r = start..(start + piece).min(chunk_rows.end);
                        dots.resize(r.len() * n_cols, 0.0);
                        W::rows_token_dots(blocks(&r), act, act_row, n_cols, dots);
                        for (t, dots) in dots.chunks_exact(r.len()).enumerate() {
                            let out = unsafe { out.slice(t * rows + r.start..t * rows + r.end) };
                            out.copy_from_slice(dots);
                        }
                    }
                });
            }),
        }
    }
}

thread_local! {
    /// A decode piece's dots with every token ([`MatvecPart`]).
    static PIECE_DOTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Several matvecs in one dispatch of the pool (Q, K and V of one token; its gate and up
/// projections). Threads claim the chunks of every part, part after part, from one
/// counter, so the next matrix starts while the last is finishing and the pool is woken
/// and joined once. Each output is exactly what [`matvec`] gives.
pub fn matvec_parts(pool: &Pool, parts: &[MatvecPart]) {
    let total: usize = parts.iter().map(|p| p.chunks).sum();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let claim = || loop {
        let mut c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if c >= total {
            break;
        }
        for p in parts {
            if c < p.chunks {
                (p.run)(c);
                break;
            }
            c -= p.chunks;
        }
    };
    if pool.n_threads() == 1 {
        claim();
    } else {
        pool.run(&|_, _| claim());
    }
}

/// The same for `n_tokens` tokens: `act` holds `n_tokens` rows of quantized activations
/// (one after another), `out` is `n_tokens × rows`, token-major (`out[t * rows + r]`).
///
/// Threads take chunks of weight rows (at most `MATMUL_TASK_BYTES` of them, so they stay
/// in L2); within a chunk, tokens go in tiles of `TOKEN_TILE`, and each group of
/// [`TILE`] rows is dotted with every token of the tile while it is in L1, [`TILE`]
/// tokens at a time by [`WeightType::vec_dot_tile`] (ragged edges by `vec_dot`).
pub fn matmul<W: WeightType>(
    pool: &Pool,
    w: &[W::Block],
    act: &[ActBlock<W>],
    n_tokens: usize,
    out: &mut [f32],
) {
    if n_tokens == 0 {
        assert!(
            act.is_empty() && out.is_empty(),
            "{} matmul: 0 tokens with non-empty buffers",
            W::NAME
        );
        return;
    }
    assert!(
        act.len().is_multiple_of(n_tokens) && out.len().is_multiple_of(n_tokens),
        "{} matmul: buffers for {n_tokens} tokens",
        W::NAME
    );
    if n_tokens == 1 {
        return matvec::<W>(pool, w, act, out);
    }
    let act_row = act.len() / n_tokens;
    let rows = out.len() / n_tokens;
    let rb = row_blocks::<W>(act_row);
    check_weights::<W>("matmul", w.len(), rows, rb);
    if rb == 0 {
        out.fill(0.0);
        return;
    }
    if W::ROW_GROUP > 1 {
        return matmul_grouped::<W>(pool, w, act, n_tokens, out);
    }
    if let Some(gemm) = W::GEMM {
        return gemm(pool, w, act, n_tokens, out);
    }
    let row_bytes = rb * size_of::<W::Block>();
    if W::batched(n_tokens) {
        return matmul_batched::<W>(pool, w, act, n_tokens, out);
    }
    // whole tiles of rows per chunk, so that only the last chunk has a ragged end
    let chunk = rows_per_chunk::<W>(rows, row_bytes, pool.n_threads())
        .min((MATMUL_TASK_BYTES / row_bytes).max(1))
        .next_multiple_of(TILE);
    let n_chunks = rows.div_ceil(chunk);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = DisjointOut::new(out);
    pool.run(&|_, _| loop {
        let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if c >= n_chunks {
            break;
        }
        let row_range = c * chunk..((c + 1) * chunk).min(rows);
        // SAFETY (every write below): row chunk `c` is claimed by this thread alone
        // (fetch_add), so index (t, r) for r in the chunk is written by no other thread.
        let single = |r: usize, t: usize| {
            let v = W::vec_dot(
                &w[r * rb..(r + 1) * rb],
                &act[t * act_row..(t + 1) * act_row],
            );
            unsafe { out.write(t * rows + r, v) };
        };
        for t0 in (0..n_tokens).step_by(TOKEN_TILE) {
            let t_end = (t0 + TOKEN_TILE).min(n_tokens);
            let t_tiles = t0 + (t_end - t0) / TILE * TILE;
            let mut r0 = row_range.start;
            while r0 + TILE <= row_range.end {
                let quad = &w[r0 * rb..(r0 + TILE) * rb];
                for t in (t0..t_tiles).step_by(TILE) {
                    let mut tile = [[0f32; TILE]; TILE];
                    W::vec_dot_tile(quad, &act[t * act_row..], act_row, &mut tile);
                    for (r, row) in tile.iter().enumerate() {
                        for (dt, &v) in row.iter().enumerate() {
                            unsafe { out.write((t + dt) * rows + r0 + r, v) };
                        }
                    }
                }
                for t in t_tiles..t_end {
                    for r in r0..r0 + TILE {
                        single(r, t);
                    }
                }
                r0 += TILE;
            }
            for r in r0..row_range.end {
                for t in t0..t_end {
                    single(r, t);
                }
            }
        }
    });
}

/// `n_tokens` decode steps at once (one token of each of several sequences): each
/// token's `out` row is bit for bit what [`matvec`] gives it alone, while the weights are
/// read from memory once for all ([`MatvecPart`] of `n_tokens`).
pub fn matvecs<W: WeightType>(
    pool: &Pool,
    w: &[W::Block],
    act: &[ActBlock<W>],
    n_tokens: usize,
    out: &mut [f32],
) {
    if n_tokens == 1 {
        return matvec::<W>(pool, w, act, out);
    }
    matvec_parts(pool, &[MatvecPart::new::<W>(pool, w, act, n_tokens, out)]);
}

/// [`matmul`] for the formats whose batches llama.cpp computes with its own kernels
/// ([`WeightType::batched`]): threads take chunks of rows, and each row is dotted with
/// up to [`BATCH_TOKENS`] tokens at once by [`WeightType::batch_row_dots`], which
/// unpacks the row once for all of them.
fn matmul_batched<W: WeightType>(
    pool: &Pool,
    w: &[W::Block],
    act: &[ActBlock<W>],
    n_tokens: usize,
    out: &mut [f32],
) {
    let act_row = act.len() / n_tokens;
    let rows = out.len() / n_tokens;
    let rb = w.len() / rows;
    let row_bytes = rb * size_of::<W::Block>();
    let chunk = rows_per_chunk::<W>(rows, row_bytes, pool.n_threads())
        .min((MATMUL_TASK_BYTES / row_bytes).max(1));
    let n_chunks = rows.div_ceil(chunk);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = DisjointOut::new(out);
    pool.run(&|_, _| {
        let mut dots = [0f32; BATCH_TOKENS];
        loop {
            let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            for t0 in (0..n_tokens).step_by(BATCH_TOKENS) {
                let tokens = t0..(t0 + BATCH_TOKENS).min(n_tokens);
                for r in c * chunk..((c + 1) * chunk).min(rows) {
                    let dots = &mut dots[..tokens.len()];
                    let row = &w[r * rb..(r + 1) * rb];
                    W::batch_row_dots(row, act, act_row, tokens.clone(), n_tokens, dots);
                    for (t, &v) in tokens.clone().zip(dots.iter()) {
                        // SAFETY: row chunk `c` is claimed by this thread alone
                        // (fetch_add), so (t, r) for r in the chunk is written by no
                        // other thread.
                        unsafe { out.write(t * rows + r, v) };
                    }
                }
            }
        }
    });
}

/// [`matmul`] for the row-interleaved formats (`ROW_GROUP > 1`): threads take chunks of
/// whole row groups (at most `MATMUL_TASK_BYTES` of them), and
/// [`WeightType::groups_batch_dots`] gives a chunk's dots with every token, exactly what
/// the format's rows give in their one-row-per-block form.
fn matmul_grouped<W: WeightType>(
    pool: &Pool,
    w: &[W::Block],
    act: &[ActBlock<W>],
    n_tokens: usize,
    out: &mut [f32],
) {
    let g = W::ROW_GROUP;
    let act_row = act.len() / n_tokens;
    let rows = out.len() / n_tokens;
    let groups = rows / g;
    let rb = w.len() / groups;
    let group_bytes = rb * size_of::<W::Block>();
    let chunk = (rows_per_chunk::<W>(rows, group_bytes / g, pool.n_threads()) / g)
        .min((MATMUL_TASK_BYTES / group_bytes).max(1));
    let n_chunks = groups.div_ceil(chunk);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = DisjointOut::new(out);
    pool.run(&|_, _| {
        let mut dots = Vec::new();
        loop {
            let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            let group_range = c * chunk..((c + 1) * chunk).min(groups);
            let first_row = group_range.start * g;
            dots.resize(group_range.len() * g * n_tokens, 0f32);
            let blocks = &w[group_range.start * rb..group_range.end * rb];
            W::groups_batch_dots(blocks, act, act_row, n_tokens, &mut dots);
            let n = group_range.len() * g;
            for (t, token_dots) in dots.chunks_exact(n).enumerate() {
                // SAFETY: group chunk `c` is claimed by this thread alone (fetch_add), so
                // the chunk's rows of every token are written by no other thread.
                unsafe { out.write_slice(t * rows + first_row, token_dots) };
            }
        }
    });
}

/// Quantizes `x` (rows of `cols` values, one after another) into `act`, resized to
/// `x.len() / A::BLOCK_ELEMS` blocks; `cols` must be a whole number of blocks so that no
/// block straddles two rows.
pub fn quantize_act<A: ActType>(x: &[f32], cols: usize, act: &mut Vec<A::Block>) {
    assert!(
        cols > 0 && cols.is_multiple_of(A::BLOCK_ELEMS),
        "{}: {cols} columns is not a whole number of blocks",
        A::NAME
    );
    assert!(
        x.len().is_multiple_of(cols),
        "{}: {} values is not a whole number of {cols}-rows",
        A::NAME,
        x.len()
    );
    // no clear: every block is overwritten
    act.resize(x.len() / A::BLOCK_ELEMS, A::Block::default());
    A::quantize(x, act);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;
    use crate::quant::{
        bf16::BF16, f16::F16, q4_0::Q4_0, q4_1::Q4_1, q4_k::Q4_K, q5_0::Q5_0, q5_1::Q5_1,
        q8_0::Q8_0,
    };

    /// A rows × cols matrix made of the golden blocks (cycled with a row-dependent
    /// stride, so rows differ), with its dequantized values.
    fn matrix<W: WeightType>(rows: usize, cols: usize) -> (Vec<W::Block>, Vec<f32>) {
        let (blocks, values) = testing::golden::<W>();
        let rb = cols / W::BLOCK_ELEMS;
        let mut w = Vec::with_capacity(rows * rb);
        let mut wf = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for k in 0..rb {
                let i = (r * 7 + k * 3) % blocks.len();
                w.push(blocks[i]);
                wf.extend_from_slice(&values[i * W::BLOCK_ELEMS..(i + 1) * W::BLOCK_ELEMS]);
            }
        }
        (w, wf)
    }

    /// matmul against an f64 reference over the dequantized weights and activations, and
    /// against `vec_dot` row by row (bit-exact: the same kernel computes each element).
    /// `rel_limit` is relative to `sum |w a|` per output, as in `check_vec_dot`.
    fn check<W: WeightType>(rows: usize, cols: usize, n_tokens: usize, rel_limit: f64) {
        let (w, wf) = matrix::<W>(rows, cols);
        let x = testing::activations(n_tokens * cols, rows as u64);
        let mut act = Vec::new();
        quantize_act::<W::Act>(&x, cols, &mut act);
        let mut xq = vec![0f32; x.len()];
        W::Act::dequantize_ref(&act, &mut xq);
        let act_row = act.len() / n_tokens;
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            let mut out = vec![f32::NAN; n_tokens * rows];
            matmul::<W>(&pool, &w, &act, n_tokens, &mut out);
            for t in 0..n_tokens {
                let a = &act[t * act_row..(t + 1) * act_row];
                let mut single = vec![f32::NAN; rows];
                matvec::<W>(&pool, &w, a, &mut single);
                for r in 0..rows {
                    let got = out[t * rows + r];
                    let row = &w[r * cols / W::BLOCK_ELEMS..(r + 1) * cols / W::BLOCK_ELEMS];
                    assert_eq!(
                        got.to_bits(),
                        W::vec_dot(row, a).to_bits(),
                        "{} t{t} r{r}",
                        W::NAME
                    );
                    assert_eq!(
                        got.to_bits(),
                        single[r].to_bits(),
                        "{} matvec t{t} r{r}",
                        W::NAME
                    );
                    let (wr, xr) = (&wf[r * cols..(r + 1) * cols], &xq[t * cols..(t + 1) * cols]);
                    let exact: f64 = wr.iter().zip(xr).map(|(&p, &q)| p as f64 * q as f64).sum();
                    let scale: f64 = wr
                        .iter()
                        .zip(xr)
                        .map(|(&p, &q)| (p as f64 * q as f64).abs())
                        .sum();
                    let err = (got as f64 - exact).abs() / scale.max(f64::MIN_POSITIVE);
                    assert!(
                        err <= rel_limit,
                        "{} {threads} threads, t{t} r{r}: {got} vs {exact}",
                        W::NAME
                    );
                }
            }
        }
    }

    // Limits as derived in each format's vec_dot test (Q4_1 / Q5_1: f16 rounding of the
    // activations' `s`, 2^-10; the others: f32 rounding only).
    #[test]
    fn q4_0_odd_shapes() {
        check::<Q4_0>(37, 256, 19, 1e-5);
        // 18 chunks of 57 rows (16 KiB of weights each): exercises the parallel split
        check::<Q4_0>(1000, 512, 19, 1e-5);
        check::<Q4_0>(1, 32, 2, 1e-5);
    }

    #[test]
    fn q4_1_many_rows() {
        check::<Q4_1>(300, 128, 17, 2f64.powi(-10));
    }

    #[test]
    fn q5_1_and_q8_0() {
        check::<Q5_1>(45, 96, 5, 2f64.powi(-10));
        check::<Q8_0>(64, 512, 33, 1e-5);
    }

    /// The legacy formats' packed GEMM (`WeightType::GEMM` on x86): row counts that do
    /// and do not fill quads, token counts that do and do not fill groups of 4, and a
    /// width (9216) whose packed activations take several token tiles.
    #[test]
    fn legacy_gemm_shapes() {
        for (rows, cols, n_tokens) in [(1, 32, 2), (7, 96, 3), (45, 576, 5), (9, 9216, 37)] {
            check::<Q8_0>(rows, cols, n_tokens, 1e-5);
            check::<Q5_0>(rows, cols, n_tokens, 1e-5);
            check::<Q4_1>(rows, cols, n_tokens, 2f64.powi(-10));
        }
    }

    #[test]
    fn float_formats() {
        check::<F16>(33, 100, 3, 1e-5);
        check::<BF16>(20, 64, 18, 1e-5);
    }

    #[test]
    fn single_token_and_empty() {
        let pool = Pool::new(2);
        check::<Q8_0>(513, 64, 1, 1e-5);
        let mut out: Vec<f32> = Vec::new();
        matmul::<Q8_0>(&pool, &[], &[], 0, &mut out);
        matvec::<Q8_0>(&pool, &[], &[], &mut out);
    }

    #[test]
    fn matvec_parts_are_separate_matvecs() {
        let (wa, _) = matrix::<Q4_1>(77, 128);
        let (wb, _) = matrix::<Q8_0>(130, 128);
        let (wc, _) = matrix::<Q4_K>(19, 256);
        let x = testing::activations(256, 6);
        let (mut act_a, mut act_b, mut act_c) = (Vec::new(), Vec::new(), Vec::new());
        quantize_act::<<Q4_1 as WeightType>::Act>(&x[..128], 128, &mut act_a);
        quantize_act::<<Q8_0 as WeightType>::Act>(&x[..128], 128, &mut act_b);
        quantize_act::<<Q4_K as WeightType>::Act>(&x, 256, &mut act_c);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            let mut want = [vec![f32::NAN; 77], vec![f32::NAN; 130], vec![f32::NAN; 19]];
            matvec::<Q4_1>(&pool, &wa, &act_a, &mut want[0]);
            matvec::<Q8_0>(&pool, &wb, &act_b, &mut want[1]);
            matvec::<Q4_K>(&pool, &wc, &act_c, &mut want[2]);
            // two parts (gate and up) and three (Q, K and V)
            for n_parts in [2, 3] {
                let mut got = [vec![f32::NAN; 77], vec![f32::NAN; 130], vec![f32::NAN; 19]];
                let [a, b, c] = &mut got;
                let mut parts = vec![
                    MatvecPart::new::<Q4_1>(&pool, &wa, &act_a, 1, a),
                    MatvecPart::new::<Q8_0>(&pool, &wb, &act_b, 1, b),
                    MatvecPart::new::<Q4_K>(&pool, &wc, &act_c, 1, c),
                ];
                parts.truncate(n_parts);
                matvec_parts(&pool, &parts);
                drop(parts);
                for (got, want) in got.iter().zip(&want).take(n_parts) {
                    assert_eq!(bits(got), bits(want), "{threads} threads, {n_parts} parts");
                }
            }
        }
    }

    /// A part over several decode tokens, and `matvecs`, give each token its own matvec,
    /// bit for bit, for plain and row-interleaved formats (whole tiles of tokens and a
    /// ragged one) and rows wider than one cache piece.
    #[test]
    fn matvec_part_of_several_tokens_is_each_tokens_matvec() {
        use crate::quant::iq4_xs::IQ4_XS;
        use crate::quant::iq4_xs_x8::{self, IQ4_XSX8};
        use crate::quant::q4_k_x8::{self, Q4_KX8};
        use crate::quant::q4_x8::{self, Q4_0X8};
        use crate::quant::q6_k::Q6_K;
        use crate::quant::q6_k_x8::{self, Q6_KX8};
        fn check_cols<W: WeightType>(w: &[W::Block], rows: usize, cols: usize) {
            for n_tokens in [2, 4, 5, 9] {
                check_n::<W>(w, rows, cols, n_tokens);
            }
        }
        fn check_n<W: WeightType>(w: &[W::Block], rows: usize, cols: usize, n_tokens: usize) {
            let x = testing::activations(n_tokens * cols, 11);
            let mut act = Vec::new();
            quantize_act::<W::Act>(&x, cols, &mut act);
            let act_row = act.len() / n_tokens;
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for threads in [1, 2, 3] {
                let pool = Pool::new(threads);
                let mut want = vec![f32::NAN; n_tokens * rows];
                for (t, out) in want.chunks_exact_mut(rows).enumerate() {
                    matvec::<W>(&pool, w, &act[t * act_row..(t + 1) * act_row], out);
                }
                let mut got = vec![f32::NAN; n_tokens * rows];
                matvec_parts(
                    &pool,
                    &[MatvecPart::new::<W>(&pool, w, &act, n_tokens, &mut got)],
                );
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{} with {threads} threads",
                    W::NAME
                );
                let mut got = vec![f32::NAN; n_tokens * rows];
                matvecs::<W>(&pool, w, &act, n_tokens, &mut got);
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{} matvecs, {threads} threads",
                    W::NAME
                );
            }
        }
        let (w, _) = matrix::<Q8_0>(300, 2048);
        check_cols::<Q8_0>(&w, 300, 2048);
        let (w, _) = matrix::<Q4_1>(77, 128);
        check_cols::<Q4_1>(&w, 77, 128);
        let (w, _) = matrix::<Q5_0>(130, 576);
        check_cols::<Q5_0>(&w, 130, 576);
        let (w, _) = matrix::<Q4_K>(33, 512);
        check_cols::<Q4_K>(&w, 33, 512);
        // the row-interleaved formats: 8 rows per group, blocks interleaved
        fn grouped<P: WeightType, B>(
            rows: usize,
            cols: usize,
            interleave: impl Fn([&P::Block; 8]) -> B,
        ) -> Vec<B> {
            let (plain, _) = matrix::<P>(rows, cols);
            let rb = cols / P::BLOCK_ELEMS;
            let group = |g: &[P::Block], k| interleave(std::array::from_fn(|r| &g[r * rb + k]));
            let groups = plain.chunks_exact(8 * rb);
            groups
                .flat_map(|g| (0..rb).map(move |k| group(g, k)))
                .collect()
        }
        check_cols::<Q4_KX8>(&grouped::<Q4_K, _>(64, 512, q4_k_x8::interleave), 64, 512);
        check_cols::<Q6_KX8>(&grouped::<Q6_K, _>(48, 768, q6_k_x8::interleave), 48, 768);
        let iq4_xs = grouped::<IQ4_XS, _>(40, 512, iq4_xs_x8::interleave);
        check_cols::<IQ4_XSX8>(&iq4_xs, 40, 512);
        let q4_0 = grouped::<Q4_0, _>(56, 256, |r| q4_x8::interleave(r.map(|b| (b.d, b.qs))));
        check_cols::<Q4_0X8>(&q4_0, 56, 256);
    }

    #[test]
    fn quantize_act_reuses_and_resizes() {
        let x = testing::activations(4 * 64, 3);
        let mut act = Vec::new();
        quantize_act::<Q8_0>(&x, 64, &mut act);
        assert_eq!(act.len(), 8);
        let mut want = vec![Default::default(); 8];
        <Q8_0 as ActType>::quantize_ref(&x, &mut want);
        assert_eq!(act, want);
        quantize_act::<Q8_0>(&x[..64], 64, &mut act);
        assert_eq!(act.len(), 2);
        assert_eq!(act[..], want[..2]);
    }

    /// Our matvec and matmul (SIMD kernels, activations quantized by us) against what
    /// llama.cpp's CPU backend computes on this machine for the same weights and inputs,
    /// on its default path (repacked kernels where it repacks). With `rel_limit == 0`
    /// bit for bit; otherwise within `rel_limit` of `sum |w a|` per output.
    fn check_llama_cpp<W: WeightType>(rel_limit: f64) {
        let g = testing::llama_cpp_golden::<W>();
        let pool = Pool::new(2);
        let mut wf = vec![0f32; g.rows * g.cols];
        W::dequantize_ref(&g.weights, &mut wf);
        let compare = |x: &[f32], got: &[f32], want: &[f32], what: &str| {
            let mut xq = vec![0f32; x.len()];
            let mut act = Vec::new();
            quantize_act::<W::Act>(x, g.cols, &mut act);
            W::Act::dequantize_ref(&act, &mut xq);
            for (i, (&o, &w)) in got.iter().zip(want).enumerate() {
                let (t, r) = (i / g.rows, i % g.rows);
                if rel_limit == 0.0 {
                    assert_eq!(
                        o.to_bits(),
                        w.to_bits(),
                        "{} {what}: token {t} row {r}: {o} vs llama.cpp {w}",
                        W::NAME
                    );
                } else {
                    let (wr, xr) = (
                        &wf[r * g.cols..(r + 1) * g.cols],
                        &xq[t * g.cols..(t + 1) * g.cols],
                    );
                    let scale: f64 = wr
                        .iter()
                        .zip(xr)
                        .map(|(&p, &q)| (p as f64 * q as f64).abs())
                        .sum();
                    let err = (o as f64 - w as f64).abs() / scale;
                    assert!(
                        err <= rel_limit,
                        "{} {what}: token {t} row {r}: {o} vs llama.cpp {w} ({err:e})",
                        W::NAME
                    );
                }
            }
        };
        let mut act = Vec::new();
        for (x, _, y_default) in &g.matvecs {
            quantize_act::<W::Act>(x, g.cols, &mut act);
            let mut out = vec![f32::NAN; g.rows];
            matvec::<W>(&pool, &g.weights, &act, &mut out);
            compare(x, &out, y_default, "matvec");
        }
        let (n_tokens, x, y) = &g.matmul;
        quantize_act::<W::Act>(x, g.cols, &mut act);
        let mut out = vec![f32::NAN; n_tokens * g.rows];
        matmul::<W>(&pool, &g.weights, &act, *n_tokens, &mut out);
        compare(x, &out, y, "matmul");
    }

    #[test]
    fn q4_0_bit_exact_with_llama_cpp_repacked() {
        assert!(testing::llama_cpp_golden::<Q4_0>().repacked);
        check_llama_cpp::<Q4_0>(0.0);
    }

    #[test]
    fn q4_1_q5_0_q5_1_q8_0_bit_exact_with_llama_cpp() {
        check_llama_cpp::<Q4_1>(0.0);
        check_llama_cpp::<Q5_0>(0.0);
        check_llama_cpp::<Q5_1>(0.0);
        check_llama_cpp::<Q8_0>(0.0);
    }

    /// matmul of the `golden_matmul` weights with the first `n` rows of its activations,
    /// for every batch size there, against llama.cpp's result bit for bit: whatever kernel
    /// llama.cpp picks for a batch of `n` tokens, we must round the same way. Returns the
    /// mismatches as "n=.. t.. r..: ours vs theirs" lines.
    fn batch_mismatches<W: WeightType>() -> Vec<String> {
        let g = testing::batch_golden::<W>();
        let mut bad = Vec::new();
        for threads in [1, 2] {
            let pool = Pool::new(threads);
            for (n, want) in &g.batches {
                let mut act = Vec::new();
                quantize_act::<W::Act>(&g.x[..n * g.cols], g.cols, &mut act);
                let mut out = vec![f32::NAN; n * g.rows];
                matmul::<W>(&pool, &g.weights, &act, *n, &mut out);
                for (i, (&o, &w)) in out.iter().zip(want).enumerate() {
                    if o.to_bits() != w.to_bits() {
                        let (t, r) = (i / g.rows, i % g.rows);
                        bad.push(format!(
                            "{} {threads} threads, n={n} t{t} r{r}: {o} vs llama.cpp {w}",
                            W::NAME
                        ));
                    }
                }
            }
        }
        bad
    }

    macro_rules! batches_bit_exact {
        ($($name:ident: $ty:ty,)*) => {$(
            #[test]
            fn $name() {
                let bad = batch_mismatches::<$ty>();
                assert!(
                    bad.is_empty(),
                    "{} of llama.cpp's batched results differ:\n{}",
                    bad.len(),
                    bad[..bad.len().min(12)].join("\n")
                );
            }
        )*};
    }

    batches_bit_exact! {
        batches_q4_0: Q4_0,
        batches_q4_1: Q4_1,
        batches_q5_0: Q5_0,
        batches_q5_1: Q5_1,
        batches_q8_0: Q8_0,
        batches_q3_k: crate::quant::q3_k::Q3_K,
        batches_q4_k: crate::quant::q4_k::Q4_K,
        batches_q5_k: crate::quant::q5_k::Q5_K,
        batches_q6_k: crate::quant::q6_k::Q6_K,
        batches_iq1_s: crate::quant::iq1_s::IQ1_S,
        batches_iq1_m: crate::quant::iq1_m::IQ1_M,
        batches_iq2_xxs: crate::quant::iq2_xxs::IQ2_XXS,
        batches_iq2_xs: crate::quant::iq2_xs::IQ2_XS,
        batches_iq2_s: crate::quant::iq2_s::IQ2_S,
        batches_iq3_xxs: crate::quant::iq3_xxs::IQ3_XXS,
        batches_iq3_s: crate::quant::iq3_s::IQ3_S,
        batches_iq4_nl: crate::quant::iq4_nl::IQ4_NL,
        batches_iq4_xs: crate::quant::iq4_xs::IQ4_XS,
    }

    /// With AVX-512, llama.cpp repacks Q2_K and rounds batches as its repacked GEMM;
    /// without, both engines take the tiled kernel (`q2_k.rs`): the one type whose
    /// goldens differ per tier (`golden_matmul/avx512/Q2_K.bin`, `golden_matmul/avx2/`).
    #[test]
    fn batches_q2_k() {
        let bad = batch_mismatches::<crate::quant::q2_k::Q2_K>();
        assert!(
            bad.is_empty(),
            "{} of llama.cpp's batched results differ:\n{}",
            bad.len(),
            bad[..bad.len().min(12)].join("\n")
        );
    }

    /// A golden that differs per tier exists for every tier, so that no tier falls back
    /// to another tier's file, and none is also in the shared directory.
    #[test]
    fn per_tier_batch_goldens_are_complete() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/quant/golden_matmul");
        let names = |tier: crate::tier::Tier| -> std::collections::BTreeSet<String> {
            std::fs::read_dir(dir.join(tier.name()))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let [first, rest @ ..] = testing::BATCH_GOLDEN_TIERS;
        let want = names(first);
        assert!(want.contains("Q2_K.bin"), "{want:?}");
        for tier in rest {
            assert_eq!(
                names(tier),
                want,
                "{} against {}",
                tier.name(),
                first.name()
            );
        }
        for name in &want {
            assert!(
                !dir.join(name).exists(),
                "{name} is both shared and per tier"
            );
        }
    }

    #[test]
    fn float_formats_close_to_llama_cpp() {
        // ggml sums F16/BF16 products in 16-lane AVX-512 registers (BF16 with dpbf16ps,
        // which rounds pairs of products), we in 4 x 8 lanes: both are within ~70 f32
        // roundings of the exact sum, 2 * 70 * 2^-24 ≈ 1e-5 of sum |w a| apart at most.
        check_llama_cpp::<F16>(1e-5);
        check_llama_cpp::<BF16>(1e-5);
    }
}
