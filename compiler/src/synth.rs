//! `mcc synth`: writes a random-weight llama GGUF of any shape, for test fixtures.
//!
//! Weights are N(0, 1/fan_in) (standard deviation `1/sqrt(row length)`), so every
//! matvec keeps activations near unit scale and a forward pass stays finite for any
//! depth; norm weights are 1. The vocabulary is either a small built-in byte-level BPE
//! (`gpt2` model: 256 byte tokens, a few merges, BOS/EOS, reserved tokens up to the
//! asked size) or every `tokenizer.*` key of another GGUF (`--vocab-from`).
//! `--header-only` writes a sparse file with the full layout and no data: codegen of a
//! Minitron-shaped model needs only the header.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::gguf::writer::{GgufWriter, SplitMix64, TensorData, WriteMode};
use crate::gguf::{Array, GgmlType, GgufFile, Value, ValueType};

/// Llama-3.1 RoPE frequency scaling: per frequency a divisor (the `rope_freqs.weight`
/// tensor) that leaves high frequencies alone, divides low ones by `factor`, and blends
/// in between.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    /// Context length of the original (unscaled) training.
    pub original_ctx: usize,
}

impl Llama3RopeScaling {
    /// The values of Llama 3.1 (and of Minitron, derived from it).
    pub const LLAMA_3_1: Llama3RopeScaling = Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_ctx: 8192,
    };

    /// The `rope_dim / 2` divisors. For frequency `f_i = base^(-2i/rope_dim)` with
    /// wavelength `λ = 2π / f_i`, against `λ_hi = original_ctx / high_freq_factor` and
    /// `λ_lo = original_ctx / low_freq_factor`:
    /// `λ < λ_hi` → 1; `λ > λ_lo` → `factor`; otherwise, with
    /// `s = (original_ctx / λ - low_freq_factor) / (high_freq_factor - low_freq_factor)`,
    /// `1 / ((1 - s) / factor + s)`, which runs from `factor` down to 1.
    pub fn factors(&self, rope_base: f32, rope_dim: usize) -> Vec<f32> {
        let old_ctx = self.original_ctx as f32;
        let lambda_hi = old_ctx / self.high_freq_factor;
        let lambda_lo = old_ctx / self.low_freq_factor;
        (0..rope_dim / 2)
            .map(|i| {
                let freq = 1.0 / rope_base.powf((2 * i) as f32 / rope_dim as f32);
                let lambda = std::f32::consts::TAU / freq;
                if lambda < lambda_hi {
                    1.0
                } else if lambda > lambda_lo {
                    self.factor
                } else {
                    let s = (old_ctx / lambda - self.low_freq_factor)
                        / (self.high_freq_factor - self.low_freq_factor);
                    1.0 / ((1.0 - s) / self.factor + s)
                }
            })
            .collect()
    }
}

/// The shape and options of a synthetic model.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    pub name: String,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_ctx: usize,
    /// Size of the built-in vocabulary (ignored with a copied vocabulary).
    pub n_vocab: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// `Some`: write `rope_freqs.weight` with these scaling factors.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// No `output.weight`: the output projection reuses `token_embd`.
    pub tied: bool,
    /// Type of the 2-D weights: F32 or F16 (norms and rope_freqs are always F32).
    pub weight_type: GgmlType,
    pub seed: u64,
}

impl SynthConfig {
    /// A small model with K-quant-friendly sizes (every row a multiple of 256), so it
    /// can be quantized to any type and compiled in seconds.
    pub fn tiny() -> SynthConfig {
        SynthConfig {
            name: "synth-tiny".into(),
            n_embd: 256,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            n_ff: 512,
            n_ctx: 512,
            n_vocab: 512,
            rope_base: 10000.0,
            rms_eps: 1e-5,
            rope_scaling: None,
            tied: false,
            weight_type: GgmlType::F32,
            seed: 42,
        }
    }

