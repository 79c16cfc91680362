//! `Q6_KX8`: Q6_K weights with 8 rows interleaved, the layout the compiler repacks Q6_K
//! matmul weights into, so that the decode matvec keeps one row per vector lane and the
//! prompt batches have a GEMM that reads the blob directly (as [`super::q4_k_x8`] does
//! for Q4_K).
//!
//! Not a ggml type: the bytes are those of 8 Q6_K rows, rearranged at compile time (and
//! put back by [`unpack_group`] where plain rows are needed). One block covers one
//! 256-column super-block of 8 consecutive rows, 1680 bytes: exactly the 8 Q6_K blocks'
//! bytes (6.5625 bits per weight), so decode reads no more than Q6_K does.
//!
//! ```text
//! d       [f16; 8]     d of rows 0..8 (one load and one conversion give 8 lanes)
//! scales  [i8; 128]    scales[16p + 2r + e] = scales[2p + e] of row r (p = 0..8, e = 0..2)
//! qs      [u8; 1536]   qs[32 (3 (8h + m) + k) + 4r + i], k = 0..3: the quant of row r's
//!                      weight 128h + 32k + 4m + i in bits 0..6, bits 2k..2k + 2 of the
//!                      quant of its weight 128h + 96 + 4m + i in bits 6..8
//!                      (h = 0..2, m = 0..8, i = 0..4)
//! ```
//!
//! A quant is the 6-bit `q` of Q6_K (`0..=63`, the weight being `d · scale · (q - 32)`).
//! So the three 32-byte vectors at `96 (8h + m)` hold, for each of the 8 rows, the 4
//! quants at `4m..4m + 4` of the 32-weight runs `k = 0, 1, 2` of half `h`, one mask each
//! (`& 63`), and with their top bits the quants at the same positions of run `k = 3`
//! (three shifts, three masks, two ors). A sub-block scale pair `p` (16-weight sub-blocks
//! `2p`, `2p + 1`: run `k = p % 4` of half `h = p / 4`) is 16 bytes, one i16 pair per row
//! once sign-extended: what the offset term (`32 Σ scale · bsums`) multiplies directly,
//! and what one byte shuffle turns into each sub-block's scale for the products.
//!
//! Two kinds of arithmetic, each llama.cpp's for its batch size (see
//! [`super::superblock`]):
//!
//! - **One token** (decode; prompt batches of 2..7 tokens, token by token): Q6_K's SIMD
//!   dot (`dot_q6_k` in `x86_avx2::kquants`, as ggml's AVX2 kernel), whose 8 i32 lanes
//!   per super-block are: lane `m` = `Σ_{h,k} scale[8h + 2k + m / 4] · Σ_i q a` over the
//!   weights `128h + 32k + 4m + i` (`i = 0..4`), minus
//!   `32 (scale[2m] bsums[2m] + scale[2m + 1] bsums[2m + 1])`; then
//!   `acc_m = fma(d_a d_w, lane_m, acc_m)` super-block after super-block, and at the end
//!   `((acc_0 + acc_4) + (acc_2 + acc_6)) + ((acc_1 + acc_5) + (acc_3 + acc_7))`. The
//!   8-row kernel keeps the 8 lanes as 8 vectors with one row per lane, so every row's
//!   result equals `Q6_K::vec_dot` of the row to the bit.
//!   [`vec_dot_q6_kx8_q8_k_ref`] is the same arithmetic in scalar code.
//! - **Batches of 8 or more tokens**: the tiled kernel's, per super-block the exact
//!   `s1 = Σ_g scale_g (Σ q a - 32 bsums_g)`, `r = s1 · d_w`, `acc = fma(r, d_a, acc)`,
//!   computed for 8 rows × 8 tokens (4 without AVX-512) at a time straight from the interleaved blocks.
//!
//! Builds without the kernels (no AVX2, FMA or F16C) put the rows back and take Q6_K's
//! own paths, so on every build a repacked matrix gives what the plain one would.

use crate::float16::f16;

