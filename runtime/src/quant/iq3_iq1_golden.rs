//! The golden check of the IQ3_XXS, IQ3_S, IQ1_S and IQ1_M quantizers against ggml. ggml
//! aborts on some of the golden rows for these formats (IQ1_S on every row without an
//! importance vector; all four on some rows of NaNs, infinities or negative
//! importances), so `scripts/quantize_golden.c` writes their files with a flag per run
//! (see its IQ3/IQ1 block), and where ggml aborted the quantizer must panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::testing::{block_bytes, zeroed_blocks};
use super::Quantize;

/// One golden row: its values, its importance vector, and ggml's bytes for the run
/// without the importances and the run with them (`None`: ggml aborted).
struct Case {
    row: usize,
    x: Vec<f32>,
    imatrix: Vec<f32>,
    plain: Option<Vec<u8>>,
    weighted: Option<Vec<u8>>,
}

/// The cases of format `W` in `golden_quantize/` (or the directory `MCC_QUANTIZE_GOLDEN`
/// names).
fn cases<W: Quantize>() -> Vec<Case> {
    let dir = std::env::var("MCC_QUANTIZE_GOLDEN")
        .unwrap_or_else(|_| format!("{}/src/quant/golden_quantize", env!("CARGO_MANIFEST_DIR")));
    let read = |name: &str| {
        let path = format!("{dir}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let (inputs, outputs) = (read("inputs.bin"), read(&format!("{}.bin", W::NAME)));
    let word = |b: &[u8], at: &mut usize| {
        let w = u32::from_le_bytes(b[*at..*at + 4].try_into().expect("4 bytes")) as usize;
        *at += 4;
        w
    };
    let floats = |b: &[u8], at: &mut usize, n: usize| -> Vec<f32> {
        let v = b[*at..*at + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        *at += 4 * n;
        v
    };
    let mut at = 0;
    let imatrices: Vec<Vec<f32>> = (0..word(&inputs, &mut at))
        .map(|_| {
            let width = word(&inputs, &mut at);
            floats(&inputs, &mut at, width)
        })
        .collect();
    let rows: Vec<(Vec<f32>, usize)> = (0..word(&inputs, &mut at))
        .map(|_| {
            let width = word(&inputs, &mut at);
            let imatrix = word(&inputs, &mut at);
            (floats(&inputs, &mut at, width), imatrix)
        })
        .collect();
    assert_eq!(at, inputs.len(), "{dir}/inputs.bin: size");

    let mut at = 0;
    let block_bytes = word(&outputs, &mut at);
    let block_elems = word(&outputs, &mut at);
    assert_eq!(
        (block_bytes, block_elems),
        (std::mem::size_of::<W::Block>(), W::BLOCK_ELEMS),
        "{}: block size and elements in the golden file",
        W::NAME
    );
    let cases = (0..word(&outputs, &mut at))
        .map(|_| {
            let row = word(&outputs, &mut at);
            let runs = word(&outputs, &mut at);
            let (x, imatrix) = &rows[row];
            let n = x.len() / block_elems * block_bytes;
            let mut take = |finished: bool| {
                finished.then(|| {
                    at += n;
                    outputs[at - n..at].to_vec()
                })
            };
            let plain = take(runs & 1 != 0);
            let weighted = take(runs & 2 != 0);
            Case {
                row,
                x: x.clone(),
                imatrix: imatrices[*imatrix].clone(),
                plain,
                weighted,
            }
        })
        .collect();
    assert_eq!(at, outputs.len(), "{dir}/{}.bin: size", W::NAME);
    cases
}

/// `W::quantize_row` on every golden row, with and without the importance vector, must
/// give ggml's bytes exactly, and panic where ggml aborted. Reports every block that
/// differs and every run that should (not) have panicked, and fails if there is one.
/// Returns the number of blocks compared and of runs that panicked as ggml's aborted.
pub(crate) fn check_quantize_or_abort<W: Quantize>() -> (usize, usize) {
    let cases = cases::<W>();
    assert!(!cases.is_empty(), "{}: no golden rows", W::NAME);
    let size = std::mem::size_of::<W::Block>();
    let mut failures = Vec::new();
    let (mut n_blocks, mut n_aborts) = (0, 0);
    for case in &cases {
        for (run, imatrix, want) in [
            ("without imatrix", None, &case.plain),
            ("with imatrix", Some(&case.imatrix[..]), &case.weighted),
        ] {
            let mut out = zeroed_blocks::<W>(case.x.len() / W::BLOCK_ELEMS);
            let got = catch_unwind(AssertUnwindSafe(|| {
                W::quantize_row(&case.x, imatrix, &mut out)
            }));
            match (got, want) {
                (Ok(()), Some(want)) => {
                    n_blocks += out.len();
                    let got = block_bytes::<W>(&out);
                    for (b, (g, w)) in got
                        .chunks_exact(size)
                        .zip(want.chunks_exact(size))
                        .enumerate()
                    {
                        if let Some(k) = g.iter().zip(w).position(|(a, b)| a != b) {
                            failures.push(format!(
                                "{} row {} block {b} {run}: byte {k} is {:#04x}, ggml {:#04x}\n  \
                                 ours {g:02x?}\n  ggml {w:02x?}",
                                W::NAME,
                                case.row,
                                g[k],
                                w[k]
                            ));
                        }
                    }
                }
                (Err(_), None) => n_aborts += 1,
                (Ok(()), None) => failures.push(format!(
                    "{} row {} {run}: ggml aborts, ours finished",
                    W::NAME,
                    case.row
                )),
                (Err(_), Some(_)) => failures.push(format!(
                    "{} row {} {run}: ours panicked, ggml finished",
                    W::NAME,
                    case.row
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures ({n_blocks} blocks compared):\n{}",
        failures.len(),
        failures[..failures.len().min(8)].join("\n")
    );
    eprintln!(
        "{}: {n_blocks} blocks identical, {n_aborts} runs panic where ggml aborts",
        W::NAME
    );
    (n_blocks, n_aborts)
}
