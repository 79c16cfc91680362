//! Prompt-batch attention: the arithmetic of llama.cpp's tiled flash-attention kernel
//! (`ggml_compute_forward_flash_attn_ext_tiled`), which ggml-cpu runs instead of the
//! one-row kernel ([`super::attend_head`]) when a batch holds [`TILE_Q`] or more query
//! rows (an f32 Q and an f16 or f32 KV cache).
//!
//! Per query row, keys are taken in tiles of [`TILE_KV`] positions starting at 0:
//!
//! 1. **Scores in f32.** Q stays f32 (the one-row kernel rounds it to f16); K is widened
//!    to f32. Each score is one fused multiply-add chain over the head, in order, from 0:
//!    `s = fma(q[d], k[d], s)` for `d = 0..head_dim`, then rounded once more by the
//!    separate `s * scale`. Masked positions (the future, and past the cache) are `-inf`.
//! 2. **Softmax per tile.** `M' = max(M, max(tile))`; when it grows, the running output
//!    and sum are multiplied by `expf(M - M')` (libm). The weights are
//!    `p = v_expf(s - M')` in vector blocks of the target's width ([`ExpFlavor`]); each
//!    block's lanes are added in the softmax tree and the block sums in f64, and that
//!    f64 total is added to the f32 running sum `S` (`S = f32(f64(S) + total)`).
//! 3. **V in f32.** The running output is an f32 vector (the one-row kernel keeps f16):
//!    `o[d] = fma(p_j, v_j[d], o[d])` key by key, in key order.
//! 4. **Output** `o * (1/S)`, a multiply by the rounded reciprocal.
//!
//! Every output element depends only on its own row, so which rows share a tile, and
//! which thread runs it, does not change the result: callers group rows as they like.
//! Tiles past a row's last visible key contribute nothing (ggml skips fully masked
//! tiles and zeroes the weights of masked keys, and `fma(0, v, o) = o`), so they are
//! not visited here.

use crate::float16::f16;

use super::{expf_flavor, reduce_lanes_softmax, ExpFlavor, EXP_FLAVOR};

/// Batches of at least this many query rows take the tiled kernel in llama.cpp
/// (`GGML_FA_TILE_Q`); smaller batches (and decode) use the one-row kernel.
pub const TILE_Q: usize = 64;

/// Keys per tile (`GGML_FA_TILE_KV`): the granularity of the running maximum.
pub const TILE_KV: usize = 64;

/// Per-thread scratch for [`attend_rows_tiled`]: one K tile (transposed) and one V tile
/// in f32, and the running state of up to `max_rows` query rows.
pub struct TiledScratch {
    head_dim: usize,
    max_rows: usize,
    /// `k_t[d * TILE_KV + j]`: value `d` of key `j` of the current tile.
    k_t: Vec<f32>,
    /// `v[j * head_dim + d]`: value `d` of key `j` of the current tile.
    v: Vec<f32>,
    /// Scores of every row against the current tile, `max_rows x TILE_KV`.
    scores: Vec<f32>,
    /// Running (then final) output, `max_rows x head_dim`.
    out: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// Keys of the current tile each row weighs (0: none, the row is past them).
    weighted: Vec<usize>,
}

impl TiledScratch {
    /// Scratch for heads of `head_dim` values and groups of up to `max_rows` rows.
    pub fn new(head_dim: usize, max_rows: usize) -> TiledScratch {
        TiledScratch {
            head_dim,
            max_rows,
            k_t: vec![0.0; head_dim * TILE_KV],
            v: vec![0.0; TILE_KV * head_dim],
            scores: vec![0.0; max_rows * TILE_KV],
            out: vec![0.0; max_rows * head_dim],
            max: vec![f32::NEG_INFINITY; max_rows],
            sum: vec![0.0; max_rows],
            weighted: vec![0; max_rows],
        }
    }

    /// Rows one call can take.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Values per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
}

