//! Throughput of the K-quant dot products (`WeightType::vec_dot`, the AVX2 kernels on this
//! build) as a matrix-vector product, in GB/s of weight bytes read.
//!
//! Three settings per format, for a 9216 x 3072 matrix (Minitron's FFN shape):
//! - L2: its first 256 rows again and again (at most ~1 MB), the kernel's compute speed;
//! - L3: the whole matrix again and again; it fits in L3 (32 MiB here);
//! - DRAM: a ring of such matrices totalling >= 512 MiB, so every pass streams from
//!   memory, on 1 and 2 threads (rows split in halves with scoped threads).
//!
//! Each figure is the best of several trials, since other processes share the machine.
//!
//! A plain streaming read of the same ring (u64 sums) gives the bandwidth ceiling that the
//! cold numbers are compared against.
//!
//! Run: `cargo run --release -p mcc-runtime --example kquant_bench [FORMAT...]`

use std::hint::black_box;
use std::time::Instant;

use half::f16;
use mcc_runtime::quant::q2_k::Q2_K;
use mcc_runtime::quant::q3_k::Q3_K;
use mcc_runtime::quant::q4_k::Q4_K;
use mcc_runtime::quant::q5_k::Q5_K;
use mcc_runtime::quant::q6_k::Q6_K;
use mcc_runtime::quant::q8_k::{BlockQ8K, Q8_K};
use mcc_runtime::quant::{ActType, WeightType};

const ROWS: usize = 9216;
const COLS: usize = 3072;
const RING_BYTES: usize = 512 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A matrix of random blocks; `f16_at` lists the byte offsets of the block's f16 scale
/// fields, which get sane small values instead of random bits.
fn random_matrix<W: WeightType>(rng: &mut Rng, f16_at: &[usize]) -> Vec<W::Block> {
    let n = ROWS * COLS / W::BLOCK_ELEMS;
    let size = std::mem::size_of::<W::Block>();
    let mut bytes = vec![0u8; n * size];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let r = rng.next().wrapping_add(i as u64).to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    for block in bytes.chunks_exact_mut(size) {
        for &off in f16_at {
            let v = f16::from_f32(0.001 + 0.05 * rng.unit());
            block[off..off + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    let mut blocks = Vec::<W::Block>::with_capacity(n);
    // SAFETY: K-quant blocks are plain integers and f16 (every bit pattern is valid), and
    // exactly n blocks' worth of bytes is copied into the reserved capacity.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            blocks.as_mut_ptr().cast::<u8>(),
            bytes.len(),
        );
        blocks.set_len(n);
    }
    blocks
}

fn matvec<W: WeightType<Act = Q8_K>>(m: &[W::Block], act: &[BlockQ8K], out: &mut [f32]) {
    let per_row = act.len();
    for (y, row) in out.iter_mut().zip(m.chunks_exact(per_row)) {
        *y = W::vec_dot(row, act);
    }
}

fn matvec_2t<W: WeightType<Act = Q8_K>>(m: &[W::Block], act: &[BlockQ8K], out: &mut [f32]) {
    let half_rows = out.len() / 2;
    let (m0, m1) = m.split_at(half_rows * act.len());
    let (o0, o1) = out.split_at_mut(half_rows);
    std::thread::scope(|s| {
        s.spawn(|| matvec::<W>(m0, act, o0));
        matvec::<W>(m1, act, o1);
    });
}

fn bench<W: WeightType<Act = Q8_K>>(f16_at: &[usize]) {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let bytes_per_matrix = ROWS * COLS / W::BLOCK_ELEMS * std::mem::size_of::<W::Block>();
    let ring_len = RING_BYTES.div_ceil(bytes_per_matrix);
    let ring: Vec<Vec<W::Block>> = (0..ring_len)
        .map(|_| random_matrix::<W>(&mut rng, f16_at))
        .collect();
    let x: Vec<f32> = (0..COLS).map(|_| rng.unit() * 2.0 - 1.0).collect();
    let mut act = vec![BlockQ8K::default(); COLS / 256];
    Q8_K::quantize(&x, &mut act);
    let mut out = vec![0f32; ROWS];
    let gbs = |bytes: usize, secs: f64| bytes as f64 / secs / 1e9;
    // Other processes share this machine: every figure is the best of several timed
    // trials, the closest to what the kernel does when it has a core to itself.
    let best_of = |trials: usize, mut run: Box<dyn FnMut() + '_>| -> f64 {
        (0..trials)
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };

    // hot: one matrix, L3-resident after the first pass
    let hot_secs = best_of(
        15,
        Box::new(|| matvec::<W>(black_box(&ring[0]), black_box(&act), &mut out)),
    );
    let hot = gbs(bytes_per_matrix, hot_secs);
    // L2: the first 256 rows (~1 MB of weights at most) again and again
    let l2_rows = 256 * act.len();
    let l2_secs = best_of(
        200,
        Box::new(|| {
            matvec::<W>(
                black_box(&ring[0][..l2_rows]),
                black_box(&act),
                &mut out[..256],
            )
        }),
    );
    let l2 = gbs(l2_rows * std::mem::size_of::<W::Block>(), l2_secs);

    // cold: stream the ring, 1 then 2 threads
    let ring_secs = |threads: usize, out: &mut [f32]| {
        let t = Instant::now();
        for m in &ring {
            if threads == 1 {
                matvec::<W>(black_box(m), black_box(&act), out);
            } else {
                matvec_2t::<W>(black_box(m), black_box(&act), out);
            }
        }
        t.elapsed().as_secs_f64()
    };
    let cold: Vec<f64> = [1, 2]
        .iter()
        .map(|&threads| {
            let secs = (0..5)
                .map(|_| ring_secs(threads, &mut out))
                .fold(f64::INFINITY, f64::min);
            gbs(ring_len * bytes_per_matrix, secs)
        })
        .collect();
    black_box(&out);
    let ns_per_block = std::mem::size_of::<W::Block>() as f64 / l2;
    println!(
        "{:5} {ROWS}x{COLS} ({:5.1} MB): L2 {l2:6.2} GB/s ({ns_per_block:5.2} ns/block), L3 {hot:6.2} GB/s, DRAM 1 thread {:6.2} GB/s, 2 threads {:6.2} GB/s",
        W::NAME,
        bytes_per_matrix as f64 / 1e6,
        cold[0],
        cold[1]
    );
}

