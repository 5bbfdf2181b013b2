//! The Ray executor: fine-tuning jobs dispatched to a Ray cluster.
//!
//! A process with `--ray-address` trains nothing itself. This actor submits
//! each queued job as a Ray job (`crate::ray`) whose entrypoint is the Lathe
//! worker for that one job (`lathe worker --job ID`); that worker claims
//! the job's lease, trains and records as any worker does, and exits. Work
//! still flows through the leases: a Ray job that dies leaves its lease to
//! expire, this actor re-queues the job (one attempt more) like the lease
//! machine would, and submits a new Ray job for the new attempt.
//!
//! Submission ids are deterministic, `lathe-{job}-{attempt}-{try}`:
//! `attempt` is the job's claim count when it was queued, `try` counts the
//! Ray jobs of that attempt that ended without claiming it. Ray refuses a
//! second submission of an id, so a control plane that restarts, or two
//! replicas that both dispatch, never start the same try twice: a refused
//! id is looked up and adopted while it runs, or counted and the next try
//! made once it ended. Ray jobs that fail before claiming their job count
//! against `max_failures`; then the job fails with Ray's message. (A worker
//! for one job waits while its job is queued but not claimable, and exits
//! cleanly when the job is ended or paused, so neither counts.)
//!
//! Architecture invariant: this module decides when a job's Ray job is
//! submitted, stopped and given up on; the job's states change only
//! through the leases (claimed by the worker in Ray, re-queued here when
//! they expire) and `Jobs::transition`, compare-and-set, as everywhere. It
//! knows Ray only through `RayClient`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::manager::Jobs;
use super::model::{JobError, JobPatch, JobRecord, JobState, Level, NewEvent};
use super::scheduler;
use crate::ids::now_millis;
use crate::ray::{RayClient, RayError, RayJob, RayStatus, Submission, Submitted};
use crate::store::{Cursor, JobQuery};
use crate::telemetry;

/// How Lathe's jobs become Ray jobs.
#[derive(Clone, Debug)]
pub struct RayConfig {
    /// The shell command a Ray job runs; `{job_id}` is replaced by the job's id.
    pub entrypoint: String,
    /// The entrypoint's environment (`runtime_env.env_vars`).
    pub env_vars: BTreeMap<String, String>,
    /// CPUs and GPUs Ray reserves for each job's worker.
    pub num_cpus: f64,
    pub num_gpus: f64,
    /// Ray jobs of one attempt that may end without starting the job before
    /// the job fails.
    pub max_failures: u32,
    /// Ray jobs this process keeps pending or running at once; other queued
    /// jobs wait in Lathe's queue, in its claim order.
    pub max_submitted: usize,
    /// How often to look at the queue and at the submitted Ray jobs.
    pub poll: Duration,
}

/// Metadata keys every submission carries.
const META_JOB: &str = "lathe_job_id";
const META_ATTEMPT: &str = "lathe_attempt";
const META_TRY: &str = "lathe_try";

/// The longest wait between tries while the Ray head cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The submission id of a job's `attempt`'s `try`.
pub fn submission_id(job_id: &str, attempt: u32, try_: u32) -> String {
    format!("lathe-{job_id}-{attempt}-{try_}")
}

/// The entrypoint of `job_id`'s Ray job.
pub fn entrypoint(template: &str, job_id: &str) -> String {
    template.replace("{job_id}", job_id)
}

/// The Ray job for `job`'s try `try_`: the worker for that job, with the
/// resources the job asked for (the configured ones where it did not).
fn submission(config: &RayConfig, job: &JobRecord, try_: u32) -> Submission {
    let metadata = BTreeMap::from([
        (META_JOB.to_string(), job.id.clone()),
        (META_ATTEMPT.to_string(), job.attempts.to_string()),
        (META_TRY.to_string(), try_.to_string()),
    ]);
    Submission {
        entrypoint: entrypoint(&config.entrypoint, &job.id),
        submission_id: submission_id(&job.id, job.attempts, try_),
        metadata,
        env_vars: config.env_vars.clone(),
        num_cpus: job.spec.resources.cpus.unwrap_or(config.num_cpus),
        num_gpus: job.spec.resources.gpus.unwrap_or(config.num_gpus),
    }
}

