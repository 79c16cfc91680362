//! `mcc convert HF_DIR -o model.gguf`: a Hugging Face Llama checkpoint (config.json,
//! safetensors, tokenizer.json) to GGUF, writing the file llama.cpp's
//! `convert_hf_to_gguf.py` writes from the same directory, byte for byte.
//!
//! The steps, each as the reference takes them:
//! 1. config.json through `LlamaConfig`'s defaults ([`config`]); the architecture must
//!    be `LlamaForCausalLM`.
//! 2. The tensors of every shard ([`shards`]), named, checked against config.json,
//!    typed and converted ([`tensors`]), after a generated `rope_freqs.weight` for
//!    Llama 3.1's rope scaling.
//! 3. Metadata: architecture and type, the naming keys derived from the directory's name
//!    ([`naming`]) and the sampling defaults of generation_config.json, the
//!    hyperparameters, then the tokenizer ([`vocab`]).
//! 4. GGUF v3 with 32-byte alignment, every tensor padded (the last one too); tensors
//!    are converted one at a time while the file is written, under a temporary name
//!    renamed at the end, so a failure leaves nothing at the output path.
//!
//! Not read (the reference would take extra `general.*` keys from them): a README.md
//! model card's front matter. Not supported: SentencePiece tokenizers, mixture of
//! experts, yarn/longrope scaling, biases, multimodal checkpoints.

pub mod config;
pub mod naming;
mod pre_hashes;
pub mod shards;
pub mod tensors;
pub mod vocab;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::Value as Json;

use crate::gguf::writer::{GgufWriter, TensorData};
use crate::gguf::{GgufFile, Value};
use crate::source::ModelSource;
use config::Config;
use shards::Checkpoint;
use tensors::{Dims, OutType};

/// `--outtype`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutTypeArg {
    F32,
    F16,
    Bf16,
    /// BF16 or F16 as the checkpoint's first matrix, else F16.
    Auto,
}

/// `mcc convert`'s arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The checkpoint directory: config.json, model*.safetensors (with
    /// model.safetensors.index.json when sharded), tokenizer.json, tokenizer_config.json.
    pub dir: PathBuf,
    /// Where to write the GGUF.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// The type of the matrices (norms and other vectors are always F32).
    #[arg(long, value_enum, default_value = "auto")]
    pub outtype: OutTypeArg,
}

/// Runs `mcc convert`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let converted = Converted::open(&args.dir, args.outtype)?;
    let layout = crate::source::write(&converted, &converted.writer, &args.output)?;
    eprintln!(
        "mcc convert: {} -> {}: {} tensors, {:.2} MiB in {:.2} s",
        args.dir.display(),
        args.output.display(),
        converted.plan.len(),
        layout.file_len as f64 / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A checkpoint as the GGUF `mcc convert` writes from it, each tensor converted when it
/// is asked for.
pub struct Converted {
    dir: PathBuf,
    writer: GgufWriter,
    header: GgufFile,
    ck: Checkpoint,
    plan: Vec<tensors::OutTensor>,
}

impl Converted {
    /// Reads and checks the checkpoint in `dir` (everything but the tensors' values).
    pub fn open(dir: &Path, outtype: OutTypeArg) -> anyhow::Result<Converted> {
        let (writer, ck, plan) = prepare(dir, outtype)?;
        let header = writer.header_view(dir)?;
        Ok(Converted {
            dir: dir.to_path_buf(),
            writer,
            header,
            ck,
            plan,
        })
    }
}

impl ModelSource for Converted {
    fn header(&self) -> &GgufFile {
        &self.header
    }

    fn tensor_bytes(&self, i: usize) -> anyhow::Result<Cow<'_, [u8]>> {
        tensors::produce(&self.ck, &self.plan[i]).map(Cow::Owned)
    }

    /// The directory and every file in it, with sizes and modification times, and the
    /// file type converted to.
    fn identity(&self) -> anyhow::Result<String> {
        let read = |e| anyhow::anyhow!("{}: cannot list: {e}", self.dir.display());
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read)? {
            let path = entry.map_err(read)?.path();
            if path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut id = format!("checkpoint {}\n", self.dir.display());
        for f in files {
            id += &crate::source::file_identity(&f)?;
            id.push('\n');
        }
        let file_type = self.header.get("general.file_type").map(|v| v.brief());
        id += &format!(
            "converted, general.file_type {}",
            file_type.unwrap_or_default()
        );
        Ok(id)
    }
}

