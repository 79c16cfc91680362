//! (in progress)
pub mod tokenizer;
