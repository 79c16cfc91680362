//! Decode-path kernel throughput: `matmul::matvec` (one token, the kernels a generated
//! model calls for every weight matrix) for each of the 22 weight types and the
//! compiler's 8-row-interleaved Q4_K, Q4_0, IQ4_NL, IQ4_XS and Q6_K (`Q4_KX8`, `Q4_0X8`,
//! `IQ4_NLX8`, `IQ4_XSX8`, `Q6_KX8`), in GB/s of
//! weight bytes read, at Minitron's shapes (3072→9216 FFN gate/up, 9216→3072 FFN down,
//! 3072→128256 output), on 1 and 2 threads of `pool::Pool`, next to the machine's read
//! bandwidth measured in the same process, and the fraction of it each kernel reaches.
//!
//! Weights come from memory, as in a model where every layer's matrices are read once per
//! token: each (type, shape) is timed over a ring of distinct random matrices of at least
//! 256 MiB (8× this machine's 32 MiB L3; 128 MiB with `--quick`), one pass = one matvec
//! per matrix. Blocks are random bytes with their f16 scales replaced by sane values
//! (±[2^-10, 2^-4)), so no lane computes with NaN, infinities or subnormals; float
//! weights are random with magnitudes in [0.5, 1). Every grid and level index is valid
//! for any bits, so random bytes are valid blocks of every format.
//!
//! Read bandwidth: each pool thread sums (u64 adds into four 256-bit accumulators, as
//! bench/readbw.c) its share of a 512 MiB buffer. The machine is shared and its bandwidth
//! moves by 2x within a minute (26 to 63 GB/s at 2 threads in one run), so every figure
//! is paired with its own: the kernel's passes and read passes alternate within the
//! figure's time budget, and `%read` is the kernel's best pass over the best read pass of
//! the same window and thread count. The `read` column shows that bandwidth.
//!
//! Every figure is the fastest pass within its time budget (at least 3 passes), the one
//! least disturbed by other processes. The load average is printed at the start and the
//! end.
//!
//! Run: `cargo run --release -p mcc-runtime --example matvec_bench -- [FLAGS]`
//!   --types Q4_0,IQ4_NL,...   weight types (default: all 27)
//!   --shapes 3072x9216,...    IN x OUT (default: 3072x9216,9216x3072,3072x128256)
//!   --threads 1,2             pool sizes (default: 1,2)
//!   --quick                   128 MiB rings, 80 ms per figure (a ~30 s smoke run)
//!   --hot                     one matrix instead of a ring: in-cache kernel speed for
//!                             the shapes that fit in L3
//!   --tokens N                prompt batches instead: `matmul` of one matrix with N
//!                             tokens, in GMAC/s (multiply-adds per second; the
//!                             prefill kernels are compute-bound, so no %read)

use std::hint::black_box;
use std::mem::offset_of;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mcc_runtime::matmul::{matmul, matvec, quantize_act};
use mcc_runtime::pool::Pool;
use mcc_runtime::quant::bf16::BF16;
use mcc_runtime::quant::f16::F16;
use mcc_runtime::quant::f32::F32;
use mcc_runtime::quant::iq1_m::{BlockIQ1M, IQ1_M};
use mcc_runtime::quant::iq1_s::{BlockIQ1S, IQ1_S};
use mcc_runtime::quant::iq2_s::{BlockIQ2S, IQ2_S};
use mcc_runtime::quant::iq2_xs::{BlockIQ2XS, IQ2_XS};
use mcc_runtime::quant::iq2_xxs::{BlockIQ2XXS, IQ2_XXS};
use mcc_runtime::quant::iq3_s::{BlockIQ3S, IQ3_S};
use mcc_runtime::quant::iq3_xxs::{BlockIQ3XXS, IQ3_XXS};
use mcc_runtime::quant::iq4_nl::{BlockIQ4NL, IQ4_NL};
use mcc_runtime::quant::iq4_xs::{BlockIQ4XS, IQ4_XS};
use mcc_runtime::quant::iq4_xs_x8::{BlockIQ4XSX8, IQ4_XSX8};
use mcc_runtime::quant::q2_k::{BlockQ2K, Q2_K};
use mcc_runtime::quant::q3_k::{BlockQ3K, Q3_K};
use mcc_runtime::quant::q4_0::{BlockQ4_0, Q4_0};
use mcc_runtime::quant::q4_1::{BlockQ4_1, Q4_1};
use mcc_runtime::quant::q4_k::{BlockQ4K, Q4_K};
use mcc_runtime::quant::q4_k_x8::{BlockQ4KX8, Q4_KX8};
use mcc_runtime::quant::q4_x8::{BlockX8, IQ4_NLX8, Q4_0X8};
use mcc_runtime::quant::q5_0::{BlockQ5_0, Q5_0};
use mcc_runtime::quant::q5_1::{BlockQ5_1, Q5_1};
use mcc_runtime::quant::q5_k::{BlockQ5K, Q5_K};
use mcc_runtime::quant::q6_k::{BlockQ6K, Q6_K};
use mcc_runtime::quant::q6_k_x8::{BlockQ6KX8, Q6_KX8};
use mcc_runtime::quant::q8_0::{BlockQ8_0, Q8_0};
use mcc_runtime::quant::{ActBlock, ActType, WeightType};

