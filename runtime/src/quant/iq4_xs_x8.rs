//! `IQ4_XSX8`: IQ4_XS weights with 8 rows interleaved, the layout the compiler repacks
//! IQ4_XS matmul weights into so that the decode matvec keeps one row per vector lane (as
//! [`super::q4_k_x8`] and [`super::q4_x8`] do for Q4_K, Q4_0 and IQ4_NL).
//!
//! Not a ggml type: the bytes are those of 8 IQ4_XS rows, rearranged at compile time
//! (and put back by [`unpack_group`] for the prompt-batch path). One block covers one
//! 256-column super-block of 8 consecutive rows (1104 bytes, 4.3125 bits per weight):
//!
//! ```text
//! d       [f16; 8]    d of rows 0..8 (one load and one conversion give 8 lanes)
//! scales  [i8; 64]    scales[8j + r] = ls_j - 32 of row r (sub-block j = 0..8), unpacked
//! qs      [u8; 1024]  qs[128j + 32g + 4r + i] = byte 4g + i of row r's sub-block j
//!                     (IQ4_XS qs[16j + 4g + i]; g = 0..4, i = 0..4)
//! ```
//!
//! So 32 consecutive bytes of `qs` hold 4 bytes of every row: their low nibbles index
//! the levels of the row's weights `4g..4g + 4` of sub-block `j`, their high nibbles
//! those of weights `16 + 4g..20 + 4g`.
//!
//! The arithmetic per row is that of IQ4_XS's SIMD dot (`dot_iq4_xs` in
//! `x86_avx2::iquants`, as ggml's x86 kernel): per super-block, 8 exact integer lanes,
//! lane `k` = `Σ_j (ls_j - 32) · D_jk` where `D_jk` is the dot of the 4 weights `4k..4k+4`
//! (k < 4) or `16 + 4(k-4)..` (k >= 4) of sub-block `j` with their activations; then
//! `acc_k = fma(d_w d_a, lane_k, acc_k)` super-block after super-block, and at the end
//! `((acc_0 + acc_4) + (acc_2 + acc_6)) + ((acc_1 + acc_5) + (acc_3 + acc_7))`. The 8-row
//! kernel keeps those 8 accumulators as 8 vectors with one row per lane, so every row's
//! result equals `IQ4_XS::vec_dot` of the row to the bit.
//! [`vec_dot_iq4_xsx8_q8_k_ref`] is the same arithmetic in scalar code. Builds without
//! that kernel (no AVX2, FMA or F16C) put the rows back and take `IQ4_XS::vec_dot`,
//! which is there its scalar reference (one f32 chain per row), so on every build a
//! repacked matrix gives what the plain one would.

use crate::float16::f16;

use super::iq4_xs::{sub_scale, BlockIQ4XS, IQ4_XS};
use super::iq_grids::KVALUES_IQ4NL;
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::{x8, WeightType};

pub use super::x8::ROWS;

/// One super-block (256 columns) of 8 interleaved IQ4_XS rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockIQ4XSX8 {
    pub d: [f16; ROWS],
    pub scales: [i8; 8 * ROWS],
    pub qs: [u8; QK_K / 2 * ROWS],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4XSX8>() == 1104);

/// An all-zero IQ4_XS block, to size buffers with.
const ZERO_IQ4XS: BlockIQ4XS = BlockIQ4XS {
    d: f16::ZERO,
    scales_h: 0,
    scales_l: [0; QK_K / 64],
    qs: [0; QK_K / 2],
};

/// An all-zero interleaved block.
const ZERO_X8: BlockIQ4XSX8 = BlockIQ4XSX8 {
    d: [f16::ZERO; ROWS],
    scales: [0; 8 * ROWS],
    qs: [0; QK_K / 2 * ROWS],
};

/// 8-row-interleaved IQ4_XS weights, dotted with Q8_K activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ4_XSX8;

/// Index in [`BlockIQ4XSX8::qs`] of byte `byte` (0..128) of row `r`'s IQ4_XS quants.
#[inline(always)]
pub const fn qs_index(r: usize, byte: usize) -> usize {
    // 128 j + 32 g + 4 r + i with byte = 16 j + 4 g + i
    32 * (byte / 4) + 4 * r + byte % 4
}

