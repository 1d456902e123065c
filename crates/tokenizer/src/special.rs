//! Finding special tokens in text before BPE sees it.
//!
//! Port of llama.cpp's `tokenizer_st_partition` (`src/llama-vocab.cpp`, 0c1e57098): special
//! tokens are taken one at a time, longest text first, and each splits every remaining raw-text
//! fragment at all of its occurrences. CONTROL (and UNKNOWN) tokens are matched only when
//! `parse_special` is on; USER_DEFINED tokens always are, as in llama.cpp and HF `tokenizers`.
//!
//! An Aho-Corasick scan first finds which special tokens occur at all, so text without any
//! costs one linear pass however many special tokens the vocabulary has.

use aho_corasick::AhoCorasick;
use std::ops::Range;

/// A piece of the input: raw text (a byte range of it) or a special token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

struct SpecialToken {
    id: u32,
    text: String,
    /// Matched even when `parse_special` is off (USER_DEFINED).
    always: bool,
}

pub(crate) struct SpecialMatcher {
    /// Longest first, ties by id (llama.cpp sorts by length only).
    tokens: Vec<SpecialToken>,
    automaton: Option<AhoCorasick>,
    any_always: bool,
}

impl SpecialMatcher {
    /// `specials`: `(id, text, always)`; empty texts are ignored.
    pub(crate) fn new(specials: Vec<(u32, String, bool)>) -> SpecialMatcher {
        let mut tokens: Vec<SpecialToken> = specials
            .into_iter()
            .filter(|(_, text, _)| !text.is_empty())
            .map(|(id, text, always)| SpecialToken { id, text, always })
            .collect();
        tokens.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        let automaton = if tokens.is_empty() {
            None
        } else {
            AhoCorasick::new(tokens.iter().map(|t| t.text.as_bytes())).ok()
        };
        let any_always = tokens.iter().any(|t| t.always);
        SpecialMatcher {
            tokens,
            automaton,
            any_always,
        }
    }

    /// Splits `text` into fragments; `present` is scratch space.
    pub(crate) fn partition(
        &self,
        text: &str,
        parse_special: bool,
        present: &mut Vec<bool>,
        out: &mut Vec<Fragment>,
    ) {
        out.clear();
        if text.is_empty() {
            return;
        }
        out.push(Fragment::Text(0..text.len()));
        if !parse_special && !self.any_always {
            return;
        }
        let Some(automaton) = &self.automaton else {
            return;
        };
        present.clear();
        present.resize(self.tokens.len(), false);
        let mut n_present = 0;
        for m in automaton.find_overlapping_iter(text.as_bytes()) {
            let i = m.pattern().as_usize();
            if !present[i] {
                present[i] = true;
                n_present += 1;
            }
        }
        if n_present == 0 {
            return;
        }
        let mut next = Vec::with_capacity(out.len() + 2);
        for (token, _) in self.tokens.iter().zip(present.iter()).filter(|(_, &p)| p) {
            if !parse_special && !token.always {
                continue;
            }
            next.clear();
            for frag in out.drain(..) {
                let Fragment::Text(range) = frag else {
                    next.push(frag);
                    continue;
                };
                let mut start = range.start;
                let hay = &text[range.clone()];
                for (at, _) in hay.match_indices(token.text.as_str()) {
                    let abs = range.start + at;
                    if abs > start {
                        next.push(Fragment::Text(start..abs));
                    }
                    next.push(Fragment::Token(token.id));
                    start = abs + token.text.len();
                }
                if start < range.end {
                    next.push(Fragment::Text(start..range.end));
                }
            }
            std::mem::swap(out, &mut next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> SpecialMatcher {
        SpecialMatcher::new(vec![
            (1, "<|im_start|>".into(), false),
            (2, "<|im".into(), false),
            (3, "<u>".into(), true),
        ])
    }

    #[test]
    fn longest_first_and_parse_special_switch() {
        let m = matcher();
        let mut out = Vec::new();
        let text = "a<|im_start|>b<|imc<u>";
        m.partition(text, true, &mut Vec::new(), &mut out);
        assert_eq!(
            out,
            [
                Fragment::Text(0..1),
                Fragment::Token(1),
                Fragment::Text(13..14),
                Fragment::Token(2),
                Fragment::Text(18..19),
                Fragment::Token(3)
            ]
        );
        m.partition(text, false, &mut Vec::new(), &mut out);
        assert_eq!(out, [Fragment::Text(0..19), Fragment::Token(3)]);
    }
}