    /// The shape of Minitron-4B (Llama-3.1-derived): 3072 wide, 32 layers, 32 query and
    /// 8 KV heads of 128 (so head_dim != n_embd / n_head), 9216 FFN, untied output,
    /// Llama-3.1 RoPE scaling, 128256-token vocabulary.
    pub fn minitron() -> SynthConfig {
        SynthConfig {
            name: "synth-minitron".into(),
            n_embd: 3072,
            n_layer: 32,
            n_head: 32,
            n_head_kv: 8,
            head_dim: 128,
            n_ff: 9216,
            n_ctx: 131072,
            n_vocab: 128256,
            rope_base: 500000.0,
            rms_eps: 1e-5,
            rope_scaling: Some(Llama3RopeScaling::LLAMA_3_1),
            tied: false,
            weight_type: GgmlType::F32,
            seed: 42,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("--n-embd", self.n_embd),
            ("--n-layer", self.n_layer),
            ("--n-head", self.n_head),
            ("--n-head-kv", self.n_head_kv),
            ("--head-dim", self.head_dim),
            ("--n-ff", self.n_ff),
            ("--n-ctx", self.n_ctx),
        ];
        for (flag, v) in positive {
            anyhow::ensure!(v > 0, "{flag}: found 0, expected >= 1");
        }
        anyhow::ensure!(
            self.n_head.is_multiple_of(self.n_head_kv),
            "--n-head {} is not a multiple of --n-head-kv {}",
            self.n_head,
            self.n_head_kv
        );
        anyhow::ensure!(
            self.head_dim.is_multiple_of(2),
            "--head-dim: found {}, expected an even number (RoPE rotates pairs)",
            self.head_dim
        );
        anyhow::ensure!(
            matches!(self.weight_type, GgmlType::F32 | GgmlType::F16),
            "weight type: found {}, expected F32 or F16",
            self.weight_type
        );
        anyhow::ensure!(
            self.rope_base.is_finite() && self.rope_base > 1.0,
            "--rope-base: found {}, expected a finite value > 1",
            self.rope_base
        );
        anyhow::ensure!(
            self.rms_eps.is_finite() && self.rms_eps > 0.0 && self.rms_eps < 1.0,
            "--rms-eps: found {}, expected a value in (0, 1)",
            self.rms_eps
        );
        Ok(())
    }
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the
/// other 68 bytes get the code points from U+0100 up in byte order, so every byte is a
/// visible character (space 0x20 becomes 'Ġ' U+0120).
pub fn gpt2_byte_char(b: u8) -> char {
    let printable = |c: u8| matches!(c, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

/// Merges of the built-in vocabulary, highest priority first (each result is a token).
const TOY_MERGES: [(&str, &str); 8] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("Ġt", "he"),
    ("r", "e"),
];

/// The built-in vocabulary's `tokenizer.*` keys: a `gpt2` byte-level BPE with the 256
/// byte tokens (ids 0..256), the [`TOY_MERGES`] results, `<|bos|>`, `<|eos|>`, then
/// `<|reserved_N|>` control tokens up to `n_vocab`.
pub fn toy_vocab(n_vocab: usize) -> anyhow::Result<Vec<(String, Value)>> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_byte_char(b).to_string()).collect();
    let mut types = vec![1i32; 256];
    for (a, b) in TOY_MERGES {
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    let bos = tokens.len();
    for special in ["<|bos|>", "<|eos|>"] {
        tokens.push(special.into());
        types.push(3);
    }
    anyhow::ensure!(
        n_vocab >= tokens.len(),
        "--n-vocab: found {n_vocab}, expected at least {} for the built-in vocabulary",
        tokens.len()
    );
    for i in 0..n_vocab - tokens.len() {
        tokens.push(format!("<|reserved_{i}|>"));
        types.push(3);
    }
    let strings = |items: Vec<String>| {
        Value::Array(Array {
            elem_type: ValueType::String,
            items: items.into_iter().map(Value::String).collect(),
        })
    };
    let merges = TOY_MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array {
                elem_type: ValueType::I32,
                items: types.into_iter().map(Value::I32).collect(),
            }),
        ),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos as u32)),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(bos as u32 + 1),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
    ])
}

/// Every `tokenizer.*` key of `g`, in file order, and the vocabulary size (the length
/// of `tokenizer.ggml.tokens`).
pub fn vocab_from(g: &GgufFile) -> anyhow::Result<(Vec<(String, Value)>, usize)> {
    let keys: Vec<(String, Value)> = g
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .cloned()
        .collect();
    let n_vocab = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(|a| a.items.len())
        .with_context(|| {
            format!(
                "{}: no tokenizer.ggml.tokens array to take the vocabulary from",
                g.path.display()
            )
        })?;
    Ok((keys, n_vocab))
}

