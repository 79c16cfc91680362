//! Plan: where each tensor goes in the weight blob and which kernel reads it.
//!
//! The blob holds the tensors in a stable order (token embedding, then each layer's
//! tensors by role, then the output side), each starting on a 64-byte boundary. With no
//! repacking a tensor's bytes are exactly its GGUF bytes, so the emitted `weights.S`
//! pulls them straight from the GGUF with `.incbin file, skip, count`.
//!
//! For the CPU, Q4_K, Q4_0, IQ4_NL, IQ4_XS and Q6_K matrices that only ever multiply (the
//! projections, and `output` when it is its own tensor; never the token embedding, whose
//! rows are looked up) are repacked into the runtime's 8-row-interleaved formats
//! ([`Repack`]), whose kernels keep one row per vector lane. Their bytes come from
//! `weights.bin`, which the build writes into the crate ([`Layout::Written`]). GPU
//! builds keep every tensor as the GGUF has it: their kernels read plain ggml blocks.
//!
//! A model that is not a file on disk (a checkpoint, or a model quantized while it is
//! built: [`crate::source`]) has every tensor in `weights.bin`.

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
    /// Absolute offset of the tensor's bytes in the GGUF file (for [`Layout::Gguf`]).
    pub file_offset: u64,
    /// How the blob holds the tensor.
    pub layout: Layout,
}

/// Where a tensor's blob bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The GGUF file's bytes as they are.
    Gguf,
    /// The tensor's bytes written by the build at byte `offset` of `weights.bin`: its
    /// rows repacked 8 at a time into `repack`, or (none) as they are.
    Written { offset: u64, repack: Option<Repack> },
}

/// A runtime format with 8 rows interleaved that the CPU build repacks the matrices of
/// one ggml type into (see the runtime's `quant::q4_k_x8`, `quant::q4_x8`,
/// `quant::iq4_xs_x8` and `quant::q6_k_x8`): every row's dot is bit for bit the plain
/// format's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repack {
    Q4KX8,
    Q4_0X8,
    IQ4NLX8,
    IQ4XSX8,
    Q6KX8,
}

impl Repack {
    /// Rows per group of every interleaved format.
    pub const ROWS: u64 = 8;

    /// The interleaved format of a ggml type, if it has one.
    pub fn of(t: GgmlType) -> Option<Repack> {
        match t {
            GgmlType::Q4_K => Some(Repack::Q4KX8),
            GgmlType::Q4_0 => Some(Repack::Q4_0X8),
            GgmlType::IQ4_NL => Some(Repack::IQ4NLX8),
            GgmlType::IQ4_XS => Some(Repack::IQ4XSX8),
            GgmlType::Q6_K => Some(Repack::Q6KX8),
            _ => None,
        }
    }

    /// The plain ggml type it is made from.
    pub fn source(self) -> GgmlType {
        match self {
            Repack::Q4KX8 => GgmlType::Q4_K,
            Repack::Q4_0X8 => GgmlType::Q4_0,
            Repack::IQ4NLX8 => GgmlType::IQ4_NL,
            Repack::IQ4XSX8 => GgmlType::IQ4_XS,
            Repack::Q6KX8 => GgmlType::Q6_K,
        }
    }

