//! Lattice lookups for the IQ3 and IQ1 model-file quantizers: is a vector of quant
//! levels a point of the format's grid, and if not, which grid points are nearest to
//! it. ggml builds the same tables once per grid at `ggml_quantize_init`
//! (`iq3xs_init_impl` for the 3-bit grids, `iq2xs_init_impl` for IQ1_S / IQ1_M's).
//!
//! A grid here is a list of points of `N` coordinates, each coordinate a level
//! `0..levels` (the format's value of level `l` is up to the format: `2l + 1` for IQ3,
//! `l - 1` plus a shift for IQ1). A vector of levels is named by its key
//! `Σ l_k << (bits k)`. For every key whose levels are all below `levels` and that is no
//! grid point, [`GridSearch`] keeps its neighbour list: the grid points at the
//! `n_distances` smallest squared Euclidean distances from it, ordered by distance and
//! then by grid index. That order matters: the quantizers take the first of equally good
//! neighbours, as ggml does.
//!
//! ggml sorts every grid point by distance for every key in its whole key space (keys
//! with an unused level too) and keeps a prefix; here distances are small integers, so a
//! counting sort over the keys the quantizers can ask for gives the same lists in a
//! fraction of the time (IQ1's 2048-point grid: 4513 keys instead of 41644).

use std::cmp::Ordering;
use std::ops::Range;
use std::sync::OnceLock;

use super::iq_grids::{IQ1S_GRID, IQ3S_GRID, IQ3XXS_GRID};
use super::quantize::nearest_int;

/// What a key is in a grid: a point, or the point's nearest grid points.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lookup<'a> {
    /// The key is grid point `index`.
    Point(usize),
    /// The key is off the grid; these grid points are nearest (never empty).
    Near(&'a [u16]),
}

/// Where a key's answer is: `len == 0` means grid point `at`, else
/// `neighbours[at..at + len]`.
#[derive(Clone, Copy, Debug)]
struct Slot {
    at: u32,
    len: u32,
}

/// A grid of `N`-coordinate points and its key lookup (see the module doc).
#[derive(Debug)]
pub(crate) struct GridSearch<const N: usize> {
    /// Bits per coordinate in a key.
    bits: u32,
    /// Levels of each grid point.
    points: Vec<[u8; N]>,
    /// Per key (up to the largest key of levels below `levels`).
    slots: Vec<Slot>,
    /// The neighbour lists, one after another.
    neighbours: Vec<u16>,
}

impl<const N: usize> GridSearch<N> {
    /// The lookup for grid `points` (levels per coordinate, each below `levels`, no two
    /// points equal), keys of `bits` bits per coordinate, and neighbour lists that reach
    /// to the `n_distances`-th smallest distance. (ggml's `nwant`: 2 for IQ3_XXS, 3 for
    /// IQ3_S, IQ1_S and IQ1_M.)
    pub(crate) fn new(points: Vec<[u8; N]>, bits: u32, levels: u8, n_distances: usize) -> Self {
        assert!(levels >= 1 && u32::from(levels) <= 1 << bits && n_distances >= 1);
        assert!(points.len() <= 1 << 16, "grid indices must fit u16");
        let key = |l: &[u8; N]| {
            l.iter()
                .enumerate()
                .fold(0usize, |k, (i, &v)| k | (v as usize) << (bits as usize * i))
        };
        let n_keys = key(&[levels - 1; N]) + 1;
        // Keys with a level at or above `levels` stay as this: never asked for.
        let unused = Slot {
            at: u32::MAX,
            len: u32::MAX,
        };
        let mut slots = vec![unused; n_keys];
        for (i, p) in points.iter().enumerate() {
            assert!(
                p.iter().all(|&l| l < levels),
                "grid point {i} has a level >= {levels}"
            );
            let s = &mut slots[key(p)];
            assert!(s.len == u32::MAX, "grid point {i} is a duplicate");
            *s = Slot {
                at: i as u32,
                len: 0,
            };
        }

        let max_d2 = N * (levels as usize - 1) * (levels as usize - 1);
        let mut dist = vec![0u16; points.len()];
        let mut count = vec![0u32; max_d2 + 1];
        let mut neighbours = Vec::new();
        let mut here = [0u8; N];
        for (k, slot) in slots.iter_mut().enumerate() {
            for (c, l) in here.iter_mut().enumerate() {
                *l = ((k >> (bits as usize * c)) & ((1 << bits) - 1)) as u8;
            }
            if here.iter().any(|&l| l >= levels) || slot.len == 0 {
                continue;
            }
            count.fill(0);
            for (d, p) in dist.iter_mut().zip(&points) {
                let d2: u32 = p
                    .iter()
                    .zip(&here)
                    .map(|(&a, &b)| (a as i32 - b as i32).pow(2) as u32)
                    .sum();
                *d = d2 as u16;
                count[d2 as usize] += 1;
            }
            // The n_distances-th smallest distance present (or the largest there is).
            let mut limit = 0;
            let mut seen = 0;
            for (d2, &c) in count.iter().enumerate() {
                if c > 0 {
                    limit = d2;
                    seen += 1;
                    if seen == n_distances {
                        break;
                    }
                }
            }
            // Counting sort of the points within the limit: by distance, then index.
            let start = neighbours.len();
            let mut next = vec![0usize; limit + 1];
            let mut at = start;
            for (n, &c) in next.iter_mut().zip(&count) {
                *n = at;
                at += c as usize;
            }
            neighbours.resize(at, 0);
            for (j, &d) in dist.iter().enumerate() {
                if let Some(n) = next.get_mut(d as usize) {
                    neighbours[*n] = j as u16;
                    *n += 1;
                }
            }
            *slot = Slot {
                at: start as u32,
                len: (at - start) as u32,
            };
        }
        GridSearch {
            bits,
            points,
            slots,
            neighbours,
        }
    }

