//! The runtime crate that emitted crates depend on. mcc carries the runtime's sources
//! (compiler/build.rs embeds them) and writes them into its cache, once per version of
//! them, so that a build needs no mcc checkout: an installed mcc builds the same
//! binaries as one run from the source tree.
//!
//! Beside the runtime's own manifest, the copy holds one manifest per SIMD kernel tier
//! (`tiers/NAME/Cargo.toml`, package `mcc-runtime-tier-NAME`) over the same sources:
//! cargo compiles a package once per build, and each tier needs its own compilation of
//! the runtime, with its own target features ([`mcc_runtime::tier`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mcc_runtime::tier::Tier;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/runtime_sources.rs"));
}

/// mcc's own lock file (the workspace's), which a newly emitted crate starts from: its
/// runtime then builds with the dependency versions mcc was tested with.
pub const WORKSPACE_LOCK: &str = include_str!("../../Cargo.lock");

/// The SIMD tiers, which get a copy of the runtime each; the scalar tier is the runtime
/// itself, compiled for the x86-64 baseline like the rest of the binary.
pub const SIMD_TIERS: [Tier; 2] = [Tier::Avx512, Tier::Avx2];

/// `$MCC_CACHE/runtime/mcc-runtime-VERSION-HASH`, written if it is not there yet.
pub fn runtime_dir(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("runtime").join(format!(
        "mcc-runtime-{}-{}",
        env!("CARGO_PKG_VERSION"),
        embedded::HASH
    ));
    if dir.join(COMPLETE).is_file() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("a directory under the cache");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create directory", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_copy(&tmp);
    let written = written.and_then(|()| match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(()),
        // another mcc wrote the same copy meanwhile
        Err(_) if dir.join(COMPLETE).is_file() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("{}: cannot move into place", dir.display())),
    });
    let _ = std::fs::remove_dir_all(&tmp);
    written.map(|()| dir)
}

/// Marks a copy as whole: written last, so a copy cut short is written again.
const COMPLETE: &str = ".complete";

fn write_copy(dir: &Path) -> Result<()> {
    for (rel, bytes) in embedded::FILES {
        let path = dir.join(rel);
        let sub = path.parent().expect("a file has a parent");
        std::fs::create_dir_all(sub)
            .with_context(|| format!("{}: cannot create directory", sub.display()))?;
        std::fs::write(&path, bytes)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    let manifest = embedded::FILES
        .iter()
        .find(|(rel, _)| *rel == "Cargo.toml")
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .expect("the runtime's Cargo.toml is embedded");
    for tier in SIMD_TIERS {
        let path = dir.join("tiers").join(tier.name()).join("Cargo.toml");
        std::fs::create_dir_all(path.parent().expect("a parent"))
            .with_context(|| format!("{}: cannot create directory", dir.display()))?;
        std::fs::write(&path, tier_manifest(&manifest, tier)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    std::fs::write(dir.join(COMPLETE), b"")
        .with_context(|| format!("{}: cannot write", dir.display()))?;
    Ok(())
}

/// The package name of `tier`'s copy of the runtime.
pub fn tier_package(tier: Tier) -> String {
    format!("mcc-runtime-tier-{}", tier.name())
}

/// The manifest of `tier`'s copy: the runtime's own (`base`), renamed, over the sources
/// two directories up.
fn tier_manifest(base: &str, tier: Tier) -> Result<String> {
    const NAME: &str = "name = \"mcc-runtime\"\n";
    if base.matches(NAME).count() != 1 {
        bail!(
            "runtime/Cargo.toml: expected one line `{}`",
            NAME.trim_end()
        );
    }
    let package = tier_package(tier);
    Ok(format!(
        "# Written by mcc: the {} kernel tier's copy of mcc-runtime (src/tier.rs).\n{}\n[lib]\nname = \"{}\"\npath = \"../../src/lib.rs\"\n",
        tier.name(),
        base.replacen(
            NAME,
            &format!("name = \"{package}\"\nbuild = \"../../build.rs\"\n"),
            1
        ),
        package.replace('-', "_")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_written_once_with_a_manifest_per_simd_tier() {
        let cache = tempfile::tempdir().unwrap();
        let dir = runtime_dir(cache.path()).unwrap();
        assert!(dir.join("src/lib.rs").is_file());
        assert!(dir.join("src/tier.rs").is_file());
        let avx2 = std::fs::read_to_string(dir.join("tiers/avx2/Cargo.toml")).unwrap();
        assert!(avx2.contains("name = \"mcc-runtime-tier-avx2\""));
        assert!(avx2.contains("path = \"../../src/lib.rs\""));
        assert!(avx2.contains("build = \"../../build.rs\""));
        assert_eq!(
            mcc_runtime::tier::of_package("mcc-runtime-tier-avx2"),
            Some(Tier::Avx2)
        );
        // a second call finds it: nothing rewritten
        let mtime = std::fs::metadata(dir.join("src/lib.rs"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(runtime_dir(cache.path()).unwrap(), dir);
        let again = std::fs::metadata(dir.join("src/lib.rs"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(mtime, again);
        let names: Vec<_> = std::fs::read_dir(dir.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary left behind");
    }

    #[test]
    fn a_manifest_without_the_name_line_is_refused() {
        assert!(tier_manifest("[package]\nname = \"other\"\n", Tier::Avx2).is_err());
    }
}
