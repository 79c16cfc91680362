//! `mcc build` end to end on a tiny random model: the same inputs give the same binary,
//! warm rebuilds do not re-assemble the weights (unless they were deleted), and a portable
//! `--target-cpu` builds and runs.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use mcc::gguf::writer::WriteMode;
use mcc::synth::{llama_writer, toy_vocab, SynthConfig};
use mcc_e2e::{run, run_on, scratch_dir, Tier};

/// The tiny preset's GGUF (written once; the same seed gives the same bytes).
fn tiny_gguf() -> PathBuf {
    let path = scratch_dir().join("e2e-compiler-tiny.gguf");
    let cfg = SynthConfig::tiny();
    let w = llama_writer(&cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab).unwrap();
    let bytes = w.to_bytes(WriteMode::Full).unwrap();
    if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
        w.write(&path, WriteMode::Full).unwrap();
    }
    path
}

fn args(gguf: &Path, name: &str) -> mcc::build::Args {
    let dir = scratch_dir();
    mcc::build::Args {
        model: gguf.to_path_buf(),
        output: Some(dir.join(name)),
        name: Some(name.into()),
        ctx: None,
        target_cpu: None,
        emit_only: false,
        jobs: None,
        generated_dir: Some(dir.join("generated")),
        static_link: false,
        ..Default::default()
    }
}

/// Every artifact of crate `name` in the shared target directory for `cpu` (`None`: the
/// default build, every kernel tier).
fn artifacts(name: &str, cpu: Option<&str>) -> Vec<PathBuf> {
    let release = mcc::build::target_dir(cpu).join("release");
    let mut found = Vec::new();
    for sub in [".", "deps", "build", ".fingerprint"] {
        let Ok(entries) = std::fs::read_dir(release.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == name || n.starts_with(&format!("{name}-")) {
                found.push(e.path());
            }
        }
    }
    found
}

fn remove_artifacts(name: &str, cpu: Option<&str>) {
    for p in artifacts(name, cpu) {
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
    }
}

/// The assembled weights object of crate `name` (in its build script's OUT_DIR).
fn weights_object(name: &str) -> PathBuf {
    let build = mcc::build::target_dir(None).join("release/build");
    std::fs::read_dir(&build)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
        })
        .flat_map(|e| walk(&e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "o"))
        .unwrap_or_else(|| panic!("no weights object for {name} under {}", build.display()))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn a_rebuild_from_scratch_gives_the_same_binary() {
    let gguf = tiny_gguf();
    let name = "e2e_determinism";
    let a = args(&gguf, name);
    remove_artifacts(name, None);
    mcc::build::run(&a).unwrap();
    let first = std::fs::read(a.output.as_ref().unwrap()).unwrap();
    // Forget everything cargo knows about the crate and emit it again.
    remove_artifacts(name, None);
    std::fs::remove_dir_all(a.generated_dir.as_ref().unwrap().join(name)).unwrap();
    mcc::build::run(&a).unwrap();
    let second = std::fs::read(a.output.as_ref().unwrap()).unwrap();
    assert!(first == second, "two builds of the same model differ");
    // A new crate's dependencies are the versions of mcc's own lock file.
    let locked = |path: &Path| -> Vec<(String, String)> {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let value = |l: &str| l.split('"').nth(1).unwrap().to_string();
        (1..lines.len())
            .filter(|&i| lines[i - 1].starts_with("name = ") && lines[i].starts_with("version = "))
            .map(|i| (value(lines[i - 1]), value(lines[i])))
            .collect()
    };
    let ours = locked(
        &a.generated_dir
            .as_ref()
            .unwrap()
            .join(name)
            .join("Cargo.lock"),
    );
    let mcc = locked(&mcc_e2e::repo_root().join("Cargo.lock"));
    let shared: Vec<_> = ours
        .iter()
        .filter(|(n, _)| mcc.iter().any(|(m, _)| m == n))
        .collect();
    assert!(
        shared.len() > 50,
        "{} packages shared with mcc's lock",
        shared.len()
    );
    for (n, v) in shared {
        assert!(
            mcc.iter().any(|(m, w)| m == n && w == v),
            "{n} {v} in the emitted crate's lock file, not in mcc's"
        );
    }
    let out = run(a.output.as_ref().unwrap(), &["info"]);
    assert!(out.status.success());
    remove_artifacts(name, None);
}

