//! Model-backed graders (`score_model`, `label_model`).
//!
//! They reach models through the chat seam ([`ChatModel`]) and embeddings
//! through [`Embedder`], so the engine never knows about HTTP; the service
//! wires the router, tests wire a double. Calls are retried with exponential
//! backoff only when the model says the error is retryable (a full local
//! queue, after the delay it names; a stream cut short; a timeout).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::prompt::{ChatMessage, grader_request};
use super::result::GraderErrors;
use super::sample::Sample;
use super::spec::{LabelModelGrader, ScoreModelGrader};
use crate::inference::{ChatCompletion, ChatModel, ChatRequest};
pub use crate::inference::{EmbedError, Embedder, TokenUsage};

/// How model calls are bounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallPolicy {
    /// Per attempt.
    pub timeout: Duration,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            timeout: Duration::from_secs(120),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
        }
    }
}

/// Calls the model with retries; the error string is what `model_grader_server_error_details`
/// carries.
pub(crate) async fn chat_with_retries(
    client: &dyn ChatModel,
    policy: &CallPolicy,
    request: ChatRequest,
) -> Result<ChatCompletion, String> {
    let attempts = policy.max_attempts.max(1);
    let mut backoff = policy.initial_backoff;
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        let call = client.complete(request.clone());
        let (retryable, wait, message) = match tokio::time::timeout(policy.timeout, call).await {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(e)) => (e.is_retryable(), e.retry_after(), e.to_string()),
            Err(_) => (true, None, format!("model call timed out after {:?}", policy.timeout)),
        };
        last_error = format!("attempt {attempt}/{attempts}: {message}");
        if !retryable || attempt == attempts {
            break;
        }
        tracing::debug!(model = %request.model, attempt, error = %message, "retrying grader model call");
        // A full queue says when it expects room; otherwise back off.
        tokio::time::sleep(wait.unwrap_or(backoff).min(policy.max_backoff)).await;
        backoff = backoff.saturating_mul(2).min(policy.max_backoff);
    }
    Err(last_error)
}

/// What a model grader produced, before metadata is attached.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ModelGraded {
    pub reward: f64,
    pub errors: GraderErrors,
    pub token_usage: BTreeMap<String, u64>,
}

fn usage_map(model: &str, usage: TokenUsage) -> BTreeMap<String, u64> {
    BTreeMap::from([(model.to_string(), usage.prompt + usage.completion)])
}

/// The schema OpenAI asks grader models to answer in.
pub fn score_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {"type": "object", "properties": {
                "description": {"type": "string"}, "conclusion": {"type": "string"}},
                "required": ["description", "conclusion"], "additionalProperties": false}},
            "result": {"type": "number"}
        },
        "required": ["steps", "result"],
        "additionalProperties": false
    })
}

pub fn label_schema(labels: &[String]) -> Value {
    json!({
        "type": "object",
        "properties": {"result": {"type": "string", "enum": labels}},
        "required": ["result"],
        "additionalProperties": false
    })
}

pub(crate) async fn grade_score_model(
    g: &ScoreModelGrader,
    client: &dyn ChatModel,
    policy: &CallPolicy,
    messages: Vec<ChatMessage>,
) -> ModelGraded {
    let request = grader_request(&g.model, &messages, &g.sampling_params, score_schema());
    let out = match chat_with_retries(client, policy, request).await {
        Ok(out) => out,
        Err(details) => return server_error(details),
    };
    let token_usage = usage_map(&g.model, out.usage);
    let mut graded = ModelGraded {
        token_usage,
        ..Default::default()
    };
    if out.refusal.is_some() {
        graded.errors.model_grader_refusal_error = true;
        return graded;
    }
    match parse_score(&out.text) {
        // max/min rather than clamp: a hand-built grader with an inverted range must not panic.
        Some(score) => graded.reward = score.max(g.range.0).min(g.range.1),
        None => graded.errors.model_grader_parse_error = true,
    }
    graded
}

pub(crate) async fn grade_label_model(
    g: &LabelModelGrader,
    client: &dyn ChatModel,
    policy: &CallPolicy,
    messages: Vec<ChatMessage>,
) -> ModelGraded {
    let request = grader_request(&g.model, &messages, &g.sampling_params, label_schema(&g.labels));
    let out = match chat_with_retries(client, policy, request).await {
        Ok(out) => out,
        Err(details) => return server_error(details),
    };
    let mut graded = ModelGraded {
        token_usage: usage_map(&g.model, out.usage),
        ..Default::default()
    };
    if out.refusal.is_some() {
        graded.errors.model_grader_refusal_error = true;
        return graded;
    }
    match parse_label(&out.text, &g.labels) {
        Some(label) => graded.reward = if g.passing_labels.contains(&label) { 1.0 } else { 0.0 },
        None => graded.errors.model_grader_parse_error = true,
    }
    graded
}

