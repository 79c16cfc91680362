//! Bad input: each case is refused with the file and field named, and nothing is
//! written. (Byte-identity with the reference converter is tests/e2e_convert.rs.)

use super::*;

/// A safetensors file: `(name, dtype, shape)` with zero bytes of data each.
fn safetensors(tensors: &[(&str, &str, &[u64])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0u64;
    for (name, dtype, shape) in tensors {
        let width = match *dtype {
            "F32" => 4,
            "I8" | "F8_E4M3" => 1,
            _ => 2,
        };
        let n = shape.iter().product::<u64>() * width;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.resize(out.len() + off as usize, 0);
    out
}

/// A one-layer checkpoint: hidden 8, 2 heads of 4, 1 KV head, ff 16, vocab 4.
fn write_model(dir: &Path, q_rows: u64, dtype: &str) {
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 4,
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let p = "model.layers.0.";
    let names = [
        ("model.embed_tokens.weight".to_string(), vec![4, 8]),
        ("model.norm.weight".to_string(), vec![8]),
        (format!("{p}self_attn.q_proj.weight"), vec![q_rows, 8]),
        (format!("{p}self_attn.k_proj.weight"), vec![4, 8]),
    ];
    let list: Vec<(&str, &str, &[u64])> = names
        .iter()
        .map(|(n, s)| (n.as_str(), dtype, s.as_slice()))
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors(&list)).unwrap();
}

/// Runs the conversion and returns its error; checks that no output was written.
fn refused(dir: &Path) -> String {
    let out = dir.join("out.gguf");
    let args = Args {
        dir: dir.to_path_buf(),
        output: out.clone(),
        outtype: OutTypeArg::F16,
    };
    let e = format!("{:#}", run(&args).unwrap_err());
    assert!(!out.exists(), "{e}");
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    e
}

fn has(e: &str, needles: &[&str]) {
    for n in needles {
        assert!(e.contains(n), "{n:?} not in: {e}");
    }
}

#[test]
fn missing_shard_names_the_index_and_the_shard() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), 8, "BF16");
    std::fs::rename(
        d.path().join("model.safetensors"),
        d.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors",
    }});
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let e = refused(d.path());
    has(
        &e,
        &[
            "model.safetensors.index.json",
            "weight_map.lm_head.weight",
            "model-00002-of-00002.safetensors",
            "does not exist",
        ],
    );
}

#[test]
fn shape_disagreeing_with_config_is_refused() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), 12, "BF16");
    let e = refused(d.path());
    has(
        &e,
        &[
            "model.safetensors",
            "model.layers.0.self_attn.q_proj.weight",
            "[12, 8]",
            "config.json",
            "num_attention_heads",
            "[8, 8]",
        ],
    );
}

#[test]
fn unsupported_architecture_is_refused() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), 8, "BF16");
    let cfg = serde_json::json!({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"});
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let e = refused(d.path());
    has(&e, &["config.json", "`architectures`", "GPT2LMHeadModel"]);
}

#[test]
fn unsupported_dtypes_are_refused() {
    for dtype in ["I8", "F8_E4M3"] {
        let d = tempfile::tempdir().unwrap();
        write_model(d.path(), 8, dtype);
        let e = refused(d.path());
        has(
            &e,
            &["model.safetensors", "`dtype`", "expected BF16, F16 or F32"],
        );
    }
}

#[test]
fn truncated_header_is_refused() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), 8, "BF16");
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // The header says N bytes; the file ends 20 bytes into it.
    std::fs::write(&path, &bytes[..28]).unwrap();
    let e = refused(d.path());
    has(&e, &["model.safetensors", "safetensors header"]);
    // Shorter than the 8-byte length.
    std::fs::write(&path, &bytes[..5]).unwrap();
    has(&refused(d.path()), &["model.safetensors", "header"]);
}

#[test]
fn a_missing_directory_or_config_is_named() {
    let d = tempfile::tempdir().unwrap();
    has(&refused(d.path()), &["config.json", "cannot read"]);
}
