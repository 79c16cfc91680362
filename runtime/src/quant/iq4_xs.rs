//! IQ4_XS: 4.25 bits per weight. The IQ4_NL levels ([`KVALUES_IQ4NL`]) in super-blocks
//! of 256 weights: one f16 scale, and a 6-bit signed scale per 32 weights.
//!
//! Layout of one super-block of 256 weights (136 bytes):
//!
//! ```text
//! d         f16        super-block scale
//! scales_h  u16        bits 2i..2i+2 = high 2 bits of sub-block i's scale
//! scales_l  [u8; 4]    low 4 bits of the scale of sub-block 2i (low nibble of byte i)
//!                      and 2i + 1 (high nibble)
//! qs        [u8; 128]  16 bytes per sub-block of 32: byte k low nibble = level index
//!                      of weight k, high nibble = weight k + 16
//! ```
//!
//! Weight `k` of sub-block `i`: `d * (ls_i - 32) * KVALUES_IQ4NL[index_k]`, `ls_i` the
//! 6-bit scale. The dot product with Q8_K sums `(ls_i - 32) * Σ level * q8` over the
//! whole super-block in integers and adds `(d_w * d_a) * sum` in f32 (as ggml's x86
//! path does; its portable path applies the scale per sub-block pair in f32 instead).

use crate::float16::f16;

use super::iq4_nl::{iq4_block_scale, iq4_weights, levels_dot};
use super::iq_grids::KVALUES_IQ4NL;
use super::q4_0::pack_nibbles;
use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::quantize::{best_index_int8, ggml_f16, nearest_int};
use super::superblock::{self, Batched, Ints, SuperBlock};
use super::{check_quantize_lengths, Quantize, WeightType};

/// One IQ4_XS super-block of 256 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ4XS {
    /// Super-block scale.
    pub d: f16,
    /// High 2 bits of the 8 sub-block scales.
    pub scales_h: u16,
    /// Low 4 bits of the 8 sub-block scales.
    pub scales_l: [u8; QK_K / 64],
    /// Level indices, 16 bytes per sub-block of 32.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == 4 + QK_K / 64 + QK_K / 2);

/// Marker for the IQ4_XS weight format.
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct IQ4_XS;

/// Signed scale `ls - 32` of sub-block `ib` (in -32..=31).
#[inline(always)]
pub(crate) fn sub_scale(block: &BlockIQ4XS, ib: usize) -> i32 {
    let low = (block.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf;
    let high = (block.scales_h >> (2 * ib)) & 3;
    (low as i32 | (high as i32) << 4) - 32
}

/// The 16 index bytes of sub-block `ib`.
#[inline(always)]
fn sub_block_qs(block: &BlockIQ4XS, ib: usize) -> &[u8; 16] {
    block.qs[16 * ib..16 * ib + 16]
        .try_into()
        .expect("16 bytes")
}

impl WeightType for IQ4_XS {
    const NAME: &'static str = "IQ4_XS";
    const GGML_ID: u32 = 23;
    const BLOCK_ELEMS: usize = QK_K;
    type Block = BlockIQ4XS;
    type Act = Q8_K;

    superblock::weight_type_batches!();

    fn dequantize_ref(blocks: &[BlockIQ4XS], out: &mut [f32]) {
        debug_assert_eq!(out.len(), blocks.len() * QK_K);
        for (block, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = block.d.to_f32();
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let dl = d * sub_scale(block, ib) as f32;
                let (lo, hi) = y.split_at_mut(16);
                for ((&b, lo), hi) in sub_block_qs(block, ib).iter().zip(lo).zip(hi) {
                    *lo = dl * KVALUES_IQ4NL[(b & 0xf) as usize] as f32;
                    *hi = dl * KVALUES_IQ4NL[(b >> 4) as usize] as f32;
                }
            }
        }
    }

    fn vec_dot_ref(row: &[BlockIQ4XS], act: &[BlockQ8K]) -> f32 {
        debug_assert_eq!(row.len(), act.len());
        let mut sum = 0f32;
        for (block, a) in row.iter().zip(act) {
            let mut isum = 0i32;
            for ib in 0..QK_K / 32 {
                let q8 = &a.qs[32 * ib..32 * ib + 32];
                isum += sub_scale(block, ib) * levels_dot(sub_block_qs(block, ib), q8);
            }
            sum += block.d.to_f32() * a.d * isum as f32;
        }
        sum
    }

    #[cfg(x86_simd)]
    #[inline(always)]
    fn vec_dot(row: &[BlockIQ4XS], act: &[BlockQ8K]) -> f32 {
        super::x86_avx2::iquants::vec_dot_iq4_xs_q8_k(row, act)
    }
}