/// Attention of `n_rows` query rows of one head at consecutive positions, over the
/// cache, with a causal mask: row `r` sees the first `n_kv_first + r` cached positions
/// (`n_kv_first >= 1`). Returns the outputs, `n_rows x head_dim`, in `scratch`.
///
/// Layout: row `r`'s query is `q[r * q_stride ..][..head_dim]`; the cache holds
/// `kv_stride` f16 values per position and this head's K and V are
/// `kv_off .. kv_off + head_dim` of each. `head_dim` and the row limit come from
/// `scratch`. See the module documentation for the arithmetic.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_tiled<'s>(
    q: &[f32],
    q_stride: usize,
    n_rows: usize,
    n_kv_first: usize,
    k_cache: &[f16],
    v_cache: &[f16],
    kv_stride: usize,
    kv_off: usize,
    scale: f32,
    scratch: &'s mut TiledScratch,
) -> &'s [f32] {
    attend_rows_tiled_flavor(
        q, q_stride, n_rows, n_kv_first, k_cache, v_cache, kv_stride, kv_off, scale, scratch,
        EXP_FLAVOR,
    )
}

/// [`attend_rows_tiled`] with the `expf` of a given target (tests run every flavor).
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_tiled_flavor<'s>(
    q: &[f32],
    q_stride: usize,
    n_rows: usize,
    n_kv_first: usize,
    k_cache: &[f16],
    v_cache: &[f16],
    kv_stride: usize,
    kv_off: usize,
    scale: f32,
    scratch: &'s mut TiledScratch,
    flavor: ExpFlavor,
) -> &'s [f32] {
    let hd = scratch.head_dim;
    assert!(
        n_rows <= scratch.max_rows,
        "more rows than the scratch holds"
    );
    assert!(
        n_kv_first >= 1 || n_rows == 0,
        "a row must see at least one key"
    );
    let TiledScratch {
        k_t,
        v,
        scores,
        out,
        max,
        sum,
        weighted,
        ..
    } = scratch;
    let out = &mut out[..n_rows * hd];
    out.fill(0.0);
    max[..n_rows].fill(f32::NEG_INFINITY);
    sum[..n_rows].fill(0.0);
    if n_rows == 0 {
        return out;
    }
    // Keys the last row sees; no tile starts past them.
    let n_kv_last = n_kv_first + n_rows - 1;
    for start in (0..n_kv_last).step_by(TILE_KV) {
        let len = TILE_KV.min(n_kv_last - start);
        load_tile(k_cache, v_cache, kv_stride, kv_off, start, len, hd, k_t, v);
        // Rows before this one see no key of the tile.
        let first_row = (start + 1).saturating_sub(n_kv_first);
        let rows = n_rows - first_row;
        tile_scores(
            &q[first_row * q_stride..],
            q_stride,
            rows,
            hd,
            k_t,
            scale,
            &mut scores[..rows * TILE_KV],
        );
        // Softmax of every row first (its keys' weights, in place of the scores), then V
        // two rows at a time: each V load serves both, and every row's own chain of
        // fused steps is unchanged.
        for (r, row_scores) in (first_row..n_rows).zip(scores.chunks_exact_mut(TILE_KV)) {
            let row_scores: &mut [f32; TILE_KV] = row_scores.try_into().expect("tile row");
            let visible = (n_kv_first + r - start).min(TILE_KV);
            row_scores[visible..].fill(f32::NEG_INFINITY);
            weighted[r - first_row] = 0;
            let tile_max = tile_max(row_scores);
            if tile_max == f32::NEG_INFINITY {
                continue;
            }
            let m_old = max[r];
            let m_new = m_old.max(tile_max);
            if m_new > m_old {
                let rescale = (m_old - m_new).exp();
                out[r * hd..(r + 1) * hd]
                    .iter_mut()
                    .for_each(|x| *x *= rescale);
                sum[r] *= rescale;
            }
            max[r] = m_new;
            let total = exp_and_sum(row_scores, m_new, flavor);
            sum[r] = (sum[r] as f64 + total) as f32;
            weighted[r - first_row] = visible;
        }
        let tile_out = &mut out[first_row * hd..n_rows * hd];
        let mut pairs = tile_out
            .chunks_exact_mut(2 * hd)
            .zip(scores.chunks_exact(2 * TILE_KV))
            .zip(weighted.chunks_exact(2));
        for ((o, p), n) in &mut pairs {
            let (o0, o1) = o.split_at_mut(hd);
            let (p0, p1) = p.split_at(TILE_KV);
            accumulate_v_pair([o0, o1], [&p0[..n[0]], &p1[..n[1]]], v, hd);
        }
        if rows % 2 == 1 {
            let r = rows - 1;
            let o = &mut tile_out[r * hd..(r + 1) * hd];
            accumulate_v(o, &scores[r * TILE_KV..][..weighted[r]], v, hd);
        }
    }
    for (o, &s) in out.chunks_exact_mut(hd).zip(sum.iter()) {
        let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
        o.iter_mut().for_each(|x| *x *= inv);
    }
    out
}

