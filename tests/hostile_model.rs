//! Model-level lies: a well-formed GGUF whose metadata and tensors contradict each
//! other. `mcc build` must reject each before writing anything, with the key or tensor
//! named. The lies are made with the synth writer on a small llama model.
//!
//! describe's unit tests (compiler/src/describe/tests.rs) check one case per class
//! against `describe`; these go through the whole `mcc build` entry point, check that
//! no crate or executable is left behind, and cover the cases those tests leave out.

use std::path::{Path, PathBuf};

use mcc::gguf::writer::{GgufWriter, TensorData, WriteMode};
use mcc::gguf::{GgmlType, Value};
use mcc::synth::{llama_writer, toy_vocab, SynthConfig};

/// 64 wide, 4 query heads and 2 KV heads of 16, FFN 96, 300 tokens, 2 layers.
fn small() -> SynthConfig {
    SynthConfig {
        n_embd: 64,
        n_ff: 96,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 16,
        n_vocab: 300,
        ..SynthConfig::tiny()
    }
}

fn writer() -> GgufWriter {
    let cfg = small();
    llama_writer(&cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab).unwrap()
}

/// Replaces tensor `name` by one of shape `dims`.
fn reshape(w: &mut GgufWriter, name: &str, dims: &[u64]) {
    assert!(w.remove_tensor(name), "{name} is in the model");
    w.add_tensor(name, dims, GgmlType::F32, TensorData::Constant(0.0));
}

/// A scratch directory for one case, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(case: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mcc-lies-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything under `dir`, relative.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Writes the lie, runs `mcc build` on it and returns the error message, after checking
/// that nothing but the input file exists afterwards.
fn build_error(case: &str, w: &GgufWriter) -> String {
    let scratch = Scratch::new(case);
    let gguf = scratch.0.join("lie.gguf");
    w.write(&gguf, WriteMode::HeaderOnly).unwrap();
    let args = mcc::build::Args {
        model: gguf.clone(),
        output: Some(scratch.0.join("lie-bin")),
        name: Some("lie".into()),
        ctx: None,
        target_cpu: None,
        emit_only: false,
        jobs: None,
        generated_dir: Some(scratch.0.join("generated")),
        static_link: false,
        ..Default::default()
    };
    let err = match mcc::build::run(&args) {
        Ok(()) => panic!("{case}: mcc build accepted the lie"),
        Err(e) => format!("{e:#}"),
    };
    assert_eq!(
        listing(&scratch.0),
        ["lie.gguf"],
        "{case}: files left behind"
    );
    assert!(err.contains("lie.gguf"), "{case}: file not named: {err}");
    err
}

