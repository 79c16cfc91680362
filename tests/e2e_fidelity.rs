//! Forward-pass fidelity against llama.cpp on SmolLM2-135M-Instruct Q4_1, on each SIMD
//! kernel tier the machine runs, from golden files made by `scripts/ppl-golden.py` with
//! llama.cpp built for that tier (tests/golden/TIER/ppl/):
//!
//! - **Logits** for prompts of 58, ~180, 569, 919 and 3877 tokens: the one-row attention
//!   kernel (< 64 tokens), llama.cpp's tiled prompt kernel, a 512-token micro-batch
//!   followed by a short one, two long micro-batches, and a long context. The goldens
//!   keep the top-k ids and logits and the log-sum-exp per position (every 16th
//!   position and the last for the long prompt). Top-1 must agree everywhere and every
//!   stored value must be within [`LOGIT_TOL`].
//! - **Perplexity** at -c 512 over the first 4 chunks of the evaluation text, against
//!   llama-perplexity's value, within the 0.3%.

use std::path::PathBuf;
use std::process::Command;

use mcc_e2e::{
    build_model, cache_dir, golden_file, golden_tiers, logits_on, repo_root, run_on, scratch_dir,
    smollm2_q4_1, Tier,
};

/// Largest difference allowed between a stored llama.cpp logit (or log-sum-exp) and
/// ours. The two are bit-identical today (max abs diff 0); before the tiled prompt
/// kernel was mirrored, a 569-token prompt differed by up to 2.49, so any change in the
/// attention's order of operations shows up far above this, while one-ulp-level drift
/// in a kernel (about 1e-5 at these magnitudes) stays below.
const LOGIT_TOL: f64 = 1e-3;

/// `tests/golden/TIER/ppl/NAME`, made by `scripts/ppl-golden.py MODE`.
fn golden(tier: Tier, name: &str, mode: &str) -> serde_json::Value {
    let path = golden_file(
        tier,
        &format!("ppl/{name}"),
        &format!("scripts/ppl-golden.py {mode}"),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn smollm2() -> PathBuf {
    build_model(&smollm2_q4_1(), "smollm2-q4_1", |_| {})
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// Runs one golden case on every tier of [`golden_tiers`].
fn check_logits(label: &str) {
    for tier in golden_tiers() {
        check_logits_on(tier, label);
    }
}

/// Runs one golden case on `tier`: the prompt through our binary, every stored position
/// compared.
fn check_logits_on(tier: Tier, label: &str) {
    let g = golden(tier, "logits-smollm2-q4_1.json", "logits");
    let case = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == label)
        .unwrap_or_else(|| panic!("no case {label:?} in the golden file"));
    let exe = smollm2();
    let dir = scratch_dir();
    let prompt = dir.join(format!("fidelity-{label}.txt"));
    let out = dir.join(format!("fidelity-{label}.bin"));
    std::fs::write(&prompt, case["prompt"].as_str().unwrap()).unwrap();
    let (ids, n_vocab, logits) = logits_on(&exe, tier, &prompt, &out);
    let want_ids: Vec<u32> = case["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, want_ids, "{label}: token ids differ from llama.cpp's");
    let label = format!("{label} ({} tier)", tier.name());

    let rows = case["rows"].as_array().unwrap();
    let (mut max_diff, mut top1_same, mut worst_pos) = (0f64, 0usize, 0usize);
    for r in rows {
        let pos = r["pos"].as_u64().unwrap() as usize;
        let row = &logits[pos * n_vocab..(pos + 1) * n_vocab];
        let top_ids = r["ids"].as_array().unwrap();
        let top_vals = r["logits"].as_array().unwrap();
        let ours_top = row
            .iter()
            .enumerate()
            .fold(0, |best, (i, &l)| if l > row[best] { i } else { best });
        if ours_top as u64 == top_ids[0].as_u64().unwrap() {
            top1_same += 1;
        }
        let mut diff = (log_sum_exp(row) - r["lse"].as_f64().unwrap()).abs();
        for (id, val) in top_ids.iter().zip(top_vals) {
            let ours = row[id.as_u64().unwrap() as usize] as f64;
            diff = diff.max((ours - val.as_f64().unwrap()).abs());
        }
        if diff > max_diff {
            (max_diff, worst_pos) = (diff, pos);
        }
    }
    eprintln!(
        "{label}: {} tokens, {} positions checked: max abs diff {max_diff:.3e} (position {worst_pos}), top-1 agreement {top1_same}/{}",
        ids.len(),
        rows.len(),
        rows.len()
    );
    assert_eq!(
        top1_same,
        rows.len(),
        "{label}: top-1 differs from llama.cpp at {} positions",
        rows.len() - top1_same
    );
    assert!(
        max_diff <= LOGIT_TOL,
        "{label}: max abs diff {max_diff} at position {worst_pos} exceeds {LOGIT_TOL}"
    );
}

#[test]
fn logits_short_prompt_one_row_kernel() {
    check_logits("short");
}

#[test]
fn logits_prompt_of_64_plus_tokens_tiled_kernel() {
    check_logits("tiled");
}

#[test]
fn logits_full_batch_then_short_tail() {
    check_logits("short-tail");
}

#[test]
fn logits_two_batches_of_about_1000_tokens() {
    check_logits("two-batches");
}

#[test]
fn logits_long_context_3877_tokens() {
    check_logits("long");
}

/// The evaluation text (scripts/make-ppl-text.py), checked against the golden's sha256.
fn ppl_text(want_sha: &str) -> PathBuf {
    let path = cache_dir().join("data/ppl-text.txt");
    if !path.is_file() {
        let st = Command::new("python3")
            .arg(repo_root().join("scripts/make-ppl-text.py"))
            .status()
            .expect("python3 runs scripts/make-ppl-text.py");
        assert!(st.success(), "scripts/make-ppl-text.py failed");
    }
    let out = Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("sha256sum runs");
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        got.starts_with(want_sha),
        "{} is not the text the golden perplexity was measured on (sha256 {}, want {want_sha}); \
         rerun scripts/make-ppl-text.py and scripts/ppl-golden.py ppl-ci",
        path.display(),
        got.split_whitespace().next().unwrap_or("?")
    );
    path
}

#[test]
fn perplexity_matches_llama_perplexity() {
    for tier in golden_tiers() {
        perplexity_on(tier);
    }
}

fn perplexity_on(tier: Tier) {
    let g = golden(tier, "ppl-ci.json", "ppl-ci");
    let text = ppl_text(g["text"]["sha256"].as_str().unwrap());
    let (ctx, chunks) = (g["ctx"].as_u64().unwrap(), g["chunks"].as_u64().unwrap());
    let want = g["llama_cpp"]["ppl"].as_f64().unwrap();
    let exe = smollm2();
    let out = run_on(
        &exe,
        tier,
        &[
            "perplexity",
            "-f",
            text.to_str().unwrap(),
            "-c",
            &ctx.to_string(),
            "--chunks",
            &chunks.to_string(),
            "-t",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (ppl, _) = mcc::ppl_table::parse_final_estimate(&stdout)
        .unwrap_or_else(|| panic!("no final estimate in:\n{stdout}"));
    let rel = (ppl - want) / want;
    let tier = tier.name();
    eprintln!(
        "{tier} tier: PPL -c {ctx} --chunks {chunks}: mcc {ppl} llama.cpp {want} ({rel:+.2e})"
    );
    assert!(
        rel.abs() <= 3e-3,
        "{tier} tier: PPL {ppl} vs llama.cpp's {want}: {rel:+.4} relative, over 0.3%"
    );
}
