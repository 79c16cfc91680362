//! Quantized tensor formats: one file per ggml type.
//!
//! Each format file holds the `#[repr(C)]` block struct with its size asserted, a doc
//! comment with layout, formula and bits per weight, the scalar reference
//! `dequantize_ref` / `vec_dot_ref`, the `WeightType` impl, and for the formats
//! `mcc quantize` writes, the model-file quantizer ([`Quantize`], with what the formats
//! share in `quantize`). SIMD versions live in
//! the ISA modules (`x86_avx2`, `aarch64_neon`) under the same function names and are
//! chosen at compile time with `cfg(target_feature)`; the scalar code is the fallback.
//!
//! Activations are quantized once per matmul input into the format the weight type
//! pairs with (`WeightType::Act`), so every dot product stays in integers.

use std::mem::{align_of, size_of};

pub mod bf16;
pub mod f16;
pub mod f32;
pub mod iq1_m;
pub mod iq1_s;
pub mod iq2_s;
pub mod iq2_xs;
pub mod iq2_xxs;
pub(crate) mod iq3_iq1_search;
pub mod iq3_s;
pub mod iq3_xxs;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod iq4_xs_x8;
#[cfg(test)]
mod iq_golden_dot;
pub mod iq_grids;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q4_k_x8;
pub mod q4_x8;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q6_k_x8;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
pub(crate) mod quantize;
pub mod superblock;
pub mod x8;

#[cfg(x86_simd)]
pub mod x86_avx2;

#[cfg(test)]
pub(crate) mod testing;

/// A weight format `mcc quantize` writes: f32 rows to blocks, bit for bit as llama.cpp's
/// `llama-quantize` writes them (through ggml's `ggml_quantize_chunk`).
///
/// Rows are independent, and a row's blocks depend on nothing but the row and its
/// importance vector, so any split of a tensor's rows over threads gives the same bytes.
pub trait Quantize: WeightType {
    /// Quantizes one row, `x.len() == out.len() * BLOCK_ELEMS`. `imatrix`, when given,
    /// holds one importance per column of the tensor (llama-imatrix's mean squared
    /// activation of that input), `x.len()` values; the formats that have no use for
    /// one (Q8_0) ignore it.
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [Self::Block]);
}

/// Quantizes the rows of `x` (`n_per_row` values each) into `out` as format `W`'s bytes,
/// one row after another as ggml lays a tensor out. `imatrix`, when given, holds
/// `n_per_row` importances, the same for every row (a tensor's column importances).
pub fn quantize_rows_to_bytes<W: Quantize>(
    x: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) {
    let blocks_per_row = n_per_row / W::BLOCK_ELEMS;
    let row_bytes = blocks_per_row * size_of::<W::Block>();
    assert!(
        n_per_row > 0
            && x.len().is_multiple_of(n_per_row)
            && n_per_row.is_multiple_of(W::BLOCK_ELEMS),
        "{} quantize: {} values in rows of {n_per_row}",
        W::NAME,
        x.len()
    );
    assert_eq!(
        out.len(),
        x.len() / n_per_row * row_bytes,
        "{} quantize: output bytes",
        W::NAME
    );
    let mut row = zeroed_blocks::<W>(blocks_per_row);
    for (x, out) in x
        .chunks_exact(n_per_row)
        .zip(out.chunks_exact_mut(row_bytes))
    {
        W::quantize_row(x, imatrix, &mut row);
        out.copy_from_slice(bytes_of_blocks::<W>(&row));
    }
}

/// Dequantizes `bytes` (whole blocks of format `W`, at any alignment) into `out`
/// (`BLOCK_ELEMS` values per block) with the scalar reference.
pub fn dequantize_bytes<W: WeightType>(bytes: &[u8], out: &mut [f32]) {
    let size = size_of::<W::Block>();
    assert!(
        bytes.len().is_multiple_of(size) && out.len() == bytes.len() / size * W::BLOCK_ELEMS,
        "{} dequantize: {} bytes into {} values",
        W::NAME,
        bytes.len(),
        out.len()
    );
    let mut blocks = zeroed_blocks::<W>(bytes.len() / size);
    // SAFETY: `blocks` owns exactly `bytes.len()` bytes (checked above), the two buffers
    // are distinct allocations, and every bit pattern is a valid block (see `blocks_of`).
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            blocks.as_mut_ptr().cast::<u8>(),
            bytes.len(),
        );
    }
    W::dequantize_ref(&blocks, out);
}

/// `n` all-zero blocks.
fn zeroed_blocks<W: WeightType>(n: usize) -> Vec<W::Block> {
    // SAFETY: every block type is a `#[repr(C)]` struct of integers and f16 (or a plain
    // float), for which all-zero bits are a valid value (see `blocks_of`).
    vec![unsafe { std::mem::zeroed::<W::Block>() }; n]
}

