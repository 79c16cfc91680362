//! Prompt-batch GEMM for the legacy formats with 8 partial lanes per row (Q8_0, Q5_0 with
//! Q8_0 activations, Q4_1 with Q8_1): every result bit for bit the format's `vec_dot`.
//!
//! llama.cpp's rounding for these formats fixes, per 32-weight block and (row, token),
//! one integer dot into 8 lanes, one exact convert to f32 and one FMA with the scale
//! product `d_w · d_a` into 8 f32 lanes (then a horizontal sum). On this core the
//! integer dot (`vpdpbusd`) and the FMA share the two vector-multiply pipes and the
//! convert runs beside them, so a (row, token, block) costs one cycle at best. The
//! tile kernel (`tiles`) paid about twice that, for the work around those two µops:
//! each token's `-bias · Σ a` start values and f16 scales redone for every 4 rows,
//! each row's unpacking and scales for every 4 tokens, scale products one by one.
//!
//! Here both operands are rearranged first, so the inner loop is only the two µops per
//! (row, token, block) plus loads:
//! - the whole batch's activations once per matmul, in groups of [`TILE`] tokens
//!   ([`PackedAct`]: their bytes as `vpdpbusd`'s unsigned operand `a + 128`, their
//!   scales as f32);
//! - each [`TILE`] rows' blocks once per token tile, [`K_CHUNK`] blocks at a time, into
//!   an L1 buffer ([`QuadBlock`]: signed weight bytes, the start values `-128 · Σ w`
//!   that take the activations' 128 back, scales as f32 laid out so that two multiplies
//!   give the 16 scale products of a block).
//!
//! The start values go with the weights because a quad's block is read by every token
//! group of the tile from L1, while a group's block streams from L2 for every quad: with
//! the starts on the activation side (as in `tiles`) that stream was 320 bytes a block,
//! now 160.
//!
//! Threads take chunks of rows (as the other batch paths: at most `MATMUL_TASK_BYTES`
//! of weights, so they stay in L2); within a chunk, tokens go in tiles whose packed
//! activations fit in L2 beside them.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::float16::f16;

use super::legacy::{hsum_f32x8, load32};
use super::tiles::{ActBlock, LegacyBlock};
use super::vnni::{dpbusd, VNNI};
use crate::matmul::{rows_per_chunk, MATMUL_TASK_BYTES};
use crate::pool::{DisjointOut, Pool};
use crate::quant::{ActBlock as ActBlockOf, WeightType, TILE};

/// What the activation bytes are packed with: `vpdpbusd` takes them as its unsigned
/// operand, `a + 128` (and the rows' start values take the 128 back); the AVX2 pair
/// takes them signed, as they are.
const ACT_OFFSET: u8 = if VNNI { 0x80 } else { 0 };

/// Block `k` of a group of [`TILE`] tokens, as the GEMM reads it.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct PackedAct {
    /// Token `t`'s bytes `a`, plus [`ACT_OFFSET`] (mod 256).
    qs: [[u8; 32]; TILE],
    /// The 4 tokens' `d_a` then their Q8_1 `s_a`: each half broadcast to 8 lanes is the
    /// right factor of two rows' 8 scale (offset) products.
    ds: [f32; 2 * TILE],
}

impl Default for PackedAct {
    fn default() -> Self {
        PackedAct {
            qs: [[ACT_OFFSET; 32]; TILE],
            ds: [0.0; 2 * TILE],
        }
    }
}

/// Block `k` of [`TILE`] weight rows, unpacked.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct QuadBlock {
    /// Row `r`'s weights as signed bytes `w = u - bias` (weight value `d · w`).
    w: [[i8; 32]; TILE],
    /// `-ACT_OFFSET · Σ w` over each 4 bytes of row `r`: `vpdpbusd` of the packed
    /// activations starting there gives the lanes of `Σ a · w`.
    start: [[i32; 8]; TILE],
    /// `d_w` of row `r` in entries `4r..4r + 4`: times `d_a` these are the scale
    /// products of (row `r`, token `t`) in entry `4r + t`.
    d: [f32; 4 * TILE],
    /// The same for Q4_1's `m`.
    m: [f32; 4 * TILE],
}

