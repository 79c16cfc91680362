//! Q3_K: 3-bit quants in super-blocks of 256 with signed 6-bit sub-block scales.
//!
//! Layout of one block (110 bytes, 3.4375 bits per weight):
//!
//! ```text
//! hmask   [u8; 32]   high bits: bit j of hmask[l] belongs to weight 32j + l
//! qs      [u8; 64]   low 2 bits: byte 32h + l holds weights 128h + 32k + l in bits 2k..2k+2
//!                    (h = 0..2, k = 0..4, l = 0..32)
//! scales  [u8; 12]   16 scales of 6 bits, stored with +32 (see `unpack_scales`)
//! d       f16        super-block scale
//! ```
//!
//! Weight `i` has the 2-bit value `lo` and the high bit `hi`, and is
//! `y = (d * (sc[i / 16] - 32)) * q` with `q = lo - 4` when `hi` is clear and `q = lo`
//! when it is set, so `q` is in `-4..=3`.
//!
//! Dot product with Q8_K (`x = d_a * a`), in integers per block:
//! `Σ y x = d d_a Σ_g (sc[g] - 32) Σ q a`.

use crate::float16::f16;

use super::q2_k::pack_2bit;
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{ggml_f16, importance_weights, make_q3_quants, make_qx_quants, nearest_int};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

/// One Q3_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == QK_K / 8 + QK_K / 4 + 12 + 2);

/// Q3_K weights (ggml type 11), dotted with Q8_K activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q3_K;

/// The 16 signed scales (`-32..=31`) of a block, from 12 bytes:
///
/// ```text
/// bytes 0..8    low 4 bits: sc[g] in the low nibble of byte g (g < 8), sc[g] in the
///               high nibble of byte g - 8 (g >= 8)
/// bytes 8..12   high 2 bits: sc[g] in bits 2(g / 4)..2(g / 4)+2 of byte 8 + g % 4
/// ```
///
/// Works on the bytes as three little-endian words, four scales per word.
#[inline(always)]
pub fn unpack_scales(packed: &[u8; 12]) -> [i8; 16] {
    let word = |k: usize| {
        u32::from_le_bytes([
            packed[4 * k],
            packed[4 * k + 1],
            packed[4 * k + 2],
            packed[4 * k + 3],
        ])
    };
    let (w0, w1, hi) = (word(0), word(1), word(2));
    const NIBBLE: u32 = 0x0f0f_0f0f;
    const TWO: u32 = 0x0303_0303;
    let words = [
        (w0 & NIBBLE) | ((hi & TWO) << 4),
        (w1 & NIBBLE) | (((hi >> 2) & TWO) << 4),
        ((w0 >> 4) & NIBBLE) | (((hi >> 4) & TWO) << 4),
        ((w1 >> 4) & NIBBLE) | (((hi >> 6) & TWO) << 4),
    ];
    let mut sc = [0i8; 16];
    for (g, s) in sc.iter_mut().enumerate() {
        *s = words[g / 4].to_le_bytes()[g % 4] as i8 - 32;
    }
    sc
}

/// Unpacks the 256 quants of a block in weight order (`-4..=3`).
#[inline(always)]
fn unpack_quants(b: &BlockQ3K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                let lo = (b.qs[32 * h + l] >> (2 * k)) & 3;
                let hi = (b.hmask[l] >> (4 * h + k)) & 1;
                q[128 * h + 32 * k + l] = lo as i8 - if hi == 0 { 4 } else { 0 };
            }
        }
    }
    q
}

/// Packs 16 scales stored with their offset (`sc + 32`, `0..=63`): the inverse of
/// [`unpack_scales`].
fn pack_scales(biased: &[u8; 16]) -> [u8; 12] {
    let mut p = [0u8; 12];
    for (j, &l) in biased.iter().enumerate() {
        if j < 8 {
            p[j] = l & 0xf;
        } else {
            p[j - 8] |= (l & 0xf) << 4;
        }
        p[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
    p
}

/// The block once its scales are fixed: each sub-block whose scale `d * sc` is not zero
/// is rounded again against the stored (f16) `d` and its 6-bit scale, the others keep
/// the quants of the search (`q` holds `-4..=3` plus 4); then the high bits go to
/// `hmask` and the low two to `qs`.
fn finish_block(x: &[f32], scales: [u8; 12], d: f16, q: &mut [i8; QK_K]) -> BlockQ3K {
    for (j, sc) in unpack_scales(&scales).into_iter().enumerate() {
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            q[i] = (nearest_int(x[i] / dl).clamp(-4, 3) + 4) as i8;
        }
    }
    let mut hmask = [0u8; QK_K / 8];
    let mut low = [0u8; QK_K];
    for (i, (&v, lo)) in q.iter().zip(&mut low).enumerate() {
        if v > 3 {
            hmask[i % 32] |= 1 << (i / 32);
            *lo = (v - 4) as u8;
        } else {
            *lo = v as u8;
        }
    }
    BlockQ3K {
        hmask,
        qs: pack_2bit(&low),
        scales,
        d,
    }
}

/// One block without importance weights: each sub-block of 16 gets its quants and
/// scale from [`make_q3_quants`] (weights `x²`); the scales are quantized to 6 bits
/// against the one of largest magnitude, which maps to `-32`, and the quants are
/// rounded again against the stored scales.
fn quantize_block_plain(x: &[f32]) -> BlockQ3K {
    let mut q = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for ((s, xs), qs) in scales
        .iter_mut()
        .zip(x.chunks_exact(16))
        .zip(q.chunks_exact_mut(16))
    {
        *s = make_q3_quants(xs, 4, qs);
        if s.abs() > amax {
            amax = s.abs();
            max_scale = *s;
        }
    }
    let mut packed = [0u8; 12];
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        // through an i8, as ggml stores it, before the clamp
        let biased = scales.map(|s| ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8);
        packed = pack_scales(&biased);
        ggml_f16(1.0 / iscale)
    } else {
        ggml_f16(0.0)
    };
    finish_block(x, packed, d, &mut q)
}

