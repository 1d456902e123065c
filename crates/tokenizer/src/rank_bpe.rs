//! Byte-pair encoding by token rank, as tiktoken does it.
//!
//! Port of `_byte_pair_merge` / `byte_pair_encode` from tiktoken's `src/lib.rs` (MIT, tiktoken
//! 0.x): the pair whose concatenation has the lowest rank merges first, the leftmost on ties.
//! This is not the same as BPE over a merges list built from the ranks (HF's conversion): two
//! different splits of one token (`ab|a` and `a|ba`) share one rank here, so we keep tiktoken's
//! own algorithm for tiktoken files instead of going through `tokenizers::models::bpe`.

use ahash::AHashMap;

/// Ranks of byte strings: the rank is the token id.
pub(crate) struct RankBpe {
    ranks: AHashMap<Vec<u8>, u32>,
}

impl RankBpe {
    pub(crate) fn new(ranks: AHashMap<Vec<u8>, u32>) -> RankBpe {
        RankBpe { ranks }
    }

    #[inline]
    fn rank(&self, bytes: &[u8]) -> u32 {
        self.ranks.get(bytes).copied().unwrap_or(u32::MAX)
    }

    /// Appends the ids of one pre-tokenized word.
    pub(crate) fn encode_word(&self, word: &[u8], parts: &mut Vec<(usize, u32)>, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if let Some(&id) = self.ranks.get(word) {
            out.push(id);
            return;
        }
        if word.len() == 1 {
            // Every single byte has a rank in a well-formed file; a file without one loses the byte.
            return;
        }
        self.merge(word, parts);
        for w in parts.windows(2) {
            let piece = &word[w[0].0..w[1].0];
            match self.ranks.get(piece) {
                Some(&id) => out.push(id),
                // Only reachable for files that lack some single bytes: emit what exists.
                None => out.extend(piece.iter().filter_map(|b| self.ranks.get(std::slice::from_ref(b)).copied())),
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
}
