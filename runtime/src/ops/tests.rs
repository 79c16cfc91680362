//! Each op against an f64 reference with a tolerance derived from the precision the
//! op keeps, and each SIMD kernel against its scalar reference bit for bit.

use super::*;

/// 2^-24: half an f32 ulp at 1.0, the unit roundoff of one f32 operation.
const U32: f64 = 1.0 / 16_777_216.0;
/// 2^-11: the unit roundoff of one f16 rounding.
const U16: f64 = 1.0 / 2048.0;

/// splitmix64, for reproducible test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * amp).collect()
    }
}

#[test]
fn rms_norm_matches_f64() {
    let mut rng = Rng(1);
    for &n in &[1usize, 7, 64, 576, 3072] {
        let x = rng.vec(n, 3.0);
        let w = rng.vec(n, 2.0);
        let eps = 1e-5f32;
        let mut out = vec![0f32; n];
        rms_norm(&x, &w, eps, &mut out);
        let mean: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        let scale = 1.0 / (mean + eps as f64).sqrt();
        for i in 0..n {
            let exact = x[i] as f64 * scale * w[i] as f64;
            // Roundings: square, mean to f32, +eps, sqrt, 1/, two products: each at most
            // U32 relative, the root halves its input's error. 8 U32 covers them.
            let tol = 8.0 * U32 * exact.abs() + 1e-30;
            assert!(
                (out[i] as f64 - exact).abs() <= tol,
                "n {n} i {i}: {} vs {exact}",
                out[i]
            );
        }
    }
}

