//! Throughput of the i-quant dot products (`WeightType::vec_dot`: the AVX2 kernels on an
//! AVX2 + FMA build) in a matrix-vector product, in GB/s of weight bytes read.
//!
//! For each format, a 9216 x 3072 matrix (Minitron's FFN shape) of random blocks:
//! - `hot`: one thread, the same matrix over and over. It fits in L3, so this is what the
//!   kernel can compute, not what memory can feed.
//! - `cold`: a ring of distinct matrices of 256 MiB in all, streamed from DRAM by 1 and by
//!   2 threads (each thread takes half of every matrix's rows through the whole ring, so
//!   the only synchronisation is one join per pass).
//!
//! Every figure is the best of several runs: the machine is shared with other work, and the
//! fastest run is the least disturbed one.
//!
//! `read` streams the same amount of plain memory (u64 sums) on 1 and 2 threads: the
//! bandwidth ceiling the cold figures are compared with.
//!
//! `ratio` pairs IQ4_XS 2-thread DRAM matvec passes with plain 2-thread read passes and
//! prints the median ratio of the pairs: the fraction of the memory bandwidth reached.
//!
//! Run: `cargo run --release -p mcc-runtime --example iquant_bench [read | ratio] [FORMAT...]`

use std::hint::black_box;
use std::time::Instant;

use half::f16;
use mcc_runtime::quant::iq1_m::IQ1_M;
use mcc_runtime::quant::iq1_s::IQ1_S;
use mcc_runtime::quant::iq2_s::IQ2_S;
use mcc_runtime::quant::iq2_xs::IQ2_XS;
use mcc_runtime::quant::iq2_xxs::IQ2_XXS;
use mcc_runtime::quant::iq3_s::IQ3_S;
use mcc_runtime::quant::iq3_xxs::IQ3_XXS;
use mcc_runtime::quant::iq4_nl::IQ4_NL;
use mcc_runtime::quant::iq4_xs::IQ4_XS;
use mcc_runtime::quant::{ActBlock, ActType, WeightType};

const ROWS: usize = 9216;
const COLS: usize = 3072;
const RING_BYTES: usize = 256 << 20;

/// xorshift64: fast, deterministic filler.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A sane block scale: small, positive or negative.
    fn scale(&mut self) -> f16 {
        let v = 0.001 + 0.05 * (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        f16::from_f32(if self.next() & 1 == 0 { v } else { -v })
    }
}

/// Where a format keeps its f16 super-block scale, so random bytes can be given a sane one.
#[derive(Clone, Copy)]
enum ScaleField {
    /// A plain f16 at this byte offset.
    At(usize),
    /// IQ1_M: spread over the top nibbles of four u16 words from this byte offset.
    Nibbles(usize),
}

