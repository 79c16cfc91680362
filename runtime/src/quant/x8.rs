//! What the 8-row-interleaved formats (`Q4_KX8`, `Q4_0X8`, `IQ4_NLX8`) share: the group
//! size and the compile-time repacking of a GGUF matrix into groups of interleaved
//! blocks, streamed one group at a time so that a multi-gigabyte tensor never sits in
//! memory.

use super::{WeightType, TILE};

/// Rows per group.
pub const ROWS: usize = 8;

/// A block type whose bytes are all fields (`#[repr(C)]`, no padding), so that a slice
/// of blocks can be written out as bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]` with no padding bytes.
pub unsafe trait PlainBytes: Copy {}

/// The bytes of blocks, as the weight blob stores them.
pub fn as_bytes<B: PlainBytes>(blocks: &[B]) -> &[u8] {
    // SAFETY: `B` has no padding (the trait's contract), so every byte is initialized.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), std::mem::size_of_val(blocks)) }
}

/// Checks the operands of a kernel over whole groups: `groups` holds groups of 8 rows of
/// `act_row` blocks each, `act` at least `n_tokens` tokens of `act_row` activation
/// blocks, and `out` one value per row and token. Returns the number of rows.
pub fn check_groups(
    name: &str,
    groups: usize,
    act: usize,
    act_row: usize,
    n_tokens: usize,
    out: usize,
) -> usize {
    let n_rows = groups / act_row.max(1) * ROWS;
    assert!(
        act_row > 0
            && groups.is_multiple_of(act_row)
            && act >= n_tokens * act_row
            && out == n_rows * n_tokens,
        "{name}: {groups} blocks of groups, {act} activation blocks of {act_row} for \
         {n_tokens} tokens, {out} outputs"
    );
    n_rows
}

/// Rows of the consecutive 8-row `groups` (`act_row` blocks each) times tokens
/// `0..n_tokens` of `act` (token `t`'s blocks at `act[t * act_row..]`), one group at a
/// time, its tokens [`TILE`] at a time with `tile` (a group's blocks, the tokens' blocks →
/// each token's 8 dots) and the rest one by one with `dot`: row `i`'s dot with token `t`
/// goes to `out[t * n_rows + i]`. `name` is the format's, for the panic on mismatched
/// buffers.
pub fn each_group_and_token<B, A, Tile, Dot>(
    name: &str,
    groups: &[B],
    act: &[A],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
    (tile, dot): (Tile, Dot),
) where
    Tile: Fn(&[B], [&[A]; TILE]) -> [[f32; ROWS]; TILE],
    Dot: Fn(&[B], &[A]) -> [f32; ROWS],
{
    let n_rows = check_groups(name, groups.len(), act.len(), act_row, n_tokens, out.len());
    let token = |t: usize| &act[t * act_row..(t + 1) * act_row];
    let tiled = n_tokens / TILE * TILE;
    for (g, group) in groups.chunks_exact(act_row).enumerate() {
        let mut put = |t: usize, dots: &[f32; ROWS]| {
            out[t * n_rows + g * ROWS..][..ROWS].copy_from_slice(dots);
        };
        for t0 in (0..tiled).step_by(TILE) {
            let dots = tile(group, std::array::from_fn(|i| token(t0 + i)));
            for (i, d) in dots.iter().enumerate() {
                put(t0 + i, d);
            }
        }
        for t in tiled..n_tokens {
            put(t, &dot(group, token(t)));
        }
    }
}

/// Interleaves one group: `rows` holds 8 rows of `out.len()` plain blocks, row after row,
/// and block `k` of `out` is `interleave` of block `k` of the 8 rows.
pub fn interleave_group<P, B>(rows: &[P], out: &mut [B], interleave: impl Fn([&P; ROWS]) -> B) {
    let rb = out.len();
    assert_eq!(
        rows.len(),
        ROWS * rb,
        "interleave: {} blocks for 8 rows of {rb}",
        rows.len()
    );
    for (k, o) in out.iter_mut().enumerate() {
        *o = interleave(std::array::from_fn(|r| &rows[r * rb + k]));
    }
}

/// The plain rows of one group (`group`: its interleaved blocks) into `rows` (8 rows of
/// `group.len()` blocks, row after row); `row_of(b, r)` is row `r`'s block of `b`. The
/// inverse of [`interleave_group`].
pub fn unpack_group<P, B>(group: &[B], rows: &mut [P], row_of: impl Fn(&B, usize) -> P) {
    let rb = group.len();
    assert_eq!(
        rows.len(),
        ROWS * rb,
        "unpack: {} blocks for 8 rows of {rb}",
        rows.len()
    );
    for (k, b) in group.iter().enumerate() {
        for r in 0..ROWS {
            rows[r * rb + k] = row_of(b, r);
        }
    }
}

