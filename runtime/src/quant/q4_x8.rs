//! `Q4_0X8` and `IQ4_NLX8`: Q4_0 and IQ4_NL weights with 8 rows interleaved, the layout
//! the compiler repacks their matmul weights into so that the decode matvec keeps one
//! row per vector lane (as [`super::q4_k_x8`] does for Q4_K).
//!
//! Not ggml types: the bytes are those of 8 rows of 18-byte blocks (an f16 scale and 16
//! bytes of nibbles, the same layout in both formats), rearranged at compile time. One
//! block covers 32 columns of 8 consecutive rows (144 bytes, 4.5 bits per weight):
//!
//! ```text
//! d   [f16; 8]   d of rows 0..8 (one load and one conversion give 8 lanes)
//! qs  [u8; 128]  qs[32k + 4r + i] = byte 4k + i of row r (k = 0..4, i = 0..4)
//! ```
//!
//! So 32 consecutive bytes hold 4 bytes of each row: the low nibbles are its weights
//! `4k..4k + 4`, the high nibbles its weights `16 + 4k..20 + 4k`. Dotted with those 4
//! activation bytes, broadcast, each row's products land in its own 32-bit lane.
//!
//! The arithmetic per row is that of the plain format (one row per f32 lane, the block's
//! exact integer sum, then `acc = fma(sum, d_w d_a, acc)` block after block: see
//! [`super::q4_0::vec_dot_q4_0_q8_0_ref`]), so every row's result equals the plain
//! format's `vec_dot` of the row to the bit, in decode and in prompt batches alike.

use std::marker::PhantomData;

use crate::float16::f16;

use super::iq4_nl::{BlockIQ4NL, IQ4_NL};
use super::iq_grids::KVALUES_IQ4NL;
use super::q4_0::{BlockQ4_0, Q4_0};
use super::q8_0::{BlockQ8_0, Q8_0};
use super::{x8, WeightType};

pub use super::x8::ROWS;
/// Columns per block.
pub const QK: usize = 32;
/// Bytes of one plain block (f16 scale, 16 bytes of nibbles).
pub const PLAIN_BLOCK_BYTES: usize = 18;

/// 32 columns of 8 interleaved rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockX8 {
    pub d: [f16; ROWS],
    pub qs: [u8; QK / 2 * ROWS],
}

const _: () = assert!(std::mem::size_of::<BlockX8>() == ROWS * PLAIN_BLOCK_BYTES);

/// A plain 4-bit format of 32-weight blocks whose rows can be interleaved: the weight of
/// nibble `q` is `d * level(q)`.
pub trait Nibbles: WeightType<Act = Q8_0> {
    /// The interleaved type's name (`Q4_0X8`).
    const X8_NAME: &'static str;
    /// Whether the levels are a table ([`KVALUES_IQ4NL`]) rather than `q - 8`.
    const TABLE: bool;
    /// The weight level of nibble `q` (before the scale).
    fn level(q: u8) -> i32;
    /// A block's scale and nibbles.
    fn parts(b: &Self::Block) -> (f16, [u8; QK / 2]);
    /// The block of a scale and nibbles.
    fn block(d: f16, qs: [u8; QK / 2]) -> Self::Block;
}

impl Nibbles for Q4_0 {
    const X8_NAME: &'static str = "Q4_0X8";
    const TABLE: bool = false;
    fn level(q: u8) -> i32 {
        q as i32 - 8
    }
    fn parts(b: &BlockQ4_0) -> (f16, [u8; 16]) {
        (b.d, b.qs)
    }
    fn block(d: f16, qs: [u8; 16]) -> BlockQ4_0 {
        BlockQ4_0 { d, qs }
    }
}

impl Nibbles for IQ4_NL {
    const X8_NAME: &'static str = "IQ4_NLX8";
    const TABLE: bool = true;
    fn level(q: u8) -> i32 {
        KVALUES_IQ4NL[q as usize] as i32
    }
    fn parts(b: &BlockIQ4NL) -> (f16, [u8; 16]) {
        (b.d, b.qs)
    }
    fn block(d: f16, qs: [u8; 16]) -> BlockIQ4NL {
        BlockIQ4NL { d, qs }
    }
}

