//! The layers past `--gpu-layers N` on the CPU, one token at a time: the GPU computes
//! the embedding and layers `0..N`, the hidden state comes back, and [`CpuTail`] runs
//! layers `N..` and the output with the runtime's CPU ops (the same RMSNorm, RoPE
//! table, f16 KV cache, attention, SwiGLU and quantized matvecs as the CPU path).
//!
//! The emitted `src/gpu.rs` provides `cpu_layer` / `cpu_output`, which call
//! [`CpuTail::layer`] / [`CpuTail::output`] with each layer's typed tensors, so every
//! call is monomorphised for its quant types like the CPU forward pass.

use half::f16;

use super::GpuModel;
use crate::matmul;
use crate::model::{Config, CtxError, Model};
use crate::ops::{self, Rope};
use crate::pool::Pool;
use crate::quant::f32::F32;
use crate::quant::{ActType, WeightType};
use crate::weights::Tensor;

/// CPU state of the layers that are not offloaded.
pub struct CpuTail {
    cfg: Config,
    blob: &'static [u8],
    pool: Pool,
    rope: Rope,
    /// First layer on the CPU.
    first: usize,
    /// Position of the token being evaluated.
    pos: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    proj: Vec<f32>,
    scores: Vec<f32>,
    /// `(n_layer - first) x n_ctx x kv_dim`.
    k_cache: Vec<f16>,
    v_cache: Vec<f16>,
    /// Where `output` writes (`n_vocab`), when logits are wanted.
    logits: Vec<f32>,
}

type ActOf<T> = <<T as Tensor>::W as WeightType>::Act;

/// out = W · x for one token, with `x` quantized to the weight type's activation format.
fn project<T: Tensor>(pool: &Pool, blob: &[u8], w: &T, x: &[f32], out: &mut [f32]) {
    let mut act: Vec<<ActOf<T> as ActType>::Block> = Vec::new();
    matmul::quantize_act::<ActOf<T>>(&x[..T::COLS], T::COLS, &mut act);
    matmul::matvec::<T::W>(pool, w.blocks(blob), &act, &mut out[..T::ROWS]);
}

impl CpuTail {
    /// State for layers `first..` of model `M` over `n_ctx` positions.
    pub fn new<M: Model>(first: usize, n_ctx: usize) -> Result<CpuTail, CtxError> {
        let cfg = Config { n_ctx, ..M::CONFIG };
        let n_cpu = cfg.n_layer.saturating_sub(first);
        let cache = n_cpu * n_ctx * cfg.kv_dim();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let oom = |what| CtxError::OutOfMemory {
            what,
            bytes: cache * 2,
            n_ctx,
        };
        let mut k_cache = Vec::new();
        k_cache
            .try_reserve_exact(cache)
            .map_err(|_| oom("KV cache"))?;
        k_cache.resize(cache, f16::ZERO);
        let v_cache = k_cache.clone();
        Ok(CpuTail {
            blob: M::weights(),
            pool: Pool::new(threads),
            rope: Rope::new(
                cfg.head_dim,
                cfg.rope_dim,
                cfg.rope_base,
                M::rope_freqs(),
                n_ctx,
            ),
            first,
            pos: 0,
            x: vec![0.0; cfg.n_embd],
            xn: vec![0.0; cfg.n_embd],
            q: vec![0.0; cfg.q_dim()],
            k: vec![0.0; cfg.kv_dim()],
            v: vec![0.0; cfg.kv_dim()],
            att: vec![0.0; cfg.q_dim()],
            gate: vec![0.0; cfg.n_ff],
            up: vec![0.0; cfg.n_ff],
            proj: vec![0.0; cfg.n_embd],
            scores: vec![0.0; n_ctx],
            k_cache,
            v_cache,
            logits: vec![0.0; cfg.n_vocab],
            cfg,
        })
    }

