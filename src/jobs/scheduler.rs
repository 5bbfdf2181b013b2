//! The scheduler: fine-tuning jobs as leased work (`crate::lease`). The
//! lease machine claims queued jobs, keeps their leases alive, re-queues
//! jobs whose worker vanished and, on shutdown, stops its runners at a step
//! boundary and hands their jobs back to the queue; this module says what
//! those changes mean for a job (its events, what a renewal's state means)
//! and runs each claimed job on the `Trainer`.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::manager::Jobs;
use super::model::*;
use super::trainer::{Reporter, StopHandle, StopReason, TrainContext, TrainError, TrainOutcome, Trainer};
use crate::error::Error;
use crate::ids::now_millis;
use crate::lease::{self, Change, Ended, LeaseConfig, LeasedWork, Renewal, StopSignal};
use crate::models::model::{checkpoint_model_id, fine_tuned_model_id};
use crate::outage::Notice;
use crate::store::{LeaseChange, LeaseKind, LeaseStore, Leased};
use crate::telemetry;

/// Starts the scheduler; it returns after `shutdown` once its runners
/// have stopped. Without a trainer there is nothing to schedule.
pub fn spawn(jobs: Arc<Jobs>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let Some(trainer) = jobs.trainer.clone() else {
        return tokio::spawn(async {});
    };
    let config = LeaseConfig {
        worker_id: jobs.config.worker_id.clone(),
        lease: jobs.config.lease,
        poll: jobs.config.poll,
        max_concurrent: jobs.config.max_concurrent,
        only: jobs.config.only.clone(),
    };
    lease::spawn(Arc::new(Training { jobs, trainer }), config, shutdown)
}

/// Re-queues the jobs whose worker's lease ran out, with the event the
/// lease machine writes, for a process that dispatches jobs to workers
/// elsewhere instead of running the machine (`jobs::ray`).
pub(crate) async fn requeue_expired(jobs: &Arc<Jobs>) -> crate::error::Result<()> {
    let Some(trainer) = jobs.trainer.clone() else {
        return Ok(());
    };
    lease::requeue_expired(&Training {
        jobs: jobs.clone(),
        trainer,
    })
    .await
}

/// Jobs as leased work: each claimed job trains on the trainer.
struct Training {
    jobs: Arc<Jobs>,
    trainer: Arc<dyn Trainer>,
}

impl StopSignal for StopHandle {
    type Reason = StopReason;

    fn stop(&self, reason: StopReason) {
        StopHandle::stop(self, reason);
    }

    fn shutdown(&self) {
        StopHandle::stop(self, StopReason::Shutdown);
    }
}

#[async_trait]
impl LeasedWork for Training {
    const KIND: LeaseKind = LeaseKind::Job;
    type Item = JobRecord;
    type Stop = StopHandle;

    fn leases(&self) -> &dyn LeaseStore {
        &*self.jobs.store
    }

    fn wake(&self) -> &Notify {
        &self.jobs.wake
    }

    fn span(&self, id: &str) -> tracing::Span {
        tracing::info_span!("job", job_id = %id)
    }

    async fn event(&self, change: Change<'_>) -> crate::error::Result<Option<NewEvent>> {
        let event = match change {
            Change::Claim { worker } => {
                NewEvent::state(JobState::Running, Level::Info, format!("running on worker {worker}"))
            }
            Change::Expired { id } => {
                let message = match self.latest_checkpoint(id).await? {
                    Some(step) => format!(
                        "the worker running this job stopped responding; re-queued to resume from checkpoint step {step}"
                    ),
                    None => {
                        "the worker running this job stopped responding; re-queued to start again (no checkpoint yet)"
                            .into()
                    }
                };
                NewEvent::state(JobState::Queued, Level::Warn, message)
            }
            Change::Released { id } => {
                let message = match self.latest_checkpoint(id).await.ok().flatten() {
                    Some(step) => format!("server shutting down; re-queued to resume from checkpoint step {step}"),
                    None => "server shutting down; re-queued".into(),
                };
                NewEvent::state(JobState::Queued, Level::Warn, message)
            }
        };
        Ok(Some(event))
    }

    fn changed(&self, change: &LeaseChange) {
        if let Some(event) = &change.event {
            self.jobs.bus.publish(event);
        }
    }