use super::q6_k::{pack_quants, unpack_quants, BlockQ6K, Q6_K};
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::{x8, WeightType};

pub use super::x8::ROWS;

/// One super-block (256 columns) of 8 interleaved Q6_K rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6KX8 {
    pub d: [f16; ROWS],
    pub scales: [i8; QK_K / 16 * ROWS],
    pub qs: [u8; QK_K * 3 / 4 * ROWS],
}

const _: () = assert!(std::mem::size_of::<BlockQ6KX8>() == 1680);
const _: () = assert!(std::mem::size_of::<BlockQ6KX8>() == ROWS * std::mem::size_of::<BlockQ6K>());

/// An all-zero Q6_K block, to size buffers with.
const ZERO_Q6K: BlockQ6K = BlockQ6K {
    ql: [0; QK_K / 2],
    qh: [0; QK_K / 4],
    scales: [0; QK_K / 16],
    d: f16::ZERO,
};

/// An all-zero interleaved block.
const ZERO_X8: BlockQ6KX8 = BlockQ6KX8 {
    d: [f16::ZERO; ROWS],
    scales: [0; QK_K / 16 * ROWS],
    qs: [0; QK_K * 3 / 4 * ROWS],
};

/// 8-row-interleaved Q6_K weights, dotted with Q8_K activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q6_KX8;

/// Offset in [`BlockQ6KX8::qs`] of the 32-byte vector `k` (0..3) of positions
/// `4m..4m + 4` of half `h`.
#[inline(always)]
pub const fn qs_vector(h: usize, m: usize, k: usize) -> usize {
    32 * (3 * (8 * h + m) + k)
}

/// Index in [`BlockQ6KX8::scales`] of sub-block `g`'s scale of row `r`.
#[inline(always)]
pub const fn scale_index(r: usize, g: usize) -> usize {
    16 * (g / 2) + 2 * r + g % 2
}

/// Interleaves super-block `k` of 8 rows: `rows[r]` is row `r`'s block.
pub fn interleave(rows: [&BlockQ6K; ROWS]) -> BlockQ6KX8 {
    let mut out = ZERO_X8;
    for (r, b) in rows.iter().enumerate() {
        out.d[r] = b.d;
        for (g, &s) in b.scales.iter().enumerate() {
            out.scales[scale_index(r, g)] = s;
        }
        let q = unpack_quants(b);
        for h in 0..2 {
            for m in 0..8 {
                for i in 0..4 {
                    let pos = 128 * h + 4 * m + i;
                    let top = q[pos + 96];
                    for k in 0..3 {
                        let byte = q[pos + 32 * k] | ((top >> (2 * k)) & 3) << 6;
                        out.qs[qs_vector(h, m, k) + 4 * r + i] = byte;
                    }
                }
            }
        }
    }
    out
}

/// Row `r`'s Q6_K block of an interleaved block, bit for bit: the inverse of
/// [`interleave`].
pub fn row_of(b: &BlockQ6KX8, r: usize) -> BlockQ6K {
    let mut q = [0u8; QK_K];
    for h in 0..2 {
        for m in 0..8 {
            for i in 0..4 {
                let pos = 128 * h + 4 * m + i;
                let mut top = 0;
                for k in 0..3 {
                    let byte = b.qs[qs_vector(h, m, k) + 4 * r + i];
                    q[pos + 32 * k] = byte & 63;
                    top |= (byte >> 6) << (2 * k);
                }
                q[pos + 96] = top;
            }
        }
    }
    let (ql, qh) = pack_quants(&q);
    BlockQ6K {
        ql,
        qh,
        scales: std::array::from_fn(|g| b.scales[scale_index(r, g)]),
        d: b.d[r],
    }
}

/// The Q6_K rows of one group (`group`: its `rb` interleaved blocks) into `rows`
/// (`8 * rb` blocks, row-major).
pub fn unpack_group(group: &[BlockQ6KX8], rows: &mut [BlockQ6K]) {
    x8::unpack_group(group, rows, row_of)
}

