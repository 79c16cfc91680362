//! Tokenizer ids against llama.cpp, exactly.
//!
//! - llama.cpp's own test vectors (`models/ggml-vocab-*.gguf.inp/.out`, tokenized with
//!   add_special and parse_special off) for llama-bpe, llama-spm, gpt-2 and qwen2;
//! - golden ids from llama.cpp's `llama_tokenize` (`scripts/tokenizer_golden.py`) for a
//!   56 KB multilingual / emoji / code / whitespace text of 232 cases, in both modes
//!   (add_special + parse_special, and neither): full ids for SmolLM2, digests for the
//!   other vocabularies;
//! - start-up time of the Llama 3 vocabulary from its blob.
//!
//! The llama.cpp tree is `$MCC_LLAMA_SRC` (default `~/.cache/mcc/llama.cpp`); models are
//! in `$MCC_MODELS` (default `~/.cache/mcc/models`).

use std::path::PathBuf;
use std::time::Instant;

use mcc::describe::tokenizer::tokenizer_spec;
use mcc::gguf::GgufFile;
use mcc_runtime::tokenizer::{Tokenizer, TokenizerSpec};

fn home_cache(env: &str, rel: &str) -> PathBuf {
    match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/mcc")
            .join(rel),
    }
}

fn llama_src() -> PathBuf {
    home_cache("MCC_LLAMA_SRC", "llama.cpp")
}