/// One block with importance weights `imatrix[i] * sqrt(sigma2 + x_i²)` (`sigma2` twice
/// the block's mean square): each sub-block's quants and scale from
/// [`make_qx_quants`], then the 16 scales themselves quantized to 6 bits by the same
/// search, weighted by each sub-block's total weight.
fn quantize_block_weighted(x: &[f32], imatrix: &[f32]) -> BlockQ3K {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    let mut q = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut sub_weights = [0f32; QK_K / 16];
    let mut weights = [0f32; 16];
    for (j, ((xs, qw), qs)) in x
        .chunks_exact(16)
        .zip(imatrix.chunks_exact(16))
        .zip(q.chunks_exact_mut(16))
        .enumerate()
    {
        sub_weights[j] = importance_weights(xs, qw, sigma2, &mut weights);
        scales[j] = make_qx_quants(xs, 4, qs, Some(&weights));
    }
    let mut biased = [0i8; QK_K / 16];
    let d_block = make_qx_quants(&scales, 32, &mut biased, Some(&sub_weights));
    let packed = pack_scales(&biased.map(|l| l as u8));
    finish_block(x, packed, ggml_f16(d_block), &mut q)
}

impl Quantize for Q3_K {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ3K]) {
        check_quantize_lengths::<Q3_K>(x, imatrix, out);
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            *b = match imatrix {
                None => quantize_block_plain(xb),
                Some(qw) => quantize_block_weighted(xb, &qw[QK_K * i..QK_K * (i + 1)]),
            };
        }
    }
}

/// Scalar reference dot product of a Q3_K row with Q8_K activations.
///
/// The integer sums are exact; the f32 scaling is one `d d_a isum` per block into a
/// running sum. The AVX2 version spreads it over 8 lanes as llama.cpp does (and matches
/// llama.cpp bit for bit), so the two differ by f32 rounding only.
pub fn vec_dot_q3_k_q8_k_ref(row: &[BlockQ3K], act: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(row.len(), act.len());
    let mut sum = 0f32;
    for (b, a) in row.iter().zip(act) {
        let sc = unpack_scales(&b.scales);
        let q = unpack_quants(b);
        let mut isum = 0i32;
        for (g, (qg, ag)) in q.chunks_exact(16).zip(a.qs.chunks_exact(16)).enumerate() {
            let dot: i32 = qg.iter().zip(ag).map(|(&w, &x)| w as i32 * x as i32).sum();
            isum += sc[g] as i32 * dot;
        }
        sum += a.d * b.d.to_f32() * isum as f32;
    }
    sum
}

impl WeightType for Q3_K {
    const NAME: &'static str = "Q3_K";
    const GGML_ID: u32 = 11;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockQ3K;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockQ3K], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            let sc = unpack_scales(&b.scales);
            let q = unpack_quants(b);
            for (g, (yg, qg)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                let scale = d * sc[g] as f32;
                for (v, &qv) in yg.iter_mut().zip(qg) {
                    *v = scale * qv as f32;
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockQ3K], act: &[BlockQ8K]) -> f32 {
        vec_dot_q3_k_q8_k_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ3K], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::kquants::vec_dot_q3_k_q8_k(row, act)
    }
}

impl SuperBlock for Q3_K {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(4);

    fn ints(block: &BlockQ3K, out: &mut Ints) {
        out.d = block.d.to_f32();
        for (g, &sc) in unpack_scales(&block.scales).iter().enumerate() {
            out.set_scale(g, sc as i32);
        }
        out.q = unpack_quants(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // d * (sc - 32) rounded once in f32, times an exact small integer: as gguf-py.
        testing::check_dequantize::<Q3_K>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // No minimums: exact integer sums, then f32 rounding of d_a * d, of the product
        // with isum and of the running sum, a few 2^-24 relative to Σ|w x|; 1e-5 is
        // two orders of slack.
        testing::check_vec_dot::<Q3_K>(1e-5);
    }

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<Q3_K>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<Q3_K>(8);
    }

    #[test]
    fn scales_pack_inverts_unpack() {
        let biased: [u8; 16] = std::array::from_fn(|g| ((g * 23 + 5) % 64) as u8);
        let want = biased.map(|b| b as i8 - 32);
        assert_eq!(unpack_scales(&pack_scales(&biased)), want);
    }

    #[test]
    fn scales_unpack_like_the_bit_layout() {
        let want: [i8; 16] = [-32, 31, 0, -1, 5, -17, 30, 12, -8, 7, 1, -31, 16, -16, 9, 3];
        let mut p = [0u8; 12];
        for (g, &s) in want.iter().enumerate() {
            let u = (s + 32) as u8;
            if g < 8 {
                p[g] |= u & 15;
            } else {
                p[g - 8] |= (u & 15) << 4;
            }
            p[8 + g % 4] |= (u >> 4) << (2 * (g / 4));
        }
        assert_eq!(unpack_scales(&p), want);
    }
}
