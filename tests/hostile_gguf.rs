//! Hostile GGUF files: each lie a downloaded file could tell about its own structure
//! gives a clear error naming the field, in under a second, with bounded memory.
//!
//! Each case runs in a child process (this test binary, filtered to the one test, with
//! `HOSTILE_CHILD` set), so that its peak memory can be read from the child's own
//! `/proc/self/status` (`VmHWM`) without the other tests' allocations mixed in. The
//! child reports the parse time, its resident size before the parse and its peak after,
//! and the error message; the parent checks them.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use mcc::gguf::{GgufFile, ValueType, MAX_ARRAY_DEPTH};

/// Most a rejected file may make the parser allocate beyond what the process already
/// held. The files are a few KB; their claims run to gigabytes and beyond.
const PEAK_GROWTH_LIMIT_KB: u64 = 8 << 10;
/// Longest a rejection may take (debug build, loaded machine).
const TIME_LIMIT: Duration = Duration::from_secs(1);
/// The file name the messages must carry.
const FILE: &str = "hostile.gguf";

/// GGUF bytes written field by field, so a test can write any lie.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(3).u64(n_tensors).u64(n_kv);
        r
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Raw {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Zero padding to `n` bytes in all.
    fn pad_to(&mut self, n: usize) -> Vec<u8> {
        self.0.resize(self.0.len().max(n), 0);
        std::mem::take(&mut self.0)
    }
}