/// The bytes of `blocks`, as ggml stores them.
fn bytes_of_blocks<W: WeightType>(blocks: &[W::Block]) -> &[u8] {
    // SAFETY: block types have no padding (each format asserts its size is the sum of
    // its fields), so every byte is initialised; u8 has no alignment to meet.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// Checks the lengths [`Quantize::quantize_row`] takes.
#[inline]
pub(crate) fn check_quantize_lengths<W: WeightType>(
    x: &[f32],
    imatrix: Option<&[f32]>,
    out: &[W::Block],
) {
    assert_eq!(
        x.len(),
        out.len() * W::BLOCK_ELEMS,
        "{} quantize: {} values for {} blocks",
        W::NAME,
        x.len(),
        out.len()
    );
    if let Some(imatrix) = imatrix {
        assert_eq!(
            imatrix.len(),
            x.len(),
            "{} quantize: importance vector of {} for a row of {}",
            W::NAME,
            imatrix.len(),
            x.len()
        );
    }
}

/// A ggml tensor type as it is stored in the weight blob: each row is a run of blocks.
pub trait WeightType: Copy + Send + Sync + 'static {
    /// ggml's name of the type (`Q4_K`), as inspect and the emitted code print it.
    const NAME: &'static str;
    /// ggml's type id in GGUF tensor infos.
    const GGML_ID: u32;
    /// Columns per block: a block covers `ROW_GROUP` rows × `BLOCK_ELEMS` columns.
    const BLOCK_ELEMS: usize;
    /// Rows stored together: a tensor is `ROWS / ROW_GROUP` groups, each a run of
    /// `COLS / BLOCK_ELEMS` blocks. 1 for every ggml format (a block is a piece of one
    /// row); the row-interleaved formats the compiler repacks weights into set it higher,
    /// and then have no one-row dot: `matvec` takes [`Self::vec_dot_rows`] and `matmul`
    /// [`Self::groups_batch_dots`] for them, never `vec_dot`, `vec_dot_tile` or
    /// `batch_row_dots`.
    const ROW_GROUP: usize = 1;
    /// One block as stored; its size is ggml's bytes per block.
    type Block: Copy + Send + Sync + 'static;
    /// The activation format a row of this type is dotted with.
    type Act: ActType;

    /// Scalar reference: `blocks` -> f32, `out.len() == blocks.len() * BLOCK_ELEMS`.
    fn dequantize_ref(blocks: &[Self::Block], out: &mut [f32]);

    /// Scalar reference dot product of one row with a row of quantized activations.
    /// `row.len() * BLOCK_ELEMS == act.len() * Act::BLOCK_ELEMS`.
    fn vec_dot_ref(row: &[Self::Block], act: &[ActBlock<Self>]) -> f32;

    /// The fastest dot product this build has for the target CPU. Formats override it
    /// with their SIMD version under `cfg(target_feature)`.
    #[inline(always)]
    fn vec_dot(row: &[Self::Block], act: &[ActBlock<Self>]) -> f32 {
        Self::vec_dot_ref(row, act)
    }

    /// The dots of consecutive rows with one token's activations: `w` holds `out.len()`
    /// rows of `act.len()` blocks (`out.len() / ROW_GROUP` groups, for a grouped
    /// format), and `out[r]` must be `vec_dot(row r, act)` bit for bit. The decode matvec calls this. Formats whose dot is one long dependency chain
    /// (Q4_0, IQ4_NL: one FMA per block) override it to run several rows' chains side by
    /// side; this default takes the rows one by one.
    #[inline(always)]
    fn vec_dot_rows(w: &[Self::Block], act: &[ActBlock<Self>], out: &mut [f32]) {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(act.len())) {
            *o = Self::vec_dot(row, act);
        }
    }

    /// The dots of consecutive rows (`w`, as for [`Self::vec_dot_rows`]) with `n_tokens`
    /// tokens, each bit for bit what [`Self::vec_dot_rows`] gives that token: token `t`'s
    /// activations are `act[t * act_row..(t + 1) * act_row]`, and row `i`'s dot with it
    /// goes to `out[t * n_rows + i]`. A decode step of several sequences calls this
    /// ([`crate::matmul::MatvecPart`]) with rows that stay in cache while the tokens go
    /// by. One-row formats dot whole tiles of [`TILE`] rows × [`TILE`] tokens with
    /// [`Self::vec_dot_tile`]; the row-interleaved formats override it with kernels that
    /// unpack each block once for several tokens.
    fn rows_token_dots(
        w: &[Self::Block],
        act: &[ActBlock<Self>],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        let n_rows = out.len() / n_tokens;
        let rb = w.len() * Self::ROW_GROUP / n_rows; // weight blocks per row
        let token = |t: usize| &act[t * act_row..(t + 1) * act_row];
        let (rows_tiled, tokens_tiled) = match Self::ROW_GROUP {
            1 => (n_rows / TILE * TILE, n_tokens / TILE * TILE),
            _ => (0, 0),
        };
        // Rows outer: a tile's rows stay in L1 while every token's activations (a few
        // KiB each) go by.
        for r0 in (0..rows_tiled).step_by(TILE) {
            for t0 in (0..tokens_tiled).step_by(TILE) {
                let mut tile = [[0f32; TILE]; TILE];
                let rows = &w[r0 * rb..(r0 + TILE) * rb];
                Self::vec_dot_tile(rows, &act[t0 * act_row..], act_row, &mut tile);
                for (i, row) in tile.iter().enumerate() {
                    for (dt, &v) in row.iter().enumerate() {
                        out[(t0 + dt) * n_rows + r0 + i] = v;
                    }
                }
            }
        }
        // the tiled tokens' other rows, and the other tokens' rows
        for t in 0..n_tokens {
            let r0 = if t < tokens_tiled { rows_tiled } else { 0 };
            let blocks = r0 / Self::ROW_GROUP * rb..;
            let out = &mut out[t * n_rows + r0..(t + 1) * n_rows];
            Self::vec_dot_rows(&w[blocks], token(t), out);
        }
    }

    /// The dots of [`TILE`] consecutive rows with [`TILE`] activation rows: `w` holds the
    /// rows one after another (`w.len() / TILE` blocks each), token `t`'s blocks start at
    /// `act[t * stride]`, and `out[r][t]` must be `vec_dot(row r, token t)` bit for bit.
    /// Formats override it with a kernel that unpacks each weight block once for all
    /// tokens of the tile (prompt batches); this default takes the 16 dots one by one.
    #[inline(always)]
    fn vec_dot_tile(
        w: &[Self::Block],
        act: &[ActBlock<Self>],
        stride: usize,
        out: &mut [[f32; TILE]; TILE],
    ) {
        let rb = w.len() / TILE;
        for (r, o) in out.iter_mut().enumerate() {
            let row = &w[r * rb..(r + 1) * rb];
            for (t, v) in o.iter_mut().enumerate() {
                *v = Self::vec_dot(row, &act[t * stride..t * stride + rb]);
            }
        }
    }

    /// The dots of the rows of `groups` (consecutive row groups, `ROW_GROUP` rows of
    /// `act_row` activation blocks' width each) with all `n_tokens` tokens of a batch,
    /// each exactly what [`crate::matmul::matmul`] gives for that row and batch: token
    /// `t`'s activations start at `act[t * act_row]`, and row `i` (counted from the first
    /// group's first row, of `n_rows`) gets its result for token `t` in
    /// `out[t * n_rows + i]` (token-major, as the matmul's output). `matmul` calls this
    /// for the formats with `ROW_GROUP > 1` only, with the groups of one task (a few
    /// hundred KiB of weights); they override it.
    fn groups_batch_dots(
        groups: &[Self::Block],
        act: &[ActBlock<Self>],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        let mut by_row = vec![0f32; out.len()];
        rows_batch_dots::<Self>(groups, act, act_row, n_tokens, &mut by_row);
        transpose_into(&by_row, n_tokens, out);
    }

    /// The format's own `matmul` for prompt batches (2 or more tokens), where it has one
    /// that is faster than the generic paths by arranging the whole batch first (the
    /// legacy 8-lane formats, `x86_avx2::gemm`); same contract as
    /// [`crate::matmul::matmul`], every result bit for bit `vec_dot`.
    const GEMM: Option<Gemm<Self>> = None;

    /// Whether llama.cpp's CPU backend computes a batch of `n_tokens` tokens with other
    /// arithmetic than its one-token dot (the K-quant and IQ formats, see
    /// [`superblock`]); [`crate::matmul::matmul`] then takes [`Self::batch_row_dots`]
    /// instead of the tile kernels.
    #[inline(always)]
    fn batched(_n_tokens: usize) -> bool {
        false
    }

    /// The dots of `row` with tokens `tokens` of an `n_tokens` batch, as llama.cpp
    /// computes them for a batch of that size: token `t`'s activations start at
    /// `act[t * act_row]`, its result goes to `out[t - tokens.start]`.
    fn batch_row_dots(
        row: &[Self::Block],
        act: &[ActBlock<Self>],
        act_row: usize,
        tokens: std::ops::Range<usize>,
        _n_tokens: usize,
        out: &mut [f32],
    ) {
        for (o, t) in out.iter_mut().zip(tokens) {
            *o = Self::vec_dot(row, &act[t * act_row..(t + 1) * act_row]);
        }
    }
}

