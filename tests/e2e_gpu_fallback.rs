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
        target_cpu: None,
        emit_only: false,
        jobs: None,
        generated_dir: Some(dir.join("generated")),
        static_link: false,
        ..Default::default()
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

fn notice_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("mcc: no CUDA device"))
        .collect()
}

#[test]
fn gpu_build_falls_back_to_the_cpu_with_one_notice() {
    let exe = build_gpu();
    let (prompt, want, n) = mcc_e2e::first_greedy_case();
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
    assert!(String::from_utf8_lossy(&bench.stdout).contains("CPU (mcc, "));

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

/// The directory under the scratch dir for this file's inputs and builds (the root
/// package has no tempfile).
fn tempfile_dir() -> std::path::PathBuf {
    // A fixed place, so that runs overwrite instead of piling up builds.
    let dir = scratch_dir().join("gpu-fallback");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `libcuda.so.1` that runs the kernels in mcc's PTX interpreter (`mcc::gpu::sim`):
/// device memory is the interpreter's, a launch runs the kernel there (a captured graph
/// replays its launches). With it the GPU path of a real binary runs end to end without
/// a GPU: driver layer, weight upload, both graphs, kernels, copies back.
const EMULATED_CUDA: &str = r#"
use std::ffi::{c_char, c_void, CStr};
use std::sync::Mutex;

use mcc::gpu::sim::{Device, Module};

struct Launch {
    kernel: String,
    grid: (u32, u32),
    block: u32,
    args: Vec<u64>,
}

#[derive(Default)]
struct State {
    dev: Option<Device>,
    functions: Vec<String>,
    capture: Option<Vec<Launch>>,
    graphs: Vec<Vec<Launch>>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(State::default))
}

fn run(s: &mut State, l: &Launch) -> i32 {
    let Some(dev) = s.dev.as_mut() else { return 400 };
    match dev.launch_2d(&l.kernel, l.grid, l.block, &l.args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("emulated GPU: {e}");
            700
        }
    }
}

