//! The `mcc build` driver as a user meets it (the real binary): bad inputs and missing
//! tools fail fast with a clear message and write nothing; Ctrl-C leaves no temporary
//! crate or executable behind; `--help` explains every option.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mcc::gguf::writer::WriteMode;
use mcc::gguf::Value;
use mcc::synth::{llama_writer, toy_vocab, SynthConfig};

fn mcc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mcc"))
}

/// A tiny random llama GGUF in `dir`; `edit` may change its metadata first.
fn tiny(dir: &Path, edit: impl FnOnce(&mut mcc::gguf::writer::GgufWriter)) -> PathBuf {
    let cfg = SynthConfig::tiny();
    let mut w = llama_writer(&cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab).unwrap();
    edit(&mut w);
    let path = dir.join("tiny.gguf");
    w.write(&path, WriteMode::Full).unwrap();
    path
}

/// Runs `mcc build GGUF -o DIR/out --generated-dir DIR/gen` with `env` changes.
fn build(dir: &Path, gguf: &Path, env: &[(&str, Option<&str>)]) -> Output {
    let mut cmd = mcc();
    cmd.arg("build")
        .arg(gguf)
        .arg("-o")
        .arg(dir.join("out"))
        .arg("--generated-dir")
        .arg(dir.join("gen"));
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.output().unwrap()
}

/// The failure's message, after checking that it failed and wrote nothing.
fn failed_cleanly(dir: &Path, out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!dir.join("out").exists(), "an executable was written");
    assert!(!dir.join("gen").exists(), "a crate was written");
    err
}

#[test]
fn truncated_gguf_fails_fast_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), |_| {});
    let len = std::fs::metadata(&gguf).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&gguf)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let t0 = Instant::now();
    let out = build(dir.path(), &gguf, &[]);
    let err = failed_cleanly(dir.path(), &out);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(err.contains("tiny.gguf"), "names the file: {err}");
    assert!(
        err.contains("data range") && err.contains("file length"),
        "says what is wrong: {err}"
    );
}

#[test]
fn non_llama_gguf_fails_fast_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), |w| {
        w.set_kv("general.architecture", Value::String("qwen2".into()));
    });
    let out = build(dir.path(), &gguf, &[]);
    let err = failed_cleanly(dir.path(), &out);
    assert!(err.contains("qwen2"), "{err}");
    assert!(err.contains("architecture"), "{err}");
}

#[test]
fn not_a_gguf_fails_fast_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"this is not a model").unwrap();
    let err = failed_cleanly(dir.path(), &build(dir.path(), &path, &[]));
    assert!(err.contains("model.gguf"), "{err}");
}

#[test]
fn missing_cargo_is_a_clear_error_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), |_| {});
    let empty = dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let out = build(
        dir.path(),
        &gguf,
        &[("PATH", empty.to_str()), ("CARGO", None)],
    );
    let err = failed_cleanly(dir.path(), &out);
    assert!(err.contains("cargo not found"), "{err}");
    assert!(err.contains("--emit-only"), "{err}");
}

#[test]
fn missing_c_compiler_is_a_clear_error_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), |_| {});
    let empty = dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    // Cargo stays reachable through $CARGO (cargo test sets it); `cc` is not on PATH.
    let cargo = std::env::var("CARGO").expect("cargo test sets CARGO");
    let out = build(
        dir.path(),
        &gguf,
        &[
            ("PATH", empty.to_str()),
            ("CARGO", Some(&cargo)),
            ("CC", None),
        ],
    );
    let err = failed_cleanly(dir.path(), &out);
    assert!(err.contains("C compiler `cc` not found"), "{err}");
    assert!(err.contains("linker"), "{err}");
}

#[test]
fn emit_only_needs_no_toolchain() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), |_| {});
    let empty = dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let mut cmd = mcc();
    cmd.arg("build")
        .arg(&gguf)
        .arg("--emit-only")
        .arg("--name")
        .arg("tiny")
        .arg("--generated-dir")
        .arg(dir.path().join("gen"))
        .env("PATH", &empty)
        .env_remove("CARGO");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crate_dir = dir.path().join("gen/tiny");
    for f in [
        "Cargo.toml",
        "build.rs",
        "weights.S",
        "src/main.rs",
        "src/model.rs",
        "tokenizer.bin",
    ] {
        assert!(crate_dir.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_link(crate_dir.join("model.gguf")).unwrap(),
        std::fs::canonicalize(&gguf).unwrap()
    );
    assert!(!dir.path().join("tiny").exists() && !dir.path().join("out").exists());
}

#[test]
fn interrupt_during_cargo_leaves_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), |_| {});
    // A crate name of its own, so that cargo has a new crate to compile when the signal
    // comes.
    let name = format!("interrupted{}", std::process::id());
    let gen = dir.path().join("gen");
    let child = mcc()
        .arg("build")
        .arg(&gguf)
        .arg("-o")
        .arg(dir.path().join("out"))
        .arg("--name")
        .arg(&name)
        .arg("--generated-dir")
        .arg(&gen)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !gen.join(&name).join("Cargo.toml").exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no crate emitted");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!dir.path().join("out").exists());
    let left: Vec<String> = std::fs::read_dir(&gen)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![name.clone()], "only the whole crate stays");
    // Our artifacts in the shared target dir are cargo's to keep; remove the crate's.
    let target = mcc::build::target_dir(None).join("release");
    for sub in [".", "deps", "build", ".fingerprint"] {
        if let Ok(entries) = std::fs::read_dir(target.join(sub)) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n == name || n.starts_with(&format!("{name}-")) {
                    let _ = std::fs::remove_dir_all(e.path());
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

#[test]
fn build_help_explains_every_option() {
    let out = mcc().args(["build", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--output",
        "--name",
        "--ctx <N>",
        "KV-cache length",
        "--target-cpu <CPU>",
        "x86-64-v3",
        "--emit-only",
        "--jobs <N>",
        "--generated-dir",
        "MCC_TARGET_DIR",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[test]
fn output_path_that_is_a_directory_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), |_| {});
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let out = build(dir.path(), &gguf, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a directory"), "{err}");
    assert!(!dir.path().join("gen").exists(), "a crate was written");
}

#[test]
fn unwritable_output_directory_fails_before_building() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), |_| {});
    // /proc takes no new files, even for root (who ignores permission bits).
    let t0 = Instant::now();
    let out = mcc()
        .arg("build")
        .arg(&gguf)
        .arg("-o")
        .arg("/proc/mcc-out")
        .arg("--generated-dir")
        .arg(dir.path().join("gen"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/proc: cannot write the executable here"),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(!dir.path().join("gen").exists(), "a crate was written");
}

#[test]
fn full_disk_is_an_error_and_leaves_no_partial_files() {
    // A file-size limit makes every large write fail with EFBIG, as a full disk does
    // with ENOSPC. The limit (256 KiB) lets the small crate files through and stops
    // the build's artifacts or the executable.
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), |_| {});
    let script = format!(
        "ulimit -f 256; exec {} build {} -o {} --generated-dir {}",
        env!("CARGO_BIN_EXE_mcc"),
        gguf.display(),
        dir.path().join("out").display(),
        dir.path().join("gen").display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("MCC_TARGET_DIR", dir.path().join("target"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !dir.path().join("out").exists(),
        "an executable was written"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
