//! Tokenizers built from GGUF metadata: byte-level BPE (`gpt2` family, with the
//! pre-tokenizers GGUF names) and SentencePiece-style (`llama`), giving the same ids as
//! llama.cpp's `llama_tokenize` for the same text and flags.
//!
//! The compiler turns the file's `tokenizer.ggml.*` keys into a [`TokenizerSpec`],
//! serialises it with [`TokenizerSpec::to_bytes`] into the binary, and the runtime
//! rebuilds a [`Tokenizer`] from those bytes at start-up without copying or hashing the
//! vocabulary: the blob already holds the hash tables (see `blob.rs`).
//!
//! This module owns tokenizing and detokenizing; it must not know about models,
//! sampling or chat formatting (it only carries the chat template through).
//!
//! Not implemented: llama.cpp's per-model `lstrip`/`rstrip` special-token attributes
//! (set from `general.name` for Phi-3 and a few BERT models), and the BPE
//! pre-tokenizers outside the families in [`PreTokenizer`]; naming one is an error.

mod blob;
mod bpe;
mod builder;
mod pretok;
mod spm;
mod unicode;
mod unicode_tables;

use std::borrow::Cow;

pub use blob::attr;
use blob::{Blob, U32s, NONE};
pub use pretok::PreTokenizer;

/// Everything the runtime needs to rebuild the tokenizer, as read from the GGUF, with
/// llama.cpp's defaults already applied (for example `add_bos` for `llama-bpe`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name ("llama-bpe", "smollm", ...), if any.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte); empty when the file has none.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (SentencePiece); empty when the file has none.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges`, "left right" pairs, highest priority first.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End-of-turn token (`tokenizer.ggml.eot_token_id`), if any.
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub chat_template: Option<String>,
    /// End-of-message token (`tokenizer.ggml.eom_token_id`), if any.
    pub eom: Option<u32>,
    /// Fill-in-the-middle tokens (`tokenizer.ggml.fim_{pre,suf,mid,pad,rep,sep}_token_id`).
    /// When absent they are found by their text, as llama.cpp does; pad/rep/sep end
    /// generation.
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

