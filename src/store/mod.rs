//! Persistence of Lathe's records behind one trait.
//!
//! Architecture invariant: the store knows rows, not rules. It never decides
//! whether an operation is allowed (that is the domain's job); it only makes
//! each call atomic. Every backend passes the same suite (`store::suite`).

// Plain data and orchestration: nothing here needs unsafe, so nothing may use it.
#![forbid(unsafe_code)]

#[macro_use]
mod graders_sql;
#[macro_use]
mod datasets_sql;
#[macro_use]
mod jobs_sql;
#[macro_use]
mod evals_sql;
#[macro_use]
pub(crate) mod leases;
#[macro_use]
mod models_sql;
mod postgres;
mod query;
pub(crate) mod rows;
mod sqlite;

#[cfg(test)]
pub(crate) mod suite;

use async_trait::async_trait;

pub use self::leases::{LeaseChange, LeaseKind, LeaseStore, Leased};
pub use self::postgres::PostgresStore;
pub use self::query::{Cursor, DatasetQuery, JobQuery};
pub use self::sqlite::SqliteStore;
use crate::datasets::model::DatasetRecord;
use crate::evals::model::{EvalRecord, ItemStatus, OutputItemRecord, RunRecord, RunState};
use crate::jobs::model::{CheckpointRecord, JobEvent, JobPatch, JobRecord, JobState, Metrics, NewEvent};
use crate::models::model::{ModelKind, ModelRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("record {0} already exists")]
    Conflict(String),
    /// A dataset cannot be deleted: an unfinished job or eval run uses it.
    #[error("dataset {0} is in use")]
    InUse(String),
    /// A new job or eval run names a dataset that is gone or not ready
    /// (deleted by a concurrent request after the caller looked).
    #[error("dataset {0} is gone or not ready")]
    Gone(String),
    /// A change of state of work with an event log came without its event
    /// (a caller's bug); nothing was written.
    #[error("the state change of {0} needs an event")]
    EventMissing(String),
    #[error("stored record {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("unsupported database url {0:?}: expected sqlite://PATH, sqlite::memory: or postgres://...")]
    UnsupportedUrl(String),
}

#[async_trait]
pub trait DatasetStore: Send + Sync + 'static {
    /// Inserts a new dataset; `Conflict` if the id exists.
    async fn insert_dataset(&self, dataset: &DatasetRecord) -> Result<(), StoreError>;
    async fn get_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError>;
    /// Newest first, strictly after `query.after`, at most `query.limit` rows.
    async fn list_datasets(&self, query: &DatasetQuery) -> Result<Vec<DatasetRecord>, StoreError>;
    /// Removes the dataset and returns it, or None when there was none.
    async fn delete_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError>;
    /// Whether any dataset or checkpoint still points at this blob.
    async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError>;
    /// Every blob address some record points at, for garbage collection.
    async fn blobs_in_use(&self) -> Result<Vec<String>, StoreError>;
}

/// The outcome of a compare-and-set state change.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived return value
pub enum Transition {
    Done(JobRecord, JobEvent),
    /// The job was not in an allowed state (or, None, does not exist).
    Conflict(Option<JobRecord>),
}

/// Jobs, their event log, checkpoints and fine-tuned models. Every call
/// that changes a job appends its event in the same transaction, with the
/// next per-job sequence number, so the log has no gaps and no repeats.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts a job and its first event. With an idempotency key that is
    /// already used, returns the existing job and `false` instead.
    async fn insert_job(&self, job: &JobRecord, event: &NewEvent) -> Result<(JobRecord, bool), StoreError>;
    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError>;
    /// Moves the job to `to` if it is in one of `from`, applying `patch`.
    async fn transition_job(
        &self,
        id: &str,
        from: &[JobState],
        to: JobState,
        patch: &JobPatch,
        event: &NewEvent,
        now: i64,
    ) -> Result<Transition, StoreError>;
    async fn append_event(&self, id: &str, event: &NewEvent, now: i64) -> Result<JobEvent, StoreError>;
    async fn list_events(&self, id: &str, after_seq: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError>;
    /// Records a checkpoint (files already stored as blobs) if `worker`
    /// holds the job's lease; None otherwise.
    async fn insert_checkpoint(
        &self,
        checkpoint: &CheckpointRecord,
        worker: &str,
        event: &NewEvent,
    ) -> Result<Option<JobEvent>, StoreError>;
    /// Newest first, with step below `before_step`.
    async fn list_checkpoints(
        &self,
        job_id: &str,
        before_step: Option<u64>,
        limit: usize,
    ) -> Result<Vec<CheckpointRecord>, StoreError>;
    /// Replaces the metrics of the job's checkpoint at `step` (a checkpoint
    /// eval adds its pass rate after the checkpoint is saved); false if
    /// there is no such checkpoint.
    async fn update_checkpoint_metrics(&self, job_id: &str, step: u64, metrics: &Metrics) -> Result<bool, StoreError>;
    /// Whether a job or an eval run that is not finished uses this dataset.
    async fn dataset_in_use(&self, dataset_id: &str) -> Result<bool, StoreError>;
}

