//! Code point classes (letter, number, whitespace) as the pre-tokenizers see them, and the
//! GPT-2 byte-level alphabet.
//!
//! Two tables exist because the two oracles disagree on a few code points: [`CharClasses::llama_cpp`]
//! is llama.cpp's own table (ported in `unicode_data.rs`), used for tokenizers read from GGUF;
//! [`CharClasses::regex`] comes from the `regex` crate's Unicode tables (through `regex-syntax`),
//! which is what tiktoken's `fancy-regex` matches `\p{L}`, `\p{N}` and `\s` against.

use std::sync::OnceLock;

/// Number of Unicode code points (`0..=0x10FFFF`).
const N_CODEPOINTS: usize = 0x11_0000;

/// `\p{N}`.
pub(crate) const NUMBER: u8 = 1;
/// `\p{L}`.
pub(crate) const LETTER: u8 = 2;
/// `\s`.
pub(crate) const WHITESPACE: u8 = 4;

/// One byte of class flags per code point.
pub(crate) struct CharClasses {
    flags: Box<[u8]>,
}

impl CharClasses {
    /// llama.cpp's classification (`unicode_cpt_flags_from_cpt`), used for GGUF tokenizers.
    pub(crate) fn llama_cpp() -> &'static CharClasses {
        static TABLE: OnceLock<CharClasses> = OnceLock::new();
        TABLE.get_or_init(|| {
            let mut flags = vec![0u8; N_CODEPOINTS].into_boxed_slice();
            let ranges = crate::unicode_data::RANGES_FLAGS;
            for pair in ranges.windows(2) {
                let (start, raw) = pair[0];
                let end = (pair[1].0 as usize).min(N_CODEPOINTS);
                let mut f = 0u8;
                if raw & 0x0002 != 0 {
                    f |= NUMBER;
                }
                if raw & 0x0004 != 0 {
                    f |= LETTER;
                }
                for slot in &mut flags[(start as usize).min(end)..end] {
                    *slot = f;
                }
            }
            for &cp in crate::unicode_data::WHITESPACE {
                if let Some(slot) = flags.get_mut(cp as usize) {
                    *slot |= WHITESPACE;
                }
            }
            CharClasses { flags }
        })
    }

    /// The `regex` crate's `\p{L}`, `\p{N}` and `\s`, used for tiktoken files.
    pub(crate) fn regex() -> &'static CharClasses {
        static TABLE: OnceLock<CharClasses> = OnceLock::new();
        TABLE.get_or_init(|| {
            let mut flags = vec![0u8; N_CODEPOINTS].into_boxed_slice();
            for (pattern, bit) in [(r"\p{N}", NUMBER), (r"\p{L}", LETTER), (r"\s", WHITESPACE)] {
                for (start, end) in regex_class_ranges(pattern) {
                    for slot in &mut flags[start as usize..=end as usize] {
                        *slot |= bit;
                    }
                }
            }
            CharClasses { flags }
        })
    }

    /// The flags of `c`.
    #[inline]
    pub(crate) fn get(&self, c: char) -> u8 {
        // Every `char` is below 0x110000, the table's length.
        self.flags.get(c as usize).copied().unwrap_or(0)
    }
}

/// The inclusive code point ranges of a one-class regex such as `\p{L}`, from `regex-syntax`.
fn regex_class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("built-in class pattern parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => unreachable!("built-in class pattern {pattern} parsed to {other:?}"),
    }
}

/// The GPT-2 byte-level alphabet: byte `b` is written as the char `BYTE_TO_CHAR[b]`.
///
/// Port of `bytes_to_unicode()` from GPT-2's `encoder.py` (llama.cpp `unicode_byte_to_utf8_map`).
pub(crate) fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..=255u32 {
            let printable = (0x21..=0x7E).contains(&b)
                || (0xA1..=0xAC).contains(&b)
                || (0xAE..=0xFF).contains(&b);
            let cp = if printable {
                b
            } else {
                n += 1;
                255 + n
            };
            table[b as usize] = char::from_u32(cp).expect("byte-level code points are valid chars");
        }
        table
    })
}

/// The inverse of [`byte_to_char`]: `None` for chars outside the byte-level alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: OnceLock<[u16; 324]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [u16::MAX; 324];
        for (b, &c) in byte_to_char().iter().enumerate() {
            t[c as usize] = b as u16;
        }
        t
    });
    table.get(c as usize).and_then(|&b| u8::try_from(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char()[b as usize]), Some(b));
        }
        assert_eq!(byte_to_char()[b' ' as usize], 'Ġ');
        assert_eq!(byte_to_char()[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('x'), Some(b'x'));
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn classes_agree_on_ascii() {
        for t in [CharClasses::llama_cpp(), CharClasses::regex()] {
            assert_eq!(t.get('a'), LETTER);
            assert_eq!(t.get('7'), NUMBER);
            assert_eq!(t.get(' '), WHITESPACE);
            assert_eq!(t.get('\n'), WHITESPACE);
            assert_eq!(t.get('!'), 0);
            assert_eq!(t.get('é'), LETTER);
            assert_eq!(t.get('٣'), NUMBER);
            assert_eq!(t.get('\u{3000}'), WHITESPACE);
        }
    }

    /// tiktoken's `(?i:'s|...)` matches `ſ` (U+017F) for `s` and nothing else outside ASCII;
    /// `pretokenize` relies on this.
    #[test]
    fn case_folds_of_contraction_letters() {
        use regex_syntax::hir::{Class, HirKind};
        for letter in ['s', 't', 'r', 'e', 'v', 'm', 'l', 'd'] {
            let hir = regex_syntax::Parser::new()
                .parse(&format!("(?i:{letter})"))
                .unwrap();
            let HirKind::Class(Class::Unicode(class)) = hir.kind() else {
                panic!("{letter}")
            };
            let mut chars: Vec<char> = class
                .ranges()
                .iter()
                .flat_map(|r| r.start()..=r.end())
                .collect();
            chars.sort();
            let mut want = vec![letter.to_ascii_uppercase(), letter];
            if letter == 's' {
                want.push('ſ');
            }
            assert_eq!(chars, want, "(?i:{letter})");
        }
    }
}
