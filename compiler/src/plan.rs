//! Plan: where each tensor goes in the weight blob and which kernel reads it.
//!
//! The blob holds the tensors in a stable order (token embedding, then each layer's
//! tensors by role, then the output side), each starting on a 64-byte boundary. With no
//! repacking a tensor's bytes are exactly its GGUF bytes, so the emitted `weights.S`
//! pulls them straight from the GGUF with `.incbin file, skip, count`.

use crate::describe::ModelDesc;
use crate::gguf::{GgmlType, GgufFile};

/// Alignment of each tensor in the blob (must equal the runtime's `TENSOR_ALIGN`).
pub const TENSOR_ALIGN: u64 = 64;

/// One tensor's place in the emitted code and in the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTensor {
    /// GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Name of its static in the emitted code, e.g. `BLK0_ATTN_Q`.
    pub ident: String,
    pub ggml_type: GgmlType,
    pub rows: u64,
    pub cols: u64,
    /// Offset in the blob (64-byte aligned).
    pub offset: u64,
    pub n_bytes: u64,
    /// Absolute offset of the tensor's bytes in the GGUF file.
    pub file_offset: u64,
}

/// The blob layout of a whole model.
#[derive(Clone, Debug)]
pub struct Plan {
    pub tensors: Vec<PlannedTensor>,
    /// Blob length: the end of the last tensor, rounded up to the alignment.
    pub blob_len: u64,
}

impl Plan {
    pub fn get(&self, name: &str) -> &PlannedTensor {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("tensor {name} is not in the plan"))
    }
}

/// `blk.12.ffn_up.weight` -> `BLK12_FFN_UP`, `token_embd.weight` -> `TOKEN_EMBD`.
pub fn ident_of(name: &str) -> String {
    let base = name.strip_suffix(".weight").unwrap_or(name);
    let base = match base.strip_prefix("blk.") {
        Some(rest) => format!("blk{}", rest.replacen('.', "_", 1)),
        None => base.to_string(),
    };
    base.replace('.', "_").to_ascii_uppercase()
}

/// Lays out every tensor the forward pass uses, in emission order.
pub fn plan(desc: &ModelDesc, gguf: &GgufFile) -> Plan {
    let mut offset = 0u64;
    let tensors = desc
        .tensors()
        .into_iter()
        .map(|t| {
            let planned = PlannedTensor {
                name: t.name.clone(),
                ident: ident_of(&t.name),
                ggml_type: t.ggml_type,
                rows: t.n_rows(),
                cols: t.dims[0],
                offset,
                n_bytes: t.n_bytes,
                file_offset: gguf.data_offset + t.offset,
            };
            offset = (offset + t.n_bytes).next_multiple_of(TENSOR_ALIGN);
            planned
        })
        .collect();
    Plan {
        tensors,
        blob_len: offset,
    }
}

#[cfg(test)]
mod tests {
    use super::ident_of;

    #[test]
    fn idents_follow_the_gguf_names() {
        assert_eq!(ident_of("blk.0.attn_q.weight"), "BLK0_ATTN_Q");
        assert_eq!(ident_of("blk.31.ffn_down.weight"), "BLK31_FFN_DOWN");
        assert_eq!(ident_of("token_embd.weight"), "TOKEN_EMBD");
        assert_eq!(ident_of("rope_freqs.weight"), "ROPE_FREQS");
        assert_eq!(ident_of("output_norm.weight"), "OUTPUT_NORM");
    }
}