/// Packs 8 signed sub-block scales (`ls - 32`, in -32..=31) into IQ4_XS's `scales_h`
/// and `scales_l`: the inverse of [`sub_scale`] (every bit is used, so it is unique).
fn pack_scales(s: &[i8; 8]) -> (u16, [u8; QK_K / 64]) {
    let (mut high, mut low) = (0u16, [0u8; QK_K / 64]);
    for (j, &s) in s.iter().enumerate() {
        let ls = (s as i32 + 32) as u8;
        debug_assert!(ls < 64, "IQ4_XSX8: scale {s} out of range");
        low[j / 2] |= (ls & 0x0f) << (4 * (j % 2));
        high |= ((ls >> 4) as u16 & 3) << (2 * j);
    }
    (high, low)
}

/// Interleaves super-block `k` of 8 rows: `rows[r]` is row `r`'s block.
pub fn interleave(rows: [&BlockIQ4XS; ROWS]) -> BlockIQ4XSX8 {
    let mut out = ZERO_X8;
    for (r, b) in rows.iter().enumerate() {
        out.d[r] = b.d;
        for j in 0..8 {
            out.scales[8 * j + r] = sub_scale(b, j) as i8;
        }
        for (at, four) in b.qs.chunks_exact(4).enumerate() {
            let to = qs_index(r, 4 * at);
            out.qs[to..to + 4].copy_from_slice(four);
        }
    }
    out
}

/// Row `r`'s IQ4_XS block of an interleaved block: the inverse of [`interleave`].
pub fn row_of(b: &BlockIQ4XSX8, r: usize) -> BlockIQ4XS {
    let (scales_h, scales_l) = pack_scales(&std::array::from_fn(|j| b.scales[8 * j + r]));
    let mut plain = BlockIQ4XS {
        d: b.d[r],
        scales_h,
        scales_l,
        qs: [0; QK_K / 2],
    };
    // bytes 4i..4i + 4 of the row sit at 32i + 4r (qs_index)
    for (four, src) in plain.qs.chunks_exact_mut(4).zip(b.qs[4 * r..].chunks(32)) {
        four.copy_from_slice(&src[..4]);
    }
    plain
}

/// The IQ4_XS rows of one group (`group`: its `rb` interleaved blocks) into `rows`
/// (`8 * rb` blocks, row-major).
pub fn unpack_group(group: &[BlockIQ4XSX8], rows: &mut [BlockIQ4XS]) {
    x8::unpack_group(group, rows, row_of)
}

/// Repacks a tensor's bytes, the way the compiler writes them into the weight blob:
/// `src` is an IQ4_XS matrix of `cols` columns as the GGUF stores it (rows of
/// `cols / 256` blocks, any number of whole groups of 8 rows), and `write` gets the
/// `IQ4_XSX8` bytes group by group. Returns `write`'s first error.
pub fn repack_iq4_xs_bytes<E>(
    src: &[u8],
    cols: usize,
    write: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    x8::repack_matrix::<IQ4_XS, _, _>("IQ4_XSX8", src, cols, interleave, write)
}

// SAFETY: `#[repr(C)]` of f16, i8 and u8 arrays, its size asserted to be theirs.
unsafe impl x8::PlainBytes for BlockIQ4XSX8 {}

