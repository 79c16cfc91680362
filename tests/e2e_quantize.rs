//! `mcc quantize` against llama.cpp's `llama-quantize`: for every file type of the quant
//! ladder (all 27 quantized types), SmolLM2-135M-Instruct's F16 file quantized with the
//! ladder's importance matrix must be the ladder's file byte for byte (metadata, tensor
//! infos, data and padding), at 1 and at 2 threads. The ladder's F16 file itself is llama-quantize's `--allow-requantize` of the Q4_1
//! file, so requantizing that Q4_1 to F16 must give it too.
//!
//! The models come from `scripts/make-models.sh` (llama.cpp's tools); where they are
//! missing the test prints a SKIPPED line naming the script and passes. An unoptimised
//! build (`cargo test` without `--release`) checks the cheap rungs only (F16, Q8_0) and
//! says so; `MCC_LADDER=Q4_K_M,Q6_K` checks a subset.
//!
//! Bad input (unknown type, an importance matrix for another model or truncated, a
//! model that is not llama, a type that needs an importance matrix) must fail with an
//! error naming the file and field, and leave nothing at the output path.

use std::io::Write;
use std::path::{Path, PathBuf};

use mcc::gguf::writer::{GgufWriter, TensorData, WriteMode};
use mcc::gguf::{Array, GgmlType, GgufFile, Value, ValueType};
use mcc::quantize::Args;
use mcc_e2e::cache_dir;

/// The 27 file types of the ladder (scripts/make-models.sh).
const LADDER: [&str; 27] = [
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S", "Q2_K", "IQ3_XXS", "IQ3_XS",
    "Q3_K_S", "IQ3_S", "IQ3_M", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_0", "IQ4_NL", "Q4_K_S", "Q4_K_M",
    "Q4_1", "Q5_K_S", "Q5_0", "Q5_K_M", "Q5_1", "Q6_K", "Q8_0",
];

const STEM: &str = "SmolLM2-135M-Instruct";

/// Writes a line to the real stderr: libtest captures `eprintln!`, but a skip must show.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn args(input: &Path, output: &Path, ftype: &str, imatrix: Option<&Path>, threads: usize) -> Args {
    Args {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        ftype: ftype.to_string(),
        imatrix: imatrix.map(Path::to_path_buf),
        threads: Some(threads),
        allow_requantize: false,
    }
}

/// Where two GGUF files first differ, as a reader would want to hear it: the first
/// metadata key, tensor info or tensor whose bytes differ, or the tail. `None` when the
/// files are equal byte for byte.
fn first_difference(ours: &Path, theirs: &Path) -> Option<String> {
    let (a_bytes, b_bytes) = (std::fs::read(ours).unwrap(), std::fs::read(theirs).unwrap());
    if a_bytes == b_bytes {
        return None;
    }
    let a = GgufFile::open(ours).unwrap_or_else(|e| panic!("our output does not parse: {e}"));
    let b = GgufFile::open(theirs).unwrap();
    if a.version != b.version {
        return Some(format!("GGUF version {} vs {}", a.version, b.version));
    }
    for i in 0..a.metadata.len().max(b.metadata.len()) {
        match (a.metadata.get(i), b.metadata.get(i)) {
            (Some((ka, va)), Some((kb, vb))) if ka == kb && va == vb => {}
            (x, y) => {
                let show = |kv: Option<&(String, Value)>| {
                    kv.map_or("(none)".to_string(), |(k, v)| {
                        format!("`{k}` = {}", v.brief())
                    })
                };
                return Some(format!(
                    "metadata entry {i}: ours {}, llama-quantize's {}",
                    show(x),
                    show(y)
                ));
            }
        }
    }
    for i in 0..a.tensors.len().max(b.tensors.len()) {
        match (a.tensors.get(i), b.tensors.get(i)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                return Some(format!(
                    "tensor info {i}: ours {x:?}, llama-quantize's {y:?}"
                ))
            }
        }
    }
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        let (dx, dy) = (a.tensor_data(x), b.tensor_data(y));
        if let Some(at) = dx.iter().zip(dy).position(|(p, q)| p != q) {
            let row = at as u64 / x.row_bytes();
            return Some(format!(
                "tensor `{}` ({}): first different byte {at} (row {row} of {})",
                x.name,
                x.ggml_type,
                x.n_rows()
            ));
        }
    }
    Some(format!(
        "the bytes after the header or the last tensor: {} vs {} bytes in all",
        a_bytes.len(),
        b_bytes.len()
    ))
}

