//! A conversation rendered with the model's own Jinja chat template
//! (`tokenizer.chat_template` in the GGUF), and tokenized as llama.cpp does: special
//! tokens in the rendered text parsed, BOS added when the model wants one and the
//! template did not write it.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::tokenizer::Tokenizer;

/// One message of a conversation.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The model's chat template, ready to render.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The template of `tok`'s model; an error when it has none or it does not parse.
    pub fn of(tok: &Tokenizer) -> Result<ChatTemplate, String> {
        let source = tok
            .chat_template()
            .ok_or("this model has no chat template (tokenizer.chat_template in its GGUF)")?;
        // One template per process: leaking it gives the environment its 'static source.
        let source: &'static str = Box::leak(source.to_string().into_boxed_str());
        let mut env = Environment::new();
        // Hugging Face templates call Python string methods and raise_exception().
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", source)
            .map_err(|e| format!("the model's chat template does not parse: {e}"))?;
        let text_of = |id: Option<u32>| {
            id.map(|id| String::from_utf8_lossy(tok.token_text(id)).into_owned())
                .unwrap_or_default()
        };
        Ok(ChatTemplate {
            env,
            bos: text_of(tok.bos()),
            eos: text_of(tok.eos()),
        })
    }

    /// The conversation as the template writes it, ending with the assistant's cue.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        let tmpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| format!("chat template: {e}"))
    }

    /// The rendered conversation's tokens.
    pub fn prompt(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>, String> {
        let rendered = self.render(messages)?;
        let mut ids = tok.encode(&rendered, false, true);
        if let (true, Some(bos)) = (tok.add_bos(), tok.bos()) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }
}
