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
    /// The one way to a model: the local engine's models and the
    /// providers' behind one router.
    pub chat: Arc<dyn ChatModel>,
    blobs: Blobs,
    workers: Workers,
}

/// The background workers: the job scheduler and the eval runner.
struct Workers {
    stop: CancellationToken,
    scheduler: JoinHandle<()>,
    eval_runner: JoinHandle<()>,
}

impl App {
    /// Opens the store and blobs under `config`, cleans up what an
    /// interrupted run left, builds the services and starts their workers.
    pub async fn open(config: &ServeConfig, engine: Engine) -> anyhow::Result<App> {
        crate::tune_allocator();
        // The tokenizer's tables load while the store opens, not on the first upload.
        let tokenizer = tokio::task::spawn_blocking(O200k::new);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let store = store::open(&config.database_url())
            .await
            .context("opening the database")?;
        let blobs = Blobs::open(config.blob_url.as_ref(), &config.blob_dir()).await?;
        tracing::info!(store = blobs.name(), "blobs");
        let auth = Arc::new(Auth::new(store.clone()));
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
        let evals = Arc::new(Evals::new(
            store.clone(),
            blobs.clone(),
            graders.clone(),
            chat.clone(),
            models.clone(),
            config.evals_config(),
        ));
        let secrets = Arc::new(
            crate::secrets::SecretBox::load(config.secrets_key.as_ref().map(|k| k.0.as_str()), &config.data_dir)
                .context("loading the secrets key")?,
        );
        let jobs = Arc::new(
            Jobs::new(
                store,
                blobs.clone(),
                models.clone(),
                trainer,
                secrets,
                config.jobs_config(),
            )
            .with_evaluator(Arc::new(crate::evals::checkpoints::CheckpointEvals(evals.clone()))),
        );
        let stop = CancellationToken::new();
        let workers = Workers {
            scheduler: scheduler::spawn(jobs.clone(), stop.clone()),
            eval_runner: crate::evals::runner::spawn(evals.clone(), stop.clone()),
            stop,
        };
        Ok(App {
            auth,
            datasets,
            jobs,
            models,
            graders,
            evals,
            chat,
            blobs,
            workers,
        })
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
        // What uploads dropped before they finished had staged goes now
        // rather than at the next start: an upload whose client vanished is
        // dropped by the HTTP/2 layer, and its own clean-up runs in the
        // background (a hard stop still leaves that to the next start).
        match self.blobs.sweep_staging().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed what dropped uploads had staged"),
            Err(e) => tracing::warn!(error = %e, "could not clear staging; the next start will"),
        }
    }
}