/// Llama-3.1's rope_freqs: the factor each frequency's wavelength is divided by
/// (factor 8, low 1, high 4, original context 8192), as the converter computes it.
fn llama31_freq_factors(rope_dim: usize, base: f64) -> Vec<f32> {
    let (factor, low, high, orig) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    let (low_wavelen, high_wavelen) = (orig / low, orig / high);
    (0..rope_dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf(2.0 * i as f64 / rope_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

#[test]
fn rope_matches_direct_formula_with_freq_factors() {
    let (head_dim, rope_dim, n_heads, base) = (128usize, 128usize, 3usize, 500_000f32);
    let ff = llama31_freq_factors(rope_dim, base as f64);
    assert!(ff.contains(&8.0) && ff.contains(&1.0) && ff.iter().any(|&f| f > 1.0 && f < 8.0));
    let n_ctx = 4100;
    let rope = Rope::new(head_dim, rope_dim, base, Some(&ff), n_ctx);
    let mut rng = Rng(2);
    for &pos in &[0usize, 1, 17, 1000, 4099] {
        let x = rng.vec(n_heads * head_dim, 2.0);
        let mut y = x.clone();
        rope.apply(&mut y, n_heads, pos);
        for h in 0..n_heads {
            for i in 0..rope_dim / 2 {
                let theta = pos as f64 * (base as f64).powf(-2.0 * i as f64 / rope_dim as f64)
                    / ff[i] as f64;
                let (x0, x1) = (
                    x[h * head_dim + 2 * i] as f64,
                    x[h * head_dim + 2 * i + 1] as f64,
                );
                let (s, c) = theta.sin_cos();
                let e0 = x0 * c - x1 * s;
                let e1 = x0 * s + x1 * c;
                // The angle is pos times i+1 rounded f32 products (theta_scale itself,
                // then one per step) and one division: relative error (i+3) U32, plus
                // the rounding of pow for theta_scale amplified by the exponent i. The
                // rotation adds a few U32 of |x|.
                let angle_err = ((i as f64 + 3.0) + i as f64 * 2.0) * U32 * theta.abs();
                let tol = (x0.abs() + x1.abs()) * (angle_err + 4.0 * U32);
                let (g0, g1) = (
                    y[h * head_dim + 2 * i] as f64,
                    y[h * head_dim + 2 * i + 1] as f64,
                );
                assert!(
                    (g0 - e0).abs() <= tol && (g1 - e1).abs() <= tol,
                    "pos {pos} head {h} pair {i}: ({g0}, {g1}) vs ({e0}, {e1}), tol {tol}"
                );
            }
        }
    }
}

#[test]
fn rope_leaves_dims_past_rope_dim_untouched() {
    let rope = Rope::new(64, 32, 10_000.0, None, 8);
    let mut rng = Rng(3);
    let x = rng.vec(2 * 64, 1.0);
    let mut y = x.clone();
    rope.apply(&mut y, 2, 5);
    for h in 0..2 {
        assert_eq!(&y[h * 64 + 32..h * 64 + 64], &x[h * 64 + 32..h * 64 + 64]);
        assert_ne!(&y[h * 64..h * 64 + 32], &x[h * 64..h * 64 + 32]);
    }
    // Position 0 is the identity.
    let mut z = x.clone();
    rope.apply(&mut z, 2, 0);
    assert_eq!(z, x);
}

#[test]
fn rope_angles_follow_the_f32_recurrence() {
    // theta_i must be pos * theta_scale^i accumulated in f32, not a fresh power: the
    // two differ in the last bits, and those bits are what llama.cpp produces.
    let rope = Rope::new(64, 64, 100_000.0, None, 300);
    let scale = 100_000f32.powf(-2.0 / 64.0);
    let mut theta = 299f32;
    for (i, &(c, s)) in rope.angles(299).iter().enumerate() {
        assert_eq!(
            (c.to_bits(), s.to_bits()),
            (theta.cos().to_bits(), theta.sin().to_bits()),
            "pair {i}"
        );
        theta *= scale;
    }
}

#[test]
fn rope_rejects_bad_parameters() {
    assert_eq!(
        Rope::try_new(64, 65, 1e4, None, 4).err(),
        Some(RopeError::BadRopeDim {
            rope_dim: 65,
            head_dim: 64
        })
    );
    assert_eq!(
        Rope::try_new(64, 128, 1e4, None, 4).err(),
        Some(RopeError::BadRopeDim {
            rope_dim: 128,
            head_dim: 64
        })
    );
    assert_eq!(
        Rope::try_new(64, 64, 1e4, Some(&[1.0; 31]), 4).err(),
        Some(RopeError::ShortFreqFactors {
            found: 31,
            rope_dim: 64,
            needed: 32
        })
    );
    assert!(matches!(
        Rope::try_new(64, 64, f32::NAN, None, 4),
        Err(RopeError::BadBase(_))
    ));
}

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

#[test]
fn dot_f16_simd_matches_reference_bitwise() {
    let mut rng = Rng(4);
    for &n in &[0usize, 1, 15, 16, 31, 32, 64, 65, 96, 128, 200, 256] {
        let a = to_f16(&rng.vec(n, 4.0));
        let b = to_f16(&rng.vec(n, 4.0));
        assert_eq!(
            dot_f16(&a, &b).to_bits(),
            dot_f16_ref(&a, &b, SIMD_WIDTH).to_bits(),
            "n {n}"
        );
        #[cfg(x86_simd)]
        assert_eq!(
            avx2::dot_f16(&a, &b).to_bits(),
            dot_f16_ref(&a, &b, 8).to_bits(),
            "n {n} w8"
        );
        // Every width is within the f32 accumulation bound of the exact dot product.
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| x.to_f64() * y.to_f64()).sum();
        let abs: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x.to_f64() * y.to_f64()).abs())
            .sum();
        for width in [0, 8, 16] {
            let got = dot_f16_ref(&a, &b, width) as f64;
            assert!(
                (got - exact).abs() <= (n as f64 + 2.0) * U32 * abs + 1e-30,
                "n {n} width {width}"
            );
        }
    }
}