/// Repacks a matrix of `cols` columns of plain `P` blocks as a GGUF stores it (`src`,
/// any number of whole groups of 8 rows) into interleaved blocks: `interleave` makes
/// block `k` of a group from block `k` of its 8 rows, and `write` gets each group's
/// blocks as bytes. Returns `write`'s first error. Each group's bytes are copied into an
/// aligned buffer of blocks first, so `src` may sit at any offset of a mapped file.
/// `name` is the interleaved format's, for the panics on a malformed matrix (the
/// compiler checks shapes before it repacks).
pub fn repack_matrix<P: WeightType, B: PlainBytes, E>(
    name: &str,
    src: &[u8],
    cols: usize,
    interleave: impl Fn([&P::Block; ROWS]) -> B,
    mut write: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    assert!(
        cols.is_multiple_of(P::BLOCK_ELEMS),
        "{name}: {cols} columns is not whole blocks"
    );
    let rb = cols / P::BLOCK_ELEMS;
    let group_bytes = ROWS * rb * size_of::<P::Block>();
    assert!(
        group_bytes > 0 && src.len().is_multiple_of(group_bytes),
        "{name}: {} bytes is not whole groups of 8 rows of {cols}",
        src.len()
    );
    let mut rows: Vec<P::Block> = Vec::with_capacity(ROWS * rb);
    let mut out = Vec::with_capacity(rb);
    for group in src.chunks_exact(group_bytes) {
        // SAFETY: the capacity is ROWS * rb blocks, exactly `group_bytes`, all written by
        // the copy before `set_len`; every block type is a `#[repr(C)]` struct of
        // integers and f16 for which any bits are a valid value (as `blocks_of` relies
        // on), and the GGUF's little-endian bytes are this (x86-64 / aarch64) host's.
        unsafe {
            std::ptr::copy_nonoverlapping(group.as_ptr(), rows.as_mut_ptr().cast(), group_bytes);
            rows.set_len(ROWS * rb);
        }
        out.clear();
        out.extend((0..rb).map(|k| interleave(std::array::from_fn(|r| &rows[r * rb + k]))));
        write(as_bytes(&out))?;
    }
    Ok(())
}

/// Plain format `P`'s one-token dot of every row of `groups` (put back into `P` blocks by
/// `unpack`, one group at a time) with every token: what an interleaved format's
/// one-token kernel gives on builds without it (`out[t * n_rows + 8 g + r]`).
#[cfg(not(x86_simd))]
pub(super) fn plain_token_dots<P: WeightType, G>(
    groups: &[G],
    act: &[super::ActBlock<P>],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
    zero: P::Block,
    unpack: impl Fn(&[G], &mut [P::Block]),
) {
    let n_rows = groups.len() / act_row * ROWS;
    let mut rows = vec![zero; ROWS * act_row];
    for (g, group) in groups.chunks_exact(act_row).enumerate() {
        unpack(group, &mut rows);
        for (r, row) in rows.chunks_exact(act_row).enumerate() {
            for t in 0..n_tokens {
                out[t * n_rows + g * ROWS + r] =
                    P::vec_dot(row, &act[t * act_row..(t + 1) * act_row]);
            }
        }
    }
}

/// Plain format `P`'s batch path for the rows of `groups` (an interleaved format's
/// consecutive row groups, `act_row` activation blocks wide), put back into `P` blocks
/// by `unpack`: what an interleaved format's `groups_batch_dots` gives on builds without
/// its GEMM kernel (token-major `out`, as that method's contract).
#[cfg(not(x86_simd))]
pub(super) fn plain_batch_dots<P: WeightType, G>(
    groups: &[G],
    act: &[super::ActBlock<P>],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
    zero: P::Block,
    unpack: impl Fn(&[G], &mut [P::Block]),
) {
    let mut plain = vec![zero; ROWS * groups.len()];
    for (group, rows) in groups
        .chunks_exact(act_row)
        .zip(plain.chunks_exact_mut(ROWS * act_row))
    {
        unpack(group, rows);
    }
    let mut by_row = vec![0f32; out.len()];
    super::rows_batch_dots::<P>(&plain, act, act_row, n_tokens, &mut by_row);
    super::transpose_into(&by_row, n_tokens, out);
}

/// What the interleaved formats' tests check alike: their kernels against those of the
/// plain format they were repacked from, bit for bit.
#[cfg(test)]
pub mod check {
    use super::ROWS;
    use crate::matmul::{matmul, matvec, quantize_act};
    use crate::pool::Pool;
    use crate::quant::{testing, ActBlock, WeightType};