/// Streaming read bandwidth over a ring of the same size (sum of u64s, vectorised).
fn read_bandwidth() {
    let words = RING_BYTES / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let read = |part: &[u64]| part.iter().fold(0u64, |a, &w| a.wrapping_add(w));
    for threads in [1usize, 2] {
        let secs = (0..5)
            .map(|_| {
                let t = Instant::now();
                let parts: Vec<&[u64]> = buf.chunks(words / threads).collect();
                std::thread::scope(|s| {
                    let handles: Vec<_> = parts
                        .iter()
                        .map(|p| s.spawn(|| read(black_box(p))))
                        .collect();
                    for h in handles {
                        black_box(h.join().expect("reader thread"));
                    }
                });
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let gbs = RING_BYTES as f64 / secs / 1e9;
        println!("plain read, {threads} thread(s): {gbs:6.2} GB/s");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a.eq_ignore_ascii_case(name));
    if want("read") {
        read_bandwidth();
    }
    // byte offsets of the f16 scale fields in each block
    if want("Q4_K") {
        bench::<Q4_K>(&[0, 2]);
    }
    if want("Q6_K") {
        bench::<Q6_K>(&[208]);
    }
    if want("Q5_K") {
        bench::<Q5_K>(&[0, 2]);
    }
    if want("Q3_K") {
        bench::<Q3_K>(&[108]);
    }
    if want("Q2_K") {
        bench::<Q2_K>(&[80, 82]);
    }
}