impl TokenizerSpec {
    /// The blob the compiler embeds and [`Tokenizer::from_bytes`] reads (format in
    /// `blob.rs`). A spec that cannot be built (unknown model or pre-tokenizer, ids out
    /// of range, ...) gives a blob that records the error, so `from_bytes` reports it;
    /// call [`Tokenizer::from_spec`] to see it at compile time.
    pub fn to_bytes(&self) -> Vec<u8> {
        builder::build(self)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenizerError {
    #[error("tokenizer spec: {0}")]
    Spec(String),
    #[error("unknown tokenizer model '{0}' (supported: gpt2, llama)")]
    UnknownModel(String),
    #[error("unknown pre-tokenizer '{0}'")]
    UnknownPreTokenizer(String),
    #[error("corrupt tokenizer blob: {0}")]
    BadBlob(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Bpe {
        pre: PreTokenizer,
        ignore_merges: bool,
    },
    Spm,
}

/// A tokenizer over one vocabulary; reads its tables in place from the blob.
pub struct Tokenizer {
    blob: Blob,
    kind: Kind,
    n_vocab: usize,
    n_sym: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// Special-token candidates by their first two bytes (one byte for one-byte texts):
    /// positions in the matching order.
    special_heads: std::collections::HashMap<u32, Vec<u32>>,
    /// Whether some special token starts with this byte.
    special_first: [bool; 256],
    /// UTF-8 of each byte's byte-level character (1 or 2 bytes; length in `.1`).
    byte_utf8: [([u8; 2], u8); 256],
}

/// The blob's sections, borrowed for one call.
pub(crate) struct Tables<'a> {
    text_offs: U32s<'a>,
    text: &'a [u8],
    scores: &'a [u8],
    vocab_ht: U32s<'a>,
    merge_offs: U32s<'a>,
    merges: U32s<'a>,
    byte_tok: U32s<'a>,
}

impl<'a> Tables<'a> {
    #[inline(always)]
    fn text(&self, sym: u32) -> &'a [u8] {
        let (a, b) = (
            self.text_offs.get(sym as usize),
            self.text_offs.get(sym as usize + 1),
        );
        &self.text[a as usize..b as usize]
    }

    /// The token whose text is `bytes`.
    #[inline]
    fn lookup(&self, bytes: &[u8]) -> Option<u32> {
        let mask = self.vocab_ht.len() - 1;
        let mut slot = blob::hash_bytes(bytes) as usize & mask;
        loop {
            let v = self.vocab_ht.get(slot);
            if v == 0 {
                return None;
            }
            if self.text(v - 1) == bytes {
                return Some(v - 1);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Rank and result of merging `l` and `r`; rank NONE when they do not merge.
    #[inline]
    fn merge(&self, l: u32, r: u32) -> (u32, u32) {
        let (mut lo, mut hi) = (
            self.merge_offs.get(l as usize) as usize,
            self.merge_offs.get(l as usize + 1) as usize,
        );
        while lo < hi {
            let mid = (lo + hi) / 2;
            let right = self.merges.get(3 * mid);
            if right == r {
                return (self.merges.get(3 * mid + 1), self.merges.get(3 * mid + 2));
            }
            if right < r {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (NONE, NONE)
    }

    #[inline]
    fn score(&self, id: u32) -> f32 {
        let i = 4 * id as usize;
        f32::from_le_bytes(self.scores[i..i + 4].try_into().expect("4 bytes"))
    }

    #[inline]
    fn byte_tok(&self, b: u8) -> Option<u32> {
        Some(self.byte_tok.get(b as usize)).filter(|&t| t != NONE)
    }
}

/// One piece of the input after special tokens are cut out.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

impl Tokenizer {
    /// Rebuild the tokenizer from a blob made by [`TokenizerSpec::to_bytes`], reading
    /// its tables in place. Checks every offset and id, so a corrupt blob is an error.
    pub fn from_bytes(bytes: &'static [u8]) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_blob(Blob::parse(Cow::Borrowed(bytes))?)
    }

    /// [`Tokenizer::from_bytes`] for a blob the caller owns (read from a file, or a
    /// fuzzer's input), with the same checks. The blob is kept, not copied.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_blob(Blob::parse(Cow::Owned(bytes))?)
    }

    pub fn from_spec(spec: &TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_blob(Blob::parse(Cow::Owned(builder::try_build(spec)?))?)
    }

    fn from_blob(blob: Blob) -> Result<Tokenizer, TokenizerError> {
        let bad = |m: String| TokenizerError::BadBlob(m);
        let h = blob.header;
        let n_vocab = h[blob::H_N_VOCAB] as usize;
        let n_sym = h[blob::H_N_SYM] as usize;
        let kind = match h[blob::H_KIND] {
            blob::KIND_BPE => Kind::Bpe {
                pre: match builder::pre_from_code(h[blob::H_PRE]) {
                    Some(p) => p,
                    None => return Err(bad(format!("pre-tokenizer code {}", h[blob::H_PRE]))),
                },
                ignore_merges: h[blob::H_FLAGS] & blob::F_IGNORE_MERGES != 0,
            },
            blob::KIND_SPM => Kind::Spm,
            k => return Err(bad(format!("tokenizer kind {k}"))),
        };
        if n_vocab == 0 || n_sym < n_vocab || n_sym >= NONE as usize / 2 {
            return Err(bad(format!("{n_vocab} tokens, {n_sym} symbols")));
        }
        let u32s = |s: usize| U32s(blob.section(s));
        let check_offs =
            |s: usize, data: usize, count: usize, what: &str| -> Result<(), TokenizerError> {
                let offs = u32s(s);
                if blob.section(s).len() != 4 * (count + 1) {
                    return Err(bad(format!(
                        "{what}: {} offsets for {count} entries",
                        offs.len()
                    )));
                }
                let mut last = 0;
                for o in offs.iter() {
                    if o < last || o as usize > blob.section(data).len() {
                        return Err(bad(format!(
                            "{what}: offset {o} out of order or past the data"
                        )));
                    }
                    last = o;
                }
                Ok(())
            };
        check_offs(blob::S_TEXT_OFFS, blob::S_TEXT, n_sym, "texts")?;
        check_offs(blob::S_PIECE_OFFS, blob::S_PIECE, n_vocab, "pieces")?;
        if blob.section(blob::S_ATTR).len() != n_vocab {
            return Err(bad(format!(
                "{} attributes for {n_vocab} tokens",
                blob.section(blob::S_ATTR).len()
            )));
        }
        if kind == Kind::Spm && blob.section(blob::S_SCORES).len() != 4 * n_vocab {
            return Err(bad(format!(
                "{} score bytes for {n_vocab} tokens",
                blob.section(blob::S_SCORES).len()
            )));
        }
        let ht = u32s(blob::S_VOCAB_HT);
        // at least one empty slot, or a lookup of a missing text would probe forever
        let used = ht.iter().filter(|&v| v != 0).count();
        if !ht.len().is_power_of_two()
            || used >= ht.len()
            || ht.iter().any(|v| v as usize > n_vocab)
        {
            return Err(bad(format!(
                "vocabulary table of {} slots for {n_vocab} tokens",
                ht.len()
            )));
        }
        let ids_ok = |s: usize, limit: usize, none_ok: bool| {
            u32s(s)
                .iter()
                .all(|v| (v as usize) < limit || (none_ok && v == NONE))
        };
        if let Kind::Bpe { .. } = kind {
            check_offs(blob::S_MERGE_OFFS, blob::S_MERGES, n_sym, "merges")?;
            let n_merges = u32s(blob::S_MERGE_OFFS).get(n_sym) as usize;
            let merges = u32s(blob::S_MERGES);
            // merge offsets count entries of three u32s
            if merges.len() != 3 * n_merges
                || merges.0.chunks_exact(12).any(|e| {
                    let w = |i: usize| {
                        u32::from_le_bytes(e[4 * i..4 * i + 4].try_into().expect("4 bytes"))
                    };
                    w(0) as usize >= n_sym || w(2) as usize >= n_sym
                })
            {
                return Err(bad(format!(
                    "merge table: {} words for {n_merges} merges",
                    merges.len()
                )));
            }
            if u32s(blob::S_BYTE_SYM).len() != 256 || !ids_ok(blob::S_BYTE_SYM, n_sym, false) {
                return Err(bad("byte symbols".into()));
            }
        }
        if u32s(blob::S_BYTE_TOK).len() != 256 || !ids_ok(blob::S_BYTE_TOK, n_vocab, true) {
            return Err(bad("byte tokens".into()));
        }
        if !ids_ok(blob::S_SPECIALS, n_vocab, false) || !ids_ok(blob::S_EOG, n_vocab, false) {
            return Err(bad("special or end-of-generation token out of range".into()));
        }
        let id = |f: usize| -> Result<Option<u32>, TokenizerError> {
            match h[f] {
                NONE => Ok(None),
                v if (v as usize) < n_vocab => Ok(Some(v)),
                v => Err(bad(format!("header token {v} out of range"))),
            }
        };

        let mut tok = Tokenizer {
            kind,
            n_vocab,
            n_sym,
            bos: id(blob::H_BOS)?,
            eos: id(blob::H_EOS)?,
            eot: id(blob::H_EOT)?,
            unk: id(blob::H_UNK)?,
            pad: id(blob::H_PAD)?,
            add_bos: h[blob::H_FLAGS] & blob::F_ADD_BOS != 0,
            add_eos: h[blob::H_FLAGS] & blob::F_ADD_EOS != 0,
            add_space_prefix: h[blob::H_FLAGS] & blob::F_ADD_SPACE_PREFIX != 0,
            special_heads: Default::default(),
            special_first: [false; 256],
            byte_utf8: [([0; 2], 0); 256],
            blob,
        };
        for b in 0..=255u8 {
            let mut buf = [0u8; 4];
            let len = unicode::byte_char(b).encode_utf8(&mut buf).len();
            tok.byte_utf8[b as usize] = ([buf[0], buf[1]], len as u8);
        }
        let specials: Vec<u32> = U32s(tok.blob.section(blob::S_SPECIALS)).iter().collect();
        for (rank, &id) in specials.iter().enumerate() {
            let text = tok.tables().text(id).to_vec();
            if text.is_empty() {
                return Err(bad(format!("special token {id} has no text")));
            }
            // encode cuts the input at each match and slices it as a str there: a text
            // that is not UTF-8 (say the tail bytes of '€') would match mid-character
            if std::str::from_utf8(&text).is_err() {
                return Err(bad(format!("special token {id}'s text is not UTF-8")));
            }
            tok.special_first[text[0] as usize] = true;
            tok.special_heads
                .entry(head_key(&text))
                .or_default()
                .push(rank as u32);
        }
        Ok(tok)
    }

    fn tables(&self) -> Tables<'_> {
        let s = |i: usize| self.blob.section(i);
        Tables {
            text_offs: U32s(s(blob::S_TEXT_OFFS)),
            text: s(blob::S_TEXT),
            scores: s(blob::S_SCORES),
            vocab_ht: U32s(s(blob::S_VOCAB_HT)),
            merge_offs: U32s(s(blob::S_MERGE_OFFS)),
            merges: U32s(s(blob::S_MERGES)),
            byte_tok: U32s(s(blob::S_BYTE_TOK)),
        }
    }

    /// Token ids for `text`, as llama.cpp's `llama_tokenize(text, add_special,
    /// parse_special)` gives them.
    ///
    /// `add_special` adds BOS (and EOS) when the model asks for them (`add_bos`,
    /// `add_eos`). Special tokens written in the text are cut out first, longest text
    /// first: user-defined ones always, control and unknown ones (`<|im_start|>`,
    /// `<s>`) only with `parse_special`; the text between them is tokenized normally.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let t = self.tables();
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let fragments = self.split_specials(&t, text, parse_special);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match self.kind {
            Kind::Bpe { pre, ignore_merges } => {
                let mut scratch = BpeWork::default();
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            self.bpe(&t, pre, ignore_merges, &text[a..b], &mut scratch, &mut out)
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Kind::Spm => {
                // a space is prefixed to the text at the start and after each special token
                let mut after_special = true;
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            let mut s = String::with_capacity(b - a + 4);
                            if self.add_space_prefix && after_special {
                                s.push('▁');
                            }
                            for c in text[a..b].chars() {
                                s.push(if c == ' ' { '▁' } else { c });
                            }
                            spm::tokenize(&t, &s, self.unk, &mut out);
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Cut `text` at special tokens. Tokens are taken in matching order (longest text
    /// first); each claims its leftmost non-overlapping occurrences in text that no
    /// earlier token claimed, exactly as llama.cpp's fragment partitioning does.
    fn split_specials(&self, t: &Tables, text: &str, parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        let specials = U32s(self.blob.section(blob::S_SPECIALS));
        let attrs = self.blob.section(blob::S_ATTR);
        let usable =
            |id: u32| parse_special || attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) == 0;
        // every occurrence of every usable special token: (rank, start)
        let mut hits: Vec<(u32, usize)> = Vec::new();
        for p in 0..bytes.len() {
            if !self.special_first[bytes[p] as usize] {
                continue;
            }
            let one = head_key(&bytes[p..p + 1]);
            let two = (p + 2 <= bytes.len()).then(|| head_key(&bytes[p..p + 2]));
            for key in std::iter::once(one).chain(two) {
                let Some(ranks) = self.special_heads.get(&key) else {
                    continue;
                };
                for &rank in ranks {
                    let id = specials.get(rank as usize);
                    if usable(id) && bytes[p..].starts_with(t.text(id)) {
                        hits.push((rank, p));
                    }
                }
            }
        }
        if hits.is_empty() {
            return if text.is_empty() {
                Vec::new()
            } else {
                vec![Fragment::Text(0, text.len())]
            };
        }
        hits.sort_unstable();
        hits.dedup();
        let mut claimed = vec![false; bytes.len()];
        let mut taken: Vec<(usize, usize, u32)> = Vec::new();
        for (rank, p) in hits {
            let id = specials.get(rank as usize);
            let end = p + t.text(id).len();
            if claimed[p..end].iter().any(|&c| c) {
                continue;
            }
            claimed[p..end].iter_mut().for_each(|c| *c = true);
            taken.push((p, end, id));
        }
        taken.sort_unstable();
        let mut out = Vec::with_capacity(2 * taken.len() + 1);
        let mut at = 0;
        for (p, end, id) in taken {
            if p > at {
                out.push(Fragment::Text(at, p));
            }
            out.push(Fragment::Token(id));
            at = end;
        }
        if at < bytes.len() {
            out.push(Fragment::Text(at, bytes.len()));
        }
        out
    }

    /// Byte-level BPE over one fragment: pre-tokenize, then merge within each word.
    fn bpe(
        &self,
        t: &Tables,
        pre: PreTokenizer,
        ignore_merges: bool,
        text: &str,
        w: &mut BpeWork,
        out: &mut Vec<u32>,
    ) {
        let bytes = text.as_bytes();
        let byte_sym = U32s(self.blob.section(blob::S_BYTE_SYM));
        pre.split(text, &mut |a, b| {
            let word = &bytes[a..b];
            if ignore_merges {
                // a word that is a token as a whole is that token
                w.encoded.clear();
                for &c in word {
                    let (u, len) = self.byte_utf8[c as usize];
                    w.encoded.extend_from_slice(&u[..len as usize]);
                }
                if let Some(id) = t.lookup(&w.encoded) {
                    out.push(id);
                    return;
                }
            }
            w.syms.clear();
            w.syms
                .extend(word.iter().map(|&c| byte_sym.get(c as usize)));
            bpe::merge(t, &mut w.syms, &mut w.scratch);
            for &s in &w.syms {
                if (s as usize) < self.n_vocab {
                    out.push(s);
                } else {
                    // not a token: llama.cpp keeps the single bytes of its text that are tokens
                    out.extend(t.text(s).iter().filter_map(|&c| t.byte_tok(c)));
                }
            }
        });
    }

    /// The bytes token `id` stands for, as llama.cpp renders it with `special = true`:
    /// byte-level decoded for BPE, `▁` as space for SPM, `<0xXX>` as its byte, control
    /// tokens as their text. Empty for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        if id as usize >= self.n_vocab {
            return &[];
        }
        let offs = U32s(self.blob.section(blob::S_PIECE_OFFS));
        let (a, b) = (
            offs.get(id as usize) as usize,
            offs.get(id as usize + 1) as usize,
        );
        &self.blob.section(blob::S_PIECE)[a..b]
    }

    /// The token's text as stored in the GGUF (byte-level characters, `▁`, ...).
    pub fn token_text(&self, id: u32) -> &[u8] {
        if id as usize >= self.n_vocab {
            return &[];
        }
        self.tables().text(id)
    }

    /// The token whose GGUF text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tables().lookup(text.as_bytes())
    }

    /// The token's attribute bits ([`attr`]); 0 outside the vocabulary.
    pub fn token_attr(&self, id: u32) -> u8 {
        self.blob
            .section(blob::S_ATTR)
            .get(id as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Control or unknown token: rendered only when special tokens are shown.
    pub fn is_control(&self, id: u32) -> bool {
        self.token_attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether generation stops at this token: EOS, EOT, EOM and the tokens llama.cpp
    /// recognises by text (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        let eog = U32s(self.blob.section(blob::S_EOG));
        eog.iter().any(|e| e == id)
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    pub fn chat_template(&self) -> Option<&str> {
        let bytes = self.blob.section(blob::S_CHAT);
        (!bytes.is_empty())
            .then(|| std::str::from_utf8(bytes).ok())
            .flatten()
    }

    /// Number of BPE symbols, tokens included (strings only merges produce come after).
    pub fn n_symbols(&self) -> usize {
        self.n_sym
    }

    /// All tokens' bytes concatenated, lossily decoded; `special` renders control tokens.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut d = Decoder::new(self, special);
        let mut s: String = ids.iter().map(|&id| d.push(id)).collect();
        s.push_str(&d.finish());
        s
    }
}

/// Key of the special-token candidate table: the first one or two bytes of a text.
fn head_key(text: &[u8]) -> u32 {
    match text {
        [a] => *a as u32 | 1 << 16,
        [a, b, ..] => *a as u32 | (*b as u32) << 8,
        [] => 0,
    }
}

#[derive(Default)]
struct BpeWork {
    syms: Vec<u32>,
    encoded: Vec<u8>,
    scratch: bpe::Scratch,
}

/// Streaming detokenizer: turns ids into text as they arrive, holding back a UTF-8
/// sequence split across tokens until it is complete.
pub struct Decoder<'a> {
    tok: &'a Tokenizer,
    special: bool,
    pending: Vec<u8>,
}

impl<'a> Decoder<'a> {
    /// `special`: render control and unknown tokens as their text (llama.cpp's
    /// `--special`); otherwise they produce nothing.
    pub fn new(tok: &'a Tokenizer, special: bool) -> Decoder<'a> {
        Decoder {
            tok,
            special,
            pending: Vec::new(),
        }
    }

    /// Add one token; returns the text that is complete now. Invalid bytes become U+FFFD;
    /// an incomplete sequence at the end waits for the next token.
    pub fn push(&mut self, id: u32) -> String {
        if !self.special && self.tok.is_control(id) {
            return String::new();
        }
        self.pending.extend_from_slice(self.tok.token_bytes(id));
        let mut out = String::new();
        let mut at = 0;
        loop {
            match std::str::from_utf8(&self.pending[at..]) {
                Ok(s) => {
                    out.push_str(s);
                    at = self.pending.len();
                    break;
                }
                Err(e) => {
                    let good = at + e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[at..good]).expect("validated prefix"),
                    );
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            at = good + n;
                        }
                        None => {
                            at = good; // incomplete: keep for the next token
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..at);
        out
    }

    /// Flush what is held back (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests;
