//! mcc: the ahead-of-time model compiler.
//!
//! Stages, one module each: `gguf` (parse and validate the file), `describe` (llama
//! config, tensor roles and tokenizer from the metadata), `plan` (kernel and blob layout
//! per tensor), `emit` (the generated crate's sources) and `build` (cargo, progress, the
//! final binary). `inspect` and `synth` are tools over the same stages; `ppl_table`
//! builds several files and tabulates their perplexity; `quantize` rewrites a model in
//! another file type, as llama.cpp's llama-quantize does; `convert` reads a Hugging Face
//! checkpoint; `source` is what those and `build` share: a model read tensor by tensor.

pub mod build;
pub mod convert;
pub mod describe;
pub mod emit;
pub mod gguf;
pub mod gpu;
pub mod imatrix;
pub mod inspect;
pub mod ladder;
pub mod plan;
pub mod ppl_table;
pub mod quantize;
pub mod runtime_copy;
pub mod source;
pub mod synth;
