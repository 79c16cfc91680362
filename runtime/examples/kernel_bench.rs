//! Decode-path throughput of `matmul::matvec` for the legacy and float formats, in GB/s
//! of weight bytes read, at Minitron's shapes (3072→9216 FFN up/gate, 9216→3072 FFN down,
//! 3072→128256 output), on 1 and 2 threads of `pool::Pool`. Also: a plain streaming read
//! of memory for the bandwidth ceiling, the pool's per-dispatch overhead, and the
//! activation quantizers' speed.
//!
//! The smaller matrices fit in L3 (32 MiB here), so each shape is measured over a ring of
//! distinct matrices of at least `RING_BYTES` in all, as in a model where every layer's
//! weights come from memory once per token. The ring is built from one random matrix
//! rotated by a different number of blocks per copy, so copies are distinct bytes.
//!
//! Other processes may share the machine: every figure is the best of several trials.
//!
//! Run: `cargo run --release -p mcc-runtime --example kernel_bench [FORMAT|read|pool|quant ...]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use mcc_runtime::matmul::{matvec, quantize_act};
use mcc_runtime::pool::Pool;
use mcc_runtime::quant::bf16::BF16;
use mcc_runtime::quant::f16::F16;
use mcc_runtime::quant::q4_0::Q4_0;
use mcc_runtime::quant::q4_1::Q4_1;
use mcc_runtime::quant::q5_0::Q5_0;
use mcc_runtime::quant::q5_1::Q5_1;
use mcc_runtime::quant::q8_0::Q8_0;
use mcc_runtime::quant::q8_1::Q8_1;
use mcc_runtime::quant::{ActBlock, ActType, WeightType};

