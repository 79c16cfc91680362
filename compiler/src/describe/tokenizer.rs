//! (in progress) tokenizer.ggml.* metadata -> mcc_runtime::tokenizer::TokenizerSpec
