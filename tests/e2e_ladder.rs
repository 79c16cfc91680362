//! `mcc ladder` on SmolLM2-135M-Instruct's F16 file with the ladder's importance matrix
//! (scripts/make-models.sh, llama.cpp's tools): for a few types the files it writes must
//! be llama-quantize's byte for byte (they record the matrix's path as given, so the
//! test passes the path make-models.sh gave), and the table must have one row per type
//! with F16, the model itself, as the 100% baseline. IQ2_XS, Q4_0 and F16 at one chunk
//! of 512 tokens keep it to three builds (~25 s each warm); an unoptimised test build
//! quantizes Q8_0 only (the searches of the others take minutes there) and says so.
//! The build directory is kept between runs so that a rerun relinks nothing.
//!
//! Bad input (a missing model, text or calibration file, an unknown type, an output
//! path that is a file) must fail with an error naming it and write nothing.
//!
//! Without the ladder's files the test prints a SKIPPED line and passes.

use std::io::Write;
use std::path::{Path, PathBuf};

use mcc::ladder::Args;
use mcc_e2e::{cache_dir, scratch_dir};

const STEM: &str = "SmolLM2-135M-Instruct";

/// Writes a line to the real stderr: libtest captures `eprintln!`, but a skip must show.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The ladder's F16 model, importance matrix and calibration text, and the evaluation
/// text; `None` (after a SKIPPED line) when one is missing.
fn inputs(test: &str) -> Option<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let dir = cache_dir().join("models/ladder");
    let f16 = dir.join(format!("{STEM}.F16.gguf"));
    let imatrix = dir.join("imatrix.gguf");
    let calib = dir.join("calibration.txt");
    let eval = cache_dir().join("data/ppl-text.txt");
    for p in [&f16, &imatrix, &calib, &eval] {
        if !p.is_file() {
            announce(&format!(
                "SKIPPED {test}: {} is missing (scripts/make-models.sh makes the ladder, \
                 scripts/make-ppl-text.py the text)",
                p.display()
            ));
            return None;
        }
    }
    Some((f16, imatrix, calib, eval))
}

fn args(model: &Path, eval: &Path, out: &Path) -> Args {
    Args {
        model: model.to_path_buf(),
        file: None,
        imatrix: None,
        eval: eval.to_path_buf(),
        output: out.to_path_buf(),
        types: vec![],
        ctx_size: 512,
        imatrix_chunks: None,
        eval_chunks: Some(1),
        threads: Some(2),
        target_cpu: None,
        build_dir: Some(scratch_dir().join("ladder")),
        keep: false,
    }
}

#[test]
fn ladder_writes_llama_quantize_s_files_and_the_table() {
    let Some((f16, imatrix, _, eval)) = inputs("ladder_writes_llama_quantize_s_files") else {
        return;
    };
    let types: &[&str] = if cfg!(debug_assertions) {
        announce("e2e_ladder: unoptimised build, quantizing Q8_0 only (--release: IQ2_XS, Q4_0)");
        &["Q8_0"]
    } else {
        &["IQ2_XS", "Q4_0"]
    };
    let out = scratch_dir().join(format!("ladder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut a = args(&f16, &eval, &out);
    a.imatrix = Some(imatrix);
    a.types = types
        .iter()
        .map(|t| t.to_string())
        .chain(["F16".into()])
        .collect();
    mcc::ladder::run(&a).unwrap_or_else(|e| panic!("mcc ladder: {e:#}"));

    let golden_dir = cache_dir().join("models/ladder");
    for t in types {
        let name = format!("{STEM}.{t}.gguf");
        let ours = std::fs::read(out.join(&name)).unwrap();
        let theirs = std::fs::read(golden_dir.join(&name)).unwrap();
        assert!(
            ours == theirs,
            "{name}: mcc ladder's file differs from llama-quantize's ({} vs {} bytes)",
            ours.len(),
            theirs.len()
        );
    }
    // F16 is the model itself: no copy in the output directory.
    assert!(!out.join(format!("{STEM}.F16.gguf")).exists());
    assert!(!out.join("imatrix.gguf").exists());

    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0], "| Quant | Size (MB) | PPL | Size (%) | Accuracy (%) | PPL error rate |",
        "{table}"
    );
    assert_eq!(lines.len(), 2 + types.len() + 1, "{table}");
    // Smallest first, F16 last at 100%.
    let quants: Vec<&str> = lines[2..]
        .iter()
        .map(|l| l.split('|').nth(1).unwrap().trim())
        .collect();
    let want: Vec<&str> = types.iter().copied().chain(["F16"]).collect();
    assert_eq!(quants, want, "{table}");
    let last = lines.last().unwrap();
    assert!(
        last.contains("| 258.3 |") && last.contains("| 100.00 | 100.00 |"),
        "{table}"
    );
    for line in &lines[2..] {
        let ppl: f64 = line.split('|').nth(3).unwrap().trim().parse().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{line}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let Some((f16, _, calib, eval)) = inputs("bad_input_is_a_clear_error") else {
        return;
    };
    let out = scratch_dir().join(format!("ladder-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let fails = |a: &Args, needles: &[&str]| {
        let e = format!("{:#}", mcc::ladder::run(a).unwrap_err());
        for n in needles {
            assert!(e.contains(n), "expected {n:?} in: {e}");
        }
        assert!(!out.exists(), "{} was written for: {e}", out.display());
    };
    let with_calib = |model: &Path| {
        let mut a = args(model, &eval, &out);
        a.file = Some(calib.clone());
        a
    };

    fails(
        &with_calib(Path::new("/nonexistent/model.F16.gguf")),
        &["/nonexistent/model.F16.gguf: no such file"],
    );
    let mut a = with_calib(&f16);
    a.types = vec!["Q4_K_M".into(), "IQ2_XXXS".into()];
    fails(&a, &["--types", "\"IQ2_XXXS\"", "IQ2_XXS", "Q8_0"]);
    let mut a = with_calib(&f16);
    a.file = Some(PathBuf::from("/nonexistent/calib.txt"));
    fails(&a, &["/nonexistent/calib.txt: no such file (-f)"]);
    let mut a = with_calib(&f16);
    a.eval = PathBuf::from("/nonexistent/eval.txt");
    fails(&a, &["/nonexistent/eval.txt: no such file (--eval)"]);
    let mut a = args(&f16, &eval, &out);
    a.imatrix = Some(calib.clone());
    fails(&a, &["calibration.txt"]);

    // -o naming a file: an error, and the file is left as it was.
    let file = scratch_dir().join(format!("ladder-file-{}", std::process::id()));
    std::fs::write(&file, "keep me").unwrap();
    let mut a = with_calib(&f16);
    a.output = file.clone();
    let e = format!("{:#}", mcc::ladder::run(&a).unwrap_err());
    assert!(
        e.contains(&format!(
            "{}: exists and is not a directory",
            file.display()
        )),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    std::fs::remove_file(&file).unwrap();
}
