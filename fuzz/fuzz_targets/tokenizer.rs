//! cargo-fuzz target; the body is `mcc_fuzz::tokenizer` (src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(
    // load the vocabularies before the clock starts: under ASan this takes seconds,
    // which the first input would otherwise be charged with as a timeout
    init: {
        mcc_fuzz::vocabs();
    },
    |data: &[u8]| mcc_fuzz::tokenizer(data)
);
