//! GPU code generation for `mcc build --gpu`: PTX kernels specialised for one model, and
//! the Rust table (`src/gpu.rs`) that tells the runtime which kernel reads which tensor.
//!
//! The PTX is filled in from the templates in `templates/ptx/` (plain `{{hole}}`
//! substitution, as the other templates): every shape (hidden size, heads, head width,
//! FFN width, vocabulary, context) is an immediate, and there is one dequantize-matvec
//! kernel per (quant type, shape, store mode) the model uses, plus the embedding lookup
//! of its token table. The dequantization itself comes from [`dequant`], whose
//! programs the tests interpret against the runtime's reference for every format.
//!
//! The feed-forward input is one fused kernel per (gate type, up type) that writes
//! `silu(W_gate x) * (W_up x)`. Prefill gets a matmul kernel per matvec kernel
//! (`mm_*` / `mma_*` / `mmg_*`), which dequantizes each weight once for a tile of
//! [`kernels::PREFILL_TILE`] tokens with the same unit programs; the other kernels take
//! the tile's tokens along the grid's y.
//!
//! [`sim`] interprets the emitted PTX, so the tests run every kernel, and the runtime's
//! whole launch plan, without a GPU.
//!
//! This module must not change what a build without `--gpu` emits.

pub mod dequant;
pub mod kernels;
pub mod sim;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

use crate::describe::ModelDesc;
use crate::emit::{Contents, EmitOptions, EmittedFile};
use crate::gguf::GgmlType;
use crate::plan::{Plan, PlannedTensor};

/// `mcc build` flags of the GPU path.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GpuArgs {
    /// Also emit PTX kernels for this model and embed them: the binary runs on an
    /// NVIDIA GPU when the CUDA driver finds one, and on the CPU otherwise. Needs no
    /// CUDA toolkit: the driver compiles the PTX when the binary starts.
    #[arg(long = "gpu")]
    pub gpu: bool,
}

/// Why a model cannot get GPU kernels.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "--gpu: tensor {tensor} is {ty}, which has no GPU kernel yet (supported: {supported})"
    )]
    UnsupportedType {
        tensor: String,
        ty: &'static str,
        supported: String,
    },
    #[error("--gpu: {what} is {found}, the GPU kernels need {needed}")]
    Shape {
        what: &'static str,
        found: usize,
        needed: &'static str,
    },
}

/// Name of the matvec kernel for a `rows x cols` matrix of type `t`: `mv_q4_k_1024x3072`,
/// or `mva_...` for the variant that adds into its output (attn_output, ffn_down).
pub fn matvec_name(t: GgmlType, rows: u64, cols: u64, accumulate: bool) -> String {
    format!(
        "{}_{}_{rows}x{cols}",
        if accumulate { "mva" } else { "mv" },
        t.name().to_ascii_lowercase()
    )
}

/// Name of the prefill matmul kernel (a tile of tokens) for the same matrix:
/// `mm_q4_k_1024x3072`, or `mma_...` for the variant that adds into its output.
pub fn matmul_name(t: GgmlType, rows: u64, cols: u64, accumulate: bool) -> String {
    format!(
        "{}_{}_{rows}x{cols}",
        if accumulate { "mma" } else { "mm" },
        t.name().to_ascii_lowercase()
    )
}

/// Names of the fused gate/up/SwiGLU kernels (decode, prefill) for gate type `tg` and
/// up type `tv`, `rows x cols` each: `mvg_q4_k_q4_k_9216x3072`, `mmg_...`.
pub fn gate_up_names(tg: GgmlType, tv: GgmlType, rows: u64, cols: u64) -> (String, String) {
    let types = format!(
        "{}_{}_{rows}x{cols}",
        tg.name().to_ascii_lowercase(),
        tv.name().to_ascii_lowercase()
    );
    (format!("mvg_{types}"), format!("mmg_{types}"))
}

/// The fused gate/up kernels of layer `l` (decode, prefill).
pub fn gate_up_of(plan: &Plan, l: usize) -> (String, String) {
    let g = plan.get(&format!("blk.{l}.ffn_gate.weight"));
    let v = plan.get(&format!("blk.{l}.ffn_up.weight"));
    gate_up_names(g.ggml_type, v.ggml_type, g.rows, g.cols)
}

/// Name of the embedding-lookup kernel for a table of type `t`.
pub fn embed_name(t: GgmlType) -> String {
    format!("embed_{}", t.name().to_ascii_lowercase())
}

/// One matvec kernel to emit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Matvec {
    ty: GgmlType,
    rows: u64,
    cols: u64,
    accumulate: bool,
}

/// Roles whose matvec adds into the residual stream.
fn accumulates(role: &str) -> bool {
    matches!(role, "attn_output" | "ffn_down")
}