    fn claimed(&self, item: Leased) -> crate::error::Result<JobRecord> {
        let job = item.into_job()?;
        tracing::info!(job = %job.id, attempt = job.attempts, "claimed job");
        Ok(job)
    }

    fn renewed(&self, item: Option<Leased>) -> Renewal<StopReason> {
        match item.and_then(|item| item.into_job().ok()).map(|job| job.state) {
            Some(JobState::Running) => Renewal::Held,
            Some(JobState::Cancelled) => Renewal::Stop(StopReason::Cancelled),
            Some(JobState::Paused) => Renewal::Stop(StopReason::Paused),
            _ => Renewal::Lost(StopReason::LeaseLost),
        }
    }

    async fn run(self: Arc<Self>, job: JobRecord, stop: StopHandle) -> Ended {
        run_job(self.jobs.clone(), self.trainer.clone(), job, stop).await
    }
}

impl Training {
    async fn latest_checkpoint(&self, id: &str) -> crate::error::Result<Option<u64>> {
        let latest = self.jobs.store.list_checkpoints(id, None, 1).await?;
        Ok(latest.first().map(|c| c.step))
    }
}

/// Early stopping on the validation metric seen at checkpoints.
#[derive(Default)]
struct Early {
    best: Option<(f64, u64)>,
    bad: u32,
}

/// The validation metric early stopping and best-checkpoint selection watch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Watched {
    ValidLoss,
    ValidReward,
    EvalPassRate,
}

impl Watched {
    fn of(spec: &JobSpec) -> Self {
        if spec.checkpoint_eval.is_some() {
            Watched::EvalPassRate
        } else if spec.method.kind == MethodKind::Reinforcement {
            Watched::ValidReward
        } else {
            Watched::ValidLoss
        }
    }

    fn maximize(self) -> bool {
        self != Watched::ValidLoss
    }

    fn name(self) -> &'static str {
        match self {
            Watched::ValidLoss => "valid_loss",
            Watched::ValidReward => "valid_reward_mean",
            Watched::EvalPassRate => "eval_pass_rate",
        }
    }

    fn value(self, m: &Metrics) -> Option<f64> {
        match self {
            Watched::ValidLoss => m.valid_loss,
            Watched::ValidReward => m.valid_reward_mean,
            Watched::EvalPassRate => m.eval_pass_rate,
        }
    }
}

/// Runs a storage call of a job's runner (`$op`, a future made again for
/// each try) through `ride_out!`: training waits out an outage of the
/// database or the object store until the call works or the job is
/// stopped, and the job's log says what happened (`Told`).
macro_rules! persist {
    ($reporter:expr, $what:expr, $op:expr) => {
        $crate::ride_out!(
            $reporter.handle.stopped(),
            &Told {
                reporter: $reporter,
                what: $what,
            },
            $op
        )
    };
}

/// Writes an outage a runner met into its job's log: when it began (lost
/// when the database is the one out of reach) and when it ended.
struct Told<'a> {
    reporter: &'a JobReporter,
    /// What the runner was doing, as "while ..." says it.
    what: &'a str,
}

#[async_trait]
impl crate::outage::Listener for Told<'_> {
    async fn heard(&self, notice: Notice) {
        let what = self.what;
        let (level, message) = match notice {
            Notice::Began { dependency, .. } => (
                Level::Warn,
                format!(
                    "{} cannot be reached while {what}; training waits and tries again",
                    dependency.words()
                ),
            ),
            Notice::Ended { dependency, waited } => (
                Level::Info,
                format!(
                    "{} could not be reached for {} s while {what}; training waited and goes on",
                    dependency.words(),
                    waited.as_secs().max(1)
                ),
            ),
        };
        let event = NewEvent {
            level,
            message,
            data: EventData::Message,
        };
        // Once: the dependency out of reach may be the database.
        self.reporter.append(event, false).await;
    }
}

struct JobReporter {
    jobs: Arc<Jobs>,
    job: JobRecord,
    job_id: String,
    watched: Watched,
    early_stopping: Option<EarlyStopping>,
    handle: StopHandle,
    early: Mutex<Early>,
}

impl JobReporter {
    /// The name this runner holds the job's lease under (`lease`): its
    /// writes count only while it holds the job.
    fn holder(&self) -> &str {
        self.job.lease_owner.as_deref().unwrap_or_default()
    }

