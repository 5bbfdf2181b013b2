//! The local engine as a service: resolves model names (registered base
//! models, fine-tuned models and their checkpoints), keeps each base model
//! loaded once and shared by every adapter over it, and answers chat
//! completions through a batching worker so that many concurrent requests
//! (an eval's items) decode together.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use candle_core::Device;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::graders::{ModelError, TokenUsage};
use crate::inference::{ChatCompletion, ChatModel, ChatRequest};
use crate::models::{Models, Resolved};
use lathe_engine::chat_template::{CHATML, ChatTemplate};
use lathe_engine::generate::{Generated, Sampling, generate};
use lathe_engine::lora::Adapter;
use lathe_engine::model::BaseModel;
use lathe_engine::tokenizer::Tokenizer;
use lathe_engine::weights::load;
use lathe_engine::{EngineError, Result};

/// A base model in memory with what it needs to talk.
pub struct LoadedBase {
    pub name: String,
    pub model: BaseModel,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub bos_id: Option<u32>,
    pub stop_ids: Vec<u32>,
}

impl LoadedBase {
    pub fn from_path(name: &str, path: &std::path::Path, device: &Device) -> Result<Self> {
        let loaded = load(path, device)?;
        let template = ChatTemplate::new(
            loaded.chat_template.as_deref().unwrap_or(CHATML),
            &loaded.bos_token,
            &loaded.eos_token,
        )
        .map_err(|e| EngineError::Load(format!("chat template: {e}")))?;
        let bos_id = loaded.tokenizer.bos_id();
        Ok(Self {
            name: name.to_string(),
            model: BaseModel::new(loaded.config, loaded.weights, device.clone())?,
            tokenizer: loaded.tokenizer,
            template,
            bos_id,
            stop_ids: loaded.stop_ids,
        })
    }

    /// Renders OpenAI messages (and tools) into prompt token ids.
    pub fn prompt(&self, messages: &[Value], tools: Option<&Value>) -> Result<Vec<u32>> {
        let text = self
            .template
            .render(messages, tools, true)
            .map_err(|e| EngineError::Data(format!("chat template: {e}")))?;
        let mut ids = Vec::new();
        if let Some(b) = self.bos_id
            && self.tokenizer.add_bos()
            && !self.tokenizer.id_to_token(b).is_some_and(|t| text.starts_with(t))
        {
            ids.push(b);
        }
        ids.extend(self.tokenizer.encode(&text, true));
        Ok(ids)
    }
}

/// Finds models by name: registered base models and fine-tuned models.
#[async_trait]
pub trait Catalog: Send + Sync {
    async fn resolve(&self, model: &str) -> Result<Resolved>;
}

#[async_trait]
impl Catalog for Models {
    async fn resolve(&self, model: &str) -> Result<Resolved> {
        Models::resolve(self, model).await.map_err(|e| match e {
            Error::NotFound { .. } => EngineError::NotFound(model.to_string()),
            other => EngineError::Data(other.to_string()),
        })
    }
}

struct GenJob {
    base: Arc<LoadedBase>,
    adapter: Option<Arc<Adapter>>,
    adapter_key: String,
    prompt: Vec<u32>,
    sampling: Sampling,
    tokens: Option<mpsc::UnboundedSender<u32>>,
    reply: oneshot::Sender<Result<Generated>>,
}

/// The embedded inference engine.
pub struct LocalEngine {
    catalog: Arc<dyn Catalog>,
    device: Device,
    bases: tokio::sync::Mutex<HashMap<String, Arc<LoadedBase>>>,
    adapters: Mutex<HashMap<String, Arc<Adapter>>>,
    queue: mpsc::UnboundedSender<GenJob>,
    /// Most prompts decoded together.
    pub max_batch: usize,
}

