//! `mcc ppl-table`: compile several GGUF files of one model and measure each with its
//! own binary's `perplexity` subcommand, then print one table in the seed's format:
//! Quant, Size (MB), PPL, Size (%), Accuracy (%), PPL error rate.
//!
//! Definitions (as in the seed table):
//! - **Size (MB)**: the GGUF file's size in MiB (bytes / 2^20).
//! - **PPL** and **PPL error rate**: the binary's `Final estimate: PPL = X +/- Y`
//!   (llama.cpp's method and error estimate).
//! - **Size (%)**: size relative to the F16 file; **Accuracy (%)**: PPL(F16) / PPL.
//!   Both need an F16 file among the inputs (the 100% baseline); without one they are
//!   left empty.
//!
//! Rows are sorted by file size, smallest first. Builds go through [`crate::build::run`]
//! with one crate name per file, so a second run of the same table only re-links
//! what changed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::describe::{describe, file_type_name};
use crate::gguf::GgufFile;

/// Table output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A GitHub-flavoured Markdown table.
    Md,
    /// Comma-separated values with a header row.
    Csv,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  mcc ppl-table SmolLM2-135M-Instruct.F16.gguf SmolLM2-135M-Instruct.Q4_K_M.gguf \\
      -f wiki.test.raw -c 512 --chunks 20")]
pub struct Args {
    /// GGUF files to compile and measure (one model in several quantizations; include
    /// the F16 file for the Size (%) and Accuracy (%) columns).
    #[arg(required = true, value_name = "GGUF")]
    pub models: Vec<PathBuf>,
    /// The text to score.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Chunk length in tokens (the binaries' `perplexity -c`).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// Score at most this many chunks per model.
    #[arg(long = "chunks")]
    pub chunks: Option<usize>,
    /// Most tokens per forward pass (the binaries' `-b`) [default: theirs, 512].
    #[arg(short = 'b', long = "batch-size")]
    pub batch_size: Option<usize>,
    /// Threads per binary [default: theirs, one per physical core].
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value = "md")]
    pub format: Format,
    /// Build each binary for one CPU only (as `mcc build --target-cpu`) [default: every
    /// kernel tier, the best chosen at start-up].
    #[arg(long = "target-cpu", value_name = "CPU")]
    pub target_cpu: Option<String>,
    /// Where the binaries and their crates go [default: $MCC_CACHE/ppl-table, MCC_CACHE
    /// defaulting to ~/.cache/mcc].
    #[arg(long = "build-dir", value_name = "DIR")]
    pub build_dir: Option<PathBuf>,
}

/// One measured file.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// File type name (`general.file_type`), e.g. `Q4_K_M`.
    pub quant: String,
    pub file: PathBuf,
    pub bytes: u64,
    pub ppl: f64,
    pub ppl_err: f64,
}

pub fn run(args: &Args) -> Result<()> {
    if !args.file.is_file() {
        bail!("{}: no such file", args.file.display());
    }
    let dir = args
        .build_dir
        .clone()
        .unwrap_or_else(|| crate::build::cache_dir().join("ppl-table"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let eval = Eval {
        text: &args.file,
        ctx_size: args.ctx_size,
        chunks: args.chunks,
        batch_size: args.batch_size,
        threads: args.threads,
    };
    let mut rows = Vec::with_capacity(args.models.len());
    for (i, model) in args.models.iter().enumerate() {
        let quant = quant_name(model)?;
        eprintln!(
            "ppl-table: [{}/{}] {} ({quant})",
            i + 1,
            args.models.len(),
            model.display()
        );
        let row = measure_file(model, quant, &eval, &dir, args.target_cpu.clone())?;
        eprintln!(
            "ppl-table: {}: PPL = {:.4} +/- {:.5}",
            row.quant, row.ppl, row.ppl_err
        );
        rows.push(row);
    }
    print!("{}", render(&rows, args.format));
    Ok(())
}

/// How a file is scored: the binaries' `perplexity` options.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Eval<'a> {
    /// The text to score.
    pub text: &'a Path,
    /// Chunk length in tokens (`-c`).
    pub ctx_size: usize,
    /// At most this many chunks (`--chunks`) [default: the whole text].
    pub chunks: Option<usize>,
    /// Most tokens per forward pass (`-b`) [default: the binary's].
    pub batch_size: Option<usize>,
    /// Threads (`-t`) [default: the binary's].
    pub threads: Option<usize>,
}

/// Compiles `model` into `build_dir` (crate `ppl-<file stem>`, so a rebuild of an
/// unchanged file is a cargo no-op) and scores the text with its `perplexity`
/// subcommand: one row of the table, named `quant`.
pub(crate) fn measure_file(
    model: &Path,
    quant: String,
    eval: &Eval,
    build_dir: &Path,
    target_cpu: Option<String>,
) -> Result<Row> {
    let bytes = std::fs::metadata(model)
        .with_context(|| format!("{}", model.display()))?
        .len();
    let exe = crate::build::build_tool(model, build_dir, "ppl", eval.ctx_size, target_cpu)?;
    let (ppl, ppl_err) = measure(eval, &exe)?;
    Ok(Row {
        quant,
        file: model.to_path_buf(),
        bytes,
        ppl,
        ppl_err,
    })
}

/// The file type name from the metadata, or the file name's last dotted part
/// (`x.Q4_K_M.gguf`) when the metadata has none.
fn quant_name(model: &Path) -> Result<String> {
    let g = GgufFile::open(model).with_context(|| format!("{}", model.display()))?;
    let desc = describe(&g).with_context(|| format!("{}", model.display()))?;
    if let Some(name) = desc.file_type.and_then(file_type_name) {
        return Ok(name.to_string());
    }
    let stem = model.file_stem().unwrap_or_default().to_string_lossy();
    Ok(stem.rsplit('.').next().unwrap_or(&stem).to_string())
}

/// Runs `exe perplexity` over the text and returns (PPL, its error estimate).
fn measure(eval: &Eval, exe: &Path) -> Result<(f64, f64)> {
    let mut cmd = Command::new(exe);
    cmd.arg("perplexity")
        .arg("-f")
        .arg(eval.text)
        .arg("-c")
        .arg(eval.ctx_size.to_string());
    if let Some(k) = eval.chunks {
        cmd.arg("--chunks").arg(k.to_string());
    }
    if let Some(b) = eval.batch_size {
        cmd.arg("-b").arg(b.to_string());
    }
    if let Some(t) = eval.threads {
        cmd.arg("-t").arg(t.to_string());
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} perplexity failed ({}):\n{stdout}",
            exe.display(),
            out.status
        );
    }
    parse_final_estimate(&stdout).with_context(|| {
        format!(
            "{} printed no `Final estimate: PPL = X +/- Y` line:\n{stdout}",
            exe.display()
        )
    })
}

