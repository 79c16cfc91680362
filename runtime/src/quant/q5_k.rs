//! Q5_K: 5-bit quants in super-blocks of 256 with 6-bit sub-block scales and minimums.
//!
//! Layout of one block (176 bytes, 5.5 bits per weight):
//!
//! ```text
//! d       f16        super-block scale of the sub-block scales
//! dmin    f16        super-block scale of the sub-block minimums
//! scales  [u8; 12]   8 scales and 8 minimums, 6 bits each, packed as in Q4_K
//! qh      [u8; 32]   fifth bits: bit j of qh[l] belongs to weight 32j + l
//! qs      [u8; 128]  low 4 bits, arranged as Q4_K's: byte 32c + l holds weight 64c + l
//!                    (low nibble) and weight 64c + 32 + l (high nibble)
//! ```
//!
//! Weight `i` lies in sub-block `j = i / 32` and is
//! `y = (d * sc[j]) * q - (dmin * m[j])`, with `q` in `0..=31`.
//!
//! Dot product with Q8_K (`x = d_a * a`), in integers per block:
//! `Σ y x = d_a d Σ_j sc[j] Σ q a  -  d_a dmin Σ_j m[j] Σ a` (the last sums from `bsums`).

use crate::float16::f16;

use super::q4_k::{min_sum_of, unpack_scales_mins, KQuantWithMin};
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::MinSearch;
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

/// One Q5_K super-block: 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 2 + 2 + 12 + QK_K / 8 + QK_K / 2);

/// Q5_K weights (ggml type 13), dotted with Q8_K activations.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct Q5_K;

/// Unpacks the 256 quants of a block in weight order (`0..=31`).
#[inline(always)]
fn unpack_quants(b: &BlockQ5K) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (c, bytes) in b.qs.chunks_exact(32).enumerate() {
        for (l, &byte) in bytes.iter().enumerate() {
            let (lo, hi) = (64 * c + l, 64 * c + 32 + l);
            q[lo] = (byte & 0x0f) | (((b.qh[l] >> (2 * c)) & 1) << 4);
            q[hi] = (byte >> 4) | (((b.qh[l] >> (2 * c + 1)) & 1) << 4);
        }
    }
    q
}

/// Packs 256 quants (`0..=31`, weight order) into `qh` and `qs`: the inverse of
/// [`unpack_quants`].
fn pack_quants(q: &[u8; QK_K]) -> ([u8; QK_K / 8], [u8; QK_K / 2]) {
    let (mut qh, mut qs) = ([0u8; QK_K / 8], [0u8; QK_K / 2]);
    for (c, bytes) in qs.chunks_exact_mut(32).enumerate() {
        for (l, byte) in bytes.iter_mut().enumerate() {
            let (mut lo, mut hi) = (q[64 * c + l], q[64 * c + 32 + l]);
            if lo > 15 {
                lo -= 16;
                qh[l] |= 1 << (2 * c);
            }
            if hi > 15 {
                hi -= 16;
                qh[l] |= 2 << (2 * c);
            }
            *byte = lo | (hi << 4);
        }
    }
    (qh, qs)
}

const Q5_K_QUANT: KQuantWithMin = KQuantWithMin {
    nmax: 31,
    plain: MinSearch {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    },
};

impl Quantize for Q5_K {
    /// As Q4_K (see `KQuantWithMin`) with quants `0..=31`.
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockQ5K]) {
        check_quantize_lengths::<Q5_K>(x, imatrix, out);
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            let block = match imatrix {
                None => Q5_K_QUANT.quantize_plain(xb),
                Some(qw) => Q5_K_QUANT.quantize_weighted(xb, &qw[QK_K * i..QK_K * (i + 1)], true),
            };
            let (qh, qs) = pack_quants(&block.q);
            *b = BlockQ5K {
                d: block.d,
                dmin: block.dmin,
                scales: block.scales,
                qh,
                qs,
            };
        }
    }
}

/// Scalar reference dot product of a Q5_K row with Q8_K activations.
///
/// The integer sums are exact; the f32 scaling is one `d d_a isum` per block into a
/// running sum. The AVX2 version spreads it over 8 lanes as llama.cpp does (and matches
/// llama.cpp bit for bit), so the two differ by f32 rounding only.
pub fn vec_dot_q5_k_q8_k_ref(row: &[BlockQ5K], act: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(row.len(), act.len());
    let mut sum = 0f32;
    for (b, a) in row.iter().zip(act) {
        let (sc, m) = unpack_scales_mins(&b.scales);
        let q = unpack_quants(b);
        let mut isum = 0i32;
        for (j, (qj, aj)) in q.chunks_exact(32).zip(a.qs.chunks_exact(32)).enumerate() {
            let dot: i32 = qj.iter().zip(aj).map(|(&w, &x)| w as i32 * x as i32).sum();
            isum += sc[j] as i32 * dot;
        }
        let d = a.d * b.d.to_f32();
        let dmin = a.d * b.dmin.to_f32();
        sum += d * isum as f32 - dmin * min_sum_of(&m, &a.bsums) as f32;
    }
    sum
}

impl WeightType for Q5_K {
    const NAME: &'static str = "Q5_K";
    const GGML_ID: u32 = 13;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockQ5K;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockQ5K], out: &mut [f32]) {
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

    fn vec_dot_ref(row: &[BlockQ5K], act: &[BlockQ8K]) -> f32 {
        vec_dot_q5_k_q8_k_ref(row, act)
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockQ5K], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::kquants::vec_dot_q5_k_q8_k(row, act)
    }
}

impl SuperBlock for Q5_K {
    const HAS_MIN: bool = true;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = Some(0);

    fn ints(block: &BlockQ5K, out: &mut Ints) {
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
        // Same operations as gguf-py: d * sc and dmin * m rounded once each in f32, then
        // one multiply by an exact small integer and one subtract.
        testing::check_dequantize::<Q5_K>(0);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // As Q4_K: exact integer sums; f32 rounding of the two per-block terms
        // d_a d isum and d_a dmin Σ m a, which may partly cancel (each is at most a few
        // times Σ|w x| of its block), and of the running sum. A few 2^-24 times that
        // factor; 1e-5 leaves ample slack while any indexing error shows up at ~1e-2.
        testing::check_vec_dot::<Q5_K>(1e-5);
    }

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<Q5_K>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<Q5_K>(32);
    }

    #[test]
    fn pack_inverts_unpack() {
        let q: [u8; QK_K] = std::array::from_fn(|i| ((i * 13 + i / 7) % 32) as u8);
        let (qh, qs) = pack_quants(&q);
        let b = BlockQ5K {
            d: f16::ZERO,
            dmin: f16::ZERO,
            scales: [0; 12],
            qh,
            qs,
        };
        assert_eq!(unpack_quants(&b), q);
    }
}
