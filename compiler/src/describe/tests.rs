//! describe() on synthesized models, valid and each broken in one way.

use super::*;
use crate::gguf::writer::{GgufWriter, TensorData, WriteMode};
use crate::synth::{llama_writer, toy_vocab, SynthConfig};

fn tiny_writer(cfg: &SynthConfig) -> GgufWriter {
    llama_writer(cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab).unwrap()
}

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

fn parse(w: &GgufWriter) -> GgufFile {
    GgufFile::from_bytes("model.gguf", w.to_bytes(WriteMode::HeaderOnly).unwrap()).unwrap()
}

fn err(w: &GgufWriter) -> String {
    match describe(&parse(w)) {
        Ok(_) => panic!("expected describe to fail"),
        Err(e) => {
            let s = e.to_string();
            assert!(s.starts_with("model.gguf: "), "{s}");
            s
        }
    }
}

#[test]
fn reads_a_valid_model() {
    let w = tiny_writer(&small());
    let d = describe(&parse(&w)).unwrap();
    assert_eq!(d.name.as_deref(), Some("synth-tiny"));
    assert_eq!(
        (
            d.n_embd,
            d.n_layer,
            d.n_head,
            d.n_head_kv,
            d.head_dim,
            d.n_ff,
            d.n_vocab
        ),
        (64, 2, 4, 2, 16, 96, 300)
    );
    assert_eq!(
        (d.n_ctx_train, d.rope_dim, d.rope_base, d.rms_eps),
        (512, 16, 10000.0, 1e-5)
    );
    assert_eq!(d.layers.len(), 2);
    assert_eq!(d.layers[1].attn_k.name, "blk.1.attn_k.weight");
    assert_eq!(d.layers[1].attn_k.dims, vec![64, 32]);
    assert_eq!(d.layers[0].attn_output.dims, vec![64, 64]);
    assert_eq!(d.layers[0].ffn_down.dims, vec![96, 64]);
    assert_eq!(d.tokenizer.model, "gpt2");
    // 9 per layer + token_embd + output_norm + output.
    assert_eq!(d.tensors().len(), 2 * 9 + 3);
    let params = 64 * 300 * 2 + 64 + 2 * (2 * 64 + 64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 96);
    assert_eq!(d.n_params(), params);
}

#[test]
fn defaults_head_dim_rope_and_kv_heads() {
    let mut w = tiny_writer(&small());
    for k in [
        "llama.attention.key_length",
        "llama.attention.value_length",
        "llama.rope.dimension_count",
        "llama.rope.freq_base",
        "llama.attention.head_count_kv",
    ] {
        w.remove_kv(k).unwrap();
    }
    // Without head_count_kv every head has its own K/V: k and v must be [64, 64].
    for i in 0..2 {
        for role in ["attn_k", "attn_v"] {
            let name = format!("blk.{i}.{role}.weight");
            w.remove_tensor(&name);
            w.add_tensor(&name, &[64, 64], GgmlType::F32, TensorData::Constant(0.0));
        }
    }
    let d = describe(&parse(&w)).unwrap();
    assert_eq!(
        (d.head_dim, d.rope_dim, d.n_head_kv, d.rope_base),
        (16, 16, 4, 10000.0)
    );
}

#[test]
fn head_dim_from_key_length_differs_from_embd_over_heads() {
    // Minitron-style: 4 heads of 32 over a 64-wide stream.
    let mut cfg = small();
    cfg.head_dim = 32;
    let d = describe(&parse(&tiny_writer(&cfg))).unwrap();
    assert_eq!(d.head_dim, 32);
    assert_eq!(d.layers[0].attn_q.dims, vec![64, 128]);
    assert_eq!(d.layers[0].attn_output.dims, vec![128, 64]);
}

#[test]
fn other_architectures_are_rejected() {
    let mut w = tiny_writer(&small());
    w.set_kv("general.architecture", Value::String("qwen2".into()));
    let e = err(&w);
    assert!(e.contains("unsupported architecture: qwen2"), "{e}");
    w.remove_kv("general.architecture");
    assert!(err(&w).contains("`general.architecture`"));
}

#[test]
fn missing_and_mistyped_keys() {
    let mut w = tiny_writer(&small());
    w.remove_kv("llama.attention.layer_norm_rms_epsilon");
    let e = err(&w);
    assert!(
        e.contains("llama.attention.layer_norm_rms_epsilon") && e.contains("no such key"),
        "{e}"
    );

    let mut w = tiny_writer(&small());
    w.set_kv("llama.block_count", Value::String("2".into()));
    let e = err(&w);
    assert!(
        e.contains("`llama.block_count`") && e.contains("string"),
        "{e}"
    );

    let mut w = tiny_writer(&small());
    w.set_kv("llama.rope.freq_base", Value::U32(10000));
    assert!(err(&w).contains("a float"));

    let mut w = tiny_writer(&small());
    w.set_kv("llama.embedding_length", Value::U32(0));
    assert!(err(&w).contains(">= 1"));
}