fn role_of(name: &str) -> &str {
    let base = name.strip_suffix(".weight").unwrap_or(name);
    base.rsplit('.').next().unwrap_or(base)
}

/// The output matrix: `output.weight`, or the token table when the output is tied.
fn output_tensor<'p>(desc: &ModelDesc, plan: &'p Plan) -> &'p PlannedTensor {
    match &desc.output {
        Some(_) => plan.get("output.weight"),
        None => plan.get("token_embd.weight"),
    }
}

/// The matrices the kernels multiply by (everything but the norms and rope_freqs).
fn matrices(plan: &Plan) -> impl Iterator<Item = &PlannedTensor> {
    plan.tensors
        .iter()
        .filter(|t| t.rows > 1 && t.name != "token_embd.weight")
}

/// Checks that every tensor and shape has a kernel.
pub fn check(desc: &ModelDesc, plan: &Plan) -> Result<(), GpuError> {
    let supported = || {
        dequant::SUPPORTED
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The kernels read ggml's blocks: a plan for the GPU repacks nothing (`plan_for`).
    if let Some(t) = plan.tensors.iter().find(|t| t.repack().is_some()) {
        return Err(GpuError::UnsupportedType {
            tensor: t.name.clone(),
            ty: t.type_name(),
            supported: supported(),
        });
    }
    let mut needed: Vec<&PlannedTensor> = matrices(plan).collect();
    needed.push(plan.get("token_embd.weight"));
    for t in needed {
        if dequant::geometry(t.ggml_type).is_none() || !t.cols.is_multiple_of(32) {
            return Err(GpuError::UnsupportedType {
                tensor: t.name.clone(),
                ty: t.ggml_type.name(),
                supported: supported(),
            });
        }
    }
    if !desc.head_dim.is_multiple_of(8) || desc.head_dim > 256 {
        return Err(GpuError::Shape {
            what: "the head width",
            found: desc.head_dim,
            needed: "a multiple of 8 up to 256",
        });
    }
    if !desc.rope_dim.is_multiple_of(2) {
        return Err(GpuError::Shape {
            what: "the RoPE width",
            found: desc.rope_dim,
            needed: "an even number",
        });
    }
    if !desc.n_embd.is_multiple_of(32) {
        return Err(GpuError::Shape {
            what: "the hidden size",
            found: desc.n_embd,
            needed: "a multiple of 32",
        });
    }
    Ok(())
}

/// The PTX module of the model (`model.ptx`), for a KV cache of `n_ctx` positions.
pub fn emit_ptx(desc: &ModelDesc, plan: &Plan, n_ctx: usize) -> Result<String, GpuError> {
    check(desc, plan)?;
    let mut mv = BTreeSet::new();
    let mut fused = BTreeSet::new();
    for l in 0..desc.n_layer {
        let g = plan.get(&format!("blk.{l}.ffn_gate.weight"));
        let v = plan.get(&format!("blk.{l}.ffn_up.weight"));
        fused.insert((g.ggml_type, v.ggml_type, g.rows, g.cols));
    }
    for t in matrices(plan) {
        if matches!(role_of(&t.name), "ffn_gate" | "ffn_up") {
            continue;
        }
        mv.insert(Matvec {
            ty: t.ggml_type,
            rows: t.rows,
            cols: t.cols,
            accumulate: accumulates(role_of(&t.name)),
        });
    }
    let out = output_tensor(desc, plan);
    mv.insert(Matvec {
        ty: out.ggml_type,
        rows: out.rows,
        cols: out.cols,
        accumulate: false,
    });
    let embd = plan.get("token_embd.weight");

    let mut tables = BTreeSet::new();
    let fused_types = fused.iter().flat_map(|&(g, v, _, _)| [g, v]);
    for t in mv
        .iter()
        .map(|m| m.ty)
        .chain([embd.ggml_type])
        .chain(fused_types)
    {
        tables.extend(dequant::unit(t).map(|u| u.tables()).unwrap_or_default());
    }
    let tables: Vec<_> = tables.into_iter().collect();
    let types: BTreeSet<&str> = mv
        .iter()
        .map(|m| m.ty.name())
        .chain([embd.ggml_type.name()])
        .chain(fused.iter().flat_map(|&(g, v, _, _)| [g.name(), v.name()]))
        .collect();
    let summary = format!(
        "{}: {} layers, {} hidden, {} heads ({} KV) of {}, FFN {}, vocab {}, context {}; types {}.",
        desc.name.as_deref().unwrap_or("llama"),
        desc.n_layer,
        desc.n_embd,
        desc.n_head,
        desc.n_head_kv,
        desc.head_dim,
        desc.n_ff,
        desc.n_vocab,
        n_ctx,
        types.into_iter().collect::<Vec<_>>().join(", ")
    );
    let mut ptx = kernels::fill(
        include_str!("../../../templates/ptx/header.ptx"),
        &[
            ("mcc_version", env!("CARGO_PKG_VERSION").to_string()),
            ("summary", summary),
            ("tables", dequant::tables_ptx(&tables)),
        ],
    );
    let missing = |t: GgmlType| GpuError::UnsupportedType {
        tensor: t.name().into(),
        ty: t.name(),
        supported: String::new(),
    };
    ptx.push_str(
        &kernels::embed(
            &embed_name(embd.ggml_type),
            embd.ggml_type,
            embd.rows,
            embd.cols,
        )
        .ok_or_else(|| missing(embd.ggml_type))?,
    );
    for m in &mv {
        let name = matvec_name(m.ty, m.rows, m.cols, m.accumulate);
        ptx.push_str(
            &kernels::matvec(&name, m.ty, m.rows, m.cols, m.accumulate)
                .ok_or_else(|| missing(m.ty))?,
        );
        let name = matmul_name(m.ty, m.rows, m.cols, m.accumulate);
        ptx.push_str(
            &kernels::matmul(&name, m.ty, m.rows, m.cols, m.accumulate)
                .ok_or_else(|| missing(m.ty))?,
        );
    }
    for &(g, v, rows, cols) in &fused {
        let (decode, prefill) = gate_up_names(g, v, rows, cols);
        ptx.push_str(&kernels::gate_up(&decode, (g, v), rows, cols, 1).ok_or_else(|| missing(g))?);
        ptx.push_str(
            &kernels::gate_up(&prefill, (g, v), rows, cols, kernels::PREFILL_TILE)
                .ok_or_else(|| missing(g))?,
        );
    }
    let shape = kernels::AttnShape {
        n_head: desc.n_head,
        n_head_kv: desc.n_head_kv,
        head_dim: desc.head_dim,
        rope_dim: desc.rope_dim,
        n_ctx,
    };
    ptx.push_str(&kernels::rmsnorm(desc.n_embd, desc.rms_eps));
    ptx.push_str(&kernels::rope_kv(&shape));
    ptx.push_str(&kernels::attention(&shape));
    ptx.push_str(&kernels::argmax(desc.n_vocab));
    Ok(ptx)
}

fn usize_lit(v: u64) -> Literal {
    Literal::usize_unsuffixed(v as usize)
}

/// The kernel that reads tensor `t` inside a layer or as the embedding table: the
/// embedding lookup for `token_embd`, `rmsnorm` for the norm vectors, else the matvec of
/// its type and shape (adding into the residual for attn_output and ffn_down).
pub fn kernel_of(t: &PlannedTensor) -> String {
    if t.name == "token_embd.weight" {
        embed_name(t.ggml_type)
    } else if t.rows == 1 {
        "rmsnorm".to_string()
    } else {
        matvec_name(t.ggml_type, t.rows, t.cols, accumulates(role_of(&t.name)))
    }
}

/// The prefill kernel of tensor `t`: the matmul of a matrix, empty for the embedding
/// table and the norms (they run per token with their decode kernels).
pub fn prefill_kernel_of(t: &PlannedTensor) -> String {
    if t.name == "token_embd.weight" || t.rows == 1 {
        String::new()
    } else {
        matmul_name(t.ggml_type, t.rows, t.cols, accumulates(role_of(&t.name)))
    }
}

/// The output matrix (`output.weight`, or the token table when tied), its matvec and
/// its matmul.
pub fn output_kernel<'p>(desc: &ModelDesc, plan: &'p Plan) -> (&'p PlannedTensor, String, String) {
    let out = output_tensor(desc, plan);
    (
        out,
        matvec_name(out.ggml_type, out.rows, out.cols, false),
        matmul_name(out.ggml_type, out.rows, out.cols, false),
    )
}

