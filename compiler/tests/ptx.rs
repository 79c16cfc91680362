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
use mcc::plan::plan_for;
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
        exe_name: mcc::build::exe_name(name, Path::new("/generated").join(name).as_path()),
        n_ctx: desc.n_ctx_train.min(4096),
        target_cpu: None,
        static_link: false,
        gguf_path: gguf.to_path_buf(),
        runtime_path: PathBuf::from("[mcc]/runtime"),
    };
    let p = plan_for(&desc, &g, false, true);
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
    // every kernel tier's copy of the program runs the GPU path
    for entry in ["src/main.rs", "tiers/avx2/lib.rs", "tiers/avx512/lib.rs"] {
        let text = source(&files, entry);
        assert!(
            text.contains("main_gpu::<model::Model>(&gpu::GPU, tier)"),
            "{entry}"
        );
        assert!(text.contains("mod gpu;"), "{entry}");
    }
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
        exe_name: mcc::build::exe_name("tiny", Path::new("/generated/tiny")),
        n_ctx: 64,
        target_cpu: None,
        static_link: false,
        gguf_path: gguf.clone(),
        runtime_path: PathBuf::from("[mcc]/runtime"),
    };
    let p = plan_for(&desc, &g, false, true);
    let plain = emit_crate(&desc, &p, &opts, desc.tokenizer.to_bytes());
    let mut gpu = plain.clone();
    add_to_crate(&mut gpu, &desc, &p, &opts).unwrap();
    let paths = |f: &[EmittedFile]| f.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
    assert_eq!(
        paths(&gpu),
        [
            "Cargo.toml",
            ".cargo/config.toml",
            "build.rs",
            "weights.S",
            "src/main.rs",
            "src/model.rs",
            "src/gpu.rs",
            "model.ptx",
            "tiers/rustc.sh",
            "tiers/avx512/Cargo.toml",
            "tiers/avx512/lib.rs",
            "tiers/avx2/Cargo.toml",
            "tiers/avx2/lib.rs",
            "tokenizer.bin",
            "model.gguf"
        ]
    );
    for f in &plain {
        // only the entry points change: main.rs and each tier's lib.rs
        if !f.path.ends_with("main.rs") && !f.path.ends_with("lib.rs") {
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
        ptx += &kernels::matmul(&format!("mm_{n}"), t, 96, 512, false).unwrap();
        ptx += &kernels::matmul(&format!("mma_{n}"), t, 96, 512, true).unwrap();
    }
    export("all_types.ptx", &ptx);
    assemble("every supported type", &ptx);
}

