//! `POST /v1/chat/completions`: OpenAI's chat completions over the one chat
//! seam, as one `chat.completion` or, with `stream: true`, server-sent
//! `chat.completion.chunk` frames ending in `data: [DONE]`.
//!
//! `n` choices are `n` completions through the seam, started together (the
//! local engine decodes them in one batch), each on its own random stream
//! (`ChatRequest::choice`). With `store: true` the answer is kept (with its
//! `metadata`) once every choice has ended and before the client hears the
//! end: the last chunk of a stream comes after the completion is stored
//! (`stored.rs` serves the stored ones). What OpenAI's body can ask that the
//! seam cannot express (log probabilities, audio, ...) is refused with a 400
//! naming the field, never dropped; what the model
//! behind a name cannot honour is refused by the seam
//! (`refuse_unsupported`). A client that goes away drops the seam's
//! streams, which stops their generation.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, future::try_join_all};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ErrorBody};
use super::kit::{Authed, Json, Rest};
use super::stored;
use super::wire::Usage;
use crate::auth::model::Caller;
use crate::completions::{Completions, NewCompletion, Recorder};
use crate::error::Error;
use crate::inference::chat::check_choices;
use crate::inference::{ChatCompletion, ChatEnd, ChatError, ChatEvent, ChatRequest, ChatStream, TokenUsage};

pub fn routes() -> OpenApiRouter<Rest> {
    OpenApiRouter::new()
        .routes(routes!(create_chat_completion, stored::list_chat_completions))
        .routes(routes!(
            stored::retrieve_chat_completion,
            stored::update_chat_completion,
            stored::delete_chat_completion
        ))
        .routes(routes!(stored::list_chat_completion_messages))
}

/// OpenAI's chat completion request. Every field the `openai` SDK sends is
/// taken; one Lathe cannot honour is refused with its name as `param`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChatCompletion {
    /// A base model, a fine-tuned model (`ft:...`), or `provider/model`.
    pub model: String,
    /// OpenAI chat messages.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// OpenAI `tools` (`function` tools; `custom` where the model's server takes them).
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// `auto`, `none`, `required` or one tool.
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"type": "text" | "json_object" | "json_schema", ...}`.
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// How many choices to answer, 1 to 128.
    pub n: Option<u32>,
    /// One stop sequence or several.
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub max_completion_tokens: Option<u32>,
    /// The older name of `max_completion_tokens`.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Not OpenAI's: sample from the k most likely tokens (vLLM's name).
    pub top_k: Option<u32>,
    pub reasoning_effort: Option<String>,
    /// Refused when true: no log probabilities.
    pub logprobs: Option<bool>,
    /// Refused: no log probabilities.
    pub top_logprobs: Option<u32>,
    /// Keep the request and its answer (listed at `GET /v1/chat/completions`).
    pub store: Option<bool>,
    /// Up to 16 pairs kept with a stored completion, to filter by.
    pub metadata: Option<BTreeMap<String, String>>,
    // Taken so the SDK's bodies fit and not read: answering without them
    // gives the same answer.
    #[allow(dead_code)]
    pub user: Option<String>,
    #[allow(dead_code)]
    pub safety_identifier: Option<String>,
    #[allow(dead_code)]
    pub prompt_cache_key: Option<String>,
    #[allow(dead_code)]
    pub prompt_cache_retention: Option<String>,
    #[schema(value_type = Option<Object>)]
    #[allow(dead_code)]
    pub prompt_cache_options: Option<Value>,
    /// One service tier for all.
    #[allow(dead_code)]
    pub service_tier: Option<String>,
    /// Predicted outputs speed answers up, never change them.
    #[schema(value_type = Option<Object>)]
    #[allow(dead_code)]
    pub prediction: Option<Value>,
    /// -2 to 2: lowers a token's logit by this for every time the answer
    /// already holds it.
    pub frequency_penalty: Option<f64>,
    /// -2 to 2: lowers a token's logit by this once the answer holds it.
    pub presence_penalty: Option<f64>,
    /// Token id (as a string) to a bias, -100 to 100, added to its logit.
    pub logit_bias: Option<HashMap<String, f64>>,
    /// Only `["text"]`.
    pub modalities: Option<Vec<String>>,
    /// Refused: no audio output.
    #[schema(value_type = Option<Object>)]
    pub audio: Option<Value>,
    /// Refused.
    pub verbosity: Option<String>,
    /// Refused: no web search.
    #[schema(value_type = Option<Object>)]
    pub web_search_options: Option<Value>,
    /// Refused.
    #[schema(value_type = Option<Object>)]
    pub moderation: Option<Value>,
    /// Refused: use `tools`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub functions: Option<Value>,
    /// Refused: use `tool_choice`.
    #[schema(value_type = Option<Object>)]
    pub function_call: Option<Value>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// A last chunk with the usage of the whole request (and `choices: []`).
    pub include_usage: Option<bool>,
    /// Chunks are not padded (taken, not read).
    #[allow(dead_code)]
    pub include_obfuscation: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// OpenAI's `chat.completion`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionObject {
    /// `chatcmpl-...`
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: Message,
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    pub finish_reason: String,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    /// Always `assistant`.
    pub role: &'static str,
    /// Null when the answer is only tool calls or a refusal.
    pub content: Option<String>,
    /// `{id, type: "function", function: {name, arguments}}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Vec<Value>,
    pub refusal: Option<String>,
}

