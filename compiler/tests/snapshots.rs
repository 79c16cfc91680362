//! Codegen snapshots: every emitted source file (Cargo.toml, .cargo/config.toml,
//! build.rs, weights.S, src/main.rs, src/model.rs, and the kernel tiers' tiers/rustc.sh
//! and tiers/NAME/{Cargo.toml,lib.rs}) for three models, pinned with insta in
//! `compiler/tests/snapshots/`. tokenizer.bin is data and the GGUF is a symlink, so
//! neither is snapshotted; weight bytes never appear in any source.
//!
//! - `tiny`: the `mcc synth` tiny preset (F32, built-in vocabulary).
//! - `smollm2`: SmolLM2-135M-Instruct Q4_1, from its real header in the model cache
//!   (scripts/fetch-models.sh puts it there).
//! - `minitron`: Minitron-4B's shapes with the tensor types llama-quantize gives a
//!   Q4_K_M file, as a header-only GGUF from our writer (codegen needs no weights).
//!
//! Machine-specific paths stay out of the sources: the GGUF is reached through the
//! crate's `model.gguf` symlink, and the runtime path in Cargo.toml is an input, given
//! here as the placeholder `[mcc]/runtime`. Review changes with `cargo insta review`;
//! with `INSTA_UPDATE=no` (or `CI` set) a mismatch fails without writing `.snap.new` files.

use std::path::{Path, PathBuf};

use mcc::describe::describe;
use mcc::emit::{emit_crate, Contents, EmitOptions, EmittedFile};
use mcc::gguf::writer::{GgufWriter, TensorData, WriteMode};
use mcc::gguf::{GgmlType, GgufFile, Value};
use mcc::plan::plan;
use mcc::synth::{llama_writer, toy_vocab, SynthConfig};

/// The emitted crate of `gguf` with the options `mcc build` would use by default.
fn emit(gguf: &Path, name: &str) -> Vec<EmittedFile> {
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
    emit_crate(&desc, &plan(&desc, &g), &opts, desc.tokenizer.to_bytes())
}

/// One snapshot per source file, named `<fixture>@<file>`.
fn assert_sources(fixture: &str, gguf: &Path, files: &[EmittedFile]) {
    let dir = gguf.parent().unwrap().to_string_lossy().into_owned();
    let mut n = 0;
    for f in files {
        let (Contents::Source(text) | Contents::Script(text)) = &f.contents else {
            continue;
        };
        assert!(
            !text.contains(&dir),
            "{}: names the GGUF's directory {dir}",
            f.path
        );
        let name = format!("{fixture}@{}", f.path.replace('/', "_"));
        insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(name, text);
        });
        n += 1;
    }
    assert_eq!(
        n, 11,
        "Cargo.toml, .cargo/config.toml, build.rs, weights.S, src/main.rs, src/model.rs, \
         tiers/rustc.sh and each SIMD tier's Cargo.toml and lib.rs"
    );
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

#[test]
fn tiny() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    assert_sources("tiny", &gguf, &emit(&gguf, "tiny"));
}

#[test]
fn smollm2() {
    let cache = std::env::var_os("MCC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/mcc"));
    let gguf = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        gguf.display()
    );
    assert_sources("smollm2", &gguf, &emit(&gguf, "smollm2"));
}

/// Whether llama.cpp's Q4_K_M gives layer `i` of `n` more bits (Q6_K instead of Q4_K) in
/// attn_v and ffn_down: the first and last eighth of the layers, and every third layer
/// in between.
pub fn q4_k_m_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type llama-quantize's Q4_K_M gives a tensor of a llama model with `n_layer`
/// layers: Q6_K for output.weight; Q6_K for attn_v and ffn_down of the layers
/// [`q4_k_m_more_bits`] picks; F32 for vectors (norms, rope_freqs); Q4_K otherwise.
pub fn q4_k_m_type(name: &str, dims: &[u64], n_layer: usize) -> GgmlType {
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
                && q4_k_m_more_bits(i, n_layer) =>
        {
            GgmlType::Q6_K
        }
        _ => GgmlType::Q4_K,
    }
}

