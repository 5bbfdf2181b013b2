//! `/v1/evals`: evals, their runs and the runs' output items, as OpenAI's
//! `eval`, `eval.run` and `eval.run.output_item` objects, over the evals
//! service (the same calls as `EvalService`).
//!
//! What OpenAI's shapes carry that Lathe's records keep differently:
//! - A testing criterion is a grader object with `pass_threshold` beside
//!   its fields; the service takes the grader and the threshold apart.
//! - An eval's `data_source_config` is `custom` only (Lathe runs on items
//!   from files; `logs` and `stored_completions` are refused naming the
//!   param). Its `schema` is shown as OpenAI shows it: `{item, sample?}`.
//! - A run's `jsonl` source is a file (`file_id`: a dataset) whose rows are
//!   items or `{item, sample}`; `file_content` is uploaded through the
//!   datasets service as a file of purpose `evals` that the run then names,
//!   so the run shows it as `file_id` (the file stays after the run, like
//!   any file). A `completions` source samples `model` on each item.
//! - Output item ids are `outputitem_<run>_<row>`; `datasource_item_id` is
//!   the row. Lists default to oldest first, as OpenAI's do.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ErrorBody};
use super::kit::{Answer, Authed, Json, Path, Query, Rest, at_path, renamed};
use super::wire::{HasId, List, PageQuery, order, seconds};
use crate::auth::model::Caller;
use crate::datasets::manager::{OnInvalid, UploadMeta};
use crate::datasets::model::DatasetState;
use crate::datasets::report::{Purpose, PurposeChoice};
use crate::error::Error;
use crate::evals::manager::{self as em, CreateEval, CreateRun, NewCriterion, Page, UpdateEval};
use crate::evals::model::{
    DataSource, EvalRecord, EvalSort, ItemStatus, OutputItemRecord, RunRecord, RunState, SamplingParams,
};

pub fn routes() -> OpenApiRouter<Rest> {
    OpenApiRouter::new()
        .routes(routes!(create_eval, list_evals))
        .routes(routes!(retrieve_eval, update_eval, delete_eval))
        .routes(routes!(create_run, list_runs))
        .routes(routes!(retrieve_run, cancel_run_legacy, delete_run))
        .routes(routes!(cancel_run))
        .routes(routes!(list_output_items))
        .routes(routes!(retrieve_output_item))
}

// ---- objects ----

/// OpenAI's eval object.
#[derive(Debug, Serialize, ToSchema)]
pub struct Eval {
    pub id: String,
    /// Always `eval`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub data_source_config: DataSourceConfig,
    /// Grader objects, each with its `pass_threshold` where it takes one;
    /// `name` is the criterion's (what output items' results call it).
    pub testing_criteria: Vec<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DataSourceConfig {
    /// Always `custom`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `{type: object, properties: {item, sample?}, required}`.
    pub schema: Value,
}

/// OpenAI's eval run object.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvalRun {
    pub id: String,
    /// Always `eval.run`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    pub eval_id: String,
    /// `queued`, `in_progress`, `completed`, `failed` or `canceled`.
    pub status: &'static str,
    /// The sampled model; empty when the samples come from the file.
    pub model: String,
    pub name: String,
    pub data_source: Value,
    pub result_counts: ResultCounts,
    pub per_model_usage: Vec<ModelUsage>,
    pub per_testing_criteria_results: Vec<CriterionResult>,
    /// Lathe has no report page: always null.
    pub report_url: Option<String>,
    pub error: Option<RunError>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResultCounts {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub errored: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelUsage {
    pub model_name: String,
    pub invocation_count: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Lathe caches no prompts: always 0.
    pub cached_tokens: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CriterionResult {
    /// The criterion's name.
    pub testing_criteria: String,
    pub passed: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunError {
    pub code: &'static str,
    pub message: String,
}

/// OpenAI's eval run output item.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputItem {
    /// `outputitem_<run>_<row>`.
    pub id: String,
    /// Always `eval.run.output_item`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    pub run_id: String,
    pub eval_id: String,
    /// `pass`, `fail` or `error`.
    pub status: &'static str,
    /// The item's row in the file, from 0.
    pub datasource_item_id: u64,
    pub datasource_item: Value,
    pub results: Vec<Value>,
    pub sample: Value,
}

/// The answer to deleting an eval.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvalDeleted {
    /// Always `eval.deleted`.
    pub object: &'static str,
    pub deleted: bool,
    pub eval_id: String,
}

/// The answer to deleting a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDeleted {
    /// Always `eval.run.deleted`.
    pub object: &'static str,
    pub deleted: bool,
    pub run_id: String,
}

impl HasId for Eval {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for EvalRun {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for OutputItem {
    fn id(&self) -> &str {
        &self.id
    }
}

/// What graders may read of a sample (`{{ sample.* }}`).
fn sample_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "output_text": {"type": "string"},
            "output_json": {"type": "object"},
            "output_tools": {"type": "array", "items": {"type": "object"}},
            "choices": {"type": "array", "items": {"type": "object"}}
        },
        "required": ["output_text"]
    })
}