impl LocalEngine {
    pub fn new(catalog: Arc<dyn Catalog>, max_batch: usize) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let max_batch = max_batch.max(1);
        std::thread::Builder::new()
            .name("lathe-generate".into())
            .spawn(move || batch_worker(rx, max_batch))
            .expect("spawning the generation thread");
        Arc::new(Self {
            catalog,
            device: Device::Cpu,
            bases: tokio::sync::Mutex::new(HashMap::new()),
            adapters: Mutex::new(HashMap::new()),
            queue: tx,
            max_batch,
        })
    }

    /// The base model `name`, loaded once.
    pub async fn base(&self, name: &str, path: &std::path::Path) -> Result<Arc<LoadedBase>> {
        let mut bases = self.bases.lock().await;
        if let Some(b) = bases.get(name) {
            return Ok(b.clone());
        }
        let (n, p, d) = (name.to_string(), path.to_path_buf(), self.device.clone());
        let loaded = tokio::task::spawn_blocking(move || LoadedBase::from_path(&n, &p, &d))
            .await
            .map_err(|e| EngineError::Load(format!("loading panicked: {e}")))??;
        let loaded = Arc::new(loaded);
        bases.insert(name.to_string(), loaded.clone());
        Ok(loaded)
    }

    pub async fn resolve(&self, model: &str) -> Result<Resolved> {
        self.catalog.resolve(model).await
    }

    /// The base and (for a fine-tuned model) the adapter behind `model`.
    pub async fn open(&self, model: &str) -> Result<(Arc<LoadedBase>, Option<Arc<Adapter>>)> {
        match self.catalog.resolve(model).await? {
            Resolved::Base { name, path } => Ok((self.base(&name, &path).await?, None)),
            Resolved::FineTuned {
                id,
                base,
                base_path,
                adapter,
                adapter_config,
            } => {
                let b = self.base(&base, &base_path).await?;
                if let Some(a) = self.adapters.lock().ok().and_then(|m| m.get(&id).cloned()) {
                    return Ok((b, Some(a)));
                }
                let a = Arc::new(Adapter::from_peft(
                    &b.model.config,
                    &adapter,
                    &adapter_config,
                    &self.device,
                )?);
                if let Ok(mut m) = self.adapters.lock() {
                    if m.len() >= 64 {
                        m.clear();
                    }
                    m.insert(id, a.clone());
                }
                Ok((b, Some(a)))
            }
        }
    }

    /// Generates one completion; `tokens` receives each token as chosen.
    pub async fn generate(
        &self,
        model: &str,
        messages: &[Value],
        tools: Option<&Value>,
        sampling: Sampling,
        tokens: Option<mpsc::UnboundedSender<u32>>,
    ) -> Result<(Arc<LoadedBase>, Generated)> {
        let (base, adapter) = self.open(model).await?;
        let prompt = base.prompt(messages, tools)?;
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(GenJob {
                base: base.clone(),
                adapter,
                adapter_key: model.to_string(),
                prompt,
                sampling,
                tokens,
                reply,
            })
            .map_err(|_| EngineError::Data("the generation worker stopped".into()))?;
        let out = rx
            .await
            .map_err(|_| EngineError::Data("the generation worker dropped the request".into()))??;
        Ok((base, out))
    }
}

