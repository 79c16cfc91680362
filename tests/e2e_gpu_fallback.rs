//! The GPU path's fallback, end to end: SmolLM2 Q4_1 built with `mcc build --gpu` on a
//! machine without a CUDA driver (or with `MCC_LIBCUDA` pointing at a missing library,
//! so the test means the same on a GPU machine) must print exactly one notice line,
//! `mcc: no CUDA device (REASON); running on the CPU`, and then generate what the CPU
//! path generates: the same text as `--gpu-layers 0` (the CPU path with no notice) and
//! as llama.cpp's greedy continuation in tests/golden/smollm2-q4_1.json.

use std::process::{Command, Output};

use mcc_e2e::{repo_root, scratch_dir, smollm2_q4_1};

/// Builds SmolLM2 with --gpu, once per test process.
fn build_gpu() -> std::path::PathBuf {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(build_gpu_once).clone()
}

fn build_gpu_once() -> std::path::PathBuf {
    let dir = scratch_dir();
    let exe = dir.join("smollm2-gpu");
    let args = mcc::build::Args {
        model: smollm2_q4_1(),
        output: Some(exe.clone()),
        name: Some("smollm2-gpu".into()),
        ctx: None,
        target_cpu: "native".into(),
        emit_only: false,
        jobs: None,
        generated_dir: Some(dir.join("generated")),
    };
    let gpu = mcc::gpu::GpuArgs { gpu: true };
    if let Err(e) = mcc::build::run_with(&args, &gpu) {
        panic!("mcc build --gpu failed: {e:#}");
    }
    exe
}

/// Runs the binary with the driver library forced missing.
fn run_without_driver(exe: &std::path::Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .env("MCC_LIBCUDA", "libcuda-absent-for-mcc-test.so.1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

fn golden_first_case() -> (String, String, usize) {
    let path = repo_root().join("tests/golden/smollm2-q4_1.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &json["cases"][0];
    (
        case["prompt"].as_str().unwrap().into(),
        case["continuation"].as_str().unwrap().into(),
        json["n_predict"].as_u64().unwrap() as usize,
    )
}

fn notice_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("mcc: no CUDA device"))
        .collect()
}

#[test]
fn gpu_build_falls_back_to_the_cpu_with_one_notice() {
    let exe = build_gpu();
    let (prompt, want, n) = golden_first_case();
    let n = n.to_string();
    let args = [
        "-p",
        prompt.as_str(),
        "-n",
        n.as_str(),
        "--temp",
        "0",
        "-t",
        "2",
    ];

    let gpu = run_without_driver(&exe, &args);
    let stderr = String::from_utf8_lossy(&gpu.stderr);
    assert!(gpu.status.success(), "{stderr}");
    let notices = notice_lines(&stderr);
    assert_eq!(notices.len(), 1, "one notice expected:\n{stderr}");
    assert!(
        notices[0].ends_with("; running on the CPU")
            && notices[0].contains("libcuda-absent-for-mcc-test.so.1"),
        "{}",
        notices[0]
    );

    let mut cpu_args = args.to_vec();
    cpu_args.extend(["--gpu-layers", "0"]);
    let cpu = run_without_driver(&exe, &cpu_args);
    let cpu_err = String::from_utf8_lossy(&cpu.stderr);
    assert!(cpu.status.success(), "{cpu_err}");
    assert!(notice_lines(&cpu_err).is_empty(), "{cpu_err}");

    let got = String::from_utf8_lossy(&gpu.stdout);
    assert_eq!(got, String::from_utf8_lossy(&cpu.stdout));
    assert_eq!(got, want, "llama.cpp's greedy continuation");
}

/// `bench` and `logits` take the same fallback, each with its one notice.
#[test]
fn other_commands_fall_back_too() {
    let exe = build_gpu();
    let bench = run_without_driver(&exe, &["bench", "-p", "8", "-n", "4", "-r", "1"]);
    let stderr = String::from_utf8_lossy(&bench.stderr);
    assert!(bench.status.success(), "{stderr}");
    assert_eq!(notice_lines(&stderr).len(), 1, "{stderr}");
    assert!(String::from_utf8_lossy(&bench.stdout).contains("CPU (mcc)"));

    let dir = tempfile_dir();
    let prompt = dir.join("prompt.txt");
    std::fs::write(&prompt, "Hello there").unwrap();
    let out = dir.join("logits.bin");
    let logits = run_without_driver(
        &exe,
        &[
            "logits",
            "-f",
            prompt.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&logits.stderr);
    assert!(logits.status.success(), "{stderr}");
    assert_eq!(notice_lines(&stderr).len(), 1, "{stderr}");
    assert!(std::fs::metadata(&out).unwrap().len() > 8);
}

/// A fresh directory under the scratch dir (the root package has no tempfile).
fn tempfile_dir() -> std::path::PathBuf {
    let dir = scratch_dir().join(format!("gpu-fallback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