/// The grader types whose criteria carry a pass threshold on the wire
/// (string_check and label_model pass on 1).
fn takes_threshold(grader: &Value) -> bool {
    !matches!(
        grader.get("type").and_then(Value::as_str),
        Some("string_check" | "label_model")
    )
}

pub fn eval(e: EvalRecord) -> Eval {
    let item = e.spec.item_schema.clone().unwrap_or_else(|| json!({"type": "object"}));
    let (properties, required) = if e.spec.include_sample_schema {
        (
            json!({"item": item, "sample": sample_schema()}),
            json!(["item", "sample"]),
        )
    } else {
        (json!({"item": item}), json!(["item"]))
    };
    let testing_criteria = e
        .spec
        .criteria
        .into_iter()
        .map(|c| {
            let mut grader = c.grader;
            let threshold = takes_threshold(&grader);
            if let Value::Object(map) = &mut grader {
                map.insert("name".into(), Value::String(c.name));
                if threshold {
                    map.insert("pass_threshold".into(), json!(c.pass_threshold));
                }
            }
            grader
        })
        .collect();
    Eval {
        object: "eval",
        created_at: seconds(e.created_at),
        name: e.name,
        metadata: e.spec.metadata,
        data_source_config: DataSourceConfig {
            kind: "custom",
            schema: json!({"type": "object", "properties": properties, "required": required}),
        },
        testing_criteria,
        id: e.id,
    }
}

/// OpenAI's `sampling_params` for a run's sampling.
fn sampling_params(s: &SamplingParams, tools: &Option<Value>, response_format: &Option<Value>) -> Value {
    let mut out = Map::new();
    let mut put = |key: &str, v: Value| {
        if !v.is_null() {
            out.insert(key.into(), v);
        }
    };
    put("temperature", json!(s.temperature));
    put("max_completion_tokens", json!(s.max_tokens));
    put("top_p", json!(s.top_p));
    put("seed", json!(s.seed));
    put("response_format", response_format.clone().unwrap_or(Value::Null));
    put("tools", tools.clone().unwrap_or(Value::Null));
    Value::Object(out)
}

/// The run's data source as OpenAI shows it.
fn data_source(r: &RunRecord) -> Value {
    let source = json!({"type": "file_id", "id": r.spec.dataset_id});
    match &r.spec.source {
        DataSource::Precomputed { .. } => json!({"type": "jsonl", "source": source}),
        DataSource::Model {
            model,
            input_messages,
            item_reference,
            sampling,
            tools,
            response_format,
        } => {
            let input_messages = match item_reference {
                Some(path) => json!({"type": "item_reference", "item_reference": path}),
                None => json!({"type": "template", "template": input_messages}),
            };
            json!({
                "type": "completions",
                "source": source,
                "input_messages": input_messages,
                "model": model,
                "sampling_params": sampling_params(sampling, tools, response_format),
            })
        }
    }
}

pub fn run(r: RunRecord) -> EvalRun {
    let criteria = em::summarize(&r.spec.criteria, &r.progress);
    EvalRun {
        object: "eval.run",
        created_at: seconds(r.created_at),
        status: r.state.as_str(),
        model: r.spec.model().to_string(),
        data_source: data_source(&r),
        result_counts: ResultCounts {
            total: r.total,
            passed: r.progress.passed,
            failed: r.progress.failed,
            errored: r.progress.errored,
        },
        per_model_usage: r
            .progress
            .usage
            .iter()
            .map(|(model, u)| ModelUsage {
                model_name: model.clone(),
                invocation_count: u.invocations,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
                cached_tokens: 0,
            })
            .collect(),
        per_testing_criteria_results: criteria
            .into_iter()
            .map(|c| CriterionResult {
                testing_criteria: c.name,
                passed: c.counts.passed,
                failed: c.counts.failed,
            })
            .collect(),
        report_url: None,
        error: r.error.map(|message| RunError {
            // A completed run's error says where its budget stopped it.
            code: if r.state == RunState::Completed {
                "budget_exhausted"
            } else {
                "run_failed"
            },
            message,
        }),
        name: r.spec.name,
        metadata: r.spec.metadata,
        eval_id: r.eval_id,
        id: r.id,
    }
}

