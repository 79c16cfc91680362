//! `mcc build`: describe, plan and emit the crate, run cargo, deliver one executable.
//!
//! Order of work, so that a bad input or a missing tool costs nothing and leaves
//! nothing: open and describe the GGUF (a truncated or non-llama file fails here), check
//! that cargo and a C compiler/linker are on the PATH, and only then write anything.
//!
//! Nothing is left half-written. The crate is written into a temporary sibling
//! directory and swapped into place with renames; the executable is hard-linked (copied
//! across filesystems) next to its destination and renamed. The temporary paths are registered with a signal handler
//! (Ctrl-C, SIGTERM, SIGHUP), which removes them before exiting: without it, a Ctrl-C
//! during the copy of a multi-GB binary would leave a partial file behind, because the
//! default action of SIGINT ends the process without running destructors. The handler
//! also stops a running cargo (SIGTERM), which keeps its target directory consistent.
//!
//! Rebuilds are incremental. Unchanged files keep their old modification times, so a
//! rebuild of the same model with the same options finds everything fresh (no
//! re-assembly of the blob, no relink), and one with new options recompiles the small
//! model crate and relinks, but does not re-assemble. Every emitted crate shares one
//! cargo target directory per `--target-cpu`, so the runtime compiles once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::describe::describe;
use crate::emit::{emit_crate, Contents, EmitOptions, EmittedFile, WrittenTensor};
use crate::plan::plan_for;
use crate::quantize::ftype::FileType;
use crate::source::ModelSource;

/// `mcc build MODEL.gguf -o NAME`: compile a GGUF model into a standalone executable.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(after_help = "\
Environment:
  MCC_TARGET_DIR     cargo target directory shared by all builds (default: ~/.cache/mcc/target)
  MCC_GENERATED_DIR  where crates are emitted (default: generated/ in the mcc source tree)
  MCC_NO_REPACK      set: keep every tensor as the GGUF has it (no 8-row interleaving; for A/B runs)
  CARGO, CC          the cargo and C compiler to use (default: `cargo` and `cc` on PATH)

Example:
  mcc build SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2 && ./smollm2 -p \"Hi\" -n 16 --temp 0")]
pub struct Args {
    /// The model to compile (llama architecture): a GGUF file, or a Hugging Face
    /// checkpoint directory (converted as `mcc convert` converts it).
    pub model: PathBuf,
    /// Where to write the executable [default: the model's file name without .gguf,
    /// and with --quant `.TYPE` in place of a trailing `.F16`, `.BF16` or `.F32`, in the
    /// current directory].
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Quantize the model to this file type while building, straight into the
    /// executable's weights: the tensors `mcc quantize` (and llama-quantize) would
    /// write, with no quantized GGUF on disk. The executable is the one built from
    /// llama-quantize's file. Types as `mcc quantize` takes them (Q4_K_M, IQ2_XS, ...).
    #[arg(long = "quant", value_name = "TYPE")]
    pub quant: Option<String>,
    /// Importance matrix for --quant (llama-imatrix's or `mcc imatrix`'s file).
    #[arg(long = "imatrix", value_name = "FILE", requires = "quant")]
    pub imatrix: Option<PathBuf>,
    /// With --quant: convert tensors that are already quantized (through f32, losing
    /// more), as `mcc quantize --allow-requantize`.
    #[arg(long = "allow-requantize", requires = "quant")]
    pub allow_requantize: bool,
    /// Name of the emitted crate [default: the output's file name]. The crate is
    /// written to <generated-dir>/NAME; characters other than ASCII letters, digits, `-`
    /// and `_` become `_`. Cargo's package and executable are NAME-<12 hex digits of the
    /// crate directory>, so that crates of one name in different directories never
    /// share cargo's outputs.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// KV-cache length compiled into the binary, in tokens: the most prompt + generated
    /// tokens one run can hold, and the memory it reserves (2 x layers x KV width x N x 2
    /// bytes) [default: the model's training context, capped at 4096]. The binary's `-c`
    /// can lower it per run.
    #[arg(long = "ctx", value_name = "N")]
    pub ctx: Option<usize>,
    /// Build for one CPU only, as rustc's `-C target-cpu`: `native` is this machine (it
    /// may not run elsewhere); `x86-64-v3` runs on any x86-64 with AVX2 and FMA. Without
    /// it the executable runs on any x86-64 CPU: it carries the model and runtime
    /// compiled once per kernel tier (AVX-512, AVX2, scalar) and runs the best one the
    /// CPU has (`MCC_CPU=avx512|avx2|scalar` forces one). Each value gets its own cargo
    /// target directory, so switching does not rebuild the runtime every time.
    #[arg(long = "target-cpu", value_name = "CPU")]
    pub target_cpu: Option<String>,
    /// Write the crate into <generated-dir>/NAME and stop: no cargo, no executable. The
    /// crate builds later with `cargo build --release` in that directory (the executable
    /// is target/release/NAME-<hash>, see --name).
    #[arg(long = "emit-only")]
    pub emit_only: bool,
    /// Parallel jobs for cargo (passed as `cargo build -j N`) [default: cargo's, one per
    /// CPU]. The weights cost one job's time whatever N is: assembling and linking them
    /// is a copy.
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// Directory the crate is emitted into [default: $MCC_GENERATED_DIR, or the
    /// generated/ folder of the mcc source tree].
    #[arg(long = "generated-dir", value_name = "DIR")]
    pub generated_dir: Option<PathBuf>,
    /// Link statically against musl (Rust's x86_64-unknown-linux-musl target): the
    /// executable needs no libc, loader or any other file, and runs in an empty root
    /// filesystem. Not with --gpu, which loads libcuda at run time.
    #[arg(long = "static")]
    pub static_link: bool,
}

