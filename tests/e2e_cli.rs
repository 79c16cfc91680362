//! The generated binary's command line, tried as a new user would: every flag, wrong
//! values, hostile prompts, signals, and seeded sampling that follows the model's
//! probabilities.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use mcc_e2e::{build_model, run, scratch_dir, smollm2_q4_1};

fn smollm2() -> PathBuf {
    build_model(&smollm2_q4_1(), "smollm2-q4_1", |_| {})
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and expects failure with a message containing `needle` and no panic.
fn fails_with(args: &[&str], needle: &str) {
    let out = run(&smollm2(), args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail cleanly; stderr: {err}"
    );
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn wrong_values_get_clear_errors() {
    fails_with(
        &["-f", "/nonexistent/prompt.txt"],
        "/nonexistent/prompt.txt",
    );
    fails_with(
        &["-p", "hi", "--top-p", "2"],
        "--top-p must be between 0 and 1",
    );
    fails_with(&["-p", "hi", "--min-p", "-0.5"], "--min-p");
    fails_with(&["-p", "hi", "--repeat-penalty", "0"], "--repeat-penalty");
    fails_with(&["-p", "hi", "--temp", "nan"], "--temp");
    fails_with(&["-p", "hi", "-t", "0"], "--threads must be at least 1");
    fails_with(&["-p", "hi", "-c", "100000"], "compiled for");
    fails_with(&["-p", ""], "empty");
    fails_with(&[], "no prompt");
    // clap's own errors exit with 2 and name the flag.
    let out = run(&smollm2(), &["-p", "hi", "-n", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--n-predict"), "{}", stderr(&out));
}

#[test]
fn no_memory_for_the_kv_cache_is_a_clear_error() {
    // 200 MB of address space maps the binary but not a 4096-token cache...
    let script = format!(
        "ulimit -v 200000; exec {} -p hi -n 1 --temp 0",
        smollm2().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot allocate") && err.contains("KV cache") && err.contains("-c"),
        "{err}"
    );
    // ...and a smaller context then fits.
    let script = format!(
        "ulimit -v 200000; exec {} -p hi -n 1 --temp 0 -c 256",
        smollm2().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn prompt_files_must_be_utf8() {
    let path = scratch_dir().join("not-utf8.txt");
    std::fs::write(&path, b"caf\xe9 au lait").unwrap();
    fails_with(
        &["-f", path.to_str().unwrap()],
        "not UTF-8 text (invalid byte at offset 3)",
    );
}

#[test]
fn prompt_longer_than_the_context() {
    let long = "word ".repeat(200);
    fails_with(&["-p", &long, "-c", "64", "-n", "4"], "--truncate");
    let out = run(
        &smollm2(),
        &[
            "-p",
            &long,
            "-c",
            "64",
            "-n",
            "4",
            "--temp",
            "0",
            "--truncate",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("prompt truncated"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn n_minus_one_runs_to_the_end_of_the_context() {
    let out = run(
        &smollm2(),
        &[
            "-p",
            "Count: 1, 2, 3,",
            "-n",
            "-1",
            "-c",
            "48",
            "--temp",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).is_empty());
    let err = stderr(&out);
    assert!(err.contains("eval time"), "{err}");
}

#[test]
fn negative_temperature_is_greedy_like_llama_cpp() {
    let a = run(
        &smollm2(),
        &["-p", "The capital of France is", "-n", "8", "--temp", "0"],
    );
    let b = run(
        &smollm2(),
        &["-p", "The capital of France is", "-n", "8", "--temp", "-1"],
    );
    assert!(a.status.success() && b.status.success());
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn stop_strings_cut_the_output() {
    let out = run(
        &smollm2(),
        &[
            "-p",
            "The capital of France is",
            "-n",
            "30",
            "--temp",
            "0",
            "--stop",
            "United",
        ],
    );
    assert!(out.status.success());
    assert_eq!(stdout(&out), " Paris.\n\nThe ");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let args = [
        "-p",
        "Once upon a time",
        "-n",
        "24",
        "--seed",
        "1234",
        "--temp",
        "0.9",
    ];
    let a = run(&smollm2(), &args);
    let b = run(&smollm2(), &args);
    assert!(a.status.success());
    assert_eq!(stdout(&a), stdout(&b));
    let mut other = args;
    other[5] = "4321";
    let c = run(&smollm2(), &other);
    assert_ne!(
        stdout(&a),
        stdout(&c),
        "a different seed should give a different text"
    );
}

#[test]
fn closed_stdout_exits_quietly() {
    let mut child = Command::new(smollm2())
        .args(["-p", "Once upon a time", "-n", "200", "--temp", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?} {}", out.status, stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn ctrl_c_prints_timings_and_exits_130() {
    let mut child = Command::new(smollm2())
        .args(["-p", "Once upon a time", "-n", "-1", "--temp", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first generated bytes, so the interrupt lands mid-generation.
    let mut first = [0u8; 4];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("eval time"), "{}", stderr(&out));
}

#[test]
fn chat_renders_the_template_and_answers() {
    let mut child = Command::new(smollm2())
        .args(["chat", "--temp", "0", "-n", "24"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"What is the capital of France?\n")
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The reply is what plain generation gives for SmolLM2's template rendered by hand
    // (its default system message, ChatML turns, the assistant header).
    let by_hand = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                   <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let plain = run(&smollm2(), &["-p", by_hand, "--temp", "0", "-n", "24"]);
    assert!(plain.status.success());
    assert_eq!(stdout(&out), stdout(&plain) + "\n");
}

#[test]
fn ctrl_c_in_chat_stops_the_reply_not_the_chat() {
    use std::io::Write;
    let mut child = Command::new(smollm2())
        .args(["chat", "--temp", "0", "-n", "-1", "-c", "2048"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"Write a very long story about a dragon.\n")
        .unwrap();
    stdin.flush().unwrap();
    // Interrupt once the reply is streaming.
    let mut first = [0u8; 8];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // The chat goes on: a second turn is answered, then end of input ends it normally.
    stdin
        .write_all(b"What is the capital of France?\n")
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("[reply stopped]"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bench_prints_a_llama_bench_table() {
    let out = run(&smollm2(), &["bench", "-p", "32", "-n", "8", "-r", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains("| model | size | backend | threads | test | t/s |"),
        "{table}"
    );
    assert!(
        table.contains("| pp32 |") && table.contains("| tg8 |"),
        "{table}"
    );
    // -d fills the context first and labels the tests as llama-bench does; a depth the
    // compiled context cannot hold is refused with the numbers.
    let out = run(
        &smollm2(),
        &["bench", "-p", "16", "-n", "4", "-r", "1", "-d", "300"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains("| pp16 @ d300 |") && table.contains("| tg4 @ d300 |"),
        "{table}"
    );
    let out = run(
        &smollm2(),
        &["bench", "-p", "16", "-n", "4", "-d", "100000"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("after a depth of 100000 does not fit the compiled context"),
        "{err}"
    );
}

/// Upper quantile of the chi-square distribution (Wilson–Hilferty approximation, good
/// to a few percent for df >= 3).
fn chi2_quantile(df: f64, z: f64) -> f64 {
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

/// With --temp 0.8 --top-k 40, the first sampled token over 200 seeds follows the
/// probabilities that the sampler computes from the model's logits.
#[test]
fn first_token_distribution_follows_the_model() {
    use mcc_runtime::sampler::{Sampler, SamplerConfig};
    use mcc_runtime::tokenizer::Tokenizer;
    let exe = smollm2();
    let prompt = "My favourite animal is the";
    let prompt_file = scratch_dir().join("chi2-prompt.txt");
    std::fs::write(&prompt_file, prompt).unwrap();
    let logits_file = scratch_dir().join("chi2-logits.bin");
    let out = run(
        &exe,
        &[
            "logits",
            "-f",
            prompt_file.to_str().unwrap(),
            "-o",
            logits_file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&logits_file).unwrap();
    let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    let (n, n_vocab) = (word(0), word(1));
    let ids: Vec<u32> = (0..n).map(|i| word(2 + i) as u32).collect();
    let last = 8 + 4 * n + 4 * (n - 1) * n_vocab;
    let logits: Vec<f32> = bytes[last..last + 4 * n_vocab]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let cfg = SamplerConfig {
        temp: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
        ..SamplerConfig::default()
    };
    let probs = Sampler::new(cfg).candidates(&logits, &ids);

    // Bucket candidates by the text they print (distinct ids may print alike).
    let gguf = mcc::gguf::GgufFile::open(&smollm2_q4_1()).unwrap();
    let tok =
        Tokenizer::from_spec(&mcc::describe::tokenizer::tokenizer_spec(&gguf).unwrap()).unwrap();
    let mut expected: HashMap<String, f64> = HashMap::new();
    for &(id, p) in &probs {
        *expected
            .entry(String::from_utf8_lossy(tok.token_bytes(id)).into_owned())
            .or_default() += p as f64;
    }
    let draws = 200;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for seed in 0..draws {
        let out = run(
            &exe,
            &[
                "-p",
                prompt,
                "-n",
                "1",
                "--temp",
                "0.8",
                "--top-k",
                "40",
                "--seed",
                &seed.to_string(),
            ],
        );
        assert!(out.status.success());
        let text = stdout(&out);
        assert!(
            expected.contains_key(&text),
            "seed {seed} sampled {text:?}, which the sampler gives no probability"
        );
        *seen.entry(text).or_default() += 1;
    }
    // Pearson's test over buckets expected >= 5 times; the rest pooled.
    let (mut chi2, mut bins, mut pooled_e, mut pooled_o) = (0.0, 0, 0.0, 0.0);
    for (text, p) in &expected {
        let e = p * draws as f64;
        let o = *seen.get(text).unwrap_or(&0) as f64;
        if e >= 5.0 {
            chi2 += (o - e).powi(2) / e;
            bins += 1;
        } else {
            pooled_e += e;
            pooled_o += o;
        }
    }
    if pooled_e > 0.0 {
        chi2 += (pooled_o - pooled_e).powi(2) / pooled_e.max(1e-9);
        bins += 1;
    }
    assert!(bins >= 3, "too few buckets for a test: {probs:?}");
    let df = (bins - 1) as f64;
    // z = 3.09: the test fails by chance once in 1000 runs.
    let critical = chi2_quantile(df, 3.09);
    assert!(chi2 < critical, "chi-square {chi2:.1} over {bins} buckets exceeds {critical:.1}: seen {seen:?}, expected {expected:?}");
}