/// An output item of `run` (which gives its eval and sampling settings).
pub fn output_item(i: OutputItemRecord, run: &RunRecord) -> OutputItem {
    let id = i.id();
    let d = i.detail;
    let results = d
        .results
        .into_iter()
        .map(|r| {
            let mut out = json!({"name": r.name, "type": r.kind, "score": r.score, "passed": r.passed, "sample": null});
            if let Some(e) = r.error {
                out["error"] = Value::String(e);
            }
            out
        })
        .collect();
    let mut output = json!({"role": "assistant", "content": d.sample});
    if !d.tool_calls.is_empty() {
        output["tool_calls"] = Value::Array(d.tool_calls);
    }
    let sampling = match &run.spec.source {
        DataSource::Model { sampling, .. } => sampling.clone(),
        DataSource::Precomputed { .. } => SamplingParams::default(),
    };
    let usage = d.usage.as_ref().map(|u| {
        json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "cached_tokens": 0
        })
    });
    let sample = json!({
        "input": d.input,
        "output": [output],
        "finish_reason": d.finish_reason,
        "model": d.usage.map(|u| u.model).unwrap_or_else(|| run.spec.model().to_string()),
        "usage": usage,
        "error": d.error.map(|message| json!({"code": "item_error", "message": message})),
        "temperature": sampling.temperature,
        "max_completion_tokens": sampling.max_tokens,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
    });
    OutputItem {
        id,
        object: "eval.run.output_item",
        created_at: seconds(i.created_at),
        run_id: i.run_id,
        eval_id: run.eval_id.clone(),
        status: i.status.as_str(),
        datasource_item_id: i.index,
        datasource_item: d.item,
        results,
        sample,
    }
}

// ---- requests ----

/// Tells an absent field (None) from an explicit null (Some(None)).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEvalBody {
    /// 1 to 256 characters.
    pub name: Option<String>,
    pub data_source_config: DataSourceConfigIn,
    /// Grader objects (string_check, text_similarity, python, score_model,
    /// label_model), each with its `pass_threshold` where it takes one.
    pub testing_criteria: Vec<Value>,
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSourceConfigIn {
    /// `custom`; `logs` and `stored_completions` are not served.
    #[serde(rename = "type")]
    pub kind: String,
    /// A JSON schema (subset: type, required, properties, enum, items) every item must satisfy.
    pub item_schema: Option<Value>,
    pub include_sample_schema: Option<bool>,
    /// For `logs` and `stored_completions` only.
    pub metadata: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEvalBody {
    pub name: Option<String>,
    /// Replaces the eval's metadata; null clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub metadata: Option<Option<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRunBody {
    pub name: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub data_source: RunDataSourceIn,
}

/// `jsonl` (samples in the file) or `completions` (sample a model).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunDataSourceIn {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: SourceIn,
    pub input_messages: Option<InputMessagesIn>,
    pub model: Option<String>,
    pub sampling_params: Option<SamplingParamsIn>,
}

/// `file_id` (`id`) or `file_content` (`content`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceIn {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
    pub content: Option<Vec<ContentRow>>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentRow {
    pub item: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<Value>,
}

/// `template` (`template`: messages whose strings may use `{{ item.* }}`)
/// or `item_reference` (`item_reference`: the path of each item's messages).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputMessagesIn {
    #[serde(rename = "type")]
    pub kind: String,
    pub template: Option<Vec<Value>>,
    pub item_reference: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingParamsIn {
    pub temperature: Option<f64>,
    pub max_completion_tokens: Option<u32>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub response_format: Option<Value>,
    pub tools: Option<Vec<Value>>,
    /// Not served: Lathe's models have no reasoning mode.
    pub reasoning_effort: Option<Value>,
}

/// `GET /v1/evals`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EvalListQuery {
    /// The id of the last eval of the previous page.
    pub after: Option<String>,
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
    /// `asc` (the default) or `desc`.
    pub order: Option<String>,
    /// `created_at` (the default) or `updated_at`.
    pub order_by: Option<String>,
}

/// `GET /v1/evals/{eval_id}/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunListQuery {
    /// The id of the last run of the previous page.
    pub after: Option<String>,
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
    /// `asc` (the default) or `desc`, by creation time.
    pub order: Option<String>,
    /// `queued`, `in_progress`, `completed`, `canceled` or `failed`.
    pub status: Option<String>,
}

/// `GET .../output_items`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ItemListQuery {
    /// The id of the last item of the previous page.
    pub after: Option<String>,
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
    /// `asc` (the default: the file's order) or `desc`.
    pub order: Option<String>,
    /// `pass`, `fail` (or Lathe's `error`).
    pub status: Option<String>,
}

