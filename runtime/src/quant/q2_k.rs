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
use super::quantize::{
    ggml_f16, importance_weights, make_qkx_quants, make_qp_quants, nearest_int, MinSearch,
};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

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

/// Packs 256 two-bit quants (weight order) into `qs`: the inverse of [`unpack_quants`].
/// Q3_K stores its low bits the same way.
#[inline(always)]
pub(crate) fn pack_2bit(q: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for h in 0..2 {
        for l in 0..32 {
            let at = |k: usize| q[128 * h + 32 * k + l];
            qs[32 * h + l] = at(0) | (at(1) << 2) | (at(2) << 4) | (at(3) << 6);
        }
    }
    qs
}

/// The final quants of a block once its scales are fixed: each sub-block whose scale
/// `d * sc` is not zero is rounded again against the stored (f16) `d`, `dmin` and its
/// 4-bit scale and minimum; the others keep the quants of the search.
fn requantize(x: &[f32], scales: &[u8; QK_K / 16], d: f16, dmin: f16, q: &mut [u8; QK_K]) {
    for (j, &sc) in scales.iter().enumerate() {
        let dl = d.to_f32() * (sc & 0xf) as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin.to_f32() * (sc >> 4) as f32;
        for i in 16 * j..16 * j + 16 {
            q[i] = nearest_int((x[i] + ml) / dl).clamp(0, 3) as u8;
        }
    }
}

/// One block without importance weights. Each sub-block of 16 gets its scale and
/// minimum from the search of least weighted absolute error, weights `|x|`; then both
/// are quantized to 4 bits against the largest of each (`d = max / 15`), and the quants
/// are rounded again against the stored values.
fn quantize_block_plain(x: &[f32]) -> BlockQ2K {
    const SEARCH: MinSearch = MinSearch {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    let mut q = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; QK_K / 16], [0f32; QK_K / 16]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for (j, (xs, qs)) in x.chunks_exact(16).zip(q.chunks_exact_mut(16)).enumerate() {
        let weights: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
        (scales[j], mins[j]) = make_qkx_quants(xs, &weights, &SEARCH, qs);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let mut sc = [0u8; QK_K / 16];
    let d = if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (s, &v) in sc.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * v) as u8;
        }
        ggml_f16(max_scale / 15.0)
    } else {
        ggml_f16(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (s, &v) in sc.iter_mut().zip(&mins) {
            *s |= (nearest_int(iscale * v) << 4) as u8;
        }
        ggml_f16(max_min / 15.0)
    } else {
        ggml_f16(0.0)
    };
    requantize(x, &sc, d, dmin, &mut q);
    BlockQ2K {
        scales: sc,
        qs: pack_2bit(&q),
        d,
        dmin,
    }
}

/// One block with importance weights `imatrix[i] * sqrt(sigma2 + x_i²)` (`sigma2` the
/// block's mean square): scale and minimum per sub-block from the weighted
/// least-squares search, then the 16 scales and the 16 minimums quantized to 4 bits by
/// the search of [`make_qp_quants`], weighted by each sub-block's total weight.
fn quantize_block_weighted(x: &[f32], imatrix: &[f32]) -> BlockQ2K {
    const SEARCH: MinSearch = MinSearch {
        nmax: 3,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / QK_K as f32;
    let mut q = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; QK_K / 16], [0f32; QK_K / 16]);
    let mut sub_weights = [0f32; QK_K / 16];
    let mut weights = [0f32; 16];
    for (j, ((xs, qw), qs)) in x
        .chunks_exact(16)
        .zip(imatrix.chunks_exact(16))
        .zip(q.chunks_exact_mut(16))
        .enumerate()
    {
        sub_weights[j] = importance_weights(xs, qw, sigma2, &mut weights);
        (scales[j], mins[j]) = make_qkx_quants(xs, &weights, &SEARCH, qs);
    }
    let (mut ls, mut lm) = ([0u8; QK_K / 16], [0u8; QK_K / 16]);
    let d = ggml_f16(make_qp_quants(&scales, 15, &mut ls, &sub_weights));
    let dmin = ggml_f16(make_qp_quants(&mins, 15, &mut lm, &sub_weights));
    let sc: [u8; QK_K / 16] = std::array::from_fn(|j| ls[j] | (lm[j] << 4));
    requantize(x, &sc, d, dmin, &mut q);
    BlockQ2K {
        scales: sc,
        qs: pack_2bit(&q),
        d,
        dmin,
    }
}

impl Quantize for Q2_K {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ2K]) {
        check_quantize_lengths::<Q2_K>(x, imatrix, out);
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            *b = match imatrix {
                None => quantize_block_plain(xb),
                Some(qw) => quantize_block_weighted(xb, &qw[QK_K * i..QK_K * (i + 1)]),
            };
        }
    }
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

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<Q2_K>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<Q2_K>(4);
    }

    #[test]
    fn pack_inverts_unpack() {
        let q: [u8; QK_K] = std::array::from_fn(|i| ((i * 7 + i / 5) % 4) as u8);
        let b = BlockQ2K {
            scales: [0; 16],
            qs: pack_2bit(&q),
            d: f16::ZERO,
            dmin: f16::ZERO,
        };
        assert_eq!(unpack_quants(&b), q);
    }
}
