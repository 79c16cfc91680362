//! Pre-tokenizers: split text into the words that BPE merges within.
//!
//! GGUF names a pre-tokenizer (`tokenizer.ggml.pre`); llama.cpp defines each as a list of
//! regexes applied in turn, every regex splitting each piece the previous one left into
//! matches and the gaps between them. These are hand-written matchers with exactly the
//! semantics llama.cpp runs, including its bounded-fragment look-ahead: a look-ahead at
//! the end of a piece sees nothing, as if the piece were the whole text.
//!
//! Positions are codepoint indices into one decoded text; every matcher sees only its
//! piece `[ini, end)`, and anything outside reads as [`OUT`].

use super::unicode::{
    class_of, is_letter, is_number, is_space, Class, CAT_MASK, CAT_NUMBER, CAT_PUNCT, OUT,
};
use super::TokenizerError;

/// The pre-tokenizers this runtime implements, by the regex family they belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Llama 3: case-insensitive contractions, `[^\r\n\p{L}\p{N}]?\p{L}+`, `\p{N}{1,3}`,
    /// ` ?[^\s\p{L}\p{N}]+[\r\n]*`, `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`.
    Llama3,
    /// Qwen 2: the Llama 3 regex with single digits (`\p{N}`).
    Qwen2,
    /// SmolLM / StarCoder: every `\p{N}` on its own, then GPT-2.
    Smollm,
    /// llama.cpp's fallback: `[\p{P}\$\+<=>\^~\|]+`, then GPT-2, then `\p{N}+`, then
    /// `[0-9][0-9][0-9]`.
    Default,
}

impl PreTokenizer {
    /// The pre-tokenizer a GGUF `tokenizer.ggml.pre` names (for `model = gpt2`), and
    /// whether that family looks a whole word up in the vocabulary before merging
    /// (llama.cpp's `ignore_merges`). A missing name means the default.
    pub fn from_name(name: Option<&str>) -> Result<(PreTokenizer, bool), TokenizerError> {
        let Some(name) = name else {
            return Ok((PreTokenizer::Default, false));
        };
        Ok(match name {
            "default" => (PreTokenizer::Default, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => (PreTokenizer::Llama3, true),
            "dbrx" | "smaug-bpe" => (PreTokenizer::Llama3, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "hunyuan"
            | "solar-open" => (PreTokenizer::Qwen2, false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => (PreTokenizer::Smollm, false),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en"
            | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" => (PreTokenizer::Gpt2, false),
            other => return Err(TokenizerError::UnknownPreTokenizer(other.to_string())),
        })
    }

    /// Split `text` into words, calling `emit` with each word's byte range, in order.
    /// The words cover the text exactly.
    pub fn split(self, text: &str, emit: &mut dyn FnMut(usize, usize)) {
        let cx = Decoded::new(text);
        let mut to_bytes = |a: usize, b: usize| emit(cx.offs[a] as usize, cx.offs[b] as usize);
        let n = cx.cps.len();
        match self {
            PreTokenizer::Gpt2 => gpt2(&cx.view(0, n), &mut to_bytes),
            PreTokenizer::Llama3 => llama3(&cx.view(0, n), 3, &mut to_bytes),
            PreTokenizer::Qwen2 => llama3(&cx.view(0, n), 1, &mut to_bytes),
            PreTokenizer::Smollm => {
                for (a, b) in runs(&cx.view(0, n), RunKind::EachNumber) {
                    gpt2(&cx.view(a, b), &mut to_bytes);
                }
            }
            PreTokenizer::Default => {
                for (a, b) in runs(&cx.view(0, n), RunKind::Punct) {
                    let mut words = Vec::new();
                    gpt2(&cx.view(a, b), &mut |x, y| words.push((x, y)));
                    for (x, y) in words {
                        for (p, q) in runs(&cx.view(x, y), RunKind::Numbers) {
                            ascii_digit_triples(&cx.view(p, q), &mut to_bytes);
                        }
                    }
                }
            }
        }
    }
}

/// The text as codepoints, their classes, and the byte offset of each (plus the end).
struct Decoded {
    cps: Vec<u32>,
    cls: Vec<Class>,
    offs: Vec<u32>,
}

impl Decoded {
    fn new(text: &str) -> Decoded {
        let mut cps = Vec::with_capacity(text.len());
        let mut cls = Vec::with_capacity(text.len());
        let mut offs = Vec::with_capacity(text.len() + 1);
        for (i, c) in text.char_indices() {
            cps.push(c as u32);
            cls.push(class_of(c as u32));
            offs.push(i as u32);
        }
        offs.push(text.len() as u32);
        Decoded { cps, cls, offs }
    }

    fn view(&self, ini: usize, end: usize) -> View<'_> {
        View {
            cps: &self.cps,
            cls: &self.cls,
            ini,
            end,
        }
    }
}

/// One piece `[ini, end)` of the decoded text.
struct View<'a> {
    cps: &'a [u32],
    cls: &'a [Class],
    ini: usize,
    end: usize,
}

/// Stands for "no codepoint" outside the piece.
const NO_CP: u32 = u32::MAX;

impl View<'_> {
    #[inline(always)]
    fn cp(&self, i: usize) -> u32 {
        if i >= self.ini && i < self.end {
            self.cps[i]
        } else {
            NO_CP
        }
    }

