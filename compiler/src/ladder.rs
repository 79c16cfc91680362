//! `mcc ladder MODEL -f CALIB --eval TEXT -o DIR`: the seed's quantization table in one
//! command. The steps, each with a progress line on stderr:
//!
//! 1. The importance matrix of MODEL over CALIB ([`crate::imatrix::run`]), written to
//!    `DIR/imatrix.gguf`; or, with `--imatrix FILE`, FILE used as it is.
//! 2. MODEL quantized to each file type with that matrix ([`crate::quantize::run`]):
//!    `DIR/<stem>.<TYPE>.gguf`, where `<stem>` is MODEL's file stem less a trailing
//!    file type name (`m.F16.gguf` → `m`). Each file records the matrix's path as given
//!    (`DIR/imatrix.gguf` or FILE), as llama-quantize records its `--imatrix` argument.
//! 3. Each file compiled and scored on TEXT with its binary's `perplexity`
//!    ([`crate::ppl_table`]); the table (Quant, Size (MB), PPL, Size (%), Accuracy (%),
//!    PPL error rate, smallest first) goes to stdout and to `DIR/table.md`.
//!
//! The default types are the seed table's 27 quantized types and F16, the 100% baseline
//! of the relative columns. A type that is MODEL's own float type (F16 for an F16
//! model) is not rewritten: its row measures MODEL itself.
//!
//! Every argument is checked before anything is written: a missing file, an unknown
//! type, an output path that is not a directory or a model that is not a float llama
//! GGUF is an error naming it, and DIR is left as it was. Every file is written under a
//! temporary name and renamed, so a failure later (a build, say) leaves the files of the
//! finished steps and no partial one. Without `--keep` every step runs again (a rerun
//! rewrites the same bytes; the binaries' builds are cargo no-ops for unchanged files);
//! with it, an existing `DIR/imatrix.gguf` and existing quantized files of the right
//! type are used as they are.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::gguf::{GgufFile, Value};
use crate::imatrix::file::Imatrix;
use crate::ppl_table::{self, Eval, Format, Row};
use crate::quantize::ftype::{is_quantized, FileType};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  mcc ladder SmolLM2-135M-Instruct.F16.gguf -f calibration.txt --eval wiki.test.raw \\
      -o ladder --eval-chunks 20
  mcc ladder SmolLM2-135M-Instruct.F16.gguf --imatrix imatrix.gguf --eval wiki.test.raw \\
      -o ladder --types Q4_K_M,IQ2_XS,F16")]
pub struct Args {
    /// The model to quantize: a llama GGUF with F16, BF16 or F32 weights.
    pub model: PathBuf,
    /// The calibration text for the importance matrix.
    #[arg(short = 'f', long = "file", required_unless_present = "imatrix")]
    pub file: Option<PathBuf>,
    /// Use this importance matrix (llama.cpp's GGUF or .dat format) instead of
    /// computing one from -f.
    #[arg(long = "imatrix", value_name = "FILE", conflicts_with = "file")]
    pub imatrix: Option<PathBuf>,
    /// The text to score each file on.
    #[arg(long = "eval", value_name = "TEXT")]
    pub eval: PathBuf,
    /// The directory for the importance matrix, the quantized files and table.md
    /// (created if missing).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// File types, comma-separated, by llama-quantize's names [default: the seed
    /// table's 27 quantized types and F16].
    #[arg(long = "types", value_name = "TYPE,...", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Chunk length in tokens, for the importance matrix and the scoring.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// Compute the importance matrix over at most this many chunks [default: all].
    #[arg(long = "imatrix-chunks", value_name = "N")]
    pub imatrix_chunks: Option<usize>,
    /// Score at most this many chunks of the text per file [default: all].
    #[arg(long = "eval-chunks", value_name = "N")]
    pub eval_chunks: Option<usize>,
    /// Threads for every step [default: each step's own].
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Build the binaries for one CPU only (as `mcc build --target-cpu`).
    #[arg(long = "target-cpu", value_name = "CPU")]
    pub target_cpu: Option<String>,
    /// Where the binaries and their crates go [default: $MCC_CACHE/ladder].
    #[arg(long = "build-dir", value_name = "DIR")]
    pub build_dir: Option<PathBuf>,
    /// Use DIR/imatrix.gguf and the quantized files already in DIR instead of making
    /// them again (trusting that they were made from the same model and text).
    #[arg(long)]
    pub keep: bool,
}