/// Reads and checks everything; returns the writer (metadata and tensor infos), the
/// checkpoint and the tensor plan, in file order.
pub fn prepare(
    dir: &Path,
    outtype: OutTypeArg,
) -> anyhow::Result<(GgufWriter, Checkpoint, Vec<tensors::OutTensor>)> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let config = Config::load(dir)?;
    config.architecture()?;
    let ck = Checkpoint::open(dir)?;

    let n_layer = config.need_u32(&["n_layers", "num_hidden_layers", "n_layer", "num_layers"])?;
    let n_embd = config.need_u32(&["hidden_size", "n_embd", "dim"])?;
    let n_ff = config.need_u32(&[
        "prefix_dense_intermediate_size",
        "dense_intermediate_size",
        "intermediate_size",
        "n_inner",
        "hidden_dim",
    ])?;
    let n_head = config.need_u32(&["n_heads", "num_attention_heads"])?;
    let n_head_kv = config.need_u32(&["n_kv_heads", "num_key_value_heads"])?;
    if n_head == 0 {
        bail!("{}: field `num_attention_heads`: 0", config.path.display());
    }
    let head_dim_key = config.opt_u32(&["head_dim"])?;
    let head_dim = head_dim_key.unwrap_or(n_embd / n_head);
    let n_vocab = config.need_u32(&["vocab_size"])?;
    let dims = Dims {
        n_layer,
        n_embd: n_embd.into(),
        n_ff: n_ff.into(),
        n_head,
        n_head_kv,
        head_dim: head_dim.into(),
        n_vocab: n_vocab.into(),
    };

    let out = match outtype {
        OutTypeArg::F32 => OutType::F32,
        OutTypeArg::F16 => OutType::F16,
        OutTypeArg::Bf16 => OutType::BF16,
        OutTypeArg::Auto => tensors::guess_out_type(&ck),
    };

    // Rope scaling: what it writes and what it generates.
    let rope = match config.rope.get("full_attention").and_then(Json::as_object) {
        Some(m) => m.clone(),
        None => config.rope.clone(),
    };
    let cfg_file = config.path.display().to_string();
    let rope_type = match rope.get("rope_type") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(v) => bail!("{cfg_file}: field `rope_scaling.rope_type`: found {v}, expected a name"),
    };
    let rope_num = |key: &str, default: f64| -> anyhow::Result<f64> {
        match rope.get(key) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v.as_f64().with_context(|| {
                format!("{cfg_file}: field `rope_scaling.{key}`: found {v}, expected a number")
            }),
        }
    };
    let mut extra = Vec::new();
    let mut rope_kv: Vec<(String, Value)> = Vec::new();
    match rope_type.as_deref() {
        None | Some("default") | Some("dynamic") => {}
        Some(t) if t.eq_ignore_ascii_case("llama3") => {
            let factors = tensors::llama3_rope_factors(
                rope_num("rope_theta", 10000.0)?,
                head_dim.into(),
                rope_num("factor", 8.0)?,
                rope_num("low_freq_factor", 1.0)?,
                rope_num("high_freq_factor", 4.0)?,
                rope_num("original_max_position_embeddings", 8192.0)?,
            );
            extra.push(("rope_freqs.weight".to_string(), factors));
        }
        Some("linear") => {
            if let Some(f) = rope.get("factor").filter(|f| !f.is_null()) {
                let f = f.as_f64().with_context(|| {
                    format!("{cfg_file}: field `rope_scaling.factor`: found {f}, expected a number")
                })?;
                rope_kv.push((
                    "llama.rope.scaling.type".into(),
                    Value::String("linear".into()),
                ));
                rope_kv.push(("llama.rope.scaling.factor".into(), Value::F32(f as f32)));
            }
        }
        Some(t) => bail!(
            "{cfg_file}: field `rope_scaling.rope_type`: {t:?} is not supported (llama3 or \
             linear)"
        ),
    }
    if config.rope.contains_key("mrope_section") {
        bail!("{cfg_file}: field `rope_scaling.mrope_section`: not supported");
    }

    let plan = tensors::plan(&ck, &config, &dims, out, extra)?;
    let total_params: u64 = plan.iter().map(|t| t.dims.iter().product::<u64>()).sum();

    let mut w = GgufWriter::new();
    w.pad_end(true);
    w.add_kv("general.architecture", Value::String("llama".into()));
    w.add_kv("general.type", Value::String("model".into()));
    for (k, v) in general(dir, &config, total_params)? {
        w.add_kv(k, v);
    }

    // Hyperparameters.
    let u32_kv = |w: &mut GgufWriter, key: &str, keys: &[&str]| -> anyhow::Result<()> {
        if let Some(x) = config.opt_u32(keys)? {
            w.add_kv(key, Value::U32(x));
        }
        Ok(())
    };
    let f32_kv = |w: &mut GgufWriter, key: &str, keys: &[&str]| -> anyhow::Result<()> {
        if let Some(x) = config.opt_f64(keys)? {
            w.add_kv(key, Value::F32(x as f32));
        }
        Ok(())
    };
    w.add_kv("llama.block_count", Value::U32(n_layer));
    u32_kv(
        &mut w,
        "llama.context_length",
        &[
            "max_position_embeddings",
            "n_ctx",
            "n_positions",
            "max_length",
            "max_sequence_length",
            "model_max_length",
        ],
    )?;
    w.add_kv("llama.embedding_length", Value::U32(n_embd));
    w.add_kv("llama.feed_forward_length", Value::U32(n_ff));
    u32_kv(
        &mut w,
        "llama.attention.head_count",
        &["num_attention_heads", "n_head", "n_heads"],
    )?;
    u32_kv(
        &mut w,
        "llama.attention.head_count_kv",
        &["num_key_value_heads", "n_kv_heads"],
    )?;
    if config.hparams.get("is_causal") == Some(&Json::Bool(false)) {
        w.add_kv("llama.attention.causal", Value::Bool(false));
    }
    for (k, v) in rope_kv {
        w.add_kv(k, v);
    }
    match rope.get("rope_theta") {
        None | Some(Json::Null) => {}
        Some(v) => {
            let x = v.as_f64().with_context(|| {
                format!("{cfg_file}: field `rope_theta`: found {v}, expected a number")
            })?;
            w.add_kv("llama.rope.freq_base", Value::F32(x as f32));
        }
    }
    f32_kv(
        &mut w,
        "llama.attention.layer_norm_rms_epsilon",
        &["rms_norm_eps", "norm_eps"],
    )?;
    f32_kv(
        &mut w,
        "llama.attention.layer_norm_epsilon",
        &["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"],
    )?;
    if let Some(hd) = head_dim_key {
        w.add_kv("llama.attention.key_length", Value::U32(hd));
        w.add_kv("llama.attention.value_length", Value::U32(hd));
    }
    w.add_kv("general.file_type", Value::U32(out.file_type()));
    w.add_kv("llama.vocab_size", Value::U32(n_vocab));
    w.add_kv("llama.rope.dimension_count", Value::U32(head_dim));
    w.add_kv(
        "general.quantization_version",
        Value::U32(crate::quantize::QUANTIZATION_VERSION),
    );

    for (k, v) in vocab::metadata(dir, &config.raw, Some(n_vocab.into()))? {
        w.set_kv(k, v);
    }

    for t in &plan {
        w.add_tensor(t.name.clone(), &t.dims, t.ty, TensorData::Streamed);
    }
    // Check the layout now, so that a bad plan fails before the output is created.
    w.layout()?;
    Ok((w, ck, plan))
}