/// Creates a chat completion: one JSON object, or with `stream: true` a
/// `text/event-stream` of `chat.completion.chunk` objects ending in `data: [DONE]`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat",
    request_body = CreateChatCompletion,
    responses(
        (status = 200, body = ChatCompletionObject,
         description = "The completion; with `stream: true`, server-sent `chat.completion.chunk` frames instead"),
        (status = 400, body = ErrorBody, description = "A field that is wrong or that Lathe cannot honour, named as `param`"),
        (status = 404, body = ErrorBody, description = "No model by that name that the caller can see"),
        (status = 429, body = ErrorBody, description = "The local engine's queue is full; see `retry-after`")))]
async fn create_chat_completion(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(body): Json<CreateChatCompletion>,
) -> Result<Response, ApiError> {
    let (request, n) = chat_request(&body)?;
    let metadata = body.metadata.clone().unwrap_or_default();
    crate::completions::check_metadata("metadata", &metadata)?;
    // Another project's fine-tuned model is not found, as if it did not exist.
    rest.models.check_visible(&caller, &request.model).await?;
    let requests = (0..n).map(|i| request.choice(i));
    let created_ms = crate::ids::now_millis();
    let head = Head {
        id: crate::ids::new_id("chatcmpl").replacen('_', "-", 1),
        created: super::wire::seconds(created_ms),
        model: request.model.clone(),
    };
    let keep = (body.store == Some(true)).then(|| Keep {
        completions: rest.completions.clone(),
        caller: caller.clone(),
        request: request.clone(),
        created_ms,
        metadata,
    });
    if body.stream == Some(true) {
        // Dropping what started when one choice cannot start stops it.
        let streams = try_join_all(requests.map(|r| rest.chat.stream(r)))
            .await
            .map_err(|e| seam_error(e, &body))?;
        let include_usage = body
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let chunks = Chunks::new(head, streams, include_usage, param_names(&body), keep);
        let events = futures::stream::unfold(chunks, |mut c| async move {
            c.next().await.map(|event| (Ok::<_, Infallible>(event), c))
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let completions = try_join_all(requests.map(|r| rest.chat.complete(r)))
        .await
        .map_err(|e| seam_error(e, &body))?;
    if let Some(keep) = keep {
        keep.record(&head.id, &completions).await?;
    }
    Ok(Json(completion(head, completions)).into_response())
}

/// The seam's request for an OpenAI body, and how many choices it asks
/// for; a field the seam cannot express is refused here.
fn chat_request(body: &CreateChatCompletion) -> Result<(ChatRequest, u32), ApiError> {
    let refuse = |param: &str, why: &str| Err(ApiError::invalid(param, why));
    if body.logprobs == Some(true) {
        return refuse("logprobs", "Lathe does not return log probabilities");
    }
    if body.top_logprobs.is_some_and(|n| n > 0) {
        return refuse("top_logprobs", "Lathe does not return log probabilities");
    }
    if body.modalities.as_ref().is_some_and(|m| m.iter().any(|m| m != "text")) {
        return refuse("modalities", "Lathe answers text only");
    }
    let unsupported = [
        ("audio", body.audio.is_some(), "Lathe answers text only"),
        ("verbosity", body.verbosity.is_some(), "not supported; leave it out"),
        (
            "web_search_options",
            body.web_search_options.is_some(),
            "Lathe has no web search",
        ),
        (
            "moderation",
            body.moderation.is_some(),
            "Lathe does not moderate; leave it out",
        ),
        ("functions", body.functions.is_some(), "deprecated; use tools"),
        (
            "function_call",
            body.function_call.is_some(),
            "deprecated; use tool_choice",
        ),
    ];
    if let Some((param, _, why)) = unsupported.into_iter().find(|(_, given, _)| *given) {
        return refuse(param, why);
    }
    if body.stream_options.is_some() && body.stream != Some(true) {
        return refuse("stream_options", "is only allowed with stream: true");
    }
    let max_tokens = match (body.max_completion_tokens, body.max_tokens) {
        (Some(a), Some(b)) if a != b => {
            return refuse("max_tokens", "give max_completion_tokens or max_tokens, not both");
        }
        (a, b) => a.or(b),
    };
    let n = body.n.unwrap_or(1);
    check_choices(n).map_err(|e| seam_error(e, body))?;
    let request = ChatRequest {
        model: body.model.clone(),
        messages: body.messages.clone(),
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body.top_k,
        max_tokens,
        // OpenAI's seeds are signed; the seam's are the same 64 bits.
        seed: body.seed.map(|s| s as u64),
        stop: match &body.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        },
        presence_penalty: body.presence_penalty,
        frequency_penalty: body.frequency_penalty,
        logit_bias: body
            .logit_bias
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|b| b.iter().map(|(k, v)| (k.clone(), *v)).collect()),
        tools: body.tools.clone(),
        tool_choice: body.tool_choice.clone(),
        parallel_tool_calls: body.parallel_tool_calls,
        response_format: body.response_format.clone(),
        reasoning_effort: body.reasoning_effort.clone(),
        refuse_unsupported: true,
        choice: 0,
    };
    Ok((request, n))
}

/// Which OpenAI name the client used for the token limit.
#[derive(Clone, Copy)]
struct ParamNames {
    legacy_max_tokens: bool,
}

fn param_names(body: &CreateChatCompletion) -> ParamNames {
    ParamNames {
        legacy_max_tokens: body.max_completion_tokens.is_none() && body.max_tokens.is_some(),
    }
}

/// The one place the seam's field paths (the gRPC `ChatRequest`'s, such
/// as `sampling.temperature`) become the OpenAI body's (`temperature`).
fn openai_param(field: &str, names: ParamNames) -> String {
    match field.strip_prefix("sampling.") {
        Some("max_tokens") if names.legacy_max_tokens => "max_tokens".into(),
        Some("max_tokens") => "max_completion_tokens".into(),
        Some(rest) => rest.into(),
        None => field.into(),
    }
}

/// A seam error as OpenAI's error object, its field named as the body names it.
fn seam_error(e: ChatError, body: &CreateChatCompletion) -> ApiError {
    error_with(e, param_names(body))
}

fn error_with(e: ChatError, names: ParamNames) -> ApiError {
    let e = match e {
        ChatError::Invalid { field, message } => ChatError::Invalid {
            field: openai_param(&field, names),
            message,
        },
        other => other,
    };
    Error::from(e).into()
}

/// What `store: true` keeps, once the answer is complete.
struct Keep {
    completions: std::sync::Arc<Completions>,
    caller: Caller,
    request: ChatRequest,
    created_ms: i64,
    metadata: BTreeMap<String, String>,
}

impl Keep {
    async fn record(self, id: &str, answers: &[ChatCompletion]) -> Result<(), Error> {
        self.completions
            .record(
                &self.caller,
                NewCompletion {
                    id,
                    created_at: self.created_ms,
                    request: &self.request,
                    answers,
                    metadata: self.metadata,
                },
            )
            .await
            .map(|_| ())
    }
}

/// What every object of one answer repeats.
struct Head {
    id: String,
    created: i64,
    model: String,
}

/// Tokens of `n` answers to one prompt: the prompt counted once.
fn usage<'a>(all: impl Iterator<Item = &'a TokenUsage>) -> Usage {
    let u = TokenUsage::of_choices(all);
    Usage {
        prompt_tokens: u.prompt,
        completion_tokens: u.completion,
        total_tokens: u.prompt + u.completion,
    }
}

