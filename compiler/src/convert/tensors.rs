//! The output tensors: GGUF names for the checkpoint's tensors, their shapes checked
//! against config.json, each one's type, and the conversion of its bytes.
//!
//! What the reference converter does to a tensor, in order:
//! 1. Q and K projections are permuted: within each head the rows are reordered from
//!    "first half, second half" (rotate-half RoPE) to interleaved pairs (GGUF's rope):
//!    row `h·d + j·d/2 + i` moves to `h·d + 2i + j`, for head `h` of `d` rows. K uses the
//!    KV head count.
//! 2. A BF16 tensor becomes f32 (exact); F16 and F32 stay as they are.
//! 3. One-dimensional tensors and norms are stored as F32, everything else in the
//!    output type. f32 → F16 is numpy's `astype(float16)`: round to nearest even,
//!    overflow to infinity, a NaN keeps its sign and top payload bits (made non-zero),
//!    without setting the quiet bit. f32 → BF16 rounds to nearest even and makes a NaN
//!    quiet (ggml's rule). F16 → f32 is exact.
//!
//! Llama 3.1's `rope_scaling` (`rope_type: llama3`) adds a `rope_freqs.weight` tensor
//! of per-frequency factors ([`llama3_rope_factors`]), computed in f32 step by step as
//! the reference's torch code rounds it.

use anyhow::{bail, Context};

use super::config::Config;
use super::shards::{Checkpoint, SrcTensor, SrcType};
use crate::gguf::GgmlType;

/// The output file type (`--outtype`), as `general.file_type` numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    BF16,
}

impl OutType {
    /// llama.cpp's `LLAMA_FTYPE_*` number.
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::BF16 => 32,
        }
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::BF16 => GgmlType::BF16,
        }
    }
}

/// The model's dimensions, from config.json, that tensor shapes are checked against.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub n_layer: u32,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u64,
    pub n_vocab: u64,
}

/// Where an output tensor's bytes come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Generated f32 values.
    Values(Vec<f32>),
    /// A checkpoint tensor, permuted over this many heads when given.
    Checkpoint { index: usize, permute: Option<u32> },
}

/// One tensor of the output file.
#[derive(Clone, Debug)]
pub struct OutTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub source: Source,
}

/// What a checkpoint tensor is, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    TokenEmbd,
    Output,
    OutputNorm,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOut,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
}

/// Tensors the reference drops without a word.
fn ignored(name: &str) -> bool {
    name.ends_with(".attention.masked_bias")
        || name.ends_with(".attention.bias")
        || name.ends_with(".rotary_emb.inv_freq")
}

/// The GGUF name and role of a checkpoint tensor; `None` if it has no place in a llama
/// GGUF.
fn map_name(name: &str, n_layer: u32) -> Option<(String, Role)> {
    let fixed = match name {
        "model.embed_tokens.weight" => Some(("token_embd.weight", Role::TokenEmbd)),
        "lm_head.weight" => Some(("output.weight", Role::Output)),
        "model.norm.weight" => Some(("output_norm.weight", Role::OutputNorm)),
        _ => None,
    };
    if let Some((n, r)) = fixed {
        return Some((n.to_string(), r));
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (bid, rest) = rest.split_once('.')?;
    if bid.is_empty()
        || !bid.bytes().all(|b| b.is_ascii_digit())
        || bid.len() > 1 && bid.starts_with('0')
    {
        return None;
    }
    let bid: u32 = bid.parse().ok()?;
    if bid >= n_layer {
        return None;
    }
    let (suffix, role) = match rest {
        "input_layernorm.weight" => ("attn_norm", Role::AttnNorm),
        "self_attn.q_proj.weight" => ("attn_q", Role::AttnQ),
        "self_attn.k_proj.weight" => ("attn_k", Role::AttnK),
        "self_attn.v_proj.weight" => ("attn_v", Role::AttnV),
        "self_attn.o_proj.weight" => ("attn_output", Role::AttnOut),
        "post_attention_layernorm.weight" => ("ffn_norm", Role::FfnNorm),
        "mlp.gate_proj.weight" => ("ffn_gate", Role::FfnGate),
        "mlp.up_proj.weight" => ("ffn_up", Role::FfnUp),
        "mlp.down_proj.weight" => ("ffn_down", Role::FfnDown),
        _ => return None,
    };
    Some((format!("blk.{bid}.{suffix}.weight"), role))
}

/// The shape config.json implies for a tensor of this role (safetensors order).
fn expected_shape(role: Role, d: &Dims) -> Vec<u64> {
    let q = u64::from(d.n_head) * d.head_dim;
    let kv = u64::from(d.n_head_kv) * d.head_dim;
    match role {
        Role::TokenEmbd | Role::Output => vec![d.n_vocab, d.n_embd],
        Role::OutputNorm | Role::AttnNorm | Role::FfnNorm => vec![d.n_embd],
        Role::AttnQ => vec![q, d.n_embd],
        Role::AttnK | Role::AttnV => vec![kv, d.n_embd],
        Role::AttnOut => vec![d.n_embd, q],
        Role::FfnGate | Role::FfnUp => vec![d.n_ff, d.n_embd],
        Role::FfnDown => vec![d.n_embd, d.n_ff],
    }
}

/// Which config.json fields a role's shape comes from (for error messages).
fn shape_fields(role: Role) -> &'static str {
    match role {
        Role::TokenEmbd | Role::Output => "vocab_size, hidden_size",
        Role::OutputNorm | Role::AttnNorm | Role::FfnNorm => "hidden_size",
        Role::AttnQ | Role::AttnOut => "num_attention_heads, head_dim, hidden_size",
        Role::AttnK | Role::AttnV => "num_key_value_heads, head_dim, hidden_size",
        Role::FfnGate | Role::FfnUp | Role::FfnDown => "intermediate_size, hidden_size",
    }
}

