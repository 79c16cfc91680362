//! The checkpoint's tensors: which safetensors files hold the model (from
//! `model.safetensors.index.json`, or every `model*.safetensors` in the directory), and
//! each tensor's dtype, shape and bytes, memory-mapped.
//!
//! Tensors come out in the order the reference converter reads them: file by file in
//! the files' name order, and by tensor name within a file. Every header is parsed and
//! checked by the `safetensors` crate (offsets contiguous and inside the file, sizes
//! matching shapes) before any byte is trusted.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use serde_json::Value;

/// The element types a checkpoint tensor may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrcType {
    F32,
    F16,
    BF16,
}

impl SrcType {
    pub fn bytes(self) -> usize {
        match self {
            SrcType::F32 => 4,
            SrcType::F16 | SrcType::BF16 => 2,
        }
    }
}

/// One tensor of the checkpoint.
#[derive(Clone, Debug)]
pub struct SrcTensor {
    pub name: String,
    /// Index into [`Checkpoint::parts`].
    pub part: usize,
    pub dtype: SrcType,
    /// Shape as safetensors writes it (row-major, outermost first).
    pub shape: Vec<u64>,
    /// Byte range in the part file.
    pub range: std::ops::Range<usize>,
}

/// The memory-mapped safetensors files of a checkpoint and their tensors.
pub struct Checkpoint {
    pub parts: Vec<(PathBuf, Mmap)>,
    pub tensors: Vec<SrcTensor>,
}

impl Checkpoint {
    pub fn bytes(&self, t: &SrcTensor) -> &[u8] {
        &self.parts[t.part].1[t.range.clone()]
    }

    pub fn part_path(&self, t: &SrcTensor) -> &Path {
        &self.parts[t.part].0
    }

    /// Opens the safetensors files of the checkpoint in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Checkpoint> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut from_index: Option<(Vec<(String, String)>, PathBuf)> = None;
        let part_names: Vec<String> = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("{}: cannot read", index_path.display()))?;
            let index: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", index_path.display()))?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .with_context(|| {
                    format!(
                        "{}: field `weight_map`: missing or not an object",
                        index_path.display()
                    )
                })?;
            let mut pairs = Vec::with_capacity(map.len());
            for (tensor, file) in map {
                let Some(file) = file.as_str() else {
                    bail!(
                        "{}: field `weight_map.{tensor}`: found {file}, expected a file name",
                        index_path.display()
                    );
                };
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    bail!(
                        "{}: field `weight_map.{tensor}`: {file:?} is not a file name in the \
                         model directory",
                        index_path.display()
                    );
                }
                pairs.push((tensor.clone(), file.to_string()));
            }
            let names: BTreeSet<String> = pairs.iter().map(|(_, f)| f.clone()).collect();
            for name in &names {
                if !dir.join(name).is_file() {
                    let tensor = pairs
                        .iter()
                        .find(|(_, f)| f == name)
                        .map(|(t, _)| t.as_str())
                        .unwrap_or("?");
                    bail!(
                        "{}: field `weight_map.{tensor}` names shard {name:?}, but {} does not \
                         exist",
                        index_path.display(),
                        dir.join(name).display()
                    );
                }
            }
            from_index = Some((pairs, index_path.clone()));
            names.into_iter().collect()
        } else {
            let mut names = Vec::new();
            let entries = std::fs::read_dir(dir)
                .with_context(|| format!("{}: cannot list the directory", dir.display()))?;
            for entry in entries {
                let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("model") && name.ends_with(".safetensors") {
                    names.push(name);
                }
            }
            names.sort();
            names
        };
        if part_names.is_empty() {
            if dir.join("pytorch_model.bin").exists() {
                bail!(
                    "{}: only pytorch_model.bin checkpoints found: mcc convert reads safetensors",
                    dir.display()
                );
            }
            bail!("{}: no model*.safetensors files", dir.display());
        }

        let mut parts = Vec::with_capacity(part_names.len());
        let mut tensors: Vec<SrcTensor> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for (part, name) in part_names.iter().enumerate() {
            let path = dir.join(name);
            let file =
                File::open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
            // SAFETY: the map is read-only; the file must not change while we convert.
            let map = unsafe { Mmap::map(&file) }
                .with_context(|| format!("{}: cannot map", path.display()))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                anyhow::anyhow!(
                    "{}: bad safetensors header ({} bytes of file): {e}",
                    path.display(),
                    map.len()
                )
            })?;
            let data_start = 8 + header_len;
            let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
                meta.tensors().into_iter().collect();
            infos.sort_by(|a, b| a.0.cmp(&b.0));
            for (tname, info) in infos {
                let dtype = match info.dtype {
                    Dtype::F32 => SrcType::F32,
                    Dtype::F16 => SrcType::F16,
                    Dtype::BF16 => SrcType::BF16,
                    other => bail!(
                        "{}: tensor `{tname}`: field `dtype`: {other:?} is not supported \
                         (expected BF16, F16 or F32)",
                        path.display()
                    ),
                };
                if !seen.insert(tname.clone()) {
                    bail!(
                        "{}: tensor `{tname}` is also in an earlier shard",
                        path.display()
                    );
                }
                let (a, b) = info.data_offsets;
                tensors.push(SrcTensor {
                    name: tname,
                    part,
                    dtype,
                    shape: info.shape.iter().map(|&d| d as u64).collect(),
                    range: data_start + a..data_start + b,
                });
            }
            parts.push((path, map));
        }

        if let Some((pairs, index_path)) = from_index {
            let listed: HashSet<&str> = pairs.iter().map(|(t, _)| t.as_str()).collect();
            let mut missing: Vec<&(String, String)> = pairs
                .iter()
                .filter(|(t, _)| !seen.contains(t.as_str()))
                .collect();
            missing.sort();
            let mut extra: Vec<&str> = seen
                .iter()
                .map(String::as_str)
                .filter(|t| !listed.contains(t))
                .collect();
            extra.sort();
            if let Some((t, f)) = missing.first() {
                bail!(
                    "{}: field `weight_map.{t}` says shard {f:?} holds tensor `{t}`, but no \
                     shard has it ({} tensors missing)",
                    index_path.display(),
                    missing.len()
                );
            }
            if let Some(t) = extra.first() {
                bail!(
                    "{}: field `weight_map`: tensor `{t}` is in a shard but not in the map \
                     ({} such tensors)",
                    index_path.display(),
                    extra.len()
                );
            }
        }
        Ok(Checkpoint { parts, tensors })
    }
}
