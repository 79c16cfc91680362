//! The quantization ladder end to end: SmolLM2-135M-Instruct in each of the seed table's
//! 28 file types (IQ1_S .. Q8_0, F16), compiled by mcc, must continue three prompts
//! greedily as llama.cpp's `llama-completion --temp 0` does on each SIMD kernel tier the
//! machine runs (tests/golden/TIER/ladder/*.json, made by `scripts/quant-ladder.py
//! goldens --tier TIER`).
//!
//! A divergence is accepted only as a near-tie: the golden records, for every token
//! llama.cpp generated, the gap between its two largest logits there; when our text first
//! leaves llama.cpp's inside a token whose gap is under the golden's `near_tie` (1e-3),
//! any change of summation order may flip the choice, so that case passes and is printed.
//! Any other difference fails.
//!
//! The models come from `scripts/make-models.sh`, which needs llama.cpp's llama-quantize
//! and llama-imatrix; the test command (scripts/test.sh) cannot build those, so where the
//! models are missing the test prints a SKIPPED line that names the script and passes.
//! Each model costs one `mcc build` (about 8 s warm); `MCC_LADDER=Q4_0,IQ2_XS` checks a
//! subset.

use std::io::Write;
use std::path::PathBuf;

use mcc_e2e::{build_model, cache_dir, golden_file, golden_tiers, run_on, Tier};

struct Case {
    prompt: String,
    continuation: String,
    /// Byte end of each generated token in `continuation`.
    ends: Vec<usize>,
    /// llama.cpp's top-2 logit gap where it chose each token, then the one after the last.
    gaps: Vec<f64>,
}

struct Golden {
    ty: String,
    model: String,
    n_predict: usize,
    near_tie: f64,
    cases: Vec<Case>,
}

fn field<'a>(v: &'a serde_json::Value, key: &str, file: &str) -> &'a serde_json::Value {
    v.get(key)
        .unwrap_or_else(|| panic!("{file}: no field {key:?}"))
}

fn load_golden(path: &std::path::Path) -> Golden {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let num_list = |v: &serde_json::Value, key: &str| -> Vec<f64> {
        field(v, key, &file)
            .as_array()
            .unwrap_or_else(|| panic!("{file}: {key} is not a list"))
            .iter()
            .map(|x| x.as_f64().unwrap_or_else(|| panic!("{file}: {key}: {x}")))
            .collect()
    };
    let str_of = |v: &serde_json::Value, key: &str| -> String {
        field(v, key, &file)
            .as_str()
            .unwrap_or_else(|| panic!("{file}: {key} is not a string"))
            .to_string()
    };
    let cases = field(&json, "cases", &file)
        .as_array()
        .unwrap_or_else(|| panic!("{file}: cases is not a list"))
        .iter()
        .map(|c| Case {
            prompt: str_of(c, "prompt"),
            continuation: str_of(c, "continuation"),
            ends: num_list(c, "ends")
                .into_iter()
                .map(|e| e as usize)
                .collect(),
            gaps: num_list(c, "gaps"),
        })
        .collect::<Vec<_>>();
    for c in &cases {
        assert_eq!(
            c.gaps.len(),
            c.ends.len() + 1,
            "{file}: one gap per token, plus one"
        );
        assert_eq!(
            c.ends.last().copied().unwrap_or(0),
            c.continuation.len(),
            "{file}: ends"
        );
    }
    Golden {
        ty: str_of(&json, "type"),
        model: str_of(&json, "model"),
        n_predict: field(&json, "n_predict", &file)
            .as_u64()
            .expect("n_predict") as usize,
        near_tie: field(&json, "near_tie", &file).as_f64().expect("near_tie"),
        cases,
    }
}

/// The goldens of `tier` in tests/golden/TIER/ladder/, by file name.
fn goldens(tier: Tier) -> Vec<Golden> {
    let dir = golden_file(tier, "ladder/Q4_0.json", "scripts/quant-ladder.py goldens")
        .parent()
        .expect("a directory")
        .to_path_buf();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_golden(p)).collect()
}

/// How our continuation compares with llama.cpp's.
#[derive(Debug, PartialEq)]
enum Verdict {
    Identical,
    /// First difference inside generated token `token`, where llama.cpp's top-2 gap is `gap`.
    NearTie {
        token: usize,
        gap: f64,
    },
    Mismatch {
        token: usize,
        gap: f64,
    },
}

fn judge(case: &Case, got: &[u8], near_tie: f64) -> Verdict {
    let want = case.continuation.as_bytes();
    if got == want {
        return Verdict::Identical;
    }
    let at = want.iter().zip(got).take_while(|(a, b)| a == b).count();
    // The token that holds byte `at`; past the end, the token after the last one.
    let token = case
        .ends
        .iter()
        .position(|&e| e > at)
        .unwrap_or(case.ends.len());
    let gap = case.gaps[token];
    if gap < near_tie {
        Verdict::NearTie { token, gap }
    } else {
        Verdict::Mismatch { token, gap }
    }
}