impl Default for QuadBlock {
    fn default() -> Self {
        QuadBlock {
            w: [[0; 32]; TILE],
            start: [[0; 8]; TILE],
            d: [0.0; 4 * TILE],
            m: [0.0; 4 * TILE],
        }
    }
}

/// The running sums of a (row quad, token group): 8 lanes per (row, token) and Q4_1's
/// offset terms (entry `4r + t`), kept between the k-chunks of a row.
#[derive(Clone, Copy)]
struct QuadSums {
    lanes: [[__m256; TILE]; TILE],
    offsets: [__m256; 2],
}

impl QuadSums {
    #[inline]
    #[target_feature(enable = "avx2")]
    fn zero() -> QuadSums {
        QuadSums {
            lanes: [[_mm256_setzero_ps(); TILE]; TILE],
            offsets: [_mm256_setzero_ps(); 2],
        }
    }
}

/// Bytes of packed activations a token tile may take, so that they stay in L2 (1 MiB
/// on this machine) next to the `MATMUL_TASK_BYTES` of weights of a chunk.
const ACT_TILE_BYTES: usize = 384 << 10;

/// Bytes of the running sums of a row chunk's quads for a token tile (rows wider than
/// [`K_CHUNK`] blocks), kept in L2 beside the activations and weights.
const SUMS_BYTES: usize = 192 << 10;

/// Blocks of a row quad unpacked at a time: with a token group's blocks beside them
/// they stay in L1 (32 KiB) however wide the rows are.
const K_CHUNK: usize = 32;