/// 8-row-interleaved weights of the plain format `P`, dotted with Q8_0 activations.
#[derive(Debug, Default)]
pub struct X8<P>(PhantomData<P>);

impl<P> Clone for X8<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for X8<P> {}

/// Q4_0 rows, 8 interleaved.
#[allow(non_camel_case_types)]
pub type Q4_0X8 = X8<Q4_0>;
/// IQ4_NL rows, 8 interleaved.
#[allow(non_camel_case_types)]
pub type IQ4_NLX8 = X8<IQ4_NL>;

/// Index in [`BlockX8::qs`] of byte `byte` (0..16) of row `r`.
#[inline(always)]
const fn qs_index(r: usize, byte: usize) -> usize {
    32 * (byte / 4) + 4 * r + byte % 4
}

/// Interleaves one block of 8 rows: `rows[r]` is row `r`'s `(d, qs)`.
pub fn interleave(rows: [(f16, [u8; QK / 2]); ROWS]) -> BlockX8 {
    let mut out = BlockX8 {
        d: [f16::ZERO; ROWS],
        qs: [0; QK / 2 * ROWS],
    };
    for (r, (d, qs)) in rows.iter().enumerate() {
        out.d[r] = *d;
        for (byte, &q) in qs.iter().enumerate() {
            out.qs[qs_index(r, byte)] = q;
        }
    }
    out
}

/// Row `r`'s scale and nibbles of an interleaved block: the inverse of [`interleave`].
pub fn row_of(b: &BlockX8, r: usize) -> (f16, [u8; QK / 2]) {
    (b.d[r], std::array::from_fn(|byte| b.qs[qs_index(r, byte)]))
}

/// Repacks a tensor's bytes, the way the compiler writes them into the weight blob:
/// `src` is a `P` matrix (Q4_0 or IQ4_NL) of `cols` columns as the GGUF stores it (any
/// number of whole groups of 8 rows), and `write` gets the interleaved bytes group by
/// group. Returns `write`'s first error.
pub fn repack_bytes<P: Nibbles, E>(
    src: &[u8],
    cols: usize,
    write: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let rows = |rows: [&P::Block; ROWS]| interleave(rows.map(P::parts));
    x8::repack_matrix::<P, _, _>(P::X8_NAME, src, cols, rows, write)
}

// SAFETY: `#[repr(C)]` of f16 and u8 arrays, its size asserted to be theirs.
unsafe impl x8::PlainBytes for BlockX8 {}

/// Scalar reference of the 8-row dot: `out[r]` = row `r` of the group `w` · `act`, read
/// straight from the interleaved layout.
pub fn vec_dot_x8_ref<P: Nibbles>(w: &[BlockX8], act: &[BlockQ8_0], out: &mut [f32; ROWS]) {
    debug_assert_eq!(w.len(), act.len());
    let mut acc = [0f32; ROWS];
    for (b, a) in w.iter().zip(act) {
        for (r, acc) in acc.iter_mut().enumerate() {
            let mut sum = 0i32;
            for byte in 0..QK / 2 {
                let q = b.qs[qs_index(r, byte)];
                sum += P::level(q & 0x0f) * a.qs[byte] as i32;
                sum += P::level(q >> 4) * a.qs[byte + 16] as i32;
            }
            *acc = (sum as f32).mul_add(b.d[r].to_f32() * a.d.to_f32(), *acc);
        }
    }
    *out = acc;
}

/// Rows of `rb` blocks in each of `groups` (consecutive groups) times tokens `t` of
/// `act` (`act_row` blocks each): `out[t * n_rows + 8 g + r]`.
fn groups_dots<P: Nibbles>(
    groups: &[BlockX8],
    act: &[BlockQ8_0],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    #[cfg(x86_simd)]
    super::x86_avx2::q4_x8::groups_dots::<P>(groups, act, act_row, n_tokens, out);
    #[cfg(not(x86_simd))]
    for (g, group) in groups.chunks_exact(act_row).enumerate() {
        let n_rows = groups.len() / act_row * ROWS;
        for t in 0..n_tokens {
            let dots: &mut [f32; ROWS] = (&mut out[t * n_rows + g * ROWS..][..ROWS])
                .try_into()
                .expect("8 rows");
            vec_dot_x8_ref::<P>(group, &act[t * act_row..(t + 1) * act_row], dots);
        }
    }
}