    /// A write was refused: the job's lease is no longer this runner's (it
    /// ran out while this worker was cut off, and the job went on
    /// elsewhere). Stop, writing nothing more.
    fn lost(&self) {
        if self.handle.reason().is_none() {
            tracing::warn!(job = %self.job_id, "no longer holds the job's lease (it ran out); stopping");
        }
        self.handle.stop(StopReason::LeaseLost);
    }

    /// Appends an event to the job's log while this runner holds the job;
    /// false once it does not (it stops). Rides out outages unless `patient`
    /// is false (then a failure is a warning: the event is lost, not the
    /// work).
    async fn append(&self, event: NewEvent, patient: bool) -> bool {
        let append = || {
            self.jobs
                .store
                .append_held_event(&self.job_id, self.holder(), &event, now_millis())
        };
        let appended = if patient {
            persist!(self, "recording an event", append())
        } else {
            append().await.map_err(Error::from)
        };
        match appended {
            Ok(Some(event)) => {
                self.jobs.bus.publish(&event);
                true
            }
            Ok(None) => {
                self.lost();
                false
            }
            Err(e) => {
                tracing::warn!(job = %self.job_id, error = %e, "could not record a job event");
                true
            }
        }
    }

    /// Runs the job's checkpoint eval on the checkpoint at `step` and
    /// records its pass rate in the checkpoint's metrics and as a metrics
    /// event. A failed eval is a warning: the checkpoint keeps no eval
    /// metric and training goes on.
    async fn evaluate_checkpoint(&self, step: u64, metrics: &mut Metrics) {
        let (Some(spec), Some(evaluator)) = (&self.job.spec.checkpoint_eval, &self.jobs.evaluator) else {
            return;
        };
        if metrics.eval_pass_rate.is_some() {
            return;
        }
        let model = checkpoint_model_id(
            &fine_tuned_model_id(&self.job.spec.base_model, &self.job.spec.suffix, &self.job_id),
            step,
        );
        self.jobs
            .log(
                &self.job_id,
                Level::Info,
                format!("checkpoint eval: running eval {} on {model}", spec.eval_id),
            )
            .await;
        match evaluator.evaluate(&self.job, step, &model, &self.handle).await {
            Ok(score) => {
                metrics.eval_pass_rate = Some(score.pass_rate);
                metrics.eval_run_id = Some(score.run_id.clone());
                if let Err(e) = self
                    .jobs
                    .store
                    .update_checkpoint_metrics(&self.job_id, step, metrics)
                    .await
                {
                    tracing::warn!(job = %self.job_id, error = %e, "could not record the checkpoint eval");
                }
                let event = NewEvent {
                    level: Level::Info,
                    message: format!(
                        "checkpoint eval at step {step}: pass rate {:.4} ({} items graded, {} errored; eval run {})",
                        score.pass_rate, score.graded, score.errored, score.run_id
                    ),
                    data: EventData::Metrics {
                        metrics: metrics.clone(),
                    },
                };
                match self.jobs.store.append_event(&self.job_id, &event, now_millis()).await {
                    Ok(event) => self.jobs.bus.publish(&event),
                    Err(e) => tracing::warn!(job = %self.job_id, error = %e, "could not record the checkpoint eval"),
                }
            }
            Err(_) if self.handle.reason().is_some() => {}
            Err(e) => {
                self.jobs
                    .log(
                        &self.job_id,
                        Level::Warn,
                        format!("checkpoint eval at step {step} failed: {e}"),
                    )
                    .await
            }
        }
    }

    /// Updates the best checkpoint; returns why to stop, if it is time.
    fn observe(&self, step: u64, metrics: &Metrics) -> Option<String> {
        let value = self.watched.value(metrics)?;
        let mut early = self.early.lock().ok()?;
        let min_delta = self.early_stopping.as_ref().map(|e| e.min_delta).unwrap_or(0.0);
        let improved = match early.best {
            None => true,
            Some((best, _)) if self.watched.maximize() => value > best + min_delta,
            Some((best, _)) => value < best - min_delta,
        };
        if improved {
            early.best = Some((value, step));
            early.bad = 0;
            return None;
        }
        early.bad += 1;
        let patience = self.early_stopping.as_ref().map(|e| e.patience).unwrap_or(0);
        if patience == 0 || early.bad < patience {
            return None;
        }
        let (best, best_step) = early.best?;
        let metric = self.watched.name();
        Some(format!(
            "early stopping: {metric} has not improved by more than {min_delta} for {patience} evaluations; \
             best {best:.4} at step {best_step}"
        ))
    }

