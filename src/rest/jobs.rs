//! `/v1/fine_tuning/jobs`: OpenAI's fine-tuning jobs (create with `method`
//! or the legacy top-level `hyperparameters`, list, retrieve, cancel, pause,
//! resume, events, checkpoints) over the jobs service.
//!
//! Requests are read into OpenAI's shapes and converted to a `CreateJob`;
//! the jobs service decides defaults and ranges and names each problem by
//! its field in the gRPC request, which `rest_field` renames to the field
//! of OpenAI's body (`training_dataset_id` is `training_file`,
//! `method.dpo.beta` is `method.dpo.hyperparameters.beta`).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use axum::extract::State;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ErrorBody};
use super::kit::{Answer, Authed, Json, Path, Query, Rest, at_path, renamed};
use super::wire::{HasId, List, PageQuery, seconds};
use crate::error::Error;
use crate::jobs::model as jm;
use crate::jobs::spec::CreateJob;
use crate::models::model::{checkpoint_model_id, fine_tuned_model_id};
use crate::store::JobQuery;

pub fn routes() -> OpenApiRouter<Rest> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(retrieve_job))
        .routes(routes!(cancel_job))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(list_events))
        .routes(routes!(list_checkpoints))
}

// ---------------------------------------------------------------------------
// Hyperparameters: "auto" or a number.

/// A hyperparameter as OpenAI writes it: `"auto"` or a number. Leaving it
/// out (or null) is `auto` too.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Auto<T> {
    Auto,
    Is(T),
}

impl<T> Auto<T> {
    fn value(this: Option<Self>) -> Option<T> {
        match this {
            Some(Auto::Is(v)) => Some(v),
            _ => None,
        }
    }

    fn of(value: Option<T>) -> Option<Self> {
        Some(value.map_or(Auto::Auto, Auto::Is))
    }
}

/// `"auto"` or an integer.
pub type AutoInt = Auto<i64>;
/// `"auto"` or a number.
pub type AutoFloat = Auto<f64>;

impl<T: Serialize> Serialize for Auto<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Auto::Auto => s.serialize_str("auto"),
            Auto::Is(v) => v.serialize(s),
        }
    }
}

/// The numbers a hyperparameter may hold.
pub trait AutoNumber: Sized {
    const WHAT: &'static str;
    const TYPE: Type;
    fn from_i64(v: i64) -> Option<Self>;
    fn from_f64(v: f64) -> Option<Self>;
}

impl AutoNumber for i64 {
    const WHAT: &'static str = "an integer";
    const TYPE: Type = Type::Integer;
    fn from_i64(v: i64) -> Option<Self> {
        Some(v)
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
}

impl AutoNumber for f64 {
    const WHAT: &'static str = "a number";
    const TYPE: Type = Type::Number;
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v)
    }
}

impl<'de, T: AutoNumber> Deserialize<'de> for Auto<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AutoVisitor<T>(PhantomData<T>);
        impl<T: AutoNumber> Visitor<'_> for AutoVisitor<T> {
            type Value = Auto<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "\"auto\" or {}", T::WHAT)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Auto<T>, E> {
                if v == "auto" {
                    Ok(Auto::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Auto<T>, E> {
                T::from_i64(v)
                    .map(Auto::Is)
                    .ok_or_else(|| E::invalid_type(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Auto<T>, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(T::from_i64)
                    .map(Auto::Is)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Auto<T>, E> {
                T::from_f64(v)
                    .map(Auto::Is)
                    .ok_or_else(|| E::invalid_type(de::Unexpected::Float(v), &self))
            }
        }
        d.deserialize_any(AutoVisitor(PhantomData))
    }
}

impl<T: AutoNumber> PartialSchema for Auto<T> {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["auto"])),
            )
            .item(ObjectBuilder::new().schema_type(T::TYPE))
            .into()
    }
}

impl ToSchema for Auto<i64> {
    fn name() -> std::borrow::Cow<'static, str> {
        "AutoInteger".into()
    }
}

impl ToSchema for Auto<f64> {
    fn name() -> std::borrow::Cow<'static, str> {
        "AutoFloat".into()
    }
}

