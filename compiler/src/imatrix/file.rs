//! Importance matrices as llama-imatrix writes them, in its two formats, reduced to what
//! the quantizers take: per tensor, one importance per column (per expert, for 3-d
//! expert tensors), the mean of the squared activations that column met.
//!
//! **GGUF** (the current format): metadata `imatrix.datasets` (array of strings, the
//! calibration files), `imatrix.chunk_count` and `imatrix.chunk_size` (u32), and per
//! weight tensor `W` two F32 tensors: `W.in_sum2` (`[n_cols, n_mat]`, sums of squared
//! activations) and `W.counts` (`[1, n_mat]`, how many activations each matrix saw).
//! The importance is `in_sum2 / round(count)`, or 1 where a matrix saw nothing.
//!
//! **Legacy `.dat`** (all little-endian): `n_entries: i32`, then per entry `name_len:
//! i32`, the name's bytes, `ncall: i32`, `nval: i32`, `nval` f32 values (already means,
//! times `ncall`); then optionally `chunk_count: i32`, `dataset_len: i32` and the
//! dataset name. The importance is `value / ncall` (the value itself where `ncall <= 0`).
//!
//! [`Imatrix::load`] reads and checks either format (which tensor uses which entry is
//! `mcc quantize`'s business); [`write_gguf`] writes the GGUF one, as llama-imatrix does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::gguf::writer::{GgufWriter, TensorData, WriteError, WriteMode};
use crate::gguf::{Array, GgmlType, GgufError, GgufFile, Value, ValueType, MAGIC};

/// A loaded importance matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Imatrix {
    /// Per weight tensor name, its importances: `n_cols × n_mat` values, matrix-major.
    pub entries: BTreeMap<String, Vec<f32>>,
    /// The calibration data sets it was computed over (file names), first one first.
    pub datasets: Vec<String>,
    /// Chunks of calibration text it was computed over (0 when unknown).
    pub chunk_count: u32,
}

/// Why an importance matrix could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    #[error("{}: {what}", path.display())]
    Bad { path: PathBuf, what: String },
    /// A file with the GGUF magic that the GGUF reader rejects (its message names the file).
    #[error("importance matrix {0}")]
    Gguf(#[from] GgufError),
}

impl Imatrix {
    /// Reads `path`: GGUF when it starts with the GGUF magic, else the legacy format.
    pub fn load(path: &Path) -> Result<Imatrix, ImatrixError> {
        let err = |what: String| ImatrixError::Bad {
            path: path.to_path_buf(),
            what,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let im = if bytes.starts_with(&MAGIC) {
            let g = GgufFile::from_bytes(path, bytes)?;
            Imatrix::from_gguf(&g).map_err(err)?
        } else {
            Imatrix::from_legacy(&bytes).map_err(err)?
        };
        for (name, v) in &im.entries {
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(err(format!("entry `{name}` holds a non-finite value {x}")));
            }
            // Sums of squares: a negative one is a damaged file (and ggml's IQ
            // quantizers abort on it).
            if let Some(x) = v.iter().find(|x| **x < 0.0) {
                return Err(err(format!(
                    "entry `{name}` holds a negative importance {x}; importances are \
                     sums of squares"
                )));
            }
        }
        Ok(im)
    }

