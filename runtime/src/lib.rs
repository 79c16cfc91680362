//! mcc-runtime: everything a compiled model needs that does not depend on the model.
//!
//! The generated crate owns the specifics (shapes, tensor types, offsets, call order);
//! this crate owns the generic machinery: quantized kernels, forward-pass ops, the
//! thread pool, tokenizer, sampler and the command line of the emitted binary.
//! Nothing here may look up a tensor's type at run time: callers are monomorphised.

pub mod chat_template;
pub mod cli;
pub mod float16;
pub mod gpu;
pub mod imatrix;
pub mod matmul;
pub mod model;
pub mod ops;
pub mod perplexity;
pub mod pool;
pub mod quant;
pub mod sampler;
pub mod serve;
pub mod stop;
pub mod tier;
pub mod tokenizer;
#[cfg(test)]
pub(crate) mod toy;
pub mod weights;
