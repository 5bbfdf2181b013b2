//! The one chat seam. Everything that asks a model for a chat completion
//! (eval sampling, model graders, the gRPC `Chat` RPC) goes through
//! [`ChatModel`]; the local engine and the OpenAI-compatible HTTP providers
//! implement it, and the router picks one of them per model name.
//!
//! Messages, tools and `response_format` are OpenAI's JSON as users write
//! them; the implementation renders them (the local engine through the
//! model's chat template, an HTTP provider by sending them on).
//!
//! Architecture invariant: a completion is a stream first. `stream` answers
//! with an error when the request cannot start (unknown model, invalid
//! request, a full queue); otherwise with a bounded receiver of text deltas
//! ended by exactly one [`ChatEnd`] (or an error). Dropping the receiver
//! stops the producer. `complete` is that stream collected.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::Error;

/// One chat completion request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// A registered base model name, a fine-tuned model id (`ft:...`, or
    /// one of its `...:ckpt-step-N` checkpoints), or `provider/model` for a
    /// configured HTTP provider (see [`super::ModelRouter`]).
    pub model: String,
    /// OpenAI chat messages (`role`, `content`, optional `tool_calls`, ...).
    pub messages: Vec<Value>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// OpenAI's `presence_penalty` and `frequency_penalty`, -2 to 2.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// OpenAI's `logit_bias`: token id (as a string) to a bias, -100 to 100.
    #[serde(default)]
    pub logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    /// OpenAI `tools` array.
    pub tools: Option<Value>,
    /// OpenAI `response_format` object. A `json_schema` format is what
    /// callers send for structured output; each provider turns it into what
    /// its server takes (see `StructuredOutput`).
    pub response_format: Option<Value>,
    /// OpenAI `reasoning_effort` (model graders pass it on).
    pub reasoning_effort: Option<String>,
    /// OpenAI `tool_choice`: `auto` (the default with tools), `none`,
    /// `required`, or one named tool.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// OpenAI `parallel_tool_calls`: `false` asks for one tool call at most.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Refuse what the model cannot honour (a `response_format` it cannot
    /// hold its output to, a `reasoning_effort` it has no use for, content
    /// it cannot read) instead of answering without it. The REST door sets
    /// it: its clients rely on what they ask for. Model graders and evals
    /// leave it off: their prompts ask for JSON as well, and they report
    /// output that does not parse.
    #[serde(default)]
    pub refuse_unsupported: bool,
    /// Which of several answers to one prompt this is (OpenAI's `n`; 0
    /// for a single answer): each draws from its own random stream, so the
    /// answers differ, and a seed names them all.
    #[serde(default)]
    pub choice: u32,
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