impl<P: Nibbles> WeightType for X8<P> {
    const NAME: &'static str = P::X8_NAME;
    /// Not a ggml type: no GGUF holds it (an id no ggml type uses).
    const GGML_ID: u32 = u32::MAX;
    const BLOCK_ELEMS: usize = QK;
    const ROW_GROUP: usize = ROWS;
    type Block = BlockX8;
    type Act = Q8_0;

    /// `blocks` is one group's run of blocks; `out` gets its 8 rows, row-major.
    fn dequantize_ref(blocks: &[BlockX8], out: &mut [f32]) {
        let rb = blocks.len();
        assert_eq!(out.len(), ROWS * rb * QK);
        for (r, row) in out.chunks_exact_mut(rb * QK).enumerate() {
            let plain: Vec<P::Block> = blocks
                .iter()
                .map(|b| {
                    let (d, qs) = row_of(b, r);
                    P::block(d, qs)
                })
                .collect();
            P::dequantize_ref(&plain, row);
        }
    }

    fn vec_dot_ref(_row: &[BlockX8], _act: &[BlockQ8_0]) -> f32 {
        unreachable!(
            "{} has no one-row dot: matvec takes vec_dot_rows",
            P::X8_NAME
        )
    }

    fn vec_dot_rows(w: &[BlockX8], act: &[BlockQ8_0], out: &mut [f32]) {
        let rb = act.len();
        assert_eq!(
            w.len() * ROWS,
            out.len() * rb,
            "{}: {} blocks for {} rows of {rb}",
            P::X8_NAME,
            w.len(),
            out.len()
        );
        groups_dots::<P>(w, act, rb, 1, out);
    }

    /// Several tokens' `vec_dot_rows` at once.
    fn rows_token_dots(
        w: &[BlockX8],
        act: &[BlockQ8_0],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        groups_dots::<P>(w, act, act_row, n_tokens, out);
    }

