//! Model providers: OpenAI-compatible HTTP endpoints (OpenAI itself, vLLM,
//! llama.cpp's server, Ollama, ...) configured by name.
//!
//! Architecture invariant: API keys come from an environment variable or a
//! file named in the configuration, are read at start-up, and are never
//! stored, logged or returned. Every provider bounds its own concurrency and
//! request rate, and retries rate limits and server errors with backoff,
//! honouring Retry-After.

pub mod chat;

pub use chat::{ChatCompletion, ChatModel, ChatRequest};

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};

use crate::graders::{
    ChatMessage, ChatOutput, ContentPart, EmbedError, Embedder, ModelClient, ModelError, SamplingParams, TokenUsage,
};

fn default_concurrency() -> usize {
    16
}
fn default_timeout() -> u64 {
    60
}
fn default_retries() -> u32 {
    4
}

/// One provider, as written in the providers file (a JSON array).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    /// e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1
    pub base_url: String,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Requests per second; none means unlimited.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Model for embeddings (text_similarity cosine).
    #[serde(default)]
    pub embedding_model: Option<String>,
    /// How model graders ask for their output shape.
    #[serde(default)]
    pub structured_output: StructuredOutput,
}

/// How a provider is asked for output that follows a JSON schema (model
/// graders' `{"result": ..., "steps": [...]}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// OpenAI's structured outputs, `{"type": "json_schema", "json_schema":
    /// {...}}`: OpenAI, vLLM, llama.cpp's llama-server, Ollama.
    #[default]
    JsonSchema,
    /// `{"type": "json_object", "schema": {...}}`: llama-cpp-python's server,
    /// which constrains to the schema this way and refuses `json_schema`.
    JsonObject,
    /// No response_format: the prompt alone asks for JSON.
    None,
}

impl StructuredOutput {
    fn response_format(self, schema: Value) -> Option<Value> {
        match self {
            Self::JsonSchema => Some(json!({"type": "json_schema",
                "json_schema": {"name": "grader_output", "schema": schema, "strict": true}})),
            Self::JsonObject => Some(json!({"type": "json_object", "schema": schema})),
            Self::None => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub retryable: bool,
    pub status: Option<u16>,
    pub message: String,
}

pub struct HttpProvider {
    config: ProviderConfig,
    key: Option<String>,
    http: reqwest::Client,
    slots: Semaphore,
    next_slot: Mutex<Instant>,
}

impl std::fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately left out.
        f.debug_struct("HttpProvider").field("name", &self.config.name).finish()
    }
}

