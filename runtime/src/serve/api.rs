//! OpenAI's request fields, checked one by one so that a bad request is told which field
//! is wrong and what was expected, and the JSON shapes of its responses.

use serde_json::{json, Map, Value};

use crate::chat_template::Message;
use crate::sampler::SamplerConfig;

/// An error response: HTTP status, OpenAI error type, message, and the offending field.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// A header the response carries (`Retry-After` for 503, `Allow` for 405).
    pub header: Option<(&'static str, String)>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
            param: Some(param.to_string()),
            header: None,
        }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            header: None,
        }
    }

    /// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.status,
        }})
    }
}

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// What a completion request asks for, checked.
#[derive(Debug)]
pub struct Request {
    pub prompt: Prompt,
    pub max_tokens: Option<usize>,
    pub sampling: SamplerConfig,
    pub stop: Vec<String>,
    /// Log-probabilities wanted, with this many alternatives per token.
    pub logprobs: Option<usize>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// The completions endpoint's `echo`: the prompt's text before the completion.
    pub echo: bool,
    /// llama-server's and vLLM's `ignore_eos`: generate past end-of-generation tokens
    /// (benchmarks use it to get replies of a fixed length).
    pub ignore_eos: bool,
    /// `response_format`, checked by the grammar compiler when the job is made.
    pub response_format: Option<Value>,
}

#[derive(Debug)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Chat(Vec<Message>),
}

/// Parses and checks a completion request's JSON body. `parallel` bounds `n`; `n_vocab`
/// bounds token ids in prompts.
pub fn parse(
    endpoint: Endpoint,
    body: &[u8],
    parallel: usize,
    n_vocab: usize,
) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError {
        param: None,
        ..ApiError::invalid("", format!("the body is not valid JSON: {e}"))
    })?;
    let Value::Object(o) = value else {
        return Err(ApiError {
            param: None,
            ..ApiError::invalid("", "the body must be a JSON object")
        });
    };
    let f = Fields(&o);
    f.string("model")?;
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(messages(&o)?),
        Endpoint::Completions => prompt(&o, n_vocab)?,
    };
    let (field, max_tokens) = match f.uint("max_completion_tokens")? {
        Some(n) => ("max_completion_tokens", Some(n)),
        None => ("max_tokens", f.uint("max_tokens")?),
    };
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at least 1"),
        ));
    }
    // llama.cpp's sampling defaults (as llama-server's), not OpenAI's temperature 1.
    let mut sampling = SamplerConfig::default();
    if let Some(t) = f.number("temperature", 0.0, f64::MAX)? {
        sampling.temp = t as f32;
    }
    if let Some(p) = f.number("top_p", 0.0, 1.0)? {
        sampling.top_p = p as f32;
    }
    if let Some(k) = f.uint("top_k")? {
        sampling.top_k = k;
    }
    if let Some(p) = f.number("min_p", 0.0, 1.0)? {
        sampling.min_p = p as f32;
    }
    if let Some(p) = f.number("presence_penalty", -2.0, 2.0)? {
        sampling.presence_penalty = p as f32;
    }
    if let Some(p) = f.number("frequency_penalty", -2.0, 2.0)? {
        sampling.frequency_penalty = p as f32;
    }
    if let Some(p) = f.number("repeat_penalty", f64::MIN_POSITIVE, 100.0)? {
        sampling.repeat_penalty = p as f32;
    }
    sampling.seed = match o.get("seed") {
        None | Some(Value::Null) => crate::sampler::clock_seed(),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => s,
            (None, Some(s)) => s as u64,
            _ => return Err(ApiError::invalid("seed", "seed must be an integer")),
        },
    };
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid("stop", "stop must be a string or a list of strings")
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "stop must be a string or a list of strings",
            ))
        }
    };
    let logprobs = match endpoint {
        Endpoint::Chat => match f.boolean("logprobs")? {
            Some(true) => Some(f.uint("top_logprobs")?.unwrap_or(0)),
            _ => {
                if f.uint("top_logprobs")?.is_some_and(|n| n > 0) {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        "top_logprobs needs logprobs: true",
                    ));
                }
                None
            }
        },
        // The legacy endpoint's `logprobs` is the number of alternatives.
        Endpoint::Completions => f.uint("logprobs")?,
    };
    if let Some(n) = logprobs.filter(|&n| n > 20) {
        let param = match endpoint {
            Endpoint::Chat => "top_logprobs",
            Endpoint::Completions => "logprobs",
        };
        return Err(ApiError::invalid(
            param,
            format!("{param} must be at most 20, got {n}"),
        ));
    }
    let n = f.uint("n")?.unwrap_or(1);
    if n == 0 || n > parallel {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and {parallel} (the server's --parallel), got {n}"),
        ));
    }
    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => Fields(so).boolean("include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options must be an object",
            ))
        }
    };
    let response_format = match o.get("response_format") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(v) => {
            return Err(ApiError::invalid(
                "response_format",
                format!("response_format must be an object, got {}", kind_of(v)),
            ))
        }
    };
    let echo = endpoint == Endpoint::Completions && f.boolean("echo")?.unwrap_or(false);
    let ignore_eos = f.boolean("ignore_eos")?.unwrap_or(false);
    Ok(Request {
        prompt,
        max_tokens,
        sampling,
        stop,
        logprobs,
        n,
        stream,
        include_usage,
        echo,
        ignore_eos,
        response_format,
    })
}

