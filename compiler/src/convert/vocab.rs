//! The tokenizer metadata, from `tokenizer.json`, `tokenizer_config.json` and
//! config.json, as the reference converter writes it for byte-level BPE (`gpt2`)
//! tokenizers such as Llama 3's.
//!
//! - Tokens: ids `0..vocab_size`; an id with no token is `[PAD{id}]` (unused). Added
//!   tokens are control tokens when marked special or when they look special
//!   (`<|...|>`, `<pad>`, `<unused...>`), else user-defined (with `▁` shown as a space).
//! - Pre-tokenizer: the reference tokenizes a check text with the Hugging Face tokenizer
//!   and looks the sha256 of the ids up in its table. Here the check text is tokenized
//!   by mcc's own BPE tokenizer under each pre-tokenizer family it implements, with the
//!   special tokens the file's post-processor adds, and the first fingerprint the table
//!   knows names the pre-tokenizer; so a tokenizer whose splitting mcc cannot reproduce
//!   is refused here, not at run time.
//! - Special tokens, `add_*_token` flags and the chat template, by the rules of gguf-py's
//!   `SpecialVocab`: tokenizer_config.json first, the post-processor's template for the
//!   add flags, config.json's `*_token_id` for ids still unset.
//!
//! SentencePiece (`tokenizer.model`) and byte-fallback BPE tokenizers take another path
//! in the reference and are refused.

use std::path::Path;

use anyhow::{bail, Context};
use mcc_runtime::tokenizer::{PreTokenizer, Tokenizer, TokenizerSpec};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use super::pre_hashes::{CHECK_TEXT, PRE_HASHES};
use crate::gguf::{Array, Value, ValueType};

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// One pre-tokenizer name per family mcc implements; the fingerprint decides the name
/// written.
const FAMILIES: &[&str] = &["llama-bpe", "dbrx", "qwen2", "smollm", "gpt-2"];

fn read_json(path: &Path) -> anyhow::Result<Json> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// Python's truthiness of a JSON value.
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
    }
}

fn string_array(items: Vec<String>) -> Value {
    Value::Array(Array {
        elem_type: ValueType::String,
        items: items.into_iter().map(Value::String).collect(),
    })
}

/// Does an added token's text look like a control token?
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// An added token of tokenizer.json.
struct Added {
    id: u32,
    content: String,
    special: bool,
}

