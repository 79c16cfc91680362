//! `mcc quantize IN OUT TYPE`: rewrites a llama GGUF in another file type, writing the
//! file llama.cpp's `llama-quantize` writes, byte for byte, at any thread count.
//!
//! The steps, each as llama-quantize takes them:
//! 1. Order the tensors: those outside the layers, then layer by layer, by name within
//!    each ([`rules::file_order`]).
//! 2. Choose each tensor's type ([`rules::Chooser`]): kept for norms and other small or
//!    special tensors, else the file type's default moved by role, layer and row width.
//! 3. Metadata: the input's keys in order, then `general.quantization_version` and
//!    `general.file_type` (moved to the end), then with an importance matrix the
//!    `quantize.imatrix.*` keys (its path as given, its first data set, its entry and
//!    chunk counts).
//! 4. Data: a tensor that keeps its type is copied byte for byte; any other is converted
//!    to f32 (the scalar reference dequantizers) and quantized row by row, with the
//!    tensor's importances when the matrix has them ([`crate::imatrix::file`]). Each row's scales
//!    are checked finite, as llama-quantize checks them. Every tensor, the last too, is
//!    padded with zeros to the 32-byte alignment.
//!
//! The output is written under a temporary name and renamed, so a failure at any point
//! leaves nothing at OUT.

pub mod ftype;
pub mod rules;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use mcc_runtime::quant as rq;

use crate::gguf::writer::{GgufWriter, TensorData};
use crate::gguf::{Array, GgmlType, GgufFile, TensorInfo, Value};
use crate::imatrix::file::Imatrix;
use crate::source::ModelSource;
use ftype::{is_quantized, FileType};
use rules::{Chooser, ModelFacts, TensorShape};

/// `mcc quantize`'s arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The model to quantize: a GGUF of the llama architecture (F32, F16 or BF16
    /// weights; quantized ones with --allow-requantize), or a Hugging Face checkpoint
    /// directory (converted first, as `mcc convert` does, in memory).
    pub input: PathBuf,
    /// Where to write the quantized model.
    pub output: PathBuf,
    /// The file type, by llama-quantize's name or number: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    /// Q2_K, Q2_K_S, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K,
    /// IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M, IQ3_XXS, IQ3_XS, IQ3_S, IQ3_M, IQ4_NL,
    /// IQ4_XS, F16, BF16, F32.
    #[arg(value_name = "TYPE")]
    pub ftype: String,
    /// Importance matrix from llama-imatrix (GGUF, or the legacy .dat format).
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Threads for the conversion (default: all cores). The output does not depend on it.
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<usize>,
    /// Convert tensors that are already quantized (through f32, losing more).
    #[arg(long)]
    pub allow_requantize: bool,
}

/// The version of the block formats, `general.quantization_version` (ggml's
/// `GGML_QNT_VERSION`).
pub const QUANTIZATION_VERSION: u32 = 2;

/// Bytes of a string metadata value llama-quantize keeps from the command line.
const MAX_ARG_STRING: usize = 127;

/// Alignment of llama-quantize's output (ggml's default).
const ALIGNMENT: u64 = 32;

/// What happens to one tensor.
struct Plan {
    /// Index into the input's tensors.
    index: usize,
    /// Dimensions, trailing 1s removed (as ggml writes them).
    dims: Vec<u64>,
    to: GgmlType,
    /// The importances for this tensor (`dims[0] × dims[2]` values), if it is converted.
    imatrix: Option<Vec<f32>>,
}

