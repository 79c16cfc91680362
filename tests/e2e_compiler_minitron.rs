//! The flagship shape: a Minitron-4B-shaped random-weight Q4_K_M model (Llama 3
//! vocabulary, untied output, Llama-3.1 RoPE scaling, head_dim 128 != 3072 / 32, Q4_K and
//! Q6_K mixed per layer), made by scripts/make-minitron.sh. Compiled by mcc, its logits
//! for a short prompt agree with llama.cpp's on the same file: the same token ids, the
//! same top-1 token at every position, and (measured) the same logits to the bit.
//!
//! This model is a hard case: 32 layers of random weights amplify any rounding
//! difference to about 3% of the logits' scale, and random logits have top-2 margins down
//! to 0.03, so llama.cpp with and without its repacked Q4_K kernels disagrees with itself
//! on top-1 at 1 of these 16 positions. Agreement everywhere needs every kernel to round
//! as llama.cpp's do, including its batch-size-dependent prompt kernels
//! (`runtime/src/quant/superblock.rs`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use mcc_e2e::{build_model, cache_dir, repo_root, run, scratch_dir};

fn minitron() -> PathBuf {
    let path = cache_dir().join("models/synth-minitron.Q4_K_M.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/make-minitron.sh (about 5 minutes, 9 GB of scratch disk)",
        path.display()
    );
    path
}

/// llama.cpp's logits tool, built by scripts/build-llama-logits.sh if needed.
fn llama_logits() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/build-llama-logits.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-llama-logits.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// (token ids, logits per position) of a logits file: u32 n, u32 n_vocab, n u32 ids,
/// n x n_vocab f32.
fn read_logits(path: &std::path::Path) -> (Vec<u32>, Vec<Vec<f32>>) {
    let b = std::fs::read(path).unwrap();
    let u32_at = |i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
    let (n, n_vocab) = (u32_at(0) as usize, u32_at(1) as usize);
    let ids = (0..n).map(|i| u32_at(2 + i)).collect();
    let floats: Vec<f32> = b[(2 + n) * 4..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats.len(), n * n_vocab, "{}", path.display());
    (ids, floats.chunks(n_vocab).map(<[f32]>::to_vec).collect())
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
#[ignore = "needs the Minitron-shaped model (scripts/make-minitron.sh, ~15 min, 9 GB scratch) and llama.cpp (../shared/scripts/llama-ref.sh, ~20 min): run by scripts/test-full.sh"]
fn logits_agree_with_llama_cpp() {
    let model = minitron();
    let t = Instant::now();
    let exe = build_model(&model, "minitron", |_| {});
    eprintln!("mcc build (as found: warm or cold): {:.1?}", t.elapsed());
    eprintln!(
        "binary {} bytes, GGUF {} bytes",
        std::fs::metadata(&exe).unwrap().len(),
        std::fs::metadata(&model).unwrap().len()
    );

    let dir = scratch_dir();
    let prompt = dir.join("minitron-prompt.txt");
    std::fs::write(
        &prompt,
        "The quick brown fox jumps over the lazy dog. Paris is the capital of",
    )
    .unwrap();
    let ours = dir.join("minitron-mcc.logits");
    let theirs = dir.join("minitron-llama.logits");
    let out = run(
        &exe,
        &[
            "logits",
            "-f",
            prompt.to_str().unwrap(),
            "-o",
            ours.to_str().unwrap(),
            "-t",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(llama_logits())
        .arg(&model)
        .arg(&prompt)
        .arg("512")
        .arg("2")
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (ids, got) = read_logits(&ours);
    let (ref_ids, want) = read_logits(&theirs);
    assert_eq!(ids, ref_ids, "tokenization differs");
    assert!(ids.len() >= 10);
    let mut max_diff = 0f32;
    let mut same_top1 = 0;
    for (p, (g, w)) in got.iter().zip(&want).enumerate() {
        let diff = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let rms = (g
            .iter()
            .zip(w)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / g.len() as f64)
            .sqrt();
        let mut sorted = w.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let margin = sorted[0] - sorted[1];
        let agree = argmax(g) == argmax(w);
        eprintln!(
            "position {p:2}: top-1 {} {:6} / {:6}, llama.cpp margin {margin:.3}, max |diff| {diff:.3}, rms {rms:.4}",
            if agree { "same" } else { "DIFF" },
            argmax(g),
            argmax(w)
        );
        same_top1 += usize::from(agree);
        max_diff = max_diff.max(diff);
        // Logits have standard deviation 1; a wrong tensor, scale or rope gives an rms
        // near 1.4, a different summation order about 0.03 (see the module comment).
        assert!(rms < 1e-3, "position {p}: rms difference {rms}");
        assert!(
            agree,
            "top-1 differs at position {p} (llama.cpp margin {margin})"
        );
    }
    eprintln!(
        "{} positions: top-1 identical at {same_top1}; max |mcc - llama.cpp| = {max_diff:.3}",
        ids.len()
    );
    // Measured: 0 (bit-identical). The bound leaves room for a future llama.cpp that
    // reorders one sum, not for a wrong kernel.
    assert!(max_diff < 1e-3, "max abs difference {max_diff}");
}
