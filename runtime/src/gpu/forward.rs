//! The forward pass on the GPU: weights uploaded once, the decode step and the prefill
//! tile captured as CUDA graphs.
//!
//! Device memory: the weights the offloaded part reads (one allocation, each tensor
//! 256-byte aligned); the activations (`x`, `xn`, `q`, `k`, `v`, `att`, `gate`,
//! `logits`, the attention scores and `params` `{token, pos, argmax, 0}`), each with a
//! row per token of a prefill tile (a decode step uses row 0); the RoPE `(cos, sin)`
//! table the CPU path uses; an f16 K and V cache per offloaded layer
//! (`n_ctx x kv_dim`). [`super::plan`] names the buffers each launch reads.
//!
//! A decode step is: copy `params` in, launch the graph (embed, per layer rmsnorm /
//! q, k, v / rope_kv / attention / o (+= x) / rmsnorm / gate-up-SwiGLU / down (+= x),
//! then rmsnorm / output / argmax), copy the logits (or only the argmax, or
//! with a CPU tail the hidden state) out, all on one stream. If the driver refuses a
//! capture, the same launches run directly.
//!
//! A prompt runs in tiles of [`PREFILL_TILE`] tokens through the second graph (the
//! matrices as matmuls over the tile, the other kernels with the tile along the grid's
//! y), and its last partial tile as decode steps.

use std::collections::HashMap;

use super::driver::{CuDevice, CuDevicePtr, Driver, Handle};
use super::plan::{decode_plan, prefill_plan, rope_table, Buf, Launch, PREFILL_TILE};
use super::{CpuTail, GpuError, GpuModel, GpuTensor};
use crate::model::{Config, Model};

/// A model instance on the GPU.
pub struct GpuCtx {
    drv: Driver,
    dev: CuDevice,
    ctx: Handle,
    module: Handle,
    stream: Handle,
    graph: Option<Handle>,
    /// Every allocation, freed on drop.
    allocs: Vec<CuDevicePtr>,
    model: &'static GpuModel,
    cfg: Config,
    n_ctx: usize,
    /// Layers on the GPU (a prefix).
    n_gpu: usize,
    /// The decode step's launches, and the device address of every buffer they name.
    plan: Vec<Launch>,
    /// The prefill tile's launches and graph (absent when a kernel is missing).
    prefill: Vec<Launch>,
    prefill_graph: Option<Handle>,
    bufs: HashMap<Buf, CuDevicePtr>,
    kernels: HashMap<&'static str, Handle>,
    /// Layers past `n_gpu`, the final norm and the output on the CPU.
    tail: Option<CpuTail>,
    logits: Vec<f32>,
    /// The device this runs on, for the start-up line.
    pub device_name: String,
}

impl GpuCtx {
    /// Sets up model `M` on device 0 with `n_gpu` layers offloaded (`n_ctx` positions).
    pub fn new<M: Model>(
        model: &'static GpuModel,
        n_ctx: usize,
        n_gpu: usize,
    ) -> Result<GpuCtx, GpuError> {
        let drv = Driver::load()?;
        drv.init()?;
        if drv.device_count()? == 0 {
            return Err(GpuError::NoDevice);
        }
        let dev = drv.device(0)?;
        let device_name = drv.device_name(dev)?;
        let ctx = drv.primary_context(dev)?;
        let cfg = M::CONFIG;
        let n_gpu = n_gpu.min(cfg.n_layer).min(model.layers.len());
        // From here on, Drop releases whatever was made.
        let mut g = GpuCtx {
            drv,
            dev,
            ctx,
            module: std::ptr::null_mut(),
            stream: std::ptr::null_mut(),
            graph: None,
            allocs: Vec::new(),
            model,
            cfg,
            n_ctx,
            n_gpu,
            plan: decode_plan(model, &cfg, n_gpu),
            prefill: prefill_plan(model, &cfg, n_gpu),
            prefill_graph: None,
            bufs: HashMap::new(),
            kernels: HashMap::new(),
            tail: None,
            logits: Vec::new(),
            device_name,
        };
        g.module = g.drv.load_ptx(model.ptx)?;
        g.stream = g.drv.stream()?;
        for l in &g.plan {
            if !g.kernels.contains_key(l.kernel) {
                let f = g.drv.function(g.module, l.kernel)?;
                g.kernels.insert(l.kernel, f);
            }
        }
        let mut prefill_ok = true;
        for l in &g.prefill {
            if !g.kernels.contains_key(l.kernel) {
                match g.drv.function(g.module, l.kernel) {
                    Ok(f) => {
                        g.kernels.insert(l.kernel, f);
                    }
                    Err(_) => prefill_ok = false,
                }
            }
        }
        if !prefill_ok {
            g.prefill.clear();
        }
        g.upload::<M>()?;
        g.alloc_state::<M>()?;
        if n_gpu < cfg.n_layer {
            g.tail = Some(
                CpuTail::new::<M>(n_gpu, n_ctx)
                    .map_err(|e| GpuError::Setup(format!("CPU layers: {e}")))?,
            );
        }
        g.drv.synchronize()?;
        g.graph = g.capture(&g.plan).ok();
        if !g.prefill.is_empty() {
            g.prefill_graph = g.capture(&g.prefill).ok();
        }
        Ok(g)
    }

