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

/// A stand-in `libcuda.so.1` with every entry point the runtime resolves, whose
/// behaviour `FAKE_CUDA` picks: `nodevice` (cuInit fails), `zero` (no devices), `jit`
/// (the module does not compile, with a JIT log), `ok` (everything succeeds, "device"
/// memory is host memory and kernels do nothing). It checks the driver layer's symbol
/// list, its error values, the notice for each way a real driver can refuse, and the
/// host side of a GPU run (uploads, buffers, graph, steps, the CPU tail, teardown).
const FAKE_CUDA: &str = r#"
#include <stdlib.h>
#include <string.h>
typedef int CUresult;
static const char *mode(void) { const char *m = getenv("FAKE_CUDA"); return m ? m : ""; }
CUresult cuInit(unsigned f) { return strcmp(mode(), "nodevice") == 0 ? 100 : 0; }
CUresult cuDeviceGetCount(int *n) { *n = strcmp(mode(), "zero") == 0 ? 0 : 1; return 0; }
CUresult cuDeviceGet(int *d, int o) { *d = o; return 0; }
CUresult cuDeviceGetName(char *s, int n, int d) { strncpy(s, "Fake GPU", n); return 0; }
CUresult cuDevicePrimaryCtxRetain(void **c, int d) { *c = (void *)0x10; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int d) { return 0; }
CUresult cuCtxSetCurrent(void *c) { return 0; }
CUresult cuCtxSynchronize(void) { return 0; }
static int ok(void) { return strcmp(mode(), "ok") == 0; }
CUresult cuModuleLoadDataEx(void **m, const void *img, unsigned n, int *opts, void **vals) {
    if (ok()) { *m = (void *)0x30; return 0; }
    for (unsigned i = 0; i < n; i++)
        if (opts[i] == 5) strcpy((char *)vals[i], "ptxas fatal: fake JIT refusal");
    return 218;
}
CUresult cuModuleUnload(void *m) { return 0; }
CUresult cuModuleGetFunction(void **f, void *m, const char *n) { *f = (void *)0x40; return ok() ? 0 : 500; }
/* "Device" memory is host memory: copies are real, kernels do nothing. */
CUresult cuMemAlloc_v2(unsigned long long *p, size_t n) {
    void *m = ok() ? calloc(1, n) : NULL;
    *p = (unsigned long long)m;
    return m ? 0 : 2;
}
CUresult cuMemFree_v2(unsigned long long p) { free((void *)p); return 0; }
CUresult cuMemsetD8_v2(unsigned long long p, unsigned char v, size_t n) { memset((void *)p, v, n); return 0; }
CUresult cuMemcpyHtoD_v2(unsigned long long d, const void *s, size_t n) { memcpy((void *)d, s, n); return 0; }
CUresult cuMemcpyHtoDAsync_v2(unsigned long long d, const void *s, size_t n, void *st) { memcpy((void *)d, s, n); return 0; }
CUresult cuMemcpyDtoHAsync_v2(void *d, unsigned long long s, size_t n, void *st) { memcpy(d, (void *)s, n); return 0; }
CUresult cuLaunchKernel(void *f, unsigned a, unsigned b, unsigned c, unsigned d, unsigned e,
                        unsigned g, unsigned sh, void *st, void **p, void **x) { return 0; }
CUresult cuStreamCreate(void **s, unsigned f) { *s = (void *)0x20; return 0; }
CUresult cuStreamDestroy_v2(void *s) { return 0; }
CUresult cuStreamSynchronize(void *s) { return 0; }
CUresult cuStreamBeginCapture_v2(void *s, int m) { return 0; }
CUresult cuStreamEndCapture(void *s, void **g) { *g = (void *)0x50; return 0; }
CUresult cuGraphInstantiateWithFlags(void **e, void *g, unsigned long long f) { *e = (void *)0x60; return 0; }
CUresult cuGraphLaunch(void *e, void *s) { return 0; }
CUresult cuGraphDestroy(void *g) { return 0; }
CUresult cuGraphExecDestroy(void *e) { return 0; }
CUresult cuGetErrorString(CUresult r, const char **s) {
    *s = r == 100 ? "no CUDA-capable device is detected"
       : r == 218 ? "a PTX JIT compilation failed" : "fake error";
    return 0;
}
"#;

