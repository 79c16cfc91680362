//! Importance-matrix statistics, as llama-imatrix collects them: for every weight matrix
//! of the transformer blocks (and `output.weight` on request), the sum over the text of
//! the square of each input column, and how many input rows (tokens) went in.
//! `mcc quantize --imatrix` weights each column's rounding error by them.
//!
//! llama-imatrix runs the text in chunks of `n_ctx` tokens, each from an empty cache with
//! its first token replaced by BOS when the tokenizer adds one (the perplexity method),
//! and adds `x[j]²` into its f32 sum for every row of each matmul's input in order,
//! without FMA (its tool is built for the x86-64 baseline). Every token of a chunk goes
//! through every layer, so all block matrices see the same row count. The matrices that
//! read one input (Q, K and V; gate and up) have equal sums: they are collected once.
//!
//! The compiled binary writes what it collected in a small raw form for `mcc imatrix`,
//! which writes llama.cpp's GGUF imatrix file (one GGUF writer, in mcc):
//!
//! ```text
//! b"MCCIMX01"  u32 chunk_count  u32 chunk_size  u32 n_entries
//! n_entries x (u32 name_len, name, u64 rows, u32 n_values, n_values x f32)
//! ```
//! all little-endian, entries sorted by name.

use std::io::Write;

use crate::model::{Ctx, Model};

/// The inputs the forward pass hands to weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The normed residual that `attn_q`, `attn_k` and `attn_v` read.
    Attention,
    /// The attention output that `attn_output` reads.
    AttentionOut,
    /// The normed residual that `ffn_gate` and `ffn_up` read.
    Ffn,
    /// The SwiGLU output that `ffn_down` reads.
    FfnDown,
    /// The final normed residual that `output.weight` reads.
    Output,
}

impl Input {
    const BLOCK: [Input; 4] = [
        Input::Attention,
        Input::AttentionOut,
        Input::Ffn,
        Input::FfnDown,
    ];

    /// The weight matrices that read this input, by their GGUF role names.
    fn roles(self) -> &'static [&'static str] {
        match self {
            Input::Attention => &["attn_q", "attn_k", "attn_v"],
            Input::AttentionOut => &["attn_output"],
            Input::Ffn => &["ffn_gate", "ffn_up"],
            Input::FfnDown => &["ffn_down"],
            Input::Output => &["output"],
        }
    }
}

/// Running sums of squared inputs, per layer and input.
pub struct Collector {
    /// Width of each block input, in [`Input::BLOCK`] order.
    widths: [usize; 4],
    /// Per layer, the four inputs' sums back to back.
    sums: Vec<f32>,
    /// Sums of the output projection's input, when collected.
    output: Option<Vec<f32>>,
    /// Rows added per input of each layer (the same for all of them).
    rows: Vec<u64>,
    output_rows: u64,
}

impl Collector {
    /// Sums for model `M`'s block matrices, and its output matrix if `output`.
    pub fn new<M: Model>(output: bool) -> Collector {
        let c = M::CONFIG;
        let widths = [c.n_embd, c.q_dim(), c.n_embd, c.n_ff];
        let per_layer: usize = widths.iter().sum();
        Collector {
            widths,
            sums: vec![0.0; per_layer * c.n_layer],
            output: output.then(|| vec![0.0; c.n_embd]),
            rows: vec![0; c.n_layer],
            output_rows: 0,
        }
    }

    fn slot(&mut self, layer: usize, input: Input) -> &mut [f32] {
        if input == Input::Output {
            return self.output.as_deref_mut().unwrap_or(&mut []);
        }
        let per_layer: usize = self.widths.iter().sum();
        let i = Input::BLOCK.iter().position(|&b| b == input).unwrap_or(0);
        let at = layer * per_layer + self.widths[..i].iter().sum::<usize>();
        &mut self.sums[at..at + self.widths[i]]
    }

