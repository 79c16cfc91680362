//! Which type each tensor of a llama model gets in a file type: the same choice, tensor
//! for tensor, as llama.cpp's `llama-quantize` makes for the llama architecture.
//!
//! A tensor is quantized at all only if it is a matrix whose name ends in `weight` and
//! is none of the small or special ones (norms, expert gates, position embeddings, ...):
//! [`allows_quantization`]. Such a tensor starts from the file type's default type; then
//! its role (the output, the token embeddings, attn_v, ffn_down, ...) and its layer may
//! move it to a type with more bits ([`Chooser::choose`]), and last a type whose block
//! does not divide the row width falls back to one whose block does
//! ([`fallback`]). Layers are counted per role in the order the tensors are visited,
//! so the chooser is stateful and must see the tensors in file order.

use super::ftype::{is_quantized, FileType};
use crate::gguf::GgmlType;

/// What a tensor does, from its name, as far as the type rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Role {
    /// The role of tensor `name` (substring matches, first match wins).
    pub fn of(name: &str) -> Role {
        if name == "output.weight" {
            Role::Output
        } else if is_token_embd(name) {
            Role::TokenEmbd
        } else if name.contains("attn_qkv.weight") {
            Role::AttnQkv
        } else if name.contains("attn_kv_b.weight") {
            Role::AttnKvB
        } else if name.contains("attn_v.weight") {
            Role::AttnV
        } else if name.contains("attn_k.weight") {
            Role::AttnK
        } else if name.contains("attn_q.weight") {
            Role::AttnQ
        } else if name.contains("attn_output.weight") {
            Role::AttnOutput
        } else if name.contains("ffn_up") {
            Role::FfnUp
        } else if name.contains("ffn_gate") {
            Role::FfnGate
        } else if name.contains("ffn_down") {
            Role::FfnDown
        } else {
            Role::Other
        }
    }

    /// The value projections (and fused ones holding them): small, and sensitive to
    /// quantization error.
    fn is_attn_v(self) -> bool {
        matches!(self, Role::AttnV | Role::AttnQkv | Role::AttnKvB)
    }
}

/// Token embedding tables (they are looked up by row, never multiplied).
pub fn is_token_embd(name: &str) -> bool {
    name == "token_embd.weight" || name == "per_layer_token_embd.weight"
}

/// Substrings that keep a tensor in its type: tensors too small to be worth it or used
/// in ways the quantized types do not serve (expert gates, convolutions, RWKV's mixing
/// vectors, multimodal position tables, ...).
const KEEP_IF_CONTAINS: [&str; 35] = [
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
];

/// Whether tensor `name` of `n_dims` dimensions (trailing 1s not counted) is quantized
/// at all; the others are copied unchanged.
pub fn allows_quantization(name: &str, n_dims: usize) -> bool {
    if n_dims < 2 {
        return false;
    }
    // "Ends in `weight`" is tested as llama.cpp tests it: the last "weight" found ends
    // the name, where a name of exactly 5 bytes without "weight" counts too (its
    // not-found position equals its length minus 6 in unsigned arithmetic).
    let ends_in_weight = match name.rfind("weight") {
        Some(p) => p + 6 == name.len(),
        None => name.len() == 5,
    };
    ends_in_weight
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !KEEP_IF_CONTAINS.iter().any(|s| name.contains(s))
}

/// Whether a tensor of type `t` must have importance data: the types that are garbage
/// without it, and Q2_K in a Q2_K_S file. The token embeddings and the output never
/// need it.
pub fn requires_imatrix(name: &str, t: GgmlType, ftype: FileType) -> bool {
    if is_token_embd(name) || name == "output.weight" {
        return false;
    }
    match t {
        GgmlType::IQ3_XXS
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ1_M
        | GgmlType::IQ1_S => true,
        GgmlType::Q2_K => ftype == FileType::Q2_K_S,
        _ => false,
    }
}

/// The model facts the rules read (llama's hyperparameters, layer 0 where they are per
/// layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelFacts {
    /// `llama.block_count`.
    pub n_layer: u32,
    /// Query heads per key/value head (0 when there are no kv heads).
    pub n_gqa: u32,
    /// `llama.expert_count` (0 for a dense model).
    pub n_expert: u32,
    /// Llama-2/3 70B: 80 layers with grouped-query attention and no experts. Its attn_v
    /// is 8 times smaller than attn_q, so the rules give it more bits.
    pub is_70b: bool,
}

