//! Structured output: `response_format` `json_object` and `json_schema`, enforced by a
//! token mask at every sampling step. The grammar engine is llguidance (JSON Schema
//! compiled to a grammar, an Earley parser over a lexer, masks computed over a token
//! trie); this module gives it our vocabulary and tokenizer.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::tokenizer::Tokenizer;

/// Our tokenizer as llguidance sees it: every token's bytes (control tokens marked as
/// special), and text to tokens for the grammar's forced strings.
struct Env {
    tok: Arc<Tokenizer>,
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tok
            .encode(&String::from_utf8_lossy(s), false, false)
            .into_iter()
            .collect()
    }
}

/// Makes a token-mask matcher per constrained request.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    pub fn new(tok: Arc<Tokenizer>) -> Result<Grammars, String> {
        let n = tok.n_vocab();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                if tok.is_control(id) || tok.is_eog(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tok.token_text(id));
                    w
                } else {
                    tok.token_bytes(id).to_vec()
                }
            })
            .collect();
        let eos = tok.eot().or(tok.eos()).unwrap_or(0);
        let info = TokRxInfo {
            tok_bos: tok.bos(),
            tok_end_of_turn: tok.eot(),
            tok_unk: tok.unk(),
            ..TokRxInfo::new(n as u32, eos)
        };
        let trie = TokTrie::from(&info, &words);
        let env: llguidance::toktrie::TokEnv = Arc::new(Env { tok, trie });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| format!("structured output: {e}"))?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// The matcher for a request's `response_format` (`None` for plain text), or the
    /// reason the format is refused.
    pub fn matcher(&self, format: &Value) -> Result<Option<Matcher>, String> {
        let kind = format.get("type").and_then(Value::as_str);
        let schema = match kind {
            Some("text") => return Ok(None),
            Some("json_object") => json!({"type": "object"}),
            Some("json_schema") => {
                let spec = format
                    .get("json_schema")
                    .ok_or("json_schema needs a json_schema object with a schema")?;
                match spec.get("schema") {
                    Some(s) if s.is_object() || s.is_boolean() => s.clone(),
                    _ => return Err("json_schema.schema must be a JSON Schema object".into()),
                }
            }
            _ => {
                return Err(format!(
                    "response_format type must be text, json_object or json_schema, got {}",
                    format.get("type").unwrap_or(&Value::Null)
                ))
            }
        };
        let mut schema = match schema {
            Value::Bool(true) => json!({}),
            Value::Bool(false) => return Err("json_schema.schema false allows nothing".into()),
            s => s,
        };
        // One space after separators and no other whitespace (unless the schema says
        // otherwise): with free whitespace, a small model can pad forever.
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert(json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            }));
        }
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| format!("the schema cannot be used: {e}"))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(format!("the schema cannot be used: {e}"));
        }
        Ok(Some(matcher))
    }
}

/// Sets the logits of tokens `matcher` does not allow now to minus infinity. `Err` when
/// the matcher failed (it then allows nothing).
pub fn mask_logits(matcher: &mut Matcher, logits: &mut [f32]) -> Result<(), String> {
    let mask = matcher.compute_mask().map_err(|e| e.to_string())?;
    for (id, l) in logits.iter_mut().enumerate() {
        if !mask.is_allowed(id as TokenId) {
            *l = f32::NEG_INFINITY;
        }
    }
    Ok(())
}