/// The page a list query asks for.
fn page(after: Option<String>, limit: Option<i64>, order_param: Option<&str>) -> Result<Page, ApiError> {
    let size = PageQuery { after: None, limit }.page_size()?;
    Ok(Page::after(size, after, Some(order(order_param)?)))
}

/// `field` with `from` at its start replaced by `to`; None when it does not start with `from`.
fn swap_prefix(field: &str, from: &str, to: &str) -> Option<String> {
    let rest = field.strip_prefix(from)?;
    (rest.is_empty() || rest.starts_with(['.', '['])).then(|| format!("{to}{rest}"))
}

/// CreateEval's fields as `POST /v1/evals` names them.
fn eval_param(field: &str) -> String {
    if let Some(rest) = field.strip_prefix("testing_criteria[")
        && let Some((index, tail)) = rest.split_once(']')
        && let Some(renamed) = swap_prefix(tail, ".grader", "")
    {
        return format!("testing_criteria[{index}]{renamed}");
    }
    swap_prefix(field, "item_schema", "data_source_config.item_schema").unwrap_or_else(|| field.to_string())
}

/// CreateEvalRun's fields as `POST /v1/evals/{id}/runs` names them.
fn run_param(field: &str, inline: bool) -> String {
    let source = if inline {
        "data_source.source.content"
    } else {
        "data_source.source.id"
    };
    let renames = [
        ("dataset_id", source),
        ("source", "data_source"),
        ("model.model", "data_source.model"),
        ("model.input_messages", "data_source.input_messages.template"),
        ("model.item_reference", "data_source.input_messages.item_reference"),
        (
            "model.sampling_params.max_tokens",
            "data_source.sampling_params.max_completion_tokens",
        ),
        ("model.sampling_params", "data_source.sampling_params"),
        ("precomputed", "data_source"),
    ];
    renames
        .iter()
        .find_map(|(from, to)| swap_prefix(field, from, to))
        .unwrap_or_else(|| field.to_string())
}

fn criteria(raw: Vec<Value>) -> Result<Vec<NewCriterion>, ApiError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, c)| {
            let Value::Object(mut grader) = c else {
                return Err(ApiError::invalid(
                    format!("testing_criteria[{i}]"),
                    "a testing criterion is a grader object",
                ));
            };
            let pass_threshold = match grader.remove("pass_threshold") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => n.as_f64(),
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("testing_criteria[{i}].pass_threshold"),
                        "must be a number",
                    ));
                }
            };
            Ok(NewCriterion {
                grader: Some(Value::Object(grader)),
                pass_threshold,
                name: None,
            })
        })
        .collect()
}

/// A template message as the chat seam takes it: `{role, content}` with a
/// string content (or chat content parts for an image).
fn template_message(i: usize, m: Value) -> Result<Value, ApiError> {
    let param = |tail: &str| format!("data_source.input_messages.template[{i}]{tail}");
    let Value::Object(mut m) = m else {
        return Err(ApiError::invalid(
            param(""),
            "a message is an object with role and content",
        ));
    };
    match m.remove("type") {
        None => {}
        Some(Value::String(t)) if t == "message" => {}
        Some(_) => return Err(ApiError::invalid(param(".type"), "must be message")),
    }
    let content = match m.remove("content") {
        Some(Value::Object(part)) => {
            let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
            match (kind, part.get("text"), part.get("image_url")) {
                ("input_text" | "output_text", Some(Value::String(text)), _) => Value::String(text.clone()),
                ("input_image", _, Some(Value::String(url))) => {
                    let mut image = json!({"url": url});
                    if let Some(detail) = part.get("detail") {
                        image["detail"] = detail.clone();
                    }
                    json!([{"type": "image_url", "image_url": image}])
                }
                _ => {
                    return Err(ApiError::invalid(
                        param(".content"),
                        "Lathe samples text and input_image content; this content type is not served",
                    ));
                }
            }
        }
        Some(other) => other,
        None => return Err(ApiError::invalid(param(".content"), "content is required")),
    };
    m.insert("content".into(), content);
    Ok(Value::Object(m))
}