    fn best_step(&self) -> Option<u64> {
        self.early.lock().ok()?.best.map(|(_, step)| step)
    }

    /// RFT keeps the files of the [`KEEP_BEST`] best checkpoints by the
    /// watched metric (OpenAI's rule, on valid_reward_mean), of the best by
    /// the early-stopping rule (the fine-tuned model) and of `latest` (to
    /// resume from, or the model's step once training is over); the others'
    /// files go and their blobs with them, their records stay as history.
    async fn prune_checkpoints(&self, latest: u64) {
        if self.job.spec.method.kind != MethodKind::Reinforcement {
            return;
        }
        let store = &self.jobs.store;
        let Ok(all) = store.list_checkpoints(&self.job_id, None, 100_000).await else {
            return;
        };
        let keep = checkpoints_to_keep(&all, self.watched, self.best_step(), latest);
        let drop: Vec<u64> = all
            .iter()
            .filter(|c| !c.files.is_empty() && !keep.contains(&c.step))
            .map(|c| c.step)
            .collect();
        if drop.is_empty() {
            return;
        }
        let shas = match store.delete_checkpoint_files(&self.job_id, &drop).await {
            Ok(shas) => shas,
            Err(e) => {
                tracing::warn!(job = %self.job_id, error = %e, "could not prune checkpoints");
                return;
            }
        };
        let blobs = &self.jobs.blobs;
        let _gate = blobs.gate().await;
        for sha in shas {
            if let Err(e) = blobs.delete_unless_used(&**store, &sha).await {
                tracing::warn!(job = %self.job_id, error = %e, "could not check a pruned checkpoint file's use");
            }
        }
        let steps: Vec<String> = drop.iter().map(u64::to_string).collect();
        self.log(
            Level::Info,
            format!(
                "checkpoint files removed at step {} (RFT keeps the {KEEP_BEST} best by {} and the latest)",
                steps.join(", "),
                self.watched.name()
            ),
        )
        .await;
    }
}

/// How many of an RFT job's best checkpoints keep their files.
pub const KEEP_BEST: usize = 3;

/// The steps whose files [`JobReporter::prune_checkpoints`] keeps: the
/// [`KEEP_BEST`] best by `watched` (ties to the earlier step; checkpoints
/// without the metric never count), `best` and `latest`.
fn checkpoints_to_keep(all: &[CheckpointRecord], watched: Watched, best: Option<u64>, latest: u64) -> Vec<u64> {
    let mut scored: Vec<(f64, u64)> = all
        .iter()
        .filter_map(|c| watched.value(&c.metrics).map(|v| (v, c.step)))
        .collect();
    scored.sort_by(|a, b| {
        let by_value = if watched.maximize() {
            b.0.total_cmp(&a.0)
        } else {
            a.0.total_cmp(&b.0)
        };
        by_value.then(a.1.cmp(&b.1))
    });
    let mut keep: Vec<u64> = scored.iter().take(KEEP_BEST).map(|(_, s)| *s).collect();
    keep.extend(best);
    keep.push(latest);
    keep.sort_unstable();
    keep.dedup();
    keep
}

fn metrics_message(m: &Metrics) -> String {
    let mut parts = vec![format!("step {}/{}", m.step, m.total_steps)];
    if let Some(v) = m.train_loss {
        parts.push(format!("train loss {v:.4}"));
    }
    if let Some(v) = m.valid_loss {
        parts.push(format!("valid loss {v:.4}"));
    }
    if let Some(v) = m.train_reward_mean {
        parts.push(format!("train reward {v:.4}"));
    }
    if let Some(v) = m.valid_reward_mean {
        parts.push(format!("valid reward {v:.4}"));
    }
    parts.join(", ")
}

/// A storage failure as the job's error: the cause (which may name server
/// paths) is logged, not recorded.
fn train_error(e: impl Into<Error>) -> TrainError {
    TrainError::new("storage_error", e.into().public_message())
}

