//! The application: every service and the workers behind them, opened once
//! and mounted by whichever front doors the process serves (gRPC today,
//! REST beside it later).
//!
//! Architecture invariant: the `App` owns the services' lifecycle (open,
//! recover, spawn workers, stop, drain) and knows no transport; a
//! transport only mounts the services and tells the `App` when to stop.

use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::blobs::Blobs;
use crate::config::ServeConfig;
use crate::datasets::{manager::Datasets, tokens::O200k};
use crate::engine::local::LocalEngine;
use crate::engine::trainer::{LocalTrainer, LocalTrainerConfig};
use crate::evals::manager::Evals;
use crate::graders::service::{Graders, GradersConfig};
use crate::inference::{ChatModel, LocalModels, ModelRouter, Providers};
use crate::jobs::{manager::Jobs, scheduler, trainer::Trainer};
use crate::models::Models;
use crate::store;

/// How often a process sharing its blob store with others does its
/// housekeeping (`housekeeping`).
const HOUSEKEEPING_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What the application trains and generates with.
pub enum Engine {
    /// The embedded candle engine and LoRA trainer (the default).
    Embedded,
    /// A trainer brought by the embedder (tests bring a scripted one); no
    /// local inference.
    Custom(Option<Arc<dyn Trainer>>),
}

/// The services, shared by every front door.
pub struct App {
    pub auth: Arc<Auth>,
    pub datasets: Arc<Datasets>,
    pub jobs: Arc<Jobs>,
    pub models: Arc<Models>,
    pub graders: Arc<Graders>,
    pub evals: Arc<Evals>,
    /// Datasets made from eval runs' answers (distillation, preference pairs).
    pub synth: Arc<crate::synth::Synth>,
    /// Chat completions kept with `store: true`.
    pub completions: Arc<crate::completions::Completions>,
    /// Prompt optimisation runs.
    pub optimizer: Arc<crate::optimize::Optimizer>,
    /// The one way to a model: the local engine's models and the
    /// providers' behind one router.
    pub chat: Arc<dyn ChatModel>,
    blobs: Blobs,
    /// The queue depth a scrape of `/metrics` counts.
    scrape: crate::telemetry::Scrape,
    /// What the last health checks of the dependencies found.
    health: tokio::sync::watch::Receiver<crate::health::Status>,
    workers: Workers,
}

/// The background workers: the job scheduler, the eval runner and the
/// health checks.
struct Workers {
    stop: CancellationToken,
    /// Cancelled when a process started for one job is done with it.
    finished: CancellationToken,
    /// Why such a process could not run its job (there is no such job).
    failed: Arc<std::sync::OnceLock<String>>,
    scheduler: JoinHandle<()>,
    eval_runner: JoinHandle<()>,
    optimizer: JoinHandle<()>,
    health: JoinHandle<()>,
    /// Housekeeping of a blob store shared with other processes.
    sweeper: Option<JoinHandle<()>>,
}

