//! A stored chat completion.

use std::collections::BTreeMap;

use serde_json::Value;

/// A chat completion made with `store: true`: what was asked and what
/// was answered, with the caller's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredCompletion {
    /// `chatcmpl-...`, the id the completion was answered with.
    pub id: String,
    pub project: String,
    pub model: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// At most 16 pairs (keys up to 64 characters, values up to 512).
    pub metadata: BTreeMap<String, String>,
    /// What was asked, as OpenAI's body names it: `messages`, and `tools`,
    /// `tool_choice`, `response_format` and the sampling fields when given.
    pub request: Value,
    /// OpenAI's choices: `{index, message: {role, content, tool_calls?,
    /// refusal}, finish_reason}`.
    pub choices: Vec<Value>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl StoredCompletion {
    /// The request's messages (none when the stored request has none).
    pub fn messages(&self) -> &[Value] {
        self.request["messages"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The message of the first choice: the answer.
    pub fn answer(&self) -> Option<&Value> {
        self.choices.first().map(|c| &c["message"])
    }
}
