//! Codepoint classes for the pre-tokenizers and the GPT-2 byte-to-character map.
//!
//! The class of a codepoint is its general category plus a whitespace bit, taken from
//! llama.cpp's Unicode data (see `scripts/tokenizer_unicode_tables.py`) so that every
//! split lands exactly where llama.cpp puts it, whatever Unicode version Rust ships.

use super::unicode_tables::{BLOCKS, BLOCK_INDEX};

/// Class byte of one codepoint: bits 0..2 category, bit 3 whitespace.
/// [`OUT`] stands for "no codepoint here" (before or after the fragment).
pub(super) type Class = u8;

pub(super) const CAT_MASK: Class = 0x07;
pub(super) const CAT_NUMBER: Class = 1;
pub(super) const CAT_LETTER: Class = 2;
pub(super) const CAT_PUNCT: Class = 5;
pub(super) const WHITESPACE: Class = 0x08;
/// Outside the fragment: no category, not whitespace, and distinct from every real class
/// (llama.cpp's all-zero flags, which fail its "is any codepoint" test).
pub(super) const OUT: Class = 0x80;

/// Class of `cp` (any value; beyond U+10FFFF is undefined, like llama.cpp's table).
#[inline(always)]
pub(super) fn class_of(cp: u32) -> Class {
    let hi = (cp >> 8) as usize;
    if hi >= BLOCK_INDEX.len() {
        return 0;
    }
    BLOCKS[(BLOCK_INDEX[hi] as usize) << 8 | (cp & 0xFF) as usize]
}

#[inline(always)]
pub(super) fn is_letter(c: Class) -> bool {
    c & CAT_MASK == CAT_LETTER
}

#[inline(always)]
pub(super) fn is_number(c: Class) -> bool {
    c & CAT_MASK == CAT_NUMBER
}

#[inline(always)]
pub(super) fn is_space(c: Class) -> bool {
    c & WHITESPACE != 0
}

/// GPT-2's byte-level alphabet: byte `b` is written as the character `byte_char(b)`.
/// Printable bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves; the other 68
/// bytes, in increasing order, take U+0100, U+0101, ... so no token holds a space or a
/// control character.
pub(super) fn byte_char(b: u8) -> char {
    if is_printable_byte(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&x| !is_printable_byte(x)).count() as u32;
    char::from_u32(0x100 + rank).expect("U+0100..U+0143 are characters")
}

fn is_printable_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Inverse of [`byte_char`]: the byte a byte-level character stands for, if any.
pub(super) fn char_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x100 {
        return is_printable_byte(cp as u8).then_some(cp as u8);
    }
    let rank = cp.checked_sub(0x100)? as usize;
    (0..=255u8).filter(|&x| !is_printable_byte(x)).nth(rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_known_codepoints() {
        assert!(is_letter(class_of('a' as u32)));
        assert!(is_letter(class_of('Ä' as u32)));
        assert!(is_letter(class_of('中' as u32)));
        assert!(is_number(class_of('7' as u32)));
        assert!(is_number(class_of('½' as u32)));
        assert!(is_number(class_of('٣' as u32)));
        assert!(is_space(class_of(' ' as u32)));
        assert!(is_space(class_of('\n' as u32)));
        assert!(is_space(class_of(0x3000)));
        assert!(!is_space(class_of(0x200B))); // zero-width space is not \s
        assert_eq!(class_of('!' as u32) & CAT_MASK, CAT_PUNCT);
        assert_eq!(class_of('$' as u32) & CAT_MASK, 6);
        assert_eq!(class_of(0x1F999) & CAT_MASK, 6); // 🦙 is a symbol
        assert_eq!(class_of(0x10FFFF + 5), 0);
        assert!(!is_letter(OUT) && !is_number(OUT) && !is_space(OUT));
    }

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_byte(c), Some(b));
        }
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(char_byte('Ā'), Some(0));
        assert_eq!(char_byte('ł'), Some(0xA0));
        assert_eq!(char_byte('Ń'), Some(0xAD));
        assert_eq!(char_byte('ń'), None);
        assert_eq!(char_byte('€'), None);
    }
}