fn vocab_path(name: &str) -> PathBuf {
    if name == "smollm2" {
        return home_cache("MCC_MODELS", "models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    }
    llama_src().join(format!("models/ggml-vocab-{name}.gguf"))
}

fn spec(name: &str) -> TokenizerSpec {
    let path = vocab_path(name);
    let g =
        GgufFile::open(&path).unwrap_or_else(|e| panic!("{e} (set MCC_LLAMA_SRC / MCC_MODELS)"));
    tokenizer_spec(&g).unwrap_or_else(|e| panic!("{e}"))
}

fn tokenizer(name: &str) -> Tokenizer {
    Tokenizer::from_spec(&spec(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn data(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn show(tok: &Tokenizer, ids: &[u32]) -> String {
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| format!("{i}:{:?}", String::from_utf8_lossy(tok.token_bytes(i))))
        .collect();
    pieces.join(" ")
}

/// llama.cpp's `.inp`/`.out` vectors: cases separated by `\n__ggml_vocab_test__\n`,
/// one line of ids per case.
fn check_llama_vectors(name: &str) {
    let tok = tokenizer(name);
    let base = llama_src().join(format!("models/ggml-vocab-{name}.gguf"));
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).expect("read .inp");
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).expect("read .out");
    let mut cases: Vec<&str> = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find("\n__ggml_vocab_test__\n") {
            Some(i) => {
                cases.push(&rest[..i]);
                rest = &rest[i + "\n__ggml_vocab_test__\n".len()..];
            }
            None => {
                cases.push(rest);
                rest = "";
            }
        }
    }
    let expected: Vec<&str> = out.lines().collect();
    assert_eq!(cases.len(), expected.len(), "{name}: case count");
    assert!(cases.len() > 30, "{name}: only {} cases", cases.len());
    let mut failures = Vec::new();
    for (text, want) in cases.iter().zip(&expected) {
        let want: Vec<u32> = want
            .split_whitespace()
            .map(|x| x.parse().expect("id"))
            .collect();
        let got = tok.encode(text, false, false);
        if got != want {
            failures.push(format!(
                "{text:?}\n  want {}\n  got  {}",
                show(&tok, &want),
                show(&tok, &got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_cpp_vectors_llama_bpe() {
    check_llama_vectors("llama-bpe");
}

#[test]
fn llama_cpp_vectors_llama_spm() {
    check_llama_vectors("llama-spm");
}

#[test]
fn llama_cpp_vectors_gpt_2() {
    check_llama_vectors("gpt-2");
}

#[test]
fn llama_cpp_vectors_qwen2() {
    check_llama_vectors("qwen2");
}

fn golden_cases() -> Vec<String> {
    data("tokenizer_cases.txt")
        .split("\n__mcc_case__\n")
        .map(str::to_owned)
        .collect()
}

/// FNV-1a 64 over the ids as little-endian u32s (the digest files' format).
fn digest(ids: &[u32]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for b in ids.iter().flat_map(|i| i.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

#[test]
fn golden_smollm2_against_llama_tokenize() {
    let tok = tokenizer("smollm2");
    let cases = golden_cases();
    let ids = data("tokenizer_smollm2.ids");
    let lines: Vec<&str> = ids.lines().collect();
    assert_eq!(cases.len(), lines.len());
    assert!(cases.iter().map(|c| c.len()).sum::<usize>() >= 50_000);
    let parse = |s: &str| -> Vec<u32> {
        s.split_whitespace()
            .map(|x| x.parse().expect("id"))
            .collect()
    };
    let mut failures = Vec::new();
    let mut n_ids = 0;
    for (i, (text, line)) in cases.iter().zip(&lines).enumerate() {
        let (special, plain) = line.split_once(" | ").expect("two modes per line");
        for (mode, want, flag) in [
            ("special", parse(special), true),
            ("plain", parse(plain), false),
        ] {
            n_ids += want.len();
            let got = tok.encode(text, flag, flag);
            if got != want {
                failures.push(format!(
                    "case {i} ({mode}) {text:?}\n  want {}\n  got  {}",
                    show(&tok, &want),
                    show(&tok, &got)
                ));
            }
        }
    }
    assert!(n_ids > 20_000, "{n_ids} ids");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
}

fn check_digests(name: &str) {
    let tok = tokenizer(name);
    let cases = golden_cases();
    let digests = data(&format!("tokenizer_{name}.digest"));
    let lines: Vec<&str> = digests.lines().collect();
    assert_eq!(cases.len(), lines.len());
    let mut failures = Vec::new();
    for (i, (text, line)) in cases.iter().zip(&lines).enumerate() {
        let want: Vec<u64> = line
            .split_whitespace()
            .map(|x| u64::from_str_radix(x, 16).expect("hex"))
            .collect();
        for (mode, flag, want) in [("special", true, want[0]), ("plain", false, want[1])] {
            let got = tok.encode(text, flag, flag);
            if digest(&got) != want {
                failures.push(format!(
                    "case {i} ({mode}) {text:?}\n  got {}",
                    show(&tok, &got)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{name}: {} of {} cases differ (regenerate ids with scripts/tokenizer_golden.py to compare):\n{}", failures.len(), 2 * cases.len(), failures.join("\n"));
}

#[test]
fn golden_llama_bpe_against_llama_tokenize() {
    check_digests("llama-bpe");
}

#[test]
fn golden_qwen2_against_llama_tokenize() {
    check_digests("qwen2");
}

#[test]
fn golden_llama_spm_against_llama_tokenize() {
    check_digests("llama-spm");
}

#[test]
fn smollm2_specials_and_decoding() {
    let tok = tokenizer("smollm2");
    assert_eq!(tok.n_vocab(), 49152);
    assert!(!tok.add_bos());
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    // llama.cpp's EOG set for this vocabulary: <|endoftext|>, <|im_end|>, <reponame> (FIM repo)
    let eog: Vec<u32> = (0..tok.n_vocab() as u32)
        .filter(|&i| tok.is_eog(i))
        .collect();
    assert_eq!(eog, [0, 2, 4]);
    let text = "Hello, wörld! 🦙 1234\n\tcode();";
    let ids = tok.encode(text, true, true);
    assert_eq!(tok.decode(&ids, false), text);
    assert!(tok
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>")));
}

/// Start-up from the blob for the 128K-token, 280K-merge Llama 3 vocabulary.
#[test]
fn llama3_startup_from_blob() {
    let spec = spec("llama-bpe");
    assert!(spec.tokens.len() > 128_000 && spec.merges.len() > 280_000);
    let t0 = Instant::now();
    let bytes: &'static [u8] = Box::leak(spec.to_bytes().into_boxed_slice());
    let build = t0.elapsed();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let tok = Tokenizer::from_bytes(bytes).expect("blob");
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(tok.n_vocab(), 128_256);
    }
    eprintln!(
        "llama-bpe: blob {:.1} MB built in {:.0} ms; from_bytes {:.2} ms (best of 5)",
        bytes.len() as f64 / 1e6,
        build.as_secs_f64() * 1e3,
        best * 1e3
    );
    // the budget is for the optimised runtime; a debug build only reports the time
    if !cfg!(debug_assertions) {
        assert!(best < 0.020, "from_bytes took {:.1} ms", best * 1e3);
    }
    let tok = Tokenizer::from_bytes(bytes).expect("blob");
    assert_eq!(tok.encode("Hello world", true, false), [128000, 9906, 1917]);
}

/// Encoding speed on the Llama 3 vocabulary, against `llama-tokenize` on the same text:
/// `scripts/tokenizer_bench.sh` writes the text and llama.cpp's ids, then runs this.
#[test]
#[ignore = "timing: run through scripts/tokenizer_bench.sh (release build, 1 MB text)"]
fn llama3_encode_speed() {
    let text_path = std::env::var("MCC_TOKENIZER_BENCH_TEXT").expect("MCC_TOKENIZER_BENCH_TEXT");
    let text = std::fs::read_to_string(&text_path).expect("bench text");
    let tok = tokenizer("llama-bpe");
    let mut best = f64::INFINITY;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        ids = tok.encode(&text, true, true);
        best = best.min(t.elapsed().as_secs_f64());
    }
    eprintln!(
        "mcc encode: {} bytes -> {} tokens in {:.1} ms (best of 5): {:.2} MB/s",
        text.len(),
        ids.len(),
        best * 1e3,
        text.len() as f64 / best / 1e6
    );
    if let Ok(p) = std::env::var("MCC_TOKENIZER_BENCH_IDS") {
        let want: Vec<u32> = std::fs::read_to_string(p)
            .expect("ids")
            .trim()
            .trim_matches(|c| c == '[' || c == ']')
            .split(", ")
            .map(|x| x.parse().expect("id"))
            .collect();
        assert_eq!(ids.len(), want.len(), "token count against llama-tokenize");
        assert!(ids == want, "ids differ from llama-tokenize");
    }
}
