//! Embeds the runtime crate's sources (runtime/Cargo.toml, build.rs and every `.rs` file
//! under src/) in mcc, with a hash of them, so that `mcc build` works from an installed
//! mcc after the checkout is moved or deleted: it writes them into its cache once per
//! hash (`mcc::build::runtime_dir`) and the emitted crates depend on that copy.
//!
//! Only Rust sources are carried: the other files under src/ are the unit tests' golden
//! data, which no build of the runtime as a dependency reads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let runtime = manifest.join("../runtime");
    println!("cargo:rerun-if-changed=../runtime/Cargo.toml");
    println!("cargo:rerun-if-changed=../runtime/build.rs");
    println!("cargo:rerun-if-changed=../runtime/src");

    let mut files = vec![PathBuf::from("Cargo.toml"), PathBuf::from("build.rs")];
    collect_rs(&runtime, Path::new("src"), &mut files);
    files.sort();

    // FNV-1a over each path and its contents: the cache directory's name.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut fnv = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let mut table = String::from("&[\n");
    for rel in &files {
        let abs = runtime.join(rel);
        let bytes = std::fs::read(&abs).unwrap_or_else(|e| panic!("{}: {e}", abs.display()));
        let rel = rel.to_str().expect("runtime paths are UTF-8");
        fnv(rel.as_bytes());
        fnv(&[0]);
        fnv(&bytes);
        let abs = abs.canonicalize().expect("the file was just read");
        let _ = writeln!(
            table,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        );
    }
    table.push(']');
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let code = format!(
        "/// The runtime crate's files: (path relative to runtime/, contents).\n\
         pub const FILES: &[(&str, &[u8])] = {table};\n\
         /// FNV-1a of the paths and contents of [`FILES`], 16 hex digits.\n\
         pub const HASH: &str = \"{hash:016x}\";\n"
    );
    std::fs::write(out.join("runtime_sources.rs"), code).expect("write OUT_DIR/runtime_sources.rs");
}

/// Every `.rs` file under `root/rel`, as paths relative to `root`.
fn collect_rs(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("read_dir entry");
        let path = rel.join(entry.file_name());
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            collect_rs(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