/// The tokenizer keys, in the order the reference writes them.
pub fn metadata(
    dir: &Path,
    config_raw: &Map<String, Json>,
    vocab_size: Option<u64>,
) -> anyhow::Result<Vec<(String, Value)>> {
    let mut kv: Vec<(String, Value)> = Vec::new();
    let tc_path = dir.join("tokenizer_config.json");
    let tc: Option<Map<String, Json>> = if tc_path.is_file() {
        match read_json(&tc_path)? {
            Json::Object(m) => Some(m),
            _ => bail!("{}: not a JSON object", tc_path.display()),
        }
    } else {
        None
    };
    if let Some(tc) = &tc {
        match tc.get("add_prefix_space") {
            None | Some(Json::Null) => {}
            Some(Json::Bool(b)) => {
                kv.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(*b)))
            }
            Some(v) => bail!(
                "{}: field `add_prefix_space`: found {v}, expected true or false",
                tc_path.display()
            ),
        }
        if tc.get("tokenizer_class").and_then(Json::as_str) == Some("HybridDNATokenizer") {
            bail!(
                "{}: field `tokenizer_class`: HybridDNATokenizer is not supported",
                tc_path.display()
            );
        }
    }
    if dir.join("tokenizer.model").exists() {
        bail!(
            "{}: SentencePiece tokenizers are not supported (mcc convert reads byte-level BPE \
             tokenizer.json files, as Llama 3's)",
            dir.join("tokenizer.model").display()
        );
    }
    let tj_path = dir.join("tokenizer.json");
    if !tj_path.is_file() {
        bail!("{}: missing (the tokenizer is required)", tj_path.display());
    }
    let tj = read_json(&tj_path)?;
    let file = tj_path.display();
    let model = tj
        .get("model")
        .and_then(Json::as_object)
        .with_context(|| format!("{file}: field `model`: missing or not an object"))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("");
    let flag = |k: &str, default: bool| model.get(k).and_then(Json::as_bool).unwrap_or(default);
    let is_llama3 = mtype == "BPE" && flag("ignore_merges", false) && !flag("byte_fallback", true);
    let decoder_seq = tj.pointer("/decoder/type").and_then(Json::as_str) == Some("Sequence");
    if mtype != "BPE" {
        bail!("{file}: field `model.type`: {mtype:?} is not supported (expected \"BPE\")");
    }
    if !is_llama3 && flag("byte_fallback", false) && decoder_seq {
        bail!(
            "{file}: field `model.byte_fallback`: SentencePiece-style BPE tokenizers are not \
             supported (expected a byte-level BPE tokenizer)"
        );
    }

    // The Hugging Face vocabulary: the model's tokens, then the added tokens.
    let base = model
        .get("vocab")
        .and_then(Json::as_object)
        .with_context(|| format!("{file}: field `model.vocab`: missing or not an object"))?;
    let mut added: Vec<Added> = Vec::new();
    if let Some(list) = tj.get("added_tokens") {
        let list = list
            .as_array()
            .with_context(|| format!("{file}: field `added_tokens`: not a list"))?;
        for (i, a) in list.iter().enumerate() {
            let id = a
                .get("id")
                .and_then(Json::as_u64)
                .and_then(|x| u32::try_from(x).ok());
            let content = a.get("content").and_then(Json::as_str);
            let (Some(id), Some(content)) = (id, content) else {
                bail!("{file}: field `added_tokens[{i}]`: needs an `id` and a `content`");
            };
            added.push(Added {
                id,
                content: content.to_string(),
                special: a.get("special").and_then(Json::as_bool).unwrap_or(false),
            });
        }
    }
    let mut by_id: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
    for (tok, id) in base {
        let Some(id) = id.as_u64().and_then(|x| u32::try_from(x).ok()) else {
            bail!("{file}: field `model.vocab.{tok}`: found {id}, expected a token id");
        };
        by_id.insert(id, tok.clone());
    }
    for a in &added {
        by_id.insert(a.id, a.content.clone());
    }
    let n_hf = by_id.len() as u64;
    let n_vocab = vocab_size.unwrap_or(n_hf);
    if let Some(max) = by_id.keys().max() {
        if u64::from(*max) >= n_vocab {
            bail!("{file}: token id {max} is outside config.json's `vocab_size` {n_vocab}");
        }
    }
    let n_vocab = usize::try_from(n_vocab).context("vocab_size too large")?;

    let mut tokens = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    for i in 0..n_vocab as u32 {
        match by_id.get(&i) {
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(UNUSED);
            }
            Some(tok) => match added.iter().find(|a| a.content == *tok) {
                Some(_) => {
                    let special = added.iter().find(|a| a.id == i).is_some_and(|a| a.special);
                    if special || looks_special(tok) {
                        tokens.push(tok.clone());
                        types.push(CONTROL);
                    } else {
                        tokens.push(tok.replace('\u{2581}', " "));
                        types.push(USER_DEFINED);
                    }
                }
                None => {
                    tokens.push(tok.clone());
                    types.push(NORMAL);
                }
            },
        }
    }

    let merges = merges(&tj, &tj_path)?;
    let pre = detect_pre(&tj, &tj_path, &tokens, &types, &merges)?;

    kv.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
    kv.push(("tokenizer.ggml.pre".into(), Value::String(pre)));
    kv.push(("tokenizer.ggml.tokens".into(), string_array(tokens)));
    kv.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(Array {
            elem_type: ValueType::I32,
            items: types.into_iter().map(Value::I32).collect(),
        }),
    ));
    special_vocab(dir, &tj, tc, config_raw, &added, merges, &mut kv)?;

    // A 49152-token vocabulary (Granite's, SmolLM's) never adds BOS.
    if n_vocab == 49152 {
        set(&mut kv, "tokenizer.ggml.add_bos_token", Value::Bool(false));
    }
    if n_vocab == 32016 {
        bail!("{file}: CodeLlama's 32016-token vocabulary (infill tokens) is not supported");
    }
    Ok(kv)
}

/// Sets a key, in place when present (as the reference's writer overwrites).
fn set(kv: &mut Vec<(String, Value)>, key: &str, v: Value) {
    match kv.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => kv.push((key.to_string(), v)),
    }
}

