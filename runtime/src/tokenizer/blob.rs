//! The serialised tokenizer: every table the encoder needs, laid out so that start-up
//! reads it in place (no parsing, no hashing, no allocation proportional to the vocab).
//!
//! Layout, all integers little-endian:
//! ```text
//! magic      8 bytes "MCCTOK\0\x03"
//! header     N_HEADER u32: see the H_* indices
//! sections   N_SECTIONS (offset u32, length u32) pairs, offsets from the blob start
//! data       the sections, each 4-byte aligned relative to the blob start
//! ```
//! Sections (n = vocab size, s = symbols = vocab plus merge-only strings):
//! - `TEXT_OFFS` u32[s+1], `TEXT`: symbol texts (token texts as stored in the GGUF,
//!   byte-level characters for BPE, `▁` for SPM spaces).
//! - `PIECE_OFFS` u32[n+1], `PIECE`: the bytes each token decodes to.
//! - `ATTR` u8[n]: llama.cpp's token attributes ([`attr`]) after its fix-ups.
//! - `SCORES` f32[n] (SPM only).
//! - `VOCAB_HT` u32[2^k]: open-addressing table text -> id, slot = id + 1 (0 = empty),
//!   linear probing from `hash_bytes(text) & (2^k - 1)`; the last id wins for a text
//!   that appears twice, as in llama.cpp.
//! - `MERGE_OFFS` u32[s+1], `MERGES` (right u32, rank u32, result u32)[m]: BPE merges
//!   grouped by left symbol, each group sorted by right symbol.
//! - `BYTE_SYM` u32[256]: BPE symbol of each raw byte's byte-level character.
//! - `BYTE_TOK` u32[256]: fallback token of a byte (BPE: the token whose text is that
//!   single byte; SPM: `<0xXX>`), NONE when absent.
//! - `SPECIALS` u32[]: control/user-defined/unknown tokens in matching order (longest
//!   text first, then lowest id).
//! - `EOG` u32[]: end-of-generation tokens, ascending.
//! - `CHAT` bytes: the chat template (UTF-8), empty when none.
//!
//! A blob whose header says `status = 1` carries an error message in `CHAT` instead:
//! the spec could not be built, and `from_bytes` reports why.

use std::borrow::Cow;

use super::TokenizerError;

pub(super) const MAGIC: &[u8; 8] = b"MCCTOK\0\x03";
/// "No token" in every u32 id field.
pub(super) const NONE: u32 = u32::MAX;

pub(super) const H_STATUS: usize = 0;
pub(super) const H_KIND: usize = 1;
pub(super) const H_PRE: usize = 2;
pub(super) const H_FLAGS: usize = 3;
pub(super) const H_N_VOCAB: usize = 4;
pub(super) const H_N_SYM: usize = 5;
pub(super) const H_BOS: usize = 6;
pub(super) const H_EOS: usize = 7;
pub(super) const H_EOT: usize = 8;
pub(super) const H_UNK: usize = 9;
pub(super) const H_PAD: usize = 10;
pub(super) const N_HEADER: usize = 11;

pub(super) const KIND_BPE: u32 = 0;
pub(super) const KIND_SPM: u32 = 1;

pub(super) const F_ADD_BOS: u32 = 1;
pub(super) const F_ADD_EOS: u32 = 2;
pub(super) const F_ADD_SPACE_PREFIX: u32 = 4;
pub(super) const F_IGNORE_MERGES: u32 = 8;

pub(super) const S_TEXT_OFFS: usize = 0;
pub(super) const S_TEXT: usize = 1;
pub(super) const S_PIECE_OFFS: usize = 2;
pub(super) const S_PIECE: usize = 3;
pub(super) const S_ATTR: usize = 4;
pub(super) const S_SCORES: usize = 5;
pub(super) const S_VOCAB_HT: usize = 6;
pub(super) const S_MERGE_OFFS: usize = 7;
pub(super) const S_MERGES: usize = 8;
pub(super) const S_BYTE_SYM: usize = 9;
pub(super) const S_BYTE_TOK: usize = 10;
pub(super) const S_SPECIALS: usize = 11;
pub(super) const S_EOG: usize = 12;
pub(super) const S_CHAT: usize = 13;
pub(super) const N_SECTIONS: usize = 14;

const SECTIONS_AT: usize = 8 + 4 * N_HEADER;
const DATA_AT: usize = SECTIONS_AT + 8 * N_SECTIONS;

/// Token attributes, llama.cpp's `llama_token_attr` subset that tokenizing reads.
pub mod attr {
    pub const UNKNOWN: u8 = 1;
    pub const UNUSED: u8 = 2;
    pub const NORMAL: u8 = 4;
    pub const CONTROL: u8 = 8;
    pub const USER_DEFINED: u8 = 16;
    pub const BYTE: u8 = 32;
}

/// Hash of a byte string for `VOCAB_HT`. Part of the format: writer and reader must
/// agree, so it is fixed here rather than taken from std (whose hasher is seeded).
#[inline]
pub(super) fn hash_bytes(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = 0x243F_6A88_85A3_08D3u64 ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
        h = (h ^ w).wrapping_mul(K);
        h ^= h >> 29;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    h ^ (h >> 32)
}

/// Builds a blob section by section.
pub(super) struct Writer {
    header: [u32; N_HEADER],
    sections: Vec<Vec<u8>>,
}