/// (cols, rows) of each benchmarked matrix: input width → output rows.
const SHAPES: [(usize, usize); 3] = [(3072, 9216), (9216, 3072), (3072, 128256)];
const RING_BYTES: usize = 512 << 20;
/// Minimum measured time per configuration.
const MIN_TIME: Duration = Duration::from_millis(600);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    fn signed_unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `n` random blocks of `W`. Quant bytes are random; `f16_at` lists the byte offsets of
/// the block's f16 fields, which get sane values (|v| in [1e-3, 0.1]) so that no lane
/// computes with NaN or subnormal scales. Float formats pass their own generator.
fn random_blocks<W: WeightType>(rng: &mut Rng, n: usize, f16_at: &[usize]) -> Vec<W::Block> {
    let size = size_of::<W::Block>();
    let mut bytes = vec![0u8; n * size];
    for chunk in bytes.chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    for block in bytes.chunks_exact_mut(size) {
        for &off in f16_at {
            let v = f16::from_f32(rng.signed_unit() * 0.1).max(f16::from_f32(1e-3));
            block[off..off + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    from_bytes::<W>(&bytes)
}

fn from_bytes<W: WeightType>(bytes: &[u8]) -> Vec<W::Block> {
    let n = bytes.len() / size_of::<W::Block>();
    let mut blocks = Vec::<W::Block>::with_capacity(n);
    // SAFETY: the block types are plain integers and f16 (every bit pattern is valid),
    // and exactly n blocks' worth of bytes is copied into the reserved capacity.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            blocks.as_mut_ptr().cast::<u8>(),
            n * size_of::<W::Block>(),
        );
        blocks.set_len(n);
    }
    blocks
}

/// Runs `f` until `MIN_TIME` has passed (at least 3 times); returns the fastest run.
fn best_time(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < MIN_TIME {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

/// matvec GB/s for every shape and thread count. `make` builds `n` blocks.
fn bench<W: WeightType>(pools: &[Pool], make: impl Fn(&mut Rng, usize) -> Vec<W::Block>) {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for (cols, rows) in SHAPES {
        let per_matrix = rows * cols / W::BLOCK_ELEMS;
        let matrix_bytes = per_matrix * size_of::<W::Block>();
        let copies = RING_BYTES.div_ceil(matrix_bytes);
        // One buffer: the random matrix, then rotated copies of it.
        let base = make(&mut rng, per_matrix);
        let mut ring = Vec::with_capacity(per_matrix * copies);
        for c in 0..copies {
            let shift = (c * 7919) % per_matrix;
            ring.extend_from_slice(&base[shift..]);
            ring.extend_from_slice(&base[..shift]);
        }
        drop(base);
        let x: Vec<f32> = (0..cols).map(|_| rng.signed_unit() * 2.0).collect();
        let mut act: Vec<ActBlock<W>> = Vec::new();
        quantize_act::<W::Act>(&x, cols, &mut act);
        let mut out = vec![0f32; rows];
        let mut line = format!(
            "{:5} {cols:6}→{rows:<6} ({:6.1} MB ×{copies:2}):",
            W::NAME,
            matrix_bytes as f64 / 1e6
        );
        for pool in pools {
            let secs = best_time(|| {
                for m in ring.chunks_exact(per_matrix) {
                    matvec::<W>(pool, black_box(m), black_box(&act), &mut out);
                }
            });
            let gbs = (matrix_bytes * copies) as f64 / secs / 1e9;
            let us = secs / copies as f64 * 1e6;
            line += &format!("  {} thr {gbs:6.2} GB/s ({us:8.1} µs)", pool.n_threads());
        }
        black_box(&out);
        println!("{line}");
    }
}

/// Streaming read bandwidth over `RING_BYTES` (u64 sums, vectorised), split across the
/// pool's threads.
fn read_bandwidth(pools: &[Pool]) {
    let words = RING_BYTES / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    for pool in pools {
        let n = pool.n_threads();
        let secs = best_time(|| {
            pool.run(&|i, n| {
                let part = &buf[i * words / n..(i + 1) * words / n];
                black_box(part.iter().fold(0u64, |a, &w| a.wrapping_add(w)));
            });
        });
        println!(
            "plain read, {n} thread(s): {:6.2} GB/s",
            RING_BYTES as f64 / secs / 1e9
        );
    }
}

/// Cost of one `Pool::run` of an empty job: the median of 200 batches of 1000 runs.
fn pool_overhead(pools: &[Pool]) {
    for pool in pools {
        let mut per_batch: Vec<f64> = (0..200)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..1000 {
                    pool.run(&|i, _| {
                        black_box(i);
                    });
                }
                t.elapsed().as_secs_f64() / 1000.0
            })
            .collect();
        per_batch.sort_by(f64::total_cmp);
        println!(
            "pool dispatch, {} thread(s): median {:.2} µs, best {:.2} µs per run",
            pool.n_threads(),
            per_batch[100] * 1e6,
            per_batch[0] * 1e6
        );
    }
}

/// Activation quantization speed (one 3072-wide row and 512 rows, single thread).
fn quantize_speed() {
    fn one<A: ActType>() {
        let mut rng = Rng(7);
        for n_rows in [1usize, 512] {
            let x: Vec<f32> = (0..3072 * n_rows).map(|_| rng.signed_unit()).collect();
            let mut act = Vec::new();
            let secs = best_time(|| quantize_act::<A>(black_box(&x), 3072, &mut act));
            println!(
                "quantize {:4} {n_rows:3} × 3072: {:8.2} µs ({:5.2} GB/s of f32)",
                A::NAME,
                secs * 1e6,
                x.len() as f64 * 4.0 / secs / 1e9
            );
        }
    }
    one::<Q8_0>();
    one::<Q8_1>();
    one::<F16>();
    one::<BF16>();
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a.eq_ignore_ascii_case(name));
    let pools = [Pool::new(1), Pool::new(2)];
    if want("pool") {
        pool_overhead(&pools);
    }
    if want("read") {
        read_bandwidth(&pools);
    }
    if want("quant") {
        quantize_speed();
    }
    if want("Q4_0") {
        bench::<Q4_0>(&pools, |r, n| random_blocks::<Q4_0>(r, n, &[0]));
    }
    if want("Q4_1") {
        bench::<Q4_1>(&pools, |r, n| random_blocks::<Q4_1>(r, n, &[0, 2]));
    }
    if want("Q5_0") {
        bench::<Q5_0>(&pools, |r, n| random_blocks::<Q5_0>(r, n, &[0]));
    }
    if want("Q5_1") {
        bench::<Q5_1>(&pools, |r, n| random_blocks::<Q5_1>(r, n, &[0, 2]));
    }
    if want("Q8_0") {
        bench::<Q8_0>(&pools, |r, n| random_blocks::<Q8_0>(r, n, &[0]));
    }
    if want("F16") {
        bench::<F16>(&pools, |r, n| {
            (0..n).map(|_| f16::from_f32(r.signed_unit())).collect()
        });
    }
    if want("BF16") {
        bench::<BF16>(&pools, |r, n| {
            (0..n).map(|_| bf16::from_f32(r.signed_unit())).collect()
        });
    }
}
