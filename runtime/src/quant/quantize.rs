//! What the model-file quantizers of the formats share: ggml's rounding and f16
//! conversion, and its searches for the scale (and minimum) of a group of weights that
//! minimise a weighted error.
//!
//! [`super::Quantize`] must write the bytes `llama-quantize` writes, so every function
//! here does ggml's float operations in ggml's order, in f32: `w * x * l` is
//! `(w * x) * l`, integers become f32 where ggml converts them, and nothing is fused.
//! (ggml-base, where the quantizers live, is built for the x86-64 baseline, which has no
//! FMA instruction for gcc to contract into.) Comparisons are written as ggml writes
//! them (`a > b`, never `f32::max`), so that NaNs and signed zeros take ggml's branches.
//!
//! The searches return the quants through `out` slices the caller owns, so quantizing a
//! row allocates nothing.
//!
//! One thing cannot be matched: where an operation meets two NaNs with different
//! payloads, x86 returns one of them by operand position, and C and Rust compilers
//! order commutative operands as they like. Weights with NaNs of one bit pattern give
//! ggml's bytes; mixed NaNs (or NaNs beside infinities, whose products make the default
//! NaN) may not. llama-quantize rejects what such rows quantize to whenever a scale
//! comes out NaN or infinite.

use crate::float16::f16;

