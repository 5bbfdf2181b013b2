//! `/v1/fine_tuning/alpha/graders`: run a grader on one sample, or
//! validate it, as OpenAI's graders API does, over the grader service.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ErrorBody};
use super::kit::{Answer, Authed, Json, Rest};
use crate::graders::{GraderErrors, GraderResult, Sample};

pub fn routes() -> OpenApiRouter<Rest> {
    OpenApiRouter::new()
        .routes(routes!(run_grader))
        .routes(routes!(validate_grader))
}

/// `client.fine_tuning.alpha.graders.run`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunGraderBody {
    /// A grader object: string_check, text_similarity, python, score_model,
    /// label_model or multi.
    #[schema(value_type = Object)]
    pub grader: Value,
    /// The model's answer: the grader's `sample.output_text` (and
    /// `sample.output_json` when it is JSON).
    pub model_sample: String,
    /// The dataset row the grader's `item` namespace reads.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub item: Option<Value>,
}

/// OpenAI's error flags of a grading, each set or clear, with the details
/// of the ones that carry any.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunErrors {
    pub formula_parse_error: bool,
    pub invalid_variable_error: bool,
    pub model_grader_parse_error: bool,
    pub model_grader_refusal_error: bool,
    pub model_grader_server_error: bool,
    pub model_grader_server_error_details: Option<String>,
    pub other_error: bool,
    /// Lathe's: what `other_error` was about.
    pub other_error_details: Option<String>,
    pub python_grader_runtime_error: bool,
    pub python_grader_runtime_error_details: Option<String>,
    pub python_grader_server_error: bool,
    pub python_grader_server_error_type: Option<String>,
    pub sample_parse_error: bool,
    /// Lathe grades whole samples, never a truncated observation: always false.
    pub truncated_observation_error: bool,
    /// Lathe has no reward server that can stop answering: always false.
    pub unresponsive_reward_error: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunMetadata {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub errors: RunErrors,
    /// Seconds.
    pub execution_time: f64,
    /// The reward of each grader the result combines: a multi grader's
    /// sub-graders, or the grader itself.
    pub scores: BTreeMap<String, f64>,
    /// Tokens the grader's model calls spent, all models together; null
    /// when it called none (or its answer came from the cache).
    pub token_usage: Option<u64>,
    /// The model that produced the sample: none for a sample given here.
    pub sampled_model_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenUsage {
    pub total_tokens: u64,
}

/// OpenAI's `GraderRunResponse`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GraderRunResponse {
    pub reward: f64,
    pub metadata: RunMetadata,
    /// A multi grader's sub-graders' rewards, by name.
    pub sub_rewards: BTreeMap<String, f64>,
    pub model_grader_token_usage_per_model: BTreeMap<String, TokenUsage>,
}

fn details(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn errors(e: &GraderErrors) -> RunErrors {
    RunErrors {
        formula_parse_error: e.formula_parse_error,
        invalid_variable_error: e.invalid_variable_error,
        model_grader_parse_error: e.model_grader_parse_error,
        model_grader_refusal_error: e.model_grader_refusal_error,
        model_grader_server_error: e.model_grader_server_error,
        model_grader_server_error_details: details(&e.model_grader_server_error_details),
        other_error: e.other_error,
        other_error_details: details(&e.other_error_details),
        python_grader_runtime_error: e.python_grader_runtime_error,
        python_grader_runtime_error_details: details(&e.python_grader_runtime_error_details),
        python_grader_server_error: e.python_grader_server_error,
        python_grader_server_error_type: details(&e.python_grader_server_error_type),
        sample_parse_error: e.sample_parse_error,
        truncated_observation_error: false,
        unresponsive_reward_error: false,
    }
}

pub fn run_response(r: GraderResult) -> GraderRunResponse {
    let m = &r.metadata;
    let scores = if r.sub_rewards.is_empty() {
        BTreeMap::from([(m.name.to_string(), r.reward)])
    } else {
        r.sub_rewards.clone()
    };
    GraderRunResponse {
        reward: r.reward,
        metadata: RunMetadata {
            name: m.name.to_string(),
            kind: m.kind.to_string(),
            errors: errors(m.errors()),
            execution_time: m.execution_time.as_secs_f64(),
            scores,
            token_usage: (!m.token_usage.is_empty()).then(|| m.token_usage.values().sum()),
            sampled_model_name: None,
        },
        model_grader_token_usage_per_model: m
            .token_usage
            .iter()
            .map(|(model, &total_tokens)| (model.clone(), TokenUsage { total_tokens }))
            .collect(),
        sub_rewards: r.sub_rewards,
    }
}

/// Runs a grader on one model sample (and dataset item).
#[utoipa::path(post, path = "/v1/fine_tuning/alpha/graders/run", tag = "graders",
    request_body = RunGraderBody,
    responses((status = 200, body = GraderRunResponse), (status = 400, body = ErrorBody)))]
async fn run_grader(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(body): Json<RunGraderBody>,
) -> Answer<GraderRunResponse> {
    let item = match body.item {
        None | Some(Value::Null) => serde_json::json!({}),
        Some(item @ Value::Object(_)) => item,
        Some(_) => return Err(ApiError::invalid("item", "must be a JSON object (the dataset row)")),
    };
    let sample = Sample::from_model_output(body.model_sample);
    let result = rest.graders.run(&caller, body.grader, sample, item).await?;
    Ok(Json(run_response(result)))
}

/// `client.fine_tuning.alpha.graders.validate`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateGraderBody {
    #[schema(value_type = Object)]
    pub grader: Value,
}

/// The grader, when it is valid.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidateGraderResponse {
    #[schema(value_type = Object)]
    pub grader: Value,
}

/// Checks a grader (python sources are compiled in the sandbox) and
/// answers it back; every problem is a 400 on its field under `grader`.
#[utoipa::path(post, path = "/v1/fine_tuning/alpha/graders/validate", tag = "graders",
    request_body = ValidateGraderBody,
    responses((status = 200, body = ValidateGraderResponse), (status = 400, body = ErrorBody)))]
async fn validate_grader(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(body): Json<ValidateGraderBody>,
) -> Answer<ValidateGraderResponse> {
    rest.graders.validate(&caller, &body.grader).await?;
    Ok(Json(ValidateGraderResponse { grader: body.grader }))
}
