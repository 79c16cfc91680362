//! llama.cpp's arithmetic for prompt batches of the 256-weight super-block formats
//! (the K-quants and the IQ formats that pair with Q8_K activations).
//!
//! For one token, every such format is a `vec_dot` (see each format file). For a batch,
//! llama.cpp's CPU backend switches kernel, and each kernel rounds the f32 steps its own
//! way, so the same (row, token) comes out different in the last bits depending on how
//! many tokens share the batch. Since the logits must agree with llama.cpp's to the bit,
//! we compute a batch the way it does:
//!
//! - **tiled** (`ggml-cpu/tiled`, batches of 8 or more tokens, for Q2_K..Q6_K and the IQ
//!   formats with 256-weight blocks, unless the weights were repacked): per super-block
//!   the exact integer `s1 = Σ_g scale_g Σ q a` (and `s2 = Σ_g min_g Σ a` where the
//!   format has minimums), then `r = s1 · d` (`r -= dmin · s2` fused), and
//!   `acc = fma(r, d_a, acc)`, block after block.
//! - **repacked GEMM** (Q4_K, and Q2_K with AVX-512, which llama.cpp interleaves 8 rows
//!   at a time when it loads them): the tokens of a batch of 4 or more go through the
//!   GEMM kernel in whole groups of 4 (the rest through the GEMV kernel, which is our
//!   `vec_dot`). The GEMM scales the integer sums of each 64 (Q4_K) or 128 (Q2_K)
//!   weights: `acc = fma(s, d·d_a, acc)`, `mins = fma(m, dmin·d_a, mins)`, and the
//!   result is `acc - mins`.
//!
//! Both start from a super-block in integers ([`Ints`]): signed weight values (each
//! format's offsets and grids applied), a multiplier per 16 weights, the minimum
//! multipliers and the two f32 scales as the kernel takes them (some IQ formats fold a
//! power of two into `d`). The integer sums are exact in any order, so [`Ints`] is one
//! form for every format and kernel, and only the f32 steps above are kernel-specific.
//! A row's blocks are unpacked once per group of tokens, which also makes these the
//! fast prompt kernels for these formats.

use std::ops::Range;

use super::q8_k::{BlockQ8K, Q8_K, QK_K};
use super::WeightType;

/// A super-block in integers: `w[i] = d · scale[i / 16] · q[i]` (minus
/// `dmin · min[i / 16]` where the format has minimums).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct Ints {
    /// Weight values, `|q| <= 127`.
    pub q: [i8; QK_K],
    /// Multiplier of each 16 weights, as 8 × 16 i16 lanes: lanes 0..8 of row `c` hold
    /// the multiplier of weights `32c..32c+16`, lanes 8..16 that of `32c+16..32c+32`
    /// (the order `maddubs` leaves the pair sums of 32 bytes in).
    pub scale: [[i16; 16]; QK_K / 32],
    /// The same multipliers, one per 16 weights.
    pub group_scale: [i16; QK_K / 16],
    /// Multiplier of each 16 activations' sum (formats with minimums).
    pub min: [i16; QK_K / 16],
    pub d: f32,
    pub dmin: f32,
}

impl Default for Ints {
    fn default() -> Ints {
        Ints {
            q: [0; QK_K],
            scale: [[0; 16]; QK_K / 32],
            group_scale: [0; QK_K / 16],
            min: [0; QK_K / 16],
            d: 0.0,
            dmin: 0.0,
        }
    }
}

impl Ints {
    /// Sets the multiplier of weights `16g..16g+16`.
    #[inline(always)]
    pub fn set_scale(&mut self, g: usize, s: i32) {
        debug_assert!(i16::try_from(s).is_ok());
        let half = 8 * (g % 2);
        self.scale[g / 2][half..half + 8].fill(s as i16);
        self.group_scale[g] = s as i16;
    }

    /// The multiplier of weights `16g..16g+16`.
    #[inline(always)]
    pub fn scale_of(&self, g: usize) -> i32 {
        self.scale[g / 2][8 * (g % 2)] as i32
    }
}

/// Writes 8 grid magnitudes with their sign bits (bit `j` set: weight `j` is negative).
#[inline(always)]
pub fn signed_group(grid: &[u8; 8], signs: u8, out: &mut [i8]) {
    for (j, (o, &g)) in out[..8].iter_mut().zip(grid).enumerate() {
        *o = if signs & (1 << j) != 0 {
            -(g as i8)
        } else {
            g as i8
        };
    }
}

/// How llama.cpp's CPU backend multiplies a format in prompt batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batched {
    /// The tiled K-quant matmul for batches of 8+ tokens.
    Tiled,
    /// 8-row repacked weights: a GEMM over whole groups of 4 tokens in batches of 4+,
    /// scaling the integer sums of every `step` weights.
    Repacked { step: usize },
}

