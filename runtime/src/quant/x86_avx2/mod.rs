//! AVX2 + FMA versions of the dot products and activation quantizers, under the same
//! names as the scalar references. Compiled only when the target has AVX2 and FMA
//! (the generated binaries build with `-C target-cpu=native` by default).

#[cfg(target_feature = "f16c")]
pub mod f16_gemm;
pub mod gemm;
#[cfg(target_feature = "f16c")]
pub mod iq4_xs_x8;
pub mod iquants;
pub mod kquants;
pub mod legacy;
#[cfg(target_feature = "f16c")]
pub mod q4_k_x8;
pub mod q4_x8;
#[cfg(target_feature = "f16c")]
pub mod q6_k_x8;
pub mod superblock;
pub mod tiles;
mod vnni;