/// Typed access to optional fields, with errors that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{name} must be a string, got {}", kind_of(v)),
            )),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{name} must be true or false, got {}", kind_of(v)),
            )),
        }
    }

    fn uint(&self, name: &str) -> Result<Option<usize>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
                None => Err(ApiError::invalid(
                    name,
                    format!("{name} must be a non-negative integer, got {v}"),
                )),
            },
        }
    }

    fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::invalid(
                    name,
                    format!("{name} must be a number from {lo} to {hi}, got {v}"),
                )),
            },
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn messages(o: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let Some(Value::Array(list)) = o.get("messages") else {
        return Err(ApiError::invalid(
            "messages",
            "messages must be a non-empty list of {role, content} objects",
        ));
    };
    if list.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid(
                    &format!("messages[{i}].role"),
                    "each message needs a role string",
                )
            })?;
            if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!(
                        "role must be system, developer, user, assistant or tool, got {role:?}"
                    ),
                ));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                // Content parts: only text ones carry anything for a text model.
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content[{j}]"),
                                    "content parts must be {\"type\": \"text\", \"text\": ...}: this model reads text only",
                                ))
                            }
                        }
                    }
                    text
                }
                Some(v) => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].content"),
                        format!(
                            "content must be a string or a list of text parts, got {}",
                            kind_of(v)
                        ),
                    ))
                }
            };
            let role = if role == "developer" { "system" } else { role };
            Ok(Message {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

fn prompt(o: &Map<String, Value>, n_vocab: usize) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "prompt must be a string, a list of token ids, or a list of one of those",
        )
    };
    let token_list = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|t| match t.as_u64() {
                Some(id) if (id as usize) < n_vocab => Ok(id as u32),
                _ => Err(ApiError::invalid(
                    "prompt",
                    format!("token id {t} is not in the vocabulary (0..{n_vocab})"),
                )),
            })
            .collect()
    };
    match o.get("prompt") {
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) && !a.is_empty() => {
            Ok(Prompt::Tokens(token_list(a)?))
        }
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            Value::Array(t) if !t.is_empty() => Ok(Prompt::Tokens(token_list(t)?)),
            _ => Err(bad()),
        },
        Some(Value::Array(a)) if a.len() > 1 => Err(ApiError::invalid(
            "prompt",
            "one prompt per request: send several requests, or use n for several completions",
        )),
        None => Err(ApiError::invalid("prompt", "prompt is required")),
        _ => Err(bad()),
    }
}

/// The `usage` object.
pub fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// One token's entry of a chat `logprobs.content` list.
pub fn chat_logprob(token: &[u8], logprob: f32, top: &[(Vec<u8>, f32)]) -> Value {
    let entry = |t: &[u8], lp: f32| {
        json!({
            "token": String::from_utf8_lossy(t),
            "logprob": lp,
            "bytes": t,
        })
    };
    let mut e = entry(token, logprob);
    e["top_logprobs"] = top.iter().map(|(t, lp)| entry(t, *lp)).collect();
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chat(body: &str) -> Result<Request, ApiError> {
        parse(Endpoint::Chat, body.as_bytes(), 4, 1000)
    }

    #[test]
    fn a_full_chat_request_is_read() {
        let r = parse_chat(
            r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "max_tokens": 7, "temperature": 0, "top_k": 3, "stop": "x", "seed": 5,
                "logprobs": true, "top_logprobs": 2, "n": 2, "stream": true,
                "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.sampling.temp, 0.0);
        assert_eq!(r.sampling.top_k, 3);
        assert_eq!(r.sampling.seed, 5);
        assert_eq!(r.stop, vec!["x"]);
        assert_eq!(r.logprobs, Some(2));
        assert_eq!((r.n, r.stream, r.include_usage), (2, true, true));
        match r.prompt {
            Prompt::Chat(m) => {
                assert_eq!((m[0].role.as_str(), m[0].content.as_str()), ("user", "hi"))
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (r#"{"messages": []}"#, "messages"),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "temperature": "hot"}"#,
                "temperature",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": -1}"#,
                "max_tokens",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "n": 5}"#,
                "n",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "stop": [1]}"#,
                "stop",
            ),
            (
                r#"{"messages": [{"role": "wizard", "content": "a"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"messages": [{"role": "user", "content": 3}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "top_p": 1e300}"#,
                "top_p",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "a"}], "seed": 1.5}"#,
                "seed",
            ),
        ];
        for (body, field) in cases {
            let e = parse_chat(body).expect_err(body);
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some(field)),
                "{body}: {}",
                e.message
            );
        }
        let e = parse_chat("{not json").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }

    #[test]
    fn completion_prompts_are_text_or_token_ids() {
        let p = |b: &str| parse(Endpoint::Completions, b.as_bytes(), 1, 100).map(|r| r.prompt);
        assert!(matches!(p(r#"{"prompt": "a"}"#), Ok(Prompt::Text(_))));
        assert!(matches!(p(r#"{"prompt": ["a"]}"#), Ok(Prompt::Text(_))));
        assert!(matches!(p(r#"{"prompt": [1, 2]}"#), Ok(Prompt::Tokens(t)) if t == [1, 2]));
        assert!(matches!(
            p(r#"{"prompt": [[1, 2]]}"#),
            Ok(Prompt::Tokens(_))
        ));
        assert_eq!(
            p(r#"{"prompt": [100]}"#).unwrap_err().param.as_deref(),
            Some("prompt")
        );
        assert_eq!(p(r#"{"prompt": ["a", "b"]}"#).unwrap_err().status, 400);
        assert_eq!(p(r#"{}"#).unwrap_err().param.as_deref(), Some("prompt"));
    }
}
