//! The 16-bit floats of GGUF files as the kernels read them: IEEE binary16 ([`f16`]: the
//! scales of most quant blocks, F16 weights, the KV cache) and bfloat16 ([`bf16`]).
//!
//! The conversions live in this crate, `#[inline(always)]`, on purpose: each kernel
//! tier's copy of the runtime ([`crate::tier`]) compiles them with its own target
//! features, so the AVX2 and AVX-512 copies convert with one F16C instruction in place
//! and the scalar copy in software. A dependency is compiled once, for the x86-64
//! baseline, where it can only test for F16C at run time and call an out-of-line
//! function per value: with the `half` crate's types, SmolLM2 Q4_1's decode ran 28%
//! slower in the dispatched binary than in a `--target-cpu native` one.
//!
//! Both directions are bit-exact with F16C (and with ggml): binary16 to f32 is exact
//! (a NaN comes out quiet); f32 to binary16 rounds to nearest even, overflows to
//! infinity, and keeps a NaN's sign and top 10 payload bits with the quiet bit set.

#![allow(non_camel_case_types)]

/// IEEE 754 binary16, stored as its bits.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct f16(u16);

/// bfloat16: the top half of an f32, stored as its bits.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct bf16(u16);

impl f16 {
    pub const ZERO: f16 = f16(0);

    #[inline(always)]
    pub const fn from_bits(bits: u16) -> f16 {
        f16(bits)
    }

    #[inline(always)]
    pub const fn to_bits(self) -> u16 {
        self.0
    }

    #[inline(always)]
    pub const fn from_le_bytes(bytes: [u8; 2]) -> f16 {
        f16(u16::from_le_bytes(bytes))
    }

    #[inline(always)]
    pub const fn to_le_bytes(self) -> [u8; 2] {
        self.0.to_le_bytes()
    }

    /// The value as f32 (exact).
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
        {
            use std::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
            // SAFETY: the build enables F16C (cfg above); SSE2 is x86-64's baseline.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(self.0))))
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
        {
            soft::f16_to_f32(self.0)
        }
    }

    #[inline(always)]
    pub fn to_f64(self) -> f64 {
        f64::from(self.to_f32())
    }

    /// `x` rounded to nearest even.
    #[inline(always)]
    pub fn from_f32(x: f32) -> f16 {
        #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
        {
            use std::arch::x86_64::{_mm_cvtps_ph, _mm_extract_epi16, _mm_set_ss};
            // SAFETY: the build enables F16C (cfg above); SSE2 is x86-64's baseline.
            // Immediate 0: round to nearest even, whatever MXCSR says.
            #[allow(unused_unsafe)]
            unsafe {
                f16(_mm_extract_epi16::<0>(_mm_cvtps_ph::<0>(_mm_set_ss(x))) as u16)
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
        {
            f16(soft::f32_to_f16(x))
        }
    }
}

impl bf16 {
    pub const ZERO: bf16 = bf16(0);

    #[inline(always)]
    pub const fn from_bits(bits: u16) -> bf16 {
        bf16(bits)
    }

    #[inline(always)]
    pub const fn to_bits(self) -> u16 {
        self.0
    }

    /// The value as f32 (exact: the low 16 bits are zero).
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }

    /// `x` rounded to nearest even; a NaN stays a (quiet) NaN of the same sign.
    #[inline(always)]
    pub fn from_f32(x: f32) -> bf16 {
        let bits = x.to_bits();
        if x.is_nan() {
            return bf16(((bits >> 16) | 0x0040) as u16);
        }
        let round = 0x7fff + ((bits >> 16) & 1);
        bf16((bits.wrapping_add(round) >> 16) as u16)
    }
}

/// IEEE comparison, as for f32: NaN equals nothing, and +0 equals -0.
impl PartialEq for f16 {
    fn eq(&self, other: &f16) -> bool {
        self.to_f32() == other.to_f32()
    }
}

impl PartialEq for bf16 {
    fn eq(&self, other: &bf16) -> bool {
        self.to_f32() == other.to_f32()
    }
}

impl std::fmt::Debug for f16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_f32(), f)
    }
}

impl std::fmt::Debug for bf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_f32(), f)
    }
}