impl App {
    /// Opens the store and blobs under `config`, cleans up what an
    /// interrupted run left, builds the services and starts their workers.
    pub async fn open(config: &ServeConfig, engine: Engine) -> anyhow::Result<App> {
        crate::tune_allocator();
        // With a Ray cluster, the jobs this process would run train there; a
        // wrong address stops start-up. A worker for one job (a Ray job's
        // entrypoint) runs it here whatever its environment says.
        let dispatches = config.role.runs_work() && config.only_job.is_none();
        let ray = if dispatches {
            config.ray().map_err(anyhow::Error::msg)?
        } else {
            None
        };
        let ray = match ray {
            Some((client, ray_config)) => {
                let version = client
                    .version()
                    .await
                    .map_err(|e| anyhow::anyhow!("--ray-address (LATHE_RAY_ADDRESS): {e}"))?;
                tracing::info!(ray = %client.address(), version, "fine-tuning jobs run on the Ray cluster");
                Some((client, ray_config))
            }
            None => None,
        };
        // The tokenizer's tables load while the store opens, not on the first upload.
        let tokenizer = tokio::task::spawn_blocking(O200k::new);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let store = store::open(&config.database_url()).await.map_err(|e| {
            anyhow::anyhow!(
                "--database-url (LATHE_DATABASE_URL) {}: cannot open the database: {e}",
                config.database_url_redacted()
            )
        })?;
        let mut blobs = Blobs::open(config.blob_url.as_ref(), &config.blob_dir()).await?;
        // Processes sharing a database may share the blob directory too.
        if let Some(age) = config.leftovers_age() {
            blobs = blobs.settling_for(age).shared();
        }
        tracing::info!(store = blobs.name(), "blobs");
        let auth = Arc::new(Auth::new(store.clone()));
        let scrape = crate::telemetry::Scrape::new(store.clone());
        let datasets = Arc::new(Datasets::new(
            store.clone(),
            blobs.clone(),
            Arc::new(tokenizer.await.context("loading the tokenizer")?),
            config.dataset_limits(),
        ));
        datasets
            .recover()
            .await
            .context("cleaning up after interrupted uploads")?;
        let providers = match &config.providers {
            Some(path) => Arc::new(Providers::from_file(path).context("loading model providers")?),
            None => Arc::new(Providers::default()),
        };
        let models = Arc::new(Models::new(
            store.clone(),
            blobs.clone(),
            config.model_roots(),
            config.data_dir.join("model-cache"),
        ));
        let (local, custom_trainer) = match engine {
            Engine::Embedded => (
                Some(LocalEngine::new(
                    models.clone(),
                    config.max_generation_batch,
                    config.max_queued_generations,
                    config.generation_weights == crate::config::GenerationWeights::Quantized,
                    config
                        .device
                        .open()
                        .with_context(|| format!("opening --device {}", config.device))?,
                )),
                None,
            ),
            Engine::Custom(trainer) => (None, trainer),
        };
        // The one way to a model, for evals, model graders and the Chat RPC.
        let chat: Arc<dyn ChatModel> = Arc::new(ModelRouter::new(
            providers.clone(),
            local.clone().map(|l| l as Arc<dyn LocalModels>),
        ));
        let mut graders_config = GradersConfig {
            embedder: providers.embedder(),
            model_client: Some(chat.clone()),
            ..GradersConfig::default()
        };
        graders_config.python.env =
            crate::graders::python_env::resolve(config.grader_python_env.as_deref(), &config.data_dir)?;
        match &graders_config.python.env {
            Some(env) => tracing::info!(env = %env.display(), "python graders run in their environment"),
            None => tracing::info!("python graders run the system python3 (standard library only)"),
        }
        let graders = Arc::new(Graders::new(store.clone(), models.clone(), graders_config));
        // The embedded trainer grades RFT samples with the same graders.
        let trainer: Option<Arc<dyn Trainer>> = match &local {
            Some(local) => Some(Arc::new(
                LocalTrainer::new(local.clone(), LocalTrainerConfig::default()).with_graders(graders.clone()),
            )),
            None => custom_trainer,
        };
        // This process's name in the leases it holds, for jobs and eval runs.
        let worker_id = crate::ids::new_id("worker");
        let evals = Arc::new(Evals::new(
            store.clone(),
            blobs.clone(),
            graders.clone(),
            chat.clone(),
            models.clone(),
            crate::evals::manager::EvalsConfig {
                worker_id: worker_id.clone(),
                ..config.evals_config()
            },
        ));
        let secrets = Arc::new(
            crate::secrets::SecretBox::load(config.secrets_key.as_ref().map(|k| k.0.as_str()), &config.data_dir)
                .context("loading the secrets key")?,
        );
        let completions = Arc::new(crate::completions::Completions::new(store.clone()));
        let jobs = Arc::new(
            Jobs::new(
                store,
                blobs.clone(),
                models.clone(),
                trainer,
                secrets,
                crate::jobs::manager::JobsConfig {
                    worker_id: worker_id.clone(),
                    ..config.jobs_config()
                },
            )
            .with_evaluator(Arc::new(crate::evals::checkpoints::CheckpointEvals(evals.clone()))),
        );
        let stop = CancellationToken::new();
        let (health, health_checks) = crate::health::spawn(
            crate::health::Checks {
                store: jobs.store.clone(),
                blobs: blobs.clone(),
                ray: ray.as_ref().map(|(client, _)| client.clone()),
            },
            std::time::Duration::from_secs(config.health_check_secs.max(1)),
            stop.clone(),
        );
        // Wake-ups from other processes sharing the database: queued work
        // for this process's workers, new events for its watchers.
        let changes = store::notify::listen(&config.database_url(), stop.clone())
            .await
            .context("listening for the database's change notifications")?;
        if let Some(changes) = changes {
            tokio::spawn(relay_changes(changes, jobs.clone(), evals.clone()));
        }
        let idle = || tokio::spawn(async {});
        let role = config.role;
        if role.runs_work() {
            tracing::info!(worker = %worker_id, job = config.only_job.as_deref(), "claiming queued work");
        }
        let finished = CancellationToken::new();
        let failed = Arc::new(std::sync::OnceLock::new());
        let optimizer = Arc::new(crate::optimize::Optimizer::new(evals.clone()));
        let workers = Workers {
            scheduler: match (&config.only_job, role.runs_work(), ray) {
                (Some(job), true, _) => one_job(
                    jobs.clone(),
                    job.clone(),
                    stop.clone(),
                    finished.clone(),
                    failed.clone(),
                ),
                (None, true, Some((client, ray_config))) => {
                    crate::jobs::ray::spawn(jobs.clone(), client, ray_config, stop.clone())
                }
                (None, true, None) => scheduler::spawn(jobs.clone(), stop.clone()),
                (_, false, _) => idle(),
            },
            eval_runner: if role.runs_work() && config.only_job.is_none() {
                crate::evals::runner::spawn(evals.clone(), stop.clone())
            } else {
                idle()
            },
            optimizer: if role.runs_work() && config.only_job.is_none() {
                crate::optimize::spawn(optimizer.clone(), stop.clone())
            } else {
                idle()
            },
            health: health_checks,
            sweeper: blobs
                .is_shared()
                .then(|| housekeeping(datasets.clone(), models.clone(), role.serves_api(), stop.clone())),
            stop,
            finished,
            failed,
        };
        let synth = Arc::new(crate::synth::Synth::new(
            datasets.clone(),
            evals.clone(),
            completions.clone(),
        ));
        Ok(App {
            auth,
            datasets,
            jobs,
            models,
            graders,
            evals,
            synth,
            completions,
            optimizer,
            chat,
            blobs,
            scrape,
            health,
            workers,
        })
    }