    /// Layers running on the GPU.
    pub fn n_gpu_layers(&self) -> usize {
        self.n_gpu
    }

    /// Whether decode steps run as a CUDA graph (else as direct launches).
    pub fn uses_graph(&self) -> bool {
        self.graph.is_some()
    }

    fn alloc(&mut self, bytes: usize) -> Result<CuDevicePtr, GpuError> {
        let p = self.drv.alloc(bytes)?;
        self.allocs.push(p);
        Ok(p)
    }

    /// The tensors the plan reads, each once (a tied output shares the token table).
    fn gpu_tensors(&self) -> Vec<GpuTensor> {
        let m = self.model;
        let mut ts = vec![m.token_embd, m.output_norm, m.output];
        for l in m.layers {
            ts.extend([
                l.attn_norm,
                l.attn_q,
                l.attn_k,
                l.attn_v,
                l.attn_output,
                l.ffn_norm,
                l.ffn_gate,
                l.ffn_up,
                l.ffn_down,
            ]);
        }
        let used: std::collections::HashSet<usize> = self
            .plan
            .iter()
            .chain(&self.prefill)
            .flat_map(|l| &l.args)
            .filter_map(|b| match b {
                Buf::Weight(off) => Some(*off),
                _ => None,
            })
            .collect();
        ts.retain(|t| used.contains(&t.offset));
        ts.sort_by_key(|t| t.offset);
        ts.dedup_by_key(|t| t.offset);
        ts
    }

    /// Copies the tensors from the embedded blob into one device allocation.
    fn upload<M: Model>(&mut self) -> Result<(), GpuError> {
        let blob = M::weights();
        let ts = self.gpu_tensors();
        let total: usize = ts.iter().map(|t| t.bytes.next_multiple_of(256)).sum();
        let base = self.alloc(total)?;
        let mut at = 0;
        for t in ts {
            let bytes = blob
                .get(t.offset..t.offset + t.bytes)
                .ok_or(GpuError::Setup(format!(
                    "tensor at {:#x} (outside the blob)",
                    t.offset
                )))?;
            let p = base + at as u64;
            self.drv.upload(p, bytes)?;
            self.bufs.insert(Buf::Weight(t.offset), p);
            at += t.bytes.next_multiple_of(256);
        }
        Ok(())
    }

    /// Allocates every activation buffer the plan names, zeroes the KV caches and
    /// uploads the RoPE table.
    fn alloc_state<M: Model>(&mut self) -> Result<(), GpuError> {
        let mut names: Vec<Buf> = self
            .plan
            .iter()
            .chain(&self.prefill)
            .flat_map(|l| l.args.iter().copied())
            .filter(|b| !matches!(b, Buf::Weight(_)))
            .collect();
        names.push(Buf::X);
        names.sort_by_key(|b| format!("{b:?}"));
        names.dedup();
        for b in names {
            let bytes = b.bytes(&self.cfg, self.n_ctx);
            let p = self.alloc(bytes)?;
            self.drv.zero(p, bytes)?;
            self.bufs.insert(b, p);
        }
        let table = rope_table(&self.cfg, M::rope_freqs(), self.n_ctx)?;
        if let Some(&p) = self.bufs.get(&Buf::Rope) {
            self.drv.upload(p, &table)?;
        }
        Ok(())
    }

