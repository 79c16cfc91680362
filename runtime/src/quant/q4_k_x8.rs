//! Q4_KX8: Q4_K weights with 8 rows interleaved, the layout the compiler repacks Q4_K
//! matmul weights into so that the decode matvec keeps one row per vector lane.
//!
//! Not a ggml type: the bytes are those of 8 Q4_K rows, rearranged at compile time (and
//! put back by [`row_of`] where a plain Q4_K row is needed). One block covers one 256-column
//! super-block of 8 consecutive rows, 1152 bytes: exactly the 8 Q4_K blocks' bytes (4.5
//! bits per weight), so decode reads no more than Q4_K does:
//!
//! ```text
//! d          [f16; 8]    d of rows 0..8 (one load and one conversion give 8 lanes)
//! dmin       [f16; 8]    dmin of rows 0..8
//! scales_lo  [u8; 64]    bits 0..4 of S[i] | bits 0..4 of M[i] << 4
//! scales_hi  [u8; 32]    bits 4..6 of S[i], S[i + 32], M[i], M[i + 32] at bits 0, 2, 4, 6
//! qs         [u8; 1024]  qs[256c + 32k + 4r + i] = Q4_K byte 32c + 4k + i of row r
//!                        (c = 0..4, k = 0..8, i = 0..4)
//! ```
//!
//! The 6-bit scales and minimums are those of Q4_K in the order the kernels use them,
//! `S[8j + r]` = scale of sub-block `j` of row `r` and `M[16p + 2r + e]` = minimum of
//! sub-block `2p + e` of row `r` (`p = 0..4`, `e = 0..2`), split into low 4 and high 2
//! bits so that a few whole-vector shifts and masks unpack all 128 of a block: `S[0..32]`
//! is `scales_lo & 15 | (scales_hi << 4) & 0x30`, `S[32..64]` the same of
//! `scales_lo[32..]` and `scales_hi << 2`, `M` likewise with `scales_lo >> 4` and
//! `scales_hi`, `scales_hi >> 2` ([`BlockQ4KX8::scale`] and [`BlockQ4KX8::min`] read one).
//!
//! So 32 consecutive bytes of `qs` hold, for each of the 8 rows, 4 bytes: 4 weights of
//! sub-block `2c` (low nibbles, positions `4k..4k + 4`) and the same positions of
//! sub-block `2c + 1` (high nibbles). Dotted with the 4 activation bytes of those
//! positions, broadcast, each row's products land in its own 32-bit lane; the sub-block
//! scales multiply lane-wise, and the super-block's integer totals come out with one row
//! per lane, no horizontal sums.
//!
//! The arithmetic per row is Q4_K's (see [`super::q4_k::vec_dot_q4_k_q8_k_ref`]): exact
//! integer totals per super-block, then `sum = fma(isum, d d_a, sum)` and
//! `mins = fma(imin, dmin d_a, mins)`, so every row's result equals Q4_K's `vec_dot` of
//! the row to the bit.

use crate::float16::f16;

use super::q4_k::{unpack_scales_mins, BlockQ4K, Q4_K};
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::{x8, WeightType, BATCH_TOKENS};

pub use super::x8::ROWS;

/// One super-block (256 columns) of 8 interleaved Q4_K rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4KX8 {
    pub d: [f16; ROWS],
    pub dmin: [f16; ROWS],
    pub scales_lo: [u8; 8 * ROWS],
    pub scales_hi: [u8; 4 * ROWS],
    pub qs: [u8; QK_K / 2 * ROWS],
}

const _: () = assert!(std::mem::size_of::<BlockQ4KX8>() == ROWS * std::mem::size_of::<BlockQ4K>());

impl BlockQ4KX8 {
    /// `S[i]` (see the module doc): 6 bits from `scales_lo` and `scales_hi`.
    pub fn scale(&self, i: usize) -> u8 {
        let hi = self.scales_hi[i % 32] >> (2 * (i / 32));
        self.scales_lo[i] & 15 | (hi & 3) << 4
    }

