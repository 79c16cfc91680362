//! Model description: what a validated GGUF means as a llama model.
//!
//! Reads the `llama.*` hyperparameters, finds every tensor by its role and checks its
//! shape and type against them, and reads the tokenizer ([`tokenizer`]). The result,
//! [`ModelDesc`], is all the later stages (plan, emit) look at besides tensor bytes.
//! Anything mcc would compute wrongly is an error here, never a silent guess: another
//! architecture, biases, rope scaling modes other than Llama-3.1 `rope_freqs`, shapes
//! that disagree with the hyperparameters.
//!
//! Shapes are written in ggml order, `[row length, rows]`: `attn_q` is
//! `[n_embd, n_head * head_dim]`, i.e. `n_head * head_dim` rows of `n_embd` weights.

pub mod tokenizer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use mcc_runtime::tokenizer::TokenizerSpec;

use crate::gguf::{GgmlType, GgufFile, TensorInfo, Value};

/// Why a GGUF is not a model mcc can compile. Every variant names the file and the key
/// or tensor concerned, with what was found and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error("{}: unsupported architecture: {found} (mcc compiles `llama` models)", path.display())]
    UnsupportedArchitecture { path: PathBuf, found: String },
    /// A metadata key that is missing (`found` says so), mistyped or out of range.
    #[error("{}: metadata key `{key}`: found {found}, expected {expected}", path.display())]
    BadKey {
        path: PathBuf,
        key: String,
        found: String,
        expected: String,
    },
    #[error("{}: missing tensor `{name}` (expected {expected})", path.display())]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: String,
    },
    #[error("{}: unexpected tensor `{name}`: {why}", path.display())]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        why: String,
    },
    #[error("{}: tensor `{name}` {what}: found {found}, expected {expected}", path.display())]
    BadTensor {
        path: PathBuf,
        name: String,
        what: &'static str,
        found: String,
        expected: String,
    },
    /// Hyperparameters that disagree with each other.
    #[error("{}: {what}: found {found}, expected {expected}", path.display())]
    Inconsistent {
        path: PathBuf,
        what: String,
        found: String,
        expected: String,
    },
}

impl DescribeError {
    /// A [`DescribeError::BadKey`] for `key` of file `g`.
    pub fn bad_key(
        g: &GgufFile,
        key: &str,
        found: impl ToString,
        expected: impl ToString,
    ) -> DescribeError {
        DescribeError::BadKey {
            path: g.path.clone(),
            key: key.to_string(),
            found: found.to_string(),
            expected: expected.to_string(),
        }
    }
}

/// How a present value is described in messages: its type and a short rendering.
pub fn found_value(v: &Value) -> String {
    format!("{} {}", v.type_name(), v.brief())
}

/// Reads an optional non-negative integer key that must fit in `usize`.
pub fn opt_usize(g: &GgufFile, key: &str) -> Result<Option<usize>, DescribeError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| {
                DescribeError::bad_key(g, key, found_value(v), "a non-negative integer")
            }),
    }
}

/// Reads a required non-negative integer key.
pub fn req_usize(g: &GgufFile, key: &str) -> Result<usize, DescribeError> {
    opt_usize(g, key)?
        .ok_or_else(|| DescribeError::bad_key(g, key, "no such key", "a non-negative integer"))
}

/// Reads an optional float key (f32 or f64).
pub fn opt_f32(g: &GgufFile, key: &str) -> Result<Option<f32>, DescribeError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f32()
            .map(Some)
            .ok_or_else(|| DescribeError::bad_key(g, key, found_value(v), "a float")),
    }
}

/// Reads an optional string key.
pub fn opt_str<'g>(g: &'g GgufFile, key: &str) -> Result<Option<&'g str>, DescribeError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| DescribeError::bad_key(g, key, found_value(v), "a string")),
    }
}

