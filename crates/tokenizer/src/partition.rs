//! Splitting text around special tokens written in it, before the text itself is tokenized.
//!
//! Follows llama.cpp: the special tokens are tried longest first; each one is cut out of every
//! piece of text not yet claimed, at every place it occurs. So a longer special token wins over a
//! shorter one it contains, wherever the two are in the text.

/// One piece of the partitioned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Plain text: a byte range of the input, to be tokenized.
    Text(usize, usize),
    /// A special token matched as a whole.
    Token(u32),
}

/// Special tokens to match, longest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialMatcher {
    tokens: Vec<(String, u32)>,
}

impl SpecialMatcher {
    /// A matcher for these `(text, id)` pairs (empty texts are ignored).
    pub(crate) fn new(mut tokens: Vec<(String, u32)>) -> Self {
        tokens.retain(|(t, _)| !t.is_empty());
        // Longest first; equal lengths by id so the order does not depend on the input order.
        tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Self { tokens }
    }

    /// Splits `text` into plain-text ranges and special tokens, in order.
    pub(crate) fn partition(&self, text: &str) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        let mut next = Vec::new();
        for (special, id) in &self.tokens {
            // Cheap skip: most special tokens do not occur at all.
            if !text.contains(special.as_str()) {
                continue;
            }
            next.clear();
            for &f in &frags {
                let Fragment::Text(mut start, end) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(pos) = text[start..end].find(special.as_str()) {
                    let at = start + pos;
                    if at > start {
                        next.push(Fragment::Text(start, at));
                    }
                    next.push(Fragment::Token(*id));
                    start = at + special.len();
                }
                if start < end {
                    next.push(Fragment::Text(start, end));
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_special_wins_and_text_is_kept_in_order() {
        let m = SpecialMatcher::new(vec![("<a>".into(), 1), ("<a><b>".into(), 2)]);
        let text = "x<a><b>y<a>z";
        let f = m.partition(text);
        assert_eq!(
            f,
            vec![
                Fragment::Text(0, 1),
                Fragment::Token(2),
                Fragment::Text(7, 8),
                Fragment::Token(1),
                Fragment::Text(11, 12),
            ]
        );
    }

    #[test]
    fn no_specials_and_empty_text() {
        let m = SpecialMatcher::new(vec![("<s>".into(), 1)]);
        assert_eq!(m.partition("plain"), vec![Fragment::Text(0, 5)]);
        assert!(m.partition("").is_empty());
        assert_eq!(
            m.partition("<s><s>"),
            vec![Fragment::Token(1), Fragment::Token(1)]
        );
    }
}