/// The output tensors in the reference's order: generated ones first, then the
/// checkpoint's in reading order. Checks every name and shape.
pub fn plan(
    ck: &Checkpoint,
    config: &Config,
    dims: &Dims,
    out: OutType,
    extra: Vec<(String, Vec<f32>)>,
) -> anyhow::Result<Vec<OutTensor>> {
    let mut plan = Vec::with_capacity(ck.tensors.len() + extra.len());
    for (name, values) in extra {
        plan.push(OutTensor {
            name,
            dims: vec![values.len() as u64],
            ty: GgmlType::F32,
            source: Source::Values(values),
        });
    }
    for (index, t) in ck.tensors.iter().enumerate() {
        if ignored(&t.name) {
            continue;
        }
        let file = ck.part_path(t).display();
        let Some((name, role)) = map_name(&t.name, dims.n_layer) else {
            bail!(
                "{file}: tensor `{}` has no place in a llama GGUF (layers 0..{} of {})",
                t.name,
                dims.n_layer,
                config.path.display()
            );
        };
        let want = expected_shape(role, dims);
        if t.shape != want {
            bail!(
                "{file}: tensor `{}`: shape {:?} disagrees with {} (`{}` give {:?})",
                t.name,
                t.shape,
                config.path.display(),
                shape_fields(role),
                want
            );
        }
        let permute = match role {
            Role::AttnQ => Some(dims.n_head),
            Role::AttnK => Some(dims.n_head_kv),
            _ => None,
        };
        if let Some(h) = permute {
            if h == 0 || t.shape[0] % (2 * u64::from(h)) != 0 {
                bail!(
                    "{file}: tensor `{}`: {} rows do not split into {h} heads of pairs",
                    t.name,
                    t.shape[0]
                );
            }
        }
        let ty = if t.shape.len() <= 1 || name.ends_with("_norm.weight") {
            GgmlType::F32
        } else {
            out.ggml()
        };
        plan.push(OutTensor {
            name,
            dims: t.shape.iter().rev().copied().collect(),
            ty,
            source: Source::Checkpoint { index, permute },
        });
    }
    Ok(plan)
}

/// The type `--outtype auto` picks: that of the first matrix read (BF16 or F16), else
/// F16.
pub fn guess_out_type(ck: &Checkpoint) -> OutType {
    for t in &ck.tensors {
        if t.shape.len() < 2 {
            continue;
        }
        match t.dtype {
            SrcType::BF16 => return OutType::BF16,
            SrcType::F16 => return OutType::F16,
            SrcType::F32 => {}
        }
    }
    OutType::F16
}

/// The bytes of an output tensor.
pub fn produce(ck: &Checkpoint, t: &OutTensor) -> anyhow::Result<Vec<u8>> {
    match &t.source {
        Source::Values(v) => Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Source::Checkpoint { index, permute } => {
            let src = &ck.tensors[*index];
            convert(ck.bytes(src), src, *permute, t.ty)
                .with_context(|| format!("{}: tensor `{}`", ck.part_path(src).display(), src.name))
        }
    }
}

