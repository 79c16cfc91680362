//! `mcc build`: describe, plan and emit the crate, run cargo, deliver one executable.
//!
//! Nothing is left half-written: the crate is written to a temporary directory and
//! renamed into place, and the executable is copied next to its destination and renamed.
//! Unchanged files keep their old modification times, so a rebuild of the same model
//! only recompiles what changed. Every emitted crate shares one cargo target directory,
//! so the runtime compiles once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::describe::describe;
use crate::emit::{emit_crate, EmitOptions};
use crate::gguf::GgufFile;
use crate::plan::plan;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model to compile.
    pub model: PathBuf,
    /// Where to write the executable.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Name of the emitted crate and executable (default: the output's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// KV-cache length compiled into the binary, in tokens (default: the model's
    /// training context, capped at 4096).
    #[arg(long = "ctx")]
    pub ctx: Option<usize>,
    /// CPU to generate code for: `native` (this machine, the default) or any rustc
    /// `-C target-cpu` name, e.g. `x86-64-v3` for a binary that runs on any AVX2 machine.
    #[arg(long = "target-cpu", default_value = "native")]
    pub target_cpu: String,
    /// Write the crate into generated/NAME but do not build it.
    #[arg(long = "emit-only")]
    pub emit_only: bool,
    /// Parallel jobs for cargo.
    #[arg(short = 'j', long = "jobs")]
    pub jobs: Option<usize>,
    /// Directory the crate is emitted into (default: the generated/ folder of the mcc
    /// source tree, or $MCC_GENERATED_DIR).
    #[arg(long = "generated-dir")]
    pub generated_dir: Option<PathBuf>,
}

/// The mcc source tree this binary was built from (holds runtime/, generated/).
fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("compiler/ has a parent").to_path_buf()
}

/// Shared cargo target directory for every emitted crate.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MCC_TARGET_DIR") {
        return dir.into();
    }
    let cache = std::env::var_os("MCC_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mcc")))
        .unwrap_or_else(|| std::env::temp_dir().join("mcc"));
    cache.join("target")
}

/// A valid crate name from a file name: ASCII alphanumerics, `-` and `_`.
fn crate_name(raw: &str) -> Result<String> {
    let name: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!("cannot make a crate name from {raw:?}: give --name with a name that starts with a letter");
    }
    Ok(name)
}

pub fn run(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    let gguf_path = std::fs::canonicalize(&args.model).with_context(|| format!("{}: cannot open", args.model.display()))?;
    let gguf = GgufFile::open(&gguf_path)?;
    let desc = describe(&gguf)?;
    let n_ctx = args.ctx.unwrap_or_else(|| desc.n_ctx_train.min(4096));
    if n_ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    let output = args.output.clone().unwrap_or_else(|| PathBuf::from(gguf_path.file_stem().unwrap_or_default()));
    let name = match &args.name {
        Some(n) => crate_name(n)?,
        None => crate_name(&output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())?,
    };
    if output.is_dir() {
        bail!("{}: is a directory; -o names the executable to write", output.display());
    }

    let plan = plan(&desc, &gguf);
    let opts = EmitOptions {
        name: name.clone(),
        n_ctx,
        target_cpu: args.target_cpu.clone(),
        gguf_path: gguf_path.clone(),
        runtime_path: source_root().join("runtime"),
    };
    let files = emit_crate(&desc, &plan, &opts, desc.tokenizer.to_bytes());
    let generated = args
        .generated_dir
        .clone()
        .or_else(|| std::env::var_os("MCC_GENERATED_DIR").map(PathBuf::from))
        .unwrap_or_else(|| source_root().join("generated"));
    let crate_dir = generated.join(&name);
    write_crate_atomically(&crate_dir, &files)?;
    eprintln!("mcc: emitted {} ({} tensors, {:.1} MiB of weights) in {:.2?}", crate_dir.display(), plan.tensors.len(), plan.blob_len as f64 / (1 << 20) as f64, t0.elapsed());
    if args.emit_only {
        return Ok(());
    }

    let exe = cargo_build(&crate_dir, &name, &args.target_cpu, args.jobs)?;
    install_atomically(&exe, &output)?;
    eprintln!("mcc: wrote {} in {:.1?}", output.display(), t0.elapsed());
    Ok(())
}

/// Writes the crate into a temporary sibling directory, then swaps it into place.
/// Files whose contents did not change keep their previous modification time.
fn write_crate_atomically(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    let parent = dir.parent().context("crate directory has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create directory", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp-{}", dir.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let guard = RemoveOnDrop(tmp.clone());
    let _ = std::fs::remove_dir_all(&tmp);
    for (rel, contents) in files {
        let path = tmp.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).with_context(|| format!("{}: cannot create directory", path.display()))?;
        std::fs::write(&path, contents).with_context(|| format!("{}: cannot write", path.display()))?;
        let old = dir.join(rel);
        if std::fs::read(&old).is_ok_and(|c| &c == contents) {
            if let Ok(mtime) = std::fs::metadata(&old).and_then(|m| m.modified()) {
                let f = std::fs::File::options().write(true).open(&path)?;
                f.set_modified(mtime)?;
            }
        }
    }
    // Keep cargo's lock file of a previous build, so that dependency versions stay put.
    let lock = dir.join("Cargo.lock");
    if lock.exists() {
        std::fs::copy(&lock, tmp.join("Cargo.lock")).with_context(|| format!("{}: cannot copy", lock.display()))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("{}: cannot replace", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("{}: cannot move into place", dir.display()))?;
    std::mem::forget(guard);
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `cargo build --release` on the emitted crate and returns the executable's path.
fn cargo_build(crate_dir: &Path, name: &str, target_cpu: &str, jobs: Option<usize>) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = target_dir();
    let mut cmd = Command::new(&cargo);
    cmd.arg("build").arg("--release").arg("--manifest-path").arg(crate_dir.join("Cargo.toml"));
    if let Some(j) = jobs {
        cmd.arg("-j").arg(j.to_string());
    }
    cmd.env("CARGO_TARGET_DIR", &target).env("RUSTFLAGS", format!("-C target-cpu={target_cpu}")).stdout(Stdio::null()).stderr(Stdio::piped());

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} cargo: {wide_msg} [{elapsed}]").expect("valid template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("cargo not found ({}): mcc needs a Rust toolchain to build the binary (https://rustup.rs), or use --emit-only", cargo.to_string_lossy())
        } else {
            anyhow::anyhow!("cannot run cargo: {e}")
        }
    })?;
    let mut log = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let trimmed = line.trim();
            if !trimmed.is_empty() {
                bar.set_message(trimmed.to_string());
            }
            log.push(line);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    bar.finish_and_clear();
    if !status.success() {
        let tail = log.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n");
        bail!("cargo build failed for {} ({status}):\n{tail}", crate_dir.display());
    }
    let exe = target.join("release").join(name);
    if !exe.is_file() {
        bail!("cargo succeeded but {} is missing", exe.display());
    }
    Ok(exe)
}

/// Copies the executable next to `dest` and renames it into place.
fn install_atomically(exe: &Path, dest: &Path) -> Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}.tmp-{}", dest.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let guard = RemoveOnDrop(tmp.clone());
    std::fs::copy(exe, &tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("{}: cannot write", dest.display()))?;
    std::mem::forget(guard);
    Ok(())
}
