//! F32: plain IEEE single floats, one "block" per weight (32 bits per weight).
//! Dotted with f32 activations, as ggml does.

use super::{check_quantize_lengths, ActType, Quantize, WeightType};

#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct F32;

impl ActType for F32 {
    const NAME: &'static str = "F32";
    const BLOCK_ELEMS: usize = 1;
    type Block = f32;

    fn quantize_ref(x: &[f32], out: &mut [f32]) {
        out.copy_from_slice(x);
    }

    fn dequantize_ref(blocks: &[f32], out: &mut [f32]) {
        out.copy_from_slice(blocks);
    }
}

impl WeightType for F32 {
    const NAME: &'static str = "F32";
    const GGML_ID: u32 = 0;
    const BLOCK_ELEMS: usize = 1;
    type Block = f32;
    type Act = F32;

    fn dequantize_ref(blocks: &[f32], out: &mut [f32]) {
        out.copy_from_slice(blocks);
    }

    fn vec_dot_ref(row: &[f32], act: &[f32]) -> f32 {
        row.iter().zip(act).map(|(w, a)| w * a).sum()
    }
}

/// F32 "quantization" is a copy, as in ggml.
impl Quantize for F32 {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [f32]) {
        check_quantize_lengths::<F32>(x, imatrix, out);
        out.copy_from_slice(x);
    }
}

#[cfg(test)]
mod tests {
    use super::F32;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        testing::check_dequantize::<F32>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        testing::check_vec_dot::<F32>(1e-6);
    }
}
