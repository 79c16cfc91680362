//! A binary whose weight blob is larger than 2 GiB links, runs, and reads the tensor at
//! the end of the blob correctly.
//!
//! The model is an F16 llama of 2.4 GB whose layers are no-ops (their matrices are zero,
//! so the residual stream passes through unchanged) and whose token embedding and output
//! projection are random. Every position's
//! logits are then `output · rmsnorm(token_embd[id])`, which the test computes from the
//! GGUF itself. `output.weight` is the last tensor of the blob, beyond 2 GiB, so a 32-bit
//! offset or relocation anywhere on the way would give logits of the wrong rows.
//!
//! Costs: about 7.5 GB of disk while it runs (assembler object, linked binary, the copy
//! at -o; the GGUF is sparse, its zero layers are holes), all removed at the end, and a
//! few minutes (mostly copying the blob). The disk is checked first: with less free
//! space the test says so and passes without building, unless `MCC_REQUIRE_BIG_BLOB=1`
//! (then it fails), because a shared CI disk that fills up mid-link proves nothing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mcc::describe::describe;
use mcc::gguf::writer::{TensorData, WriteMode};
use mcc::gguf::{GgmlType, GgufFile};
use mcc::synth::{llama_writer, toy_vocab, SynthConfig};
use mcc_e2e::{build_model, run, scratch_dir};

const NAME: &str = "bigblob";

