//! Q5_0: blocks of 32 five-bit quants with one f16 scale, symmetric around 16
//! (5.5 bits per weight). Dotted with Q8_0 activations.

use crate::float16::f16;

use super::q4_0::unpack_nibbles;
use super::q8_0::{BlockQ8_0, Q8_0};
use super::quantize::{c_float_to_int, ggml_f16, make_qx_quants, quantize_legacy_row};
use super::{check_quantize_lengths, Quantize, WeightType};

/// Weights per Q5_0 block.
pub const QK5_0: usize = 32;

/// One Q5_0 block: `x[i] = d * (q[i] - 16)`, `q[i]` in 0..32.
///
/// Layout (22 bytes): `d: f16`, `qh: [u8; 4]` (a little-endian u32 whose bit `i` is bit 4
/// of `q[i]`), `qs: [u8; 16]` (the low four bits, nibble order as in Q4_0: byte `j` holds
/// value `j` in its low nibble and value `j + 16` in its high nibble).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_0 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// Marker for the Q5_0 format (ggml type 6).
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q5_0;

/// The 32 five-bit quants of a block in value order: nibbles plus bit `i` of `qh` as
/// bit 4 of value `i`.
#[inline(always)]
pub(crate) fn unpack_q5(qh: &[u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let high = u32::from_le_bytes(*qh);
    let mut q = unpack_nibbles(qs);
    for (i, v) in q.iter_mut().enumerate() {
        *v |= (((high >> i) & 1) as u8) << 4;
    }
    q
}

/// Packs 32 quants (value order; bits above the fifth are dropped) into `qh` and `qs`:
/// the inverse of [`unpack_q5`].
#[inline(always)]
pub(crate) fn pack_q5(q: &[u8; 32]) -> ([u8; 4], [u8; 16]) {
    let mut high = 0u32;
    for (i, &v) in q.iter().enumerate() {
        high |= (((v & 0x10) >> 4) as u32) << i;
    }
    let qs = std::array::from_fn(|j| (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
    (high.to_le_bytes(), qs)
}

/// Scalar dot of a Q5_0 row with Q8_0 activations: per block the integer sum
/// `sum (q_w - 16) * q_a`, scaled by the f32 product `d_w * d_a`, accumulated in f32.
pub fn vec_dot_q5_0_q8_0_ref(row: &[BlockQ5_0], act: &[BlockQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len(), "Q5_0 vec_dot: length");
    let mut sum = 0f32;
    for (w, a) in row.iter().zip(act) {
        let q = unpack_q5(&w.qh, &w.qs);
        let sumi: i32 = q
            .iter()
            .zip(&a.qs)
            .map(|(&x, &y)| (x as i32 - 16) * y as i32)
            .sum();
        sum += (w.d.to_f32() * a.d.to_f32()) * sumi as f32;
    }
    sum
}

impl WeightType for Q5_0 {
    const NAME: &'static str = "Q5_0";
    const GGML_ID: u32 = 6;
    const BLOCK_ELEMS: usize = QK5_0;
    type Block = BlockQ5_0;
    type Act = Q8_0;

    fn dequantize_ref(blocks: &[BlockQ5_0], out: &mut [f32]) {
        assert_eq!(out.len(), blocks.len() * QK5_0, "Q5_0 dequantize: length");
        for (block, ys) in blocks.iter().zip(out.chunks_exact_mut(QK5_0)) {
            let d = block.d.to_f32();
            for (y, q) in ys.iter_mut().zip(unpack_q5(&block.qh, &block.qs)) {
                *y = d * (q as i32 - 16) as f32;
            }
        }
    }

    fn vec_dot_ref(row: &[BlockQ5_0], act: &[BlockQ8_0]) -> f32 {
        vec_dot_q5_0_q8_0_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ5_0], act: &[BlockQ8_0]) -> f32 {
        super::x86_avx2::legacy::vec_dot_q5_0_q8_0(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_rows(w: &[BlockQ5_0], act: &[BlockQ8_0], out: &mut [f32]) {
        super::x86_avx2::tiles::rows_q5_0_q8_0(w, act, out)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot_tile(
        w: &[BlockQ5_0],
        act: &[BlockQ8_0],
        stride: usize,
        out: &mut [[f32; super::TILE]; super::TILE],
    ) {
        super::x86_avx2::tiles::tile_q5_0_q8_0(w, act, stride, out)
    }

    #[cfg(x86_simd)]
    const GEMM: Option<super::Gemm<Self>> = Some(super::x86_avx2::gemm::matmul_q5_0);
}

/// One block without importance weights: the value of largest magnitude `max` gets the
/// quant 0, `d = max / -16`, and every value rounds to `q = trunc(x / d + 16.5)`, at
/// most 31 (through an i8, as ggml's does).
fn quantize_block_plain(x: &[f32]) -> BlockQ5_0 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q: [u8; 32] =
        std::array::from_fn(|j| (c_float_to_int(x[j] * id + 16.5) as i8).min(31) as u8);
    let (qh, qs) = pack_q5(&q);
    BlockQ5_0 {
        d: ggml_f16(d),
        qh,
        qs,
    }
}

impl Quantize for Q5_0 {
    /// Without an importance matrix, each block on its own (`quantize_block_plain`).
    /// With one, as Q4_0 does with quants `-16..16`: weights
    /// `imatrix[i] * sqrt(sigma2 + x_i²)`, the best of ggml's candidate scales
    /// (`make_qx_quants`).
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ5_0]) {
        check_quantize_lengths::<Q5_0>(x, imatrix, out);
        quantize_legacy_row(
            x,
            imatrix,
            out,
            quantize_block_plain,
            |xb, w: &[f32; QK5_0]| {
                let mut l = [0i8; QK5_0];
                let d = make_qx_quants(xb, 16, &mut l, Some(w));
                let (qh, qs) = pack_q5(&l.map(|v| v as u8));
                BlockQ5_0 {
                    d: ggml_f16(d),
                    qh,
                    qs,
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
        testing::check_quantize::<Q5_0>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<Q5_0>(32);
    }

    #[test]
    fn dequantize_matches_gguf_py() {
        // d * (q - 16): one f32 rounding of exact operands on both sides.
        testing::check_dequantize::<Q5_0>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // As Q4_0: exact integer sums and scale products, so only f32 rounding of the
        // 64 block products and their running sum, ~65 * 2^-24 ≈ 4e-6.
        testing::check_vec_dot::<Q5_0>(1e-5);
    }

    #[test]
    fn high_bits() {
        let b = BlockQ5_0 {
            d: f16::from_f32(1.0),
            qh: 0x8000_0001u32.to_le_bytes(),
            qs: [0; 16],
        };
        let mut y = [0f32; 32];
        Q5_0::dequantize_ref(&[b], &mut y);
        // value 0 and value 31 have bit 4 set: 16 - 16 = 0; the rest are 0 - 16
        assert_eq!((y[0], y[1], y[16], y[31]), (0.0, -16.0, -16.0, 0.0));
    }
}