    /// The key of a vector of levels.
    #[inline(always)]
    pub(crate) fn key(&self, levels: &[u8; N]) -> usize {
        let mut k = 0;
        for (i, &l) in levels.iter().enumerate() {
            k |= (l as usize) << (self.bits as usize * i);
        }
        k
    }

    /// What `key` is. Panics for a key with a level at or above the grid's `levels`.
    #[inline(always)]
    pub(crate) fn lookup(&self, key: usize) -> Lookup<'_> {
        let Slot { at, len } = self.slots[key];
        match len {
            0 => Lookup::Point(at as usize),
            u32::MAX => panic!("grid key {key:#x} has a level the grid does not use"),
            _ => {
                let r: Range<usize> = at as usize..(at + len) as usize;
                Lookup::Near(&self.neighbours[r])
            }
        }
    }

    /// The levels of grid point `index`.
    #[inline(always)]
    pub(crate) fn point(&self, index: usize) -> &[u8; N] {
        &self.points[index]
    }

    /// Number of grid points.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }
}

/// The levels of each entry of a runtime grid table, whose byte `j` is coordinate `j`'s
/// value: `levels[b]` is the level of byte value `b` (`None`: not a value of the grid).
pub(crate) fn grid_levels<const N: usize>(
    entries: impl Iterator<Item = [u8; N]>,
    level_of: impl Fn(u8) -> Option<u8>,
) -> Vec<[u8; N]> {
    entries
        .map(|bytes| bytes.map(|b| level_of(b).unwrap_or_else(|| panic!("grid byte {b:#04x}"))))
        .collect()
}

/// The IQ1 grid point for 8 weights `x` whose levels `levels` (`0..3`) are no grid point:
/// of the key's neighbours, the one of least `Σ w (scale v_l - x)²`, where
/// `v = values[l]` are the shifted grid values (the first on ties). ggml's
/// `iq1_find_best_neighbour2`. Panics where no neighbour has an error below `f32::MAX`
/// (NaN or infinite weights or scale): ggml then searches the whole grid reading past
/// the 8 weights, and aborts unless that memory happens to help.
pub(crate) fn iq1_grid_index(
    grid: &GridSearch<8>,
    levels: &[u8; 8],
    x: &[f32],
    weight: &[f32],
    scale: f32,
    values: &[f32; 3],
) -> (usize, bool) {
    let near = match grid.lookup(grid.key(levels)) {
        Lookup::Point(j) => return (j, true),
        Lookup::Near(near) => near,
    };
    let mut best_d2 = f32::MAX;
    let mut best = None;
    for &j in near {
        let p = grid.point(j as usize);
        let mut d2 = 0f32;
        for i in 0..8 {
            let diff = scale * values[p[i] as usize] - x[i];
            d2 += weight[i] * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            best = Some(j as usize);
        }
    }
    let j = best.unwrap_or_else(|| {
        panic!("IQ1 quantizer: no grid point at a finite error (NaN or infinite weights); ggml aborts or reads out of bounds here")
    });
    (j, false)
}

