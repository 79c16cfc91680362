//! `mcc imatrix` against llama-imatrix: the ladder's SmolLM2 F16 (scripts/make-models.sh)
//! over 3 chunks of 512 tokens of its calibration text must give llama-imatrix's file
//! byte for byte on each SIMD kernel tier the machine runs (the sha256 in
//! tests/golden/TIER/imatrix-smollm2-f16.txt, made by scripts/imatrix-golden.sh).
//!
//! Bit-identical sums need every projection input bit-identical to llama.cpp's: the F16
//! matmuls mirror llamafile's tinyBLAS (`quant/f16.rs`), the attention its flash
//! attention. Without the ladder models (the test command cannot build llama.cpp's
//! tools that make them) the test prints a SKIPPED line and passes.

use std::path::Path;

use mcc_e2e::{cache_dir, golden_tiers, repo_root, scratch_dir};
use sha2::{Digest, Sha256};

#[test]
fn imatrix_of_smollm2_f16_is_llama_imatrix_s_file() {
    let ladder = cache_dir().join("models/ladder");
    let model = ladder.join("SmolLM2-135M-Instruct.F16.gguf");
    let text = ladder.join("calibration.txt");
    if !model.is_file() || !text.is_file() {
        eprintln!(
            "SKIPPED imatrix_of_smollm2_f16_is_llama_imatrix_s_file: {} or {} is missing \
             (scripts/make-models.sh makes them)",
            model.display(),
            text.display()
        );
        return;
    }
    let tiers = golden_tiers();
    let previous = std::env::var_os(mcc_runtime::tier::ENV);
    // The binary is run from the ladder folder with `-f calibration.txt`, so that the
    // file records the dataset as llama-imatrix's golden run did.
    let cwd = std::env::current_dir().unwrap();
    for tier in tiers {
        let golden = repo_root()
            .join("tests/golden")
            .join(tier.name())
            .join("imatrix-smollm2-f16.txt");
        let Ok(golden) = std::fs::read_to_string(&golden) else {
            eprintln!(
                "SKIPPED tier {}: {} is missing (scripts/imatrix-golden.sh --tier {})",
                tier.name(),
                golden.display(),
                tier.name()
            );
            continue;
        };
        let want = golden
            .lines()
            .find_map(|l| l.strip_prefix("sha256 "))
            .expect("golden has a sha256 line");
        let out = scratch_dir().join(format!("imatrix-{}.gguf", tier.name()));
        let _ = std::fs::remove_file(&out);
        // The compiled binary reads the tier from the environment (one test in this
        // file, so no other thread reads it meanwhile).
        std::env::set_var(mcc_runtime::tier::ENV, tier.name());
        std::env::set_current_dir(&ladder).unwrap();
        let result = mcc::imatrix::run(&mcc::imatrix::Args {
            model: model.clone(),
            file: Path::new("calibration.txt").to_path_buf(),
            output: out.clone(),
            ctx_size: 512,
            batch_size: None,
            chunks: Some(3),
            threads: Some(2),
            process_output: false,
            no_ppl: true,
            target_cpu: None,
            build_dir: Some(scratch_dir().join("imatrix")),
        });
        std::env::set_current_dir(&cwd).unwrap();
        result.unwrap_or_else(|e| panic!("mcc imatrix on tier {}: {e:#}", tier.name()));
        let bytes = std::fs::read(&out).unwrap();
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            got,
            want,
            "tier {}: {} ({} bytes) differs from llama-imatrix's file ({})",
            tier.name(),
            out.display(),
            bytes.len(),
            golden.trim()
        );
        eprintln!("tier {}: byte-identical to llama-imatrix", tier.name());
    }
    match previous {
        Some(v) => std::env::set_var(mcc_runtime::tier::ENV, v),
        None => std::env::remove_var(mcc_runtime::tier::ENV),
    }
}
