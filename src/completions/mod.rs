//! Stored chat completions: a chat request made with `store: true` (and its
//! metadata) is kept with its answer, listed and filtered by model and
//! metadata, updated, deleted, and made into datasets (`synth`). Both doors'
//! chat calls record through [`Completions::record`], after the answer is
//! complete and before the caller hears that it is: a completion the
//! client saw end is one it can list.
//!
//! Architecture invariant: this module knows neither tonic nor HTTP; what a
//! caller may see and the limits on metadata are decided here, once.

#![forbid(unsafe_code)]

pub mod model;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::auth::model::Caller;
use crate::error::{Error, Result};
use crate::evals::manager::Page;
use crate::evals::model::Order;
use tokio::sync::mpsc;

use crate::inference::{ChatCompletion, ChatEvent, ChatRequest, ChatStream, TokenUsage};
use crate::paging;
use crate::store::{Cursor, Store};

use self::model::StoredCompletion;
use crate::store::CompletionQuery;

const LIST_TOKEN: [&str; 2] = ["scpa1.", "scp1."];

/// Checks metadata against OpenAI's limits (`limits::check_metadata`).
pub fn check_metadata(field: &str, metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut problems = Vec::new();
    crate::limits::check_metadata(field, metadata, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(problems))
    }
}

/// Whether `id` has the shape of a chat completion's id (`chatcmpl-` and
/// 26 characters).
fn check_id(field: &str, id: &str) -> Result<()> {
    let ok = id
        .strip_prefix("chatcmpl-")
        .is_some_and(|rest| rest.len() == 26 && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{id:?} is not a chat completion id (chatcmpl- followed by 26 characters)"),
        ))
    }
}

/// What a listing asks for besides its page.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub model: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A completion to keep: its id and time as answered, the request and
/// its choices' answers in order.
pub struct NewCompletion<'a> {
    pub id: &'a str,
    /// Unix milliseconds.
    pub created_at: i64,
    pub request: &'a ChatRequest,
    pub answers: &'a [ChatCompletion],
    pub metadata: BTreeMap<String, String>,
}

/// A completion to keep once its stream ends.
pub struct Pending {
    pub id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub request: ChatRequest,
    pub metadata: BTreeMap<String, String>,
}

/// Collects streamed choices into completions, for a door that streams an
/// answer and stores it once every choice has ended.
#[derive(Debug, Default)]
pub struct Recorder {
    texts: Vec<String>,
}

impl Recorder {
    pub fn new(choices: usize) -> Self {
        Recorder {
            texts: vec![String::new(); choices],
        }
    }

    /// Adds a text delta of choice `index`; ends are taken from the
    /// door's own record of them (see [`Recorder::finish`]).
    pub fn push(&mut self, index: usize, text: &str) {
        if let Some(slot) = self.texts.get_mut(index) {
            slot.push_str(text);
        }
    }

    /// The completions, given each choice's end in order.
    pub fn finish<'a>(self, ends: impl IntoIterator<Item = &'a crate::inference::ChatEnd>) -> Vec<ChatCompletion> {
        self.texts
            .into_iter()
            .zip(ends)
            .map(|(text, end)| ChatCompletion {
                text,
                tool_calls: end.tool_calls.clone(),
                usage: end.usage,
                finish_reason: end.finish_reason.clone(),
                refusal: end.refusal.clone(),
            })
            .collect()
    }
}

/// The stored completions service.
#[derive(Clone)]
pub struct Completions {
    store: Arc<dyn Store>,
}