/// Where crates are emitted by default: generated/ in the mcc source tree this binary
/// was built from while that tree is there, else generated/ in the cache (an installed
/// mcc whose checkout was moved or deleted).
fn default_generated_dir() -> PathBuf {
    let tree = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("compiler/ has a parent");
    if tree.join("compiler/Cargo.toml").is_file() {
        tree.join("generated")
    } else {
        cache_dir().join("generated")
    }
}

/// Builds `model` into `dir/PREFIX-STEM` for one of mcc's own commands that runs the
/// model (`ppl-table`, `imatrix`), its crate under `dir/generated`, with a KV cache of at
/// least `n_ctx` tokens; returns the executable. A rebuild of an unchanged model is a
/// cargo no-op.
pub fn build_tool(
    model: &Path,
    dir: &Path,
    prefix: &str,
    n_ctx: usize,
    target_cpu: Option<String>,
) -> Result<PathBuf> {
    let stem = model.file_stem().unwrap_or_default().to_string_lossy();
    let name = format!("{prefix}-{stem}");
    let exe = dir.join(&name);
    let build = Args {
        model: model.to_path_buf(),
        output: Some(exe.clone()),
        name: Some(name),
        ctx: (n_ctx > 4096).then_some(n_ctx),
        target_cpu,
        emit_only: false,
        jobs: None,
        generated_dir: Some(dir.join("generated")),
        static_link: false,
        ..Default::default()
    };
    run(&build).with_context(|| format!("building {}", model.display()))?;
    Ok(exe)
}

/// mcc's cache: `$MCC_CACHE`, default `~/.cache/mcc`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MCC_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mcc")))
        .unwrap_or_else(|| std::env::temp_dir().join("mcc"))
}

/// Shared cargo target directory for the emitted crates built for `target_cpu`.
/// The default build (every kernel tier) uses the base directory; a single-tier build
/// for CPU X a sibling `-X` directory, because cargo rebuilds every dependency when
/// RUSTFLAGS change.
pub fn target_dir(target_cpu: Option<&str>) -> PathBuf {
    let base = match std::env::var_os("MCC_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => cache_dir().join("target"),
    };
    let Some(cpu) = target_cpu else {
        return base;
    };
    let mut name = base.file_name().unwrap_or_default().to_os_string();
    name.push(format!("-{cpu}"));
    base.with_file_name(name)
}

/// A valid crate name from a file name: ASCII alphanumerics, `-` and `_`.
fn crate_name(raw: &str) -> Result<String> {
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!("cannot make a crate name from {raw:?}: give --name with a name that starts with a letter");
    }
    Ok(name)
}

/// The cargo package (and executable) name of the crate `name` emitted into `crate_dir`
/// (an absolute path): `NAME-` and 12 hex digits of an FNV-1a hash of the directory.
/// Cargo keys a package's build-script output (`build/NAME-<hash>/out`, where the weights
/// object is assembled) and a binary's compiled output (`deps/NAME-<hash>`) by package
/// name and options, not by the crate's location: every emitted crate is a workspace of
/// its own. Two crates of one name in different directories (a test's `smollm2` and a
/// benchmark's) therefore shared both while each still counted as fresh, and a build
/// could install the other crate's weights and code.
pub fn exe_name(name: &str, crate_dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in crate_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{name}-{:012x}", h >> 16)
}

/// A `--target-cpu` value that is safe to put in a directory name and a rustc flag.
fn check_target_cpu(cpu: &str) -> Result<()> {
    let ok = !cpu.is_empty()
        && cpu
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("--target-cpu: found {cpu:?}, expected a rustc CPU name such as native, x86-64-v3 or znver4 (`rustc --print target-cpus` lists them)");
    }
    Ok(())
}

/// `mcc build` as the command line has it: the build arguments and the GPU flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildCmd {
    #[command(flatten)]
    pub args: Args,
    #[command(flatten)]
    pub gpu: crate::gpu::GpuArgs,
}

/// `mcc build` without the GPU path.
pub fn run(args: &Args) -> Result<()> {
    run_with(args, &crate::gpu::GpuArgs::default())
}