/// Builds the stand-in driver with the C compiler mcc uses, once per test process.
fn fake_libcuda() -> std::path::PathBuf {
    static LIB: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(build_fake_libcuda).clone()
}

fn build_fake_libcuda() -> std::path::PathBuf {
    let dir = tempfile_dir().join("fake-cuda");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("fake_cuda.c");
    let lib = dir.join("libfakecuda.so");
    std::fs::write(&src, FAKE_CUDA).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success(), "cannot build the stand-in libcuda");
    lib
}

/// Each way a present driver can refuse ends in the one notice with its reason, and the
/// CPU run's text.
#[test]
fn a_refusing_driver_falls_back_with_its_reason() {
    let exe = build_gpu();
    let lib = fake_libcuda();
    let args = [
        "-p",
        "The capital of France is",
        "-n",
        "8",
        "--temp",
        "0",
        "-t",
        "2",
    ];
    let cpu = run_without_driver(&exe, &[&args[..], &["--gpu-layers", "0"]].concat());
    for (mode, reason) in [
        (
            "nodevice",
            "cuInit: no CUDA-capable device is detected (CUresult 100)",
        ),
        ("zero", "the CUDA driver reports no device"),
        (
            "jit",
            "a PTX JIT compilation failed (CUresult 218): ptxas fatal: fake JIT refusal",
        ),
    ] {
        let out = Command::new(&exe)
            .args(args)
            .env("MCC_LIBCUDA", &lib)
            .env("FAKE_CUDA", mode)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {stderr}");
        let notices = notice_lines(&stderr);
        assert_eq!(notices.len(), 1, "{mode}:\n{stderr}");
        assert!(notices[0].contains(reason), "{mode}: {}", notices[0]);
        assert_eq!(out.stdout, cpu.stdout, "{mode}: the CPU path's text");
    }
}

/// With a driver that accepts everything, the binary takes the GPU path end to end on
/// the host side (the kernels are no-ops, so the text is not checked): all layers,
/// split layers, bench and logits run and exit cleanly.
#[test]
fn the_host_side_of_a_gpu_run_completes() {
    let exe = build_gpu();
    let lib = fake_libcuda();
    let dir = tempfile_dir();
    let prompt = dir.join("p.txt");
    std::fs::write(&prompt, "Hello there, general Kenobi").unwrap();
    let logits = dir.join("l.bin");
    let runs: [Vec<&str>; 4] = [
        vec!["-p", "Hi", "-n", "6", "--temp", "0"],
        vec![
            "-p",
            "Hi",
            "-n",
            "6",
            "--temp",
            "0.7",
            "--seed",
            "1",
            "--gpu-layers",
            "7",
        ],
        vec!["bench", "-p", "8", "-n", "4", "-r", "1"],
        vec![
            "logits",
            "-f",
            prompt.to_str().unwrap(),
            "-o",
            logits.to_str().unwrap(),
        ],
    ];
    for args in runs {
        let out = Command::new(&exe)
            .args(&args)
            .env("MCC_LIBCUDA", &lib)
            .env("FAKE_CUDA", "ok")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(notice_lines(&stderr).is_empty(), "{args:?}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("mcc: running on Fake GPU"))
            .unwrap_or_else(|| panic!("{args:?}: no start-up line in\n{stderr}"));
        if args.contains(&"--gpu-layers") {
            assert!(line.contains("(7 of 30 layers on the GPU"), "{line}");
        } else {
            assert!(
                line.contains("(30 of 30 layers on the GPU, decode as a CUDA graph)"),
                "{line}"
            );
        }
    }
    assert!(std::fs::metadata(&logits).unwrap().len() > 8);
}

/// A fresh directory under the scratch dir (the root package has no tempfile).
fn tempfile_dir() -> std::path::PathBuf {
    // One per process: concurrent test runs must not share the stand-in library.
    let dir = scratch_dir().join(format!("gpu-fallback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