impl ChatRequest {
    /// Checks what every model needs, whoever serves it. Field paths are
    /// the gRPC `ChatRequest`'s (`messages[2].role`,
    /// `sampling.temperature`), so the Chat RPC's violations point at what
    /// the client sent.
    pub fn validate(&self) -> Result<(), ChatError> {
        if self.model.is_empty() {
            return Err(ChatError::invalid("model", "a model is required"));
        }
        if self.messages.is_empty() {
            return Err(ChatError::invalid("messages", "at least one message is required"));
        }
        for (i, m) in self.messages.iter().enumerate() {
            let role = m["role"].as_str().unwrap_or_default();
            if !ROLES.contains(&role) {
                return Err(ChatError::invalid(
                    format!("messages[{i}].role"),
                    format!("{role:?} is not one of system, developer, user, assistant, tool"),
                ));
            }
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ChatError::invalid("sampling.temperature", "must be between 0 and 2"));
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return Err(ChatError::invalid("sampling.top_p", "must be in (0, 1]"));
        }
        for (field, penalty) in [
            ("sampling.presence_penalty", self.presence_penalty),
            ("sampling.frequency_penalty", self.frequency_penalty),
        ] {
            if penalty.is_some_and(|p| !(-2.0..=2.0).contains(&p)) {
                return Err(ChatError::invalid(field, "must be between -2 and 2"));
            }
        }
        for (token, bias) in self.logit_bias.iter().flatten() {
            if token.parse::<u32>().is_err() {
                return Err(ChatError::invalid(
                    "sampling.logit_bias",
                    format!("{token:?} is not a token id"),
                ));
            }
            if !(-100.0..=100.0).contains(bias) {
                return Err(ChatError::invalid(
                    "sampling.logit_bias",
                    format!("the bias of token {token} must be between -100 and 100"),
                ));
            }
        }
        if self.max_tokens == Some(0) {
            return Err(ChatError::invalid("sampling.max_tokens", "must be at least 1"));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(ChatError::invalid("sampling.stop", "a stop sequence cannot be empty"));
        }
        if let Some(format) = &self.response_format {
            check_response_format(format)?;
        }
        let names = match &self.tools {
            Some(tools) => tool_names(tools)?,
            None => Vec::new(),
        };
        if let Some(choice) = &self.tool_choice {
            if self.tools.is_none() {
                return Err(ChatError::invalid(
                    "tool_choice",
                    "is only allowed when tools are given",
                ));
            }
            check_tool_choice(choice, &names)?;
        }
        if self.parallel_tool_calls.is_some() && self.tools.is_none() {
            return Err(ChatError::invalid(
                "parallel_tool_calls",
                "is only allowed when tools are given",
            ));
        }
        Ok(())
    }

    /// The request for answer `index` of several to one prompt (OpenAI's
    /// `n`); answer 0 is the request itself.
    pub fn choice(&self, index: u32) -> ChatRequest {
        ChatRequest {
            choice: index,
            ..self.clone()
        }
    }

    /// Whether tools are offered to the model: given, and not turned off
    /// with `tool_choice: "none"`.
    pub fn offers_tools(&self) -> bool {
        self.tools.is_some() && self.tool_choice.as_ref().is_none_or(|c| c != "none")
    }
}

/// The most answers one request may ask for (OpenAI's limit for `n`).
pub const MAX_CHOICES: u32 = 128;

/// Checks OpenAI's `n`: how many choices to answer.
pub fn check_choices(n: u32) -> Result<(), ChatError> {
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(ChatError::invalid("n", format!("must be between 1 and {MAX_CHOICES}")));
    }
    Ok(())
}

/// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema",
/// "json_schema": {"name", "schema"?, "description"?, "strict"?}}`.
fn check_response_format(format: &Value) -> Result<(), ChatError> {
    let invalid = ChatError::invalid;
    match format["type"].as_str() {
        Some("text" | "json_object") => Ok(()),
        Some("json_schema") => {
            let spec = &format["json_schema"];
            if !spec.is_object() {
                return Err(invalid("response_format.json_schema", "an object is required"));
            }
            let name = spec["name"].as_str().unwrap_or_default();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(
                    "response_format.json_schema.name",
                    "1 to 64 letters, digits, underscores or dashes are required",
                ));
            }
            if spec.get("schema").is_some_and(|s| !s.is_object()) {
                return Err(invalid(
                    "response_format.json_schema.schema",
                    "must be a JSON schema object",
                ));
            }
            if spec.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
                return Err(invalid("response_format.json_schema.strict", "must be a boolean"));
            }
            Ok(())
        }
        _ => Err(invalid(
            "response_format.type",
            "must be text, json_object or json_schema",
        )),
    }
}

/// The names of OpenAI `tools` (`{"type": "function", "function": {"name",
/// ...}}` or `{"type": "custom", "custom": {"name", ...}}`).
fn tool_names(tools: &Value) -> Result<Vec<&str>, ChatError> {
    let Some(tools) = tools.as_array() else {
        return Err(ChatError::invalid("tools", "must be an array of tools"));
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let kind = tool["type"].as_str().unwrap_or_default();
            if kind != "function" && kind != "custom" {
                return Err(ChatError::invalid(
                    format!("tools[{i}].type"),
                    "must be function or custom",
                ));
            }
            match tool[kind]["name"].as_str() {
                Some(name) if !name.is_empty() => Ok(name),
                _ => Err(ChatError::invalid(
                    format!("tools[{i}].{kind}.name"),
                    "a name is required",
                )),
            }
        })
        .collect()
}