/// `GpuTensor { offset: IDENT.offset(), bytes, rows, kernel, prefill }`.
fn gpu_tensor(t: &PlannedTensor, kernel: &str, prefill: &str) -> TokenStream {
    let ident = format_ident!("{}", t.ident);
    let (bytes, rows) = (usize_lit(t.n_bytes), usize_lit(t.rows));
    quote!(GpuTensor {
        offset: #ident.offset(),
        bytes: #bytes,
        rows: #rows,
        kernel: #kernel,
        prefill: #prefill,
    })
}

/// `src/gpu.rs` of a `--gpu` build: the PTX and, per tensor, its place in the blob and
/// the kernel that reads it.
pub fn emit_gpu_rs(desc: &ModelDesc, plan: &Plan) -> String {
    let embd = plan.get("token_embd.weight");
    let token_embd = gpu_tensor(embd, &kernel_of(embd), &prefill_kernel_of(embd));
    let layers = (0..desc.n_layer).map(|l| {
        let field = |role: &str| {
            let t = plan.get(&format!("blk.{l}.{role}.weight"));
            let f = format_ident!("{role}");
            let v = gpu_tensor(t, &kernel_of(t), &prefill_kernel_of(t));
            quote!(#f: #v)
        };
        let fields = [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ]
        .map(field);
        let (decode, prefill) = gate_up_of(plan, l);
        quote!(GpuLayer { #(#fields,)* gate_up: #decode, gate_up_prefill: #prefill })
    });
    let norm = gpu_tensor(plan.get("output_norm.weight"), "rmsnorm", "");
    let (out, out_kernel, out_prefill) = output_kernel(desc, plan);
    let output = gpu_tensor(out, &out_kernel, &out_prefill);
    let cpu_layers = (0..desc.n_layer).map(|l| {
        let id =
            |role: &str| format_ident!("{}", plan.get(&format!("blk.{l}.{role}.weight")).ident);
        let attn = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output"].map(id);
        let ffn = ["ffn_norm", "ffn_gate", "ffn_up", "ffn_down"].map(id);
        let lit = usize_lit(l as u64);
        quote!(#lit => c.layer(#lit, (#(&#attn),*), (#(&#ffn),*)),)
    });
    let out_ident = format_ident!("{}", out.ident);
    let items = quote! {
        use mcc_runtime::gpu::{CpuTail, GpuLayer, GpuModel, GpuTensor};

        use crate::model::*;

        /// The model's GPU kernels and the tensors they read.
        pub static GPU: GpuModel = GpuModel {
            ptx: include_str!("../model.ptx"),
            token_embd: #token_embd,
            layers: &[#(#layers),*],
            output_norm: #norm,
            output: #output,
            cpu_layer,
            cpu_output,
        };

        /// Layer `l` on the CPU, for the layers past `--gpu-layers`.
        fn cpu_layer(c: &mut CpuTail, l: usize) {
            match l {
                #(#cpu_layers)*
                _ => {}
            }
        }

        /// The final norm and the output matrix on the CPU.
        fn cpu_output(c: &mut CpuTail) {
            c.output(&OUTPUT_NORM, &#out_ident);
        }
    };
    let parsed: syn::File = syn::parse2(items).expect("emitted gpu.rs is valid Rust");
    let mut out = String::new();
    let _ = write!(
        out,
        "//! Generated by mcc {}. Do not edit.\n//!\n//! The GPU side of the model (`mcc build --gpu`): the PTX of `model.ptx` and, per\n//! tensor, its place in the weight blob and the kernel that reads it.\n\n",
        env!("CARGO_PKG_VERSION")
    );
    out + &prettyplease::unparse(&parsed)
}

/// Adds the GPU path to an emitted crate: `model.ptx`, `src/gpu.rs`, and a `src/main.rs`
/// that hands both to the runtime. Sources are text, in the crate's file order.
pub fn add_to_crate(
    files: &mut Vec<EmittedFile>,
    desc: &ModelDesc,
    plan: &Plan,
    opts: &EmitOptions,
) -> Result<(), GpuError> {
    let ptx = emit_ptx(desc, plan, opts.n_ctx)?;
    crate::emit::set_entry_points(files, opts, true);
    let at = files
        .iter()
        .position(|f| f.path == "src/model.rs")
        .map_or(files.len(), |i| i + 1);
    files.insert(
        at,
        EmittedFile {
            path: "src/gpu.rs".into(),
            contents: Contents::Source(emit_gpu_rs(desc, plan)),
        },
    );
    files.insert(
        at + 1,
        EmittedFile {
            path: "model.ptx".into(),
            contents: Contents::Source(ptx),
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_carry_type_shape_and_mode() {
        assert_eq!(
            matvec_name(GgmlType::Q4_K, 1024, 3072, false),
            "mv_q4_k_1024x3072"
        );
        assert_eq!(
            matvec_name(GgmlType::Q6_K, 3072, 9216, true),
            "mva_q6_k_3072x9216"
        );
        assert_eq!(embed_name(GgmlType::Q8_0), "embed_q8_0");
        assert!(accumulates("ffn_down") && !accumulates("ffn_up"));
        assert_eq!(role_of("blk.3.attn_output.weight"), "attn_output");
    }

    #[test]
    fn float_immediates_are_exact() {
        assert_eq!(kernels::f32_imm(1.0), "0f3F800000");
        assert_eq!(kernels::f32_imm(-f32::INFINITY), "0fFF800000");
    }
}