impl HttpProvider {
    pub fn new(config: ProviderConfig) -> anyhow::Result<Self> {
        let key = match (&config.api_key_env, &config.api_key_file) {
            (Some(var), _) => Some(
                std::env::var(var)
                    .map_err(|_| anyhow::anyhow!("provider {}: environment variable {var} is not set", config.name))?,
            ),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("provider {}: reading {}: {e}", config.name, path.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .build()?;
        Ok(Self {
            slots: Semaphore::new(config.max_concurrency.max(1)),
            next_slot: Mutex::new(Instant::now()),
            config,
            key,
            http,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Waits for this provider's rate limit.
    async fn pace(&self) {
        let Some(rps) = self.config.requests_per_second.filter(|r| *r > 0.0) else {
            return;
        };
        let gap = Duration::from_secs_f64(1.0 / rps);
        let wait = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + gap;
            at - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// POSTs JSON to `path` under the base URL, with bounded concurrency,
    /// pacing, and retries on 429, 5xx, timeouts and connection errors.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ProviderError> {
        let _slot = self.slots.acquire().await.map_err(|_| ProviderError {
            retryable: false,
            status: None,
            message: "provider is shutting down".into(),
        })?;
        let url = format!(
            "{}/{}",
            self.config.base_url.trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pace().await;
            let mut req = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string());
            if let Some(key) = &self.key {
                req = req.bearer_auth(key);
            }
            let (error, retry_after) = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let text = resp.text().await.map_err(|e| ProviderError {
                        retryable: true,
                        status: None,
                        message: format!("{}: reading the response: {e}", self.config.name),
                    })?;
                    return serde_json::from_str(&text).map_err(|e| ProviderError {
                        retryable: false,
                        status: Some(200),
                        message: format!("{}: the response is not JSON: {e}", self.config.name),
                    });
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
                    let text = resp.text().await.unwrap_or_default();
                    let retryable = status.as_u16() == 429 || status.is_server_error();
                    (
                        ProviderError {
                            retryable,
                            status: Some(status.as_u16()),
                            message: format!(
                                "{}: HTTP {status}: {}",
                                self.config.name,
                                text.chars().take(300).collect::<String>()
                            ),
                        },
                        retry_after,
                    )
                }
                Err(e) => (
                    ProviderError {
                        retryable: e.is_timeout() || e.is_connect() || e.is_request(),
                        status: None,
                        message: format!("{}: {e}", self.config.name),
                    },
                    None,
                ),
            };
            if !error.retryable || attempt > self.config.max_retries {
                return Err(error);
            }
            tracing::warn!(provider = %self.config.name, attempt, error = %error.message, "retrying");
            tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

fn message_json(m: &ChatMessage) -> Value {
    let texts: Vec<&str> = m
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let only_text = texts.len() == m.content.len();
    let content = if only_text {
        Value::String(texts.join(""))
    } else {
        Value::Array(
            m.content
                .iter()
                .map(|p| match p {
                    ContentPart::Text { text } => json!({"type": "text", "text": text}),
                    ContentPart::Image { url, detail } => {
                        json!({"type": "image_url", "image_url": {"url": url, "detail": detail.clone().unwrap_or_else(|| "auto".into())}})
                    }
                    ContentPart::Audio { data, format } => {
                        json!({"type": "input_audio", "input_audio": {"data": data, "format": format}})
                    }
                })
                .collect(),
        )
    };
    json!({"role": m.role, "content": content})
}

/// Every configured provider, by name; the first is the default.
#[derive(Debug, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<HttpProvider>>,
    default: Option<String>,
}

impl Providers {
    /// Reads a JSON array of provider configurations.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let configs: Vec<ProviderConfig> =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::from_configs(configs)
    }

    pub fn from_configs(configs: Vec<ProviderConfig>) -> anyhow::Result<Self> {
        let mut providers = Providers::default();
        for config in configs {
            let name = config.name.clone();
            anyhow::ensure!(
                !providers.by_name.contains_key(&name),
                "provider {name} is configured twice"
            );
            providers.default.get_or_insert_with(|| name.clone());
            providers.by_name.insert(name, Arc::new(HttpProvider::new(config)?));
        }
        Ok(providers)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// "provider/model" picks a provider; a bare model uses the default.
    pub fn route<'m>(&self, model: &'m str) -> Option<(Arc<HttpProvider>, &'m str)> {
        if let Some((name, rest)) = model.split_once('/')
            && let Some(p) = self.by_name.get(name)
        {
            return Some((p.clone(), rest));
        }
        let p = self.by_name.get(self.default.as_ref()?)?;
        Some((p.clone(), model))
    }

    /// The embedder of the first provider that names an embedding model.
    pub fn embedder(self: &Arc<Self>) -> Option<Arc<dyn Embedder>> {
        let p = self.by_name.values().find(|p| p.config.embedding_model.is_some())?;
        Some(Arc::new(ProviderEmbedder { provider: p.clone() }))
    }
}

#[async_trait]
impl ModelClient for Providers {
    async fn chat(
        &self,
        model: &str,
        messages: Vec<ChatMessage>,
        params: SamplingParams,
        response_schema: Option<Value>,
    ) -> Result<ChatOutput, ModelError> {
        let (provider, model) = self.route(model).ok_or_else(|| ModelError {
            retryable: false,
            message: format!("no model provider is configured for {model:?}"),
        })?;
        let mut body = json!({
            "model": model,
            "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
        });
        let obj = body.as_object_mut().expect("a JSON object literal");
        if let Some(v) = params.temperature {
            obj.insert("temperature".into(), json!(v));
        }
        if let Some(v) = params.top_p {
            obj.insert("top_p".into(), json!(v));
        }
        if let Some(v) = params.seed {
            obj.insert("seed".into(), json!(v));
        }
        if let Some(v) = params.max_completion_tokens {
            obj.insert("max_tokens".into(), json!(v));
        }
        if let Some(v) = &params.reasoning_effort {
            obj.insert("reasoning_effort".into(), json!(v));
        }
        let structured = provider.config.structured_output;
        if let Some(format) = response_schema.and_then(|schema| structured.response_format(schema)) {
            obj.insert("response_format".into(), format);
        }
        // The provider already retried; the grader engine must not again.
        let response = provider.post("chat/completions", &body).await.map_err(|e| ModelError {
            retryable: false,
            message: match structured {
                StructuredOutput::JsonSchema if e.message.contains("json_schema") => format!(
                    "{} (if this server does not take json_schema response formats, set the provider's \
                     structured_output to \"json_object\" or \"none\")",
                    e.message
                ),
                _ => e.message,
            },
        })?;
        let message = &response["choices"][0]["message"];
        if message.is_null() {
            return Err(ModelError {
                retryable: false,
                message: format!("{}: the response has no choices[0].message", provider.name()),
            });
        }
        Ok(ChatOutput {
            text: message["content"].as_str().unwrap_or_default().to_string(),
            usage: TokenUsage {
                prompt: response["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                completion: response["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            },
            refusal: message["refusal"].as_str().map(str::to_string),
        })
    }
}

struct ProviderEmbedder {
    provider: Arc<HttpProvider>,
}

#[async_trait]
impl Embedder for ProviderEmbedder {
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = self.provider.config.embedding_model.clone().unwrap_or_default();
        let response = self
            .provider
            .post("embeddings", &json!({"model": model, "input": texts}))
            .await
            .map_err(|e| EmbedError {
                retryable: false,
                message: e.message,
            })?;
        let data = response["data"].as_array().ok_or_else(|| EmbedError {
            retryable: false,
            message: format!("{}: the embeddings response has no data", self.provider.name()),
        })?;
        let mut out = vec![Vec::new(); texts.len()];
        for (i, item) in data.iter().enumerate() {
            let index = item["index"].as_u64().map(|x| x as usize).unwrap_or(i);
            let vector = embedding_vector(&item["embedding"]).map_err(|why| EmbedError {
                retryable: false,
                message: format!("{}: embedding {index}: {why}", self.provider.name()),
            })?;
            if let Some(slot) = out.get_mut(index) {
                *slot = vector;
            }
        }
        if out.iter().any(Vec::is_empty) {
            return Err(EmbedError {
                retryable: false,
                message: format!("{}: the embeddings response is missing vectors", self.provider.name()),
            });
        }
        Ok(out)
    }
}

/// One embedding from a response: a flat array of numbers, nothing else.
/// A server that answers with one vector per token (llama.cpp serving a
/// model without a pooling type) is told apart: reading it as numbers
/// would give a wrong vector, not an error.
fn embedding_vector(value: &Value) -> Result<Vec<f32>, String> {
    let Some(values) = value.as_array() else {
        return Err("\"embedding\" is not an array of numbers".into());
    };
    if values.first().is_some_and(Value::is_array) {
        return Err(format!(
            "the server returned {} vectors (one per token) instead of one: the model has no pooling; serve it \
             with pooling (llama.cpp: --pooling mean)",
            values.len()
        ));
    }
    values
        .iter()
        .map(|x| x.as_f64().map(|x| x as f32))
        .collect::<Option<Vec<f32>>>()
        .ok_or_else(|| "\"embedding\" holds something that is not a number".into())
}

#[async_trait]
impl ChatModel for Providers {
    async fn complete(&self, request: ChatRequest) -> Result<ChatCompletion, ModelError> {
        let (provider, model) = self.route(&request.model).ok_or_else(|| ModelError {
            retryable: false,
            message: format!("no model provider is configured for {:?}", request.model),
        })?;
        let mut body = json!({"model": model, "messages": request.messages});
        let obj = body.as_object_mut().expect("a JSON object literal");
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                obj.insert(key.into(), v);
            }
        };
        set("temperature", request.temperature.map(|v| json!(v)));
        set("top_p", request.top_p.map(|v| json!(v)));
        set("top_k", request.top_k.map(|v| json!(v)));
        set("max_tokens", request.max_tokens.map(|v| json!(v)));
        set("seed", request.seed.map(|v| json!(v)));
        set("stop", (!request.stop.is_empty()).then(|| json!(request.stop)));
        set("tools", request.tools.clone());
        set("response_format", request.response_format.clone());
        // The provider already retried; callers must not again.
        let response = provider.post("chat/completions", &body).await.map_err(|e| ModelError {
            retryable: false,
            message: e.message,
        })?;
        let choice = &response["choices"][0];
        let message = &choice["message"];
        if !message.is_object() {
            return Err(ModelError {
                retryable: false,
                message: format!("{}: the response has no choices[0].message", provider.name()),
            });
        }
        let tool_calls = message["tool_calls"].as_array().cloned().unwrap_or_default();
        let finish_reason = match choice["finish_reason"].as_str() {
            Some(reason) => reason.to_string(),
            None if !tool_calls.is_empty() => "tool_calls".into(),
            None => "stop".into(),
        };
        Ok(ChatCompletion {
            text: message["content"].as_str().unwrap_or_default().to_string(),
            tool_calls,
            usage: TokenUsage {
                prompt: response["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                completion: response["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            },
            finish_reason,
        })
    }
}

/// Routes chat completions: `provider/model` names go to the HTTP
/// providers, every other name (a registered base model, a fine-tuned
/// `ft:...` id) to the local inference engine.
pub struct ModelRouter {
    providers: Arc<Providers>,
    local: Option<Arc<dyn ChatModel>>,
}

impl ModelRouter {
    pub fn new(providers: Arc<Providers>, local: Option<Arc<dyn ChatModel>>) -> Self {
        Self { providers, local }
    }

    /// Whether a model name goes to the HTTP providers.
    pub fn is_remote(model: &str) -> bool {
        model.contains('/')
    }
}

#[async_trait]
impl ChatModel for ModelRouter {
    async fn complete(&self, request: ChatRequest) -> Result<ChatCompletion, ModelError> {
        if Self::is_remote(&request.model) {
            return self.providers.complete(request).await;
        }
        match &self.local {
            Some(local) => local.complete(request).await,
            None => Err(ModelError {
                retryable: false,
                message: format!(
                    "no local inference engine is configured for model {}; use provider/model for an HTTP provider",
                    request.model
                ),
            }),
        }
    }
}