/// Repacks a tensor's bytes, the way the compiler writes them into the weight blob:
/// `src` is a Q6_K matrix of `cols` columns as the GGUF stores it (rows of `cols / 256`
/// blocks, any number of whole groups of 8 rows), and `write` gets the `Q6_KX8` bytes
/// group by group. Returns `write`'s first error.
pub fn repack_q6_k_bytes<E>(
    src: &[u8],
    cols: usize,
    write: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    x8::repack_matrix::<Q6_K, _, _>("Q6_KX8", src, cols, interleave, write)
}

// SAFETY: `#[repr(C)]` of f16, i8 and u8 arrays, its size asserted to be theirs.
unsafe impl x8::PlainBytes for BlockQ6KX8 {}

/// Scalar reference of the 8-row one-token dot: `out[r]` = row `r` of the group `w` (its
/// interleaved blocks) · `act`, read straight from the interleaved layout, with Q6_K's
/// SIMD arithmetic (module doc): 8 f32 lanes per row, each a chain of one fma per
/// super-block, summed at the end in `hsum_f32x8`'s order. Bit for bit `Q6_K::vec_dot`
/// of each row where that is the AVX2 dot (not `Q6_K::vec_dot_ref`, which sums the
/// super-blocks' products in one chain).
pub fn vec_dot_q6_kx8_q8_k_ref(w: &[BlockQ6KX8], act: &[BlockQ8K], out: &mut [f32; ROWS]) {
    debug_assert_eq!(w.len(), act.len());
    let mut acc = [[0f32; 8]; ROWS];
    for (b, a) in w.iter().zip(act) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let scale = |g: usize| b.scales[scale_index(r, g)] as i32;
            let d = a.d * b.d[r].to_f32();
            for (m, acc) in acc.iter_mut().enumerate() {
                let mut lane = -32
                    * (scale(2 * m) * a.bsums[2 * m] as i32
                        + scale(2 * m + 1) * a.bsums[2 * m + 1] as i32);
                for h in 0..2 {
                    for k in 0..4 {
                        let mut dot = 0i32;
                        for i in 0..4 {
                            let pos = 128 * h + 32 * k + 4 * m + i;
                            dot += quant(b, r, pos) as i32 * a.qs[pos] as i32;
                        }
                        lane += scale(8 * h + 2 * k + m / 4) * dot;
                    }
                }
                *acc = (lane as f32).mul_add(d, *acc);
            }
        }
    }
    for (o, v) in out.iter_mut().zip(&acc) {
        *o = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    }
}

/// Scalar reference of the tiled batch arithmetic for 8 rows and one token:
/// `out[r] = Σ_b fma(s1 · d_w, d_a, ·)` with `s1` the super-block's exact integer total
/// (module doc); bit for bit `superblock::quad_dots_ref` of Q6_K's row.
pub fn tiled_q6_kx8_q8_k_ref(w: &[BlockQ6KX8], act: &[BlockQ8K], out: &mut [f32; ROWS]) {
    debug_assert_eq!(w.len(), act.len());
    *out = [0f32; ROWS];
    for (b, a) in w.iter().zip(act) {
        for (r, o) in out.iter_mut().enumerate() {
            let mut s1 = 0i32;
            for g in 0..QK_K / 16 {
                let dot: i32 = (16 * g..16 * g + 16)
                    .map(|pos| quant(b, r, pos) as i32 * a.qs[pos] as i32)
                    .sum();
                s1 += b.scales[scale_index(r, g)] as i32 * (dot - 32 * a.bsums[g] as i32);
            }
            let v = s1 as f32 * b.d[r].to_f32();
            *o = v.mul_add(a.d, *o);
        }
    }
}

/// Row `r`'s quant (`0..=63`) of weight `pos` of an interleaved block.
#[inline(always)]
fn quant(b: &BlockQ6KX8, r: usize, pos: usize) -> u8 {
    let (h, k, m, i) = (pos / 128, pos % 128 / 32, pos % 32 / 4, pos % 4);
    let at = |k: usize| b.qs[qs_vector(h, m, k) + 4 * r + i];
    if k < 3 {
        at(k) & 63
    } else {
        (at(0) >> 6) | (at(1) >> 6) << 2 | (at(2) >> 6) << 4
    }
}

