//! A model as mcc's commands consume it: the GGUF it is or would be (metadata and
//! tensor infos), and each tensor's bytes on demand.
//!
//! Three kinds, which chain: a GGUF file on disk ([`GgufFile`], its mapped bytes), a
//! Hugging Face checkpoint converted tensor by tensor ([`crate::convert::Converted`]),
//! and a model quantized tensor by tensor from another source
//! ([`crate::quantize::Quantized`]). `mcc convert` and `mcc quantize` write a source to
//! a GGUF file; `mcc build` compiles one, so a checkpoint or an F16 file becomes a
//! quantized executable with no intermediate GGUF on disk.

use std::borrow::Cow;
use std::path::Path;

use anyhow::Context;

use crate::gguf::writer::{GgufWriter, Layout, WriteError, WriteMode};
use crate::gguf::{GgufFile, TensorInfo};

/// A model whose tensors can be read one at a time.
pub trait ModelSource: Sync {
    /// The model's header: metadata, and tensor infos with the offsets its GGUF file
    /// has (or would have).
    fn header(&self) -> &GgufFile;

    /// The bytes of tensor `i` of [`ModelSource::header`], as its GGUF file holds them.
    fn tensor_bytes(&self, i: usize) -> anyhow::Result<Cow<'_, [u8]>>;

    /// What the bytes are made from (paths, sizes, modification times, options): equal
    /// identities give equal bytes. `mcc build` keeps what it wrote while this holds.
    fn identity(&self) -> anyhow::Result<String>;

    /// Whether the header is a GGUF file on disk that holds the bytes, at
    /// `data_offset + offset` of each tensor.
    fn is_file(&self) -> bool {
        false
    }
}

impl ModelSource for GgufFile {
    fn header(&self) -> &GgufFile {
        self
    }

    fn tensor_bytes(&self, i: usize) -> anyhow::Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.tensor_data(&self.tensors[i])))
    }

    fn identity(&self) -> anyhow::Result<String> {
        file_identity(&self.path)
    }

    fn is_file(&self) -> bool {
        true
    }
}

/// Opens `path`: a directory is a Hugging Face checkpoint (converted as `mcc convert
/// --outtype auto` converts it), anything else a GGUF file.
pub fn open(path: &Path) -> anyhow::Result<Box<dyn ModelSource>> {
    if path.is_dir() {
        let converted = crate::convert::Converted::open(path, crate::convert::OutTypeArg::Auto)?;
        Ok(Box::new(converted))
    } else {
        Ok(Box::new(GgufFile::open(path)?))
    }
}

/// `path (N bytes, modified T ns)`: a file's identity for [`ModelSource::identity`].
pub fn file_identity(path: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!(
        "{} ({} bytes, modified {mtime} ns)",
        path.display(),
        meta.len()
    ))
}

/// Writes `source` to `path` with `writer`, the writer that made its header (every
/// tensor streamed, in the header's order); nothing is left at `path`
/// on failure.
pub fn write(
    source: &dyn ModelSource,
    writer: &GgufWriter,
    path: &Path,
) -> Result<Layout, WriteError> {
    let mut produce = |i: usize, info: &TensorInfo| -> Result<Vec<u8>, WriteError> {
        source
            .tensor_bytes(i)
            .map(Cow::into_owned)
            .map_err(|e| WriteError::Source {
                tensor: info.name.clone(),
                why: format!("{e:#}"),
            })
    };
    writer.write_streamed(path, WriteMode::Full, &mut produce)
}
