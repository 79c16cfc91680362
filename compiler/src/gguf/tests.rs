//! Reader tests over hand-assembled byte images, valid and hostile.

use super::*;

/// Assembles GGUF bytes field by field, so tests can write anything, including lies.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(ValueType::U32.id()).u32(v)
    }
    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.str(key).u32(ValueType::String.id()).str(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to the next multiple of `align`, as the data section start requires.
    fn pad(&mut self, align: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes("test.gguf", self.0.clone())
    }
}

/// A small valid v3 file: 5 keys (scalar, string, string array, nested array, f32) and
/// two tensors, an F32 [8] and a Q8_0 [32, 2] (2 blocks of 34 bytes).
fn valid() -> Raw {
    let mut r = Raw::header(3, 2, 5);
    r.kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .str("tokenizer.ggml.tokens")
        .u32(ValueType::Array.id())
        .u32(ValueType::String.id())
        .u64(3)
        .str("a")
        .str("b")
        .str("c");
    // [[1u8, 2u8], []] as an array of arrays.
    r.str("nested")
        .u32(ValueType::Array.id())
        .u32(ValueType::Array.id())
        .u64(2)
        .u32(ValueType::U8.id())
        .u64(2)
        .bytes(&[1, 2])
        .u32(ValueType::I64.id())
        .u64(0);
    r.str("x.eps")
        .u32(ValueType::F32.id())
        .bytes(&1e-5f32.to_le_bytes());
    r.tensor("norm", &[8], 0, 0).tensor("w", &[32, 2], 8, 32);
    r.pad(32).zeros(32).zeros(68);
    r
}

fn message(r: Result<GgufFile, GgufError>) -> String {
    match r {
        Ok(f) => panic!("expected an error, parsed {f:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn parses_valid_file() {
    let g = valid().parse().unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset % 32, 0);
    assert_eq!(g.metadata.len(), 5);
    assert_eq!(
        g.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
    assert_eq!(g.get("llama.block_count").and_then(Value::as_u64), Some(1));
    assert_eq!(g.get("x.eps").and_then(Value::as_f32), Some(1e-5));
    let toks = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(toks.elem_type, ValueType::String);
    assert_eq!(toks.items.len(), 3);
    let nested = g.get("nested").and_then(Value::as_array).unwrap();
    assert_eq!(
        nested.items,
        vec![
            Value::Array(Array {
                elem_type: ValueType::U8,
                items: vec![Value::U8(1), Value::U8(2)]
            }),
            Value::Array(Array {
                elem_type: ValueType::I64,
                items: vec![]
            }),
        ]
    );
    let w = g.tensor("w").unwrap();
    assert_eq!(w.ggml_type, GgmlType::Q8_0);
    assert_eq!((w.n_elements, w.n_bytes, w.offset), (64, 68, 32));
    assert_eq!((w.row_bytes(), w.n_rows()), (34, 2));
    assert_eq!(g.tensor_data(w).len(), 68);
    assert_eq!(g.file_len(), g.data_offset + 100);
    assert!(g.tensor("missing").is_none());
}

#[test]
fn version_2_is_read() {
    let mut r = valid();
    r.0[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(r.parse().unwrap().version, 2);
}

#[test]
fn open_reads_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, &valid().0).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensors.len(), 2);
    assert_eq!(g.path, path);
    // Empty files and missing files are errors that name the file.
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = GgufFile::open(&empty).unwrap_err().to_string();
    assert!(e.contains("empty.gguf") && e.contains("truncated"), "{e}");
    let e = GgufFile::open(&dir.path().join("nope.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.gguf"), "{e}");
}

#[test]
fn wrong_magic() {
    let mut r = valid();
    r.0[..4].copy_from_slice(b"GGML");
    let e = message(r.parse());
    assert!(
        e.contains("test.gguf") && e.contains("magic") && e.contains("GGML"),
        "{e}"
    );
}

#[test]
fn unsupported_versions() {
    for (v, needle) in [
        (1u32, "v1"),
        (4, "expected 2 or 3"),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        let mut r = valid();
        r.0[4..8].copy_from_slice(&v.to_le_bytes());
        let e = message(r.parse());
        assert!(
            e.contains(&format!("version {v}")) && e.contains(needle),
            "{e}"
        );
    }
}

#[test]
fn truncation_anywhere_is_an_error() {
    let full = valid().0;
    for cut in 0..full.len() {
        let r = GgufFile::from_bytes("cut.gguf", full[..cut].to_vec());
        let e = message(r);
        assert!(e.contains("cut.gguf"), "cut at {cut}: {e}");
    }
}

#[test]
fn absurd_counts_fail_fast() {
    let e = message(Raw::header(3, u64::MAX, 0).parse());
    assert!(
        e.contains("tensor count") && e.contains(&u64::MAX.to_string()),
        "{e}"
    );
    let e = message(Raw::header(3, 0, 1 << 60).parse());
    assert!(e.contains("key/value count"), "{e}");
    // A string length and an array length far beyond the file.
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX - 3).zeros(16);
    let e = message(r.parse());
    assert!(
        e.contains("metadata key #0") && e.contains("truncated"),
        "{e}"
    );
    let mut r = Raw::header(3, 0, 1);
    r.str("k")
        .u32(ValueType::Array.id())
        .u32(ValueType::U64.id())
        .u64(1 << 61);
    let e = message(r.parse());
    assert!(e.contains("`k`") && e.contains("array length"), "{e}");
}