thread_local! {
    /// The packed activations of the matmul this thread runs (reused across calls).
    static PACKED: RefCell<Vec<PackedAct>> = const { RefCell::new(Vec::new()) };
    /// The unpacked row quad chunk of this thread and its sums per token group.
    static QUAD: RefCell<(Vec<QuadBlock>, Vec<QuadSums>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Packs the blocks of tokens `tokens` (up to [`TILE`]; missing tokens get zeros, whose
/// products are zeros), token `t`'s blocks starting at `act[t * act_row]`, into `group`
/// (one [`PackedAct`] per block).
#[target_feature(enable = "avx2,fma,f16c")]
fn pack<A: ActBlock>(
    act: &[A],
    act_row: usize,
    tokens: std::ops::Range<usize>,
    group: &mut [PackedAct],
) {
    for (k, dst) in group.iter_mut().enumerate() {
        // built in registers and on the stack, then stored whole: field by field into
        // the (cold, megabytes) buffer, the small stores waited on their cache lines
        // and the packing took 12% of SmolLM2 Q8_0 pp512 instead of ~2%
        let mut p = PackedAct::default();
        for (i, t) in tokens.clone().enumerate() {
            let a = &act[t * act_row + k];
            let bytes = _mm256_xor_si256(load32(a.qs()), _mm256_set1_epi8(ACT_OFFSET as i8));
            // SAFETY: 32 writable bytes; unaligned store.
            unsafe { _mm256_storeu_si256(p.qs[i].as_mut_ptr().cast(), bytes) };
            (p.ds[i], p.ds[i + TILE]) = (a.d().to_f32(), a.s().to_f32());
        }
        *dst = p;
    }
}

/// Unpacks block `k` of the 4 rows `rows`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack<W: LegacyBlock, const OFFSETS: bool>(
    rows: [&[W]; TILE],
    k: usize,
    offset_of: impl Fn(&W) -> f16,
) -> QuadBlock {
    let mut q = QuadBlock::default();
    for (r, row) in rows.iter().enumerate() {
        let b = &row[k];
        let w = _mm256_sub_epi8(b.quants(), _mm256_set1_epi8(W::BIAS as i8));
        let start = if VNNI {
            let zero = _mm256_setzero_si256();
            _mm256_sub_epi32(zero, dpbusd(zero, _mm256_set1_epi8(ACT_OFFSET as i8), w))
        } else {
            _mm256_setzero_si256()
        };
        // SAFETY: 32 writable bytes each; unaligned stores.
        unsafe {
            _mm256_storeu_si256(q.w[r].as_mut_ptr().cast(), w);
            _mm256_storeu_si256(q.start[r].as_mut_ptr().cast(), start);
        }
        q.d[4 * r..4 * r + 4].fill(b.d().to_f32());
        if OFFSETS {
            q.m[4 * r..4 * r + 4].fill(offset_of(b).to_f32());
        }
    }
    q
}

/// `Σ a · w` over each 4 bytes: one `vpdpbusd` from the row's start values with VNNI,
/// else the sign trick on the AVX2 pair (`|w| <= 128`, `|a| <= 127`: no saturation).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lanes(start: __m256i, a: __m256i, w: __m256i) -> __m256i {
    if VNNI {
        dpbusd(start, a, w)
    } else {
        let (abs_w, signed_a) = (_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
        _mm256_madd_epi16(_mm256_maddubs_epi16(abs_w, signed_a), _mm256_set1_epi16(1))
    }
}

/// `sums` plus the dots of a chunk of unpacked row-quad blocks with the same blocks of
/// a packed token group.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quad_dots<const OFFSETS: bool>(
    quad: &[QuadBlock],
    act: &[PackedAct],
    sums: QuadSums,
) -> QuadSums {
    assert_eq!(quad.len(), act.len(), "legacy GEMM: block counts differ");
    let QuadSums {
        lanes: mut acc,
        mut offsets,
    } = sums;
    // The scale products of a run of blocks, computed ahead of the run's dots so that
    // the dots broadcast them from memory (a load each, folded into the FMA): computed
    // next to their use, the compiler keeps them in registers and spends a shuffle µop
    // per (row, token) on the broadcast.
    #[repr(C, align(32))]
    struct Scales([[f32; 4 * TILE]; RUN]);
    const RUN: usize = 8;
    let mut scales = Scales([[0.0; 4 * TILE]; RUN]);
    for (quad, act) in quad.chunks(RUN).zip(act.chunks(RUN)) {
        for ((w, a), s) in quad.iter().zip(act).zip(scales.0.iter_mut()) {
            // SAFETY: 16-byte and 32-byte loads and stores inside 32-byte aligned fields.
            unsafe {
                let d_a = _mm256_broadcast_ps(&*a.ds.as_ptr().cast::<__m128>());
                for h in 0..2 {
                    let d_w = _mm256_load_ps(w.d.as_ptr().add(8 * h));
                    _mm256_store_ps(s.as_mut_ptr().add(8 * h), _mm256_mul_ps(d_w, d_a));
                }
            }
        }
        for ((w, a), s) in quad.iter().zip(act).zip(scales.0.iter()) {
            // SAFETY: every load below is of 16 or 32 bytes inside a 32-byte aligned field.
            unsafe {
                if OFFSETS {
                    let s_a = _mm256_broadcast_ps(&*a.ds.as_ptr().add(TILE).cast::<__m128>());
                    for (h, o) in offsets.iter_mut().enumerate() {
                        *o = _mm256_fmadd_ps(_mm256_load_ps(w.m.as_ptr().add(8 * h)), s_a, *o);
                    }
                }
                let bytes: [__m256i; TILE] = std::array::from_fn(|t| load32(&a.qs[t]));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let w_r = load32(&w.w[r]);
                    let start = _mm256_load_si256(w.start[r].as_ptr().cast());
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let lanes = _mm256_cvtepi32_ps(lanes(start, bytes[t], w_r));
                        *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&s[4 * r + t]), lanes, *acc);
                    }
                }
            }
        }
    }
    QuadSums {
        lanes: acc,
        offsets,
    }
}