/// `mcc build`; with `gpu.gpu`, the crate also gets the model's PTX kernels.
pub fn run_with(args: &Args, gpu: &crate::gpu::GpuArgs) -> Result<()> {
    let t0 = Instant::now();
    if let Some(cpu) = &args.target_cpu {
        check_target_cpu(cpu)?;
    }
    if args.static_link && gpu.gpu {
        bail!("--static and --gpu: a static executable cannot load the CUDA driver (libcuda.so.1); build the GPU binary without --static");
    }
    let model_path = std::fs::canonicalize(&args.model)
        .with_context(|| format!("{}: cannot open", args.model.display()))?;
    let quant = match &args.quant {
        Some(t) => Some(FileType::parse(t).map_err(|e| anyhow::anyhow!("--quant: {e}"))?),
        None => None,
    };
    let mut source = crate::source::open(&model_path)?;
    if let Some(ftype) = quant {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        source = Box::new(crate::quantize::Quantized::new(
            source,
            ftype,
            args.imatrix.as_deref(),
            args.allow_requantize,
            threads,
        )?);
    }
    let header = source.header();
    let desc = describe(header).with_context(|| format!("{}", model_path.display()))?;
    let n_ctx = args.ctx.unwrap_or_else(|| desc.n_ctx_train.min(4096));
    if n_ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&model_path, quant));
    let name = match &args.name {
        Some(n) => crate_name(n)?,
        None => crate_name(
            &output
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )?,
    };
    if output.is_dir() {
        bail!(
            "{}: is a directory; -o names the executable to write",
            output.display()
        );
    }
    check_writable_dir(&output)?;
    let toolchain = if args.emit_only {
        None
    } else {
        Some(Toolchain::find(args.static_link)?)
    };

    let generated = args
        .generated_dir
        .clone()
        .or_else(|| std::env::var_os("MCC_GENERATED_DIR").map(PathBuf::from))
        .unwrap_or_else(default_generated_dir);
    std::fs::create_dir_all(&generated)
        .with_context(|| format!("{}: cannot create directory", generated.display()))?;
    let crate_dir = std::fs::canonicalize(&generated)
        .with_context(|| format!("{}: cannot resolve", generated.display()))?
        .join(&name);
    let exe_name = exe_name(&name, &crate_dir);

    // GPU kernels read plain ggml blocks: no repacking for them.
    let repack = !gpu.gpu && std::env::var_os("MCC_NO_REPACK").is_none();
    let plan = plan_for(&desc, header, repack, source.is_file());
    let opts = EmitOptions {
        name: name.clone(),
        exe_name: exe_name.clone(),
        n_ctx,
        target_cpu: args.target_cpu.clone(),
        static_link: args.static_link,
        gguf_path: model_path.clone(),
        runtime_path: crate::runtime_copy::runtime_dir(&cache_dir())?,
    };
    let mut files = emit_crate(&desc, &plan, &opts, desc.tokenizer.to_bytes());
    if gpu.gpu {
        crate::gpu::add_to_crate(&mut files, &desc, &plan, &opts)?;
    }
    install_signal_handler();
    write_crate_atomically(&crate_dir, &files, &*source)?;
    eprintln!(
        "mcc: emitted {} ({} tensors, {:.1} MiB of weights) in {:.2?}",
        crate_dir.display(),
        plan.tensors.len(),
        plan.blob_len as f64 / (1 << 20) as f64,
        t0.elapsed()
    );
    let Some(toolchain) = toolchain else {
        return Ok(());
    };

    let exe = cargo_build(&toolchain, &crate_dir, &opts, args.jobs)?;
    install_atomically(&exe, &output)?;
    eprintln!("mcc: wrote {} in {:.1?}", output.display(), t0.elapsed());
    Ok(())
}

/// The executable's default path: the model's file name without `.gguf` (a
/// checkpoint directory's name), in the current directory; quantized while building,
/// the name's trailing file type (if any) replaced by `.TYPE`
/// ([`crate::ladder::stem`]: `m.F16.gguf` → `m.Q4_K_M`).
fn default_output(model: &Path, quant: Option<FileType>) -> PathBuf {
    match quant {
        Some(ftype) => PathBuf::from(format!("{}.{ftype}", crate::ladder::stem(model))),
        None if model.is_dir() => PathBuf::from(model.file_name().unwrap_or_default()),
        None => PathBuf::from(model.file_stem().unwrap_or_default()),
    }
}