/// The seed table's quantized types, smallest first (scripts/make-models.sh).
pub const SEED_TYPES: [FileType; 27] = [
    FileType::IQ1_S,
    FileType::IQ1_M,
    FileType::IQ2_XXS,
    FileType::IQ2_XS,
    FileType::IQ2_S,
    FileType::IQ2_M,
    FileType::Q2_K_S,
    FileType::Q2_K,
    FileType::IQ3_XXS,
    FileType::IQ3_XS,
    FileType::Q3_K_S,
    FileType::IQ3_S,
    FileType::IQ3_M,
    FileType::Q3_K_M,
    FileType::Q3_K_L,
    FileType::IQ4_XS,
    FileType::Q4_0,
    FileType::IQ4_NL,
    FileType::Q4_K_S,
    FileType::Q4_K_M,
    FileType::Q4_1,
    FileType::Q5_K_S,
    FileType::Q5_0,
    FileType::Q5_K_M,
    FileType::Q5_1,
    FileType::Q6_K,
    FileType::Q8_0,
];

/// The file types of `--types` (the seed's 27 and F16 when empty), in the order given.
pub fn parse_types(list: &[String]) -> Result<Vec<FileType>> {
    if list.is_empty() {
        return Ok(SEED_TYPES.iter().copied().chain([FileType::F16]).collect());
    }
    let mut types = Vec::with_capacity(list.len());
    for name in list {
        let name = name.trim();
        if name.is_empty() {
            bail!("--types: empty type name in the list");
        }
        let t = FileType::parse(name).map_err(|e| anyhow::anyhow!("--types: {e}"))?;
        if types.contains(&t) {
            bail!("--types: {t} is listed twice");
        }
        types.push(t);
    }
    Ok(types)
}

/// The quantized files' name stem: MODEL's file stem less a trailing `.TYPE`
/// (`SmolLM2.F16.gguf` → `SmolLM2`; a checkpoint directory's name as it is).
pub fn stem(model: &Path) -> String {
    if model.is_dir() {
        return model
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
    }
    let stem = model.file_stem().unwrap_or_default().to_string_lossy();
    match stem.rsplit_once('.') {
        Some((head, tail))
            if !head.is_empty() && FileType::names().any(|n| n.eq_ignore_ascii_case(tail)) =>
        {
            head.to_string()
        }
        _ => stem.into_owned(),
    }
}

/// What MODEL is, checked before any step runs.
struct Model {
    /// Its `general.file_type`, when that names a file type.
    file_type: Option<FileType>,
}

/// Opens MODEL: a llama GGUF whose tensors are all F32, F16 or BF16.
fn check_model(path: &Path) -> Result<Model> {
    if !path.is_file() {
        bail!("{}: no such file (the model)", path.display());
    }
    let g = GgufFile::open(path).with_context(|| format!("{}", path.display()))?;
    crate::describe::describe(&g).with_context(|| format!("{}", path.display()))?;
    match g.get("general.architecture").and_then(Value::as_str) {
        Some("llama") => {}
        other => bail!(
            "{}: `general.architecture` is {other:?}: mcc ladder quantizes llama models",
            path.display()
        ),
    }
    if let Some(t) = g.tensors.iter().find(|t| is_quantized(t.ggml_type)) {
        bail!(
            "{}: tensor `{}` is {}: mcc ladder quantizes from a model with F16, BF16 or \
             F32 weights",
            path.display(),
            t.name,
            t.ggml_type
        );
    }
    let file_type = g
        .get("general.file_type")
        .and_then(Value::as_u64)
        .and_then(|n| FileType::parse(&n.to_string()).ok());
    Ok(Model { file_type })
}

/// One step's progress: a line when it starts and one with its result and time.
struct Progress {
    step: usize,
    total: usize,
}