    /// The runtime weight type's name.
    pub fn name(self) -> &'static str {
        match self {
            Repack::Q4KX8 => "Q4_KX8",
            Repack::Q4_0X8 => "Q4_0X8",
            Repack::IQ4NLX8 => "IQ4_NLX8",
            Repack::IQ4XSX8 => "IQ4_XSX8",
            Repack::Q6KX8 => "Q6_KX8",
        }
    }

    /// The runtime module that defines it.
    pub fn module(self) -> &'static str {
        match self {
            Repack::Q4KX8 => "q4_k_x8",
            Repack::Q4_0X8 | Repack::IQ4NLX8 => "q4_x8",
            Repack::IQ4XSX8 => "iq4_xs_x8",
            Repack::Q6KX8 => "q6_k_x8",
        }
    }

    /// Bytes of a `rows` × `cols` matrix: a block covers 8 rows of the source's block
    /// width.
    pub fn n_bytes(self, rows: u64, cols: u64) -> u64 {
        let src = self.source();
        let block = match self {
            // the 8 rows' bytes, rearranged
            Repack::Q4KX8 | Repack::Q4_0X8 | Repack::IQ4NLX8 | Repack::Q6KX8 => {
                Self::ROWS * src.block_bytes()
            }
            // 8 rows' f16 d and unpacked i8 sub-block scales, then their quants
            Repack::IQ4XSX8 => 1104,
        };
        rows / Self::ROWS * (cols / src.block_elems()) * block
    }

    /// Repacks the GGUF bytes of a matrix of `cols` columns (whole groups of 8 rows),
    /// handing the result to `write` group by group; returns `write`'s first error.
    pub fn repack<E>(
        self,
        src: &[u8],
        cols: u64,
        write: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        use mcc_runtime::quant::{iq4_nl::IQ4_NL, iq4_xs_x8, q4_0::Q4_0, q4_k_x8, q4_x8, q6_k_x8};
        match self {
            Repack::Q4KX8 => q4_k_x8::repack_q4_k_bytes(src, cols as usize, write),
            Repack::Q4_0X8 => q4_x8::repack_bytes::<Q4_0, _>(src, cols as usize, write),
            Repack::IQ4NLX8 => q4_x8::repack_bytes::<IQ4_NL, _>(src, cols as usize, write),
            Repack::IQ4XSX8 => iq4_xs_x8::repack_iq4_xs_bytes(src, cols as usize, write),
            Repack::Q6KX8 => q6_k_x8::repack_q6_k_bytes(src, cols as usize, write),
        }
    }
}

impl PlannedTensor {
    /// The interleaved format the tensor is repacked into, if any.
    pub fn repack(&self) -> Option<Repack> {
        match self.layout {
            Layout::Gguf => None,
            Layout::Written { repack, .. } => repack,
        }
    }

    /// The runtime weight type's name: ggml's, or the interleaved format's.
    pub fn type_name(&self) -> &'static str {
        match self.repack() {
            None => self.ggml_type.name(),
            Some(to) => to.name(),
        }
    }

    /// The runtime module that defines the weight type (`q4_k`, `q4_k_x8`).
    pub fn type_module(&self) -> String {
        match self.repack() {
            None => self.ggml_type.name().to_ascii_lowercase(),
            Some(to) => to.module().into(),
        }
    }

    /// Bytes of the tensor in the GGUF.
    pub fn gguf_bytes(&self) -> u64 {
        self.rows * (self.cols / self.ggml_type.block_elems()) * self.ggml_type.block_bytes()
    }
}

/// What the tensor `name` (of the given type and shape) is repacked into on the CPU, if
/// anything: a matrix of a type with an interleaved format whose only use is as a matmul
/// weight, in whole groups of 8 rows. A Q6_K `output` stays Q6_K: Q6_KX8 is there for
/// the prompt batches' GEMM, which `output` never takes (only the last token's logits
/// are computed), and its one-token kernel is not faster than Q6_K's from memory.
fn repack_of(name: &str, ggml_type: GgmlType, rows: u64, cols: u64) -> Option<Repack> {
    let role = name.strip_suffix(".weight").unwrap_or(name);
    let role = role.rsplit('.').next().unwrap_or(role);
    let output = name == "output.weight";
    let matmul_only = matches!(
        role,
        "attn_q" | "attn_k" | "attn_v" | "attn_output" | "ffn_gate" | "ffn_up" | "ffn_down"
    ) || output;
    Repack::of(ggml_type).filter(|&to| {
        matmul_only
            && !(output && to == Repack::Q6KX8)
            && rows.is_multiple_of(Repack::ROWS)
            && cols.is_multiple_of(ggml_type.block_elems())
    })
}