/// The compiler's kernels and the runtime's launch plan agree on the prefill tile and on
/// the attention CTA size.
#[test]
fn compiler_and_runtime_agree_on_launch_shapes() {
    assert_eq!(kernels::PREFILL_TILE, mcc_runtime::gpu::plan::PREFILL_TILE);
    for hd in [32, 64, 80, 96, 128, 160, 256] {
        assert_eq!(
            kernels::attention_threads(hd) as u32,
            mcc_runtime::gpu::plan::attention_threads(hd),
            "head_dim {hd}"
        );
    }
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

/// The whole decode step of a model, run by the PTX interpreter (mcc::gpu::sim) with the
/// runtime's own launch plan (`mcc_runtime::gpu::plan::decode_plan`), token after token,
/// against a reference forward pass built from the runtime's CPU ops.
mod decode {
    use std::collections::HashMap;

    use mcc::describe::{describe, ModelDesc};
    use mcc::gguf::{GgmlType, GgufFile};
    use mcc::gpu::sim::{Device, Module};
    use mcc::gpu::{emit_ptx, gate_up_of, kernel_of, output_kernel, prefill_kernel_of};
    use mcc::plan::{plan_for, Plan, PlannedTensor};
    use mcc_runtime::float16::f16;
    use mcc_runtime::gpu::plan::{
        decode_plan, prefill_plan, rope_table, Buf, Launch, PREFILL_TILE,
    };
    use mcc_runtime::gpu::{CpuTail, GpuLayer, GpuModel, GpuTensor};
    use mcc_runtime::model::Config;
    use mcc_runtime::ops;

    /// The model's GPU table as the emitted `src/gpu.rs` would hold it, with the GGUF
    /// file itself as the blob (offsets are file offsets).
    fn gpu_model(desc: &ModelDesc, p: &Plan) -> &'static GpuModel {
        fn noop_layer(_: &mut CpuTail, _: usize) {}
        fn noop_output(_: &mut CpuTail) {}
        let t = |t: &PlannedTensor, kernel: String, prefill: String| GpuTensor {
            offset: t.file_offset as usize,
            bytes: t.n_bytes as usize,
            rows: t.rows as usize,
            kernel: Box::leak(kernel.into_boxed_str()),
            prefill: Box::leak(prefill.into_boxed_str()),
        };
        let by = |name: &str| {
            let pt = p.get(name);
            t(pt, kernel_of(pt), prefill_kernel_of(pt))
        };
        let layers: Vec<GpuLayer> = (0..desc.n_layer)
            .map(|l| {
                let r = |role: &str| by(&format!("blk.{l}.{role}.weight"));
                let (gate_up, gate_up_prefill) = gate_up_of(p, l);
                GpuLayer {
                    attn_norm: r("attn_norm"),
                    attn_q: r("attn_q"),
                    attn_k: r("attn_k"),
                    attn_v: r("attn_v"),
                    attn_output: r("attn_output"),
                    ffn_norm: r("ffn_norm"),
                    ffn_gate: r("ffn_gate"),
                    ffn_up: r("ffn_up"),
                    ffn_down: r("ffn_down"),
                    gate_up: Box::leak(gate_up.into_boxed_str()),
                    gate_up_prefill: Box::leak(gate_up_prefill.into_boxed_str()),
                }
            })
            .collect();
        let (out, out_k, out_mm) = output_kernel(desc, p);
        Box::leak(Box::new(GpuModel {
            ptx: "",
            token_embd: by("token_embd.weight"),
            layers: Box::leak(layers.into_boxed_slice()),
            output_norm: by("output_norm.weight"),
            output: t(out, out_k, out_mm),
            cpu_layer: noop_layer,
            cpu_output: noop_output,
        }))
    }

    fn config(desc: &ModelDesc, n_ctx: usize) -> Config {
        Config {
            n_embd: desc.n_embd,
            n_head: desc.n_head,
            n_head_kv: desc.n_head_kv,
            head_dim: desc.head_dim,
            n_ff: desc.n_ff,
            n_layer: desc.n_layer,
            n_vocab: desc.n_vocab,
            n_ctx,
            n_ctx_train: desc.n_ctx_train,
            rope_dim: desc.rope_dim,
            rope_base: desc.rope_base,
            rms_eps: desc.rms_eps,
        }
    }

    /// A tensor's values (F32 or F16 tensors).
    fn values(file: &[u8], t: &PlannedTensor) -> Vec<f32> {
        let bytes = &file[t.file_offset as usize..(t.file_offset + t.n_bytes) as usize];
        match t.ggml_type {
            GgmlType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            GgmlType::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => panic!("reference forward: {other:?}"),
        }
    }

    /// The CPU reference: the runtime's rms_norm, RoPE table, f16 KV cache, attend_head
    /// and swiglu, with f64 matvecs.
    struct Reference {
        w: HashMap<String, Vec<f32>>,
        cfg: Config,
        rope: ops::Rope,
        k_cache: Vec<Vec<f16>>,
        v_cache: Vec<Vec<f16>>,
        output: String,
    }

    impl Reference {
        fn matvec(&self, name: &str, x: &[f32], rows: usize) -> Vec<f32> {
            let w = &self.w[name];
            let cols = x.len();
            (0..rows)
                .map(|r| {
                    w[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(x)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>() as f32
                })
                .collect()
        }

        fn step(&mut self, tok: u32, pos: usize) -> Vec<f32> {
            let c = self.cfg;
            let (e, hd, kv) = (c.n_embd, c.head_dim, c.kv_dim());
            let emb = &self.w["token_embd.weight"];
            let mut x = emb[tok as usize * e..(tok as usize + 1) * e].to_vec();
            let mut xn = vec![0f32; e];
            for l in 0..c.n_layer {
                let n = |r: &str| format!("blk.{l}.{r}.weight");
                ops::rms_norm(&x, &self.w[&n("attn_norm")], c.rms_eps, &mut xn);
                let mut q = self.matvec(&n("attn_q"), &xn, c.q_dim());
                let mut k = self.matvec(&n("attn_k"), &xn, kv);
                let v = self.matvec(&n("attn_v"), &xn, kv);
                self.rope.apply(&mut q, c.n_head, pos);
                self.rope.apply(&mut k, c.n_head_kv, pos);
                ops::f32_to_f16(&k, &mut self.k_cache[l][pos * kv..(pos + 1) * kv]);
                ops::f32_to_f16(&v, &mut self.v_cache[l][pos * kv..(pos + 1) * kv]);
                let mut att = vec![0f32; c.q_dim()];
                let mut scores = vec![0f32; c.n_ctx];
                let group = c.n_head / c.n_head_kv;
                for h in 0..c.n_head {
                    ops::attend_head(
                        &q[h * hd..(h + 1) * hd],
                        &self.k_cache[l][..(pos + 1) * kv],
                        &self.v_cache[l][..(pos + 1) * kv],
                        kv,
                        (h / group) * hd,
                        pos + 1,
                        1.0 / (hd as f32).sqrt(),
                        &mut scores,
                        &mut att[h * hd..(h + 1) * hd],
                    );
                }
                for (x, p) in x.iter_mut().zip(self.matvec(&n("attn_output"), &att, e)) {
                    *x += p;
                }
                ops::rms_norm(&x, &self.w[&n("ffn_norm")], c.rms_eps, &mut xn);
                let mut gate = self.matvec(&n("ffn_gate"), &xn, c.n_ff);
                let up = self.matvec(&n("ffn_up"), &xn, c.n_ff);
                ops::swiglu(&mut gate, &up);
                for (x, p) in x.iter_mut().zip(self.matvec(&n("ffn_down"), &gate, e)) {
                    *x += p;
                }
            }
            ops::rms_norm(&x, &self.w["output_norm.weight"], c.rms_eps, &mut xn);
            self.matvec(&self.output.clone(), &xn, c.n_vocab)
        }
    }

    /// A model on the simulated device: its PTX loaded, every buffer of the decode and
    /// prefill plans allocated, weights and the RoPE table in place.
    struct Sim {
        dev: Device,
        bufs: HashMap<Buf, u64>,
        decode: Vec<Launch>,
        prefill: Vec<Launch>,
        cfg: Config,
    }

    impl Sim {
        fn run(&mut self, plan: &[Launch], params: &[[u32; 4]]) {
            let bytes: Vec<u8> = params
                .iter()
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            self.dev.write(self.bufs[&Buf::Params], &bytes);
            for l in plan {
                let args: Vec<u64> = l.args.iter().map(|b| self.bufs[b]).collect();
                self.dev
                    .launch_2d(l.kernel, (l.grid, l.grid_y), l.block, &args)
                    .unwrap_or_else(|e| panic!("{params:?}: {e}"));
            }
        }

        /// Logits of row `t` of the last step, and the device argmax of row `t`.
        fn logits(&self, t: usize) -> (Vec<f32>, usize) {
            let v = self.cfg.n_vocab;
            let all = self.dev.read_f32(self.bufs[&Buf::Logits], (t + 1) * v);
            let p = self.dev.read(self.bufs[&Buf::Params] + 16 * t as u64, 16);
            (
                all[t * v..].to_vec(),
                u32::from_le_bytes([p[8], p[9], p[10], p[11]]) as usize,
            )
        }
    }

    fn build(cfg: &mcc::synth::SynthConfig) -> (Sim, Reference) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        mcc::synth::llama_writer(
            cfg,
            mcc::synth::toy_vocab(cfg.n_vocab).unwrap(),
            cfg.n_vocab,
        )
        .unwrap()
        .write(&path, mcc::gguf::writer::WriteMode::Full)
        .unwrap();
        let g = GgufFile::open(&path).unwrap();
        let desc = describe(&g).unwrap();
        let p = plan_for(&desc, &g, false, true);
        let n_ctx = 24;
        let ptx = emit_ptx(&desc, &p, n_ctx).unwrap();
        let file = std::fs::read(&path).unwrap();
        let model = gpu_model(&desc, &p);
        let rc = config(&desc, n_ctx);
        let decode = decode_plan(model, &rc, desc.n_layer);
        let prefill = prefill_plan(model, &rc, desc.n_layer);

        let mut dev = Device::new(Module::parse(&ptx).unwrap());
        let mut bufs: HashMap<Buf, u64> = HashMap::new();
        let tensors: Vec<&GpuTensor> = std::iter::once(&model.token_embd)
            .chain([&model.output_norm, &model.output])
            .chain(model.layers.iter().flat_map(|l| {
                [
                    &l.attn_norm,
                    &l.attn_q,
                    &l.attn_k,
                    &l.attn_v,
                    &l.attn_output,
                    &l.ffn_norm,
                    &l.ffn_gate,
                    &l.ffn_up,
                    &l.ffn_down,
                ]
            }))
            .collect();
        for l in decode.iter().chain(&prefill) {
            for &b in &l.args {
                if bufs.contains_key(&b) {
                    continue;
                }
                let at = match b {
                    Buf::Weight(off) => {
                        let t = tensors.iter().find(|t| t.offset == off).unwrap();
                        let at = dev.alloc(t.bytes);
                        dev.write(at, &file[off..off + t.bytes]);
                        at
                    }
                    other => dev.alloc(other.bytes(&rc, n_ctx)),
                };
                bufs.insert(b, at);
            }
        }
        let freqs = desc
            .rope_freqs
            .as_ref()
            .map(|_| values(&file, p.get("rope_freqs.weight")));
        let table = rope_table(&rc, freqs.as_deref(), n_ctx).unwrap();
        dev.write(bufs[&Buf::Rope], &table);
        let reference = Reference {
            w: p.tensors
                .iter()
                .map(|t| (t.name.clone(), values(&file, t)))
                .collect(),
            cfg: rc,
            rope: ops::Rope::new(
                rc.head_dim,
                rc.rope_dim,
                rc.rope_base,
                freqs.as_deref(),
                n_ctx,
            ),
            k_cache: vec![vec![f16::ZERO; n_ctx * rc.kv_dim()]; desc.n_layer],
            v_cache: vec![vec![f16::ZERO; n_ctx * rc.kv_dim()]; desc.n_layer],
            output: output_kernel(&desc, &p).0.name.clone(),
        };
        (
            Sim {
                dev,
                bufs,
                decode,
                prefill,
                cfg: rc,
            },
            reference,
        )
    }

    /// The largest difference of `got` from `want`, relative to `want`'s largest value.
    fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        got.iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale
    }

    /// Decodes `tokens` one by one on the simulated GPU and the reference; returns the
    /// largest logit difference relative to the largest logit, over all steps.
    fn run(cfg: mcc::synth::SynthConfig, tokens: &[u32]) -> f32 {
        let (mut sim, mut reference) = build(&cfg);
        let mut worst = 0f32;
        for (pos, &tok) in tokens.iter().enumerate() {
            let decode = sim.decode.clone();
            sim.run(&decode, &[[tok, pos as u32, 0, 0]]);
            let (got, argmax) = sim.logits(0);
            worst = worst.max(rel_diff(&got, &reference.step(tok, pos)));
            // The device argmax is the argmax of the device logits (lowest index on ties).
            let best = got.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(
                argmax,
                got.iter().position(|&v| v == best).unwrap(),
                "pos {pos}"
            );
        }
        worst
    }

    /// A prefill tile gives each token exactly the logits of decoding the tokens one by
    /// one (the matmul is the matvec's arithmetic per token), then decoding goes on from
    /// the tile's KV cache.
    #[test]
    fn a_prefill_tile_equals_decode_steps() {
        let cfg = mcc::synth::SynthConfig::tiny();
        let tokens: Vec<u32> = (0..PREFILL_TILE as u32 + 1)
            .map(|i| (i * 97 + 5) % 512)
            .collect();
        let (mut one, _) = build(&cfg);
        let mut want = Vec::new();
        for (pos, &tok) in tokens.iter().enumerate() {
            let decode = one.decode.clone();
            one.run(&decode, &[[tok, pos as u32, 0, 0]]);
            want.push(one.logits(0));
        }
        let (mut tiled, _) = build(&cfg);
        let params: Vec<[u32; 4]> = tokens[..PREFILL_TILE]
            .iter()
            .enumerate()
            .map(|(pos, &tok)| [tok, pos as u32, 0, 0])
            .collect();
        let prefill = tiled.prefill.clone();
        tiled.run(&prefill, &params);
        for (t, want) in want.iter().enumerate().take(PREFILL_TILE) {
            assert_eq!(&tiled.logits(t), want, "token {t} of the tile");
        }
        let last = PREFILL_TILE;
        let decode = tiled.decode.clone();
        tiled.run(&decode, &[[tokens[last], last as u32, 0, 0]]);
        assert_eq!(
            tiled.logits(0),
            want[last],
            "the decode step after the tile"
        );
    }

    #[test]
    fn tiny_f32_decodes_like_the_cpu() {
        let worst = run(mcc::synth::SynthConfig::tiny(), &[1, 300, 7, 511, 42, 42]);
        eprintln!("tiny F32: largest logit difference {worst:.1e} of the largest logit");
        assert!(worst < 2e-3, "logits differ by {worst} of the largest");
    }

    /// F16 weights, a tied output, Llama-3.1 rope_freqs, heads of 128 (not n_embd /
    /// n_head) and a GQA group of 3.
    #[test]
    fn f16_tied_llama3_rope_decodes_like_the_cpu() {
        let mut cfg = mcc::synth::SynthConfig::tiny();
        cfg.weight_type = GgmlType::F16;
        cfg.tied = true;
        cfg.rope_scaling = Some(mcc::synth::Llama3RopeScaling::LLAMA_3_1);
        cfg.n_head = 6;
        cfg.n_head_kv = 2;
        cfg.head_dim = 128;
        cfg.n_layer = 1;
        let worst = run(cfg, &[5, 9, 500, 3, 77]);
        eprintln!("F16 tied llama3: largest logit difference {worst:.1e} of the largest logit");
        assert!(worst < 2e-3, "logits differ by {worst} of the largest");
    }
}