fn completion(head: Head, completions: Vec<ChatCompletion>) -> ChatCompletionObject {
    let usage = usage(completions.iter().map(|c| &c.usage));
    let choices = completions
        .into_iter()
        .zip(0..)
        .map(|(c, index)| Choice {
            index,
            message: Message {
                role: "assistant",
                content: c.content(),
                tool_calls: c.tool_calls,
                refusal: c.refusal,
            },
            finish_reason: c.finish_reason,
            logprobs: None,
        })
        .collect();
    ChatCompletionObject {
        id: head.id,
        object: "chat.completion",
        created: head.created,
        model: head.model,
        choices,
        usage,
    }
}

/// OpenAI's `chat.completion.chunk`.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<ChunkChoice>,
    /// Present (null but in the last chunk) only when the client asked for usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Value,
    finish_reason: Option<String>,
    logprobs: Option<Value>,
}

/// The frames of a streamed answer: a role chunk per choice, then each
/// choice's text as it comes, its tool calls, refusal and finish reason at
/// its end, the usage when asked for, and `[DONE]`; or an error frame in
/// OpenAI's shape when a completion fails on the way.
struct Chunks {
    head: Head,
    include_usage: bool,
    names: ParamNames,
    events: SelectAll<BoxStream<'static, (u32, Result<ChatEvent, ChatError>)>>,
    ends: Vec<Option<ChatEnd>>,
    /// With `store: true`: what to keep and the text so far.
    keep: Option<(Keep, Recorder)>,
    ready: VecDeque<Event>,
    over: bool,
}