    /// The dots straight from the interleaved blocks: one row per lane, as in decode,
    /// which is also the plain format's arithmetic for a batch (its tile kernels equal
    /// its `vec_dot`).
    fn groups_batch_dots(
        groups: &[BlockX8],
        act: &[BlockQ8_0],
        act_row: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        groups_dots::<P>(groups, act, act_row, n_tokens, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::{matmul, matvec, quantize_act};
    use crate::pool::Pool;
    use crate::quant::testing;

    /// A random matrix of `rows` × `cols` of `P`: random nibbles, f16 scales of either
    /// sign in ±[2^-10, 2^-4) (the golden blocks mixed in, so real blocks too).
    fn matrix<P: Nibbles>(rows: usize, cols: usize, seed: u64) -> Vec<P::Block> {
        testing::random_blocks::<P>(rows * cols / QK, seed, |next| {
            P::block(
                testing::sane_f16(next()),
                std::array::from_fn(|_| next() as u8),
            )
        })
    }

    fn to_bytes<P: Nibbles>(plain: &[P::Block]) -> Vec<u8> {
        plain
            .iter()
            .flat_map(|b| {
                let (d, qs) = P::parts(b);
                let mut v = d.to_le_bytes().to_vec();
                v.extend(qs);
                v
            })
            .collect()
    }

    fn repack<P: Nibbles>(plain: &[P::Block], cols: usize) -> Vec<BlockX8> {
        let mut bytes = Vec::new();
        repack_bytes::<P, ()>(&to_bytes::<P>(plain), cols, |b| {
            bytes.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        bytes
            .chunks_exact(std::mem::size_of::<BlockX8>())
            .map(|b| {
                let d = std::array::from_fn(|r| f16::from_le_bytes([b[2 * r], b[2 * r + 1]]));
                BlockX8 {
                    d,
                    qs: b[16..].try_into().unwrap(),
                }
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn round_trips<P: Nibbles>() {
        let (rows, cols) = (16, 256);
        let plain = matrix::<P>(rows, cols, 2);
        let packed = repack::<P>(&plain, cols);
        let rb = cols / QK;
        for (g, group) in packed.chunks_exact(rb).enumerate() {
            for r in 0..ROWS {
                for (k, b) in group.iter().enumerate() {
                    let (d, qs) = P::parts(&plain[(g * ROWS + r) * rb + k]);
                    assert_eq!(row_of(b, r), (d, qs));
                }
            }
        }
        let mut want = vec![0f32; rows * cols];
        P::dequantize_ref(&plain, &mut want);
        let mut got = vec![0f32; rows * cols];
        for (g, out) in packed
            .chunks_exact(rb)
            .zip(got.chunks_exact_mut(ROWS * cols))
        {
            X8::<P>::dequantize_ref(g, out);
        }
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn interleave_round_trips() {
        round_trips::<Q4_0>();
        round_trips::<IQ4_NL>();
    }

    /// matvec of the interleaved matrix equals the plain format's `vec_dot` of every row,
    /// bit for bit, in the SIMD kernel and the scalar reference, on 1 and 2 threads.
    fn matvec_equals_plain_rows<P: Nibbles>() {
        for (i, &(rows, cols)) in [(8, 32), (16, 64), (24, 3072), (64, 576), (40, 9216)]
            .iter()
            .enumerate()
        {
            let plain = matrix::<P>(rows, cols, 10 + i as u64);
            let packed = repack::<P>(&plain, cols);
            let x = testing::activations(cols, i as u64);
            let mut act = Vec::new();
            quantize_act::<Q8_0>(&x, cols, &mut act);
            let rb = cols / QK;
            let want: Vec<f32> = plain
                .chunks_exact(rb)
                .map(|row| P::vec_dot(row, &act))
                .collect();
            let reference: Vec<f32> = plain
                .chunks_exact(rb)
                .map(|row| P::vec_dot_ref(row, &act))
                .collect();
            assert_eq!(bits(&reference), bits(&want), "plain {rows}x{cols}");
            let mut x8_ref = vec![f32::NAN; rows];
            for (g, out) in packed.chunks_exact(rb).zip(x8_ref.chunks_exact_mut(ROWS)) {
                vec_dot_x8_ref::<P>(g, &act, out.try_into().unwrap());
            }
            assert_eq!(bits(&x8_ref), bits(&want), "reference {rows}x{cols}");
            for threads in [1, 2] {
                let pool = Pool::new(threads);
                let mut got = vec![f32::NAN; rows];
                matvec::<X8<P>>(&pool, &packed, &act, &mut got);
                assert_eq!(bits(&got), bits(&want), "{rows}x{cols}, {threads} threads");
            }
        }
    }

    #[test]
    fn q4_0_matvec_equals_rows_bit_for_bit() {
        matvec_equals_plain_rows::<Q4_0>();
    }

    #[test]
    fn iq4_nl_matvec_equals_rows_bit_for_bit() {
        matvec_equals_plain_rows::<IQ4_NL>();
    }

    /// Prompt batches of the interleaved matrix equal the plain format's, bit for bit.
    fn matmul_equals_plain<P: Nibbles>(rows: usize, cols: usize, batch_sizes: &[usize]) {
        let plain = matrix::<P>(rows, cols, 7);
        let packed = repack::<P>(&plain, cols);
        for &n in batch_sizes {
            let x = testing::activations(n * cols, n as u64);
            let mut act = Vec::new();
            quantize_act::<Q8_0>(&x, cols, &mut act);
            for threads in [1, 2] {
                let pool = Pool::new(threads);
                let mut want = vec![f32::NAN; n * rows];
                matmul::<P>(&pool, &plain, &act, n, &mut want);
                let mut got = vec![f32::NAN; n * rows];
                matmul::<X8<P>>(&pool, &packed, &act, n, &mut got);
                assert_eq!(bits(&got), bits(&want), "n={n}, {threads} threads");
            }
        }
    }

    #[test]
    fn matmul_equals_plain_bit_for_bit() {
        matmul_equals_plain::<Q4_0>(48, 768, &[2, 3, 4, 5, 8, 19, 64, 67]);
        matmul_equals_plain::<IQ4_NL>(48, 768, &[2, 3, 4, 5, 8, 19]);
        // several chunks per thread
        matmul_equals_plain::<Q4_0>(512, 3072, &[7, 130]);
        matmul_equals_plain::<IQ4_NL>(512, 3072, &[7]);
    }
}
