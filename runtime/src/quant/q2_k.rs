//! Q2_K: 2-bit quants in super-blocks of 256 with 4-bit sub-block scales and minimums.
//!
//! Layout of one block (84 bytes, 2.625 bits per weight):
//!
//! ```text
//! scales  [u8; 16]   per sub-block of 16: scale in the low nibble, minimum in the high
//! qs      [u8; 64]   2-bit quants: byte 32h + l holds weights 128h + 32k + l in bits
//!                    2k..2k+2 (h = 0..2, k = 0..4, l = 0..32)
//! d       f16        super-block scale of the scales
//! dmin    f16        super-block scale of the minimums
//! ```
//!
//! Weight `i` lies in sub-block `g = i / 16` and is
//! `y = (d * sc[g]) * q - (dmin * m[g])`, with `q` in `0..=3`.
//!
//! Dot product with Q8_K (`x = d_a * a`), in integers per block:
//! `Σ y x = d_a d Σ_g sc[g] Σ q a  -  d_a dmin Σ_g m[g] bsums[g]`.

use crate::float16::f16;

use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::WeightType;

/// One Q2_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == QK_K / 16 + QK_K / 4 + 2 + 2);

/// Q2_K weights (ggml type 10), dotted with Q8_K activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q2_K;

/// Unpacks the 256 quants of a block in weight order (`0..=3`).
#[inline(always)]
fn unpack_quants(b: &BlockQ2K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for h in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                q[128 * h + 32 * k + l] = (b.qs[32 * h + l] >> (2 * k)) & 3;
            }
        }
    }
    q
}

/// Scalar reference dot product of a Q2_K row with Q8_K activations.
///
/// Per block, the integer totals `isum = Σ_g sc[g] Σ q a` and `imin = Σ_g m[g] bsums[g]`
/// (exact), then `sum = fma(isum, d d_a, sum)` and `mins = fma(imin, dmin d_a, mins)`
/// over the blocks, and `sum - mins` at the end: the f32 steps of llama.cpp's repacked
/// Q2_K kernels, which its CPU backend uses on AVX-512 machines.
pub fn vec_dot_q2_k_q8_k_ref(row: &[BlockQ2K], act: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(row.len(), act.len());
    let (mut sum, mut min_sum) = (0f32, 0f32);
    for (b, a) in row.iter().zip(act) {
        let q = unpack_quants(b);
        let (mut isum, mut imin) = (0i32, 0i32);
        for (g, (qg, ag)) in q.chunks_exact(16).zip(a.qs.chunks_exact(16)).enumerate() {
            let dot: i32 = qg.iter().zip(ag).map(|(&w, &x)| w as i32 * x as i32).sum();
            isum += (b.scales[g] & 0x0f) as i32 * dot;
            imin += (b.scales[g] >> 4) as i32 * a.bsums[g] as i32;
        }
        sum = (isum as f32).mul_add(b.d.to_f32() * a.d, sum);
        min_sum = (imin as f32).mul_add(b.dmin.to_f32() * a.d, min_sum);
    }
    sum - min_sum
}

impl WeightType for Q2_K {
    const NAME: &'static str = "Q2_K";
    const GGML_ID: u32 = 10;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockQ2K;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockQ2K], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            let q = unpack_quants(b);
            for (g, (yg, qg)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                let scale = d * (b.scales[g] & 0x0f) as f32;
                let offset = dmin * (b.scales[g] >> 4) as f32;
                for (v, &qv) in yg.iter_mut().zip(qg) {
                    *v = scale * qv as f32 - offset;
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockQ2K], act: &[BlockQ8K]) -> f32 {
        vec_dot_q2_k_q8_k_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ2K], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::kquants::vec_dot_q2_k_q8_k(row, act)
    }
}

/// llama.cpp repacks Q2_K only on AVX-512 machines; elsewhere the tiled kernel takes it.
impl SuperBlock for Q2_K {
    const HAS_MIN: bool = true;
    const BATCHED: Batched = if cfg!(target_feature = "avx512f") {
        Batched::Repacked { step: 128 }
    } else {
        Batched::Tiled
    };

    const OFFSET: Option<u8> = Some(0);

    fn ints(block: &BlockQ2K, out: &mut Ints) {
        out.d = block.d.to_f32();
        out.dmin = block.dmin.to_f32();
        for (g, &sc) in block.scales.iter().enumerate() {
            out.set_scale(g, (sc & 0x0f) as i32);
            out.min[g] = (sc >> 4) as i16;
        }
        for (q, u) in out.q.iter_mut().zip(unpack_quants(block)) {
            *q = u as i8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // d * sc and dmin * m rounded once each in f32, one multiply by an exact small
        // integer and one subtract: the same operations as gguf-py.
        testing::check_dequantize::<Q2_K>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // As Q4_K: exact integer sums; f32 rounding of d_a d isum and d_a dmin Σ m a,
        // which partly cancel. With q in 0..=3 and minimums up to 15 * dmin the two terms
        // can each be several times Σ|w x|, so the slack matters more than for Q4_K; a
        // few 2^-24 times a factor ~10 is still far below 1e-5.
        testing::check_vec_dot::<Q2_K>(1e-5);
    }
}