/// Supervised hyperparameters; also the legacy top-level `hyperparameters`
/// of a create request and the job object's `hyperparameters`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupervisedHyperparameters {
    #[serde(default)]
    pub batch_size: Option<AutoInt>,
    #[serde(default)]
    pub learning_rate_multiplier: Option<AutoFloat>,
    #[serde(default)]
    pub n_epochs: Option<AutoInt>,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DpoHyperparameters {
    #[serde(default)]
    pub batch_size: Option<AutoInt>,
    /// (0, 2]; higher keeps the policy closer to its reference.
    #[serde(default)]
    pub beta: Option<AutoFloat>,
    #[serde(default)]
    pub learning_rate_multiplier: Option<AutoFloat>,
    #[serde(default)]
    pub n_epochs: Option<AutoInt>,
    /// Lathe's: the weight of the preferred output's NLL term (RPO); 0 is plain DPO.
    #[serde(default)]
    pub rpo_alpha: Option<AutoFloat>,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReinforcementHyperparameters {
    #[serde(default)]
    pub batch_size: Option<AutoInt>,
    #[serde(default)]
    pub compute_multiplier: Option<AutoFloat>,
    #[serde(default)]
    pub eval_interval: Option<AutoInt>,
    #[serde(default)]
    pub eval_samples: Option<AutoInt>,
    #[serde(default)]
    pub learning_rate_multiplier: Option<AutoFloat>,
    #[serde(default)]
    pub n_epochs: Option<AutoInt>,
    /// `default` (or `auto`), `low`, `medium` or `high`.
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Lathe's: samples per prompt (GRPO's group size).
    #[serde(default)]
    pub generations_per_prompt: Option<AutoInt>,
    /// Lathe's: the KL coefficient (0 trains without a reference).
    #[serde(default)]
    pub beta: Option<AutoFloat>,
    /// Lathe's: the longest sampled answer.
    #[serde(default)]
    pub max_completion_tokens: Option<AutoInt>,
}

// ---------------------------------------------------------------------------
// The method object.

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodType {
    Supervised,
    Dpo,
    Reinforcement,
}

