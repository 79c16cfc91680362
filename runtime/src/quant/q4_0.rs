//! Q4_0: blocks of 32 four-bit quants with one f16 scale, symmetric around 8
//! (4.5 bits per weight). Dotted with Q8_0 activations.

use crate::float16::f16;

use super::q8_0::{BlockQ8_0, Q8_0};
use super::quantize::{c_float_to_int, ggml_f16, make_qx_quants, quantize_legacy_row};
use super::{check_quantize_lengths, Quantize, WeightType};

/// Weights per Q4_0 block.
pub const QK4_0: usize = 32;

/// One Q4_0 block: `x[i] = d * (q[i] - 8)`, `q[i]` in 0..16.
///
/// Layout (18 bytes): `d: f16`, then `qs: [u8; 16]`. Byte `j` holds `q[j]` in its low
/// nibble and `q[j + 16]` in its high nibble: the low nibbles are the first half of the
/// block, the high nibbles the second half.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK4_0 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// Marker for the Q4_0 format (ggml type 2).
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q4_0;

/// The 32 nibbles of a 4-bit block in value order (low nibbles, then high nibbles).
#[inline(always)]
pub(crate) fn unpack_nibbles(qs: &[u8; 16]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for (j, &b) in qs.iter().enumerate() {
        q[j] = b & 0x0F;
        q[j + 16] = b >> 4;
    }
    q
}

/// Scalar dot of a Q4_0 row with Q8_0 activations: per block the integer sum
/// `sumi = sum (q_w - 8) * q_a`, then `acc = fma(sumi, d_w * d_a, acc)` in f32, block after
/// block.
///
/// This is the arithmetic of llama.cpp's default Q4_0 path on AVX2 CPUs, where the CPU
/// backend repacks Q4_0 matrices (with a multiple of 8 rows, i.e. all real ones) into
/// 8-row interleaved blocks and gives each row one f32 lane that takes one FMA per block,
/// in decode and prefill alike. (Its plain `vec_dot`, used without repacking, sums 8
/// partial lanes instead; the two differ in the last bits.)
pub fn vec_dot_q4_0_q8_0_ref(row: &[BlockQ4_0], act: &[BlockQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len(), "Q4_0 vec_dot: length");
    let mut acc = 0f32;
    for (w, a) in row.iter().zip(act) {
        let q = unpack_nibbles(&w.qs);
        let sumi: i32 = q
            .iter()
            .zip(&a.qs)
            .map(|(&x, &y)| (x as i32 - 8) * y as i32)
            .sum();
        acc = (sumi as f32).mul_add(w.d.to_f32() * a.d.to_f32(), acc);
    }
    acc
}

impl WeightType for Q4_0 {
    const NAME: &'static str = "Q4_0";
    const GGML_ID: u32 = 2;
    const BLOCK_ELEMS: usize = QK4_0;
    type Block = BlockQ4_0;
    type Act = Q8_0;

    fn dequantize_ref(blocks: &[BlockQ4_0], out: &mut [f32]) {
        assert_eq!(out.len(), blocks.len() * QK4_0, "Q4_0 dequantize: length");
        for (block, ys) in blocks.iter().zip(out.chunks_exact_mut(QK4_0)) {
            let d = block.d.to_f32();
            for (y, q) in ys.iter_mut().zip(unpack_nibbles(&block.qs)) {
                *y = d * (q as i32 - 8) as f32;
            }
        }
    }

    fn vec_dot_ref(row: &[BlockQ4_0], act: &[BlockQ8_0]) -> f32 {
        vec_dot_q4_0_q8_0_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ4_0], act: &[BlockQ8_0]) -> f32 {
        super::x86_avx2::tiles::vec_dot_q4_0_q8_0(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_rows(w: &[BlockQ4_0], act: &[BlockQ8_0], out: &mut [f32]) {
        super::x86_avx2::tiles::rows_q4_0_q8_0(w, act, out)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_tile(
        w: &[BlockQ4_0],
        act: &[BlockQ8_0],
        stride: usize,
        out: &mut [[f32; super::TILE]; super::TILE],
    ) {
        super::x86_avx2::tiles::tile_q4_0_q8_0(w, act, stride, out)
    }
}

/// Packs 32 quants (`0..16`, value order) two per byte: `q[j]` low, `q[j + 16]` high.
#[inline(always)]
pub(crate) fn pack_nibbles(q: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| q[j] | (q[j + 16] << 4))
}

/// One block without importance weights: the value of largest magnitude `max` gets the
/// quant 0, `d = max / -8`, and every value rounds to `q = trunc(x / d + 8.5)`, at most
/// 15. (`trunc` as C converts: see [`c_float_to_int`]; the result goes through an i8,
/// as ggml's does.)
fn quantize_block_plain(x: &[f32]) -> BlockQ4_0 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q: [u8; 32] =
        std::array::from_fn(|j| (c_float_to_int(x[j] * id + 8.5) as i8).min(15) as u8);
    BlockQ4_0 {
        d: ggml_f16(d),
        qs: pack_nibbles(&q),
    }
}

impl Quantize for Q4_0 {
    /// Without an importance matrix, each block on its own (`quantize_block_plain`).
    /// With one, the weight of value `i` is `imatrix[i] * sqrt(sigma2 + x_i²)`, `sigma2`
    /// the mean square of the whole row, and the block's quants and scale are the best of
    /// ggml's candidate scales for that weighted error
    /// (`make_qx_quants`, quants `-8..8`).
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ4_0]) {
        check_quantize_lengths::<Q4_0>(x, imatrix, out);
        quantize_legacy_row(
            x,
            imatrix,
            out,
            quantize_block_plain,
            |xb, w: &[f32; QK4_0]| {
                let mut l = [0i8; QK4_0];
                let d = make_qx_quants(xb, 8, &mut l, Some(w));
                BlockQ4_0 {
                    d: ggml_f16(d),
                    qs: pack_nibbles(&l.map(|v| v as u8)),
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<Q4_0>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<Q4_0>(16);
    }

    #[test]
    fn dequantize_matches_gguf_py() {
        // d * (q - 8): one f32 rounding of exact operands on both sides.
        testing::check_dequantize::<Q4_0>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Integer block sums are exact and d_w * d_a (two f16) is exact in f32; what is
        // left is one f32 rounding per block FMA over the 64 golden blocks: at most
        // ~64 * 2^-24 ≈ 4e-6 of sum |w a|.
        testing::check_vec_dot::<Q4_0>(1e-5);
    }

    #[test]
    fn nibble_order() {
        let mut b = BlockQ4_0 {
            d: f16::from_f32(1.0),
            qs: [0x88; 16],
        };
        b.qs[0] = 0xF0; // q[0] = 0 -> -8, q[16] = 15 -> 7
        let mut y = [0f32; 32];
        Q4_0::dequantize_ref(&[b], &mut y);
        assert_eq!((y[0], y[16], y[1]), (-8.0, 7.0, 0.0));
    }
}
