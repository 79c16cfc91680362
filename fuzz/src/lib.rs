//! What each fuzz target does with one input. The cargo-fuzz targets
//! (`fuzz_targets/*.rs`) call these, and `tests/hostile_fuzz_corpus.rs` includes this
//! file to replay the committed seeds and every past crash on stable, without libFuzzer.
//!
//! A body returns quietly when the code under test rejects its input with an error, and
//! panics only when that code breaks a promise: a panic inside a parser, or an accepted
//! input that violates an invariant checked here with `assert!` (tensor bytes inside the
//! file, token ids inside the vocabulary, a lossless round trip for byte-level BPE).
//!
//! Paths are absolute (`mcc::`, `mcc_runtime::`) so the file also works as a module.

use std::path::PathBuf;
use std::sync::OnceLock;

use mcc::gguf::GgufFile;
use mcc_runtime::tokenizer::Tokenizer;

/// Text that reaches every tokenizer path: specials of several families, digits runs,
/// contractions, mixed scripts, control whitespace, an emoji and a `▁`.
pub const SAMPLE: &str = "Hello, world! I'm 12345 <|im_start|>user\n<s> </s><|endoftext|> \
     ÿ€ 日本語テキスト \t\r\n  x▁y 🦀 <|eot_id|>'LL";

/// GGUF reader, then model description: any bytes give a value or an error.
pub fn gguf(data: &[u8]) {
    let Ok(g) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    for t in &g.tensors {
        // the reader promised every tensor lies inside the file
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes, "{}", t.name);
        assert!(t.row_bytes() <= t.n_bytes && t.n_rows() >= 1, "{}", t.name);
    }
    for (key, value) in &g.metadata {
        assert!(g.get(key).is_some(), "{key}");
        let _ = (value.type_name(), value.brief());
    }
    if let Ok(desc) = mcc::describe::describe(&g) {
        // describe checked that the runtime builds this tokenizer: the blob the
        // compiler embeds must load too, and encoding must stay inside the vocabulary
        let tok = Tokenizer::from_vec(desc.tokenizer.to_bytes())
            .expect("the blob of a tokenizer describe accepted loads");
        assert_eq!(tok.n_vocab(), desc.n_vocab);
        for ids in [
            tok.encode(SAMPLE, true, true),
            tok.encode(SAMPLE, false, false),
        ] {
            assert!(ids.iter().all(|&id| (id as usize) < desc.n_vocab));
        }
    }
}

/// A real vocabulary to fuzz encoding and decoding with.
pub struct Vocab {
    pub name: String,
    pub tok: Tokenizer,
    /// Byte-level BPE: decoding the ids of any text with `special` gives the text back,
    /// less the bytes in `unencodable`.
    pub lossless: bool,
    /// Bytes whose byte-level character is no token (SmolLM2 lacks six control bytes):
    /// encoding drops them, as llama.cpp does.
    pub unencodable: Vec<u8>,
}

/// The vocabulary files the tokenizer target uses, under $MCC_CACHE (~/.cache/mcc):
/// SmolLM2's model (smollm pre-tokenizer) and llama.cpp's test vocabularies, which
/// cover SentencePiece (llama-spm, phi-3) and each BPE pre-tokenizer family.
pub fn vocab_paths() -> Vec<PathBuf> {
    let cache = std::env::var_os("MCC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/mcc")
        });
    let mut paths = vec![cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")];
    for name in [
        "llama-spm",
        "llama-bpe",
        "qwen2",
        "gpt-2",
        "phi-3",
        "starcoder",
        "refact",
        "command-r",
    ] {
        paths.push(cache.join(format!("llama.cpp/models/ggml-vocab-{name}.gguf")));
    }
    paths
}