/// Runs `mcc quantize`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let ftype = FileType::parse(&args.ftype).map_err(anyhow::Error::msg)?;
    if same_file(&args.input, &args.output) {
        bail!(
            "input and output are the same file: {}",
            args.input.display()
        );
    }
    let threads = match args.threads {
        Some(0) => bail!("-t 0: expected at least 1 thread"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let source = crate::source::open(&args.input)?;
    let in_len = source.header().file_len();
    let q = Quantized::new(
        source,
        ftype,
        args.imatrix.as_deref(),
        args.allow_requantize,
        threads,
    )?;
    let layout = crate::source::write(&q, &q.writer, &args.output)?;
    eprintln!(
        "mcc quantize: {} -> {} as {ftype}: {} tensors, {} converted, \
         {} -> {:.2} MiB in {:.2} s on {threads} threads",
        args.input.display(),
        args.output.display(),
        q.plans.len(),
        q.n_converted(),
        if in_len > 0 {
            format!("{:.2} MiB", in_len as f64 / (1 << 20) as f64)
        } else {
            "a checkpoint".to_string()
        },
        layout.file_len as f64 / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A model as the GGUF `mcc quantize` writes from it (that llama-quantize writes), each
/// tensor converted when it is asked for.
pub struct Quantized {
    source: Box<dyn ModelSource>,
    ftype: FileType,
    /// The importance matrix's identity, if one is used.
    imatrix: Option<String>,
    plans: Vec<Plan>,
    writer: GgufWriter,
    header: GgufFile,
    threads: usize,
}

impl Quantized {
    /// Chooses every tensor's type and checks that it can be made, reading the
    /// importance matrix at `imatrix` if given; `threads` convert each tensor.
    pub fn new(
        source: Box<dyn ModelSource>,
        ftype: FileType,
        imatrix: Option<&Path>,
        allow_requantize: bool,
        threads: usize,
    ) -> anyhow::Result<Quantized> {
        let g = source.header();
        let facts = model_facts(g)?;
        let imatrix = match imatrix {
            Some(path) => {
                let im = Imatrix::load(path)?;
                if im.entries.is_empty() {
                    bail!(
                        "{}: no importance entries (no `NAME.in_sum2` tensors)",
                        path.display()
                    );
                }
                Some((path, im))
            }
            None => None,
        };
        let plans = plan(g, ftype, facts, imatrix.as_ref(), allow_requantize)?;
        let writer = header(g, ftype, imatrix.as_ref(), &plans)?;
        let header = writer.header_view(&g.path)?;
        let imatrix = match imatrix {
            Some((path, _)) => Some(crate::source::file_identity(path)?),
            None => None,
        };
        Ok(Quantized {
            source,
            ftype,
            imatrix,
            plans,
            writer,
            header,
            threads: threads.max(1),
        })
    }

    /// How many tensors change type.
    pub fn n_converted(&self) -> usize {
        let src = &self.source.header().tensors;
        self.plans
            .iter()
            .filter(|p| p.to != src[p.index].ggml_type)
            .count()
    }
}

impl ModelSource for Quantized {
    fn header(&self) -> &GgufFile {
        &self.header
    }

    fn tensor_bytes(&self, i: usize) -> anyhow::Result<Cow<'_, [u8]>> {
        let p = &self.plans[i];
        let src = &self.source.header().tensors[p.index];
        let bytes = self.source.tensor_bytes(p.index)?;
        if p.to == src.ggml_type {
            return Ok(bytes);
        }
        let out = convert(&bytes, src, p, self.threads).map_err(anyhow::Error::msg)?;
        Ok(Cow::Owned(out))
    }

    fn identity(&self) -> anyhow::Result<String> {
        let mut id = self.source.identity()?;
        id += &format!("\nquantized to {}", self.ftype);
        if let Some(im) = &self.imatrix {
            id += &format!(" with the importance matrix {im}");
        }
        Ok(id)
    }
}

/// Whether two paths name one file (the output would replace the input being read).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The hyperparameters the type rules read, from a llama file's metadata.
fn model_facts(g: &GgufFile) -> anyhow::Result<ModelFacts> {
    let file = g.path.display();
    match g.get("general.architecture").and_then(Value::as_str) {
        Some("llama") => {}
        Some(other) => bail!(
            "{file}: unsupported architecture {other:?} in `general.architecture`: mcc \
             quantize takes llama models"
        ),
        None => bail!("{file}: no string `general.architecture`: expected \"llama\""),
    }
    // A per-layer key may be an array; the rules read layer 0.
    let first = |key: &str| -> anyhow::Result<Option<u64>> {
        match g.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(a.items.first().and_then(Value::as_u64)),
            Some(v) => match v.as_u64() {
                Some(x) => Ok(Some(x)),
                None => bail!(
                    "{file}: metadata key `{key}`: found {} {}, expected an unsigned integer",
                    v.type_name(),
                    v.brief()
                ),
            },
        }
    };
    let need = |key: &str| -> anyhow::Result<u64> {
        first(key)?.with_context(|| format!("{file}: missing metadata key `{key}`"))
    };
    let n_layer = need("llama.block_count")?;
    let n_head = need("llama.attention.head_count")?;
    let n_head_kv = first("llama.attention.head_count_kv")?.unwrap_or(n_head);
    let n_expert = first("llama.expert_count")?.unwrap_or(0);
    let small = |key: &str, v: u64| {
        u32::try_from(v).with_context(|| format!("{file}: metadata key `{key}`: {v} is too big"))
    };
    let n_layer = small("llama.block_count", n_layer)?;
    let n_expert = small("llama.expert_count", n_expert)?;
    let n_gqa = small(
        "llama.attention.head_count",
        n_head.checked_div(n_head_kv).unwrap_or(0),
    )?;
    Ok(ModelFacts {
        n_layer,
        n_gqa,
        n_expert,
        is_70b: n_expert != 8 && n_layer == 80 && n_head != n_head_kv,
    })
}

/// Dimensions without trailing 1s (at least one).
fn ggml_dims(dims: &[u64]) -> Vec<u64> {
    let n = dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
    dims[..n].to_vec()
}

/// Chooses every tensor's type, in output order, and checks that it can be made.
fn plan(
    g: &GgufFile,
    ftype: FileType,
    facts: ModelFacts,
    imatrix: Option<&(&Path, Imatrix)>,
    allow_requantize: bool,
) -> anyhow::Result<Vec<Plan>> {
    let file = g.path.display();
    let mut order: Vec<usize> = (0..g.tensors.len()).collect();
    order.sort_by(|&a, &b| rules::file_order(&g.tensors[a].name, &g.tensors[b].name));
    let mut chooser = Chooser::new(
        ftype,
        facts,
        imatrix.is_some(),
        order.iter().map(|&i| g.tensors[i].name.as_str()),
    );
    let mut plans = Vec::with_capacity(order.len());
    for index in order {
        let t = &g.tensors[index];
        let dims = ggml_dims(&t.dims);
        let shape = TensorShape {
            name: &t.name,
            dims: &dims,
        };
        let to = chooser
            .choose(&shape, t.ggml_type)
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        let needs_imatrix = rules::allows_quantization(&t.name, dims.len())
            && rules::requires_imatrix(&t.name, to, ftype);
        if imatrix.is_none() && needs_imatrix {
            bail!(
                "{ftype} needs an importance matrix (--imatrix): tensor `{}` becomes {to}, \
                 which is garbage without one",
                t.name
            );
        }
        plans.push(Plan {
            index,
            dims,
            to,
            imatrix: None,
        });
    }

    let mut missing = Vec::new();
    for p in &mut plans {
        let t = &g.tensors[p.index];
        if p.to == t.ggml_type {
            continue;
        }
        if is_quantized(t.ggml_type) && !allow_requantize {
            bail!(
                "{file}: tensor `{}` is already quantized ({}): converting it to {} loses \
                 more; pass --allow-requantize to do it anyway",
                t.name,
                t.ggml_type,
                p.to
            );
        }
        if p.dims.len() > 3 {
            bail!(
                "{file}: tensor `{}` has {} dimensions {:?}: mcc quantize converts matrices \
                 and stacks of them (3 at most)",
                t.name,
                p.dims.len(),
                p.dims
            );
        }
        let name = t.name.as_str();
        if let Some((path, im)) = imatrix {
            let want = p.dims[0] * p.dims.get(2).copied().unwrap_or(1);
            match im.entries.get(name) {
                Some(v) if v.len() as u64 == want => p.imatrix = Some(v.clone()),
                // The embeddings are looked up, not multiplied: an entry under their
                // name belongs to the tied output, and another width is ignored.
                _ if rules::is_token_embd(name) => {}
                Some(v) => bail!(
                    "{}: entry `{name}` has {} values, but the tensor has {want} columns{}: \
                     is the importance matrix for another model?",
                    path.display(),
                    v.len(),
                    if p.dims.len() > 2 {
                        " (times experts)"
                    } else {
                        ""
                    }
                ),
                // llama-quantize quantizes such a tensor without importances (llama-imatrix
                // leaves `output` out unless told otherwise).
                None => missing.push(name),
            }
        }
        if p.imatrix.is_none() && rules::requires_imatrix(name, p.to, ftype) {
            bail!("tensor `{name}` becomes {} and needs importance data", p.to);
        }
    }
    if let Some((path, _)) = imatrix {
        let weighted = plans.iter().filter(|p| p.imatrix.is_some()).count();
        if weighted == 0 && !missing.is_empty() {
            bail!(
                "{}: no entry for any tensor of {file} (not for `{}`, nor {} more): is the \
                 importance matrix for another model?",
                path.display(),
                missing[0],
                missing.len() - 1
            );
        }
        if !missing.is_empty() {
            eprintln!(
                "mcc: {}: no entry for {} (quantized without importances, as llama-quantize \
                 does)",
                path.display(),
                missing
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(plans)
}

/// `v` with every string cut at its first NUL, as llama.cpp copies strings (C strings).
fn c_strings(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.split('\0').next().unwrap_or("").to_string()),
        Value::Array(a) => Value::Array(Array {
            elem_type: a.elem_type,
            items: a.items.iter().map(c_strings).collect(),
        }),
        other => other.clone(),
    }
}

/// `s` cut to the bytes llama-quantize keeps of a command-line string (at a character
/// boundary).
fn arg_string(s: &str) -> String {
    let mut end = s.len().min(MAX_ARG_STRING);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The output's metadata and tensor infos (tensor data streamed later).
fn header(
    g: &GgufFile,
    ftype: FileType,
    imatrix: Option<&(&Path, Imatrix)>,
    plans: &[Plan],
) -> anyhow::Result<GgufWriter> {
    let mut set: Vec<(&str, Value)> = vec![
        (
            "general.quantization_version",
            Value::U32(QUANTIZATION_VERSION),
        ),
        ("general.file_type", Value::U32(ftype.id())),
    ];
    if let Some((path, im)) = imatrix {
        let path = path.to_str().with_context(|| {
            format!(
                "{}: the importance matrix's path is not UTF-8",
                path.display()
            )
        })?;
        set.push(("quantize.imatrix.file", Value::String(arg_string(path))));
        if let Some(first) = im.datasets.first() {
            set.push(("quantize.imatrix.dataset", Value::String(arg_string(first))));
        }
        let entries = u32::try_from(im.entries.len()).unwrap_or(u32::MAX);
        set.push(("quantize.imatrix.entries_count", Value::U32(entries)));
        if im.chunk_count > 0 {
            set.push(("quantize.imatrix.chunks_count", Value::U32(im.chunk_count)));
        }
    }
    // Split files are joined: their keys go.
    let drop = ["split.no", "split.count", "split.tensors.count"];

    let mut w = GgufWriter::new();
    for (key, value) in &g.metadata {
        if !drop.contains(&key.as_str()) && !set.iter().any(|(k, _)| k == key) {
            w.add_kv(key.clone(), c_strings(value));
        }
    }
    for (key, value) in set {
        w.add_kv(key, value);
    }
    match w.get("general.alignment") {
        None => {}
        Some(Value::U32(a)) if u64::from(*a) == ALIGNMENT => {}
        Some(v) => bail!(
            "{}: `general.alignment` is {}: llama-quantize writes such a file with {ALIGNMENT}-byte \
             alignment under that key, which readers then misread; mcc quantize does not write it",
            g.path.display(),
            v.brief()
        ),
    }
    for p in plans {
        w.add_tensor(
            g.tensors[p.index].name.clone(),
            &p.dims,
            p.to,
            TensorData::Streamed,
        );
    }
    w.pad_end(true);
    Ok(w)
}

/// Quantizes f32 rows into a format's bytes: `(x, n_per_row, imatrix, out)`.
type QuantizeFn = fn(&[f32], usize, Option<&[f32]>, &mut [u8]);

/// The quantizer for type `t`.
fn quantizer(t: GgmlType) -> QuantizeFn {
    use rq::quantize_rows_to_bytes as q;
    use GgmlType as G;
    match t {
        G::F32 => q::<rq::f32::F32>,
        G::F16 => q::<rq::f16::F16>,
        G::BF16 => q::<rq::bf16::BF16>,
        G::Q4_0 => q::<rq::q4_0::Q4_0>,
        G::Q4_1 => q::<rq::q4_1::Q4_1>,
        G::Q5_0 => q::<rq::q5_0::Q5_0>,
        G::Q5_1 => q::<rq::q5_1::Q5_1>,
        G::Q8_0 => q::<rq::q8_0::Q8_0>,
        G::Q2_K => q::<rq::q2_k::Q2_K>,
        G::Q3_K => q::<rq::q3_k::Q3_K>,
        G::Q4_K => q::<rq::q4_k::Q4_K>,
        G::Q5_K => q::<rq::q5_k::Q5_K>,
        G::Q6_K => q::<rq::q6_k::Q6_K>,
        G::IQ4_NL => q::<rq::iq4_nl::IQ4_NL>,
        G::IQ4_XS => q::<rq::iq4_xs::IQ4_XS>,
        G::IQ2_XXS => q::<rq::iq2_xxs::IQ2_XXS>,
        G::IQ2_XS => q::<rq::iq2_xs::IQ2_XS>,
        G::IQ2_S => q::<rq::iq2_s::IQ2_S>,
        G::IQ3_XXS => q::<rq::iq3_xxs::IQ3_XXS>,
        G::IQ3_S => q::<rq::iq3_s::IQ3_S>,
        G::IQ1_S => q::<rq::iq1_s::IQ1_S>,
        G::IQ1_M => q::<rq::iq1_m::IQ1_M>,
    }
}

/// Bytes of type `t` to f32 with the format's scalar reference dequantizer.
fn to_f32(t: GgmlType, bytes: &[u8], out: &mut [f32]) {
    use rq::dequantize_bytes as d;
    use GgmlType as G;
    match t {
        G::F32 => d::<rq::f32::F32>(bytes, out),
        G::F16 => d::<rq::f16::F16>(bytes, out),
        G::BF16 => d::<rq::bf16::BF16>(bytes, out),
        G::Q4_0 => d::<rq::q4_0::Q4_0>(bytes, out),
        G::Q4_1 => d::<rq::q4_1::Q4_1>(bytes, out),
        G::Q5_0 => d::<rq::q5_0::Q5_0>(bytes, out),
        G::Q5_1 => d::<rq::q5_1::Q5_1>(bytes, out),
        G::Q8_0 => d::<rq::q8_0::Q8_0>(bytes, out),
        G::Q2_K => d::<rq::q2_k::Q2_K>(bytes, out),
        G::Q3_K => d::<rq::q3_k::Q3_K>(bytes, out),
        G::Q4_K => d::<rq::q4_k::Q4_K>(bytes, out),
        G::Q5_K => d::<rq::q5_k::Q5_K>(bytes, out),
        G::Q6_K => d::<rq::q6_k::Q6_K>(bytes, out),
        G::IQ1_S => d::<rq::iq1_s::IQ1_S>(bytes, out),
        G::IQ1_M => d::<rq::iq1_m::IQ1_M>(bytes, out),
        G::IQ2_XXS => d::<rq::iq2_xxs::IQ2_XXS>(bytes, out),
        G::IQ2_XS => d::<rq::iq2_xs::IQ2_XS>(bytes, out),
        G::IQ2_S => d::<rq::iq2_s::IQ2_S>(bytes, out),
        G::IQ3_XXS => d::<rq::iq3_xxs::IQ3_XXS>(bytes, out),
        G::IQ3_S => d::<rq::iq3_s::IQ3_S>(bytes, out),
        G::IQ4_NL => d::<rq::iq4_nl::IQ4_NL>(bytes, out),
        G::IQ4_XS => d::<rq::iq4_xs::IQ4_XS>(bytes, out),
    }
}

/// Byte offsets, within a block, of the f16 scales (and minimums) of the formats mcc
/// writes: llama-quantize rejects a row where any of them is NaN or infinite.
fn scale_offsets(t: GgmlType) -> &'static [usize] {
    use GgmlType as G;
    match t {
        G::Q4_0 | G::Q5_0 | G::Q8_0 | G::IQ4_NL | G::IQ4_XS => &[0],
        G::IQ2_XXS | G::IQ2_XS | G::IQ2_S => &[0],
        G::Q4_1 | G::Q5_1 | G::Q4_K | G::Q5_K => &[0, 2],
        G::Q2_K => &[80, 82],
        G::Q3_K => &[108],
        G::Q6_K => &[208],
        G::IQ3_XXS | G::IQ3_S | G::IQ1_S => &[0],
        _ => &[],
    }
}

/// Whether type `t`'s quantizer searches a grid of points (the IQ1, IQ2 and IQ3
/// formats), which ggml cannot do for a NaN or infinite value.
fn grid_searched(t: GgmlType) -> bool {
    use GgmlType as G;
    matches!(
        t,
        G::IQ1_S | G::IQ1_M | G::IQ2_XXS | G::IQ2_XS | G::IQ2_S | G::IQ3_XXS | G::IQ3_S
    )
}

/// Whether row bytes of type `t` hold only finite scales (quantized types) or finite
/// values (float types), as llama-quantize requires of what it writes.
fn row_is_valid(t: GgmlType, row: &[u8]) -> bool {
    let f16_finite = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 != 0x7c00;
    match t {
        GgmlType::F32 => row
            .chunks_exact(4)
            .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
        GgmlType::F16 => row.chunks_exact(2).all(f16_finite),
        GgmlType::BF16 => row
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 != 0x7f80),
        // IQ1_M spreads its f16 scale over the top nibbles of the 4 scale words (bytes
        // 48..56 of a block)
        GgmlType::IQ1_M => row.chunks_exact(t.block_bytes() as usize).all(|b| {
            let w = |k: usize| u16::from_le_bytes([b[48 + 2 * k], b[49 + 2 * k]]);
            let d = w(0) >> 12 | (w(1) >> 8) & 0x00f0 | (w(2) >> 4) & 0x0f00 | w(3) & 0xf000;
            f16_finite(&d.to_le_bytes())
        }),
        _ => {
            let offsets = scale_offsets(t);
            row.chunks_exact(t.block_bytes() as usize)
                .all(|b| offsets.iter().all(|&o| f16_finite(&b[o..o + 2])))
        }
    }
}

/// Rows of f32 values converted per task: large enough to amortise the hand-out, small
/// enough for the f32 buffer to stay in L2.
const TASK_VALUES: usize = 1 << 16;

/// Converts tensor `src` (its bytes `bytes`) as `p` says, on `threads` threads. Rows are
/// independent, so the result does not depend on how they are shared out.
fn convert(bytes: &[u8], src: &TensorInfo, p: &Plan, threads: usize) -> Result<Vec<u8>, String> {
    let n_per_row = p.dims[0] as usize;
    let rows_per_matrix = p.dims.get(1).copied().unwrap_or(1) as usize;
    let src_row = src.row_bytes() as usize;
    let dst_row = (p.dims[0] / p.to.block_elems() * p.to.block_bytes()) as usize;
    let n_rows = bytes.len() / src_row;
    let quantize = quantizer(p.to);
    let mut out = vec![0u8; n_rows * dst_row];

    // Tasks: runs of rows within one matrix (each expert has its own importances).
    let rows_per_task = (TASK_VALUES / n_per_row).clamp(1, rows_per_matrix);
    let mut tasks = Vec::new();
    let mut rest: &mut [u8] = &mut out;
    let mut row = 0;
    while row < n_rows {
        let end = (row + rows_per_task).min((row / rows_per_matrix + 1) * rows_per_matrix);
        let (head, tail) = rest.split_at_mut((end - row) * dst_row);
        tasks.push((row, end, head));
        rest = tail;
        row = end;
    }
    tasks.reverse();
    let tasks = Mutex::new(tasks);
    let failed = AtomicBool::new(false);
    // The first bad row found (the lowest, whichever thread finds it) and what is wrong.
    let first_bad = Mutex::new(None::<(usize, String)>);
    let report = |row: usize, what: String| {
        failed.store(true, Ordering::Relaxed);
        let mut first = first_bad.lock().unwrap_or_else(|e| e.into_inner());
        if first.as_ref().is_none_or(|(r, _)| row < *r) {
            *first = Some((row, what));
        }
    };

    let work = || {
        let mut x = Vec::new();
        loop {
            let Some((start, end, dst)) = tasks.lock().unwrap_or_else(|e| e.into_inner()).pop()
            else {
                break;
            };
            if failed.load(Ordering::Relaxed) {
                break;
            }
            x.resize((end - start) * n_per_row, 0.0);
            to_f32(
                src.ggml_type,
                &bytes[start * src_row..end * src_row],
                &mut x,
            );
            if grid_searched(p.to) {
                // ggml's grid searches abort on a value with no finite distance.
                if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                    let what = format!(
                        "holds {} at column {}; {} cannot quantize NaN or infinite values \
                         (ggml aborts on them)",
                        x[i],
                        i % n_per_row,
                        p.to
                    );
                    report(start + i / n_per_row, what);
                    break;
                }
            }
            let matrix = start / rows_per_matrix;
            let imatrix = p
                .imatrix
                .as_deref()
                .map(|im| &im[matrix * n_per_row..(matrix + 1) * n_per_row]);
            // A quantizer's assertion is a bug or an input ggml also rejects: an error
            // for this tensor, not a crash of the whole run.
            let quantized = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                quantize(&x, n_per_row, imatrix, dst)
            }));
            if let Err(e) = quantized {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report(start, format!("cannot be quantized to {}: {msg}", p.to));
                break;
            }
            if let Some(bad) = dst
                .chunks_exact(dst_row)
                .position(|r| !row_is_valid(p.to, r))
            {
                let what = format!(
                    "quantized to {} has a NaN or infinite scale (the weights hold NaN or \
                     infinite values, or values too large for {}); llama-quantize rejects it too",
                    p.to, p.to
                );
                report(start + bad, what);
                break;
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    if let Some((row, what)) = first_bad.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(format!("row {row} {what}"));
    }
    Ok(out)
}
