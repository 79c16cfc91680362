//! cargo-fuzz target; the body is `mcc_fuzz::gguf` (src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcc_fuzz::gguf(data));
