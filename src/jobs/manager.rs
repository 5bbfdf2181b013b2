//! The jobs domain service: create, read, control and watch jobs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Notify, broadcast::error::RecvError, mpsc};

use super::evaluator::CheckpointEvaluator;
use super::events::{EventBus, Live};
use super::model::*;
use super::spec::{self, CreateJob};
use super::state;
use super::trainer::{StopHandle, StopReason, Trainer};
use super::webhook::WebhookPolicy;
use crate::auth::model::Caller;
use crate::blobs::Blobs;
use crate::datasets::model::DatasetState;
use crate::datasets::report::Purpose;
use crate::error::{Error, FieldViolation, Result};
use crate::ids::{self, now_millis};
use crate::models::{ModelKind, Models};
use crate::paging;
use crate::secrets::SecretBox;
use crate::store::{JobQuery, Store, StoreError, Transition};

/// Marks ListJobs page tokens.
const PAGE_TOKEN: &str = "jp1.";

/// When a client refused by the queued-jobs quota should try again.
const QUEUE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct JobsConfig {
    pub max_concurrent: usize,
    /// How long a worker's claim on a job lasts without a heartbeat.
    pub lease: Duration,
    /// How often the scheduler looks for work it was not woken for.
    pub poll: Duration,
    /// This process's name in leases.
    pub worker_id: String,
    /// What job webhooks may reach.
    pub webhook: WebhookPolicy,
    /// Run only this job (a worker started for one job).
    pub only: Option<String>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 1,
            lease: Duration::from_secs(15),
            poll: Duration::from_secs(1),
            worker_id: ids::new_id("worker"),
            webhook: WebhookPolicy::default(),
            only: None,
        }
    }
}

/// What WatchJob streams: events in order, then the final job once.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved through a bounded channel, never stored
pub enum WatchItem {
    Event(JobEvent),
    End(JobRecord),
}

pub struct Jobs {
    /// Seals webhook secrets before they are stored.
    secrets: Arc<SecretBox>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: Blobs,
    pub(crate) bus: EventBus,
    pub(crate) models: Arc<Models>,
    pub(crate) trainer: Option<Arc<dyn Trainer>>,
    pub(crate) config: JobsConfig,
    pub(crate) wake: Notify,
    /// Stop handles of the jobs this process is running.
    pub(crate) running: Mutex<HashMap<String, StopHandle>>,
    pub(crate) http: reqwest::Client,
    /// Scores checkpoints for jobs with a `checkpoint_eval`.
    pub(crate) evaluator: Option<Arc<dyn CheckpointEvaluator>>,
}

fn check_job_id(id: &str) -> Result<()> {
    if ids::is_valid("job", id) {
        Ok(())
    } else {
        Err(Error::invalid(
            "id",
            format!("{id:?} is not a job id (job_ followed by 26 characters)"),
        ))
    }
}

/// A listing's start (`after`) that names no record the caller sees: a
/// violation on `after`, the same answer whether it exists elsewhere or not.
fn no_start(kind: &str, id: &str) -> Error {
    Error::invalid("after", format!("{id:?} is not a {kind} here to list after"))
}

