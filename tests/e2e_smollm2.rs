//! End to end on the real model: SmolLM2-135M-Instruct Q4_1 compiled by mcc must
//! continue every golden prompt exactly as llama.cpp's `llama-completion --temp 0` does
//! (tests/golden/smollm2-q4_1.json, made by scripts/golden_completion.py).

use mcc_e2e::{build_model, repo_root, run, smollm2_q4_1};

#[derive(Debug)]
struct Case {
    prompt: String,
    continuation: String,
}

fn golden(label: &str) -> (usize, Vec<Case>) {
    let path = repo_root().join(format!("tests/golden/{label}.json"));
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
    let (n, cases) = golden("smollm2-q4_1");
    assert!(cases.len() >= 5);
    let mut failures = Vec::new();
    for case in &cases {
        let out = run(
            &exe,
            &[
                "-p",
                &case.prompt,
                "-n",
                &n.to_string(),
                "--temp",
                "0",
                "-t",
                "2",
            ],
        );
        assert!(
            out.status.success(),
            "{:?}: {}",
            case.prompt,
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8_lossy(&out.stdout);
        if got != case.continuation {
            failures.push(format!(
                "prompt {:?}\n  llama.cpp: {:?}\n  mcc:       {:?}",
                case.prompt, case.continuation, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} continuations differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
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