/// `none`, `auto`, `required`, or `{"type": "function", "function": {"name"}}`
/// (or `custom`) naming one of the tools; `allowed_tools` narrows them.
fn check_tool_choice(choice: &Value, names: &[&str]) -> Result<(), ChatError> {
    if let Some(mode) = choice.as_str() {
        return match mode {
            "none" | "auto" | "required" => Ok(()),
            _ => Err(ChatError::invalid(
                "tool_choice",
                "must be none, auto, required or a tool",
            )),
        };
    }
    match choice["type"].as_str() {
        Some(kind @ ("function" | "custom")) => match choice[kind]["name"].as_str() {
            Some(name) if names.contains(&name) => Ok(()),
            Some(name) => Err(ChatError::invalid(
                format!("tool_choice.{kind}.name"),
                format!("{name:?} is not one of the tools"),
            )),
            None => Err(ChatError::invalid(
                format!("tool_choice.{kind}.name"),
                "a name is required",
            )),
        },
        Some("allowed_tools") => {
            let allowed = &choice["allowed_tools"];
            if !matches!(allowed["mode"].as_str(), Some("auto" | "required")) {
                return Err(ChatError::invalid(
                    "tool_choice.allowed_tools.mode",
                    "must be auto or required",
                ));
            }
            if !allowed["tools"].is_array() {
                return Err(ChatError::invalid(
                    "tool_choice.allowed_tools.tools",
                    "must be an array of tools",
                ));
            }
            Ok(())
        }
        _ => Err(ChatError::invalid(
            "tool_choice.type",
            "must be function, custom or allowed_tools",
        )),
    }
}

/// Tokens spent by one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt: u64,
    pub completion: u64,
}

impl TokenUsage {
    /// The tokens of several answers to one prompt: the prompt counted once.
    pub fn of_choices<'a>(all: impl IntoIterator<Item = &'a TokenUsage>) -> TokenUsage {
        all.into_iter().fold(TokenUsage::default(), |sum, u| TokenUsage {
            prompt: sum.prompt.max(u.prompt),
            completion: sum.completion + u.completion,
        })
    }
}

/// The end of a completion: what is known only once it is over.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatEnd {
    /// "stop", "length" or "tool_calls" (or what a provider says).
    pub finish_reason: String,
    /// OpenAI `tool_calls` objects (`id`, `type: function`, `function.name`,
    /// `function.arguments` as a JSON string).
    pub tool_calls: Vec<Value>,
    pub usage: TokenUsage,
    /// Set when the model refused instead of answering.
    pub refusal: Option<String>,
}

/// What a completion stream carries: text deltas, then one end.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatEvent {
    /// The next piece of text; never splits a character.
    Delta(String),
    /// The last item of a stream.
    End(ChatEnd),
}

/// A completion in flight. Bounded ([`STREAM_CAPACITY`]); dropping it tells
/// the producer to stop.
pub type ChatStream = mpsc::Receiver<Result<ChatEvent, ChatError>>;

/// Deltas a stream holds before its producer waits for the reader.
pub const STREAM_CAPACITY: usize = 32;

/// A new stream and the sender its producer writes to.
pub fn channel() -> (mpsc::Sender<Result<ChatEvent, ChatError>>, ChatStream) {
    mpsc::channel(STREAM_CAPACITY)
}

/// A finished completion as a stream: its text as one delta, then its end
/// (for answers that arrive whole, and for test doubles).
pub fn stream_of(completion: ChatCompletion) -> ChatStream {
    let (tx, rx) = mpsc::channel(2);
    let ChatCompletion {
        text,
        tool_calls,
        usage,
        finish_reason,
        refusal,
    } = completion;
    if !text.is_empty() {
        let _ = tx.try_send(Ok(ChatEvent::Delta(text)));
    }
    let _ = tx.try_send(Ok(ChatEvent::End(ChatEnd {
        finish_reason,
        tool_calls,
        usage,
        refusal,
    })));
    rx
}

/// One completion, collected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub text: String,
    pub tool_calls: Vec<Value>,
    pub usage: TokenUsage,
    pub finish_reason: String,
    pub refusal: Option<String>,
}