/// A tensor as the rules see it.
pub struct TensorShape<'a> {
    pub name: &'a str,
    /// Dimensions in ggml order, trailing 1s removed.
    pub dims: &'a [u64],
}

/// Walks a model's tensors in file order and picks each one's type; see the module doc.
pub struct Chooser {
    ftype: FileType,
    model: ModelFacts,
    has_imatrix: bool,
    /// No `output.weight`: the token embeddings serve as the output and get its type.
    tied_embeddings: bool,
    n_attn_v: i32,
    i_attn_v: i32,
    n_ffn_down: i32,
    i_ffn_down: i32,
    n_ffn_gate: i32,
    i_ffn_gate: i32,
    n_ffn_up: i32,
    i_ffn_up: i32,
    /// Tensors whose type fell back for their row width.
    pub n_fallback: usize,
}

impl Chooser {
    /// A chooser for a model with tensors `names` (all of them, in file order).
    pub fn new<'a>(
        ftype: FileType,
        model: ModelFacts,
        has_imatrix: bool,
        names: impl Iterator<Item = &'a str>,
    ) -> Chooser {
        let (mut n_attn_v, mut tied) = (0, true);
        for name in names {
            let role = Role::of(name);
            if role.is_attn_v() {
                n_attn_v += 1;
            }
            if role == Role::Output {
                tied = false;
            }
        }
        let n_layer = i32::try_from(model.n_layer).unwrap_or(i32::MAX);
        Chooser {
            ftype,
            model,
            has_imatrix,
            tied_embeddings: tied,
            n_attn_v,
            i_attn_v: 0,
            n_ffn_down: n_layer,
            i_ffn_down: 0,
            n_ffn_gate: n_layer,
            i_ffn_gate: 0,
            n_ffn_up: n_layer,
            i_ffn_up: 0,
            n_fallback: 0,
        }
    }

    /// The type tensor `t` (currently of type `current`) gets. Call once per tensor, in
    /// file order.
    pub fn choose(&mut self, t: &TensorShape, current: GgmlType) -> Result<GgmlType, String> {
        if !allows_quantization(t.name, t.dims.len()) {
            return Ok(current);
        }
        let default = self.ftype.default_type();
        if !is_quantized(default) {
            return Ok(default);
        }
        let by_role = self.by_role(t, default)?;
        self.fallback(t, by_role)
    }

    /// Layer `i` of `n` for a per-role counter: the counter itself, or for a model with
    /// experts (whose tensors of one role are not one per layer) the layer in the name.
    fn layer_of(&self, counter: i32, n_layer: i32, name: &str) -> Result<(i32, i32), String> {
        if self.model.n_expert <= 1 {
            return Ok((counter, n_layer));
        }
        let i = parse_layer(name).ok_or_else(|| {
            format!("tensor `{name}`: cannot tell its layer (expected a name `blk.N.…`)")
        })?;
        if i < 0 || i >= n_layer {
            return Err(format!(
                "tensor `{name}`: layer {i}, expected one in [0, {n_layer})"
            ));
        }
        Ok((i, n_layer))
    }

    /// The type the role rules give (before the row-width fallback).
    fn by_role(&mut self, t: &TensorShape, default: GgmlType) -> Result<GgmlType, String> {
        use FileType as F;
        use GgmlType as G;
        let ft = self.ftype;
        let role = Role::of(t.name);
        let n_gqa = self.model.n_gqa;
        let n_expert = self.model.n_expert;
        let mut ty = default;
        let more_bits = |i: i32, n: i32| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
        let iq2_mix = matches!(
            ft,
            F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
        );

        if role == Role::Output || (self.tied_embeddings && role == Role::TokenEmbd) {
            // The output (or the embeddings standing in for it) gets 6 bits at least.
            let nx = t.dims[0];
            if !nx.is_multiple_of(ty.block_elems()) {
                ty = G::Q8_0;
            } else if matches!(
                ft,
                F::IQ2_XXS | F::IQ2_XS | F::IQ3_XXS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
            ) {
                ty = G::Q5_K;
            } else if ty != G::Q8_0 {
                ty = G::Q6_K;
            }
        } else if role == Role::TokenEmbd {
            if matches!(ft, F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ1_M) {
                ty = G::Q2_K;
            } else if matches!(ft, F::IQ2_S | F::IQ2_M | F::IQ3_XXS) {
                ty = G::IQ3_S;
            }
        } else if iq2_mix {
            let iq3_or_q2 = if matches!(ft, F::IQ2_S | F::IQ2_M) {
                G::IQ3_S
            } else {
                G::Q2_K
            };
            if role.is_attn_v() {
                ty = if n_gqa >= 4 || n_expert >= 4 {
                    G::Q4_K
                } else {
                    iq3_or_q2
                };
                self.i_attn_v += 1;
            } else if n_expert == 8 && role == Role::AttnK {
                ty = G::Q4_K;
            } else if role == Role::FfnDown {
                if self.i_ffn_down < self.n_ffn_down / 8 {
                    ty = iq3_or_q2;
                }
                self.i_ffn_down += 1;
            } else if role == Role::AttnOutput {
                if n_expert == 8 {
                    ty = G::Q5_K;
                } else if matches!(ft, F::IQ1_S | F::IQ1_M) {
                    ty = G::IQ2_XXS;
                } else if matches!(ft, F::IQ2_S | F::IQ2_M) {
                    ty = G::IQ3_S;
                }
            }
        } else if role.is_attn_v() {
            let (i, n) = (self.i_attn_v, self.n_attn_v);
            if ft == F::Q2_K {
                ty = if n_gqa >= 4 { G::Q4_K } else { G::Q3_K };
            } else if ft == F::Q2_K_S && n_gqa >= 4 {
                ty = G::Q4_K;
            } else if ft == F::IQ3_XXS {
                ty = if n_gqa >= 4 {
                    G::Q4_K
                } else if !self.has_imatrix {
                    G::IQ3_S
                } else {
                    G::IQ3_XXS
                };
            } else if (matches!(ft, F::IQ3_XS | F::IQ3_S) && n_gqa >= 4) || ft == F::IQ3_M {
                ty = G::Q4_K;
            } else if ft == F::Q3_K_M {
                ty = if i < 2 { G::Q5_K } else { G::Q4_K };
            } else if ft == F::Q3_K_L || (matches!(ft, F::IQ4_NL | F::IQ4_XS) && n_gqa >= 4) {
                ty = G::Q5_K;
            } else if matches!(ft, F::Q4_K_M | F::Q5_K_M) && more_bits(i, n) {
                ty = G::Q6_K;
            } else if ft == F::Q4_K_S && i < 4 {
                ty = G::Q5_K;
            }
            if self.model.is_70b && matches!(ty, G::Q3_K | G::Q4_K) {
                ty = G::Q5_K;
            }
            if n_expert == 8 {
                ty = G::Q8_0;
            }
            self.i_attn_v += 1;
        } else if role == Role::AttnK {
            if n_expert == 8 {
                ty = G::Q8_0;
            } else if ft == F::IQ3_XS {
                ty = G::IQ3_XXS;
            } else if ft == F::IQ3_XXS {
                ty = G::IQ2_S;
            }
        } else if role == Role::AttnQ {
            if ft == F::IQ3_XS {
                ty = G::IQ3_XXS;
            } else if ft == F::IQ3_XXS {
                ty = G::IQ2_S;
            }
        } else if role == Role::FfnDown {
            let (i, n) = self.layer_of(self.i_ffn_down, self.n_ffn_down, t.name)?;
            if ft == F::Q2_K {
                ty = G::Q3_K;
            } else if ft == F::Q2_K_S {
                if i < n / 8 {
                    ty = G::Q4_K;
                }
            } else if ft == F::IQ3_XXS && !self.has_imatrix {
                ty = if i < n / 8 { G::Q4_K } else { G::Q3_K };
            } else if ft == F::Q3_K_M {
                ty = if i < n / 16 { G::Q5_K } else { G::Q4_K };
            } else if ft == F::IQ3_M && (i < n / 8 || (n_expert == 8 && more_bits(i, n))) {
                ty = G::Q4_K;
            } else if ft == F::Q3_K_L {
                ty = G::Q5_K;
            } else if ft == F::Q4_K_M {
                if more_bits(i, n) {
                    ty = G::Q6_K;
                }
            } else if i < n / 8 && matches!(ft, F::IQ4_NL | F::IQ4_XS) && !self.has_imatrix {
                ty = G::Q5_K;
            } else if ft == F::Q5_K_M && more_bits(i, n) {
                ty = G::Q6_K;
            } else if ft == F::Q4_K_S && i < n / 8 {
                ty = G::Q5_K;
            } else if matches!(ft, F::Q4_0 | F::Q5_0) && self.has_imatrix && i < n / 8 {
                // The first ffn_down layers can go badly even with importance data;
                // the variant with a minimum is kept for them (only with an imatrix, so
                // that a file made without one stays as it always was).
                ty = if ft == F::Q4_0 { G::Q4_1 } else { G::Q5_1 };
            }
            self.i_ffn_down += 1;
        } else if role == Role::AttnOutput {
            if n_expert == 8 {
                if matches!(
                    ft,
                    F::Q2_K
                        | F::IQ3_XS
                        | F::IQ3_XXS
                        | F::Q3_K_S
                        | F::Q3_K_M
                        | F::IQ4_NL
                        | F::Q4_K_S
                        | F::Q4_K_M
                        | F::IQ3_S
                        | F::IQ3_M
                        | F::IQ4_XS
                ) {
                    ty = G::Q5_K;
                }
            } else if ft == F::Q2_K {
                ty = G::Q3_K;
            } else if ft == F::IQ3_XXS {
                ty = G::IQ3_S;
            } else if ft == F::Q3_K_M || ft == F::IQ3_M {
                ty = G::Q4_K;
            } else if ft == F::Q3_K_L {
                ty = G::Q5_K;
            }
        } else if role == Role::FfnGate {
            let (i, n) = self.layer_of(self.i_ffn_gate, self.n_ffn_gate, t.name)?;
            if ft == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
                ty = G::IQ3_XXS;
            }
            self.i_ffn_gate += 1;
        } else if role == Role::FfnUp {
            let (i, n) = self.layer_of(self.i_ffn_up, self.n_ffn_up, t.name)?;
            if ft == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
                ty = G::IQ3_XXS;
            }
            self.i_ffn_up += 1;
        }
        Ok(ty)
    }

    /// `ty`, or where its block does not divide the row width, the nearest type whose
    /// block does (32-wide legacy types for the 256-wide ones), or F16 where none does.
    fn fallback(&mut self, t: &TensorShape, ty: GgmlType) -> Result<GgmlType, String> {
        use GgmlType as G;
        let ncols = t.dims[0];
        if ncols.is_multiple_of(ty.block_elems()) {
            return Ok(ty);
        }
        self.n_fallback += 1;
        let mut to = match ty {
            G::IQ1_S
            | G::IQ1_M
            | G::IQ2_XXS
            | G::IQ2_XS
            | G::IQ2_S
            | G::IQ3_XXS
            | G::IQ3_S
            | G::IQ4_XS => G::IQ4_NL,
            G::Q2_K | G::Q3_K => G::Q4_0,
            G::Q4_K => G::Q5_0,
            G::Q5_K => G::Q5_1,
            G::Q6_K => G::Q8_0,
            // A 32-wide type has nothing narrower; the width check below makes it F16.
            other if other.block_elems() <= 32 => other,
            other => {
                return Err(format!(
                    "tensor `{}`: no fallback type for {other} at row width {ncols}",
                    t.name
                ))
            }
        };
        if !ncols.is_multiple_of(to.block_elems()) {
            to = G::F16;
        }
        Ok(to)
    }
}

/// The layer number in a name `blk.N.…` as C's `sscanf(name, "blk.%d.")` reads it
/// (leading white space and a sign allowed; nothing after the digits is checked).
pub fn parse_layer(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("blk.")?;
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let v: i64 = digits[..end].parse().unwrap_or(i64::MAX);
    let v = if neg { -v } else { v };
    Some(v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
}

/// The order llama-quantize writes tensors in: tensors outside the layers first, then
/// layer by layer, by name (bytes) within each.
pub fn file_order(a: &str, b: &str) -> std::cmp::Ordering {
    let layer = |n: &str| parse_layer(n).unwrap_or(-1);
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}
