//! Pre-tokenizers: split text into the words that BPE then encodes one by one.
//!
//! Each splitter is a port of llama.cpp's hand-written equivalent of a regex
//! (`unicode_regex_split_custom_gpt2`, `_llama3`, `_qwen2` in `src/unicode.cpp`, llama.cpp
//! 0c1e57098). They work on code points, keep text that no alternative matches as its own
//! piece (as llama.cpp does), and treat the end of a fragment as the end of the text, so
//! `\s+(?!\S)` keeps the last whitespace char for the next word except at the very end.
//!
//! `smollm` (and the StarCoder family) first isolates every `\p{N}` code point (llama.cpp runs
//! the regex `\p{N}` and keeps the unmatched gaps as pieces) and then applies the GPT-2 splitter
//! inside each piece.

use crate::error::{Error, Result};
use crate::unicode::{CharClasses, LETTER, NUMBER, WHITESPACE};
use std::ops::Range;

/// Which splitting rules a tokenizer uses (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
    Gpt2,
    /// Every `\p{N}` its own piece, then the GPT-2 rules (SmolLM, StarCoder).
    Smollm,
    /// Llama 3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Llama3,
    /// Qwen 2: as Llama 3 but `\p{N}` (one digit per piece).
    Qwen2,
}

/// What a `tokenizer.ggml.pre` name implies, as llama.cpp's `llama_vocab::impl::load` sets it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreTokenizerInfo {
    pub(crate) kind: PreTokenizerKind,
    /// Whole words found in the vocabulary skip BPE.
    pub(crate) ignore_merges: bool,
    /// Default for `add_bos` when the file has no `tokenizer.ggml.add_bos_token`.
    pub(crate) add_bos_default: bool,
}

impl PreTokenizerInfo {
    /// Looks up a `tokenizer.ggml.pre` value (llama.cpp's names and aliases).
    pub(crate) fn from_name(pre: &str) -> Result<PreTokenizerInfo> {
        use PreTokenizerKind::*;
        let (kind, ignore_merges, add_bos_default) = match pre {
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => (Llama3, true, true),
            "dbrx" | "smaug-bpe" => (Llama3, false, false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => (Smollm, false, false),
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "exaone4"
            | "mellum" | "gigachat" | "a.x-4.0" => (Gpt2, false, false),
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "kormo" | "f2llmv2" => {
                (Qwen2, false, false)
            }
            _ => {
                return Err(Error::UnsupportedPreTokenizer {
                    pre: pre.to_string(),
                })
            }
        };
        Ok(PreTokenizerInfo {
            kind,
            ignore_merges,
            add_bos_default,
        })
    }
}

/// A pre-tokenizer bound to its code point classes.
#[derive(Clone, Copy)]
pub(crate) struct PreTokenizer {
    pub(crate) kind: PreTokenizerKind,
    classes: &'static CharClasses,
    /// Match `'ſ` as a contraction, as tiktoken's `(?i:'s)` does (llama.cpp does not).
    fold_long_s: bool,
}

/// Scratch space reused across calls so that splitting allocates nothing once warm.
#[derive(Default)]
pub(crate) struct SplitScratch {
    cpts: Vec<char>,
    byte_offsets: Vec<usize>,
    lens: Vec<usize>,
    segments: Vec<usize>,
}

impl PreTokenizer {
    /// llama.cpp's rules and tables (GGUF tokenizers).
    pub(crate) fn llama_cpp(kind: PreTokenizerKind) -> PreTokenizer {
        PreTokenizer {
            kind,
            classes: CharClasses::llama_cpp(),
            fold_long_s: false,
        }
    }

    /// The rules as the `regex` crate evaluates them (tiktoken files).
    pub(crate) fn regex(kind: PreTokenizerKind) -> PreTokenizer {
        PreTokenizer {
            kind,
            classes: CharClasses::regex(),
            fold_long_s: true,
        }
    }