/// Fails fast when the executable's directory cannot take a new file, before minutes of
/// compiling: creates and removes a probe file where the executable will be written.
fn check_writable_dir(output: &Path) -> Result<()> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!(
            "{}: no such directory for the executable (-o {})",
            dir.display(),
            output.display()
        );
    }
    let probe = dir.join(format!(".mcc-probe-{}", std::process::id()));
    std::fs::File::create(&probe)
        .with_context(|| format!("{}: cannot write the executable here", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The tools a build needs, found before anything is written.
struct Toolchain {
    cargo: PathBuf,
    /// The C compiler: assembles weights.S, links.
    cc: std::ffi::OsString,
}

/// The Rust target of `mcc build --static`.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

impl Toolchain {
    /// Cargo (`$CARGO` or `cargo` on PATH) and a C compiler (`$CC` or `cc` on PATH),
    /// which assembles weights.S and is rustc's linker driver on Linux; with
    /// `static_link`, also Rust's musl target.
    fn find(static_link: bool) -> Result<Toolchain> {
        let cargo = match std::env::var_os("CARGO") {
            Some(c) => PathBuf::from(c),
            None => find_in_path("cargo").context(
                "cargo not found on PATH: mcc needs a Rust toolchain to build the executable \
                 (install one from https://rustup.rs), or use --emit-only to write the crate only",
            )?,
        };
        let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
        let cc_path = Path::new(&cc);
        let found = if cc_path.components().count() > 1 {
            cc_path.is_file()
        } else {
            find_in_path(&cc.to_string_lossy()).is_some()
        };
        if !found {
            bail!(
                "C compiler `{}` not found{}: mcc needs one to assemble the weights (weights.S) \
                 and as the linker (install gcc or clang, e.g. `apt install gcc`, or set CC), \
                 or use --emit-only to write the crate only",
                cc.to_string_lossy(),
                if std::env::var_os("CC").is_some() {
                    " (from $CC)"
                } else {
                    " on PATH"
                }
            );
        }
        if static_link {
            check_musl_target(&cargo)?;
        }
        Ok(Toolchain { cargo, cc })
    }
}

/// Fails unless Rust's standard library for [`STATIC_TARGET`] is installed (the rustc
/// beside `cargo`, or `$RUSTC`).
fn check_musl_target(cargo: &Path) -> Result<()> {
    let rustc = std::env::var_os("RUSTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let beside = cargo.with_file_name("rustc");
            if beside.is_file() {
                beside
            } else {
                PathBuf::from("rustc")
            }
        });
    let out = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", STATIC_TARGET])
        .output()
        .with_context(|| format!("cannot run {}", rustc.display()))?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let has_std = std::fs::read_dir(&libdir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    });
    if !out.status.success() || !has_std {
        bail!(
            "--static needs Rust's {STATIC_TARGET} target, which is not installed: \
             `rustup target add {STATIC_TARGET}`"
        );
    }
    Ok(())
}

/// The first executable file called `name` in $PATH.
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Paths to delete if the process is interrupted: temporary crates and executables.
fn cleanup_list() -> &'static Mutex<Vec<PathBuf>> {
    static LIST: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    LIST.get_or_init(Default::default)
}

fn lock_cleanup() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    cleanup_list().lock().unwrap_or_else(|e| e.into_inner())
}

/// Process id of the running cargo child (0: none), for the signal handler to stop it:
/// a signal sent to mcc alone (not to the terminal's process group) would otherwise leave
/// cargo building in the background.
static CARGO_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Set by the signal handler before it stops cargo, so that the build thread, which
/// sees cargo die of that SIGTERM, leaves the exit (status 130, after the clean-up) to
/// the handler instead of racing it with a "cargo build failed" error.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs (once per process) the handler that removes the registered temporary paths
/// on SIGINT, SIGTERM or SIGHUP and exits with status 130. If the host program already
/// has a handler, that one stays and temporary files are removed by destructors only.
fn install_signal_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = ctrlc::set_handler(|| {
            INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
            let cargo = CARGO_PID.load(std::sync::atomic::Ordering::SeqCst);
            if cargo != 0 {
                // SAFETY: kill(2) has no memory effects; at worst the pid has exited.
                unsafe { libc::kill(cargo as libc::pid_t, libc::SIGTERM) };
            }
            let list = lock_cleanup();
            for p in list.iter() {
                remove_path(p);
            }
            eprintln!("\nmcc: interrupted; removed temporary files");
            std::process::exit(130);
        });
    });
}