/// A fresh directory for outputs.
fn scratch(tag: &str) -> PathBuf {
    let dir = cache_dir()
        .join("test-builds")
        .join(format!("quantize-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one quantization and compares it with llama-quantize's file; returns the
/// difference, or the error text when mcc refused.
fn check(a: &Args, golden: &Path) -> Result<Option<String>, String> {
    mcc::quantize::run(a).map_err(|e| format!("{e:#}"))?;
    let diff = first_difference(&a.output, golden);
    std::fs::remove_file(&a.output).unwrap();
    Ok(diff)
}

#[test]
fn ladder_files_match_llama_quantize_byte_for_byte() {
    let dir = cache_dir().join("models/ladder");
    let f16 = dir.join(format!("{STEM}.F16.gguf"));
    let imatrix_file = dir.join("imatrix.gguf");
    if !f16.is_file() || !imatrix_file.is_file() {
        announce(&format!(
            "SKIPPED mcc quantize vs llama-quantize: {} or {} is missing. Make them with \
             scripts/make-models.sh (needs llama.cpp's llama-quantize and llama-imatrix)",
            f16.display(),
            imatrix_file.display()
        ));
        return;
    }
    let optimised = !cfg!(debug_assertions);
    let subset: Option<Vec<String>> = std::env::var("MCC_LADDER")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let wanted = |t: &str| match &subset {
        Some(s) => s.iter().any(|x| x == t),
        None => optimised || t == "Q8_0" || t == "F16",
    };
    if !optimised && subset.is_none() {
        announce(
            "mcc quantize vs llama-quantize: unoptimised build, checking F16 and Q8_0 only \
             (run with --release, or MCC_LADDER=TYPE,..., for the whole ladder)",
        );
    }
    let out_dir = scratch("ladder");
    let mut failures = Vec::new();
    let mut identical = Vec::new();
    let mut missing = Vec::new();

    // F16: llama-quantize --allow-requantize of the Q4_1 file, without an imatrix.
    let q4_1 = cache_dir().join(format!("models/{STEM}.Q4_1.gguf"));
    if wanted("F16") && q4_1.is_file() {
        for threads in [1, 2] {
            let mut a = args(&q4_1, &out_dir.join("F16.gguf"), "F16", None, threads);
            a.allow_requantize = true;
            match check(&a, &f16) {
                Ok(None) => identical.push(format!("F16 (from Q4_1) at {threads} threads")),
                Ok(Some(d)) => failures.push(format!("F16 from Q4_1, {threads} threads: {d}")),
                Err(e) => failures.push(format!("F16 from Q4_1, {threads} threads: error: {e}")),
            }
        }
    }

    for ty in LADDER.into_iter().filter(|t| wanted(t)) {
        let golden = dir.join(format!("{STEM}.{ty}.gguf"));
        if !golden.is_file() {
            missing.push(ty);
            continue;
        }
        // The imatrix path as llama-quantize was given it: it is in the file.
        let g = GgufFile::open(&golden).unwrap();
        let imatrix = match g.get("quantize.imatrix.file").and_then(Value::as_str) {
            Some(p) if Path::new(p).is_file() => PathBuf::from(p),
            _ => imatrix_file.clone(),
        };
        for threads in [1, 2] {
            let out = out_dir.join(format!("{ty}.gguf"));
            let a = args(&f16, &out, ty, Some(&imatrix), threads);
            match check(&a, &golden) {
                Ok(None) => identical.push(format!("{ty} at {threads} threads")),
                Ok(Some(d)) => failures.push(format!("{ty}, {threads} threads: {d}")),
                Err(e) => failures.push(format!("{ty}, {threads} threads: error: {e}")),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    for line in &identical {
        announce(&format!("identical to llama-quantize: {line}"));
    }
    if !missing.is_empty() {
        announce(&format!(
            "SKIPPED {} ladder file types (not in {}): {}. Make them with scripts/make-models.sh",
            missing.len(),
            dir.display(),
            missing.join(", ")
        ));
    }
    assert!(
        failures.is_empty(),
        "mcc quantize differs from llama-quantize:\n{}",
        failures.join("\n")
    );
}

/// A small llama model (F32 weights, rows 256 wide) for the bad-input checks.
fn tiny_llama(path: &Path, arch: &str) {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String(arch.into()))
        .add_kv(format!("{arch}.block_count"), Value::U32(1))
        .add_kv(format!("{arch}.attention.head_count"), Value::U32(4))
        .add_kv(format!("{arch}.attention.head_count_kv"), Value::U32(4))
        .add_kv("general.file_type", Value::U32(0));
    let normal = |seed| TensorData::RandomNormal { seed, std: 0.5 };
    w.add_tensor("token_embd.weight", &[256, 8], GgmlType::F32, normal(1))
        .add_tensor(
            "output_norm.weight",
            &[256],
            GgmlType::F32,
            TensorData::Constant(1.0),
        )
        .add_tensor("blk.0.attn_q.weight", &[256, 16], GgmlType::F32, normal(2))
        .add_tensor(
            "blk.0.ffn_down.weight",
            &[256, 16],
            GgmlType::F32,
            normal(3),
        );
    w.write(path, WriteMode::Full).unwrap();
}

/// Runs `a`, expects an error containing every one of `needles`, and no output file.
fn expect_error(a: &Args, needles: &[&str]) {
    let e = match mcc::quantize::run(a) {
        Ok(()) => panic!(
            "{:?} succeeded, expected an error with {needles:?}",
            a.ftype
        ),
        Err(e) => format!("{e:#}"),
    };
    for n in needles {
        assert!(e.contains(n), "error {e:?} does not mention {n:?}");
    }
    assert!(!a.output.exists(), "an error left {}", a.output.display());
    let dir = a.output.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let dir = scratch("bad");
    let model = dir.join("tiny.gguf");
    tiny_llama(&model, "llama");
    let out = dir.join("out.gguf");
    let good = dir.join("good.dat");
    mcc_e2e::legacy_imatrix(
        &good,
        &[("blk.0.attn_q.weight", 256), ("blk.0.ffn_down.weight", 256)],
    );

    // The happy path first, so that the errors below are the inputs' fault: the same
    // bytes at 1 and 3 threads, and the importance matrix changes them.
    mcc::quantize::run(&args(&model, &out, "Q4_K_M", Some(&good), 1)).unwrap();
    let one = std::fs::read(&out).unwrap();
    mcc::quantize::run(&args(&model, &out, "q4_k_m", Some(&good), 3)).unwrap();
    assert_eq!(
        one,
        std::fs::read(&out).unwrap(),
        "output depends on the thread count"
    );
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get("general.file_type"), Some(&Value::U32(15)));
    assert_eq!(
        g.get("quantize.imatrix.file").and_then(Value::as_str),
        good.to_str()
    );
    assert_eq!(
        g.get("quantize.imatrix.entries_count"),
        Some(&Value::U32(2))
    );
    // Tied embeddings whose rows Q6_K's block divides: Q6_K; ffn_down of layer 0 of 1
    // gets more bits in Q4_K_M (Q6_K); attn_q the default Q4_K; the norm stays F32.
    let ty = |n: &str| g.tensor(n).unwrap().ggml_type;
    assert_eq!(ty("token_embd.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q4_K);
    assert_eq!(ty("output_norm.weight"), GgmlType::F32);
    std::fs::remove_file(&out).unwrap();

    expect_error(
        &args(&model, &out, "Q9_9", None, 1),
        &["unknown file type", "Q9_9"],
    );
    expect_error(
        &args(&model, &out, "COPY", None, 1),
        &["not supported", "COPY"],
    );
    expect_error(
        &args(&model, &out, "IQ2_XXS", None, 1),
        &["importance matrix", "blk.0.attn_q.weight", "IQ2_XXS"],
    );
    // With one, IQ2_XXS and IQ1_S are written (their quantizers need the importance
    // vector).
    for (ftype, ty) in [("IQ2_XXS", GgmlType::IQ2_XXS), ("IQ1_S", GgmlType::IQ1_S)] {
        mcc::quantize::run(&args(&model, &out, ftype, Some(&good), 1)).unwrap();
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().ggml_type, ty);
        std::fs::remove_file(&out).unwrap();
    }
    let before = std::fs::read(&model).unwrap();
    let e = mcc::quantize::run(&args(&model, &model, "Q8_0", None, 1)).unwrap_err();
    assert!(format!("{e:#}").contains("same file"), "{e:#}");
    assert_eq!(
        std::fs::read(&model).unwrap(),
        before,
        "the input was changed"
    );

    // An importance matrix for another model: a wrong width, a missing tensor.
    let narrow = dir.join("narrow.dat");
    mcc_e2e::legacy_imatrix(
        &narrow,
        &[("blk.0.attn_q.weight", 128), ("blk.0.ffn_down.weight", 256)],
    );
    expect_error(
        &args(&model, &out, "Q4_0", Some(&narrow), 1),
        &[
            "narrow.dat",
            "blk.0.attn_q.weight",
            "128 values",
            "256 columns",
            "another model",
        ],
    );
    let other = dir.join("other.dat");
    mcc_e2e::legacy_imatrix(&other, &[("blk.7.attn_k.weight", 256)]);
    expect_error(
        &args(&model, &out, "Q4_0", Some(&other), 1),
        &["other.dat", "no entry for any tensor", "another model"],
    );
    // A matrix without some tensors (llama-imatrix leaves `output` out by default):
    // those are quantized without importances, as llama-quantize does.
    let partial = dir.join("partial.dat");
    mcc_e2e::legacy_imatrix(&partial, &[("blk.0.attn_q.weight", 256)]);
    mcc::quantize::run(&args(&model, &out, "Q4_0", Some(&partial), 1)).unwrap();
    std::fs::remove_file(&out).unwrap();

    // Truncated importance matrices, in both formats.
    let cut = dir.join("cut.dat");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    expect_error(
        &args(&model, &out, "Q4_0", Some(&cut), 1),
        &["cut.dat", "truncated", "entry 2 of 2", "values"],
    );
    let gguf_im = dir.join("im.gguf");
    let mut w = GgufWriter::new();
    w.add_kv(
        "imatrix.datasets",
        Value::Array(Array {
            elem_type: ValueType::String,
            items: vec![Value::String("text.txt".into())],
        }),
    )
    .add_kv("imatrix.chunk_count", Value::U32(3))
    .add_kv("imatrix.chunk_size", Value::U32(512));
    for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"] {
        w.add_tensor(
            format!("{name}.in_sum2"),
            &[256, 1],
            GgmlType::F32,
            TensorData::Constant(2.0),
        )
        .add_tensor(
            format!("{name}.counts"),
            &[1, 1],
            GgmlType::F32,
            TensorData::Constant(4.0),
        );
    }
    w.write(&gguf_im, WriteMode::Full).unwrap();
    mcc::quantize::run(&args(&model, &out, "Q4_0", Some(&gguf_im), 2)).unwrap();
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(
        g.get("quantize.imatrix.dataset").and_then(Value::as_str),
        Some("text.txt")
    );
    assert_eq!(g.get("quantize.imatrix.chunks_count"), Some(&Value::U32(3)));
    std::fs::remove_file(&out).unwrap();
    let bytes = std::fs::read(&gguf_im).unwrap();
    let cut_gguf = dir.join("cut.gguf");
    std::fs::write(&cut_gguf, &bytes[..bytes.len() - 100]).unwrap();
    expect_error(
        &args(&model, &out, "Q4_0", Some(&cut_gguf), 1),
        &["importance matrix", "cut.gguf", "in_sum2", "data range"],
    );

    // A model that is not llama.
    let gpt2 = dir.join("gpt2.gguf");
    tiny_llama(&gpt2, "gpt2");
    expect_error(
        &args(&gpt2, &out, "Q8_0", None, 1),
        &[
            "gpt2.gguf",
            "general.architecture",
            "unsupported architecture",
        ],
    );
    // An already quantized model, without --allow-requantize.
    let q8 = dir.join("q8.gguf");
    mcc::quantize::run(&args(&model, &q8, "Q8_0", None, 1)).unwrap();
    expect_error(
        &args(&q8, &out, "Q4_0", None, 1),
        &["q8.gguf", "already quantized", "--allow-requantize"],
    );

    // A negative importance (a damaged file: importances are sums of squares).
    let negative = dir.join("negative.dat");
    let mut bytes = std::fs::read(&good).unwrap();
    let last = bytes.len() - 4;
    bytes[last..].copy_from_slice(&(-1.0f32).to_le_bytes());
    std::fs::write(&negative, bytes).unwrap();
    expect_error(
        &args(&model, &out, "Q4_0", Some(&negative), 1),
        &[
            "negative.dat",
            "blk.0.ffn_down.weight",
            "negative importance",
        ],
    );
    // A NaN weight: the IQ grid searches cannot place it (ggml aborts); an error that
    // names the tensor, row and column.
    let nan_model = dir.join("nan.gguf");
    let mut g = GgufWriter::new();
    for (k, v) in GgufFile::open(&model).unwrap().metadata {
        g.add_kv(k, v);
    }
    let src = GgufFile::open(&model).unwrap();
    for t in &src.tensors {
        let mut data = src.tensor_data(t).to_vec();
        if t.name == "blk.0.attn_q.weight" {
            let at = (3 * 256 + 17) * 4;
            data[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        g.add_tensor(
            t.name.clone(),
            &t.dims,
            t.ggml_type,
            TensorData::Bytes(data),
        );
    }
    g.write(&nan_model, WriteMode::Full).unwrap();
    expect_error(
        &args(&nan_model, &out, "IQ2_XXS", Some(&good), 2),
        &["blk.0.attn_q.weight", "row 3", "column 17", "NaN"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