#[no_mangle] pub extern "C" fn cuInit(_: u32) -> i32 { 0 }
#[no_mangle] pub unsafe extern "C" fn cuDeviceGetCount(n: *mut i32) -> i32 { *n = 1; 0 }
#[no_mangle] pub unsafe extern "C" fn cuDeviceGet(d: *mut i32, o: i32) -> i32 { *d = o; 0 }
#[no_mangle] pub unsafe extern "C" fn cuDeviceGetName(s: *mut c_char, n: i32, _: i32) -> i32 {
    let name = b"Emulated GPU\0";
    std::ptr::copy_nonoverlapping(name.as_ptr().cast(), s, name.len().min(n as usize));
    0
}
#[no_mangle] pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(c: *mut *mut c_void, _: i32) -> i32 { *c = 16 as *mut c_void; 0 }
#[no_mangle] pub extern "C" fn cuDevicePrimaryCtxRelease_v2(_: i32) -> i32 { 0 }
#[no_mangle] pub extern "C" fn cuCtxSetCurrent(_: *mut c_void) -> i32 { 0 }
#[no_mangle] pub extern "C" fn cuCtxSynchronize() -> i32 { 0 }
#[no_mangle] pub unsafe extern "C" fn cuModuleLoadDataEx(m: *mut *mut c_void, image: *const c_void, _: u32, _: *mut i32, _: *mut *mut c_void) -> i32 {
    let text = CStr::from_ptr(image.cast()).to_string_lossy().into_owned();
    match Module::parse(&text) {
        Ok(module) => {
            with(|s| s.dev = Some(Device::new(module)));
            *m = 32 as *mut c_void;
            0
        }
        Err(e) => { eprintln!("emulated GPU: {e}"); 218 }
    }
}
#[no_mangle] pub extern "C" fn cuModuleUnload(_: *mut c_void) -> i32 { 0 }
#[no_mangle] pub unsafe extern "C" fn cuModuleGetFunction(f: *mut *mut c_void, _: *mut c_void, name: *const c_char) -> i32 {
    let name = CStr::from_ptr(name).to_string_lossy().into_owned();
    with(|s| {
        if s.dev.as_ref().and_then(|d| d.param_count(&name)).is_none() { return 500; }
        s.functions.push(name);
        *f = s.functions.len() as *mut c_void;
        0
    })
}
#[no_mangle] pub unsafe extern "C" fn cuMemAlloc_v2(p: *mut u64, n: usize) -> i32 {
    with(|s| match s.dev.as_mut() { Some(d) => { *p = d.alloc(n); 0 } None => 2 })
}
#[no_mangle] pub extern "C" fn cuMemFree_v2(_: u64) -> i32 { 0 }
#[no_mangle] pub extern "C" fn cuMemsetD8_v2(p: u64, v: u8, n: usize) -> i32 {
    with(|s| { if let Some(d) = s.dev.as_mut() { d.write(p, &vec![v; n]); } 0 })
}
#[no_mangle] pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, n: usize) -> i32 {
    let bytes = std::slice::from_raw_parts(src.cast::<u8>(), n).to_vec();
    with(|s| { if let Some(d) = s.dev.as_mut() { d.write(dst, &bytes); } 0 })
}
#[no_mangle] pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(dst: u64, src: *const c_void, n: usize, _: *mut c_void) -> i32 {
    cuMemcpyHtoD_v2(dst, src, n)
}
#[no_mangle] pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: u64, n: usize, _: *mut c_void) -> i32 {
    with(|s| match s.dev.as_ref() {
        Some(d) => { std::ptr::copy_nonoverlapping(d.read(src, n).as_ptr(), dst.cast::<u8>(), n); 0 }
        None => 1,
    })
}
#[no_mangle] pub unsafe extern "C" fn cuLaunchKernel(f: *mut c_void, gx: u32, gy: u32, _: u32, bx: u32, _: u32, _: u32, _: u32, _: *mut c_void, params: *mut *mut c_void, _: *mut *mut c_void) -> i32 {
    with(|s| {
        let Some(kernel) = s.functions.get(f as usize - 1).cloned() else { return 400 };
        let n = s.dev.as_ref().and_then(|d| d.param_count(&kernel)).unwrap_or(0);
        let args = (0..n).map(|i| *(*params.add(i)).cast::<u64>()).collect();
        let l = Launch { kernel, grid: (gx, gy), block: bx, args };
        match s.capture.as_mut() {
            Some(c) => { c.push(l); 0 }
            None => run(s, &l),
        }
    })
}
#[no_mangle] pub unsafe extern "C" fn cuStreamCreate(st: *mut *mut c_void, _: u32) -> i32 { *st = 48 as *mut c_void; 0 }
#[no_mangle] pub extern "C" fn cuStreamDestroy_v2(_: *mut c_void) -> i32 { 0 }
#[no_mangle] pub extern "C" fn cuStreamSynchronize(_: *mut c_void) -> i32 { 0 }
#[no_mangle] pub extern "C" fn cuStreamBeginCapture_v2(_: *mut c_void, _: i32) -> i32 { with(|s| s.capture = Some(Vec::new())); 0 }
#[no_mangle] pub unsafe extern "C" fn cuStreamEndCapture(_: *mut c_void, g: *mut *mut c_void) -> i32 {
    with(|s| {
        let launches = s.capture.take().unwrap_or_default();
        s.graphs.push(launches);
        *g = s.graphs.len() as *mut c_void;
        0
    })
}
#[no_mangle] pub unsafe extern "C" fn cuGraphInstantiateWithFlags(e: *mut *mut c_void, g: *mut c_void, _: u64) -> i32 { *e = g; 0 }
#[no_mangle] pub extern "C" fn cuGraphLaunch(e: *mut c_void, _: *mut c_void) -> i32 {
    with(|s| {
        let launches = std::mem::take(&mut s.graphs[e as usize - 1]);
        let mut r = 0;
        for l in &launches {
            r = run(s, l);
            if r != 0 { break; }
        }
        s.graphs[e as usize - 1] = launches;
        r
    })
}
#[no_mangle] pub extern "C" fn cuGraphDestroy(_: *mut c_void) -> i32 { 0 }
#[no_mangle] pub extern "C" fn cuGraphExecDestroy(_: *mut c_void) -> i32 { 0 }
#[no_mangle] pub unsafe extern "C" fn cuGetErrorString(r: i32, s: *mut *const c_char) -> i32 {
    *s = match r { 700 => c"an illegal memory access was encountered", 218 => c"a PTX JIT compilation failed", _ => c"emulated GPU error" }.as_ptr();
    0
}
"#;

/// Builds the emulated driver (a cdylib over the `mcc` crate), once per test process.
fn emulated_libcuda() -> std::path::PathBuf {
    static LIB: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let root = repo_root();
        let dir = tempfile_dir().join("emulated-cuda");
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let manifest = format!(
            "[package]\nname = \"mcc-emulated-cuda\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nmcc = {{ path = \"{}\" }}\n\n[workspace]\n",
            root.join("compiler").display()
        );
        std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
        std::fs::write(dir.join("src/lib.rs"), EMULATED_CUDA).unwrap();
        // The workspace's lock file pins every dependency, so no registry is needed.
        std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
        let target = root.join("target");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--offline", "-q", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .unwrap();
        assert!(status.success(), "cannot build the emulated libcuda");
        target.join("release/libmcc_emulated_cuda.so")
    })
    .clone()
}