/// A format whose super-blocks unpack to [`Ints`].
pub trait SuperBlock: WeightType<Act = Q8_K> {
    /// Whether weights carry a subtracted minimum (`dmin`, `min`).
    const HAS_MIN: bool;
    /// The kernel llama.cpp uses for this format in batches on this build's CPU.
    const BATCHED: Batched;
    /// `Some(o)`: every weight value plus `o` is in `0..=129`, so the kernels multiply
    /// unsigned bytes `q + o` with the activations (no `maddubs` pair of those can
    /// saturate) and take `o · Σ scale · Σ a` back out; `None`: values span both signs
    /// up to ±127 (IQ4_XS), and the kernels move the weights' signs onto the activations.
    const OFFSET: Option<u8>;
    /// Unpacks one block, as ggml-cpu's tiled matmul does (its `d` included).
    fn ints(block: &Self::Block, out: &mut Ints);
}

/// The [`WeightType`] methods of a [`SuperBlock`] format (inside its `impl WeightType`):
/// its batches go through [`row_dots`] whenever [`batched`] says llama.cpp would take
/// its batch kernels.
macro_rules! weight_type_batches {
    () => {
        #[inline(always)]
        fn batched(n_tokens: usize) -> bool {
            $crate::quant::superblock::batched::<Self>(n_tokens)
        }

        fn batch_row_dots(
            row: &[Self::Block],
            act: &[$crate::quant::q8_k::BlockQ8K],
            act_row: usize,
            tokens: std::ops::Range<usize>,
            n_tokens: usize,
            out: &mut [f32],
        ) {
            $crate::quant::superblock::row_dots::<Self>(row, act, act_row, tokens, n_tokens, out)
        }
    };
}
pub(crate) use weight_type_batches;

/// Whether a batch of `n_tokens` goes through [`row_dots`] for format `W`.
pub const fn batched<W: SuperBlock>(n_tokens: usize) -> bool {
    if !cfg!(all(target_arch = "x86_64", target_feature = "avx2")) {
        // ggml's tiled and repacked kernels are x86 (and ARM) SIMD code; a portable
        // build follows ggml's portable path, which is the vec_dot.
        return false;
    }
    match W::BATCHED {
        Batched::Tiled => n_tokens >= 8,
        Batched::Repacked { .. } => n_tokens >= 4,
    }
}

/// The dots of one weight row with tokens `tokens` of an `n_tokens` batch, as llama.cpp
/// computes them for a batch of that size: token `t`'s blocks are
/// `act[t * act_row..][..row.len()]`, its result goes to `out[t - tokens.start]`.
///
/// The row is unpacked once into [`Ints`] (a per-thread buffer), then dotted with the
/// tokens 4 at a time.
pub fn row_dots<W: SuperBlock>(
    row: &[W::Block],
    act: &[BlockQ8K],
    act_row: usize,
    tokens: Range<usize>,
    n_tokens: usize,
    out: &mut [f32],
) {
    assert_eq!(out.len(), tokens.len());
    // The repacked GEMM covers whole groups of 4 tokens; the rest is the GEMV (vec_dot).
    let gemm_end = match W::BATCHED {
        Batched::Tiled => tokens.end,
        Batched::Repacked { .. } => tokens.end.min(n_tokens - n_tokens % 4),
    };
    let gemm = tokens.start..gemm_end.max(tokens.start);
    if !gemm.is_empty() {
        ROW.with_borrow_mut(|ints| {
            if ints.len() < row.len() {
                ints.resize(row.len(), Ints::default());
            }
            let ints = &mut ints[..row.len()];
            for (block, ints) in row.iter().zip(ints.iter_mut()) {
                W::ints(block, ints);
            }
            for t0 in gemm.clone().step_by(4) {
                // a quad past the end repeats the last token; its extra results are dropped
                let quad = std::array::from_fn(|j| {
                    let t = (t0 + j).min(gemm.end - 1);
                    &act[t * act_row..t * act_row + row.len()]
                });
                let dots = quad_dots::<W>(ints, quad);
                for (t, v) in (t0..gemm.end.min(t0 + 4)).zip(dots) {
                    out[t - tokens.start] = v;
                }
            }
        });
    }
    for t in gemm.end..tokens.end {
        out[t - tokens.start] = W::vec_dot(row, &act[t * act_row..t * act_row + row.len()]);
    }
}

