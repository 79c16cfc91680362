//! GGUF v3 writer: metadata (any [`Value`], nested arrays included) and tensors, written
//! atomically (a temp file in the target's directory, renamed into place; on any error
//! the temp file is removed, so nothing half-written is ever left behind).
//!
//! Tensor data is given as bytes, or generated while streaming: a seeded random normal or
//! a constant, for the float types. Generated data never exists in memory as a whole, so
//! a 9 GB F16 file costs a 4 MiB buffer. [`WriteMode::HeaderOnly`] writes the header and
//! tensor infos and then extends the file to its full length with `set_len` (a sparse
//! file): the reader accepts it unchanged, codegen can use it, and it costs no disk.
//! In a full write, tensors that are constant zero (and the alignment padding) are holes
//! too: the file reads the same and a model of zero layers costs no disk for them.
//!
//! The layout matches what the reader expects: header, key/values, tensor infos, zero
//! padding to the alignment (`general.alignment`, default 32), then each tensor at the
//! next multiple of the alignment in the order added. The file ends right after the last
//! tensor's bytes, unless [`GgufWriter::pad_end`] asks for ggml's layout, where the last
//! tensor is padded to the alignment like the others.
//!
//! Tensors too big to hold all at once ([`TensorData::Streamed`]) are produced one at a
//! time while the file is written ([`GgufWriter::write_streamed`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use super::{GgmlType, GgufFile, TensorInfo, Value, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}: cannot write: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("gguf writer: {what}: found {found}, expected {expected}")]
    Invalid {
        what: String,
        found: String,
        expected: String,
    },
    /// The producer of a [`TensorData::Streamed`] tensor failed (`why`: the producer's
    /// whole message; a field named `source` would also be the error's cause, printed
    /// twice in a chain).
    #[error("tensor `{tensor}`: {why}")]
    Source { tensor: String, why: String },
}

/// Makes the bytes of [`TensorData::Streamed`] tensors while the file is written: called
/// once per such tensor, in file order, with its index among all tensors and its info.
pub type Producer<'a> = dyn FnMut(usize, &TensorInfo) -> Result<Vec<u8>, WriteError> + 'a;

/// Why streaming a file image stopped.
enum StreamError {
    Io(std::io::Error),
    Source(WriteError),
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> StreamError {
        StreamError::Io(e)
    }
}

fn invalid(what: String, found: impl ToString, expected: impl ToString) -> WriteError {
    WriteError::Invalid {
        what,
        found: found.to_string(),
        expected: expected.to_string(),
    }
}

/// Where a tensor's bytes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Exactly the tensor's bytes, already in its ggml type's layout.
    Bytes(Vec<u8>),
    /// Independent samples of N(0, std²), reproducible from `seed` (F32, F16, BF16).
    ///
    /// The samples come from a 65536-entry table of Box-Muller normals, rescaled to mean
    /// 0 and standard deviation exactly `std`, indexed by 16 random bits per element: a
    /// finely discretised normal that costs a quarter of an RNG step per element, so
    /// large files write at disk speed.
    RandomNormal { seed: u64, std: f32 },
    /// Every element equal to the value (F32, F16, BF16), e.g. norm weights of 1.
    Constant(f32),
    /// Made while writing, by the producer given to [`GgufWriter::write_streamed`] (so
    /// only one such tensor is in memory at a time).
    Streamed,
}

/// How much of the file to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Header and all tensor data.
    Full,
    /// Header and tensor infos; the data section is a hole of the right length.
    HeaderOnly,
}

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: TensorData,
}

/// Where everything lands in the file: what the reader will find.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Total file length.
    pub file_len: u64,
    /// The tensor infos, offsets relative to the data section, in the order added.
    pub tensors: Vec<TensorInfo>,
}

