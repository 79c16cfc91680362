//! `mcc inspect`: what a GGUF holds and what mcc makes of it.
//!
//! Two views of one [`Report`]: a human summary (architecture, shapes, parameter count,
//! file type, bytes per ggml type, bits per weight, tokenizer) and, with `--json`, a
//! machine one that also carries every scalar metadata value and, with `--tensors`,
//! every tensor's name, type, dims, offset and size. The JSON is what the e2e test
//! compares field by field with gguf-py's reading of the same file.
//!
//! A file that parses as GGUF but is not a model mcc can compile (another
//! architecture, a shape mismatch) is still inspected: the report carries the
//! describe error instead of the model section.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
/// The JSON library of the report, re-exported so callers (the e2e tests) parse and
/// compare with the same version.
pub use serde_json;
use serde_json::{json, Value as Json};

use crate::describe::{describe, file_type_name, ModelDesc};
use crate::gguf::{GgmlType, GgufFile, Value};

/// `mcc inspect model.gguf [--json] [--tensors]`
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The GGUF file.
    pub model: PathBuf,
    /// Machine-readable output (JSON on stdout).
    #[arg(long)]
    pub json: bool,
    /// List every tensor (name, type, dims, offset, bytes).
    #[arg(long)]
    pub tensors: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let g = GgufFile::open(&args.model)?;
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&report_json(&g, args.tensors))
            .context("serialising the report")?;
        s.push('\n');
        s
    } else {
        render_text(&g, args.tensors)
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out.as_bytes()) {
        // `mcc inspect x | head` closes the pipe early; that is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

/// Tensor count, elements and bytes of one ggml type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypeStats {
    pub n_tensors: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

/// Per-type totals over every tensor of `g`, in [`GgmlType`] order.
pub fn type_stats(g: &GgufFile) -> BTreeMap<GgmlType, TypeStats> {
    let mut out: BTreeMap<GgmlType, TypeStats> = BTreeMap::new();
    for t in &g.tensors {
        let s = out.entry(t.ggml_type).or_default();
        s.n_tensors += 1;
        s.n_elements += t.n_elements;
        s.n_bytes += t.n_bytes;
    }
    out
}

/// Bits per weight over all tensors: `8 * bytes / elements` (0 for no tensors).
pub fn bits_per_weight(g: &GgufFile) -> f64 {
    let elems: u64 = g.tensors.iter().map(|t| t.n_elements).sum();
    let bytes: u64 = g.tensors.iter().map(|t| t.n_bytes).sum();
    if elems == 0 {
        0.0
    } else {
        8.0 * bytes as f64 / elems as f64
    }
}

/// A scalar metadata value as JSON (floats widened exactly from f32); arrays are
/// described by element type and length only.
fn value_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(f64::from(*x)),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => json!({ "elem_type": a.elem_type.name(), "len": a.items.len() }),
    }
}

fn model_json(d: &ModelDesc, g: &GgufFile) -> Json {
    let t = &d.tokenizer;
    json!({
        "architecture": "llama",
        "name": d.name,
        "n_layer": d.n_layer,
        "n_embd": d.n_embd,
        "n_ff": d.n_ff,
        "n_head": d.n_head,
        "n_head_kv": d.n_head_kv,
        "head_dim": d.head_dim,
        "n_vocab": d.n_vocab,
        "n_ctx_train": d.n_ctx_train,
        "rope_dim": d.rope_dim,
        "rope_base": f64::from(d.rope_base),
        "rms_eps": f64::from(d.rms_eps),
        "tied_output": d.output.is_none(),
        "rope_freqs": d.rope_freqs.is_some(),
        "n_params": d.n_params(),
        "file_type": d.file_type,
        "file_type_name": d.file_type.and_then(file_type_name),
        "token_embd_type": d.token_embd.ggml_type.name(),
        "output_type": d.output.as_ref().unwrap_or(&d.token_embd).ggml_type.name(),
        "bits_per_weight": bits_per_weight(g),
        "tokenizer": {
            "model": t.model,
            "pre": t.pre,
            "n_tokens": t.tokens.len(),
            "n_merges": t.merges.len(),
            "bos": t.bos,
            "eos": t.eos,
            "eot": t.eot,
            "unk": t.unk,
            "pad": t.pad,
            "add_bos": t.add_bos,
            "add_eos": t.add_eos,
            "chat_template": t.chat_template.is_some(),
        },
    })
}