#[async_trait]
impl Reporter for JobReporter {
    async fn metrics(&self, metrics: Metrics) {
        telemetry::training_step(
            self.job.spec.method.kind.as_str(),
            metrics.step_tokens,
            metrics.tokens_per_second,
        );
        let event = NewEvent {
            level: Level::Info,
            message: metrics_message(&metrics),
            data: EventData::Metrics { metrics },
        };
        self.append(event, true).await;
    }

    async fn log(&self, level: Level, message: String) {
        let event = NewEvent {
            level,
            message,
            data: EventData::Message,
        };
        self.append(event, true).await;
    }

    async fn checkpoint(&self, step: u64, metrics: Metrics, files: Vec<(String, Bytes)>) -> Result<bool, TrainError> {
        let what = format!("saving the checkpoint at step {step}");
        let mut staged = Vec::with_capacity(files.len());
        for (name, bytes) in files {
            let write = || async {
                let mut writer = self.jobs.blobs.writer().await?;
                writer.write(&bytes).await?;
                writer.finish().await
            };
            let blob = persist!(self, &what, write()).map_err(train_error)?;
            staged.push((name, blob));
        }
        // Files often repeat another job's (an adapter config): a blob of
        // theirs that a delete is about to collect must not be counted on
        // between our commit and our record.
        let gate = self.jobs.blobs.gate().await;
        let mut stored = Vec::with_capacity(staged.len());
        for (name, mut blob) in staged {
            let size = blob.size;
            let sha256 = persist!(self, &what, blob.try_commit()).map_err(train_error)?;
            stored.push(CheckpointFile {
                name,
                sha256,
                bytes: size,
            });
        }
        let record = CheckpointRecord {
            id: crate::ids::new_id("ckpt"),
            job_id: self.job_id.clone(),
            step,
            created_at: now_millis(),
            metrics: metrics.clone(),
            files: stored,
        };
        let event = NewEvent {
            level: Level::Info,
            message: format!("checkpoint saved at step {step}"),
            data: EventData::Checkpoint {
                checkpoint_id: record.id.clone(),
                step,
                metrics: metrics.clone(),
            },
        };
        let inserted = persist!(
            self,
            &what,
            self.jobs.store.insert_checkpoint(&record, self.holder(), &event)
        )
        .map_err(train_error);
        drop(gate);
        let Some(event) = inserted? else {
            self.lost();
            return Ok(false);
        };
        self.jobs.bus.publish(&event);
        let mut metrics = metrics;
        self.evaluate_checkpoint(step, &mut metrics).await;
        if let Some(reason) = self.observe(step, &metrics) {
            self.log(Level::Info, reason.clone()).await;
            self.handle.stop(StopReason::EarlyStopped(reason));
        }
        self.prune_checkpoints(step).await;
        Ok(true)
    }

    async fn read_checkpoint_file(&self, checkpoint: &CheckpointRecord, name: &str) -> Result<Bytes, TrainError> {
        let file = checkpoint
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| TrainError::new("checkpoint_incomplete", format!("checkpoint has no file {name}")))?;
        let what = format!("reading checkpoint step {}", checkpoint.step);
        persist!(self, &what, self.jobs.blobs.read_range(&file.sha256, 0..file.bytes)).map_err(train_error)
    }

    async fn read_dataset(&self, dataset_id: &str) -> Result<Bytes, TrainError> {
        let what = format!("reading dataset {dataset_id}");
        let d = persist!(self, &what, self.jobs.store.get_dataset(dataset_id))
            .map_err(train_error)?
            .ok_or_else(|| TrainError::new("dataset_not_found", format!("dataset {dataset_id} no longer exists")))?;
        persist!(self, &what, self.jobs.blobs.read_range(&d.sha256, 0..d.bytes)).map_err(train_error)
    }
}