/// Each case: a name, the lie, and what the message must say.
type Case = (&'static str, fn(&mut GgufWriter), &'static [&'static str]);

fn check(cases: &[Case]) {
    // The unmodified model builds as far as describe goes.
    let g = mcc::gguf::GgufFile::from_bytes("ok.gguf", writer().to_bytes(WriteMode::Full).unwrap())
        .unwrap();
    mcc::describe::describe(&g).expect("the unmodified model is valid");
    for (case, lie, needles) in cases {
        let mut w = writer();
        lie(&mut w);
        let err = build_error(case, &w);
        for n in *needles {
            assert!(err.contains(n), "{case}: message lacks {n:?}: {err}");
        }
    }
}

#[test]
fn shapes_that_contradict_the_hyperparameters() {
    check(&[
        (
            "attn_k_has_query_width",
            |w| reshape(w, "blk.1.attn_k.weight", &[64, 64]),
            &["tensor `blk.1.attn_k.weight` shape", "[64, 32]"],
        ),
        (
            "embedding_width_differs",
            |w| {
                w.set_kv("llama.embedding_length", Value::U32(128));
            },
            &["tensor `token_embd.weight` shape", "[128, 300]"],
        ),
        (
            "ffn_length_differs",
            |w| {
                w.set_kv("llama.feed_forward_length", Value::U32(128));
            },
            &["tensor `blk.0.ffn_gate.weight` shape", "[64, 128]"],
        ),
        (
            "one_layer_more_than_the_tensors",
            |w| {
                w.set_kv("llama.block_count", Value::U32(3));
            },
            &["missing tensor `blk.2.attn_norm.weight`"],
        ),
        (
            "transposed_output",
            |w| reshape(w, "output.weight", &[300, 64]),
            &["tensor `output.weight` shape", "[64, 300]"],
        ),
        (
            "matrix_norm",
            |w| reshape(w, "output_norm.weight", &[64, 2]),
            &["tensor `output_norm.weight` shape", "[64]"],
        ),
    ]);
}

#[test]
fn head_counts_that_do_not_divide() {
    check(&[
        (
            "kv_heads_do_not_divide_heads",
            |w| {
                w.set_kv("llama.attention.head_count_kv", Value::U32(3));
            },
            &["llama.attention.head_count_kv", "4 % 3"],
        ),
        (
            "more_kv_heads_than_heads",
            |w| {
                w.set_kv("llama.attention.head_count_kv", Value::U32(8));
            },
            &["llama.attention.head_count_kv", "4 % 8"],
        ),
        (
            "zero_kv_heads",
            |w| {
                w.set_kv("llama.attention.head_count_kv", Value::U32(0));
            },
            &["`llama.attention.head_count_kv`", ">= 1"],
        ),
        (
            "width_not_a_multiple_of_heads",
            |w| {
                // without key_length, head_dim is embedding_length / head_count
                for k in [
                    "llama.attention.key_length",
                    "llama.attention.value_length",
                    "llama.rope.dimension_count",
                ] {
                    w.remove_kv(k);
                }
                w.set_kv("llama.attention.head_count", Value::U32(5));
                w.set_kv("llama.attention.head_count_kv", Value::U32(5));
            },
            &[
                "llama.embedding_length / llama.attention.head_count",
                "64 / 5",
            ],
        ),
        (
            "value_length_differs_from_key_length",
            |w| {
                w.set_kv("llama.attention.value_length", Value::U32(32));
            },
            &["`llama.attention.value_length`", "found 32"],
        ),
    ]);
}

#[test]
fn vocabulary_sizes_that_disagree() {
    check(&[
        (
            "vocab_size_key_differs",
            |w| {
                w.set_kv("llama.vocab_size", Value::U32(512));
            },
            &[
                "`llama.vocab_size`",
                "found 512",
                "300 (the length of tokenizer.ggml.tokens)",
            ],
        ),
        (
            "embedding_rows_differ_from_token_list",
            |w| {
                // no vocab_size key: the token list decides, and the embedding disagrees
                w.remove_kv("llama.vocab_size");
                reshape(w, "token_embd.weight", &[64, 320]);
            },
            &[
                "tensor `token_embd.weight` shape",
                "found [64, 320]",
                "[64, 300]",
            ],
        ),
        (
            "token_types_shorter_than_tokens",
            |w| {
                let types = Value::Array(mcc::gguf::Array {
                    elem_type: mcc::gguf::ValueType::I32,
                    items: vec![Value::I32(1); 299],
                });
                w.set_kv("tokenizer.ggml.token_type", types);
            },
            &["`tokenizer.ggml.token_type`", "299 entries", "300 entries"],
        ),
    ]);
}

#[test]
fn missing_required_tensors() {
    check(&[
        (
            "no_token_embd",
            |w| {
                w.remove_tensor("token_embd.weight");
            },
            &["missing tensor `token_embd.weight`", "[64, 300]"],
        ),
        (
            "no_output_norm",
            |w| {
                w.remove_tensor("output_norm.weight");
            },
            &["missing tensor `output_norm.weight`", "[64]"],
        ),
        (
            "no_attn_v_in_last_layer",
            |w| {
                w.remove_tensor("blk.1.attn_v.weight");
            },
            &["missing tensor `blk.1.attn_v.weight`", "[64, 32]"],
        ),
    ]);
}

#[test]
fn special_ids_outside_the_vocabulary() {
    check(&[
        (
            "bos_at_vocab_size",
            |w| {
                w.set_kv("tokenizer.ggml.bos_token_id", Value::U32(300));
            },
            &[
                "`tokenizer.ggml.bos_token_id`",
                "found 300",
                "below the vocabulary size 300",
            ],
        ),
        (
            "eos_at_u32_max",
            |w| {
                w.set_kv("tokenizer.ggml.eos_token_id", Value::U32(u32::MAX));
            },
            &["`tokenizer.ggml.eos_token_id`", "found 4294967295"],
        ),
        (
            "padding_past_u32",
            |w| {
                w.set_kv("tokenizer.ggml.padding_token_id", Value::U64(1 << 40));
            },
            &["`tokenizer.ggml.padding_token_id`", "found 1099511627776"],
        ),
        (
            "unknown_negative",
            |w| {
                w.set_kv("tokenizer.ggml.unknown_token_id", Value::I32(-1));
            },
            &["`tokenizer.ggml.unknown_token_id`", "i32 -1"],
        ),
        (
            "eot_past_vocab",
            |w| {
                w.set_kv("tokenizer.ggml.eot_token_id", Value::U32(1000));
            },
            &["`tokenizer.ggml.eot_token_id`", "found 1000"],
        ),
    ]);
}