    /// Adds the rows of `x` (row after row, each as wide as the input) to the sums of
    /// `input` in `layer` (ignored for [`Input::Output`]).
    pub fn add(&mut self, layer: usize, input: Input, x: &[f32]) {
        let acc = self.slot(layer, input);
        if acc.is_empty() {
            return;
        }
        let width = acc.len();
        for row in x.chunks_exact(width) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v * v;
            }
        }
        let n = (x.len() / width) as u64;
        match input {
            Input::Output => self.output_rows += n,
            // Counted once per layer, at the first input of its block.
            Input::Attention => self.rows[layer] += n,
            _ => {}
        }
    }

    /// `(tensor name, rows, sums)` of every matrix, sorted by name.
    pub fn entries(&self) -> Vec<(String, u64, &[f32])> {
        let per_layer: usize = self.widths.iter().sum();
        let mut out = Vec::new();
        for (layer, &rows) in self.rows.iter().enumerate() {
            let mut at = layer * per_layer;
            for (input, width) in Input::BLOCK.into_iter().zip(self.widths) {
                for role in input.roles() {
                    let name = format!("blk.{layer}.{role}.weight");
                    out.push((name, rows, &self.sums[at..at + width]));
                }
                at += width;
            }
        }
        if let Some(sums) = &self.output {
            out.push(("output.weight".to_string(), self.output_rows, &sums[..]));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The raw form `mcc imatrix` reads (see the module docs).
    pub fn to_raw(&self, chunk_count: u32, chunk_size: u32) -> Vec<u8> {
        let entries = self.entries();
        let mut b = b"MCCIMX01".to_vec();
        for v in [chunk_count, chunk_size, entries.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for (name, rows, sums) in entries {
            b.extend_from_slice(&(name.len() as u32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&rows.to_le_bytes());
            b.extend_from_slice(&(sums.len() as u32).to_le_bytes());
            sums.iter()
                .for_each(|s| b.extend_from_slice(&s.to_le_bytes()));
        }
        b
    }
}

/// How [`collect`] runs the text.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    /// Replaces each chunk's first token, when the tokenizer adds one.
    pub bos: Option<u32>,
    /// Use at most this many chunks.
    pub max_chunks: Option<usize>,
    /// Also score the second half of each chunk (llama-imatrix's perplexity estimate).
    pub ppl: bool,
}

/// What [`collect`] did.
pub struct Collected {
    pub n_chunks: usize,
    /// Perplexity over the scored halves of the chunks, when computed.
    pub ppl: Option<f64>,
}

/// llama-imatrix's pass over `tokens` (tokenized with BOS per the model, special tokens
/// not parsed): chunks of `ctx.n_ctx()` tokens, each from an empty cache with its first
/// token replaced per `pass`, collecting into `collector`. With `pass.ppl` it also scores
/// the second half of each chunk and prints llama.cpp's running estimate (`[1]12.3456,`)
/// to `out`, as llama-imatrix does. `progress` is called after each chunk with (chunks
/// done, chunks in all).
pub fn collect<M: Model>(
    ctx: &mut Ctx,
    collector: Collector,
    tokens: &[u32],
    pass: &Pass,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Collector, Collected), String> {
    let n_ctx = ctx.n_ctx();
    if tokens.len() < 2 * n_ctx {
        return Err(format!(
            "the text tokenizes to {} tokens; an imatrix with a context of {n_ctx} needs at least {}",
            tokens.len(),
            2 * n_ctx
        ));
    }
    let Pass {
        bos,
        max_chunks,
        ppl,
    } = *pass;
    let n_chunks = (tokens.len() / n_ctx).min(max_chunks.unwrap_or(usize::MAX));
    let n_vocab = M::CONFIG.n_vocab;
    let first = n_ctx / 2;
    // Logits of the scored half only; without perplexity, of the last token (the one
    // row `eval` always computes), unless the output matrix is collected, which
    // llama-imatrix feeds every token.
    let first_logit = match (ppl, collector.output.is_some()) {
        (_, true) => 0,
        (true, false) => first,
        (false, false) => n_ctx - 1,
    };
    ctx.set_imatrix(Some(collector));
    let (mut nll_sum, mut count) = (0f64, 0usize);
    let mut chunk = vec![0u32; n_ctx];
    for c in 0..n_chunks {
        chunk.copy_from_slice(&tokens[c * n_ctx..(c + 1) * n_ctx]);
        if let Some(bos) = bos {
            chunk[0] = bos;
        }
        let logits = ctx.eval::<M>(&chunk, 0, first_logit);
        if ppl {
            let scored = &logits[(first - first_logit) * n_vocab..];
            let targets = &tokens[c * n_ctx + first + 1..(c + 1) * n_ctx];
            for (i, &tok) in targets.iter().enumerate() {
                nll_sum += crate::perplexity::nll(&scored[i * n_vocab..(i + 1) * n_vocab], tok);
            }
            count += targets.len();
            let _ = write!(out, "[{}]{:.4},", c + 1, (nll_sum / count as f64).exp());
            let _ = out.flush();
        }
        progress(c + 1, n_chunks);
        if crate::cli::interrupted() {
            break;
        }
    }
    if ppl {
        let _ = writeln!(out);
    }
    let collector = ctx
        .set_imatrix(None)
        .ok_or("the forward pass lost the imatrix collector")?;
    let done = collector.rows.first().map_or(0, |&r| r as usize / n_ctx);
    Ok((
        collector,
        Collected {
            n_chunks: done,
            ppl: (ppl && count > 0).then(|| (nll_sum / count as f64).exp()),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::Toy;

    #[test]
    fn sums_are_each_inputs_squares_added_in_row_order() {
        let mut c = Collector::new::<Toy>(true);
        let w = Toy::CONFIG.n_embd;
        let x: Vec<f32> = (0..3 * w).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
        c.add(1, Input::Attention, &x);
        c.add(1, Input::Output, &x[..w]);
        let entries = c.entries();
        let q = entries
            .iter()
            .find(|e| e.0 == "blk.1.attn_q.weight")
            .unwrap();
        assert_eq!(q.1, 3);
        for (j, &s) in q.2.iter().enumerate() {
            let mut want = 0f32;
            for r in 0..3 {
                want += x[r * w + j] * x[r * w + j];
            }
            assert_eq!(s.to_bits(), want.to_bits(), "column {j}");
        }
        let k = entries
            .iter()
            .find(|e| e.0 == "blk.1.attn_k.weight")
            .unwrap();
        assert_eq!(k.2, q.2);
        let out = entries.iter().find(|e| e.0 == "output.weight").unwrap();
        assert_eq!(out.1, 1);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 7 * Toy::CONFIG.n_layer + 1);
        let untouched = entries
            .iter()
            .find(|e| e.0 == "blk.0.ffn_down.weight")
            .unwrap();
        assert_eq!(untouched.1, 0);
        assert!(untouched.2.iter().all(|&s| s == 0.0));
    }

    #[test]
    fn every_chunk_feeds_every_matrix_of_every_layer() {
        let n_ctx = 16;
        let mut ctx = Ctx::new::<Toy>(2, n_ctx, n_ctx).unwrap();
        let tokens: Vec<u32> = (0..3 * n_ctx as u32 + 5).map(|t| t * 7 % 40).collect();
        let mut seen = Vec::new();
        let (c, done) = collect::<Toy>(
            &mut ctx,
            Collector::new::<Toy>(false),
            &tokens,
            &Pass {
                bos: Some(1),
                max_chunks: Some(2),
                ppl: true,
            },
            &mut std::io::sink(),
            &mut |i, n| seen.push((i, n)),
        )
        .unwrap();
        assert_eq!(done.n_chunks, 2);
        assert!(done.ppl.is_some_and(|p| p.is_finite() && p > 1.0));
        assert_eq!(seen, [(1, 2), (2, 2)]);
        for (name, rows, sums) in c.entries() {
            assert_eq!(rows, 2 * n_ctx as u64, "{name}");
            assert!(sums.iter().all(|s| s.is_finite() && *s >= 0.0), "{name}");
            assert!(sums.iter().any(|&s| s > 0.0), "{name}");
        }
        // The same chunks again give the same sums: nothing depends on what ran before.
        let (again, _) = collect::<Toy>(
            &mut ctx,
            Collector::new::<Toy>(false),
            &tokens,
            &Pass {
                bos: Some(1),
                max_chunks: Some(2),
                ppl: false,
            },
            &mut std::io::sink(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(c.to_raw(2, 16), again.to_raw(2, 16));
    }

    #[test]
    fn a_short_text_is_an_error_that_says_how_short() {
        let mut ctx = Ctx::new::<Toy>(1, 16, 16).unwrap();
        let e = collect::<Toy>(
            &mut ctx,
            Collector::new::<Toy>(false),
            &[1; 20],
            &Pass {
                bos: None,
                max_chunks: None,
                ppl: false,
            },
            &mut std::io::sink(),
            &mut |_, _| {},
        )
        .err()
        .unwrap();
        assert!(e.contains("20 tokens") && e.contains("at least 32"), "{e}");
    }
}
