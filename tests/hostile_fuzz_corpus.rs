//! The fuzz targets' seeds and every input a fuzzer ever crashed on, replayed through
//! the same bodies (`fuzz/src/lib.rs`) on stable, so that each past crash stays fixed
//! without libFuzzer or a nightly toolchain.
//!
//! Seeds live in `fuzz/seeds/<target>/`, crash reproducers in
//! `fuzz/regressions/<target>/` (named for what they found). `MCC_WRITE_FUZZ_SEEDS=1
//! cargo test -p mcc-e2e --test hostile_fuzz_corpus` rewrites the seeds from the
//! generators below.

#[path = "../fuzz/src/lib.rs"]
mod fuzz;

use std::path::{Path, PathBuf};

use mcc::gguf::writer::{GgufWriter, TensorData, WriteMode};
use mcc::gguf::{Array, GgmlType, GgufFile, Value, ValueType};
use mcc::synth::{llama_writer, toy_vocab, SynthConfig};
use mcc_runtime::tokenizer::{Tokenizer, TokenizerError, TokenizerSpec};

const TARGETS: [&str; 3] = ["gguf", "tokenizer", "tokenizer_blob"];

fn fuzz_dir() -> PathBuf {
    mcc_e2e::repo_root().join("fuzz")
}

/// The smallest llama model the synth writer makes with the built-in 266-token BPE
/// vocabulary: one layer, 8 wide, F16, tied output.
fn tiny_config() -> SynthConfig {
    SynthConfig {
        name: "fuzz-seed".into(),
        n_embd: 8,
        n_layer: 1,
        n_head: 2,
        n_head_kv: 1,
        head_dim: 4,
        n_ff: 16,
        n_ctx: 64,
        n_vocab: 266,
        tied: true,
        weight_type: GgmlType::F16,
        ..SynthConfig::tiny()
    }
}

fn strings(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(Array {
        elem_type: ValueType::String,
        items: items.into_iter().map(Value::String).collect(),
    })
}

/// A SentencePiece (`llama` model) vocabulary: `<unk>`, `<s>`, `</s>`, the 256
/// `<0xXX>` byte tokens, then a few pieces with scores.
fn spm_vocab() -> (Vec<(String, Value)>, usize) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for piece in [
        "▁", "a", "b", "▁a", "ab", "▁ab", "▁the", "e", "h", "t", "th",
    ] {
        tokens.push(piece.into());
        types.push(1);
    }
    let n = tokens.len();
    let scores = (0..n).map(|i| Value::F32(-(i as f32))).collect();
    let keys = vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(Array {
                elem_type: ValueType::F32,
                items: scores,
            }),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array {
                elem_type: ValueType::I32,
                items: types.into_iter().map(Value::I32).collect(),
            }),
        ),
    ];
    (keys, n)
}

fn bpe_model() -> GgufWriter {
    let cfg = tiny_config();
    llama_writer(&cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab).unwrap()
}

fn spm_model() -> GgufWriter {
    let (vocab, n) = spm_vocab();
    llama_writer(&tiny_config(), vocab, n).unwrap()
}

/// Every value type, nested arrays, a Q8_0 tensor and 64-byte alignment: no model.
fn all_value_types() -> GgufWriter {
    let mut w = GgufWriter::new();
    let nested = Value::Array(Array {
        elem_type: ValueType::Array,
        items: vec![
            Value::Array(Array {
                elem_type: ValueType::U8,
                items: vec![Value::U8(1), Value::U8(2)],
            }),
            Value::Array(Array {
                elem_type: ValueType::I64,
                items: vec![],
            }),
        ],
    });
    w.add_kv("general.alignment", Value::U32(64))
        .add_kv("u8", Value::U8(1))
        .add_kv("i8", Value::I8(-1))
        .add_kv("u16", Value::U16(2))
        .add_kv("i16", Value::I16(-2))
        .add_kv("i32", Value::I32(-3))
        .add_kv("f32", Value::F32(0.5))
        .add_kv("bool", Value::Bool(true))
        .add_kv("str", Value::String("llama".into()))
        .add_kv("u64", Value::U64(4))
        .add_kv("i64", Value::I64(-4))
        .add_kv("f64", Value::F64(0.25))
        .add_kv("nested", nested);
    w.add_tensor(
        "q",
        &[32, 2],
        GgmlType::Q8_0,
        TensorData::Bytes(vec![0; 68]),
    )
    .add_tensor("f", &[4], GgmlType::F32, TensorData::Constant(1.0));
    w
}

fn spec_of(w: &GgufWriter) -> TokenizerSpec {
    let g = GgufFile::from_bytes("seed.gguf", w.to_bytes(WriteMode::Full).unwrap()).unwrap();
    mcc::describe::tokenizer::tokenizer_spec(&g).unwrap()
}