impl MethodType {
    fn name(self) -> &'static str {
        match self {
            MethodType::Supervised => "supervised",
            MethodType::Dpo => "dpo",
            MethodType::Reinforcement => "reinforcement",
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupervisedMethod {
    #[serde(default)]
    pub hyperparameters: Option<SupervisedHyperparameters>,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DpoMethod {
    #[serde(default)]
    pub hyperparameters: Option<DpoHyperparameters>,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReinforcementMethod {
    /// A grader object: string_check, text_similarity, python, score_model or multi.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub grader: Option<Value>,
    #[serde(default)]
    pub hyperparameters: Option<ReinforcementHyperparameters>,
    /// OpenAI's `response_format` (`json_schema` or `json_object`): samples
    /// are parsed as JSON for the grader's `sample.output_json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
}

/// `{type, supervised | dpo | reinforcement: {hyperparameters, ...}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Method {
    #[serde(rename = "type")]
    pub kind: MethodType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervised: Option<SupervisedMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<DpoMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinforcement: Option<ReinforcementMethod>,
}

// ---------------------------------------------------------------------------
// Create.

/// OpenAI's create body (`client.fine_tuning.jobs.create`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJobBody {
    /// The base model, or a fine-tuned model to continue training.
    pub model: String,
    /// The id of a file uploaded for fine-tuning.
    pub training_file: String,
    #[serde(default)]
    pub validation_file: Option<String>,
    /// Deprecated by OpenAI in favour of `method`; not with `method`.
    #[serde(default)]
    pub hyperparameters: Option<SupervisedHyperparameters>,
    /// Supervised when absent.
    #[serde(default)]
    pub method: Option<Method>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Lathe reports to no third party: only an empty list is accepted.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub integrations: Option<Vec<Value>>,
    /// Lathe's: CPUs and GPUs the job's worker reserves where jobs go to a
    /// Ray cluster (the SDK sends it with `extra_body`).
    #[serde(default)]
    pub resources: Option<JobResources>,
}

/// CPUs and GPUs for a job's worker; absent ones take the server's default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobResources {
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub gpus: Option<f64>,
}

/// The domain's method from OpenAI's, or the legacy top-level
/// hyperparameters (supervised).
fn method(body: Option<Method>, legacy: Option<SupervisedHyperparameters>) -> Result<Option<jm::Method>, ApiError> {
    let supervised = |h: SupervisedHyperparameters| jm::Method {
        kind: jm::MethodKind::Supervised,
        hyperparameters: jm::Hyperparameters {
            n_epochs: Auto::value(h.n_epochs),
            batch_size: Auto::value(h.batch_size),
            learning_rate_multiplier: Auto::value(h.learning_rate_multiplier),
            ..Default::default()
        },
        grader: None,
        response_format: None,
    };
    let m = match (body, legacy) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "hyperparameters",
                "give hyperparameters in method.<type>.hyperparameters only: the top-level hyperparameters \
                 (deprecated) cannot be combined with method",
            ));
        }
        (None, Some(h)) => return Ok(Some(supervised(h))),
        (None, None) => return Ok(None),
        (Some(m), None) => m,
    };
    // A settings object for another method than `type` names is a mistake
    // the service would not see: say so rather than drop it.
    for (given, name) in [
        (m.supervised.is_some(), "supervised"),
        (m.dpo.is_some(), "dpo"),
        (m.reinforcement.is_some(), "reinforcement"),
    ] {
        if given && name != m.kind.name() {
            return Err(ApiError::invalid(
                format!("method.{name}"),
                format!(
                    "method.type is {}: give its settings in method.{}",
                    m.kind.name(),
                    m.kind.name()
                ),
            ));
        }
    }
    Ok(Some(match m.kind {
        MethodType::Supervised => supervised(m.supervised.and_then(|s| s.hyperparameters).unwrap_or_default()),
        MethodType::Dpo => {
            let h = m.dpo.and_then(|d| d.hyperparameters).unwrap_or_default();
            jm::Method {
                kind: jm::MethodKind::Dpo,
                hyperparameters: jm::Hyperparameters {
                    n_epochs: Auto::value(h.n_epochs),
                    batch_size: Auto::value(h.batch_size),
                    learning_rate_multiplier: Auto::value(h.learning_rate_multiplier),
                    beta: Auto::value(h.beta),
                    rpo_alpha: Auto::value(h.rpo_alpha),
                    ..Default::default()
                },
                grader: None,
                response_format: None,
            }
        }
        MethodType::Reinforcement => {
            let r = m.reinforcement.unwrap_or_default();
            let h = r.hyperparameters.unwrap_or_default();
            jm::Method {
                kind: jm::MethodKind::Reinforcement,
                hyperparameters: jm::Hyperparameters {
                    n_epochs: Auto::value(h.n_epochs),
                    batch_size: Auto::value(h.batch_size),
                    learning_rate_multiplier: Auto::value(h.learning_rate_multiplier),
                    eval_interval: Auto::value(h.eval_interval),
                    eval_samples: Auto::value(h.eval_samples),
                    generations_per_prompt: Auto::value(h.generations_per_prompt),
                    compute_multiplier: Auto::value(h.compute_multiplier),
                    beta: Auto::value(h.beta),
                    max_completion_tokens: Auto::value(h.max_completion_tokens),
                    // OpenAI's `default` is the service's auto.
                    reasoning_effort: h.reasoning_effort.filter(|e| e != "default" && e != "auto"),
                    rpo_alpha: None,
                },
                grader: r.grader,
                response_format: r.response_format,
            }
        }
    }))
}