    /// Resolves when a process started for one job (`only_job`) is done
    /// with it: the job ran here and stopped, or it is not this worker's to
    /// run (it ended, or was paused, before a claim). Never otherwise.
    pub async fn finished(&self) {
        self.workers.finished.cancelled().await;
    }

    /// Why a process started for one job could not run it, once it is
    /// finished (its exit status says so).
    pub fn failure(&self) -> Option<String> {
        self.workers.failed.get().cloned()
    }

    /// The dependencies' health as the last checks found it, kept current.
    pub fn health(&self) -> tokio::sync::watch::Receiver<crate::health::Status> {
        self.health.clone()
    }

    /// What `GET /metrics` answers with.
    pub fn scrape(&self) -> crate::telemetry::Scrape {
        self.scrape.clone()
    }

    /// Tells the workers to stop: running jobs stop at a step boundary
    /// and go back to the queue; eval runs drop their in-flight items and
    /// go back to the queue. Returns at once; `close` waits.
    pub fn stop_workers(&self) {
        self.workers.stop.cancel();
    }

    /// Stops uploads that are still streaming: each removes what it
    /// staged and answers UNAVAILABLE. For a transport whose grace period
    /// ran out.
    pub async fn stop_uploads(&self) {
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.datasets.stop_uploads())
            .await
            .is_err()
        {
            tracing::warn!("uploads did not stop within 10 s");
        }
    }

    /// Waits for the workers to stop (after `stop_workers`) and clears
    /// staging. Call once no request is left to write to staging.
    pub async fn close(self) {
        self.stop_workers();
        if let Err(e) = self.workers.scheduler.await {
            tracing::error!(error = %e, "the scheduler crashed");
        }
        if let Err(e) = self.workers.eval_runner.await {
            tracing::error!(error = %e, "the eval runner crashed");
        }
        if let Err(e) = self.workers.optimizer.await {
            tracing::error!(error = %e, "the prompt optimizer crashed");
        }
        self.workers.health.abort();
        if let Some(sweeper) = self.workers.sweeper {
            sweeper.abort();
        }
        // What uploads dropped before they finished had staged goes now
        // rather than at the next start: an upload whose client vanished is
        // dropped by the HTTP/2 layer, and its own clean-up runs in the
        // background (a hard stop still leaves that to the next start).
        // Staging shared with other processes holds their uploads too: the
        // blobs' settle age keeps those (`Blobs::sweep_staging`).
        match self.blobs.sweep_staging().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed what dropped uploads had staged"),
            Err(e) => tracing::warn!(error = %e, "could not clear staging; the next start will"),
        }
    }
}