/// What the child measured.
#[derive(Debug)]
struct Outcome {
    elapsed: Duration,
    rss_before_kb: u64,
    peak_kb: u64,
    message: String,
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// How the child opens the file.
#[derive(Clone, Copy)]
enum Via {
    /// `GgufFile::from_bytes` on the image in memory.
    Memory,
    /// `GgufFile::open` on a file written to disk (memory-mapped).
    Disk,
}

/// In the child: parse (and describe, should the parse succeed), print the outcome.
/// In the parent: run the child and return what it measured.
fn measure(test: &str, via: Via, make: impl FnOnce() -> Vec<u8>) -> Option<Outcome> {
    if std::env::var("HOSTILE_CHILD").as_deref() == Ok(test) {
        let bytes = make();
        let dir = std::env::temp_dir().join(format!("mcc-hostile-{}-{test}", std::process::id()));
        let path = dir.join(FILE);
        if let Via::Disk = via {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let rss_before_kb = status_kb("VmRSS:");
        let t0 = Instant::now();
        let result = match via {
            Via::Memory => GgufFile::from_bytes(FILE, bytes),
            Via::Disk => GgufFile::open(&path),
        };
        let message = match result {
            Err(e) => e.to_string(),
            Ok(g) => match mcc::describe::describe(&g) {
                Err(e) => e.to_string(),
                Ok(_) => "ACCEPTED".to_string(),
            },
        };
        let elapsed = t0.elapsed();
        let peak_kb = status_kb("VmHWM:");
        let _ = std::fs::remove_dir_all(&dir);
        let mut out = std::io::stdout().lock();
        // on its own line: the test harness has printed "test NAME ... " before it
        writeln!(
            out,
            "\nHOSTILE\t{}\t{rss_before_kb}\t{peak_kb}\t{}",
            elapsed.as_nanos(),
            message.replace('\n', " ")
        )
        .unwrap();
        return None;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("HOSTILE_CHILD", test)
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| Some(l.split_once("HOSTILE\t")?.1))
        .unwrap_or_else(|| {
            panic!(
                "child printed no outcome: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let f: Vec<&str> = line.splitn(4, '\t').collect();
    Some(Outcome {
        elapsed: Duration::from_nanos(f[0].parse().unwrap()),
        rss_before_kb: f[1].parse().unwrap(),
        peak_kb: f[2].parse().unwrap(),
        message: f[3].to_string(),
    })
}

/// Runs case `test` in a child and checks: an error naming the file and containing
/// every needle, in under [`TIME_LIMIT`], with peak memory growth under the limit.
fn rejects(test: &str, via: Via, make: impl FnOnce() -> Vec<u8>, needles: &[&str]) {
    let Some(o) = measure(test, via, make) else {
        return; // this is the child: it has printed its outcome
    };
    let growth = o.peak_kb.saturating_sub(o.rss_before_kb);
    eprintln!(
        "{test}: {:?}, peak growth {growth} kB: {}",
        o.elapsed, o.message
    );
    // from memory the name is the message's start; from disk it ends the full path
    assert!(
        o.message.contains(&format!("{FILE}: ")),
        "{test}: {}",
        o.message
    );
    for needle in needles {
        assert!(
            o.message.contains(needle),
            "{test}: message lacks {needle:?}: {}",
            o.message
        );
    }
    assert!(o.elapsed < TIME_LIMIT, "{test}: took {:?}", o.elapsed);
    assert!(
        growth < PEAK_GROWTH_LIMIT_KB,
        "{test}: peak memory grew by {growth} kB ({o:?})"
    );
}

#[test]
fn memory_measure_sees_a_large_allocation() {
    // The control for every memory bound below: a child that touches 64 MiB must show
    // it in VmHWM, or the bound would prove nothing.
    const TEST: &str = "memory_measure_sees_a_large_allocation";
    if std::env::var("HOSTILE_CHILD").as_deref() == Ok(TEST) {
        let before = status_kb("VmRSS:");
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        println!("\nHOSTILE\t0\t{before}\t{}\tcontrol", status_kb("VmHWM:"));
        return;
    }
    let o = measure(TEST, Via::Memory, Vec::new).expect("parent");
    let growth = o.peak_kb - o.rss_before_kb;
    assert!(growth >= 60 << 10, "64 MiB seen as {growth} kB: {o:?}");
}

#[test]
fn tensor_count_2_pow_60() {
    rejects(
        "tensor_count_2_pow_60",
        Via::Memory,
        || Raw::header(1 << 60, 0).pad_to(1024),
        &["tensor count", "found 1152921504606846976", "at most"],
    );
}

#[test]
fn key_value_count_2_pow_60() {
    rejects(
        "key_value_count_2_pow_60",
        Via::Memory,
        || Raw::header(0, 1 << 60).pad_to(1024),
        &["metadata key/value count", "found 1152921504606846976"],
    );
}

#[test]
fn string_array_of_2_pow_60_items() {
    rejects(
        "string_array_of_2_pow_60_items",
        Via::Memory,
        || {
            let mut r = Raw::header(0, 1);
            r.str("tokenizer.ggml.tokens")
                .u32(ValueType::Array.id())
                .u32(ValueType::String.id())
                .u64(1 << 60);
            r.pad_to(1024)
        },
        &[
            "`tokenizer.ggml.tokens`",
            "array length",
            "1152921504606846976",
        ],
    );
}

#[test]
fn string_length_past_eof() {
    rejects(
        "string_length_past_eof",
        Via::Memory,
        || {
            let mut r = Raw::header(0, 1);
            r.str("general.name")
                .u32(ValueType::String.id())
                .u64(4096)
                .bytes(b"short");
            r.0
        },
        &["truncated", "`general.name`", "string of 4096 bytes"],
    );
}

#[test]
fn key_length_past_eof() {
    rejects(
        "key_length_past_eof",
        Via::Memory,
        || {
            let mut r = Raw::header(0, 1);
            r.u64(u64::MAX).bytes(b"general.name");
            r.0
        },
        &[
            "truncated",
            "metadata key #0",
            "string of 18446744073709551615 bytes",
        ],
    );
}

#[test]
fn tensor_offset_past_eof() {
    rejects(
        "tensor_offset_past_eof",
        Via::Memory,
        || {
            let mut r = Raw::header(1, 0);
            r.tensor("blk.0.attn_q.weight", &[8], 0, 1 << 40);
            r.pad_to(1024)
        },
        &[
            "tensor `blk.0.attn_q.weight` data range",
            "1099511627776..",
            "within",
        ],
    );
}

#[test]
fn overlapping_tensors() {
    rejects(
        "overlapping_tensors",
        Via::Memory,
        || {
            let mut r = Raw::header(2, 0);
            // a: 64 F32 = bytes 0..256; b starts at 128
            r.tensor("a", &[64], 0, 0).tensor("b", &[8], 0, 128);
            r.pad_to(1024)
        },
        &["tensor `b` data range", "starts at 128 inside `a` (0..256)"],
    );
}

#[test]
fn dims_whose_product_overflows() {
    rejects(
        "dims_whose_product_overflows",
        Via::Memory,
        || {
            let mut r = Raw::header(1, 0);
            r.tensor("t", &[1 << 32, 1 << 32, 1 << 8, 1 << 8], 0, 0);
            r.pad_to(1024)
        },
        &["tensor `t` dims", "element count below 2^64"],
    );
}

#[test]
fn dims_whose_byte_size_overflows() {
    rejects(
        "dims_whose_byte_size_overflows",
        Via::Memory,
        || {
            let mut r = Raw::header(1, 0);
            // 2^62 elements fit in u64; 2^64 bytes of F32 do not
            r.tensor("t", &[1 << 31, 1 << 31], 0, 0);
            r.pad_to(1024)
        },
        &["tensor `t` byte size", "below 2^64"],
    );
}

#[test]
fn tensor_type_id_1000() {
    rejects(
        "tensor_type_id_1000",
        Via::Memory,
        || {
            let mut r = Raw::header(1, 0);
            r.tensor("output.weight", &[32, 2], 1000, 0);
            r.pad_to(1024)
        },
        &["tensor `output.weight` type", "ggml type id 1000"],
    );
}

#[test]
fn value_type_id_1000() {
    rejects(
        "value_type_id_1000",
        Via::Memory,
        || {
            let mut r = Raw::header(0, 1);
            r.str("llama.block_count").u32(1000).u32(1);
            r.pad_to(1024)
        },
        &["type of metadata key `llama.block_count`", "type id 1000"],
    );
}

#[test]
fn array_nested_1000_deep() {
    rejects(
        "array_nested_1000_deep",
        Via::Memory,
        || {
            let mut r = Raw::header(0, 1);
            r.str("deep").u32(ValueType::Array.id());
            for _ in 0..1000 {
                r.u32(ValueType::Array.id()).u64(1);
            }
            r.u32(ValueType::U8.id()).u64(0);
            r.0
        },
        &[
            "metadata key `deep`",
            &format!("nested {} deep", MAX_ARRAY_DEPTH + 1),
            &format!("at most {MAX_ARRAY_DEPTH} levels"),
        ],
    );
}

#[test]
fn ten_gb_string_value_in_a_1_kb_file() {
    rejects(
        "ten_gb_string_value_in_a_1_kb_file",
        Via::Disk,
        || {
            let mut r = Raw::header(0, 1);
            r.str("tokenizer.chat_template")
                .u32(ValueType::String.id())
                .u64(10_000_000_000);
            r.pad_to(1024)
        },
        &[
            "truncated",
            "`tokenizer.chat_template`",
            "needs 10000000000 bytes",
            "file has 1024 bytes",
        ],
    );
}

#[test]
fn ten_gb_array_value_in_a_1_kb_file() {
    rejects(
        "ten_gb_array_value_in_a_1_kb_file",
        Via::Disk,
        || {
            let mut r = Raw::header(0, 1);
            r.str("tokenizer.ggml.scores")
                .u32(ValueType::Array.id())
                .u32(ValueType::U8.id())
                .u64(10_000_000_000);
            r.pad_to(1024)
        },
        &[
            "`tokenizer.ggml.scores`",
            "array length",
            "found 10000000000",
        ],
    );
}
