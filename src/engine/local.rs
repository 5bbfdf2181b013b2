//! The local engine as a service: resolves model names (registered base
//! models, fine-tuned models and their checkpoints), keeps each base model
//! loaded once and shared by every adapter over it, and answers chat
//! completions through a continuously batching worker: many concurrent
//! requests (an eval's items) decode together, each joining the running
//! batch at the next token and leaving it when done.
//!
//! Architecture invariant: the engine holds at most `max_queued`
//! generations, waiting or decoding; one more is refused at once
//! (`ChatError::Overloaded`, with a retry delay from recent generation times)
//! rather than queued without limit. A generation whose reader goes away
//! leaves its batch at the next token.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use candle_core::Device;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::error::Error;
use crate::inference::chat;
use crate::inference::{ChatEnd, ChatError, ChatEvent, ChatModel, ChatRequest, ChatStream, LocalModels, TokenUsage};
use crate::models::{Models, Resolved};
use lathe_engine::chat_template::{CHATML, ChatTemplate};
use lathe_engine::generate::{Batch, Generated, Sampling};
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

    /// Whether `model` names one of its models, without reading its files.
    async fn knows(&self, model: &str) -> Result<bool> {
        match self.resolve(model).await {
            Ok(_) => Ok(true),
            Err(EngineError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Catalog for Models {
    async fn resolve(&self, model: &str) -> Result<Resolved> {
        Models::resolve(self, model).await.map_err(|e| match e {
            Error::NotFound { .. } => EngineError::NotFound(model.to_string()),
            // What is wrong with the model (its base or checkpoint gone).
            Error::FailedPrecondition { message, .. } => EngineError::Load(message),
            other => EngineError::Load(format!("{model}: {}", other.public_message())),
        })
    }

    async fn knows(&self, model: &str) -> Result<bool> {
        Models::exists(self, model)
            .await
            .map_err(|e| EngineError::Data(e.public_message()))
    }
}

/// One admitted generation, waiting for or in a batch.
struct GenJob {
    base: Arc<LoadedBase>,
    adapter: Option<Arc<Adapter>>,
    adapter_key: String,
    prompt: Vec<u32>,
    sampling: Sampling,
    /// Each token as chosen. Unbounded so the worker never waits for a
    /// reader, yet it holds at most `max_tokens` ids; closed when the
    /// reader went away, which ends the row.
    tokens: mpsc::UnboundedSender<u32>,
    reply: oneshot::Sender<Result<Generated>>,
    /// The generation's place in the engine, given back when it is dropped.
    admitted: OwnedSemaphorePermit,
}

/// Most tokens one local completion may ask for.
pub const MAX_LOCAL_TOKENS: u32 = 32_768;

/// The embedded inference engine.
pub struct LocalEngine {
    catalog: Arc<dyn Catalog>,
    device: Device,
    bases: tokio::sync::Mutex<HashMap<String, Arc<LoadedBase>>>,
    adapters: Mutex<HashMap<String, Arc<Adapter>>>,
    queue: mpsc::Sender<GenJob>,
    /// One permit per generation the engine may hold, waiting or decoding.
    admission: Arc<Semaphore>,
    /// Recent generation durations in ms (moving average): about when a
    /// place frees up, the retry delay a refused request is told.
    latency_ms: Arc<AtomicU64>,
    /// Most prompts decoded together.
    pub max_batch: usize,
    /// Whether bases generate on their quantized weights.
    quantized: bool,
}

impl LocalEngine {
    /// An engine on `device` decoding up to `max_batch` prompts together
    /// and holding at most `max_queued` generations, waiting or decoding,
    /// on a GGUF's quantized weights when `quantized` (else on f32).
    /// Its trainer (`LocalTrainer`) trains on the same device.
    pub fn new(
        catalog: Arc<dyn Catalog>,
        max_batch: usize,
        max_queued: usize,
        quantized: bool,
        device: Device,
    ) -> Arc<Self> {
        let max_queued = max_queued.max(1);
        let (tx, rx) = mpsc::channel(max_queued);
        let max_batch = max_batch.max(1);
        let latency_ms = Arc::new(AtomicU64::new(0));
        let worker_latency_ms = latency_ms.clone();
        std::thread::Builder::new()
            .name("lathe-generate".into())
            .spawn(move || batch_worker(rx, max_batch, &worker_latency_ms))
            .expect("spawning the generation thread");
        Arc::new(Self {
            catalog,
            device,
            bases: tokio::sync::Mutex::new(HashMap::new()),
            adapters: Mutex::new(HashMap::new()),
            queue: tx,
            admission: Arc::new(Semaphore::new(max_queued)),
            latency_ms,
            max_batch,
            quantized,
        })
    }

    /// The base model `name`, loaded once.
    pub async fn base(&self, name: &str, path: &std::path::Path) -> Result<Arc<LoadedBase>> {
        let mut bases = self.bases.lock().await;
        if let Some(b) = bases.get(name) {
            return Ok(b.clone());
        }
        let (n, p, d) = (name.to_string(), path.to_path_buf(), self.device.clone());
        let quantized = self.quantized;
        let load = move || {
            let mut base = LoadedBase::from_path(&n, &p, &d)?;
            base.model.quantized &= quantized;
            Ok(base)
        };
        let loaded = match tokio::task::spawn_blocking(load).await {
            Ok(loaded) => loaded,
            Err(e) => Err(EngineError::Load(format!("loading panicked: {e}"))),
        }
        .map_err(|e| {
            // The engine's message names the files' server paths: logged,
            // not passed on to chat clients and job records.
            tracing::error!(model = %name, error = %e, "loading a base model failed");
            EngineError::Load(format!(
                "the files of base model {name} cannot be loaded (the server log says why)"
            ))
        })?;
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

    /// What a refused request is told to wait: about one generation.
    fn retry_after(&self) -> Duration {
        match self.latency_ms.load(Ordering::Relaxed) {
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(ms.clamp(50, 30_000)),
        }
    }

    /// Checks, loads and admits one generation; its tokens come to the
    /// returned receiver and its result to the oneshot.
    async fn submit(
        &self,
        request: &ChatRequest,
    ) -> Result<
        (
            Arc<LoadedBase>,
            mpsc::UnboundedReceiver<u32>,
            oneshot::Receiver<Result<Generated>>,
        ),
        ChatError,
    > {
        request.validate()?;
        if request.max_tokens.is_some_and(|n| n > MAX_LOCAL_TOKENS) {
            return Err(ChatError::invalid(
                "sampling.max_tokens",
                format!("must be between 1 and {MAX_LOCAL_TOKENS}"),
            ));
        }
        check_supported(request)?;
        // Refuse before loading anything when the engine is full.
        let admitted = self
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.overloaded())?;
        let (base, adapter) = self.open(&request.model).await?;
        let tools = request.tools.as_ref().filter(|_| request.offers_tools());
        let prompt = base.prompt(&request.messages, tools)?;
        let sampling = sampling_of(request);
        let vocab = base.tokenizer.vocab_size();
        if let Some((token, _)) = sampling.logit_bias.iter().find(|(t, _)| *t as usize >= vocab) {
            return Err(ChatError::invalid(
                "sampling.logit_bias",
                format!("token {token} is not in the model's vocabulary of {vocab}"),
            ));
        }
        let positions = base.model.max_positions();
        if prompt.len() + sampling.max_tokens > positions {
            return Err(ChatError::invalid(
                "sampling.max_tokens",
                format!(
                    "the prompt ({} tokens) plus max_tokens ({}) exceeds the model's {positions} positions",
                    prompt.len(),
                    sampling.max_tokens
                ),
            ));
        }
        let (tokens, token_rx) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        let job = GenJob {
            base: base.clone(),
            adapter,
            adapter_key: request.model.clone(),
            prompt,
            sampling,
            tokens,
            reply,
            admitted,
        };
        self.queue.try_send(job).map_err(|e| match e {
            // Cannot happen while every job holds a permit; said anyway.
            mpsc::error::TrySendError::Full(_) => self.overloaded(),
            mpsc::error::TrySendError::Closed(_) => ChatError::Internal("the generation worker stopped".into()),
        })?;
        Ok((base, token_rx, reply_rx))
    }

    fn overloaded(&self) -> ChatError {
        let retry_after = self.retry_after();
        ChatError::Overloaded {
            retry_after,
            message: format!(
                "the local engine's generation queue is full; try again in {:.1} s",
                retry_after.as_secs_f64()
            ),
        }
    }
}

/// Runs generations as they come, continuously batched: each request joins
/// the running batch at the next token boundary when it is for the batch's
/// model and adapter and there is room, and leaves it when it finishes or
/// its reader goes away. Requests for another model wait (in order) until
/// the batch in front of them drains.
fn batch_worker(mut rx: mpsc::Receiver<GenJob>, max_batch: usize, latency_ms: &AtomicU64) {
    let mut pending: std::collections::VecDeque<GenJob> = std::collections::VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.blocking_recv() {
                Some(j) => pending.push_back(j),
                None => return,
            }
        }
        let first = pending.front().expect("one waits");
        let (base, adapter, key) = (first.base.clone(), first.adapter.clone(), first.adapter_key.clone());
        run_batch(
            &base,
            adapter.as_deref(),
            &key,
            &mut pending,
            &mut rx,
            max_batch,
            latency_ms,
        );
    }
}

/// One running batch on `base` and `adapter`, until no request for it is
/// left in front of the queue.
fn run_batch(
    base: &LoadedBase,
    adapter: Option<&Adapter>,
    adapter_key: &str,
    pending: &mut std::collections::VecDeque<GenJob>,
    rx: &mut mpsc::Receiver<GenJob>,
    max_batch: usize,
    latency_ms: &AtomicU64,
) {
    let mut batch = Batch::new(&base.model, adapter, &base.tokenizer, &base.stop_ids);
    let mut running: HashMap<usize, (GenJob, Instant)> = HashMap::new();
    let mut next_key = 0usize;
    let finish = |running: &mut HashMap<usize, (GenJob, Instant)>, key: usize, out: Result<Generated>| {
        if let Some((job, started)) = running.remove(&key) {
            let ms = started.elapsed().as_millis() as u64;
            let old = latency_ms.load(Ordering::Relaxed);
            latency_ms.store(if old == 0 { ms.max(1) } else { (old * 3 + ms) / 4 }, Ordering::Relaxed);
            let GenJob { reply, admitted, .. } = job;
            // Room first, so whoever reads this answer and asks again finds it.
            drop(admitted);
            let _ = reply.send(out);
        }
    };
    loop {
        while let Ok(j) = rx.try_recv() {
            pending.push_back(j);
        }
        // A generation whose reader left is dropped unstarted.
        pending.retain(|j| !j.tokens.is_closed());
        // Join: the requests for this batch at the front of the queue.
        let mut joining = Vec::new();
        while batch.len() + joining.len() < max_batch
            && let Some(j) = pending.front()
            && j.base.name == base.name
            && j.adapter_key == adapter_key
        {
            let job = pending.pop_front().expect("checked above");
            joining.push((next_key, (job, Instant::now())));
            next_key += 1;
        }
        if !joining.is_empty() {
            let rows = joining
                .iter()
                .map(|(k, (j, _))| (*k, (j.prompt.clone(), j.sampling.clone())))
                .collect();
            let keys: Vec<usize> = joining.iter().map(|(k, _)| *k).collect();
            running.extend(joining);
            let result = batch.join(rows, &mut |k, t| {
                running.get(&k).is_some_and(|(j, _)| j.tokens.send(t).is_ok())
            });
            match result {
                Ok(done) => done.into_iter().for_each(|(k, g)| finish(&mut running, k, Ok(g))),
                Err(e) => keys
                    .into_iter()
                    .for_each(|k| finish(&mut running, k, Err(EngineError::Data(e.to_string())))),
            }
        }
        if batch.is_empty() {
            return;
        }
        match batch.step(&mut |k, t| running.get(&k).is_some_and(|(j, _)| j.tokens.send(t).is_ok())) {
            Ok(done) => done.into_iter().for_each(|(k, g)| finish(&mut running, k, Ok(g))),
            Err(e) => {
                let keys: Vec<usize> = running.keys().copied().collect();
                for k in keys {
                    finish(&mut running, k, Err(EngineError::Data(e.to_string())));
                }
                return;
            }
        }
    }
}

/// What the local engine cannot do, refused rather than done without:
/// forcing a tool call (it offers tools and reads the calls the model
/// writes), and, for callers that rely on them (`refuse_unsupported`),
/// holding output to a JSON format (decoding is not constrained yet), a
/// reasoning effort, custom tools and content other than text.
fn check_supported(request: &ChatRequest) -> Result<(), ChatError> {
    if let Some(choice) = &request.tool_choice
        && choice != "auto"
        && choice != "none"
    {
        return Err(ChatError::invalid(
            "tool_choice",
            "local models cannot be made to call a tool: use auto or none",
        ));
    }
    if !request.refuse_unsupported {
        return Ok(());
    }
    if let Some(format) = &request.response_format
        && format["type"] != "text"
    {
        return Err(ChatError::invalid(
            "response_format",
            format!(
                "local models cannot hold their output to {}: leave response_format out and ask for JSON in \
                 the prompt, or use a provider's model",
                format["type"].as_str().unwrap_or("a format")
            ),
        ));
    }
    if request.reasoning_effort.is_some() {
        return Err(ChatError::invalid(
            "reasoning_effort",
            "local models take no reasoning effort: leave it out",
        ));
    }
    let tools = request.tools.as_ref().and_then(Value::as_array).into_iter().flatten();
    if let Some(i) = tools.clone().position(|t| t["type"] != "function") {
        return Err(ChatError::invalid(
            format!("tools[{i}].type"),
            "local models take function tools only",
        ));
    }
    for (i, message) in request.messages.iter().enumerate() {
        let parts = message["content"].as_array().into_iter().flatten();
        for (j, part) in parts.enumerate() {
            let text = part["type"] == "text" || (part.get("type").is_none() && part["text"].is_string());
            if !text {
                return Err(ChatError::invalid(
                    format!("messages[{i}].content[{j}].type"),
                    "local models read text only",
                ));
            }
        }
    }
    Ok(())
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
        presence_penalty: r.presence_penalty.unwrap_or(0.0) as f32,
        frequency_penalty: r.frequency_penalty.unwrap_or(0.0) as f32,
        // Keys were checked to be token ids (`ChatRequest::validate`).
        logit_bias: r
            .logit_bias
            .iter()
            .flatten()
            .filter_map(|(token, bias)| Some((token.parse().ok()?, *bias as f32)))
            .collect(),
        // The same answer for a seed whatever is decoded beside it; each
        // of several answers to one prompt its own.
        stream: Some(u64::from(r.choice)),
    }
}

