//! Shared checks for every format: golden vectors from gguf-py and dot-product error
//! limits against an f64 reference.

use super::{ActBlock, ActType, Quantize, WeightType};

/// Blocks and their gguf-py dequantization, from `golden/<NAME>.bin`
/// (written by `scripts/quant_golden.py`).
pub fn golden<W: WeightType>() -> (Vec<W::Block>, Vec<f32>) {
    let path = format!(
        "{}/src/quant/golden/{}.bin",
        env!("CARGO_MANIFEST_DIR"),
        W::NAME
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let n_blocks = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let block_bytes = std::mem::size_of::<W::Block>();
    let (raw, vals) = bytes[4..].split_at(n_blocks * block_bytes);
    assert_eq!(vals.len(), n_blocks * W::BLOCK_ELEMS * 4, "{path}: size");
    let mut blocks = Vec::<W::Block>::with_capacity(n_blocks);
    // SAFETY: blocks are plain-old-data; the copy fills exactly n_blocks of them.
    unsafe {
        std::ptr::copy_nonoverlapping(raw.as_ptr(), blocks.as_mut_ptr().cast::<u8>(), raw.len());
        blocks.set_len(n_blocks);
    }
    let values = vals
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (blocks, values)
}

/// Our scalar `dequantize_ref` against gguf-py, allowing `max_ulps` f32 ulps (0 for formats
/// that compute exactly; formats that scale in f16 are still exact in f32 here, because
/// gguf-py and we both widen the f16 scale before multiplying).
pub fn check_dequantize<W: WeightType>(max_ulps: u32) {
    let (blocks, want) = golden::<W>();
    let mut got = vec![0f32; want.len()];
    W::dequantize_ref(&blocks, &mut got);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let ulps = (g.to_bits() as i64 - w.to_bits() as i64).unsigned_abs();
        assert!(
            ulps <= max_ulps as u64 || (g - w).abs() <= f32::MIN_POSITIVE,
            "{}: value {i} (block {}): got {g}, gguf-py {w}",
            W::NAME,
            i / W::BLOCK_ELEMS
        );
    }
}

/// Deterministic pseudo-random activations, roughly N(0, 1) with a few outliers, as
/// residual-stream activations look.
pub fn activations(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let u: f64 = (0..4).map(|_| next()).sum::<f64>() - 2.0;
            (if i % 97 == 0 { 8.0 * u } else { u * 1.7 }) as f32
        })
        .collect()
}

/// Checks `vec_dot_ref` and `vec_dot` on the golden blocks against the f64 dot of the
/// dequantized weights and dequantized activations. The error is measured relative to
/// `sum |w_i * a_i|`, the natural scale of float accumulation error; `rel_limit` is the
/// per-format limit, derived in each format's test from its precision. The SIMD and
/// scalar dots must also agree within the same limit.
pub fn check_vec_dot<W: WeightType>(rel_limit: f64) {
    let (blocks, w) = golden::<W>();
    let n = w.len();
    for seed in 0..4 {
        let x = activations(n, seed);
        let mut act = vec![ActBlock::<W>::default(); n / W::Act::BLOCK_ELEMS];
        W::Act::quantize_ref(&x, &mut act);
        let mut xq = vec![0f32; n];
        W::Act::dequantize_ref(&act, &mut xq);
        let exact: f64 = w.iter().zip(&xq).map(|(&a, &b)| a as f64 * b as f64).sum();
        let scale: f64 = w
            .iter()
            .zip(&xq)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum();
        let r = W::vec_dot_ref(&blocks, &act) as f64;
        let s = W::vec_dot(&blocks, &act) as f64;
        let err_ref = (r - exact).abs() / scale;
        let err_simd = (s - exact).abs() / scale;
        let err_pair = (s - r).abs() / scale;
        assert!(
            err_ref <= rel_limit,
            "{}: scalar dot {r} vs f64 {exact}: rel err {err_ref:e} > {rel_limit:e}",
            W::NAME
        );
        assert!(
            err_simd <= rel_limit,
            "{}: fast dot {s} vs f64 {exact}: rel err {err_simd:e} > {rel_limit:e}",
            W::NAME
        );
        assert!(
            err_pair <= rel_limit,
            "{}: fast dot {s} vs scalar {r}: rel diff {err_pair:e}",
            W::NAME
        );
        // The activation quantizer must agree with its reference.
        let mut act_fast = vec![ActBlock::<W>::default(); act.len()];
        W::Act::quantize(&x, &mut act_fast);
        let mut xq_fast = vec![0f32; n];
        W::Act::dequantize_ref(&act_fast, &mut xq_fast);
        for (i, (a, b)) in xq.iter().zip(&xq_fast).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "{}: quantize vs quantize_ref at {i}: {a} vs {b}",
                W::Act::NAME
            );
        }
    }
}