impl Progress {
    fn run<T>(
        &mut self,
        what: &str,
        f: impl FnOnce() -> Result<T>,
        done: impl FnOnce(&T) -> String,
    ) -> Result<T> {
        self.step += 1;
        let tag = format!("ladder: [{}/{}] {what}", self.step, self.total);
        eprintln!("{tag} ...");
        let t0 = Instant::now();
        let out = f().with_context(|| format!("step {}/{}: {what}", self.step, self.total))?;
        eprintln!(
            "{tag}: {} ({:.1} s)",
            done(&out),
            t0.elapsed().as_secs_f64()
        );
        Ok(out)
    }
}

/// What [`run`] will do for one type.
struct Rung {
    ftype: FileType,
    /// The file to measure: MODEL itself or `DIR/<stem>.<TYPE>.gguf`.
    file: PathBuf,
    /// Whether the file is made (quantized) by this run.
    make: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    // Everything is checked before anything is written.
    let types = parse_types(&args.types)?;
    let model = check_model(&args.model)?;
    if !args.eval.is_file() {
        bail!("{}: no such file (--eval)", args.eval.display());
    }
    if let Some(f) = &args.file {
        if !f.is_file() {
            bail!("{}: no such file (-f)", f.display());
        }
    }
    if let Some(im) = &args.imatrix {
        let loaded = Imatrix::load(im)?;
        if loaded.entries.is_empty() {
            bail!(
                "{}: no importance entries (no `NAME.in_sum2` tensors)",
                im.display()
            );
        }
    }
    if args.output.exists() && !args.output.is_dir() {
        bail!(
            "{}: exists and is not a directory (-o takes a directory)",
            args.output.display()
        );
    }
    if args.ctx_size < 4 {
        bail!("-c must be at least 4, got {}", args.ctx_size);
    }
    for (flag, v) in [
        ("--imatrix-chunks", args.imatrix_chunks),
        ("--eval-chunks", args.eval_chunks),
        ("-t", args.threads),
    ] {
        if v == Some(0) {
            bail!("{flag} 0: expected at least 1");
        }
    }

    let dir = &args.output;
    let stem = stem(&args.model);
    let rungs: Vec<Rung> = types
        .iter()
        .map(|&ftype| {
            if model.file_type == Some(ftype) && !is_quantized(ftype.default_type()) {
                Rung {
                    ftype,
                    file: args.model.clone(),
                    make: false,
                }
            } else {
                let file = dir.join(format!("{stem}.{}.gguf", ftype.name()));
                let make = !(args.keep && file.exists());
                Rung { ftype, file, make }
            }
        })
        .collect();
    let (imatrix, make_imatrix) = match &args.imatrix {
        Some(path) => (path.clone(), false),
        None => {
            let path = dir.join("imatrix.gguf");
            let make = !(args.keep && path.exists());
            (path, make)
        }
    };
    // With --keep, a kept file must at least be what its name says.
    if args.keep {
        if !make_imatrix && args.imatrix.is_none() {
            Imatrix::load(&imatrix).with_context(|| "--keep: the kept importance matrix")?;
        }
        for r in rungs.iter().filter(|r| !r.make && r.file != args.model) {
            let kept = check_model_type(&r.file)?;
            if kept != Some(u64::from(r.ftype.id())) {
                bail!(
                    "{}: --keep: its `general.file_type` is {kept:?}, expected {} ({}); \
                     delete it to remake it",
                    r.file.display(),
                    r.ftype.id(),
                    r.ftype
                );
            }
        }
    }