/// The `general.*` keys from the model's id, config.json's `_name_or_path`,
/// generation_config.json and the parameter count, in the reference's order.
fn general(dir: &Path, config: &Config, total_params: u64) -> anyhow::Result<Vec<(String, Value)>> {
    let readme = dir.join("README.md");
    if std::fs::read_to_string(&readme).is_ok_and(|t| t.lines().next() == Some("---")) {
        eprintln!(
            "mcc convert: warning: {}: the model card's front matter is not read (the \
             reference converter takes license, tags, base models and more from it)",
            readme.display()
        );
    }
    let total = i64::try_from(total_params).unwrap_or(i64::MAX);
    let mut name = None;
    let mut organization = None;
    let mut basename = None;
    let mut finetune = None;
    let mut version = None;
    let mut size_label = None;
    let mut apply = |id: &str| {
        let c = naming::model_id_components(id, total);
        if name.is_none() {
            name = c.full_name.as_deref().map(naming::id_to_title);
        }
        if organization.is_none() {
            organization = c.organization.as_deref().map(naming::id_to_title);
        }
        basename = basename.take().or(c.basename);
        finetune = finetune.take().or(c.finetune);
        version = version.take().or(c.version);
        size_label = size_label.take().or(c.size_label);
    };
    if let Some(id) = config.raw.get("_name_or_path").and_then(Json::as_str) {
        if id.matches('/').count() <= 1 {
            apply(id);
        }
    }
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    apply(&dir_name);
    let name = name.unwrap_or(dir_name);
    if size_label.is_none() && total_params > 0 {
        size_label = Some(naming::rounded_count(total_params));
    }

    let mut kv: Vec<(String, Value)> = Vec::new();
    let gen_path = dir.join("generation_config.json");
    let gen: serde_json::Map<String, Json> = std::fs::read_to_string(&gen_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let gfile = gen_path.display();
    let int = |k: &str, v: &Json| -> anyhow::Result<Value> {
        v.as_i64()
            .and_then(|x| i32::try_from(x).ok())
            .map(Value::I32)
            .with_context(|| format!("{gfile}: field `{k}`: found {v}, expected an integer"))
    };
    let float = |k: &str, v: &Json| -> anyhow::Result<Value> {
        v.as_f64()
            .map(|x| Value::F32(x as f32))
            .with_context(|| format!("{gfile}: field `{k}`: found {v}, expected a number"))
    };
    let sampling: [(&str, &[&str], bool); 12] = [
        ("sequence", &["sequence"], false),
        ("top_k", &["top_k"], true),
        ("top_p", &["top_p"], false),
        ("min_p", &["min_p"], false),
        ("xtc_probability", &["xtc_probability"], false),
        ("xtc_threshold", &["xtc_threshold"], false),
        ("temp", &["temperature"], false),
        ("penalty_last_n", &["penalty_last_n"], true),
        (
            "penalty_repeat",
            &["penalty_repeat", "repetition_penalty"],
            false,
        ),
        ("mirostat", &["mirostat"], true),
        ("mirostat_tau", &["mirostat_tau"], false),
        ("mirostat_eta", &["mirostat_eta"], false),
    ];
    for (key, fields, is_int) in sampling {
        let Some((field, v)) = fields.iter().find_map(|f| gen.get(*f).map(|v| (*f, v))) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        let value = if key == "sequence" {
            match v.as_str() {
                Some(s) => Value::String(s.to_string()),
                None => bail!("{gfile}: field `{field}`: found {v}, expected a string"),
            }
        } else if is_int {
            int(field, v)?
        } else {
            float(field, v)?
        };
        kv.push((format!("general.sampling.{key}"), value));
    }
    kv.push(("general.name".into(), Value::String(name)));
    if let Some(v) = version {
        kv.push(("general.version".into(), Value::String(v)));
    }
    if let Some(v) = organization {
        kv.push(("general.organization".into(), Value::String(v)));
    }
    if let Some(v) = finetune {
        kv.push(("general.finetune".into(), Value::String(v)));
    }
    if let Some(v) = basename {
        kv.push(("general.basename".into(), Value::String(v)));
    }
    if let Some(v) = size_label {
        kv.push(("general.size_label".into(), Value::String(v)));
    }
    Ok(kv)
}

#[cfg(test)]
mod tests;
