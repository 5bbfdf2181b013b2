//! OpenAI-compatible HTTP providers: chat completions streamed as
//! server-sent events (`chat.completion.chunk` frames), embeddings, and the
//! set of configured providers the router picks from.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};

use super::chat::{
    self, ChatCompletion, ChatEnd, ChatError, ChatEvent, ChatModel, ChatRequest, ChatStream, TokenUsage,
};
use super::sse;

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
    /// How a request with OpenAI's `json_schema` response format (model
    /// graders' output shape, an eval's structured output) is sent here.
    #[serde(default)]
    pub structured_output: StructuredOutput,
}

/// How a provider is asked for output that follows a JSON schema (model
/// graders' `{"result": ..., "steps": [...]}`). Callers always send
/// OpenAI's `json_schema` shape; this says what the server gets instead.
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
    /// What this server is sent for a request's `response_format`: OpenAI's
    /// `json_schema` format is turned into this server's way of asking for
    /// a schema; other formats go as they are.
    fn adapt(self, format: Option<Value>) -> Option<Value> {
        let format = format?;
        if format["type"] != "json_schema" {
            return Some(format);
        }
        match self {
            Self::JsonSchema => Some(format),
            Self::JsonObject => Some(json!({"type": "json_object", "schema": format["json_schema"]["schema"]})),
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
    /// Requests in flight, streams included until they end.
    slots: Arc<Semaphore>,
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
            slots: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
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

    /// POSTs JSON to `path` under the base URL and reads the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ProviderError> {
        let (resp, _slot) = self.send(path, body).await?;
        let text = resp.text().await.map_err(|e| ProviderError {
            retryable: true,
            status: None,
            message: format!("{}: reading the response: {e}", self.config.name),
        })?;
        serde_json::from_str(&text).map_err(|e| ProviderError {
            retryable: false,
            status: Some(200),
            message: format!("{}: the response is not JSON: {e}", self.config.name),
        })
    }

    /// POSTs JSON to `path` under the base URL, with bounded concurrency,
    /// pacing, and retries on 429, 5xx, timeouts and connection errors,
    /// until a success status; the body is the caller's to read, while it
    /// holds the returned concurrency slot.
    async fn send(&self, path: &str, body: &Value) -> Result<(reqwest::Response, OwnedSemaphorePermit), ProviderError> {
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| ProviderError {
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
                Ok(resp) if resp.status().is_success() => return Ok((resp, slot)),
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

    /// Sends a chat completions request (after its retries) and returns
    /// the response to read, with the concurrency slot it holds.
    async fn chat(
        &self,
        request: ChatRequest,
        stream: bool,
    ) -> Result<(reqwest::Response, OwnedSemaphorePermit), ChatError> {
        let json_schema = request
            .response_format
            .as_ref()
            .is_some_and(|f| f["type"] == "json_schema");
        if json_schema && request.refuse_unsupported && self.config.structured_output == StructuredOutput::None {
            return Err(ChatError::invalid(
                "response_format",
                format!(
                    "provider {} is configured to take no JSON schema (structured_output: none)",
                    self.config.name
                ),
            ));
        }
        let mut body = json!({"model": request.model, "messages": request.messages});
        let obj = body.as_object_mut().expect("a JSON object literal");
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                obj.insert(key.into(), v);
            }
        };
        if stream {
            set("stream", Some(json!(true)));
            set("stream_options", Some(json!({"include_usage": true})));
        }
        set("temperature", request.temperature.map(|v| json!(v)));
        set("top_p", request.top_p.map(|v| json!(v)));
        set("top_k", request.top_k.map(|v| json!(v)));
        set("max_tokens", request.max_tokens.map(|v| json!(v)));
        // Several answers to one prompt are several requests here: each
        // on its own seed, so that they differ.
        set(
            "seed",
            request.seed.map(|v| json!(v.wrapping_add(u64::from(request.choice)))),
        );
        set("stop", (!request.stop.is_empty()).then(|| json!(request.stop)));
        set("presence_penalty", request.presence_penalty.map(|v| json!(v)));
        set("frequency_penalty", request.frequency_penalty.map(|v| json!(v)));
        set("logit_bias", request.logit_bias.map(|v| json!(v)));
        set("tools", request.tools);
        set("tool_choice", request.tool_choice);
        set("parallel_tool_calls", request.parallel_tool_calls.map(Value::Bool));
        set("reasoning_effort", request.reasoning_effort.map(Value::String));
        set(
            "response_format",
            self.config.structured_output.adapt(request.response_format),
        );
        self.send("chat/completions", &body)
            .await
            .map_err(|e| ChatError::Upstream {
                // Retried here already; callers must not again.
                retryable: false,
                status: e.status,
                message: match self.config.structured_output {
                    StructuredOutput::JsonSchema if json_schema && e.message.contains("json_schema") => format!(
                        "{} (if this server does not take json_schema response formats, set the provider's \
                     structured_output to \"json_object\" or \"none\")",
                        e.message
                    ),
                    _ => e.message,
                },
            })
    }
}