/// Below this largest magnitude a group counts as all zero and gets scale 0.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// f32 to f16 as ggml's quantizers store their scales: to nearest even, overflowing to
/// infinity. ggml-base converts in software (it is built without F16C); that gives the
/// F16C result for every f32 but NaN, which becomes the quiet NaN `sign | 0x7e00` where
/// F16C would keep the top payload bits.
#[inline]
pub(crate) fn ggml_f16(x: f32) -> f16 {
    if x.is_nan() {
        let sign = (x.to_bits() >> 16) as u16 & 0x8000;
        f16::from_bits(sign | 0x7e00)
    } else {
        f16::from_f32(x)
    }
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2^22`. Adding
/// `1.5 * 2^23` puts the rounded integer in the low 22 bits of the sum's mantissa
/// (offset by `2^22`); the current rounding mode (to nearest even) does the rounding.
/// Outside that range the result is whatever the bits say (NaN gives 0), as in ggml.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let biased = x + 12_582_912.0;
    (biased.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C's conversion of a float to an integer type as x86-64 executes it (`cvttss2si`,
/// `cvttps2dq`): toward zero, and `i32::MIN` (the "integer indefinite") for NaN and for
/// values out of the i32 range, where Rust's `as` saturates. A store into an 8-bit
/// type then keeps the low byte, which the caller's `as i8` / `as u8` does.
#[inline(always)]
pub(crate) fn c_float_to_int(x: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        x as i32
    } else {
        i32::MIN
    }
}

/// The value of largest magnitude in `x` (the first one on ties), or 0 when every value
/// is zero. (It keeps its sign: the scale search maps it to the most negative quant.)
#[inline(always)]
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    max
}

/// Symmetric quants for `x` and the scale that goes with them: `l` in `-nmax..nmax`,
/// stored as `l + nmax` in `out`, chosen to minimise `Σ w (x - scale l)²` with
/// `w = weights[i]`, or `x²` without weights. (ggml's `make_qx_quants` with its
/// `rmse_type` 1, the only kind its model-file quantizers use.)
///
/// The first candidate maps the value of largest magnitude, `max`, to `-nmax`:
/// `l = round(-nmax x / max)`, and for given quants the best scale is
/// `Σ w x l / Σ w l²`. Then 18 more candidates `-(nmax + k / 10) / max`, `k = ±1..=±9`,
/// are tried in order of `k`; one whose `(Σ w x l)² / Σ w l²` is larger than the best
/// so far (so whose error is smaller) takes over. A group whose largest magnitude is
/// below [`GROUP_MAX_EPS`] gets quants 0 (not `nmax`) and scale 0.
pub(crate) fn make_qx_quants(x: &[f32], nmax: i32, out: &mut [i8], weights: Option<&[f32]>) -> f32 {
    debug_assert_eq!(x.len(), out.len());
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let weight = |i: usize| match weights {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Σ w x l and Σ w l² of the quants an inverse scale gives.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let l = quant(iscale, v) as f32;
            let w = weight(i);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };

    let iscale = -(nmax as f32) / max;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (quant(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for k in (-9..=9).filter(|&k| k != 0) {
        let iscale = -(nmax as f32 + 0.1 * k as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric quants in `-nmax..nmax` (stored `+ nmax`) and their scale, for weights
/// `x²`, refined one quant at a time. (ggml's `make_q3_quants` as Q3_K uses it, with
/// `do_rmse`.)
///
/// Starts from the quants of the scale that maps the largest magnitude to `-nmax`.
/// Then up to 5 passes over the group: for each `i`, the sums without it give the best
/// scale of the others, and `round(x_i / that scale)` is tried in its place; it is kept
/// when it raises `(Σ w x l)² / Σ w l²`. A pass that changes nothing ends the search.
/// Returns `Σ w x l / Σ w l²` of the final quants.
pub(crate) fn make_q3_quants(x: &[f32], nmax: i32, out: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), out.len());
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (o, &v) in out.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *o = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (o, &v) in out.iter_mut().zip(x) {
            let w = v * v;
            let old = *o as f32;
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new != *o as i32 {
                    slx += w * v * new as f32;
                    sl2 += w * new as f32 * new as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for o in out.iter_mut() {
        *o += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The parameters of a [`make_qkx_quants`] search.
pub(crate) struct MinSearch {
    /// Largest quant: quants are `0..=nmax`.
    pub nmax: i32,
    /// Candidate inverse scales are `(rmin + rdelta k + nmax) / (max - min)`,
    /// `k = 0..=nstep`.
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Minimise the weighted absolute error instead of the squared one.
    pub use_mad: bool,
}

/// Asymmetric quants `l` in `0..=nmax` (in `out`) with a scale and a minimum,
/// `x ≈ scale l + min`, minimising `Σ w |scale l + min - x|` (or its square). Returns
/// `(scale, -min)`; `min <= 0` always. (ggml's `make_qkx2_quants` and
/// `make_qkx3_quants`, which give the same results for the weights both are called
/// with; `x.len() <= 32`.)
///
/// The first candidate spreads `[min(x, 0), max(x)]` over `0..=nmax`. Each further
/// candidate inverse scale rounds `x` to quants, then solves the weighted least-squares
/// line through them for scale and minimum (keeping the minimum at or below 0, else
/// refitting the scale alone); it takes over when its error is smaller than the best so
/// far. A constant group gets quants 0, scale 0 and its minimum.
pub(crate) fn make_qkx_quants(
    x: &[f32],
    weights: &[f32],
    search: &MinSearch,
    out: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    debug_assert!(n <= 32 && weights.len() == n && out.len() == n);
    let MinSearch {
        nmax,
        rmin,
        rdelta,
        nstep,
        use_mad,
    } = *search;
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        out.fill(0);
        return (0.0, -min);
    }
    let quant = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    // Σ w err of quants `l` under scale and minimum.
    let error = |l: &[u8], scale: f32, min: f32| {
        let mut err = 0f32;
        for ((&q, &v), &w) in l.iter().zip(x).zip(weights) {
            let diff = scale * q as f32 + min - v;
            err += w * if use_mad { diff.abs() } else { diff * diff };
        }
        err
    };

    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quant(iscale, v, min) as u8;
    }
    let mut best_error = error(out, scale, min);

    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for k in 0..=nstep {
        let iscale = (rmin + rdelta * k as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((a, &v), &w) in aux.iter_mut().zip(x).zip(weights) {
            let l = quant(iscale, v, min);
            *a = l as u8;
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let err = error(aux, this_scale, this_min);
            if err < best_error {
                out.copy_from_slice(aux);
                best_error = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Quants in `0..=nmax` for non-negative values `x` (the sub-block scales or minimums
/// of a K-quant block) and their scale, minimising `Σ w (x - scale l)²`. (ggml's
/// `make_qp_quants`.)
///
/// Tries the inverse scales `(nmax + k / 10) / max`, `k = 0, ±1..=±4`, keeping the one
/// of least error; then up to 5 passes that re-round one quant at a time against the
/// best scale of the others, as [`make_q3_quants`] does. The quants are stored as u8
/// (ggml's `uint8_t`): a negative quant, possible when the search wanders, wraps, and
/// the passes then read it back wrapped, as ggml does.
pub(crate) fn make_qp_quants(x: &[f32], nmax: i32, out: &mut [u8], weights: &[f32]) -> f32 {
    debug_assert!(x.len() == out.len() && x.len() == weights.len());
    let mut max = 0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for ((&q, &v), &w) in out.iter().zip(x).zip(weights) {
        let diff = v - scale * q as f32;
        best_mse += w * diff * diff;
    }
    for k in (-4..=4).filter(|&k| k != 0) {
        let iscale_k = (0.1 * k as f32 + nmax as f32) / max;
        let scale_k = 1.0 / iscale_k;
        let mut mse = 0f32;
        for (&v, &w) in x.iter().zip(weights) {
            let l = nearest_int(iscale_k * v).min(nmax);
            let diff = v - scale_k * l as f32;
            mse += w * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_k;
        }
    }
    // The sums take the quants as integers; the stored bytes may have wrapped.
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weights) {
        let l = nearest_int(iscale * v).min(nmax);
        *o = l as u8;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(weights) {
            let old = *o as f32;
            let mut slx = sumlx - w * v * old;
            let mut sl2 = suml2 - w * old * old;
            if slx > 0.0 && sl2 > 0.0 {
                let new = nearest_int(v * sl2 / slx).min(nmax);
                if new != *o as i32 {
                    slx += w * v * new as f32;
                    sl2 += w * new as f32 * new as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The index of the entry of the ascending table `values` nearest to `x` (the upper one
/// on a tie), by bisection. (ggml's `best_index_int8`.)
#[inline]
pub(crate) fn best_index_int8(values: &[i8; 16], x: f32) -> usize {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0, 15);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < values[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (values[hi - 1] as f32) < values[hi] as f32 - x {
        hi - 1
    } else {
        hi
    }
}

/// `Σ x² / n` over a whole row, ggml's `sigma2` for the legacy formats' importance
/// weights `imatrix[i] * sqrt(sigma2 + x_i²)`.
pub(crate) fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// The weights of a group under an importance matrix, `imatrix[i] * sqrt(sigma2 + x_i²)`,
/// into `out`; returns their sum, added in order (the K-quants' sub-block weight).
#[inline]
pub(crate) fn importance_weights(x: &[f32], imatrix: &[f32], sigma2: f32, out: &mut [f32]) -> f32 {
    let mut sum = 0f32;
    for ((o, &v), &q) in out.iter_mut().zip(x).zip(imatrix) {
        *o = q * (sigma2 + v * v).sqrt();
        sum += *o;
    }
    sum
}

/// Quantizes a row of a legacy format (32-value blocks) block by block: without an
/// importance matrix each block on its own (`plain`); with one, from the block's values
/// and their [`importance_weights`] under the whole row's [`row_sigma2`] (`weighted`).
pub(crate) fn quantize_legacy_row<B, const N: usize>(
    x: &[f32],
    imatrix: Option<&[f32]>,
    out: &mut [B],
    plain: impl Fn(&[f32]) -> B,
    weighted: impl Fn(&[f32], &[f32; N]) -> B,
) {
    let Some(imatrix) = imatrix else {
        for (b, xb) in out.iter_mut().zip(x.chunks_exact(N)) {
            *b = plain(xb);
        }
        return;
    };
    let sigma2 = row_sigma2(x);
    let mut weights = [0f32; N];
    for ((b, xb), qw) in out
        .iter_mut()
        .zip(x.chunks_exact(N))
        .zip(imatrix.chunks_exact(N))
    {
        importance_weights(xb, qw, sigma2, &mut weights);
        *b = weighted(xb, &weights);
    }
}

// ---- Lattice searches of the IQ2 formats (ggml's `iq2xs_init_impl` tables) ----------

/// A lattice of points of 8 coordinates, each at one of the levels 0, 1, 2, with what
/// ggml's IQ2 quantizers look up while they search: for any point of the cube
/// `{0, 1, 2}^8`, its index in the lattice, or, off the lattice, the lattice points
/// nearest to it. (ggml's `iq2xs_init_impl`: built once, here from the dequantization
/// grid, which lists the points in ggml's order.)
///
/// A point `p` is near the cube point `c` when `Σ (p_i - c_i)²` is one of the `nwant`
/// smallest distinct distances from `c` to the lattice; the near points are listed by
/// distance, then by index (ggml sorts with that order, which has no ties).
pub(crate) struct Lattice {
    /// Each point's coordinates as the searches weigh them: `2 level + 1`.
    odd: Vec<[f32; 8]>,
    /// Per cube point, by [`cube_code`]: the lattice index, or [`NEAR`] and the start of
    /// the point's run in `near`.
    slots: Vec<u32>,
    /// Runs of lattice indices, each its length and then the indices.
    near: Vec<u16>,
}

/// Set in a [`Lattice`] slot of a cube point that is not on the lattice.
const NEAR: u32 = 1 << 31;

/// Points of the cube `{0, 1, 2}^8`.
const CUBE: usize = 6561;

/// A cube point's slot: `Σ l_i 3^i`.
#[inline(always)]
fn cube_code(levels: &[i8]) -> usize {
    levels[..8]
        .iter()
        .rev()
        .fold(0, |code, &l| 3 * code + l as usize)
}

/// What a [`Lattice`] knows of a cube point.
pub(crate) enum Nearest<'a> {
    /// It is lattice point `.0`.
    On(u16),
    /// It is off the lattice; these are the lattice points nearest to it.
    Near(&'a [u16]),
}

impl Lattice {
    /// The lattice of an IQ2 dequantization grid (magnitudes 8, 25, 43 for the levels
    /// 0, 1, 2), with the near points of `nwant` distances.
    pub(crate) fn from_iq2_grid(grid: &[u64], nwant: usize) -> Lattice {
        let points: Vec<[u8; 8]> = grid
            .iter()
            .map(|p| {
                p.to_le_bytes().map(|b| match b {
                    8 => 0,
                    25 => 1,
                    43 => 2,
                    _ => panic!("IQ2 grid magnitude {b}"),
                })
            })
            .collect();
        Lattice::new(&points, nwant)
    }

    fn new(points: &[[u8; 8]], nwant: usize) -> Lattice {
        assert!(points.len() <= u16::MAX as usize && nwant > 0);
        let mut slots = vec![NEAR; CUBE];
        for (j, p) in points.iter().enumerate() {
            slots[cube_code(&p.map(|l| l as i8))] = j as u32;
        }
        // A point as two masks of its coordinates, those at level 1 or more and those at
        // 2: where two points' levels differ by 1 one mask differs, by 2 both do, so
        // their squared distance is `|x1| + |x2| + 2 |x1 & x2|`, `x1`, `x2` the masks'
        // differences and `|.|` the number of bits set.
        let masks = |levels: &[u8; 8]| {
            levels
                .iter()
                .enumerate()
                .fold((0u8, 0u8), |(m1, m2), (i, &l)| {
                    (m1 | u8::from(l >= 1) << i, m2 | u8::from(l >= 2) << i)
                })
        };
        let lattice_masks: Vec<(u8, u8)> = points.iter().map(masks).collect();
        let mut near = Vec::new();
        // `dist[j]`: point j's squared distance, at most 8 * 2².
        let mut dist = vec![0u8; points.len()];
        for (code, slot) in slots.iter_mut().enumerate() {
            if *slot != NEAR {
                continue;
            }
            let mut c = [0u8; 8];
            let mut rest = code;
            for l in &mut c {
                *l = (rest % 3) as u8;
                rest /= 3;
            }
            let (c1, c2) = masks(&c);
            let mut present = [false; 33];
            for (d, &(p1, p2)) in dist.iter_mut().zip(&lattice_masks) {
                let (x1, x2) = (p1 ^ c1, p2 ^ c2);
                *d = (x1.count_ones() + x2.count_ones() + 2 * (x1 & x2).count_ones()) as u8;
                present[*d as usize] = true;
            }
            *slot = NEAR | near.len() as u32;
            let len_at = near.len();
            near.push(0);
            for d in (0..=32u8).filter(|&d| present[d as usize]).take(nwant) {
                near.extend((0..points.len() as u16).filter(|&j| dist[j as usize] == d));
            }
            near[len_at] = (near.len() - len_at - 1) as u16;
        }
        let odd = points
            .iter()
            .map(|p| p.map(|l| (2 * l + 1) as f32))
            .collect();
        Lattice { odd, slots, near }
    }

    /// The lattice index of the cube point `levels` (8 levels in `0..=2`), or its
    /// nearest lattice points.
    #[inline(always)]
    pub(crate) fn find(&self, levels: &[i8]) -> Nearest<'_> {
        let slot = self.slots[cube_code(levels)];
        if slot & NEAR == 0 {
            Nearest::On(slot as u16)
        } else {
            let start = (slot & !NEAR) as usize;
            let len = self.near[start] as usize;
            Nearest::Near(&self.near[start + 1..start + 1 + len])
        }
    }

    /// The lattice index of `levels`, which the search left on the lattice. ggml aborts
    /// where it is not (only a NaN scale gets there).
    pub(crate) fn index_of(&self, levels: &[i8]) -> u16 {
        let on = levels[..8].iter().all(|l| (0..=2).contains(l));
        match on.then(|| self.find(levels)) {
            Some(Nearest::On(j)) => j,
            _ => panic!(
                "IQ2 quantize: levels {:?} are not on the grid",
                &levels[..8]
            ),
        }
    }

    /// Of the points `near`, the one nearest to `x / scale` under the weights `w`:
    /// least `Σ w (scale p_i - x_i)²` (`p_i` = `2 level + 1`), the first on ties. Writes
    /// its levels into `levels` and returns its index. (ggml's `iq2_find_best_neighbour`,
    /// which aborts where no distance is below `f32::MAX`, as for NaN weights.)
    #[inline]
    pub(crate) fn best_neighbour(
        &self,
        near: &[u16],
        x: &[f32],
        w: &[f32],
        scale: f32,
        levels: &mut [i8],
    ) -> u16 {
        let mut best_d2 = f32::MAX;
        let mut best = None;
        for &j in near {
            let p = &self.odd[j as usize];
            let mut d2 = 0f32;
            for i in 0..8 {
                let diff = scale * p[i] - x[i];
                d2 += w[i] * diff * diff;
            }
            if d2 < best_d2 {
                best_d2 = d2;
                best = Some(j);
            }
        }
        let j = best.expect("IQ2 quantize: no grid point at a finite distance (NaN weights?)");
        for (l, &p) in levels[..8].iter_mut().zip(&self.odd[j as usize]) {
            *l = ((p as i32 - 1) / 2) as i8;
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.49, -2),
            (3.51, 4),
            (-0.0, 0),
            (4_194_303.0, 4_194_303),
            (-4_194_303.0, -4_194_303),
        ];
        for (x, want) in cases {
            assert_eq!(nearest_int(x), want, "nearest_int({x})");
        }
        assert_eq!(nearest_int(f32::NAN), 0);
    }

    #[test]
    fn float_to_int_like_x86() {
        assert_eq!(c_float_to_int(-7.9), -7);
        assert_eq!(c_float_to_int(15.99), 15);
        assert_eq!(c_float_to_int(f32::NAN), i32::MIN);
        assert_eq!(c_float_to_int(f32::INFINITY), i32::MIN);
        assert_eq!(c_float_to_int(3e9), i32::MIN);
        assert_eq!(c_float_to_int(-2_147_483_648.0), i32::MIN);
        assert_eq!(c_float_to_int(2_147_483_520.0), 2_147_483_520);
    }

    #[test]
    fn nan_scales_become_ggml_canonical_nan() {
        let quiet_payload = f32::from_bits(0x7fc0_1234);
        assert_eq!(ggml_f16(quiet_payload).to_bits(), 0x7e00);
        assert_eq!(ggml_f16(-quiet_payload).to_bits(), 0xfe00);
        assert_eq!(ggml_f16(-0.0).to_bits(), 0x8000);
        assert_eq!(ggml_f16(65520.0).to_bits(), 0x7c00);
    }

    #[test]
    fn best_index_takes_the_nearest_level() {
        let v = &crate::quant::iq_grids::KVALUES_IQ4NL;
        for (i, &level) in v.iter().enumerate() {
            assert_eq!(best_index_int8(v, level as f32), i);
        }
        assert_eq!(best_index_int8(v, -200.0), 0);
        assert_eq!(best_index_int8(v, 200.0), 15);
        // halfway between -10 and 1: the upper one
        assert_eq!(best_index_int8(v, -4.5), 8);
        assert_eq!(best_index_int8(v, -4.6), 7);
    }
}
