//! Row <-> record mapping shared by the SQL backends. Nested values are
//! stored as JSON text so every backend keeps the same columns.

use std::str::FromStr;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::error::StoreError;
use crate::datasets::model::{DatasetRecord, DatasetState, UploadPartRecord, UploadRecord, UploadState};
use crate::datasets::report::{Purpose, PurposeChoice};

pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Our own plain data types always serialize.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

/// A write's result, with a unique-key violation as `Conflict(what)`.
pub fn unique_as_conflict<T>(result: Result<T, sqlx::Error>, what: impl FnOnce() -> String) -> Result<T, StoreError> {
    match result {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict(what())),
        other => Ok(other?),
    }
}

fn from_json<T: serde::de::DeserializeOwned>(id: &str, column: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        reason: format!("column {column}: {e}"),
    })
}

pub fn dataset_from_row<'r, R>(row: &'r R) -> Result<DatasetRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let purpose: String = row.try_get("purpose")?;
    let state: String = row.try_get("state")?;
    let lineage: Option<String> = row.try_get("lineage")?;
    let bytes: i64 = row.try_get("bytes")?;
    let metadata: String = row.try_get("metadata")?;
    let report: String = row.try_get("report")?;
    let stats: String = row.try_get("stats")?;
    Ok(DatasetRecord {
        project: row.try_get("project_id")?,
        filename: row.try_get("filename")?,
        display_name: row.try_get("display_name")?,
        purpose: Purpose::from_str(&purpose).map_err(|_| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("unknown purpose {purpose:?}"),
        })?,
        state: DatasetState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("unknown state {state:?}"),
        })?,
        bytes: bytes as u64,
        sha256: row.try_get("sha256")?,
        created_at: row.try_get("created_at")?,
        metadata: from_json(&id, "metadata", &metadata)?,
        report: from_json(&id, "report", &report)?,
        stats: from_json(&id, "stats", &stats)?,
        lineage: match lineage {
            Some(text) => Some(from_json(&id, "lineage", &text)?),
            None => None,
        },
        id,
    })
}

pub fn upload_from_row<'r, R>(row: &'r R) -> Result<UploadRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let purpose: String = row.try_get("purpose")?;
    let state: String = row.try_get("state")?;
    let bytes: i64 = row.try_get("bytes")?;
    Ok(UploadRecord {
        project: row.try_get("project_id")?,
        filename: row.try_get("filename")?,
        purpose: PurposeChoice::parse(&purpose).ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("unknown purpose {purpose:?}"),
        })?,
        bytes: bytes.max(0) as u64,
        mime_type: row.try_get("mime_type")?,
        state: UploadState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("unknown state {state:?}"),
        })?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        dataset_id: row.try_get("dataset_id")?,
        id,
    })
}

pub fn upload_part_from_row<'r, R>(row: &'r R) -> Result<UploadPartRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let bytes: i64 = row.try_get("bytes")?;
    Ok(UploadPartRecord {
        id: row.try_get("id")?,
        upload_id: row.try_get("upload_id")?,
        bytes: bytes.max(0) as u64,
        sha256: row.try_get("sha256")?,
        created_at: row.try_get("created_at")?,
    })
}

use crate::jobs::model::{
    CheckpointFile, CheckpointRecord, EventData, JobEvent, JobRecord, JobSpec, JobState, Level, Metrics,
};

pub fn level_str(level: Level) -> &'static str {
    match level {
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

fn parse_level(s: &str) -> Level {
    match s {
        "warn" => Level::Warn,
        "error" => Level::Error,
        _ => Level::Info,
    }
}

pub fn job_from_row<'r, R>(row: &'r R) -> Result<JobRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let spec: String = row.try_get("spec")?;
    let state: String = row.try_get("state")?;
    let error: Option<String> = row.try_get("error")?;
    let step: Option<i64> = row.try_get("fine_tuned_checkpoint_step")?;
    let trained: i64 = row.try_get("trained_tokens")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(JobRecord {
        project: row.try_get("project_id")?,
        spec: from_json::<JobSpec>(&id, "spec", &spec)?,
        state: JobState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("unknown job state {state:?}"),
        })?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        fine_tuned_model: row.try_get("fine_tuned_model")?,
        fine_tuned_checkpoint_step: step.map(|s| s as u64),
        stop_reason: row.try_get("stop_reason")?,
        error: match error {
            Some(text) => Some(from_json(&id, "error", &text)?),
            None => None,
        },
        trained_tokens: trained as u64,
        attempts: attempts as u32,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        id,
    })
}

