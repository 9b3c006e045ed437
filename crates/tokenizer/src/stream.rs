//! Streaming detokenization: emit text only once it is complete UTF-8.

use crate::tokenizer::Tokenizer;

/// Turns a stream of token ids into a stream of text pieces, holding back the bytes of a
/// character that is split across tokens (e.g. SentencePiece byte tokens `<0xE2>` `<0x82>`
/// `<0xAC>` for `€`) until it is complete.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    pending: Vec<u8>,
    skip_special: bool,
    /// The next token is the first of a whole sequence (see [`IncrementalDecoder::from_start`]).
    at_start: bool,
    /// One leading space of the next token is a prefix added by encoding.
    strip_space: bool,
}

impl IncrementalDecoder {
    /// A decoder for tokens that continue a text (e.g. generated after a prompt): every token
    /// keeps its leading space. Special tokens are dropped from the text if `skip_special`.
    pub fn new(skip_special: bool) -> Self {
        Self {
            pending: Vec::new(),
            skip_special,
            at_start: false,
            strip_space: false,
        }
    }

    /// A decoder for a whole sequence from its first token: gives exactly
    /// [`Tokenizer::decode`]'s text (a SentencePiece space prefix is removed).
    pub fn from_start(skip_special: bool) -> Self {
        Self {
            at_start: true,
            ..Self::new(skip_special)
        }
    }

    /// Adds one token and returns the text that became complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        if std::mem::take(&mut self.at_start) {
            self.strip_space = tokenizer.adds_space_prefix();
        }
        tokenizer.push_piece(
            id,
            self.skip_special,
            &mut self.strip_space,
            &mut self.pending,
        );
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