/// Assembles the GGUF of a random llama model: `cfg` for the shape, `vocab` for the
/// `tokenizer.*` keys and `n_vocab` its token count.
pub fn llama_writer(
    cfg: &SynthConfig,
    vocab: Vec<(String, Value)>,
    n_vocab: usize,
) -> anyhow::Result<GgufWriter> {
    cfg.check()?;
    anyhow::ensure!(n_vocab > 0, "the vocabulary is empty");
    let u32_of = |what: &str, v: usize| {
        u32::try_from(v).with_context(|| format!("{what}: {v} does not fit in a u32"))
    };
    let mut w = GgufWriter::new();
    let file_type = if cfg.weight_type == GgmlType::F16 {
        1
    } else {
        0
    };
    w.add_kv("general.architecture", Value::String("llama".into()))
        .add_kv("general.name", Value::String(cfg.name.clone()))
        .add_kv("general.file_type", Value::U32(file_type));
    let hparams = [
        ("llama.block_count", cfg.n_layer),
        ("llama.context_length", cfg.n_ctx),
        ("llama.embedding_length", cfg.n_embd),
        ("llama.feed_forward_length", cfg.n_ff),
        ("llama.attention.head_count", cfg.n_head),
        ("llama.attention.head_count_kv", cfg.n_head_kv),
        ("llama.attention.key_length", cfg.head_dim),
        ("llama.attention.value_length", cfg.head_dim),
        ("llama.rope.dimension_count", cfg.head_dim),
        ("llama.vocab_size", n_vocab),
    ];
    for (key, v) in hparams {
        w.add_kv(key, Value::U32(u32_of(key, v)?));
    }
    w.add_kv("llama.rope.freq_base", Value::F32(cfg.rope_base))
        .add_kv(
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_eps),
        );
    for (k, v) in vocab {
        w.add_kv(k, v);
    }

    let mut seeds = SplitMix64::new(cfg.seed);
    let wt = cfg.weight_type;
    let mut matrix = |w: &mut GgufWriter, name: &str, n_in: usize, n_out: usize| {
        let data = TensorData::RandomNormal {
            seed: seeds.next_u64(),
            std: 1.0 / (n_in as f32).sqrt(),
        };
        w.add_tensor(name, &[n_in as u64, n_out as u64], wt, data);
    };
    let norm = |w: &mut GgufWriter, name: &str, n: usize| {
        w.add_tensor(name, &[n as u64], GgmlType::F32, TensorData::Constant(1.0));
    };
    let (e, ff) = (cfg.n_embd, cfg.n_ff);
    let q = cfg.n_head * cfg.head_dim;
    let kv = cfg.n_head_kv * cfg.head_dim;
    matrix(&mut w, "token_embd.weight", e, n_vocab);
    for i in 0..cfg.n_layer {
        let n = |role: &str| format!("blk.{i}.{role}.weight");
        norm(&mut w, &n("attn_norm"), e);
        matrix(&mut w, &n("attn_q"), e, q);
        matrix(&mut w, &n("attn_k"), e, kv);
        matrix(&mut w, &n("attn_v"), e, kv);
        matrix(&mut w, &n("attn_output"), q, e);
        norm(&mut w, &n("ffn_norm"), e);
        matrix(&mut w, &n("ffn_gate"), e, ff);
        matrix(&mut w, &n("ffn_up"), e, ff);
        matrix(&mut w, &n("ffn_down"), ff, e);
    }
    norm(&mut w, "output_norm.weight", e);
    if !cfg.tied {
        matrix(&mut w, "output.weight", e, n_vocab);
    }
    if let Some(scaling) = cfg.rope_scaling {
        let factors = scaling.factors(cfg.rope_base, cfg.head_dim);
        let bytes = factors.iter().flat_map(|f| f.to_le_bytes()).collect();
        w.add_tensor(
            "rope_freqs.weight",
            &[factors.len() as u64],
            GgmlType::F32,
            TensorData::Bytes(bytes),
        );
    }
    Ok(w)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// 256 wide, 2 layers, 4 heads (2 KV) of 64, FFN 512, 512-token vocabulary.
    Tiny,
    /// Minitron-4B's shape: 3072 wide, 32 layers, 32 heads (8 KV) of 128, FFN 9216.
    Minitron,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightType {
    F32,
    F16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RopeScaling {
    /// Plain RoPE, no rope_freqs tensor.
    None,
    /// Llama-3.1 scaling (factor 8, low/high freq factors 1/4, original context 8192).
    Llama3,
}

/// `mcc synth`: write a random-weight llama GGUF. Flags override the preset.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Base shape; the flags below override single values.
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: Preset,
    /// Shape overrides (boxed: they make up most of the struct, and the CLI's
    /// subcommand enum stays small).
    #[command(flatten)]
    pub shape: Box<ShapeArgs>,
    /// Copy every tokenizer.* key of this GGUF; the vocabulary size is its token count.
    #[arg(long)]
    pub vocab_from: Option<PathBuf>,
    /// Type of the 2-D weights.
    #[arg(long = "type", value_enum, default_value = "f32")]
    pub weight_type: WeightType,
    /// Tie the output projection to the token embedding (no output.weight).
    #[arg(long)]
    pub tied: bool,
    /// Seed of the weights (the same seed gives the same file).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the header and a sparse hole instead of weights.
    #[arg(long)]
    pub header_only: bool,
    /// Model name (general.name).
    #[arg(long)]
    pub name: Option<String>,
}