async fn run_job(jobs: Arc<Jobs>, trainer: Arc<dyn Trainer>, job: JobRecord, handle: StopHandle) -> Ended {
    let id = job.id.clone();
    // Logged in the job's span (`LeasedWork::span`), as all of its work is:
    // each line names the job.
    tracing::info!(
        attempt = job.attempts,
        method = job.spec.method.kind.as_str(),
        "training"
    );
    if let Ok(mut running) = jobs.running.lock() {
        running.insert(id.clone(), handle.clone());
    }
    let reporter = Arc::new(JobReporter {
        jobs: jobs.clone(),
        job: job.clone(),
        job_id: id.clone(),
        watched: Watched::of(&job.spec),
        early_stopping: job.spec.early_stopping.clone(),
        handle: handle.clone(),
        early: Mutex::new(Early::default()),
    });
    let ended = train(&reporter, trainer).await;
    if let Ok(mut running) = jobs.running.lock() {
        running.remove(&id);
    }
    ended
}

/// Trains the job from its latest checkpoint and records how that ended.
async fn train(reporter: &Arc<JobReporter>, trainer: Arc<dyn Trainer>) -> Ended {
    let (jobs, job, id, handle) = (&reporter.jobs, &reporter.job, &reporter.job_id, &reporter.handle);
    let history = persist!(
        &**reporter,
        "reading the job's checkpoints",
        jobs.store.list_checkpoints(id, None, 10_000)
    );
    let mut history = match history {
        Ok(history) => history,
        Err(_) if handle.reason().is_some() => return Ended::Stopped,
        Err(e) => {
            let e = train_error(e);
            fail(reporter, &e.code, &e.message).await;
            return Ended::Finished;
        }
    };
    // Rebuild early-stopping state from the checkpoints already taken; the
    // last one's eval may have been cut off by a restart: finish it first.
    if let Some(last) = history.first_mut() {
        reporter.evaluate_checkpoint(last.step, &mut last.metrics).await;
    }
    for c in history.iter().rev() {
        reporter.observe(c.step, &c.metrics);
    }
    let resume_from = history.first().cloned();
    if let Some(c) = &resume_from {
        reporter
            .log(Level::Info, format!("resuming from checkpoint step {}", c.step))
            .await;
    }
    let ctx = TrainContext::new(job.clone(), resume_from, reporter.clone(), handle.clone());
    let result = AssertUnwindSafe(trainer.train(ctx)).catch_unwind().await;
    match result {
        Ok(Ok(TrainOutcome::Completed { trained_tokens })) => {
            succeed(reporter, trained_tokens, None).await;
            Ended::Finished
        }
        Ok(Ok(TrainOutcome::Stopped { trained_tokens })) => match handle.reason() {
            Some(StopReason::EarlyStopped(reason)) => {
                succeed(reporter, trained_tokens, Some(reason)).await;
                Ended::Finished
            }
            // Shut down (the lease machine gives the job back to the queue),
            // or cancelled, paused or taken over: whoever stopped it set its
            // state.
            _ => Ended::Stopped,
        },
        // Stopped while waiting out an outage (shut down, or taken over
        // after this worker's lease ran out): not the job's failure.
        Ok(Err(e)) if matches!(handle.reason(), Some(r) if !matches!(r, StopReason::EarlyStopped(_))) => {
            tracing::info!(job = %id, error = %e.message, "stopped while waiting");
            Ended::Stopped
        }
        Ok(Err(e)) => {
            fail(reporter, &e.code, &e.message).await;
            Ended::Finished
        }
        Err(_) => {
            fail(reporter, "internal_error", "the trainer crashed; see the server log").await;
            Ended::Finished
        }
    }
}

/// Moves the job this runner holds to its end; rides out outages, so an
/// end is not lost to a database that is restarting.
async fn end(reporter: &JobReporter, to: JobState, patch: JobPatch, event: NewEvent) -> crate::error::Result<bool> {
    let patch = JobPatch {
        held_by: Some(reporter.holder().to_string()),
        ..patch
    };
    let what = format!("recording that the job {}", to.as_str().replace('_', " "));
    let transition = persist!(
        reporter,
        &what,
        reporter.jobs.transition(&reporter.job_id, to, &patch, event.clone())
    )?;
    Ok(transition.is_ok())
}

async fn fail(reporter: &JobReporter, code: &str, message: &str) {
    let id = &reporter.job_id;
    tracing::warn!(job = %id, code, message, "job failed");
    let patch = JobPatch {
        finished_at: Some(now_millis()),
        error: Some(JobError {
            code: code.to_string(),
            message: message.to_string(),
            param: None,
        }),
        release_lease: true,
        ..Default::default()
    };
    let event = NewEvent::state(JobState::Failed, Level::Error, format!("failed: {message} ({code})"));
    if let Err(e) = end(reporter, JobState::Failed, patch, event).await {
        tracing::error!(job = %id, error = %e, "could not record the failure");
    }
}