/// The finished dots of a (row quad, token group): `out[t][r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quad_results<const OFFSETS: bool>(sums: QuadSums) -> [[f32; TILE]; TILE] {
    let mut off = [0f32; 4 * TILE];
    for (h, o) in sums.offsets.iter().enumerate() {
        // SAFETY: 8 writable f32; unaligned store.
        unsafe { _mm256_storeu_ps(off.as_mut_ptr().add(8 * h), *o) };
    }
    let mut out = [[0f32; TILE]; TILE];
    for (r, lanes) in sums.lanes.iter().enumerate() {
        for (t, &lanes) in lanes.iter().enumerate() {
            let sum = hsum_f32x8(lanes);
            out[t][r] = if OFFSETS { sum + off[4 * r + t] } else { sum };
        }
    }
    out
}

/// `matmul` of a legacy 8-lane format: `w` holds `rows` rows, `act` `n_tokens` rows of
/// activations, `out` is token-major (`out[t * rows + r]`), each element bit for bit
/// `one(row r, token t)` (the format's `vec_dot`), which also takes the rows that do not
/// fill a quad.
#[target_feature(enable = "avx2,fma,f16c")]
fn matmul_8_lanes<W, const OFFSETS: bool>(
    pool: &Pool,
    w: &[W::Block],
    act: &[ActBlockOf<W>],
    n_tokens: usize,
    out: &mut [f32],
    offset_of: impl Fn(&W::Block) -> f16 + Sync,
    one: impl Fn(&[W::Block], &[ActBlockOf<W>]) -> f32 + Sync,
) where
    W: WeightType,
    W::Block: LegacyBlock,
    ActBlockOf<W>: ActBlock,
{
    assert!(
        n_tokens > 0 && act.len().is_multiple_of(n_tokens) && out.len().is_multiple_of(n_tokens),
        "{} GEMM: buffers for {n_tokens} tokens",
        W::NAME
    );
    let rb = act.len() / n_tokens;
    let rows = out.len() / n_tokens;
    assert_eq!(w.len(), rows * rb, "{} GEMM: weight blocks", W::NAME);
    let groups = n_tokens.div_ceil(TILE);
    PACKED.with_borrow_mut(|packed| {
        // every element is overwritten below: grow only, no clearing
        if packed.len() < groups * rb {
            packed.resize(groups * rb, PackedAct::default());
        }
        let packed = &mut packed[..groups * rb];
        let groups_per_chunk = groups.div_ceil(4 * pool.n_threads());
        pool.for_each_chunk(packed, groups_per_chunk * rb, |start, chunk| {
            for (i, group) in chunk.chunks_exact_mut(rb).enumerate() {
                let g = start / rb + i;
                let tokens = g * TILE..(g * TILE + TILE).min(n_tokens);
                pack(act, rb, tokens, group);
            }
        });
        let packed: &[PackedAct] = packed;
        let row_bytes = rb * size_of::<W::Block>();
        let chunk = rows_per_chunk::<W>(rows, row_bytes, pool.n_threads())
            .min((MATMUL_TASK_BYTES / row_bytes).max(1))
            .next_multiple_of(TILE);
        let n_chunks = rows.div_ceil(chunk);
        // A tile's packed activations stay in L2 while every quad of the row chunk passes
        // over them: all of them, or (rows of several k-chunks) those of one k-chunk, with
        // the quads' running sums beside them. Each quad is unpacked once per tile: the
        // larger tile of the two wins (9216-wide rows: 48 groups instead of 8).
        let quads_per_chunk = chunk / TILE;
        let whole_rows = ACT_TILE_BYTES / (rb * size_of::<PackedAct>());
        let tile_groups = if rb <= K_CHUNK {
            whole_rows
        } else {
            (ACT_TILE_BYTES / (K_CHUNK * size_of::<PackedAct>()))
                .min(SUMS_BYTES / (quads_per_chunk * size_of::<QuadSums>()))
                .max(whole_rows)
        }
        .max(1);
        let next = AtomicUsize::new(0);
        let out = DisjointOut::new(out);
        pool.run(&|_, _| {
            QUAD.with_borrow_mut(|(quad, sums)| {
                quad.resize(K_CHUNK, QuadBlock::default());
                // only rows of several k-chunks keep sums between them
                let n_sums = if rb > K_CHUNK {
                    quads_per_chunk * tile_groups
                } else {
                    0
                };
                sums.resize(n_sums, QuadSums::zero());
                loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= n_chunks {
                        break;
                    }
                    let row_range = c * chunk..((c + 1) * chunk).min(rows);
                    let quads = row_range.len() / TILE;
                    for g0 in (0..groups).step_by(tile_groups) {
                        let tile = g0..(g0 + tile_groups).min(groups);
                        for k0 in (0..rb).step_by(K_CHUNK) {
                            let quad = &mut quad[..K_CHUNK.min(rb - k0)];
                            let last = k0 + quad.len() == rb;
                            for q in 0..quads {
                                let r0 = row_range.start + q * TILE;
                                let rows4: [&[W::Block]; TILE] =
                                    std::array::from_fn(|r| &w[(r0 + r) * rb..][..rb]);
                                for (k, b) in (k0..).zip(quad.iter_mut()) {
                                    *b = unpack::<_, OFFSETS>(rows4, k, &offset_of);
                                }
                                for (i, g) in tile.clone().enumerate() {
                                    let act = &packed[g * rb + k0..][..quad.len()];
                                    let at = q * tile_groups + i;
                                    let from = if k0 == 0 { QuadSums::zero() } else { sums[at] };
                                    let to = quad_dots::<OFFSETS>(quad, act, from);
                                    if !last {
                                        sums[at] = to;
                                        continue;
                                    }
                                    let dots = quad_results::<OFFSETS>(to);
                                    for (dt, d) in dots.iter().enumerate() {
                                        let t = g * TILE + dt;
                                        if t < n_tokens {
                                            // SAFETY: chunk `c` (its rows, every token)
                                            // is this thread's alone (fetch_add).
                                            unsafe { out.write_slice(t * rows + r0, d) };
                                        }
                                    }
                                }
                            }
                        }
                    }
                    for r in row_range.start + quads * TILE..row_range.end {
                        for t in 0..n_tokens {
                            let v = one(&w[r * rb..][..rb], &act[t * rb..][..rb]);
                            // SAFETY: as above.
                            unsafe { out.write(t * rows + r, v) };
                        }
                    }
                }
            })
        });
    })
}

