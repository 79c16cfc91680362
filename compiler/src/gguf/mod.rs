//! GGUF reader: memory-maps a file, parses its header, metadata and tensor infos, and
//! checks every count, length, offset and size against the file before trusting it.
//!
//! Layout (v2/v3, little-endian; v3 differs from v2 only in allowing big-endian files,
//! which mcc rejects):
//!
//! ```text
//! "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv × (key: string, type: u32, value)         string = len u64 + UTF-8 bytes
//!                                                array  = elem type u32 + len u64 + items
//! n_tensors × (name: string, n_dims u32, dims n_dims × u64, type u32, offset u64)
//! padding to `general.alignment` (default 32)    <- data_offset
//! tensor data; each tensor at data_offset + offset, offset a multiple of the alignment
//! ```
//!
//! This module owns parsing and validation only; what the tensors mean is `describe`'s.
//! Nothing here panics on bad input: every failure is a [`GgufError`] naming the file,
//! the field (key or tensor) and what was found against what was expected.

mod types;
pub mod writer;

pub use types::{Array, GgmlType, Value, ValueType};

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The file's first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Deepest nesting of arrays inside arrays accepted (real files use 1).
pub const MAX_ARRAY_DEPTH: usize = 64;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Most array items all metadata values may hold together. Each item becomes a
/// [`Value`] of 32 bytes, so a hostile file of billions of one-byte items could ask for
/// many times its size in memory; real files hold ~1M (a 256K vocabulary with merges,
/// types and scores), so 16M rejects nothing real.
pub const MAX_ARRAY_ITEMS: u64 = 1 << 24;

/// Why a file was rejected. Every variant names the file; the `what` fields name the
/// key, tensor or header field concerned.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot read: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: not a GGUF file: magic is {found:?}, expected \"GGUF\"", path.display())]
    BadMagic { path: PathBuf, found: String },
    #[error("{}: unsupported GGUF version {found}, expected 2 or 3{hint}", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        hint: &'static str,
    },
    #[error(
        "{}: truncated: {what} needs {need} bytes at offset {offset}, file has {len} bytes",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        need: u64,
        len: u64,
    },
    #[error("{}: {what}: found {found}, expected {expected}", path.display())]
    Invalid {
        path: PathBuf,
        what: String,
        found: String,
        expected: String,
    },
}

/// One tensor's entry in the header. Offsets and sizes have been checked against the
/// file by [`GgufFile::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in ggml order: `dims[0]` is the contiguous row length (a matrix with
    /// `dims = [n_in, n_out]` has `n_out` rows of `n_in` elements).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the tensor's first byte, relative to the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Bytes per row of `dims[0]` elements.
    pub fn row_bytes(&self) -> u64 {
        let first = self.dims.first().copied().unwrap_or(1);
        first / self.ggml_type.block_elems() * self.ggml_type.block_bytes()
    }

    /// Number of rows: the product of `dims[1..]`.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

enum Backing {
    Map(Mmap),
    Heap(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Heap(v) => v,
        }
    }
}