/// The machine-readable report.
///
/// ```text
/// { path, version, alignment, data_offset, file_len, n_kv, n_tensors,
///   metadata: [{key, type, value} | {key, type: "array", elem_type, len}],
///   types: [{type, n_tensors, n_elements, n_bytes, bits_per_weight}],
///   bits_per_weight, model: {...} | null, describe_error: string | null,
///   tensors?: [{name, type, dims, offset (relative to data_offset), n_bytes}] }
/// ```
pub fn report_json(g: &GgufFile, with_tensors: bool) -> Json {
    let metadata: Vec<Json> = g
        .metadata
        .iter()
        .map(|(k, v)| match v {
            Value::Array(a) => json!({
                "key": k, "type": "array", "elem_type": a.elem_type.name(), "len": a.items.len()
            }),
            _ => json!({ "key": k, "type": v.type_name(), "value": value_json(v) }),
        })
        .collect();
    let types: Vec<Json> = type_stats(g)
        .iter()
        .map(|(t, s)| {
            json!({
                "type": t.name(),
                "n_tensors": s.n_tensors,
                "n_elements": s.n_elements,
                "n_bytes": s.n_bytes,
                "bits_per_weight": t.bits_per_weight(),
            })
        })
        .collect();
    let (model, describe_error) = match describe(g) {
        Ok(d) => (model_json(&d, g), Json::Null),
        Err(e) => (Json::Null, json!(e.to_string())),
    };
    let mut report = json!({
        "path": g.path.display().to_string(),
        "version": g.version,
        "alignment": g.alignment,
        "data_offset": g.data_offset,
        "file_len": g.file_len(),
        "n_kv": g.metadata.len(),
        "n_tensors": g.tensors.len(),
        "metadata": metadata,
        "types": types,
        "bits_per_weight": bits_per_weight(g),
        "model": model,
        "describe_error": describe_error,
    });
    if with_tensors {
        let tensors: Vec<Json> = g
            .tensors
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "type": t.ggml_type.name(),
                    "dims": t.dims,
                    "offset": t.offset,
                    "n_bytes": t.n_bytes,
                })
            })
            .collect();
        report["tensors"] = Json::Array(tensors);
    }
    report
}

/// Bytes in MB/GB with two decimals.
pub(crate) fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

/// A count in K/M/B.
fn count(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2}B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}K", x / 1e3)
    } else {
        n.to_string()
    }
}

