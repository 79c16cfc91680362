//! SentencePiece-style (`llama` model) tokenizing of one text fragment.
//!
//! Start from one symbol per UTF-8 character; repeatedly join the adjacent pair whose
//! concatenation is the vocabulary token with the highest score (the leftmost pair among
//! equal scores). A symbol left over that is no token becomes its bytes' `<0xXX>` tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::blob::NONE;
use super::Tables;

/// A candidate join: a pair of adjacent symbols whose concatenation is a token.
struct Pair {
    score: f32,
    left: u32,
    right: u32,
    /// byte length of the concatenation when queued; a mismatch later means stale
    len: u32,
}

impl Ord for Pair {
    /// Highest score first, then leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

/// Tokenize `text` (spaces already written as `▁`) and append the ids to `out`.
pub(super) fn tokenize(t: &Tables, text: &str, unk: Option<u32>, out: &mut Vec<u32>) {
    let bytes = text.as_bytes();
    // symbol i covers bytes [start[i], end[i]); end == start once merged away
    let mut start: Vec<u32> = Vec::with_capacity(bytes.len());
    let mut end: Vec<u32> = Vec::with_capacity(bytes.len());
    for (i, c) in text.char_indices() {
        start.push(i as u32);
        end.push((i + c.len_utf8()) as u32);
    }
    let n = start.len();
    if n == 0 {
        return;
    }
    let mut next: Vec<u32> = (1..=n as u32)
        .map(|i| if i as usize == n { NONE } else { i })
        .collect();
    let mut prev: Vec<u32> = (0..n as u32)
        .map(|i| if i == 0 { NONE } else { i - 1 })
        .collect();
    let mut heap = BinaryHeap::new();
    let try_pair = |heap: &mut BinaryHeap<Pair>, start: &[u32], end: &[u32], l: u32, r: u32| {
        if l == NONE || r == NONE {
            return;
        }
        let (a, b) = (start[l as usize] as usize, end[r as usize] as usize);
        if let Some(id) = t.lookup(&bytes[a..b]) {
            heap.push(Pair {
                score: t.score(id),
                left: l,
                right: r,
                len: (b - a) as u32,
            });
        }
    };
    for i in 1..n as u32 {
        try_pair(&mut heap, &start, &end, i - 1, i);
    }
    while let Some(p) = heap.pop() {
        let (l, r) = (p.left as usize, p.right as usize);
        let len_l = end[l] - start[l];
        let len_r = end[r] - start[r];
        if len_l == 0 || len_r == 0 || len_l + len_r != p.len {
            continue;
        }
        end[l] = end[r];
        end[r] = start[r];
        let after = next[r];
        next[l] = after;
        if after != NONE {
            prev[after as usize] = p.left;
        }
        try_pair(&mut heap, &start, &end, prev[l], p.left);
        try_pair(&mut heap, &start, &end, p.left, after);
    }
    let mut i = 0u32;
    while i != NONE {
        let piece = &bytes[start[i as usize] as usize..end[i as usize] as usize];
        match t.lookup(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece {
                    out.extend(t.byte_tok(b).or(unk));
                }
            }
        }
        i = next[i as usize];
    }
}
