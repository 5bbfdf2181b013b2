//! The chat-completion seam shared by evals (sampling a model over a
//! dataset), the local engine and the OpenAI-compatible HTTP providers.
//!
//! Messages and tools are OpenAI's JSON as users write them; the
//! implementation renders them (the local engine through the model's chat
//! template, an HTTP provider by sending them on).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::graders::{ModelError, TokenUsage};

/// One chat completion request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// A registered base model name, a fine-tuned model id (`ft:...`), or
    /// `provider/model` for a configured HTTP provider.
    pub model: String,
    /// OpenAI chat messages (`role`, `content`, optional `tool_calls`, ...).
    pub messages: Vec<Value>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// OpenAI `tools` array.
    pub tools: Option<Value>,
    /// OpenAI `response_format` object.
    pub response_format: Option<Value>,
}

/// One completion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub text: String,
    /// OpenAI `tool_calls` objects (`id`, `type: function`, `function.name`,
    /// `function.arguments` as a JSON string).
    pub tool_calls: Vec<Value>,
    pub usage: TokenUsage,
    /// "stop", "length" or "tool_calls".
    pub finish_reason: String,
}

/// Something that answers chat completions: the local engine or an HTTP
/// provider. Implementations bound their own concurrency and retry what is
/// worth retrying; callers do not retry again.
#[async_trait]
pub trait ChatModel: Send + Sync {
    async fn complete(&self, request: ChatRequest) -> Result<ChatCompletion, ModelError>;
}
