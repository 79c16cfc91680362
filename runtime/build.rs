//! Sets `cfg(x86_simd)` when the crate is compiled for an x86-64 CPU with AVX2, FMA and
//! F16C (every x86-64-v3 CPU): the cfg that selects the SIMD kernels over the scalar
//! references, written once here instead of as a four-line `all(...)` at every kernel.
//!
//! A kernel tier's copy of the runtime (`mcc-runtime-tier-NAME`, src/tier.rs) gets its
//! target features from the rustc flags mcc adds to that crate alone, which cargo does
//! not show build scripts: its features are the tier's.

#[allow(dead_code)]
#[path = "src/tier.rs"]
mod tier;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(x86_simd)");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
    let tier_features = tier::of_package(&package).map_or_else(Vec::new, tier::Tier::features);
    let has = |f: &str| features.split(',').any(|x| x == f) || tier_features.contains(&f);
    if arch == "x86_64" && has("avx2") && has("fma") && has("f16c") {
        println!("cargo:rustc-cfg=x86_simd");
    }
}
