//! Streaming detokenization: emit text only once it is complete UTF-8.

use crate::tokenizer::Tokenizer;

/// Turns a stream of token ids into a stream of text pieces, holding back the bytes of a
/// character that is split across tokens until it is complete.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    pending: Vec<u8>,
    skip_special: bool,
}

impl IncrementalDecoder {
    /// A decoder; special tokens are dropped from the text if `skip_special`.
    pub fn new(skip_special: bool) -> Self {
        Self {
            pending: Vec::new(),
            skip_special,
        }
    }

    /// Adds one token and returns the text that became complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        if self.skip_special && tokenizer.is_special(id) {
            return String::new();
        }
        self.pending.extend_from_slice(tokenizer.token_bytes(id));
        self.take_complete()
    }

    fn take_complete(&mut self) -> String {
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let out = s.to_string();
                self.pending.clear();
                out
            }
            Err(e) => {
                let valid = e.valid_up_to();
                match e.error_len() {
                    // An incomplete character at the end: keep it for the next token.
                    None => {
                        let out = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
                        self.pending.drain(..valid);
                        out
                    }
                    // Invalid bytes in the middle: replace them, they can never become valid.
                    Some(bad) => {
                        let mut out =
                            String::from_utf8_lossy(&self.pending[..valid + bad]).into_owned();
                        self.pending.drain(..valid + bad);
                        out.push_str(&self.take_complete());
                        out
                    }
                }
            }
        }
    }

    /// Returns what is still held back (as lossy text) at the end of the stream.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
