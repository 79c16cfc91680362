//! Tokenizers built from GGUF metadata: byte-level BPE (`gpt2` family, with the
//! pre-tokenizers GGUF names) and SentencePiece-style (`llama`).
//!
//! The compiler turns the file's `tokenizer.ggml.*` keys into a [`TokenizerSpec`],
//! serialises it into the binary, and the runtime rebuilds a [`Tokenizer`] from those
//! bytes at start-up.

/// Everything the runtime needs to rebuild the tokenizer, as read from the GGUF.
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
}
