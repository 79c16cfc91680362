//! Kernel tiers end to end: one binary, built once, carries every tier, says which one it
//! runs, refuses a tier it cannot run, and its scalar tier agrees with its AVX2 tier.
//! (Each SIMD tier against llama.cpp's build for it: tests/e2e_smollm2.rs and
//! tests/e2e_fidelity.rs, on every tier the machine runs.)
//!
//! **The scalar tier's tolerance.** The scalar tier has no llama.cpp twin: its sums run
//! in another order than any SIMD build's, and its activations round at other places,
//! so its logits differ from the AVX2 tier's as much as two correct builds of llama.cpp
//! differ from each other. That spread is measured, not guessed: the committed goldens
//! hold llama.cpp's AVX-512 build and its AVX2 build on the same five prompts
//! (tests/golden/{avx512,avx2}/ppl/logits-smollm2-q4_1.json). Over those, the largest
//! difference of a stored logit (or log-sum-exp) is `R` (1.13 for SmolLM2 Q4_1), and the
//! two builds' top-1 differ only where the AVX2 build's top-2 gap is at most `G` (0.24):
//! a Q4_1 model amplifies a change in the rounding of one activation to about one logit
//! after 30 layers. The scalar tier must stay within twice that spread of the AVX2 tier
//! over a 256-token teacher-forced prompt: every logit within `2R`, and top-1 equal at
//! every position whose AVX2 top-2 gap exceeds `2G` (a flip is allowed at a near-tie
//! only). A wrong kernel, scale or layout misses both by far.

use std::path::{Path, PathBuf};
use std::process::Command;

use mcc_e2e::{
    build_model, cache_dir, logits_on, repo_root, run_on, scratch_dir, smollm2_q4_1, Tier,
};

fn smollm2() -> PathBuf {
    build_model(&smollm2_q4_1(), "smollm2-q4_1", |_| {})
}

/// The binary's `logits` output: token ids and one row of logits per position.
fn logits(exe: &Path, tier: Tier, prompt: &Path) -> (Vec<u32>, Vec<Vec<f32>>) {
    let out = scratch_dir().join(format!("tiers-{}.bin", tier.name()));
    let (ids, n_vocab, logits) = logits_on(exe, tier, prompt, &out);
    (
        ids,
        logits.chunks_exact(n_vocab).map(<[f32]>::to_vec).collect(),
    )
}

/// `(R, G)` of the module doc, from llama.cpp's AVX-512 and AVX2 logits goldens.
fn llama_cpp_spread() -> (f64, f64) {
    let load = |tier: &str| -> serde_json::Value {
        let path = repo_root().join(format!("tests/golden/{tier}/ppl/logits-smollm2-q4_1.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/ppl-golden.py logits --tier {tier} makes it)",
                path.display()
            )
        }))
        .unwrap()
    };
    let (a, b) = (load("avx512"), load("avx2"));
    let (mut r, mut g) = (0f64, 0f64);
    for (ca, cb) in a["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["cases"].as_array().unwrap())
    {
        assert_eq!(ca["label"], cb["label"]);
        for (ra, rb) in ca["rows"]
            .as_array()
            .unwrap()
            .iter()
            .zip(cb["rows"].as_array().unwrap())
        {
            assert_eq!(ra["pos"], rb["pos"]);
            let f = |v: &serde_json::Value| v.as_f64().unwrap();
            r = r.max((f(&ra["lse"]) - f(&rb["lse"])).abs());
            let (ia, la) = (
                ra["ids"].as_array().unwrap(),
                ra["logits"].as_array().unwrap(),
            );
            let (ib, lb) = (
                rb["ids"].as_array().unwrap(),
                rb["logits"].as_array().unwrap(),
            );
            for (id, l) in ia.iter().zip(la) {
                if let Some(k) = ib.iter().position(|x| x == id) {
                    r = r.max((f(l) - f(&lb[k])).abs());
                }
            }
            if ia[0] != ib[0] {
                g = g.max(f(&lb[0]) - f(&lb[1]));
            }
        }
    }
    (r, g)
}

/// At least 256 tokens of the perplexity text (scripts/make-ppl-text.py).
fn prompt_256() -> PathBuf {
    let text = cache_dir().join("data/ppl-text.txt");
    if !text.is_file() {
        let st = Command::new("python3")
            .arg(repo_root().join("scripts/make-ppl-text.py"))
            .status()
            .expect("python3 runs scripts/make-ppl-text.py");
        assert!(st.success(), "scripts/make-ppl-text.py failed");
    }
    let text = std::fs::read_to_string(&text).unwrap();
    let start = text.char_indices().nth(30_000).unwrap().0;
    let slice: String = text[start..].chars().take(1_400).collect();
    let path = scratch_dir().join("tiers-prompt.txt");
    std::fs::write(&path, slice).unwrap();
    path
}