/// The merges, "left right"; pairs given as lists have their spaces written as `Ġ`.
fn merges(tj: &Json, path: &Path) -> anyhow::Result<Vec<String>> {
    let Some(list) = tj.pointer("/model/merges").and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        match m {
            Json::String(s) => out.push(s.clone()),
            Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => {
                let enc = |s: &str| s.replace(' ', "\u{120}");
                out.push(format!(
                    "{} {}",
                    enc(p[0].as_str().unwrap_or("")),
                    enc(p[1].as_str().unwrap_or(""))
                ));
            }
            other => bail!(
                "{}: field `model.merges[{i}]`: found {other}, expected \"a b\" or [\"a\", \"b\"]",
                path.display()
            ),
        }
    }
    Ok(out)
}

/// The ids the tokenizer's post-processor puts before and after a single sequence.
fn template_ids(tj: &Json, path: &Path) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let processors: Vec<&Json> = match pp.get("processors").and_then(Json::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![pp],
    };
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for p in processors {
        match p.get("type").and_then(Json::as_str) {
            Some("ByteLevel") => {}
            Some("TemplateProcessing") => {
                let single = p
                    .get("single")
                    .and_then(Json::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut seen_seq = false;
                for item in single {
                    if item.get("Sequence").is_some() {
                        seen_seq = true;
                    } else if let Some(id) = item.pointer("/SpecialToken/id").and_then(Json::as_str)
                    {
                        let ids = p
                            .pointer(&format!(
                                "/special_tokens/{}/ids",
                                id.replace('~', "~0").replace('/', "~1")
                            ))
                            .and_then(Json::as_array)
                            .with_context(|| {
                                format!(
                                    "{}: field `post_processor.special_tokens`: no ids for {id:?}",
                                    path.display()
                                )
                            })?;
                        let ids: Vec<u32> = ids
                            .iter()
                            .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                            .collect();
                        if seen_seq {
                            after.extend(ids);
                        } else {
                            before.extend(ids);
                        }
                    }
                }
            }
            other => bail!(
                "{}: field `post_processor.type`: {other:?} is not supported (ByteLevel or \
                 TemplateProcessing)",
                path.display()
            ),
        }
    }
    Ok((before, after))
}