/// Converts one tensor's bytes: permutes its rows, then converts each element.
pub fn convert(
    bytes: &[u8],
    src: &SrcTensor,
    permute: Option<u32>,
    to: GgmlType,
) -> anyhow::Result<Vec<u8>> {
    let esize = src.dtype.bytes();
    let rows = src.shape.first().copied().unwrap_or(1) as usize;
    let n: usize = src.shape.iter().product::<u64>() as usize;
    if bytes.len() != n * esize {
        bail!(
            "{} bytes, expected {} for shape {:?}",
            bytes.len(),
            n * esize,
            src.shape
        );
    }
    let cols = n.checked_div(rows).unwrap_or(0);
    let out_size = match to {
        GgmlType::F32 => 4,
        GgmlType::F16 | GgmlType::BF16 => 2,
        other => bail!("cannot write {other}"),
    };
    let mut out = vec![0u8; n * out_size];
    let row_bytes = cols * esize;
    for r in 0..rows {
        // The source row that lands at output row `r`.
        let s = match permute {
            None => r,
            Some(h) => {
                let per_head = rows / h as usize;
                let half = per_head / 2;
                let (head, within) = (r / per_head, r % per_head);
                let (i, j) = (within / 2, within % 2);
                head * per_head + j * half + i
            }
        };
        let src_row = &bytes[s * row_bytes..(s + 1) * row_bytes];
        let dst_row = &mut out[r * cols * out_size..(r + 1) * cols * out_size];
        convert_row(src_row, src.dtype, dst_row, to);
    }
    Ok(out)
}

fn convert_row(src: &[u8], from: SrcType, dst: &mut [u8], to: GgmlType) {
    match (from, to) {
        (SrcType::F16, GgmlType::F16) | (SrcType::F32, GgmlType::F32) => {
            dst.copy_from_slice(src);
        }
        (SrcType::F16, _) => {
            for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(out_width(to))) {
                let f = f16_bits_to_f32_bits(u16::from_le_bytes([s[0], s[1]]));
                put(d, f, to);
            }
        }
        (SrcType::BF16, _) => {
            for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(out_width(to))) {
                let f = u32::from(u16::from_le_bytes([s[0], s[1]])) << 16;
                put(d, f, to);
            }
        }
        (SrcType::F32, _) => {
            for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(out_width(to))) {
                put(d, u32::from_le_bytes([s[0], s[1], s[2], s[3]]), to);
            }
        }
    }
}

fn out_width(to: GgmlType) -> usize {
    if to == GgmlType::F32 {
        4
    } else {
        2
    }
}

/// Stores f32 `bits` as `to`.
#[inline(always)]
fn put(d: &mut [u8], bits: u32, to: GgmlType) {
    match to {
        GgmlType::F32 => d.copy_from_slice(&bits.to_le_bytes()),
        GgmlType::F16 => d.copy_from_slice(&f32_bits_to_f16_bits(bits).to_le_bytes()),
        _ => d.copy_from_slice(&f32_bits_to_bf16_bits(bits).to_le_bytes()),
    }
}

/// binary32 → binary16 as numpy casts: round to nearest even; too large → infinity; a
/// NaN keeps its sign and the top 10 bits of its payload, made non-zero (a signalling
/// NaN stays signalling).
pub fn f32_bits_to_f16_bits(f: u32) -> u16 {
    let sign = ((f >> 16) & 0x8000) as u16;
    let exp = (f >> 23) & 0xff;
    let frac = f & 0x007f_ffff;
    if exp == 0xff {
        if frac == 0 {
            return sign | 0x7c00;
        }
        let payload = (frac >> 13) as u16;
        return sign | 0x7c00 | if payload == 0 { 1 } else { payload };
    }
    // Values of 2^16 and more overflow (the largest half is just below it).
    if exp >= 127 + 16 {
        return sign | 0x7c00;
    }
    // Below 2^-25 everything rounds to zero (2^-25 itself is a tie, to even: zero).
    if exp < 127 - 25 {
        return sign;
    }
    let sig = frac | 0x0080_0000;
    if exp <= 127 - 15 {
        // A half subnormal: the value in units of 2^-24 is sig · 2^(exp - 126 - 23 + 24).
        let shift = 126 - exp; // 14..=24
        return sign | round_shift(sig, shift) as u16;
    }
    // A normal half: the exponent field plus the rounded 10-bit fraction; a carry out of
    // the fraction moves to the next binade (or to infinity), as adding does.
    let base = ((exp - 112) << 10) as u16;
    sign | (base + round_shift(frac, 13) as u16)
}

/// `x >> shift`, rounded to nearest, ties to even.
fn round_shift(x: u32, shift: u32) -> u32 {
    let q = x >> shift;
    let rem = x & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if rem > half || (rem == half && q & 1 == 1) {
        q + 1
    } else {
        q
    }
}