#[test]
fn warm_rebuilds_reuse_the_assembled_weights() {
    let gguf = tiny_gguf();
    let name = "e2e_incremental";
    let mut a = args(&gguf, name);
    let exe = a.output.clone().unwrap();
    mcc::build::run(&a).unwrap();
    let object = weights_object(name);
    let object_time = mtime(&object);
    let crate_dir = std::fs::canonicalize(a.generated_dir.as_ref().unwrap())
        .unwrap()
        .join(name);
    let target_exe = mcc::build::target_dir(None)
        .join("release")
        .join(mcc::build::exe_name(name, &crate_dir));
    let linked = mtime(&target_exe);

    // Same model, same options: nothing to do for cargo, not even a link.
    let t = Instant::now();
    mcc::build::run(&a).unwrap();
    eprintln!("warm rebuild, nothing changed: {:.2?}", t.elapsed());
    assert_eq!(mtime(&target_exe), linked, "relinked without a change");
    assert_eq!(mtime(&object), object_time);

    // A new context length changes model.rs only: recompile and relink, no re-assembly.
    a.ctx = Some(256);
    mcc::build::run(&a).unwrap();
    assert_eq!(mtime(&object), object_time, "weights re-assembled");
    assert_ne!(mtime(&target_exe), linked);
    let info = String::from_utf8_lossy(&run(&exe, &["info"]).stdout).into_owned();
    assert!(info.contains("256 tokens compiled in"), "{info}");

    // The assembled weights deleted (to free disk): cargo would link the missing object,
    // mcc has it assembled again.
    std::fs::remove_file(&object).unwrap();
    mcc::build::run(&a).unwrap();
    assert!(object.exists(), "weights not assembled again");
    let object_time = mtime(&object);
    assert!(run(&exe, &["info"]).status.success());
    // and the next warm rebuild leaves them alone again
    mcc::build::run(&a).unwrap();
    assert_eq!(mtime(&object), object_time, "weights re-assembled twice");
    remove_artifacts(name, None);
}

/// Two crates of one name in different generated directories (a test's and a
/// benchmark's, say), made from different models, each keep their own weights and code,
/// also when one is rebuilt warm after the other: cargo keyed the assembled weights and
/// the compiled binary by package name only, and such a rebuild installed the other
/// crate's model.
#[test]
fn crates_of_one_name_in_two_directories_keep_their_own_models() {
    let gguf_a = tiny_gguf();
    let gguf_b = scratch_dir().join("e2e-compiler-tiny-seed7.gguf");
    let mut cfg = SynthConfig::tiny();
    cfg.seed = 7;
    let w = llama_writer(&cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab).unwrap();
    w.write(&gguf_b, WriteMode::Full).unwrap();
    let name = "e2e_same_name";
    let mut a = args(&gguf_a, name);
    a.generated_dir = Some(scratch_dir().join("generated-a"));
    a.ctx = Some(128);
    let mut b = args(&gguf_b, name);
    b.generated_dir = Some(scratch_dir().join("generated-b"));
    b.output = Some(scratch_dir().join("e2e_same_name_b"));
    b.ctx = Some(256);
    let out = |exe: &Path, what: &[&str]| {
        let o = run(exe, what);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = |exe: &Path| out(exe, &["-p", "the", "-n", "8", "--temp", "0", "-t", "1"]);
    mcc::build::run(&a).unwrap();
    let first = text(a.output.as_ref().unwrap());
    mcc::build::run(&b).unwrap();
    mcc::build::run(&a).unwrap();
    let (exe_a, exe_b) = (a.output.as_ref().unwrap(), b.output.as_ref().unwrap());
    assert_eq!(text(exe_a), first, "A's rebuild runs another model");
    assert_ne!(
        text(exe_b),
        first,
        "the two seeds should give different models"
    );
    assert!(out(exe_a, &["info"]).contains("128 tokens compiled in"));
    assert!(out(exe_b, &["info"]).contains("256 tokens compiled in"));
    remove_artifacts(name, None);
}

#[test]
fn portable_target_cpu_builds_and_runs() {
    let gguf = tiny_gguf();
    let name = "e2e_x86_64_v3";
    let mut a = args(&gguf, name);
    a.target_cpu = Some("x86-64-v3".into());
    mcc::build::run(&a).unwrap();
    let exe = a.output.clone().unwrap();
    // Without MCC_CPU (the suite may run with it set), so that the binary picks itself.
    let out = std::process::Command::new(&exe)
        .arg("info")
        .env_remove("MCC_CPU")
        .output()
        .unwrap();
    assert!(out.status.success());
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains("target cpu:   x86-64-v3 (one kernel tier)"),
        "{info}"
    );
    assert!(
        info.contains("kernel tier:  avx2 (a single-tier build)"),
        "{info}"
    );
    let out = run(&exe, &["-p", "the", "-n", "4", "--temp", "0", "-t", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A tier it does not carry is refused, naming the build it has.
    let out = run_on(&exe, Tier::Scalar, &["info"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("carries only the avx2 kernels"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It was built in its own target directory, not the default one.
    assert!(artifacts(name, None).is_empty());
    assert!(!artifacts(name, Some("x86-64-v3")).is_empty());
}
