//! [`TokenizerSpec`] -> blob: everything that depends only on the vocabulary is decided
//! here, once, when the compiler embeds the tokenizer: token attributes with llama.cpp's
//! text-based fix-ups, the end-of-generation set, decoded pieces, the vocabulary hash
//! table and the BPE merge table resolved to symbol ids.

use std::collections::HashMap;

use super::blob::{self, attr, hash_bytes, Writer, NONE};
use super::pretok::PreTokenizer;
use super::unicode::{byte_char, char_byte};
use super::{TokenizerError, TokenizerSpec};

/// Texts llama.cpp treats as end of turn when the file names no `eot_token_id`.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts that end generation whatever the file says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss markup that always renders as text.
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Build the blob, or a blob that records the error (see [`blob`]).
pub(super) fn build(spec: &TokenizerSpec) -> Vec<u8> {
    match try_build(spec) {
        Ok(bytes) => bytes,
        Err(e) => Writer::error(&e.to_string()),
    }
}

pub(super) fn try_build(spec: &TokenizerSpec) -> Result<Vec<u8>, TokenizerError> {
    let spec_err = |m: String| TokenizerError::Spec(m);
    let n = spec.tokens.len();
    if n == 0 {
        return Err(spec_err("no tokens".into()));
    }
    if n >= NONE as usize / 2 {
        return Err(spec_err(format!("{n} tokens, more than the format holds")));
    }
    let (kind, pre, ignore_merges) = match spec.model.as_str() {
        "gpt2" => {
            let (pre, ignore) = PreTokenizer::from_name(spec.pre.as_deref())?;
            (blob::KIND_BPE, pre, ignore)
        }
        "llama" => (blob::KIND_SPM, PreTokenizer::Default, false),
        other => return Err(TokenizerError::UnknownModel(other.to_string())),
    };
    if !spec.token_types.is_empty() && spec.token_types.len() != n {
        return Err(spec_err(format!(
            "{} token types for {n} tokens",
            spec.token_types.len()
        )));
    }
    if kind == blob::KIND_SPM && spec.scores.len() < n {
        return Err(spec_err(format!(
            "{} scores for {n} tokens",
            spec.scores.len()
        )));
    }
    let ids = [
        ("bos", spec.bos),
        ("eos", spec.eos),
        ("eot", spec.eot),
        ("eom", spec.eom),
        ("unk", spec.unk),
        ("pad", spec.pad),
        ("fim_pre", spec.fim_pre),
        ("fim_suf", spec.fim_suf),
        ("fim_mid", spec.fim_mid),
        ("fim_pad", spec.fim_pad),
        ("fim_rep", spec.fim_rep),
        ("fim_sep", spec.fim_sep),
    ];
    for (name, id) in ids {
        if let Some(id) = id.filter(|&id| id as usize >= n) {
            return Err(spec_err(format!(
                "{name} token {id} is outside the {n}-token vocabulary"
            )));
        }
    }

    // Symbol texts: the tokens, then strings only merges produce (extended below).
    let mut texts: Vec<Vec<u8>> = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.is_empty() {
                format!("[EMPTY_{i}]").into_bytes()
            } else {
                t.clone().into_bytes()
            }
        })
        .collect();
    let mut lookup: HashMap<Vec<u8>, u32> = HashMap::with_capacity(n);
    for (i, t) in texts.iter().enumerate() {
        lookup.insert(t.clone(), i as u32); // the last id wins, as in llama.cpp
    }
    let find = |t: &str| lookup.get(t.as_bytes()).copied();

    let mut attrs: Vec<u8> = (0..n)
        .map(|i| match spec.token_types.get(i) {
            None => attr::NORMAL,
            Some(1) => attr::NORMAL,
            Some(2) => attr::UNKNOWN,
            Some(3) => attr::CONTROL,
            Some(4) => attr::USER_DEFINED,
            Some(5) => attr::UNUSED,
            Some(6) => attr::BYTE,
            Some(_) => 0,
        })
        .collect();

    // Special tokens the file does not name are found by their text and made control
    // tokens. Where several candidates exist llama.cpp takes whichever its hash map
    // yields first; here the lowest id.
    let detect = |given: Option<u32>, candidates: &[&str], attrs: &mut Vec<u8>| -> Option<u32> {
        if given.is_some() {
            return given;
        }
        let id = candidates.iter().filter_map(|t| find(t)).min()?;
        attrs[id as usize] |= attr::CONTROL;
        Some(id)
    };
    let eot = detect(spec.eot, EOT_TEXTS, &mut attrs);
    let eom = detect(spec.eom, EOM_TEXTS, &mut attrs);
    detect(spec.fim_pre, FIM_PRE_TEXTS, &mut attrs);
    detect(spec.fim_suf, FIM_SUF_TEXTS, &mut attrs);
    detect(spec.fim_mid, FIM_MID_TEXTS, &mut attrs);
    let fim_pad = detect(spec.fim_pad, FIM_PAD_TEXTS, &mut attrs);
    let fim_rep = detect(spec.fim_rep, FIM_REP_TEXTS, &mut attrs);
    let fim_sep = detect(spec.fim_sep, FIM_SEP_TEXTS, &mut attrs);

    let mut eog: Vec<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
    for t in EOG_TEXTS {
        if let Some(id) = find(t) {
            eog.push(id);
            attrs[id as usize] |= attr::CONTROL;
        }
    }
    for t in ALWAYS_RENDERED {
        if let Some(id) = find(t) {
            attrs[id as usize] = attr::USER_DEFINED;
        }
    }
    eog.extend([spec.eos, eot, eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();
    let eog_has = |eog: &[u32], t: &str| find(t).is_some_and(|id| eog.contains(&id));
    // Harmony-style vocabularies end a turn with <|return|>/<|call|>; <|end|> only
    // ends a message there.
    if eog_has(&eog, "<|end|>")
        && ((eog_has(&eog, "<|return|>") && eog_has(&eog, "<|call|>"))
            || ((eog_has(&eog, "<|call|>") || eog_has(&eog, "<|calls|>"))
                && eog_has(&eog, "<|flush|>")))
    {
        let end = find("<|end|>").expect("checked above");
        eog.retain(|&x| x != end);
        attrs[end as usize] = attr::USER_DEFINED;
    }
    // Vocabularies with their own end marker use </s> as ordinary text.
    if eog_has(&eog, "</s>")
        && (eog_has(&eog, "<|tool_response>") || eog_has(&eog, "<|plamo:eos|>"))
    {
        let s = find("</s>").expect("checked above");
        eog.retain(|&x| x != s);
        attrs[s as usize] = attr::NORMAL;
    }

    let mut specials: Vec<u32> = (0..n as u32)
        .filter(|&i| attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
        .collect();
    specials.sort_by(|&a, &b| {
        texts[b as usize]
            .len()
            .cmp(&texts[a as usize].len())
            .then(a.cmp(&b))
    });

    // Pieces: what each token decodes to.
    let mut piece_offs = Vec::with_capacity(n + 1);
    let mut pieces = Vec::new();
    piece_offs.push(0u32);
    for (i, t) in texts.iter().enumerate() {
        piece(kind, attrs[i], t, &mut pieces);
        piece_offs
            .push(u32::try_from(pieces.len()).map_err(|_| spec_err("pieces exceed 4 GiB".into()))?);
    }

    let mut byte_tok = [NONE; 256];
    let mut byte_sym = [NONE; 256];
    let mut merge_offs: Vec<u32> = Vec::new();
    let mut merges: Vec<u32> = Vec::new();
    if kind == blob::KIND_BPE {
        for b in 0..=255u8 {
            byte_tok[b as usize] = lookup.get(&[b][..]).copied().unwrap_or(NONE);
        }
        build_merges(
            spec,
            &mut texts,
            &mut lookup,
            &mut byte_sym,
            &mut merge_offs,
            &mut merges,
        )?;
    } else {
        for b in 0..=255u8 {
            let hex = format!("<0x{b:02X}>");
            byte_tok[b as usize] = lookup
                .get(hex.as_bytes())
                .or_else(|| lookup.get(&[b][..]))
                .copied()
                .unwrap_or(NONE);
        }
    }
    let n_sym = texts.len();

    let mut text_offs = Vec::with_capacity(n_sym + 1);
    let mut text_bytes = Vec::new();
    text_offs.push(0u32);
    for t in &texts {
        text_bytes.extend_from_slice(t);
        text_offs.push(
            u32::try_from(text_bytes.len()).map_err(|_| spec_err("texts exceed 4 GiB".into()))?,
        );
    }

    // vocabulary hash table, load factor <= 1/2
    let cap = (2 * n).next_power_of_two();
    let mut table = vec![0u32; cap];
    for id in 0..n as u32 {
        let t = &texts[id as usize];
        if lookup.get(t) != Some(&id) {
            continue; // an earlier duplicate of a later token's text
        }
        let mut slot = hash_bytes(t) as usize & (cap - 1);
        while table[slot] != 0 {
            slot = (slot + 1) & (cap - 1);
        }
        table[slot] = id + 1;
    }

    let opt = |x: Option<u32>| x.unwrap_or(NONE);
    let mut flags = 0;
    if spec.add_bos {
        flags |= blob::F_ADD_BOS;
    }
    if spec.add_eos {
        flags |= blob::F_ADD_EOS;
    }
    if spec.add_space_prefix {
        flags |= blob::F_ADD_SPACE_PREFIX;
    }
    if ignore_merges {
        flags |= blob::F_IGNORE_MERGES;
    }

    let mut w = Writer::new();
    w.set(blob::H_KIND, kind);
    w.set(blob::H_PRE, pre_code(pre));
    w.set(blob::H_FLAGS, flags);
    w.set(blob::H_N_VOCAB, n as u32);
    w.set(blob::H_N_SYM, n_sym as u32);
    w.set(blob::H_BOS, opt(spec.bos));
    w.set(blob::H_EOS, opt(spec.eos));
    w.set(blob::H_EOT, opt(eot));
    w.set(blob::H_UNK, opt(spec.unk));
    w.set(blob::H_PAD, opt(spec.pad));
    w.u32s(blob::S_TEXT_OFFS, &text_offs);
    w.bytes(blob::S_TEXT, text_bytes);
    w.u32s(blob::S_PIECE_OFFS, &piece_offs);
    w.bytes(blob::S_PIECE, pieces);
    w.bytes(blob::S_ATTR, attrs);
    if kind == blob::KIND_SPM {
        w.bytes(
            blob::S_SCORES,
            spec.scores[..n]
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect(),
        );
    }
    w.u32s(blob::S_VOCAB_HT, &table);
    w.u32s(blob::S_MERGE_OFFS, &merge_offs);
    w.u32s(blob::S_MERGES, &merges);
    w.u32s(blob::S_BYTE_SYM, &byte_sym);
    w.u32s(blob::S_BYTE_TOK, &byte_tok);
    w.u32s(blob::S_SPECIALS, &specials);
    w.u32s(blob::S_EOG, &eog);
    w.bytes(
        blob::S_CHAT,
        spec.chat_template.clone().unwrap_or_default().into_bytes(),
    );
    Ok(w.finish())
}

pub(super) fn pre_code(pre: PreTokenizer) -> u32 {
    match pre {
        PreTokenizer::Default => 0,
        PreTokenizer::Gpt2 => 1,
        PreTokenizer::Llama3 => 2,
        PreTokenizer::Qwen2 => 3,
        PreTokenizer::Smollm => 4,
    }
}

pub(super) fn pre_from_code(code: u32) -> Option<PreTokenizer> {
    Some(match code {
        0 => PreTokenizer::Default,
        1 => PreTokenizer::Gpt2,
        2 => PreTokenizer::Llama3,
        3 => PreTokenizer::Qwen2,
        4 => PreTokenizer::Smollm,
        _ => return None,
    })
}

/// The bytes a token stands for: control, unknown and user-defined tokens are their
/// text; normal tokens are byte-level decoded (BPE) or have `▁` turned back into spaces
/// (SPM); byte tokens `<0xXX>` are that byte; anything else is empty.
fn piece(kind: u32, a: u8, text: &[u8], out: &mut Vec<u8>) {
    if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
        out.extend_from_slice(text);
    } else if a & attr::NORMAL != 0 {
        let s = String::from_utf8_lossy(text);
        if kind == blob::KIND_SPM {
            out.extend_from_slice(s.replace('▁', " ").as_bytes());
        } else {
            for c in s.chars() {
                match char_byte(c) {
                    Some(b) => out.push(b),
                    None => {
                        // a character outside the byte alphabet: llama.cpp writes a marker
                        out.extend_from_slice(b"[UNK_BYTE_0x");
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            out.extend_from_slice(format!("{b:02x}").as_bytes());
                        }
                        out.extend_from_slice(text);
                        out.push(b']');
                    }
                }
            }
        }
    } else if a & attr::BYTE != 0 {
        // "<0xXX>": the hex digits after "<0x"
        let hex = text.get(3..text.len().min(5)).unwrap_or(&[]);
        let digits: String = hex
            .iter()
            .map(|&b| b as char)
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        out.push(u8::from_str_radix(&digits, 16).unwrap_or(0));
    }
}

