//! One item's work: render the input, sample the model (or take the
//! precomputed sample), grade it on every criterion.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::model::{Criterion, DataSource, ItemDetail, ItemStatus, Outcome, SampleUsage};
use crate::graders::service::Batch;
use crate::graders::{GraderErrors, Sample, Template};
use crate::inference::{ChatCompletion, ChatError, ChatModel, ChatRequest};

/// A dataset row as item and (optional) sample: OpenAI's `{"item": {...},
/// "sample": ...}` rows, or a bare item object.
pub fn split_row(row: Value) -> (Value, Option<Value>) {
    if let Value::Object(map) = &row
        && map.get("item").is_some_and(Value::is_object)
        && map.keys().all(|k| k == "item" || k == "sample")
    {
        let mut map = map.clone();
        let item = map.remove("item").unwrap_or_default();
        return (item, map.remove("sample"));
    }
    (row, None)
}

/// Renders the `{{ item.* }}` in each message's string content (and text parts).
pub fn render_messages(messages: &[Value], item: &Value) -> Result<Vec<Value>, String> {
    let sample = Sample::default();
    let render = |raw: &str| -> Result<String, String> {
        let t = Template::parse(raw)?;
        t.render(&sample, item).map_err(|e| e.to_string())
    };
    messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            match m.get_mut("content") {
                Some(Value::String(s)) => *s = render(s)?,
                Some(Value::Array(parts)) => {
                    for part in parts {
                        if let Some(Value::String(s)) = part.get_mut("text") {
                            *s = render(s)?;
                        }
                    }
                }
                _ => {}
            }
            Ok(m)
        })
        .collect()
}

/// One item's input: the rendered templates, or the messages at
/// `item_reference` without a final assistant message (in a fine-tuning
/// row that is the answer) and without training-only keys (`weight`).
pub fn input_messages(templates: &[Value], item_reference: Option<&str>, item: &Value) -> Result<Vec<Value>, String> {
    let Some(path) = item_reference else {
        return render_messages(templates, item);
    };
    let Value::Array(list) = crate::graders::template::lookup(path, item)? else {
        return Err(format!("{path} is not a list of messages"));
    };
    let mut list = list.clone();
    if list.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("assistant") {
        list.pop();
    }
    if list.is_empty() {
        return Err(format!("{path} has no message before the answer"));
    }
    for m in &mut list {
        let Value::Object(map) = m else {
            return Err(format!("{path} holds something that is not a message"));
        };
        if !map.get("role").is_some_and(Value::is_string) {
            return Err(format!("{path} holds a message without a role"));
        }
        map.remove("weight");
    }
    Ok(list)
}

/// The sample of a precomputed row.
pub fn precomputed_sample(template: &str, item: &Value, row_sample: Option<&Value>) -> Result<Sample, String> {
    if !template.is_empty() {
        let t = Template::parse(template)?;
        let text = t.render(&Sample::default(), item).map_err(|e| e.to_string())?;
        return Ok(Sample::from_model_output(text));
    }
    match row_sample {
        Some(Value::String(s)) => Ok(Sample::from_model_output(s.clone())),
        Some(v @ Value::Object(_)) => {
            let mut sample: Sample =
                serde_json::from_value(v.clone()).map_err(|e| format!("the row's sample is not a sample: {e}"))?;
            if sample.output_json.is_none() {
                sample.output_json = serde_json::from_str(sample.output_text.trim()).ok();
            }
            Ok(sample)
        }
        _ => Err("the row has no sample (give a sample template, or rows of {\"item\", \"sample\"})".into()),
    }
}

/// What a run needs to work on its items.
pub struct RunWork {
    pub source: DataSource,
    pub model: Arc<dyn ChatModel>,
    pub criteria: Vec<(Criterion, Batch)>,
}

/// A finished item, before it is recorded.
pub struct Finished {
    pub index: u64,
    pub status: ItemStatus,
    pub detail: ItemDetail,
    /// Tokens per model: the sampled model's (prompt, completion), and grader models' totals.
    pub usage: BTreeMap<String, (u64, u64, u64)>,
}

fn describe(e: &GraderErrors) -> String {
    let details = [
        &e.other_error_details,
        &e.model_grader_server_error_details,
        &e.python_grader_runtime_error_details,
        &e.python_grader_server_error_type,
    ]
    .into_iter()
    .find(|d| !d.is_empty())
    .cloned()
    .unwrap_or_default();
    let kinds = e.kinds().join(", ");
    if details.is_empty() {
        kinds
    } else {
        format!("{kinds}: {details}")
    }
}

impl RunWork {
    /// One completion. A full local queue is backpressure, not a failure:
    /// the item waits the delay it is told and asks again.
    async fn sample(&self, request: ChatRequest) -> Result<ChatCompletion, ChatError> {
        loop {
            match self.model.complete(request.clone()).await {
                Err(ChatError::Overloaded { retry_after, .. }) => tokio::time::sleep(retry_after).await,
                other => return other,
            }
        }
    }