/// A header-only Minitron-shaped Q4_K_M GGUF: the synth writer's F16 model re-typed
/// tensor by tensor. The data section is a sparse hole; nothing reads it.
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
            "general.file_type" => Value::U32(15), // LLAMA_FTYPE_MOSTLY_Q4_K_M
            _ => v.clone(),
        };
        w.add_kv(k.clone(), v);
    }
    for t in &g.tensors {
        let ty = q4_k_m_type(&t.name, &t.dims, cfg.n_layer);
        let n_bytes = t.n_elements / ty.block_elems() * ty.block_bytes();
        // A zeroed Vec is allocated lazily (calloc): its pages are never touched, because
        // a header-only write skips the data.
        let data = TensorData::Bytes(vec![0; n_bytes as usize]);
        w.add_tensor(t.name.clone(), &t.dims, ty, data);
    }
    let path = dir.join("synth-minitron.Q4_K_M.gguf");
    w.write(&path, WriteMode::HeaderOnly).unwrap();
    path
}

#[test]
fn minitron_q4_k_m() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = minitron_q4_k_m_gguf(dir.path());
    let files = emit(&gguf, "minitron");
    // The per-layer mix shows in the layer functions: layer 0 has Q6_K attn_v and
    // ffn_down (as Q6_KX8), layer 4 has Q4_K (as Q4_KX8) everywhere.
    let Contents::Source(model) = &files
        .iter()
        .find(|f| f.path == "src/model.rs")
        .unwrap()
        .contents
    else {
        panic!("model.rs is a source")
    };
    // Q4_K and Q6_K matrices are repacked, 8 rows interleaved.
    assert!(model.contains("pub static BLK0_ATTN_V: Weight<Q6_KX8,"));
    assert!(model.contains("pub static BLK4_ATTN_V: Weight<Q4_KX8,"));
    // Q6_K `output` is not: it never takes the prompt GEMM Q6_KX8 is for.
    assert!(model.contains("pub static OUTPUT: Weight<Q6_K, N_VOCAB, N_EMBD>"));
    assert_sources("minitron", &gguf, &files);
}

#[test]
fn q4_k_m_rule_matches_llama_cpp_layer_pattern() {
    // For 32 layers: layers 0..4 and 28..32, plus 4 + 3k + 2 = 6, 9, ..., 27.
    let more: Vec<usize> = (0..32).filter(|&i| q4_k_m_more_bits(i, 32)).collect();
    assert_eq!(
        more,
        [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    );
}

/// Same GGUF and options, byte-identical crate, wherever the GGUF lives.
#[test]
fn emission_is_deterministic_and_location_independent() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ga = tiny_gguf(a.path());
    let gb = tiny_gguf(b.path());
    let first = emit(&ga, "tiny");
    let again = emit(&ga, "tiny");
    assert_eq!(first, again);
    let elsewhere = emit(&gb, "tiny");
    assert_eq!(first.len(), elsewhere.len());
    for (x, y) in first.iter().zip(&elsewhere) {
        match (&x.contents, &y.contents) {
            (Contents::Symlink(p), Contents::Symlink(q)) => {
                assert_eq!((p, q), (&ga, &gb), "only the link target differs")
            }
            _ => assert_eq!(x, y, "{} differs", x.path),
        }
    }
    let paths: Vec<&str> = first.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "Cargo.toml",
            ".cargo/config.toml",
            "build.rs",
            "weights.S",
            "src/main.rs",
            "src/model.rs",
            "tiers/rustc.sh",
            "tiers/avx512/Cargo.toml",
            "tiers/avx512/lib.rs",
            "tiers/avx2/Cargo.toml",
            "tiers/avx2/lib.rs",
            "tokenizer.bin",
            "model.gguf"
        ]
    );
}