    let build_dir = args
        .build_dir
        .clone()
        .unwrap_or_else(|| crate::build::cache_dir().join("ladder"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(&build_dir)
        .with_context(|| format!("creating {}", build_dir.display()))?;

    let n_made = rungs.iter().filter(|r| r.make).count();
    let mut progress = Progress {
        step: 0,
        total: usize::from(make_imatrix) + n_made + rungs.len(),
    };
    if make_imatrix {
        let calib = args
            .file
            .clone()
            .context("-f is required without --imatrix")?;
        let im_args = crate::imatrix::Args {
            model: args.model.clone(),
            file: calib.clone(),
            output: imatrix.clone(),
            ctx_size: args.ctx_size,
            batch_size: None,
            chunks: args.imatrix_chunks,
            threads: args.threads,
            process_output: false,
            no_ppl: true,
            target_cpu: args.target_cpu.clone(),
            build_dir: Some(build_dir.clone()),
        };
        progress.run(
            &format!("imatrix over {}", calib.display()),
            || crate::imatrix::run(&im_args),
            |_| format!("wrote {}", imatrix.display()),
        )?;
    } else {
        eprintln!("ladder: importance matrix {}", imatrix.display());
    }

    for r in rungs.iter().filter(|r| r.make) {
        let q = crate::quantize::Args {
            input: args.model.clone(),
            output: r.file.clone(),
            ftype: r.ftype.name().to_string(),
            imatrix: Some(imatrix.clone()),
            threads: args.threads,
            allow_requantize: false,
        };
        progress.run(
            &format!("quantize {}", r.ftype),
            || crate::quantize::run(&q),
            |_| mib(&r.file),
        )?;
    }

    let eval = Eval {
        text: &args.eval,
        ctx_size: args.ctx_size,
        chunks: args.eval_chunks,
        batch_size: None,
        threads: args.threads,
    };
    let mut rows = Vec::with_capacity(rungs.len());
    for r in &rungs {
        let row = progress.run(
            &format!("perplexity {} ({})", r.ftype, r.file.display()),
            || {
                ppl_table::measure_file(
                    &r.file,
                    r.ftype.name().to_string(),
                    &eval,
                    &build_dir,
                    args.target_cpu.clone(),
                )
            },
            |row: &Row| format!("PPL = {:.4} +/- {:.5}", row.ppl, row.ppl_err),
        )?;
        rows.push(row);
    }

    let table = ppl_table::render(&rows, Format::Md);
    let table_path = dir.join("table.md");
    write_atomically(&table_path, table.as_bytes())?;
    print!("{table}");
    eprintln!(
        "ladder: {} rows in {}, table in {} ({:.1} min)",
        rows.len(),
        dir.display(),
        table_path.display(),
        t0.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// A kept file's `general.file_type`.
fn check_model_type(path: &Path) -> Result<Option<u64>> {
    let g = GgufFile::open(path).with_context(|| format!("{} (--keep)", path.display()))?;
    Ok(g.get("general.file_type").and_then(Value::as_u64))
}

/// A file's size in MiB, for the progress line.
fn mib(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!("{:.1} MiB", m.len() as f64 / (1u64 << 20) as f64),
        Err(e) => format!("{}: {e}", path.display()),
    }
}

/// Writes `bytes` under a temporary name beside `path`, then renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_types_are_the_seed_table_and_f16() {
        let t = parse_types(&[]).unwrap();
        assert_eq!(t.len(), 28);
        assert_eq!(t[0], FileType::IQ1_S);
        assert_eq!(t[26], FileType::Q8_0);
        assert_eq!(t[27], FileType::F16);
        assert!(t[..27].iter().all(|f| is_quantized(f.default_type())));
    }

    #[test]
    fn types_parse_by_name_alias_and_number() {
        let t = parse_types(&strings(&["q4_k_m", " IQ2_XS", "Q5_K", "7", "F16"])).unwrap();
        assert_eq!(
            t,
            [
                FileType::Q4_K_M,
                FileType::IQ2_XS,
                FileType::Q5_K_M,
                FileType::Q8_0,
                FileType::F16
            ]
        );
    }

    #[test]
    fn bad_types_are_errors_that_name_them() {
        let e = format!(
            "{:#}",
            parse_types(&strings(&["Q4_0", "Q9_X"])).unwrap_err()
        );
        assert!(e.contains("--types") && e.contains("\"Q9_X\""), "{e}");
        assert!(
            e.contains("IQ2_XXS") && e.contains("Q8_0"),
            "lists valid names: {e}"
        );
        let e = format!(
            "{:#}",
            parse_types(&strings(&["Q4_K", "Q4_K_M"])).unwrap_err()
        );
        assert!(e.contains("Q4_K_M is listed twice"), "{e}");
        let e = format!("{:#}", parse_types(&strings(&["Q4_0", ""])).unwrap_err());
        assert!(e.contains("empty"), "{e}");
        let e = format!("{:#}", parse_types(&strings(&["TQ1_0"])).unwrap_err());
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn stem_drops_a_trailing_type_name() {
        let s = |p: &str| stem(Path::new(p));
        assert_eq!(
            s("/m/SmolLM2-135M-Instruct.F16.gguf"),
            "SmolLM2-135M-Instruct"
        );
        assert_eq!(s("model.bf16.gguf"), "model");
        assert_eq!(s("Llama-3.2-1B.gguf"), "Llama-3.2-1B");
        assert_eq!(s("model.gguf"), "model");
        assert_eq!(s(".F16.gguf"), ".F16");
    }

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn scratch(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mcc-ladder-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn args(model: &Path, text: &Path, out: &Path) -> Args {
        Args {
            model: model.to_path_buf(),
            file: Some(text.to_path_buf()),
            imatrix: None,
            eval: text.to_path_buf(),
            output: out.to_path_buf(),
            types: vec![],
            ctx_size: 512,
            imatrix_chunks: None,
            eval_chunks: None,
            threads: None,
            target_cpu: None,
            build_dir: None,
            keep: false,
        }
    }

    /// A tiny random llama model (F32 weights) from `mcc synth`.
    fn synth_model(dir: &Path) -> PathBuf {
        let path = dir.join("tiny.F32.gguf");
        crate::synth::run(&crate::synth::Args {
            output: path.clone(),
            preset: crate::synth::Preset::Tiny,
            shape: Box::default(),
            vocab_from: None,
            weight_type: crate::synth::WeightType::F32,
            tied: false,
            seed: Some(1),
            header_only: false,
            name: None,
        })
        .unwrap();
        path
    }

    #[test]
    fn bad_arguments_fail_before_anything_is_written() {
        let s = scratch("args");
        let text = s.0.join("text.txt");
        std::fs::write(&text, "some text").unwrap();
        let model = synth_model(&s.0);
        let out = s.0.join("out");
        let err = |a: &Args| {
            let e = format!("{:#}", run(a).unwrap_err());
            assert!(!out.exists(), "{} was created for: {e}", out.display());
            e
        };

        let e = err(&args(&s.0.join("none.gguf"), &text, &out));
        assert!(e.contains("none.gguf: no such file"), "{e}");

        let mut a = args(&model, &text, &out);
        a.types = strings(&["Q4_0", "Q7_Z"]);
        let e = err(&a);
        assert!(e.contains("Q7_Z") && e.contains("IQ1_S"), "{e}");

        let mut a = args(&model, &text, &out);
        a.eval = s.0.join("no-eval.txt");
        assert!(err(&a).contains("no-eval.txt: no such file (--eval)"));

        let mut a = args(&model, &text, &out);
        a.file = Some(s.0.join("no-calib.txt"));
        assert!(err(&a).contains("no-calib.txt: no such file (-f)"));

        let mut a = args(&model, &text, &out);
        a.file = None;
        a.imatrix = Some(text.clone());
        assert!(err(&a).contains("text.txt"));

        let a = args(&model, &text, &text);
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("is not a directory"), "{e}");
        assert_eq!(std::fs::read_to_string(&text).unwrap(), "some text");

        let mut a = args(&model, &text, &out);
        a.eval_chunks = Some(0);
        assert!(err(&a).contains("--eval-chunks 0"));

        let e = err(&args(&text, &text, &out));
        assert!(e.contains("text.txt"), "{e}");

        // A quantized model is not a ladder's input.
        let q8 = s.0.join("tiny.Q8_0.gguf");
        crate::quantize::run(&crate::quantize::Args {
            input: model.clone(),
            output: q8.clone(),
            ftype: "Q8_0".into(),
            imatrix: None,
            threads: Some(1),
            allow_requantize: false,
        })
        .unwrap();
        let e = err(&args(&q8, &text, &out));
        assert!(
            e.contains("tiny.Q8_0.gguf: tensor `") && e.contains("Q8_0"),
            "{e}"
        );
    }
}