impl Chunks {
    fn new(head: Head, streams: Vec<ChatStream>, include_usage: bool, names: ParamNames, keep: Option<Keep>) -> Self {
        let mut events = SelectAll::new();
        for (stream, index) in streams.into_iter().zip(0u32..) {
            events.push(ReceiverStream::new(stream).map(move |e| (index, e)).boxed());
        }
        let choices = events.len();
        let mut chunks = Chunks {
            ends: vec![None; choices],
            keep: keep.map(|k| (k, Recorder::new(choices))),
            head,
            include_usage,
            names,
            events,
            ready: VecDeque::new(),
            over: false,
        };
        for index in 0..chunks.ends.len() as u32 {
            chunks.push(index, json!({"role": "assistant", "content": ""}), None);
        }
        chunks
    }

    fn frame(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Event {
        let chunk = Chunk {
            id: &self.head.id,
            object: "chat.completion.chunk",
            created: self.head.created,
            model: &self.head.model,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        Event::default().data(serde_json::to_string(&chunk).unwrap_or_default())
    }

    fn push(&mut self, index: u32, delta: Value, finish_reason: Option<String>) {
        let choice = ChunkChoice {
            index,
            delta,
            finish_reason,
            logprobs: None,
        };
        let event = self.frame(vec![choice], None);
        self.ready.push_back(event);
    }

    /// OpenAI's error frame (`data: {"error": {...}}`, which the SDK raises
    /// as an `APIError`); the stream ends after it, and the completions
    /// still running are dropped, which stops them.
    fn fail(&mut self, error: ChatError) {
        let body = ErrorBody {
            error: error_with(error, self.names).body,
        };
        self.ready
            .push_back(Event::default().data(serde_json::to_string(&body).unwrap_or_default()));
        self.events = SelectAll::new();
        self.over = true;
    }

    /// An error frame for what went wrong after the answer (storing it).
    fn fail_with(&mut self, error: ApiError) {
        let body = ErrorBody { error: error.body };
        self.ready
            .push_back(Event::default().data(serde_json::to_string(&body).unwrap_or_default()));
        self.over = true;
    }

    fn end(&mut self, index: u32, end: ChatEnd) {
        if !end.tool_calls.is_empty() {
            let calls: Vec<Value> = end
                .tool_calls
                .iter()
                .zip(0..)
                .map(|(call, i)| {
                    json!({"index": i, "id": call["id"], "type": call["type"], "function": call["function"]})
                })
                .collect();
            self.push(index, json!({"tool_calls": calls}), None);
        }
        if let Some(refusal) = &end.refusal {
            self.push(index, json!({"refusal": refusal}), None);
        }
        self.push(index, json!({}), Some(end.finish_reason.clone()));
        if let Some(slot) = self.ends.get_mut(index as usize) {
            *slot = Some(end);
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.over {
                return None;
            }
            match self.events.next().await {
                Some((index, Ok(ChatEvent::Delta(text)))) => {
                    if let Some((_, recorder)) = &mut self.keep {
                        recorder.push(index as usize, &text);
                    }
                    self.push(index, json!({"content": text}), None)
                }
                Some((index, Ok(ChatEvent::End(end)))) => self.end(index, end),
                Some((_, Err(error))) => self.fail(error),
                None if self.ends.iter().any(Option::is_none) => {
                    self.fail(ChatError::Internal("a completion stream ended without its end".into()));
                }
                None => {
                    if let Some((keep, recorder)) = self.keep.take() {
                        let answers = recorder.finish(self.ends.iter().flatten());
                        if let Err(e) = keep.record(&self.head.id, &answers).await {
                            self.fail_with(ApiError::from(e));
                            continue;
                        }
                    }
                    if self.include_usage {
                        let usage = usage(self.ends.iter().flatten().map(|e| &e.usage));
                        let event = self.frame(Vec::new(), Some(usage));
                        self.ready.push_back(event);
                    }
                    self.ready.push_back(Event::default().data("[DONE]"));
                    self.over = true;
                }
            }
        }
    }
}