/// A llama model: hyperparameters, every tensor by role, and the tokenizer.
#[derive(Clone, Debug)]
pub struct ModelDesc {
    /// `general.name`, if set.
    pub name: Option<String>,
    /// `llama.embedding_length`: width of the residual stream.
    pub n_embd: usize,
    /// `llama.block_count`.
    pub n_layer: usize,
    /// `llama.attention.head_count`: query heads.
    pub n_head: usize,
    /// `llama.attention.head_count_kv` (default `n_head`): key/value heads, shared by
    /// `n_head / n_head_kv` query heads each (GQA).
    pub n_head_kv: usize,
    /// `llama.attention.key_length`, else `n_embd / n_head`.
    pub head_dim: usize,
    /// `llama.feed_forward_length`.
    pub n_ff: usize,
    /// Vocabulary size: `llama.vocab_size`, or the token list's length.
    pub n_vocab: usize,
    /// `llama.context_length`: context the model was trained for.
    pub n_ctx_train: usize,
    /// `llama.rope.dimension_count` (default `head_dim`): leading dims of each head
    /// that RoPE rotates.
    pub rope_dim: usize,
    /// `llama.rope.freq_base` (default 10000): θ_i = base^(-2i / rope_dim).
    pub rope_base: f32,
    /// `llama.attention.layer_norm_rms_epsilon`.
    pub rms_eps: f32,
    /// `general.file_type` (a llama_ftype; see [`file_type_name`]), if set.
    pub file_type: Option<u32>,
    /// `[n_embd, n_vocab]`.
    pub token_embd: TensorInfo,
    /// `[n_embd]`, F32.
    pub output_norm: TensorInfo,
    /// `[n_embd, n_vocab]`; `None` = tied to `token_embd`.
    pub output: Option<TensorInfo>,
    /// `[rope_dim / 2]`, F32: per-frequency divisors (Llama-3.1 scaling), if present.
    pub rope_freqs: Option<TensorInfo>,
    pub layers: Vec<LayerDesc>,
    pub tokenizer: TokenizerSpec,
}

/// One transformer block's tensors (`blk.N.*.weight`).
#[derive(Clone, Debug)]
pub struct LayerDesc {
    /// `[n_embd]`, F32.
    pub attn_norm: TensorInfo,
    /// `[n_embd, n_head * head_dim]`.
    pub attn_q: TensorInfo,
    /// `[n_embd, n_head_kv * head_dim]`.
    pub attn_k: TensorInfo,
    /// `[n_embd, n_head_kv * head_dim]`.
    pub attn_v: TensorInfo,
    /// `[n_head * head_dim, n_embd]`.
    pub attn_output: TensorInfo,
    /// `[n_embd]`, F32.
    pub ffn_norm: TensorInfo,
    /// `[n_embd, n_ff]`.
    pub ffn_gate: TensorInfo,
    /// `[n_embd, n_ff]`.
    pub ffn_up: TensorInfo,
    /// `[n_ff, n_embd]`.
    pub ffn_down: TensorInfo,
}

impl ModelDesc {
    /// Every tensor in a stable order: embedding, layers (by layer, then role in
    /// forward order), output norm, output, rope_freqs.
    pub fn tensors(&self) -> Vec<&TensorInfo> {
        let mut out = vec![&self.token_embd];
        for l in &self.layers {
            out.extend([
                &l.attn_norm,
                &l.attn_q,
                &l.attn_k,
                &l.attn_v,
                &l.attn_output,
                &l.ffn_norm,
                &l.ffn_gate,
                &l.ffn_up,
                &l.ffn_down,
            ]);
        }
        out.push(&self.output_norm);
        out.extend(self.output.as_ref());
        out.extend(self.rope_freqs.as_ref());
        out
    }

    /// Total weights (elements of every tensor).
    pub fn n_params(&self) -> u64 {
        self.tensors().iter().map(|t| t.n_elements).sum()
    }
}

/// The short name of a `general.file_type` (llama_ftype) value, as llama-quantize
/// spells the type: 1 ("MOSTLY_F16") is "F16", 15 ("MOSTLY_Q4_K_M") is "Q4_K_M".
pub fn file_type_name(ft: u32) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_1_SOME_F16",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        40 => "Q1_0",
        41 => "Q2_0",
        1024 => "GUESSED",
        _ => return None,
    })
}