/// Starts the executor; it returns after `shutdown`. Ray jobs keep running
/// across a restart of this process: the next start adopts them.
pub fn spawn(jobs: Arc<Jobs>, ray: RayClient, config: RayConfig, shutdown: CancellationToken) -> JoinHandle<()> {
    let executor = Executor {
        jobs,
        ray,
        config,
        live: BTreeMap::new(),
        history: HashMap::new(),
        outage: None,
    };
    tokio::spawn(executor.run(shutdown))
}

/// A Ray job of ours that has not ended.
#[derive(Clone, Debug)]
struct Live {
    job_id: String,
    attempt: u32,
    try_: u32,
    status: RayStatus,
    /// Lathe asked Ray to stop it (cancel, pause, a superseded attempt).
    stopping: bool,
}

/// What ended Ray jobs of one (job, attempt) tell.
#[derive(Clone, Debug, Default)]
struct Tries {
    /// The tries seen to end.
    ended: BTreeSet<u32>,
    /// Tries (or refused submissions) that failed without running the job,
    /// and the last one's words.
    failures: u32,
    last_failure: String,
}

impl Tries {
    fn last(&self) -> u32 {
        self.ended.last().copied().unwrap_or(0)
    }
}

/// The Ray head went away: since when, and the jobs told so.
struct Outage {
    tries: u32,
    told: HashSet<String>,
}

struct Executor {
    jobs: Arc<Jobs>,
    ray: RayClient,
    config: RayConfig,
    /// Our Ray jobs still pending or running, by submission id.
    live: BTreeMap<String, Live>,
    history: HashMap<(String, u32), Tries>,
    outage: Option<Outage>,
}

/// A failure of one round: Ray out of reach pauses dispatch; anything else
/// is logged and the next round tries again.
enum RoundError {
    Ray(RayError),
    Store(crate::error::Error),
}

impl From<RayError> for RoundError {
    fn from(e: RayError) -> Self {
        RoundError::Ray(e)
    }
}

fn store_err(e: impl Into<crate::error::Error>) -> RoundError {
    RoundError::Store(e.into())
}

