//! The front doors: listen (plaintext or TLS), mount the `App`'s services
//! as gRPC handlers and as the OpenAI-compatible REST routes on the same
//! port, serve until told to stop, then drain.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};

use crate::api::{AdminApi, DatasetApi, EvalApi, FineTuningApi, GraderApi, ModelApi};
use crate::app::{App, Engine};
use crate::config::ServeConfig;
use crate::gate::GateLayer;
use crate::proto::{
    FILE_DESCRIPTOR_SET, admin_service_server::AdminServiceServer, dataset_service_server::DatasetServiceServer,
    eval_service_server::EvalServiceServer, fine_tuning_service_server::FineTuningServiceServer,
    grader_service_server::GraderServiceServer, model_service_server::ModelServiceServer,
};

/// Serves the embedded engine on `listener` until `shutdown` completes,
/// then stops accepting and gives in-flight requests
/// `config.shutdown_grace()` to finish.
pub async fn run(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    run_with(listener, config, Engine::Embedded, shutdown).await
}

/// `run` with a given engine (embedders and tests bring their own trainer).
pub async fn run_with(
    listener: TcpListener,
    config: ServeConfig,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let loopback = listener.local_addr()?.ip().is_loopback();
    // Settings that cannot work fail the start before the store is opened.
    config.check()?;
    let tls = crate::tls::ServerTls::load(&config.tls)?;
    let acceptor = tls.as_ref().map(crate::tls::ServerTls::acceptor).transpose()?;
    if tls.is_none() && !loopback {
        tracing::warn!(
            "serving plaintext HTTP/2 beyond loopback: API keys travel in clear text; \
             fine behind a proxy that terminates TLS, otherwise set --tls-cert and --tls-key"
        );
    }
    // Recording starts before the workers do.
    crate::telemetry::install();
    let app = App::open(&config, engine).await?;
    let admin_key = config.admin_key.as_ref().map(|k| k.0.as_str());
    // Keys are the API's business; a worker serves no API.
    let bootstrap = match config.role.serves_api() {
        true => Some(app.auth.bootstrap(&config.data_dir, loopback, admin_key).await),
        false => None,
    };
    match bootstrap.unwrap_or(Ok(crate::auth::Bootstrap::Existing)) {
        Ok(crate::auth::Bootstrap::WroteKeyFile(path)) => {
            tracing::info!(file = %path.display(), "wrote an admin API key for the default project (owner-only file)")
        }
        Ok(_) => {}
        Err(e) => {
            app.close().await;
            return Err(anyhow::anyhow!("{e}"));
        }
    }
    let addr = listener.local_addr()?;
    let dropped = match acceptor {
        Some(acceptor) => serve(crate::tls::incoming(listener, acceptor), addr, &app, &config, shutdown).await,
        None => {
            // Small unary replies must not wait for Nagle's algorithm (40 ms tails).
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            serve(incoming, addr, &app, &config, shutdown).await
        }
    };
    if matches!(dropped, Ok(true)) {
        app.stop_uploads().await;
    }
    // Dropping the server dropped every request still in flight: no
    // request is left to write to staging.
    let failure = app.failure();
    app.close().await;
    tracing::info!("stopped");
    dropped?;
    match failure {
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

/// The server's transport settings. Uploads stream hundreds of MB over
/// one call; HTTP/2's 64 KiB default windows would make each 256 KiB chunk
/// wait for acks. What a window admits waits in memory, so eight chunks,
/// not more.
fn builder() -> Server {
    Server::builder()
        .initial_stream_window_size(Some(2 << 20))
        .initial_connection_window_size(Some(8 << 20))
}

/// Serves `app` on `incoming` connections (plaintext or handshaken TLS)
/// until `shutdown`, then drains for the grace period; true when requests
/// were still in flight at its end (and were dropped).
async fn serve<IO>(
    incoming: impl futures::Stream<Item = std::io::Result<IO>>,
    addr: std::net::SocketAddr,
    app: &App,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<bool>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    // Each dependency's health under its own name; the server's own ("")
    // stays SERVING while a dependency is down, so a liveness probe does
    // not restart a replica for an outage it cannot fix.
    let reports = tokio::spawn(report_dependencies(app.health(), health.clone()));
    let _reports = tokio_util::task::AbortOnDropHandle::new(reports);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    tracing::info!(
        %addr,
        role = ?config.role,
        data_dir = %config.data_dir.display(),
        tls = config.tls.tls_cert.is_some(),
        client_certificates = config.tls.tls_client_ca.is_some(),
        "lathe serving"
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut grpc = tonic::service::RoutesBuilder::default();
    grpc.add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    if config.role.serves_api() {
        grpc.add_service(AdminServiceServer::new(AdminApi::new(app.auth.clone())))
            .add_service(DatasetServiceServer::new(DatasetApi::new(
                app.datasets.clone(),
                app.synth.clone(),
            )))
            .add_service(FineTuningServiceServer::new(FineTuningApi::new(app.jobs.clone())))
            .add_service(ModelServiceServer::new(ModelApi::new(
                app.models.clone(),
                app.chat.clone(),
                app.completions.clone(),
            )))
            .add_service(GraderServiceServer::new(GraderApi::new(app.graders.clone())))
            .add_service(EvalServiceServer::new(EvalApi::new(
                app.evals.clone(),
                app.optimizer.clone(),
            )));
    }
    // One port, two doors: gRPC's routes by service name, REST's under /v1/;
    // and Prometheus' scrape (open, like health), which workers serve too.
    let scrape = app.scrape();
    let mut routes = grpc.routes().into_axum_router().route(
        crate::gate::METRICS,
        axum::routing::get(move || {
            let scrape = scrape.clone();
            async move {
                let content_type = [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
                (content_type, scrape.render().await)
            }
        }),
    );
    if config.role.serves_api() {
        routes = routes.merge(crate::rest::router(crate::rest::Rest::new(app)));
    }
    let server = builder()
        // REST clients (the `openai` SDK among them) speak HTTP/1.1.
        .accept_http1(true)
        .trace_fn(|req| tracing::info_span!("call", method = %req.method(), path = %req.uri().path()))
        // Every call but health probes needs an API key (`gate`).
        .layer(GateLayer::new(app.auth.clone()))
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(incoming, async move {
            // A process started for one job stops once it is done with it.
            tokio::select! {
                () = shutdown => {}
                () = app.finished() => tracing::info!("done with the job this worker was started for"),
            }
            tracing::info!("shutting down: no new requests; letting in-flight ones finish");
            set_health(&health, tonic_health::ServingStatus::NotServing).await;
            let _ = stop_tx.send(());
            app.stop_workers();
        });

    let grace = config.shutdown_grace();
    let mut server = Box::pin(server);
    tokio::select! {
        result = &mut server => {
            result?;
            Ok(false)
        }
        () = async {
            if stop_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "grace period over; dropping in-flight requests");
            Ok(true)
        }
    }
}

/// Reports each checked dependency as `lathe.{name}` (`lathe.database`,
/// `lathe.object_store`, `lathe.ray`): SERVING while it answers, NOT_SERVING
/// while it does not; kept current until the checks stop.
async fn report_dependencies(
    mut status: tokio::sync::watch::Receiver<crate::health::Status>,
    health: tonic_health::server::HealthReporter,
) {
    loop {
        let current = status.borrow_and_update().clone();
        for (dependency, up) in current {
            let serving = if up {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health
                .set_service_status(format!("lathe.{}", dependency.name()), serving)
                .await;
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Reports `status` for the server as a whole ("") and for each of the
/// six services by name, so a probe of any of them gets an answer.
async fn set_health(health: &tonic_health::server::HealthReporter, status: tonic_health::ServingStatus) {
    use tonic::server::NamedService;
    for name in [
        "",
        <AdminServiceServer<AdminApi> as NamedService>::NAME,
        <DatasetServiceServer<DatasetApi> as NamedService>::NAME,
        <FineTuningServiceServer<FineTuningApi> as NamedService>::NAME,
        <ModelServiceServer<ModelApi> as NamedService>::NAME,
        <GraderServiceServer<GraderApi> as NamedService>::NAME,
        <EvalServiceServer<EvalApi> as NamedService>::NAME,
    ] {
        health.set_service_status(name, status).await;
    }
}