impl Jobs {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Blobs,
        models: Arc<Models>,
        trainer: Option<Arc<dyn Trainer>>,
        secrets: Arc<SecretBox>,
        config: JobsConfig,
    ) -> Self {
        let http = super::webhook::client(config.webhook);
        Self {
            secrets,
            store,
            blobs,
            models,
            bus: EventBus::default(),
            trainer,
            config,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            http,
            evaluator: None,
        }
    }

    /// Lets jobs evaluate their checkpoints with evals.
    pub fn with_evaluator(mut self, evaluator: Arc<dyn CheckpointEvaluator>) -> Self {
        self.evaluator = Some(evaluator);
        self
    }

    pub fn has_trainer(&self) -> bool {
        self.trainer.is_some()
    }

    /// Writes a state change and, when it happened, tells watchers.
    pub(crate) async fn transition(
        &self,
        id: &str,
        to: JobState,
        patch: &JobPatch,
        event: NewEvent,
    ) -> Result<std::result::Result<JobRecord, Option<JobRecord>>> {
        match self
            .store
            .transition_job(id, state::allowed_from(to), to, patch, &event, now_millis())
            .await?
        {
            Transition::Done(job, event) => {
                self.bus.publish(&event);
                if to.is_terminal() {
                    self.on_terminal(&job);
                }
                Ok(Ok(job))
            }
            Transition::Conflict(current) => Ok(Err(current)),
        }
    }

    pub(crate) async fn log(&self, id: &str, level: Level, message: String) {
        let event = NewEvent {
            level,
            message,
            data: EventData::Message,
        };
        match self.store.append_event(id, &event, now_millis()).await {
            Ok(event) => self.bus.publish(&event),
            Err(e) => tracing::warn!(job = %id, error = %e, "could not record a job event"),
        }
    }

    async fn check_dataset(
        &self,
        caller: &Caller,
        field: &str,
        id: &str,
        purpose: Purpose,
        violations: &mut Vec<FieldViolation>,
    ) -> Result<Option<crate::datasets::model::DatasetRecord>> {
        if !ids::is_valid("ds", id) {
            violations.push(FieldViolation::new(field, format!("{id:?} is not a dataset id")));
            return Ok(None);
        }
        let Some(d) = self.store.get_dataset(id).await?.filter(|d| caller.sees(&d.project)) else {
            return Err(Error::not_found("dataset", id));
        };
        if d.state != DatasetState::Ready {
            return Err(Error::precondition(
                "DATASET_STATE",
                id,
                format!("dataset {id} failed validation and cannot be used"),
            ));
        }
        if d.purpose != purpose {
            violations.push(FieldViolation::new(
                field,
                format!(
                    "dataset {id} was uploaded for {}, but this method needs {} data",
                    d.purpose.as_str(),
                    purpose.as_str()
                ),
            ));
        }
        Ok(Some(d))
    }

    /// A job on a fine-tuned model continues its training: its base is the
    /// model's base, training starts from the model's adapter (for DPO, the
    /// frozen reference too), and its LoRA shape is the adapter's: taken
    /// from the model's job when the request gives none, refused when it
    /// gives another.
    async fn continue_from(
        &self,
        caller: &Caller,
        spec: &mut JobSpec,
        lora_given: bool,
        violations: &mut Vec<FieldViolation>,
    ) -> Result<()> {
        let model = self.models.get(caller, &spec.base_model).await?;
        let parent = match &model.job_id {
            Some(id) => self.store.get_job(id).await?,
            None => None,
        };
        let Some(parent) = parent else {
            violations.push(FieldViolation::new(
                "base_model",
                format!(
                    "the job that made {} is gone, so its adapter's settings are unknown",
                    model.id
                ),
            ));
            return Ok(());
        };
        let (mine, theirs) = (&spec.lora, &parent.spec.lora);
        let same_shape =
            mine.rank == theirs.rank && mine.alpha == theirs.alpha && mine.target_modules == theirs.target_modules;
        if !lora_given {
            spec.lora = Lora {
                dropout: spec.lora.dropout,
                ..theirs.clone()
            };
        } else if !same_shape {
            violations.push(FieldViolation::new(
                "lora",
                format!(
                    "a job that continues from {} keeps its adapter's shape: rank {}, alpha {}, modules {}",
                    model.id,
                    theirs.rank,
                    theirs.alpha,
                    theirs.target_modules.join(",")
                ),
            ));
        }
        spec.start_from = Some(model.id.clone());
        spec.base_model = model.base_model;
        Ok(())
    }

    pub async fn create(&self, caller: &Caller, req: CreateJob) -> Result<JobRecord> {
        let Some(trainer) = &self.trainer else {
            return Err(Error::precondition(
                "TRAINER",
                "server",
                "no trainer is configured on this server, so it cannot run fine-tuning jobs",
            ));
        };
        let (mut spec, mut violations) = spec::build(&req);
        violations.extend(spec::check_webhook(&spec, self.config.webhook));
        let purpose = match spec.method.kind {
            MethodKind::Supervised => Purpose::Sft,
            MethodKind::Dpo => Purpose::Dpo,
            MethodKind::Reinforcement => Purpose::Rft,
        };
        // An empty id is already reported as required.
        let training = match spec.training_dataset_id.as_str() {
            "" => None,
            id => {
                self.check_dataset(caller, "training_dataset_id", id, purpose, &mut violations)
                    .await?
            }
        };
        let validation = match &spec.validation_dataset_id {
            Some(id) => {
                self.check_dataset(caller, "validation_dataset_id", id, purpose, &mut violations)
                    .await?
            }
            None => None,
        };
        if let Err(problems) = trainer.check(&spec) {
            violations.extend(problems);
        }
        if spec.checkpoint_eval.is_some() {
            match &self.evaluator {
                None => violations.push(FieldViolation::new(
                    "checkpoint_eval",
                    "this server runs no evals, so it cannot evaluate checkpoints",
                )),
                Some(_) if spec.validation_dataset_id.is_none() => violations.push(FieldViolation::new(
                    "checkpoint_eval",
                    "checkpoint evals run on the validation data: give a validation dataset",
                )),
                Some(evaluator) => violations.extend(evaluator.check(caller, &spec).await),
            }
        }
        if trainer.resolves_models() && !spec.base_model.trim().is_empty() {
            match self.models.kind_of(caller, &spec.base_model).await? {
                Some(ModelKind::Base) => {}
                Some(ModelKind::FineTuned) => {
                    self.continue_from(caller, &mut spec, req.lora.is_some(), &mut violations)
                        .await?
                }
                None => violations.push(FieldViolation::new(
                    "base_model",
                    format!("no model named {:?} is registered", spec.base_model),
                )),
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }

        // Keys are unique per project: the stored key is qualified by it
        // (project ids have no '/'), so another project's same key neither
        // collides nor returns that project's job.
        let key = req
            .idempotency_key
            .filter(|k| !k.is_empty())
            .map(|k| format!("{}/{k}", caller.project));
        // The webhook's signing secret is stored sealed (`secrets`).
        if let Some(hook) = &mut spec.webhook
            && !hook.secret.is_empty()
        {
            hook.secret = self.secrets.seal(&hook.secret);
        }
        let job = JobRecord::new(ids::new_id("job"), caller.project.clone(), spec, key, now_millis());
        let created = NewEvent::state(
            JobState::ValidatingFiles,
            Level::Info,
            format!("created fine-tuning job {}", job.id),
        );
        let (job, fresh) = self.store.insert_job(&job, &created).await.map_err(|e| match e {
            StoreError::OverQuota { project, limit, .. } => Error::Overloaded {
                message: format!(
                    "project {project} has {limit} jobs waiting, its max_queued_jobs quota; \
                     retry when one has started, or ask an admin to raise the quota"
                ),
                retry_after: QUEUE_RETRY,
            },
            other => Error::dataset_gone(other),
        })?;
        if !fresh {
            return Ok(job);
        }
        if let (Some(t), Some(v)) = (&training, &validation)
            && t.sha256 == v.sha256
        {
            self.log(
                &job.id,
                Level::Warn,
                "the training and validation files are identical; validation metrics will not show overfitting".into(),
            )
            .await;
        }
        let rows = training.as_ref().map(|t| t.report.valid_rows).unwrap_or(0);
        let queued = NewEvent::state(
            JobState::Queued,
            Level::Info,
            format!("validated files ({rows} training examples); queued"),
        );
        let job = match self
            .transition(&job.id, JobState::Queued, &JobPatch::default(), queued)
            .await?
        {
            Ok(job) => job,
            // Cancelled in between: that state stands.
            Err(current) => current.ok_or_else(|| Error::not_found("job", &job.id))?,
        };
        self.wake.notify_one();
        Ok(job)
    }

    /// The job, if it is the caller's project's (NOT_FOUND otherwise).
    /// The job's state, for this process's own workers (no caller).
    pub async fn state_of(&self, id: &str) -> Result<Option<JobState>> {
        Ok(self.store.get_job(id).await?.map(|job| job.state))
    }

    pub async fn get(&self, caller: &Caller, id: &str) -> Result<JobRecord> {
        check_job_id(id)?;
        self.store
            .get_job(id)
            .await?
            .filter(|j| caller.sees(&j.project))
            .ok_or_else(|| Error::not_found("job", id))
    }

    /// The caller's jobs, newest first, from a page token.
    pub async fn list(
        &self,
        caller: &Caller,
        mut query: JobQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<JobRecord>, String)> {
        let limit = paging::limit(page_size)?;
        query.after = paging::decode_cursor(PAGE_TOKEN, page_token, "ListJobs")?;
        let jobs = self.list_rows(caller, query, limit).await?;
        Ok(paging::split(jobs, limit, |j| {
            paging::encode_cursor(PAGE_TOKEN, j.created_at, &j.id)
        }))
    }

    /// The caller's jobs, newest first, after the job `after` (a door that
    /// pages by the last id it was given: OpenAI's `after`), and whether
    /// more follow. An id the caller cannot see is refused on `after`.
    pub async fn list_after(
        &self,
        caller: &Caller,
        mut query: JobQuery,
        after: Option<&str>,
        page_size: i32,
    ) -> Result<(Vec<JobRecord>, bool)> {
        let limit = paging::limit(page_size)?;
        if let Some(id) = after {
            let job = self.get(caller, id).await.map_err(|e| match e {
                Error::NotFound { .. } | Error::InvalidArgument(_) => no_start("job", id),
                other => other,
            })?;
            query.after = Some(crate::store::Cursor {
                created_at: job.created_at,
                id: job.id,
            });
        }
        let jobs = self.list_rows(caller, query, limit).await?;
        Ok(paging::cut(jobs, limit))
    }

    /// Up to `limit + 1` of the caller's jobs matching `query`.
    async fn list_rows(&self, caller: &Caller, mut query: JobQuery, limit: usize) -> Result<Vec<JobRecord>> {
        query.project = Some(caller.project.clone());
        query.limit = limit + 1;
        Ok(self.store.list_jobs(&query).await?)
    }

    async fn control(
        &self,
        caller: &Caller,
        id: &str,
        to: JobState,
        action: &str,
        reason: StopReason,
        message: String,
    ) -> Result<JobRecord> {
        let job = self.get(caller, id).await?;
        if !state::can(job.state, to) {
            return Err(Error::precondition(
                "JOB_STATE",
                id,
                state::refusal(id, job.state, action),
            ));
        }
        let patch = JobPatch {
            finished_at: to.is_terminal().then(now_millis),
            ..Default::default()
        };
        match self
            .transition(id, to, &patch, NewEvent::state(to, Level::Info, message))
            .await?
        {
            Ok(job) => {
                // The runner stops at its next step boundary; a runner on
                // another replica learns it from its next heartbeat.
                if let Some(handle) = self.running.lock().ok().and_then(|r| r.get(id).cloned()) {
                    handle.stop(reason);
                }
                Ok(job)
            }
            Err(current) => {
                let state = current.map(|j| j.state).unwrap_or(job.state);
                Err(Error::precondition("JOB_STATE", id, state::refusal(id, state, action)))
            }
        }
    }

    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<JobRecord> {
        self.control(
            caller,
            id,
            JobState::Cancelled,
            "cancelled",
            StopReason::Cancelled,
            "cancelled by request".into(),
        )
        .await
    }

    pub async fn pause(&self, caller: &Caller, id: &str) -> Result<JobRecord> {
        self.control(
            caller,
            id,
            JobState::Paused,
            "paused",
            StopReason::Paused,
            "paused by request; resume continues from the last checkpoint".into(),
        )
        .await
    }

    pub async fn resume(&self, caller: &Caller, id: &str) -> Result<JobRecord> {
        let job = self.get(caller, id).await?;
        if job.state != JobState::Paused {
            return Err(Error::precondition(
                "JOB_STATE",
                id,
                state::refusal(id, job.state, "resumed"),
            ));
        }
        let job = self
            .control(
                caller,
                id,
                JobState::Queued,
                "resumed",
                StopReason::Paused,
                "resumed; queued to continue from the last checkpoint".into(),
            )
            .await?;
        self.wake.notify_one();
        Ok(job)
    }

    pub async fn events(
        &self,
        caller: &Caller,
        id: &str,
        after_seq: u64,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<JobEvent>, String)> {
        self.get(caller, id).await?;
        let limit = paging::limit(page_size)?;
        let after = if page_token.is_empty() {
            after_seq
        } else {
            page_token
                .strip_prefix("ev1.")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    Error::invalid("page_token", "not a page token from a previous ListJobEvents response")
                })?
        };
        let events = self.store.list_events(id, after, limit + 1).await?;
        Ok(paging::split(events, limit, |e| format!("ev1.{}", e.seq)))
    }

    pub async fn checkpoints(
        &self,
        caller: &Caller,
        id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<CheckpointRecord>, String)> {
        self.get(caller, id).await?;
        let limit = paging::limit(page_size)?;
        let before = if page_token.is_empty() {
            None
        } else {
            Some(
                page_token
                    .strip_prefix("ck1.")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        Error::invalid(
                            "page_token",
                            "not a page token from a previous ListCheckpoints response",
                        )
                    })?,
            )
        };
        let list = self.store.list_checkpoints(id, before, limit + 1).await?;
        Ok(paging::split(list, limit, |c| format!("ck1.{}", c.step)))
    }

    /// The job's events newest first, before sequence number `before_seq`
    /// (from the latest when None), and whether older ones follow.
    pub async fn events_newest_first(
        &self,
        caller: &Caller,
        id: &str,
        before_seq: Option<u64>,
        page_size: i32,
    ) -> Result<(Vec<JobEvent>, bool)> {
        self.get(caller, id).await?;
        let limit = paging::limit(page_size)?;
        let events = self.store.list_events_before(id, before_seq, limit + 1).await?;
        Ok(paging::cut(events, limit))
    }

    /// The job's checkpoints, latest step first, after the checkpoint
    /// `after` (a door that pages by the last id it was given), and whether
    /// more follow. An id that is not one of the job's checkpoints is
    /// refused on `after`.
    pub async fn checkpoints_after(
        &self,
        caller: &Caller,
        id: &str,
        after: Option<&str>,
        page_size: i32,
    ) -> Result<(Vec<CheckpointRecord>, bool)> {
        self.get(caller, id).await?;
        let limit = paging::limit(page_size)?;
        let before = match after {
            None => None,
            Some(checkpoint) => Some(
                self.store
                    .checkpoint_step(id, checkpoint)
                    .await?
                    .ok_or_else(|| no_start("checkpoint of this job", checkpoint))?,
            ),
        };
        let list = self.store.list_checkpoints(id, before, limit + 1).await?;
        Ok(paging::cut(list, limit))
    }

    /// Events after `after_seq`, then live ones, then the final job. The
    /// stream is bounded: a client that stops reading holds only its own
    /// small buffer and catches up from the store when it reads again.
    pub async fn watch(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        after_seq: u64,
    ) -> Result<mpsc::Receiver<Result<WatchItem>>> {
        self.get(caller, id).await?;
        let (tx, rx) = mpsc::channel(32);
        let jobs = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = jobs.feed_watcher(&id, after_seq, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    async fn feed_watcher(&self, id: &str, after_seq: u64, tx: &mpsc::Sender<Result<WatchItem>>) -> Result<()> {
        // Subscribe before reading the backlog so nothing falls between.
        let mut live = self.bus.subscribe(id);
        let mut last = after_seq;
        // Whether the job had ended when the log was last read to its end.
        let mut ended = None;
        loop {
            loop {
                let page = self.store.list_events(id, last, 256).await?;
                let n = page.len();
                for event in page {
                    last = event.seq;
                    if tx.send(Ok(WatchItem::Event(event))).await.is_err() {
                        return Ok(());
                    }
                }
                if n < 256 {
                    break;
                }
            }
            if let Some(job) = ended {
                let _ = tx.send(Ok(WatchItem::End(job))).await;
                return Ok(());
            }
            let job = self
                .store
                .get_job(id)
                .await?
                .ok_or_else(|| Error::not_found("job", id))?;
            // The job may have ended (appending its last events) after the
            // read above: once it has ended, one more read is the last.
            if job.state.is_terminal() {
                ended = Some(job);
                continue;
            }
            // Live: next event in order, or back to the store when behind,
            // when the bus lagged or another process appended, and now and
            // then in case a wake-up from another process was lost.
            loop {
                match tokio::time::timeout(self.config.poll, live.recv()).await {
                    Ok(Ok(Live::Event(event))) if event.seq <= last => continue,
                    Ok(Ok(Live::Event(event))) if event.seq == last + 1 => {
                        last = event.seq;
                        let terminal = matches!(event.data, EventData::State { state } if state.is_terminal());
                        if tx.send(Ok(WatchItem::Event(*event))).await.is_err() {
                            return Ok(());
                        }
                        if terminal {
                            break;
                        }
                    }
                    Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) | Err(_) => break,
                    Ok(Err(RecvError::Closed)) => {
                        live = self.bus.subscribe(id);
                        break;
                    }
                }
            }
        }
    }

    /// Terminal states notify the job's webhook, if any.
    fn on_terminal(&self, job: &JobRecord) {
        let Some(mut hook) = job.spec.webhook.clone() else {
            return;
        };
        let opened = self.secrets.open(&hook.secret);
        let payload = serde_json::json!({
            "object": "event",
            "type": format!("fine_tuning.job.{}", job.state.as_str()),
            "created_at": now_millis() / 1000,
            "data": {
                "id": job.id,
                "status": job.state.as_str(),
                "fine_tuned_model": job.fine_tuned_model,
                "error": job.error.as_ref().map(|e| serde_json::json!({"code": e.code, "message": e.message})),
            },
        });
        let http = self.http.clone();
        let policy = self.config.webhook;
        let store = self.store.clone();
        let job_id = job.id.clone();
        tokio::spawn(async move {
            let delivered = match opened {
                Ok(secret) => {
                    hook.secret = secret;
                    super::webhook::deliver(&http, policy, &hook, &payload, &job_id).await
                }
                Err(e) => Err(format!("not delivered: {e}")),
            };
            if let Err(why) = delivered {
                // After the terminal event: watchers have had their end, and
                // the job's event list says what became of its webhook.
                let event = NewEvent {
                    level: Level::Warn,
                    message: format!("webhook {why}"),
                    data: EventData::Message,
                };
                if let Err(e) = store.append_event(&job_id, &event, now_millis()).await {
                    tracing::warn!(job = %job_id, error = %e, "could not record a job event");
                }
            }
        });
    }
}
