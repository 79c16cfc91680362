//! `mcc inspect` against gguf-py: the JSON report of mcc's reader must agree with
//! `scripts/gguf_py_summary.py` (gguf-py's GGUFReader) on the header, every metadata
//! key with its type and scalar value (arrays by element type and length), and every
//! tensor's name, type, shape, offset and size; on SmolLM2 and on a synthesized file.
//! On SmolLM2 the model section must also state the known shape.

use std::path::{Path, PathBuf};
use std::process::Command;

use mcc::gguf::writer::WriteMode;
use mcc::gguf::GgufFile;
use mcc::inspect::serde_json::{self, Value as Json};
use mcc::inspect::{render_text, report_json};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    match std::env::var_os("MCC_MODELS") {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").expect("HOME or MCC_MODELS must be set");
            PathBuf::from(home).join(".cache/mcc/models")
        }
    }
}

fn smollm2() -> PathBuf {
    let p = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} not found: download SmolLM2-135M-Instruct Q4_1 there or set MCC_MODELS",
        p.display()
    );
    p
}

/// gguf-py's summary of `path`.
fn gguf_py(path: &Path) -> Json {
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/gguf_py_summary.py"))
        .arg(path)
        .output()
        .expect("running python3 (needs the `gguf` pip package)");
    assert!(
        out.status.success(),
        "gguf_py_summary.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gguf_py_summary.py printed JSON")
}

/// Compares mcc's report of `path` with gguf-py's, item by item so a failure names
/// the key or tensor. Returns mcc's report.
fn compare(path: &Path) -> Json {
    let g = GgufFile::open(path).unwrap();
    let ours = report_json(&g, true);
    let theirs = gguf_py(path);
    for field in ["version", "alignment", "data_offset", "n_kv", "n_tensors"] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    let (m_ours, m_theirs) = (
        ours["metadata"].as_array().unwrap(),
        theirs["metadata"].as_array().unwrap(),
    );
    assert_eq!(m_ours.len(), m_theirs.len(), "metadata count");
    for (a, b) in m_ours.iter().zip(m_theirs) {
        assert_eq!(a, b, "metadata key {}", b["key"]);
    }
    let (t_ours, t_theirs) = (
        ours["tensors"].as_array().unwrap(),
        theirs["tensors"].as_array().unwrap(),
    );
    assert_eq!(t_ours.len(), t_theirs.len(), "tensor count");
    for (a, b) in t_ours.iter().zip(t_theirs) {
        assert_eq!(a, b, "tensor {}", b["name"]);
    }
    ours
}

#[test]
fn smollm2_agrees_with_gguf_py_and_states_its_shape() {
    let path = smollm2();
    let r = compare(&path);
    assert_eq!(r["n_tensors"], 272);
    let m = &r["model"];
    assert_eq!(r["describe_error"], Json::Null);
    assert_eq!(m["n_layer"], 30);
    assert_eq!(m["n_embd"], 576);
    assert_eq!(m["n_ff"], 1536);
    assert_eq!(m["n_head"], 9);
    assert_eq!(m["n_head_kv"], 3);
    assert_eq!(m["head_dim"], 64);
    assert_eq!(m["n_vocab"], 49152);
    assert_eq!(m["n_ctx_train"], 8192);
    assert_eq!(m["file_type_name"], "Q4_1");
    assert_eq!(m["token_embd_type"], "Q8_0");
    assert_eq!(m["tied_output"], true);
    assert_eq!(m["tokenizer"]["model"], "gpt2");
    assert_eq!(m["tokenizer"]["pre"], "smollm");
    // Quant mix: the embedding is the only Q8_0 tensor, 210 Q4_1 matrices, 61 norms.
    let types: Vec<(String, u64)> = r["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap().to_string(),
                t["n_tensors"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        types,
        [("F32".into(), 61), ("Q4_1".into(), 210), ("Q8_0".into(), 1)]
    );

    let text = render_text(&GgufFile::open(&path).unwrap(), false);
    for needle in [
        "layers       30",
        "embd         576",
        "ff           1536",
        "heads        9 (3 KV heads, head_dim 64",
        "vocab        49152",
        "file type    Q4_1 (general.file_type = 3)",
        "embedding    Q8_0 [576, 49152]",
        "output       tied to token_embd",
        "tokenizer    gpt2 (pre smollm), 49152 tokens, 48900 merges",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn synthesized_file_agrees_with_gguf_py() {
    let dir = std::env::temp_dir().join(format!("mcc-inspect-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("synth.gguf");
    let mut cfg = mcc::synth::SynthConfig::tiny();
    cfg.weight_type = mcc::gguf::GgmlType::F16;
    cfg.rope_scaling = Some(mcc::synth::Llama3RopeScaling::LLAMA_3_1);
    cfg.head_dim = 32; // != n_embd / n_head, so key_length matters
    let result = std::panic::catch_unwind(|| {
        // SmolLM2's tokenizer: every tokenizer.* key copied, vocab 49152.
        mcc::synth::synthesize(&cfg, Some(&smollm2()), &out, WriteMode::Full).unwrap();
        let r = compare(&out);
        assert_eq!(r["model"]["n_vocab"], 49152);
        assert_eq!(r["model"]["head_dim"], 32);
        assert_eq!(r["model"]["file_type_name"], "F16");
        assert_eq!(r["model"]["rope_freqs"], true);
        assert_eq!(r["model"]["tokenizer"]["pre"], "smollm");
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