/// Collects metadata and tensors, then writes a GGUF v3 file.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
    pad_end: bool,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Adds a key (a second add of the same key is an error at write time).
    pub fn add_kv(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Sets a key, replacing an earlier value in place or appending.
    pub fn set_kv(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Pads the last tensor with zeros to the alignment, as ggml's writer does (by
    /// default the file ends with the last tensor's last byte).
    pub fn pad_end(&mut self, pad: bool) -> &mut Self {
        self.pad_end = pad;
        self
    }

    /// Removes a key; returns its value if it was there.
    pub fn remove_kv(&mut self, key: &str) -> Option<Value> {
        let i = self.metadata.iter().position(|(k, _)| k == key)?;
        Some(self.metadata.remove(i).1)
    }

    /// Removes a tensor; returns whether it was there.
    pub fn remove_tensor(&mut self, name: &str) -> bool {
        let before = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        self.tensors.len() != before
    }

    /// The value of a key added so far.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Adds a tensor; `dims` in ggml order (`dims[0]` is the row length).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: TensorData,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        self
    }

    fn alignment(&self) -> Result<u64, WriteError> {
        match self.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
            Some(v) => Err(invalid(
                "metadata key `general.alignment`".into(),
                format!("{} {}", v.type_name(), v.brief()),
                "a u32 power of two",
            )),
        }
    }

    /// The file this writer would write, as a header without data
    /// ([`GgufFile::header_only`]); `path` names it in messages.
    pub fn header_view(&self, path: impl Into<PathBuf>) -> Result<GgufFile, WriteError> {
        let layout = self.layout()?;
        Ok(GgufFile::header_only(
            path,
            layout.alignment,
            layout.data_offset,
            self.metadata.clone(),
            layout.tensors,
        ))
    }

    /// Checks everything and computes where each tensor goes.
    pub fn layout(&self) -> Result<Layout, WriteError> {
        let mut keys = HashSet::new();
        for (key, value) in &self.metadata {
            if !keys.insert(key.as_str()) {
                return Err(invalid(
                    format!("metadata key `{key}`"),
                    "a second value",
                    "each key once",
                ));
            }
            check_value(key, value, 0)?;
        }
        let alignment = self.alignment()?;
        let header_len = self.header_len()?;
        let data_offset = header_len
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| invalid("header length".into(), header_len, "< 2^64"))?;

        let mut names = HashSet::new();
        let mut tensors = Vec::with_capacity(self.tensors.len());
        let mut next = 0u64;
        for t in &self.tensors {
            let what = || format!("tensor `{}`", t.name);
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    what(),
                    "a second tensor with this name",
                    "unique names",
                ));
            }
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS || t.dims.contains(&0) {
                return Err(invalid(
                    what() + " dims",
                    format!("{:?}", t.dims),
                    format!("1..={MAX_DIMS} dims, each >= 1"),
                ));
            }
            let blk = t.ggml_type.block_elems();
            if t.dims[0] % blk != 0 {
                return Err(invalid(
                    what() + " dims[0]",
                    t.dims[0],
                    format!("a multiple of {blk} ({})", t.ggml_type),
                ));
            }
            let overflow = || invalid(what() + " size", format!("{:?}", t.dims), "< 2^64 bytes");
            let n_elements = t
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(overflow)?;
            let n_bytes = (n_elements / blk)
                .checked_mul(t.ggml_type.block_bytes())
                .ok_or_else(overflow)?;
            match &t.data {
                TensorData::Bytes(b) if b.len() as u64 != n_bytes => {
                    return Err(invalid(
                        what() + " data",
                        format!("{} bytes", b.len()),
                        format!("{n_bytes} bytes ({:?} of {})", t.dims, t.ggml_type),
                    ))
                }
                TensorData::RandomNormal { .. } | TensorData::Constant(_)
                    if float_width(t.ggml_type).is_none() =>
                {
                    return Err(invalid(
                        what() + " generated data",
                        t.ggml_type,
                        "F32, F16 or BF16",
                    ))
                }
                _ => {}
            }
            let offset = next;
            next = offset
                .checked_add(n_bytes)
                .and_then(|e| e.checked_next_multiple_of(alignment))
                .ok_or_else(overflow)?;
            tensors.push(TensorInfo {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
                offset,
                n_elements,
                n_bytes,
            });
        }
        // The file ends right after the last tensor's bytes, or at the next multiple of
        // the alignment after them.
        let data_len = match tensors.last() {
            None => 0,
            Some(_) if self.pad_end => next,
            Some(t) => t.offset + t.n_bytes,
        };
        let file_len = data_offset
            .checked_add(data_len)
            .ok_or_else(|| invalid("file length".into(), "overflow", "< 2^64"))?;
        Ok(Layout {
            alignment,
            data_offset,
            file_len,
            tensors,
        })
    }

    /// Length of header + metadata + tensor infos, before padding.
    fn header_len(&self) -> Result<u64, WriteError> {
        let mut n: u64 = 4 + 4 + 8 + 8;
        for (k, v) in &self.metadata {
            n += 8 + k.len() as u64 + 4 + encoded_len(v);
        }
        for t in &self.tensors {
            n += 8 + t.name.len() as u64 + 4 + 8 * t.dims.len() as u64 + 4 + 8;
        }
        Ok(n)
    }

    fn header_bytes(&self, layout: &Layout) -> Vec<u8> {
        let mut out = Vec::with_capacity(layout.data_offset as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut out, v);
        }
        for t in &layout.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out.resize(layout.data_offset as usize, 0);
        out
    }

    /// Writes the whole file image to any sink (header and, unless `HeaderOnly`, data).
    fn stream(
        &self,
        layout: &Layout,
        mode: WriteMode,
        out: &mut dyn Sink,
        produce: &mut Producer<'_>,
    ) -> Result<(), StreamError> {
        out.write_all(&self.header_bytes(layout))?;
        if mode == WriteMode::HeaderOnly {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        let mut pos = 0u64;
        for (i, (t, info)) in self.tensors.iter().zip(&layout.tensors).enumerate() {
            out.zeros(info.offset - pos)?;
            match &t.data {
                TensorData::Bytes(b) => out.write_all(b)?,
                TensorData::Streamed => {
                    let b = produce(i, info).map_err(StreamError::Source)?;
                    if b.len() as u64 != info.n_bytes {
                        return Err(StreamError::Source(invalid(
                            format!("tensor `{}` streamed data", t.name),
                            format!("{} bytes", b.len()),
                            format!("{} bytes", info.n_bytes),
                        )));
                    }
                    out.write_all(&b)?
                }
                TensorData::Constant(x) if *x == 0.0 && x.is_sign_positive() => {
                    out.zeros(info.n_bytes)?
                }
                TensorData::Constant(x) => {
                    let elem = encode_float(t.ggml_type, *x);
                    stream_elements(out, &mut buf, info.n_elements, elem.len(), |_, dst| {
                        for chunk in dst.chunks_exact_mut(elem.len()) {
                            chunk.copy_from_slice(&elem);
                        }
                    })?;
                }
                TensorData::RandomNormal { seed, std } => {
                    let gen = NormalTable::new(*seed, *std, t.ggml_type);
                    let mut rng = SplitMix64::new(seed ^ 0x5eed_da7a_0000_0001);
                    let width = gen.width;
                    stream_elements(out, &mut buf, info.n_elements, width, |_, dst| {
                        gen.fill(&mut rng, dst)
                    })?;
                }
            }
            pos = info.offset + info.n_bytes;
        }
        // A padded end is real zeros here; `write` extends the file over a hole.
        out.zeros(layout.file_len - layout.data_offset - pos)?;
        Ok(out.flush()?)
    }

    /// Serialises the whole file in memory (tests and small fixtures).
    pub fn to_bytes(&self, mode: WriteMode) -> Result<Vec<u8>, WriteError> {
        let layout = self.layout()?;
        let mut out = Vec::new();
        let mut none = no_producer;
        self.stream(&layout, mode, &mut out, &mut none)
            .map_err(|e| match e {
                StreamError::Io(err) => WriteError::Io {
                    path: PathBuf::from("<memory>"),
                    err,
                },
                StreamError::Source(e) => e,
            })?;
        if mode == WriteMode::HeaderOnly {
            out.resize(layout.file_len as usize, 0);
        }
        Ok(out)
    }

    /// Writes the file to `path` atomically and returns its layout.
    pub fn write(&self, path: &Path, mode: WriteMode) -> Result<Layout, WriteError> {
        self.write_streamed(path, mode, &mut no_producer)
    }

    /// Writes the file to `path` atomically, asking `produce` for the bytes of each
    /// [`TensorData::Streamed`] tensor as its turn comes; returns the layout. When
    /// `produce` fails, or gives the wrong number of bytes, nothing is left at `path`.
    pub fn write_streamed(
        &self,
        path: &Path,
        mode: WriteMode,
        produce: &mut Producer<'_>,
    ) -> Result<Layout, WriteError> {
        let layout = self.layout()?;
        let tmp = TempFile::create(path)?;
        let io = |err| WriteError::Io {
            path: tmp.path.clone(),
            err,
        };
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &tmp.file);
            self.stream(&layout, mode, &mut w, produce)
                .map_err(|e| match e {
                    StreamError::Io(err) => io(err),
                    StreamError::Source(e) => e,
                })?;
            w.flush().map_err(io)?;
        }
        // A trailing hole (and HeaderOnly's whole data section) has no bytes yet.
        tmp.file.set_len(layout.file_len).map_err(io)?;
        tmp.persist(path)?;
        Ok(layout)
    }
}