/// Turns other processes' changes into this process's wake-ups. The rows
/// stay the truth: a wake-up only makes a worker claim or a watcher read
/// sooner than its next poll.
async fn relay_changes(
    mut changes: tokio::sync::mpsc::Receiver<store::notify::Change>,
    jobs: Arc<Jobs>,
    evals: Arc<Evals>,
) {
    use store::notify::Change;
    while let Some(change) = changes.recv().await {
        match change {
            Change::JobQueued => jobs.wake.notify_one(),
            Change::JobEvent(id) => jobs.bus.poke(&id),
            Change::RunQueued => evals.wake.notify_one(),
            Change::RunProgress(id) => evals.bus.poke(&id),
            Change::Resync => {
                jobs.wake.notify_one();
                evals.wake.notify_one();
                jobs.bus.poke_all();
                evals.bus.poke_all();
            }
        }
    }
}

/// Where processes share the blob store, what no start-up can do safely
/// at other times, every `HOUSEKEEPING_EVERY` until `stop`: an API
/// replica (`sweep`) removes settled leftovers (`Datasets::sweep_leftovers`:
/// without it a cluster that never restarts would keep them for good), and
/// every process drops its cached copies of models deleted elsewhere.
fn housekeeping(datasets: Arc<Datasets>, models: Arc<Models>, sweep: bool, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if sweep && let Err(e) = datasets.sweep_leftovers().await {
                tracing::warn!(error = %e, "could not sweep settled leftovers; the next round tries again");
            }
            match models.prune_cache().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "dropped cached copies of deleted models"),
                Err(e) => tracing::warn!(error = %e, "could not prune the model cache"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(HOUSEKEEPING_EVERY) => {}
            }
        }
    })
}

/// The scheduler of a process started for one job: it claims only that
/// job, and the process is finished once the job has run here, or as soon
/// as the job is one this worker will not run (ended or paused).
fn one_job(
    jobs: Arc<Jobs>,
    id: String,
    stop: CancellationToken,
    finished: CancellationToken,
    failed: Arc<std::sync::OnceLock<String>>,
) -> JoinHandle<()> {
    let scheduler = scheduler::spawn(jobs.clone(), stop.clone());
    tokio::spawn(async move {
        let poll = jobs.config.poll;
        let mut scheduler = std::pin::pin!(scheduler);
        let joined = loop {
            match jobs.state_of(&id).await {
                Ok(Some(state)) if state.is_terminal() || state == crate::jobs::model::JobState::Paused => {
                    tracing::info!(job = %id, state = state.as_str(), "the job is not to be run here");
                    stop.cancel();
                    break scheduler.await;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::error!(job = %id, "no such job");
                    let _ = failed.set(format!("--job {id}: no such job"));
                    stop.cancel();
                    break scheduler.await;
                }
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot read the job's state; retrying"),
            }
            tokio::select! {
                joined = &mut scheduler => break joined,
                () = tokio::time::sleep(poll) => {}
            }
        };
        if let Err(e) = joined {
            tracing::error!(error = %e, "the scheduler crashed");
        }
        finished.cancel();
    })
}
