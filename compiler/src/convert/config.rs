//! config.json as the reference converter sees it.
//!
//! The reference loads config.json through transformers' `LlamaConfig`, which fills in
//! defaults for the keys a file leaves out (`head_dim` = hidden / heads, `rope_theta`
//! 10000, ...), and it writes metadata from that filled-in view. When `LlamaConfig`
//! rejects the file (a `rope_scaling` without the keys its type requires, for example
//! a llama3 scaling without `original_max_position_embeddings`), the reference falls
//! back to config.json alone, without defaults: then a missing `head_dim` writes no
//! key lengths, and the rope scaling takes `original_max_position_embeddings` from the
//! top level of the file. [`Config`] reproduces both views.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{Map, Value};

/// The architectures `mcc convert` reads (the names config.json's `architectures`
/// gives a plain Llama model).
pub const ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "LLaMAForCausalLM"];

/// config.json, read and interpreted.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    /// The file as written.
    pub raw: Map<String, Value>,
    /// What the converter reads: the file with `LlamaConfig`'s defaults, or the file
    /// alone when `LlamaConfig` would reject it.
    pub hparams: Map<String, Value>,
    /// The rope parameters: `rope_scaling` (or `{}`) with `rope_theta`, `rope_type`
    /// and `original_max_position_embeddings` copied in from the top level when absent.
    pub rope: Map<String, Value>,
}

/// `LlamaConfig`'s defaults for the keys the converter reads.
fn llama_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("vocab_size", Value::from(32000)),
        ("hidden_size", Value::from(4096)),
        ("intermediate_size", Value::from(11008)),
        ("num_hidden_layers", Value::from(32)),
        ("num_attention_heads", Value::from(32)),
        ("max_position_embeddings", Value::from(2048)),
        ("rms_norm_eps", Value::from(1e-6)),
        ("rope_theta", Value::from(10000.0)),
        ("tie_word_embeddings", Value::from(false)),
    ]
}

/// Whether `LlamaConfig` accepts the file's `rope_scaling`: each scaling type requires
/// some keys, and a missing one is an error there.
fn rope_scaling_valid(scaling: &Map<String, Value>) -> bool {
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let required: &[&str] = match kind {
        "default" => &[],
        "linear" | "dynamic" | "yarn" => &["factor"],
        "longrope" => &["short_factor", "long_factor"],
        "llama3" => &[
            "factor",
            "original_max_position_embeddings",
            "low_freq_factor",
            "high_freq_factor",
        ],
        _ => &[],
    };
    required.iter().all(|k| scaling.contains_key(*k))
}