    pub async fn process(&self, index: u64, line: Vec<u8>) -> Finished {
        let mut detail = ItemDetail::default();
        let mut usage = BTreeMap::new();
        let errored = |mut detail: ItemDetail, usage, message: String| {
            detail.error = Some(message);
            Finished {
                index,
                status: ItemStatus::Error,
                detail,
                usage,
            }
        };
        let row: Value = match serde_json::from_slice(&line) {
            Ok(row) => row,
            Err(e) => return errored(detail, usage, format!("the row is not JSON: {e}")),
        };
        let (item, row_sample) = split_row(row);
        detail.item = item.clone();
        let sample = match &self.source {
            DataSource::Model {
                model,
                input_messages: templates,
                item_reference,
                sampling,
                tools,
                response_format,
            } => {
                let input = match input_messages(templates, item_reference.as_deref(), &item) {
                    Ok(input) => input,
                    Err(e) => return errored(detail, usage, e),
                };
                detail.input = input.clone();
                let request = ChatRequest {
                    model: model.clone(),
                    messages: input,
                    temperature: sampling.temperature,
                    top_p: sampling.top_p,
                    max_tokens: sampling.max_tokens,
                    seed: sampling.seed,
                    stop: sampling.stop.clone(),
                    tools: tools.clone(),
                    response_format: response_format.clone(),
                    ..Default::default()
                };
                match self.sample(request).await {
                    Ok(c) => {
                        let u = &c.usage;
                        usage.insert(model.clone(), (u.prompt, u.completion, u.prompt + u.completion));
                        detail.usage = Some(SampleUsage {
                            model: model.clone(),
                            prompt_tokens: u.prompt,
                            completion_tokens: u.completion,
                        });
                        detail.sample = c.text.clone();
                        detail.tool_calls = c.tool_calls.clone();
                        detail.finish_reason = c.finish_reason.clone();
                        let mut sample = Sample::from_model_output(c.text);
                        sample.output_tools = c.tool_calls;
                        sample
                    }
                    Err(e) => return errored(detail, usage, format!("sampling failed: {e}")),
                }
            }
            DataSource::Precomputed { sample_template } => {
                match precomputed_sample(sample_template, &item, row_sample.as_ref()) {
                    Ok(sample) => {
                        detail.sample = sample.output_text.clone();
                        sample
                    }
                    Err(e) => return errored(detail, usage, e),
                }
            }
        };
        let mut all_passed = true;
        let mut first_error = None;
        for (criterion, batch) in &self.criteria {
            let r = batch.grade_one(&sample, &item).await;
            for (model, tokens) in &r.metadata.token_usage {
                let entry = usage.entry(model.clone()).or_insert((0, 0, 0));
                entry.2 += tokens;
            }
            let error = r.metadata.errors().any().then(|| describe(r.metadata.errors()));
            let passed = error.is_none() && r.reward >= criterion.pass_threshold;
            all_passed &= passed;
            if let Some(e) = &error {
                first_error.get_or_insert_with(|| format!("{}: {e}", criterion.name));
            }
            detail.results.push(Outcome {
                name: criterion.name.clone(),
                kind: r.metadata.kind.to_string(),
                score: r.reward,
                passed,
                error,
            });
        }
        let status = if first_error.is_some() {
            ItemStatus::Error
        } else if all_passed {
            ItemStatus::Pass
        } else {
            ItemStatus::Fail
        };
        detail.error = first_error;
        Finished {
            index,
            status,
            detail,
            usage,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_split_into_item_and_sample() {
        assert_eq!(
            split_row(json!({"item": {"q": 1}, "sample": "a"})),
            (json!({"q": 1}), Some(json!("a")))
        );
        assert_eq!(split_row(json!({"item": {"q": 1}, "x": 2})).1, None);
        assert_eq!(split_row(json!({"q": 1})), (json!({"q": 1}), None));
    }

    #[test]
    fn messages_render_item_fields() {
        let msgs = vec![json!({"role": "user", "content": "Q: {{ item.q }}"})];
        assert_eq!(
            render_messages(&msgs, &json!({"q": "why"})).unwrap(),
            vec![json!({"role": "user", "content": "Q: why"})]
        );
        assert!(render_messages(&msgs, &json!({})).unwrap_err().contains("item.q"));
    }

    #[test]
    fn item_references_take_the_rows_messages_without_the_answer() {
        let row = json!({"messages": [
            {"role": "system", "content": "Label it."},
            {"role": "user", "content": "my card is lost"},
            {"role": "assistant", "content": "lost_card", "weight": 1}
        ]});
        let input = input_messages(&[], Some("item.messages"), &row).unwrap();
        assert_eq!(
            input,
            vec![
                json!({"role": "system", "content": "Label it."}),
                json!({"role": "user", "content": "my card is lost"})
            ]
        );
        assert!(
            input_messages(&[], Some("item.missing"), &row)
                .unwrap_err()
                .contains("item.missing")
        );
        assert!(
            input_messages(&[], Some("item.messages[0]"), &row)
                .unwrap_err()
                .contains("not a list")
        );
        let only_answer = json!({"messages": [{"role": "assistant", "content": "x"}]});
        assert!(input_messages(&[], Some("item.messages"), &only_answer).is_err());
    }
}
