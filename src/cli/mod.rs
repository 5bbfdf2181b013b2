//! The command line: `lathe serve` runs the server; every other command is a
//! gRPC client of one (`--addr` / `LATHE_ADDR`), authenticated with an API
//! key (`LATHE_API_KEY`, or a local server's `admin.key`: see `connect`).

mod admin;
mod charts;
mod chat;
mod completions;
mod connect;
mod datasets;
mod evals;
mod graders;
mod jobs;
mod models;
mod output;
mod quickstart;
mod upload;

use crate::client::DEFAULT_ADDR;
use clap::{Parser, Subcommand};
pub use connect::Outcome;

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
    Serve(Box<ServeConfig>),
    /// Run queued work from a shared database, serving only health (`serve --role worker`).
    Worker(Box<WorkerArgs>),
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
    /// Register, upload or import base models; list, inspect and delete models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Chat with a base or fine-tuned model (tokens stream as generated).
    Chat(chat::ChatArgs),
    /// List, show, relabel and delete stored chat completions.
    #[command(subcommand)]
    Completions(completions::CompletionsCommand),
    /// The main job, end to end, on an embedded server (or --addr).
    Quickstart(quickstart::QuickstartArgs),
    /// Make and list projects (admin keys).
    #[command(subcommand)]
    Projects(admin::ProjectsCommand),
    /// Make, list and revoke API keys (admin keys).
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// Who did what: admin actions and every call that changed something (admin keys).
    Audit {
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
    /// The key this CLI sends: its project and role.
    Whoami,
}

/// `lathe serve` parsed on its own, so that its help and its flags are the
/// server's only: the client flags (`--addr`, `--json`) are global to the
/// client commands and would otherwise be listed there too.
#[derive(Parser, Debug)]
#[command(
    name = "lathe serve",
    version,
    about = "Run the server (embedded SQLite and local blobs by default)."
)]
struct ServeCli {
    #[command(flatten)]
    config: ServeConfig,
}

/// `lathe worker`: a server process in the worker role.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// Run only this fine-tuning job, then exit (as a Ray job's entrypoint does).
    #[arg(long)]
    pub job: Option<String>,
    #[command(flatten)]
    pub config: ServeConfig,
}

impl WorkerArgs {
    /// The server's settings for this worker.
    pub fn into_config(self) -> ServeConfig {
        ServeConfig {
            role: crate::config::Role::Worker,
            only_job: self.job,
            ..self.config
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "lathe worker",
    version,
    about = "Run queued work from a shared database (Postgres), serving only health."
)]
struct WorkerCli {
    #[command(flatten)]
    args: WorkerArgs,
}

/// Parses the command line: `lathe serve ...` and `lathe worker ...` as the
/// server's own commands, anything else as the client's.
pub fn parse() -> Cli {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Cli
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    if args.get(1).is_some_and(|a| a == "serve") {
        let serve = ServeCli::parse_from(args.iter().skip(1));
        return Cli {
            addr: None,
            json: false,
            command: Command::Serve(Box::new(serve.config)),
        };
    }
    if args.get(1).is_some_and(|a| a == "worker") {
        let worker = WorkerCli::parse_from(args.iter().skip(1));
        return Cli {
            addr: None,
            json: false,
            command: Command::Serve(Box::new(worker.args.into_config())),
        };
    }
    Cli::parse_from(args)
}

pub async fn run_client(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Serve(_) | Command::Worker(_) => anyhow::bail!("serve and worker are not client commands"),
        Command::Datasets(cmd) => datasets::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Jobs(cmd) => jobs::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Graders(cmd) => graders::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Evals(cmd) => evals::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Models(cmd) => models::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Chat(args) => chat::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, args).await,
        Command::Completions(cmd) => completions::run(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Quickstart(args) => quickstart::run(cli.addr.as_deref(), args).await,
        Command::Projects(cmd) => admin::projects(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Keys(cmd) => admin::keys(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, cmd).await,
        Command::Audit { limit } => admin::audit(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json, limit).await,
        Command::Whoami => admin::whoami(cli.addr.as_deref().unwrap_or(DEFAULT_ADDR), cli.json).await,
    }
}
