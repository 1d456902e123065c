//! Stop strings over streamed text, shared by plain and speculative generation.

/// Accumulates generated text, holding back just enough to catch a stop string that spans
/// several tokens, and releases the rest to the caller.
pub struct StopScanner<'a> {
    stops: &'a [String],
    text: String,
    /// Bytes of `text` already given to the caller.
    emitted: usize,
    hold: usize,
}

impl<'a> StopScanner<'a> {
    /// A scanner for `stops` (empty strings are ignored).
    pub fn new(stops: &'a [String]) -> Self {
        let hold = stops
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        Self {
            stops,
            text: String::new(),
            emitted: 0,
            hold,
        }
    }

    /// Adds `piece`; returns the stop string if one now appears (text is cut before it).
    pub fn push(&mut self, piece: &str, on_text: &mut dyn FnMut(&str)) -> Option<String> {
        let search_from = self.emitted.saturating_sub(self.hold);
        self.text.push_str(piece);
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|at| (search_from + at, s))
            })
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = found {
            self.text.truncate(at);
            self.flush(on_text);
            return Some(stop.clone());
        }
        let mut safe = self.text.len().saturating_sub(self.hold);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        if safe > self.emitted {
            on_text(&self.text[self.emitted..safe]);
            self.emitted = safe;
        }
        None
    }

    /// Releases everything held back (at the end of generation).
    pub fn flush(&mut self, on_text: &mut dyn FnMut(&str)) {
        if self.text.len() > self.emitted {
            on_text(&self.text[self.emitted..]);
            self.emitted = self.text.len();
        }
    }

    /// The whole text, cut before any stop string.
    pub fn into_text(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_across_pieces_is_cut_and_never_emitted() {
        let stops = vec!["</end>".to_string()];
        let mut s = StopScanner::new(&stops);
        let mut out = String::new();
        let mut emit = |t: &str| out.push_str(t);
        assert_eq!(s.push("hello </e", &mut emit), None);
        assert_eq!(s.push("nd> more", &mut emit), Some("</end>".to_string()));
        assert_eq!(out, "hello ");
        assert_eq!(s.into_text(), "hello ");
    }

    #[test]
    fn without_stops_everything_streams() {
        let mut s = StopScanner::new(&[]);
        let mut out = String::new();
        let mut emit = |t: &str| out.push_str(t);
        s.push("a", &mut emit);
        s.push("é", &mut emit);
        assert_eq!(out, "aé");
    }
}