/// Rows of `rb` blocks in each of `groups` (consecutive groups) times tokens `t` of
/// `act` (`act_row` blocks each): `out[t * n_rows + 8 g + r]`, each `Q6_K::vec_dot` of
/// its row and token.
fn groups_dots(
    groups: &[BlockQ6KX8],
    act: &[BlockQ8K],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    #[cfg(x86_simd)]
    super::x86_avx2::q6_k_x8::groups_dots(groups, act, act_row, n_tokens, out);
    // Without the kernel, Q6_K's own dot of each row (put back into Q6_K blocks): that
    // is the arithmetic the plain matrix would get on this build, which the scalar
    // reference above is not where Q6_K::vec_dot is its own scalar reference.
    #[cfg(not(x86_simd))]
    x8::plain_token_dots::<Q6_K, _>(groups, act, act_row, n_tokens, out, ZERO_Q6K, unpack_group);
}

impl WeightType for Q6_KX8 {
    const NAME: &'static str = "Q6_KX8";
    /// Not a ggml type: no GGUF holds it (an id no ggml type uses).
    const GGML_ID: u32 = u32::MAX;
    const BLOCK_ELEMS: usize = QK_K;
    const ROW_GROUP: usize = ROWS;
    type Block = BlockQ6KX8;
    type Act = Q8_K;

    /// `blocks` is one group's run of blocks; `out` gets its 8 rows, row-major.
    fn dequantize_ref(blocks: &[BlockQ6KX8], out: &mut [f32]) {
        let rb = blocks.len();
        assert_eq!(out.len(), ROWS * rb * QK_K);
        let mut rows = vec![ZERO_Q6K; ROWS * rb];
        unpack_group(blocks, &mut rows);
        Q6_K::dequantize_ref(&rows, out);
    }

    fn vec_dot_ref(_row: &[BlockQ6KX8], _act: &[BlockQ8K]) -> f32 {
        unreachable!("Q6_KX8 has no one-row dot: matvec takes vec_dot_rows")
    }

    fn vec_dot_rows(w: &[BlockQ6KX8], act: &[BlockQ8K], out: &mut [f32]) {
        let rb = act.len();
        assert_eq!(
            w.len() * ROWS,
            out.len() * rb,
            "Q6_KX8: {} blocks for {} rows of {rb}",
            w.len(),
            out.len()
        );
        groups_dots(w, act, rb, 1, out);
    }

    /// Several tokens' `vec_dot_rows` at once (each block unpacked once for 4 tokens).
    fn rows_token_dots(
        w: &[BlockQ6KX8],
        act: &[BlockQ8K],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        groups_dots(w, act, act_row, n_tokens, out);
    }