/// The grouped scores (one K read for every head of a KV group) are each head's own dot
/// products, for head sizes with and without a vector kernel and group sizes that do
/// and do not fill the kernels' head blocks.
#[test]
fn group_scores_are_each_heads_dot_products() {
    let mut rng = Rng(9);
    for hd in [32usize, 64, 80, 128] {
        for heads in 1..=5 {
            let kv_stride = 2 * hd + 16;
            let len = 70;
            let k = to_f16(&rng.vec(len * kv_stride, 2.0));
            let q16 = to_f16(&rng.vec(heads * hd, 3.0));
            let mut got = vec![0f32; heads * len];
            let mut want = got.clone();
            group_scores(&q16, hd, &k[7..], kv_stride, len, 0.125, &mut got);
            group_scores_ref(&q16, hd, &k[7..], kv_stride, len, 0.125, &mut want);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "hd {hd} heads {heads}");
        }
    }
}

/// The grouped V accumulation is each head's own chain of `scale_f16` and `mad_f16`,
/// for head sizes with and without a vector kernel, groups that do and do not fill the
/// kernels' head blocks, key counts across the kernels' key tiles, and rescales.
#[test]
fn group_accumulate_v_is_each_heads_chain() {
    let mut rng = Rng(10);
    for hd in [16usize, 32, 64, 80, 128] {
        for heads in 1..=5 {
            for len in [1usize, 63, 64, 150] {
                let kv_stride = 2 * hd + 16;
                let v = to_f16(&rng.vec(len * kv_stride, 2.0));
                let weights = rng.vec(heads * len, 1.0);
                let rescales: Vec<f32> = (0..heads * len)
                    .map(|i| match i % 37 {
                        0 => 0.0,
                        5 => 0.25 + rng.unit().abs(),
                        _ => 1.0,
                    })
                    .collect();
                let init = to_f16(&rng.vec(heads * hd, 3.0));
                let (mut got, mut want) = (init.clone(), init);
                group_accumulate_v(&weights, &rescales, &v[3..], kv_stride, len, hd, &mut got);
                group_accumulate_v_ref(&weights, &rescales, &v[3..], kv_stride, len, hd, &mut want);
                let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "hd {hd} heads {heads} len {len}");
            }
        }
    }
}

#[test]
fn f32_to_f16_rounds_to_nearest_even() {
    let mut rng = Rng(5);
    let mut src = rng.vec(100, 70_000.0);
    src.extend([
        0.0,
        -0.0,
        1.0 + 1.0 / 4096.0,
        1.0 + 3.0 / 4096.0,
        65_520.0,
        1e-8,
        f32::INFINITY,
    ]);
    let mut dst = vec![f16::ZERO; src.len()];
    f32_to_f16(&src, &mut dst);
    for (s, d) in src.iter().zip(&dst) {
        assert_eq!(d.to_bits(), f16::from_f32(*s).to_bits(), "{s}");
    }
    // Ties go to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
    assert_eq!(dst[102].to_f32(), 1.0);
    assert_eq!(dst[103].to_f32(), 1.0 + 4.0 / 4096.0);
}

/// A KV cache of `n` positions with 2 heads of `head_dim` per row (row stride
/// `2*head_dim + 3` to catch stride/offset mix-ups), returning (k, v, stride).
fn kv_cache(rng: &mut Rng, n: usize, head_dim: usize, amp: f32) -> (Vec<f16>, Vec<f16>, usize) {
    let stride = 2 * head_dim + 3;
    (
        to_f16(&rng.vec(n * stride, amp)),
        to_f16(&rng.vec(n * stride, amp)),
        stride,
    )
}

/// softmax(q·K^T * scale) · V in f64 over the given f16 values, with Q rounded to f16
/// as the op does; also returns max|v| for the tolerance.
fn attention_f64(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    stride: usize,
    off: usize,
    n_kv: usize,
    scale: f32,
) -> (Vec<f64>, f64) {
    let d = q.len();
    let q16 = to_f16(q);
    let scores: Vec<f64> = (0..n_kv)
        .map(|p| {
            (0..d)
                .map(|i| q16[i].to_f64() * k[p * stride + off + i].to_f64())
                .sum::<f64>()
                * scale as f64
        })
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut out = vec![0f64; d];
    let mut vmax = 0f64;
    for p in 0..n_kv {
        for i in 0..d {
            let val = v[p * stride + off + i].to_f64();
            vmax = vmax.max(val.abs());
            out[i] += w[p] / total * val;
        }
    }
    (out, vmax)
}

