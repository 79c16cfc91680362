//! Where the legacy (Q8_0) prefill GEMM's time goes: its inner loop and the variants that
//! were tried against it, each alone on one core with every operand in L1 or L2, in
//! GMAC/s (multiply-adds per second).
//!
//! llama.cpp's rounding, which the GEMM keeps bit for bit, fixes the work per
//! (row, token, 32-weight block): one integer dot into 8 lanes (`vpdpbusd`), one convert,
//! one FMA with the scale product `d_w · d_a` into 8 f32 lanes. On Zen 4 the dot and the
//! FMA share the two vector-multiply pipes, so one (row, token, block) a cycle, 32
//! multiply-adds, is the ceiling (~113 GMAC/s at 3.55 GHz). The variants:
//!
//! - `shipped`: the loop of `quant::x86_avx2::gemm` (4 rows × 4 tokens, the scale
//!   products of a run of 8 blocks computed first and broadcast from memory by the FMAs),
//!   with one row quad's blocks in L1 and 25 token groups streaming from L2 as in a tile.
//! - `no products`: the same with the FMAs broadcasting `d_w` alone (wrong results): the
//!   ceiling without the 16 products per quad block.
//! - `unread`: the products computed and stored but `d_w` broadcast: the cost of the
//!   products' own µops, without the reload.
//! - `xor products`: the products' multiplies replaced by XORs (same µops, no multiply
//!   pipe).
//! - `lanes = tokens`: 8 tokens per register and 2 rows, each weight dword broadcast
//!   into `vpdpbusd`, the products one multiply per (row, block) in registers: no
//!   products in memory, but twice the loads (start values and weights broadcast per
//!   (row, dword)).
//! - `zmm pairs`: two (row, token) pairs per 512-bit op, the scale pairs loaded from
//!   memory as if free.
//!
//! On this machine (Zen 4, 2026-11-30; GMAC/s, best of 5, quiet phase): shipped 90-95,
//! no products 108-113, unread 92-100, xor products 87-95, lanes = tokens 81-85, zmm
//! pairs 89-92. The loop is as fast as the pipes allow without the products; the ~6
//! µops a quad block spends on its 16 products (next to ~80 for the dots) cost 16%, most
//! of it for their issue slots (`unread`), none for the multiplies (`xor`). The
//! variants that avoid the products in memory cost more than they save. Without them
//! the GEMM would not be bit for bit llama.cpp's, whose FMA takes the rounded product.
//!
//! Run: `cargo run --release -p mcc-runtime --example gemm_loop_bench` (needs
//! AVX512-VNNI and AVX512-VL: the build's `target-cpu=native` on this machine).

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512vnni",
    target_feature = "avx512vl"
))]
mod bench {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    /// Blocks of a k-chunk (the GEMM's `K_CHUNK`).
    const K: usize = 32;
    /// Token groups of a tile (the GEMM's 384 KiB tile of 3072-wide rows).
    const GROUPS: usize = 25;
    /// Blocks whose scale products are computed at a time (the GEMM's run).
    const RUN: usize = 8;

    /// A row quad's unpacked block, as the GEMM's `QuadBlock`.
    #[repr(C, align(32))]
    #[derive(Clone, Copy)]
    struct Quad {
        w: [[i8; 32]; 4],
        start: [[i32; 8]; 4],
        d: [f32; 16],
    }

    /// A token group's packed block, as the GEMM's `PackedAct`.
    #[repr(C, align(32))]
    #[derive(Clone, Copy)]
    struct Group {
        qs: [[u8; 32]; 4],
        d: [f32; 8],
    }

    /// 8 tokens' block, dword-major: `qs[j]` holds bytes `4j..4j + 4` of each token.
    #[repr(C, align(32))]
    #[derive(Clone, Copy)]
    struct Octet {
        qs: [[u8; 32]; 8],
        d: [f32; 8],
    }