/// The run's domain source from OpenAI's data source (its file aside).
fn source(ds: &RunDataSourceIn) -> Result<DataSource, ApiError> {
    match ds.kind.as_str() {
        "jsonl" => {
            for (given, field) in [
                (ds.input_messages.is_some(), "input_messages"),
                (ds.model.is_some(), "model"),
                (ds.sampling_params.is_some(), "sampling_params"),
            ] {
                if given {
                    return Err(ApiError::invalid(
                        format!("data_source.{field}"),
                        "a jsonl source takes its samples from the file; sample a model with a completions source",
                    ));
                }
            }
            Ok(DataSource::Precomputed {
                sample_template: String::new(),
            })
        }
        "completions" => {
            let model = ds
                .model
                .clone()
                .ok_or_else(|| ApiError::invalid("data_source.model", "a completions source needs a model"))?;
            let (input_messages, item_reference) = match &ds.input_messages {
                None => {
                    return Err(ApiError::invalid(
                        "data_source.input_messages",
                        "give a template or an item_reference",
                    ));
                }
                Some(m) => match (m.kind.as_str(), &m.template, &m.item_reference) {
                    ("template", Some(template), None) => (
                        template
                            .iter()
                            .cloned()
                            .enumerate()
                            .map(|(i, m)| template_message(i, m))
                            .collect::<Result<Vec<_>, _>>()?,
                        None,
                    ),
                    ("item_reference", None, Some(path)) => (Vec::new(), Some(path.clone())),
                    ("template", _, _) => {
                        return Err(ApiError::invalid(
                            "data_source.input_messages.template",
                            "a template source gives template (and no item_reference)",
                        ));
                    }
                    ("item_reference", _, _) => {
                        return Err(ApiError::invalid(
                            "data_source.input_messages.item_reference",
                            "an item_reference source gives item_reference (and no template)",
                        ));
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "data_source.input_messages.type",
                            "must be template or item_reference",
                        ));
                    }
                },
            };
            let s = ds.sampling_params.as_ref();
            if s.is_some_and(|s| s.reasoning_effort.as_ref().is_some_and(|r| !r.is_null())) {
                return Err(ApiError::invalid(
                    "data_source.sampling_params.reasoning_effort",
                    "Lathe's models have no reasoning mode",
                ));
            }
            Ok(DataSource::Model {
                model,
                input_messages,
                item_reference,
                sampling: SamplingParams {
                    temperature: s.and_then(|s| s.temperature),
                    top_p: s.and_then(|s| s.top_p),
                    max_tokens: s.and_then(|s| s.max_completion_tokens),
                    seed: s.and_then(|s| s.seed),
                    stop: Vec::new(),
                },
                tools: s.and_then(|s| s.tools.clone()).map(Value::Array),
                response_format: s.and_then(|s| s.response_format.clone()),
            })
        }
        "responses" => Err(ApiError::invalid(
            "data_source.type",
            "Lathe samples through chat completions: use a completions source",
        )),
        _ => Err(ApiError::invalid("data_source.type", "must be jsonl or completions")),
    }
}

/// The file a run reads: a `file_id`, or `file_content` uploaded as a new
/// file of purpose `evals` (true when it was).
async fn source_file(rest: &Rest, caller: &Caller, source: SourceIn) -> Result<(String, bool), ApiError> {
    match (source.kind.as_str(), source.id, source.content) {
        ("file_id", Some(id), None) => Ok((id, false)),
        ("file_content", None, Some(rows)) => {
            if rows.is_empty() {
                return Err(ApiError::invalid(
                    "data_source.source.content",
                    "give at least one item",
                ));
            }
            let mut bytes = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                if !row.item.is_object() {
                    return Err(ApiError::invalid(
                        format!("data_source.source.content[{i}].item"),
                        "an item is a JSON object",
                    ));
                }
                if row.sample.as_ref().is_some_and(|s| !s.is_object()) {
                    return Err(ApiError::invalid(
                        format!("data_source.source.content[{i}].sample"),
                        "a sample is a JSON object",
                    ));
                }
                serde_json::to_writer(&mut bytes, row).map_err(|e| Error::Internal(e.to_string()))?;
                bytes.push(b'\n');
            }
            let meta = UploadMeta {
                filename: "eval_run_content.jsonl".into(),
                purpose: Some(PurposeChoice::Exactly(Purpose::Eval)),
                display_name: String::new(),
                metadata: BTreeMap::new(),
                label_field: None,
                on_invalid: OnInvalid::Keep,
            };
            let chunks = futures::stream::iter([Ok(bytes::Bytes::from(bytes))]);
            let file = rest.datasets.upload(caller, meta, chunks).await?;
            if file.state != DatasetState::Ready {
                let problem = file
                    .report
                    .errors
                    .first()
                    .map(|p| (p.line.saturating_sub(1), p.message.clone()));
                rest.datasets.delete(caller, &file.id).await?;
                let (param, message) = match problem {
                    Some((line, message)) => (format!("data_source.source.content[{line}]"), message),
                    None => ("data_source.source.content".into(), "the items are not valid".into()),
                };
                return Err(ApiError::invalid(param, message));
            }
            Ok((file.id, true))
        }
        ("file_id", _, _) => Err(ApiError::invalid("data_source.source.id", "a file_id source gives id")),
        ("file_content", _, _) => Err(ApiError::invalid(
            "data_source.source.content",
            "a file_content source gives content",
        )),
        ("stored_completions" | "responses", _, _) => Err(ApiError::invalid(
            "data_source.source.type",
            "Lathe keeps no logs to run on: give file_id or file_content",
        )),
        _ => Err(ApiError::invalid(
            "data_source.source.type",
            "must be file_id or file_content",
        )),
    }
}