/// The producer of a writer that has no [`TensorData::Streamed`] tensors.
fn no_producer(_: usize, t: &TensorInfo) -> Result<Vec<u8>, WriteError> {
    Err(invalid(
        format!("tensor `{}`", t.name),
        "streamed data",
        "a producer (`write_streamed`)",
    ))
}

/// Bytes per generated chunk: big enough to amortise the write call, small enough for L2.
const CHUNK_BYTES: usize = 4 << 20;

/// Where a file image goes: a `Write` that can also emit a run of zero bytes, as real
/// zeros in memory and as a hole (a seek past them) in a file.
trait Sink: Write {
    fn zeros(&mut self, n: u64) -> std::io::Result<()>;
}

impl Sink for Vec<u8> {
    fn zeros(&mut self, n: u64) -> std::io::Result<()> {
        self.resize(self.len() + n as usize, 0);
        Ok(())
    }
}

impl Sink for std::io::BufWriter<&File> {
    fn zeros(&mut self, n: u64) -> std::io::Result<()> {
        if n > 0 {
            // Seeking a BufWriter flushes it first; the file's length is set at the end.
            self.seek(SeekFrom::Current(n as i64))?;
        }
        Ok(())
    }
}

/// Streams `n` elements of `width` bytes through `buf`, `fill` producing each chunk.
fn stream_elements(
    out: &mut dyn Write,
    buf: &mut Vec<u8>,
    n: u64,
    width: usize,
    mut fill: impl FnMut(u64, &mut [u8]),
) -> std::io::Result<()> {
    let per_chunk = (CHUNK_BYTES / width) as u64;
    let mut done = 0u64;
    while done < n {
        let k = (n - done).min(per_chunk) as usize;
        buf.clear();
        buf.resize(k * width, 0);
        fill(done, buf);
        out.write_all(buf)?;
        done += k as u64;
    }
    Ok(())
}