/// The dots of one row of a one-row-per-block format `W` with tokens `tokens` of an
/// `n_tokens` batch, as [`crate::matmul::matmul`] computes them: llama.cpp's batch
/// arithmetic where `W::batched(n_tokens)`, `vec_dot` otherwise (which the tile kernels
/// equal bit for bit). Token `t`'s result goes to `out[t - tokens.start]`.
pub fn batch_dots_of_row<W: WeightType>(
    row: &[W::Block],
    act: &[ActBlock<W>],
    act_row: usize,
    tokens: std::ops::Range<usize>,
    n_tokens: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(W::ROW_GROUP, 1);
    if W::batched(n_tokens) {
        W::batch_row_dots(row, act, act_row, tokens, n_tokens, out);
    } else {
        for (o, t) in out.iter_mut().zip(tokens) {
            *o = W::vec_dot(row, &act[t * act_row..t * act_row + row.len()]);
        }
    }
}

/// Tokens whose dots with one weight row [`rows_batch_dots`] takes at once: the row is
/// unpacked once for them, and their activations (64 × 292 bytes per 256 columns) stay
/// in L2 while the rows of a task go by.
pub const BATCH_TOKENS: usize = 64;

/// The dots of consecutive rows of a one-row-per-block format `W` (`rows`, each `act_row`
/// activation blocks wide) with all `n_tokens` tokens, as [`crate::matmul::matmul`]
/// computes them: row `i`'s result for token `t` goes to `out[i * n_tokens + t]`. Tokens
/// go in batches of [`BATCH_TOKENS`], each over all the rows.
pub fn rows_batch_dots<W: WeightType>(
    rows: &[W::Block],
    act: &[ActBlock<W>],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    let rb = act_row * W::Act::BLOCK_ELEMS / W::BLOCK_ELEMS;
    for t0 in (0..n_tokens).step_by(BATCH_TOKENS) {
        let tokens = t0..(t0 + BATCH_TOKENS).min(n_tokens);
        for (row, out) in rows.chunks_exact(rb).zip(out.chunks_exact_mut(n_tokens)) {
            let out = &mut out[tokens.clone()];
            batch_dots_of_row::<W>(row, act, act_row, tokens.clone(), n_tokens, out);
        }
    }
}

