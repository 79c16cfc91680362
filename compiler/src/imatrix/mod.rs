//! `mcc imatrix MODEL -f TEXT -o imatrix.gguf`: the importance matrix llama-imatrix
//! computes, with mcc's own forward pass and kernels.
//!
//! mcc compiles MODEL (into its cache; an unchanged model rebuilds as a cargo no-op) and
//! runs the binary's hidden `imatrix` subcommand, which evaluates the text in chunks
//! exactly as llama-imatrix does and writes the sums of squared inputs of every weight
//! matrix in a raw form (`mcc_runtime::imatrix`). This module checks that against the
//! model and writes llama.cpp's GGUF imatrix file ([`file::write_gguf`]).

pub mod file;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::describe::describe;
use crate::gguf::GgufFile;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  mcc imatrix SmolLM2-135M-Instruct.F16.gguf -f calibration.txt -o imatrix.gguf
  mcc quantize --imatrix imatrix.gguf SmolLM2-135M-Instruct.F16.gguf out.gguf IQ4_XS")]
pub struct Args {
    /// The model (llama architecture; usually its F16 or BF16 file).
    pub model: PathBuf,
    /// The calibration text.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Where to write the importance matrix (llama.cpp's GGUF imatrix format).
    #[arg(short = 'o', long = "output", default_value = "imatrix.gguf")]
    pub output: PathBuf,
    /// Chunk length in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// Most tokens evaluated in one forward pass [default: the chunk length].
    #[arg(short = 'b', long = "batch-size")]
    pub batch_size: Option<usize>,
    /// Use at most this many chunks of the text [default: all].
    #[arg(long = "chunks")]
    pub chunks: Option<usize>,
    /// Threads for the forward pass [default: one per physical core].
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Also collect the input of output.weight (llama-imatrix's --process-output).
    #[arg(long = "process-output")]
    pub process_output: bool,
    /// Skip the perplexity estimate printed per chunk (it needs every scored logit).
    #[arg(long = "no-ppl")]
    pub no_ppl: bool,
    /// Build the model's binary for one CPU only (see `mcc build --target-cpu`).
    #[arg(long = "target-cpu", value_name = "CPU")]
    pub target_cpu: Option<String>,
    /// Where the model's binary is built [default: $MCC_CACHE/imatrix].
    #[arg(long = "build-dir", value_name = "DIR")]
    pub build_dir: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    if !args.file.is_file() {
        bail!("{}: no such file", args.file.display());
    }
    if args.ctx_size < 4 {
        bail!("-c must be at least 4, got {}", args.ctx_size);
    }
    if args.chunks == Some(0) {
        bail!("--chunks must be at least 1");
    }
    let g = GgufFile::open(&args.model).with_context(|| format!("{}", args.model.display()))?;
    describe(&g).with_context(|| format!("{}", args.model.display()))?;
    let widths: std::collections::HashMap<String, u64> = g
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dims[0]))
        .collect();
    drop(g);
    let dir = args
        .build_dir
        .clone()
        .unwrap_or_else(|| crate::build::cache_dir().join("imatrix"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("imatrix: compiling {}", args.model.display());
    let exe = crate::build::build_tool(
        &args.model,
        &dir,
        "imatrix",
        args.ctx_size,
        args.target_cpu.clone(),
    )?;

    let raw_path = dir.join(format!(
        "{}.{}.raw",
        exe.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _raw_guard = RemoveOnDrop(raw_path.clone());
    let mut cmd = Command::new(&exe);
    cmd.arg("imatrix")
        .arg("-f")
        .arg(&args.file)
        .arg("--raw-out")
        .arg(&raw_path)
        .arg("-c")
        .arg(args.ctx_size.to_string())
        .arg("-b")
        .arg(args.batch_size.unwrap_or(args.ctx_size).to_string());
    if let Some(n) = args.chunks {
        cmd.arg("--chunks").arg(n.to_string());
    }
    if let Some(t) = args.threads {
        cmd.arg("-t").arg(t.to_string());
    }
    if args.process_output {
        cmd.arg("--process-output");
    }
    if args.no_ppl {
        cmd.arg("--no-ppl");
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    if !status.success() {
        bail!(
            "{}: the imatrix pass over {} failed ({status}); nothing written",
            exe.display(),
            args.file.display()
        );
    }
    let bytes =
        std::fs::read(&raw_path).with_context(|| format!("reading {}", raw_path.display()))?;
    let raw = parse_raw(&bytes).with_context(|| format!("{}", raw_path.display()))?;

    // Every entry must be a matrix of the model, as wide as its rows.
    for e in &raw.entries {
        match widths.get(&e.name) {
            Some(&w) if w == e.sums.len() as u64 => {}
            Some(&w) => bail!(
                "{}: `{}` has {} columns, its sums {}",
                args.model.display(),
                e.name,
                w,
                e.sums.len()
            ),
            None => bail!("{}: no tensor `{}`", args.model.display(), e.name),
        }
    }
    let dataset = args.file.to_string_lossy().into_owned();
    file::write_gguf(
        &args.output,
        &raw.entries,
        &[dataset],
        raw.chunk_count,
        raw.chunk_size,
    )
    .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "imatrix: wrote {} ({} matrices, {} chunks of {} tokens)",
        args.output.display(),
        raw.entries.len(),
        raw.chunk_count,
        raw.chunk_size
    );
    Ok(())
}

/// Removes a file when dropped (the binary's raw output, whatever happens).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the binary's `imatrix` subcommand wrote.
struct Raw {
    chunk_count: u32,
    chunk_size: u32,
    entries: Vec<file::Entry>,
}

/// Reads the raw form (layout in `mcc_runtime::imatrix`'s docs).
fn parse_raw(bytes: &[u8]) -> Result<Raw> {
    let mut pos = 0;
    let mut take = |n: usize, what: &str| -> Result<&[u8]> {
        let s = bytes
            .get(pos..pos + n)
            .with_context(|| format!("truncated at byte {pos}, reading {what}"))?;
        pos += n;
        Ok(s)
    };
    if take(8, "the magic")? != b"MCCIMX01" {
        bail!("not an mcc imatrix pass output (bad magic)");
    }
    let mut u32_of =
        |what: &str| -> Result<u32> { Ok(u32::from_le_bytes(take(4, what)?.try_into().unwrap())) };
    let chunk_count = u32_of("the chunk count")?;
    let chunk_size = u32_of("the chunk size")?;
    let n = u32_of("the entry count")?;
    let mut entries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = u32::from_le_bytes(take(4, "a name length")?.try_into().unwrap()) as usize;
        let name = String::from_utf8(take(len, "a name")?.to_vec()).context("a name")?;
        let rows = u64::from_le_bytes(take(8, "a row count")?.try_into().unwrap());
        let n_vals = u32::from_le_bytes(take(4, "a value count")?.try_into().unwrap()) as usize;
        let sums = take(4 * n_vals, "sums")?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<f32>>();
        if let Some(x) = sums.iter().find(|x| !x.is_finite()) {
            bail!("`{name}`: non-finite sum {x} (the model's activations overflow)");
        }
        entries.push(file::Entry { name, rows, sums });
    }
    if pos != bytes.len() {
        bail!("{} bytes after the last entry", bytes.len() - pos);
    }
    Ok(Raw {
        chunk_count,
        chunk_size,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(entries: &[(&str, u64, &[f32])]) -> Vec<u8> {
        let mut b = b"MCCIMX01".to_vec();
        for v in [3u32, 512, entries.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for (name, rows, sums) in entries {
            b.extend_from_slice(&(name.len() as u32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&rows.to_le_bytes());
            b.extend_from_slice(&(sums.len() as u32).to_le_bytes());
            sums.iter()
                .for_each(|s| b.extend_from_slice(&s.to_le_bytes()));
        }
        b
    }

    #[test]
    fn raw_output_round_trips_through_the_gguf_file() {
        let bytes = raw(&[
            ("blk.1.ffn_up.weight", 1536, &[1.0, 2.5, 0.0]),
            ("blk.0.attn_q.weight", 1536, &[4.0, 8.0, 1e-30]),
        ]);
        let r = parse_raw(&bytes).unwrap();
        assert_eq!((r.chunk_count, r.chunk_size, r.entries.len()), (3, 512, 2));
        let dir = std::env::temp_dir().join(format!("mcc-imatrix-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("im.gguf");
        file::write_gguf(&path, &r.entries, &["calib.txt".into()], 3, 512).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blk.0.attn_q.weight.in_sum2",
                "blk.0.attn_q.weight.counts",
                "blk.1.ffn_up.weight.in_sum2",
                "blk.1.ffn_up.weight.counts"
            ]
        );
        let keys: Vec<&str> = g.metadata.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "general.type",
                "imatrix.datasets",
                "imatrix.chunk_count",
                "imatrix.chunk_size"
            ]
        );
        let im = file::Imatrix::load(&path).unwrap();
        assert_eq!(im.chunk_count, 3);
        assert_eq!(im.datasets, ["calib.txt"]);
        assert_eq!(
            im.entries["blk.1.ffn_up.weight"],
            [1.0 / 1536.0, 2.5 / 1536.0, 0.0]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_raw_output_is_an_error_that_says_where() {
        let good = raw(&[("blk.0.attn_q.weight", 512, &[1.0, 2.0])]);
        let e = parse_raw(&good[..good.len() - 3]).err().unwrap();
        assert!(format!("{e:#}").contains("truncated"), "{e:#}");
        let e = parse_raw(b"GGUF\0\0\0\0").err().unwrap();
        assert!(format!("{e:#}").contains("bad magic"), "{e:#}");
        let nan = raw(&[("blk.0.attn_q.weight", 512, &[f32::NAN])]);
        let e = parse_raw(&nan).err().unwrap();
        assert!(format!("{e:#}").contains("non-finite"), "{e:#}");
    }
}