#[test]
fn scalar_tier_agrees_with_the_avx2_tier_within_llama_cpps_own_spread() {
    let (r, g) = llama_cpp_spread();
    let (logit_tol, tie_tol) = (2.0 * r, 2.0 * g);
    let exe = smollm2();
    let prompt = prompt_256();
    let (ids, avx2) = logits(&exe, Tier::Avx2, &prompt);
    let (ids_scalar, scalar) = logits(&exe, Tier::Scalar, &prompt);
    assert_eq!(ids, ids_scalar, "the tiers tokenize alike");
    assert!(ids.len() >= 256, "{} tokens", ids.len());
    let (mut max_diff, mut worst, mut flips, mut bad) = (0f64, 0, 0, Vec::new());
    for (pos, (a, s)) in avx2.iter().zip(&scalar).enumerate() {
        let diff = a
            .iter()
            .zip(s)
            .map(|(x, y)| (x - y).abs() as f64)
            .fold(0f64, f64::max);
        if diff > max_diff {
            (max_diff, worst) = (diff, pos);
        }
        let top = |row: &[f32]| {
            row.iter()
                .enumerate()
                .fold(0, |b, (i, &l)| if l > row[b] { i } else { b })
        };
        let (ta, ts) = (top(a), top(s));
        if ta != ts {
            flips += 1;
            let second = a
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != ta)
                .map(|(_, &l)| l)
                .fold(f32::NEG_INFINITY, f32::max);
            let gap = (a[ta] - second) as f64;
            if gap > tie_tol {
                bad.push(format!(
                    "position {pos}: top-1 {ta} vs {ts} at a top-2 gap of {gap:.3}"
                ));
            }
        }
    }
    eprintln!(
        "scalar vs avx2 over {} tokens: max abs logit diff {max_diff:.3} (position {worst}; \
         limit 2R = {logit_tol:.3}), top-1 differs at {flips} near-ties (limit: gap <= 2G = {tie_tol:.3})",
        ids.len()
    );
    assert!(
        max_diff <= logit_tol,
        "max abs logit diff {max_diff} at position {worst} exceeds 2R = {logit_tol}"
    );
    assert!(
        bad.is_empty(),
        "top-1 differs beyond a near-tie:\n{}",
        bad.join("\n")
    );
}

#[test]
fn info_names_the_tier_and_an_impossible_tier_is_refused() {
    let exe = smollm2();
    let best = Tier::best();
    for tier in Tier::ALL {
        let out = run_on(&exe, tier, &["info"]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if tier.missing().is_empty() {
            assert!(out.status.success(), "{stderr}");
            assert!(
                stdout.contains(&format!(
                    "kernel tier:  {} (MCC_CPU={}",
                    tier.name(),
                    tier.name()
                )),
                "{stdout}"
            );
        } else {
            assert!(!out.status.success());
            assert!(stdout.is_empty(), "{stdout}");
            assert!(
                stderr.contains(&format!(
                    "MCC_CPU={}: this CPU lacks {} (the best tier it runs is {})",
                    tier.name(),
                    tier.missing().join(", "),
                    best.name()
                )),
                "{stderr}"
            );
        }
    }
    let out = Command::new(&exe)
        .arg("info")
        .env_remove("MCC_CPU")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "kernel tier:  {} (the best of avx512, avx2, scalar on this CPU)",
            best.name()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("target cpu:   any x86-64 (kernel tiers avx512, avx2, scalar)"));
    let out = Command::new(&exe)
        .arg("info")
        .env("MCC_CPU", "avx-512")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("MCC_CPU=\"avx-512\": expected one of avx512, avx2, scalar"));
}

/// The AVX-512 tier is in the binary whatever machine built it: its copy of the code
/// works on the 512-bit registers (752 instructions in SmolLM2's), and the AVX2 tier's
/// copy never does.
#[test]
fn the_binary_carries_the_avx512_tier_on_any_build_machine() {
    let exe = smollm2();
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(&exe)
        .output()
        .expect("objdump (binutils) runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut in_avx512, mut in_avx2) = (0usize, 0usize);
    let mut current = None;
    for line in text.lines() {
        if line.ends_with(">:") {
            current = [Tier::Avx512, Tier::Avx2]
                .into_iter()
                .find(|t| line.contains(&format!("_tier_{}", t.name())));
        } else if line.contains("%zmm") {
            match current {
                Some(Tier::Avx512) => in_avx512 += 1,
                Some(Tier::Avx2) => in_avx2 += 1,
                _ => {}
            }
        }
    }
    assert!(
        in_avx512 >= 100,
        "{in_avx512} instructions on zmm registers in the avx512 tier's code"
    );
    assert_eq!(in_avx2, 0, "zmm registers in the avx2 tier's code");
}
