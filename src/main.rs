use std::process::ExitCode;

use lathe::cli::{Command, Outcome};
use tracing_subscriber::{EnvFilter, fmt};

fn init_tracing(json: bool, default: &str) {
    let filter = EnvFilter::try_from_env("LATHE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        // Each line carries the span it was logged in (`span`) and every
        // span around it (`spans`): a job's work names its `job_id`, an
        // eval run's its `run_id`, a request's its `id`.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder.init();
    }
}

/// Resolves on ctrl-c or SIGTERM. The handlers are installed here, before
/// serving starts, so an early SIGTERM is a clean stop rather than a kill.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // The client streams uploads too: it should reuse its buffers' pages
    // rather than hand them back to the kernel between chunks.
    lathe::tune_allocator();
    let cli = lathe::cli::parse();
    let result = match cli.command {
        Command::Serve(config) => {
            init_tracing(config.log_json, "info");
            serve(*config).await.map(|()| Outcome::Ok)
        }
        Command::Worker(args) => {
            let config = args.into_config();
            init_tracing(config.log_json, "info");
            serve(config).await.map(|()| Outcome::Ok)
        }
        _ => {
            init_tracing(false, "warn");
            lathe::cli::run_client(cli).await
        }
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::NotUsable) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: lathe::config::ServeConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let shutdown = shutdown_signal();
    lathe::server::run(listener, config, shutdown).await
}
