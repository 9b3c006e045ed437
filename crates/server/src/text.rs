//! The text side of the model: prompt encoding, the chat template, streaming detokenisation.
//! A thin layer over `accellm-tokenizer` that fixes the server's choices (BOS handling, which
//! tokens end generation, special tokens hidden from the output).

use std::path::Path;
use std::sync::Arc;

use accellm_tokenizer::{ChatMessage, ChatTemplate, GgufMetadata, IncrementalDecoder, Tokenizer};

/// Errors of the text side.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] accellm_tokenizer::TokenizerError),
}

/// A chat message after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Role.
    pub role: String,
    /// Text content.
    pub content: String,
}

/// The model's tokenizer and chat template.
pub struct TextModel {
    tok: Arc<Tokenizer>,
    template: ChatTemplate,
    bos_text: Option<String>,
}

impl TextModel {
    /// Reads the tokenizer and chat template from a GGUF file's metadata.
    pub fn load(path: &Path) -> Result<Self, TextError> {
        let md = GgufMetadata::read_file(path)?;
        let tok = Tokenizer::from_gguf_metadata(&md)?;
        let template = ChatTemplate::from_gguf_metadata(&md)?;
        let bos_text = tok.bos_id().map(|b| tok.token_text(b));
        Ok(Self {
            tok: Arc::new(tok),
            template,
            bos_text,
        })
    }

    /// Token ids of a completion prompt (with BOS if the model wants one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        Ok(self.tok.encode(text, self.tok.add_bos_by_default())?)
    }

    /// Token ids of a conversation rendered with the chat template, ending where the
    /// assistant's reply begins. BOS is added only if the template did not write it.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, TextError> {
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
            .collect();
        let text = self.template.render(&msgs, true)?;
        let has_bos = self
            .bos_text
            .as_deref()
            .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        Ok(self
            .tok
            .encode(&text, self.tok.add_bos_by_default() && !has_bos)?)
    }

    /// Text of prompt tokens as `echo` returns it (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tok.decode(ids, false)
    }

    /// Raw bytes of one token (OpenAI's logprob `bytes`).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.tok.token_bytes(id)
    }

    /// One token's text in logprobs (invalid UTF-8 replaced; `bytes` has the exact bytes).
    pub fn token_str(&self, id: u32) -> String {
        self.tok.token_text(id)
    }

    /// Id of the end-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.tok.eos_id()
    }

    /// Whether `id` is a control token.
    pub fn is_special(&self, id: u32) -> bool {
        self.tok.is_special(id)
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tok.vocab_size()
    }

    /// Token ids that end generation (EOS and end-of-turn tokens).
    pub fn eos(&self) -> Vec<u32> {
        self.tok.stop_ids().to_vec()
    }

    /// A fresh streaming decoder (special tokens are not shown). `starts_text`: the tokens begin
    /// a text of their own (a chat reply), so a SentencePiece space prefix is dropped; otherwise
    /// they continue the prompt and keep every space.
    pub fn decoder(&self, starts_text: bool) -> Decoder {
        let inner = if starts_text {
            IncrementalDecoder::from_start(true)
        } else {
            IncrementalDecoder::new(true)
        };
        Decoder {
            tok: self.tok.clone(),
            inner,
        }
    }
}

/// Turns tokens into text as they come, holding back incomplete UTF-8.
pub struct Decoder {
    tok: Arc<Tokenizer>,
    inner: IncrementalDecoder,
}

impl Decoder {
    /// Text completed by `token` (possibly empty).
    pub fn push(&mut self, token: u32) -> String {
        self.inner.push(&self.tok, token)
    }

    /// Whatever is held back, at the end of the stream.
    pub fn flush(&mut self) -> String {
        self.inner.finish()
    }
}
