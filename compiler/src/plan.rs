//! Plan: where each tensor goes in the weight blob and which kernel reads it.
//!
//! The blob holds the tensors in a stable order (token embedding, then each layer's
//! tensors by role, then the output side), each starting on a 64-byte boundary. With no
//! repacking a tensor's bytes are exactly its GGUF bytes, so the emitted `weights.S`
//! pulls them straight from the GGUF with `.incbin file, skip, count`.
//!
//! For the CPU, Q4_K matrices that only ever multiply (the projections, and `output`
//! when it is its own tensor; never the token embedding, whose rows are looked up) are
//! repacked into the runtime's 8-row-interleaved `Q4_KX8`, whose decode kernel keeps one
//! row per vector lane. Their bytes come from `repacked.bin`, which the build writes
//! into the crate ([`Layout::Q4KX8`]). GPU builds keep every tensor as the GGUF has it:
//! their kernels read plain ggml blocks.

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
    /// How the blob holds the tensor.
    pub layout: Layout,
}

/// Where a tensor's blob bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The GGUF's bytes as they are.
    Gguf,
    /// Q4_K rows repacked 8 at a time into `Q4_KX8` blocks, at byte `offset` of
    /// `repacked.bin`.
    Q4KX8 { offset: u64 },
}

impl PlannedTensor {
    /// The runtime weight type's name: ggml's, or `Q4_KX8` for a repacked tensor.
    pub fn type_name(&self) -> &'static str {
        match self.layout {
            Layout::Gguf => self.ggml_type.name(),
            Layout::Q4KX8 { .. } => "Q4_KX8",
        }
    }

    /// The runtime module that defines the weight type (`q4_k`, `q4_k_x8`).
    pub fn type_module(&self) -> String {
        match self.layout {
            Layout::Gguf => self.ggml_type.name().to_ascii_lowercase(),
            Layout::Q4KX8 { .. } => "q4_k_x8".into(),
        }
    }

    /// Bytes of the tensor in the GGUF.
    pub fn gguf_bytes(&self) -> u64 {
        match self.layout {
            Layout::Gguf => self.n_bytes,
            Layout::Q4KX8 { .. } => self.rows * (self.cols / Q4K_ELEMS) * Q4K_BYTES,
        }
    }
}

/// Q4_K: weights and bytes per block.
const Q4K_ELEMS: u64 = 256;
const Q4K_BYTES: u64 = 144;
/// `Q4_KX8`: rows per group and bytes per block (8 rows × 256 columns).
pub const Q4KX8_ROWS: u64 = 8;
pub const Q4KX8_BYTES: u64 = 1184;

/// Whether the tensor `name` (of the given type and rows) is repacked to `Q4_KX8` on the
/// CPU: a Q4_K matrix whose only use is as a matmul weight, in whole groups of 8 rows.
fn repacks_to_q4kx8(name: &str, ggml_type: GgmlType, rows: u64, cols: u64) -> bool {
    let role = name.strip_suffix(".weight").unwrap_or(name);
    let role = role.rsplit('.').next().unwrap_or(role);
    let matmul_only = matches!(
        role,
        "attn_q" | "attn_k" | "attn_v" | "attn_output" | "ffn_gate" | "ffn_up" | "ffn_down"
    ) || name == "output.weight";
    matmul_only
        && ggml_type == GgmlType::Q4_K
        && rows.is_multiple_of(Q4KX8_ROWS)
        && cols.is_multiple_of(Q4K_ELEMS)
}

/// The blob layout of a whole model.
#[derive(Clone, Debug)]
pub struct Plan {
    pub tensors: Vec<PlannedTensor>,
    /// Blob length: the end of the last tensor, rounded up to the alignment.
    pub blob_len: u64,
    /// Length of `repacked.bin`: the repacked tensors one after another (0: none).
    pub repacked_len: u64,
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

/// Lays out every tensor the forward pass uses, in emission order, for the CPU (Q4_K
/// matrices repacked).
pub fn plan(desc: &ModelDesc, gguf: &GgufFile) -> Plan {
    plan_for(desc, gguf, true)
}

/// Lays out every tensor the forward pass uses, in emission order; `repack`: whether
/// Q4_K matrices become `Q4_KX8` (the CPU build; not with GPU kernels).
pub fn plan_for(desc: &ModelDesc, gguf: &GgufFile, repack: bool) -> Plan {
    let mut offset = 0u64;
    let mut repacked = 0u64;
    let tensors = desc
        .tensors()
        .into_iter()
        .map(|t| {
            let (rows, cols) = (t.n_rows(), t.dims[0]);
            let (layout, n_bytes) = if repack && repacks_to_q4kx8(&t.name, t.ggml_type, rows, cols)
            {
                let n_bytes = rows / Q4KX8_ROWS * (cols / Q4K_ELEMS) * Q4KX8_BYTES;
                let layout = Layout::Q4KX8 { offset: repacked };
                repacked += n_bytes;
                (layout, n_bytes)
            } else {
                (Layout::Gguf, t.n_bytes)
            };
            let planned = PlannedTensor {
                name: t.name.clone(),
                ident: ident_of(&t.name),
                ggml_type: t.ggml_type,
                rows,
                cols,
                offset,
                n_bytes,
                file_offset: gguf.data_offset + t.offset,
                layout,
            };
            offset = (offset + n_bytes).next_multiple_of(TENSOR_ALIGN);
            planned
        })
        .collect();
    Plan {
        tensors,
        blob_len: offset,
        repacked_len: repacked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_matmul_only_q4_k_matrices_repack() {
        let q4k = GgmlType::Q4_K;
        assert!(repacks_to_q4kx8("blk.3.ffn_down.weight", q4k, 3072, 9216));
        assert!(repacks_to_q4kx8("blk.0.attn_k.weight", q4k, 1024, 3072));
        assert!(repacks_to_q4kx8("output.weight", q4k, 128256, 3072));
        assert!(!repacks_to_q4kx8("token_embd.weight", q4k, 128256, 3072));
        assert!(!repacks_to_q4kx8("blk.0.attn_k.weight", q4k, 1020, 3072));
        assert!(!repacks_to_q4kx8(
            "blk.0.attn_k.weight",
            GgmlType::Q6_K,
            1024,
            3072
        ));
        assert!(!repacks_to_q4kx8("blk.0.attn_norm.weight", q4k, 1, 3072));
    }

    #[test]
    fn idents_follow_the_gguf_names() {
        assert_eq!(ident_of("blk.0.attn_q.weight"), "BLK0_ATTN_Q");
        assert_eq!(ident_of("blk.31.ffn_down.weight"), "BLK31_FFN_DOWN");
        assert_eq!(ident_of("token_embd.weight"), "TOKEN_EMBD");
        assert_eq!(ident_of("rope_freqs.weight"), "ROPE_FREQS");
        assert_eq!(ident_of("output_norm.weight"), "OUTPUT_NORM");
    }
}
