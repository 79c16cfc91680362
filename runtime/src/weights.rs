//! Tensors baked into the binary: a type, a shape and a place in the weight blob.
//!
//! The emitted crate declares one `Weight` static per tensor. Everything about it is a
//! compile-time constant, so every kernel call is monomorphised for its tensor's type and
//! the only run-time value is the blob's address.

use std::marker::PhantomData;
use std::mem::size_of;

use crate::quant::{blocks_of, WeightType};

/// Alignment of every tensor in the blob: a cache line, and enough for any SIMD load.
pub const TENSOR_ALIGN: usize = 64;

/// A `ROWS x COLS` tensor of type `W` at byte `offset` of the weight blob, stored as
/// rows of `COLS / W::BLOCK_ELEMS` blocks (ggml's layout: dims `[COLS, ROWS]`), or for a
/// row-interleaved type as `ROWS / W::ROW_GROUP` groups of that many blocks.
/// Vectors (norm weights, rope factors) are `ROWS = 1`.
pub struct Weight<W: WeightType, const ROWS: usize, const COLS: usize> {
    offset: usize,
    _type: PhantomData<W>,
}

/// What a kernel needs to know about a tensor, so that ops can be generic over any
/// `Weight` without spelling out its shape parameters.
pub trait Tensor: Sync {
    type W: WeightType;
    const ROWS: usize;
    const COLS: usize;
    /// The tensor's blocks, row-major (group-major for a row-interleaved type).
    fn blocks<'a>(&self, blob: &'a [u8]) -> &'a [<Self::W as WeightType>::Block];
}

impl<W: WeightType, const ROWS: usize, const COLS: usize> Weight<W, ROWS, COLS> {
    /// Bytes the tensor occupies in the blob.
    pub const BYTES: usize = ROWS / W::ROW_GROUP * (COLS / W::BLOCK_ELEMS) * size_of::<W::Block>();

    /// Declares the tensor at `offset`. Evaluated at compile time in the emitted code, so
    /// a shape that is not whole blocks or a misaligned offset fails the build.
    pub const fn at(offset: usize) -> Self {
        assert!(
            COLS.is_multiple_of(W::BLOCK_ELEMS),
            "row length is not a whole number of blocks"
        );
        assert!(
            ROWS.is_multiple_of(W::ROW_GROUP),
            "row count is not a whole number of row groups"
        );
        assert!(
            offset.is_multiple_of(TENSOR_ALIGN),
            "tensor offset is not 64-byte aligned"
        );
        Weight {
            offset,
            _type: PhantomData,
        }
    }

    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// One past the tensor's last byte in the blob.
    pub const fn end(&self) -> usize {
        self.offset + Self::BYTES
    }

    /// Whether the tensor is `bytes` long (as the GGUF says) and ends at or before
    /// `limit`: the emitted code asserts this for every tensor at compile time.
    pub const fn fits(&self, bytes: usize, limit: usize) -> bool {
        Self::BYTES == bytes && self.end() <= limit
    }

    pub fn bytes<'a>(&self, blob: &'a [u8]) -> &'a [u8] {
        &blob[self.offset..self.end()]
    }
}

impl<W: WeightType, const ROWS: usize, const COLS: usize> Tensor for Weight<W, ROWS, COLS> {
    type W = W;
    const ROWS: usize = ROWS;
    const COLS: usize = COLS;

    #[inline]
    fn blocks<'a>(&self, blob: &'a [u8]) -> &'a [W::Block] {
        blocks_of::<W>(self.bytes(blob))
    }
}