/// Sorts `(value, position)` pairs by value into ascending order as glibc's `qsort`
/// (2.36, for arrays under 1 KiB) sorts them for ggml's `iq1_sort_helper`: top-down
/// merge sort, the left half `n / 2` long, taking the left element unless it compares
/// greater. On equal values that is a stable sort; on NaNs (which compare neither less
/// nor greater than anything) it is glibc's exact order. `scratch` must be as long.
pub(crate) fn glibc_merge_sort(pairs: &mut [(f32, u8)], scratch: &mut [(f32, u8)]) {
    let n = pairs.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    glibc_merge_sort(&mut pairs[..n1], &mut scratch[..n1]);
    glibc_merge_sort(&mut pairs[n1..], &mut scratch[n1..]);
    let (mut i, mut j) = (0, n1);
    for out in scratch[..n].iter_mut() {
        // ggml's comparator: NaNs compare equal, so the left one goes first
        let take_left =
            j == n || (i < n1 && pairs[i].0.partial_cmp(&pairs[j].0) != Some(Ordering::Greater));
        if take_left {
            *out = pairs[i];
            i += 1;
        } else {
            *out = pairs[j];
            j += 1;
        }
    }
    pairs.copy_from_slice(&scratch[..n]);
}

/// IQ3_XXS's grid (256 points of 4 levels `0..8`, value `2l + 1` in ggml's search; the
/// runtime table stores magnitudes {4, 12, ..., 52, 62}), neighbours to 2 distances.
pub(crate) fn iq3xxs_grid() -> &'static GridSearch<4> {
    static GRID: OnceLock<GridSearch<4>> = OnceLock::new();
    GRID.get_or_init(|| {
        const VALUES: [u8; 8] = [4, 12, 20, 28, 36, 44, 52, 62];
        let points = grid_levels(IQ3XXS_GRID.iter().map(|g| g.to_le_bytes()), |b| {
            VALUES.iter().position(|&v| v == b).map(|l| l as u8)
        });
        GridSearch::new(points, 3, 8, 2)
    })
}

/// IQ3_S's grid (512 points of 4 levels `0..8`, stored as `2l + 1`), neighbours to 3
/// distances.
pub(crate) fn iq3s_grid() -> &'static GridSearch<4> {
    static GRID: OnceLock<GridSearch<4>> = OnceLock::new();
    GRID.get_or_init(|| {
        let points = grid_levels(IQ3S_GRID.iter().map(|g| g.to_le_bytes()), |b| {
            (b % 2 == 1 && b < 16).then_some(b / 2)
        });
        GridSearch::new(points, 3, 8, 3)
    })
}

/// IQ1_S and IQ1_M's grid (2048 points of 8 levels `0..3`, stored as `l - 1`),
/// neighbours to 3 distances.
pub(crate) fn iq1s_grid() -> &'static GridSearch<8> {
    static GRID: OnceLock<GridSearch<8>> = OnceLock::new();
    GRID.get_or_init(|| {
        let points = grid_levels(IQ1S_GRID.iter().map(|g| g.to_le_bytes()), |b| {
            match b as i8 {
                -1..=1 => Some((b as i8 + 1) as u8),
                _ => None,
            }
        });
        GridSearch::new(points, 2, 3, 3)
    })
}

/// How an IQ3 format searches a sub-block's scale (what IQ3_XXS and IQ3_S do
/// differently).
pub(crate) struct Iq3Search {
    /// The grid with its lookups.
    pub grid: &'static GridSearch<4>,
    /// Candidate inverse scales are `(15 + 0.2 k) / max` for `k = -steps..=steps`.
    pub steps: i32,
    /// Whether every group is re-rounded against the best scale (IQ3_S), or only the
    /// groups that were off the grid at it (IQ3_XXS).
    pub refine_all: bool,
    /// Whether groups count as on the grid before any candidate wins (IQ3_XXS): then a
    /// sub-block where no candidate wins is not re-rounded.
    pub on_grid_at_start: bool,
}

