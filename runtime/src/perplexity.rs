//! Perplexity and KL divergence, by llama.cpp's method, so that its tables can be
//! reproduced with compiled binaries.
//!
//! The text is tokenized once (BOS per the tokenizer, special tokens not parsed) and cut
//! into non-overlapping chunks of `n_ctx` tokens. Each chunk is evaluated from an empty
//! cache, with its first token replaced by BOS when the tokenizer adds one, and only the
//! second half is scored: the logits at positions `n_ctx/2 .. n_ctx-1` predict the next
//! token. The estimate is `exp(mean nll)` with the standard error of the mean of the nll.
//!
//! `--kl-divergence-base FILE` saves the base model's log-probabilities in llama.cpp's
//! file format (so either engine can read the other's file); `--kl-divergence` compares
//! a model against such a file: KLD, top-1 agreement and Δp.

use std::io::{Read, Write};

use crate::model::{Ctx, Model};

/// Logit range kept in the saved log-probabilities: anything more than this below the
/// maximum is stored as the minimum.
const LOGIT_RANGE: f32 = 16.0;

/// `round(x)` with ties to even, for |x| < 2^22, as llama.cpp's saved files are made.
fn nearest_int(x: f32) -> i32 {
    ((x + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// max, and the f64 sum of `exp(l - max)` over one row of logits.
fn max_and_sum_exp(logits: &[f32]) -> (f32, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    (max, sum)
}

/// Negative log-likelihood of `tok` under `logits`.
pub(crate) fn nll(logits: &[f32], tok: u32) -> f64 {
    let (max, sum) = max_and_sum_exp(logits);
    -((logits[tok as usize] - max) as f64 - sum.ln())
}

/// Words per saved row: two f32 (scale, min log-prob) as four u16, then the vocabulary
/// rounded up to even.
fn saved_row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Compresses one row of logits into `row` (llama.cpp's format: 16-bit log-probs over
/// the top `LOGIT_RANGE` of logits) and returns the nll of `tok`.
fn save_row(logits: &[f32], tok: u32, row: &mut [u16]) -> f64 {
    let (max, sum) = max_and_sum_exp(logits);
    let min = logits
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min)
        .max(max - LOGIT_RANGE);
    let log_sum = sum.ln() as f32;
    let min_log_prob = min - max - log_sum;
    let scale = (max - min) / 65535.0;
    let (head, body) = row.split_at_mut(4);
    for (pair, v) in head.chunks_exact_mut(2).zip([scale, min_log_prob]) {
        let bits = v.to_bits();
        pair[0] = bits as u16;
        pair[1] = (bits >> 16) as u16;
    }
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for (q, &l) in body.iter_mut().zip(logits) {
        *q = if scale != 0.0 && l > min {
            nearest_int(inv * (l - min)) as u16
        } else {
            0
        };
    }
    (max + log_sum - logits[tok as usize]) as f64
}

/// Running sums for the KL-divergence report.
#[derive(Default)]
struct KldSums {
    nll: f64,
    nll2: f64,
    nll_base: f64,
    nll_base2: f64,
    nll_nll_base: f64,
    kld: f64,
    kld2: f64,
    p_diff: f64,
    p_diff2: f64,
    p_diff4: f64,
    same_top: usize,
    count: usize,
    klds: Vec<f32>,
    p_diffs: Vec<f32>,
}

impl KldSums {
    /// Adds one position: this model's logits against the base's saved row.
    fn add(&mut self, logits: &[f32], base: &[u16], tok: u32) {
        let f = |i: usize| f32::from_bits(base[i] as u32 | (base[i + 1] as u32) << 16);
        let (scale, min_log_prob) = (f(0), f(2));
        let base = &base[4..];
        let (max, sum) = max_and_sum_exp(logits);
        let top = logits
            .iter()
            .enumerate()
            .fold(0, |best, (i, &l)| if l > logits[best] { i } else { best });
        let log_sum = sum.ln() as f32;
        let nll = max + log_sum - logits[tok as usize];
        let nll_base = -(scale * base[tok as usize] as f32 + min_log_prob);
        let log_z = max + log_sum;
        let mut kld = 0.0f64;
        let (mut top_base, mut top_base_lp) = (0, f32::NEG_INFINITY);
        for (i, (&q, &l)) in base.iter().zip(logits).enumerate() {
            let lp_base = scale * q as f32 + min_log_prob;
            if lp_base > top_base_lp {
                (top_base, top_base_lp) = (i, lp_base);
            }
            if lp_base > -LOGIT_RANGE {
                kld += (lp_base.exp() * (lp_base - l + log_z)) as f64;
            }
        }
        let p_diff = (-nll).exp() - (-nll_base).exp();
        self.nll += nll as f64;
        self.nll2 += (nll * nll) as f64;
        self.nll_base += nll_base as f64;
        self.nll_base2 += (nll_base * nll_base) as f64;
        self.nll_nll_base += (nll * nll_base) as f64;
        self.kld += kld;
        self.kld2 += kld * kld;
        let d2 = (p_diff * p_diff) as f64;
        self.p_diff += p_diff as f64;
        self.p_diff2 += d2;
        self.p_diff4 += d2 * d2;
        self.same_top += usize::from(top == top_base);
        self.count += 1;
        self.klds.push(kld as f32);
        self.p_diffs.push(p_diff);
    }
}

/// Mean and standard error of the mean from a sum and a sum of squares.
fn mean_err(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / n as f64;
    let var = sum2 / n as f64 - mean * mean;
    (
        mean,
        if var > 0.0 && n > 10 {
            (var / (n - 1) as f64).sqrt()
        } else {
            0.0
        },
    )
}

fn covariance(a: f64, b: f64, ab: f64, n: usize) -> f64 {
    if n < 10 {
        return 0.0;
    }
    let n_f = n as f64;
    (ab / n_f - (a / n_f) * (b / n_f)) / (n_f - 1.0)
}

/// Linear interpolation between sorted values, as llama.cpp reports percentiles.
fn percentile(sorted: &[f32], fraction: f32) -> f32 {
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f32;
    let i = p as usize;
    let t = p - i as f32;
    (1.0 - t) * sorted[i] + t * sorted[(i + 1).min(sorted.len() - 1)]
}

/// What a perplexity run does besides scoring.
pub enum Mode<'a> {
    /// Score the text.
    Perplexity,
    /// Score the text and save the log-probabilities to a base file.
    SaveBase(&'a std::path::Path),
    /// Compare against a base file (its tokens replace the text).
    KlDivergence(&'a std::path::Path),
}

/// Result of a perplexity run.
pub struct Perplexity {
    pub ppl: f64,
    pub err: f64,
    pub n_chunks: usize,
    pub n_scored: usize,
}

/// Runs llama.cpp's perplexity over `tokens` (already tokenized with BOS per the model) in
/// chunks of `ctx.n_ctx()` tokens, printing progress in llama.cpp's format to `out`.
pub fn perplexity<M: Model>(
    ctx: &mut Ctx,
    tokens: &[u32],
    bos: Option<u32>,
    max_chunks: Option<usize>,
    mode: &Mode,
    out: &mut dyn Write,
) -> Result<Perplexity, String> {
    let n_ctx = ctx.n_ctx();
    let n_vocab = M::CONFIG.n_vocab;
    let first = n_ctx / 2;
    let n_scored_per_chunk = n_ctx - first - 1;
    let row_len = saved_row_len(n_vocab);

    let mut base_file = None;
    let mut save_file = None;
    let mut kld = KldSums::default();
    let owned_tokens;
    let (tokens, n_chunk) = match mode {
        Mode::KlDivergence(path) => {
            let mut f =
                std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let (file_ctx, file_vocab, chunks, toks) =
                read_base_header(&mut f).map_err(|e| format!("{}: {e}", path.display()))?;
            if file_ctx != n_ctx || file_vocab != n_vocab {
                return Err(format!(
                    "{}: made with context {file_ctx} and vocabulary {file_vocab}; this run has -c {n_ctx} and vocabulary {n_vocab}",
                    path.display()
                ));
            }
            base_file = Some(std::io::BufReader::new(f));
            owned_tokens = toks;
            (
                &owned_tokens[..],
                chunks.min(max_chunks.unwrap_or(usize::MAX)),
            )
        }
        _ => {
            if tokens.len() < 2 * n_ctx {
                return Err(format!(
                    "the text tokenizes to {} tokens; perplexity with a context of {n_ctx} needs at least {}",
                    tokens.len(),
                    2 * n_ctx
                ));
            }
            let n = (tokens.len() / n_ctx).min(max_chunks.unwrap_or(usize::MAX));
            if let Mode::SaveBase(path) = mode {
                let f =
                    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut w = std::io::BufWriter::new(f);
                let mut header = b"_logits_".to_vec();
                for v in [n_ctx as u32, n_vocab as u32, n as u32] {
                    header.extend_from_slice(&v.to_le_bytes());
                }
                tokens[..n * n_ctx]
                    .iter()
                    .for_each(|t| header.extend_from_slice(&t.to_le_bytes()));
                w.write_all(&header)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                save_file = Some((w, *path));
            }
            (tokens, n)
        }
    };

    let (mut nll_sum, mut nll2_sum, mut count) = (0f64, 0f64, 0usize);
    let mut rows = vec![0u16; n_scored_per_chunk * row_len];
    let mut chunk = vec![0u32; n_ctx];
    for c in 0..n_chunk {
        chunk.copy_from_slice(&tokens[c * n_ctx..(c + 1) * n_ctx]);
        if let Some(bos) = bos {
            chunk[0] = bos;
        }
        let t0 = std::time::Instant::now();
        let logits = ctx.eval::<M>(&chunk, 0, first);
        if c == 0 {
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "perplexity: {secs:.2} seconds per pass - ETA {:.2} minutes",
                secs * n_chunk as f64 / 60.0
            );
        }
        let targets = &tokens[c * n_ctx + first + 1..(c + 1) * n_ctx];
        if let Some(base) = base_file.as_mut() {
            let mut bytes = vec![0u8; rows.len() * 2];
            base.read_exact(&mut bytes)
                .map_err(|e| format!("base file: chunk {}: {e}", c + 1))?;
            for (r, b) in rows.iter_mut().zip(bytes.chunks_exact(2)) {
                *r = u16::from_le_bytes([b[0], b[1]]);
            }
            for (i, &tok) in targets.iter().enumerate() {
                kld.add(
                    &logits[i * n_vocab..(i + 1) * n_vocab],
                    &rows[i * row_len..(i + 1) * row_len],
                    tok,
                );
            }
            print_kld_progress(out, c + 1, &kld);
            continue;
        }
        for (i, &tok) in targets.iter().enumerate() {
            let row = &logits[i * n_vocab..(i + 1) * n_vocab];
            let v = match save_file {
                Some(_) => save_row(row, tok, &mut rows[i * row_len..(i + 1) * row_len]),
                None => nll(row, tok),
            };
            nll_sum += v;
            nll2_sum += v * v;
        }
        if let Some((w, path)) = save_file.as_mut() {
            let bytes: Vec<u8> = rows.iter().flat_map(|r| r.to_le_bytes()).collect();
            w.write_all(&bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        count += n_scored_per_chunk;
        let _ = write!(out, "[{}]{:.4},", c + 1, (nll_sum / count as f64).exp());
        let _ = out.flush();
    }
    let _ = writeln!(out);
    if let Some((mut w, path)) = save_file {
        w.flush().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if base_file.is_some() {
        print_kld_summary(out, &mut kld);
        let (lp, lp_err) = mean_err(kld.nll, kld.nll2, kld.count);
        return Ok(Perplexity {
            ppl: lp.exp(),
            err: lp.exp() * lp_err,
            n_chunks: n_chunk,
            n_scored: kld.count,
        });
    }
    let mean = nll_sum / count as f64;
    let ppl = mean.exp();
    let var = nll2_sum / count as f64 - mean * mean;
    let err = if var > 0.0 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    let _ = writeln!(out, "Final estimate: PPL = {ppl:.4} +/- {err:.5}");
    Ok(Perplexity {
        ppl,
        err,
        n_chunks: n_chunk,
        n_scored: count,
    })
}

/// Reads a base file's header: (n_ctx, n_vocab, n_chunk, tokens).
fn read_base_header(f: &mut impl Read) -> Result<(usize, usize, usize, Vec<u32>), String> {
    let mut head = [0u8; 20];
    f.read_exact(&mut head)
        .map_err(|_| "too short for a log-probabilities file".to_string())?;
    if &head[..8] != b"_logits_" {
        return Err("not a log-probabilities file (no _logits_ magic)".into());
    }
    let word =
        |i: usize| u32::from_le_bytes(head[8 + 4 * i..12 + 4 * i].try_into().unwrap()) as usize;
    let (n_ctx, n_vocab, n_chunk) = (word(0), word(1), word(2));
    if n_ctx < 2 || n_vocab == 0 || n_chunk == 0 || n_ctx.saturating_mul(n_chunk) > 1 << 30 {
        return Err(format!(
            "implausible header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}"
        ));
    }
    let mut bytes = vec![0u8; n_ctx * n_chunk * 4];
    f.read_exact(&mut bytes)
        .map_err(|_| "truncated token list".to_string())?;
    let tokens: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(format!(
            "token id {bad} out of range for vocabulary {n_vocab}"
        ));
    }
    Ok((n_ctx, n_vocab, n_chunk, tokens))
}

fn print_kld_progress(out: &mut dyn Write, chunk: usize, k: &KldSums) {
    if chunk == 1 {
        let _ = writeln!(out, "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p");
    }
    let (lp, lp_err) = mean_err(k.nll, k.nll2, k.count);
    let (lb, lb_err) = mean_err(k.nll_base, k.nll_base2, k.count);
    let cov = covariance(k.nll, k.nll_base, k.nll_nll_base, k.count);
    let ratio_err = (lp_err * lp_err + lb_err * lb_err - 2.0 * cov)
        .max(0.0)
        .sqrt();
    let (kl, kl_err) = mean_err(k.kld, k.kld2, k.count);
    let (mse, mse_err) = mean_err(k.p_diff2, k.p_diff4, k.count);
    let rms = mse.sqrt();
    let top = k.same_top as f64 / k.count as f64;
    let top_err = (top * (1.0 - top) / (k.count as f64 - 1.0)).sqrt();
    let _ = writeln!(
        out,
        "{chunk:4}    {:9.4} ± {:9.4}    {:10.5} ± {:10.5}    {kl:10.5} ± {kl_err:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %",
        lp.exp(),
        lp.exp() * lp_err,
        lp - lb,
        ratio_err,
        100.0 * rms,
        100.0 * 0.5 / rms * mse_err,
        100.0 * top,
        100.0 * top_err
    );
}

fn print_kld_summary(out: &mut dyn Write, k: &mut KldSums) {
    if k.count < 100 {
        return;
    }
    k.klds.sort_by(f32::total_cmp);
    k.p_diffs.sort_by(f32::total_cmp);
    let (lp, lp_err) = mean_err(k.nll, k.nll2, k.count);
    let (lb, lb_err) = mean_err(k.nll_base, k.nll_base2, k.count);
    let cov = covariance(k.nll, k.nll_base, k.nll_nll_base, k.count);
    let (ppl, ppl_base) = (lp.exp(), lb.exp());
    let ratio = lp - lb;
    let ratio_err = (lp_err * lp_err + lb_err * lb_err - 2.0 * cov)
        .max(0.0)
        .sqrt();
    let diff_err = ((ppl * lp_err).powi(2) + (ppl_base * lb_err).powi(2)
        - 2.0 * ppl * ppl_base * cov)
        .max(0.0)
        .sqrt();
    let _ = writeln!(out, "====== Perplexity statistics ======");
    let _ = writeln!(
        out,
        "Mean PPL(Q)                   : {ppl:10.6} ± {:10.6}",
        ppl * lp_err
    );
    let _ = writeln!(
        out,
        "Mean PPL(base)                : {ppl_base:10.6} ± {:10.6}",
        ppl_base * lb_err
    );
    let _ = writeln!(
        out,
        "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
        100.0 * cov / (lp_err * lb_err)
    );
    let _ = writeln!(
        out,
        "Mean ln(PPL(Q)/PPL(base))     : {ratio:10.6} ± {ratio_err:10.6}"
    );
    let _ = writeln!(
        out,
        "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}",
        ratio.exp(),
        ratio.exp() * ratio_err
    );
    let _ = writeln!(
        out,
        "Mean PPL(Q)-PPL(base)         : {:10.6} ± {diff_err:10.6}",
        ppl - ppl_base
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "====== KL divergence statistics ======");
    let (kl, kl_err) = mean_err(k.kld, k.kld2, k.count);
    let _ = writeln!(out, "Mean    KLD: {kl:10.6} ± {kl_err:10.6}");
    let ks = &k.klds;
    let median = |v: &[f32]| {
        if v.len().is_multiple_of(2) {
            0.5 * (v[v.len() / 2] + v[v.len() / 2 - 1])
        } else {
            v[v.len() / 2]
        }
    };
    let _ = writeln!(out, "Maximum KLD: {:10.6}", ks[ks.len() - 1]);
    for (label, f) in [
        ("99.9%", 0.999),
        ("99.0%", 0.99),
        ("95.0%", 0.95),
        ("90.0%", 0.9),
    ] {
        let _ = writeln!(out, "{label}   KLD: {:10.6}", percentile(ks, f));
    }
    let _ = writeln!(out, "Median  KLD: {:10.6}", median(ks));
    for (label, f) in [
        ("10.0%", 0.1),
        (" 5.0%", 0.05),
        (" 1.0%", 0.01),
        (" 0.1%", 0.001),
    ] {
        let _ = writeln!(out, "{label}   KLD: {:10.6}", percentile(ks, f));
    }
    let _ = writeln!(out, "Minimum KLD: {:10.6}", ks[0]);
    let _ = writeln!(out);
    let _ = writeln!(out, "====== Token probability statistics ======");
    let (pd, pd_err) = mean_err(k.p_diff, k.p_diff2, k.count);
    let ps = &k.p_diffs;
    let _ = writeln!(
        out,
        "Mean    Δp: {:6.3} ± {:5.3} %",
        100.0 * pd,
        100.0 * pd_err
    );
    let _ = writeln!(out, "Maximum Δp: {:6.3}%", 100.0 * ps[ps.len() - 1]);
    for (label, f) in [
        ("99.9%", 0.999),
        ("99.0%", 0.99),
        ("95.0%", 0.95),
        ("90.0%", 0.9),
        ("75.0%", 0.75),
    ] {
        let _ = writeln!(out, "{label}   Δp: {:6.3}%", 100.0 * percentile(ps, f));
    }
    let _ = writeln!(out, "Median  Δp: {:6.3}%", 100.0 * median(ps));
    for (label, f) in [
        ("25.0%", 0.25),
        ("10.0%", 0.1),
        (" 5.0%", 0.05),
        (" 1.0%", 0.01),
        (" 0.1%", 0.001),
    ] {
        let _ = writeln!(out, "{label}   Δp: {:6.3}%", 100.0 * percentile(ps, f));
    }
    let _ = writeln!(out, "Minimum Δp: {:6.3}%", 100.0 * ps[0]);
    let (mse, mse_err) = mean_err(k.p_diff2, k.p_diff4, k.count);
    let _ = writeln!(
        out,
        "RMS Δp    : {:6.3} ± {:5.3} %",
        100.0 * mse.sqrt(),
        100.0 * 0.5 / mse.sqrt() * mse_err
    );
    let top = k.same_top as f64 / k.count as f64;
    let _ = writeln!(
        out,
        "Same top p: {:6.3} ± {:5.3} %",
        100.0 * top,
        100.0 * (top * (1.0 - top) / (k.count as f64 - 1.0)).sqrt()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(65534.6), 65535);
        assert_eq!(nearest_int(0.49), 0);
    }

    #[test]
    fn nll_is_minus_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0, -1.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for t in 0..4 {
            let want = -((logits[t] as f64).exp() / z).ln();
            assert!((nll(&logits, t as u32) - want).abs() < 1e-6);
        }
    }

    #[test]
    fn saved_rows_round_trip_to_log_probs() {
        let logits: Vec<f32> = (0..1001)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 10.0)
            .collect();
        let mut row = vec![0u16; saved_row_len(logits.len())];
        let v = save_row(&logits, 17, &mut row);
        assert!((v - nll(&logits, 17)).abs() < 1e-4);
        // A model identical to the base has KLD ~0 and the same top token.
        let mut k = KldSums::default();
        k.add(&logits, &row, 17);
        assert!(k.kld.abs() < 1e-3, "kld {}", k.kld);
        assert_eq!(k.same_top, 1);
        assert!(k.p_diff.abs() < 1e-3);
        // A shifted model disagrees.
        let other: Vec<f32> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| if i == 3 { l + 30.0 } else { *l })
            .collect();
        let mut k2 = KldSums::default();
        k2.add(&other, &row, 17);
        assert!(k2.kld > 1.0);
        assert_eq!(k2.same_top, 0);
    }

    #[test]
    fn base_header_rejects_garbage() {
        assert!(read_base_header(&mut &b"nonsense"[..]).is_err());
        let mut f = b"_logits_".to_vec();
        for v in [4u32, 10, 1] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&[0u8; 8]);
        assert!(read_base_header(&mut &f[..])
            .unwrap_err()
            .contains("truncated"));
        f.extend_from_slice(&[0u8; 4]);
        f.extend_from_slice(&99u32.to_le_bytes());
        assert!(read_base_header(&mut &f[..])
            .unwrap_err()
            .contains("out of range"));
    }
}