    /// Splits `text` into words, appending their byte ranges (relative to `text`) to `out`.
    pub(crate) fn split(
        &self,
        text: &str,
        scratch: &mut SplitScratch,
        out: &mut Vec<Range<usize>>,
    ) {
        let SplitScratch {
            cpts,
            byte_offsets,
            lens,
            segments,
        } = scratch;
        cpts.clear();
        byte_offsets.clear();
        for (i, c) in text.char_indices() {
            cpts.push(c);
            byte_offsets.push(i);
        }
        byte_offsets.push(text.len());
        segments.clear();
        lens.clear();
        if self.kind == PreTokenizerKind::Smollm {
            split_numbers(cpts, self.classes, segments);
        } else if !cpts.is_empty() {
            segments.push(cpts.len());
        }
        let mut start = 0;
        for &len in segments.iter() {
            let end = start + len;
            let seg = Segment {
                cpts,
                ini: start,
                end,
                classes: self.classes,
            };
            match self.kind {
                PreTokenizerKind::Gpt2 | PreTokenizerKind::Smollm => seg.split_gpt2(lens),
                PreTokenizerKind::Llama3 => seg.split_llama3(lens, 3, self.fold_long_s),
                PreTokenizerKind::Qwen2 => seg.split_llama3(lens, 1, self.fold_long_s),
            }
            start = end;
        }
        let mut pos = 0;
        for &len in lens.iter() {
            out.push(byte_offsets[pos]..byte_offsets[pos + len]);
            pos += len;
        }
    }
}

/// The regex `\p{N}` with unmatched gaps kept: every number its own piece.
fn split_numbers(cpts: &[char], classes: &CharClasses, lens: &mut Vec<usize>) {
    let mut gap = 0;
    for &c in cpts {
        if classes.get(c) & NUMBER != 0 {
            if gap > 0 {
                lens.push(gap);
                gap = 0;
            }
            lens.push(1);
        } else {
            gap += 1;
        }
    }
    if gap > 0 {
        lens.push(gap);
    }
}

/// Code points `ini..end` of the text: one fragment of the previous split.
struct Segment<'a> {
    cpts: &'a [char],
    ini: usize,
    end: usize,
    classes: &'a CharClasses,
}

/// Flags of a position past the fragment (llama.cpp's empty `unicode_cpt_flags{}`).
const OUT: u8 = 0;
/// Any real code point has nonzero flags in llama.cpp (`UNDEFINED` is a flag too).
const DEFINED: u8 = 0x80;