fn batch_worker(mut rx: mpsc::UnboundedReceiver<GenJob>, max_batch: usize) {
    let mut pending: Vec<GenJob> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.blocking_recv() {
                Some(j) => pending.push(j),
                None => return,
            }
        }
        while let Ok(j) = rx.try_recv() {
            pending.push(j);
        }
        // One batch: the oldest request's model and adapter, up to max_batch.
        let key = (pending[0].base.name.clone(), pending[0].adapter_key.clone());
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for j in pending.drain(..) {
            if batch.len() < max_batch && (j.base.name.clone(), j.adapter_key.clone()) == key {
                batch.push(j);
            } else {
                rest.push(j);
            }
        }
        pending = rest;
        let base = batch[0].base.clone();
        let adapter = batch[0].adapter.clone();
        let prompts: Vec<Vec<u32>> = batch.iter().map(|j| j.prompt.clone()).collect();
        let sampling: Vec<Sampling> = batch.iter().map(|j| j.sampling.clone()).collect();
        let senders: Vec<Option<mpsc::UnboundedSender<u32>>> = batch.iter().map(|j| j.tokens.clone()).collect();
        let result = generate(
            &base.model,
            adapter.as_deref(),
            &base.tokenizer,
            &prompts,
            &sampling,
            &base.stop_ids,
            &mut |i, t| {
                if let Some(s) = &senders[i] {
                    let _ = s.send(t);
                }
            },
        );
        match result {
            Ok(outs) => {
                for (j, o) in batch.into_iter().zip(outs) {
                    let _ = j.reply.send(Ok(o));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for j in batch {
                    let _ = j.reply.send(Err(EngineError::Data(msg.clone())));
                }
            }
        }
    }
}

/// Tool calls written by the model: Hermes/Qwen-style `<tool_call>{...}</tool_call>`
/// blocks, or (when tools were offered) a bare JSON object or array of
/// objects with `name` and `arguments`.
pub fn parse_tool_calls(text: &str, tools_offered: bool) -> (String, Vec<Value>) {
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut s = text;
    while let Some(start) = s.find("<tool_call>") {
        rest.push_str(&s[..start]);
        let after = &s[start + "<tool_call>".len()..];
        let (body, next) = match after.find("</tool_call>") {
            Some(end) => (&after[..end], &after[end + "</tool_call>".len()..]),
            None => (after, ""),
        };
        if let Ok(v) = serde_json::from_str::<Value>(body.trim()) {
            calls.push(v);
        } else {
            rest.push_str(&s[start..start + "<tool_call>".len()]);
            rest.push_str(body);
        }
        s = next;
    }
    rest.push_str(s);
    if calls.is_empty() && tools_offered {
        match serde_json::from_str::<Value>(text.trim()) {
            Ok(Value::Array(a)) if !a.is_empty() && a.iter().all(|c| c.get("name").is_some()) => {
                calls = a;
                rest.clear();
            }
            Ok(v @ Value::Object(_)) if v.get("name").is_some() && v.get("arguments").is_some() => {
                calls.push(v);
                rest.clear();
            }
            _ => {}
        }
    }
    let calls = calls
        .into_iter()
        .filter(|c| c.get("name").and_then(Value::as_str).is_some())
        .enumerate()
        .map(|(i, c)| {
            let args = match c.get("arguments").or_else(|| c.get("parameters")) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "{}".into(),
            };
            json!({"id": format!("call_{i}"), "type": "function",
                   "function": {"name": c["name"], "arguments": args}})
        })
        .collect();
    (rest.trim().to_string(), calls)
}

/// Sampling settings from a request (OpenAI defaults: temperature 1).
pub fn sampling_of(r: &ChatRequest) -> Sampling {
    Sampling {
        temperature: r.temperature.unwrap_or(1.0),
        top_p: r.top_p.unwrap_or(1.0),
        top_k: r.top_k.unwrap_or(0) as usize,
        max_tokens: r.max_tokens.unwrap_or(256).max(1) as usize,
        seed: r.seed.unwrap_or(0),
        stop: r.stop.clone(),
    }
}

/// What a streaming chat sends: text as it completes, then one end.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatEvent {
    Delta(String),
    End {
        finish_reason: String,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
}