    /// `M[i]` (see the module doc).
    pub fn min(&self, i: usize) -> u8 {
        let hi = self.scales_hi[i % 32] >> (4 + 2 * (i / 32));
        self.scales_lo[i] >> 4 | (hi & 3) << 4
    }

    /// Stores the unpacked `S` and `M` (6-bit values).
    fn set_scales_mins(&mut self, s: &[u8; 64], m: &[u8; 64]) {
        for i in 0..64 {
            self.scales_lo[i] = s[i] & 15 | (m[i] & 15) << 4;
        }
        for i in 0..32 {
            let hi2 = |v: u8| v >> 4 & 3;
            self.scales_hi[i] =
                hi2(s[i]) | hi2(s[i + 32]) << 2 | hi2(m[i]) << 4 | hi2(m[i + 32]) << 6;
        }
    }
}

/// An all-zero Q4_K block, to size buffers with.
const ZERO_Q4K: BlockQ4K = BlockQ4K {
    d: f16::ZERO,
    dmin: f16::ZERO,
    scales: [0; 12],
    qs: [0; QK_K / 2],
};

/// 8-row-interleaved Q4_K weights, dotted with Q8_K activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q4_KX8;

/// Index in [`BlockQ4KX8::qs`] of byte `byte` (0..128) of row `r`'s Q4_K quants.
#[inline(always)]
const fn qs_index(r: usize, byte: usize) -> usize {
    let (c, k, i) = (byte / 32, byte % 32 / 4, byte % 4);
    256 * c + 32 * k + 4 * r + i
}