#[test]
fn inconsistent_hyperparameters() {
    let mut w = tiny_writer(&small());
    w.set_kv("llama.attention.head_count_kv", Value::U32(3));
    let e = err(&w);
    assert!(e.contains("4 % 3"), "{e}");

    let mut w = tiny_writer(&small());
    w.set_kv("llama.attention.key_length", Value::U32(15));
    w.remove_kv("llama.attention.value_length");
    w.remove_kv("llama.rope.dimension_count");
    assert!(err(&w).contains("even"));

    let mut w = tiny_writer(&small());
    w.set_kv("llama.vocab_size", Value::U32(301));
    let e = err(&w);
    assert!(
        e.contains("llama.vocab_size") && e.contains("301") && e.contains("300"),
        "{e}"
    );

    let mut w = tiny_writer(&small());
    w.set_kv("llama.rope.scaling.type", Value::String("linear".into()));
    assert!(err(&w).contains("\"linear\""));
}

#[test]
fn special_ids_must_be_in_the_vocabulary() {
    let mut w = tiny_writer(&small());
    w.set_kv("tokenizer.ggml.eos_token_id", Value::U32(300));
    let e = err(&w);
    assert!(
        e.contains("tokenizer.ggml.eos_token_id") && e.contains("300"),
        "{e}"
    );
}

#[test]
fn missing_tensor() {
    let mut w = tiny_writer(&small());
    w.remove_tensor("blk.1.ffn_up.weight");
    let e = err(&w);
    assert!(
        e.contains("missing tensor `blk.1.ffn_up.weight`") && e.contains("[64, 96]"),
        "{e}"
    );
}

#[test]
fn wrong_shapes_and_types() {
    let cases: [(&str, &[u64], GgmlType, &str); 4] = [
        ("blk.0.attn_q.weight", &[64, 32], GgmlType::F32, "[64, 64]"),
        ("token_embd.weight", &[64, 299], GgmlType::F32, "[64, 300]"),
        (
            "blk.1.ffn_down.weight",
            &[64, 96],
            GgmlType::F32,
            "[96, 64]",
        ),
        ("blk.0.attn_norm.weight", &[64], GgmlType::F16, "F32"),
    ];
    for (name, dims, ty, expected) in cases {
        let mut w = tiny_writer(&small());
        assert!(w.remove_tensor(name));
        w.add_tensor(name, dims, ty, TensorData::Constant(0.0));
        let e = err(&w);
        assert!(
            e.contains(&format!("tensor `{name}`")) && e.contains(expected),
            "{e}"
        );
    }
}

#[test]
fn unexpected_tensors() {
    let cases = [
        ("blk.0.attn_q.bias", "bias"),
        ("blk.2.attn_q.weight", "beyond llama.block_count"),
        ("blk.0.attn_q_norm.weight", "not a llama layer tensor"),
        ("pos_embd.weight", "not a llama tensor"),
    ];
    for (name, why) in cases {
        let mut w = tiny_writer(&small());
        w.add_tensor(name, &[64], GgmlType::F32, TensorData::Constant(0.0));
        let e = err(&w);
        assert!(
            e.contains(&format!("unexpected tensor `{name}`")) && e.contains(why),
            "{e}"
        );
    }
}

#[test]
fn tied_output_and_rope_freqs() {
    let mut cfg = small();
    cfg.tied = true;
    cfg.rope_scaling = Some(crate::synth::Llama3RopeScaling::LLAMA_3_1);
    let mut w = tiny_writer(&cfg);
    let d = describe(&parse(&w)).unwrap();
    assert!(d.output.is_none());
    assert_eq!(d.rope_freqs.as_ref().unwrap().dims, vec![8]);
    w.remove_tensor("rope_freqs.weight");
    w.add_tensor(
        "rope_freqs.weight",
        &[16],
        GgmlType::F32,
        TensorData::Constant(1.0),
    );
    assert!(err(&w).contains("[8]"));
}

#[test]
fn file_type_names() {
    assert_eq!(file_type_name(0), Some("F32"));
    assert_eq!(file_type_name(1), Some("F16"));
    assert_eq!(file_type_name(3), Some("Q4_1"));
    assert_eq!(file_type_name(15), Some("Q4_K_M"));
    assert_eq!(file_type_name(31), Some("IQ1_M"));
    assert_eq!(file_type_name(32), Some("BF16"));
    assert_eq!(file_type_name(5), None);
    assert_eq!(file_type_name(33), None);
}
