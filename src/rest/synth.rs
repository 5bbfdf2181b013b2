//! Lathe's own routes for datasets made from what models answered (OpenAI
//! has none): `POST /v1/lathe/datasets/{distillations, preference_pairs,
//! tool_call_items, from_completions}`, each answering the new file (as
//! `GET /v1/files/{id}` shows it) with what became of the source's items.
//! The bodies name the gRPC requests' fields; errors name them as `param`
//! (a selection that keeps nothing is a 400 with code `invalid_state`).

use std::collections::BTreeMap;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ErrorBody};
use super::files::{File, file};
use super::kit::{Authed, Json, Rest};
use crate::completions::Filter;
use crate::datasets::Purpose;
use crate::synth::{Counts, Distill, FromCompletions, Pairs, Preferred, ToolCallItems};

type Answer<T> = Result<Json<T>, ApiError>;

pub fn routes() -> OpenApiRouter<Rest> {
    OpenApiRouter::new()
        .routes(routes!(create_distillation))
        .routes(routes!(create_preference_pairs))
        .routes(routes!(create_tool_call_items))
        .routes(routes!(create_from_completions))
}

/// The new file and what became of the items it was made from.
#[derive(Debug, Serialize, ToSchema)]
pub struct MadeFile {
    pub file: File,
    pub counts: MadeCounts,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MadeCounts {
    /// Items (or completions) read.
    pub items: u64,
    /// Rows written.
    pub kept: u64,
    /// Items that did not meet the selection.
    pub below_threshold: u64,
    /// Items that errored (sampling or grading).
    pub errored: u64,
    /// Items without an answer that fits the format.
    pub unusable: u64,
}

fn made(dataset: crate::datasets::model::DatasetRecord, c: Counts) -> MadeFile {
    MadeFile {
        file: file(dataset),
        counts: MadeCounts {
            items: c.items,
            kept: c.kept,
            below_threshold: c.below_threshold,
            errored: c.errored,
            unusable: c.unusable,
        },
    }
}

/// `fine-tune` (SFT rows, the default) or `evals` (eval items), as files
/// are uploaded; Lathe's `sft` and `eval` too.
fn purpose(given: Option<&str>) -> Result<Option<Purpose>, ApiError> {
    match given {
        None | Some("fine-tune" | "sft") => Ok(Some(Purpose::Sft)),
        Some("evals" | "eval") => Ok(Some(Purpose::Eval)),
        Some(other) => Err(ApiError::invalid(
            "purpose",
            format!("fine-tune (SFT rows) or evals (eval items), not {other:?}"),
        )),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDistillation {
    /// A finished eval run that sampled a model.
    pub run_id: String,
    /// Keep items scoring at least `min_score` on this criterion (both or
    /// neither); without them, items that passed every criterion.
    pub criterion: Option<String>,
    pub min_score: Option<f64>,
    /// `fine-tune` (SFT rows, the default) or `evals` (the run's items with
    /// the answer as `answer_field`).
    pub purpose: Option<String>,
    pub answer_field: Option<String>,
    pub filename: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Distillation: a finished run's kept answers as SFT rows or eval items.
#[utoipa::path(post, path = "/v1/lathe/datasets/distillations", tag = "lathe",
    request_body = CreateDistillation,
    responses((status = 200, body = MadeFile), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn create_distillation(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(body): Json<CreateDistillation>,
) -> Answer<MadeFile> {
    let req = Distill {
        run_id: body.run_id,
        criterion: body.criterion,
        min_score: body.min_score,
        purpose: purpose(body.purpose.as_deref())?,
        answer_field: body.answer_field,
        filename: body.filename,
        metadata: body.metadata.unwrap_or_default(),
    };
    let (dataset, counts) = rest.synth.distill(&caller, req).await?;
    Ok(Json(made(dataset, counts)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePreferencePairs {
    /// The run whose answers are the non-preferred ones.
    pub run_id: String,
    /// Another run of the same eval on the same dataset: on each item the
    /// higher-scored answer is preferred. Give this or `reference_field`.
    pub preferred_run_id: Option<String>,
    /// A JSON pointer into each item to its reference answer, preferred to
    /// the run's failed answers.
    pub reference_field: Option<String>,
    pub criterion: Option<String>,
    /// How much higher the preferred score must be (default 0).
    pub min_margin: Option<f64>,
    pub filename: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Preference pairs: DPO rows from graded answers.
#[utoipa::path(post, path = "/v1/lathe/datasets/preference_pairs", tag = "lathe",
    request_body = CreatePreferencePairs,
    responses((status = 200, body = MadeFile), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn create_preference_pairs(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(body): Json<CreatePreferencePairs>,
) -> Answer<MadeFile> {
    let preferred = match (body.preferred_run_id, body.reference_field) {
        (Some(run), None) => Preferred::Run(run),
        (None, Some(pointer)) => Preferred::Reference(pointer),
        _ => {
            return Err(ApiError::invalid(
                "preferred_run_id",
                "give preferred_run_id or reference_field, one of them",
            ));
        }
    };
    let req = Pairs {
        run_id: body.run_id,
        preferred,
        criterion: body.criterion,
        min_margin: body.min_margin.unwrap_or(0.0),
        filename: body.filename,
        metadata: body.metadata.unwrap_or_default(),
    };
    let (dataset, counts) = rest.synth.pairs(&caller, req).await?;
    Ok(Json(made(dataset, counts)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToolCallItems {
    /// OpenAI function tools (`{"type": "function", "function": {...}}`)
    /// or bare function definitions.
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// Candidate values for arguments by name.
    #[schema(value_type = Option<Object>)]
    pub values: Option<BTreeMap<String, Vec<Value>>>,
    /// At most this many calls (default 1000, at most 100000).
    pub max_calls: Option<u64>,
    pub seed: Option<u64>,
    pub filename: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// The calls chosen per function.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionCalls {
    pub name: String,
    /// Argument combinations its schema allows (saturating).
    pub combinations: u64,
    pub chosen: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MadeCallItems {
    pub file: File,
    pub functions: Vec<FunctionCalls>,
}

/// Function-calling data: target calls enumerated from function schemas,
/// one eval item per call.
#[utoipa::path(post, path = "/v1/lathe/datasets/tool_call_items", tag = "lathe",
    request_body = CreateToolCallItems,
    responses((status = 200, body = MadeCallItems), (status = 400, body = ErrorBody)))]
async fn create_tool_call_items(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(body): Json<CreateToolCallItems>,
) -> Answer<MadeCallItems> {
    let req = ToolCallItems {
        tools: body.tools,
        values: body.values.unwrap_or_default(),
        max_calls: body.max_calls,
        seed: body.seed.unwrap_or(0),
        filename: body.filename,
        metadata: body.metadata.unwrap_or_default(),
    };
    let (dataset, functions) = rest.synth.tool_call_items(&caller, req).await?;
    Ok(Json(MadeCallItems {
        file: file(dataset),
        functions: functions
            .into_iter()
            .map(|f| FunctionCalls {
                name: f.name,
                combinations: u64::try_from(f.combinations).unwrap_or(u64::MAX),
                chosen: f.chosen,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFromCompletions {
    /// Only this model's stored completions.
    pub model: Option<String>,
    /// Only completions carrying every one of these pairs.
    pub completion_metadata: Option<BTreeMap<String, String>>,
    /// `fine-tune` (SFT rows, the default) or `evals`.
    pub purpose: Option<String>,
    pub answer_field: Option<String>,
    /// At most this many rows, oldest completions first.
    pub limit: Option<u64>,
    pub filename: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Stored chat completions (`store: true`) as SFT rows or eval items.
#[utoipa::path(post, path = "/v1/lathe/datasets/from_completions", tag = "lathe",
    request_body = CreateFromCompletions,
    responses((status = 200, body = MadeFile), (status = 400, body = ErrorBody)))]
async fn create_from_completions(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(body): Json<CreateFromCompletions>,
) -> Answer<MadeFile> {
    let req = FromCompletions {
        filter: Filter {
            model: body.model,
            metadata: body.completion_metadata.unwrap_or_default(),
        },
        purpose: purpose(body.purpose.as_deref())?,
        answer_field: body.answer_field,
        limit: body.limit,
        filename: body.filename,
        metadata: body.metadata.unwrap_or_default(),
    };
    let (dataset, counts) = rest.synth.from_completions(&caller, req).await?;
    Ok(Json(made(dataset, counts)))
}
