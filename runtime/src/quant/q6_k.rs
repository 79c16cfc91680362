//! Q6_K: 6-bit quants in super-blocks of 256 with signed 8-bit sub-block scales.
//!
//! Layout of one block (210 bytes, 6.5625 bits per weight):
//!
//! ```text
//! ql      [u8; 128]  low 4 bits of the quants
//! qh      [u8; 64]   high 2 bits of the quants
//! scales  [i8; 16]   one scale per sub-block of 16 weights
//! d       f16        super-block scale
//! ```
//!
//! The block is two halves of 128 weights; half `h` uses `ql[64h..64h + 64]` and
//! `qh[32h..32h + 32]`. Within a half, for `l = 0..32` and `k = 0..4`, weight `32k + l`
//! takes its low nibble from `ql[l + 32 (k % 2)]` (low nibble for `k < 2`, high nibble
//! otherwise) and its top two bits from bits `2k..2k + 2` of `qh[l]`.
//!
//! Weight `i` is `y = (d * scales[i / 16]) * (q - 32)`, with `q` in `0..=63`.
//!
//! Dot product with Q8_K (`x = d_a * a`), in integers per block:
//! `Σ y x = d d_a Σ_g scales[g] (Σ q a - 32 bsums[g])`.

use crate::float16::f16;

use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{ggml_f16, make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

/// One Q6_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2);

/// Q6_K weights (ggml type 14), dotted with Q8_K activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q6_K;

/// Unpacks the 256 quants of a block in weight order, without the offset (`0..=63`).
#[inline(always)]
pub(crate) fn unpack_quants(b: &BlockQ6K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for h in 0..2 {
        let (ql, qh) = (&b.ql[64 * h..64 * h + 64], &b.qh[32 * h..32 * h + 32]);
        let out = &mut q[128 * h..128 * h + 128];
        for l in 0..32 {
            for k in 0..4 {
                let byte = ql[l + 32 * (k % 2)];
                let low = if k < 2 { byte & 0x0f } else { byte >> 4 };
                let high = (qh[l] >> (2 * k)) & 3;
                out[32 * k + l] = low | (high << 4);
            }
        }
    }
    q
}

/// Packs 256 quants (`0..=63`, weight order) into `ql` and `qh`: the inverse of
/// [`unpack_quants`] (every bit of the two arrays is used, so the packing is unique).
pub(crate) fn pack_quants(q: &[u8; QK_K]) -> ([u8; QK_K / 2], [u8; QK_K / 4]) {
    let (mut ql, mut qh) = ([0u8; QK_K / 2], [0u8; QK_K / 4]);
    for h in 0..2 {
        for l in 0..32 {
            for k in 0..4 {
                let v = q[128 * h + 32 * k + l];
                debug_assert!(v < 64, "Q6_K: quant {v} out of range");
                ql[64 * h + l + 32 * (k % 2)] |= (v & 0x0f) << (4 * (k / 2));
                qh[32 * h + l] |= (v >> 4) << (2 * k);
            }
        }
    }
    (ql, qh)
}

/// One block: each sub-block of 16 gets its quants (`-32..32`) and scale from
/// [`make_qx_quants`], weighted by `imatrix` as it is when there is one (unlike the
/// other K-quants, without a `sigma2` term) and by `x²` otherwise; the scales are
/// quantized to 8 bits against the one of largest magnitude, which maps to `-128`, and
/// the quants rounded again against the stored scales. A block whose scales are all
/// below [`GROUP_MAX_EPS`] is all zero bytes.
fn quantize_block(x: &[f32], imatrix: Option<&[f32]>) -> BlockQ6K {
    let mut q = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (j, (xs, qs)) in x.chunks_exact(16).zip(q.chunks_exact_mut(16)).enumerate() {
        let weights = imatrix.map(|qw| &qw[16 * j..16 * j + 16]);
        scales[j] = make_qx_quants(xs, 32, qs, weights);
        if scales[j].abs() > max_abs_scale {
            max_abs_scale = scales[j].abs();
            max_scale = scales[j];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: ggml_f16(0.0),
        };
    }
    let iscale = -128.0 / max_scale;
    let d = ggml_f16(1.0 / iscale);
    // capped at 127 as an int, then stored through an i8
    let sc = scales.map(|s| nearest_int(iscale * s).min(127) as i8);
    for (j, &s) in sc.iter().enumerate() {
        let dl = d.to_f32() * s as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            q[i] = (nearest_int(x[i] / dl).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, qh) = pack_quants(&q.map(|v| v as u8));
    BlockQ6K {
        ql,
        qh,
        scales: sc,
        d,
    }
}

impl Quantize for Q6_K {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ6K]) {
        check_quantize_lengths::<Q6_K>(x, imatrix, out);
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            *b = quantize_block(xb, imatrix.map(|qw| &qw[QK_K * i..QK_K * (i + 1)]));
        }
    }
}

/// Scalar reference dot product of a Q6_K row with Q8_K activations.
///
/// The integer sums are exact; the f32 scaling is one `d d_a isum` per block into a
/// running sum. The AVX2 version spreads it over 8 lanes as llama.cpp does (and matches
/// llama.cpp bit for bit), so the two differ by f32 rounding only.
pub fn vec_dot_q6_k_q8_k_ref(row: &[BlockQ6K], act: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(row.len(), act.len());
    let mut sum = 0f32;
    for (b, a) in row.iter().zip(act) {
        let q = unpack_quants(b);
        let mut isum = 0i32;
        for (g, (qg, ag)) in q.chunks_exact(16).zip(a.qs.chunks_exact(16)).enumerate() {
            let dot: i32 = qg.iter().zip(ag).map(|(&w, &x)| w as i32 * x as i32).sum();
            isum += b.scales[g] as i32 * (dot - 32 * a.bsums[g] as i32);
        }
        sum += a.d * b.d.to_f32() * isum as f32;
    }
    sum
}

impl WeightType for Q6_K {
    const NAME: &'static str = "Q6_K";
    const GGML_ID: u32 = 14;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockQ6K;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockQ6K], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            let q = unpack_quants(b);
            for (g, (yg, qg)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                let scale = d * b.scales[g] as f32;
                for (v, &qv) in yg.iter_mut().zip(qg) {
                    *v = scale * (qv as i32 - 32) as f32;
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockQ6K], act: &[BlockQ8K]) -> f32 {
        vec_dot_q6_k_q8_k_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ6K], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::kquants::vec_dot_q6_k_q8_k(row, act)
    }
}

impl SuperBlock for Q6_K {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(32);

    fn ints(block: &BlockQ6K, out: &mut Ints) {
        out.d = block.d.to_f32();
        for (g, &sc) in block.scales.iter().enumerate() {
            out.set_scale(g, sc as i32);
        }
        for (q, u) in out.q.iter_mut().zip(unpack_quants(block)) {
            *q = u as i8 - 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // d * scale is rounded once in f32, then multiplied by an exact small integer:
        // the same two roundings as gguf-py.
        testing::check_dequantize::<Q6_K>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // No minimums, so no cancellation between terms: the integer sums are exact and
        // the only error is f32 rounding of d_a * d, of the product with isum and of the
        // running sum: a few 2^-24 relative to Σ|w x|. 1e-5 leaves two orders of slack.
        testing::check_vec_dot::<Q6_K>(1e-5);
    }

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<Q6_K>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<Q6_K>(64);
    }
}