/// For weight formats with a per-block offset `m` (`x = d q + m`) dotted with Q8_1: the
/// dot against an f64 reference built from what the kernel actually reads, the stored
/// activation sum `s` included: `sum_b [ sum_i (w_i - m_b) a_i + m_b s_b ]`. This isolates
/// the kernel's own rounding (f32 scaling and accumulation) from the f16 rounding of `s`,
/// which `check_vec_dot` has to allow for. `offset` reads `m` from a block.
pub fn check_vec_dot_offsets<W>(rel_limit: f64, offset: impl Fn(&W::Block) -> f32)
where
    W: WeightType<Act = super::q8_1::Q8_1>,
{
    let (blocks, w) = golden::<W>();
    let n = w.len();
    let per_block = W::BLOCK_ELEMS;
    for seed in 0..4 {
        let x = activations(n, seed);
        let mut act = vec![ActBlock::<W>::default(); n / W::Act::BLOCK_ELEMS];
        W::Act::quantize_ref(&x, &mut act);
        let mut xq = vec![0f32; n];
        W::Act::dequantize_ref(&act, &mut xq);
        let mut exact = 0f64;
        let mut scale = 0f64;
        for (b, block) in blocks.iter().enumerate() {
            let m = offset(block) as f64;
            let range = b * per_block..(b + 1) * per_block;
            for (&wi, &ai) in w[range.clone()].iter().zip(&xq[range]) {
                exact += (wi as f64 - m) * ai as f64;
                scale += (wi as f64 * ai as f64).abs();
            }
            // one Q8_1 block per weight block (both hold 32 values)
            let s = act[b].s.to_f32() as f64;
            exact += m * s;
            scale += (m * s).abs();
        }
        for (what, got) in [
            ("scalar", W::vec_dot_ref(&blocks, &act)),
            ("fast", W::vec_dot(&blocks, &act)),
        ] {
            let err = (got as f64 - exact).abs() / scale;
            assert!(
                err <= rel_limit,
                "{}: {what} dot {got} vs f64 {exact}: rel err {err:e} > {rel_limit:e}",
                W::NAME
            );
        }
    }
}

/// Raw little-endian bytes as blocks of `W`.
fn blocks_from_bytes<W: WeightType>(raw: &[u8]) -> Vec<W::Block> {
    let n = raw.len() / std::mem::size_of::<W::Block>();
    assert_eq!(
        n * std::mem::size_of::<W::Block>(),
        raw.len(),
        "{}: partial block",
        W::NAME
    );
    let mut blocks = Vec::<W::Block>::with_capacity(n);
    // SAFETY: blocks are plain-old-data; the copy fills exactly n of them.
    unsafe {
        std::ptr::copy_nonoverlapping(raw.as_ptr(), blocks.as_mut_ptr().cast::<u8>(), raw.len());
        blocks.set_len(n);
    }
    blocks
}

/// What llama.cpp's CPU backend computes for one weight format on this machine, from
/// `golden_matvec/<NAME>.bin` (written by `scripts/legacy_matvec_golden.c`).
pub struct LlamaCppGolden<W: WeightType> {
    pub rows: usize,
    pub cols: usize,
    /// `rows` rows of blocks.
    pub weights: Vec<W::Block>,
    /// Per activation vector `(x, y_plain, y_repack)`: `W x` with the weights in a plain
    /// buffer (ggml's `vec_dot`) and in llama.cpp's default repacking buffer (the same as
    /// `y_plain` for formats it does not repack).
    pub matvecs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)>,
    /// Whether `y_repack` comes from repacked kernels.
    pub repacked: bool,
    /// `(n_tokens, X, Y)`: `Y = W X` for `n_tokens` activation rows, on the default path.
    pub matmul: (usize, Vec<f32>, Vec<f32>),
}