#[test]
fn metadata_arrays_are_capped_in_total() {
    // Two u8 arrays, each within the file, together over the cap.
    let half = (MAX_ARRAY_ITEMS / 2 + 1) as usize;
    let mut r = Raw::header(3, 0, 2);
    for key in ["a", "b"] {
        r.str(key)
            .u32(ValueType::Array.id())
            .u32(ValueType::U8.id())
            .u64(half as u64);
        r.zeros(half);
    }
    let e = message(r.parse());
    assert!(e.contains("`b`") && e.contains("at most"), "{e}");
}

#[test]
fn unknown_value_and_tensor_types() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u32(0);
    let e = message(r.parse());
    assert!(e.contains("`k`") && e.contains("type id 13"), "{e}");

    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[32], 9, 0).pad(32).zeros(64); // 9 = Q8_1, unsupported
    let e = message(r.parse());
    assert!(
        e.contains("tensor `t` type") && e.contains("ggml type id 9"),
        "{e}"
    );
}

#[test]
fn bad_bool_and_utf8() {
    let mut r = Raw::header(3, 0, 1);
    r.str("b").u32(ValueType::Bool.id()).bytes(&[2]);
    assert!(message(r.parse()).contains("bool byte 2"));
    let mut r = Raw::header(3, 0, 1);
    r.str("s")
        .u32(ValueType::String.id())
        .u64(2)
        .bytes(&[0xff, 0xfe]);
    assert!(message(r.parse()).contains("UTF-8"));
}

#[test]
fn nesting_depth_is_capped() {
    let depth = MAX_ARRAY_DEPTH + 1;
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(ValueType::Array.id());
    for _ in 0..depth {
        r.u32(ValueType::Array.id()).u64(1);
    }
    r.u32(ValueType::U8.id()).u64(0);
    let e = message(r.parse());
    assert!(e.contains("`deep`") && e.contains("nested"), "{e}");

    // Just under the cap is fine.
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(ValueType::Array.id());
    for _ in 0..MAX_ARRAY_DEPTH - 1 {
        r.u32(ValueType::Array.id()).u64(1);
    }
    r.u32(ValueType::U8.id()).u64(0);
    r.parse().unwrap();
}

#[test]
fn duplicate_keys_and_tensor_names() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a", 1).kv_u32("a", 2);
    assert!(message(r.parse()).contains("`a`"));

    let mut r = Raw::header(3, 2, 0);
    r.tensor("t", &[8], 0, 0)
        .tensor("t", &[8], 0, 32)
        .pad(32)
        .zeros(64);
    let e = message(r.parse());
    assert!(e.contains("tensor `t`") && e.contains("second"), "{e}");
}

#[test]
fn alignment_must_be_a_power_of_two() {
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 24);
    let e = message(r.parse());
    assert!(e.contains("general.alignment") && e.contains("24"), "{e}");

    let mut r = Raw::header(3, 1, 1);
    r.kv_u32("general.alignment", 64)
        .tensor("t", &[4], 0, 0)
        .pad(64)
        .zeros(16);
    let g = r.parse().unwrap();
    assert_eq!((g.alignment, g.data_offset % 64), (64, 0));
}

#[test]
fn tensor_dims_are_checked() {
    let cases: [(&[u64], u32, &str); 5] = [
        (&[], 0, "n_dims"),
        (&[1, 1, 1, 1, 1], 0, "n_dims"),
        (&[4, 0], 0, "dims[1]"),
        (&[1 << 32, 1 << 32, 1 << 8], 0, "element count"),
        (&[48, 2], 2, "multiple of 32"), // Q4_0 rows hold whole blocks
    ];
    for (dims, ty, needle) in cases {
        let mut r = Raw::header(3, 1, 0);
        r.tensor("t", dims, ty, 0).pad(32).zeros(64);
        let e = message(r.parse());
        assert!(
            e.contains("tensor `t`") && e.contains(needle),
            "{dims:?}: {e}"
        );
    }
    // Elements fit in u64 but bytes do not: 2^62 F32 elements.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1 << 31, 1 << 31], 0, 0).pad(32);
    assert!(message(r.parse()).contains("byte size"));
}

#[test]
fn tensor_ranges_are_checked() {
    // Misaligned offset.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[4], 0, 4).pad(32).zeros(64);
    let e = message(r.parse());
    assert!(
        e.contains("tensor `t` offset") && e.contains("alignment 32"),
        "{e}"
    );
    // Past the end of the file.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[16], 0, 32).pad(32).zeros(64);
    let e = message(r.parse());
    assert!(
        e.contains("tensor `t` data range") && e.contains("32..96"),
        "{e}"
    );
    // An offset so large that offset + size overflows.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[16], 0, u64::MAX - 31).pad(32).zeros(64);
    assert!(message(r.parse()).contains("overflow"));
    // Overlapping tensors.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .pad(32)
        .zeros(64);
    let e = message(r.parse());
    assert!(e.contains("`b`") && e.contains("inside `a`"), "{e}");
}

#[test]
fn no_tensors_needs_no_data_section() {
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("a", 1);
    let g = r.parse().unwrap();
    assert!(g.tensors.is_empty());
}

/// Flipping any single header byte must give a value or an error, never a panic or a
/// huge allocation.
#[test]
fn corrupted_bytes_never_panic() {
    let full = valid().0;
    for i in 0..full.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut b = full.clone();
            b[i] ^= x;
            let _ = GgufFile::from_bytes("flip.gguf", b);
        }
    }
}