/// The run, if it is one of `eval_id`'s (NOT_FOUND otherwise).
async fn run_of(rest: &Rest, caller: &Caller, eval_id: &str, run_id: &str) -> Result<RunRecord, ApiError> {
    let run = rest
        .evals
        .get_run(caller, run_id)
        .await
        .map_err(at_path("eval run", run_id))?;
    if run.eval_id != eval_id {
        return Err(Error::not_found("eval run", run_id).into());
    }
    Ok(run)
}

// ---- handlers ----

/// Creates an eval: its item schema and testing criteria (graders with
/// pass thresholds).
#[utoipa::path(post, path = "/v1/evals", tag = "evals", request_body = CreateEvalBody,
    responses((status = 200, body = Eval), (status = 400, body = ErrorBody)))]
async fn create_eval(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(body): Json<CreateEvalBody>,
) -> Answer<Eval> {
    let config = body.data_source_config;
    match config.kind.as_str() {
        "custom" => {}
        "logs" | "stored_completions" => {
            return Err(ApiError::invalid(
                "data_source_config.type",
                "Lathe keeps no logs or stored completions to evaluate: use custom with an item_schema",
            ));
        }
        _ => return Err(ApiError::invalid("data_source_config.type", "must be custom")),
    }
    if config.metadata.is_some() {
        return Err(ApiError::invalid(
            "data_source_config.metadata",
            "a custom data source config takes item_schema and include_sample_schema",
        ));
    }
    let item_schema = config
        .item_schema
        .ok_or_else(|| ApiError::invalid("data_source_config.item_schema", "a custom config needs an item_schema"))?;
    let req = CreateEval {
        name: body.name.unwrap_or_default(),
        item_schema: Some(item_schema),
        include_sample_schema: config.include_sample_schema.unwrap_or(false),
        criteria: criteria(body.testing_criteria)?,
        metadata: body.metadata.unwrap_or_default(),
    };
    let created = rest
        .evals
        .create_eval(&caller, req)
        .await
        .map_err(|e| renamed(e, eval_param))?;
    Ok(Json(eval(created)))
}

/// Lists the project's evals, oldest first unless `order=desc`.
#[utoipa::path(get, path = "/v1/evals", tag = "evals", params(EvalListQuery),
    responses((status = 200, body = List<Eval>), (status = 400, body = ErrorBody)))]
async fn list_evals(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Query(q): Query<EvalListQuery>,
) -> Answer<List<Eval>> {
    let sort = match q.order_by.as_deref() {
        None | Some("created_at") => EvalSort::CreatedAt,
        Some("updated_at") => EvalSort::UpdatedAt,
        Some(_) => return Err(ApiError::invalid("order_by", "must be created_at or updated_at")),
    };
    let page = page(q.after, q.limit, q.order.as_deref())?;
    let (evals, next) = rest.evals.list_evals(&caller, sort, &page).await?;
    Ok(Json(List::new(evals.into_iter().map(eval).collect(), !next.is_empty())))
}

#[utoipa::path(get, path = "/v1/evals/{eval_id}", tag = "evals",
    params(("eval_id" = String, Path)),
    responses((status = 200, body = Eval), (status = 404, body = ErrorBody)))]
async fn retrieve_eval(State(rest): State<Rest>, Authed(caller): Authed, Path(id): Path<String>) -> Answer<Eval> {
    Ok(Json(eval(
        rest.evals.get_eval(&caller, &id).await.map_err(at_path("eval", &id))?,
    )))
}

/// Renames an eval or replaces its metadata (null clears it).
#[utoipa::path(post, path = "/v1/evals/{eval_id}", tag = "evals", request_body = UpdateEvalBody,
    params(("eval_id" = String, Path)),
    responses((status = 200, body = Eval), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_eval(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Json(body): Json<UpdateEvalBody>,
) -> Answer<Eval> {
    let req = UpdateEval {
        name: body.name,
        metadata: body.metadata.map(Option::unwrap_or_default),
    };
    Ok(Json(eval(
        rest.evals
            .update_eval(&caller, &id, req)
            .await
            .map_err(at_path("eval", &id))?,
    )))
}

/// Deletes an eval with its runs and their output items; runs that have not
/// finished stop as if canceled.
#[utoipa::path(delete, path = "/v1/evals/{eval_id}", tag = "evals",
    params(("eval_id" = String, Path)),
    responses((status = 200, body = EvalDeleted), (status = 404, body = ErrorBody)))]
