//! Test support: dot products recorded from llama.cpp's CPU backend
//! (`golden_dot/<NAME>.bin`, written by `scripts/iq_dot_golden.py`, which calls ggml's
//! own activation quantizer and `ggml_vec_dot_*` through its shared library).
//!
//! They pin what llama.cpp computes, bit for bit, on the same weight and activation
//! blocks: the AVX2 kernels mirror ggml's x86 lane layout and float operation order and
//! must match exactly; the scalar references sum in a different order and must be close.

use super::{ActBlock, ActType, WeightType};

/// Copies plain-old-data blocks out of a byte slice.
fn read_blocks<B: Copy>(bytes: &[u8], count: usize) -> Vec<B> {
    let size = std::mem::size_of::<B>();
    assert_eq!(bytes.len(), count * size);
    let mut out = Vec::<B>::with_capacity(count);
    // SAFETY: blocks are #[repr(C)] integers/floats, valid for any bits; the copy fills
    // exactly `count` of them.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), bytes.len());
        out.set_len(count);
    }
    out
}

/// One recorded case: a weight row, and activation rows with ggml's dot for each.
pub struct GgmlDots<W: WeightType> {
    pub row: Vec<W::Block>,
    pub acts: Vec<(Vec<ActBlock<W>>, f32)>,
}

pub fn load<W: WeightType>() -> GgmlDots<W> {
    let path = format!(
        "{}/src/quant/golden_dot/{}.bin",
        env!("CARGO_MANIFEST_DIR"),
        W::NAME
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    let (n_blocks, n_acts) = (word(0), word(1));
    let w_size = n_blocks * std::mem::size_of::<W::Block>();
    let n_act_blocks = n_blocks * W::BLOCK_ELEMS / W::Act::BLOCK_ELEMS;
    let a_size = n_act_blocks * std::mem::size_of::<ActBlock<W>>();
    assert_eq!(
        bytes.len(),
        8 + w_size + n_acts * (a_size + 4),
        "{path}: size"
    );
    let row = read_blocks(&bytes[8..8 + w_size], n_blocks);
    let acts = (0..n_acts)
        .map(|k| {
            let start = 8 + w_size + k * (a_size + 4);
            let act = read_blocks(&bytes[start..start + a_size], n_act_blocks);
            let want = f32::from_le_bytes(
                bytes[start + a_size..start + a_size + 4]
                    .try_into()
                    .unwrap(),
            );
            (act, want)
        })
        .collect();
    GgmlDots { row, acts }
}

/// `vec_dot` must return ggml's f32 exactly where the AVX2 kernel is built (elsewhere,
/// like the scalar reference, within `rel_limit` of `Σ |w a|`).
pub fn check_ggml_dot<W: WeightType>(rel_limit: f64) {
    let GgmlDots { row, acts } = load::<W>();
    let mut w = vec![0f32; row.len() * W::BLOCK_ELEMS];
    W::dequantize_ref(&row, &mut w);
    for (k, (act, want)) in acts.iter().enumerate() {
        let mut a = vec![0f32; w.len()];
        W::Act::dequantize_ref(act, &mut a);
        let scale: f64 = w
            .iter()
            .zip(&a)
            .map(|(&x, &y)| (x as f64 * y as f64).abs())
            .sum();
        let fast = W::vec_dot(&row, act);
        if cfg!(x86_simd) {
            assert_eq!(
                fast.to_bits(),
                want.to_bits(),
                "{} case {k}: fast dot {fast} vs ggml {want}",
                W::NAME
            );
        } else {
            let err = (fast as f64 - *want as f64).abs() / scale;
            assert!(
                err <= rel_limit,
                "{} case {k}: fast dot {fast} vs ggml {want}: {err:e}",
                W::NAME
            );
        }
        let scalar = W::vec_dot_ref(&row, act);
        let err = (scalar as f64 - *want as f64).abs() / scale;
        assert!(
            err <= rel_limit,
            "{} case {k}: scalar dot {scalar} vs ggml {want}: rel err {err:e}",
            W::NAME
        );
    }
}
