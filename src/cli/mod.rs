//! The command line: `lathe serve` runs the server; every other command is a
//! gRPC client of one (`--addr` / `LATHE_ADDR`).

mod charts;
mod chat;
mod datasets;
mod evals;
mod graders;
mod jobs;
mod models;
mod output;
mod quickstart;
mod upload;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};

use crate::config::ServeConfig;

#[derive(Parser, Debug)]
#[command(
    name = "lathe",
    version,
    about = "Self-hosted fine-tuning: datasets, LoRA jobs, graders and evals over gRPC"
)]
pub struct Cli {
    /// Server to talk to [default: http://127.0.0.1:50051].
    #[arg(long, env = "LATHE_ADDR", global = true)]
    pub addr: Option<String>,
    /// Print machine-readable JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (embedded SQLite and local blobs by default).
    Serve(ServeConfig),
    /// Upload, inspect, split and remove datasets.
    #[command(subcommand)]
    Datasets(datasets::DatasetsCommand),
    /// Create, control and watch fine-tuning jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Run, validate, save and dry-run OpenAI-format graders.
    #[command(subcommand)]
    Graders(graders::GradersCommand),
    /// Create evals, run them over datasets, follow, read and compare runs.
    #[command(subcommand)]
    Evals(evals::EvalsCommand),
    /// Register base models; list, inspect and delete models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Chat with a base or fine-tuned model (tokens stream as generated).
    Chat(chat::ChatArgs),
    /// The main job, end to end, on an embedded server (or --addr).
    Quickstart(quickstart::QuickstartArgs),
}

/// What a client command's exit status should be.
pub enum Outcome {
    Ok,
    /// The command worked but its subject is not usable (e.g. a dataset
    /// that failed validation): exit status 2.
    NotUsable,
}

pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri.clone())?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .tcp_nodelay(true);
    endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach a lathe server at {uri}: {e} (start one with `lathe serve`)"))
}

pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

pub async fn run_client(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Serve(_) => anyhow::bail!("serve is not a client command"),
        Command::Datasets(cmd) => datasets::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Jobs(cmd) => jobs::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Graders(cmd) => graders::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Evals(cmd) => evals::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Models(cmd) => models::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Chat(args) => chat::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, args).await,
        Command::Quickstart(args) => quickstart::run(cli.addr.as_deref(), args).await,
    }
}

pub(crate) fn default_output(id: &str) -> PathBuf {
    PathBuf::from(format!("{id}.jsonl"))
}