    /// Batches that Q6_K computes with its one-token dot take the 8-row one-token kernel
    /// per token (equal to that dot). Batches of 8 or more tokens take the tiled
    /// arithmetic straight from the interleaved blocks on x86 (8 rows × 8 or 4 tokens per
    /// kernel call); elsewhere the groups' rows are put back into Q6_K blocks (a
    /// per-thread buffer) for Q6_K's batch path.
    fn groups_batch_dots(
        groups: &[BlockQ6KX8],
        act: &[BlockQ8K],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        if !Q6_K::batched(n_tokens) {
            groups_dots(groups, act, act_row, n_tokens, out);
            return;
        }
        #[cfg(not(x86_simd))]
        x8::plain_batch_dots::<Q6_K, _>(
            groups,
            act,
            act_row,
            n_tokens,
            out,
            ZERO_Q6K,
            unpack_group,
        );
        #[cfg(x86_simd)]
        super::x86_avx2::q6_k_x8::groups_tiled_dots(groups, act, act_row, n_tokens, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::{matmul, quantize_act};
    use crate::pool::Pool;
    use crate::quant::testing;
    use crate::quant::x8::check::{self, bits};

    /// Whether `Q6_K::vec_dot` is the AVX2 dot (and the 8-row SIMD kernels are built).
    const SIMD: bool = cfg!(x86_simd);

    /// A random Q6_K matrix of `rows` × `cols`: random quant and scale bytes, sane f16
    /// `d` in ±[2^-10, 2^-4) (the golden blocks mixed in, so real blocks too).
    fn q6_k_matrix(rows: usize, cols: usize, seed: u64) -> Vec<BlockQ6K> {
        testing::random_blocks::<Q6_K>(rows * cols / QK_K, seed, |next| BlockQ6K {
            ql: std::array::from_fn(|_| next() as u8),
            qh: std::array::from_fn(|_| next() as u8),
            scales: std::array::from_fn(|_| next() as i8),
            d: testing::sane_f16(next()),
        })
    }

    fn to_bytes(plain: &[BlockQ6K]) -> Vec<u8> {
        plain
            .iter()
            .flat_map(|b| {
                let mut v = b.ql.to_vec();
                v.extend(b.qh);
                v.extend(b.scales.map(|s| s as u8));
                v.extend(b.d.to_le_bytes());
                v
            })
            .collect()
    }

    fn repack(plain: &[BlockQ6K], rows: usize) -> Vec<BlockQ6KX8> {
        let rb = plain.len() / rows;
        let mut out = vec![ZERO_X8; plain.len() / ROWS];
        for (src, dst) in plain.chunks_exact(ROWS * rb).zip(out.chunks_exact_mut(rb)) {
            x8::interleave_group(src, dst, interleave);
        }
        out
    }

    #[test]
    fn quants_pack_is_the_inverse_of_unpack() {
        for b in q6_k_matrix(8, 256 * 8, 1) {
            let (ql, qh) = pack_quants(&unpack_quants(&b));
            assert_eq!((ql, qh), (b.ql, b.qh));
        }
    }

    #[test]
    fn repacked_bytes_are_the_interleaved_blocks() {
        let (rows, cols) = (24, 768);
        let plain = q6_k_matrix(rows, cols, 3);
        let src = to_bytes(&plain);
        assert_eq!(src.len(), rows * cols / QK_K * size_of::<BlockQ6K>());
        let mut got = Vec::new();
        repack_q6_k_bytes::<()>(&src, cols, |bytes| {
            got.extend_from_slice(bytes);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, x8::as_bytes(&repack(&plain, rows)));
        assert_eq!(got.len(), src.len());
    }

    #[test]
    fn interleave_round_trips() {
        let (rows, cols) = (16, 1024);
        let plain = q6_k_matrix(rows, cols, 2);
        let packed = repack(&plain, rows);
        let rb = cols / QK_K;
        let mut back = vec![ZERO_Q6K; plain.len()];
        for (src, dst) in packed
            .chunks_exact(rb)
            .zip(back.chunks_exact_mut(ROWS * rb))
        {
            unpack_group(src, dst);
        }
        assert_eq!(to_bytes(&back), to_bytes(&plain));
        // every quant reads back from the interleaved layout
        for (g, group) in packed.chunks_exact(rb).enumerate() {
            for (k, b) in group.iter().enumerate() {
                for r in 0..ROWS {
                    let q = unpack_quants(&plain[(ROWS * g + r) * rb + k]);
                    for (pos, &q) in q.iter().enumerate() {
                        assert_eq!(quant(b, r, pos), q, "row {r} weight {pos}");
                    }
                }
            }
        }
        // dequantized groups are the Q6_K rows' values
        let mut want = vec![0f32; rows * cols];
        Q6_K::dequantize_ref(&plain, &mut want);
        let mut got = vec![0f32; rows * cols];
        for (g, out) in packed
            .chunks_exact(rb)
            .zip(got.chunks_exact_mut(ROWS * cols))
        {
            Q6_KX8::dequantize_ref(g, out);
        }
        assert_eq!(bits(&got), bits(&want));
    }

    /// matvec of the interleaved matrix equals Q6_K's `vec_dot` of every row, bit for
    /// bit, on 1 and 2 threads; the scalar reference too where that dot is the SIMD one.
    #[test]
    fn matvec_equals_q6_k_rows_bit_for_bit() {
        check::matvec_shapes::<Q6_K, Q6_KX8>(
            q6_k_matrix,
            repack,
            vec_dot_q6_kx8_q8_k_ref,
            SIMD,
            |b, a| (b.d.to_f32() * a.d).abs() * 5e7,
        );
    }

    /// The kernels on extreme blocks: every scale at -128 or 127, every quant at 0 or
    /// 63, activations at ±127: no saturation anywhere, still bit for bit.
    #[test]
    fn extreme_blocks_equal_q6_k_rows() {
        let (rows, cols) = (8, 1024);
        let rb = cols / QK_K;
        let plain: Vec<BlockQ6K> = (0..rows * rb)
            .map(|i| {
                let fill = [0x00u8, 0xff, 0x0f, 0xf0][i % 4];
                BlockQ6K {
                    ql: std::array::from_fn(|k| if k % 7 == 0 { !fill } else { fill }),
                    qh: std::array::from_fn(|k| if k % 5 == 0 { !fill } else { fill }),
                    scales: std::array::from_fn(|g| if (i + g) % 3 == 0 { 127 } else { -128 }),
                    d: f16::from_f32(if i % 2 == 0 { 0.03125 } else { -0.0078125 }),
                }
            })
            .collect();
        let packed = repack(&plain, rows);
        for sign in [1f32, -1.0] {
            for n in [1, 8] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|c| if c % 5 == 0 { -sign } else { sign })
                    .collect();
                let mut act = Vec::new();
                quantize_act::<Q8_K>(&x, cols, &mut act);
                let pool = Pool::new(1);
                let mut want = vec![f32::NAN; n * rows];
                matmul::<Q6_K>(&pool, &plain, &act, n, &mut want);
                let mut got = vec![f32::NAN; n * rows];
                matmul::<Q6_KX8>(&pool, &packed, &act, n, &mut got);
                assert_eq!(bits(&got), bits(&want), "n={n}");
            }
        }
    }

    /// The scalar reference of the tiled arithmetic is Q6_K's batch path for 8+ tokens
    /// where that is the tiled kernel (AVX2 builds).
    #[test]
    fn tiled_reference_equals_q6_k_batches() {
        if !Q6_K::batched(8) {
            return;
        }
        let (rows, cols, n) = (16, 2048, 9);
        let plain = q6_k_matrix(rows, cols, 4);
        let packed = repack(&plain, rows);
        let rb = cols / QK_K;
        let x = testing::activations(n * cols, 5);
        let mut act = Vec::new();
        quantize_act::<Q8_K>(&x, cols, &mut act);
        let mut want = vec![f32::NAN; n * rows];
        matmul::<Q6_K>(&Pool::new(1), &plain, &act, n, &mut want);
        for t in 0..n {
            for (g, group) in packed.chunks_exact(rb).enumerate() {
                let mut got = [f32::NAN; ROWS];
                tiled_q6_kx8_q8_k_ref(group, &act[t * rb..(t + 1) * rb], &mut got);
                let want = &want[t * rows + g * ROWS..][..ROWS];
                assert_eq!(bits(&got), bits(want), "token {t} group {g}");
            }
        }
    }

    /// Prompt batches of the interleaved matrix equal Q6_K's, bit for bit, whatever path
    /// Q6_K's batch size takes.
    #[test]
    fn matmul_equals_q6_k_bit_for_bit() {
        check_matmul(48, 768, &[2, 3, 4, 5, 7, 8, 9, 10, 11, 19, 64, 67]);
        // several chunks per thread, and 3 batches of tokens per chunk
        check_matmul(512, 3072, &[7, 130]);
    }

    fn check_matmul(rows: usize, cols: usize, batch_sizes: &[usize]) {
        let plain = q6_k_matrix(rows, cols, 7);
        check::matmul_equals_plain::<Q6_K, Q6_KX8>(
            &plain,
            &repack(&plain, rows),
            cols,
            batch_sizes,
        );
    }
}