/// Scalar reference of the 8-row dot: `out[r]` = row `r` of the group `w` (its
/// interleaved blocks) · `act`, read straight from the interleaved layout, with IQ4_XS's
/// SIMD arithmetic (module doc): 8 f32 lanes per row, each a chain of one fma per
/// super-block, summed at the end in `hsum_f32x8`'s order. Bit for bit
/// `IQ4_XS::vec_dot` of each row where that is the AVX2 dot (not `IQ4_XS::vec_dot_ref`,
/// which sums the super-blocks' products in one chain).
pub fn vec_dot_iq4_xsx8_q8_k_ref(w: &[BlockIQ4XSX8], act: &[BlockQ8K], out: &mut [f32; ROWS]) {
    debug_assert_eq!(w.len(), act.len());
    let mut acc = [[0f32; 8]; ROWS];
    for (b, a) in w.iter().zip(act) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let d = b.d[r].to_f32() * a.d;
            for (k, acc) in acc.iter_mut().enumerate() {
                // lane k: weights 4k..4k + 4 (low nibbles of bytes 4k..) for k < 4,
                // 16 + 4(k - 4).. (high nibbles of bytes 4(k - 4)..) for k >= 4
                let (byte0, shift, pos0) = if k < 4 {
                    (4 * k, 0, 4 * k)
                } else {
                    (4 * (k - 4), 4, 16 + 4 * (k - 4))
                };
                let mut lane = 0i32;
                for j in 0..8 {
                    let mut dot = 0i32;
                    for i in 0..4 {
                        let q = (b.qs[qs_index(r, 16 * j + byte0 + i)] >> shift) & 0x0f;
                        let level = KVALUES_IQ4NL[q as usize] as i32;
                        dot += level * a.qs[32 * j + pos0 + i] as i32;
                    }
                    lane += b.scales[8 * j + r] as i32 * dot;
                }
                *acc = (lane as f32).mul_add(d, *acc);
            }
        }
    }
    for (o, v) in out.iter_mut().zip(&acc) {
        *o = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    }
}

/// Rows of `rb` blocks in each of `groups` (consecutive groups) times tokens `t` of
/// `act` (`act_row` blocks each): `out[t * n_rows + 8 g + r]`, each `IQ4_XS::vec_dot`
/// of its row and token.
fn groups_dots(
    groups: &[BlockIQ4XSX8],
    act: &[BlockQ8K],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    #[cfg(x86_simd)]
    super::x86_avx2::iq4_xs_x8::groups_dots(groups, act, act_row, n_tokens, out);
    // Without the kernel, IQ4_XS's own dot of each row (put back into IQ4_XS blocks):
    // that is the arithmetic the plain matrix would get on this build, which the scalar
    // reference above is not where IQ4_XS::vec_dot is its own scalar reference.
    #[cfg(not(x86_simd))]
    x8::plain_token_dots::<IQ4_XS, _>(
        groups,
        act,
        act_row,
        n_tokens,
        out,
        ZERO_IQ4XS,
        unpack_group,
    );
}