/// Removes the model, the executable, the emitted crate and the crate's artifacts in the
/// shared target directory, also when the test fails.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
            let _ = std::fs::remove_file(p);
        }
        let target = mcc::build::target_dir(None).join("release");
        for sub in [".", "deps", "build", ".fingerprint"] {
            let Ok(entries) = std::fs::read_dir(target.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n == NAME || n.starts_with(&format!("{NAME}-")) {
                    let _ = std::fs::remove_dir_all(e.path());
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// 20 layers of width 2048 and FFN 8192 in F16: 2.43 GB of layer weights, then the
/// output side.
fn write_model(path: &Path) -> SynthConfig {
    let mut cfg = SynthConfig::tiny();
    cfg.name = "bigblob".into();
    cfg.n_embd = 2048;
    cfg.n_layer = 20;
    cfg.n_head = 16;
    cfg.n_head_kv = 4;
    cfg.head_dim = 128;
    cfg.n_ff = 8192;
    cfg.n_vocab = 4096;
    cfg.weight_type = GgmlType::F16;
    let mut w = llama_writer(&cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab).unwrap();
    // Zero layer matrices make every layer a no-op (attention and FFN add zero to the
    // residual stream) and write fast; token_embd and output.weight stay random.
    let q = (cfg.n_head * cfg.head_dim) as u64;
    let kv = (cfg.n_head_kv * cfg.head_dim) as u64;
    let (e, ff) = (cfg.n_embd as u64, cfg.n_ff as u64);
    for l in 0..cfg.n_layer {
        for (role, n_in, n_out) in [
            ("attn_q", e, q),
            ("attn_k", e, kv),
            ("attn_v", e, kv),
            ("attn_output", q, e),
            ("ffn_gate", e, ff),
            ("ffn_up", e, ff),
            ("ffn_down", ff, e),
        ] {
            let name = format!("blk.{l}.{role}.weight");
            assert!(w.remove_tensor(&name));
            w.add_tensor(
                name,
                &[n_in, n_out],
                GgmlType::F16,
                TensorData::Constant(0.0),
            );
        }
    }
    w.write(path, WriteMode::Full).unwrap();
    cfg
}

/// IEEE half to f32: sign, 5-bit exponent (bias 15), 10-bit mantissa; exponent 0 is
/// subnormal (m * 2^-24). The generated weights are finite.
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let mant = f32::from(h & 0x3ff);
    sign * match exp {
        0 => mant * 2f32.powi(-24),
        _ => (1.0 + mant / 1024.0) * 2f32.powi(exp - 15),
    }
}

fn f16_row(bytes: &[u8], row: usize, n: usize) -> Vec<f32> {
    bytes[row * n * 2..(row + 1) * n * 2]
        .chunks_exact(2)
        .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

/// Bytes free on the filesystem holding `dir`, from `df -Pk` (POSIX output format).
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk", dir.to_str()?])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[test]
fn blob_over_2_gib_links_runs_and_reads_its_last_tensor() {
    let dir = scratch_dir();
    const NEEDED: u64 = 8 << 30;
    let free = free_bytes(&dir);
    if free.is_some_and(|f| f < NEEDED) {
        let msg = format!(
            "e2e_big_blob: {} has {:.1} GiB free, the test needs {} GiB",
            dir.display(),
            free.unwrap() as f64 / (1u64 << 30) as f64,
            NEEDED >> 30
        );
        assert!(std::env::var_os("MCC_REQUIRE_BIG_BLOB").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let gguf_path = dir.join("bigblob.gguf");
    let exe_path = dir.join(NAME);
    let _cleanup = Cleanup(vec![
        gguf_path.clone(),
        exe_path.clone(),
        dir.join("generated").join(NAME),
        dir.join("bigblob-prompt.txt"),
        dir.join("bigblob-logits.bin"),
    ]);
    let t = Instant::now();
    let cfg = write_model(&gguf_path);
    eprintln!("wrote {} in {:.1?}", gguf_path.display(), t.elapsed());

    let gguf = GgufFile::open(&gguf_path).unwrap();
    let desc = describe(&gguf).unwrap();
    let plan = mcc::plan::plan(&desc, &gguf);
    let output = plan.get("output.weight");
    assert_eq!(plan.tensors.last().unwrap().name, "output.weight");
    assert!(
        plan.blob_len > 1 << 31 && output.offset > 1 << 31,
        "blob {} bytes, output.weight at {}",
        plan.blob_len,
        output.offset
    );

    let t = Instant::now();
    let exe = build_model(&gguf_path, NAME, |_| {});
    let build_time = t.elapsed();
    let exe_len = std::fs::metadata(&exe).unwrap().len();
    eprintln!(
        "mcc build: {:.1?} for a {:.2} GiB blob; binary {:.2} GiB",
        build_time,
        plan.blob_len as f64 / (1u64 << 30) as f64,
        exe_len as f64 / (1u64 << 30) as f64
    );
    assert!(exe_len > plan.blob_len);

    let prompt = dir.join("bigblob-prompt.txt");
    let logits_path = dir.join("bigblob-logits.bin");
    std::fs::write(&prompt, "the end of the blob").unwrap();
    let t = Instant::now();
    let out = run(
        &exe,
        &[
            "logits",
            "-f",
            prompt.to_str().unwrap(),
            "-o",
            logits_path.to_str().unwrap(),
            "-b",
            "8",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("logits run: {:.1?}", t.elapsed());

    let bytes = std::fs::read(&logits_path).unwrap();
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
    let (n, n_vocab) = (u32_at(0) as usize, u32_at(1) as usize);
    assert_eq!(n_vocab, cfg.n_vocab);
    assert!(n >= 3, "{n} tokens");
    let ids: Vec<usize> = (0..n).map(|i| u32_at(2 + i) as usize).collect();
    let logits: Vec<f32> = bytes[(2 + n) * 4..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(logits.len(), n * n_vocab);

    let embd = gguf.tensor_data(&desc.token_embd);
    let out_w = gguf.tensor_data(desc.output.as_ref().unwrap());
    let e = cfg.n_embd;
    let mut max_diff = 0f32;
    for (p, &id) in ids.iter().enumerate() {
        let x = f16_row(embd, id, e);
        let ms = x.iter().map(|v| (v * v) as f64).sum::<f64>() / e as f64;
        let scale = 1.0 / (ms + cfg.rms_eps as f64).sqrt();
        let xn: Vec<f64> = x.iter().map(|&v| v as f64 * scale).collect();
        let got = &logits[p * n_vocab..(p + 1) * n_vocab];
        // Check the last rows of output.weight (the end of the blob) and a spread of others.
        let rows = (n_vocab - 64..n_vocab).chain((0..n_vocab).step_by(97));
        for v in rows {
            let w = f16_row(out_w, v, e);
            let want: f64 = w.iter().zip(&xn).map(|(&a, &b)| a as f64 * b).sum();
            let diff = (got[v] as f64 - want).abs() as f32;
            max_diff = max_diff.max(diff);
            // Logits have unit scale; f16 activations round at 2^-11 relative.
            assert!(
                diff < 2e-2,
                "position {p} token {id} logit {v}: {} vs {want}",
                got[v]
            );
        }
    }
    eprintln!("max |logit - reference| = {max_diff:.2e} over {n} positions");
}
