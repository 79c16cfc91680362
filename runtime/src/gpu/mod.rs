//! The GPU path of a binary built with `mcc build --gpu`.
//!
//! The emitted crate embeds the model's PTX (`model.ptx`) and a [`GpuModel`] table (per
//! tensor: its place in the weight blob and the kernel that reads it). At start-up the
//! CLI registers both ([`set_request`]); the first [`open`] loads the CUDA driver with
//! `dlopen` (the private `driver` module), JIT-compiles the PTX, uploads the weights
//! once and captures the decode step and the prefill tile as CUDA graphs ([`GpuCtx`]).
//! When anything of that fails (no libcuda, no device, a JIT error, too little memory)
//! [`open`] prints exactly one line, `mcc: no CUDA device (REASON); running on the
//! CPU`, and the CPU path runs instead.
//!
//! `--gpu-layers N` offloads layers `0..N`; the rest, the final norm and the output
//! matrix then run on the CPU ([`CpuTail`]) on the hidden state copied back per token.
//!
//! This module must not change what a CPU-only binary does: without a registered
//! [`GpuModel`] and without GPU flags, [`open`] is silent and returns `None`.

mod cpu_tail;
mod driver;
mod forward;
pub mod plan;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

pub use cpu_tail::CpuTail;
pub use forward::GpuCtx;

use crate::model::Model;

/// One tensor as the GPU path sees it: its bytes in the weight blob, its row count and
/// the kernels that read it (a matvec and a prefill matmul, the embedding lookup, or
/// `rmsnorm`).
#[derive(Clone, Copy, Debug)]
pub struct GpuTensor {
    pub offset: usize,
    pub bytes: usize,
    pub rows: usize,
    pub kernel: &'static str,
    /// The matmul kernel of a prefill tile (matrices only; empty otherwise).
    pub prefill: &'static str,
}

/// The tensors of one transformer block.
#[derive(Clone, Copy, Debug)]
pub struct GpuLayer {
    pub attn_norm: GpuTensor,
    pub attn_q: GpuTensor,
    pub attn_k: GpuTensor,
    pub attn_v: GpuTensor,
    pub attn_output: GpuTensor,
    pub ffn_norm: GpuTensor,
    pub ffn_gate: GpuTensor,
    pub ffn_up: GpuTensor,
    pub ffn_down: GpuTensor,
    /// The fused `silu(W_gate x) * (W_up x)` kernels: decode, prefill.
    pub gate_up: &'static str,
    pub gate_up_prefill: &'static str,
}

/// What `mcc build --gpu` emits for the runtime (`src/gpu.rs` of the crate).
#[derive(Debug)]
pub struct GpuModel {
    /// The PTX module, JIT-compiled by the driver at start-up.
    pub ptx: &'static str,
    pub token_embd: GpuTensor,
    pub layers: &'static [GpuLayer],
    pub output_norm: GpuTensor,
    /// `output.weight`, or the token table when the output is tied.
    pub output: GpuTensor,
    /// Runs layer `l` on the CPU (layers past `--gpu-layers`).
    pub cpu_layer: fn(&mut CpuTail, usize),
    /// The final norm and output matrix on the CPU.
    pub cpu_output: fn(&mut CpuTail),
}

/// Why the GPU path is not available or failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{reason}")]
    NoDriver { reason: String },
    #[error("the CUDA driver reports no device")]
    NoDevice,
    #[error("{call}: {message} (CUresult {code})")]
    Cuda {
        call: &'static str,
        code: i32,
        message: String,
    },
    #[error("the driver cannot compile the PTX: {log}")]
    Ptx { log: String },
    #[error("kernel {0} is missing from the PTX")]
    MissingKernel(String),
    /// Setting up the host side failed (RoPE table, the CPU layers, a tensor).
    #[error("{0}")]
    Setup(String),
    #[error("this binary was built without --gpu: rebuild with mcc build --gpu")]
    NotBuilt,
    #[error("token id {0} is out of range")]
    BadToken(u32),
}

/// The user's choice and what the binary has: set once by the CLI.
#[derive(Clone, Copy, Debug)]
pub struct GpuRequest {
    /// The emitted GPU table; `None` in a CPU-only binary.
    pub model: Option<&'static GpuModel>,
    /// Layers to offload: `None` for all, `Some(0)` for none (the CPU path).
    pub layers: Option<usize>,
    /// Whether the user asked for the GPU explicitly (`--gpu` or `--gpu-layers N > 0`):
    /// a CPU-only binary then says that it has no GPU path.
    pub asked: bool,
}

static REQUEST: OnceLock<GpuRequest> = OnceLock::new();
static NOTICED: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);

/// Registers the binary's GPU table and the user's flags (first call wins).
pub fn set_request(req: GpuRequest) {
    let _ = REQUEST.set(req);
}

/// The line printed when the GPU path is requested but unavailable, once per process.
pub fn notice_line(reason: &str) -> String {
    format!("mcc: no CUDA device ({reason}); running on the CPU")
}

fn notice(reason: &str) {
    if !NOTICED.swap(true, Ordering::SeqCst) {
        eprintln!("{}", notice_line(reason));
    }
}

/// A GPU context for model `M` with `n_ctx` positions, or `None` for the CPU path
/// (after the one-line notice, when the GPU was wanted but is unavailable).
pub fn open<M: Model>(n_ctx: usize) -> Option<GpuCtx> {
    let req = REQUEST.get()?;
    if req.layers == Some(0) {
        return None;
    }
    let Some(model) = req.model else {
        if req.asked {
            notice(&GpuError::NotBuilt.to_string());
        }
        return None;
    };
    let n_gpu = req.layers.unwrap_or(usize::MAX).min(M::CONFIG.n_layer);
    match GpuCtx::new::<M>(model, n_ctx, n_gpu) {
        Ok(ctx) => {
            eprintln!(
                "mcc: running on {} ({} of {} layers on the GPU{})",
                ctx.device_name,
                ctx.n_gpu_layers(),
                M::CONFIG.n_layer,
                if ctx.uses_graph() {
                    ", decode as a CUDA graph"
                } else {
                    ""
                }
            );
            Some(ctx)
        }
        Err(e) => {
            notice(&e.to_string());
            None
        }
    }
}

/// Records that a GPU step failed mid-run (the CLI then exits with failure).
pub fn record_failure(e: &GpuError) {
    eprintln!("error: GPU: {e}");
    FAILED.store(true, Ordering::SeqCst);
}

/// Whether a GPU step failed mid-run.
pub fn failed() -> bool {
    FAILED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_is_the_documented_line() {
        assert_eq!(
            notice_line("libcuda.so.1 not loadable"),
            "mcc: no CUDA device (libcuda.so.1 not loadable); running on the CPU"
        );
    }

    #[test]
    fn a_missing_driver_is_an_error_value() {
        std::env::set_var("MCC_LIBCUDA", "libmcc-no-such-library.so");
        let err = driver::Driver::load().err().expect("no such library");
        assert!(
            err.to_string().contains("libmcc-no-such-library.so"),
            "{err}"
        );
        std::env::remove_var("MCC_LIBCUDA");
    }
}
