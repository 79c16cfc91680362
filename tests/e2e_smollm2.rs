//! End to end on the real model: SmolLM2-135M-Instruct Q4_1 compiled by mcc must
//! continue every golden prompt exactly as llama.cpp's `llama-completion --temp 0` does
//! on each SIMD kernel tier the machine runs (tests/golden/TIER/smollm2-q4_1.json, made
//! by scripts/golden_completion.py with llama.cpp built for that tier).

use std::path::Path;

use mcc_e2e::{build_model, golden_file, golden_tiers, run, run_on, smollm2_q4_1, Tier};

#[derive(Debug)]
struct Case {
    prompt: String,
    continuation: String,
}

fn golden(tier: Tier, label: &str) -> (usize, Vec<Case>) {
    let path = golden_file(
        tier,
        &format!("{label}.json"),
        &format!("scripts/golden_completion.py MODEL.gguf {label}"),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = json["n_predict"].as_u64().unwrap() as usize;
    let cases = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().into(),
            continuation: c["continuation"].as_str().unwrap().into(),
        })
        .collect();
    (n, cases)
}

#[test]
fn greedy_text_matches_llama_cpp() {
    let exe = build_model(&smollm2_q4_1(), "smollm2-q4_1", |_| {});
    let mut failures = Vec::new();
    let mut total = 0;
    for tier in golden_tiers() {
        let (n, cases) = golden(tier, "smollm2-q4_1");
        assert!(cases.len() >= 5);
        total += cases.len();
        for case in &cases {
            check_case(&exe, tier, n, case, &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} continuations differ:\n{}",
        failures.len(),
        total,
        failures.join("\n")
    );
}

/// Runs one golden prompt on `tier`; a continuation unlike llama.cpp's is a failure.
fn check_case(exe: &Path, tier: Tier, n: usize, case: &Case, failures: &mut Vec<String>) {
    let n = n.to_string();
    let args = ["-p", &case.prompt, "-n", &n, "--temp", "0", "-t", "2"];
    let out = run_on(exe, tier, &args);
    assert!(
        out.status.success(),
        "{:?}: {}",
        case.prompt,
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout);
    if got != case.continuation {
        failures.push(format!(
            "{} tier, prompt {:?}\n  llama.cpp: {:?}\n  mcc:       {:?}",
            tier.name(),
            case.prompt,
            case.continuation,
            got
        ));
    }
}

#[test]
fn info_reports_the_model() {
    let exe = build_model(&smollm2_q4_1(), "smollm2-q4_1", |_| {});
    let out = run(&exe, &["info"]);
    assert!(out.status.success());
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains("30 layers, 576 hidden, 9 heads / 3 KV heads of 64, FFN 1536"),
        "{info}"
    );
    assert!(info.contains("Q4_1 x210"), "{info}");
    assert!(info.contains("Q8_0 x1"), "{info}");
}
