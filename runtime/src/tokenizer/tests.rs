//! Unit tests on small hand-made vocabularies; the exact-id tests against llama.cpp's
//! vectors and `llama-tokenize` live in `tests/tokenizer_vectors.rs`.

use super::*;

/// A byte-level BPE vocabulary: the 256 byte characters, then merge results, then
/// `extra` tokens with their types.
fn bpe_spec(pre: &str, merges: &[&str], extra: &[(&str, i32)]) -> TokenizerSpec {
    let mut tokens: Vec<String> = (0..=255u8)
        .map(|b| unicode::byte_char(b).to_string())
        .collect();
    for m in merges {
        let joined = m.replacen(' ', "", 1);
        if !tokens.contains(&joined) {
            tokens.push(joined);
        }
    }
    let mut types = vec![1; tokens.len()];
    for (t, ty) in extra {
        tokens.push(t.to_string());
        types.push(*ty);
    }
    TokenizerSpec {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: types,
        merges: merges.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    }
}

fn id(tok: &Tokenizer, text: &str) -> u32 {
    tok.token_id(text)
        .unwrap_or_else(|| panic!("no token {text:?}"))
}

#[test]
fn bpe_merges_lowest_rank_first() {
    // "a b" outranks "b c": "abc" -> "ab" + "c", never "a" + "bc"
    let spec = bpe_spec("gpt-2", &["a b", "b c", "ab c"], &[]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(tok.encode("abc", false, false), [id(&tok, "abc")]);
    let spec = bpe_spec("gpt-2", &["b c", "a b"], &[]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(
        tok.encode("abc", false, false),
        [id(&tok, "a"), id(&tok, "bc")]
    );
    // equal ranks: leftmost first
    let spec = bpe_spec("gpt-2", &["a a"], &[]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(
        tok.encode("aaa", false, false),
        [id(&tok, "aa"), id(&tok, "a")]
    );
}

#[test]
fn long_words_merge_like_short_ones() {
    // the heap path (> 64 symbols) must agree with the scan path
    let spec = bpe_spec("gpt-2", &["a a", "aa a", "aa aa", "b a", "aaaa aaaa"], &[]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    for n in [1usize, 2, 3, 7, 9, 63, 64, 65, 100, 257] {
        let word = "ba".repeat(n / 2) + &"a".repeat(n);
        let ids = tok.encode(&word, false, false);
        let back: Vec<u8> = ids
            .iter()
            .flat_map(|&i| tok.token_bytes(i).to_vec())
            .collect();
        assert_eq!(back, word.as_bytes());
        // recompute with the scan on pieces: the number of tokens is fixed by the rule
        let mut syms: Vec<u32> = word
            .bytes()
            .map(|b| id(&tok, &unicode::byte_char(b).to_string()))
            .collect();
        let t = tok.tables();
        let mut ranks = Vec::new();
        bpe::merge_scan(&t, &mut syms, &mut ranks);
        assert_eq!(ids, syms, "n = {n}");
    }
}

#[test]
fn byte_level_decoding_and_spaces() {
    let spec = bpe_spec("gpt-2", &["Ġ h", "Ġh i"], &[]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    let ids = tok.encode("hi hi", false, false);
    assert_eq!(ids, [id(&tok, "h"), id(&tok, "i"), id(&tok, "Ġhi")]);
    assert_eq!(tok.token_bytes(id(&tok, "Ġhi")), b" hi");
    assert_eq!(tok.decode(&ids, false), "hi hi");
    // every byte round-trips, including invalid-looking ones split across tokens
    let text = "é\u{1F999}\t\r\n x";
    assert_eq!(tok.decode(&tok.encode(text, false, false), false), text);
}

#[test]
fn special_tokens_longest_first_and_parse_flag() {
    let spec = bpe_spec("gpt-2", &[], &[("<a>", 3), ("<a><b>", 3), ("<u>", 4)]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    let (a, ab, u) = (id(&tok, "<a>"), id(&tok, "<a><b>"), id(&tok, "<u>"));
    let x = id(&tok, "x");
    assert_eq!(tok.encode("x<a><b><a>x", false, true), [x, ab, a, x]);
    // control tokens are text without parse_special; user-defined ones still match
    let plain = tok.encode("<a><u>", false, false);
    assert_eq!(plain.last(), Some(&u));
    assert!(!plain.contains(&a));
    assert!(tok.is_control(a) && !tok.is_control(u));
    assert_eq!(tok.decode(&[x, a, x], false), "xx");
    assert_eq!(tok.decode(&[x, a, x], true), "x<a>x");
}

#[test]
fn bos_eos_follow_the_flags() {
    let mut spec = bpe_spec("gpt-2", &[], &[("<s>", 3), ("</s>", 3)]);
    let s = (spec.tokens.len() - 2) as u32;
    spec.bos = Some(s);
    spec.eos = Some(s + 1);
    spec.add_bos = true;
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(tok.encode("", true, false), [s]);
    assert_eq!(tok.encode("", false, false), Vec::<u32>::new());
    assert_eq!(tok.encode("x", true, false).len(), 2);
    assert!(tok.is_eog(s + 1) && !tok.is_eog(s));
    spec.add_eos = true;
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(tok.encode("", true, false), [s, s + 1]);
}

#[test]
fn eog_tokens_are_found_by_text() {
    let spec = bpe_spec(
        "gpt-2",
        &[],
        &[("<|im_end|>", 1), ("<reponame>", 3), ("<|end|>", 1)],
    );
    let tok = Tokenizer::from_spec(&spec).unwrap();
    let im_end = id(&tok, "<|im_end|>");
    assert!(tok.is_eog(im_end) && tok.is_control(im_end));
    assert!(tok.is_eog(id(&tok, "<reponame>")));
    assert_eq!(tok.eot(), Some(im_end));
    assert!(!tok.is_eog(id(&tok, "x")));
}

#[test]
fn spm_scores_and_byte_fallback() {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for t in ["▁", "a", "b", "ab", "▁a", "▁ab", "bb"] {
        tokens.push(t.into());
        types.push(1);
    }
    let n = tokens.len();
    let mut scores = vec![0.0f32; n];
    let find = |t: &str| tokens.iter().position(|x| x == t).unwrap();
    scores[find("ab")] = -1.0;
    scores[find("▁a")] = -2.0;
    scores[find("▁ab")] = -0.5;
    scores[find("bb")] = -3.0;
    let spec = TokenizerSpec {
        model: "llama".into(),
        tokens: tokens.clone(),
        token_types: types,
        scores,
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        add_bos: true,
        add_space_prefix: true,
        ..Default::default()
    };
    let tok = Tokenizer::from_spec(&spec).unwrap();
    // " ab" -> "▁" "a" "b": "ab" (-1) beats "▁a" (-2), then "▁ab" (-0.5)
    assert_eq!(tok.encode("ab", true, false), [1, find("▁ab") as u32]);
    // 'c' is no token: its byte token
    assert_eq!(
        tok.encode("c", false, false),
        [find("▁") as u32, find("<0x63>") as u32]
    );
    assert_eq!(tok.token_bytes(find("<0x63>") as u32), b"c");
    assert_eq!(tok.token_bytes(find("▁ab") as u32), b" ab");
    // a space is prefixed after a special token too
    assert_eq!(tok.encode("<s>ab", false, true), [1, find("▁ab") as u32]);
}

#[test]
fn bad_specs_are_errors() {
    let mut spec = bpe_spec("gpt-2", &[], &[]);
    spec.bos = Some(100_000);
    assert!(
        matches!(Tokenizer::from_spec(&spec), Err(TokenizerError::Spec(m)) if m.contains("bos"))
    );
    let mut spec = bpe_spec("nope", &[], &[]);
    assert!(matches!(
        Tokenizer::from_spec(&spec),
        Err(TokenizerError::UnknownPreTokenizer(_))
    ));
    spec.model = "t5".into();
    assert!(matches!(
        Tokenizer::from_spec(&spec),
        Err(TokenizerError::UnknownModel(_))
    ));
    let mut spec = bpe_spec("gpt-2", &[], &[]);
    spec.token_types.pop();
    assert!(Tokenizer::from_spec(&spec).is_err());
}

#[test]
fn blob_round_trip_and_corruption() {
    let spec = bpe_spec("smollm", &["a b"], &[("<x>", 3)]);
    let bytes: &'static [u8] = Box::leak(spec.to_bytes().into_boxed_slice());
    let tok = Tokenizer::from_bytes(bytes).unwrap();
    assert_eq!(
        tok.encode("ab 12<x>", false, true),
        Tokenizer::from_spec(&spec)
            .unwrap()
            .encode("ab 12<x>", false, true)
    );
    // flipping any byte of the tables either still parses or is an error, never a panic
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.to_vec();
        b[i] ^= 0xA5;
        let b: &'static [u8] = Box::leak(b.into_boxed_slice());
        if let Ok(t) = Tokenizer::from_bytes(b) {
            let _ = t.encode("ab 12<x> q", true, true);
        }
    }
}

/// Found by fuzzing (fuzz/regressions/tokenizer_blob/special_text_not_utf8): a blob
/// whose special token's text is the tail of a UTF-8 sequence matched inside '€', and
/// encode sliced the input off a char boundary and panicked.
#[test]
fn special_token_text_must_be_utf8() {
    let spec = bpe_spec("gpt-2", &[], &[("<|x|>", 3)]);
    let mut blob = spec.to_bytes();
    let at = blob
        .windows(5)
        .position(|w| w == b"<|x|>")
        .expect("the special's text is in the blob");
    blob[at..at + 2].copy_from_slice(&[0x82, 0xAC]); // "€" is E2 82 AC
    let e = Tokenizer::from_vec(blob).err().expect("rejected");
    assert!(
        matches!(&e, TokenizerError::BadBlob(m) if m.contains("not UTF-8")),
        "{e}"
    );
}

#[test]
fn decoder_holds_back_split_utf8() {
    let spec = bpe_spec("gpt-2", &[], &[]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    let ids = tok.encode("é€", false, false);
    assert_eq!(ids.len(), 5); // one token per byte
    let mut d = Decoder::new(&tok, false);
    let parts: Vec<String> = ids.iter().map(|&i| d.push(i)).collect();
    assert_eq!(parts, ["", "é", "", "", "€"]);
    assert_eq!(d.push(id(&tok, &unicode::byte_char(0xE2).to_string())), "");
    assert_eq!(d.finish(), "\u{FFFD}");
    // an invalid byte in the middle becomes U+FFFD at once
    let mut d = Decoder::new(&tok, false);
    assert_eq!(
        d.push(id(&tok, &unicode::byte_char(0xFF).to_string())),
        "\u{FFFD}"
    );
}