fn remove_path(p: &Path) {
    if p.is_dir() && !p.is_symlink() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// A temporary path, removed on drop and on interruption unless it was moved into
/// place with [`TempPath::rename_to`].
struct TempPath(PathBuf);

impl TempPath {
    fn new(path: PathBuf) -> TempPath {
        remove_path(&path);
        lock_cleanup().push(path.clone());
        TempPath(path)
    }

    /// Renames the temporary path to `dest`. Holding the cleanup lock makes the rename and
    /// the handler exclusive: either the handler removed the path first (and the process
    /// is exiting) or the path is in place and no longer listed.
    fn rename_to(self, dest: &Path) -> std::io::Result<()> {
        let mut list = lock_cleanup();
        std::fs::rename(&self.0, dest)?;
        list.retain(|p| p != &self.0);
        drop(list);
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let mut list = lock_cleanup();
        remove_path(&self.0);
        list.retain(|p| p != &self.0);
    }
}

/// `dir/.NAME.LABEL-PID`: a temporary sibling of `dest` on the same file system.
fn sibling(dest: &Path, label: &str) -> PathBuf {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    dir.join(format!(
        ".{}.{label}-{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ))
}

/// Writes the crate into a temporary sibling directory, then swaps it into place, the
/// written tensors' bytes read from `source`. Files whose contents did not change keep
/// their previous modification time, so cargo sees them as unchanged.
fn write_crate_atomically(
    dir: &Path,
    files: &[EmittedFile],
    source: &dyn ModelSource,
) -> Result<()> {
    let parent = dir.parent().context("crate directory has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create directory", parent.display()))?;
    let tmp = TempPath::new(sibling(dir, "tmp"));
    for file in files {
        let path = tmp.0.join(&file.path);
        let sub = path.parent().expect("a file in the crate has a parent");
        std::fs::create_dir_all(sub)
            .with_context(|| format!("{}: cannot create directory", sub.display()))?;
        let bytes = match &file.contents {
            Contents::Source(text) | Contents::Script(text) => text.as_bytes(),
            Contents::Data(bytes) => bytes,
            Contents::Symlink(target) => {
                std::os::unix::fs::symlink(target, &path)
                    .with_context(|| format!("{}: cannot create symlink", path.display()))?;
                continue;
            }
            Contents::Written(tensors) => {
                write_weights(&tmp.0, dir, &file.path, tensors, source)?;
                continue;
            }
        };
        std::fs::write(&path, bytes)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        if let Contents::Script(_) = file.contents {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("{}: cannot make executable", path.display()))?;
        }
        let old = dir.join(&file.path);
        if std::fs::read(&old).is_ok_and(|c| c == bytes) {
            if let Ok(mtime) = std::fs::metadata(&old).and_then(|m| m.modified()) {
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(mtime))
                    .with_context(|| format!("{}: cannot set its time", path.display()))?;
            }
        }
    }
    // Keep cargo's lock file of a previous build, so that dependency versions stay put;
    // a new crate starts from mcc's own lock file, so that the runtime's dependencies
    // are the versions mcc was built and tested with, not whatever is newest on
    // crates.io today (cargo drops the entries the crate does not use).
    let lock = dir.join("Cargo.lock");
    if lock.exists() {
        std::fs::copy(&lock, tmp.0.join("Cargo.lock"))
            .with_context(|| format!("{}: cannot copy", lock.display()))?;
    } else {
        let lock = tmp.0.join("Cargo.lock");
        std::fs::write(&lock, crate::runtime_copy::WORKSPACE_LOCK)
            .with_context(|| format!("{}: cannot write", lock.display()))?;
    }
    // The old crate moves aside before the new one moves in, so that at every instant
    // the crate directory is either a whole crate or absent.
    let old = if dir.exists() {
        let old = TempPath::new(sibling(dir, "old"));
        std::fs::rename(dir, &old.0)
            .with_context(|| format!("{}: cannot replace", dir.display()))?;
        Some(old)
    } else {
        None
    };
    tmp.rename_to(dir)
        .with_context(|| format!("{}: cannot move into place", dir.display()))?;
    drop(old);
    Ok(())
}

/// Version of the written file's layout, in its stamp: a new layout rewrites the file.
const WRITTEN_VERSION: u32 = 6;