/// Resolve `"left right"` merge lines to symbol ids. Every string a merge can produce
/// gets a symbol: its token id, or a new id past the vocabulary when the result is not
/// a token (it then falls back to single-byte tokens when it survives to the output).
fn build_merges(
    spec: &TokenizerSpec,
    texts: &mut Vec<Vec<u8>>,
    lookup: &mut HashMap<Vec<u8>, u32>,
    byte_sym: &mut [u32; 256],
    merge_offs: &mut Vec<u32>,
    merges: &mut Vec<u32>,
) -> Result<(), TokenizerError> {
    let mut symbol = |t: &[u8], texts: &mut Vec<Vec<u8>>| -> u32 {
        if let Some(&id) = lookup.get(t) {
            return id;
        }
        let id = texts.len() as u32;
        texts.push(t.to_vec());
        lookup.insert(t.to_vec(), id);
        id
    };
    for b in 0..=255u8 {
        let mut buf = [0u8; 4];
        byte_sym[b as usize] = symbol(byte_char(b).encode_utf8(&mut buf).as_bytes(), texts);
    }
    // split at the first space after the first byte, as llama.cpp does
    let split = |m: &str| -> Option<(usize, usize)> {
        let at = m.as_bytes().iter().skip(1).position(|&b| b == b' ')? + 1;
        Some((at, at + 1))
    };
    let mut results = Vec::with_capacity(spec.merges.len());
    for m in &spec.merges {
        let r = match split(m) {
            Some((at, _)) => {
                let joined: Vec<u8> = [&m.as_bytes()[..at], &m.as_bytes()[at + 1..]].concat();
                symbol(&joined, texts)
            }
            None => NONE,
        };
        results.push(r);
    }
    let mut entries: Vec<(u32, u32, u32, u32)> = Vec::with_capacity(spec.merges.len());
    for (rank, m) in spec.merges.iter().enumerate() {
        let Some((at, _)) = split(m) else { continue };
        let (l, r) = (&m.as_bytes()[..at], &m.as_bytes()[at + 1..]);
        // a side that is no symbol can never occur in a word
        let (Some(&l), Some(&r)) = (lookup.get(l), lookup.get(r)) else {
            continue;
        };
        entries.push((l, r, rank as u32, results[rank]));
    }
    if texts.len() >= NONE as usize / 2 {
        return Err(TokenizerError::Spec(format!(
            "{} symbols, more than the format holds",
            texts.len()
        )));
    }
    // group by left, then right; the first rank of a repeated pair wins
    entries.sort_by_key(|&(l, r, rank, _)| (l, r, rank));
    entries.dedup_by_key(|e| (e.0, e.1));
    merge_offs.clear();
    merge_offs.resize(texts.len() + 1, 0);
    for &(l, ..) in &entries {
        merge_offs[l as usize + 1] += 1;
    }
    for i in 1..merge_offs.len() {
        merge_offs[i] += merge_offs[i - 1];
    }
    merges.clear();
    merges.reserve(3 * entries.len());
    for (_, r, rank, res) in entries {
        merges.extend([r, rank, res]);
    }
    Ok(())
}