    /// The GGUF format (see the module doc).
    pub fn from_gguf(g: &GgufFile) -> Result<Imatrix, String> {
        if g.tensors.is_empty() {
            return Err("no tensors: an importance matrix holds `NAME.in_sum2` and \
                        `NAME.counts` tensors"
                .into());
        }
        let datasets_v = g.get("imatrix.datasets");
        let count_v = g.get("imatrix.chunk_count");
        let size_v = g.get("imatrix.chunk_size");
        if datasets_v.is_none() || count_v.is_none() || size_v.is_none() {
            return Err("missing metadata: an importance matrix has the keys \
                        `imatrix.datasets`, `imatrix.chunk_count` and `imatrix.chunk_size`"
                .into());
        }
        let u32_key = |key: &str, v: Option<&Value>| match v {
            Some(Value::U32(x)) => Ok(*x),
            Some(v) => Err(format!(
                "metadata key `{key}`: found {} {}, expected a u32",
                v.type_name(),
                v.brief()
            )),
            None => Ok(0),
        };
        let chunk_count = u32_key("imatrix.chunk_count", count_v)?;
        u32_key("imatrix.chunk_size", size_v)?;
        let mut datasets = Vec::new();
        if let Some(Value::Array(a)) = datasets_v {
            for item in &a.items {
                if let Value::String(s) = item {
                    datasets.push(s.clone());
                }
            }
        }

        // name -> (in_sum2, counts)
        let mut pairs: BTreeMap<&str, (Option<usize>, Option<usize>)> = BTreeMap::new();
        for (i, t) in g.tensors.iter().enumerate() {
            if let Some(name) = t.name.strip_suffix(".in_sum2") {
                pairs.entry(name).or_default().0 = Some(i);
            } else if let Some(name) = t.name.strip_suffix(".counts") {
                pairs.entry(name).or_default().1 = Some(i);
            }
        }
        let mut entries = BTreeMap::new();
        for (name, pair) in pairs {
            let (Some(si), Some(ci)) = pair else {
                return Err(format!(
                    "entry `{name}` has {} but not {}",
                    if pair.0.is_some() {
                        "in_sum2"
                    } else {
                        "counts"
                    },
                    if pair.0.is_some() {
                        "counts"
                    } else {
                        "in_sum2"
                    },
                ));
            };
            let (sums_t, counts_t) = (&g.tensors[si], &g.tensors[ci]);
            for t in [sums_t, counts_t] {
                if t.ggml_type != GgmlType::F32 {
                    return Err(format!(
                        "tensor `{}`: found type {}, expected F32",
                        t.name, t.ggml_type
                    ));
                }
            }
            let sums = f32s(g.tensor_data(sums_t));
            let counts = f32s(g.tensor_data(counts_t));
            if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
                return Err(format!(
                    "entry `{name}`: {} sums for {} counts, expected a whole number of sums \
                     per count",
                    sums.len(),
                    counts.len()
                ));
            }
            let n_cols = sums.len() / counts.len();
            let mut values = Vec::with_capacity(sums.len());
            for (sums, &count) in sums.chunks_exact(n_cols).zip(&counts) {
                // The counts are whole numbers stored as f32; C's lround, then back to f32.
                let count = count.round() as i64 as f32;
                if count > 0.0 {
                    values.extend(sums.iter().map(|s| s / count));
                } else {
                    values.extend(std::iter::repeat_n(1.0, n_cols));
                }
            }
            entries.insert(name.to_string(), values);
        }
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
        })
    }

    /// The legacy format (see the module doc).
    pub fn from_legacy(bytes: &[u8]) -> Result<Imatrix, String> {
        let mut r = Reader { bytes, pos: 0 };
        let n_entries = r.i32("the entry count")?;
        if n_entries < 1 {
            return Err(format!(
                "not an importance matrix: {n_entries} entries (neither a GGUF file nor a \
                 legacy .dat with at least one entry)"
            ));
        }
        let mut entries = BTreeMap::new();
        for i in 0..n_entries {
            let what = |field: &str| format!("entry {} of {n_entries}: {field}", i + 1);
            let len = r.i32(&what("name length"))?;
            let len = usize::try_from(len)
                .map_err(|_| format!("{}: found {len}, expected >= 0", what("name length")))?;
            let name_bytes = r.take(len, &what("name"))?;
            // The name ends at its first NUL, as a C string does.
            let name_bytes = name_bytes.split(|&b| b == 0).next().unwrap_or(&[]);
            let name = String::from_utf8(name_bytes.to_vec())
                .map_err(|_| format!("{}: not UTF-8", what("name")))?;
            let ncall = r.i32(&what("call count"))?;
            let nval = r.i32(&what("value count"))?;
            let nval = usize::try_from(nval)
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("{}: found {nval}, expected >= 1", what("value count")))?;
            let data = r.take(
                nval.checked_mul(4).ok_or("value count overflows")?,
                &what("values"),
            )?;
            let values = f32s(data)
                .into_iter()
                .map(|v| if ncall > 0 { v / ncall as f32 } else { v })
                .collect();
            entries.insert(name, values);
        }
        // The trailer (chunk count, then the data set's name) is optional, but when
        // present it must be whole.
        let mut chunk_count = 0;
        let mut datasets = Vec::new();
        if r.pos < bytes.len() {
            let n = r.i32("the trailer's chunk count")?;
            chunk_count = u32::try_from(n).unwrap_or(0);
            let len = r.i32("the trailer's data set name length")?;
            if len > 0 {
                let name = r.take(len as usize, "the trailer's data set name")?;
                let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
                datasets.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
        })
    }
}

/// One matrix's statistics for [`write_gguf`].
pub struct Entry {
    /// The weight tensor's name.
    pub name: String,
    /// Input rows (tokens) summed.
    pub rows: u64,
    /// Per column, the sum of its squared inputs.
    pub sums: Vec<f32>,
}

/// Writes the GGUF format (see the module doc) to `path` as llama-imatrix does: metadata
/// `general.type`, the datasets, chunk count and size in that order, then
/// `NAME.in_sum2` (`[n_cols]`) and `NAME.counts` (`[1]`) per entry, names sorted (ggml
/// writes a tensor's dimensions without the trailing ones of size 1);
/// every tensor padded to the 32-byte alignment. Written under a temporary name and
/// renamed.
pub fn write_gguf(
    path: &Path,
    entries: &[Entry],
    datasets: &[String],
    chunk_count: u32,
    chunk_size: u32,
) -> Result<(), WriteError> {
    let mut w = GgufWriter::new();
    w.pad_end(true);
    w.add_kv("general.type", Value::String("imatrix".into()));
    w.add_kv(
        "imatrix.datasets",
        Value::Array(Array {
            elem_type: ValueType::String,
            items: datasets.iter().map(|d| Value::String(d.clone())).collect(),
        }),
    );
    w.add_kv("imatrix.chunk_count", Value::U32(chunk_count));
    w.add_kv("imatrix.chunk_size", Value::U32(chunk_size));
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for e in sorted {
        w.add_tensor(
            format!("{}.in_sum2", e.name),
            &[e.sums.len() as u64],
            GgmlType::F32,
            TensorData::Bytes(le(&e.sums)),
        );
        w.add_tensor(
            format!("{}.counts", e.name),
            &[1],
            GgmlType::F32,
            TensorData::Bytes(le(&[e.rows as f32])),
        );
    }
    w.write(path, WriteMode::Full).map(|_| ())
}

/// Little-endian f32s from bytes (a whole number of them).
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A bounds-checked cursor over a legacy file.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.pos,
                self.bytes.len()
            ));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32, String> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}
