//! Chat templates from `tokenizer.chat_template`, rendered with minijinja.

use crate::error::{Result, TokenizerError};
use crate::gguf::GgufMetadata;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// ChatML, used when a model has no template of its own.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format, used for a Gemma vocabulary (`<start_of_turn>`) without a template of its
/// own (the base models); a system message is folded into the first user turn as Gemma's own
/// template does.
const GEMMA: &str = "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}{% for message in rest %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (sys if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; `bos`/`eos` are exposed to it as `bos_token`/`eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        // Hugging Face renders chat templates with these two options on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The template of a GGUF model (`tokenizer.chat_template`); without one, Gemma's turn format
    /// for a Gemma vocabulary and ChatML otherwise.
    pub fn from_gguf_metadata(md: &GgufMetadata) -> Result<Self> {
        let tokens = md.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
        let token = |key: &str| -> String {
            md.get_u64(key)
                .and_then(|i| tokens.and_then(|t| t.get(i as usize)))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let gemma_vocab =
            tokens.is_some_and(|t| t.iter().any(|v| v.as_str() == Some("<start_of_turn>")));
        let fallback = if gemma_vocab { GEMMA } else { CHATML };
        let source = md.get_str("tokenizer.chat_template").unwrap_or(fallback);
        Self::new(
            source,
            &token("tokenizer.ggml.bos_token_id"),
            &token("tokenizer.ggml.eos_token_id"),
        )
    }

    /// ChatML.
    pub fn chatml() -> Self {
        // The built-in template is valid; a failure here would be a bug caught by the tests.
        Self::new(CHATML, "", "").unwrap_or_else(|e| panic!("built-in ChatML template: {e}"))
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat")?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(TokenizerError::Template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let t = ChatTemplate::chatml();
        let s = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        let s = t.render(&[ChatMessage::new("user", "Hi")], false).unwrap();
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn gemma_fallback_folds_the_system_message() {
        let t = ChatTemplate::new(GEMMA, "<bos>", "<eos>").unwrap();
        let s = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi "),
                    ChatMessage::new("assistant", "Hello"),
                    ChatMessage::new("user", "Capital of France?"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            s,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n\
             Hello<end_of_turn>\n<start_of_turn>user\nCapital of France?<end_of_turn>\n\
             <start_of_turn>model\n"
        );
    }

    #[test]
    fn template_can_raise() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert!(t
            .render(&[ChatMessage::new("assistant", "x")], false)
            .is_err());
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")], false).unwrap(),
            "ok"
        );
    }
}