/// (target, file name, bytes) of every seed.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let bytes = |w: &GgufWriter| w.to_bytes(WriteMode::Full).unwrap();
    let bad_spec = TokenizerSpec {
        model: "t5".into(),
        ..Default::default()
    };
    let mut out = vec![
        ("gguf", "tiny_bpe_llama.gguf", bytes(&bpe_model())),
        ("gguf", "tiny_spm_llama.gguf", bytes(&spm_model())),
        ("gguf", "all_value_types.gguf", bytes(&all_value_types())),
        (
            "tokenizer_blob",
            "toy_bpe.blob",
            spec_of(&bpe_model()).to_bytes(),
        ),
        (
            "tokenizer_blob",
            "tiny_spm.blob",
            spec_of(&spm_model()).to_bytes(),
        ),
        ("tokenizer_blob", "error.blob", bad_spec.to_bytes()),
    ];
    // tokenizer: vocabulary byte, mode byte, then text or ids
    let text = |pick: u8, mode: u8, s: &str| [&[pick, mode][..], s.as_bytes()].concat();
    let ids = |pick: u8, mode: u8, ids: &[u32]| {
        let mut v = vec![pick, mode];
        v.extend(ids.iter().flat_map(|i| i.to_le_bytes()));
        v
    };
    out.extend([
        (
            "tokenizer",
            "plain_text",
            text(0, 0, "Hello world, it's 2024!"),
        ),
        ("tokenizer", "specials_parsed", text(1, 3, fuzz::SAMPLE)),
        (
            "tokenizer",
            "spm_spaces",
            text(1, 1, "  leading and  double  spaces "),
        ),
        (
            "tokenizer",
            "invalid_utf8",
            [&[2u8, 2][..], b"ok \xff\xfe \xe6\x97 split\xf0\x9f"].concat(),
        ),
        (
            "tokenizer",
            "decode_ids",
            ids(0, 4, &[1, 2, 3, 100, 1000, 49152, u32::MAX]),
        ),
        (
            "tokenizer",
            "decode_special",
            ids(3, 12, &[0, 1, 2, 128000, 128001, 7]),
        ),
    ]);
    out
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn body(target: &str) -> fn(&[u8]) {
    match target {
        "gguf" => fuzz::gguf,
        "tokenizer" => fuzz::tokenizer,
        "tokenizer_blob" => fuzz::tokenizer_blob,
        other => panic!("no fuzz target {other}"),
    }
}

/// The committed seeds reach deep: the model seeds pass describe, so mutations explore
/// past it, and the blob seeds load, so mutations reach the encoder. They need not be
/// byte-identical to today's generators; `MCC_WRITE_FUZZ_SEEDS=1` rewrites them.
#[test]
fn seeds_reach_past_the_parsers() {
    let write = std::env::var_os("MCC_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = fuzz_dir().join("seeds").join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        assert!(path.is_file(), "{} is missing", path.display());
    }
    let seed = |target: &str, name: &str| {
        let path = fuzz_dir().join("seeds").join(target).join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    for name in ["tiny_bpe_llama.gguf", "tiny_spm_llama.gguf"] {
        let g = GgufFile::from_bytes(name, seed("gguf", name)).unwrap();
        let d = mcc::describe::describe(&g).unwrap();
        assert_eq!((d.n_embd, d.n_layer), (8, 1), "{name}");
    }
    let g = GgufFile::from_bytes("all", seed("gguf", "all_value_types.gguf")).unwrap();
    assert_eq!(
        (g.metadata.len(), g.tensors.len(), g.alignment),
        (13, 2, 64)
    );
    for name in ["toy_bpe.blob", "tiny_spm.blob"] {
        let tok = Tokenizer::from_vec(seed("tokenizer_blob", name)).unwrap();
        assert!(!tok.encode(fuzz::SAMPLE, true, true).is_empty(), "{name}");
    }
    let e = Tokenizer::from_vec(seed("tokenizer_blob", "error.blob")).err();
    assert!(
        matches!(&e, Some(TokenizerError::Spec(m)) if m.contains("no tokens")),
        "{e:?}"
    );
}

#[test]
fn corpus_and_regressions_replay_cleanly() {
    let mut n = 0;
    for target in TARGETS {
        for sub in ["seeds", "regressions"] {
            for path in files_in(&fuzz_dir().join(sub).join(target)) {
                let data = std::fs::read(&path).unwrap();
                body(target)(&data);
                n += 1;
            }
        }
    }
    assert!(n >= 12, "only {n} inputs replayed");
}
