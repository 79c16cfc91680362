//! Q4_K: 4-bit quants in super-blocks of 256 with 6-bit sub-block scales and minimums.
//!
//! Layout of one block (144 bytes, 4.5 bits per weight):
//!
//! ```text
//! d       f16        super-block scale of the sub-block scales
//! dmin    f16        super-block scale of the sub-block minimums
//! scales  [u8; 12]   8 scales and 8 minimums, 6 bits each (see `unpack_scales_mins`)
//! qs      [u8; 128]  4-bit quants: byte 32c + l holds weight 64c + l in its low nibble
//!                    and weight 64c + 32 + l in its high nibble (c = 0..4, l = 0..32)
//! ```
//!
//! Weight `i` lies in sub-block `j = i / 32` and is
//! `y = (d * sc[j]) * q - (dmin * m[j])`, with `q` in `0..=15`.
//!
//! The dot product with Q8_K activations (`x = d_a * a`) stays in integers per block:
//! `Σ y x = d_a d Σ_j sc[j] Σ q a  -  d_a dmin Σ_j m[j] Σ a`, where the last sums are the
//! Q8_K `bsums` (two groups of 16 per sub-block).

use crate::float16::f16;

use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{
    ggml_f16, importance_weights, make_qkx_quants, make_qp_quants, nearest_int, MinSearch,
};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

/// One Q4_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 2 + 2 + 12 + QK_K / 2);

/// Q4_K weights (ggml type 12), dotted with Q8_K activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q4_K;

/// The 8 six-bit scales and 8 six-bit minimums of a Q4_K / Q5_K block, packed in 12 bytes:
///
/// ```text
/// bytes 0..4    sc[0..4] in bits 0..6, bits 4..6 of sc[4..8] in bits 6..8
/// bytes 4..8    m[0..4]  in bits 0..6, bits 4..6 of m[4..8]  in bits 6..8
/// bytes 8..12   bits 0..4 of sc[4..8] in the low nibble, of m[4..8] in the high nibble
/// ```
///
/// Works on the bytes as three little-endian words, four sub-blocks per word.
/// Returns `(sc, m)`.
#[inline(always)]
pub fn unpack_scales_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let word = |k: usize| {
        u32::from_le_bytes([
            packed[4 * k],
            packed[4 * k + 1],
            packed[4 * k + 2],
            packed[4 * k + 3],
        ])
    };
    let (lo_sc, lo_m, hi) = (word(0), word(1), word(2));
    const SIX: u32 = 0x3f3f_3f3f;
    const NIBBLE: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x3030_3030; // bits 6..8 of each byte, moved down to 4..6
    let sc = [lo_sc & SIX, (hi & NIBBLE) | ((lo_sc >> 2) & TOP2)];
    let m = [lo_m & SIX, ((hi >> 4) & NIBBLE) | ((lo_m >> 2) & TOP2)];
    let bytes = |w: [u32; 2]| {
        let (a, b) = (w[0].to_le_bytes(), w[1].to_le_bytes());
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
    };
    (bytes(sc), bytes(m))
}

/// Packs 8 scales and 8 minimums of 6 bits into 12 bytes: the inverse of
/// [`unpack_scales_mins`]. Written as ggml's byte operations, so that an out-of-range
/// value (which only Q4_K's importance-weighted search can produce, see
/// [`super::quantize::make_qp_quants`]) spills into the same bits as in ggml.
pub(crate) fn pack_scales_mins(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut p = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            p[j] = sc[j];
            p[j + 4] = m[j];
        } else {
            p[j + 4] = (sc[j] & 0xf) | ((m[j] & 0xf) << 4);
            p[j - 4] |= (sc[j] >> 4) << 6;
            p[j] |= (m[j] >> 4) << 6;
        }
    }
    p
}

/// The shared steps of the K-quant blocks with minimums (Q4_K, Q5_K), without and
/// with importance weights. The quants are `0..=nmax` per sub-block of 32.
pub(crate) struct KQuantWithMin {
    pub nmax: i32,
    /// The search of a sub-block's scale and minimum without importance weights.
    pub plain: MinSearch,
}

/// Scale, minimum and packed 6-bit sub-block scales of a block, with its quants.
pub(crate) struct ScaledBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub q: [u8; QK_K],
}