impl Executor {
    async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(ray = %self.ray.address(), "dispatching fine-tuning jobs to Ray");
        let mut reconciled = false;
        loop {
            let round = async {
                if self.outage.is_some() {
                    self.ray.version().await?;
                    self.reachable().await;
                }
                if !reconciled {
                    self.reconcile().await?;
                    reconciled = true;
                }
                self.round().await
            }
            .await;
            let wait = match round {
                Ok(()) => {
                    telemetry::ray_reachable(true);
                    self.config.poll
                }
                Err(RoundError::Ray(e)) if e.is_unreachable() => {
                    telemetry::ray_reachable(false);
                    self.unreachable(&e).await
                }
                Err(RoundError::Ray(e)) => {
                    tracing::warn!(error = %e, "a round of dispatching to Ray failed");
                    self.config.poll
                }
                Err(RoundError::Store(e)) => {
                    tracing::warn!(error = %e, "a round of dispatching to Ray failed");
                    self.config.poll
                }
            };
            tokio::select! {
                () = self.jobs.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// At start: adopts the Ray jobs an earlier run (or another replica)
    /// submitted that still run, and learns which tries ended.
    async fn reconcile(&mut self) -> Result<(), RoundError> {
        let mut adopted = 0;
        for ray_job in self.ray.list().await? {
            let Some((job_id, attempt, try_)) = ours(&ray_job) else {
                continue;
            };
            if ray_job.status.is_terminal() {
                self.ended(&job_id, attempt, try_, &ray_job).await?;
            } else {
                adopted += 1;
                telemetry::ray_job("adopted");
                self.track(&ray_job.submission_id, &job_id, attempt, try_, ray_job.status);
            }
        }
        if adopted > 0 {
            tracing::info!(adopted, "adopted Ray jobs submitted before this start");
        }
        Ok(())
    }

    /// One round: re-queue jobs whose worker vanished, follow the Ray jobs
    /// in flight, submit queued jobs.
    async fn round(&mut self) -> Result<(), RoundError> {
        scheduler::requeue_expired(&self.jobs).await.map_err(store_err)?;
        self.follow().await?;
        self.dispatch().await
    }

    /// Reads each live Ray job's status; records the ended ones; stops those
    /// whose job no longer wants them.
    async fn follow(&mut self) -> Result<(), RoundError> {
        let ids: Vec<String> = self.live.keys().cloned().collect();
        for id in ids {
            let Some(live) = self.live.get(&id).cloned() else {
                continue;
            };
            let Some(ray_job) = self.ray.job(&id).await? else {
                // A head that restarted without its history forgot it.
                tracing::warn!(job = %live.job_id, submission = %id, "Ray no longer knows this Ray job");
                self.live.remove(&id);
                continue;
            };
            if ray_job.status.is_terminal() {
                self.live.remove(&id);
                if ray_job.status == RayStatus::Failed {
                    telemetry::ray_job("failed");
                }
                self.ended(&live.job_id, live.attempt, live.try_, &ray_job).await?;
                continue;
            }
            if let Some(l) = self.live.get_mut(&id) {
                l.status = ray_job.status;
            }
            let job = self.jobs.store.get_job(&live.job_id).await.map_err(store_err)?;
            if let Some(why) = unwanted(job.as_ref(), live.attempt)
                && !live.stopping
            {
                tracing::info!(job = %live.job_id, submission = %id, why, "stopping the Ray job");
                self.ray.stop(&id).await?;
                telemetry::ray_job("stopped");
                if let Some(l) = self.live.get_mut(&id) {
                    l.stopping = true;
                }
            }
        }
        Ok(())
    }

    /// Submits the queued jobs that have no Ray job yet, in the claim
    /// order, while fewer than `max_submitted` are in flight.
    async fn dispatch(&mut self) -> Result<(), RoundError> {
        let mut queued = self.queued().await?;
        // The lease machine's order within a kind: priority, then age.
        queued.sort_by(|a, b| {
            b.spec
                .priority
                .cmp(&a.spec.priority)
                .then(a.created_at.cmp(&b.created_at))
                .then(a.id.cmp(&b.id))
        });
        for job in queued {
            let in_flight = self
                .live
                .values()
                .any(|l| l.job_id == job.id && l.attempt == job.attempts && !l.stopping);
            if in_flight {
                continue;
            }
            if self.live.len() >= self.config.max_submitted {
                break;
            }
            self.submit(&job).await?;
        }
        Ok(())
    }

    /// Every queued job.
    async fn queued(&self) -> Result<Vec<JobRecord>, RoundError> {
        const PAGE: usize = 500;
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .jobs
                .store
                .list_jobs(&JobQuery {
                    state: Some(JobState::Queued),
                    after: after.clone(),
                    limit: PAGE,
                    ..Default::default()
                })
                .await
                .map_err(store_err)?;
            let full = page.len() == PAGE;
            after = page.last().map(|j| Cursor {
                created_at: j.created_at,
                id: j.id.clone(),
            });
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Submits the job's next try, or adopts it when it was submitted
    /// already; fails the job once its tries ran out.
    async fn submit(&mut self, job: &JobRecord) -> Result<(), RoundError> {
        let attempt = job.attempts;
        // Each pass either submits, adopts, or learns of one more ended try.
        for _ in 0..1000 {
            let tries = self
                .history
                .get(&(job.id.clone(), attempt))
                .cloned()
                .unwrap_or_default();
            if tries.failures >= self.config.max_failures.max(1) {
                return self.give_up(job, &tries).await;
            }
            // Past every try seen, ended or still in flight (one being
            // stopped is not adopted again).
            let in_flight = self
                .live
                .values()
                .filter(|l| l.job_id == job.id && l.attempt == attempt)
                .map(|l| l.try_)
                .max()
                .unwrap_or(0);
            let try_ = tries.last().max(in_flight) + 1;
            let submission = submission(&self.config, job, try_);
            let id = submission.submission_id.clone();
            let submitted = match self.ray.submit(&submission).await {
                // Ray refused the request itself (a 4xx: resources or a
                // runtime environment it will never accept): a failure of
                // this try that started nothing; 5xx is Ray's own trouble,
                // tried again next round.
                Err(RayError::Refused { status, message }) if (400..500).contains(&status) => {
                    let tries = self.history.entry((job.id.clone(), attempt)).or_default();
                    tries.failures += 1;
                    tries.last_failure = format!("Ray refused the submission: {message}");
                    let words = tries.last_failure.clone();
                    tracing::warn!(job = %job.id, submission = %id, %words, "Ray refused a submission");
                    telemetry::ray_job("refused");
                    self.jobs.log(&job.id, Level::Warn, format!("{words} ({id})")).await;
                    return Ok(());
                }
                other => other?,
            };
            match submitted {
                Submitted::New => {
                    tracing::info!(job = %job.id, submission = %id, "submitted to Ray");
                    telemetry::ray_job("submitted");
                    self.jobs
                        .log(&job.id, Level::Info, format!("submitted to Ray as Ray job {id}"))
                        .await;
                    self.track(&id, &job.id, attempt, try_, RayStatus::Pending);
                    return Ok(());
                }
                Submitted::Exists => match self.ray.job(&id).await? {
                    Some(ray_job) if !ray_job.status.is_terminal() => {
                        tracing::info!(job = %job.id, submission = %id, "adopted a Ray job submitted earlier");
                        telemetry::ray_job("adopted");
                        self.track(&id, &job.id, attempt, try_, ray_job.status);
                        return Ok(());
                    }
                    Some(ray_job) => self.ended(&job.id, attempt, try_, &ray_job).await?,
                    None => return Ok(()),
                },
            }
        }
        Ok(())
    }

    fn track(&mut self, id: &str, job_id: &str, attempt: u32, try_: u32, status: RayStatus) {
        self.live.insert(
            id.to_string(),
            Live {
                job_id: job_id.to_string(),
                attempt,
                try_,
                status,
                stopping: false,
            },
        );
    }

    /// Learns of an ended Ray job: counts a try that ended without running
    /// its job, and tells the job's log what Ray said (once, however many
    /// replicas or restarts see it).
    async fn ended(&mut self, job_id: &str, attempt: u32, try_: u32, ray_job: &RayJob) -> Result<(), RoundError> {
        let job = self.jobs.store.get_job(job_id).await.map_err(store_err)?;
        // A claim counts an attempt: the worker started the job if the
        // job's attempts moved past this one.
        let started = job.as_ref().is_some_and(|j| j.attempts > attempt);
        // Only a failure counts: a worker that exits cleanly without the job
        // found it ended or paused, and a stopped one was stopped on purpose.
        let failed_to_start = !started && ray_job.status == RayStatus::Failed;
        let Some(job) = job.filter(|j| !j.state.is_terminal()) else {
            // Nothing more will be submitted for it.
            self.history.retain(|(id, _), _| id != job_id);
            return Ok(());
        };
        // Tries of the attempts before the job's current one no longer matter.
        self.history.retain(|(id, a), _| id != job_id || *a >= job.attempts);
        if attempt >= job.attempts {
            let tries = self.history.entry((job_id.to_string(), attempt)).or_default();
            if tries.ended.insert(try_) && failed_to_start {
                tries.failures += 1;
                tries.last_failure = headline(ray_job);
            }
        }
        let id = &ray_job.submission_id;
        let (level, what) = match ray_job.status {
            // The worker ended cleanly: what it did is in the job's events.
            RayStatus::Succeeded | RayStatus::Pending | RayStatus::Running => return Ok(()),
            RayStatus::Stopped if matches!(job.state, JobState::Paused) => (Level::Info, "was stopped".to_string()),
            RayStatus::Stopped => (Level::Warn, "was stopped".to_string()),
            RayStatus::Failed => (Level::Warn, format!("failed: {}", headline(ray_job))),
        };
        if self.already_told(job_id, id).await? {
            return Ok(());
        }
        let mut message = format!("Ray job {id} {what}");
        if level == Level::Warn {
            match self.ray.log_tail(id).await {
                Ok(tail) if !tail.is_empty() => message.push_str(&format!("; last log lines:\n{tail}")),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job = %job_id, submission = %id, error = %e, "could not read the Ray job's log")
                }
            }
        }
        tracing::warn!(job = %job_id, submission = %id, status = ray_job.status.as_str(), "Ray job ended");
        self.jobs.log(job_id, level, message).await;
        Ok(())
    }

    /// Whether the job's recent events already tell of this Ray job's end
    /// (another replica, or this one before a restart, wrote it).
    async fn already_told(&self, job_id: &str, submission_id: &str) -> Result<bool, RoundError> {
        let needle = format!("Ray job {submission_id} ");
        let recent = self
            .jobs
            .store
            .list_events_before(job_id, None, 50)
            .await
            .map_err(store_err)?;
        Ok(recent
            .iter()
            .any(|e| e.message.starts_with(&needle) && !e.message.starts_with("submitted")))
    }

    /// Fails a job whose Ray jobs kept ending before it started.
    async fn give_up(&mut self, job: &JobRecord, tries: &Tries) -> Result<(), RoundError> {
        self.history.retain(|(id, _), _| id != &job.id);
        let message = format!(
            "the job's worker failed on Ray {} times before it started the job; last: {}",
            tries.failures, tries.last_failure
        );
        let patch = JobPatch {
            finished_at: Some(now_millis()),
            error: Some(JobError {
                code: "ray_failed".into(),
                message: message.clone(),
                param: None,
            }),
            ..Default::default()
        };
        let event = NewEvent::state(
            JobState::Failed,
            Level::Error,
            format!("failed: {message} (ray_failed)"),
        );
        // A job cancelled, paused or claimed meanwhile keeps that state.
        let changed = self
            .jobs
            .transition(&job.id, JobState::Failed, &patch, event)
            .await
            .map_err(store_err)?;
        if changed.is_ok() {
            tracing::warn!(job = %job.id, %message, "job failed");
        }
        Ok(())
    }

    /// Ray answered again after an outage: say so and go on.
    async fn reachable(&mut self) {
        let Some(outage) = self.outage.take() else {
            return;
        };
        tracing::info!(ray = %self.ray.address(), "the Ray cluster answers again; dispatching resumed");
        for job_id in outage.told {
            self.jobs
                .log(
                    &job_id,
                    Level::Info,
                    "the Ray cluster answers again; dispatching resumed".into(),
                )
                .await;
        }
    }

    /// Ray cannot be reached: pause dispatching, tell the waiting jobs once,
    /// and wait longer each time (up to `MAX_BACKOFF`).
    async fn unreachable(&mut self, e: &RayError) -> Duration {
        let first = self.outage.is_none();
        let outage = self.outage.get_or_insert_with(|| Outage {
            tries: 0,
            told: HashSet::new(),
        });
        outage.tries += 1;
        let wait = self
            .config
            .poll
            .saturating_mul(1 << outage.tries.min(6))
            .min(MAX_BACKOFF);
        if first {
            tracing::warn!(error = %e, retry_in = ?wait, "Ray cannot be reached; dispatching paused");
        }
        // The jobs waiting on Ray: queued ones and those whose Ray job we follow.
        let mut waiting: Vec<String> = self.live.values().map(|l| l.job_id.clone()).collect();
        if let Ok(queued) = self.queued().await {
            waiting.extend(queued.into_iter().map(|j| j.id));
        }
        // The job's log names no address: that is the operator's to know.
        let cause = match e {
            RayError::Unreachable { cause, .. } => cause.as_str(),
            _ => "no answer",
        };
        let message =
            format!("the Ray cluster cannot be reached ({cause}); dispatching to Ray is paused until it answers");
        for job_id in waiting {
            let Some(outage) = self.outage.as_mut() else { break };
            if outage.told.insert(job_id.clone()) {
                self.jobs.log(&job_id, Level::Warn, message.clone()).await;
            }
        }
        wait
    }
}

/// The job, attempt and try of a Ray job Lathe submitted; None for others'.
fn ours(ray_job: &RayJob) -> Option<(String, u32, u32)> {
    let job = ray_job.meta(META_JOB)?;
    let attempt = ray_job.meta(META_ATTEMPT)?.parse().ok()?;
    let try_ = ray_job.meta(META_TRY)?.parse().ok()?;
    (ray_job.submission_id == submission_id(job, attempt, try_)).then(|| (job.to_string(), attempt, try_))
}

/// Why a live Ray job of `attempt` should stop, if it should: its job was
/// cancelled, paused, ended or deleted, or moved on to a later attempt.
fn unwanted(job: Option<&JobRecord>, attempt: u32) -> Option<&'static str> {
    let Some(job) = job else {
        return Some("the job no longer exists");
    };
    match job.state {
        JobState::Cancelled => Some("the job was cancelled"),
        JobState::Paused => Some("the job was paused"),
        JobState::Failed => Some("the job failed"),
        // Its worker claimed the job (attempt + 1) and runs it, or is
        // finishing after success.
        JobState::Running | JobState::Succeeded if job.attempts <= attempt + 1 => None,
        // Still waiting for its worker to claim it.
        JobState::Queued | JobState::ValidatingFiles if job.attempts <= attempt => None,
        _ => Some("the job has moved on to a later attempt"),
    }
}

