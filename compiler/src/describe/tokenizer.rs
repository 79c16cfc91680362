//! `tokenizer.ggml.*` metadata -> [`TokenizerSpec`], with llama.cpp's defaults applied
//! where the file is silent, so that the runtime tokenizer gives llama.cpp's ids.
//!
//! Defaults that depend on the tokenizer kind:
//! - `gpt2` (byte-level BPE): BOS = EOS = 11 unless given; `add_bos` only for the
//!   Llama 3 family of pre-tokenizers (and `tekken`); no space prefix.
//! - `llama` (SentencePiece): UNK 0, BOS 1, EOS 2; `add_bos`; space prefix.
//!
//! Every key the file does set must have the right type and range: a mistyped value, a
//! special id outside the vocabulary or per-token arrays of the wrong length are
//! errors naming the key, what was found and what was expected.

use mcc_runtime::tokenizer::{PreTokenizer, Tokenizer, TokenizerSpec};

use super::{found_value, opt_str, DescribeError};
use crate::gguf::{GgufFile, Value, ValueType};

/// Pre-tokenizer names for which llama.cpp adds BOS by default.
const ADD_BOS_PRE: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "tekken",
];

/// Reads the tokenizer of `g`, and checks that the runtime can build it.
pub fn tokenizer_spec(g: &GgufFile) -> Result<TokenizerSpec, DescribeError> {
    let model_key = "tokenizer.ggml.model";
    let model = opt_str(g, model_key)?.ok_or_else(|| {
        DescribeError::bad_key(g, model_key, "no such key", "\"gpt2\" or \"llama\"")
    })?;
    if model != "gpt2" && model != "llama" {
        return Err(DescribeError::bad_key(
            g,
            model_key,
            format!("{model:?}"),
            "\"gpt2\" (byte-level BPE) or \"llama\" (SentencePiece)",
        ));
    }
    let bpe = model == "gpt2";
    let pre = opt_str(g, "tokenizer.ggml.pre")?.map(str::to_owned);
    if bpe {
        if let Err(e) = PreTokenizer::from_name(pre.as_deref()) {
            return Err(DescribeError::bad_key(
                g,
                "tokenizer.ggml.pre",
                format!("{:?} ({e})", pre.as_deref().unwrap_or_default()),
                "a supported pre-tokenizer (llama-bpe, smollm, gpt-2, qwen2, default, ...)",
            ));
        }
    }

    let tokens_key = "tokenizer.ggml.tokens";
    let tokens: Vec<String> = match array_of(g, tokens_key, &[ValueType::String])? {
        None => {
            return Err(DescribeError::bad_key(
                g,
                tokens_key,
                "no such key",
                "an array of strings",
            ))
        }
        Some(items) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
    };
    let n = tokens.len();
    if n == 0 {
        return Err(DescribeError::bad_key(
            g,
            tokens_key,
            "an empty array",
            "at least one token",
        ));
    }

    let types_key = "tokenizer.ggml.token_type";
    let token_types: Vec<i32> = match array_of(g, types_key, &[ValueType::I32])? {
        None => Vec::new(),
        Some(items) => {
            if items.len() != n {
                return Err(DescribeError::bad_key(
                    g,
                    types_key,
                    format!("{} entries", items.len()),
                    format!("{n} entries (one per token)"),
                ));
            }
            items
                .iter()
                .map(|v| if let Value::I32(x) = v { *x } else { 0 })
                .collect()
        }
    };

    let scores_key = "tokenizer.ggml.scores";
    let scores: Vec<f32> = match array_of(g, scores_key, &[ValueType::F32, ValueType::I32])? {
        None => Vec::new(),
        Some(items) => {
            if items.len() != n {
                return Err(DescribeError::bad_key(
                    g,
                    scores_key,
                    format!("{} entries", items.len()),
                    format!("{n} entries (one per token)"),
                ));
            }
            items
                .iter()
                .map(|v| match v {
                    Value::F32(x) => *x,
                    Value::I32(x) => *x as f32,
                    _ => 0.0,
                })
                .collect()
        }
    };
    if !bpe && scores.is_empty() {
        return Err(DescribeError::bad_key(
            g,
            scores_key,
            "no such key",
            "one f32 score per token",
        ));
    }

    let merges_key = "tokenizer.ggml.merges";
    let merges: Vec<String> = match array_of(g, merges_key, &[ValueType::String])? {
        None if bpe => {
            return Err(DescribeError::bad_key(
                g,
                merges_key,
                "no such key",
                "an array of \"left right\" strings",
            ))
        }
        None => Vec::new(),
        Some(items) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
    };

    let default = |id: u32| ((id as usize) < n).then_some(id);
    let (mut bos, mut eos, mut unk) = if bpe {
        (default(11), default(11), None)
    } else {
        (default(1), default(2), default(0))
    };
    override_id(g, "tokenizer.ggml.bos_token_id", n, &mut bos)?;
    override_id(g, "tokenizer.ggml.eos_token_id", n, &mut eos)?;
    override_id(g, "tokenizer.ggml.unknown_token_id", n, &mut unk)?;
    let mut ids = [None; 9];
    let keys = [
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.fim_pre_token_id",
        "tokenizer.ggml.fim_suf_token_id",
        "tokenizer.ggml.fim_mid_token_id",
        "tokenizer.ggml.fim_pad_token_id",
        "tokenizer.ggml.fim_rep_token_id",
        "tokenizer.ggml.fim_sep_token_id",
    ];
    for (key, id) in keys.iter().zip(ids.iter_mut()) {
        override_id(g, key, n, id)?;
    }
    let [eot, eom, pad, mut fim_pre, mut fim_suf, mut fim_mid, fim_pad, fim_rep, fim_sep] = ids;
    // older files name the first three FIM tokens by these keys; they win when both exist
    override_id(g, "tokenizer.ggml.prefix_token_id", n, &mut fim_pre)?;
    override_id(g, "tokenizer.ggml.suffix_token_id", n, &mut fim_suf)?;
    override_id(g, "tokenizer.ggml.middle_token_id", n, &mut fim_mid)?;

    let add_bos_default = !bpe || pre.as_deref().is_some_and(|p| ADD_BOS_PRE.contains(&p));
    let add_bos = opt_bool(g, "tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos_default);
    let add_eos = opt_bool(g, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let add_space_prefix = opt_bool(g, "tokenizer.ggml.add_space_prefix")?.unwrap_or(!bpe);
    let chat_template = opt_str(g, "tokenizer.chat_template")?.map(str::to_owned);

    let spec = TokenizerSpec {
        model: model.to_owned(),
        pre,
        tokens,
        token_types,
        scores,
        merges,
        bos,
        eos,
        eot,
        unk,
        pad,
        add_bos,
        add_eos,
        add_space_prefix,
        chat_template,
        eom,
        fim_pre,
        fim_suf,
        fim_mid,
        fim_pad,
        fim_rep,
        fim_sep,
    };
    if let Err(e) = Tokenizer::from_spec(&spec) {
        return Err(DescribeError::bad_key(
            g,
            "tokenizer.ggml.*",
            e,
            "a vocabulary the runtime tokenizer can build",
        ));
    }
    Ok(spec)
}

/// The items of an optional array key whose elements have one of `types`.
fn array_of<'g>(
    g: &'g GgufFile,
    key: &str,
    types: &[ValueType],
) -> Result<Option<&'g [Value]>, DescribeError> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let expected = || {
        let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
        format!("an array of {}", names.join(" or "))
    };
    match v.as_array() {
        Some(a) if types.contains(&a.elem_type) => Ok(Some(&a.items)),
        Some(a) => Err(DescribeError::bad_key(
            g,
            key,
            format!("an array of {}", a.elem_type.name()),
            expected(),
        )),
        None => Err(DescribeError::bad_key(g, key, found_value(v), expected())),
    }
}

