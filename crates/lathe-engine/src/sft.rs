//! OpenAI chat JSONL → token ids with a per-token "trained" flag.
//!
//! The conversation is rendered with the model's chat template; a token is
//! trained when it belongs to an assistant message whose `weight` is not 0
//! (its content and tool calls and the template's end-of-turn marker),
//! found by rendering each assistant turn's prefix with the generation
//! prompt and the turn itself, as TRL's completion-only loss does.

use serde_json::Value;

use super::chat_template::ChatTemplate;
use super::tokenizer::Tokenizer;
use super::{EngineError, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `trained[j]`: the loss includes predicting `ids[j]` from `ids[..j]`.
    pub trained: Vec<bool>,
}

impl Example {
    pub fn trained_tokens(&self) -> usize {
        self.trained.iter().skip(1).filter(|t| **t).count()
    }
}

/// Tokenizes one SFT line. `max_len` truncates from the end, as OpenAI
/// does. Returns None for a line that has nothing to train on.
pub fn encode_chat(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    bos: Option<u32>,
    line: &Value,
    max_len: usize,
) -> Result<Option<Example>> {
    let messages = line["messages"]
        .as_array()
        .ok_or_else(|| EngineError::Data("the line has no messages array".into()))?;
    let tools = line.get("tools").filter(|t| !t.is_null());
    let render = |msgs: &[Value], gen_prompt: bool| {
        template
            .render(msgs, tools, gen_prompt)
            .map_err(|e| EngineError::Data(format!("chat template: {e}")))
    };
    let full = render(messages, false)?;
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m["role"] != "assistant" || m.get("weight").and_then(Value::as_f64) == Some(0.0) {
            continue;
        }
        let prefix = render(&messages[..i], true)?;
        let upto = render(&messages[..=i], false)?;
        if !upto.starts_with(&prefix) || !full.starts_with(&upto) {
            return Err(EngineError::Data(
                "the chat template does not render conversations prefix by prefix; \
                 cannot tell the assistant's tokens apart"
                    .into(),
            ));
        }
        if upto.len() > prefix.len() {
            spans.push((prefix.len(), upto.len()));
        }
    }
    if spans.is_empty() {
        return Ok(None);
    }
    let mut ids = Vec::new();
    let mut trained = Vec::new();
    if let Some(b) = bos
        && tokenizer.add_bos()
        && !tokenizer.id_to_token(b).is_some_and(|t| full.starts_with(t))
    {
        ids.push(b);
        trained.push(false);
    }
    let mut at = 0;
    for (s, e) in spans {
        for (piece, flag) in [(&full[at..s], false), (&full[s..e], true)] {
            let t = tokenizer.encode(piece, true);
            trained.extend(std::iter::repeat_n(flag, t.len()));
            ids.extend(t);
        }
        at = e;
    }
    let t = tokenizer.encode(&full[at..], true);
    trained.extend(std::iter::repeat_n(false, t.len()));
    ids.extend(t);
    ids.truncate(max_len);
    trained.truncate(max_len);
    let ex = Example { ids, trained };
    Ok((ex.trained_tokens() > 0).then_some(ex))
}

/// Reads an SFT JSONL file (already validated at upload) into examples.
pub fn encode_file(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    bos: Option<u32>,
    bytes: &[u8],
    max_len: usize,
) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(line).map_err(|e| EngineError::Data(format!("line {}: {e}", n + 1)))?;
        match encode_chat(tokenizer, template, bos, &v, max_len) {
            Ok(Some(ex)) => out.push(ex),
            Ok(None) => {}
            Err(e) => return Err(EngineError::Data(format!("line {}: {e}", n + 1))),
        }
    }
    Ok(out)
}
