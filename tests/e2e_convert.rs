//! `mcc convert` against llama.cpp's `convert_hf_to_gguf.py`: on the synthetic
//! checkpoints of scripts/make-hf-checkpoints.py, every output must equal the
//! reference's byte for byte. The goldens (tests/golden/convert/, made by
//! scripts/convert_golden.sh) hold the reference output's sha256 and, per metadata key
//! and tensor, a sha256 of its bytes, so a mismatch names what differs.

use std::path::Path;

use mcc::convert::{Args, OutTypeArg};
use mcc::gguf::{GgufFile, Value};
use sha2::{Digest, Sha256};

/// (checkpoint, --outtype), as scripts/convert_golden.sh lists them.
const CASES: &[(&str, &str)] = &[
    ("tiny-llama-sharded-v0.1", "f16"),
    ("tiny-llama-sharded-v0.1", "bf16"),
    ("tiny-llama-sharded-v0.1", "f32"),
    ("Llama-3.1-Minitron-4B-Width-Base", "auto"),
    ("tied-embd-chat", "f16"),
    ("tied-embd-chat", "bf16"),
];

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A metadata value as GGUF encodes it (after its type id).
fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        Value::Array(a) => {
            out.extend(a.elem_type.id().to_le_bytes());
            out.extend((a.items.len() as u64).to_le_bytes());
            for item in &a.items {
                encode(item, out);
            }
        }
    }
}

/// The summary lines scripts/convert_golden.py writes, without the readable values.
fn summary(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut lines = vec![format!("file\t{}\t{}", bytes.len(), hex(&bytes))];
    let g = GgufFile::open(path).unwrap();
    for (key, v) in &g.metadata {
        let mut raw = Vec::new();
        encode(v, &mut raw);
        lines.push(format!("kv\t{key}\t{}\t{}", v.value_type().id(), hex(&raw)));
    }
    for t in &g.tensors {
        let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
        lines.push(format!(
            "tensor\t{}\t{}\t{}\t{}\t{}",
            t.name,
            t.ggml_type.id(),
            dims.join(","),
            t.offset,
            hex(g.tensor_data(t))
        ));
    }
    lines
}

/// The golden's lines, readable values dropped (kept for messages).
fn golden(name: &str) -> Vec<(String, String)> {
    let path = mcc_e2e::repo_root().join("tests/golden/convert").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (scripts/convert_golden.sh makes it)",
            path.display()
        )
    });
    text.lines()
        .map(|l| match l.strip_prefix("kv\t") {
            Some(rest) => {
                let f: Vec<&str> = rest.splitn(4, '\t').collect();
                (
                    format!("kv\t{}\t{}\t{}", f[0], f[1], f[2]),
                    f[3].to_string(),
                )
            }
            None => (l.to_string(), String::new()),
        })
        .collect()
}

#[test]
fn convert_is_byte_identical_to_convert_hf_to_gguf() {
    let dir = mcc_e2e::hf_checkpoints("convert");
    let mut failures = Vec::new();
    for (ck, outtype) in CASES {
        let output = dir.join(format!("{ck}-{outtype}.gguf"));
        let args = Args {
            dir: dir.join(ck),
            output: output.clone(),
            outtype: match *outtype {
                "f16" => OutTypeArg::F16,
                "bf16" => OutTypeArg::Bf16,
                "f32" => OutTypeArg::F32,
                _ => OutTypeArg::Auto,
            },
        };
        mcc::convert::run(&args).unwrap_or_else(|e| panic!("{ck} {outtype}: {e:#}"));
        let ours = summary(&output);
        let want = golden(&format!("{ck}-{outtype}.txt"));
        if ours.len() != want.len() || ours.iter().zip(&want).any(|(a, b)| *a != b.0) {
            let mut diff = Vec::new();
            for (i, (w, readable)) in want.iter().enumerate() {
                match ours.get(i) {
                    Some(o) if o == w => {}
                    o => diff.push(format!(
                        "  reference: {w}  ({readable})\n  mcc:       {}",
                        o.map_or("(missing)", String::as_str)
                    )),
                }
            }
            for o in ours.iter().skip(want.len()) {
                diff.push(format!("  extra in mcc: {o}"));
            }
            failures.push(format!("{ck} --outtype {outtype}:\n{}", diff.join("\n")));
        }
        std::fs::remove_file(&output).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        failures.is_empty(),
        "mcc convert differs from convert_hf_to_gguf.py:\n{}",
        failures.join("\n")
    );
}