pub fn event_from_row<'r, R>(row: &'r R) -> Result<JobEvent, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let job_id: String = row.try_get("job_id")?;
    let seq: i64 = row.try_get("seq")?;
    let level: String = row.try_get("level")?;
    let data: String = row.try_get("data")?;
    let attempt: i64 = row.try_get("attempt")?;
    Ok(JobEvent {
        data: from_json::<EventData>(&job_id, "data", &data)?,
        seq: seq as u64,
        attempt: attempt as u32,
        created_at: row.try_get("created_at")?,
        level: parse_level(&level),
        message: row.try_get("message")?,
        job_id,
    })
}

pub fn checkpoint_from_row<'r, R>(row: &'r R, files: Vec<CheckpointFile>) -> Result<CheckpointRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let step: i64 = row.try_get("step")?;
    let metrics: String = row.try_get("metrics")?;
    Ok(CheckpointRecord {
        job_id: row.try_get("job_id")?,
        step: step as u64,
        created_at: row.try_get("created_at")?,
        metrics: from_json::<Metrics>(&id, "metrics", &metrics)?,
        files,
        id,
    })
}

pub fn file_from_row<'r, R>(row: &'r R) -> Result<(String, CheckpointFile), StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let bytes: i64 = row.try_get("bytes")?;
    Ok((
        row.try_get("checkpoint_id")?,
        CheckpointFile {
            name: row.try_get("name")?,
            sha256: row.try_get("sha256")?,
            bytes: bytes as u64,
        },
    ))
}

pub fn model_from_row<'r, R>(row: &'r R) -> Result<ModelRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let step: Option<i64> = row.try_get("checkpoint_step")?;
    let id: String = row.try_get("id")?;
    let info: Option<String> = row.try_get("info")?;
    let info = match info {
        Some(text) => Some(from_json(&id, "info", &text)?),
        None => None,
    };
    let kind: String = row.try_get("kind")?;
    let kind = ModelKind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
        id: id.clone(),
        reason: format!("unknown model kind {kind:?}"),
    })?;
    Ok(ModelRecord {
        info,
        project: row.try_get("project_id")?,
        id,
        kind,
        base_model: row.try_get("base_model")?,
        job_id: row.try_get("job_id")?,
        checkpoint_step: step.map(|s| s as u64),
        created_at: row.try_get("created_at")?,
    })
}

use crate::evals::model::{EvalRecord, ItemStatus, OutputItemRecord, RunRecord, RunState};
use crate::models::model::{ModelKind, ModelRecord};

pub fn eval_from_row<'r, R>(row: &'r R) -> Result<EvalRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let spec: String = row.try_get("spec")?;
    Ok(EvalRecord {
        project: row.try_get("project_id")?,
        spec: from_json(&id, "spec", &spec)?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        id,
    })
}

/// A run's stored state (eval runs' and prompt optimisations').
fn run_state(id: &str, state: &str) -> Result<RunState, StoreError> {
    RunState::parse(state).ok_or_else(|| StoreError::Corrupt {
        id: id.to_string(),
        reason: format!("unknown run state {state:?}"),
    })
}

pub fn run_from_row<'r, R>(row: &'r R) -> Result<RunRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let spec: String = row.try_get("spec")?;
    let state: String = row.try_get("state")?;
    let progress: String = row.try_get("progress")?;
    let total: i64 = row.try_get("total")?;
    Ok(RunRecord {
        project: row.try_get("project_id")?,
        eval_id: row.try_get("eval_id")?,
        spec: from_json(&id, "spec", &spec)?,
        state: run_state(&id, &state)?,
        total: total as u64,
        progress: from_json(&id, "progress", &progress)?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        id,
    })
}