impl LocalEngine {
    /// Streams one chat completion: checks the request, then sends text
    /// deltas (never splitting a character) and one `End`.
    pub async fn chat_stream(
        self: &Arc<Self>,
        model: String,
        messages: Vec<Value>,
        sampling: Sampling,
    ) -> crate::error::Result<mpsc::Receiver<crate::error::Result<ChatEvent>>> {
        use crate::error::Error;
        if model.is_empty() {
            return Err(Error::invalid("model", "a model is required"));
        }
        if messages.is_empty() {
            return Err(Error::invalid("messages", "at least one message is required"));
        }
        for (i, m) in messages.iter().enumerate() {
            let role = m["role"].as_str().unwrap_or_default();
            if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
                return Err(Error::invalid(
                    format!("messages[{i}].role"),
                    format!("{role:?} is not one of system, developer, user, assistant, tool"),
                ));
            }
        }
        if !(0.0..=2.0).contains(&sampling.temperature) {
            return Err(Error::invalid("sampling.temperature", "must be between 0 and 2"));
        }
        if !(sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
            return Err(Error::invalid("sampling.top_p", "must be in (0, 1]"));
        }
        if sampling.max_tokens == 0 || sampling.max_tokens > 32_768 {
            return Err(Error::invalid("sampling.max_tokens", "must be between 1 and 32768"));
        }
        // Resolve and load before answering, so a bad model is a status.
        self.open(&model).await?;
        let (out_tx, out_rx) = mpsc::channel(64);
        let (tok_tx, mut tok_rx) = mpsc::unbounded_channel::<u32>();
        let engine = self.clone();
        tokio::spawn(async move {
            let gen_task = {
                let engine = engine.clone();
                let model = model.clone();
                tokio::spawn(async move { engine.generate(&model, &messages, None, sampling, Some(tok_tx)).await })
            };
            let (base, _) = match engine.open(&model).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = out_tx.send(Err(e.into())).await;
                    return;
                }
            };
            let mut decoder = base.tokenizer.stream_decoder(true);
            while let Some(t) = tok_rx.recv().await {
                let piece = decoder.push(t);
                if !piece.is_empty() && out_tx.send(Ok(ChatEvent::Delta(piece))).await.is_err() {
                    return;
                }
            }
            let tail = decoder.finish();
            if !tail.is_empty() {
                let _ = out_tx.send(Ok(ChatEvent::Delta(tail))).await;
            }
            let end = match gen_task.await {
                Ok(Ok((_, g))) => Ok(ChatEvent::End {
                    finish_reason: g.finish_reason.to_string(),
                    prompt_tokens: g.prompt_tokens as u32,
                    completion_tokens: g.tokens.len() as u32,
                }),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(crate::error::Error::Internal(e.to_string())),
            };
            let _ = out_tx.send(end).await;
        });
        Ok(out_rx)
    }
}

#[async_trait]
impl ChatModel for LocalEngine {
    async fn complete(&self, request: ChatRequest) -> Result<ChatCompletion, ModelError> {
        let sampling = sampling_of(&request);
        let (_, out) = self
            .generate(
                &request.model,
                &request.messages,
                request.tools.as_ref(),
                sampling,
                None,
            )
            .await
            .map_err(|e| ModelError {
                retryable: false,
                message: e.to_string(),
            })?;
        let (text, tool_calls) = if request.tools.is_some() {
            parse_tool_calls(&out.text, true)
        } else {
            (out.text.clone(), Vec::new())
        };
        Ok(ChatCompletion {
            finish_reason: if !tool_calls.is_empty() {
                "tool_calls".into()
            } else {
                out.finish_reason.into()
            },
            text,
            tool_calls,
            usage: TokenUsage {
                prompt: out.prompt_tokens as u64,
                completion: out.tokens.len() as u64,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_are_parsed_from_hermes_blocks_and_bare_json() {
        let (rest, calls) = parse_tool_calls(
            "Let me check.<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>",
            true,
        );
        assert_eq!(rest, "Let me check.");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        let (rest, calls) = parse_tool_calls("{\"name\": \"f\", \"arguments\": {}}", true);
        assert!(rest.is_empty());
        assert_eq!(calls.len(), 1);
        let (rest, calls) = parse_tool_calls("{\"name\": \"f\", \"arguments\": {}}", false);
        assert!(!rest.is_empty() && calls.is_empty());
    }
}