/// Reads a `logits` file: (ids, n_vocab, values).
fn read_logits(path: &std::path::Path) -> (usize, usize, Vec<f32>) {
    let raw = std::fs::read(path).unwrap();
    let word = |i: usize| u32::from_le_bytes(raw[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    let (n, v) = (word(0), word(1));
    let values = raw[8 + 4 * n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (n, v, values)
}

/// A synthetic model built with --gpu runs on the emulated GPU: it announces the
/// device, and its logits over a prompt (whole prefill tiles plus decode steps) match
/// the CPU path of the same binary, with every layer on the GPU and with one.
#[test]
fn an_emulated_gpu_runs_the_binary_end_to_end() {
    let lib = emulated_libcuda();
    let dir = tempfile_dir();
    let gguf = dir.join("emulated-tiny.gguf");
    // F16 weights, a tied output and Llama-3.1 rope_freqs: the paths beyond plain F32.
    let mut cfg = mcc::synth::SynthConfig::tiny();
    cfg.weight_type = mcc::gguf::GgmlType::F16;
    cfg.tied = true;
    cfg.rope_scaling = Some(mcc::synth::Llama3RopeScaling::LLAMA_3_1);
    mcc::synth::llama_writer(
        &cfg,
        mcc::synth::toy_vocab(cfg.n_vocab).unwrap(),
        cfg.n_vocab,
    )
    .unwrap()
    .write(&gguf, mcc::gguf::writer::WriteMode::Full)
    .unwrap();
    let exe = dir.join("emulated-tiny");
    let args = mcc::build::Args {
        model: gguf,
        output: Some(exe.clone()),
        name: Some("emulated-tiny".into()),
        ctx: Some(64),
        target_cpu: None,
        emit_only: false,
        jobs: None,
        generated_dir: Some(dir.join("generated")),
        static_link: false,
        ..Default::default()
    };
    mcc::build::run_with(&args, &mcc::gpu::GpuArgs { gpu: true }).unwrap();
    let prompt = dir.join("emulated-prompt.txt");
    std::fs::write(&prompt, "The quick brown fox jumps over the lazy dog.").unwrap();
    let logits = |extra: &[&str], out: &str| {
        let out = dir.join(out);
        let mut cmd = Command::new(&exe);
        cmd.args([
            "logits",
            "-f",
            prompt.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args(extra)
        .env("MCC_LIBCUDA", &lib);
        let o = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{extra:?}: {stderr}");
        (read_logits(&out), stderr)
    };
    let ((n, v, cpu), _) = logits(&["--gpu-layers", "0"], "cpu.bin");
    assert!(n > 8, "the prompt covers a whole prefill tile ({n} tokens)");
    for (extra, layers) in [(&[][..], "2 of 2"), (&["--gpu-layers", "1"][..], "1 of 2")] {
        let ((gn, gv, gpu), stderr) = logits(extra, "gpu.bin");
        assert!(
            stderr.contains(&format!("mcc: running on Emulated GPU ({layers} layers")),
            "{stderr}"
        );
        assert_eq!((gn, gv), (n, v));
        let mut worst = 0f32;
        let mut same_top = 0;
        for (c, g) in cpu.chunks(v).zip(gpu.chunks(v)) {
            let scale = c.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = c.iter().zip(g).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            worst = worst.max(diff / scale);
            let top = |x: &[f32]| (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b });
            same_top += usize::from(top(c) == top(g));
        }
        eprintln!("{extra:?}: {n} positions, largest logit difference {worst:.1e}, top-1 agreement {same_top}/{n}");
        assert!(
            worst < 5e-3,
            "{extra:?}: logits differ by {worst} of the largest"
        );
        assert!(
            same_top * 10 >= n * 9,
            "{extra:?}: top-1 agrees at {same_top} of {n}"
        );
    }
    // Greedy generation (sampled on the host from the copied logits), and bench, whose
    // generation steps bring back only the device argmax.
    let text = |extra: &[&str]| {
        let o = Command::new(&exe)
            .args(["-p", "Once upon a time", "-n", "12", "--temp", "0"])
            .args(extra)
            .env("MCC_LIBCUDA", &lib)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    assert_eq!(
        text(&[]),
        text(&["--gpu-layers", "0"]),
        "greedy text, GPU vs CPU"
    );
    let bench = Command::new(&exe)
        .args(["bench", "-p", "16", "-n", "4", "-r", "1"])
        .env("MCC_LIBCUDA", &lib)
        .output()
        .unwrap();
    assert!(bench.status.success());
    assert!(String::from_utf8_lossy(&bench.stdout).contains("CUDA (mcc)"));
}