thread_local! {
    /// The IQ4_XS rows of the groups [`IQ4_XSX8::groups_batch_dots`] works on.
    static PLAIN: std::cell::RefCell<Vec<BlockIQ4XS>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl WeightType for IQ4_XSX8 {
    const NAME: &'static str = "IQ4_XSX8";
    /// Not a ggml type: no GGUF holds it (an id no ggml type uses).
    const GGML_ID: u32 = u32::MAX;
    const BLOCK_ELEMS: usize = QK_K;
    const ROW_GROUP: usize = ROWS;
    type Block = BlockIQ4XSX8;
    type Act = Q8_K;

    /// `blocks` is one group's run of blocks; `out` gets its 8 rows, row-major.
    fn dequantize_ref(blocks: &[BlockIQ4XSX8], out: &mut [f32]) {
        let rb = blocks.len();
        assert_eq!(out.len(), ROWS * rb * QK_K);
        let mut rows = vec![ZERO_IQ4XS; ROWS * rb];
        unpack_group(blocks, &mut rows);
        IQ4_XS::dequantize_ref(&rows, out);
    }

    fn vec_dot_ref(_row: &[BlockIQ4XSX8], _act: &[BlockQ8K]) -> f32 {
        unreachable!("IQ4_XSX8 has no one-row dot: matvec takes vec_dot_rows")
    }

    fn vec_dot_rows(w: &[BlockIQ4XSX8], act: &[BlockQ8K], out: &mut [f32]) {
        let rb = act.len();
        assert_eq!(
            w.len() * ROWS,
            out.len() * rb,
            "IQ4_XSX8: {} blocks for {} rows of {rb}",
            w.len(),
            out.len()
        );
        groups_dots(w, act, rb, 1, out);
    }

    /// Several tokens' `vec_dot_rows` at once.
    fn rows_token_dots(
        w: &[BlockIQ4XSX8],
        act: &[BlockQ8K],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        groups_dots(w, act, act_row, n_tokens, out);
    }

    /// Batches that IQ4_XS computes with its one-token dot take the 8-row kernel per
    /// token (equal to that dot). The others put the groups' rows back into IQ4_XS
    /// blocks (once, in a per-thread buffer) and take IQ4_XS's batch path for them: the
    /// results are IQ4_XS's by construction.
    fn groups_batch_dots(
        groups: &[BlockIQ4XSX8],
        act: &[BlockQ8K],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        let rb = act_row;
        if !IQ4_XS::batched(n_tokens) {
            groups_dots(groups, act, act_row, n_tokens, out);
            return;
        }
        PLAIN.with_borrow_mut(|plain| {
            plain.resize(ROWS * groups.len(), ZERO_IQ4XS);
            for (group, rows) in groups
                .chunks_exact(rb)
                .zip(plain.chunks_exact_mut(ROWS * rb))
            {
                unpack_group(group, rows);
            }
            let mut by_row = vec![0f32; out.len()];
            super::rows_batch_dots::<IQ4_XS>(plain, act, act_row, n_tokens, &mut by_row);
            super::transpose_into(&by_row, n_tokens, out);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::{matvec, quantize_act};
    use crate::pool::Pool;
    use crate::quant::testing;
    use crate::quant::x8::check::{self, bits};

    /// Whether `IQ4_XS::vec_dot` is the AVX2 dot (and the 8-row SIMD kernel is built).
    const SIMD: bool = cfg!(x86_simd);

    /// A random IQ4_XS matrix of `rows` × `cols`: random quant and scale bytes, sane f16
    /// `d` in ±[2^-10, 2^-4) (the golden blocks mixed in, so real blocks too).
    fn iq4_xs_matrix(rows: usize, cols: usize, seed: u64) -> Vec<BlockIQ4XS> {
        testing::random_blocks::<IQ4_XS>(rows * cols / QK_K, seed, |next| BlockIQ4XS {
            d: testing::sane_f16(next()),
            scales_h: next() as u16,
            scales_l: (next() as u32).to_le_bytes(),
            qs: std::array::from_fn(|_| next() as u8),
        })
    }

    fn to_bytes(plain: &[BlockIQ4XS]) -> Vec<u8> {
        plain
            .iter()
            .flat_map(|b| {
                let mut v = b.d.to_le_bytes().to_vec();
                v.extend(b.scales_h.to_le_bytes());
                v.extend(b.scales_l);
                v.extend(b.qs);
                v
            })
            .collect()
    }

    fn repack(plain: &[BlockIQ4XS], rows: usize) -> Vec<BlockIQ4XSX8> {
        let rb = plain.len() / rows;
        let mut out = vec![ZERO_X8; plain.len() / ROWS];
        for (src, dst) in plain.chunks_exact(ROWS * rb).zip(out.chunks_exact_mut(rb)) {
            x8::interleave_group(src, dst, interleave);
        }
        out
    }

    #[test]
    fn repacked_bytes_are_the_interleaved_blocks() {
        let (rows, cols) = (24, 768);
        let plain = iq4_xs_matrix(rows, cols, 3);
        let src = to_bytes(&plain);
        assert_eq!(src.len(), rows * cols / QK_K * size_of::<BlockIQ4XS>());
        let mut got = Vec::new();
        repack_iq4_xs_bytes::<()>(&src, cols, |bytes| {
            got.extend_from_slice(bytes);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, x8::as_bytes(&repack(&plain, rows)));
        assert_eq!(got.len(), rows / ROWS * cols / QK_K * 1104);
    }

    #[test]
    fn scales_pack_is_the_inverse_of_sub_scale() {
        for b in iq4_xs_matrix(8, 256 * 8, 1) {
            let s = std::array::from_fn(|j| sub_scale(&b, j) as i8);
            assert!(s.iter().all(|s| (-32..32).contains(s)));
            assert_eq!(pack_scales(&s), (b.scales_h, b.scales_l));
        }
    }

    #[test]
    fn interleave_round_trips() {
        let (rows, cols) = (16, 1024);
        let plain = iq4_xs_matrix(rows, cols, 2);
        let packed = repack(&plain, rows);
        let rb = cols / QK_K;
        let mut back = vec![ZERO_IQ4XS; plain.len()];
        for (src, dst) in packed
            .chunks_exact(rb)
            .zip(back.chunks_exact_mut(ROWS * rb))
        {
            unpack_group(src, dst);
        }
        assert_eq!(to_bytes(&back), to_bytes(&plain));
        // dequantized groups are the IQ4_XS rows' values
        let mut want = vec![0f32; rows * cols];
        IQ4_XS::dequantize_ref(&plain, &mut want);
        let mut got = vec![0f32; rows * cols];
        for (g, out) in packed
            .chunks_exact(rb)
            .zip(got.chunks_exact_mut(ROWS * cols))
        {
            IQ4_XSX8::dequantize_ref(g, out);
        }
        assert_eq!(bits(&got), bits(&want));
    }

    /// matvec of the interleaved matrix equals IQ4_XS's `vec_dot` of every row, bit for
    /// bit, on 1 and 2 threads; the scalar reference too where that dot is the SIMD one.
    #[test]
    fn matvec_equals_iq4_xs_rows_bit_for_bit() {
        check::matvec_shapes::<IQ4_XS, IQ4_XSX8>(
            iq4_xs_matrix,
            repack,
            vec_dot_iq4_xsx8_q8_k_ref,
            SIMD,
            |b, a| (b.d.to_f32() * a.d).abs() * 2e7,
        );
    }

    /// The kernel on extreme blocks: every scale at -32 or 31, every level at -127 or
    /// 113, activations at ±127: no saturation anywhere, still bit for bit.
    #[test]
    fn extreme_blocks_equal_iq4_xs_rows() {
        let (rows, cols) = (8, 1024);
        let rb = cols / QK_K;
        let plain: Vec<BlockIQ4XS> = (0..rows * rb)
            .map(|i| {
                let ls: [i8; 8] = std::array::from_fn(|j| if (i + j) % 3 == 0 { 31 } else { -32 });
                let (scales_h, scales_l) = pack_scales(&ls);
                // nibble 0 is level -127, nibble 15 is 113
                let q = [0x00u8, 0xff, 0x0f, 0xf0][i % 4];
                BlockIQ4XS {
                    d: f16::from_f32(if i % 2 == 0 { 0.03125 } else { -0.0078125 }),
                    scales_h,
                    scales_l,
                    qs: std::array::from_fn(|k| if k % 7 == 0 { !q } else { q }),
                }
            })
            .collect();
        let packed = repack(&plain, rows);
        for sign in [1f32, -1.0] {
            let x: Vec<f32> = (0..cols)
                .map(|c| if c % 5 == 0 { -sign } else { sign })
                .collect();
            let mut act = Vec::new();
            quantize_act::<Q8_K>(&x, cols, &mut act);
            let want: Vec<f32> = plain
                .chunks_exact(rb)
                .map(|row| IQ4_XS::vec_dot(row, &act))
                .collect();
            let pool = Pool::new(1);
            let mut got = vec![f32::NAN; rows];
            matvec::<IQ4_XSX8>(&pool, &packed, &act, &mut got);
            assert_eq!(bits(&got), bits(&want));
        }
    }

    /// Prompt batches of the interleaved matrix equal IQ4_XS's, bit for bit, whatever
    /// path IQ4_XS's batch size takes.
    #[test]
    fn matmul_equals_iq4_xs_bit_for_bit() {
        check_matmul(48, 768, &[2, 3, 4, 5, 8, 19, 64, 67]);
        // several chunks per thread, and 3 batches of tokens per chunk
        check_matmul(512, 3072, &[7, 130]);
    }

    fn check_matmul(rows: usize, cols: usize, batch_sizes: &[usize]) {
        let plain = iq4_xs_matrix(rows, cols, 7);
        check::matmul_equals_plain::<IQ4_XS, IQ4_XSX8>(
            &plain,
            &repack(&plain, rows),
            cols,
            batch_sizes,
        );
    }
}