/// A parsed, validated GGUF file, its bytes memory-mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    /// Every key/value pair, in file order.
    pub metadata: Vec<(String, Value)>,
    /// Every tensor info, in file order.
    pub tensors: Vec<TensorInfo>,
    backing: Backing,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("file_len", &self.file_len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |err| GgufError::Io {
            path: path.to_path_buf(),
            err,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let backing = if len == 0 {
            // Mapping zero bytes fails on some systems; there is nothing to map anyway.
            Backing::Heap(Vec::new())
        } else {
            // SAFETY: the map is read-only. Like every tool that maps model files, we
            // assume nobody truncates or rewrites the file while it is open; all
            // offsets are checked against the length seen at open time.
            Backing::Map(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        GgufFile::parse(path.to_path_buf(), backing)
    }

    /// A header without a file: metadata and tensor infos (offsets relative to a data
    /// section that starts at `data_offset`) of a model whose tensors are made on demand
    /// ([`crate::source::ModelSource`]). `tensor_data` gives empty slices; `path` is
    /// used in messages only.
    pub fn header_only(
        path: impl Into<PathBuf>,
        alignment: u64,
        data_offset: u64,
        metadata: Vec<(String, Value)>,
        tensors: Vec<TensorInfo>,
    ) -> GgufFile {
        let key_index = metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        GgufFile {
            path: path.into(),
            version: 3,
            alignment,
            data_offset,
            metadata,
            tensors,
            backing: Backing::Heap(Vec::new()),
            key_index,
            tensor_index,
        }
    }

    /// Parses a file image held in memory; `path` is used in messages only.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::parse(path.into(), Backing::Heap(bytes))
    }

    fn parse(path: PathBuf, backing: Backing) -> Result<GgufFile, GgufError> {
        let header = Parser {
            path: &path,
            buf: backing.bytes(),
            pos: 0,
            items_left: MAX_ARRAY_ITEMS,
        }
        .parse()?;
        Ok(GgufFile {
            path,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            tensors: header.tensors,
            backing,
            key_index: header.key_index,
            tensor_index: header.tensor_index,
        })
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The index in [`GgufFile::tensors`] of the tensor named `name`.
    pub fn tensor_position(&self, name: &str) -> Option<usize> {
        self.tensor_index.get(name).copied()
    }

    /// The bytes of tensor `t` (one of this file's tensors; an info from another file
    /// whose range does not fit this one gets an empty slice).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = || -> Option<std::ops::Range<usize>> {
            let start = usize::try_from(self.data_offset.checked_add(t.offset)?).ok()?;
            let end = start.checked_add(usize::try_from(t.n_bytes).ok()?)?;
            Some(start..end)
        };
        range()
            .and_then(|r| self.backing.bytes().get(r))
            .unwrap_or(&[])
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// The whole file image.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

/// A bounds-checked little-endian cursor over the file image.
struct Parser<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
    /// Array items still allowed before [`MAX_ARRAY_ITEMS`] is reached.
    items_left: u64,
}

impl<'a> Parser<'a> {
    fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn truncated(&self, what: String, need: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what,
            offset: self.pos as u64,
            need,
            len: self.len(),
        }
    }

    fn invalid(&self, what: String, found: impl ToString, expected: impl ToString) -> GgufError {
        GgufError::Invalid {
            path: self.path.to_path_buf(),
            what,
            found: found.to_string(),
            expected: expected.to_string(),
        }
    }

    /// Takes `n` bytes; `what` describes them if they are not there.
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.truncated(what(), n));
        }
        let start = self.pos;
        self.pos += n as usize; // n <= remaining, which is a usize
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("{} (string length)", what()))?;
        let bytes = self.take(len, &|| format!("{} (string of {len} bytes)", what()))?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.invalid(
                what(),
                format!("invalid UTF-8 at byte {} of the string", e.valid_up_to()),
                "a UTF-8 string",
            )),
        }
    }

    /// Reads a count of items that each take at least `min_item` bytes, rejecting a
    /// count the rest of the file cannot hold (before anything is allocated for it).
    fn count(&mut self, min_item: u64, what: &dyn Fn() -> String) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        let fits = self.remaining() / min_item.max(1);
        if n > fits {
            return Err(self.invalid(
                what(),
                n,
                format!(
                    "at most {fits} (each takes at least {min_item} bytes and {} bytes are left)",
                    self.remaining()
                ),
            ));
        }
        // n <= remaining bytes, so it fits in usize.
        Ok(n as usize)
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<ValueType, GgufError> {
        let id = self.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| {
            self.invalid(
                what(),
                format!("type id {id}"),
                "a GGUF value type id 0..=12",
            )
        })
    }

    fn value(
        &mut self,
        ty: ValueType,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let b = self.array::<1>(what)?[0];
                match b {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    _ => return Err(self.invalid(what(), format!("bool byte {b}"), "0 or 1")),
                }
            }
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    // name the key, not the 64 enclosing "item 0 of 1" steps to it
                    let path = what();
                    let key = path.split(" item ").next().unwrap_or(&path);
                    return Err(self.invalid(
                        key.to_string(),
                        format!("arrays nested {} deep", depth + 1),
                        format!("at most {MAX_ARRAY_DEPTH} levels"),
                    ));
                }
                let elem_type = self.value_type(&|| format!("{} (array element type)", what()))?;
                let n = self.count(elem_type.min_encoded_len(), &|| {
                    format!("{} (array length, {elem_type} items)", what())
                })?;
                if n as u64 > self.items_left {
                    return Err(self.invalid(
                        format!("{} (array length)", what()),
                        n,
                        format!(
                            "at most {} more items (all metadata arrays together hold at most {MAX_ARRAY_ITEMS})",
                            self.items_left
                        ),
                    ));
                }
                self.items_left -= n as u64;
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    items.push(self.value(elem_type, depth + 1, &|| {
                        format!("{} item {i} of {n}", what())
                    })?);
                }
                Value::Array(Array { elem_type, items })
            }
        })
    }

    fn parse(mut self) -> Result<Header, GgufError> {
        let path = self.path;
        let magic = self.array::<4>(&|| "magic".into())?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(&magic).into_owned(),
            });
        }
        let version = self.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            let hint = match version {
                1 => " (GGUF v1 used 32-bit counts; re-convert the model with a current llama.cpp)",
                v if matches!(v.swap_bytes(), 2 | 3) => {
                    " (this is a big-endian GGUF; mcc reads little-endian files only)"
                }
                _ => "",
            };
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                hint,
            });
        }

        // A tensor info takes at least 8 (name len) + 4 (n_dims) + 4 (type) + 8
        // (offset) bytes; a key/value pair at least 8 (key len) + 4 (type) + 1.
        let n_tensors = self.u64(&|| "tensor count".into())?;
        let n_kv = self.u64(&|| "metadata key/value count".into())?;
        let left = self.remaining();
        if n_kv > left / 13 {
            return Err(self.invalid(
                "metadata key/value count".into(),
                n_kv,
                format!("at most {} for the {left} bytes left", left / 13),
            ));
        }
        if n_tensors > left / 24 {
            return Err(self.invalid(
                "tensor count".into(),
                n_tensors,
                format!("at most {} for the {left} bytes left", left / 24),
            ));
        }
        let (n_kv, n_tensors) = (n_kv as usize, n_tensors as usize);

        let mut metadata = Vec::with_capacity(n_kv);
        let mut key_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = self.string(&|| format!("metadata key #{i}"))?;
            let ty = self.value_type(&|| format!("type of metadata key `{key}`"))?;
            let value = self.value(ty, 0, &|| format!("metadata key `{key}`"))?;
            if key_index.insert(key.clone(), i).is_some() {
                return Err(self.invalid(
                    format!("metadata key `{key}`"),
                    "a second occurrence",
                    "each key once",
                ));
            }
            metadata.push((key, value));
        }

        let alignment = match key_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let v = &metadata[i].1;
                match v.as_u64() {
                    Some(a) if a.is_power_of_two() => a,
                    _ => {
                        return Err(self.invalid(
                            "metadata key `general.alignment`".into(),
                            format!("{} {}", v.type_name(), v.brief()),
                            "a power of two",
                        ))
                    }
                }
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let t = self.tensor_info(i, alignment)?;
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(self.invalid(
                    format!("tensor `{}`", t.name),
                    "a second tensor with this name",
                    "unique tensor names",
                ));
            }
            tensors.push(t);
        }

        let infos_end = self.pos as u64;
        let data_offset = infos_end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| self.invalid("data section offset".into(), "overflow", "< 2^64"))?;
        if !tensors.is_empty() && data_offset > self.len() {
            return Err(GgufError::Truncated {
                path: path.to_path_buf(),
                what: "data section".into(),
                offset: infos_end,
                need: data_offset - infos_end,
                len: self.len(),
            });
        }
        self.check_ranges(&tensors, data_offset)?;

        Ok(Header {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            key_index,
            tensor_index,
        })
    }

    fn tensor_info(&mut self, i: usize, alignment: u64) -> Result<TensorInfo, GgufError> {
        let name = self.string(&|| format!("name of tensor #{i}"))?;
        let what = || format!("tensor `{name}`");
        let n_dims = self.u32(&|| format!("{} (n_dims)", what()))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(self.invalid(
                format!("{} n_dims", what()),
                n_dims,
                format!("1..={MAX_DIMS}"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let ne = self.u64(&|| format!("{} dims[{d}]", what()))?;
            if ne == 0 {
                return Err(self.invalid(format!("{} dims[{d}]", what()), 0, ">= 1"));
            }
            dims.push(ne);
        }
        let type_id = self.u32(&|| format!("{} type", what()))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            self.invalid(
                format!("{} type", what()),
                format!("ggml type id {type_id}"),
                "a supported type (F32, F16, BF16, Q4_0..Q8_0, Q2_K..Q6_K, IQ*)",
            )
        })?;
        let offset = self.u64(&|| format!("{} offset", what()))?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                self.invalid(
                    format!("{} dims", what()),
                    format!("{dims:?}"),
                    "an element count below 2^64",
                )
            })?;
        let blk = ggml_type.block_elems();
        if dims[0] % blk != 0 {
            return Err(self.invalid(
                format!("{} row length dims[0]", what()),
                dims[0],
                format!("a multiple of {blk} (the {ggml_type} block size)"),
            ));
        }
        let n_bytes = (n_elements / blk)
            .checked_mul(ggml_type.block_bytes())
            .ok_or_else(|| {
                self.invalid(
                    format!("{} byte size", what()),
                    format!("{dims:?} of {ggml_type}"),
                    "a size below 2^64",
                )
            })?;
        if offset % alignment != 0 {
            return Err(self.invalid(
                format!("{} offset", what()),
                offset,
                format!("a multiple of the alignment {alignment}"),
            ));
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_elements,
            n_bytes,
        })
    }

    /// Every tensor inside the file, and no two overlapping.
    fn check_ranges(&self, tensors: &[TensorInfo], data_offset: u64) -> Result<(), GgufError> {
        let data_len = self.len().saturating_sub(data_offset);
        for t in tensors {
            let end = t.offset.checked_add(t.n_bytes);
            if end.is_none_or(|e| e > data_len) {
                return Err(self.invalid(
                    format!("tensor `{}` data range", t.name),
                    format!(
                        "bytes {}..{} of the data section",
                        t.offset,
                        end.map_or("overflow".to_string(), |e| e.to_string())
                    ),
                    format!("within its {data_len} bytes (file length {})", self.len()),
                ));
            }
        }
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for pair in order.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.offset + a.n_bytes > b.offset {
                return Err(self.invalid(
                    format!("tensor `{}` data range", b.name),
                    format!(
                        "starts at {} inside `{}` ({}..{})",
                        b.offset,
                        a.name,
                        a.offset,
                        a.offset + a.n_bytes
                    ),
                    "tensors that do not overlap",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