/// The first line of Ray's message on a Ray job (its FAILED message goes on
/// with the whole log, which the event's tail shows instead).
fn headline(ray_job: &RayJob) -> String {
    let message = ray_job.message.as_deref().unwrap_or("").lines().next().unwrap_or("");
    let message = message.trim().trim_end_matches(':');
    let message = message
        .split_once(", last available logs")
        .map_or(message, |(head, _)| head);
    if message.is_empty() {
        format!("status {}", ray_job.status.as_str())
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::JobSpec;

    fn ray_job(id: &str, meta: &[(&str, &str)], status: RayStatus, message: &str) -> RayJob {
        RayJob {
            submission_id: id.into(),
            status,
            message: Some(message.into()),
            entrypoint: String::new(),
            metadata: Some(meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            driver_exit_code: None,
        }
    }

    fn job(state: JobState, attempts: u32) -> JobRecord {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "base_model": "m", "training_dataset_id": "ds", "validation_dataset_id": null,
            "method": {"kind": "supervised", "hyperparameters": {"n_epochs": null, "batch_size": null,
                "learning_rate_multiplier": null, "beta": null, "eval_interval": null, "eval_samples": null,
                "generations_per_prompt": null}, "grader": null},
            "lora": {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": []},
            "seed": 1, "suffix": "", "metadata": {}, "priority": 0, "early_stopping": null, "webhook": null
        }))
        .unwrap();
        let mut job = JobRecord::new("job_1".into(), "p".into(), spec, None, 0);
        job.state = state;
        job.attempts = attempts;
        job
    }

    #[test]
    fn submission_ids_and_entrypoints_are_deterministic() {
        assert_eq!(submission_id("job_01ABC", 2, 1), "lathe-job_01ABC-2-1");
        assert_eq!(
            entrypoint("/opt/lathe worker --job {job_id} --log-json", "job_9"),
            "/opt/lathe worker --job job_9 --log-json"
        );
    }

    #[test]
    fn a_ray_job_reserves_what_its_job_asked_for_or_the_configured_defaults() {
        let config = RayConfig {
            entrypoint: "lathe worker --job {job_id}".into(),
            env_vars: BTreeMap::new(),
            num_cpus: 2.0,
            num_gpus: 1.0,
            max_failures: 3,
            max_submitted: 4,
            poll: Duration::from_secs(1),
        };
        let mut j = job(JobState::Queued, 1);
        let plain = submission(&config, &j, 2);
        assert_eq!((plain.num_cpus, plain.num_gpus), (2.0, 1.0));
        assert_eq!(plain.submission_id, "lathe-job_1-1-2");
        assert_eq!(plain.entrypoint, "lathe worker --job job_1");
        j.spec.resources.gpus = Some(0.5);
        let shared = submission(&config, &j, 2);
        assert_eq!((shared.num_cpus, shared.num_gpus), (2.0, 0.5));
    }

    #[test]
    fn only_lathes_own_ray_jobs_are_recognised() {
        let meta = [(META_JOB, "job_1"), (META_ATTEMPT, "2"), (META_TRY, "3")];
        let mine = ray_job("lathe-job_1-2-3", &meta, RayStatus::Running, "");
        assert_eq!(ours(&mine), Some(("job_1".into(), 2, 3)));
        // Metadata that does not match its id, or none, is someone else's.
        assert_eq!(ours(&ray_job("other", &meta, RayStatus::Running, "")), None);
        assert_eq!(ours(&ray_job("lathe-job_1-2-3", &[], RayStatus::Running, "")), None);
    }

    #[test]
    fn a_live_ray_job_is_stopped_when_its_job_no_longer_wants_it() {
        use JobState::*;
        assert_eq!(unwanted(Some(&job(Queued, 2)), 2), None, "waiting for its worker");
        assert_eq!(unwanted(Some(&job(Running, 3)), 2), None, "its worker claimed the job");
        assert_eq!(unwanted(Some(&job(Succeeded, 3)), 2), None, "finishing after success");
        assert!(unwanted(Some(&job(Paused, 3)), 2).is_some());
        assert!(unwanted(Some(&job(Cancelled, 2)), 2).is_some());
        assert!(unwanted(Some(&job(Failed, 3)), 2).is_some());
        assert!(unwanted(None, 2).is_some());
        // Its worker lost the job: re-queued (attempt 3) or claimed by another (4).
        assert!(unwanted(Some(&job(Queued, 3)), 2).is_some());
        assert!(unwanted(Some(&job(Running, 4)), 2).is_some());
    }

    #[test]
    fn a_headline_is_rays_first_words() {
        let failed = ray_job(
            "s",
            &[],
            RayStatus::Failed,
            "Job entrypoint command failed with exit code 7, last available logs (truncated to 20,000 chars):\noops\n",
        );
        assert_eq!(headline(&failed), "Job entrypoint command failed with exit code 7");
        let silent = RayJob {
            message: None,
            ..failed
        };
        assert_eq!(headline(&silent), "status FAILED");
    }
}