/// Bytes per element of the float types generated data may use.
fn float_width(t: GgmlType) -> Option<usize> {
    match t {
        GgmlType::F32 => Some(4),
        GgmlType::F16 | GgmlType::BF16 => Some(2),
        _ => None,
    }
}

/// One element of a float type, little-endian. Only called for float types.
fn encode_float(t: GgmlType, x: f32) -> Vec<u8> {
    match t {
        GgmlType::F16 => f16::from_f32(x).to_le_bytes().to_vec(),
        GgmlType::BF16 => bf16::from_f32(x).to_le_bytes().to_vec(),
        _ => x.to_le_bytes().to_vec(),
    }
}

/// SplitMix64: a 64-bit counter through a bijective mixer; passes BigCrush, one add and
/// three multiply/xor-shift rounds per output.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: 53 random bits, never 0 (so `ln` stays finite).
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A pair of independent standard normals (Box-Muller):
    /// `r = sqrt(-2 ln u1)`, `(r cos 2πu2, r sin 2πu2)`.
    pub fn next_normal_pair(&mut self) -> (f64, f64) {
        let r = (-2.0 * self.next_open01().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.next_open01();
        (r * theta.cos(), r * theta.sin())
    }
}

/// 65536 encoded normal samples (N(0, std²) after exact rescaling) for one float type.
struct NormalTable {
    width: usize,
    bytes: Vec<u8>,
}

impl NormalTable {
    const BITS: u32 = 16;

    fn new(seed: u64, std: f32, t: GgmlType) -> NormalTable {
        let n = 1usize << Self::BITS;
        let mut rng = SplitMix64::new(seed);
        let mut z = Vec::with_capacity(n);
        while z.len() < n {
            let (a, b) = rng.next_normal_pair();
            z.push(a);
            z.push(b);
        }
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        let scale = f64::from(std) / var.sqrt();
        let width = float_width(t).unwrap_or(4);
        let mut bytes = Vec::with_capacity(n * width);
        for x in z {
            bytes.extend_from_slice(&encode_float(t, ((x - mean) * scale) as f32));
        }
        NormalTable { width, bytes }
    }