async fn delete_eval(State(rest): State<Rest>, Authed(caller): Authed, Path(id): Path<String>) -> Answer<EvalDeleted> {
    let gone = rest
        .evals
        .delete_eval(&caller, &id)
        .await
        .map_err(at_path("eval", &id))?;
    Ok(Json(EvalDeleted {
        object: "eval.deleted",
        deleted: true,
        eval_id: gone.id,
    }))
}

/// Starts a run: a `jsonl` source grades the samples in its file, a
/// `completions` source samples a model on each item first.
#[utoipa::path(post, path = "/v1/evals/{eval_id}/runs", tag = "evals", request_body = CreateRunBody,
    params(("eval_id" = String, Path)),
    responses((status = 200, body = EvalRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_run(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(eval_id): Path<String>,
    Json(body): Json<CreateRunBody>,
) -> Answer<EvalRun> {
    // Everything the body alone can refuse is refused before a file is made.
    let source = source(&body.data_source)?;
    rest.evals
        .get_eval(&caller, &eval_id)
        .await
        .map_err(at_path("eval", &eval_id))?;
    let (dataset_id, inline) = source_file(&rest, &caller, body.data_source.source).await?;
    let req = CreateRun {
        eval_id,
        dataset_id: dataset_id.clone(),
        source: Some(source),
        concurrency: 0,
        error_rate_threshold: 0.0,
        name: body.name.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_default(),
        budget: Default::default(),
    };
    match rest.evals.create_run(&caller, req).await {
        Ok(created) => Ok(Json(run(created))),
        Err(e) => {
            if inline {
                // The refused run leaves nothing behind, not even its file.
                rest.datasets.delete(&caller, &dataset_id).await?;
            }
            Err(renamed(e, |f| run_param(f, inline)).into())
        }
    }
}

/// Lists an eval's runs, oldest first unless `order=desc`, optionally of one status.
#[utoipa::path(get, path = "/v1/evals/{eval_id}/runs", tag = "evals", params(("eval_id" = String, Path), RunListQuery),
    responses((status = 200, body = List<EvalRun>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_runs(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(eval_id): Path<String>,
    Query(q): Query<RunListQuery>,
) -> Answer<List<EvalRun>> {
    let state = match q.status.as_deref() {
        None => None,
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            ApiError::invalid("status", "must be queued, in_progress, completed, canceled or failed")
        })?),
    };
    let page = page(q.after, q.limit, q.order.as_deref())?;
    let (runs, next) = rest
        .evals
        .list_runs(&caller, &eval_id, state, &page)
        .await
        .map_err(at_path("eval", &eval_id))?;
    Ok(Json(List::new(runs.into_iter().map(run).collect(), !next.is_empty())))
}

#[utoipa::path(get, path = "/v1/evals/{eval_id}/runs/{run_id}", tag = "evals",
    params(("eval_id" = String, Path), ("run_id" = String, Path)),
    responses((status = 200, body = EvalRun), (status = 404, body = ErrorBody)))]
async fn retrieve_run(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path((eval_id, run_id)): Path<(String, String)>,
) -> Answer<EvalRun> {
    Ok(Json(run(run_of(&rest, &caller, &eval_id, &run_id).await?)))
}