impl ChatCompletion {
    /// OpenAI's `content`: null when the answer is only tool calls or a
    /// refusal.
    pub fn content(&self) -> Option<String> {
        (!self.text.is_empty() || (self.tool_calls.is_empty() && self.refusal.is_none())).then(|| self.text.clone())
    }
}

/// Something that answers chat completions: the local engine, an HTTP
/// provider, or the router over both. Implementations bound their own
/// concurrency; a provider retries what is worth retrying, so callers retry
/// only what says it is retryable ([`ChatError::is_retryable`]).
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// Starts a completion. Errors that stop it from starting come from
    /// this call; the stream then yields deltas and exactly one end.
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, ChatError>;

    /// Whether a request for `model` would reach a model, without asking
    /// one: callers that will ask many times (an eval run) check once, up
    /// front. Implementations that take any name answer true.
    async fn serves(&self, model: &str) -> Result<bool, ChatError> {
        let _ = model;
        Ok(true)
    }

    /// A completion, collected from [`ChatModel::stream`].
    async fn complete(&self, request: ChatRequest) -> Result<ChatCompletion, ChatError> {
        let mut stream = self.stream(request).await?;
        let mut text = String::new();
        while let Some(item) = stream.recv().await {
            match item? {
                ChatEvent::Delta(delta) => text.push_str(&delta),
                ChatEvent::End(end) => {
                    return Ok(ChatCompletion {
                        text,
                        tool_calls: end.tool_calls,
                        usage: end.usage,
                        finish_reason: end.finish_reason,
                        refusal: end.refusal,
                    });
                }
            }
        }
        Err(ChatError::Internal(
            "the completion stream ended without its end".into(),
        ))
    }
}

/// A chat model with a catalog of names it serves: the local engine. The
/// router asks it before sending a bare name anywhere else.
#[async_trait]
pub trait LocalModels: ChatModel {
    /// Whether `model` is one of its models (without loading it).
    async fn knows(&self, model: &str) -> Result<bool, ChatError>;
}