/// `src` (rows of `n_tokens` values) into `out` token-major: `out[t * rows + i] =
/// src[i * n_tokens + t]`.
pub fn transpose_into(src: &[f32], n_tokens: usize, out: &mut [f32]) {
    assert_eq!(src.len(), out.len(), "transpose: lengths");
    let rows = src.len() / n_tokens.max(1);
    for (i, row) in src.chunks_exact(n_tokens).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            out[t * rows + i] = v;
        }
    }
}

/// A whole-batch matmul of weight format `W`: `(pool, weights, activations, n_tokens,
/// out)` as [`crate::matmul::matmul`] takes them.
pub type Gemm<W> =
    fn(&crate::pool::Pool, &[<W as WeightType>::Block], &[ActBlock<W>], usize, &mut [f32]);

/// Rows and tokens of [`WeightType::vec_dot_tile`].
pub const TILE: usize = 4;

/// Block type of the activations that weight type `W` is dotted with.
pub type ActBlock<W> = <<W as WeightType>::Act as ActType>::Block;

/// A format activations are quantized to before the dot products (Q8_0, Q8_1, Q8_K, or
/// plain f32 / f16 for float weights).
pub trait ActType: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    /// Activations per block.
    const BLOCK_ELEMS: usize;
    type Block: Copy + Default + Send + Sync + 'static;

    /// Scalar reference quantization, `x.len() == out.len() * BLOCK_ELEMS`.
    fn quantize_ref(x: &[f32], out: &mut [Self::Block]);

    /// The values the blocks stand for (tests and error bounds).
    fn dequantize_ref(blocks: &[Self::Block], out: &mut [f32]);

    /// The fastest quantization this build has; must give the same blocks as
    /// `quantize_ref` up to float rounding of the scale.
    #[inline(always)]
    fn quantize(x: &[f32], out: &mut [Self::Block]) {
        Self::quantize_ref(x, out)
    }
}

/// Number of activation blocks for a row of `n` values.
pub const fn act_blocks<A: ActType>(n: usize) -> usize {
    n / A::BLOCK_ELEMS
}

/// Views raw blob bytes as blocks of `W`. The emitted code aligns every tensor to 64
/// bytes and asserts sizes at compile time, so a failure here is a compiler bug.
pub fn blocks_of<W: WeightType>(bytes: &[u8]) -> &[W::Block] {
    let size = size_of::<W::Block>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{}: {} bytes is not a whole number of blocks",
        W::NAME,
        bytes.len()
    );
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(align_of::<W::Block>()),
        "{}: misaligned blocks",
        W::NAME
    );
    // SAFETY: length and alignment are checked above, and every block type is a
    // `#[repr(C)]` struct of integers/f16 for which every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / size) }
}