/// Widens keys `start .. start + len` of the head to f32: K transposed (`k_t[d][j]`),
/// V as rows (`v[j][d]`). Columns past `len` keep stale values; they are masked.
#[allow(clippy::too_many_arguments)]
fn load_tile(
    k_cache: &[f16],
    v_cache: &[f16],
    kv_stride: usize,
    kv_off: usize,
    start: usize,
    len: usize,
    hd: usize,
    k_t: &mut [f32],
    v: &mut [f32],
) {
    let first = start * kv_stride + kv_off;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    let transposed = super::x86::load_k_transposed_w16(&k_cache[first..], kv_stride, len, hd, k_t);
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    let transposed = super::avx2::load_k_transposed(&k_cache[first..], kv_stride, len, hd, k_t);
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx512f"), x86_simd)))]
    let transposed = false;
    for j in 0..len {
        let row = first + j * kv_stride;
        if !transposed {
            for (d, &k) in k_cache[row..row + hd].iter().enumerate() {
                k_t[d * TILE_KV + j] = k.to_f32();
            }
        }
        super::f16_to_f32(&v_cache[row..row + hd], &mut v[j * hd..(j + 1) * hd]);
    }
}

/// The largest score of a tile, `MAX(a, b)` as ggml writes it (the scores are NaN-free).
#[inline]
fn tile_max(scores: &[f32; TILE_KV]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        super::x86::max_w16(scores)
    }
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    {
        super::avx2::max(scores)
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx512f"), x86_simd)))]
    tile_max_ref(scores)
}

/// The scalar [`tile_max`], in key order.
#[cfg_attr(x86_simd, allow(dead_code))]
pub(super) fn tile_max_ref(scores: &[f32; TILE_KV]) -> f32 {
    scores
        .iter()
        .fold(f32::NEG_INFINITY, |m, &s| if m > s { m } else { s })
}

/// `scores[r][j] = fl(fma-chain_d(q_r[d] * k_t[d][j])) * scale` for `rows` query rows
/// (`q[r * q_stride ..][..hd]`) and the whole tile: one sequential fused chain per
/// (row, key), from 0.
#[inline]
fn tile_scores(
    q: &[f32],
    q_stride: usize,
    rows: usize,
    hd: usize,
    k_t: &[f32],
    scale: f32,
    scores: &mut [f32],
) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        super::x86::tile_scores_w16(q, q_stride, rows, hd, k_t, scale, scores);
    }
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    {
        super::avx2::tile_scores(q, q_stride, rows, hd, k_t, scale, scores);
    }
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx512f"), x86_simd)))]
    tile_scores_ref(q, q_stride, rows, hd, k_t, scale, scores);
}

/// The scalar [`tile_scores`] (vectorised by the compiler across keys).
#[cfg_attr(x86_simd, allow(dead_code))]
pub(super) fn tile_scores_ref(
    q: &[f32],
    q_stride: usize,
    rows: usize,
    hd: usize,
    k_t: &[f32],
    scale: f32,
    scores: &mut [f32],
) {
    for (r, out) in scores.chunks_exact_mut(TILE_KV).take(rows).enumerate() {
        let mut acc = [0f32; TILE_KV];
        for (&qd, k_row) in q[r * q_stride..r * q_stride + hd]
            .iter()
            .zip(k_t.chunks_exact(TILE_KV))
        {
            for (a, &k) in acc.iter_mut().zip(k_row) {
                *a = qd.mul_add(k, *a);
            }
        }
        for (s, a) in out.iter_mut().zip(acc) {
            *s = a * scale;
        }
    }
}