/// Base and fine-tuned models (`crate::models`).
#[async_trait]
pub trait ModelStore: Send + Sync + 'static {
    /// Inserts or updates a fine-tuned model (a job may re-record it).
    async fn insert_model(&self, model: &ModelRecord) -> Result<(), StoreError>;
    /// Inserts a new model; `Conflict` if the name is taken.
    async fn register_model(&self, model: &ModelRecord) -> Result<(), StoreError>;
    async fn get_model(&self, id: &str) -> Result<Option<ModelRecord>, StoreError>;
    /// By id, strictly after `after`, optionally only one kind.
    async fn list_models(
        &self,
        kind: Option<ModelKind>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ModelRecord>, StoreError>;
    /// Ids of fine-tuned models built on `base_model`, at most `limit`.
    async fn fine_tuned_models_of(&self, base_model: &str, limit: usize) -> Result<Vec<String>, StoreError>;
    /// Removes the model and its job's checkpoint files (the checkpoint
    /// records stay as history); returns the blobs that were referenced.
    async fn delete_model(&self, id: &str) -> Result<Option<(ModelRecord, Vec<String>)>, StoreError>;
}

/// A grader saved under a name, as the user wrote it (validated before saving).
#[derive(Clone, Debug, PartialEq)]
pub struct GraderRecord {
    pub name: String,
    pub grader: serde_json::Value,
    pub created_at: i64,
}

/// Saved graders, keyed by their unique name.
#[async_trait]
pub trait GraderStore: Send + Sync + 'static {
    /// Inserts a new grader; `Conflict` if the name is taken.
    async fn insert_grader(&self, grader: &GraderRecord) -> Result<(), StoreError>;
    async fn get_grader(&self, name: &str) -> Result<Option<GraderRecord>, StoreError>;
    /// In name order, strictly after `after_name`, at most `limit` rows.
    async fn list_graders(&self, after_name: Option<&str>, limit: usize) -> Result<Vec<GraderRecord>, StoreError>;
}

pub(crate) fn grader_from_row<'r, R>(row: &'r R) -> Result<GraderRecord, StoreError>
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
    Ok(GraderRecord {
        name,
        grader,
        created_at: row.try_get("created_at")?,
    })
}

/// Evals, their runs and the runs' output items. A run is claimed with a
/// lease like a job (`LeaseStore`); its output items are recorded one by
/// one, each with the next per-run sequence number and the run's tallies so
/// far, in one transaction, so progress has no gaps and survives restarts.
#[async_trait]
pub trait EvalStore: Send + Sync + 'static {
    /// Inserts a new eval; `Conflict` if the id exists.
    async fn insert_eval(&self, eval: &EvalRecord) -> Result<(), StoreError>;
    async fn get_eval(&self, id: &str) -> Result<Option<EvalRecord>, StoreError>;
    /// Inserts a new run; `Conflict` if the id exists.
    async fn insert_eval_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    async fn get_eval_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// An eval's runs, newest first, strictly after `after`.
    async fn list_eval_runs(
        &self,
        eval_id: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError>;
    /// Records finished items of one run in one transaction (their `seq`s are
    /// ignored; they get consecutive ones in slice order) and the run's
    /// tallies as of the last one, if `worker` holds the lease of the run
    /// and it is in progress; returns the last item's sequence number, or
    /// None otherwise (and records nothing). `Conflict`, recording nothing,
    /// if any item is already recorded. An empty slice records nothing and
    /// returns None.
    async fn record_output_items(&self, items: &[OutputItemRecord], worker: &str) -> Result<Option<u64>, StoreError>;
    /// [`EvalStore::record_output_items`] for one item.
    async fn record_output_item(&self, item: &OutputItemRecord, worker: &str) -> Result<Option<u64>, StoreError> {
        self.record_output_items(std::slice::from_ref(item), worker).await
    }
    /// Moves the run to `to` if it is in one of `from`, dropping its lease;
    /// None when it was not (or does not exist).
    async fn finish_eval_run(
        &self,
        id: &str,
        from: &[RunState],
        to: RunState,
        error: Option<&str>,
        finished_at: Option<i64>,
    ) -> Result<Option<RunRecord>, StoreError>;
    /// A run's items in dataset order after `after_index`, optionally of one status.
    async fn list_output_items(
        &self,
        run_id: &str,
        status: Option<ItemStatus>,
        after_index: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutputItemRecord>, StoreError>;
    /// A run's items in recording (sequence) order after `after_seq`.
    async fn list_output_items_by_seq(
        &self,
        run_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<OutputItemRecord>, StoreError>;
}

pub trait Store: DatasetStore + JobStore + ModelStore + GraderStore + EvalStore + LeaseStore {}

impl<T: DatasetStore + JobStore + ModelStore + GraderStore + EvalStore + LeaseStore> Store for T {}

/// Opens the backend named by `url`, running its migrations.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        return Ok(std::sync::Arc::new(SqliteStore::open(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(PostgresStore::open(url).await?));
    }
    Err(StoreError::UnsupportedUrl(url.to_string()))
}