/// Replace `id` by the key's value when the file sets it; it must be a token id.
fn override_id(
    g: &GgufFile,
    key: &str,
    n: usize,
    id: &mut Option<u32>,
) -> Result<(), DescribeError> {
    let Some(v) = g.get(key) else { return Ok(()) };
    let expected = || format!("a token id below the vocabulary size {n}");
    match v.as_u64() {
        Some(x) if (x as usize) < n && x < u32::MAX as u64 => {
            *id = Some(x as u32);
            Ok(())
        }
        Some(x) => Err(DescribeError::bad_key(g, key, x, expected())),
        None => Err(DescribeError::bad_key(g, key, found_value(v), expected())),
    }
}

fn opt_bool(g: &GgufFile, key: &str) -> Result<Option<bool>, DescribeError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| DescribeError::bad_key(g, key, found_value(v), "a bool")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::{GgufWriter, WriteMode};
    use crate::gguf::Array;

    fn strings(items: &[&str]) -> Value {
        Value::Array(Array {
            elem_type: ValueType::String,
            items: items.iter().map(|s| Value::String(s.to_string())).collect(),
        })
    }

    fn i32s(items: &[i32]) -> Value {
        Value::Array(Array {
            elem_type: ValueType::I32,
            items: items.iter().map(|&x| Value::I32(x)).collect(),
        })
    }

    /// A header-only GGUF with a small BPE vocabulary, changed by `edit`.
    fn open(edit: impl FnOnce(&mut GgufWriter)) -> Result<TokenizerSpec, DescribeError> {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", Value::String("llama".into()));
        w.add_kv("tokenizer.ggml.model", Value::String("gpt2".into()));
        w.add_kv("tokenizer.ggml.pre", Value::String("llama-bpe".into()));
        w.add_kv(
            "tokenizer.ggml.tokens",
            strings(&["a", "b", "ab", "<|eot_id|>"]),
        );
        w.add_kv("tokenizer.ggml.token_type", i32s(&[1, 1, 1, 3]));
        w.add_kv("tokenizer.ggml.merges", strings(&["a b"]));
        w.add_kv("tokenizer.ggml.eos_token_id", Value::U32(3));
        edit(&mut w);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        w.write(&path, WriteMode::Full).unwrap();
        let g = GgufFile::open(&path).unwrap();
        tokenizer_spec(&g)
    }

    #[test]
    fn reads_keys_and_applies_defaults() {
        let spec = open(|_| {}).unwrap();
        assert_eq!(spec.model, "gpt2");
        assert_eq!(spec.tokens.len(), 4);
        assert_eq!(spec.eos, Some(3));
        assert_eq!(spec.bos, None); // the default 11 is outside this vocabulary
        assert!(
            spec.add_bos,
            "llama-bpe adds BOS unless the file says otherwise"
        );
        let spec = open(|w| {
            w.add_kv("tokenizer.ggml.add_bos_token", Value::Bool(false));
        })
        .unwrap();
        assert!(!spec.add_bos);
        let tok = Tokenizer::from_spec(&spec).unwrap();
        assert_eq!(tok.encode("ab", false, false), [2]);
        assert!(tok.is_eog(3));
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let err = |edit: fn(&mut GgufWriter)| open(edit).unwrap_err().to_string();
        let e = err(|w| {
            w.set_kv("tokenizer.ggml.token_type", i32s(&[1, 1, 1]));
        });
        assert!(
            e.contains("tokenizer.ggml.token_type")
                && e.contains("3 entries")
                && e.contains("4 entries"),
            "{e}"
        );
        let e = err(|w| {
            w.set_kv("tokenizer.ggml.eos_token_id", Value::U32(4));
        });
        assert!(
            e.contains("tokenizer.ggml.eos_token_id") && e.contains("found 4"),
            "{e}"
        );
        let e = err(|w| {
            w.set_kv("tokenizer.ggml.bos_token_id", Value::String("1".into()));
        });
        assert!(
            e.contains("tokenizer.ggml.bos_token_id") && e.contains("string"),
            "{e}"
        );
        let e = err(|w| {
            w.set_kv("tokenizer.ggml.tokens", i32s(&[1, 2]));
        });
        assert!(
            e.contains("tokenizer.ggml.tokens") && e.contains("array of i32"),
            "{e}"
        );
        let e = err(|w| {
            w.set_kv("tokenizer.ggml.model", Value::String("t5".into()));
        });
        assert!(
            e.contains("tokenizer.ggml.model") && e.contains("\"t5\""),
            "{e}"
        );
        let e = err(|w| {
            w.set_kv("tokenizer.ggml.pre", Value::String("no-such-pre".into()));
        });
        assert!(
            e.contains("tokenizer.ggml.pre") && e.contains("no-such-pre"),
            "{e}"
        );
        let e = err(|w| {
            w.set_kv("tokenizer.ggml.add_bos_token", Value::U8(1));
        });
        assert!(e.contains("add_bos_token") && e.contains("a bool"), "{e}");
    }
}
