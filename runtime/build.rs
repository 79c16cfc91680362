//! Sets `cfg(x86_simd)` when the crate is compiled for an x86-64 CPU with AVX2, FMA and
//! F16C (every x86-64-v3 CPU, and the generated binaries' default `target-cpu=native` on
//! any recent one): the cfg that selects the SIMD kernels over the scalar references,
//! written once here instead of as a four-line `all(...)` at every kernel.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(x86_simd)");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |f: &str| features.split(',').any(|x| x == f);
    if arch == "x86_64" && has("avx2") && has("fma") && has("f16c") {
        println!("cargo:rustc-cfg=x86_simd");
    }
}