/// Q8_0 weights × Q8_0 activations, a whole batch (see the module doc).
pub fn matmul_q8_0(
    pool: &Pool,
    w: &[crate::quant::q8_0::BlockQ8_0],
    act: &[crate::quant::q8_0::BlockQ8_0],
    n_tokens: usize,
    out: &mut [f32],
) {
    // SAFETY: this module is only built with AVX2, FMA and F16C enabled.
    unsafe {
        matmul_8_lanes::<crate::quant::q8_0::Q8_0, false>(
            pool,
            w,
            act,
            n_tokens,
            out,
            |_| f16::ZERO,
            super::legacy::vec_dot_q8_0_q8_0,
        )
    }
}

/// Q5_0 weights × Q8_0 activations, a whole batch.
pub fn matmul_q5_0(
    pool: &Pool,
    w: &[crate::quant::q5_0::BlockQ5_0],
    act: &[crate::quant::q8_0::BlockQ8_0],
    n_tokens: usize,
    out: &mut [f32],
) {
    // SAFETY: as above.
    unsafe {
        matmul_8_lanes::<crate::quant::q5_0::Q5_0, false>(
            pool,
            w,
            act,
            n_tokens,
            out,
            |_| f16::ZERO,
            super::legacy::vec_dot_q5_0_q8_0,
        )
    }
}

/// Q4_1 weights × Q8_1 activations, a whole batch.
pub fn matmul_q4_1(
    pool: &Pool,
    w: &[crate::quant::q4_1::BlockQ4_1],
    act: &[crate::quant::q8_1::BlockQ8_1],
    n_tokens: usize,
    out: &mut [f32],
) {
    // SAFETY: as above.
    unsafe {
        matmul_8_lanes::<crate::quant::q4_1::Q4_1, true>(
            pool,
            w,
            act,
            n_tokens,
            out,
            |b| b.m,
            super::legacy::vec_dot_q4_1_q8_1,
        )
    }
}
