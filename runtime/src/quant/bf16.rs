//! BF16: the upper 16 bits of an IEEE single (8-bit exponent, 7-bit mantissa), one
//! "block" per weight (16 bits per weight). ggml pairs BF16 weights with activations
//! rounded to bf16 (nearest even), so each product of two bf16 is exact in f32.

use crate::float16::bf16;

use super::{check_quantize_lengths, ActType, Quantize, WeightType};

/// Marker for the BF16 format (ggml type 30), as weights and as activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct BF16;

impl ActType for BF16 {
    const NAME: &'static str = "BF16";
    const BLOCK_ELEMS: usize = 1;
    type Block = bf16;

    /// Round to nearest even; NaN stays a (quiet) NaN.
    fn quantize_ref(x: &[f32], out: &mut [bf16]) {
        assert_eq!(x.len(), out.len(), "BF16 quantize: length");
        for (o, &v) in out.iter_mut().zip(x) {
            *o = bf16::from_f32(v);
        }
    }

    fn dequantize_ref(blocks: &[bf16], out: &mut [f32]) {
        assert_eq!(out.len(), blocks.len(), "BF16 dequantize: length");
        for (o, v) in out.iter_mut().zip(blocks) {
            *o = v.to_f32();
        }
    }
}

/// Scalar dot: the exact f32 products summed in f64, then rounded once to f32.
pub fn vec_dot_bf16_bf16_ref(row: &[bf16], act: &[bf16]) -> f32 {
    assert_eq!(row.len(), act.len(), "BF16 vec_dot: length");
    row.iter()
        .zip(act)
        .map(|(w, a)| (w.to_f32() * a.to_f32()) as f64)
        .sum::<f64>() as f32
}

impl WeightType for BF16 {
    const NAME: &'static str = "BF16";
    const GGML_ID: u32 = 30;
    const BLOCK_ELEMS: usize = 1;
    type Block = bf16;
    type Act = BF16;

    fn dequantize_ref(blocks: &[bf16], out: &mut [f32]) {
        <BF16 as ActType>::dequantize_ref(blocks, out);
    }

    fn vec_dot_ref(row: &[bf16], act: &[bf16]) -> f32 {
        vec_dot_bf16_bf16_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[bf16], act: &[bf16]) -> f32 {
        super::x86_avx2::legacy::vec_dot_bf16_bf16(row, act)
    }
}

/// ggml's model-file conversion to BF16: the top half of each f32, rounded to nearest
/// even, a NaN kept with its quiet bit forced (no use for the importance vector).
impl Quantize for BF16 {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [bf16]) {
        check_quantize_lengths::<BF16>(x, imatrix, out);
        for (o, &v) in out.iter_mut().zip(x) {
            *o = bf16::from_f32(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // widening bf16 -> f32 is a shift: exact
        testing::check_dequantize::<BF16>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Products of two bf16 (8 significant bits each) are exact in f32; as for F16,
        // only the f32 summation in the SIMD dot rounds: below ~70 * 2^-24 ≈ 4e-6.
        testing::check_vec_dot::<BF16>(1e-5);
    }

    #[test]
    fn quantize_rounds_to_nearest_even() {
        let x = [
            f32::from_bits(0x3F80_8000), // tie, even below: 1.0
            f32::from_bits(0x3F81_8000), // tie, odd below: rounds up
            f32::from_bits(0x3F80_8001), // above the tie: rounds up
        ];
        let mut out = [bf16::ZERO; 3];
        BF16::quantize(&x, &mut out);
        assert_eq!(out.map(|b| b.to_bits()), [0x3F80, 0x3F82, 0x3F81]);
    }

    #[test]
    fn model_file_conversion_is_ggmls() {
        // Ties to even; a NaN keeps its top payload bits with the quiet bit forced.
        let x = [
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x7f80_0001 | 0x0010_0000),
        ];
        let mut out = [bf16::ZERO; 3];
        <BF16 as Quantize>::quantize_row(&x, None, &mut out);
        let bits: Vec<u16> = out.iter().map(|h| h.to_bits()).collect();
        assert_eq!(bits, [0x3f80, 0x3f82, 0x7fd0]);
    }
}