    /// Fills `dst` (a whole number of elements): each RNG output gives four 16-bit
    /// table indices.
    fn fill(&self, rng: &mut SplitMix64, dst: &mut [u8]) {
        match self.width {
            2 => self.fill_w::<2>(rng, dst),
            _ => self.fill_w::<4>(rng, dst),
        }
    }

    #[inline(always)]
    fn fill_w<const W: usize>(&self, rng: &mut SplitMix64, dst: &mut [u8]) {
        let table = &self.bytes[..(1 << Self::BITS) * W];
        let pick = |r: u64, lane: u32| -> [u8; W] {
            let i = ((r >> (16 * lane)) & 0xffff) as usize * W;
            let mut e = [0u8; W];
            e.copy_from_slice(&table[i..i + W]);
            e
        };
        let mut quads = dst.chunks_exact_mut(4 * W);
        for quad in &mut quads {
            let r = rng.next_u64();
            for lane in 0..4 {
                let at = lane as usize * W;
                quad[at..at + W].copy_from_slice(&pick(r, lane));
            }
        }
        let rest = quads.into_remainder();
        let r = rng.next_u64();
        for (lane, e) in rest.chunks_exact_mut(W).enumerate() {
            e.copy_from_slice(&pick(r, lane as u32));
        }
    }
}

fn check_value(key: &str, v: &Value, depth: usize) -> Result<(), WriteError> {
    if let Value::Array(a) = v {
        if depth >= super::MAX_ARRAY_DEPTH {
            return Err(invalid(
                format!("metadata key `{key}`"),
                format!("arrays nested {} deep", depth + 1),
                format!("at most {}", super::MAX_ARRAY_DEPTH),
            ));
        }
        for (i, item) in a.items.iter().enumerate() {
            if item.value_type() != a.elem_type {
                return Err(invalid(
                    format!("metadata key `{key}` item {i}"),
                    item.type_name(),
                    a.elem_type,
                ));
            }
            check_value(key, item, depth + 1)?;
        }
    }
    Ok(())
}

fn encoded_len(v: &Value) -> u64 {
    match v {
        Value::String(s) => 8 + s.len() as u64,
        Value::Array(a) => 12 + a.items.iter().map(encoded_len).sum::<u64>(),
        other => other.value_type().min_encoded_len(),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => {
            out.extend_from_slice(&a.elem_type.id().to_le_bytes());
            out.extend_from_slice(&(a.items.len() as u64).to_le_bytes());
            // Items carry no type id of their own; an item of an array of arrays
            // starts directly with its own header (elem type + len).
            for item in &a.items {
                put_value(out, item);
            }
        }
    }
}

/// A temp file beside the destination, removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    file: File,
    keep: bool,
}