/// Error bound for attention with an f16 running output: each of the n_kv updates
/// rounds the accumulator (at most S_partial * vmax) to f16, and each rescale rounds
/// again, so the normalised output is off by at most (2 n_kv + 2) U16 vmax; score
/// errors (f32 dot of 16-bit values, |s| up to scale * sum|q k|) move the weights by
/// a relative 2 * Δs.
fn attention_tol(n_kv: usize, vmax: f64, score_err: f64) -> f64 {
    vmax * ((2.0 * n_kv as f64 + 2.0) * U16 + 2.0 * score_err) + 1e-6
}

#[test]
fn attend_head_matches_f64_attention() {
    let mut rng = Rng(6);
    for &(head_dim, n_kv) in &[(64usize, 1usize), (64, 7), (64, 300), (128, 33), (80, 50)] {
        let (k, v, stride) = kv_cache(&mut rng, n_kv, head_dim, 1.0);
        let q = rng.vec(head_dim, 2.0);
        let scale = 1.0 / (head_dim as f32).sqrt();
        for off in [0, head_dim + 1] {
            let mut scores = vec![0f32; 2 * n_kv + 5];
            let mut out = vec![0f32; head_dim];
            attend_head(&q, &k, &v, stride, off, n_kv, scale, &mut scores, &mut out);
            let (exact, vmax) = attention_f64(&q, &k, &v, stride, off, n_kv, scale);
            let score_err = (head_dim as f64 + 2.0) * U32 * scale as f64 * 2.0 * head_dim as f64;
            let tol = attention_tol(n_kv, vmax, score_err);
            for i in 0..head_dim {
                assert!(
                    (out[i] as f64 - exact[i]).abs() <= tol,
                    "d {head_dim} n {n_kv} off {off} i {i}: {} vs {}",
                    out[i],
                    exact[i]
                );
            }
        }
    }
}

#[test]
fn attend_head_single_position_returns_v() {
    // One key: softmax weight 1, the output is that V row exactly.
    let mut rng = Rng(7);
    let (k, v, stride) = kv_cache(&mut rng, 1, 64, 1.0);
    let q = rng.vec(64, 1.0);
    let mut out = vec![0f32; 64];
    attend_head(
        &q,
        &k,
        &v,
        stride,
        64 + 1,
        1,
        0.125,
        &mut [0.0; 2],
        &mut out,
    );
    for i in 0..64 {
        assert_eq!(out[i], v[64 + 1 + i].to_f32());
    }
}

#[test]
fn attend_head_split_matches_single_pass_and_f64() {
    let mut rng = Rng(8);
    let (head_dim, n_kv) = (64usize, 700usize);
    let (k, v, stride) = kv_cache(&mut rng, n_kv, head_dim, 1.0);
    let q = rng.vec(head_dim, 3.0);
    let scale = 0.125;
    let mut scores = vec![0f32; 2 * n_kv];
    let mut single = vec![0f32; head_dim];
    attend_head(&q, &k, &v, stride, 0, n_kv, scale, &mut scores, &mut single);
    // One chunk covering everything merges with weights exp(0) = 1: same bits.
    let mut one = vec![0f32; head_dim];
    attend_head_split(
        &q,
        &k,
        &v,
        stride,
        0,
        n_kv,
        scale,
        1024,
        &mut scores,
        &mut one,
    );
    assert_eq!(one, single);
    let (exact, vmax) = attention_f64(&q, &k, &v, stride, 0, n_kv, scale);
    let score_err = (head_dim as f64 + 2.0) * U32 * scale as f64 * 3.0 * head_dim as f64;
    for chunk in [128usize, 256, 333] {
        let mut out = vec![0f32; head_dim];
        attend_head_split(
            &q,
            &k,
            &v,
            stride,
            0,
            n_kv,
            scale,
            chunk,
            &mut scores,
            &mut out,
        );
        // Chunks accumulate fewer positions each in f16, so the single-pass bound holds.
        let tol = attention_tol(n_kv, vmax, score_err);
        for i in 0..head_dim {
            assert!(
                (out[i] as f64 - exact[i]).abs() <= tol,
                "chunk {chunk} i {i}"
            );
        }
        assert_ne!(
            out, single,
            "chunking should change the rounding (chunk {chunk})"
        );
    }
}