/// Per-layer tensor roles, in forward order.
const LAYER_ROLES: [&str; 9] = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// Reads and checks the model in `g`.
pub fn describe(g: &GgufFile) -> Result<ModelDesc, DescribeError> {
    let path = &g.path;
    let arch = opt_str(g, "general.architecture")?.ok_or_else(|| {
        DescribeError::bad_key(g, "general.architecture", "no such key", "\"llama\"")
    })?;
    if arch != "llama" {
        return Err(DescribeError::UnsupportedArchitecture {
            path: path.clone(),
            found: arch.to_string(),
        });
    }
    reject_unsupported_features(g)?;

    let positive = |key: &str, v: usize| -> Result<usize, DescribeError> {
        if v == 0 {
            return Err(DescribeError::bad_key(g, key, 0, ">= 1"));
        }
        Ok(v)
    };
    let n_embd = positive(
        "llama.embedding_length",
        req_usize(g, "llama.embedding_length")?,
    )?;
    let n_layer = positive("llama.block_count", req_usize(g, "llama.block_count")?)?;
    let n_head = positive(
        "llama.attention.head_count",
        req_usize(g, "llama.attention.head_count")?,
    )?;
    let n_head_kv = positive(
        "llama.attention.head_count_kv",
        opt_usize(g, "llama.attention.head_count_kv")?.unwrap_or(n_head),
    )?;
    let n_ff = positive(
        "llama.feed_forward_length",
        req_usize(g, "llama.feed_forward_length")?,
    )?;
    let n_ctx_train = positive(
        "llama.context_length",
        req_usize(g, "llama.context_length")?,
    )?;

    if n_head % n_head_kv != 0 {
        return Err(DescribeError::Inconsistent {
            path: path.clone(),
            what: "llama.attention.head_count % llama.attention.head_count_kv".into(),
            found: format!("{n_head} % {n_head_kv} = {}", n_head % n_head_kv),
            expected: "0 (each KV head serves a whole number of query heads)".into(),
        });
    }
    let head_dim = match opt_usize(g, "llama.attention.key_length")? {
        Some(d) => positive("llama.attention.key_length", d)?,
        None => {
            if n_embd % n_head != 0 {
                return Err(DescribeError::Inconsistent {
                    path: path.clone(),
                    what: "head_dim = llama.embedding_length / llama.attention.head_count".into(),
                    found: format!("{n_embd} / {n_head}, not a whole number"),
                    expected: "a divisor, or llama.attention.key_length set".into(),
                });
            }
            n_embd / n_head
        }
    };
    if let Some(v) = opt_usize(g, "llama.attention.value_length")? {
        if v != head_dim {
            return Err(DescribeError::bad_key(
                g,
                "llama.attention.value_length",
                v,
                format!("{head_dim} (the key length; mcc needs equal K and V head sizes)"),
            ));
        }
    }
    if head_dim % 2 != 0 {
        return Err(DescribeError::Inconsistent {
            path: path.clone(),
            what: "head_dim".into(),
            found: head_dim.to_string(),
            expected: "an even number (RoPE rotates pairs)".into(),
        });
    }
    let rope_dim = opt_usize(g, "llama.rope.dimension_count")?.unwrap_or(head_dim);
    if rope_dim == 0 || rope_dim % 2 != 0 || rope_dim > head_dim {
        return Err(DescribeError::bad_key(
            g,
            "llama.rope.dimension_count",
            rope_dim,
            format!("an even number in 2..={head_dim} (head_dim)"),
        ));
    }
    let rope_base = opt_f32(g, "llama.rope.freq_base")?.unwrap_or(10000.0);
    if !(rope_base.is_finite() && rope_base > 1.0) {
        return Err(DescribeError::bad_key(
            g,
            "llama.rope.freq_base",
            rope_base,
            "a finite value > 1",
        ));
    }
    let rms_eps = opt_f32(g, "llama.attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
        DescribeError::bad_key(
            g,
            "llama.attention.layer_norm_rms_epsilon",
            "no such key",
            "a float",
        )
    })?;
    if !(rms_eps.is_finite() && rms_eps > 0.0 && rms_eps < 1.0) {
        return Err(DescribeError::bad_key(
            g,
            "llama.attention.layer_norm_rms_epsilon",
            rms_eps,
            "a finite value in (0, 1)",
        ));
    }
    let file_type = match opt_usize(g, "general.file_type")? {
        None => None,
        Some(ft) => Some(u32::try_from(ft).map_err(|_| {
            DescribeError::bad_key(g, "general.file_type", ft, "a llama_ftype (u32)")
        })?),
    };
    let name = opt_str(g, "general.name")?.map(str::to_owned);

    let tokenizer = tokenizer::tokenizer_spec(g)?;
    let n_vocab = match opt_usize(g, "llama.vocab_size")? {
        Some(n) if n != tokenizer.tokens.len() => {
            return Err(DescribeError::bad_key(
                g,
                "llama.vocab_size",
                n,
                format!(
                    "{} (the length of tokenizer.ggml.tokens)",
                    tokenizer.tokens.len()
                ),
            ))
        }
        Some(n) => n,
        None => tokenizer.tokens.len(),
    };
    if n_vocab == 0 {
        return Err(DescribeError::bad_key(
            g,
            "tokenizer.ggml.tokens",
            "0 tokens",
            "at least 1",
        ));
    }
    check_special_ids(g, &tokenizer, n_vocab)?;

    let shapes = Shapes {
        g,
        n_embd: n_embd as u64,
        q_dim: checked_mul(g, "n_head * head_dim", n_head, head_dim)?,
        kv_dim: checked_mul(g, "n_head_kv * head_dim", n_head_kv, head_dim)?,
        n_ff: n_ff as u64,
        n_vocab: n_vocab as u64,
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut take =
        |name: &str, dims: Vec<u64>, f32_only: bool| -> Result<TensorInfo, DescribeError> {
            let t = shapes.tensor(name, &dims, f32_only)?;
            seen.insert(name.to_string());
            Ok(t)
        };

    let token_embd = take(
        "token_embd.weight",
        vec![shapes.n_embd, shapes.n_vocab],
        false,
    )?;
    let mut layers = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let n = |role: &str| format!("blk.{i}.{role}.weight");
        let (e, q, kv, ff) = (shapes.n_embd, shapes.q_dim, shapes.kv_dim, shapes.n_ff);
        layers.push(LayerDesc {
            attn_norm: take(&n("attn_norm"), vec![e], true)?,
            attn_q: take(&n("attn_q"), vec![e, q], false)?,
            attn_k: take(&n("attn_k"), vec![e, kv], false)?,
            attn_v: take(&n("attn_v"), vec![e, kv], false)?,
            attn_output: take(&n("attn_output"), vec![q, e], false)?,
            ffn_norm: take(&n("ffn_norm"), vec![e], true)?,
            ffn_gate: take(&n("ffn_gate"), vec![e, ff], false)?,
            ffn_up: take(&n("ffn_up"), vec![e, ff], false)?,
            ffn_down: take(&n("ffn_down"), vec![ff, e], false)?,
        });
    }
    let output_norm = take("output_norm.weight", vec![shapes.n_embd], true)?;
    let output = match g.tensor("output.weight") {
        None => None,
        Some(_) => Some(take(
            "output.weight",
            vec![shapes.n_embd, shapes.n_vocab],
            false,
        )?),
    };
    let rope_freqs = match g.tensor("rope_freqs.weight") {
        None => None,
        Some(_) => Some(take("rope_freqs.weight", vec![rope_dim as u64 / 2], true)?),
    };

    if let Some(extra) = g.tensors.iter().find(|t| !seen.contains(&t.name)) {
        return Err(unexpected(g, &extra.name, n_layer));
    }

    Ok(ModelDesc {
        name,
        n_embd,
        n_layer,
        n_head,
        n_head_kv,
        head_dim,
        n_ff,
        n_vocab,
        n_ctx_train,
        rope_dim,
        rope_base,
        rms_eps,
        file_type,
        token_embd,
        output_norm,
        output,
        rope_freqs,
        layers,
        tokenizer,
    })
}