/// `p = v_expf(s - max)` in place over the whole tile, returning the f64 total of the
/// per-block f32 sums (the softmax tree within a block).
#[inline]
fn exp_and_sum(scores: &mut [f32; TILE_KV], max: f32, flavor: ExpFlavor) -> f64 {
    if flavor == ExpFlavor::Libm {
        // ggml's scalar build: libm expf, each value added in f64.
        return scores
            .iter_mut()
            .map(|s| {
                *s = (*s - max).exp();
                *s as f64
            })
            .sum();
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512dq"
    ))]
    if flavor == ExpFlavor::Avx512 {
        return super::x86::exp_and_sum_w16(scores, max);
    }
    #[cfg(x86_simd)]
    if flavor == ExpFlavor::Avx2 {
        return super::avx2::exp_and_sum(scores, max);
    }
    let block = flavor.block();
    let mut total = 0f64;
    for chunk in scores.chunks_exact_mut(block) {
        for s in chunk.iter_mut() {
            *s = expf_flavor(*s - max, flavor);
        }
        total += reduce_lanes_softmax(chunk) as f64;
    }
    total
}

/// `o[d] = fma(p_j, v_j[d], o[d])` for each visible key in order.
#[inline]
fn accumulate_v(o: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    if super::x86::accumulate_v_w16(o, p, v, hd) {
        return;
    }
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    if super::avx2::accumulate_v([&mut *o], [p], v, hd) {
        return;
    }
    accumulate_v_ref(o, p, v, hd);
}

/// [`accumulate_v`] for two rows: the keys both see go through one pass (each V row
/// loaded once for the two), the rest of the longer one alone; each row's steps are the
/// same as through `accumulate_v`.
#[inline]
fn accumulate_v_pair(o: [&mut [f32]; 2], p: [&[f32]; 2], v: &[f32], hd: usize) {
    let [o0, o1] = o;
    let common = p[0].len().min(p[1].len());
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    let done = super::x86::accumulate_v2_w16([o0, o1], [&p[0][..common], &p[1][..common]], v, hd);
    #[cfg(all(x86_simd, not(target_feature = "avx512f")))]
    let done = super::avx2::accumulate_v([o0, o1], [&p[0][..common], &p[1][..common]], v, hd);
    #[cfg(not(any(all(target_arch = "x86_64", target_feature = "avx512f"), x86_simd)))]
    let done = false;
    let start = if done { common } else { 0 };
    for (o, p) in [(o0, p[0]), (o1, p[1])] {
        if p.len() > start {
            accumulate_v(o, &p[start..], &v[start * hd..], hd);
        }
    }
}