impl Writer {
    pub(super) fn new() -> Writer {
        Writer {
            header: [0; N_HEADER],
            sections: vec![Vec::new(); N_SECTIONS],
        }
    }

    pub(super) fn set(&mut self, field: usize, value: u32) {
        self.header[field] = value;
    }

    pub(super) fn bytes(&mut self, section: usize, data: Vec<u8>) {
        self.sections[section] = data;
    }

    pub(super) fn u32s(&mut self, section: usize, data: &[u32]) {
        self.sections[section] = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    }

    pub(super) fn finish(self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(DATA_AT + self.sections.iter().map(|s| s.len() + 3).sum::<usize>());
        out.extend_from_slice(MAGIC);
        for h in self.header {
            out.extend_from_slice(&h.to_le_bytes());
        }
        out.resize(DATA_AT, 0);
        for (i, data) in self.sections.iter().enumerate() {
            while out.len() % 4 != 0 {
                out.push(0);
            }
            let at = out.len() as u32;
            out[SECTIONS_AT + 8 * i..SECTIONS_AT + 8 * i + 4].copy_from_slice(&at.to_le_bytes());
            out[SECTIONS_AT + 8 * i + 4..SECTIONS_AT + 8 * i + 8]
                .copy_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    /// A blob that records why the spec could not be built.
    pub(super) fn error(message: &str) -> Vec<u8> {
        let mut w = Writer::new();
        w.set(H_STATUS, 1);
        w.bytes(S_CHAT, message.as_bytes().to_vec());
        w.finish()
    }
}

/// A checked blob: header fields and the byte range of every section.
pub(super) struct Blob {
    pub(super) bytes: Cow<'static, [u8]>,
    pub(super) header: [u32; N_HEADER],
    pub(super) ranges: [(usize, usize); N_SECTIONS],
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

impl Blob {
    /// Check the framing (magic, header, section bounds); the contents are checked by
    /// the tokenizer that reads them.
    pub(super) fn parse(bytes: Cow<'static, [u8]>) -> Result<Blob, TokenizerError> {
        let bad = |why: String| TokenizerError::BadBlob(why);
        if bytes.len() < DATA_AT {
            return Err(bad(format!(
                "{} bytes, shorter than the {DATA_AT}-byte header",
                bytes.len()
            )));
        }
        if &bytes[..8] != MAGIC {
            return Err(bad(format!(
                "magic {:?}, expected {:?}",
                &bytes[..8],
                MAGIC
            )));
        }
        let mut header = [0u32; N_HEADER];
        for (i, h) in header.iter_mut().enumerate() {
            *h = read_u32(&bytes, 8 + 4 * i);
        }
        let mut ranges = [(0usize, 0usize); N_SECTIONS];
        for (i, r) in ranges.iter_mut().enumerate() {
            let off = read_u32(&bytes, SECTIONS_AT + 8 * i) as usize;
            let len = read_u32(&bytes, SECTIONS_AT + 8 * i + 4) as usize;
            if off & 3 != 0 || off < DATA_AT || off.checked_add(len).is_none_or(|e| e > bytes.len())
            {
                return Err(bad(format!(
                    "section {i} at {off}+{len} outside the {}-byte blob",
                    bytes.len()
                )));
            }
            *r = (off, off + len);
        }
        let blob = Blob {
            bytes,
            header,
            ranges,
        };
        if header[H_STATUS] != 0 {
            let msg = String::from_utf8_lossy(blob.section(S_CHAT)).into_owned();
            return Err(TokenizerError::Spec(msg));
        }
        Ok(blob)
    }

    pub(super) fn section(&self, s: usize) -> &[u8] {
        let (a, b) = self.ranges[s];
        &self.bytes[a..b]
    }
}

/// A section read as little-endian u32s.
#[derive(Clone, Copy)]
pub(super) struct U32s<'a>(pub(super) &'a [u8]);

impl<'a> U32s<'a> {
    #[inline(always)]
    pub(super) fn len(self) -> usize {
        self.0.len() / 4
    }

    #[inline(always)]
    pub(super) fn get(self, i: usize) -> u32 {
        u32::from_le_bytes(self.0[4 * i..4 * i + 4].try_into().expect("4 bytes"))
    }

    pub(super) fn iter(self) -> impl Iterator<Item = u32> + 'a {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_byte_and_length() {
        let a = hash_bytes(b"hello world, long");
        assert_ne!(a, hash_bytes(b"hello world, lonG"));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"a\0"));
        assert_eq!(a, hash_bytes(b"hello world, long"));
    }

    #[test]
    fn framing_errors_are_values() {
        assert!(matches!(
            Blob::parse(Cow::Borrowed(b"short")),
            Err(TokenizerError::BadBlob(_))
        ));
        let mut ok = Writer::new().finish();
        assert!(Blob::parse(Cow::Owned(ok.clone())).is_ok());
        ok[0] = b'X';
        assert!(matches!(
            Blob::parse(Cow::Owned(ok)),
            Err(TokenizerError::BadBlob(_))
        ));
        let mut w = Writer::new();
        w.bytes(S_CHAT, vec![1, 2, 3]);
        let mut b = w.finish();
        let at = SECTIONS_AT + 8 * S_CHAT + 4;
        b[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            Blob::parse(Cow::Owned(b)),
            Err(TokenizerError::BadBlob(_))
        ));
        let e = Blob::parse(Cow::Owned(Writer::error("no merges")))
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "tokenizer spec: no merges");
    }
}