    #[inline(always)]
    fn cls(&self, i: usize) -> Class {
        if i >= self.ini && i < self.end {
            self.cls[i]
        } else {
            OUT
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` at `pos`: the length matched (0, 2 or 3). With
    /// `fold`, the letters match in either case (only ASCII capitals lowercase to them).
    #[inline(always)]
    fn contraction(&self, pos: usize, fold: bool) -> usize {
        if self.cp(pos) != '\'' as u32 || pos + 1 >= self.end {
            return 0;
        }
        let low = |cp: u32| {
            if fold && (b'A' as u32..=b'Z' as u32).contains(&cp) {
                cp + 32
            } else {
                cp
            }
        };
        let a = low(self.cp(pos + 1));
        if [b's', b't', b'm', b'd'].iter().any(|&x| a == x as u32) {
            return 2;
        }
        if pos + 2 < self.end {
            let b = low(self.cp(pos + 2));
            let pair = |x: u8, y: u8| a == x as u32 && b == y as u32;
            if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
                return 3;
            }
        }
        0
    }

    /// Whitespace at `pos`: the `\s+(?!\S)` / `\s+` tail that every family shares.
    /// Returns the end of the match (at least `pos + 1`).
    #[inline(always)]
    fn spaces(&self, pos: usize) -> usize {
        let mut q = pos;
        while is_space(self.cls(q)) {
            q += 1;
        }
        let n = q - pos;
        if n > 1 && self.cp(q) != NO_CP {
            // leave the last space to prefix the word that follows
            q - 1
        } else if n > 0 {
            q
        } else {
            pos + 1
        }
    }
}

/// "Neither whitespace, letter nor number", and a real codepoint: `[^\s\p{L}\p{N}]`.
#[inline(always)]
fn is_other(c: Class) -> bool {
    c != OUT && !is_space(c) && !is_letter(c) && !is_number(c)
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn gpt2(v: &View, emit: &mut dyn FnMut(usize, usize)) {
    let mut pos = v.ini;
    while pos < v.end {
        let n = v.contraction(pos, false);
        if n > 0 {
            emit(pos, pos + n);
            pos += n;
            continue;
        }
        // an optional leading space joins a run of one kind
        let body = pos + (v.cp(pos) == ' ' as u32) as usize;
        let head = v.cls(body);
        let kind: Option<fn(Class) -> bool> = if is_letter(head) {
            Some(is_letter)
        } else if is_number(head) {
            Some(is_number)
        } else if is_other(head) {
            Some(is_other)
        } else {
            None
        };
        let end = match kind {
            Some(same) => {
                let mut q = body;
                while same(v.cls(q)) {
                    q += 1;
                }
                q
            }
            None => v.spaces(pos),
        };
        emit(pos, end);
        pos = end;
    }
}

/// Llama 3 (`max_digits` 3) and Qwen 2 (`max_digits` 1).
fn llama3(v: &View, max_digits: usize, emit: &mut dyn FnMut(usize, usize)) {
    let is_newline = |cp: u32| cp == '\r' as u32 || cp == '\n' as u32;
    let mut pos = v.ini;
    while pos < v.end {
        let n = v.contraction(pos, true);
        if n > 0 {
            emit(pos, pos + n);
            pos += n;
            continue;
        }
        let cp = v.cp(pos);
        let cls = v.cls(pos);
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !is_newline(cp) && !is_number(cls) && (is_letter(cls) || is_letter(v.cls(pos + 1))) {
            let mut q = pos + 1;
            while is_letter(v.cls(q)) {
                q += 1;
            }
            emit(pos, q);
            pos = q;
            continue;
        }
        // \p{N}{1,max_digits}
        if is_number(cls) {
            let mut q = pos + 1;
            while q - pos < max_digits && is_number(v.cls(q)) {
                q += 1;
            }
            emit(pos, q);
            pos = q;
            continue;
        }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        let body = pos + (cp == ' ' as u32) as usize;
        let head = v.cls(body);
        if !is_space(head) && !is_letter(head) && !is_number(head) && cls != OUT {
            let mut q = body;
            while is_other(v.cls(q)) {
                q += 1;
            }
            while is_newline(v.cp(q)) {
                q += 1;
            }
            emit(pos, q);
            pos = q;
            continue;
        }
        // \s*[\r\n]+ : through the last newline of the whitespace run
        let mut q = pos;
        let mut after_newline = None;
        while is_space(v.cls(q)) {
            if is_newline(v.cp(q)) {
                after_newline = Some(q + 1);
            }
            q += 1;
        }
        let end = after_newline.unwrap_or_else(|| v.spaces(pos));
        emit(pos, end);
        pos = end;
    }
}

/// The single-class regexes llama.cpp runs on its one-byte-per-codepoint "collapsed"
/// text: ASCII keeps its own byte (and the regex its ASCII ranges), other codepoints
/// become a category byte, or a whitespace byte that no category matches.
#[derive(Clone, Copy)]
enum RunKind {
    /// `\p{N}`: each number on its own.
    EachNumber,
    /// `\p{N}+`.
    Numbers,
    /// `[\p{P}\$\+<=>\^~\|]+`.
    Punct,
}

fn collapsed_category(cp: u32, cls: Class) -> Option<Class> {
    debug_assert!(cp >= 0x80);
    (!is_space(cls)).then_some(cls & CAT_MASK)
}

fn matches_kind(kind: RunKind, cp: u32, cls: Class) -> bool {
    match kind {
        RunKind::EachNumber | RunKind::Numbers => {
            if cp < 0x80 {
                (b'0' as u32..=b'9' as u32).contains(&cp)
            } else {
                collapsed_category(cp, cls) == Some(CAT_NUMBER)
            }
        }
        RunKind::Punct => {
            if cp < 0x80 {
                // ASCII \p{P} (!"#%&'()*,-./:;?@[\]_{}) and $+<=>^~|
                matches!(cp as u8, b'!'..=b'/' | b':'..=b'@' | b'['..=b'_' | b'{'..=b'~')
                    && cp != '`' as u32
            } else {
                collapsed_category(cp, cls) == Some(CAT_PUNCT)
            }
        }
    }
}

