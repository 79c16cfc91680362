//! The forward pass on the GPU: weights uploaded once, one CUDA graph per decode step.
//!
//! Device memory: the weights the offloaded part reads (one allocation, each tensor
//! 256-byte aligned), the activations (`x`, `xn`, `q`, `k`, `v`, `att`, `gate`, `up`,
//! `logits`), the attention scores (`n_head x` compiled context, the row stride the
//! attention kernel has as an immediate), the RoPE `(cos, sin)` table the CPU path uses,
//! a 16-byte `params` block `{token, pos, argmax, 0}` and an f16 K and V cache per
//! offloaded layer (`n_ctx x kv_dim`).
//!
//! A decode step is: copy `params` in, launch the graph (embed, per layer rmsnorm /
//! q,k,v / rope_kv / attention / o (+= x) / rmsnorm / gate, up / swiglu / down (+= x),
//! then rmsnorm / output / argmax), copy the logits (or, with a CPU tail, the hidden
//! state) out, all on one stream. The kernel launch sequence is captured once into a
//! graph, so a step costs one graph launch instead of ~15 launches per layer; if the
//! driver refuses the capture, the same launches run directly.
//!
//! A prompt is evaluated as successive decode steps (no batched prefill kernel yet).

use super::driver::{CuDevice, CuDevicePtr, Driver, Handle};
use super::{CpuTail, GpuError, GpuLayer, GpuModel, GpuTensor};
use crate::model::{Config, Model};
use crate::ops::Rope;

/// Threads of an attention CTA; must match the compiler's `attention_threads`.
fn attention_threads(head_dim: usize) -> u32 {
    head_dim.next_multiple_of(32).max(128) as u32
}

/// Resolved kernels of one layer.
struct LayerFns {
    q: Handle,
    k: Handle,
    v: Handle,
    o: Handle,
    gate: Handle,
    up: Handle,
    down: Handle,
}