fn checked_mul(g: &GgufFile, what: &str, a: usize, b: usize) -> Result<u64, DescribeError> {
    (a as u64)
        .checked_mul(b as u64)
        .ok_or_else(|| DescribeError::Inconsistent {
            path: g.path.clone(),
            what: what.into(),
            found: format!("{a} * {b}, overflows"),
            expected: "a size below 2^64".into(),
        })
}

/// Keys that announce something mcc's llama forward pass does not compute. Reading
/// past them would give a binary that runs and produces wrong text.
fn reject_unsupported_features(g: &GgufFile) -> Result<(), DescribeError> {
    if let Some(kind) = opt_str(g, "llama.rope.scaling.type")? {
        if kind != "none" {
            return Err(DescribeError::bad_key(
                g,
                "llama.rope.scaling.type",
                format!("{kind:?}"),
                "\"none\" or absent (Llama-3.1 scaling comes as rope_freqs.weight)",
            ));
        }
    }
    if let Some(n) = opt_usize(g, "llama.expert_count")? {
        if n > 0 {
            return Err(DescribeError::bad_key(
                g,
                "llama.expert_count",
                n,
                "0 or absent (mixture-of-experts models are not supported)",
            ));
        }
    }
    Ok(())
}

/// Special token ids must name tokens of the vocabulary.
fn check_special_ids(
    g: &GgufFile,
    spec: &TokenizerSpec,
    n_vocab: usize,
) -> Result<(), DescribeError> {
    let ids = [
        ("tokenizer.ggml.bos_token_id", spec.bos),
        ("tokenizer.ggml.eos_token_id", spec.eos),
        ("tokenizer.ggml.eot_token_id", spec.eot),
        ("tokenizer.ggml.unknown_token_id", spec.unk),
        ("tokenizer.ggml.padding_token_id", spec.pad),
    ];
    for (key, id) in ids {
        if let Some(id) = id {
            if id as usize >= n_vocab {
                return Err(DescribeError::bad_key(
                    g,
                    key,
                    id,
                    format!("a token id below the vocabulary size {n_vocab}"),
                ));
            }
        }
    }
    Ok(())
}