impl Config {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Config> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let raw: Map<String, Value> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a JSON object", path.display()))?;
        Ok(Config::from_map(path, raw))
    }

    /// Interprets an already parsed config.json.
    pub fn from_map(path: PathBuf, raw: Map<String, Value>) -> Config {
        let is_llama = raw.get("model_type").and_then(Value::as_str) == Some("llama");
        let mut scaling = raw.get("rope_scaling").and_then(Value::as_object).cloned();
        if let Some(s) = scaling.as_mut() {
            if let Some(t) = s.get("type").cloned() {
                s.insert("rope_type".into(), t);
            }
        }
        let accepted = is_llama && scaling.as_ref().is_none_or(rope_scaling_valid);

        let mut hparams = raw.clone();
        if accepted {
            for (key, value) in llama_defaults() {
                if !hparams.contains_key(key) {
                    hparams.insert(key.into(), value);
                }
            }
            let heads = hparams.get("num_attention_heads").cloned();
            if hparams
                .get("num_key_value_heads")
                .is_none_or(Value::is_null)
            {
                hparams.insert("num_key_value_heads".into(), heads.unwrap_or(Value::Null));
            }
            if hparams.get("head_dim").is_none_or(Value::is_null) {
                let hidden = hparams.get("hidden_size").and_then(Value::as_u64);
                let heads = hparams.get("num_attention_heads").and_then(Value::as_u64);
                if let (Some(h), Some(n)) = (hidden, heads.filter(|&n| n > 0)) {
                    hparams.insert("head_dim".into(), Value::from(h / n));
                }
            }
            match &scaling {
                Some(s) => hparams.insert("rope_scaling".into(), Value::Object(s.clone())),
                None => hparams.insert("rope_scaling".into(), Value::Null),
            };
        }

        let mut rope = hparams
            .get("rope_scaling")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let top = |keys: &[&str]| keys.iter().find_map(|k| hparams.get(*k)).cloned();
        let theta = top(&[
            "global_rope_theta",
            "rope_global_theta",
            "rope_theta_global",
            "rope_theta",
            "rotary_emb_base",
        ]);
        if !rope.contains_key("rope_theta") {
            if let Some(t) = theta.filter(|t| !t.is_null()) {
                rope.insert("rope_theta".into(), t);
            }
        }
        if !rope.contains_key("rope_type") {
            if let Some(t) = rope.get("type").cloned().filter(|t| !t.is_null()) {
                rope.insert("rope_type".into(), t);
            }
        }
        if !rope.contains_key("original_max_position_embeddings") {
            if let Some(n) = top(&["original_max_position_embeddings"]).filter(|n| !n.is_null()) {
                rope.insert("original_max_position_embeddings".into(), n);
            }
        }
        Config {
            path,
            raw,
            hparams,
            rope,
        }
    }

    /// The first of `keys` the hyperparameters have (null counts as present, as in
    /// Python's `key in dict`).
    pub fn find<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &Value)> {
        keys.iter()
            .find_map(|&k| self.hparams.get(k).map(|v| (k, v)))
    }

    /// An unsigned integer hyperparameter, if present (and not null).
    pub fn opt_u32(&self, keys: &[&str]) -> anyhow::Result<Option<u32>> {
        match self.find(keys) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((key, v)) => match v.as_u64().and_then(|x| u32::try_from(x).ok()) {
                Some(x) => Ok(Some(x)),
                None => bail!(
                    "{}: field `{key}`: found {v}, expected an unsigned 32-bit integer",
                    self.path.display()
                ),
            },
        }
    }

    /// An unsigned integer hyperparameter that must be there.
    pub fn need_u32(&self, keys: &[&str]) -> anyhow::Result<u32> {
        self.opt_u32(keys)?.with_context(|| {
            format!(
                "{}: missing field `{}`",
                self.path.display(),
                keys.join("` or `")
            )
        })
    }

    /// A number hyperparameter, if present (and not null).
    pub fn opt_f64(&self, keys: &[&str]) -> anyhow::Result<Option<f64>> {
        match self.find(keys) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((key, v)) => match v.as_f64() {
                Some(x) => Ok(Some(x)),
                None => bail!(
                    "{}: field `{key}`: found {v}, expected a number",
                    self.path.display()
                ),
            },
        }
    }

    /// The architecture named by `architectures[0]`, checked.
    pub fn architecture(&self) -> anyhow::Result<String> {
        let file = self.path.display();
        let arch = self
            .raw
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .with_context(|| {
                format!("{file}: field `architectures`: missing or not a list of names")
            })?;
        if !ARCHITECTURES.contains(&arch) {
            bail!(
                "{file}: field `architectures`: unsupported architecture {arch:?}: mcc convert \
                 reads {}",
                ARCHITECTURES.join(", ")
            );
        }
        if self.raw.contains_key("text_config") {
            bail!("{file}: field `text_config`: multimodal checkpoints are not supported");
        }
        for key in ["num_local_experts", "num_experts", "n_routed_experts"] {
            if self.raw.get(key).is_some_and(|v| !v.is_null()) {
                bail!("{file}: field `{key}`: mixture-of-experts models are not supported");
            }
        }
        Ok(arch.to_string())
    }

    /// A number from the rope parameters, or `default`.
    pub fn rope_f64(&self, key: &str, default: f64) -> anyhow::Result<f64> {
        match self.rope.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().with_context(|| {
                format!(
                    "{}: field `rope_scaling.{key}`: found {v}, expected a number",
                    self.path.display()
                )
            }),
        }
    }
}