/// The scalar [`accumulate_v`].
pub(super) fn accumulate_v_ref(o: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
    for (&pj, v_row) in p.iter().zip(v.chunks_exact(hd)) {
        for (x, &vd) in o.iter_mut().zip(v_row) {
            *x = pj.mul_add(vd, *x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-amp, amp).
    fn values(n: usize, seed: u32, amp: f32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(2_246_822_519);
                ((h >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    #[test]
    fn tile_kernels_match_their_scalar_references_bitwise() {
        for hd in [16usize, 48, 64, 80, 128, 256] {
            let k_t = values(hd * TILE_KV, 1, 1.0);
            for rows in [1usize, 3, 4, 9] {
                let q_stride = hd + 5;
                let q = values(rows * q_stride, 2, 3.0);
                let mut got = vec![0f32; rows * TILE_KV];
                let mut want = got.clone();
                tile_scores(&q, q_stride, rows, hd, &k_t, 0.125, &mut got);
                tile_scores_ref(&q, q_stride, rows, hd, &k_t, 0.125, &mut want);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "scores hd {hd} rows {rows}"
                );
            }
            let v = values(TILE_KV * hd, 3, 1.0);
            for visible in [1usize, 17, 64] {
                let p = values(visible, 4, 1.0);
                let mut got = values(hd, 5, 2.0);
                let mut want = got.clone();
                accumulate_v(&mut got, &p, &v, hd);
                accumulate_v_ref(&mut want, &p, &v, hd);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "V hd {hd} visible {visible}"
                );
            }
        }
    }

    /// Two rows' V accumulation in one pass is each row's own, bit for bit, for equal
    /// and unequal key counts (including none) and head sizes with and without a
    /// vector kernel.
    #[test]
    fn accumulate_v_pair_is_two_rows() {
        for hd in [16usize, 64, 80, 128, 200] {
            let v = values(TILE_KV * hd, 3, 1.0);
            for (n0, n1) in [
                (64usize, 64usize),
                (17, 40),
                (40, 17),
                (0, 9),
                (5, 0),
                (1, 1),
            ] {
                let (p0, p1) = (values(n0, 4, 1.0), values(n1, 6, 1.0));
                let (mut a0, mut a1) = (values(hd, 5, 2.0), values(hd, 7, 2.0));
                let (mut b0, mut b1) = (a0.clone(), a1.clone());
                accumulate_v_pair([&mut a0, &mut a1], [&p0, &p1], &v, hd);
                accumulate_v_ref(&mut b0, &p0, &v, hd);
                accumulate_v_ref(&mut b1, &p1, &v, hd);
                assert_eq!(
                    (bits(&a0), bits(&a1)),
                    (bits(&b0), bits(&b1)),
                    "hd {hd} keys {n0}/{n1}"
                );
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The vector K transpose gives the scalar widening of every visible key, for tile
    /// lengths that do and do not fill 16-key blocks; the vector max is the scalar one.
    #[test]
    fn load_tile_and_max_match_scalar() {
        for hd in [64usize, 80, 128] {
            let kv_stride = 3 * hd + 8;
            let n_keys = 70;
            let cache: Vec<f16> = values(n_keys * kv_stride, 7, 4.0)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            for (start, len) in [(0usize, 64usize), (3, 17), (64, 6), (5, 1)] {
                let kv_off = hd + 3;
                let (mut k_t, mut v) = (vec![f32::NAN; hd * TILE_KV], vec![0f32; TILE_KV * hd]);
                load_tile(
                    &cache, &cache, kv_stride, kv_off, start, len, hd, &mut k_t, &mut v,
                );
                for j in 0..len {
                    for d in 0..hd {
                        let want = cache[(start + j) * kv_stride + kv_off + d].to_f32();
                        assert_eq!(k_t[d * TILE_KV + j].to_bits(), want.to_bits(), "k hd {hd}");
                        assert_eq!(v[j * hd + d].to_bits(), want.to_bits(), "v hd {hd}");
                    }
                }
            }
        }
        let mut tile: [f32; TILE_KV] = values(TILE_KV, 9, 30.0).try_into().unwrap();
        assert_eq!(tile_max(&tile), tile_max_ref(&tile));
        tile[40] = 31.0;
        tile[..20].fill(f32::NEG_INFINITY);
        assert_eq!(tile_max(&tile), 31.0);
        assert_eq!(tile_max(&[f32::NEG_INFINITY; TILE_KV]), f32::NEG_INFINITY);
    }

    #[test]
    fn vector_exp_matches_scalar_flavor_bitwise() {
        // Ordinary values, both saturation ends, the masked -inf, and the |n| > 126 band.
        let mut tile = [0f32; TILE_KV];
        for (i, s) in tile.iter_mut().enumerate() {
            *s = match i % 8 {
                0 => f32::NEG_INFINITY,
                1 => -100.0 - i as f32,
                2 => -89.5,
                3 => 50.0,
                _ => (i as f32 * 0.37).sin() * 20.0,
            };
        }
        for max in [0.0f32, 12.5, -3.0] {
            for flavor in [ExpFlavor::Avx512, ExpFlavor::Avx2, ExpFlavor::Libm] {
                let mut got = tile;
                let total = exp_and_sum(&mut got, max, flavor);
                let want: Vec<f32> = tile
                    .iter()
                    .map(|&s| match flavor {
                        ExpFlavor::Libm => (s - max).exp(),
                        _ => expf_flavor(s - max, flavor),
                    })
                    .collect();
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.to_bits(), w.to_bits(), "{flavor:?} max {max}");
                }
                let sum: f64 = want.iter().map(|&w| w as f64).sum();
                assert!((total - sum).abs() <= 1e-6 * sum.abs(), "{flavor:?}");
            }
        }
    }
}