fn server_error(details: String) -> ModelGraded {
    ModelGraded {
        errors: GraderErrors {
            model_grader_server_error: true,
            model_grader_server_error_details: details,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Strips a Markdown code fence, which models add despite structured-output requests.
fn strip_fence(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.split_once('\n').map_or("", |(_, body)| body);
    rest.trim_end().strip_suffix("```").unwrap_or(rest).trim()
}

/// `{"result": <number>, ...}`; a bare number is accepted too. NaN and infinities are
/// parse errors rather than clamped, since they carry no grade.
pub fn parse_score(text: &str) -> Option<f64> {
    let body = strip_fence(text);
    let value = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(map)) => match map.get("result")? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        },
        Ok(Value::Number(n)) => n.as_f64(),
        _ => body.parse::<f64>().ok(),
    }?;
    value.is_finite().then_some(value)
}

/// `{"result": "<label>"}` or the bare label; must be one of `labels`.
pub fn parse_label(text: &str, labels: &[String]) -> Option<String> {
    let body = strip_fence(text);
    let label = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(map)) => map.get("result").and_then(Value::as_str)?.to_string(),
        Ok(Value::String(s)) => s,
        _ => body.to_string(),
    };
    labels.iter().find(|l| **l == label.trim()).cloned()
}

/// Bounded least-recently-used cache of model-grader results, keyed by the sha256 of
/// (grader JSON, sample, item): grading the same answer twice during RFT sampling should
/// not pay for two model calls.
pub struct ResultCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<[u8; 32], (CachedResult, u64)>,
    by_age: BTreeMap<u64, [u8; 32]>,
    clock: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CachedResult {
    pub reward: f64,
    pub errors: GraderErrors,
}

impl ResultCache {
    pub fn new(capacity: usize) -> ResultCache {
        ResultCache {
            capacity: capacity.max(1),
            inner: Mutex::new(CacheInner::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|c| c.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn key(identity: &str, sample: &Sample, item: &Value) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [identity.to_string(), sample.to_json().to_string(), item.to_string()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<CachedResult> {
        let mut guard = self.inner.lock().ok()?;
        let inner = &mut *guard;
        inner.clock += 1;
        let now = inner.clock;
        let (result, age) = inner.map.get_mut(key)?;
        inner.by_age.remove(age);
        *age = now;
        inner.by_age.insert(now, *key);
        Some(result.clone())
    }

    pub(crate) fn put(&self, key: [u8; 32], result: CachedResult) {
        let Ok(mut guard) = self.inner.lock() else {
            return;
        };
        let inner = &mut *guard;
        inner.clock += 1;
        let now = inner.clock;
        if let Some((_, old_age)) = inner.map.insert(key, (result, now)) {
            inner.by_age.remove(&old_age);
        }
        inner.by_age.insert(now, key);
        while inner.map.len() > self.capacity {
            let Some((_, oldest)) = inner.by_age.pop_first() else {
                break;
            };
            inner.map.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_parsing_tolerates_fences_and_rejects_junk() {
        assert_eq!(parse_score("{\"result\": 0.7, \"steps\": []}"), Some(0.7));
        assert_eq!(parse_score("```json\n{\"result\": 3}\n```"), Some(3.0));
        assert_eq!(parse_score(" 0.25 "), Some(0.25));
        assert_eq!(parse_score("{\"result\": \"high\"}"), None);
        assert_eq!(parse_score("I think 0.5"), None);
        assert_eq!(parse_score("{\"steps\": []}"), None);
    }

    #[test]
    fn label_parsing() {
        let labels = vec!["positive".to_string(), "negative".to_string()];
        assert_eq!(
            parse_label("{\"result\": \"positive\"}", &labels).as_deref(),
            Some("positive")
        );
        assert_eq!(parse_label("negative", &labels).as_deref(), Some("negative"));
        assert_eq!(parse_label("neutral", &labels), None);
    }

    #[test]
    fn cache_evicts_least_recently_used() {
        let cache = ResultCache::new(2);
        let r = |x| CachedResult {
            reward: x,
            errors: GraderErrors::default(),
        };
        cache.put([1; 32], r(1.0));
        cache.put([2; 32], r(2.0));
        assert!(cache.get(&[1; 32]).is_some());
        cache.put([3; 32], r(3.0));
        assert!(cache.get(&[2; 32]).is_none());
        assert!(cache.get(&[1; 32]).is_some());
        assert!(cache.get(&[3; 32]).is_some());
        assert_eq!(cache.len(), 2);
    }
}
