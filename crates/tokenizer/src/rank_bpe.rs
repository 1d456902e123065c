//! Byte-pair encoding by token rank, as tiktoken does it.
//!
//! Port of `_byte_pair_merge` / `byte_pair_encode` from tiktoken's `src/lib.rs` (MIT, tiktoken
//! 0.x): the pair whose concatenation has the lowest rank merges first, the leftmost on ties.
//! This is not the same as BPE over a merges list built from the ranks (HF's conversion): two
//! different splits of one token (`ab|a` and `a|ba`) share one rank here, so we keep tiktoken's
//! own algorithm for tiktoken files instead of going through `tokenizers::models::bpe`.

use ahash::AHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Words longer than this merge through a heap: tiktoken's scan is quadratic, which turns a
/// megabyte without spaces into minutes. Both give the same parts.
const LONG_WORD_BYTES: usize = 256;

/// Byte strings up to this long are looked up packed in a `u128` (no pointer chase, no memcmp).
const SHORT_KEY_BYTES: usize = 15;

#[inline]
fn short_key(bytes: &[u8]) -> u128 {
    let mut key = [0u8; 16];
    key[..bytes.len()].copy_from_slice(bytes);
    key[15] = bytes.len() as u8;
    u128::from_le_bytes(key)
}

/// Ranks of byte strings: the rank is the token id.
pub(crate) struct RankBpe {
    short: AHashMap<u128, u32>,
    long: AHashMap<Vec<u8>, u32>,
}

impl RankBpe {
    pub(crate) fn new(ranks: AHashMap<Vec<u8>, u32>) -> RankBpe {
        let mut short = AHashMap::with_capacity(ranks.len());
        let mut long = AHashMap::new();
        for (bytes, rank) in ranks {
            if bytes.len() <= SHORT_KEY_BYTES {
                short.insert(short_key(&bytes), rank);
            } else {
                long.insert(bytes, rank);
            }
        }
        RankBpe { short, long }
    }

    #[inline]
    fn get(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() <= SHORT_KEY_BYTES {
            self.short.get(&short_key(bytes)).copied()
        } else {
            self.long.get(bytes).copied()
        }
    }

    #[inline]
    fn rank(&self, bytes: &[u8]) -> u32 {
        self.get(bytes).unwrap_or(u32::MAX)
    }

    /// Appends the ids of one pre-tokenized word.
    pub(crate) fn encode_word(
        &self,
        word: &[u8],
        parts: &mut Vec<(usize, u32)>,
        out: &mut Vec<u32>,
    ) {
        if word.is_empty() {
            return;
        }
        if let Some(id) = self.get(word) {
            out.push(id);
            return;
        }
        if word.len() == 1 {
            // Every single byte has a rank in a well-formed file; a file without one loses the byte.
            return;
        }
        if word.len() > LONG_WORD_BYTES {
            self.merge_long(word, parts);
        } else {
            self.merge(word, parts);
        }
        for w in parts.windows(2) {
            let piece = &word[w[0].0..w[1].0];
            match self.get(piece) {
                Some(id) => out.push(id),
                // Only reachable for files that lack some single bytes: emit what exists.
                None => out.extend(
                    piece
                        .iter()
                        .filter_map(|b| self.get(std::slice::from_ref(b))),
                ),
            }
        }
    }

    /// `parts[i] = (start, rank of the pair starting there)`; merges until no pair has a rank.
    fn merge(&self, piece: &[u8], parts: &mut Vec<(usize, u32)>) {
        parts.clear();
        let mut min_rank = (u32::MAX, usize::MAX);
        for i in 0..piece.len() - 1 {
            let rank = self.rank(&piece[i..i + 2]);
            if rank < min_rank.0 {
                min_rank = (rank, i);
            }
            parts.push((i, rank));
        }
        parts.push((piece.len() - 1, u32::MAX));
        parts.push((piece.len(), u32::MAX));

        let get_rank = |parts: &Vec<(usize, u32)>, i: usize| -> u32 {
            if i + 3 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 3].0])
            } else {
                u32::MAX
            }
        };

        while min_rank.0 != u32::MAX {
            let i = min_rank.1;
            if i > 0 {
                parts[i - 1].1 = get_rank(parts, i - 1);
            }
            parts[i].1 = get_rank(parts, i);
            parts.remove(i + 1);

            min_rank = (u32::MAX, usize::MAX);
            for (i, &(_, rank)) in parts[..parts.len() - 1].iter().enumerate() {
                if rank < min_rank.0 {
                    min_rank = (rank, i);
                }
            }
        }
    }
}

