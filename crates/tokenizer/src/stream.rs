//! [`StreamDecoder`]: turns generated ids into text as they come, one complete character at a time.

use crate::tokenizer::Tokenizer;

/// Decodes ids one at a time; holds back bytes until they form complete UTF-8 characters.
///
/// Bytes that can never become valid UTF-8 are emitted as U+FFFD, so the concatenated output
/// equals [`Tokenizer::decode`] of all ids pushed.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder {
            tokenizer,
            pending: Vec::with_capacity(16),
        }
    }

    /// Adds one token; returns the text that is now complete, if any. An id outside the
    /// vocabulary decodes as U+FFFD.
    pub fn push(&mut self, id: u32) -> Option<String> {
        match self.tokenizer.piece_bytes(id) {
            Some(bytes) => self.pending.extend_from_slice(bytes),
            None => self.pending.extend_from_slice("\u{FFFD}".as_bytes()),
        }
        let mut out = String::new();
        let mut consumed = 0;
        loop {
            let rest = &self.pending[consumed..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&rest[..valid]).expect("valid_up_to marks valid UTF-8"),
                    );
                    match e.error_len() {
                        Some(n_bad) => {
                            out.push('\u{FFFD}');
                            consumed += valid + n_bad;
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            consumed += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        (!out.is_empty()).then_some(out)
    }

    /// Flushes what is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(out)
    }
}