#[test]
fn judge_tells_near_ties_from_mismatches() {
    let case = Case {
        prompt: String::new(),
        continuation: " Paris is".into(),
        ends: vec![6, 9],
        gaps: vec![2.0, 1e-4, 0.5],
    };
    assert_eq!(judge(&case, b" Paris is", 1e-3), Verdict::Identical);
    assert_eq!(
        judge(&case, b" Paris was", 1e-3),
        Verdict::NearTie {
            token: 1,
            gap: 1e-4
        }
    );
    assert_eq!(
        judge(&case, b" Lyon", 1e-3),
        Verdict::Mismatch { token: 0, gap: 2.0 }
    );
    // Longer than llama.cpp's text: the choice after its last token (where it stopped).
    assert_eq!(
        judge(&case, b" Paris is.", 1e-3),
        Verdict::Mismatch { token: 2, gap: 0.5 }
    );
}

/// Writes a line to the real stderr: libtest captures `eprintln!`, but a skip must show.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
#[ignore = "needs the 28 ladder models (scripts/make-models.sh, llama.cpp's llama-quantize) and ~1 min per model (all 28 identical at 4829eb4, docs/quant-ladder.md); run by scripts/test-full.sh"]
fn ladder_models_match_llama_cpp_greedy() {
    let tiers = golden_tiers();
    let per_tier: Vec<Vec<Golden>> = tiers.iter().map(|&t| goldens(t)).collect();
    for (tier, all) in tiers.iter().zip(&per_tier) {
        if all.len() < 28 {
            announce(&format!(
                "quant ladder: goldens for {} of the 28 file types in tests/golden/{}/ladder/ \
                 (scripts/quant-ladder.py goldens --tier {} makes the rest)",
                all.len(),
                tier.name(),
                tier.name()
            ));
        }
    }
    let all = &per_tier[0];
    let wanted: Option<Vec<String>> = std::env::var("MCC_LADDER")
        .ok()
        .map(|s| s.split(',').map(|t| t.trim().to_string()).collect());
    let dir = cache_dir().join("models/ladder");
    let (mut checked, mut missing, mut failures) = (0, Vec::new(), Vec::new());
    for golden in all {
        if wanted.as_ref().is_some_and(|w| !w.contains(&golden.ty)) {
            continue;
        }
        let model = dir.join(&golden.model);
        if !model.is_file() {
            missing.push(golden.ty.clone());
            continue;
        }
        let name = format!("ladder-{}", golden.ty.to_lowercase());
        let exe = build_model(&model, &name, |_| {});
        let of_tiers = tiers.iter().zip(&per_tier).filter_map(|(&tier, goldens)| {
            let g = goldens.iter().find(|g| g.ty == golden.ty);
            if g.is_none() {
                failures.push(format!(
                    "{}: no golden in tests/golden/{}/ladder/ (scripts/quant-ladder.py goldens {} --tier {})",
                    golden.ty,
                    tier.name(),
                    golden.ty,
                    tier.name()
                ));
            }
            g.map(|g| (tier, g))
        });
        let of_tiers: Vec<(Tier, &Golden)> = of_tiers.collect();
        for (tier, golden) in of_tiers {
            for (i, case) in golden.cases.iter().enumerate() {
                let n = golden.n_predict.to_string();
                let out = run_on(
                    &exe,
                    tier,
                    &["-p", &case.prompt, "-n", &n, "--temp", "0", "-t", "2"],
                );
                assert!(
                    out.status.success(),
                    "{} case {i}: {}",
                    golden.ty,
                    String::from_utf8_lossy(&out.stderr)
                );
                match judge(case, &out.stdout, golden.near_tie) {
                Verdict::Identical => {}
                Verdict::NearTie { token, gap } => eprintln!(
                    "{} case {i}: near-tie at generated token {token} (llama.cpp's top-2 gap {gap:.2e}), accepted",
                    golden.ty
                ),
                Verdict::Mismatch { token, gap } => failures.push(format!(
                    "{} case {i} ({} tier): differs at generated token {token}, where llama.cpp's top-2 gap is {gap:.3} \
                     (not a near-tie)\n  llama.cpp: {:?}\n  mcc:       {:?}",
                    golden.ty,
                    tier.name(),
                    case.continuation,
                    String::from_utf8_lossy(&out.stdout)
                )),
            }
            }
        }
        checked += 1;
        // Each binary holds its weights (100-270 MB); keep the disk use of a run small.
        let _ = std::fs::remove_file(&exe);
    }
    if !missing.is_empty() {
        announce(&format!(
            "SKIPPED {} of {} quant-ladder models (not in {}): {}. Make them with \
             scripts/make-models.sh (needs llama.cpp's llama-quantize and llama-imatrix).",
            missing.len(),
            missing.len() + checked,
            dir.display(),
            missing.join(" ")
        ));
    }
    announce(&format!(
        "quant ladder: {checked} models checked against llama.cpp"
    ));
    assert!(
        failures.is_empty(),
        "{} continuations differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