    /// 2 rows' block for `lanes = tokens`.
    #[repr(C, align(32))]
    #[derive(Clone, Copy)]
    struct Pair {
        w: [[i8; 32]; 2],
        start: [[i32; 8]; 2],
        d: [f32; 2],
    }

    #[repr(C, align(32))]
    struct Products([[f32; 16]; RUN]);

    /// Where the FMAs' scales come from: the products; `d_w` alone (no products); the
    /// products computed and stored but `d_w` read; an XOR in place of the products'
    /// multiply.
    const PRODUCTS: u8 = 0;
    const NONE: u8 = 1;
    const UNREAD: u8 = 2;
    const XOR: u8 = 3;

    fn sum(acc: &[__m256]) -> f32 {
        let mut s = 0.0;
        for v in acc {
            let mut o = [0f32; 8];
            // SAFETY: 8 writable f32.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *v) };
            s += o.iter().sum::<f32>();
        }
        s
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn quad_loop<const SCALES: u8>(quad: &[Quad], groups: &[Group]) -> f32 {
        let mut acc = [[_mm256_setzero_ps(); 4]; 4];
        let mut prod = Products([[0.0; 16]; RUN]);
        for g in groups.chunks_exact(K) {
            for (q, a) in quad.chunks(RUN).zip(g.chunks(RUN)) {
                if SCALES != NONE {
                    for ((w, a), p) in q.iter().zip(a).zip(prod.0.iter_mut()) {
                        // SAFETY: 16- and 32-byte accesses inside 32-byte aligned fields.
                        unsafe {
                            let d_a = _mm256_broadcast_ps(&*a.d.as_ptr().cast::<__m128>());
                            for h in 0..2 {
                                let d_w = _mm256_load_ps(w.d.as_ptr().add(8 * h));
                                let v = if SCALES == XOR {
                                    _mm256_xor_ps(d_w, d_a)
                                } else {
                                    _mm256_mul_ps(d_w, d_a)
                                };
                                _mm256_store_ps(p.as_mut_ptr().add(8 * h), v);
                            }
                        }
                    }
                    black_box(&mut prod);
                }
                for (i, (w, a)) in q.iter().zip(a).enumerate() {
                    let s = if SCALES == NONE || SCALES == UNREAD {
                        &w.d
                    } else {
                        &prod.0[i]
                    };
                    // SAFETY: 32-byte loads of 32-byte aligned fields.
                    unsafe {
                        let x: [__m256i; 4] =
                            std::array::from_fn(|t| _mm256_load_si256(a.qs[t].as_ptr().cast()));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let w_r = _mm256_load_si256(w.w[r].as_ptr().cast());
                            let start = _mm256_load_si256(w.start[r].as_ptr().cast());
                            for (t, acc) in acc.iter_mut().enumerate() {
                                let l = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, x[t], w_r));
                                *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&s[4 * r + t]), l, *acc);
                            }
                        }
                    }
                }
            }
        }
        sum(acc.as_flattened())
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn token_lanes(rows: &[Pair], octets: &[Octet]) -> f32 {
        let mut acc = [[_mm256_setzero_ps(); 8]; 2];
        for g in octets.chunks_exact(K) {
            for (w, a) in rows.iter().zip(g) {
                // SAFETY: 32-byte loads of 32-byte aligned fields; 4-byte reads in bounds.
                unsafe {
                    let x: [__m256i; 8] =
                        std::array::from_fn(|j| _mm256_load_si256(a.qs[j].as_ptr().cast()));
                    let d_a = _mm256_load_ps(a.d.as_ptr());
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let p = _mm256_mul_ps(d_a, _mm256_set1_ps(w.d[r]));
                        for (j, acc) in acc.iter_mut().enumerate() {
                            let start = _mm256_set1_epi32(w.start[r][j]);
                            let dword = w.w[r].as_ptr().add(4 * j).cast::<i32>().read_unaligned();
                            let l = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(
                                start,
                                x[j],
                                _mm256_set1_epi32(dword),
                            ));
                            *acc = _mm256_fmadd_ps(p, l, *acc);
                        }
                    }
                }
            }
        }
        sum(acc.as_flattened())
    }

    #[target_feature(enable = "avx2,fma,avx512f,avx512vnni,avx512vl")]
    fn zmm_pairs(quad: &[Quad], groups: &[Group]) -> f32 {
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        for g in groups.chunks_exact(K) {
            for (w, a) in quad.iter().zip(g) {
                // SAFETY: 32- and 64-byte loads inside the blocks.
                unsafe {
                    let x = [
                        _mm512_loadu_si512(a.qs[0].as_ptr().cast()),
                        _mm512_loadu_si512(a.qs[2].as_ptr().cast()),
                    ];
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let w_r = _mm512_broadcast_i64x4(_mm256_load_si256(w.w[r].as_ptr().cast()));
                        let start =
                            _mm512_broadcast_i64x4(_mm256_load_si256(w.start[r].as_ptr().cast()));
                        for (tp, acc) in acc.iter_mut().enumerate() {
                            let l = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, x[tp], w_r));
                            let s =
                                _mm512_loadu_ps(w.start.as_ptr().cast::<f32>().add(16 * (r % 2)));
                            *acc = _mm512_fmadd_ps(s, l, *acc);
                        }
                    }
                }
            }
        }
        let mut s = 0.0;
        for v in acc.as_flattened() {
            // SAFETY: AVX-512F is enabled for this function.
            s += _mm512_reduce_add_ps(*v);
        }
        s
    }

    /// Best GMAC/s of 5 timings of `f`, which does `macs` multiply-adds.
    fn gmacs(macs: usize, mut f: impl FnMut() -> f32) -> f64 {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            black_box(f());
            best = best.min(t.elapsed().as_secs_f64());
        }
        macs as f64 / best / 1e9
    }

    pub fn main() {
        let reps = 400;
        let quad = vec![
            Quad {
                w: [[3; 32]; 4],
                start: [[1; 8]; 4],
                d: [1e-3; 16],
            };
            K
        ];
        let groups = vec![
            Group {
                qs: [[5; 32]; 4],
                d: [1e-3; 8],
            };
            K * GROUPS
        ];
        let rows = vec![
            Pair {
                w: [[3; 32]; 2],
                start: [[1; 8]; 2],
                d: [1e-3; 2],
            };
            K
        ];
        // as many (row, token) pairs per pass as the quad loops: 16 per group block
        let octets = vec![
            Octet {
                qs: [[5; 32]; 8],
                d: [1e-3; 8],
            };
            K * GROUPS
        ];
        let macs = reps * K * GROUPS * 16 * 32;
        let run = |name: &str, f: &dyn Fn() -> f32| {
            let g = gmacs(macs, || (0..reps).map(|_| f()).sum());
            println!("{name:<14} {g:6.1} GMAC/s");
        };
        // SAFETY (all below): this module is built with AVX512-VNNI and AVX512-VL (cfg).
        run("shipped", &|| unsafe {
            quad_loop::<PRODUCTS>(&quad, &groups)
        });
        run("no products", &|| unsafe {
            quad_loop::<NONE>(&quad, &groups)
        });
        run("unread", &|| unsafe { quad_loop::<UNREAD>(&quad, &groups) });
        run("xor products", &|| unsafe {
            quad_loop::<XOR>(&quad, &groups)
        });
        run("lanes = tokens", &|| unsafe { token_lanes(&rows, &octets) });
        run("zmm pairs", &|| unsafe { zmm_pairs(&quad, &groups) });
    }
}

fn main() {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512vnni",
        target_feature = "avx512vl"
    ))]
    bench::main();
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx512vnni",
        target_feature = "avx512vl"
    )))]
    eprintln!("gemm_loop_bench: needs a build with AVX512-VNNI and AVX512-VL");
}