/// `stream` asks for server-sent events and passes each `data:` chunk's
/// delta on as it arrives (a server that answers with one JSON body
/// instead, ignoring `stream`, is passed on as one delta); the concurrency
/// slot is held until the stream ends, and a reader that goes away closes
/// the connection. `complete` asks for one JSON body rather than collecting
/// a stream: not every server reports usage in a stream (llama-cpp-python's
/// ignores `stream_options`), and evals and graders count tokens.
#[async_trait]
impl ChatModel for HttpProvider {
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, ChatError> {
        let (response, slot) = self.chat(request, true).await?;
        let (tx, rx) = chat::channel();
        let name = self.config.name.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                () = tx.closed() => {}
                () = forward(response, &tx, &name) => {}
            }
        });
        Ok(rx)
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatCompletion, ChatError> {
        let (response, _slot) = self.chat(request, false).await?;
        completion_of(&read_json(response, &self.config.name).await?, &self.config.name)
    }
}

type Events = mpsc::Sender<Result<ChatEvent, ChatError>>;

/// Passes a chat completions response on to `tx`, ending with one end or
/// one error.
async fn forward(response: reqwest::Response, tx: &Events, provider: &str) {
    let sse = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let result = if sse {
        read_events(response, tx, provider).await
    } else {
        read_whole(response, tx, provider).await
    };
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

async fn read_events(mut response: reqwest::Response, tx: &Events, provider: &str) -> Result<(), ChatError> {
    let mut parser = sse::SseParser::default();
    let mut so_far = Accumulated::default();
    let mut events = Vec::new();
    loop {
        let chunk = response.chunk().await.map_err(|e| ChatError::Upstream {
            retryable: true,
            status: None,
            message: format!("{provider}: reading the stream: {e}"),
        })?;
        let ended = match &chunk {
            Some(bytes) => {
                parser.push(bytes, &mut events);
                false
            }
            None => {
                parser.finish(&mut events);
                true
            }
        };
        for data in events.drain(..) {
            if data.trim() == "[DONE]" {
                let _ = tx.send(Ok(ChatEvent::End(so_far.end()))).await;
                return Ok(());
            }
            let chunk: Value = serde_json::from_str(&data).map_err(|e| ChatError::Upstream {
                retryable: false,
                status: None,
                message: format!("{provider}: a stream chunk is not JSON: {e}"),
            })?;
            if let Some(error) = chunk.get("error") {
                let message = error["message"]
                    .as_str()
                    .map_or_else(|| error.to_string(), str::to_string);
                return Err(ChatError::Upstream {
                    retryable: false,
                    status: None,
                    message: format!("{provider}: {message}"),
                });
            }
            if let Some(text) = so_far.absorb(&chunk)
                && tx.send(Ok(ChatEvent::Delta(text))).await.is_err()
            {
                return Ok(());
            }
        }
        if ended {
            // A server that names a finish reason but never sends [DONE]
            // still finished; one that stops before is cut short.
            if so_far.finish_reason.is_none() {
                return Err(ChatError::Upstream {
                    retryable: true,
                    status: None,
                    message: format!("{provider}: the stream ended before the completion did"),
                });
            }
            let _ = tx.send(Ok(ChatEvent::End(so_far.end()))).await;
            return Ok(());
        }
    }
}

async fn read_whole(response: reqwest::Response, tx: &Events, provider: &str) -> Result<(), ChatError> {
    let c = completion_of(&read_json(response, provider).await?, provider)?;
    if !c.text.is_empty() && tx.send(Ok(ChatEvent::Delta(c.text))).await.is_err() {
        return Ok(());
    }
    let end = ChatEnd {
        finish_reason: c.finish_reason,
        tool_calls: c.tool_calls,
        usage: c.usage,
        refusal: c.refusal,
    };
    let _ = tx.send(Ok(ChatEvent::End(end))).await;
    Ok(())
}

async fn read_json(response: reqwest::Response, provider: &str) -> Result<Value, ChatError> {
    let text = response.text().await.map_err(|e| ChatError::Upstream {
        retryable: true,
        status: None,
        message: format!("{provider}: reading the response: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| ChatError::Upstream {
        retryable: false,
        status: None,
        message: format!("{provider}: the response is not JSON: {e}"),
    })
}

/// A `chat.completion` body as a completion.
fn completion_of(response: &Value, provider: &str) -> Result<ChatCompletion, ChatError> {
    let choice = &response["choices"][0];
    let message = &choice["message"];
    if !message.is_object() {
        return Err(ChatError::Upstream {
            retryable: false,
            status: None,
            message: format!("{provider}: the response has no choices[0].message"),
        });
    }
    let end = Accumulated {
        tool_calls: message["tool_calls"].as_array().cloned().unwrap_or_default(),
        finish_reason: choice["finish_reason"].as_str().map(str::to_string),
        usage: usage_of(&response["usage"]),
        refusal: message["refusal"].as_str().map(str::to_string),
    }
    .end();
    Ok(ChatCompletion {
        text: message["content"].as_str().unwrap_or_default().to_string(),
        tool_calls: end.tool_calls,
        usage: end.usage,
        finish_reason: end.finish_reason,
        refusal: end.refusal,
    })
}

fn usage_of(usage: &Value) -> TokenUsage {
    TokenUsage {
        prompt: usage["prompt_tokens"].as_u64().unwrap_or(0),
        completion: usage["completion_tokens"].as_u64().unwrap_or(0),
    }
}

/// What a stream has said so far besides its text.
#[derive(Debug, Default)]
struct Accumulated {
    tool_calls: Vec<Value>,
    finish_reason: Option<String>,
    usage: TokenUsage,
    refusal: Option<String>,
}

impl Accumulated {
    /// Takes in one `chat.completion.chunk`; returns its text, if any.
    fn absorb(&mut self, chunk: &Value) -> Option<String> {
        if chunk["usage"].is_object() {
            self.usage = usage_of(&chunk["usage"]);
        }
        let choice = &chunk["choices"][0];
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_string());
        }
        let delta = &choice["delta"];
        if let Some(r) = delta["refusal"].as_str() {
            self.refusal.get_or_insert_default().push_str(r);
        }
        for (i, call) in delta["tool_calls"].as_array().into_iter().flatten().enumerate() {
            // Each call arrives in pieces: its id, type and name first, then
            // its arguments a fragment at a time, all under its index.
            let index = call["index"].as_u64().map_or(i, |x| x as usize);
            if self.tool_calls.len() <= index {
                self.tool_calls.resize_with(
                    index + 1,
                    || json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}),
                );
            }
            let slot = &mut self.tool_calls[index];
            for key in ["id", "type"] {
                if let Some(v) = call[key].as_str() {
                    slot[key] = json!(v);
                }
            }
            for key in ["name", "arguments"] {
                if let Some(piece) = call["function"][key].as_str() {
                    let whole = format!("{}{piece}", slot["function"][key].as_str().unwrap_or_default());
                    slot["function"][key] = json!(whole);
                }
            }
        }
        delta["content"].as_str().filter(|t| !t.is_empty()).map(str::to_string)
    }

    fn end(self) -> ChatEnd {
        let finish_reason = match self.finish_reason {
            Some(reason) => reason,
            None if !self.tool_calls.is_empty() => "tool_calls".into(),
            None => "stop".into(),
        };
        ChatEnd {
            finish_reason,
            tool_calls: self.tool_calls,
            usage: self.usage,
            refusal: self.refusal,
        }
    }
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

    /// The provider a `provider/model` name names, and the model's name
    /// there.
    pub fn named<'m>(&self, model: &'m str) -> Option<(Arc<HttpProvider>, &'m str)> {
        let (name, rest) = model.split_once('/')?;
        Some((self.by_name.get(name)?.clone(), rest))
    }

    /// The first configured provider.
    pub fn default_provider(&self) -> Option<Arc<HttpProvider>> {
        self.by_name.get(self.default.as_ref()?).cloned()
    }

    /// The embedder of the first provider that names an embedding model.
    pub fn embedder(self: &Arc<Self>) -> Option<Arc<dyn Embedder>> {
        let p = self.by_name.values().find(|p| p.config.embedding_model.is_some())?;
        Some(Arc::new(ProviderEmbedder { provider: p.clone() }))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EmbedError {
    pub retryable: bool,
    pub message: String,
}

/// Embeddings, for text_similarity's cosine metric.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// One vector per input text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
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