#[test]
fn attend_rows_tiled_matches_f64_attention() {
    let mut rng = Rng(11);
    // (head_dim, rows, keys the first row sees): partial tiles, a prefix longer than a
    // tile, one row, and a single visible key.
    for &(head_dim, n_rows, n_kv_first) in &[
        (64usize, 64usize, 1usize),
        (64, 70, 200),
        (128, 13, 65),
        (80, 1, 1),
        (64, 3, 64),
    ] {
        let n_kv = n_kv_first + n_rows - 1;
        let (k, v, stride) = kv_cache(&mut rng, n_kv, head_dim, 1.0);
        // f16-exact queries, so the f64 reference (which rounds Q to f16) sees the same Q.
        let q: Vec<f32> = to_f16(&rng.vec(n_rows * head_dim, 2.0))
            .iter()
            .map(|x| x.to_f32())
            .collect();
        let scale = 1.0 / (head_dim as f32).sqrt();
        for flavor in [
            EXP_FLAVOR,
            ExpFlavor::Avx512,
            ExpFlavor::Avx2,
            ExpFlavor::Libm,
        ] {
            for off in [0, head_dim + 1] {
                let mut scratch = TiledScratch::new(head_dim, n_rows);
                let out = attend_rows_tiled_flavor(
                    &q,
                    head_dim,
                    n_rows,
                    n_kv_first,
                    &k,
                    &v,
                    stride,
                    off,
                    scale,
                    &mut scratch,
                    flavor,
                );
                for r in 0..n_rows {
                    let q_row = &q[r * head_dim..(r + 1) * head_dim];
                    let (exact, vmax) =
                        attention_f64(q_row, &k, &v, stride, off, n_kv_first + r, scale);
                    // f32 scores (head_dim fused steps) and an f32 running output
                    // (one rounding per key and per rescale).
                    let score_err =
                        (head_dim as f64 + 2.0) * U32 * scale as f64 * 2.0 * head_dim as f64;
                    let tol = vmax * (4.0 * (n_kv as f64 + 2.0) * U32 + 2.0 * score_err) + 1e-7;
                    for i in 0..head_dim {
                        let got = out[r * head_dim + i] as f64;
                        assert!(
                            (got - exact[i]).abs() <= tol,
                            "{flavor:?} d {head_dim} row {r} off {off} i {i}: {got} vs {}",
                            exact[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn attend_rows_tiled_rows_are_independent_of_grouping() {
    // Each row's result must not depend on which rows share the call: the model groups
    // rows by 64, ggml by its thread chunks.
    let mut rng = Rng(12);
    let (head_dim, n_rows, n_kv_first) = (64, 150, 40);
    let (k, v, stride) = kv_cache(&mut rng, n_kv_first + n_rows, head_dim, 1.0);
    let q = rng.vec(n_rows * head_dim, 3.0);
    let scale = 0.125;
    let mut all = TiledScratch::new(head_dim, n_rows);
    let whole = attend_rows_tiled(
        &q, head_dim, n_rows, n_kv_first, &k, &v, stride, 0, scale, &mut all,
    )
    .to_vec();
    let mut one = TiledScratch::new(head_dim, 7);
    for start in (0..n_rows).step_by(7) {
        let rows = 7.min(n_rows - start);
        let part = attend_rows_tiled(
            &q[start * head_dim..],
            head_dim,
            rows,
            n_kv_first + start,
            &k,
            &v,
            stride,
            0,
            scale,
            &mut one,
        );
        for (i, (a, b)) in part.iter().zip(&whole[start * head_dim..]).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "row {} value {}",
                start + i / head_dim,
                i % head_dim
            );
        }
    }
}

#[test]
fn attend_rows_tiled_single_key_returns_v() {
    let mut rng = Rng(13);
    let (k, v, stride) = kv_cache(&mut rng, 1, 64, 1.0);
    let q = rng.vec(64, 1.0);
    let mut scratch = TiledScratch::new(64, 1);
    let out = attend_rows_tiled(&q, 64, 1, 1, &k, &v, stride, 3, 0.125, &mut scratch);
    for i in 0..64 {
        assert_eq!(out[i], v[3 + i].to_f32());
    }
}

#[test]
fn split_chunk_len_follows_llama_cpp_padding() {
    // Under 512 padded cells: single pass.
    assert_eq!(llama_cpp_split_chunk_len(1, 8192, 4), None);
    assert_eq!(llama_cpp_split_chunk_len(256, 8192, 4), None);
    // 257 cells pad to 512: split into ceil(512 / threads).
    assert_eq!(llama_cpp_split_chunk_len(257, 8192, 4), Some(128));
    assert_eq!(llama_cpp_split_chunk_len(257, 8192, 3), Some(171));
    assert_eq!(llama_cpp_split_chunk_len(1000, 8192, 2), Some(512));
    // The padding never exceeds the cache.
    assert_eq!(llama_cpp_split_chunk_len(300, 300, 2), None);
    assert_eq!(llama_cpp_split_chunk_len(600, 600, 2), Some(300));
}

#[test]
fn expf_flavors_are_accurate() {
    // ggml documents its vector expf at 1.45 ulp + 0.5; allow 2 ulp relative.
    let mut x = -103.0f32;
    while x < 88.0 {
        let exact = (x as f64).exp();
        for flavor in [ExpFlavor::Avx512, ExpFlavor::Avx2, ExpFlavor::Libm] {
            let got = expf_flavor(x, flavor) as f64;
            let ulp = if exact < f32::MIN_POSITIVE as f64 {
                f32::from_bits(1) as f64
            } else {
                exact * 2.0 * U32
            };
            assert!(
                (got - exact).abs() <= 2.0 * ulp,
                "{flavor:?} x {x}: {got} vs {exact}"
            );
        }
        x += 0.0137;
    }
    for flavor in [ExpFlavor::Avx512, ExpFlavor::Avx2] {
        assert_eq!(expf_flavor(-200.0, flavor), 0.0, "{flavor:?}");
        assert_eq!(expf_flavor(200.0, flavor), f32::INFINITY, "{flavor:?}");
        assert_eq!(expf_flavor(0.0, flavor), 1.0, "{flavor:?}");
    }
}

#[test]
fn swiglu_matches_f64() {
    let mut rng = Rng(9);
    for flavor in [
        EXP_FLAVOR,
        ExpFlavor::Avx512,
        ExpFlavor::Avx2,
        ExpFlavor::Libm,
    ] {
        for &n in &[1usize, 15, 16, 17, 1536] {
            let gate0 = rng.vec(n, 12.0);
            let up = rng.vec(n, 3.0);
            let mut gate = gate0.clone();
            swiglu_flavor(&mut gate, &up, flavor);
            for i in 0..n {
                let g = gate0[i] as f64;
                let exact = g / (1.0 + (-g).exp()) * up[i] as f64;
                // expf within 2 ulp, then +1, divide, multiply: 6 U32 relative.
                let tol = 6.0 * U32 * exact.abs() + 1e-30;
                assert!(
                    (gate[i] as f64 - exact).abs() <= tol,
                    "{flavor:?} n {n} i {i}"
                );
            }
        }
    }
    let mut gate = vec![1.0f32, -2.0];
    swiglu(&mut gate, &[2.0, 1.0]);
    assert!((gate[0] - 2.0 * 0.731_058_6).abs() < 1e-6 && (gate[1] + 0.238_405_85).abs() < 1e-6);
}

#[test]
fn softmax_matches_f64() {
    let mut rng = Rng(10);
    for flavor in [
        EXP_FLAVOR,
        ExpFlavor::Avx512,
        ExpFlavor::Avx2,
        ExpFlavor::Libm,
    ] {
        for &n in &[1usize, 5, 16, 40, 1000] {
            let x0 = rng.vec(n, 20.0);
            let mut x = x0.clone();
            softmax_flavor(&mut x, flavor);
            let max = x0.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let total: f64 = x0.iter().map(|&v| (v as f64 - max).exp()).sum();
            let mut sum = 0f64;
            for i in 0..n {
                let exact = (x0[i] as f64 - max).exp() / total;
                // x - max rounds (|x - max| <= 40: 40 U32 absolute in the exponent),
                // expf 2 ulp, the f64 sum is exact enough, 1/total and the product 2 U32.
                let tol = exact * (40.0 * U32 + 6.0 * U32) + 1e-38;
                assert!(
                    (x[i] as f64 - exact).abs() <= tol,
                    "{flavor:?} n {n} i {i}: {} vs {exact}",
                    x[i]
                );
                sum += x[i] as f64;
            }
            assert!((sum - 1.0).abs() < 1e-5);
        }
    }
}

/// Bit-exact agreement with llama.cpp's CPU backend built for the same kernel tier: the
/// outputs in `golden/ggml_cpu_TIER.bin` come from ggml itself (`golden/ggml_ops.c`,
/// which also documents how to regenerate them); the inputs are regenerated here from
/// the same LCG in the same order. AVX-512 and AVX2 run different ggml code paths
/// (16- or 8-lane trees, two expf flavours), hence one file per tier; the scalar tier has
/// no llama.cpp twin.
#[cfg(x86_simd)]
mod ggml_golden {
    use super::*;

    #[cfg(all(target_feature = "avx512f", target_feature = "avx512dq"))]
    const GOLDEN: &[u8] = include_bytes!("golden/ggml_cpu_avx512.bin");
    #[cfg(not(all(target_feature = "avx512f", target_feature = "avx512dq")))]
    const GOLDEN: &[u8] = include_bytes!("golden/ggml_cpu_avx2.bin");

    /// The harness's input generator: 64-bit LCG, top 24 bits to [-1, 1) times amp,
    /// all in f32 like the C code.
    struct Lcg(u64);
    impl Lcg {
        fn f32s(&mut self, n: usize, amp: f32) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.0 = self
                        .0
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((self.0 >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * amp
                })
                .collect()
        }
        fn f16s(&mut self, n: usize, amp: f32) -> Vec<f16> {
            to_f16(&self.f32s(n, amp))
        }
    }

    /// Reads the next `n` golden f32 values.
    struct Golden(usize);
    impl Golden {
        fn take(&mut self, n: usize) -> Vec<f32> {
            let bytes = &GOLDEN[self.0..self.0 + 4 * n];
            self.0 += 4 * n;
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
    }

    fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
        let differ = got
            .iter()
            .zip(want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{what}: {differ} of {} values differ from ggml",
            want.len()
        );
    }

    #[test]
    fn every_op_matches_ggml_bitwise() {
        let mut rng = Lcg(12345);
        let mut golden = Golden(0);

        let (x, w) = (rng.f32s(576, 3.0), rng.f32s(576, 2.0));
        let mut out = vec![0f32; 576];
        rms_norm(&x, &w, 1e-5, &mut out);
        assert_bits("rms_norm", &out, &golden.take(576));

        // (head_dim, rope_dim, base, freq factors), 3 heads, four positions each.
        for (head_dim, rope_dim, base, with_ff) in [
            (64, 64, 1e5f32, false),
            (128, 128, 5e5, true),
            (80, 64, 1e4, false),
        ] {
            let ff: Vec<f32> = (0..rope_dim / 2)
                .map(|i| 1.0 + (i % 7) as f32 * 1.1)
                .collect();
            let rope = Rope::new(head_dim, rope_dim, base, with_ff.then_some(&ff[..]), 8001);
            for pos in [0, 7, 300, 8000] {
                let mut x = rng.f32s(3 * head_dim, 2.0);
                rope.apply(&mut x, 3, pos);
                assert_bits(
                    &format!("rope {head_dim}/{rope_dim} pos {pos}"),
                    &x,
                    &golden.take(3 * head_dim),
                );
            }
        }

        // Two query heads over one KV head; n_kv >= 512 takes the split path with
        // ceil(n_kv / threads) keys per chunk (no mask, so no padding).
        for (head_dim, n_kv, threads) in [
            (64usize, 37usize, 1usize),
            (64, 700, 3),
            (128, 300, 2),
            (64, 1000, 4),
        ] {
            let q = rng.f32s(2 * head_dim, 3.0);
            let k = rng.f16s(head_dim * n_kv, 1.0);
            let v = rng.f16s(head_dim * n_kv, 1.0);
            let scale = 1.0 / (head_dim as f32).sqrt();
            let mut scores = vec![0f32; 2 * n_kv];
            let mut out = vec![0f32; 2 * head_dim];
            for (qh, oh) in q.chunks_exact(head_dim).zip(out.chunks_exact_mut(head_dim)) {
                if n_kv >= 512 {
                    let chunk = n_kv.div_ceil(threads);
                    attend_head_split(qh, &k, &v, head_dim, 0, n_kv, scale, chunk, &mut scores, oh);
                } else {
                    attend_head(qh, &k, &v, head_dim, 0, n_kv, scale, &mut scores, oh);
                }
            }
            assert_bits(
                &format!("flash attention d {head_dim} n_kv {n_kv}"),
                &out,
                &golden.take(2 * head_dim),
            );
        }

        let (mut gate, up) = (rng.f32s(1543, 12.0), rng.f32s(1543, 3.0));
        swiglu(&mut gate, &up);
        assert_bits("swiglu", &gate, &golden.take(1543));

        let mut x = rng.f32s(1003, 30.0);
        softmax(&mut x);
        assert_bits("softmax", &x, &golden.take(1003));

        // The tiled kernel of prompt batches: n_q causal rows after a cached prefix, two
        // query heads over one KV head; ggml writes [token][head][d].
        for (head_dim, n_q, n_kv) in [(64usize, 100usize, 300usize), (128, 64, 101), (64, 70, 70)] {
            let q = rng.f32s(2 * n_q * head_dim, 3.0);
            let k = rng.f16s(head_dim * n_kv, 1.0);
            let v = rng.f16s(head_dim * n_kv, 1.0);
            let scale = 1.0 / (head_dim as f32).sqrt();
            let mut scratch = TiledScratch::new(head_dim, n_q);
            let mut out = vec![0f32; n_q * 2 * head_dim];
            for h in 0..2 {
                let rows = attend_rows_tiled(
                    &q[h * n_q * head_dim..],
                    head_dim,
                    n_q,
                    n_kv - n_q + 1,
                    &k,
                    &v,
                    head_dim,
                    0,
                    scale,
                    &mut scratch,
                );
                for (t, row) in rows.chunks_exact(head_dim).enumerate() {
                    let at = (t * 2 + h) * head_dim;
                    out[at..at + head_dim].copy_from_slice(row);
                }
            }
            assert_bits(
                &format!("tiled flash attention d {head_dim} n_q {n_q} n_kv {n_kv}"),
                &out,
                &golden.take(2 * n_q * head_dim),
            );
        }
        assert_eq!(golden.0, GOLDEN.len(), "golden file has unread values");
    }
}
