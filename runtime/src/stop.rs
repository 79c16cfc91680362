//! Stop strings: cutting generated text at the first one, across token boundaries.

/// Holds back text that might be the start of a stop string, and cuts the output at the
/// first stop string.
pub struct StopFilter<'a> {
    stops: &'a [String],
    pending: String,
}

impl<'a> StopFilter<'a> {
    pub fn new(stops: &'a [String]) -> Self {
        StopFilter {
            stops,
            pending: String::new(),
        }
    }

    /// Adds `piece`; returns the text that is safe to print and whether a stop string was
    /// found (then the text ends right before it).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return (text, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.pending.len() - keep;
        let text = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (text, false)
    }

    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    #[test]
    fn stop_filter_cuts_at_the_stop_string_across_pieces() {
        let stops = vec!["\nUser:".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("Hello"), ("Hello".into(), false));
        assert_eq!(f.push(" there\nUs"), (" there".into(), false));
        assert_eq!(f.push("er: hi"), ("".into(), true));
    }

    #[test]
    fn stop_filter_releases_a_false_start() {
        let stops = vec!["STOP".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("ST"), ("".into(), false));
        assert_eq!(f.push("ART"), ("START".into(), false));
        assert_eq!(f.push("ST"), ("".into(), false));
        assert_eq!(f.flush(), "ST");
    }

    #[test]
    fn no_stop_strings_pass_everything() {
        let mut f = StopFilter::new(&[]);
        assert_eq!(f.push("abc"), ("abc".into(), false));
    }
}