impl From<EngineError> for ChatError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(model) => ChatError::NotFound(model),
            EngineError::Data(m) => ChatError::invalid("messages", m),
            EngineError::Load(m) => ChatError::ModelLoad(m),
            EngineError::Candle(e) => ChatError::Internal(e.to_string()),
        }
    }
}

/// Streaming is the core: tokens are decoded into text as the worker
/// chooses them and sent on, never splitting a character. Text that might
/// begin a stop sequence waits until it cannot; with tools offered the
/// text waits for the end, where tool calls are told from text.
#[async_trait]
impl ChatModel for LocalEngine {
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, ChatError> {
        let (base, mut tokens, reply) = self.submit(&request).await?;
        let (tx, rx) = chat::channel();
        let tools = request.offers_tools();
        let one_call = request.parallel_tool_calls == Some(false);
        // Bytes at the end of the text that may still become a stop sequence.
        let hold = request
            .stop
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        tokio::spawn(async move {
            let mut decoder = base.tokenizer.stream_decoder(true);
            let mut text = String::new();
            let mut sent = 0;
            loop {
                let token = tokio::select! {
                    // The reader left: dropping `tokens` ends the row.
                    () = tx.closed() => return,
                    token = tokens.recv() => token,
                };
                let Some(token) = token else { break };
                text.push_str(&decoder.push(token));
                if tools {
                    continue;
                }
                let mut ready = text.len().saturating_sub(hold);
                if let Some(cut) = request.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                    ready = ready.min(cut);
                }
                while !text.is_char_boundary(ready) {
                    ready -= 1;
                }
                if ready > sent {
                    if tx
                        .send(Ok(ChatEvent::Delta(text[sent..ready].to_string())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    sent = ready;
                }
            }
            let generated = match reply.await {
                Ok(Ok(generated)) => generated,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                Err(_) => {
                    let _ = tx
                        .send(Err(ChatError::Internal(
                            "the generation worker dropped the request".into(),
                        )))
                        .await;
                    return;
                }
            };
            // The generated text is the answer (cut at a stop sequence);
            // what was sent is a prefix of it.
            let (answer, mut tool_calls) = if tools {
                parse_tool_calls(&generated.text, true)
            } else {
                (generated.text, Vec::new())
            };
            if one_call {
                tool_calls.truncate(1);
            }
            let rest = answer.get(sent..).filter(|_| answer.starts_with(&text[..sent]));
            if let Some(rest) = rest.filter(|r| !r.is_empty())
                && tx.send(Ok(ChatEvent::Delta(rest.to_string()))).await.is_err()
            {
                return;
            }
            let finish_reason = if tool_calls.is_empty() {
                generated.finish_reason.to_string()
            } else {
                "tool_calls".into()
            };
            let _ = tx
                .send(Ok(ChatEvent::End(ChatEnd {
                    finish_reason,
                    tool_calls,
                    usage: TokenUsage {
                        prompt: generated.prompt_tokens as u64,
                        completion: generated.tokens.len() as u64,
                    },
                    refusal: None,
                })))
                .await;
        });
        Ok(rx)
    }
}

#[async_trait]
impl LocalModels for LocalEngine {
    async fn knows(&self, model: &str) -> Result<bool, ChatError> {
        self.catalog.knows(model).await.map_err(|e| match e {
            EngineError::Data(m) => ChatError::Internal(m),
            other => other.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_engine_cannot_do_is_refused() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let request = |extra: Value, strict: bool| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": []});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            ChatRequest {
                refuse_unsupported: strict,
                ..serde_json::from_value(body).unwrap()
            }
        };
        let refused = |extra: Value, strict: bool| match check_supported(&request(extra, strict)) {
            Ok(()) => String::new(),
            Err(ChatError::Invalid { field, .. }) => field,
            Err(other) => panic!("{other:?}"),
        };
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "f"}}),
        ] {
            for strict in [false, true] {
                assert_eq!(
                    refused(json!({"tools": tools, "tool_choice": choice}), strict),
                    "tool_choice"
                );
            }
        }
        for choice in ["auto", "none"] {
            assert_eq!(refused(json!({"tools": tools, "tool_choice": choice}), true), "");
        }
        // Only callers that rely on them are refused these; model graders
        // and evals sample without them.
        let json_schema = json!({"type": "json_schema", "json_schema": {"name": "g", "schema": {}}});
        for (extra, field) in [
            (json!({"response_format": json_schema}), "response_format"),
            (json!({"response_format": {"type": "json_object"}}), "response_format"),
            (json!({"reasoning_effort": "low"}), "reasoning_effort"),
            (
                json!({"tools": [{"type": "custom", "custom": {"name": "c"}}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                 {"type": "image_url", "image_url": {"url": "u"}}]}]}),
                "messages[0].content[1].type",
            ),
        ] {
            assert_eq!(refused(extra.clone(), true), field, "{extra}");
            assert_eq!(refused(extra.clone(), false), "", "{extra}");
        }
        assert_eq!(refused(json!({"response_format": {"type": "text"}}), true), "");
        assert!(!request(json!({"tools": tools, "tool_choice": "none"}), true).offers_tools());
        assert!(request(json!({"tools": tools}), true).offers_tools());
    }

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