/// Writes `name` (the tensors of [`Contents::Written`], from `source`) into the crate
/// being assembled in `tmp`, and next to it `name.stamp`: what the file was made from
/// (layout version, the source's identity, the tensors). When the previous crate in
/// `dir` has the same stamp and a file of the right length, that file is hard-linked
/// instead: a warm rebuild neither rewrites (nor re-quantizes) gigabytes nor changes the
/// file's time, so cargo does not re-assemble the blob. Otherwise the tensors are
/// streamed one at a time from the source (mapped GGUF bytes, or tensors converted and
/// quantized on demand), through the runtime's repacking where planned.
fn write_weights(
    tmp: &Path,
    dir: &Path,
    name: &str,
    tensors: &[WrittenTensor],
    source: &dyn ModelSource,
) -> Result<()> {
    let mut stamp = format!(
        "mcc written tensors, layout {WRITTEN_VERSION}\nfrom {}\n",
        source.identity()?
    );
    for t in tensors {
        let to = t.repack.map_or("as is", |r| r.name());
        stamp += &format!(
            "{} {} [{}, {}] -> {to} at {} ({} bytes)\n",
            t.name,
            t.ggml_type.name(),
            t.cols,
            t.rows,
            t.offset,
            t.n_bytes
        );
    }
    let len: u64 = tensors.iter().map(|t| t.n_bytes).sum();
    let (path, stamp_path) = (tmp.join(name), tmp.join(format!("{name}.stamp")));
    let (old, old_stamp) = (dir.join(name), dir.join(format!("{name}.stamp")));
    let reusable = std::fs::read_to_string(&old_stamp).is_ok_and(|s| s == stamp)
        && std::fs::metadata(&old).is_ok_and(|m| m.len() == len);
    if reusable
        && std::fs::hard_link(&old, &path).is_ok()
        && std::fs::hard_link(&old_stamp, &stamp_path).is_ok()
    {
        return Ok(());
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&stamp_path);

    let header = source.header();
    let model = header.path.display();
    let out = std::fs::File::create(&path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(8 << 20, out);
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} writing {bytes}/{total_bytes}: {wide_msg} [{elapsed}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut written = 0u64;
    for t in tensors {
        assert_eq!(
            t.offset, written,
            "{}: written tensors are laid out in order",
            t.name
        );
        bar.set_message(t.name.clone());
        let i = header
            .tensor_position(&t.name)
            .with_context(|| format!("{model}: no tensor `{}`", t.name))?;
        let bytes = source
            .tensor_bytes(i)
            .with_context(|| format!("{model}: tensor `{}`", t.name))?;
        let want = t.rows * (t.cols / t.ggml_type.block_elems()) * t.ggml_type.block_bytes();
        if bytes.len() as u64 != want {
            bail!(
                "{model}: tensor `{}`: {} bytes, expected {want} for {} [{}, {}]",
                t.name,
                bytes.len(),
                t.ggml_type.name(),
                t.cols,
                t.rows
            );
        }
        match t.repack {
            Some(to) => to.repack(&bytes, t.cols, |b| std::io::Write::write_all(&mut out, b)),
            None => std::io::Write::write_all(&mut out, &bytes),
        }
        .with_context(|| format!("{}: cannot write", path.display()))?;
        written += t.n_bytes;
        bar.set_position(written);
    }
    bar.finish_and_clear();
    assert_eq!(written, len, "written sizes add up");
    out.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    std::fs::write(&stamp_path, stamp)
        .with_context(|| format!("{}: cannot write", stamp_path.display()))?;
    Ok(())
}

/// Runs `cargo build --release` on the emitted crate and returns the executable's path.
fn cargo_build(
    tools: &Toolchain,
    crate_dir: &Path,
    opts: &EmitOptions,
    jobs: Option<usize>,
) -> Result<PathBuf> {
    let name = &opts.exe_name;
    let target = target_dir(opts.target_cpu.as_deref());
    reassemble_if_objects_missing(&target, crate_dir, name)?;
    if opts.static_link {
        reassemble_if_objects_missing(&target.join(STATIC_TARGET), crate_dir, name)?;
    }
    let mut cmd = Command::new(&tools.cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"));
    let mut release = target.join("release");
    if opts.static_link {
        // The musl target's std is linked statically; weights.S is assembled by the same
        // C compiler as for the host (cc would otherwise look for a musl-gcc).
        cmd.arg("--target")
            .arg(STATIC_TARGET)
            .env(format!("CC_{}", STATIC_TARGET.replace('-', "_")), &tools.cc);
        release = target.join(STATIC_TARGET).join("release");
    }
    if let Some(j) = jobs {
        cmd.arg("-j").arg(j.to_string());
    }
    // The emitted crate's flags alone: neither the caller's RUSTFLAGS nor a cargo config
    // of the directory mcc runs in (the encoded form wins over both). A build with every
    // kernel tier runs rustc through the crate's tiers/rustc.sh, which gives each tier's
    // crates their target features (this wins over a RUSTC_WRAPPER of the caller's).
    if opts.target_cpu.is_none() {
        cmd.env("RUSTC_WRAPPER", crate_dir.join("tiers/rustc.sh"));
    }
    cmd.env("CARGO_TARGET_DIR", &target)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            crate::emit::base_rustflags(opts).join("\u{1f}"),
        )
        .env_remove("RUSTFLAGS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} cargo: {wide_msg} [{elapsed}]")
            .expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run cargo ({})", tools.cargo.display()))?;
    CARGO_PID.store(child.id(), std::sync::atomic::Ordering::SeqCst);
    let mut log = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let trimmed = line.trim();
            if !trimmed.is_empty() {
                bar.set_message(trimmed.to_string());
            }
            log.push(line);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    CARGO_PID.store(0, std::sync::atomic::Ordering::SeqCst);
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        // The signal handler is cleaning up and exits the process with status 130.
        loop {
            std::thread::park();
        }
    }
    bar.finish_and_clear();
    if !status.success() {
        let tail = log
            .iter()
            .rev()
            .take(40)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        let hint = if tail.contains("linker `") && tail.contains("not found") {
            "\nhint: the linker is missing: install gcc or clang (e.g. `apt install gcc`)"
        } else {
            ""
        };
        bail!(
            "cargo build failed for {} ({status}):\n{tail}{hint}",
            crate_dir.display()
        );
    }
    let exe = release.join(name);
    if !exe.is_file() {
        bail!("cargo succeeded but {} is missing", exe.display());
    }
    Ok(exe)
}