/// Single-value overrides of the preset's shape.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ShapeArgs {
    /// Residual stream width (llama.embedding_length).
    #[arg(long)]
    pub n_embd: Option<usize>,
    /// Transformer blocks.
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// Query heads.
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Key/value heads (n_head must be a multiple).
    #[arg(long)]
    pub n_head_kv: Option<usize>,
    /// Size of each head (may differ from n_embd / n_head).
    #[arg(long)]
    pub head_dim: Option<usize>,
    /// FFN hidden size.
    #[arg(long)]
    pub n_ff: Option<usize>,
    /// Training context length written to the file.
    #[arg(long)]
    pub n_ctx: Option<usize>,
    /// Size of the built-in vocabulary (not with --vocab-from).
    #[arg(long, conflicts_with = "vocab_from")]
    pub n_vocab: Option<usize>,
    /// RoPE frequency base.
    #[arg(long)]
    pub rope_base: Option<f32>,
    /// RMS norm epsilon.
    #[arg(long)]
    pub rms_eps: Option<f32>,
    /// RoPE scaling (default: llama3 for minitron, none for tiny).
    #[arg(long, value_enum)]
    pub rope_scaling: Option<RopeScaling>,
}

impl Args {
    /// The configuration the flags describe.
    pub fn config(&self) -> SynthConfig {
        let mut c = match self.preset {
            Preset::Tiny => SynthConfig::tiny(),
            Preset::Minitron => SynthConfig::minitron(),
        };
        let set = |dst: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        let sh = &*self.shape;
        set(&mut c.n_embd, sh.n_embd);
        set(&mut c.n_layer, sh.n_layer);
        set(&mut c.n_head, sh.n_head);
        set(&mut c.n_head_kv, sh.n_head_kv);
        set(&mut c.head_dim, sh.head_dim);
        set(&mut c.n_ff, sh.n_ff);
        set(&mut c.n_ctx, sh.n_ctx);
        set(&mut c.n_vocab, sh.n_vocab);
        c.rope_base = sh.rope_base.unwrap_or(c.rope_base);
        c.rms_eps = sh.rms_eps.unwrap_or(c.rms_eps);
        match sh.rope_scaling {
            Some(RopeScaling::None) => c.rope_scaling = None,
            Some(RopeScaling::Llama3) => c.rope_scaling = Some(Llama3RopeScaling::LLAMA_3_1),
            None => {}
        }
        c.tied |= self.tied;
        c.weight_type = match self.weight_type {
            WeightType::F32 => GgmlType::F32,
            WeightType::F16 => GgmlType::F16,
        };
        c.seed = self.seed.unwrap_or(c.seed);
        if let Some(name) = &self.name {
            c.name = name.clone();
        }
        c
    }
}