/// binary16 → binary32, exactly (a NaN's payload moves up unchanged).
pub fn f16_bits_to_f32_bits(h: u16) -> u32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from(h >> 10) & 0x1f;
    let frac = u32::from(h & 0x3ff);
    match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: frac · 2^-24, exact in f32.
            let v = frac as f32 * f32::from_bits(0x3380_0000);
            sign | v.to_bits()
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    }
}

/// binary32 → bfloat16: round to nearest even; a NaN becomes quiet.
pub fn f32_bits_to_bf16_bits(f: u32) -> u16 {
    let f = if f & 0x7fff_ffff > 0x7f80_0000 {
        (f & 0xffff_0000) | 0x0040_0000
    } else {
        f
    };
    ((u64::from(f) + 0x7fff + u64::from((f >> 16) & 1)) >> 16) as u16
}

/// Llama 3.1's rope frequency factors, one per rotated pair of a `dim`-wide head.
///
/// Per frequency `f_i = 1 / base^(2i/dim)`, wavelength `w = 2π / f_i`: factor 1 below
/// `old_ctx / high`, `factor` above `old_ctx / low`, and in between
/// `1 / ((1 - s) / factor + s)` with `s = (old_ctx / w - low) / (high - low)`.
/// Every step is an f32 operation as torch performs it: `a / tensor` is a reciprocal
/// then a product, Python numbers are rounded to f32 before they meet a tensor, and
/// `base^x` is the correctly rounded f32 power.
pub fn llama3_rope_factors(
    base: f64,
    dim: u64,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Vec<f32> {
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let recip = |x: f32| 1.0f32 / x;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let x = i as f32 / dim as f32;
            let p = ((base as f32) as f64).powf(x as f64) as f32;
            let freq = recip(p);
            let wavelen = recip(freq) * two_pi;
            if wavelen < high_wavelen as f32 {
                1.0
            } else if wavelen > low_wavelen as f32 {
                factor as f32
            } else {
                let a = recip(wavelen) * old_ctx as f32 - low as f32;
                let smooth = a / (high - low) as f32;
                let t = (1.0f32 - smooth) / factor as f32 + smooth;
                recip(t)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounding_matches_numpy() {
        // (f32 bits, numpy's float16 bits), from numpy 2.2's astype(float16).
        let cases: [(u32, u16); 19] = [
            (0x7f80_0001, 0x7c01),
            (0x7fc0_0000, 0x7e00),
            (0xffc0_0001, 0xfe00),
            (0x7f80_2000, 0x7c01),
            (0x7fa0_0000, 0x7d00),
            (0x477f_f000, 0x7c00),
            (0x477f_efff, 0x7bff),
            (0x477f_e000, 0x7bff),
            (0x3300_0000, 0x0000),
            (0x3300_0001, 0x0001),
            (0x337f_ffff, 0x0001),
            (0x3880_0000, 0x0400),
            (0x387f_c000, 0x03ff),
            (0x387f_e000, 0x0400),
            (0x7f7f_ffff, 0x7c00),
            (0x8000_0000, 0x8000),
            (0x0000_0001, 0x0000),
            (0x7f80_0000, 0x7c00),
            (0x7f80_1000, 0x7c01),
        ];
        for (f, h) in cases {
            assert_eq!(f32_bits_to_f16_bits(f), h, "{f:#x}");
        }
        // Every half converts to f32 and back unchanged (NaNs included).
        for h in 0..=u16::MAX {
            assert_eq!(f32_bits_to_f16_bits(f16_bits_to_f32_bits(h)), h, "{h:#x}");
        }
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_bits_to_bf16_bits(0x3f80_8000), 0x3f80); // tie to even
        assert_eq!(f32_bits_to_bf16_bits(0x3f81_8000), 0x3f82);
        assert_eq!(f32_bits_to_bf16_bits(0x7f80_0001), 0x7fc0); // quiet NaN
        assert_eq!(f32_bits_to_bf16_bits(0x7f7f_ffff), 0x7f80);
    }

    #[test]
    fn q_rows_interleave_within_heads() {
        // 2 heads of 4 rows, 1 column, F32: rows 0..8.
        let src = SrcTensor {
            name: "q".into(),
            part: 0,
            dtype: SrcType::F32,
            shape: vec![8, 1],
            range: 0..32,
        };
        let bytes: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let out = convert(&bytes, &src, Some(2), GgmlType::F32).unwrap();
        let rows: Vec<f32> = out
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(rows, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }

    #[test]
    fn llama31_factors() {
        // Llama 3.1 8B: base 500000, head 128, factor 8, low 1, high 4, 8192.
        let f = llama3_rope_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
    }
}