/// Why a completion could not be had. One conversion leads to the domain
/// [`Error`] (and from there to one gRPC status).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// No provider and no local model serves this name.
    #[error("model {0} not found: no configured provider or local model serves it")]
    NotFound(String),
    /// The request is wrong; `field` is a path into the gRPC ChatRequest.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The local engine's queue is full: try again after `retry_after`.
    #[error("{message}")]
    Overloaded { retry_after: Duration, message: String },
    /// An HTTP provider failed (after its own retries): `status` is its
    /// HTTP status when it answered with an error; `retryable` when the
    /// caller trying again may succeed (a stream cut short).
    #[error("{message}")]
    Upstream {
        retryable: bool,
        status: Option<u16>,
        message: String,
    },
    /// A local model that exists but cannot be loaded.
    #[error("{0}")]
    ModelLoad(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ChatError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ChatError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ChatError::Overloaded { .. } => true,
            ChatError::Upstream { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// How long to wait before trying again, when the model said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ChatError::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<ChatError> for Error {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::NotFound(model) => Error::not_found("model", model),
            ChatError::Invalid { field, message } => Error::invalid(field, message),
            ChatError::Overloaded { retry_after, message } => Error::Overloaded { message, retry_after },
            // The provider refused this request (a wrong key, an unknown
            // model, a parameter it does not take): no use trying again.
            ChatError::Upstream {
                status: Some(status @ 400..=499),
                message,
                ..
            } if status != 408 && status != 429 => Error::precondition("UPSTREAM", "provider", message),
            ChatError::Upstream { message, .. } => Error::Unavailable(message),
            ChatError::ModelLoad(message) => Error::precondition("MODEL_LOAD", "model", message),
            ChatError::Internal(message) => Error::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request() -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![json!({"role": "user", "content": "hi"})],
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_the_grpc_fields() {
        assert_eq!(request().validate(), Ok(()));
        let field = |r: ChatRequest| match r.validate() {
            Err(ChatError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(ChatRequest::default()), "model");
        let mut r = request();
        r.messages.push(json!({"role": "robot", "content": "x"}));
        assert_eq!(field(r), "messages[1].role");
        assert_eq!(
            field(ChatRequest {
                temperature: Some(2.5),
                ..request()
            }),
            "sampling.temperature"
        );
        assert_eq!(
            field(ChatRequest {
                top_p: Some(0.0),
                ..request()
            }),
            "sampling.top_p"
        );
        assert_eq!(
            field(ChatRequest {
                max_tokens: Some(0),
                ..request()
            }),
            "sampling.max_tokens"
        );
        assert_eq!(
            field(ChatRequest {
                stop: vec!["x".into(), String::new()],
                ..request()
            }),
            "sampling.stop"
        );
    }

    #[test]
    fn formats_tools_and_tool_choice_are_checked() {
        let field = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": []});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            match serde_json::from_value::<ChatRequest>(body).unwrap().validate() {
                Ok(()) => String::new(),
                Err(ChatError::Invalid { field, .. }) => field,
                Err(other) => panic!("{other:?}"),
            }
        };
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        for ok in [
            json!({"response_format": {"type": "text"}}),
            json!({"response_format": {"type": "json_object"}}),
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a-b_1", "schema": {}}}}),
            json!({"tools": tools, "tool_choice": "required", "parallel_tool_calls": false}),
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "f"}}}),
        ] {
            assert_eq!(field(ok.clone()), "", "{ok}");
        }
        for (bad, at) in [
            (json!({"response_format": {"type": "yaml"}}), "response_format.type"),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}}),
                "response_format.json_schema.name",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": 1}}}),
                "response_format.json_schema.schema",
            ),
            (json!({"tools": {"type": "function"}}), "tools"),
            (json!({"tools": [{"type": "web"}]}), "tools[0].type"),
            (
                json!({"tools": [{"type": "function", "function": {}}]}),
                "tools[0].function.name",
            ),
            (json!({"tool_choice": "auto"}), "tool_choice"),
            (json!({"parallel_tool_calls": true}), "parallel_tool_calls"),
            (json!({"tools": tools, "tool_choice": "always"}), "tool_choice"),
            (
                json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
                "tool_choice.function.name",
            ),
        ] {
            assert_eq!(field(bad.clone()), at, "{bad}");
        }
    }

    #[test]
    fn each_choice_is_its_own_request() {
        let r = request();
        assert_eq!(r.choice(0), r);
        assert_eq!(r.choice(2).choice, 2);
        assert_eq!(
            ChatRequest {
                choice: 0,
                ..r.choice(2)
            },
            r
        );
        assert!(check_choices(0).is_err() && check_choices(129).is_err() && check_choices(128).is_ok());
    }

    struct Whole;

    #[async_trait]
    impl ChatModel for Whole {
        async fn stream(&self, _: ChatRequest) -> Result<ChatStream, ChatError> {
            Ok(stream_of(ChatCompletion {
                text: "hello".into(),
                finish_reason: "stop".into(),
                usage: TokenUsage {
                    prompt: 3,
                    completion: 1,
                },
                ..Default::default()
            }))
        }
    }

    #[tokio::test]
    async fn complete_collects_the_stream() {
        let c = Whole.complete(request()).await.unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish_reason.as_str(), c.usage.prompt),
            ("hello", "stop", 3)
        );
    }

    #[test]
    fn only_overload_and_transient_upstream_errors_are_retried() {
        let overloaded = ChatError::Overloaded {
            retry_after: Duration::from_secs(2),
            message: "full".into(),
        };
        assert!(overloaded.is_retryable());
        assert_eq!(overloaded.retry_after(), Some(Duration::from_secs(2)));
        assert!(
            ChatError::Upstream {
                retryable: true,
                status: None,
                message: String::new()
            }
            .is_retryable()
        );
        let refused = |status| ChatError::Upstream {
            retryable: false,
            status: Some(status),
            message: String::new(),
        };
        assert!(matches!(Error::from(refused(401)), Error::FailedPrecondition { .. }));
        assert!(matches!(Error::from(refused(429)), Error::Unavailable(_)));
        assert!(matches!(Error::from(refused(503)), Error::Unavailable(_)));
        assert!(!ChatError::NotFound("m".into()).is_retryable());
        assert!(matches!(
            Error::from(overloaded),
            Error::Overloaded { retry_after, .. } if retry_after == Duration::from_secs(2)
        ));
    }
}
