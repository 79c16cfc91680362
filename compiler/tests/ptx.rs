//! The GPU path's offline checks: the PTX that `mcc build --gpu` emits for the three
//! fixture models (tiny synth, SmolLM2 Q4_1 header, Minitron-shaped Q4_K_M header) is
//! pinned with insta (`ptx__<fixture>@model.ptx` and `@src_gpu.rs` in
//! `compiler/tests/snapshots/`), and every emitted PTX file, plus a matvec and an
//! embedding kernel for every quant type the emitter claims, assembles with NVIDIA's
//! `ptxas` for sm_80 (A100) and sm_90 (H100/H200).
//!
//! ptxas comes from `scripts/fetch-ptxas.sh` (the pinned `nvidia-cuda-nvcc-cu12` wheel),
//! found through `$MCC_PTXAS`, the cache path that script uses, or `ptxas` on PATH.
//! Without one the assembling tests say so and pass, unless `MCC_REQUIRE_PTXAS` is set
//! (scripts/test.sh sets it), when they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use mcc::describe::describe;
use mcc::emit::{emit_crate, Contents, EmitOptions, EmittedFile};
use mcc::gguf::writer::{GgufWriter, TensorData, WriteMode};
use mcc::gguf::{GgmlType, GgufFile, Value};
use mcc::gpu::{add_to_crate, dequant, kernels};
use mcc::plan::plan;
use mcc::synth::{llama_writer, toy_vocab, SynthConfig};

fn cache_dir() -> PathBuf {
    std::env::var_os("MCC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/mcc"))
}

/// The ptxas to use, or `None` (after saying why) when there is none and none is required.
fn ptxas() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("MCC_PTXAS").map(PathBuf::from),
        Some(cache_dir().join("cuda/nvcc-12.6.85/nvidia/cuda_nvcc/bin/ptxas")),
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("ptxas"))
                .find(|p| p.is_file())
        }),
    ];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(p);
    }
    if std::env::var_os("MCC_REQUIRE_PTXAS").is_some() {
        panic!("ptxas not found and MCC_REQUIRE_PTXAS is set: run scripts/fetch-ptxas.sh and export MCC_PTXAS");
    }
    eprintln!("SKIPPED: ptxas not found (run scripts/fetch-ptxas.sh, or set MCC_PTXAS); the PTX was emitted but not assembled");
    None
}

/// Assembles `ptx` for sm_80 and sm_90; panics with ptxas's message on failure.
fn assemble(label: &str, ptx: &str) {
    let Some(ptxas) = ptxas() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("k.ptx");
    std::fs::write(&src, ptx).unwrap();
    for arch in ["sm_80", "sm_90"] {
        let out = Command::new(&ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-o")
            .arg(dir.path().join(format!("k.{arch}.cubin")))
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{label}: ptxas -arch={arch} failed:\n{stderr}"
        );
        assert!(
            !stderr.contains("warning"),
            "{label}: ptxas -arch={arch} warns:\n{stderr}"
        );
    }
}

/// With `MCC_PTX_OUT=DIR`, writes `text` to `DIR/name`: scripts/gpu-device-check.sh
/// carries these files to a GPU machine and runs the kernels there.
fn export(name: &str, text: &str) {
    if let Some(dir) = std::env::var_os("MCC_PTX_OUT") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn emit_gpu(gguf: &Path, name: &str) -> Vec<EmittedFile> {
    let g = GgufFile::open(gguf).unwrap();
    let desc = describe(&g).unwrap();
    let opts = EmitOptions {
        name: name.into(),
        n_ctx: desc.n_ctx_train.min(4096),
        target_cpu: "native".into(),
        gguf_path: gguf.to_path_buf(),
        runtime_path: PathBuf::from("[mcc]/runtime"),
    };
    let p = plan(&desc, &g);
    let mut files = emit_crate(&desc, &p, &opts, desc.tokenizer.to_bytes());
    add_to_crate(&mut files, &desc, &p, &opts).unwrap();
    files
}

fn source<'f>(files: &'f [EmittedFile], path: &str) -> &'f str {
    match &files.iter().find(|f| f.path == path).unwrap().contents {
        Contents::Source(s) => s,
        _ => panic!("{path} is not a source"),
    }
}

/// Snapshots model.ptx and src/gpu.rs, and assembles model.ptx.
fn check_fixture(fixture: &str, gguf: &Path) {
    let files = emit_gpu(gguf, fixture);
    let ptx = source(&files, "model.ptx");
    let gpu_rs = source(&files, "src/gpu.rs");
    assert!(source(&files, "src/main.rs").contains("main_gpu::<model::Model>(&gpu::GPU)"));
    let dir = gguf.parent().unwrap().to_string_lossy().into_owned();
    for (path, text) in [("model.ptx", ptx), ("src/gpu.rs", gpu_rs)] {
        assert!(!text.contains(&dir), "{path} names the GGUF's directory");
        let name = format!("{fixture}@{}", path.replace('/', "_"));
        insta::with_settings!({ snapshot_path => "snapshots", omit_expression => true }, {
            insta::assert_snapshot!(name, text);
        });
    }
    assemble(fixture, ptx);
}

fn tiny_gguf(dir: &Path) -> PathBuf {
    let cfg = SynthConfig::tiny();
    let path = dir.join("synth-tiny.gguf");
    llama_writer(&cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab)
        .unwrap()
        .write(&path, WriteMode::Full)
        .unwrap();
    path
}