/// Packs 8 six-bit scales and minimums into Q4_K's 12 bytes: the inverse of
/// [`unpack_scales_mins`] (every bit of the 12 bytes is used, so the packing is unique).
fn pack_scales_mins(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut p = [0u8; 12];
    for j in 0..4 {
        p[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        p[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        p[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    p
}

/// Interleaves super-block `k` of 8 rows: `rows[r]` is row `r`'s block.
pub fn interleave(rows: [&BlockQ4K; ROWS]) -> BlockQ4KX8 {
    let mut out = BlockQ4KX8 {
        d: [f16::ZERO; ROWS],
        dmin: [f16::ZERO; ROWS],
        scales_lo: [0; 8 * ROWS],
        scales_hi: [0; 4 * ROWS],
        qs: [0; QK_K / 2 * ROWS],
    };
    let (mut all_sc, mut all_m) = ([0u8; 64], [0u8; 64]);
    for (r, b) in rows.iter().enumerate() {
        out.d[r] = b.d;
        out.dmin[r] = b.dmin;
        let (sc, m) = unpack_scales_mins(&b.scales);
        for j in 0..8 {
            all_sc[8 * j + r] = sc[j];
            all_m[16 * (j / 2) + 2 * r + j % 2] = m[j];
        }
        for (at, four) in b.qs.chunks_exact(4).enumerate() {
            let to = qs_index(r, 4 * at);
            out.qs[to..to + 4].copy_from_slice(four);
        }
    }
    out.set_scales_mins(&all_sc, &all_m);
    out
}

/// Row `r`'s Q4_K block of an interleaved block, bit for bit: the inverse of
/// [`interleave`].
pub fn row_of(b: &BlockQ4KX8, r: usize) -> BlockQ4K {
    let sc = std::array::from_fn(|j| b.scale(8 * j + r));
    let m = std::array::from_fn(|j| b.min(16 * (j / 2) + 2 * r + j % 2));
    let mut plain = BlockQ4K {
        d: b.d[r],
        dmin: b.dmin[r],
        scales: pack_scales_mins(&sc, &m),
        qs: [0; QK_K / 2],
    };
    for (at, four) in plain.qs.chunks_exact_mut(4).enumerate() {
        let from = qs_index(r, 4 * at);
        four.copy_from_slice(&b.qs[from..from + 4]);
    }
    plain
}

/// The Q4_K rows of one group (`group`: its `rb` interleaved blocks) into `rows`
/// (`8 * rb` blocks, row-major).
pub fn unpack_group(group: &[BlockQ4KX8], rows: &mut [BlockQ4K]) {
    x8::unpack_group(group, rows, row_of)
}

/// Repacks a tensor's bytes, the way the compiler writes them into the weight blob:
/// `src` is a Q4_K matrix of `cols` columns as the GGUF stores it (rows of
/// `cols / 256` blocks, any number of whole groups of 8 rows), and `write` gets the
/// `Q4_KX8` bytes group by group. Returns `write`'s first error.
pub fn repack_q4_k_bytes<E>(
    src: &[u8],
    cols: usize,
    write: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    x8::repack_matrix::<Q4_K, _, _>("Q4_KX8", src, cols, interleave, write)
}

// SAFETY: `#[repr(C)]` of f16 and u8 arrays, its size asserted to be theirs.
unsafe impl x8::PlainBytes for BlockQ4KX8 {}

/// Scalar reference of the 8-row dot: `out[r]` = row `r` of the group `w` (its
/// interleaved blocks) · `act`, read straight from the interleaved layout.
pub fn vec_dot_q4_kx8_q8_k_ref(w: &[BlockQ4KX8], act: &[BlockQ8K], out: &mut [f32; ROWS]) {
    debug_assert_eq!(w.len(), act.len());
    let (mut sum, mut min_sum) = ([0f32; ROWS], [0f32; ROWS]);
    for (b, a) in w.iter().zip(act) {
        for r in 0..ROWS {
            let mut isum = 0i32;
            for j in 0..8 {
                // sub-block j: low nibbles of bytes 32 (j / 2) + l when j is even, high
                // nibbles when odd; activations 32 j + l
                let mut dot = 0i32;
                for l in 0..32 {
                    let byte = b.qs[qs_index(r, 32 * (j / 2) + l)];
                    let q = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    dot += q as i32 * a.qs[32 * j + l] as i32;
                }
                isum += b.scale(8 * j + r) as i32 * dot;
            }
            let imin: i32 = (0..8)
                .map(|j| {
                    let s = a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32;
                    b.min(16 * (j / 2) + 2 * r + j % 2) as i32 * s
                })
                .sum();
            sum[r] = (isum as f32).mul_add(b.d[r].to_f32() * a.d, sum[r]);
            min_sum[r] = (imin as f32).mul_add(b.dmin[r].to_f32() * a.d, min_sum[r]);
        }
    }
    for r in 0..ROWS {
        out[r] = sum[r] - min_sum[r];
    }
}

impl WeightType for Q4_KX8 {
    const NAME: &'static str = "Q4_KX8";
    /// Not a ggml type: no GGUF holds it (an id no ggml type uses).
    const GGML_ID: u32 = u32::MAX;
    const BLOCK_ELEMS: usize = QK_K;
    const ROW_GROUP: usize = ROWS;
    type Block = BlockQ4KX8;
    type Act = Q8_K;

    /// `blocks` is one group's run of blocks; `out` gets its 8 rows, row-major.
    fn dequantize_ref(blocks: &[BlockQ4KX8], out: &mut [f32]) {
        let rb = blocks.len();
        assert_eq!(out.len(), ROWS * rb * QK_K);
        let mut rows = vec![ZERO_Q4K; ROWS * rb];
        unpack_group(blocks, &mut rows);
        Q4_K::dequantize_ref(&rows, out);
    }

    fn vec_dot_ref(_row: &[BlockQ4KX8], _act: &[BlockQ8K]) -> f32 {
        unreachable!("Q4_KX8 has no one-row dot: matvec takes vec_dot_rows")
    }

    fn vec_dot_rows(w: &[BlockQ4KX8], act: &[BlockQ8K], out: &mut [f32]) {
        let rb = act.len();
        assert_eq!(
            w.len() * ROWS,
            out.len() * rb,
            "Q4_KX8: {} blocks for {} rows of {rb}",
            w.len(),
            out.len()
        );
        for (group, out) in w.chunks_exact(rb).zip(out.chunks_exact_mut(ROWS)) {
            let out: &mut [f32; ROWS] = out.try_into().expect("8 rows");
            #[cfg(x86_simd)]
            super::x86_avx2::q4_k_x8::vec_dot_q4_kx8_q8_k(group, act, out);
            #[cfg(not(x86_simd))]
            vec_dot_q4_kx8_q8_k_ref(group, act, out);
        }
    }

    /// Several tokens' `vec_dot_rows` at once: each block unpacked once for 4 tokens.
    #[cfg(x86_simd)]
    fn rows_token_dots(
        w: &[BlockQ4KX8],
        act: &[BlockQ8K],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        super::x86_avx2::q4_k_x8::groups_dots(w, act, act_row, n_tokens, out);
    }

    /// Q4_K's batch arithmetic (llama.cpp's repacked GEMM for whole groups of 4 tokens,
    /// `vec_dot` for the rest; see [`super::superblock`]) straight from the interleaved
    /// blocks on x86: 8 rows × 4 tokens per kernel call. Elsewhere the groups' rows are
    /// put back into Q4_K blocks (a per-thread buffer) for Q4_K's batch path.
    fn groups_batch_dots(
        groups: &[BlockQ4KX8],
        act: &[BlockQ8K],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        let rb = act_row;
        let gemm_end = if Q4_K::batched(n_tokens) {
            n_tokens - n_tokens % 4
        } else {
            0
        };
        #[cfg(not(x86_simd))]
        if gemm_end > 0 {
            return x8::plain_batch_dots::<Q4_K, _>(
                groups,
                act,
                act_row,
                n_tokens,
                out,
                ZERO_Q4K,
                unpack_group,
            );
        }
        let token = |t: usize| &act[t * act_row..(t + 1) * act_row];
        let n_rows = groups.len() / rb * ROWS;
        let mut put = |t: usize, g: usize, dots: &[f32; ROWS]| {
            out[t * n_rows + g * ROWS..][..ROWS].copy_from_slice(dots);
        };
        // Tokens in batches of BATCH_TOKENS, each over all the groups: the batch's
        // activations stay in L2 while the weights go by (a group's are in L1).
        for t_start in (0..n_tokens).step_by(BATCH_TOKENS) {
            let tokens = t_start..(t_start + BATCH_TOKENS).min(n_tokens);
            for (g, group) in groups.chunks_exact(rb).enumerate() {
                let quads = tokens.start..tokens.end.min(gemm_end);
                #[cfg(x86_simd)]
                for t0 in quads.clone().step_by(4) {
                    let acts = std::array::from_fn(|i| token(t0 + i));
                    let dots = super::x86_avx2::q4_k_x8::gemm_q4_kx8_q8_k(group, acts);
                    for (i, d) in dots.iter().enumerate() {
                        put(t0 + i, g, d);
                    }
                }
                let mut dots = [0f32; ROWS];
                for t in quads.end.max(tokens.start)..tokens.end {
                    Self::vec_dot_rows(group, token(t), &mut dots);
                    put(t, g, &dots);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;
    use crate::quant::x8::check::{self, bits};

    /// A random Q4_K matrix of `rows` × `cols`: random quant and scale bytes, sane f16
    /// `d` / `dmin` in ±[2^-10, 2^-4) (the golden blocks mixed in, so real blocks too).
    fn q4_k_matrix(rows: usize, cols: usize, seed: u64) -> Vec<BlockQ4K> {
        testing::random_blocks::<Q4_K>(rows * cols / QK_K, seed, |next| BlockQ4K {
            d: testing::sane_f16(next()),
            dmin: testing::sane_f16(next()),
            scales: std::array::from_fn(|_| next() as u8),
            qs: std::array::from_fn(|_| next() as u8),
        })
    }

    fn repack(plain: &[BlockQ4K], rows: usize) -> Vec<BlockQ4KX8> {
        let rb = plain.len() / rows;
        let mut out = vec![interleave([&plain[0]; ROWS]); plain.len() / ROWS];
        for (src, dst) in plain.chunks_exact(ROWS * rb).zip(out.chunks_exact_mut(rb)) {
            x8::interleave_group(src, dst, interleave);
        }
        out
    }

    #[test]
    fn repacked_bytes_are_the_interleaved_blocks() {
        let (rows, cols) = (24, 768);
        let plain = q4_k_matrix(rows, cols, 3);
        let src: Vec<u8> = plain
            .iter()
            .flat_map(|b| {
                let mut v = b.d.to_le_bytes().to_vec();
                v.extend(b.dmin.to_le_bytes());
                v.extend(b.scales);
                v.extend(b.qs);
                v
            })
            .collect();
        let mut got = Vec::new();
        repack_q4_k_bytes::<()>(&src, cols, |bytes| {
            got.extend_from_slice(bytes);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, x8::as_bytes(&repack(&plain, rows)));
    }

    #[test]
    fn scales_pack_is_the_inverse_of_unpack() {
        for b in q4_k_matrix(8, 256 * 8, 1) {
            let (sc, m) = unpack_scales_mins(&b.scales);
            assert_eq!(pack_scales_mins(&sc, &m), b.scales);
        }
    }

    #[test]
    fn interleave_round_trips() {
        let (rows, cols) = (16, 1024);
        let plain = q4_k_matrix(rows, cols, 2);
        let packed = repack(&plain, rows);
        let rb = cols / QK_K;
        let mut back = vec![ZERO_Q4K; plain.len()];
        for (src, dst) in packed
            .chunks_exact(rb)
            .zip(back.chunks_exact_mut(ROWS * rb))
        {
            unpack_group(src, dst);
        }
        let raw = |b: &[BlockQ4K]| {
            b.iter()
                .flat_map(|b| {
                    let mut v = vec![b.d.to_bits() as u8, (b.d.to_bits() >> 8) as u8];
                    v.extend([b.dmin.to_bits() as u8, (b.dmin.to_bits() >> 8) as u8]);
                    v.extend(b.scales);
                    v.extend(b.qs);
                    v
                })
                .collect::<Vec<u8>>()
        };
        assert_eq!(raw(&back), raw(&plain));
        // dequantized groups are the Q4_K rows' values
        let mut want = vec![0f32; rows * cols];
        Q4_K::dequantize_ref(&plain, &mut want);
        let mut got = vec![0f32; rows * cols];
        for (g, out) in packed
            .chunks_exact(rb)
            .zip(got.chunks_exact_mut(ROWS * cols))
        {
            Q4_KX8::dequantize_ref(g, out);
        }
        assert_eq!(bits(&got), bits(&want));
    }

    /// matvec of the interleaved matrix equals Q4_K's `vec_dot` of every row, bit for
    /// bit, in the SIMD kernel and the scalar reference, on 1 and 2 threads.
    #[test]
    fn matvec_equals_q4_k_rows_bit_for_bit() {
        check::matvec_shapes::<Q4_K, Q4_KX8>(
            q4_k_matrix,
            repack,
            vec_dot_q4_kx8_q8_k_ref,
            true,
            |_, _| 0.0,
        );
    }

    /// Prompt batches of the interleaved matrix equal Q4_K's, bit for bit, whatever path
    /// Q4_K's batch size takes.
    #[test]
    fn matmul_equals_q4_k_bit_for_bit() {
        check_matmul(48, 768, &[2, 3, 4, 5, 8, 19, 64, 67]);
        // several chunks per thread, and 3 batches of tokens per chunk
        check_matmul(512, 3072, &[7, 130]);
    }

    fn check_matmul(rows: usize, cols: usize, batch_sizes: &[usize]) {
        let plain = q4_k_matrix(rows, cols, 7);
        check::matmul_equals_plain::<Q4_K, Q4_KX8>(
            &plain,
            &repack(&plain, rows),
            cols,
            batch_sizes,
        );
    }
}
