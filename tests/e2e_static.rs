//! `mcc build --static`: the executable links musl statically, needs no other file, and
//! runs in an empty root filesystem with the same output as the glibc build.

use std::path::Path;
use std::process::Command;

use mcc_e2e::{build_model, first_greedy_case, run, scratch_dir, smollm2_q4_1};

#[test]
fn static_binary_runs_in_an_empty_root() {
    let exe = build_model(&smollm2_q4_1(), "smollm2-static", |a| a.static_link = true);

    // ldd says "statically linked" of a static PIE (Rust's musl default) and "not a
    // dynamic executable" of a static non-PIE; either way there is no interpreter and no
    // library to load.
    let ldd = Command::new("ldd").arg(&exe).output().expect("ldd runs");
    let says = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(
        says.contains("statically linked") || says.contains("not a dynamic executable"),
        "ldd: {says}"
    );
    let headers = Command::new("readelf")
        .args(["--program-headers", "--dynamic"])
        .arg(&exe)
        .output()
        .expect("readelf runs");
    let headers = String::from_utf8_lossy(&headers.stdout);
    assert!(!headers.contains("INTERP"), "{headers}");
    assert!(!headers.contains("(NEEDED)"), "{headers}");
    let info = run(&exe, &["info"]);
    assert!(info.status.success());
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(", static (musl)"), "{info}");

    // The executable alone in a directory that becomes the root: no libc, no loader,
    // no /proc, no /sys, no /dev.
    let root = scratch_dir().join("static-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let inside = root.join("smollm2");
    if std::fs::hard_link(&exe, &inside).is_err() {
        std::fs::copy(&exe, &inside).unwrap();
    }
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
    let (prompt, want, n) = first_greedy_case();
    let n = n.to_string();
    let out = in_empty_root(&root, &["/smollm2", "-p", &prompt, "-n", &n, "--temp", "0"]);
    assert!(
        out.status.success(),
        "in an empty root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs `args` with `root` as the root directory: `unshare --map-root-user --root`,
/// which needs no privilege where user namespaces are allowed.
fn in_empty_root(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new("unshare")
        .arg("--map-root-user")
        .arg(format!("--root={}", root.display()))
        .args(args)
        .output()
        .expect("unshare (util-linux) runs")
}