    pub fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// `n` tokens of `cols` random activations, quantized for `P`.
    pub fn activations<P: WeightType>(cols: usize, n: usize, seed: u64) -> Vec<ActBlock<P>> {
        let x = testing::activations(n * cols, seed);
        let mut act = Vec::new();
        quantize_act::<P::Act>(&x, cols, &mut act);
        act
    }

    /// `P::vec_dot` of every row of `plain` with the one token `act`, which `matvec` of
    /// `packed` (the same rows interleaved) must give bit for bit, on 1 and 2 threads.
    pub fn matvec_equals_rows<P, X>(
        plain: &[P::Block],
        packed: &[X::Block],
        act: &[ActBlock<P>],
    ) -> Vec<f32>
    where
        P: WeightType,
        X: WeightType<Act = P::Act>,
    {
        let want: Vec<f32> = plain
            .chunks_exact(act.len())
            .map(|row| P::vec_dot(row, act))
            .collect();
        for threads in [1, 2] {
            let mut got = vec![f32::NAN; want.len()];
            matvec::<X>(&Pool::new(threads), packed, act, &mut got);
            let shape = format!("{} rows of {} blocks", want.len(), act.len());
            assert_eq!(
                bits(&got),
                bits(&want),
                "{} {shape}, {threads} threads",
                X::NAME
            );
        }
        want
    }

    /// For every shape of the decode kernels' tests: matvec of the interleaved matrix
    /// equals `P::vec_dot` of every row bit for bit ([`matvec_equals_rows`]), and so does
    /// the format's scalar reference `reference` (one group with one token) where `exact`
    /// (`P::vec_dot` is the SIMD kernel the reference mirrors); elsewhere `P::vec_dot` is
    /// its own scalar chain, and the two agree within `1e-6 Σ bound(block, act)` per row.
    pub fn matvec_shapes<P, X>(
        matrix: impl Fn(usize, usize, u64) -> Vec<P::Block>,
        repack: impl Fn(&[P::Block], usize) -> Vec<X::Block>,
        reference: impl Fn(&[X::Block], &[ActBlock<P>], &mut [f32; ROWS]),
        exact: bool,
        bound: impl Fn(&P::Block, &ActBlock<P>) -> f32,
    ) where
        P: WeightType,
        X: WeightType<Act = P::Act>,
    {
        for (i, &(rows, cols)) in [(8, 256), (16, 512), (24, 3072), (64, 2304), (40, 9216)]
            .iter()
            .enumerate()
        {
            let plain = matrix(rows, cols, 10 + i as u64);
            let packed = repack(&plain, rows);
            let act = activations::<P>(cols, 1, i as u64);
            let rb = act.len();
            let want = matvec_equals_rows::<P, X>(&plain, &packed, &act);
            let mut got = vec![f32::NAN; rows];
            for (g, out) in packed.chunks_exact(rb).zip(got.chunks_exact_mut(ROWS)) {
                reference(g, &act, out.try_into().expect("8 rows"));
            }
            if exact {
                assert_eq!(bits(&got), bits(&want), "reference {rows}x{cols}");
                continue;
            }
            for (r, (&got, &want)) in got.iter().zip(&want).enumerate() {
                let row = &plain[r * rb..(r + 1) * rb];
                let scale: f32 = row.iter().zip(&act).map(|(b, a)| bound(b, a)).sum();
                assert!(
                    (got - want).abs() <= scale * 1e-6,
                    "row {r}: {got} vs {want}"
                );
            }
        }
    }

    /// Prompt batches of `packed` (the rows of `plain`, `cols` wide, interleaved) equal
    /// `plain`'s, bit for bit, whatever path `P`'s batch size takes: every size of
    /// `batch_sizes`, on 1 and 2 threads.
    pub fn matmul_equals_plain<P, X>(
        plain: &[P::Block],
        packed: &[X::Block],
        cols: usize,
        batch_sizes: &[usize],
    ) where
        P: WeightType,
        X: WeightType<Act = P::Act>,
    {
        let rows = plain.len() / (cols / P::BLOCK_ELEMS);
        for &n in batch_sizes {
            let act = activations::<P>(cols, n, n as u64);
            for threads in [1, 2] {
                let pool = Pool::new(threads);
                let mut want = vec![f32::NAN; n * rows];
                matmul::<P>(&pool, plain, &act, n, &mut want);
                let mut got = vec![f32::NAN; n * rows];
                matmul::<X>(&pool, packed, &act, n, &mut got);
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{} n={n}, {threads} threads",
                    X::NAME
                );
            }
        }
    }
}