/// The sha256 fingerprint of ids as Python's `str(list)` prints them.
fn fingerprint(ids: &[u32]) -> String {
    let text = format!(
        "[{}]",
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names the pre-tokenizer by its fingerprint (see the module doc).
fn detect_pre(
    tj: &Json,
    path: &Path,
    tokens: &[String],
    types: &[i32],
    merges: &[String],
) -> anyhow::Result<String> {
    let (before, after) = template_ids(tj, path)?;
    let mut tried = Vec::new();
    for family in FAMILIES {
        let spec = TokenizerSpec {
            model: "gpt2".into(),
            pre: Some(family.to_string()),
            tokens: tokens.to_vec(),
            token_types: types.to_vec(),
            merges: merges.to_vec(),
            ..TokenizerSpec::default()
        };
        let tok = Tokenizer::from_spec(&spec).map_err(|e| {
            anyhow::anyhow!("{}: the vocabulary does not build: {e}", path.display())
        })?;
        let mut ids = before.clone();
        ids.extend(tok.encode(CHECK_TEXT, false, true));
        ids.extend(&after);
        let hash = fingerprint(&ids);
        if let Some((_, name)) = PRE_HASHES.iter().rev().find(|(h, _)| *h == hash) {
            if PreTokenizer::from_name(Some(name)).is_err() {
                bail!(
                    "{}: pre-tokenizer {name:?} (recognized by its fingerprint) is not \
                     implemented by mcc's runtime",
                    path.display()
                );
            }
            return Ok(name.to_string());
        }
        tried.push(format!("{family}: {hash}"));
    }
    bail!(
        "{}: BPE pre-tokenizer not recognized: the check text's ids under each pre-tokenizer \
         mcc implements have fingerprints llama.cpp's table does not list ({})",
        path.display(),
        tried.join("; ")
    )
}

/// gguf-py's `SpecialVocab`: merges, special token ids, add flags, chat template and
/// normalizer flags, appended to `kv` in its order.
fn special_vocab(
    dir: &Path,
    tj: &Json,
    tc: Option<Map<String, Json>>,
    config_raw: &Map<String, Json>,
    added: &[Added],
    merges: Vec<String>,
    kv: &mut Vec<(String, Value)>,
) -> anyhow::Result<()> {
    let mut types: Vec<&str> = vec!["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
    let mut ids: Vec<(&str, u32)> = Vec::new();
    let mut add: Vec<(&str, bool)> = Vec::new();
    let mut lowercase = None;
    let mut strip_accents = None;
    let mut tc = tc;

    fn set_add<'a>(add: &mut Vec<(&'a str, bool)>, typ: &'a str, v: bool, only_if_absent: bool) {
        match add.iter_mut().find(|(t, _)| *t == typ) {
            Some(slot) if !only_if_absent => slot.1 = v,
            Some(_) => {}
            None => add.push((typ, v)),
        }
    }
    let set_id = |ids: &mut Vec<(&'static str, u32)>,
                  typ: &'static str,
                  v: Option<&Json>|
     -> anyhow::Result<()> {
        let id = match v {
            Some(Json::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(x), _) => x,
                (None, Some(x)) if x < 0 => {
                    bail!("invalid value for special token type {typ}: {x}")
                }
                _ => return Ok(()),
            },
            Some(Json::Bool(b)) => u64::from(*b),
            _ => return Ok(()),
        };
        if !ids.iter().any(|(t, _)| *t == typ) {
            let id =
                u32::try_from(id).with_context(|| format!("special token id {id} too large"))?;
            ids.push((typ, id));
        }
        Ok(())
    };

    if let Some(norm) = tj.get("normalizer") {
        parse_normalizer(norm, &mut lowercase, &mut strip_accents);
    }
    let tc_truthy = tc.as_ref().is_some_and(|m| !m.is_empty());
    let get = |tc: &Option<Map<String, Json>>, k: &str| tc.as_ref().and_then(|m| m.get(k)).cloned();
    let mut sp_bos = get(&tc, "bos_token");
    let mut sp_cls = get(&tc, "cls_token");
    let mut sp_eos = get(&tc, "eos_token");
    let mut sp_sep = get(&tc, "sep_token");
    if !truthy(sp_bos.as_ref()) && truthy(sp_cls.as_ref()) && tc_truthy {
        sp_bos = sp_cls.clone();
        tc.as_mut()
            .unwrap()
            .insert("bos_token".into(), sp_bos.clone().unwrap_or(Json::Null));
    }
    if !truthy(sp_eos.as_ref()) && truthy(sp_sep.as_ref()) && tc_truthy {
        sp_eos = sp_sep.clone();
        tc.as_mut()
            .unwrap()
            .insert("eos_token".into(), sp_eos.clone().unwrap_or(Json::Null));
    }
    let is = |v: &Option<Json>, s: &str| v.as_ref().and_then(Json::as_str) == Some(s);
    if let Some(pp) = tj.get("post_processor").filter(|p| truthy(Some(p))) {
        let processors: Vec<Json> = match pp.get("processors").and_then(Json::as_array) {
            Some(list) => list.clone(),
            None => vec![pp.clone()],
        };
        for p in processors {
            match p.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    set_add(&mut add, "bos", false, true);
                    set_add(&mut add, "eos", false, true);
                }
                Some("RobertaProcessing") => {
                    for t in ["bos", "eos", "sep"] {
                        set_add(&mut add, t, true, false);
                    }
                    if !truthy(sp_cls.as_ref()) && tc_truthy {
                        sp_cls = p.pointer("/cls/0").cloned().or(sp_bos.clone());
                        tc.as_mut()
                            .unwrap()
                            .insert("cls_token".into(), sp_cls.clone().unwrap_or(Json::Null));
                    }
                    if !truthy(sp_sep.as_ref()) && tc_truthy {
                        sp_sep = p.pointer("/sep/0").cloned().or(sp_eos.clone());
                        tc.as_mut()
                            .unwrap()
                            .insert("sep_token".into(), sp_sep.clone().unwrap_or(Json::Null));
                    }
                }
                Some("TemplateProcessing") => {
                    let single = p
                        .get("single")
                        .and_then(Json::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let pair = p
                        .get("pair")
                        .and_then(Json::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let special_of = |item: &Json| {
                        item.pointer("/SpecialToken/id")
                            .and_then(Json::as_str)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                    };
                    let mut first = None;
                    let mut last = None;
                    if single.len() > 1 {
                        first = special_of(&single[0]);
                        if let Some(f) = &first {
                            if !tc_truthy {
                                sp_bos = Some(Json::String(f.clone()));
                            } else if !is(&sp_bos, f) && !is(&sp_cls, f) {
                                if !truthy(sp_bos.as_ref()) {
                                    sp_bos = Some(Json::String(f.clone()));
                                    tc.as_mut()
                                        .unwrap()
                                        .insert("bos_token".into(), Json::String(f.clone()));
                                }
                                if !truthy(sp_cls.as_ref()) {
                                    sp_cls = Some(Json::String(f.clone()));
                                    tc.as_mut()
                                        .unwrap()
                                        .insert("cls_token".into(), Json::String(f.clone()));
                                }
                            }
                            let v = is(&sp_bos, f) || is(&sp_cls, f);
                            set_add(&mut add, "bos", v, false);
                        }
                        last = special_of(&single[single.len() - 1]);
                        if let Some(l) = &last {
                            if !tc_truthy {
                                sp_eos = Some(Json::String(l.clone()));
                            } else if !is(&sp_eos, l) {
                                let m = tc.as_mut().unwrap();
                                if !types.contains(&"eot") {
                                    types.push("eot");
                                    m.insert(
                                        "eot_token".into(),
                                        sp_eos.clone().unwrap_or(Json::Null),
                                    );
                                } else if !types.contains(&"eom") {
                                    types.push("eom");
                                    m.insert(
                                        "eom_token".into(),
                                        sp_eos.clone().unwrap_or(Json::Null),
                                    );
                                }
                                m.insert("eos_token".into(), Json::String(l.clone()));
                                sp_eos = Some(Json::String(l.clone()));
                            }
                            let v = is(&sp_eos, l);
                            set_add(&mut add, "eos", v, false);
                        }
                    }
                    if !pair.is_empty() {
                        let start = usize::from(first.is_some() && special_of(&pair[0]) == first);
                        let stop_trim = last.is_some() && special_of(&pair[pair.len() - 1]) == last;
                        let end = pair.len() - usize::from(stop_trim);
                        let mid: Vec<Json> = if start <= end {
                            pair[start..end].to_vec()
                        } else {
                            Vec::new()
                        };
                        if !mid.is_empty() {
                            let a = mid[0].pointer("/Sequence/id").and_then(Json::as_str);
                            let b = mid[mid.len() - 1]
                                .pointer("/Sequence/id")
                                .and_then(Json::as_str);
                            if a == Some("A") && b == Some("B") && mid.len() > 2 {
                                let inner = &mid[1..mid.len() - 1];
                                let mut add_sep = false;
                                let sep_or_eos = |s: &str| is(&sp_sep, s) || is(&sp_eos, s);
                                if let Some(e) = special_of(&inner[0]) {
                                    if sep_or_eos(&e) && last.is_none() {
                                        add_sep = true;
                                    }
                                }
                                if inner.len() == 2 {
                                    if let Some(e) = special_of(&inner[1]) {
                                        if sep_or_eos(&e) {
                                            add_sep = true;
                                        }
                                    }
                                }
                                set_add(&mut add, "sep", add_sep, false);
                                if add_sep && !truthy(sp_sep.as_ref()) && tc_truthy {
                                    tc.as_mut().unwrap().insert(
                                        "sep_token".into(),
                                        sp_eos.clone().unwrap_or(Json::Null),
                                    );
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    let mut chat_template: Option<String> = None;
    if let Some(tc) = tc.as_ref().filter(|m| !m.is_empty()) {
        let tc_path = dir.join("tokenizer_config.json");
        let jinja = dir.join("chat_template.jinja");
        let json = dir.join("chat_template.json");
        let alt: Option<Json> = if jinja.is_file() {
            if dir.join("additional_chat_templates").is_dir() {
                bail!(
                    "{}: additional chat templates are not supported",
                    dir.join("additional_chat_templates").display()
                );
            }
            Some(Json::String(std::fs::read_to_string(&jinja).with_context(
                || format!("{}: cannot read", jinja.display()),
            )?))
        } else if json.is_file() {
            read_json(&json)?.get("chat_template").cloned()
        } else {
            None
        };
        match tc.get("chat_template").cloned().or(alt) {
            None | Some(Json::Null) => {}
            Some(Json::String(s)) => chat_template = Some(s),
            Some(Json::Array(list)) => {
                for choice in &list {
                    let name = choice.get("name").and_then(Json::as_str).unwrap_or("");
                    let name: String = name
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    let template = choice.get("template").and_then(Json::as_str);
                    match (name.as_str(), template) {
                        ("default", Some(t)) => chat_template = Some(t.to_string()),
                        ("", _) | (_, None) => {}
                        (other, Some(_)) => bail!(
                            "{}: field `chat_template`: named template {other:?} is not \
                             supported (only \"default\")",
                            tc_path.display()
                        ),
                    }
                }
            }
            Some(_) => {}
        }
        for &typ in &types {
            if let Some(Json::Bool(b)) = tc.get(&format!("add_{typ}_token")) {
                set_add(&mut add, typ, *b, true);
            }
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Object(o)) => match o.get("content") {
                    Some(Json::String(s)) => s.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            let id = added
                .iter()
                .find(|a| a.content == content)
                .map(|a| Json::from(a.id));
            set_id(&mut ids, typ, id.as_ref())?;
        }
    }
    for &typ in &types {
        let key = format!("{typ}_token_id");
        let v = config_raw
            .get(&key)
            .or_else(|| config_raw.get("text_config").and_then(|t| t.get(&key)));
        set_id(&mut ids, typ, v)?;
    }

    if !merges.is_empty() {
        kv.push(("tokenizer.ggml.merges".into(), string_array(merges)));
    }
    for (typ, id) in ids {
        let key = match typ {
            "bos" => "tokenizer.ggml.bos_token_id",
            "eos" => "tokenizer.ggml.eos_token_id",
            "unk" => "tokenizer.ggml.unknown_token_id",
            "sep" => "tokenizer.ggml.seperator_token_id",
            "pad" => "tokenizer.ggml.padding_token_id",
            "mask" => "tokenizer.ggml.mask_token_id",
            "eot" => "tokenizer.ggml.eot_token_id",
            "eom" => "tokenizer.ggml.eom_token_id",
            _ => continue,
        };
        set(kv, key, Value::U32(id));
    }
    for (typ, v) in add {
        let key = match typ {
            "bos" => "tokenizer.ggml.add_bos_token",
            "eos" => "tokenizer.ggml.add_eos_token",
            "sep" => "tokenizer.ggml.add_sep_token",
            _ => continue,
        };
        set(kv, key, Value::Bool(v));
    }
    if let Some(t) = chat_template {
        set(kv, "tokenizer.chat_template", Value::String(t));
    }
    if let Some(b) = lowercase {
        set(kv, "tokenizer.ggml.normalizer.lowercase", Value::Bool(b));
    }
    if let Some(b) = strip_accents {
        set(
            kv,
            "tokenizer.ggml.normalizer.strip_accents",
            Value::Bool(b),
        );
    }
    Ok(())
}

fn parse_normalizer(n: &Json, lowercase: &mut Option<bool>, strip: &mut Option<bool>) {
    match n.get("type").and_then(Json::as_str) {
        Some("Lowercase") => *lowercase = Some(true),
        Some("StripAccents") => *strip = Some(true),
        Some("BertNormalizer") => {
            if let Some(b) = n.get("lowercase").and_then(Json::as_bool) {
                *lowercase = Some(b);
            }
            if let Some(b) = n.get("strip_accents").and_then(Json::as_bool) {
                *strip = Some(b);
            }
        }
        Some("Sequence") => {
            for m in n
                .get("normalizers")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                parse_normalizer(m, lowercase, strip);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_as_python_lists() {
        // sha256("[1, 2]") and sha256("[]").
        assert_eq!(
            fingerprint(&[]),
            "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
        );
        assert_eq!(fingerprint(&[1, 2]).len(), 64);
        assert!(looks_special("<|eot_id|>"));
        assert!(!looks_special("<custom>"));
    }

    #[test]
    fn every_supported_table_name_is_a_runtime_pre_tokenizer() {
        for f in FAMILIES {
            assert!(PreTokenizer::from_name(Some(f)).is_ok(), "{f}");
        }
        assert!(PRE_HASHES.iter().any(|(_, n)| *n == "llama-bpe"));
    }
}