    /// The hidden state the GPU part copies in.
    pub fn hidden_mut(&mut self) -> &mut [f32] {
        &mut self.x
    }

    /// Runs layers `first..` on the hidden state for the token at `pos`, and the output
    /// into `out` when given.
    pub fn run(
        &mut self,
        model: &GpuModel,
        blob: &'static [u8],
        pos: usize,
        out: Option<&mut [f32]>,
    ) {
        self.blob = blob;
        self.pos = pos;
        for l in self.first..self.cfg.n_layer {
            (model.cpu_layer)(self, l);
        }
        if let Some(out) = out {
            (model.cpu_output)(self);
            out.copy_from_slice(&self.logits[..out.len()]);
        }
    }

    fn rms_norm<N: Tensor<W = F32>>(&mut self, norm: &N) {
        ops::rms_norm(
            &self.x,
            norm.blocks(self.blob),
            self.cfg.rms_eps,
            &mut self.xn,
        );
    }

    /// Layer `l`: attention then feed-forward, as the CPU forward pass computes them.
    #[allow(clippy::too_many_arguments)]
    pub fn layer<
        AN: Tensor<W = F32>,
        Q: Tensor,
        K: Tensor,
        V: Tensor,
        O: Tensor,
        FN: Tensor<W = F32>,
        G: Tensor,
        U: Tensor,
        D: Tensor,
    >(
        &mut self,
        l: usize,
        (attn_norm, wq, wk, wv, wo): (&AN, &Q, &K, &V, &O),
        (ffn_norm, w_gate, w_up, w_down): (&FN, &G, &U, &D),
    ) {
        let c = self.cfg;
        let (kv_dim, hd) = (c.kv_dim(), c.head_dim);
        let Some(slot) = l.checked_sub(self.first) else {
            return;
        };
        self.rms_norm(attn_norm);
        project(&self.pool, self.blob, wq, &self.xn, &mut self.q);
        project(&self.pool, self.blob, wk, &self.xn, &mut self.k);
        project(&self.pool, self.blob, wv, &self.xn, &mut self.v);
        self.rope.apply(&mut self.q, c.n_head, self.pos);
        self.rope.apply(&mut self.k, c.n_head_kv, self.pos);
        let layer_off = slot * c.n_ctx * kv_dim;
        let at = layer_off + self.pos * kv_dim;
        ops::f32_to_f16(&self.k, &mut self.k_cache[at..at + kv_dim]);
        ops::f32_to_f16(&self.v, &mut self.v_cache[at..at + kv_dim]);
        let n_kv = self.pos + 1;
        let cache = layer_off..layer_off + n_kv * kv_dim;
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        for h in 0..c.n_head {
            ops::attend_head(
                &self.q[h * hd..(h + 1) * hd],
                &self.k_cache[cache.clone()],
                &self.v_cache[cache.clone()],
                kv_dim,
                (h / group) * hd,
                n_kv,
                scale,
                &mut self.scores,
                &mut self.att[h * hd..(h + 1) * hd],
            );
        }
        project(&self.pool, self.blob, wo, &self.att, &mut self.proj);
        for (x, p) in self.x.iter_mut().zip(&self.proj) {
            *x += p;
        }
        self.rms_norm(ffn_norm);
        project(&self.pool, self.blob, w_gate, &self.xn, &mut self.gate);
        project(&self.pool, self.blob, w_up, &self.xn, &mut self.up);
        ops::swiglu(&mut self.gate, &self.up);
        project(&self.pool, self.blob, w_down, &self.gate, &mut self.proj);
        for (x, p) in self.x.iter_mut().zip(&self.proj) {
            *x += p;
        }
    }

    /// The final norm and the output matrix.
    pub fn output<N: Tensor<W = F32>, O: Tensor>(&mut self, norm: &N, w_out: &O) {
        self.rms_norm(norm);
        project(&self.pool, self.blob, w_out, &self.xn, &mut self.logits);
    }
}
