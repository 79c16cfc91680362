//! `serve` end to end: the pytest suite under tests/serve/ drives a compiled SmolLM2
//! binary's server with the real `openai` client (fields, streaming, batch invariance,
//! the prefix cache) and with hostile clients (bad input, disconnects, SIGTERM).

use std::process::Command;

use mcc_e2e::{build_model, default_tier, golden_file, repo_root, smollm2_q4_1};

#[test]
fn the_server_suite_passes() {
    let exe = build_model(&smollm2_q4_1(), "smollm2-q4_1", |_| {});
    let golden = golden_file(
        default_tier(),
        "smollm2-q4_1.json",
        "scripts/golden_completion.py MODEL.gguf smollm2-q4_1",
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/serve",
        ])
        .current_dir(repo_root())
        .env("MCC_SERVE_BIN", &exe)
        .env("MCC_SERVE_GOLDEN", &golden)
        .status()
        .expect("python3 runs (scripts/test.sh installs pytest and openai)");
    assert!(
        status.success(),
        "the server suite failed (its output is above)"
    );
}