/// Device buffers of the activations.
struct Acts {
    x: CuDevicePtr,
    xn: CuDevicePtr,
    q: CuDevicePtr,
    k: CuDevicePtr,
    v: CuDevicePtr,
    att: CuDevicePtr,
    gate: CuDevicePtr,
    up: CuDevicePtr,
    logits: CuDevicePtr,
    scores: CuDevicePtr,
    rope: CuDevicePtr,
    params: CuDevicePtr,
}

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
    /// Device address of each uploaded tensor, by blob offset.
    weights: Vec<(usize, CuDevicePtr)>,
    acts: Acts,
    k_cache: Vec<CuDevicePtr>,
    v_cache: Vec<CuDevicePtr>,
    layer_fns: Vec<LayerFns>,
    embed: Handle,
    rmsnorm: Handle,
    rope_kv: Handle,
    attention: Handle,
    swiglu: Handle,
    output: Handle,
    argmax: Handle,
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
            weights: Vec::new(),
            acts: Acts {
                x: 0,
                xn: 0,
                q: 0,
                k: 0,
                v: 0,
                att: 0,
                gate: 0,
                up: 0,
                logits: 0,
                scores: 0,
                rope: 0,
                params: 0,
            },
            k_cache: Vec::new(),
            v_cache: Vec::new(),
            layer_fns: Vec::new(),
            embed: std::ptr::null_mut(),
            rmsnorm: std::ptr::null_mut(),
            rope_kv: std::ptr::null_mut(),
            attention: std::ptr::null_mut(),
            swiglu: std::ptr::null_mut(),
            output: std::ptr::null_mut(),
            argmax: std::ptr::null_mut(),
            tail: None,
            logits: Vec::new(),
            device_name,
        };
        g.module = g.drv.load_ptx(model.ptx)?;
        g.stream = g.drv.stream()?;
        g.resolve()?;
        g.upload::<M>()?;
        g.alloc_state::<M>()?;
        if n_gpu < cfg.n_layer {
            g.tail = Some(
                CpuTail::new::<M>(n_gpu, n_ctx).map_err(|e| GpuError::NoDriver {
                    reason: format!("CPU layers: {e}"),
                })?,
            );
        }
        g.drv.synchronize()?;
        g.graph = g.capture().ok();
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

    fn resolve(&mut self) -> Result<(), GpuError> {
        let f = |g: &GpuCtx, name: &str| g.drv.function(g.module, name);
        self.embed = f(self, self.model.token_embd.kernel)?;
        self.rmsnorm = f(self, "rmsnorm")?;
        self.rope_kv = f(self, "rope_kv")?;
        self.attention = f(self, "attention")?;
        self.swiglu = f(self, "swiglu")?;
        self.output = f(self, self.model.output.kernel)?;
        self.argmax = f(self, "argmax")?;
        for l in &self.model.layers[..self.n_gpu] {
            let fns = LayerFns {
                q: f(self, l.attn_q.kernel)?,
                k: f(self, l.attn_k.kernel)?,
                v: f(self, l.attn_v.kernel)?,
                o: f(self, l.attn_output.kernel)?,
                gate: f(self, l.ffn_gate.kernel)?,
                up: f(self, l.ffn_up.kernel)?,
                down: f(self, l.ffn_down.kernel)?,
            };
            self.layer_fns.push(fns);
        }
        Ok(())
    }

    fn alloc(&mut self, bytes: usize) -> Result<CuDevicePtr, GpuError> {
        let p = self.drv.alloc(bytes)?;
        self.allocs.push(p);
        Ok(p)
    }

    /// The tensors the GPU reads, each once (a tied output shares the token table).
    fn gpu_tensors(&self) -> Vec<GpuTensor> {
        let mut ts = vec![self.model.token_embd];
        for l in &self.model.layers[..self.n_gpu] {
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
        if self.n_gpu == self.cfg.n_layer {
            ts.extend([self.model.output_norm, self.model.output]);
        }
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
                .ok_or(GpuError::MissingKernel(format!(
                    "tensor at {:#x} (outside the blob)",
                    t.offset
                )))?;
            self.drv.upload(base + at as u64, bytes)?;
            self.weights.push((t.offset, base + at as u64));
            at += t.bytes.next_multiple_of(256);
        }
        Ok(())
    }

    fn dev(&self, t: &GpuTensor) -> CuDevicePtr {
        self.weights
            .iter()
            .find(|(off, _)| *off == t.offset)
            .map_or(0, |&(_, p)| p)
    }

    fn alloc_state<M: Model>(&mut self) -> Result<(), GpuError> {
        let c = self.cfg;
        let f = 4;
        self.acts.x = self.alloc(c.n_embd * f)?;
        self.acts.xn = self.alloc(c.n_embd * f)?;
        self.acts.q = self.alloc(c.q_dim() * f)?;
        self.acts.k = self.alloc(c.kv_dim() * f)?;
        self.acts.v = self.alloc(c.kv_dim() * f)?;
        self.acts.att = self.alloc(c.q_dim() * f)?;
        self.acts.gate = self.alloc(c.n_ff * f)?;
        self.acts.up = self.alloc(c.n_ff * f)?;
        self.acts.logits = self.alloc(c.n_vocab * f)?;
        // The attention kernel's score rows are the compiled context long.
        self.acts.scores = self.alloc(c.n_head * M::CONFIG.n_ctx * f)?;
        self.acts.params = self.alloc(16)?;
        let rope = Rope::try_new(
            c.head_dim,
            c.rope_dim,
            c.rope_base,
            M::rope_freqs(),
            self.n_ctx,
        )
        .map_err(|e| GpuError::NoDriver {
            reason: format!("RoPE: {e}"),
        })?;
        let mut table = Vec::with_capacity(self.n_ctx * c.rope_dim * 4);
        for pos in 0..self.n_ctx {
            for &(cos, sin) in rope.angles(pos) {
                table.extend_from_slice(&cos.to_le_bytes());
                table.extend_from_slice(&sin.to_le_bytes());
            }
        }
        self.acts.rope = self.alloc(table.len())?;
        self.drv.upload(self.acts.rope, &table)?;
        let cache = self.n_ctx * c.kv_dim() * 2;
        for _ in 0..self.n_gpu {
            let k = self.alloc(cache)?;
            let v = self.alloc(cache)?;
            self.drv.zero(k, cache)?;
            self.drv.zero(v, cache)?;
            self.k_cache.push(k);
            self.v_cache.push(v);
        }
        Ok(())
    }

    /// Launches one decode step's kernels on the stream (reading token and position
    /// from `params`).
    fn launch_step(&self) -> Result<(), GpuError> {
        let (c, a, d) = (self.cfg, &self.acts, &self.drv);
        let s = self.stream;
        let mv = |f: Handle, t: &GpuTensor, x: u64, y: u64| {
            d.launch(f, t.rows.div_ceil(4) as u32, 128, s, &[self.dev(t), x, y])
        };
        let rms =
            |x: u64, w: &GpuTensor, y: u64| d.launch(self.rmsnorm, 1, 256, s, &[x, self.dev(w), y]);
        let units = (c.n_embd / 32).div_ceil(128) as u32;
        d.launch(
            self.embed,
            units,
            128,
            s,
            &[self.dev(&self.model.token_embd), a.params, a.x],
        )?;
        let rope_threads = c.q_dim() / 2 + c.kv_dim();
        for (l, fns) in self.layer_fns.iter().enumerate() {
            let t: &GpuLayer = &self.model.layers[l];
            rms(a.x, &t.attn_norm, a.xn)?;
            mv(fns.q, &t.attn_q, a.xn, a.q)?;
            mv(fns.k, &t.attn_k, a.xn, a.k)?;
            mv(fns.v, &t.attn_v, a.xn, a.v)?;
            d.launch(
                self.rope_kv,
                rope_threads.div_ceil(256) as u32,
                256,
                s,
                &[
                    a.q,
                    a.k,
                    a.v,
                    self.k_cache[l],
                    self.v_cache[l],
                    a.rope,
                    a.params,
                ],
            )?;
            d.launch(
                self.attention,
                c.n_head as u32,
                attention_threads(c.head_dim),
                s,
                &[
                    a.q,
                    self.k_cache[l],
                    self.v_cache[l],
                    a.scores,
                    a.att,
                    a.params,
                ],
            )?;
            mv(fns.o, &t.attn_output, a.att, a.x)?;
            rms(a.x, &t.ffn_norm, a.xn)?;
            mv(fns.gate, &t.ffn_gate, a.xn, a.gate)?;
            mv(fns.up, &t.ffn_up, a.xn, a.up)?;
            d.launch(
                self.swiglu,
                c.n_ff.div_ceil(256) as u32,
                256,
                s,
                &[a.gate, a.up],
            )?;
            mv(fns.down, &t.ffn_down, a.gate, a.x)?;
        }
        if self.tail.is_none() {
            rms(a.x, &self.model.output_norm, a.xn)?;
            mv(self.output, &self.model.output, a.xn, a.logits)?;
            d.launch(self.argmax, 1, 1024, s, &[a.logits, a.params])?;
        }
        Ok(())
    }

    fn capture(&self) -> Result<Handle, GpuError> {
        self.drv.begin_capture(self.stream)?;
        let launched = self.launch_step();
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
            .upload_async(self.acts.params, &bytes, self.stream)?;
        match self.graph {
            Some(exec) => self.drv.launch_graph(exec, self.stream)?,
            None => self.launch_step()?,
        }
        match &mut self.tail {
            None => {
                if let Some(out) = out {
                    // SAFETY: f32 has no invalid bit patterns; the view covers `out`.
                    let raw = unsafe {
                        std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * 4)
                    };
                    self.drv
                        .download_async(raw, self.acts.logits, self.stream)?;
                }
                self.drv.sync_stream(self.stream)?;
            }
            Some(tail) => {
                let x = tail.hidden_mut();
                // SAFETY: as above.
                let raw = unsafe {
                    std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<u8>(), x.len() * 4)
                };
                self.drv.download_async(raw, self.acts.x, self.stream)?;
                self.drv.sync_stream(self.stream)?;
                tail.run(self.model, blob, pos, out);
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
            for (i, &tok) in tokens.iter().enumerate() {
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

    /// One greedy decode step on the device: the argmax comes back (4 bytes), not the
    /// logits. All layers must be on the GPU.
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
            .download_async(&mut p, self.acts.params, self.stream)?;
        self.drv.sync_stream(self.stream)?;
        Ok(u32::from_le_bytes([p[8], p[9], p[10], p[11]]))
    }
}

impl Drop for GpuCtx {
    fn drop(&mut self) {
        let _ = self.drv.set_current(self.ctx);
        let _ = self.drv.synchronize();
        if let Some(g) = self.graph.take() {
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