/// Split a piece into the matches of a one-class regex and the gaps between them.
fn runs(v: &View, kind: RunKind) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = v.ini;
    while pos < v.end {
        let hit = matches_kind(kind, v.cps[pos], v.cls[pos]);
        let mut q = pos + 1;
        // a match of `\p{N}` is one codepoint; runs and gaps extend
        let single = hit && matches!(kind, RunKind::EachNumber);
        while !single && q < v.end && matches_kind(kind, v.cps[q], v.cls[q]) == hit {
            q += 1;
        }
        out.push((pos, q));
        pos = q;
    }
    out
}

/// `[0-9][0-9][0-9]`: leftmost triples of ASCII digits, and the gaps between them.
fn ascii_digit_triples(v: &View, emit: &mut dyn FnMut(usize, usize)) {
    let digit = |i: usize| (b'0' as u32..=b'9' as u32).contains(&v.cp(i));
    let mut gap = v.ini;
    let mut pos = v.ini;
    while pos < v.end {
        if digit(pos) && digit(pos + 1) && digit(pos + 2) {
            if gap < pos {
                emit(gap, pos);
            }
            emit(pos, pos + 3);
            pos += 3;
            gap = pos;
        } else {
            pos += 1;
        }
    }
    if gap < v.end {
        emit(gap, v.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        pre.split(text, &mut |a, b| out.push(&text[a..b]));
        out
    }

    #[test]
    fn gpt2_words() {
        let w = words(PreTokenizer::Gpt2, "Hello world's  end 123\n\n  x!!");
        assert_eq!(
            w,
            ["Hello", " world", "'s", " ", " end", " 123", "\n\n ", " x", "!!"]
        );
        // trailing whitespace stays one word; a lone space before punctuation joins it
        assert_eq!(words(PreTokenizer::Gpt2, "a  "), ["a", "  "]);
        assert_eq!(words(PreTokenizer::Gpt2, "a ."), ["a", " ."]);
        // contractions are case-sensitive in GPT-2
        assert_eq!(words(PreTokenizer::Gpt2, "I'M"), ["I", "'", "M"]);
    }

    #[test]
    fn llama3_words() {
        let w = words(PreTokenizer::Llama3, "I'M 12345 x\r\n\n  ..\n y");
        assert_eq!(
            w,
            ["I", "'M", " ", "123", "45", " x", "\r\n\n", " ", " ..\n", " y"]
        );
        assert_eq!(words(PreTokenizer::Qwen2, "12 a"), ["1", "2", " a"]);
        // a punctuation mark directly before a letter joins the word
        assert_eq!(words(PreTokenizer::Llama3, "(hello)"), ["(hello", ")"]);
    }

    #[test]
    fn smollm_isolates_every_digit() {
        assert_eq!(
            words(PreTokenizer::Smollm, "x 2024!"),
            ["x", " ", "2", "0", "2", "4", "!"]
        );
        assert_eq!(words(PreTokenizer::Smollm, "½3"), ["½", "3"]);
    }

    #[test]
    fn default_chain() {
        assert_eq!(
            words(PreTokenizer::Default, "a+b 1234567"),
            ["a", "+", "b", " ", "123", "456", "7"]
        );
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert!(PreTokenizer::from_name(Some("nope")).is_err());
        assert_eq!(
            PreTokenizer::from_name(None).unwrap(),
            (PreTokenizer::Default, false)
        );
        assert_eq!(
            PreTokenizer::from_name(Some("llama-bpe")).unwrap(),
            (PreTokenizer::Llama3, true)
        );
    }
}