thread_local! {
    /// The row [`row_dots`] works on, unpacked.
    static ROW: std::cell::RefCell<Vec<Ints>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The dots of a row (unpacked) with 4 tokens, by the kernel `W::BATCHED` names.
#[inline(always)]
fn quad_dots<W: SuperBlock>(ints: &[Ints], acts: [&[BlockQ8K]; 4]) -> [f32; 4] {
    #[cfg(x86_simd)]
    use super::x86_avx2::superblock::quad_dots as kernel;
    #[cfg(not(x86_simd))]
    use quad_dots_ref as kernel;
    // The format's offset as a const parameter of the kernel (-1: none).
    match (W::BATCHED, W::HAS_MIN, W::OFFSET) {
        (Batched::Tiled, true, Some(0)) => kernel::<1, true, true, 0>(ints, acts),
        (Batched::Tiled, false, None) => kernel::<1, true, false, -1>(ints, acts),
        (Batched::Tiled, false, Some(4)) => kernel::<1, true, false, 4>(ints, acts),
        (Batched::Tiled, false, Some(9)) => kernel::<1, true, false, 9>(ints, acts),
        (Batched::Tiled, false, Some(15)) => kernel::<1, true, false, 15>(ints, acts),
        (Batched::Tiled, false, Some(32)) => kernel::<1, true, false, 32>(ints, acts),
        (Batched::Tiled, false, Some(43)) => kernel::<1, true, false, 43>(ints, acts),
        (Batched::Tiled, false, Some(62)) => kernel::<1, true, false, 62>(ints, acts),
        (Batched::Repacked { step: 64 }, true, Some(0)) => kernel::<4, false, true, 0>(ints, acts),
        (Batched::Repacked { step: 128 }, true, Some(0)) => kernel::<2, false, true, 0>(ints, acts),
        other => unreachable!("{}: no batch kernel for {other:?}", W::NAME),
    }
}

/// Scalar reference of the kernels: per token, per block, the integer sums of the `N`
/// parts, then the f32 steps of the tiled kernel (`TILED`: `r = s1 d - s2 dmin` fused,
/// `acc = fma(r, d_a, acc)`) or of the repacked GEMM (`acc = fma(s_k, d d_a, acc)`,
/// `mins = fma(m_k, dmin d_a, mins)` per part, `acc - mins` at the end).
pub fn quad_dots_ref<const N: usize, const TILED: bool, const HAS_MIN: bool, const OFFSET: i32>(
    ints: &[Ints],
    acts: [&[BlockQ8K]; 4],
) -> [f32; 4] {
    acts.map(|act| {
        let (mut acc, mut mins) = (0f32, 0f32);
        for (w, a) in ints.iter().zip(act) {
            let s = int_sums_ref::<N>(w, a);
            let m = if HAS_MIN { min_sums::<N>(w, a) } else { [0; N] };
            if TILED {
                let mut r = s[0] as f32 * w.d;
                if HAS_MIN {
                    r = (-w.dmin).mul_add(m[0] as f32, r);
                }
                // ggml's AVX2 kernel ends with a fused multiply-add; its AVX512-VNNI
                // kernel writes a multiply and an add, which GCC fuses too (it contracts
                // by default, -ffp-contract=fast).
                acc = r.mul_add(a.d, acc);
            } else {
                let (d, dmin) = (w.d * a.d, w.dmin * a.d);
                for (&s, &m) in s.iter().zip(&m) {
                    acc = (s as f32).mul_add(d, acc);
                    mins = (m as f32).mul_add(dmin, mins);
                }
            }
        }
        acc - mins
    })
}

/// `Σ_g min_g · bsums_g` over each of `N` equal parts of the block.
#[inline(always)]
fn min_sums<const N: usize>(w: &Ints, a: &BlockQ8K) -> [i32; N] {
    let per = 16 / N;
    std::array::from_fn(|k| {
        (k * per..(k + 1) * per)
            .map(|g| w.min[g] as i32 * a.bsums[g] as i32)
            .sum()
    })
}

/// `Σ_g scale_g Σ q a` over each of `N` equal parts of the block, scalar.
pub fn int_sums_ref<const N: usize>(w: &Ints, a: &BlockQ8K) -> [i32; N] {
    let per = 16 / N;
    std::array::from_fn(|k| {
        (k * per..(k + 1) * per)
            .map(|g| {
                let dot: i32 = w.q[16 * g..16 * g + 16]
                    .iter()
                    .zip(&a.qs[16 * g..16 * g + 16])
                    .map(|(&q, &x)| q as i32 * x as i32)
                    .sum();
                w.scale_of(g) * dot
            })
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing;

    /// Every format's [`Ints`] stand for the same weights as its dequantization.
    fn ints_dequantize<W: SuperBlock>() {
        let (blocks, values) = testing::golden::<W>();
        let mut ints = Ints::default();
        for (b, (block, want)) in blocks.iter().zip(values.chunks_exact(QK_K)).enumerate() {
            W::ints(block, &mut ints);
            for (i, &want) in want.iter().enumerate() {
                let g = i / 16;
                let term = ints.d as f64 * ints.scale_of(g) as f64 * ints.q[i] as f64;
                let min = if W::HAS_MIN {
                    ints.dmin as f64 * ints.min[g] as f64
                } else {
                    0.0
                };
                let got = term - min;
                // dequantize_ref rounds each step to f32: a few ulps of the terms
                let tol = 1e-6 * (term.abs() + min.abs()) + f64::MIN_POSITIVE;
                if let Some(o) = W::OFFSET {
                    let u = ints.q[i] as i32 + o as i32;
                    assert!(
                        (0..=129).contains(&u),
                        "{} weight {i}: q + offset = {u}",
                        W::NAME
                    );
                }
                assert!(
                    (got - want as f64).abs() <= tol,
                    "{} block {b} weight {i}: {got} vs {want}",
                    W::NAME
                );
            }
        }
    }

    /// The SIMD kernels equal the scalar reference bit for bit, for every kernel shape.
    fn kernels_match_ref<W: SuperBlock>() {
        let (blocks, _) = testing::golden::<W>();
        let rb = blocks.len().min(9);
        let ints: Vec<Ints> = blocks[..rb]
            .iter()
            .map(|b| {
                let mut i = Ints::default();
                W::ints(b, &mut i);
                i
            })
            .collect();
        let x = testing::activations(4 * rb * QK_K, 11);
        let mut act = vec![BlockQ8K::default(); 4 * rb];
        <Q8_K as crate::quant::ActType>::quantize_ref(&x, &mut act);
        let quad: [&[BlockQ8K]; 4] = std::array::from_fn(|t| &act[t * rb..(t + 1) * rb]);
        let bits = |v: [f32; 4]| v.map(f32::to_bits);
        macro_rules! same {
            ($n:literal, $tiled:literal, $min:literal, $off:expr) => {
                assert_eq!(
                    bits(quad_dots_ref::<$n, $tiled, $min, 0>(&ints, quad)),
                    bits(kernel::<$n, $tiled, $min, $off>(&ints, quad)),
                    "{} N={} tiled={} min={}",
                    W::NAME,
                    $n,
                    $tiled,
                    $min
                )
            };
        }
        #[cfg(x86_simd)]
        use crate::quant::x86_avx2::superblock::quad_dots as kernel;
        #[cfg(not(x86_simd))]
        use quad_dots_ref as kernel;
        // every offset a format has (the kernels take offsets out of whole-block sums
        // only, so the other shapes run without)
        match W::OFFSET {
            None => {
                same!(1, true, true, -1);
                same!(1, true, false, -1);
            }
            Some(0) => {
                same!(1, true, true, 0);
                same!(1, true, false, 0);
            }
            Some(4) => same!(1, true, false, 4),
            Some(9) => same!(1, true, false, 9),
            Some(15) => same!(1, true, false, 15),
            Some(32) => same!(1, true, false, 32),
            Some(43) => same!(1, true, false, 43),
            Some(62) => same!(1, true, false, 62),
            Some(o) => panic!("{}: offset {o} has no kernel", W::NAME),
        }
        same!(2, false, true, -1);
        same!(4, false, true, -1);
        if W::OFFSET == Some(0) {
            same!(2, false, true, 0);
            same!(4, false, true, 0);
        }
    }

    macro_rules! formats {
        ($($name:ident: $ty:ty,)*) => {$(
            #[test]
            fn $name() {
                ints_dequantize::<$ty>();
                kernels_match_ref::<$ty>();
            }
        )*};
    }

    formats! {
        q2_k: crate::quant::q2_k::Q2_K,
        q3_k: crate::quant::q3_k::Q3_K,
        q4_k: crate::quant::q4_k::Q4_K,
        q5_k: crate::quant::q5_k::Q5_K,
        q6_k: crate::quant::q6_k::Q6_K,
        iq1_s: crate::quant::iq1_s::IQ1_S,
        iq1_m: crate::quant::iq1_m::IQ1_M,
        iq2_xxs: crate::quant::iq2_xxs::IQ2_XXS,
        iq2_xs: crate::quant::iq2_xs::IQ2_XS,
        iq2_s: crate::quant::iq2_s::IQ2_S,
        iq3_xxs: crate::quant::iq3_xxs::IQ3_XXS,
        iq3_s: crate::quant::iq3_s::IQ3_S,
        iq4_xs: crate::quant::iq4_xs::IQ4_XS,
    }
}