impl TempFile {
    fn create(dest: &Path) -> Result<TempFile, WriteError> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out.gguf".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = dir.join(format!(".{base}.{}.{nanos}.tmp", std::process::id()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|err| WriteError::Io {
                path: path.clone(),
                err,
            })?;
        Ok(TempFile {
            path,
            file,
            keep: false,
        })
    }

    fn persist(mut self, dest: &Path) -> Result<(), WriteError> {
        std::fs::rename(&self.path, dest).map_err(|err| WriteError::Io {
            path: dest.to_path_buf(),
            err,
        })?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Array, GgufFile, ValueType};
    use super::*;

    fn sample() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", Value::String("llama".into()))
            .add_kv("u8", Value::U8(7))
            .add_kv("i8", Value::I8(-7))
            .add_kv("u16", Value::U16(700))
            .add_kv("i16", Value::I16(-700))
            .add_kv("u32", Value::U32(70000))
            .add_kv("i32", Value::I32(-70000))
            .add_kv("u64", Value::U64(1 << 40))
            .add_kv("i64", Value::I64(-(1 << 40)))
            .add_kv("f32", Value::F32(0.25))
            .add_kv("f64", Value::F64(-0.125))
            .add_kv("bool", Value::Bool(true))
            .add_kv(
                "nested",
                Value::Array(Array {
                    elem_type: ValueType::Array,
                    items: vec![
                        Value::Array(Array {
                            elem_type: ValueType::String,
                            items: vec![Value::String("a".into()), Value::String("".into())],
                        }),
                        Value::Array(Array {
                            elem_type: ValueType::Array,
                            items: vec![Value::Array(Array {
                                elem_type: ValueType::F64,
                                items: vec![Value::F64(1.5)],
                            })],
                        }),
                    ],
                }),
            );
        let q8: Vec<u8> = (0..68).map(|i| i as u8).collect();
        w.add_tensor("q", &[32, 2], GgmlType::Q8_0, TensorData::Bytes(q8))
            .add_tensor("ones", &[5], GgmlType::F32, TensorData::Constant(1.0))
            .add_tensor(
                "w",
                &[64, 300],
                GgmlType::F16,
                TensorData::RandomNormal { seed: 1, std: 0.5 },
            );
        w
    }

    #[test]
    fn round_trip_through_the_reader() {
        let w = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.gguf");
        let layout = w.write(&path, WriteMode::Full).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.metadata, w.metadata);
        assert_eq!(g.tensors, layout.tensors);
        assert_eq!(
            (g.data_offset, g.file_len()),
            (layout.data_offset, layout.file_len)
        );
        let q = g.tensor("q").unwrap();
        assert_eq!(
            g.tensor_data(q),
            (0..68).map(|i| i as u8).collect::<Vec<_>>()
        );
        let ones = g.tensor_data(g.tensor("ones").unwrap());
        assert!(ones.chunks(4).all(|c| c == 1f32.to_le_bytes()));
        // Only the destination is in the directory: the temp file was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            w.to_bytes(WriteMode::Full).unwrap()
        );
    }

    #[test]
    fn random_normal_has_the_asked_moments_and_is_reproducible() {
        let w = sample();
        let bytes = w.to_bytes(WriteMode::Full).unwrap();
        let g = GgufFile::from_bytes("mem", bytes.clone()).unwrap();
        let data = g.tensor_data(g.tensor("w").unwrap());
        let x: Vec<f64> = data
            .chunks(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect();
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        // 19200 samples: the sample mean's std error is 0.5/sqrt(19200) ≈ 0.0036.
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((std - 0.5).abs() < 0.02, "std {std}");
        let within_1sd = x.iter().filter(|v| v.abs() < 0.5).count() as f64 / n;
        assert!((within_1sd - 0.6827).abs() < 0.02, "{within_1sd}");
        assert_eq!(bytes, sample().to_bytes(WriteMode::Full).unwrap());
        let mut other = sample();
        other.tensors[2].data = TensorData::RandomNormal { seed: 2, std: 0.5 };
        assert_ne!(bytes, other.to_bytes(WriteMode::Full).unwrap());
    }

    #[test]
    fn header_only_is_sparse_and_readable() {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", Value::String("llama".into()));
        // 1 GiB of F16 described, nothing written.
        w.add_tensor(
            "big",
            &[1 << 15, 1 << 14],
            GgmlType::F16,
            TensorData::RandomNormal { seed: 0, std: 1.0 },
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hdr.gguf");
        let layout = w.write(&path, WriteMode::HeaderOnly).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.file_len(), layout.file_len);
        assert_eq!(g.tensor("big").unwrap().n_bytes, 1 << 30);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let blocks = std::fs::metadata(&path).unwrap().blocks();
            assert!(blocks * 512 < 1 << 20, "{blocks} blocks allocated");
        }
    }

    #[test]
    fn zero_tensors_are_holes_in_a_full_write() {
        let mut w = sample();
        // 64 MiB of zeros between the sample's tensors and one random tensor after them.
        w.add_tensor(
            "zeros",
            &[1 << 25],
            GgmlType::F16,
            TensorData::Constant(0.0),
        );
        w.add_tensor(
            "tail",
            &[100],
            GgmlType::F32,
            TensorData::RandomNormal { seed: 3, std: 1.0 },
        );
        w.add_tensor("neg", &[64], GgmlType::F32, TensorData::Constant(-0.0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holes.gguf");
        w.write(&path, WriteMode::Full).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            w.to_bytes(WriteMode::Full).unwrap()
        );
        let g = GgufFile::open(&path).unwrap();
        let neg = g.tensor_data(g.tensor("neg").unwrap());
        assert!(neg.chunks_exact(4).all(|c| c == (-0f32).to_le_bytes()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let blocks = std::fs::metadata(&path).unwrap().blocks();
            assert!(blocks * 512 < 8 << 20, "{blocks} blocks allocated");
        }
    }

    #[test]
    fn streamed_tensors_and_a_padded_end() {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", Value::String("llama".into()));
        w.add_tensor("a", &[3], GgmlType::F32, TensorData::Streamed)
            .add_tensor("b", &[5], GgmlType::F16, TensorData::Streamed)
            .pad_end(true);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.gguf");
        let mut asked = Vec::new();
        let layout = w
            .write_streamed(&path, WriteMode::Full, &mut |i, t| {
                asked.push(t.name.clone());
                Ok(vec![i as u8 + 1; t.n_bytes as usize])
            })
            .unwrap();
        assert_eq!(asked, ["a", "b"]);
        let bytes = std::fs::read(&path).unwrap();
        // Both tensors padded to 32 bytes, the last one too, as ggml writes files.
        assert_eq!(layout.file_len, layout.data_offset + 64);
        assert_eq!(bytes.len() as u64, layout.file_len);
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.tensor_data(g.tensor("b").unwrap()), [2u8; 10]);
        assert!(bytes[bytes.len() - 22..].iter().all(|&b| b == 0));

        // A producer that fails, or gives the wrong length, leaves nothing behind.
        std::fs::remove_file(&path).unwrap();
        let e = w
            .write_streamed(&path, WriteMode::Full, &mut |_, t| {
                Ok(vec![0; t.n_bytes as usize + 1])
            })
            .unwrap_err();
        assert!(e.to_string().contains("tensor `a` streamed data"), "{e}");
        let e = w
            .write_streamed(&path, WriteMode::Full, &mut |_, t| {
                Err(WriteError::Source {
                    tensor: t.name.clone(),
                    why: "no data".into(),
                })
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "tensor `a`: no data");
        assert!(w.write(&path, WriteMode::Full).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn alignment_key_is_honoured() {
        let mut w = sample();
        w.add_kv("general.alignment", Value::U32(256));
        let g = GgufFile::from_bytes("mem", w.to_bytes(WriteMode::Full).unwrap()).unwrap();
        assert_eq!(g.alignment, 256);
        assert!(g.tensors.iter().all(|t| t.offset % 256 == 0));
        assert_eq!(g.data_offset % 256, 0);
        w.set_kv("general.alignment", Value::U32(48));
        assert!(w
            .layout()
            .unwrap_err()
            .to_string()
            .contains("general.alignment"));
    }

    #[test]
    fn bad_input_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.gguf");
        let cases: Vec<(GgufWriter, &str)> = vec![
            {
                let mut w = sample();
                w.add_kv("u8", Value::U8(1));
                (w, "`u8`")
            },
            {
                let mut w = sample();
                w.add_tensor("q", &[32], GgmlType::F32, TensorData::Constant(0.0));
                (w, "tensor `q`")
            },
            {
                let mut w = GgufWriter::new();
                w.add_tensor("t", &[32], GgmlType::Q4_0, TensorData::Bytes(vec![0; 17]));
                (w, "17 bytes")
            },
            {
                let mut w = GgufWriter::new();
                w.add_tensor("t", &[32], GgmlType::Q4_0, TensorData::Constant(0.0));
                (w, "F32, F16 or BF16")
            },
            {
                let mut w = GgufWriter::new();
                w.add_tensor("t", &[33], GgmlType::Q4_0, TensorData::Bytes(vec![]));
                (w, "multiple of 32")
            },
            {
                let mut w = GgufWriter::new();
                w.add_tensor(
                    "t",
                    &[u64::MAX, 2],
                    GgmlType::F32,
                    TensorData::Bytes(vec![]),
                );
                (w, "size")
            },
            {
                let mut w = GgufWriter::new();
                w.add_kv(
                    "arr",
                    Value::Array(Array {
                        elem_type: ValueType::U8,
                        items: vec![Value::U8(1), Value::I8(1)],
                    }),
                );
                (w, "`arr` item 1")
            },
        ];
        for (w, needle) in cases {
            let e = w.write(&path, WriteMode::Full).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        // A destination in a missing directory fails at temp-file creation.
        let e = sample()
            .write(&dir.path().join("no/such/dir.gguf"), WriteMode::Full)
            .unwrap_err();
        assert!(e.to_string().contains("no/such"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