impl KQuantWithMin {
    /// Without importance weights: each sub-block's scale and minimum from the search of
    /// least weighted squared error, weights `sqrt(mean x²) + |x|` of the sub-block; then
    /// scales and minimums quantized to 6 bits against the largest of each
    /// (`d = max / 63`), and the quants rounded again against the stored values.
    pub fn quantize_plain(&self, x: &[f32]) -> ScaledBlock {
        let mut q = [0u8; QK_K];
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for (j, (xs, qs)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
            let mut sum_x2 = 0f32;
            for &v in xs {
                sum_x2 += v * v;
            }
            let av_x = (sum_x2 / 32.0).sqrt();
            let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
            (scales[j], mins[j]) = make_qkx_quants(xs, &weights, &self.plain, qs);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        // each through a u8 (as ggml stores it) before the clamp
        let ls = scales.map(|s| (nearest_int(inv_scale * s) as u8).min(63));
        let lm = mins.map(|m| (nearest_int(inv_min * m) as u8).min(63));
        let mut block = ScaledBlock {
            d: ggml_f16(max_scale / 63.0),
            dmin: ggml_f16(max_min / 63.0),
            scales: pack_scales_mins(&ls, &lm),
            q,
        };
        self.requantize(x, &mut block);
        block
    }

    /// With importance weights `imatrix[i] * sqrt(sigma2 + x_i²)` (`sigma2` twice the
    /// block's mean square): each sub-block's scale and minimum from the weighted
    /// least-squares search, then the 8 scales and the 8 minimums quantized to 6 bits by
    /// [`make_qp_quants`], weighted by each sub-block's total weight. `clamp` caps them
    /// at 63 before packing (Q5_K does; Q4_K packs them as they come).
    pub fn quantize_weighted(&self, x: &[f32], imatrix: &[f32], clamp: bool) -> ScaledBlock {
        let search = MinSearch {
            nmax: self.nmax,
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        };
        let mut sum_x2 = 0f32;
        for &v in x {
            sum_x2 += v * v;
        }
        let sigma2 = 2.0 * sum_x2 / QK_K as f32;
        let mut q = [0u8; QK_K];
        let (mut scales, mut mins, mut sub_weights) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let mut weights = [0f32; 32];
        for (j, ((xs, qw), qs)) in x
            .chunks_exact(32)
            .zip(imatrix.chunks_exact(32))
            .zip(q.chunks_exact_mut(32))
            .enumerate()
        {
            sub_weights[j] = importance_weights(xs, qw, sigma2, &mut weights);
            (scales[j], mins[j]) = make_qkx_quants(xs, &weights, &search, qs);
        }
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        let d = make_qp_quants(&scales, 63, &mut ls, &sub_weights);
        let m = make_qp_quants(&mins, 63, &mut lm, &sub_weights);
        if clamp {
            ls = ls.map(|l| l.min(63));
            lm = lm.map(|l| l.min(63));
        }
        let mut block = ScaledBlock {
            d: ggml_f16(d),
            dmin: ggml_f16(m),
            scales: pack_scales_mins(&ls, &lm),
            q,
        };
        self.requantize(x, &mut block);
        block
    }

    /// Rounds each sub-block again against the stored (f16) `d`, `dmin` and its 6-bit
    /// scale and minimum, where `d * sc` is not zero; the others keep the search's quants.
    fn requantize(&self, x: &[f32], block: &mut ScaledBlock) {
        let (sc, m) = unpack_scales_mins(&block.scales);
        for j in 0..8 {
            let d = block.d.to_f32() * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            let dm = block.dmin.to_f32() * m[j] as f32;
            let quants = &mut block.q[32 * j..32 * j + 32];
            for (q, &v) in quants.iter_mut().zip(&x[32 * j..32 * j + 32]) {
                *q = nearest_int((v + dm) / d).clamp(0, self.nmax) as u8;
            }
        }
    }
}

const Q4_K_QUANT: KQuantWithMin = KQuantWithMin {
    nmax: 15,
    plain: MinSearch {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    },
};

impl Quantize for Q4_K {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ4K]) {
        check_quantize_lengths::<Q4_K>(x, imatrix, out);
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            let block = match imatrix {
                None => Q4_K_QUANT.quantize_plain(xb),
                Some(qw) => Q4_K_QUANT.quantize_weighted(xb, &qw[QK_K * i..QK_K * (i + 1)], false),
            };
            let mut qs = [0u8; QK_K / 2];
            for (c, bytes) in qs.chunks_exact_mut(32).enumerate() {
                for (l, byte) in bytes.iter_mut().enumerate() {
                    *byte = block.q[64 * c + l] | (block.q[64 * c + 32 + l] << 4);
                }
            }
            *b = BlockQ4K {
                d: block.d,
                dmin: block.dmin,
                scales: block.scales,
                qs,
            };
        }
    }
}