impl Completions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Completions { store }
    }

    /// Keeps a completion the caller asked to store.
    pub async fn record(&self, caller: &Caller, new: NewCompletion<'_>) -> Result<StoredCompletion> {
        check_metadata("metadata", &new.metadata)?;
        // The prompt is counted once for all choices, as the answer does.
        let usage = TokenUsage::of_choices(new.answers.iter().map(|a| &a.usage));
        let completion = StoredCompletion {
            id: new.id.to_string(),
            project: caller.project.clone(),
            model: new.request.model.clone(),
            created_at: new.created_at,
            metadata: new.metadata,
            request: request_json(new.request, new.answers.len()),
            choices: new.answers.iter().zip(0..).map(|(a, i)| choice_json(a, i)).collect(),
            prompt_tokens: usage.prompt,
            completion_tokens: usage.completion,
        };
        self.store.insert_completion(&completion).await?;
        Ok(completion)
    }

    /// A completion stream passed on as it comes, whose answer is stored
    /// when it ends and before its end is passed on; a failure to store
    /// ends it with that error instead. Dropping the returned receiver
    /// drops `inner`, which stops the completion.
    pub fn keep_stream(
        &self,
        caller: Caller,
        mut pending: Pending,
        mut inner: ChatStream,
    ) -> mpsc::Receiver<Result<ChatEvent>> {
        let (tx, rx) = mpsc::channel(crate::inference::chat::STREAM_CAPACITY);
        let this = self.clone();
        tokio::spawn(async move {
            let mut recorder = Recorder::new(1);
            while let Some(item) = inner.recv().await {
                let item = match item {
                    Ok(ChatEvent::End(end)) => {
                        let answers = std::mem::take(&mut recorder).finish([&end]);
                        let new = NewCompletion {
                            id: &pending.id,
                            created_at: pending.created_at,
                            request: &pending.request,
                            answers: &answers,
                            metadata: std::mem::take(&mut pending.metadata),
                        };
                        this.record(&caller, new).await.map(|_| ChatEvent::End(end))
                    }
                    Ok(ChatEvent::Delta(text)) => {
                        recorder.push(0, &text);
                        Ok(ChatEvent::Delta(text))
                    }
                    Err(e) => Err(Error::from(e)),
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    pub async fn get(&self, caller: &Caller, id: &str) -> Result<StoredCompletion> {
        check_id("id", id)?;
        self.store
            .get_completion(id)
            .await?
            .filter(|c| caller.sees(&c.project))
            .ok_or_else(|| Error::not_found("chat completion", id))
    }

    /// The caller's project's stored completions that match `filter`, a
    /// page at a time: oldest first unless the page asks otherwise (as
    /// OpenAI lists them).
    pub async fn list(&self, caller: &Caller, filter: &Filter, page: &Page) -> Result<(Vec<StoredCompletion>, String)> {
        check_metadata("metadata", &filter.metadata)?;
        crate::evals::manager::one_start(page)?;
        let limit = paging::limit(page.size)?;
        let order = page.order.unwrap_or(Order::Ascending);
        let prefix = LIST_TOKEN[usize::from(order == Order::Descending)];
        let after = match &page.after_id {
            Some(id) => match self.get(caller, id).await {
                Ok(c) => Some(Cursor {
                    created_at: c.created_at,
                    id: c.id,
                }),
                Err(Error::NotFound { .. } | Error::InvalidArgument(_)) => {
                    return Err(Error::invalid(
                        "after",
                        format!("{id:?} is not a stored chat completion"),
                    ));
                }
                Err(e) => return Err(e),
            },
            None => paging::decode_cursor(prefix, &page.token, "ListStoredCompletions")?,
        };
        let rows = self
            .store
            .list_completions(&CompletionQuery {
                project: caller.project.clone(),
                model: filter.model.clone().filter(|m| !m.is_empty()),
                metadata: filter.metadata.clone().into_iter().collect(),
                order,
                after,
                limit: limit + 1,
            })
            .await?;
        Ok(paging::split(rows, limit, |c| {
            paging::encode_cursor(prefix, c.created_at, &c.id)
        }))
    }

    /// Replaces a completion's metadata (OpenAI's update takes the whole
    /// map; an empty one clears it).
    pub async fn update_metadata(
        &self,
        caller: &Caller,
        id: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<StoredCompletion> {
        check_metadata("metadata", &metadata)?;
        self.get(caller, id).await?;
        self.store
            .set_completion_metadata(id, &metadata)
            .await?
            .ok_or_else(|| Error::not_found("chat completion", id))
    }

    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<()> {
        self.get(caller, id).await?;
        if self.store.delete_completion(id).await? {
            Ok(())
        } else {
            Err(Error::not_found("chat completion", id))
        }
    }

    /// A stored completion's request messages, each with an id
    /// (`<completion id>-<index>`), after the message `after` in `order`
    /// (oldest first by default), at most `limit` (0 means 20); and whether
    /// more follow.
    pub async fn messages(
        &self,
        caller: &Caller,
        id: &str,
        after: Option<&str>,
        limit: i32,
        order: Option<Order>,
    ) -> Result<(Vec<Value>, bool)> {
        let completion = self.get(caller, id).await?;
        let limit = paging::limit(limit)?;
        let mut messages: Vec<Value> = completion
            .messages()
            .iter()
            .enumerate()
            .map(|(i, m)| store_message(&completion.id, i, m))
            .collect();
        if order == Some(Order::Descending) {
            messages.reverse();
        }
        let start = match after {
            None => 0,
            Some(after) => {
                messages
                    .iter()
                    .position(|m| m["id"] == after)
                    .ok_or_else(|| Error::invalid("after", format!("{after:?} is not a message of {id}")))?
                    + 1
            }
        };
        let rest: Vec<Value> = messages.into_iter().skip(start).collect();
        Ok(paging::cut(rest, limit))
    }
}

/// The request as OpenAI's body names its fields, without what was not given.
fn request_json(request: &ChatRequest, n: usize) -> Value {
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(request.messages.clone()));
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value.filter(|v| !v.is_null()) {
            body.insert(key.into(), value);
        }
    };
    put("tools", request.tools.clone());
    put("tool_choice", request.tool_choice.clone());
    put("parallel_tool_calls", request.parallel_tool_calls.map(Value::from));
    put("response_format", request.response_format.clone());
    put("temperature", request.temperature.map(Value::from));
    put("top_p", request.top_p.map(Value::from));
    put("top_k", request.top_k.map(Value::from));
    put("max_completion_tokens", request.max_tokens.map(Value::from));
    put("seed", request.seed.map(|s| Value::from(s as i64)));
    put("stop", (!request.stop.is_empty()).then(|| json!(request.stop)));
    put("presence_penalty", request.presence_penalty.map(Value::from));
    put("frequency_penalty", request.frequency_penalty.map(Value::from));
    put("logit_bias", request.logit_bias.as_ref().map(|b| json!(b)));
    put("reasoning_effort", request.reasoning_effort.clone().map(Value::from));
    put("n", (n > 1).then(|| Value::from(n)));
    Value::Object(body)
}

/// One answer as OpenAI's choice.
fn choice_json(answer: &ChatCompletion, index: u32) -> Value {
    let mut message = json!({"role": "assistant", "content": answer.content(), "refusal": answer.refusal});
    if !answer.tool_calls.is_empty() {
        message["tool_calls"] = json!(answer.tool_calls);
    }
    json!({"index": index, "message": message, "finish_reason": answer.finish_reason, "logprobs": null})
}

/// A request message as OpenAI lists a stored completion's messages: with
/// an id, its text as `content` and, when it was given in parts, the parts
/// as `content_parts`.
fn store_message(completion_id: &str, index: usize, message: &Value) -> Value {
    let mut out = message.as_object().cloned().unwrap_or_default();
    out.insert("id".into(), Value::from(format!("{completion_id}-{index}")));
    if let Some(parts) = message["content"].as_array() {
        let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        out.insert("content".into(), Value::from(text.join("")));
        out.insert("content_parts".into(), Value::Array(parts.clone()));
    } else {
        out.entry("content_parts").or_insert(Value::Null);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::{ChatEnd, TokenUsage};

    #[test]
    fn ids_are_checked_before_any_lookup() {
        check_id("completion_id", "chatcmpl-01JABCDEFGHJKMNPQRSTVWXYZ0").unwrap();
        for bad in [
            "",
            "chatcmpl-",
            "chatcmpl_01JABCDEFGHJKMNPQRSTVWXYZ0",
            "chatcmpl-../../etc/passwd00000000",
        ] {
            assert!(check_id("completion_id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recorder_joins_each_choices_deltas_with_its_end() {
        let mut r = Recorder::new(2);
        r.push(1, "wor");
        r.push(0, "hel");
        r.push(1, "ld");
        r.push(0, "lo");
        let end = |n| ChatEnd {
            finish_reason: "stop".into(),
            usage: TokenUsage {
                prompt: 5,
                completion: n,
            },
            ..Default::default()
        };
        let ends = [end(2), end(3)];
        let done = r.finish(ends.iter());
        assert_eq!(done[0].text, "hello");
        assert_eq!(done[1].text, "world");
        assert_eq!(done[1].usage.completion, 3);
    }

    #[test]
    fn stored_messages_carry_ids_and_text_of_parts() {
        let m = store_message(
            "chatcmpl-x",
            2,
            &json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
        );
        assert_eq!(m["id"], "chatcmpl-x-2");
        assert_eq!(m["content"], "ab");
        assert_eq!(m["content_parts"].as_array().unwrap().len(), 2);
        let plain = store_message("chatcmpl-x", 0, &json!({"role": "system", "content": "s"}));
        assert_eq!(plain["content"], "s");
        assert!(plain["content_parts"].is_null());
    }

    #[test]
    fn requests_are_kept_as_openai_names_them() {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![json!({"role": "user", "content": "hi"})],
            temperature: Some(0.5),
            max_tokens: Some(7),
            stop: vec!["\n".into()],
            ..Default::default()
        };
        let body = request_json(&request, 3);
        assert_eq!(
            body,
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5,
                   "max_completion_tokens": 7, "stop": ["\n"], "n": 3})
        );
    }
}