/// Why a tensor that is not one of the expected roles cannot be compiled.
fn unexpected(g: &GgufFile, name: &str, n_layer: usize) -> DescribeError {
    let why = if name.ends_with(".bias") {
        "bias tensors are not supported by mcc's llama forward pass".to_string()
    } else if let Some(layer) = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|s| s.parse::<usize>().ok())
    {
        if layer >= n_layer {
            format!("layer {layer} is beyond llama.block_count = {n_layer}")
        } else {
            format!(
                "not a llama layer tensor (expected blk.{layer}.{{{}}}.weight)",
                LAYER_ROLES.join(",")
            )
        }
    } else {
        "not a llama tensor (expected token_embd, output_norm, output, rope_freqs, blk.N.*)"
            .to_string()
    };
    DescribeError::UnexpectedTensor {
        path: g.path.clone(),
        name: name.to_string(),
        why,
    }
}

/// Expected dimensions, from the hyperparameters.
struct Shapes<'g> {
    g: &'g GgufFile,
    n_embd: u64,
    q_dim: u64,
    kv_dim: u64,
    n_ff: u64,
    n_vocab: u64,
}

impl Shapes<'_> {
    fn path(&self) -> &Path {
        &self.g.path
    }

    fn tensor(
        &self,
        name: &str,
        dims: &[u64],
        f32_only: bool,
    ) -> Result<TensorInfo, DescribeError> {
        let t = self
            .g
            .tensor(name)
            .ok_or_else(|| DescribeError::MissingTensor {
                path: self.path().to_path_buf(),
                name: name.to_string(),
                expected: format!("shape {dims:?}"),
            })?;
        if t.dims != dims {
            return Err(DescribeError::BadTensor {
                path: self.path().to_path_buf(),
                name: name.to_string(),
                what: "shape",
                found: format!("{:?}", t.dims),
                expected: format!("{dims:?} (from the llama.* hyperparameters)"),
            });
        }
        if f32_only && t.ggml_type != GgmlType::F32 {
            return Err(DescribeError::BadTensor {
                path: self.path().to_path_buf(),
                name: name.to_string(),
                what: "type",
                found: t.ggml_type.name().to_string(),
                expected: "F32".to_string(),
            });
        }
        Ok(t.clone())
    }
}

#[cfg(test)]
mod tests;