pub fn output_item_from_row<'r, R>(row: &'r R) -> Result<OutputItemRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let run_id: String = row.try_get("run_id")?;
    let index: i64 = row.try_get("item_index")?;
    let seq: i64 = row.try_get("seq")?;
    let status: String = row.try_get("status")?;
    let detail: String = row.try_get("detail")?;
    let progress: String = row.try_get("progress")?;
    let id = format!("{run_id}/{index}");
    Ok(OutputItemRecord {
        status: ItemStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("unknown item status {status:?}"),
        })?,
        detail: from_json(&id, "detail", &detail)?,
        progress: from_json(&id, "progress", &progress)?,
        index: index as u64,
        seq: seq as u64,
        created_at: row.try_get("created_at")?,
        run_id,
    })
}

pub(crate) fn grader_from_row<'r, R>(row: &'r R) -> Result<super::types::GraderRecord, StoreError>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let name: String = row.try_get("name")?;
    let text: String = row.try_get("grader")?;
    let grader = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        id: name.clone(),
        reason: format!("column grader: {e}"),
    })?;
    Ok(super::types::GraderRecord {
        project: row.try_get("project_id")?,
        name,
        grader,
        created_at: row.try_get("created_at")?,
    })
}

pub fn project_from_row<'r, R>(row: &'r R) -> Result<crate::auth::model::Project, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    Option<f64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let count = |column: &'static str| -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = row.try_get(column)?;
        Ok(v.map(|v| v.max(0) as u64))
    };
    Ok(crate::auth::model::Project {
        id: row.try_get("id")?,
        created_at: row.try_get("created_at")?,
        quotas: crate::auth::model::Quotas {
            max_running_jobs: count("max_running_jobs")?,
            max_queued_jobs: count("max_queued_jobs")?,
            max_dataset_bytes: count("max_dataset_bytes")?,
            requests_per_second: row.try_get("requests_per_second")?,
        },
    })
}

pub fn api_key_from_row<'r, R>(row: &'r R) -> Result<crate::auth::model::ApiKeyRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let role: String = row.try_get("role")?;
    let role = crate::auth::model::Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
        id: id.clone(),
        reason: format!("unknown role {role:?}"),
    })?;
    Ok(crate::auth::model::ApiKeyRecord {
        id,
        project: row.try_get("project_id")?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        role,
        secret_hash: row.try_get("secret_hash")?,
        redacted: row.try_get("redacted")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

pub fn audit_event_from_row<'r, R>(row: &'r R) -> Result<crate::auth::model::AuditEvent, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let seq: i64 = row.try_get("seq")?;
    Ok(crate::auth::model::AuditEvent {
        seq: seq as u64,
        at: row.try_get("at")?,
        key_id: row.try_get("key_id")?,
        project: row.try_get("project_id")?,
        method: row.try_get("method")?,
        outcome: row.try_get("outcome")?,
    })
}

pub fn completion_from_row<'r, R>(row: &'r R) -> Result<crate::completions::model::StoredCompletion, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let metadata: String = row.try_get("metadata")?;
    let request: String = row.try_get("request")?;
    let choices: String = row.try_get("choices")?;
    let prompt: i64 = row.try_get("prompt_tokens")?;
    let completion: i64 = row.try_get("completion_tokens")?;
    Ok(crate::completions::model::StoredCompletion {
        project: row.try_get("project_id")?,
        model: row.try_get("model")?,
        created_at: row.try_get("created_at")?,
        metadata: from_json(&id, "metadata", &metadata)?,
        request: from_json(&id, "request", &request)?,
        choices: from_json(&id, "choices", &choices)?,
        prompt_tokens: prompt.max(0) as u64,
        completion_tokens: completion.max(0) as u64,
        id,
    })
}

pub fn optimization_from_row<'r, R>(row: &'r R) -> Result<crate::optimize::model::OptimizationRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let spec: String = row.try_get("spec")?;
    let state: String = row.try_get("state")?;
    let progress: String = row.try_get("progress")?;
    Ok(crate::optimize::model::OptimizationRecord {
        project: row.try_get("project_id")?,
        spec: from_json(&id, "spec", &spec)?,
        state: run_state(&id, &state)?,
        search: from_json(&id, "progress", &progress)?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        id,
    })
}