impl SuperBlock for IQ4_XS {
    const HAS_MIN: bool = false;
    const BATCHED: Batched = Batched::Tiled;

    const OFFSET: Option<u8> = None;

    fn ints(block: &BlockIQ4XS, out: &mut Ints) {
        out.d = block.d.to_f32();
        for ib in 0..QK_K / 32 {
            let ls = sub_scale(block, ib);
            out.set_scale(2 * ib, ls);
            out.set_scale(2 * ib + 1, ls);
            for (l, &b) in sub_block_qs(block, ib).iter().enumerate() {
                out.q[32 * ib + l] = KVALUES_IQ4NL[(b & 0x0f) as usize];
                out.q[32 * ib + 16 + l] = KVALUES_IQ4NL[(b >> 4) as usize];
            }
        }
    }
}

/// One super-block: each block of 32 gets its scale from [`iq4_block_scale`]
/// (weights of [`iq4_weights`] over the super-block); the scales are quantized to 6
/// bits against `d = -max / 32`, `max` the scale of largest magnitude (so it maps to
/// `-32`), and each weight takes the nearest level against its block's quantized (but
/// not f16-rounded) scale `d * l`.
fn quantize_block(x: &[f32], imatrix: Option<&[f32]>) -> BlockIQ4XS {
    let mut weights = [0f32; QK_K];
    iq4_weights(x, imatrix, &mut weights);
    let mut idx = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 32];
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        let range = 32 * ib..32 * ib + 32;
        *s = iq4_block_scale(&x[range.clone()], &weights[range.clone()], &mut idx[range]);
        if s.abs() > amax_scale {
            amax_scale = s.abs();
            max_scale = *s;
        }
    }
    let d = -max_scale / 32.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (mut scales_h, mut scales_l) = (0u16, [0u8; QK_K / 64]);
    for (ib, &s) in scales.iter().enumerate() {
        let l = nearest_int(id * s).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for i in 32 * ib..32 * ib + 32 {
            idx[i] = best_index_int8(&KVALUES_IQ4NL, idl * x[i]) as u8;
        }
        let biased = (l + 32) as u8;
        scales_l[ib / 2] |= (biased & 0xf) << (4 * (ib % 2));
        scales_h |= ((biased >> 4) as u16) << (2 * ib);
    }
    let mut qs = [0u8; QK_K / 2];
    for (q, chunk) in qs.chunks_exact_mut(16).zip(idx.chunks_exact(32)) {
        q.copy_from_slice(&pack_nibbles(chunk.try_into().expect("32 indices")));
    }
    BlockIQ4XS {
        d: ggml_f16(d),
        scales_h,
        scales_l,
        qs,
    }
}

impl Quantize for IQ4_XS {
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [BlockIQ4XS]) {
        check_quantize_lengths::<IQ4_XS>(x, imatrix, out);
        for (i, (b, xb)) in out.iter_mut().zip(x.chunks_exact(QK_K)).enumerate() {
            *b = quantize_block(xb, imatrix.map(|qw| &qw[QK_K * i..QK_K * (i + 1)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IQ4_XS;
    use crate::quant::testing;

    #[test]
    fn dequantize_matches_gguf_py() {
        // (d * (ls - 32)) * level in f32, exact (11 + 6 + 7 significant bits), as gguf-py.
        testing::check_dequantize::<IQ4_XS>(0);
    }

    #[test]
    fn quantize_matches_ggml() {
        testing::check_quantize::<IQ4_XS>();
    }

    #[test]
    fn quantize_round_trip() {
        testing::check_quantize_round_trip::<IQ4_XS>(16);
    }

    #[test]
    fn vec_dot_within_f64_reference() {
        // Integer sums (|sum| <= 8 * 32 * 32 * 127 * 127 < 2^31), then the same f32
        // scaling as IQ2_XXS (see its derivation): below ~15u ≈ 9e-7 of Σ |w a|.
        testing::check_vec_dot::<IQ4_XS>(2e-6);
    }

    #[test]
    fn vec_dot_matches_llama_cpp() {
        // Bit-exact with ggml's x86 AVX2 dot on the same blocks (fast path); the scalar
        // reference within the limit derived above.
        crate::quant::iq_golden_dot::check_ggml_dot::<IQ4_XS>(2e-6);
    }
}
