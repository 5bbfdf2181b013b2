//! Wiring: open the store and blobs, build the services, serve until told
//! to stop, then drain.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};

use crate::api::{DatasetApi, EvalApi, FineTuningApi, GraderApi, ModelApi};
use crate::blobs::Blobs;
use crate::config::ServeConfig;
use crate::datasets::{manager::Datasets, tokens::O200k};
use crate::engine::local::{LocalEngine, StoreCatalog};
use crate::engine::trainer::{LocalTrainer, LocalTrainerConfig};
use crate::evals::manager::Evals;
use crate::graders::service::{Graders, GradersConfig};
use crate::inference::{ChatModel, LocalModels, ModelRouter};
use crate::jobs::{manager::Jobs, scheduler, trainer::Trainer};
use crate::proto::{
    FILE_DESCRIPTOR_SET, dataset_service_server::DatasetServiceServer, eval_service_server::EvalServiceServer,
    fine_tuning_service_server::FineTuningServiceServer, grader_service_server::GraderServiceServer,
    model_service_server::ModelServiceServer,
};
use crate::store;

/// Serves on `listener` until `shutdown` completes, then stops accepting
/// and gives in-flight requests `config.shutdown_grace()` to finish.
pub async fn run(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    run_with(listener, config, default_trainer(), shutdown).await
}

/// What `run` serves with: the embedded engine and trainer.
pub enum Engine {
    /// The embedded candle engine and LoRA trainer (the default).
    Embedded,
    /// A trainer brought by the embedder (tests bring a scripted one); no
    /// local inference.
    Custom(Option<Arc<dyn Trainer>>),
}

/// The trainer built into this binary.
pub fn default_trainer() -> Engine {
    Engine::Embedded
}

/// `run` with a given trainer (embedders and tests bring their own).
pub async fn run_with(
    listener: TcpListener,
    config: ServeConfig,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    crate::tune_allocator();
    // The tokenizer's tables load while the store opens, not on the first upload.
    let tokenizer = tokio::task::spawn_blocking(O200k::new);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = store::open(&config.database_url())
        .await
        .context("opening the database")?;
    let blobs = Blobs::local(config.blob_dir()).context("opening the blob directory")?;
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
        Some(path) => Arc::new(crate::inference::Providers::from_file(path).context("loading model providers")?),
        None => Arc::new(crate::inference::Providers::default()),
    };
    let (local, trainer): (Option<Arc<LocalEngine>>, Option<Arc<dyn Trainer>>) = match engine {
        Engine::Embedded => {
            let catalog = Arc::new(StoreCatalog {
                store: store.clone(),
                blobs: blobs.clone(),
            });
            let local = LocalEngine::new(catalog, config.max_generation_batch, config.max_queued_generations);
            let trainer = Arc::new(LocalTrainer::new(local.clone(), LocalTrainerConfig::default()));
            (Some(local), Some(trainer))
        }
        Engine::Custom(trainer) => (None, trainer),
    };
    // The one way to a model, for evals, model graders and the Chat RPC.
    let models: Arc<dyn ChatModel> = Arc::new(ModelRouter::new(
        providers.clone(),
        local.map(|l| l as Arc<dyn LocalModels>),
    ));
    let graders_config = GradersConfig {
        embedder: providers.embedder(),
        model_client: Some(models.clone()),
        ..GradersConfig::default()
    };
    let graders = Arc::new(Graders::new(store.clone(), graders_config));
    let evals = Arc::new(Evals::new(
        store.clone(),
        blobs.clone(),
        graders.clone(),
        models.clone(),
        config.evals_config(),
    ));
    let jobs = Arc::new(
        Jobs::new(store, blobs.clone(), trainer, config.jobs_config())
            .with_evaluator(Arc::new(crate::evals::checkpoints::CheckpointEvals(evals.clone()))),
    );
    let stop_scheduler = CancellationToken::new();
    let scheduler = scheduler::spawn(jobs.clone(), stop_scheduler.clone());
    let eval_runner = crate::evals::runner::spawn(evals.clone(), stop_scheduler.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr = listener.local_addr()?;
    // Small unary replies must not wait for Nagle's algorithm (40 ms tails).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "lathe serving");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        // Uploads stream hundreds of MB over one call; HTTP/2's 64 KiB
        // default windows would make each 256 KiB chunk wait for acks. What
        // a window admits waits in memory, so eight chunks, not more.
        .initial_stream_window_size(Some(2 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(DatasetServiceServer::new(DatasetApi::new(datasets.clone())))
        .add_service(FineTuningServiceServer::new(FineTuningApi::new(jobs.clone())))
        .add_service(ModelServiceServer::new(ModelApi::new(jobs, models)))
        .add_service(GraderServiceServer::new(GraderApi::new(graders)))
        .add_service(EvalServiceServer::new(EvalApi::new(evals)))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; letting in-flight ones finish");
            set_health(&health, tonic_health::ServingStatus::NotServing).await;
            let _ = stop_tx.send(());
            // Running jobs stop at a step boundary and go back to the queue;
            // eval runs drop their in-flight items and go back to the queue.
            stop_scheduler.cancel();
        });

    let grace = config.shutdown_grace();
    let mut server = Box::pin(server);
    let dropped_requests = tokio::select! {
        result = &mut server => {
            result?;
            false
        }
        () = async {
            if stop_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "grace period over; dropping in-flight requests");
            true
        }
    };
    if dropped_requests {
        // Uploads still streaming stop and remove what they staged.
        if tokio::time::timeout(std::time::Duration::from_secs(10), datasets.stop_uploads())
            .await
            .is_err()
        {
            tracing::warn!("uploads did not stop within 10 s");
        }
    }
    // Dropping the server drops every request still in flight.
    drop(server);
    if let Err(e) = scheduler.await {
        tracing::error!(error = %e, "the scheduler crashed");
    }
    if let Err(e) = eval_runner.await {
        tracing::error!(error = %e, "the eval runner crashed");
    }
    // No request, job or eval run is left to write to staging. What
    // uploads dropped before they finished had staged goes now rather than
    // at the next start: an upload whose client vanished is dropped by the
    // HTTP/2 layer, and its own clean-up runs in the background (a hard stop
    // still leaves that to the next start).
    match blobs.sweep_staging().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed what dropped uploads had staged"),
        Err(e) => tracing::warn!(error = %e, "could not clear staging; the next start will"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reports `status` for the server as a whole ("") and for each of the
/// five services by name, so a probe of any of them gets an answer.
async fn set_health(health: &tonic_health::server::HealthReporter, status: tonic_health::ServingStatus) {
    use tonic::server::NamedService;
    for name in [
        "",
        <DatasetServiceServer<DatasetApi> as NamedService>::NAME,
        <FineTuningServiceServer<FineTuningApi> as NamedService>::NAME,
        <ModelServiceServer<ModelApi> as NamedService>::NAME,
        <GraderServiceServer<GraderApi> as NamedService>::NAME,
        <EvalServiceServer<EvalApi> as NamedService>::NAME,
    ] {
        health.set_service_status(name, status).await;
    }
}