/// Levels `0..8` of 4 magnitudes under inverse scale `id`: `round((id x - 1) / 2)`,
/// clamped (the value of level `l` is `2l + 1`).
#[inline(always)]
fn iq3_levels(id: f32, xval: &[f32]) -> [u8; 4] {
    std::array::from_fn(|i| nearest_int(0.5 * (id * xval[i] - 1.0)).clamp(0, 7) as u8)
}

/// The neighbour of least `Σ w (scale (2l + 1) - x)²` (the first on ties). Panics where
/// none is below `f32::MAX` (NaN or infinite errors), where ggml aborts.
#[inline]
fn iq3_best_neighbour(
    grid: &GridSearch<4>,
    near: &[u16],
    xval: &[f32],
    waux: &[f32],
    scale: f32,
) -> usize {
    let mut best_d2 = f32::MAX;
    let mut best = None;
    for &j in near {
        let p = grid.point(j as usize);
        let mut d2 = 0f32;
        for i in 0..4 {
            let diff = scale * (2 * p[i] as i32 + 1) as f32 - xval[i];
            d2 += waux[i] * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            best = Some(j as usize);
        }
    }
    best.unwrap_or_else(|| {
        panic!("IQ3 quantizer: no grid point at a finite error (NaN or infinite weights); ggml aborts here too")
    })
}