/// Writes the model `cfg` describes to `out`, then reads it back through
/// [`crate::describe::describe`] so a fixture that mcc would reject is never left.
pub fn synthesize(
    cfg: &SynthConfig,
    vocab_file: Option<&Path>,
    out: &Path,
    mode: WriteMode,
) -> anyhow::Result<crate::gguf::writer::Layout> {
    let (vocab, n_vocab) = match vocab_file {
        Some(p) => vocab_from(&GgufFile::open(p)?)?,
        None => (toy_vocab(cfg.n_vocab)?, cfg.n_vocab),
    };
    let w = llama_writer(cfg, vocab, n_vocab)?;
    let layout = w.write(out, mode)?;
    let check = GgufFile::open(out)
        .map_err(anyhow::Error::from)
        .and_then(|g| crate::describe::describe(&g).map_err(anyhow::Error::from));
    if let Err(e) = check {
        let _ = std::fs::remove_file(out);
        return Err(e.context("the synthesized model does not describe as a llama model"));
    }
    Ok(layout)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let cfg = args.config();
    let mode = if args.header_only {
        WriteMode::HeaderOnly
    } else {
        WriteMode::Full
    };
    let start = std::time::Instant::now();
    let layout = synthesize(&cfg, args.vocab_from.as_deref(), &args.output, mode)?;
    let params: u64 = layout.tensors.iter().map(|t| t.n_elements).sum();
    eprintln!(
        "mcc synth: wrote {} ({} tensors, {:.1}M params, {}{}) in {:.1}s",
        args.output.display(),
        layout.tensors.len(),
        params as f64 / 1e6,
        crate::inspect::size(layout.file_len),
        if args.header_only {
            ", header only"
        } else {
            ""
        },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::describe;

    fn build(cfg: &SynthConfig) -> GgufFile {
        let w = llama_writer(cfg, toy_vocab(cfg.n_vocab).unwrap(), cfg.n_vocab).unwrap();
        GgufFile::from_bytes("synth.gguf", w.to_bytes(WriteMode::Full).unwrap()).unwrap()
    }

    #[test]
    fn gpt2_byte_map_is_a_bijection_onto_the_known_points() {
        let chars: std::collections::HashSet<char> = (0..=255).map(gpt2_byte_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(gpt2_byte_char(b' '), 'Ġ');
        assert_eq!(gpt2_byte_char(b'\n'), 'Ċ');
        assert_eq!(gpt2_byte_char(0), 'Ā');
        assert_eq!(gpt2_byte_char(b'a'), 'a');
        assert_eq!(gpt2_byte_char(0xad), '\u{143}'); // soft hyphen, the 68th and last remapped byte
    }

    #[test]
    fn tiny_describes_with_its_shape() {
        let cfg = SynthConfig::tiny();
        let g = build(&cfg);
        let d = describe(&g).unwrap();
        assert_eq!(
            (
                d.n_embd,
                d.n_layer,
                d.n_head,
                d.n_head_kv,
                d.head_dim,
                d.n_ff,
                d.n_vocab
            ),
            (256, 2, 4, 2, 64, 512, 512)
        );
        assert!(d.output.is_some() && d.rope_freqs.is_none());
        assert_eq!(d.file_type, Some(0));
        assert_eq!(d.tokenizer.tokens[256 + 6], "Ġthe");
        assert_eq!(d.tokenizer.bos, Some(264));
        // Norms are ones; weights have std 1/sqrt(fan_in).
        let norm = g.tensor_data(&d.layers[1].ffn_norm);
        assert!(norm.chunks(4).all(|c| c == 1f32.to_le_bytes()));
        let q = g.tensor_data(&d.layers[0].attn_q);
        let x: Vec<f64> = q
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect();
        let var = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        assert!(
            (var * 256.0 - 1.0).abs() < 0.05,
            "var*fan_in = {}",
            var * 256.0
        );
    }

    #[test]
    fn tied_f16_and_seeds() {
        let mut cfg = SynthConfig::tiny();
        cfg.tied = true;
        cfg.weight_type = GgmlType::F16;
        let g = build(&cfg);
        let d = describe(&g).unwrap();
        assert!(d.output.is_none());
        assert_eq!(d.file_type, Some(1));
        assert_eq!(d.layers[0].attn_k.ggml_type, GgmlType::F16);
        assert_eq!(d.output_norm.ggml_type, GgmlType::F32);
        // Different tensors get different data; the same seed gives the same file.
        assert_ne!(
            g.tensor_data(&d.layers[0].ffn_gate),
            g.tensor_data(&d.layers[0].ffn_up)
        );
        assert_eq!(build(&cfg).bytes(), g.bytes());
        cfg.seed += 1;
        assert_ne!(build(&cfg).bytes(), g.bytes());
    }

    #[test]
    fn minitron_header_only_describes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("minitron.gguf");
        let cfg = SynthConfig::minitron();
        let layout = synthesize(&cfg, None, &out, WriteMode::HeaderOnly).unwrap();
        let g = GgufFile::open(&out).unwrap();
        let d = describe(&g).unwrap();
        assert_eq!(
            (
                d.n_embd,
                d.n_layer,
                d.n_head,
                d.n_head_kv,
                d.head_dim,
                d.n_ff
            ),
            (3072, 32, 32, 8, 128, 9216)
        );
        assert_eq!(
            (d.n_vocab, d.n_ctx_train, d.rope_base),
            (128256, 131072, 500000.0)
        );
        assert!(d.output.is_some());
        // 4.5B F32 weights, 18 GB, all of it a hole.
        assert_eq!(g.file_len(), layout.file_len);
        assert!(layout.file_len > 18_000_000_000);
        let rf = d.rope_freqs.as_ref().unwrap();
        assert_eq!(rf.dims, vec![64]);
        // Header-only files hold no data, so the factors are checked on the formula
        // (and read back from a full file in `full_write_of_rope_freqs_reads_back`).
        let f = Llama3RopeScaling::LLAMA_3_1.factors(500000.0, 128);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(
            f.windows(2).all(|p| p[0] <= p[1]),
            "factors grow with wavelength"
        );
    }

    #[test]
    fn llama3_factors_match_the_formula_at_the_boundaries() {
        // base 500000, dim 128: wavelength 2π·base^(2i/128). λ_hi = 2048, λ_lo = 8192.
        let f = Llama3RopeScaling::LLAMA_3_1.factors(500000.0, 128);
        for (i, &x) in f.iter().enumerate() {
            let lambda = std::f64::consts::TAU * 500000f64.powf(2.0 * i as f64 / 128.0);
            if lambda < 2048.0 * 0.999 {
                assert_eq!(x, 1.0, "i={i}");
            } else if lambda > 8192.0 * 1.001 {
                assert_eq!(x, 8.0, "i={i}");
            } else {
                let s = (8192.0 / lambda - 1.0) / 3.0;
                let want = 1.0 / ((1.0 - s) / 8.0 + s);
                assert!((x as f64 - want).abs() < 1e-3, "i={i}: {x} vs {want}");
            }
        }
        // Some frequencies fall in each region.
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
    }

    #[test]
    fn full_write_of_rope_freqs_reads_back() {
        let mut cfg = SynthConfig::tiny();
        cfg.rope_scaling = Some(Llama3RopeScaling::LLAMA_3_1);
        let g = build(&cfg);
        let d = describe(&g).unwrap();
        let rf = d.rope_freqs.unwrap();
        let got: Vec<f32> = g
            .tensor_data(&rf)
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, Llama3RopeScaling::LLAMA_3_1.factors(10000.0, 64));
    }

    #[test]
    fn bad_configs_are_errors() {
        let mut c = SynthConfig::tiny();
        c.n_head_kv = 3;
        assert!(llama_writer(&c, vec![], 10)
            .unwrap_err()
            .to_string()
            .contains("multiple"));
        let mut c = SynthConfig::tiny();
        c.head_dim = 63;
        assert!(llama_writer(&c, vec![], 10)
            .unwrap_err()
            .to_string()
            .contains("even"));
        assert!(toy_vocab(100)
            .unwrap_err()
            .to_string()
            .contains("at least 266"));
    }
}