impl RankBpe {
    /// The same merges as [`RankBpe::merge`] in O(n log n): a heap of candidate pairs keyed by
    /// (rank, start), stale entries skipped when popped. Lowest rank first and leftmost on ties,
    /// exactly as the scan picks them.
    fn merge_long(&self, piece: &[u8], parts: &mut Vec<(usize, u32)>) {
        let n = piece.len();
        // `end[i]`: end of the part starting at byte i (0 when no part starts there).
        let mut end: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            let rank = self.rank(&piece[i..i + 2]);
            if rank != u32::MAX {
                heap.push(Reverse((rank, i, i + 1, i + 2)));
            }
        }
        while let Some(Reverse((_, left, mid, right))) = heap.pop() {
            if end[left] != mid || mid >= n || end[mid] != right {
                continue; // stale: one side has merged since
            }
            end[left] = right;
            end[mid] = 0;
            if right < n {
                prev[right] = left;
            }
            let p = prev[left];
            if p < n {
                let rank = self.rank(&piece[p..right]);
                if rank != u32::MAX {
                    heap.push(Reverse((rank, p, left, right)));
                }
            }
            if right < n {
                let next_end = end[right];
                let rank = self.rank(&piece[left..next_end]);
                if rank != u32::MAX {
                    heap.push(Reverse((rank, left, right, next_end)));
                }
            }
        }
        parts.clear();
        let mut i = 0;
        while i < n {
            parts.push((i, u32::MAX));
            i = end[i];
        }
        parts.push((n, u32::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_rank_merges_first_leftmost_on_ties() {
        let mut ranks = AHashMap::new();
        for (i, t) in ["a", "b", "ab", "ba", "aba"].iter().enumerate() {
            ranks.insert(t.as_bytes().to_vec(), i as u32);
        }
        let bpe = RankBpe::new(ranks);
        let mut out = Vec::new();
        bpe.encode_word(b"ababa", &mut Vec::new(), &mut out);
        // ab (rank 2) merges at 0 and 2 -> ab ab a; then ab+a = aba (rank 4) -> ab aba.
        assert_eq!(out, [2, 4]);
    }

    /// The heap merge gives the scan's parts on random words with random ranks.
    #[test]
    fn heap_merge_equals_scan() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"abc";
        let mut ranks = AHashMap::new();
        for b in alphabet {
            ranks.insert(vec![*b], ranks.len() as u32);
        }
        // Random ranks for many strings of length 2..=6.
        for _ in 0..400 {
            let len = 2 + (next() % 5) as usize;
            let s: Vec<u8> = (0..len).map(|_| alphabet[(next() % 3) as usize]).collect();
            let r = 3 + (next() % 1000) as u32;
            ranks.entry(s).or_insert(r);
        }
        let bpe = RankBpe::new(ranks);
        for _ in 0..300 {
            let len = 2 + (next() % 300) as usize;
            let word: Vec<u8> = (0..len).map(|_| alphabet[(next() % 3) as usize]).collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            bpe.merge(&word, &mut a);
            bpe.merge_long(&word, &mut b);
            let starts = |p: &Vec<(usize, u32)>| p.iter().map(|x| x.0).collect::<Vec<_>>();
            assert_eq!(starts(&a), starts(&b), "{}", String::from_utf8_lossy(&word));
        }
    }
}