/// Every vocabulary of [`vocab_paths`], loaded once. A file that is missing or that
/// mcc rejects is left out (and named on stderr); none at all is a setup error.
pub fn vocabs() -> &'static [Vocab] {
    static VOCABS: OnceLock<Vec<Vocab>> = OnceLock::new();
    VOCABS.get_or_init(|| {
        let mut out = Vec::new();
        for path in vocab_paths() {
            let spec = GgufFile::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|g| {
                    mcc::describe::tokenizer::tokenizer_spec(&g).map_err(|e| e.to_string())
                });
            match spec.and_then(|s| {
                let tok = Tokenizer::from_spec(&s).map_err(|e| e.to_string())?;
                Ok((s, tok))
            }) {
                Ok((spec, tok)) => out.push(Vocab {
                    name: path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into(),
                    lossless: spec.model == "gpt2",
                    unencodable: (0..=255u8)
                        .filter(|&b| {
                            let c = mcc::synth::gpt2_byte_char(b).to_string();
                            tok.token_id(&c).is_none()
                        })
                        .collect(),
                    tok,
                }),
                Err(e) => eprintln!("fuzz: skipping vocabulary {}: {e}", path.display()),
            }
        }
        assert!(
            !out.is_empty(),
            "no vocabulary could be loaded; run scripts/fetch-models.sh"
        );
        out
    })
}

/// Encoding or decoding with a real vocabulary. Input: byte 0 picks the vocabulary,
/// byte 1 the mode (bit 0 add_special, bit 1 parse_special, bit 2 decode instead of
/// encode, bit 3 render specials when decoding); the rest is the text (lossily UTF-8)
/// or the ids (little-endian u32s, any value, inside the vocabulary or not).
pub fn tokenizer(data: &[u8]) {
    let [pick, mode, rest @ ..] = data else {
        return;
    };
    let vocabs = vocabs();
    let v = &vocabs[*pick as usize % vocabs.len()];
    let (add_special, parse_special) = (mode & 1 != 0, mode & 2 != 0);
    if mode & 4 != 0 {
        let ids: Vec<u32> = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        decode_checked(&v.tok, &ids, mode & 8 != 0);
        return;
    }
    let text = String::from_utf8_lossy(rest);
    let ids = v.tok.encode(&text, add_special, parse_special);
    let n = v.tok.n_vocab();
    assert!(
        ids.iter().all(|&id| (id as usize) < n),
        "{}: id outside the vocabulary of {n}",
        v.name
    );
    let back = decode_checked(&v.tok, &ids, true);
    if v.lossless && !add_special {
        let kept: Vec<u8> = text
            .bytes()
            .filter(|b| !v.unencodable.contains(b))
            .collect();
        assert_eq!(
            back,
            String::from_utf8_lossy(&kept),
            "{}: byte-level BPE round trip",
            v.name
        );
    }
}

/// `decode`, plus the per-id accessors on every id (any u32: they must not index out of
/// bounds for ids outside the vocabulary).
fn decode_checked(tok: &Tokenizer, ids: &[u32], special: bool) -> String {
    for &id in ids {
        let _ = (tok.token_text(id), tok.token_bytes(id), tok.token_attr(id));
        let _ = (tok.is_eog(id), tok.is_control(id));
    }
    tok.decode(ids, special)
}

/// A serialised tokenizer as the runtime reads it from a binary: any bytes give a
/// tokenizer or an error, and an accepted one encodes and decodes within its vocabulary.
pub fn tokenizer_blob(data: &[u8]) {
    let Ok(tok) = Tokenizer::from_vec(data.to_vec()) else {
        return;
    };
    let n = tok.n_vocab();
    // the input's own tail as text, so that mutations reach the encoder as well
    let tail = String::from_utf8_lossy(&data[data.len().saturating_sub(64)..]);
    for text in [SAMPLE, &tail] {
        for mode in 0..4 {
            let ids = tok.encode(text, mode & 1 != 0, mode & 2 != 0);
            assert!(ids.iter().all(|&id| (id as usize) < n), "id outside {n}");
            let _ = tok.decode(&ids, true);
        }
    }
    let ids: Vec<u32> = (0..n.min(4096) as u32)
        .chain([n as u32, u32::MAX])
        .collect();
    for special in [false, true] {
        decode_checked(&tok, &ids, special);
    }
    let _ = (tok.chat_template(), tok.token_id("a"), tok.n_symbols());
    let _ = (tok.bos(), tok.eos(), tok.eot(), tok.unk(), tok.pad());
}