/// The human summary.
pub fn render_text(g: &GgufFile, with_tensors: bool) -> String {
    let mut s = String::new();
    let file = g.path.file_name().map_or_else(
        || g.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let _ = writeln!(
        s,
        "{file}: GGUF v{}, {} keys, {} tensors, {}",
        g.version,
        g.metadata.len(),
        g.tensors.len(),
        size(g.file_len())
    );
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("(none)");
    let mut row = |label: &str, value: String| {
        let _ = writeln!(s, "  {label:<13}{value}");
    };
    match describe(g) {
        Ok(d) => {
            let name = d.name.as_deref().unwrap_or("(unnamed)");
            row("model", format!("{name} ({arch})"));
            let ft = match d.file_type {
                Some(ft) => format!(
                    "{} (general.file_type = {ft})",
                    file_type_name(ft).unwrap_or("unknown")
                ),
                None => "not set".into(),
            };
            row("file type", ft);
            row("layers", d.n_layer.to_string());
            row("embd", d.n_embd.to_string());
            row("ff", d.n_ff.to_string());
            row(
                "heads",
                format!(
                    "{} ({} KV heads, head_dim {}, {} queries per KV head)",
                    d.n_head,
                    d.n_head_kv,
                    d.head_dim,
                    d.n_head / d.n_head_kv
                ),
            );
            row("vocab", d.n_vocab.to_string());
            row("context", format!("{} (training)", d.n_ctx_train));
            let freqs = if d.rope_freqs.is_some() {
                ", rope_freqs (Llama-3.1 scaling)"
            } else {
                ""
            };
            row(
                "rope",
                format!("base {}, dim {}{freqs}", d.rope_base, d.rope_dim),
            );
            row("rms eps", format!("{:e}", d.rms_eps));
            row(
                "embedding",
                format!("{} {:?}", d.token_embd.ggml_type, d.token_embd.dims),
            );
            row(
                "output",
                match &d.output {
                    Some(o) => format!("{} {:?}", o.ggml_type, o.dims),
                    None => "tied to token_embd".into(),
                },
            );
            row(
                "params",
                format!("{} ({})", count(d.n_params()), d.n_params()),
            );
            let t = &d.tokenizer;
            let mut tok = t.model.clone();
            if let Some(pre) = &t.pre {
                let _ = write!(tok, " (pre {pre})");
            }
            let _ = write!(tok, ", {} tokens", t.tokens.len());
            if !t.merges.is_empty() {
                let _ = write!(tok, ", {} merges", t.merges.len());
            }
            for (label, id) in [("bos", t.bos), ("eos", t.eos), ("eot", t.eot)] {
                if let Some(id) = id {
                    let _ = write!(tok, ", {label} {id}");
                }
            }
            if t.chat_template.is_some() {
                tok.push_str(", chat template");
            }
            row("tokenizer", tok);
        }
        Err(e) => {
            row("architecture", arch.to_string());
            row("not compilable", e.to_string());
        }
    }
    let data: u64 = g.tensors.iter().map(|t| t.n_bytes).sum();
    row(
        "weights",
        format!("{}, {:.2} bits per weight", size(data), bits_per_weight(g)),
    );
    let _ = writeln!(s, "  types:");
    for (t, st) in type_stats(g) {
        let _ = writeln!(
            s,
            "    {:<8}{:>5} tensors {:>10} weights {:>11}  {:.2} bpw",
            t.name(),
            st.n_tensors,
            count(st.n_elements),
            size(st.n_bytes),
            t.bits_per_weight()
        );
    }
    if with_tensors {
        let _ = writeln!(
            s,
            "  tensors (offset from the data section at {}):",
            g.data_offset
        );
        for t in &g.tensors {
            let dims = t
                .dims
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" x ");
            let _ = writeln!(
                s,
                "    {:<28} {:<8} {:<18} @{:<12} {}",
                t.name,
                t.ggml_type.name(),
                dims,
                t.offset,
                size(t.n_bytes)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::WriteMode;
    use crate::synth::{llama_writer, toy_vocab, SynthConfig};

    fn tiny() -> GgufFile {
        let cfg = SynthConfig::tiny();
        let w = llama_writer(&cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab).unwrap();
        GgufFile::from_bytes("tiny.gguf", w.to_bytes(WriteMode::HeaderOnly).unwrap()).unwrap()
    }

    #[test]
    fn json_report_of_a_synth_model() {
        let g = tiny();
        let r = report_json(&g, true);
        assert_eq!(r["version"], 3);
        assert_eq!(r["n_tensors"], 2 * 9 + 3);
        assert_eq!(r["model"]["n_layer"], 2);
        assert_eq!(r["model"]["head_dim"], 64);
        assert_eq!(r["model"]["file_type_name"], "F32");
        assert_eq!(r["model"]["tokenizer"]["model"], "gpt2");
        assert_eq!(r["describe_error"], Json::Null);
        let meta = r["metadata"].as_array().unwrap();
        let eps = meta
            .iter()
            .find(|m| m["key"] == "llama.attention.layer_norm_rms_epsilon");
        assert_eq!(eps.unwrap()["value"], json!(f64::from(1e-5f32)));
        let toks = meta
            .iter()
            .find(|m| m["key"] == "tokenizer.ggml.tokens")
            .unwrap();
        assert_eq!(
            (toks["elem_type"].as_str(), toks["len"].as_u64()),
            (Some("string"), Some(512))
        );
        let tensors = r["tensors"].as_array().unwrap();
        assert_eq!(tensors[0]["name"], "token_embd.weight");
        assert_eq!(tensors[0]["dims"], json!([256, 512]));
        // All weights F32: 32 bits per weight, one type row.
        assert_eq!(r["bits_per_weight"], 32.0);
        assert_eq!(r["types"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn text_report_names_shapes_and_types() {
        let text = render_text(&tiny(), true);
        for needle in [
            "GGUF v3",
            "layers       2",
            "embd         256",
            "heads        4 (2 KV heads, head_dim 64",
            "vocab        512",
            "file type    F32 (general.file_type = 0)",
            "tokenizer    gpt2 (pre gpt-2), 512 tokens, 8 merges",
            "F32        21 tensors",
            "blk.1.ffn_down.weight",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn non_llama_files_are_inspected_with_the_reason() {
        let mut w = crate::gguf::writer::GgufWriter::new();
        w.add_kv("general.architecture", Value::String("gemma".into()));
        let g = GgufFile::from_bytes("g.gguf", w.to_bytes(WriteMode::Full).unwrap()).unwrap();
        let r = report_json(&g, false);
        assert_eq!(r["model"], Json::Null);
        assert!(r["describe_error"]
            .as_str()
            .unwrap()
            .contains("unsupported architecture: gemma"));
        assert!(r.get("tensors").is_none());
        assert!(render_text(&g, false).contains("not compilable"));
    }
}