/// Cancels a queued or running run: nothing more is sampled or graded.
#[utoipa::path(post, path = "/v1/evals/{eval_id}/runs/{run_id}/cancel", tag = "evals",
    params(("eval_id" = String, Path), ("run_id" = String, Path)),
    responses((status = 200, body = EvalRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn cancel_run(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path((eval_id, run_id)): Path<(String, String)>,
) -> Answer<EvalRun> {
    run_of(&rest, &caller, &eval_id, &run_id).await?;
    Ok(Json(run(rest.evals.cancel_run(&caller, &run_id).await?)))
}

/// Cancels a run, as older `openai` SDKs call it.
#[utoipa::path(post, path = "/v1/evals/{eval_id}/runs/{run_id}", tag = "evals",
    params(("eval_id" = String, Path), ("run_id" = String, Path)),
    responses((status = 200, body = EvalRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn cancel_run_legacy(state: State<Rest>, caller: Authed, ids: Path<(String, String)>) -> Answer<EvalRun> {
    cancel_run(state, caller, ids).await
}

/// Deletes a run and its output items; a run that has not finished stops first.
#[utoipa::path(delete, path = "/v1/evals/{eval_id}/runs/{run_id}", tag = "evals",
    params(("eval_id" = String, Path), ("run_id" = String, Path)),
    responses((status = 200, body = RunDeleted), (status = 404, body = ErrorBody)))]
async fn delete_run(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path((eval_id, run_id)): Path<(String, String)>,
) -> Answer<RunDeleted> {
    run_of(&rest, &caller, &eval_id, &run_id).await?;
    let gone = rest.evals.delete_run(&caller, &run_id).await?;
    Ok(Json(RunDeleted {
        object: "eval.run.deleted",
        deleted: true,
        run_id: gone.id,
    }))
}

/// Lists a run's output items in the file's order (`order=desc` reverses
/// it), optionally only those that passed or failed.
#[utoipa::path(get, path = "/v1/evals/{eval_id}/runs/{run_id}/output_items", tag = "evals",
    params(("eval_id" = String, Path), ("run_id" = String, Path), ItemListQuery),
    responses((status = 200, body = List<OutputItem>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_output_items(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path((eval_id, run_id)): Path<(String, String)>,
    Query(q): Query<ItemListQuery>,
) -> Answer<List<OutputItem>> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(ItemStatus::parse(s).ok_or_else(|| ApiError::invalid("status", "must be pass or fail"))?),
    };
    let parent = run_of(&rest, &caller, &eval_id, &run_id).await?;
    let page = page(q.after, q.limit, q.order.as_deref())?;
    let (items, next) = rest.evals.list_items(&caller, &run_id, status, &page).await?;
    let data = items.into_iter().map(|i| output_item(i, &parent)).collect();
    Ok(Json(List::new(data, !next.is_empty())))
}

#[utoipa::path(get, path = "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}", tag = "evals",
    params(("eval_id" = String, Path), ("run_id" = String, Path), ("output_item_id" = String, Path)),
    responses((status = 200, body = OutputItem), (status = 404, body = ErrorBody)))]
async fn retrieve_output_item(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path((eval_id, run_id, item_id)): Path<(String, String, String)>,
) -> Answer<OutputItem> {
    let parent = run_of(&rest, &caller, &eval_id, &run_id).await?;
    let item = rest
        .evals
        .get_item(&caller, &item_id)
        .await
        .map_err(at_path("output item", &item_id))?;
    if item.run_id != run_id {
        return Err(Error::not_found("output item", item_id).into());
    }
    Ok(Json(output_item(item, &parent)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_fields_become_the_bodys_params() {
        assert_eq!(
            eval_param("testing_criteria[2].grader.operation"),
            "testing_criteria[2].operation"
        );
        assert_eq!(eval_param("testing_criteria[0].grader"), "testing_criteria[0]");
        assert_eq!(
            eval_param("testing_criteria[0].pass_threshold"),
            "testing_criteria[0].pass_threshold"
        );
        assert_eq!(
            eval_param("item_schema.properties"),
            "data_source_config.item_schema.properties"
        );
        assert_eq!(eval_param("name"), "name");
        assert_eq!(run_param("dataset_id", true), "data_source.source.content");
        assert_eq!(run_param("dataset_id", false), "data_source.source.id");
        assert_eq!(run_param("model.model", false), "data_source.model");
        assert_eq!(
            run_param("model.input_messages[1].content", false),
            "data_source.input_messages.template[1].content"
        );
        assert_eq!(
            run_param("model.sampling_params.max_tokens", false),
            "data_source.sampling_params.max_completion_tokens"
        );
        assert_eq!(
            run_param("model.sampling_params.temperature", false),
            "data_source.sampling_params.temperature"
        );
        assert_eq!(run_param("metadata[k]", false), "metadata[k]");
        assert_eq!(run_param("modelx", false), "modelx");
    }

    #[test]
    fn template_messages_become_chat_messages() {
        assert_eq!(
            template_message(0, json!({"role": "user", "content": "{{ item.q }}"})).unwrap(),
            json!({"role": "user", "content": "{{ item.q }}"})
        );
        assert_eq!(
            template_message(
                0,
                json!({"type": "message", "role": "developer", "content": {"type": "input_text", "text": "hi"}})
            )
            .unwrap(),
            json!({"role": "developer", "content": "hi"})
        );
        let e = template_message(3, json!({"role": "user", "content": {"type": "input_audio"}})).unwrap_err();
        assert_eq!(
            e.body.param.as_deref(),
            Some("data_source.input_messages.template[3].content")
        );
    }
}
