//! Q8_1: the activation format that Q4_1 and Q5_1 weights are dotted with
//! (9 bits per value). Like Q8_0, plus `s = d * sum(qs)` so that the weights' offset
//! `m` contributes `m * s` per block without touching the quants.

use crate::float16::f16;

use super::q8_0::quantize_block_q8;
use super::ActType;

/// Values per Q8_1 block.
pub const QK8_1: usize = 32;

/// One Q8_1 block: `x[i] = d * qs[i]`, and `s = d * sum_i qs[i]`.
///
/// Layout (36 bytes): `d: f16`, `s: f16`, `qs: [i8; 32]`. Both `d` and `s` are rounded
/// to f16 from their f32 values, so `s` carries a relative error of up to 2^-11 that the
/// dot products inherit (see `q4_1`'s error bound).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK8_1],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// Marker for the Q8_1 activation format (ggml type 9).
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q8_1;

impl ActType for Q8_1 {
    const NAME: &'static str = "Q8_1";
    const BLOCK_ELEMS: usize = QK8_1;
    type Block = BlockQ8_1;

    /// Quants and `d` exactly as Q8_0 (see `quantize_block_q8`); `s` is the f32 product
    /// of the f32 (not yet f16-rounded) `d` with the integer sum, then rounded to f16.
    fn quantize_ref(x: &[f32], out: &mut [BlockQ8_1]) {
        assert_eq!(x.len(), out.len() * QK8_1, "Q8_1 quantize: length");
        for (block, xs) in out.iter_mut().zip(x.chunks_exact(QK8_1)) {
            let d = quantize_block_q8(xs, &mut block.qs);
            let sum: i32 = block.qs.iter().map(|&q| q as i32).sum();
            block.d = f16::from_f32(d);
            block.s = f16::from_f32(d * sum as f32);
        }
    }

    fn dequantize_ref(blocks: &[BlockQ8_1], out: &mut [f32]) {
        assert_eq!(out.len(), blocks.len() * QK8_1, "Q8_1 dequantize: length");
        for (block, ys) in blocks.iter().zip(out.chunks_exact_mut(QK8_1)) {
            let d = block.d.to_f32();
            for (y, &q) in ys.iter_mut().zip(&block.qs) {
                *y = d * q as f32;
            }
        }
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn quantize(x: &[f32], out: &mut [BlockQ8_1]) {
        super::x86_avx2::legacy::quantize_q8_1(x, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::q8_0::{BlockQ8_0, Q8_0};
    use crate::quant::testing;

    fn check_quantize(x: &[f32]) {
        let n = x.len() / QK8_1;
        let mut got = vec![BlockQ8_1::default(); n];
        let mut fast = got.clone();
        let mut q8_0 = vec![BlockQ8_0::default(); n];
        Q8_1::quantize_ref(x, &mut got);
        Q8_1::quantize(x, &mut fast);
        <Q8_0 as ActType>::quantize_ref(x, &mut q8_0);
        for (i, ((b, r), xs)) in got.iter().zip(&q8_0).zip(x.chunks_exact(QK8_1)).enumerate() {
            // quants and d are Q8_0's (whose formula is tested in q8_0.rs)
            assert_eq!((b.d, b.qs), (r.d, r.qs), "block {i}");
            let amax = xs.iter().map(|v| v.abs()).fold(0f32, f32::max);
            let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            let s = f16::from_f32(amax / 127.0 * sum as f32);
            assert_eq!(b.s.to_bits(), s.to_bits(), "block {i}: s");
            assert_eq!(*b, fast[i], "block {i}: SIMD quantize differs");
        }
    }

    #[test]
    fn quantize_edge_cases() {
        check_quantize(&[0f32; 32]);
        let mut b = [BlockQ8_1::default()];
        Q8_1::quantize(&[0f32; 32], &mut b);
        assert_eq!(
            (b[0].d.to_f32(), b[0].s.to_f32(), b[0].qs),
            (0.0, 0.0, [0; 32])
        );

        // one big outlier: s = d * (-127) = -amax up to f16 rounding
        let mut outlier = [1e-3f32; 32];
        outlier[20] = -1000.0;
        check_quantize(&outlier);
        Q8_1::quantize(&outlier, &mut b);
        assert_eq!(b[0].s.to_f32(), -1000.0);

        let mut x = testing::activations(32 * 64, 11);
        for (i, v) in x.iter_mut().enumerate() {
            *v *= [1.0, 1e-3, 1e3, 1e-6][i / 512];
        }
        check_quantize(&x);
    }

    #[test]
    fn s_is_d_times_sum() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 3.0).collect();
        let mut b = [BlockQ8_1::default()];
        Q8_1::quantize_ref(&x, &mut b);
        // amax = 28, so the quants are round(x * 127 / 28)
        let sum: i32 = b[0].qs.iter().map(|&q| q as i32).sum();
        assert_eq!(b[0].qs[31], 127);
        assert_eq!(b[0].s, f16::from_f32(28.0 / 127.0 * sum as f32));
    }

    #[test]
    fn quantize_matches_llama_cpp() {
        // llama.cpp's own quantizer (the x86 CPU path) on random blocks, a zero block, a
        // lone outlier, exact halves and f16-subnormal scales: same bytes, both versions.
        let (x, want) = testing::llama_cpp_act_golden::<Q8_1>();
        let mut got = vec![Default::default(); want.len()];
        Q8_1::quantize_ref(&x, &mut got);
        assert_eq!(got, want);
        Q8_1::quantize(&x, &mut got);
        assert_eq!(got, want);
    }
}