    fn ptr(&self, b: Buf) -> CuDevicePtr {
        self.bufs.get(&b).copied().unwrap_or(0)
    }

    /// Launches a step's kernels on the stream (they read tokens and positions from
    /// `params`).
    fn launch_all(&self, plan: &[Launch]) -> Result<(), GpuError> {
        for l in plan {
            let args: Vec<u64> = l.args.iter().map(|&b| self.ptr(b)).collect();
            let f = self.kernels[l.kernel];
            self.drv
                .launch(f, (l.grid, l.grid_y), l.block, self.stream, &args)?;
        }
        Ok(())
    }

    fn capture(&self, plan: &[Launch]) -> Result<Handle, GpuError> {
        self.drv.begin_capture(self.stream)?;
        let launched = self.launch_all(plan);
        let graph = self.drv.end_capture(self.stream);
        launched?;
        graph
    }

    /// One decode step of `token` at `pos`; with `want_logits`, the logits land in
    /// `out` (`n_vocab` values).
    fn step(
        &mut self,
        token: u32,
        pos: usize,
        out: Option<&mut [f32]>,
        blob: &'static [u8],
    ) -> Result<(), GpuError> {
        if token as usize >= self.cfg.n_vocab {
            return Err(GpuError::BadToken(token));
        }
        let params: [u32; 4] = [token, pos as u32, 0, 0];
        let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.drv
            .upload_async(self.ptr(Buf::Params), &bytes, self.stream)?;
        match self.graph {
            Some(exec) => self.drv.launch_graph(exec, self.stream)?,
            None => self.launch_all(&self.plan)?,
        }
        let (x_ptr, logits_ptr) = (self.ptr(Buf::X), self.ptr(Buf::Logits));
        match &mut self.tail {
            None => {
                if let Some(out) = out {
                    // SAFETY: f32 has no invalid bit patterns; the view covers `out`.
                    let raw = unsafe {
                        std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * 4)
                    };
                    self.drv.download_async(raw, logits_ptr, self.stream)?;
                }
                self.drv.sync_stream(self.stream)?;
            }
            Some(tail) => {
                let x = tail.hidden_mut();
                // SAFETY: as above.
                let raw = unsafe {
                    std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<u8>(), x.len() * 4)
                };
                self.drv.download_async(raw, x_ptr, self.stream)?;
                self.drv.sync_stream(self.stream)?;
                tail.run(self.model, blob, pos, out);
            }
        }
        Ok(())
    }

    /// One prefill tile: `PREFILL_TILE` tokens at `pos0..`; `out(t)` is where token
    /// `t`'s logits go, if wanted.
    fn tile(
        &mut self,
        tokens: &[u32],
        pos0: usize,
        out: &mut [Option<&mut [f32]>],
        blob: &'static [u8],
    ) -> Result<(), GpuError> {
        let mut bytes = Vec::with_capacity(16 * PREFILL_TILE);
        for (t, &token) in tokens.iter().enumerate() {
            if token as usize >= self.cfg.n_vocab {
                return Err(GpuError::BadToken(token));
            }
            for v in [token, (pos0 + t) as u32, 0, 0] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        self.drv
            .upload_async(self.ptr(Buf::Params), &bytes, self.stream)?;
        match self.prefill_graph {
            Some(exec) => self.drv.launch_graph(exec, self.stream)?,
            None => self.launch_all(&self.prefill)?,
        }
        let (x_ptr, logits_ptr) = (self.ptr(Buf::X), self.ptr(Buf::Logits));
        let (n_embd, n_vocab) = (self.cfg.n_embd, self.cfg.n_vocab);
        match &mut self.tail {
            None => {
                for (t, o) in out.iter_mut().enumerate() {
                    if let Some(o) = o {
                        // SAFETY: f32 has no invalid bit patterns; the view covers `o`.
                        let raw = unsafe {
                            std::slice::from_raw_parts_mut(o.as_mut_ptr().cast::<u8>(), o.len() * 4)
                        };
                        let src = logits_ptr + (4 * t * n_vocab) as u64;
                        self.drv.download_async(raw, src, self.stream)?;
                    }
                }
                self.drv.sync_stream(self.stream)?;
            }
            Some(tail) => {
                let mut xs = vec![0f32; PREFILL_TILE * n_embd];
                // SAFETY: as above.
                let raw = unsafe {
                    std::slice::from_raw_parts_mut(xs.as_mut_ptr().cast::<u8>(), xs.len() * 4)
                };
                self.drv.download_async(raw, x_ptr, self.stream)?;
                self.drv.sync_stream(self.stream)?;
                for (t, o) in out.iter_mut().enumerate() {
                    tail.hidden_mut()
                        .copy_from_slice(&xs[t * n_embd..(t + 1) * n_embd]);
                    tail.run(self.model, blob, pos0 + t, o.as_deref_mut());
                }
            }
        }
        Ok(())
    }

    /// Evaluates `tokens` at positions `pos0..` and returns the logits of
    /// `tokens[first_logit..]`, `n_vocab` per token, as `Ctx::eval` does.
    pub fn eval<M: Model>(
        &mut self,
        tokens: &[u32],
        pos0: usize,
        first_logit: usize,
    ) -> Result<&[f32], GpuError> {
        self.drv.set_current(self.ctx)?;
        let n_vocab = self.cfg.n_vocab;
        let n_out = tokens.len().saturating_sub(first_logit);
        self.logits.resize(n_out * n_vocab, 0.0);
        let mut logits = std::mem::take(&mut self.logits);
        let result = (|| {
            let mut i = 0;
            // Whole tiles through the prefill graph, the rest token by token.
            while !self.prefill.is_empty() && tokens.len() - i >= PREFILL_TILE {
                let mut outs: Vec<Option<&mut [f32]>> = Vec::with_capacity(PREFILL_TILE);
                let mut rest = &mut logits[..];
                let mut consumed = 0;
                for t in i..i + PREFILL_TILE {
                    if t >= first_logit {
                        let at = (t - first_logit) * n_vocab - consumed;
                        let (_, tail) = rest.split_at_mut(at);
                        let (row, after) = tail.split_at_mut(n_vocab);
                        outs.push(Some(row));
                        rest = after;
                        consumed += at + n_vocab;
                    } else {
                        outs.push(None);
                    }
                }
                self.tile(
                    &tokens[i..i + PREFILL_TILE],
                    pos0 + i,
                    &mut outs,
                    M::weights(),
                )?;
                i += PREFILL_TILE;
            }
            for (i, &tok) in tokens.iter().enumerate().skip(i) {
                let out = if i >= first_logit {
                    let at = (i - first_logit) * n_vocab;
                    Some(&mut logits[at..at + n_vocab])
                } else {
                    None
                };
                self.step(tok, pos0 + i, out, M::weights())?;
            }
            Ok(())
        })();
        self.logits = logits;
        result?;
        Ok(&self.logits[..n_out * n_vocab])
    }

    /// One greedy decode step: with every layer on the GPU the argmax is taken there
    /// and only it comes back (4 bytes); with a CPU tail the logits come back and the
    /// argmax is taken on the host.
    pub fn decode_greedy<M: Model>(&mut self, token: u32, pos: usize) -> Result<u32, GpuError> {
        if self.tail.is_some() {
            let logits = self.eval::<M>(&[token], pos, 0)?;
            let mut best = 0;
            for (i, &v) in logits.iter().enumerate() {
                if v > logits[best] {
                    best = i;
                }
            }
            return Ok(best as u32);
        }
        self.drv.set_current(self.ctx)?;
        self.step(token, pos, None, M::weights())?;
        let mut p = [0u8; 16];
        self.drv
            .download_async(&mut p, self.ptr(Buf::Params), self.stream)?;
        self.drv.sync_stream(self.stream)?;
        Ok(u32::from_le_bytes([p[8], p[9], p[10], p[11]]))
    }
}

impl Drop for GpuCtx {
    fn drop(&mut self) {
        let _ = self.drv.set_current(self.ctx);
        let _ = self.drv.synchronize();
        for g in [self.graph.take(), self.prefill_graph.take()]
            .into_iter()
            .flatten()
        {
            self.drv.destroy_graph(g);
        }
        for &p in &self.allocs {
            self.drv.free(p);
        }
        if !self.stream.is_null() {
            self.drv.destroy_stream(self.stream);
        }
        if !self.module.is_null() {
            self.drv.unload(self.module);
        }
        self.drv.release_primary_context(self.dev);
    }
}