/// The create request as the jobs service takes it.
fn create_request(body: CreateJobBody) -> Result<CreateJob, ApiError> {
    if body.integrations.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::invalid(
            "integrations",
            "Lathe sends job metrics to no third party (such as Weights & Biases): follow them with the \
             job's events or checkpoints instead",
        ));
    }
    Ok(CreateJob {
        base_model: body.model,
        training_dataset_id: body.training_file,
        validation_dataset_id: body.validation_file.filter(|f| !f.is_empty()),
        method: method(body.method, body.hyperparameters)?,
        seed: body.seed,
        suffix: body.suffix.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_default(),
        resources: body
            .resources
            .map(|r| jm::Resources {
                cpus: r.cpus,
                gpus: r.gpus,
            })
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// The hyperparameters a job's spec names, as the service names them.
const HYPERPARAMETERS: &[&str] = &[
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "beta",
    "rpo_alpha",
    "eval_interval",
    "eval_samples",
    "generations_per_prompt",
    "compute_multiplier",
    "reasoning_effort",
    "max_completion_tokens",
];

/// A create request's field as the service names it, as OpenAI's body
/// names it: `legacy` when the hyperparameters came at the top level.
fn rest_field(field: &str, legacy: bool) -> String {
    match field {
        "base_model" => return "model".into(),
        "training_dataset_id" => return "training_file".into(),
        "validation_dataset_id" => return "validation_file".into(),
        _ => {}
    }
    if let Some((kind, name)) = field.strip_prefix("method.").and_then(|rest| rest.split_once('.'))
        && HYPERPARAMETERS.contains(&name)
    {
        return if legacy {
            format!("hyperparameters.{name}")
        } else {
            format!("method.{kind}.hyperparameters.{name}")
        };
    }
    field.to_string()
}

/// What a create request names, to tell which field a refusal is about.
struct Named {
    model: String,
    training_file: String,
    validation_file: Option<String>,
}

/// The service's refusal of a create request, about OpenAI's fields: a
/// file or model it cannot find or use is a 400 on the field that named
/// it (OpenAI's answer), not a 404 for the request's path.
fn create_error(err: Error, named: &Named, legacy: bool) -> Error {
    let file_field = |id: &str| {
        if id == named.training_file {
            Some("training_file")
        } else if named.validation_file.as_deref() == Some(id) {
            Some("validation_file")
        } else {
            None
        }
    };
    match renamed(err, |field| rest_field(field, legacy)) {
        Error::NotFound { kind: "dataset", id } => match file_field(&id) {
            Some(field) => Error::invalid(field, format!("no file {id} in this project")),
            None => Error::NotFound { kind: "dataset", id },
        },
        Error::NotFound { kind: "model", id } if id == named.model => {
            Error::invalid("model", format!("no model {id} in this project"))
        }
        Error::FailedPrecondition { message, violations } => {
            match violations.iter().find_map(|(_, subject)| file_field(subject)) {
                Some(field) => Error::invalid(field, message),
                None => Error::FailedPrecondition { message, violations },
            }
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------
// The job object.

#[derive(Debug, Serialize, ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

/// OpenAI's `fine_tuning.job`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FineTuningJob {
    pub id: String,
    /// Always `fine_tuning.job`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    /// Why a failed job failed.
    pub error: Option<JobError>,
    /// The model's name in chat and `/v1/models`, once the job has succeeded.
    pub fine_tuned_model: Option<String>,
    pub finished_at: Option<i64>,
    /// The method's epochs, batch size and learning rate multiplier.
    pub hyperparameters: SupervisedHyperparameters,
    /// The model the job trains: a base model, or the fine-tuned model it continues.
    pub model: String,
    /// The job's project.
    pub organization_id: String,
    /// Lathe writes no result files: metrics are in the events and checkpoints.
    pub result_files: Vec<String>,
    pub seed: u64,
    /// validating_files, queued, running, succeeded, failed, cancelled, or paused.
    pub status: &'static str,
    pub trained_tokens: u64,
    pub training_file: String,
    pub validation_file: Option<String>,
    /// Lathe makes no estimate.
    pub estimated_finish: Option<i64>,
    /// Always empty: Lathe reports to no third party.
    #[schema(value_type = Vec<Object>)]
    pub integrations: Vec<Value>,
    pub metadata: BTreeMap<String, String>,
    pub method: Method,
    /// The `suffix` the job was created with.
    pub user_provided_suffix: Option<String>,
}

impl HasId for FineTuningJob {
    fn id(&self) -> &str {
        &self.id
    }
}

fn method_object(m: jm::Method) -> Method {
    let h = m.hyperparameters;
    let mut out = Method {
        kind: match m.kind {
            jm::MethodKind::Supervised => MethodType::Supervised,
            jm::MethodKind::Dpo => MethodType::Dpo,
            jm::MethodKind::Reinforcement => MethodType::Reinforcement,
        },
        supervised: None,
        dpo: None,
        reinforcement: None,
    };
    match m.kind {
        jm::MethodKind::Supervised => {
            out.supervised = Some(SupervisedMethod {
                hyperparameters: Some(SupervisedHyperparameters {
                    batch_size: Auto::of(h.batch_size),
                    learning_rate_multiplier: Auto::of(h.learning_rate_multiplier),
                    n_epochs: Auto::of(h.n_epochs),
                }),
            })
        }
        jm::MethodKind::Dpo => {
            out.dpo = Some(DpoMethod {
                hyperparameters: Some(DpoHyperparameters {
                    batch_size: Auto::of(h.batch_size),
                    beta: Auto::of(h.beta),
                    learning_rate_multiplier: Auto::of(h.learning_rate_multiplier),
                    n_epochs: Auto::of(h.n_epochs),
                    rpo_alpha: Auto::of(h.rpo_alpha),
                }),
            })
        }
        jm::MethodKind::Reinforcement => {
            out.reinforcement = Some(ReinforcementMethod {
                grader: m.grader,
                hyperparameters: Some(ReinforcementHyperparameters {
                    batch_size: Auto::of(h.batch_size),
                    compute_multiplier: Auto::of(h.compute_multiplier),
                    eval_interval: Auto::of(h.eval_interval),
                    eval_samples: Auto::of(h.eval_samples),
                    learning_rate_multiplier: Auto::of(h.learning_rate_multiplier),
                    n_epochs: Auto::of(h.n_epochs),
                    reasoning_effort: Some(h.reasoning_effort.unwrap_or_else(|| "default".into())),
                    generations_per_prompt: Auto::of(h.generations_per_prompt),
                    beta: Auto::of(h.beta),
                    max_completion_tokens: Auto::of(h.max_completion_tokens),
                }),
                response_format: m.response_format,
            })
        }
    }
    out
}

pub fn job_object(j: jm::JobRecord) -> FineTuningJob {
    let h = &j.spec.method.hyperparameters;
    let hyperparameters = SupervisedHyperparameters {
        batch_size: Auto::of(h.batch_size),
        learning_rate_multiplier: Auto::of(h.learning_rate_multiplier),
        n_epochs: Auto::of(h.n_epochs),
    };
    FineTuningJob {
        object: "fine_tuning.job",
        created_at: seconds(j.created_at),
        error: j.error.map(|e| JobError {
            code: e.code,
            message: e.message,
            param: e.param,
        }),
        fine_tuned_model: j.fine_tuned_model,
        finished_at: j.finished_at.map(seconds),
        hyperparameters,
        model: j.spec.start_from.unwrap_or(j.spec.base_model),
        organization_id: j.project,
        result_files: Vec::new(),
        seed: j.spec.seed,
        status: j.state.as_str(),
        trained_tokens: j.trained_tokens,
        training_file: j.spec.training_dataset_id,
        validation_file: j.spec.validation_dataset_id,
        estimated_finish: None,
        integrations: Vec::new(),
        metadata: j.spec.metadata,
        method: method_object(j.spec.method),
        user_provided_suffix: (!j.spec.suffix.is_empty()).then_some(j.spec.suffix),
        id: j.id,
    }
}

/// The name a job's model (and, with `:ckpt-step-N`, its checkpoints) has.
fn model_name(job: &jm::JobRecord) -> String {
    fine_tuned_model_id(&job.spec.base_model, &job.spec.suffix, &job.id)
}

// ---------------------------------------------------------------------------
// Handlers.

/// Creates a fine-tuning job and queues it.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs", tag = "fine_tuning",
    request_body = CreateJobBody,
    responses((status = 200, body = FineTuningJob), (status = 400, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn create_job(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(body): Json<CreateJobBody>,
) -> Answer<FineTuningJob> {
    let legacy = body.hyperparameters.is_some();
    let req = create_request(body)?;
    let named = Named {
        model: req.base_model.clone(),
        training_file: req.training_dataset_id.clone(),
        validation_file: req.validation_dataset_id.clone(),
    };
    let job = rest
        .jobs
        .create(&caller, req)
        .await
        .map_err(|e| create_error(e, &named, legacy))?;
    Ok(Json(job_object(job)))
}

/// The list query: `after`, `limit` and `metadata[key]=value` filters.
fn list_query(pairs: Vec<(String, String)>) -> Result<(PageQuery, JobQuery), ApiError> {
    let mut page = PageQuery::default();
    let mut query = JobQuery::default();
    for (key, value) in pairs {
        match key.as_str() {
            "after" => page.after = Some(value),
            "limit" => {
                page.limit = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::invalid("limit", "must be an integer between 1 and 100"))?,
                )
            }
            "metadata" => {
                return Err(ApiError::invalid(
                    "metadata",
                    "filter by metadata with metadata[key]=value; selecting jobs without metadata is not supported",
                ));
            }
            _ => match key.strip_prefix("metadata[").and_then(|k| k.strip_suffix(']')) {
                Some(k) => query.metadata.push((k.to_string(), value)),
                None => {
                    return Err(ApiError::invalid(
                        key.clone(),
                        format!("unknown query parameter {key:?} (this list takes after, limit and metadata[key])"),
                    ));
                }
            },
        }
    }
    Ok((page, query))
}

/// Lists the project's jobs, newest first.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs", tag = "fine_tuning",
    params(
        ("after" = Option<String>, Query, description = "The last job id of the previous page"),
        ("limit" = Option<i64>, Query, description = "1 to 100; 20 when absent"),
        ("metadata" = Option<BTreeMap<String, String>>, Query, style = DeepObject, explode,
         description = "Only jobs with these metadata pairs: metadata[key]=value"),
    ),
    responses((status = 200, body = List<FineTuningJob>), (status = 400, body = ErrorBody)))]
async fn list_jobs(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Answer<List<FineTuningJob>> {
    let (page, query) = list_query(pairs)?;
    let (jobs, more) = rest
        .jobs
        .list_after(&caller, query, page.after.as_deref(), page.page_size()?)
        .await?;
    Ok(Json(List::new(jobs.into_iter().map(job_object).collect(), more)))
}

#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{fine_tuning_job_id}", tag = "fine_tuning",
    params(("fine_tuning_job_id" = String, Path)),
    responses((status = 200, body = FineTuningJob), (status = 404, body = ErrorBody)))]
async fn retrieve_job(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Answer<FineTuningJob> {
    let job = rest.jobs.get(&caller, &id).await.map_err(at_path("job", &id))?;
    Ok(Json(job_object(job)))
}

/// Cancels a job that has not finished.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", tag = "fine_tuning",
    params(("fine_tuning_job_id" = String, Path)),
    responses((status = 200, body = FineTuningJob), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn cancel_job(State(rest): State<Rest>, Authed(caller): Authed, Path(id): Path<String>) -> Answer<FineTuningJob> {
    let job = rest.jobs.cancel(&caller, &id).await.map_err(at_path("job", &id))?;
    Ok(Json(job_object(job)))
}

/// Pauses a queued or running job at its next step; resume continues from
/// its last checkpoint.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause", tag = "fine_tuning",
    params(("fine_tuning_job_id" = String, Path)),
    responses((status = 200, body = FineTuningJob), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn pause_job(State(rest): State<Rest>, Authed(caller): Authed, Path(id): Path<String>) -> Answer<FineTuningJob> {
    let job = rest.jobs.pause(&caller, &id).await.map_err(at_path("job", &id))?;
    Ok(Json(job_object(job)))
}

/// Queues a paused job again.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume", tag = "fine_tuning",
    params(("fine_tuning_job_id" = String, Path)),
    responses((status = 200, body = FineTuningJob), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn resume_job(State(rest): State<Rest>, Authed(caller): Authed, Path(id): Path<String>) -> Answer<FineTuningJob> {
    let job = rest.jobs.resume(&caller, &id).await.map_err(at_path("job", &id))?;
    Ok(Json(job_object(job)))
}

// ---------------------------------------------------------------------------
// Events and checkpoints.

/// Training metrics in OpenAI's names, with Lathe's beside them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Metrics {
    pub step: u64,
    pub train_loss: Option<f64>,
    pub train_mean_token_accuracy: Option<f64>,
    /// On the validation data (at most its first `eval_examples` rows) at
    /// each checkpoint.
    pub valid_loss: Option<f64>,
    pub valid_mean_token_accuracy: Option<f64>,
    /// Lathe makes no separate pass over the whole validation file: see `valid_loss`.
    pub full_valid_loss: Option<f64>,
    pub full_valid_mean_token_accuracy: Option<f64>,
    pub total_steps: u64,
    pub epoch: f64,
    pub learning_rate: Option<f64>,
    pub tokens_per_second: Option<f64>,
    pub train_reward_mean: Option<f64>,
    pub valid_reward_mean: Option<f64>,
    /// A checkpoint eval's pass rate, and its eval run.
    pub eval_pass_rate: Option<f64>,
    pub eval_run_id: Option<String>,
    /// A method's measures without a field of their own (`train_rewards/margins`, ...).
    #[serde(flatten)]
    pub values: BTreeMap<String, f64>,
}

fn metrics(m: jm::Metrics) -> Metrics {
    Metrics {
        step: m.step,
        train_loss: m.train_loss,
        train_mean_token_accuracy: m.train_mean_token_accuracy,
        valid_loss: m.valid_loss,
        valid_mean_token_accuracy: m.valid_mean_token_accuracy,
        full_valid_loss: None,
        full_valid_mean_token_accuracy: None,
        total_steps: m.total_steps,
        epoch: m.epoch,
        learning_rate: m.learning_rate,
        tokens_per_second: m.tokens_per_second,
        train_reward_mean: m.train_reward_mean,
        valid_reward_mean: m.valid_reward_mean,
        eval_pass_rate: m.eval_pass_rate,
        eval_run_id: m.eval_run_id,
        values: m.values,
    }
}

/// OpenAI's `fine_tuning.job.event`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobEvent {
    /// `ftevent-{job id}-{sequence number}`.
    pub id: String,
    /// Always `fine_tuning.job.event`.
    pub object: &'static str,
    pub created_at: i64,
    /// info, warn or error.
    pub level: &'static str,
    pub message: String,
    /// `metrics` for a training step's metrics, `message` for the rest.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A step's metrics; a state change's `status`; a checkpoint's id,
    /// step, model name and metrics; empty for plain messages.
    #[schema(value_type = Object)]
    pub data: Value,
}

impl HasId for JobEvent {
    fn id(&self) -> &str {
        &self.id
    }
}

fn event_id(job_id: &str, seq: u64) -> String {
    format!("ftevent-{job_id}-{seq}")
}

/// The sequence number of one of `job_id`'s event ids.
fn event_seq(job_id: &str, id: &str) -> Result<u64, ApiError> {
    id.strip_prefix("ftevent-")
        .and_then(|rest| rest.rsplit_once('-'))
        .filter(|(job, _)| *job == job_id)
        .and_then(|(_, seq)| seq.parse().ok())
        .ok_or_else(|| ApiError::invalid("after", format!("{id:?} is not an event id of job {job_id}")))
}

fn event_object(e: jm::JobEvent, model: &str) -> JobEvent {
    let (kind, data) = match e.data {
        jm::EventData::Message => ("message", serde_json::json!({})),
        jm::EventData::State { state } => ("message", serde_json::json!({ "status": state.as_str() })),
        jm::EventData::Metrics { metrics: m } => ("metrics", serde_json::to_value(metrics(m)).unwrap_or_default()),
        jm::EventData::Checkpoint {
            checkpoint_id,
            step,
            metrics: m,
        } => (
            "message",
            serde_json::json!({
                "checkpoint_id": checkpoint_id,
                "step_number": step,
                "fine_tuned_model_checkpoint": checkpoint_model_id(model, step),
                "metrics": metrics(m),
            }),
        ),
    };
    JobEvent {
        id: event_id(&e.job_id, e.seq),
        object: "fine_tuning.job.event",
        created_at: seconds(e.created_at),
        level: match e.level {
            jm::Level::Info => "info",
            jm::Level::Warn => "warn",
            jm::Level::Error => "error",
        },
        message: e.message,
        kind,
        data,
    }
}

/// Lists a job's events, newest first.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", tag = "fine_tuning",
    params(("fine_tuning_job_id" = String, Path), PageQuery),
    responses((status = 200, body = List<JobEvent>), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_events(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Answer<List<JobEvent>> {
    let job = rest.jobs.get(&caller, &id).await.map_err(at_path("job", &id))?;
    let before = page.after.as_deref().map(|a| event_seq(&job.id, a)).transpose()?;
    let (events, more) = rest
        .jobs
        .events_newest_first(&caller, &job.id, before, page.page_size()?)
        .await?;
    let model = model_name(&job);
    Ok(Json(List::new(
        events.into_iter().map(|e| event_object(e, &model)).collect(),
        more,
    )))
}

/// OpenAI's `fine_tuning.job.checkpoint`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Checkpoint {
    pub id: String,
    /// Always `fine_tuning.job.checkpoint`.
    pub object: &'static str,
    pub created_at: i64,
    /// The checkpoint's model name (`{fine-tuned model}:ckpt-step-{n}`), usable in chat.
    pub fine_tuned_model_checkpoint: String,
    pub fine_tuning_job_id: String,
    pub metrics: Metrics,
    pub step_number: u64,
}

impl HasId for Checkpoint {
    fn id(&self) -> &str {
        &self.id
    }
}

fn checkpoint_object(c: jm::CheckpointRecord, model: &str) -> Checkpoint {
    Checkpoint {
        object: "fine_tuning.job.checkpoint",
        created_at: seconds(c.created_at),
        fine_tuned_model_checkpoint: checkpoint_model_id(model, c.step),
        fine_tuning_job_id: c.job_id,
        metrics: metrics(c.metrics),
        step_number: c.step,
        id: c.id,
    }
}

/// Lists a job's checkpoints, latest step first.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", tag = "fine_tuning",
    params(("fine_tuning_job_id" = String, Path), PageQuery),
    responses((status = 200, body = List<Checkpoint>), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_checkpoints(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Answer<List<Checkpoint>> {
    let job = rest.jobs.get(&caller, &id).await.map_err(at_path("job", &id))?;
    // OpenAI's checkpoint lists default to 10 a page.
    let size = if page.limit.is_none() { 10 } else { page.page_size()? };
    let (list, more) = rest
        .jobs
        .checkpoints_after(&caller, &job.id, page.after.as_deref(), size)
        .await?;
    let model = model_name(&job);
    Ok(Json(List::new(
        list.into_iter().map(|c| checkpoint_object(c, &model)).collect(),
        more,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperparameters_are_auto_or_numbers() {
        let h: SupervisedHyperparameters =
            serde_json::from_str(r#"{"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2}"#).unwrap();
        assert_eq!(h.n_epochs, Some(Auto::Is(3)));
        assert_eq!(h.batch_size, Some(Auto::Auto));
        assert_eq!(h.learning_rate_multiplier, Some(Auto::Is(2.0)));
        for bad in [
            r#"{"n_epochs": "many"}"#,
            r#"{"n_epochs": 2.5}"#,
            r#"{"n_epochs": true}"#,
            r#"{"n_epochs": 1e30}"#,
        ] {
            assert!(serde_json::from_str::<SupervisedHyperparameters>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_value(SupervisedHyperparameters {
                n_epochs: Auto::of(None),
                batch_size: Auto::of(Some(4)),
                learning_rate_multiplier: Auto::of(Some(0.5)),
            })
            .unwrap(),
            serde_json::json!({"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": 0.5})
        );
    }

    #[test]
    fn service_fields_become_openai_fields() {
        assert_eq!(rest_field("training_dataset_id", false), "training_file");
        assert_eq!(rest_field("base_model", false), "model");
        assert_eq!(rest_field("method.dpo.beta", false), "method.dpo.hyperparameters.beta");
        assert_eq!(
            rest_field("method.supervised.n_epochs", true),
            "hyperparameters.n_epochs"
        );
        assert_eq!(
            rest_field("method.reinforcement.grader.operation", false),
            "method.reinforcement.grader.operation"
        );
        assert_eq!(rest_field("suffix", false), "suffix");
    }

    #[test]
    fn event_ids_round_trip_within_their_job() {
        let id = event_id("job_x", 17);
        assert_eq!(event_seq("job_x", &id).unwrap(), 17);
        assert!(event_seq("job_y", &id).is_err());
        assert!(event_seq("job_x", "ftevent-job_x-many").is_err());
        assert!(event_seq("job_x", "17").is_err());
    }

    #[test]
    fn a_method_object_names_only_its_own_settings() {
        let m: Method = serde_json::from_str(r#"{"type": "dpo", "supervised": {}}"#).unwrap();
        let err = method(Some(m), None).unwrap_err();
        assert_eq!(err.body.param.as_deref(), Some("method.supervised"));
        let m: Method = serde_json::from_str(r#"{"type": "supervised"}"#).unwrap();
        let err = method(Some(m), Some(SupervisedHyperparameters::default())).unwrap_err();
        assert_eq!(err.body.param.as_deref(), Some("hyperparameters"));
    }
}