/// `(Σ w x q, Σ w q²)` of magnitudes `xval` under levels `l` (`q = 2l + 1`).
#[inline(always)]
fn iq3_sums(xval: &[f32; 32], weight: &[f32; 32], l: &[u8; 32]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for i in 0..32 {
        let w = weight[i];
        let q = (2 * l[i] as i32 + 1) as f32;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The scale and the 8 grid indices of a sub-block of 32 magnitudes `xval` (largest
/// `max`, not zero) with error weights `weight` (`waux` = their square roots, for the
/// neighbour searches). ggml's search in `quantize_row_iq3_xxs_impl` /
/// `quantize_row_iq3_s_impl`:
///
/// Each candidate inverse scale rounds every group of 4 to levels; a group that is no
/// grid point takes its best neighbour under that candidate's scale. The candidate whose
/// `(Σ w x q)² / Σ w q²` is largest (the first on ties) wins, with scale
/// `Σ w x q / Σ w q²` (start: `max / 15`, if none wins). If some of its groups were off
/// the grid, they (IQ3_S: all groups) are rounded again under the winning scale, and the
/// scale is refitted. The scale may come out negative (negative weights); the caller
/// flips it and the signs. Panics where ggml aborts: a NaN scale.
pub(crate) fn iq3_subblock(
    s: &Iq3Search,
    xval: &[f32; 32],
    weight: &[f32; 32],
    waux: &[f32; 32],
    max: f32,
) -> (f32, [usize; 8]) {
    let grid = s.grid;
    let mut best = 0f32;
    let mut scale = max / 15.0;
    let mut levels = [0u8; 32];
    let mut on_grid = [s.on_grid_at_start; 8];
    let mut cand = [0u8; 32];
    let mut cand_on_grid = [false; 8];
    for k in -s.steps..=s.steps {
        let id = (15.0 + k as f32 * 0.2) / max;
        let this_scale = 1.0 / id;
        for (g, on) in cand_on_grid.iter_mut().enumerate() {
            let (xg, wg) = (&xval[4 * g..4 * g + 4], &waux[4 * g..4 * g + 4]);
            let l = iq3_levels(id, xg);
            *on = match grid.lookup(grid.key(&l)) {
                Lookup::Point(_) => {
                    cand[4 * g..4 * g + 4].copy_from_slice(&l);
                    true
                }
                Lookup::Near(near) => {
                    let j = iq3_best_neighbour(grid, near, xg, wg, this_scale);
                    cand[4 * g..4 * g + 4].copy_from_slice(grid.point(j));
                    false
                }
            };
        }
        let (sumqx, sumq2) = iq3_sums(xval, weight, &cand);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            levels = cand;
            on_grid = cand_on_grid;
        }
    }
    if on_grid.contains(&false) && scale > 0.0 {
        let id = 1.0 / scale;
        for (g, &on) in on_grid.iter().enumerate() {
            if on && !s.refine_all {
                continue;
            }
            let (xg, wg) = (&xval[4 * g..4 * g + 4], &waux[4 * g..4 * g + 4]);
            let l = iq3_levels(id, xg);
            let j = match grid.lookup(grid.key(&l)) {
                Lookup::Point(j) => j,
                Lookup::Near(near) => iq3_best_neighbour(grid, near, xg, wg, scale),
            };
            levels[4 * g..4 * g + 4].copy_from_slice(grid.point(j));
        }
        let (sumqx, sumq2) = iq3_sums(xval, weight, &levels);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale.is_nan() {
        panic!(
            "IQ3 quantizer: NaN sub-block scale (NaN or infinite weights); ggml aborts here too"
        );
    }
    let index = std::array::from_fn(|g| {
        let l: &[u8; 4] = levels[4 * g..4 * g + 4].try_into().expect("4 levels");
        match grid.lookup(grid.key(l)) {
            Lookup::Point(j) => j,
            Lookup::Near(_) => unreachable!("levels always come from a grid point"),
        }
    });
    (scale, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-coordinate grid of levels 0..4 (2 bits), small enough to check by hand.
    fn toy() -> GridSearch<2> {
        GridSearch::new(vec![[0, 0], [3, 3], [1, 2], [2, 0]], 2, 4, 2)
    }

    #[test]
    fn points_are_found_by_key() {
        let g = toy();
        for i in 0..g.len() {
            let key = g.key(g.point(i));
            assert!(matches!(g.lookup(key), Lookup::Point(j) if j == i));
        }
    }

    #[test]
    fn neighbours_are_the_nearest_distances_by_distance_then_index() {
        let g = toy();
        // (1, 0): [0,0] at 1, [2,0] at 1, [1,2] at 4, [3,3] at 13; two distances: 1 and 4
        let Lookup::Near(n) = g.lookup(g.key(&[1, 0])) else {
            panic!("off grid")
        };
        assert_eq!(n, &[0, 3, 2]);
        // (3, 2): [3,3] at 1, [1,2] at 4, [2,0] at 5
        let Lookup::Near(n) = g.lookup(g.key(&[3, 2])) else {
            panic!("off grid")
        };
        assert_eq!(n, &[1, 2]);
    }

    /// The grids' keys are ggml's `kgrid_*` tables (the ones its init functions expand),
    /// which list each grid's keys in ascending order: first entries and sum.
    #[test]
    fn grid_keys_are_ggml_kgrid_tables() {
        fn check<const N: usize>(g: &GridSearch<N>, first: [usize; 6], sum: usize) {
            let keys: Vec<usize> = (0..g.len()).map(|i| g.key(g.point(i))).collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "ascending");
            assert_eq!(keys[..6], first);
            assert_eq!(keys.iter().sum::<usize>(), sum);
        }
        check(iq3xxs_grid(), [0, 2, 4, 9, 11, 15], 391_138);
        check(iq3s_grid(), [0, 1, 2, 5, 7, 8], 777_331);
        check(iq1s_grid(), [0, 2, 5, 8, 10, 17], 44_428_132);
    }

    #[test]
    fn sort_is_stable_and_mirrors_glibc_on_nans() {
        let nan = f32::NAN;
        // glibc 2.36's qsort with ggml's comparator puts this in the order below (a C
        // check of the machine llama-quantize runs on).
        let v = [
            3.0, nan, 1.0, 2.0, nan, 0.0, 5.0, -1.0, 4.0, nan, 2.0, 2.0, -3.0, 7.0, nan, 1.0,
        ];
        let mut pairs: Vec<(f32, u8)> = v.iter().enumerate().map(|(i, &x)| (x, i as u8)).collect();
        let mut scratch = pairs.clone();
        glibc_merge_sort(&mut pairs, &mut scratch);
        let order: Vec<u8> = pairs.iter().map(|p| p.1).collect();
        assert_eq!(
            order,
            [12, 2, 3, 10, 11, 0, 1, 4, 7, 5, 8, 6, 9, 13, 14, 15]
        );

        let v = [1.0, -0.0, 1.0, 0.0, -2.0, 1.0, 0.0, -0.0];
        let mut pairs: Vec<(f32, u8)> = v.iter().enumerate().map(|(i, &x)| (x, i as u8)).collect();
        glibc_merge_sort(&mut pairs, &mut scratch[..8]);
        let order: Vec<u8> = pairs.iter().map(|p| p.1).collect();
        assert_eq!(order, [4, 1, 3, 6, 7, 0, 2, 5]);
    }
}