async fn succeed(reporter: &JobReporter, trained_tokens: u64, stop_reason: Option<String>) {
    let (jobs, job) = (&reporter.jobs, &reporter.job);
    let last = persist!(
        reporter,
        "reading the job's checkpoints",
        jobs.store.list_checkpoints(&job.id, None, 1)
    )
    .ok()
    .and_then(|c| c.first().map(|c| c.step));
    let Some(last) = last else {
        fail(reporter, "no_checkpoint", "training ended without saving a checkpoint").await;
        return;
    };
    // With early stopping, and for reinforcement (OpenAI's rule: the best
    // checkpoint by valid_reward_mean), the fine-tuned model is the best
    // checkpoint; otherwise the last.
    let step = if job.spec.early_stopping.is_some() || job.spec.method.kind == MethodKind::Reinforcement {
        reporter.best_step().unwrap_or(last)
    } else {
        last
    };
    reporter.prune_checkpoints(step).await;
    let model = fine_tuned_model_id(&job.spec.base_model, &job.spec.suffix, &job.id);
    let patch = JobPatch {
        finished_at: Some(now_millis()),
        fine_tuned_model: Some(model.clone()),
        fine_tuned_checkpoint_step: Some(step),
        stop_reason: stop_reason.clone(),
        trained_tokens: Some(trained_tokens),
        release_lease: true,
        ..Default::default()
    };
    let message = format!("succeeded: fine-tuned model {model} (checkpoint step {step})");
    // The model is recorded before the job says SUCCEEDED, so a client that
    // sees the terminal event finds the model; undone if the job was
    // cancelled (or taken over) in between.
    let spec = &job.spec;
    let recorded = persist!(
        reporter,
        "registering the fine-tuned model",
        jobs.models
            .record_fine_tuned(&job.project, &spec.base_model, &spec.suffix, &job.id, step)
    );
    if let Err(e) = recorded {
        tracing::error!(job = %job.id, error = %e, "could not register the fine-tuned model");
    }
    let event = NewEvent::state(JobState::Succeeded, Level::Info, message);
    match end(reporter, JobState::Succeeded, patch, event).await {
        Ok(true) => tracing::info!(%model, step, "job succeeded"),
        ended => {
            // Cancelled or taken over meanwhile (that stands), or the store
            // failed: no model.
            if let Err(e) = &ended {
                tracing::error!(job = %job.id, error = %e, "could not record success");
            }
            if let Err(e) = jobs.store.forget_fine_tuned_model(&model).await {
                tracing::error!(job = %job.id, error = %e, "could not undo the fine-tuned model's record");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: u64, reward: Option<f64>) -> CheckpointRecord {
        CheckpointRecord {
            id: format!("ckpt_{step}"),
            job_id: "job".into(),
            step,
            created_at: 0,
            metrics: Metrics {
                step,
                valid_reward_mean: reward,
                ..Default::default()
            },
            files: Vec::new(),
        }
    }

    #[test]
    fn rft_keeps_the_three_best_the_models_and_the_latest_checkpoint() {
        let all = [
            at(10, Some(0.4)),
            at(20, Some(0.6)),
            at(25, None),
            at(30, Some(0.5)),
            at(40, Some(0.6)),
            at(50, Some(0.55)),
            at(60, Some(0.1)),
        ];
        // Ties go to the earlier step; a checkpoint without the metric never ranks.
        assert_eq!(
            checkpoints_to_keep(&all, Watched::ValidReward, Some(20), 60),
            [20, 40, 50, 60]
        );
        // The model's checkpoint stays even when early stopping's min_delta chose a lower one.
        assert_eq!(
            checkpoints_to_keep(&all, Watched::ValidReward, Some(10), 25),
            [10, 20, 25, 40, 50]
        );
        // Loss is minimised.
        let mut losses = all.to_vec();
        for c in &mut losses {
            c.metrics.valid_loss = c.metrics.valid_reward_mean;
        }
        assert_eq!(checkpoints_to_keep(&losses, Watched::ValidLoss, None, 60), [10, 30, 60]);
    }
}