fn random_matrix<W: WeightType>(rng: &mut Xorshift, scale: ScaleField) -> Vec<W::Block> {
    let n = ROWS * COLS / W::BLOCK_ELEMS;
    let size = std::mem::size_of::<W::Block>();
    let mut bytes: Vec<u8> = (0..n * size).map(|_| rng.next() as u8).collect();
    for block in bytes.chunks_exact_mut(size) {
        let d = rng.scale().to_bits();
        match scale {
            ScaleField::At(off) => block[off..off + 2].copy_from_slice(&d.to_le_bytes()),
            ScaleField::Nibbles(off) => {
                for k in 0..4 {
                    let at = off + 2 * k + 1; // high byte of word k
                    block[at] = (block[at] & 0x0f) | ((d >> (4 * k)) as u8 & 0x0f) << 4;
                }
            }
        }
    }
    let mut blocks = Vec::<W::Block>::with_capacity(n);
    // SAFETY: the IQ blocks are plain integers and f16, valid for any bits, and exactly
    // `n` blocks' worth of bytes is copied into the reserved capacity.
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

/// `out[r] = row r · act` for the rows in `rows`.
fn matvec<W: WeightType>(
    m: &[W::Block],
    act: &[ActBlock<W>],
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let per_row = COLS / W::BLOCK_ELEMS;
    for (y, r) in out.iter_mut().zip(rows) {
        *y = W::vec_dot(&m[r * per_row..(r + 1) * per_row], act);
    }
}

/// A ring of random matrices of at least RING_BYTES, and quantized activations.
struct Setup<W: WeightType> {
    ring: Vec<Vec<W::Block>>,
    act: Vec<ActBlock<W>>,
    matrix_bytes: usize,
}

fn setup<W: WeightType>(scale: ScaleField) -> Setup<W> {
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let matrix_bytes = ROWS * COLS / W::BLOCK_ELEMS * std::mem::size_of::<W::Block>();
    let ring = (0..RING_BYTES.div_ceil(matrix_bytes))
        .map(|_| random_matrix::<W>(&mut rng, scale))
        .collect();
    let x: Vec<f32> = (0..COLS)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut act = vec![ActBlock::<W>::default(); COLS / W::Act::BLOCK_ELEMS];
    W::Act::quantize(&x, &mut act);
    Setup {
        ring,
        act,
        matrix_bytes,
    }
}

/// Seconds of the fastest of `runs` calls (after one warm-up): the machine is shared, and
/// the fastest run is the one least disturbed by other processes.
fn best(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn gbs(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// One pass over the whole ring on `threads` threads, each owning a slice of every
/// matrix's rows.
fn cold_pass<W: WeightType>(s: &Setup<W>, threads: usize) {
    std::thread::scope(|scope| {
        for k in 0..threads {
            scope.spawn(move || {
                let rows = k * ROWS / threads..(k + 1) * ROWS / threads;
                let mut out = vec![0f32; rows.len()];
                for m in &s.ring {
                    matvec::<W>(black_box(m), black_box(&s.act), rows.clone(), &mut out);
                }
                black_box(out);
            });
        }
    })
}

fn bench<W: WeightType>(scale: ScaleField) {
    let s = setup::<W>(scale);
    let mut out = vec![0f32; ROWS];
    let hot = gbs(
        s.matrix_bytes,
        best(40, || {
            matvec::<W>(black_box(&s.ring[0]), black_box(&s.act), 0..ROWS, &mut out)
        }),
    );
    black_box(&out);
    let ring_bytes = s.ring.len() * s.matrix_bytes;
    let cold1 = gbs(ring_bytes, best(6, || cold_pass(&s, 1)));
    let cold2 = gbs(ring_bytes, best(6, || cold_pass(&s, 2)));
    println!(
        "{:8} {:6.2} MB/matrix  hot 1t {hot:6.2} GB/s ({:6.1} ns/row)  cold 1t {cold1:6.2} GB/s  cold 2t {cold2:6.2} GB/s",
        W::NAME,
        s.matrix_bytes as f64 / 1e6,
        s.matrix_bytes as f64 / ROWS as f64 / hot,
    );
}

/// One streaming read of `words` on `threads` threads (u64 sums).
fn read_pass(words: &[u64], threads: usize) {
    std::thread::scope(|scope| {
        for part in words.chunks(words.len() / threads) {
            scope.spawn(move || {
                black_box(black_box(part).iter().fold(0u64, |a, &w| a.wrapping_add(w)))
            });
        }
    });
}

/// Plain streaming read of RING_BYTES on 1 and 2 threads (best of several passes).
fn read_bandwidth() {
    let words: Vec<u64> = (0..(RING_BYTES / 8) as u64).collect();
    for threads in [1usize, 2] {
        let secs = best(8, || read_pass(&words, threads));
        println!(
            "read     {threads} thread(s) {:6.2} GB/s",
            gbs(RING_BYTES, secs)
        );
    }
}

/// IQ4_XS 2-thread matvec over DRAM against a plain 2-thread read of as many bytes, in
/// 40 back-to-back pairs: each pair gives a ratio under (nearly) the same background load,
/// and the median ratio is the figure. The best absolute rates are printed too.
fn ratio() {
    let s = setup::<IQ4_XS>(ScaleField::At(0));
    let words: Vec<u64> = (0..(RING_BYTES / 8) as u64).collect();
    let ring_bytes = s.ring.len() * s.matrix_bytes;
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    read_pass(&words, 2);
    cold_pass(&s, 2);
    let mut pairs: Vec<(f64, f64)> = (0..40)
        .map(|_| {
            let read = gbs(RING_BYTES, time(&mut || read_pass(&words, 2)));
            let matvec = gbs(ring_bytes, time(&mut || cold_pass(&s, 2)));
            (matvec, read)
        })
        .collect();
    let best_matvec = pairs.iter().map(|p| p.0).fold(0.0, f64::max);
    let best_read = pairs.iter().map(|p| p.1).fold(0.0, f64::max);
    pairs.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
    let (m, r) = pairs[pairs.len() / 2];
    println!(
        "IQ4_XS matvec 2t / plain read 2t, median of 40 pairs: {m:.2} / {r:.2} GB/s = {:.0}% \
         (best: matvec {best_matvec:.2} GB/s, read {best_read:.2} GB/s)",
        100.0 * m / r
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a.eq_ignore_ascii_case(name));
    if want("read") {
        read_bandwidth();
    }
    if args.iter().any(|a| a == "ratio") {
        ratio();
        return;
    }
    if want("IQ4_XS") {
        bench::<IQ4_XS>(ScaleField::At(0));
    }
    if want("IQ4_NL") {
        bench::<IQ4_NL>(ScaleField::At(0));
    }
    if want("IQ3_S") {
        bench::<IQ3_S>(ScaleField::At(0));
    }
    if want("IQ3_XXS") {
        bench::<IQ3_XXS>(ScaleField::At(0));
    }
    if want("IQ2_S") {
        bench::<IQ2_S>(ScaleField::At(0));
    }
    if want("IQ2_XS") {
        bench::<IQ2_XS>(ScaleField::At(0));
    }
    if want("IQ2_XXS") {
        bench::<IQ2_XXS>(ScaleField::At(0));
    }
    if want("IQ1_M") {
        bench::<IQ1_M>(ScaleField::Nibbles(48));
    }
    if want("IQ1_S") {
        bench::<IQ1_S>(ScaleField::At(0));
    }
}