pub fn llama_cpp_golden<W: WeightType>() -> LlamaCppGolden<W> {
    let path = format!(
        "{}/src/quant/golden_matvec/{}.bin",
        env!("CARGO_MANIFEST_DIR"),
        W::NAME
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut at = 0;
    let mut word = || {
        let w = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        w
    };
    let (rows, cols, n_acts, repacked) = (word(), word(), word(), word() == 1);
    let weight_bytes = rows * cols / W::BLOCK_ELEMS * std::mem::size_of::<W::Block>();
    let weights = blocks_from_bytes::<W>(&bytes[16..16 + weight_bytes]);
    let floats = |from: usize, n: usize| -> Vec<f32> {
        bytes[from..from + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mut at = 16 + weight_bytes;
    let mut matvecs = Vec::new();
    for _ in 0..n_acts {
        let x = floats(at, cols);
        let y_plain = floats(at + 4 * cols, rows);
        let y_repack = floats(at + 4 * (cols + rows), rows);
        at += 4 * (cols + 2 * rows);
        matvecs.push((x, y_plain, y_repack));
    }
    let n_tokens = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let x = floats(at + 4, n_tokens * cols);
    let y = floats(at + 4 + 4 * n_tokens * cols, n_tokens * rows);
    assert_eq!(
        at + 4 + 4 * n_tokens * (cols + rows),
        bytes.len(),
        "{path}: size"
    );
    LlamaCppGolden {
        rows,
        cols,
        weights,
        matvecs,
        repacked,
        matmul: (n_tokens, x, y),
    }
}

/// llama.cpp's quantization of activations to `A`, from `golden_matvec/<NAME>_act.bin`:
/// the inputs and the resulting blocks.
pub fn llama_cpp_act_golden<A: ActType>() -> (Vec<f32>, Vec<A::Block>) {
    let path = format!(
        "{}/src/quant/golden_matvec/{}_act.bin",
        env!("CARGO_MANIFEST_DIR"),
        A::NAME
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let n = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let x = bytes[4..4 + 4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let raw = &bytes[4 + 4 * n..];
    let n_blocks = raw.len() / std::mem::size_of::<A::Block>();
    assert_eq!(n_blocks * A::BLOCK_ELEMS, n, "{path}: size");
    let mut blocks = Vec::<A::Block>::with_capacity(n_blocks);
    // SAFETY: activation blocks are plain-old-data; the copy fills exactly n_blocks.
    unsafe {
        std::ptr::copy_nonoverlapping(raw.as_ptr(), blocks.as_mut_ptr().cast::<u8>(), raw.len());
        blocks.set_len(n_blocks);
    }
    (x, blocks)
}

/// llama.cpp's `Y = W X` for batches of several sizes, from `golden_matmul/` (written by
/// `scripts/matmul_golden.c`): the weights, the shared activations `X` (`max_tokens` rows
/// of `cols`), and per batch size `n` the result for the first `n` rows of `X`,
/// token-major (`y[t * rows + r]`). A type whose results differ between llama.cpp's
/// AVX-512 and AVX2 builds has one file per kernel tier, in `golden_matmul/TIER/`, and the
/// file of the arithmetic this build's kernels have (AVX-512F or not) is read; the others are the same for both
/// builds and sit in `golden_matmul/` itself.
pub struct BatchGolden<W: WeightType> {
    pub rows: usize,
    pub cols: usize,
    pub weights: Vec<W::Block>,
    pub x: Vec<f32>,
    pub batches: Vec<(usize, Vec<f32>)>,
}

/// The kernel tiers with golden files of their own in `golden_matmul/`.
pub const BATCH_GOLDEN_TIERS: [crate::tier::Tier; 2] =
    [crate::tier::Tier::Avx512, crate::tier::Tier::Avx2];

pub fn batch_golden<W: WeightType>() -> BatchGolden<W> {
    let dir = format!("{}/src/quant/golden_matmul", env!("CARGO_MANIFEST_DIR"));
    let read = |name: &str| {
        let path = format!("{dir}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let floats = |b: &[u8], from: usize, n: usize| -> Vec<f32> {
        b[from..from + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let xb = read("x.bin");
    let (max_tokens, x_cols) = (word(&xb, 0) as usize, word(&xb, 4) as usize);
    let x = floats(&xb, 8, max_tokens * x_cols);
    // The file of the arithmetic the kernels compiled in: they pick it by AVX-512F (as
    // ggml does), which an AVX-512 build without VNNI has too, so not by tier::compiled().
    let tier = if cfg!(target_feature = "avx512f") {
        "avx512"
    } else {
        "avx2"
    };
    let per_tier = format!("{tier}/{}.bin", W::NAME);
    let bytes = if std::path::Path::new(&format!("{dir}/{per_tier}")).is_file() {
        read(&per_tier)
    } else {
        read(&format!("{}.bin", W::NAME))
    };
    let (rows, cols) = (word(&bytes, 0) as usize, word(&bytes, 4) as usize);
    // (word 3 says whether llama.cpp had the weights repacked: informative only)
    let n_cases = word(&bytes, 8) as usize;
    assert_eq!(cols, x_cols, "{}: columns of X", W::NAME);
    let weight_bytes = rows * cols / W::BLOCK_ELEMS * std::mem::size_of::<W::Block>();
    let weights = blocks_from_bytes::<W>(&bytes[16..16 + weight_bytes]);
    let mut at = 16 + weight_bytes;
    let mut batches = Vec::with_capacity(n_cases);
    for _ in 0..n_cases {
        let n = word(&bytes, at) as usize;
        assert!(n <= max_tokens, "{}: batch of {n}", W::NAME);
        batches.push((n, floats(&bytes, at + 4, n * rows)));
        at += 4 + 4 * n * rows;
    }
    assert_eq!(at, bytes.len(), "{}: size", W::NAME);
    BatchGolden {
        rows,
        cols,
        weights,
        x,
        batches,
    }
}

/// `n` blocks of `W` for the interleaved formats' tests: every fifth a golden block
/// (real data), the others `make(rand)` with `rand` a seeded random source; take scales
/// from [`sane_f16`] so that no lane computes with NaN, infinities or subnormals.
pub fn random_blocks<W: WeightType>(
    n: usize,
    seed: u64,
    mut make: impl FnMut(&mut dyn FnMut() -> u64) -> W::Block,
) -> Vec<W::Block> {
    let golden = golden::<W>().0;
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            if i % 5 == 3 {
                golden[i % golden.len()]
            } else {
                make(&mut next)
            }
        })
        .collect()
}

/// A block scale from random bits: either sign, magnitude in [2^-10, 2^-4).
pub fn sane_f16(v: u64) -> crate::float16::f16 {
    let sign = if v & 1 == 1 { -1.0 } else { 1.0 };
    let mag = 2f32.powi(-10 - (v >> 1) as i32 % 6) * (1.0 + (v >> 8) as f32 / 16.0 % 1.0);
    crate::float16::f16::from_f32(sign * mag)
}

/// One row of `golden_quantize/` and ggml's quantizations of it: `None` for a run where
/// ggml aborted (only the formats whose ggml quantizer may abort have such runs).
pub struct QuantizeCase {
    /// The row's index in `inputs.bin`.
    pub row: usize,
    pub x: Vec<f32>,
    /// The row's importance vector.
    pub imatrix: Vec<f32>,
    /// ggml's blocks, as bytes, without the importance vector and with it.
    pub plain: Option<Vec<u8>>,
    pub weighted: Option<Vec<u8>>,
}

/// Reads little-endian words, floats and bytes off the front of a golden file.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }
    fn word(&mut self) -> usize {
        u32::from_le_bytes(self.bytes(4).try_into().unwrap()) as usize
    }
    fn floats(&mut self, n: usize) -> Vec<f32> {
        self.bytes(4 * n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// The rows of `golden_quantize/` (written by `scripts/quantize_golden.c`) whose width is
/// a multiple of `W`'s block, with ggml's quantizations of them. `<TYPE>.bin` holds both
/// runs of every row; for the formats whose ggml quantizer may abort (the IQ1, IQ2 and
/// IQ3 ones, `write_aborting_types` in the C) each row says which runs finished
/// (`flagged`). `MCC_QUANTIZE_GOLDEN` names another directory of such files (a larger
/// set made for a one-off check).
fn quantize_golden<W: WeightType>(flagged: bool) -> Vec<QuantizeCase> {
    let dir = std::env::var("MCC_QUANTIZE_GOLDEN")
        .unwrap_or_else(|_| format!("{}/src/quant/golden_quantize", env!("CARGO_MANIFEST_DIR")));
    let read = |name: &str| {
        let path = format!("{dir}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let inputs = read("inputs.bin");
    let mut c = Cursor(&inputs);
    let imatrices: Vec<Vec<f32>> = (0..c.word())
        .map(|_| {
            let width = c.word();
            c.floats(width)
        })
        .collect();
    let rows: Vec<(Vec<f32>, usize)> = (0..c.word())
        .map(|_| {
            let width = c.word();
            let imatrix = c.word();
            (c.floats(width), imatrix)
        })
        .collect();
    assert!(c.0.is_empty(), "{dir}/inputs.bin: size");

    let outputs = read(&format!("{}.bin", W::NAME));
    let mut c = Cursor(&outputs);
    let (block_bytes, block_elems) = (c.word(), c.word());
    assert_eq!(
        (block_bytes, block_elems),
        (std::mem::size_of::<W::Block>(), W::BLOCK_ELEMS),
        "{}: block size and elements in the golden file",
        W::NAME
    );
    let cases = (0..c.word())
        .map(|_| {
            let row = c.word();
            let runs = if flagged { c.word() } else { 3 };
            let (x, imatrix) = &rows[row];
            let n = x.len() / block_elems * block_bytes;
            let plain = (runs & 1 != 0).then(|| c.bytes(n).to_vec());
            let weighted = (runs & 2 != 0).then(|| c.bytes(n).to_vec());
            QuantizeCase {
                row,
                x: x.clone(),
                imatrix: imatrices[*imatrix].clone(),
                plain,
                weighted,
            }
        })
        .collect();
    assert!(c.0.is_empty(), "{dir}/{}.bin: size", W::NAME);
    cases
}

/// `n` blocks of `W` with every byte zero.
pub fn zeroed_blocks<W: WeightType>(n: usize) -> Vec<W::Block> {
    blocks_from_bytes::<W>(&vec![0u8; n * std::mem::size_of::<W::Block>()])
}

/// The bytes of blocks as stored.
pub fn block_bytes<W: WeightType>(blocks: &[W::Block]) -> &[u8] {
    // SAFETY: every block type is a `#[repr(C)]` struct of integers and f16 without
    // padding (each format asserts its size), so all its bytes are initialised.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), std::mem::size_of_val(blocks)) }
}

/// `W::quantize_row` on every golden row, with and without the importance vector, must
/// give ggml's bytes exactly. Reports every block that differs (row, block, which run,
/// first differing byte) and fails if there is one.
pub fn check_quantize<W: Quantize>() {
    check_cases::<W>(&quantize_golden::<W>(false));
}

/// [`check_quantize`] for a format whose ggml quantizer may abort: where ggml finished
/// ours must give its bytes, and where ggml aborted ours must panic. Returns the blocks
/// compared and the aborts matched.
pub fn check_quantize_or_abort<W: Quantize>() -> (usize, usize) {
    check_cases::<W>(&quantize_golden::<W>(true))
}

fn check_cases<W: Quantize>(cases: &[QuantizeCase]) -> (usize, usize) {
    assert!(!cases.is_empty(), "{}: no golden rows", W::NAME);
    let size = std::mem::size_of::<W::Block>();
    let mut failures = Vec::new();
    let (mut n_blocks, mut n_aborts) = (0, 0);
    for case in cases {
        for (run, imatrix, want) in [
            ("without imatrix", None, &case.plain),
            ("with imatrix", Some(&case.imatrix[..]), &case.weighted),
        ] {
            let mut out = zeroed_blocks::<W>(case.x.len() / W::BLOCK_ELEMS);
            let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                W::quantize_row(&case.x, imatrix, &mut out)
            }));
            match (got, want) {
                (Ok(()), Some(want)) => {
                    n_blocks += out.len();
                    let got = block_bytes::<W>(&out);
                    for (b, (g, w)) in got
                        .chunks_exact(size)
                        .zip(want.chunks_exact(size))
                        .enumerate()
                    {
                        if let Some(k) = g.iter().zip(w).position(|(a, b)| a != b) {
                            failures.push(format!(
                                "{} row {} block {b} {run}: byte {k} is {:#04x}, ggml {:#04x}\n  \
                                 ours {g:02x?}\n  ggml {w:02x?}",
                                W::NAME,
                                case.row,
                                g[k],
                                w[k]
                            ));
                        }
                    }
                }
                (Err(_), None) => n_aborts += 1,
                (Ok(()), None) => failures.push(format!(
                    "{} row {} {run}: ggml aborts, ours returns",
                    W::NAME,
                    case.row
                )),
                (Err(_), Some(_)) => failures.push(format!(
                    "{} row {} {run}: ours panics, ggml returns",
                    W::NAME,
                    case.row
                )),
            }
        }
    }
    assert!(n_blocks > 0, "{}: no golden blocks", W::NAME);
    assert!(
        failures.is_empty(),
        "{} differences from ggml ({n_blocks} blocks compared, {n_aborts} aborts matched):\n{}",
        failures.len(),
        failures[..failures.len().min(8)].join("\n")
    );
    (n_blocks, n_aborts)
}

/// Quantizing and dequantizing a row of normal-looking weights (with outliers) must stay
/// close to it, with and without an importance vector, for a format with `levels` evenly
/// spaced quant values per block.
///
/// Rounding to a grid of step `s` leaves an RMS error of about `s / √12`, and a block
/// spread over `levels` values has `s = span / (levels - 1)`. On this row the RMS span
/// of a block of 32 (`2 max |x|`, the widest a format spans) is 6.3 times the row's RMS,
/// so the relative RMS error should stay below `6.3 / ((levels - 1) √12)`; a quarter
/// more leaves room for the searches' other choices. A wrong bit layout or scale gives
/// an error near 1.
pub fn check_quantize_round_trip<W: Quantize>(levels: u32) {
    round_trip::<W>(levels, &[false, true]);
}

/// [`check_quantize_round_trip`] with the importance vector only, for the formats that
/// need one.
pub fn check_quantize_round_trip_weighted<W: Quantize>(levels: u32) {
    round_trip::<W>(levels, &[true]);
}

/// The round trip of [`check_quantize_round_trip`], without and/or with the importance
/// vector (`weighted`).
fn round_trip<W: Quantize>(levels: u32, weighted: &[bool]) {
    let rel_limit = 1.25 * 6.3 / ((levels - 1) as f64 * 12f64.sqrt());
    let n = 4096;
    let x = activations(n, 7);
    let imatrix: Vec<f32> = activations(n, 8).iter().map(|v| v * v).collect();
    let rms = (x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64).sqrt();
    for &w in weighted {
        let mut blocks = zeroed_blocks::<W>(n / W::BLOCK_ELEMS);
        W::quantize_row(&x, w.then_some(&imatrix[..]), &mut blocks);
        let mut y = vec![0f32; n];
        W::dequantize_ref(&blocks, &mut y);
        let mse = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            / n as f64;
        let rel = mse.sqrt() / rms;
        assert!(
            rel <= rel_limit,
            "{} (imatrix: {w}): relative rms error {rel:.4} > {rel_limit}",
            W::NAME
        );
    }
}