/// The blob layout of a whole model.
#[derive(Clone, Debug)]
pub struct Plan {
    pub tensors: Vec<PlannedTensor>,
    /// Blob length: the end of the last tensor, rounded up to the alignment.
    pub blob_len: u64,
    /// Length of `weights.bin`: the written tensors one after another (0: none).
    pub written_len: u64,
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

/// Lays out every tensor the forward pass uses, in emission order, for the CPU (matrices
/// repacked where they can be), from a GGUF file on disk.
pub fn plan(desc: &ModelDesc, gguf: &GgufFile) -> Plan {
    plan_for(desc, gguf, true, true)
}

/// Lays out every tensor the forward pass uses, in emission order; `repack`: whether
/// matrices become their interleaved formats (the CPU build; not with GPU kernels);
/// `in_file`: whether `gguf` is a file on disk that holds the bytes (else every tensor
/// is written by the build).
pub fn plan_for(desc: &ModelDesc, gguf: &GgufFile, repack: bool, in_file: bool) -> Plan {
    let mut offset = 0u64;
    let mut written = 0u64;
    let tensors = desc
        .tensors()
        .into_iter()
        .map(|t| {
            let (rows, cols) = (t.n_rows(), t.dims[0]);
            let to = repack_of(&t.name, t.ggml_type, rows, cols).filter(|_| repack);
            let (layout, n_bytes) = if to.is_none() && in_file {
                (Layout::Gguf, t.n_bytes)
            } else {
                let n_bytes = to.map_or(t.n_bytes, |to| to.n_bytes(rows, cols));
                let layout = Layout::Written {
                    offset: written,
                    repack: to,
                };
                written += n_bytes;
                (layout, n_bytes)
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
        written_len: written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_matmul_only_matrices_of_interleavable_types_repack() {
        let q4k = GgmlType::Q4_K;
        let x8 = Some(Repack::Q4KX8);
        assert_eq!(repack_of("blk.3.ffn_down.weight", q4k, 3072, 9216), x8);
        assert_eq!(repack_of("blk.0.attn_k.weight", q4k, 1024, 3072), x8);
        assert_eq!(repack_of("output.weight", q4k, 128256, 3072), x8);
        assert_eq!(repack_of("token_embd.weight", q4k, 128256, 3072), None);
        assert_eq!(repack_of("blk.0.attn_k.weight", q4k, 1020, 3072), None);
        assert_eq!(repack_of("blk.0.attn_norm.weight", q4k, 1, 3072), None);
        let k = "blk.0.attn_k.weight";
        assert_eq!(
            repack_of(k, GgmlType::Q6_K, 1024, 3072),
            Some(Repack::Q6KX8)
        );
        assert_eq!(
            repack_of("output.weight", GgmlType::Q6_K, 128256, 3072),
            None
        );
        assert_eq!(
            repack_of("token_embd.weight", GgmlType::Q6_K, 128256, 3072),
            None
        );
        assert_eq!(repack_of(k, GgmlType::Q5_K, 1024, 3072), None);
        assert_eq!(repack_of(k, GgmlType::Q4_0, 64, 576), Some(Repack::Q4_0X8));
        assert_eq!(
            repack_of(k, GgmlType::IQ4_NL, 64, 576),
            Some(Repack::IQ4NLX8)
        );
        assert_eq!(
            repack_of(k, GgmlType::IQ4_XS, 1024, 3072),
            Some(Repack::IQ4XSX8)
        );
        assert_eq!(
            repack_of("token_embd.weight", GgmlType::IQ4_XS, 1024, 3072),
            None
        );
        // Q4_0 blocks are 32 wide: 576 columns are whole blocks, not whole Q4_K ones
        assert_eq!(repack_of(k, q4k, 64, 576), None);
        assert_eq!(repack_of(k, GgmlType::IQ4_XS, 64, 576), None);
    }

    #[test]
    fn repacked_sizes() {
        // Q4_K: 8 × 144 bytes per 8 rows of 256; Q4_0 / IQ4_NL: 8 × 18 bytes per 8 rows of 32;
        // IQ4_XS: 1104 bytes per 8 rows of 256; Q6_K: 8 × 210 bytes per 8 rows of 256
        assert_eq!(Repack::Q4KX8.n_bytes(16, 512), 2 * 2 * 1152);
        assert_eq!(Repack::Q6KX8.n_bytes(16, 512), 2 * 2 * 1680);
        assert_eq!(Repack::Q4_0X8.n_bytes(16, 576), 2 * 18 * 144);
        assert_eq!(Repack::IQ4XSX8.n_bytes(16, 512), 2 * 2 * 1104);
        for r in [
            Repack::Q4KX8,
            Repack::Q4_0X8,
            Repack::IQ4NLX8,
            Repack::IQ4XSX8,
            Repack::Q6KX8,
        ] {
            assert_eq!(Repack::of(r.source()), Some(r));
        }
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