impl Segment<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> Option<char> {
        if pos >= self.ini && pos < self.end {
            Some(self.cpts[pos])
        } else {
            None
        }
    }

    #[inline]
    fn flags(&self, pos: usize) -> u8 {
        match self.cpt(pos) {
            Some(c) => self.classes.get(c) | DEFINED,
            None => OUT,
        }
    }

    /// Port of `unicode_regex_split_custom_gpt2`.
    fn split_gpt2(&self, lens: &mut Vec<usize>) {
        let mut prev_end = self.ini;
        let mut add = |end: usize, lens: &mut Vec<usize>| -> usize {
            let len = end - prev_end;
            if len > 0 {
                lens.push(len);
            }
            prev_end = end;
            len
        };
        let is_ws = |f: u8| f & WHITESPACE != 0;
        let is_l = |f: u8| f & LETTER != 0;
        let is_n = |f: u8| f & NUMBER != 0;
        let mut pos = self.ini;
        while pos < self.end {
            let cpt = self.cpts[pos];
            let flags = self.flags(pos);

            // 's|'t|'re|'ve|'m|'ll|'d
            if cpt == '\'' && pos + 1 < self.end {
                let next = self.cpts[pos + 1];
                if matches!(next, 's' | 't' | 'm' | 'd') {
                    pos += add(pos + 2, lens);
                    continue;
                }
                if pos + 2 < self.end {
                    let next2 = self.cpts[pos + 2];
                    if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                        pos += add(pos + 3, lens);
                        continue;
                    }
                }
            }

            let space = usize::from(cpt == ' ');
            let mut flags2 = if cpt == ' ' {
                self.flags(pos + 1)
            } else {
                flags
            };
            //  ?\p{L}+
            if is_l(flags2) {
                pos += space;
                while is_l(flags2) {
                    pos += 1;
                    flags2 = self.flags(pos);
                }
                add(pos, lens);
                continue;
            }
            //  ?\p{N}+
            if is_n(flags2) {
                pos += space;
                while is_n(flags2) {
                    pos += 1;
                    flags2 = self.flags(pos);
                }
                add(pos, lens);
                continue;
            }
            //  ?[^\s\p{L}\p{N}]+
            if !(is_ws(flags2) || is_l(flags2) || is_n(flags2)) && flags2 != OUT {
                pos += space;
                while !(is_ws(flags2) || is_l(flags2) || is_n(flags2)) && flags2 != OUT {
                    pos += 1;
                    flags2 = self.flags(pos);
                }
                add(pos, lens);
                continue;
            }

            let mut n_ws = 0;
            while is_ws(self.flags(pos + n_ws)) {
                n_ws += 1;
            }
            // \s+(?!\S)
            if n_ws > 1 && self.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                add(pos, lens);
                continue;
            }
            // \s+
            if n_ws > 0 {
                pos += n_ws;
                add(pos, lens);
                continue;
            }
            // no match
            pos += 1;
            add(pos, lens);
        }
    }

    /// Port of `unicode_regex_split_custom_llama3` (`max_digits` 3) and
    /// `unicode_regex_split_custom_qwen2` (`max_digits` 1).
    fn split_llama3(&self, lens: &mut Vec<usize>, max_digits: usize, fold_long_s: bool) {
        let mut prev_end = self.ini;
        let mut add = |end: usize, lens: &mut Vec<usize>| -> usize {
            let len = end - prev_end;
            if len > 0 {
                lens.push(len);
            }
            prev_end = end;
            len
        };
        let is_ws = |f: u8| f & WHITESPACE != 0;
        let is_l = |f: u8| f & LETTER != 0;
        let is_n = |f: u8| f & NUMBER != 0;
        let lower = |c: char| -> char {
            if fold_long_s && c == 'ſ' {
                's'
            } else {
                c.to_ascii_lowercase()
            }
        };
        let mut pos = self.ini;
        while pos < self.end {
            let cpt = self.cpts[pos];
            let flags = self.flags(pos);

            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if cpt == '\'' && pos + 1 < self.end {
                let next = lower(self.cpts[pos + 1]);
                if matches!(next, 's' | 't' | 'm' | 'd') {
                    pos += add(pos + 2, lens);
                    continue;
                }
                if pos + 2 < self.end {
                    let next2 = lower(self.cpts[pos + 2]);
                    if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                        pos += add(pos + 3, lens);
                        continue;
                    }
                }
            }

            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(cpt == '\r' || cpt == '\n' || is_n(flags))
                && (is_l(flags) || is_l(self.flags(pos + 1)))
            {
                pos += 1;
                while is_l(self.flags(pos)) {
                    pos += 1;
                }
                add(pos, lens);
                continue;
            }

            // \p{N}{1,max_digits}
            if is_n(flags) {
                let mut ini = pos;
                while is_n(self.flags(pos)) {
                    pos += 1;
                    if pos - ini >= max_digits {
                        add(pos, lens);
                        ini = pos;
                    }
                }
                add(pos, lens);
                continue;
            }

            //  ?[^\s\p{L}\p{N}]+[\r\n]*
            let mut flags2 = if cpt == ' ' {
                self.flags(pos + 1)
            } else {
                flags
            };
            if !(is_ws(flags2) || is_l(flags2) || is_n(flags2)) && flags != OUT {
                pos += usize::from(cpt == ' ');
                while !(is_ws(flags2) || is_l(flags2) || is_n(flags2)) && flags2 != OUT {
                    pos += 1;
                    flags2 = self.flags(pos);
                }
                while matches!(self.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                add(pos, lens);
                continue;
            }

            let mut n_ws = 0;
            let mut last_end_r_or_n = 0;
            while is_ws(self.flags(pos + n_ws)) {
                if matches!(self.cpts[pos + n_ws], '\r' | '\n') {
                    last_end_r_or_n = pos + n_ws + 1;
                }
                n_ws += 1;
            }
            // \s*[\r\n]+
            if last_end_r_or_n > 0 {
                pos = last_end_r_or_n;
                add(pos, lens);
                continue;
            }
            // \s+(?!\S)
            if n_ws > 1 && self.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                add(pos, lens);
                continue;
            }
            // \s+
            if n_ws > 0 {
                pos += n_ws;
                add(pos, lens);
                continue;
            }
            // no match
            pos += 1;
            add(pos, lens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pre: PreTokenizer, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        pre.split(text, &mut SplitScratch::default(), &mut out);
        out.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn smollm_isolates_digits_and_keeps_gaps() {
        let pre = PreTokenizer::llama_cpp(PreTokenizerKind::Smollm);
        assert_eq!(pieces(pre, "world 123"), ["world", " ", "1", "2", "3"]);
        assert_eq!(pieces(pre, "a  b"), ["a", " ", " b"]);
        assert_eq!(pieces(pre, "x  "), ["x", "  "]);
        assert_eq!(pieces(pre, "it's"), ["it", "'s"]);
        assert_eq!(pieces(pre, ""), Vec::<&str>::new());
    }

    #[test]
    fn llama3_rules() {
        let pre = PreTokenizer::llama_cpp(PreTokenizerKind::Llama3);
        assert_eq!(
            pieces(pre, "Hello world 12345"),
            ["Hello", " world", " ", "123", "45"]
        );
        assert_eq!(
            pieces(pre, "I'M  here\n\n x"),
            ["I", "'M", " ", " here", "\n\n", " x"]
        );
        assert_eq!(pieces(pre, "a!!\n\nb"), ["a", "!!\n\n", "b"]);
    }

    #[test]
    fn every_byte_is_covered() {
        for kind in [
            PreTokenizerKind::Gpt2,
            PreTokenizerKind::Smollm,
            PreTokenizerKind::Llama3,
            PreTokenizerKind::Qwen2,
        ] {
            let text = " \t\r\n a1 'll ٣٤ 😀‍👩 \u{3000}x  ";
            let joined: String = pieces(PreTokenizer::llama_cpp(kind), text).concat();
            assert_eq!(joined, text, "{kind:?}");
        }
    }
}