/// Q4_K_M's tensor types for a llama model (as compiler/tests/snapshots.rs): Q6_K for
/// output.weight and for attn_v / ffn_down of the first and last eighth of the layers
/// and every third layer between, F32 for vectors, Q4_K otherwise.
fn q4_k_m_type(name: &str, dims: &[u64], n: usize) -> GgmlType {
    if dims.len() == 1 {
        return GgmlType::F32;
    }
    if name == "output.weight" {
        return GgmlType::Q6_K;
    }
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok());
    match layer {
        Some(i)
            if (name.ends_with(".attn_v.weight") || name.ends_with(".ffn_down.weight"))
                && (i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2) =>
        {
            GgmlType::Q6_K
        }
        _ => GgmlType::Q4_K,
    }
}

/// A header-only Minitron-shaped Q4_K_M GGUF.
fn minitron_q4_k_m_gguf(dir: &Path) -> PathBuf {
    let mut cfg = SynthConfig::minitron();
    cfg.weight_type = GgmlType::F16;
    let f16 = dir.join("minitron-f16.gguf");
    llama_writer(&cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab)
        .unwrap()
        .write(&f16, WriteMode::HeaderOnly)
        .unwrap();
    let g = GgufFile::open(&f16).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        let v = match k.as_str() {
            "general.file_type" => Value::U32(15),
            _ => v.clone(),
        };
        w.add_kv(k.clone(), v);
    }
    for t in &g.tensors {
        let ty = q4_k_m_type(&t.name, &t.dims, cfg.n_layer);
        let n_bytes = t.n_elements / ty.block_elems() * ty.block_bytes();
        w.add_tensor(
            t.name.clone(),
            &t.dims,
            ty,
            TensorData::Bytes(vec![0; n_bytes as usize]),
        );
    }
    let path = dir.join("synth-minitron.Q4_K_M.gguf");
    w.write(&path, WriteMode::HeaderOnly).unwrap();
    path
}

#[test]
fn tiny() {
    let dir = tempfile::tempdir().unwrap();
    check_fixture("tiny", &tiny_gguf(dir.path()));
}

#[test]
fn smollm2() {
    let gguf = cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        gguf.display()
    );
    check_fixture("smollm2", &gguf);
}

#[test]
fn minitron_q4_k_m() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = minitron_q4_k_m_gguf(dir.path());
    let files = emit_gpu(&gguf, "minitron");
    let ptx = source(&files, "model.ptx");
    // One kernel per (type, shape, mode) used: Q4_K and Q6_K matvecs, no others.
    assert!(ptx.contains(".visible .entry mv_q4_k_"));
    assert!(ptx.contains(".visible .entry mva_q6_k_"));
    assert!(ptx.contains(".visible .entry mv_q6_k_"), "output.weight");
    assert!(!ptx.contains("_q8_0_"));
    export("minitron.ptx", ptx);
    check_fixture("minitron", &gguf);
}

/// A build without --gpu emits none of the GPU files.
#[test]
fn builds_without_gpu_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let g = GgufFile::open(&gguf).unwrap();
    let desc = describe(&g).unwrap();
    let opts = EmitOptions {
        name: "tiny".into(),
        n_ctx: 64,
        target_cpu: "native".into(),
        gguf_path: gguf.clone(),
        runtime_path: PathBuf::from("[mcc]/runtime"),
    };
    let p = plan(&desc, &g);
    let plain = emit_crate(&desc, &p, &opts, desc.tokenizer.to_bytes());
    let mut gpu = plain.clone();
    add_to_crate(&mut gpu, &desc, &p, &opts).unwrap();
    let paths = |f: &[EmittedFile]| f.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
    assert_eq!(
        paths(&gpu),
        [
            "Cargo.toml",
            "build.rs",
            "weights.S",
            "src/main.rs",
            "src/model.rs",
            "src/gpu.rs",
            "model.ptx",
            "tokenizer.bin",
            "model.gguf"
        ]
    );
    for f in &plain {
        if f.path != "src/main.rs" {
            assert!(gpu.contains(f), "{} changed", f.path);
        }
    }
}

/// Every table any supported type reads.
fn all_tables() -> Vec<dequant::Table> {
    let mut t: Vec<_> = dequant::SUPPORTED
        .iter()
        .flat_map(|&ty| dequant::unit(ty).unwrap().tables())
        .collect();
    t.sort();
    t.dedup();
    t
}

/// Every quant type the emitter supports gets a matvec (both store modes) and an
/// embedding kernel that assemble, at a K-quant-friendly shape.
#[test]
fn every_supported_type_assembles() {
    let mut ptx = kernels::fill(
        include_str!("../../templates/ptx/header.ptx"),
        &[
            ("mcc_version", "test".into()),
            ("source", "every supported type".into()),
            ("summary", String::new()),
            ("tables", dequant::tables_ptx(&all_tables())),
        ],
    );
    for t in dequant::SUPPORTED {
        let n = t.name().to_ascii_lowercase();
        ptx += &kernels::matvec(&format!("mv_{n}"), t, 96, 512, false).unwrap();
        ptx += &kernels::matvec(&format!("mva_{n}"), t, 96, 512, true).unwrap();
        ptx += &kernels::embed(&format!("embed_{n}"), t, 100, 512).unwrap();
    }
    export("all_types.ptx", &ptx);
    assemble("every supported type", &ptx);
}

/// Every weight type of the seed table has a GPU kernel.
#[test]
fn every_seed_table_type_is_supported() {
    for t in GgmlType::ALL {
        assert!(
            dequant::SUPPORTED.contains(&t),
            "{} has no GPU kernel",
            t.name()
        );
    }
}