/// `Σ_j mins[j] * (bsums[2j] + bsums[2j + 1])`: the activation sum each sub-block's
/// minimum multiplies.
#[inline(always)]
pub(crate) fn min_sum_of(mins: &[u8; 8], bsums: &[i16; 16]) -> i32 {
    mins.iter()
        .zip(bsums.chunks_exact(2))
        .map(|(&m, pair)| m as i32 * (pair[0] as i32 + pair[1] as i32))
        .sum()
}

/// Unpacks the 256 quants of a block in weight order.
#[inline(always)]
fn unpack_quants(b: &BlockQ4K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (c, bytes) in b.qs.chunks_exact(32).enumerate() {
        for (l, &byte) in bytes.iter().enumerate() {
            q[64 * c + l] = byte & 0x0f;
            q[64 * c + 32 + l] = byte >> 4;
        }
    }
    q
}

/// Scalar reference dot product of a Q4_K row with Q8_K activations.
///
/// Per block, the integer totals `isum = Σ_j sc[j] Σ q a` and `imin = Σ_j m[j] Σ a`
/// (exact), then `sum = fma(isum, d d_a, sum)` and `mins = fma(imin, dmin d_a, mins)`
/// over the blocks, and `sum - mins` at the end: the f32 steps llama.cpp's CPU backend
/// takes for Q4_K rows (its repacked kernels), so the result is the same to the bit.
pub fn vec_dot_q4_k_q8_k_ref(row: &[BlockQ4K], act: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(row.len(), act.len());
    let (mut sum, mut min_sum) = (0f32, 0f32);
    for (b, a) in row.iter().zip(act) {
        let (sc, m) = unpack_scales_mins(&b.scales);
        let q = unpack_quants(b);
        let mut isum = 0i32;
        for (j, (qj, aj)) in q.chunks_exact(32).zip(a.qs.chunks_exact(32)).enumerate() {
            let dot: i32 = qj.iter().zip(aj).map(|(&w, &x)| w as i32 * x as i32).sum();
            isum += sc[j] as i32 * dot;
        }
        sum = (isum as f32).mul_add(b.d.to_f32() * a.d, sum);
        min_sum = (min_sum_of(&m, &a.bsums) as f32).mul_add(b.dmin.to_f32() * a.d, min_sum);
    }
    sum - min_sum
}

impl WeightType for Q4_K {
    const NAME: &'static str = "Q4_K";
    const GGML_ID: u32 = 12;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockQ4K;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockQ4K], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let (sc, m) = unpack_scales_mins(&b.scales);
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            let q = unpack_quants(b);
            for (j, (yj, qj)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
                let (scale, offset) = (d * sc[j] as f32, dmin * m[j] as f32);
                for (v, &qv) in yj.iter_mut().zip(qj) {
                    *v = scale * qv as f32 - offset;
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockQ4K], act: &[BlockQ8K]) -> f32 {
        vec_dot_q4_k_q8_k_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ4K], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::kquants::vec_dot_q4_k_q8_k(row, act)
    }
}

impl SuperBlock for Q4_K {
    const HAS_MIN: bool = true;
    const BATCHED: Batched = Batched::Repacked { step: 64 };

    const OFFSET: Option<u8> = Some(0);

    fn ints(block: &BlockQ4K, out: &mut Ints) {
        out.d = block.d.to_f32();
        out.dmin = block.dmin.to_f32();
        let (sc, m) = unpack_scales_mins(&block.scales);
        for g in 0..QK_K / 16 {
            out.set_scale(g, sc[g / 2] as i32);
            out.min[g] = m[g / 2] as i16;
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
        // d * sc and dmin * m are products of exact small values, rounded once in f32,
        // then one multiply and one subtract: the same operations gguf-py does.
        testing::check_dequantize::<Q4_K>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // The integer sums are exact; the error is f32 rounding of the scaling: per block
        // d * d_a and one FMA into each of the two running sums, then their difference.
        // The two sums partly cancel (w = d sc q - dmin m), and on these blocks each is a
        // few times Σ|w x|, so the error is a few 2^-24 times that factor: 1e-5 leaves
        // two orders of slack, while any indexing mistake shows up at 1e-2 or more.
        testing::check_vec_dot::<Q4_K>(1e-5);
    }

    #[test]
    fn scales_unpack_like_the_bit_layout() {
        // Build a packing from chosen 6-bit values, by the layout in the doc comment.
        let sc: [u8; 8] = [1, 63, 17, 32, 5, 48, 60, 33];
        let m: [u8; 8] = [0, 62, 40, 7, 63, 16, 31, 2];
        let mut p = [0u8; 12];
        for j in 0..4 {
            p[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            p[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            p[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
        }
        assert_eq!(unpack_scales_mins(&p), (sc, m));
        assert_eq!(pack_scales_mins(&sc, &m), p);
    }

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<Q4_K>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<Q4_K>(16);
    }
}