/// Every weight type a model may hold, in the order of the table.
const TYPES: [&str; 27] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_0X8", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
    "Q4_KX8", "Q5_K", "Q6_K", "Q6_KX8", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS",
    "IQ3_S", "IQ4_NL", "IQ4_NLX8", "IQ4_XS", "IQ4_XSX8",
];
/// Minitron's decode matrices, (input width, output rows).
const SHAPES: [(usize, usize); 3] = [(3072, 9216), (9216, 3072), (3072, 128256)];
const READ_BYTES: usize = 512 << 20;

struct Opts {
    types: Vec<&'static str>,
    shapes: Vec<(usize, usize)>,
    threads: Vec<usize>,
    ring_bytes: usize,
    budget: Duration,
    hot: bool,
    tokens: usize,
}

const USAGE: &str = "usage: matvec_bench [--types T,...] [--shapes INxOUT,...] [--threads N,...] \
                     [--quick] [--hot] [--tokens N]";

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut opts = Opts {
        types: TYPES.to_vec(),
        shapes: SHAPES.to_vec(),
        threads: vec![1, 2],
        ring_bytes: 256 << 20,
        budget: Duration::from_millis(300),
        hot: false,
        tokens: 1,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()))
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--types" => {
                opts.types = value()?
                    .map(|t| {
                        TYPES
                            .iter()
                            .copied()
                            .find(|k| k.eq_ignore_ascii_case(t))
                            .ok_or_else(|| {
                                format!("unknown type {t:?}; known: {}", TYPES.join(" "))
                            })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--shapes" => {
                opts.shapes = value()?
                    .map(|s| {
                        let (i, o) = s
                            .split_once(['x', 'X'])
                            .ok_or_else(|| format!("shape {s:?} is not INxOUT"))?;
                        let num = |v: &str| {
                            v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                                format!("shape {s:?}: {v:?} is not a positive number")
                            })
                        };
                        Ok((num(i)?, num(o)?))
                    })
                    .collect::<Result<_, String>>()?;
            }
            "--threads" => {
                opts.threads = value()?
                    .map(|n| {
                        n.parse::<usize>()
                            .ok()
                            .filter(|&n| (1..=256).contains(&n))
                            .ok_or_else(|| format!("--threads: {n:?} is not 1..256"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--quick" => {
                opts.ring_bytes = 128 << 20;
                opts.budget = Duration::from_millis(80);
            }
            "--hot" => opts.hot = true,
            "--tokens" => {
                let v: Vec<&str> = value()?.collect();
                opts.tokens = match v[..] {
                    [n] => n.parse().ok().filter(|&n| (1..=4096).contains(&n)),
                    _ => None,
                }
                .ok_or_else(|| format!("--tokens: {v:?} is not one number 1..4096"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if opts.types.is_empty() || opts.shapes.is_empty() || opts.threads.is_empty() {
        return Err("empty --types, --shapes or --threads".into());
    }
    Ok(opts)
}

/// xorshift64: a fast deterministic filler.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// How random bytes are made into sane blocks of one type.
enum Fill {
    /// f32 weights: sign and mantissa random, exponent fixed, so |w| in [0.5, 1).
    F32,
    /// f16 / bf16 weights: the same, with these exponent bits and masks.
    Half { keep: u16, set: u16 },
    /// The f16 scale fields at these byte offsets of each block get a sane value.
    Scales(Vec<usize>),
    /// IQ1_M: the f16 super-block scale lives in the top nibbles of the four u16 scale
    /// words starting at this byte offset.
    ScaleNibbles(usize),
    /// Q4_KX8: the 16 f16 `d` / `dmin` get sane values and the unpacked scales and
    /// minimums 6 bits, as 8 interleaved Q4_K rows have.
    Q4KX8,
    /// IQ4_XSX8: the 8 f16 `d` get sane values and the unpacked sub-block scales the
    /// range of `ls - 32` (-32..=31), as 8 interleaved IQ4_XS rows have.
    IQ4XSX8,
}

/// A sane f16 block scale: random sign and mantissa, exponent 2^-10 .. 2^-5.
fn sane_scale(r: u64) -> u16 {
    let exponent = 5 + (r >> 16) % 6; // biased: 5..=10 -> 2^-10 .. 2^-5
    (r as u16 & 0x83ff) | ((exponent as u16) << 10)
}

/// `n` random blocks of `W`, made sane by `fill`.
fn random_blocks<W: WeightType>(rng: &mut Rng, n: usize, fill: &Fill) -> Vec<W::Block> {
    let size = size_of::<W::Block>();
    let mut blocks = Vec::<W::Block>::with_capacity(n);
    // SAFETY: every block type is plain integers and f16/bf16/f32 (any bits are a valid
    // value); all n * size bytes of the reserved capacity are written before set_len.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), n * size) };
    let mut words = bytes.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&rng.next().to_le_bytes());
    }
    let tail = words.into_remainder();
    let last = rng.next().to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
    match fill {
        Fill::F32 => {
            for w in bytes.chunks_exact_mut(4) {
                let bits = u32::from_le_bytes(w.try_into().unwrap()) & 0x807f_ffff | 0x3f00_0000;
                w.copy_from_slice(&bits.to_le_bytes());
            }
        }
        Fill::Half { keep, set } => {
            for w in bytes.chunks_exact_mut(2) {
                let bits = u16::from_le_bytes([w[0], w[1]]) & keep | set;
                w.copy_from_slice(&bits.to_le_bytes());
            }
        }
        Fill::Scales(offsets) => {
            for block in bytes.chunks_exact_mut(size) {
                for &at in offsets {
                    block[at..at + 2].copy_from_slice(&sane_scale(rng.next()).to_le_bytes());
                }
            }
        }
        Fill::Q4KX8 => {
            // every bit pattern of the packed 6-bit scales is valid: only d and dmin
            let (d, dmin) = (offset_of!(BlockQ4KX8, d), offset_of!(BlockQ4KX8, dmin));
            for block in bytes.chunks_exact_mut(size) {
                for at in (d..d + 16).chain(dmin..dmin + 16).step_by(2) {
                    block[at..at + 2].copy_from_slice(&sane_scale(rng.next()).to_le_bytes());
                }
            }
        }
        Fill::IQ4XSX8 => {
            let d = offset_of!(BlockIQ4XSX8, d);
            let (sc, qs) = (
                offset_of!(BlockIQ4XSX8, scales),
                offset_of!(BlockIQ4XSX8, qs),
            );
            for block in bytes.chunks_exact_mut(size) {
                for at in (d..d + 16).step_by(2) {
                    block[at..at + 2].copy_from_slice(&sane_scale(rng.next()).to_le_bytes());
                }
                for b in &mut block[sc..qs] {
                    *b = (*b & 63).wrapping_sub(32);
                }
            }
        }
        Fill::ScaleNibbles(at) => {
            for block in bytes.chunks_exact_mut(size) {
                let d = sane_scale(rng.next());
                for k in 0..4 {
                    let hi = at + 2 * k + 1; // high byte of word k
                    block[hi] = (block[hi] & 0x0f) | (((d >> (4 * k)) & 0xf) as u8) << 4;
                }
            }
        }
    }
    // SAFETY: all n blocks were written above.
    unsafe { blocks.set_len(n) };
    blocks
}

/// Runs `pass` until `budget` has passed and at least 3 times (after one warm-up pass);
/// returns the fastest pass in seconds.
fn best_pass(budget: Duration, mut pass: impl FnMut()) -> f64 {
    pass();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let t = Instant::now();
        pass();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

/// Alternates passes of `a` and `b` (after one warm-up pass of each) until `budget` has
/// passed and each ran at least 3 times; returns the fastest pass of each in seconds, so
/// that both are measured over the same stretch of a shared machine's time.
fn best_pair(budget: Duration, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    a();
    b();
    let start = Instant::now();
    let (mut best_a, mut best_b) = (f64::INFINITY, f64::INFINITY);
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let t = Instant::now();
        a();
        best_a = best_a.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        b();
        best_b = best_b.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    (best_a, best_b)
}

/// Sum of 64-bit words, four 256-bit accumulators (the loads are the limit, not the adds).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn sum_words(words: &[u64]) -> u64 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    fn sum(words: &[u64]) -> u64 {
        let mut acc = [_mm256_setzero_si256(); 4];
        for chunk in words.chunks_exact(16) {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: chunk holds 16 u64 = 4 x 32 readable bytes; unaligned loads.
                let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().add(4 * k).cast()) };
                *a = _mm256_add_epi64(*a, v);
            }
        }
        let s = _mm256_add_epi64(
            _mm256_add_epi64(acc[0], acc[1]),
            _mm256_add_epi64(acc[2], acc[3]),
        );
        _mm256_extract_epi64::<0>(s) as u64
    }
    // SAFETY: the build enables AVX2 (cfg above).
    unsafe { sum(words) }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn sum_words(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |a, &w| a.wrapping_add(w))
}