/// Cargo reruns the emitted build script (which assembles the weights) only when
/// weights.S or the GGUF changes, not when the object it made is gone (deleted to free
/// disk: a Minitron-sized one is 3-5 GB). Then the link fails with "cannot open
/// ...-weights.o". So if a previous run's link arguments (the build script's `output`
/// under `target`) name an object that no longer exists, weights.S is touched and cargo
/// assembles it again.
fn reassemble_if_objects_missing(target: &Path, crate_dir: &Path, name: &str) -> Result<()> {
    let Ok(dirs) = std::fs::read_dir(target.join("release").join("build")) else {
        return Ok(()); // nothing built yet
    };
    let prefix = format!("{name}-");
    let missing = dirs.flatten().any(|dir| {
        let is_ours = dir.file_name().to_str().is_some_and(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|hash| hash.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        // only this crate's build script output is read, not every crate's in the target
        is_ours
            && std::fs::read_to_string(dir.path().join("output"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.strip_prefix("cargo:rustc-link-arg-bins="))
                .any(|object| !Path::new(object).exists())
    });
    if missing {
        let asm = crate_dir.join("weights.S");
        std::fs::File::options()
            .append(true)
            .open(&asm)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .with_context(|| format!("{}: cannot touch", asm.display()))?;
    }
    Ok(())
}

/// Puts the executable next to `dest` and renames it into place, with cargo's
/// modification time. A `dest` of the same length and time is this very executable (a
/// warm rebuild) and is left alone. Where the filesystem allows, the executable is hard
/// linked rather than copied: a Minitron-sized binary is 3-5 GB, and a copy doubled what
/// each build left on disk. That is safe because the executable is never rewritten in
/// place: the linker writes a new file and renames it, and cargo replaces its links.
/// On another filesystem it is copied.
fn install_atomically(exe: &Path, dest: &Path) -> Result<()> {
    let src = std::fs::metadata(exe).with_context(|| format!("{}: cannot read", exe.display()))?;
    let mtime = src.modified().ok();
    if let Ok(old) = std::fs::metadata(dest) {
        if old.is_file()
            && old.len() == src.len()
            && mtime.is_some()
            && old.modified().ok() == mtime
        {
            return Ok(());
        }
    }
    let tmp = TempPath::new(sibling(dest, "tmp"));
    if std::fs::hard_link(exe, &tmp.0).is_err() {
        std::fs::copy(exe, &tmp.0).with_context(|| format!("{}: cannot write", tmp.0.display()))?;
    }
    if let Some(mtime) = mtime {
        std::fs::File::options()
            .write(true)
            .open(&tmp.0)
            .and_then(|f| f.set_modified(mtime))
            .with_context(|| format!("{}: cannot set its time", tmp.0.display()))?;
    }
    tmp.rename_to(dest)
        .with_context(|| format!("{}: cannot write", dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_are_sanitised_or_refused() {
        assert_eq!(crate_name("smollm2").unwrap(), "smollm2");
        assert_eq!(crate_name("a.b c").unwrap(), "a_b_c");
        assert!(crate_name("2fast").is_err());
        assert!(crate_name("").is_err());
    }

    #[test]
    fn target_cpus_get_their_own_target_dir() {
        let tiers = target_dir(None);
        let v3 = target_dir(Some("x86-64-v3"));
        assert_eq!(v3.parent(), tiers.parent());
        assert_eq!(
            v3.file_name().unwrap().to_string_lossy(),
            format!("{}-x86-64-v3", tiers.file_name().unwrap().to_string_lossy())
        );
        assert!(check_target_cpu("x86-64-v3").is_ok());
        assert!(check_target_cpu("native").is_ok());
        assert!(check_target_cpu("a b").is_err());
        assert!(check_target_cpu("../x").is_err());
    }

    #[test]
    fn install_links_the_executable_and_a_rebuild_leaves_the_old_one_alone() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let (exe, dest) = (root.path().join("exe"), root.path().join("out"));
        std::fs::write(&exe, b"first build").unwrap();
        install_atomically(&exe, &dest).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&dest), ino(&exe), "same filesystem: a link, not a copy");
        // a rebuild writes a new file (as the linker and cargo do): the installed one
        // keeps its bytes until it is installed again
        std::fs::remove_file(&exe).unwrap();
        std::fs::write(&exe, b"second build!").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"first build");
        install_atomically(&exe, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"second build!");
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "no temporary left behind");
    }

    #[test]
    fn crate_swap_keeps_unchanged_mtimes_and_leaves_no_temporaries() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m");
        let file = |p: &str, s: &str| EmittedFile {
            path: p.into(),
            contents: Contents::Source(s.into()),
        };
        let none = empty_model();
        write_crate_atomically(&dir, &[file("a.rs", "a"), file("src/b.rs", "b")], &none).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for p in ["a.rs", "src/b.rs"] {
            let f = std::fs::File::options()
                .write(true)
                .open(dir.join(p))
                .unwrap();
            f.set_modified(old).unwrap();
        }
        write_crate_atomically(&dir, &[file("a.rs", "a"), file("src/b.rs", "B")], &none).unwrap();
        let mtime = |p: &str| std::fs::metadata(dir.join(p)).unwrap().modified().unwrap();
        assert_eq!(mtime("a.rs"), old);
        assert_ne!(mtime("src/b.rs"), old);
        assert_eq!(std::fs::read_to_string(dir.join("src/b.rs")).unwrap(), "B");
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m")]);
        // none of this test's temporaries is still registered (other tests running in
        // parallel may have their own in the list)
        assert!(lock_cleanup().iter().all(|p| !p.starts_with(root.path())));
    }

    #[test]
    fn default_outputs_name_the_model_and_the_quantized_type() {
        let q = |t: &str| Some(FileType::parse(t).unwrap());
        let out = |p: &Path, t| default_output(p, t).display().to_string();
        assert_eq!(out(Path::new("/m/SmolLM2.Q4_1.gguf"), None), "SmolLM2.Q4_1");
        assert_eq!(
            out(Path::new("/m/SmolLM2.F16.gguf"), q("Q4_K_M")),
            "SmolLM2.Q4_K_M"
        );
        assert_eq!(
            out(Path::new("/m/SmolLM2.gguf"), q("IQ2_XS")),
            "SmolLM2.IQ2_XS"
        );
        // a checkpoint directory's name keeps its dots
        let root = tempfile::tempdir().unwrap();
        let ck = root.path().join("Llama-3.1-Minitron-4B-Width-Base");
        std::fs::create_dir(&ck).unwrap();
        assert_eq!(out(&ck, None), "Llama-3.1-Minitron-4B-Width-Base");
        assert_eq!(out(&ck, q("Q8_0")), "Llama-3.1-Minitron-4B-Width-Base.Q8_0");
    }

    /// A model without tensors, for crates that write none.
    fn empty_model() -> crate::gguf::GgufFile {
        crate::gguf::GgufFile::header_only("none", 32, 32, Vec::new(), Vec::new())
    }

    /// weights.bin holds the model's tensors, repacked (here: the runtime's repacking of
    /// the GGUF bytes) or as they are; a second build from the same GGUF reuses the file
    /// (same inode and mtime), a changed GGUF rewrites it.
    #[test]
    fn written_file_is_written_once_and_reused_while_the_source_is_unchanged() {
        use crate::gguf::writer::{GgufWriter, TensorData, WriteMode};
        use crate::gguf::{GgmlType, GgufFile};
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m");
        let gguf = root.path().join("model.gguf");
        // 16 rows of 512 columns of Q4_K (2 groups of 8 rows, 2 blocks per row), and a
        // Q8_0 vector written as it is
        let (rows, cols) = (16u64, 512u64);
        let q4k: Vec<u8> = (0..rows * cols / 256 * 144)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let q8: Vec<u8> = (0..34).map(|i| i as u8).collect();
        let write_gguf = |q4k: &[u8]| {
            let mut w = GgufWriter::new();
            w.add_tensor(
                "blk.0.ffn_down.weight",
                &[cols, rows],
                GgmlType::Q4_K,
                TensorData::Bytes(q4k.to_vec()),
            );
            w.add_tensor(
                "x.weight",
                &[32],
                GgmlType::Q8_0,
                TensorData::Bytes(q8.clone()),
            );
            w.write(&gguf, WriteMode::Full).unwrap();
        };
        write_gguf(&q4k);
        let repacked_len = rows / 8 * cols / 256 * 1152;
        let files = vec![EmittedFile {
            path: "weights.bin".into(),
            contents: Contents::Written(vec![
                WrittenTensor {
                    name: "blk.0.ffn_down.weight".into(),
                    ggml_type: GgmlType::Q4_K,
                    repack: Some(crate::plan::Repack::Q4KX8),
                    rows,
                    cols,
                    offset: 0,
                    n_bytes: repacked_len,
                },
                WrittenTensor {
                    name: "x.weight".into(),
                    ggml_type: GgmlType::Q8_0,
                    repack: None,
                    rows: 1,
                    cols: 32,
                    offset: repacked_len,
                    n_bytes: 34,
                },
            ]),
        }];
        write_crate_atomically(&dir, &files, &GgufFile::open(&gguf).unwrap()).unwrap();
        let mut want = Vec::new();
        mcc_runtime::quant::q4_k_x8::repack_q4_k_bytes::<()>(&q4k, cols as usize, |b| {
            want.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        want.extend_from_slice(&q8);
        let bin = dir.join("weights.bin");
        assert_eq!(std::fs::read(&bin).unwrap(), want);
        let id = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (
                std::os::unix::fs::MetadataExt::ino(&m),
                m.modified().unwrap(),
            )
        };
        let first = id(&bin);
        write_crate_atomically(&dir, &files, &GgufFile::open(&gguf).unwrap()).unwrap();
        assert_eq!(
            id(&bin),
            first,
            "rewritten although the GGUF did not change"
        );

        let mut changed = q4k.clone();
        changed[0] ^= 0xff;
        write_gguf(&changed);
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&gguf)
            .unwrap()
            .set_modified(later)
            .unwrap();
        write_crate_atomically(&dir, &files, &GgufFile::open(&gguf).unwrap()).unwrap();
        assert_ne!(id(&bin).0, first.0, "not rewritten after the GGUF changed");
        assert_ne!(std::fs::read(&bin).unwrap(), want);
    }
}