/// The conversions without F16C (tested against F16C where the build has it).
#[cfg_attr(all(target_arch = "x86_64", target_feature = "f16c"), allow(dead_code))]
mod soft {
    /// binary16 bits to f32 (exact).
    #[inline(always)]
    pub fn f16_to_f32(h: u16) -> f32 {
        let sign = u32::from(h & 0x8000) << 16;
        let exp = u32::from((h >> 10) & 0x1f);
        let man = u32::from(h & 0x3ff);
        let magnitude = match exp {
            // zero and subnormals: man * 2^-24, exact in f32
            0 => (man as f32 * (1.0 / 16_777_216.0)).to_bits(),
            31 if man == 0 => 0x7f80_0000,
            // NaN: payload kept, quiet bit set (as F16C's vcvtph2ps does)
            31 => 0x7fc0_0000 | (man << 13),
            _ => ((exp + 112) << 23) | (man << 13),
        };
        f32::from_bits(sign | magnitude)
    }

    /// f32 to binary16 bits, rounded to nearest even.
    #[inline(always)]
    pub fn f32_to_f16(x: f32) -> u16 {
        let bits = x.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exp = ((bits >> 23) & 0xff) as i32;
        let man = bits & 0x7f_ffff;
        if exp == 0xff {
            return if man == 0 {
                sign | 0x7c00
            } else {
                sign | 0x7e00 | (man >> 13) as u16
            };
        }
        // the binary16 exponent field the value would have
        let e = exp - 127 + 15;
        if e >= 31 {
            return sign | 0x7c00;
        }
        let (kept, dropped_bits) = if e <= 0 {
            // subnormal: the implicit bit becomes explicit and 1 - e more bits go
            if e < -10 {
                return sign;
            }
            (man | 0x80_0000, (14 - e) as u32)
        } else {
            (((e as u32) << 23) | man, 13)
        };
        let mut r = kept >> dropped_bits;
        let rest = kept & ((1 << dropped_bits) - 1);
        let half = 1 << (dropped_bits - 1);
        // a carry out of the mantissa moves into the exponent: to the smallest normal,
        // or from the largest finite value to infinity
        if rest > half || (rest == half && r & 1 == 1) {
            r += 1;
        }
        sign | r as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every binary16 value, against the `half` crate's conversion.
    #[test]
    fn every_f16_converts_exactly() {
        for bits in 0..=u16::MAX {
            let want = crate::float16::f16::from_bits(bits).to_f32();
            let soft = soft::f16_to_f32(bits);
            let ours = f16::from_bits(bits).to_f32();
            if want.is_nan() {
                assert!(soft.is_nan() && ours.is_nan(), "{bits:#06x}");
                assert_eq!(soft.to_bits(), ours.to_bits(), "{bits:#06x}");
            } else {
                assert_eq!(soft.to_bits(), want.to_bits(), "{bits:#06x}");
                assert_eq!(ours.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    /// f32 values spread over every exponent (about 1.05 million bit patterns, plus the
    /// halfway cases around each binary16 value), rounded like the `half` crate and like
    /// F16C.
    #[test]
    fn f32_rounds_to_nearest_even_like_half_and_f16c() {
        let mut patterns: Vec<u32> = (0..=u32::MAX).step_by(4099).collect();
        for h in 0..0x7c00u32 {
            let f = crate::float16::f16::from_bits(h as u16).to_f32().to_bits();
            patterns.extend([f, f + 0x1000, f + 0x0fff, f + 0x1001, f | 0x8000_0000]);
        }
        patterns.extend([
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0001,
            0xffa0_0000,
            0x477f_f000,
        ]);
        for bits in patterns {
            let x = f32::from_bits(bits);
            let want = crate::float16::f16::from_f32(x).to_bits();
            assert_eq!(soft::f32_to_f16(x), want, "{bits:#010x} ({x:e})");
            assert_eq!(f16::from_f32(x).to_bits(), want, "{bits:#010x} ({x:e})");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_like_half() {
        for bits in (0..=u32::MAX)
            .step_by(65_537)
            .chain([0x7fc0_0001, 0x3f80_8000, 0x3f81_8000])
        {
            let x = f32::from_bits(bits);
            let want = half::bf16::from_f32(x);
            let ours = bf16::from_f32(x);
            if x.is_nan() {
                assert!(ours.to_f32().is_nan(), "{bits:#010x}");
            } else {
                assert_eq!(ours.to_bits(), want.to_bits(), "{bits:#010x}");
            }
            assert_eq!(
                bf16::from_bits(want.to_bits()).to_f32().to_bits(),
                want.to_f32().to_bits()
            );
        }
    }
}