/// (X, Y) from the last `Final estimate: PPL = X +/- Y` line.
pub fn parse_final_estimate(text: &str) -> Option<(f64, f64)> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("Final estimate: PPL ="))?;
    let rest = line.split("PPL =").nth(1)?;
    let mut parts = rest.split("+/-");
    let ppl = parts.next()?.trim().parse().ok()?;
    let err = parts.next()?.trim().parse().ok()?;
    Some((ppl, err))
}

/// The table, rows sorted by file size (smallest first).
pub fn render(rows: &[Row], format: Format) -> String {
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| r.bytes);
    let base = rows.iter().find(|r| r.quant == "F16");
    const MIB: f64 = 1024.0 * 1024.0;
    let header = [
        "Quant",
        "Size (MB)",
        "PPL",
        "Size (%)",
        "Accuracy (%)",
        "PPL error rate",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let (size_pct, acc_pct) = match base {
                Some(b) => (
                    format!("{:.2}", 100.0 * r.bytes as f64 / b.bytes as f64),
                    format!("{:.2}", 100.0 * b.ppl / r.ppl),
                ),
                None => (String::new(), String::new()),
            };
            [
                r.quant.clone(),
                format!("{:.1}", r.bytes as f64 / MIB),
                format!("{:.4}", r.ppl),
                size_pct,
                acc_pct,
                format!("{:.4}", r.ppl_err),
            ]
        })
        .collect();
    let mut s = String::new();
    match format {
        Format::Csv => {
            let _ = writeln!(s, "{}", header.join(","));
            for row in &cells {
                let _ = writeln!(s, "{}", row.join(","));
            }
        }
        Format::Md => {
            let _ = writeln!(s, "| {} |", header.join(" | "));
            let _ = writeln!(s, "|{}", " --- |".repeat(header.len()));
            for row in &cells {
                let _ = writeln!(s, "| {} |", row.join(" | "));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(quant: &str, bytes: u64, ppl: f64, err: f64) -> Row {
        Row {
            quant: quant.into(),
            file: PathBuf::from(format!("m.{quant}.gguf")),
            bytes,
            ppl,
            ppl_err: err,
        }
    }

    #[test]
    fn parses_the_binary_final_line() {
        let out = "[1]14.1698,[2]13.2249,\nFinal estimate: PPL = 14.6581 +/- 1.05617\n";
        assert_eq!(parse_final_estimate(out), Some((14.6581, 1.05617)));
        assert_eq!(parse_final_estimate("[1]14.1698,\n"), None);
        assert_eq!(
            parse_final_estimate("Final estimate: PPL = nan? +/- 1"),
            None
        );
    }

    #[test]
    fn f16_is_the_baseline_and_rows_sort_by_size() {
        let rows = [
            row("F16", 2 * 1024 * 1024 * 100, 10.0, 0.1),
            row("Q4_1", 1024 * 1024 * 50, 12.5, 0.2),
        ];
        let md = render(&rows, Format::Md);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[0],
            "| Quant | Size (MB) | PPL | Size (%) | Accuracy (%) | PPL error rate |"
        );
        assert_eq!(
            lines[2],
            "| Q4_1 | 50.0 | 12.5000 | 25.00 | 80.00 | 0.2000 |"
        );
        assert_eq!(
            lines[3],
            "| F16 | 200.0 | 10.0000 | 100.00 | 100.00 | 0.1000 |"
        );
        let csv = render(&rows, Format::Csv);
        assert_eq!(
            csv.lines().nth(1),
            Some("Q4_1,50.0,12.5000,25.00,80.00,0.2000")
        );
    }

    #[test]
    fn without_f16_the_relative_columns_are_empty() {
        let csv = render(&[row("Q8_0", 1024 * 1024, 9.0, 0.1)], Format::Csv);
        assert_eq!(csv.lines().nth(1), Some("Q8_0,1.0,9.0000,,,0.1000"));
    }
}
