//! BPE merging within one word.
//!
//! The rule: while some adjacent pair of symbols has a merge, merge the pair with the
//! lowest rank, the leftmost one among equal ranks. Short words (almost all) use a
//! plain scan over the pairs; long ones a heap with lazy deletion. Both apply the same
//! rule, so they give the same result.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::blob::NONE;
use super::Tables;

/// Words up to this many symbols merge by scanning: O(n^2), but no heap traffic.
const SCAN_MAX: usize = 64;

/// A queued merge: (rank, left position, right position, left symbol, right symbol).
type Candidate = (u32, u32, u32, u32, u32);

/// Reusable buffers, so that encoding allocates per call rather than per word.
#[derive(Default)]
pub(super) struct Scratch {
    ranks: Vec<(u32, u32)>,
    next: Vec<u32>,
    prev: Vec<u32>,
    heap: BinaryHeap<Reverse<Candidate>>,
    merged: Vec<u32>,
}

/// Merge the symbols of one word in place.
pub(super) fn merge(t: &Tables, syms: &mut Vec<u32>, scratch: &mut Scratch) {
    if syms.len() < 2 {
        return;
    }
    if syms.len() <= SCAN_MAX {
        merge_scan(t, syms, &mut scratch.ranks);
    } else {
        merge_heap(t, syms, scratch);
    }
}

pub(super) fn merge_scan(t: &Tables, syms: &mut Vec<u32>, ranks: &mut Vec<(u32, u32)>) {
    ranks.clear();
    ranks.extend(syms.windows(2).map(|w| t.merge(w[0], w[1])));
    loop {
        let mut best = NONE;
        let mut at = 0;
        for (i, &(rank, _)) in ranks.iter().enumerate() {
            if rank < best {
                best = rank;
                at = i;
            }
        }
        if best == NONE {
            return;
        }
        syms[at] = ranks[at].1;
        syms.remove(at + 1);
        ranks.remove(at);
        if at > 0 {
            ranks[at - 1] = t.merge(syms[at - 1], syms[at]);
        }
        if at + 1 < syms.len() {
            ranks[at] = t.merge(syms[at], syms[at + 1]);
        }
    }
}

fn merge_heap(t: &Tables, syms: &mut Vec<u32>, s: &mut Scratch) {
    let n = syms.len();
    s.next.clear();
    s.next
        .extend((1..=n as u32).map(|i| if i as usize == n { NONE } else { i }));
    s.prev.clear();
    s.prev
        .extend((0..n as u32).map(|i| if i == 0 { NONE } else { i - 1 }));
    s.heap.clear();
    // entries: (rank, left position, right position, left symbol, right symbol)
    let push = |heap: &mut BinaryHeap<_>, syms: &[u32], l: u32, r: u32| {
        if l == NONE || r == NONE {
            return;
        }
        let (rank, _) = t.merge(syms[l as usize], syms[r as usize]);
        if rank != NONE {
            heap.push(Reverse((rank, l, r, syms[l as usize], syms[r as usize])));
        }
    };
    for i in 0..n as u32 - 1 {
        push(&mut s.heap, syms, i, i + 1);
    }
    while let Some(Reverse((_, l, r, ls, rs))) = s.heap.pop() {
        let (li, ri) = (l as usize, r as usize);
        // stale: one side was merged away or has grown since the pair was queued
        if syms[li] != ls || syms[ri] != rs || s.next[li] != r {
            continue;
        }
        syms[li] = t.merge(ls, rs).1;
        syms[ri] = NONE;
        let after = s.next[ri];
        s.next[li] = after;
        if after != NONE {
            s.prev[after as usize] = l;
        }
        push(&mut s.heap, syms, s.prev[li], l);
        push(&mut s.heap, syms, l, after);
    }
    s.merged.clear();
    let mut i = 0u32;
    while i != NONE {
        s.merged.push(syms[i as usize]);
        i = s.next[i as usize];
    }
    syms.clear();
    syms.extend_from_slice(&s.merged);
}