/// One streaming read pass of `buf` on `pool`: every thread sums its share.
fn read_pass(pool: &Pool, buf: &[u64]) {
    let words = buf.len();
    pool.run(&|i, n| {
        let part = &buf[i * words / n..(i + 1) * words / n];
        black_box(sum_words(part));
    });
}

/// Streaming read GB/s of each pool over `buf`.
fn read_bandwidth(pools: &[Pool], buf: &[u64], budget: Duration) -> Vec<f64> {
    pools
        .iter()
        .map(|pool| READ_BYTES as f64 / best_pass(budget, || read_pass(pool, buf)) / 1e9)
        .collect()
}

/// Per shape: the MB of one matrix and, on each pool, the GB/s of `W`'s matvec and the
/// read GB/s measured alongside (with `--tokens`: the GMAC/s of the batch and no read
/// figure, NaN); `None` where the shape's input width is not a whole number of blocks.
type Figures = Vec<Option<(f64, Vec<(f64, f64)>)>>;

fn bench<W: WeightType>(opts: &Opts, pools: &[Pool], read_buf: &[u64], fill: &Fill) -> Figures {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut results = Vec::new();
    for &(cols, rows) in &opts.shapes {
        if cols % W::BLOCK_ELEMS != 0 || cols % W::Act::BLOCK_ELEMS != 0 {
            results.push(None);
            continue;
        }
        let per_matrix = rows / W::ROW_GROUP * cols / W::BLOCK_ELEMS;
        let matrix_bytes = per_matrix * size_of::<W::Block>();
        let copies = if opts.hot || opts.tokens > 1 {
            1
        } else {
            opts.ring_bytes.div_ceil(matrix_bytes)
        };
        let ring = random_blocks::<W>(&mut rng, per_matrix * copies, fill);
        let x: Vec<f32> = (0..cols * opts.tokens)
            .map(|_| (rng.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect();
        let mut act: Vec<ActBlock<W>> = Vec::new();
        quantize_act::<W::Act>(&x, cols, &mut act);
        let mut out = vec![0f32; rows * opts.tokens];
        let figures = pools
            .iter()
            .map(|pool| {
                if opts.tokens > 1 {
                    let secs = best_pass(opts.budget, || {
                        matmul::<W>(
                            pool,
                            black_box(&ring),
                            black_box(&act),
                            opts.tokens,
                            &mut out,
                        )
                    });
                    let macs = (rows * cols * opts.tokens) as f64;
                    return (macs / secs / 1e9, f64::NAN);
                }
                let (secs, read_secs) = best_pair(
                    opts.budget,
                    || {
                        for m in ring.chunks_exact(per_matrix) {
                            matvec::<W>(pool, black_box(m), black_box(&act), &mut out);
                        }
                    },
                    || read_pass(pool, read_buf),
                );
                (
                    (matrix_bytes * copies) as f64 / secs / 1e9,
                    READ_BYTES as f64 / read_secs / 1e9,
                )
            })
            .collect();
        black_box(&out);
        results.push(Some((matrix_bytes as f64 / 1e6, figures)));
    }
    results
}

/// Dispatches a type name to its monomorphised benchmark, with its block filler.
fn bench_type(name: &str, opts: &Opts, pools: &[Pool], read_buf: &[u64]) -> Figures {
    let scales = |v: &[usize]| Fill::Scales(v.to_vec());
    let x8_scales = Fill::Scales((0..8).map(|r| offset_of!(BlockX8, d) + 2 * r).collect());
    match name {
        "F32" => bench::<F32>(opts, pools, read_buf, &Fill::F32),
        "F16" => bench::<F16>(
            opts,
            pools,
            read_buf,
            &Fill::Half {
                keep: 0x83ff,
                set: 0x3800,
            },
        ),
        "BF16" => bench::<BF16>(
            opts,
            pools,
            read_buf,
            &Fill::Half {
                keep: 0x807f,
                set: 0x3f00,
            },
        ),
        "Q4_0" => bench::<Q4_0>(opts, pools, read_buf, &scales(&[offset_of!(BlockQ4_0, d)])),
        "Q4_1" => bench::<Q4_1>(
            opts,
            pools,
            read_buf,
            &scales(&[offset_of!(BlockQ4_1, d), offset_of!(BlockQ4_1, m)]),
        ),
        "Q5_0" => bench::<Q5_0>(opts, pools, read_buf, &scales(&[offset_of!(BlockQ5_0, d)])),
        "Q5_1" => bench::<Q5_1>(
            opts,
            pools,
            read_buf,
            &scales(&[offset_of!(BlockQ5_1, d), offset_of!(BlockQ5_1, m)]),
        ),
        "Q8_0" => bench::<Q8_0>(opts, pools, read_buf, &scales(&[offset_of!(BlockQ8_0, d)])),
        "Q2_K" => bench::<Q2_K>(
            opts,
            pools,
            read_buf,
            &scales(&[offset_of!(BlockQ2K, d), offset_of!(BlockQ2K, dmin)]),
        ),
        "Q3_K" => bench::<Q3_K>(opts, pools, read_buf, &scales(&[offset_of!(BlockQ3K, d)])),
        "Q4_K" => bench::<Q4_K>(
            opts,
            pools,
            read_buf,
            &scales(&[offset_of!(BlockQ4K, d), offset_of!(BlockQ4K, dmin)]),
        ),
        "Q4_KX8" => bench::<Q4_KX8>(opts, pools, read_buf, &Fill::Q4KX8),
        "Q4_0X8" => bench::<Q4_0X8>(opts, pools, read_buf, &x8_scales),
        "IQ4_NLX8" => bench::<IQ4_NLX8>(opts, pools, read_buf, &x8_scales),
        "Q5_K" => bench::<Q5_K>(
            opts,
            pools,
            read_buf,
            &scales(&[offset_of!(BlockQ5K, d), offset_of!(BlockQ5K, dmin)]),
        ),
        "Q6_K" => bench::<Q6_K>(opts, pools, read_buf, &scales(&[offset_of!(BlockQ6K, d)])),
        // the 8 rows' f16 `d`; every scale and quant byte is valid as it comes
        "Q6_KX8" => {
            let d = offset_of!(BlockQ6KX8, d);
            let offsets: Vec<usize> = (d..d + 16).step_by(2).collect();
            bench::<Q6_KX8>(opts, pools, read_buf, &scales(&offsets))
        }
        "IQ1_S" => bench::<IQ1_S>(opts, pools, read_buf, &scales(&[offset_of!(BlockIQ1S, d)])),
        "IQ1_M" => bench::<IQ1_M>(
            opts,
            pools,
            read_buf,
            &Fill::ScaleNibbles(offset_of!(BlockIQ1M, scales)),
        ),
        "IQ2_XXS" => bench::<IQ2_XXS>(
            opts,
            pools,
            read_buf,
            &scales(&[offset_of!(BlockIQ2XXS, d)]),
        ),
        "IQ2_XS" => bench::<IQ2_XS>(opts, pools, read_buf, &scales(&[offset_of!(BlockIQ2XS, d)])),
        "IQ2_S" => bench::<IQ2_S>(opts, pools, read_buf, &scales(&[offset_of!(BlockIQ2S, d)])),
        "IQ3_XXS" => bench::<IQ3_XXS>(
            opts,
            pools,
            read_buf,
            &scales(&[offset_of!(BlockIQ3XXS, d)]),
        ),
        "IQ3_S" => bench::<IQ3_S>(opts, pools, read_buf, &scales(&[offset_of!(BlockIQ3S, d)])),
        "IQ4_NL" => bench::<IQ4_NL>(opts, pools, read_buf, &scales(&[offset_of!(BlockIQ4NL, d)])),
        "IQ4_XS" => bench::<IQ4_XS>(opts, pools, read_buf, &scales(&[offset_of!(BlockIQ4XS, d)])),
        "IQ4_XSX8" => bench::<IQ4_XSX8>(opts, pools, read_buf, &Fill::IQ4XSX8),
        other => unreachable!("{other} is not in TYPES"),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("matvec_bench: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let started = Instant::now();
    let pools: Vec<Pool> = opts.threads.iter().map(|&n| Pool::new(n)).collect();
    let read_budget = opts.budget.max(Duration::from_millis(500));
    println!(
        "matvec_bench: {} types x {} shapes, threads {:?}, {} MiB rings{}, best pass of {} ms \
         per figure; load average {}",
        opts.types.len(),
        opts.shapes.len(),
        opts.threads,
        opts.ring_bytes >> 20,
        if opts.tokens > 1 {
            format!(" (--tokens {}: one matrix, prompt batches)", opts.tokens)
        } else if opts.hot {
            " (--hot: one matrix)".into()
        } else {
            String::new()
        },
        opts.budget.as_millis(),
        load_average()
    );
    let read_buf: Vec<u64> = (0..(READ_BYTES / 8) as u64).collect();
    let read_before = read_bandwidth(&pools, &read_buf, read_budget);

    let mut header = format!("{:8} {:>13} {:>8}", "type", "shape", "MB");
    for &n in &opts.threads {
        header += &if opts.tokens > 1 {
            format!(" {:>11}", format!("{n}t GMAC/s"))
        } else {
            format!(" {:>9} {:>6} {:>6}", format!("{n}t GB/s"), "read", "%read")
        };
    }
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for &ty in &opts.types {
        rows.push((ty, bench_type(ty, &opts, &pools, &read_buf)));
    }
    let read_after = read_bandwidth(&pools, &read_buf, read_budget);
    for (ty, results) in &rows {
        for (&(cols, out_rows), figures) in opts.shapes.iter().zip(results) {
            let shape = format!("{cols}→{out_rows}");
            let Some((mb, figures)) = figures else {
                lines.push(format!(
                    "{ty:8} {shape:>13}  (input width is not whole blocks)"
                ));
                continue;
            };
            let mut line = format!("{ty:8} {shape:>13} {mb:8.1}");
            for (v, bw) in figures {
                line += &if bw.is_nan() {
                    format!(" {v:11.1}")
                } else {
                    format!(" {v:9.2} {bw:6.1} {:5.0}%", 100.0 * v / bw)
                };
            }
            lines.push(line);
        }
    }
    let fmt_bw = |v: &[f64]| {
        opts.threads
            .iter()
            .zip(v)
            .map(|(n, g)| format!("{n}t {g:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "read bandwidth GB/s ({} MiB buffer): before {}; after {}",
        READ_BYTES >> 20,
        fmt_bw(&read_before),
        fmt_bw(&read_after)
    );
    println!("{header}");
    for l in lines {
        println!("{l}");
    }
    println!(
        "{:.0} s; load average {}; read = read bandwidth GB/s measured in the same window \
         (alternating passes); %read = matvec GB/s / read",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    ExitCode::SUCCESS
}
