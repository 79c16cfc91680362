use super::ftype::FileType;
use super::rules::{self, Chooser, ModelFacts, TensorShape};
use crate::gguf::writer::{GgufWriter, TensorData, WriteMode};
use crate::gguf::{Array, GgmlType, GgufFile, Value, ValueType};
use crate::imatrix::file::Imatrix;

/// A legacy .dat file as llama-imatrix writes one: entries, then the chunk count and
/// the data set's name.
fn dat(entries: &[(&str, i32, &[f32])], trailer: Option<(i32, &str)>) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
    for (name, ncall, values) in entries {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&ncall.to_le_bytes());
        b.extend_from_slice(&(values.len() as i32).to_le_bytes());
        for v in *values {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    if let Some((chunks, dataset)) = trailer {
        b.extend_from_slice(&chunks.to_le_bytes());
        b.extend_from_slice(&(dataset.len() as i32).to_le_bytes());
        b.extend_from_slice(dataset.as_bytes());
    }
    b
}

#[test]
fn legacy_dat_is_read_and_divided_by_its_call_count() {
    let bytes = dat(
        &[
            ("blk.0.attn_q.weight", 4, &[8.0, 2.0, 1.0]),
            // ncall 0: the values are taken as they are.
            ("blk.0.ffn_down.weight", 0, &[3.0, 5.0]),
        ],
        Some((17, "calibration.txt")),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.dat");
    std::fs::write(&path, &bytes).unwrap();
    let im = Imatrix::load(&path).unwrap();
    assert_eq!(im.entries["blk.0.attn_q.weight"], vec![2.0, 0.5, 0.25]);
    assert_eq!(im.entries["blk.0.ffn_down.weight"], vec![3.0, 5.0]);
    assert_eq!(im.chunk_count, 17);
    assert_eq!(im.datasets, vec!["calibration.txt".to_string()]);

    // The trailer is optional.
    let plain = dat(&[("a.weight", 2, &[1.0])], None);
    let im = Imatrix::from_legacy(&plain).unwrap();
    assert_eq!((im.chunk_count, im.datasets.len()), (0, 0));
    assert_eq!(im.entries["a.weight"], vec![0.5]);

    // Truncations anywhere are errors that say where.
    for cut in [2, 9, bytes.len() - 30, bytes.len() - 3] {
        let e = Imatrix::from_legacy(&bytes[..cut]).unwrap_err();
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
    assert!(Imatrix::from_legacy(&0i32.to_le_bytes())
        .unwrap_err()
        .contains("0 entries"));
    let e = Imatrix::from_legacy(&dat(&[("a", 1, &[])], None)).unwrap_err();
    assert!(e.contains("value count"), "{e}");

    // A non-finite importance is rejected with the entry's name.
    std::fs::write(&path, dat(&[("bad.weight", 1, &[f32::NAN])], None)).unwrap();
    let e = Imatrix::load(&path).unwrap_err().to_string();
    assert!(e.contains("bad.weight") && e.contains("m.dat"), "{e}");
}

#[test]
fn gguf_imatrix_divides_sums_by_rounded_counts() {
    let mut w = GgufWriter::new();
    w.add_kv(
        "imatrix.datasets",
        Value::Array(Array {
            elem_type: ValueType::String,
            items: vec![Value::String("a.txt".into()), Value::String("b.txt".into())],
        }),
    )
    .add_kv("imatrix.chunk_count", Value::U32(9))
    .add_kv("imatrix.chunk_size", Value::U32(512));
    // Two matrices of 2 columns: counts 3.6 (rounds to 4) and 0 (importance 1).
    let sums: Vec<u8> = [4.0f32, 8.0, 5.0, 7.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let counts: Vec<u8> = [3.6f32, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    w.add_tensor(
        "x.weight.in_sum2",
        &[2, 2],
        GgmlType::F32,
        TensorData::Bytes(sums),
    )
    .add_tensor(
        "x.weight.counts",
        &[1, 2],
        GgmlType::F32,
        TensorData::Bytes(counts),
    );
    let g = GgufFile::from_bytes("im.gguf", w.to_bytes(WriteMode::Full).unwrap()).unwrap();
    let im = Imatrix::from_gguf(&g).unwrap();
    assert_eq!(im.entries["x.weight"], vec![1.0, 2.0, 1.0, 1.0]);
    assert_eq!(im.chunk_count, 9);
    assert_eq!(im.datasets, vec!["a.txt".to_string(), "b.txt".into()]);

    // Sums without counts, and missing metadata, are errors.
    let mut lone = GgufWriter::new();
    for (k, v) in [("imatrix.chunk_count", 1), ("imatrix.chunk_size", 1)] {
        lone.add_kv(k, Value::U32(v));
    }
    lone.add_kv(
        "imatrix.datasets",
        Value::Array(Array {
            elem_type: ValueType::String,
            items: vec![],
        }),
    );
    lone.add_tensor("y.in_sum2", &[4], GgmlType::F32, TensorData::Constant(1.0));
    let g = GgufFile::from_bytes("lone.gguf", lone.to_bytes(WriteMode::Full).unwrap()).unwrap();
    assert!(Imatrix::from_gguf(&g)
        .unwrap_err()
        .contains("`y` has in_sum2 but not counts"));
    lone.remove_kv("imatrix.chunk_size");
    let g = GgufFile::from_bytes("lone.gguf", lone.to_bytes(WriteMode::Full).unwrap()).unwrap();
    assert!(Imatrix::from_gguf(&g)
        .unwrap_err()
        .contains("imatrix.chunk_size"));
}

#[test]
fn file_types_parse_by_name_alias_and_number() {
    assert_eq!(FileType::parse("q4_k_m"), Ok(FileType::Q4_K_M));
    assert_eq!(FileType::parse("Q4_K"), Ok(FileType::Q4_K_M));
    assert_eq!(FileType::parse("15"), Ok(FileType::Q4_K_M));
    assert_eq!(FileType::parse("7"), Ok(FileType::Q8_0));
    assert_eq!(FileType::Q2_K_S.id(), 21);
    assert_eq!(FileType::IQ2_M.default_type(), GgmlType::IQ2_S);
    assert!(FileType::parse("TQ1_0")
        .unwrap_err()
        .contains("not supported"));
    assert!(FileType::parse("Q4_K_X").unwrap_err().contains("Q4_K_M"));
    assert!(FileType::parse("6").is_err());
}

#[test]
fn which_tensors_are_quantized() {
    assert!(rules::allows_quantization("blk.0.attn_q.weight", 2));
    assert!(!rules::allows_quantization("blk.0.attn_q.weight", 1));
    assert!(!rules::allows_quantization("blk.0.attn_norm.weight", 2));
    assert!(!rules::allows_quantization("rope_freqs.weight", 1));
    assert!(!rules::allows_quantization("blk.0.ffn_gate_inp.weight", 2));
    assert!(!rules::allows_quantization("blk.0.attn_q.bias", 2));
    assert!(!rules::allows_quantization("position_embd.weight", 2));
    // "Ends in weight" as llama.cpp tests it: a 5-byte name passes.
    assert!(rules::allows_quantization("abcde", 2));
    assert!(!rules::allows_quantization("abcdef", 2));
}

#[test]
fn tensors_go_non_layer_first_then_by_layer_number() {
    let mut names = vec![
        "blk.10.attn_q.weight",
        "output.weight",
        "blk.2.ffn_up.weight",
        "blk.2.attn_k.weight",
        "token_embd.weight",
        "output_norm.weight",
    ];
    names.sort_by(|a, b| rules::file_order(a, b));
    assert_eq!(
        names,
        [
            "output.weight",
            "output_norm.weight",
            "token_embd.weight",
            "blk.2.attn_k.weight",
            "blk.2.ffn_up.weight",
            "blk.10.attn_q.weight",
        ]
    );
    assert_eq!(rules::parse_layer("blk.7x"), Some(7));
    assert_eq!(rules::parse_layer("blk.x"), None);
    assert_eq!(rules::parse_layer("blk.-3.a"), Some(-3));
}

/// Types of every layer's attn_v and ffn_down in a 32-layer model, Q4_K_M, rows 4096
/// wide: layers 0..3, 28..31 and every third from 6 get Q6_K (use_more_bits).
#[test]
fn q4_k_m_gives_more_bits_to_some_attn_v_and_ffn_down_layers() {
    let names: Vec<String> = (0..32)
        .flat_map(|i| {
            [
                format!("blk.{i}.attn_v.weight"),
                format!("blk.{i}.ffn_down.weight"),
            ]
        })
        .collect();
    let facts = ModelFacts {
        n_layer: 32,
        n_gqa: 1,
        n_expert: 0,
        is_70b: false,
    };
    let mut c = Chooser::new(
        FileType::Q4_K_M,
        facts,
        false,
        names.iter().map(String::as_str),
    );
    let dims = [4096, 4096];
    let mut q6 = Vec::new();
    for name in &names {
        let ty = c
            .choose(&TensorShape { name, dims: &dims }, GgmlType::F16)
            .unwrap();
        if ty == GgmlType::Q6_K {
            q6.push(rules::parse_layer(name).unwrap());
        } else {
            assert_eq!(ty, GgmlType::Q4_K, "{name}");
        }
    }
    let expect: Vec<i32> = (0..32)
        .filter(|&i| !(4..28).contains(&i) || (i - 4) % 3 == 2)
        .flat_map(|i| [i, i])
        .collect();
    assert_eq!(q6, expect);
}

#[test]
fn row_widths_that_a_block_does_not_divide_fall_back() {
    let facts = ModelFacts {
        n_layer: 30,
        n_gqa: 3,
        n_expert: 0,
        is_70b: false,
    };
    let names = ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"];
    let cases = [
        (FileType::Q4_K_S, 576, GgmlType::Q5_0),
        (FileType::Q5_K_S, 576, GgmlType::Q5_1),
        (FileType::Q6_K, 576, GgmlType::Q8_0),
        (FileType::Q3_K_S, 576, GgmlType::Q4_0),
        (FileType::IQ4_XS, 576, GgmlType::IQ4_NL),
        (FileType::Q4_0, 48, GgmlType::F16),
        (FileType::Q4_K_S, 1536, GgmlType::Q4_K),
    ];
    for (ft, width, want) in cases {
        let mut c = Chooser::new(ft, facts, true, names.into_iter());
        let dims = [width, 64];
        let got = c
            .choose(
                &TensorShape {
                    name: names[0],
                    dims: &dims,
                },
                GgmlType::F16,
            )
            .unwrap();
        assert_eq!(got, want, "{ft} at width {width}");
    }
}

#[test]
fn iq1_m_rows_are_checked_for_the_scale_spread_over_its_scale_words() {
    // f16 bits 0xabcd: nibble k in the top nibble of scale word k (bytes 48..56)
    let block = |bits: u16| {
        let mut b = vec![0u8; 56];
        for k in 0..4 {
            let word = ((bits >> (4 * k)) & 0xf) << 12 | 0x0fff;
            b[48 + 2 * k..50 + 2 * k].copy_from_slice(&word.to_le_bytes());
        }
        b
    };
    let row = |bits: &[u16]| bits.iter().flat_map(|&b| block(b)).collect::<Vec<u8>>();
    assert!(super::row_is_valid(
        GgmlType::IQ1_M,
        &row(&[0x3c00, 0x7bff])
    ));
    assert!(!super::row_is_valid(
        GgmlType::IQ1_M,
        &row(&[0x3c00, 0x7c00])
    ));
    assert!(!super::row_is_valid(GgmlType::IQ1_M, &row(&[0xfe00])));
    // the other formats' f16 scale is at byte 0
    let mut b = vec![0u8; 98];
    assert!(super::row_is_valid(GgmlType::IQ3_XXS, &b));
    b[1] = 0x7c;
    assert!(!super::row_is_valid(GgmlType::IQ3_XXS, &b));
}
