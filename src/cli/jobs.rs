use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::connect::Outcome;
use super::output::status_error;
use crate::proto::json::struct_from_json;
use crate::proto::{self, fine_tuning_service_client::FineTuningServiceClient, job_event, watch_job_response};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MethodArg {
    Supervised,
    Dpo,
    /// Reinforcement fine-tuning (GRPO with --grader).
    #[value(alias = "rft")]
    Reinforcement,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StateArg {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Paused,
}

impl From<StateArg> for proto::JobState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::ValidatingFiles => proto::JobState::ValidatingFiles,
            StateArg::Queued => proto::JobState::Queued,
            StateArg::Running => proto::JobState::Running,
            StateArg::Succeeded => proto::JobState::Succeeded,
            StateArg::Failed => proto::JobState::Failed,
            StateArg::Cancelled => proto::JobState::Cancelled,
            StateArg::Paused => proto::JobState::Paused,
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Base model name, or a fine-tuned model (ft:...) to continue from
    /// (SFT, then DPO on the SFT model: OpenAI's recommended order).
    #[arg(long)]
    model: String,
    /// Training dataset id (ds_...).
    #[arg(long)]
    training_file: String,
    /// Validation dataset id.
    #[arg(long)]
    validation_file: Option<String>,
    #[arg(long, value_enum, default_value = "supervised")]
    method: MethodArg,
    /// Epochs (default: auto).
    #[arg(long)]
    epochs: Option<i64>,
    #[arg(long)]
    batch_size: Option<i64>,
    #[arg(long)]
    learning_rate_multiplier: Option<f64>,
    /// DPO's beta: how far the policy may move from its reference
    /// (default: auto, 0.1); for reinforcement, the KL coefficient (auto 0).
    #[arg(long)]
    beta: Option<f64>,
    /// DPO: weight of an NLL term on the preferred output (RPO; default:
    /// auto, 0 = plain DPO). About 1 keeps the preferred answers likely.
    #[arg(long)]
    rpo_alpha: Option<f64>,
    /// Reinforcement: an OpenAI grader JSON file (or {"name": "..."} of a
    /// saved grader).
    #[arg(long)]
    grader: Option<PathBuf>,
    /// Reinforcement: OpenAI's response_format JSON file (json_schema or
    /// json_object); samples are parsed for {{ sample.output_json }}.
    #[arg(long)]
    response_format: Option<PathBuf>,
    /// Reinforcement: completions sampled per prompt (auto 8).
    #[arg(long)]
    generations_per_prompt: Option<i64>,
    /// Reinforcement: steps between validations (auto: a tenth of the run).
    #[arg(long)]
    eval_interval: Option<i64>,
    /// Reinforcement: completions per validation item (auto 1).
    #[arg(long)]
    eval_samples: Option<i64>,
    /// Reinforcement: a multiplier on the auto generations per prompt.
    #[arg(long)]
    compute_multiplier: Option<f64>,
    /// Reinforcement: low, medium or high (reasoning models only).
    #[arg(long)]
    reasoning_effort: Option<String>,
    /// Reinforcement: longest sampled completion in tokens (auto 256).
    #[arg(long)]
    max_completion_tokens: Option<i64>,
    #[arg(long)]
    lora_rank: Option<u32>,
    #[arg(long)]
    lora_alpha: Option<f64>,
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Comma-separated module names (default q,k,v,o,gate,up,down projections).
    #[arg(long, value_delimiter = ',')]
    target_modules: Vec<String>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value = "")]
    suffix: String,
    #[arg(long = "metadata", value_parser = parse_key_value)]
    metadata: Vec<(String, String)>,
    /// A retried create with the same key returns the same job.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// CPUs the job's worker reserves where jobs go to a Ray cluster
    /// (default: the server's --ray-num-cpus).
    #[arg(long)]
    cpus: Option<f64>,
    /// GPUs the job's worker reserves there, fractions allowed (default:
    /// the server's --ray-num-gpus).
    #[arg(long)]
    gpus: Option<f64>,
    /// Stop after this many evaluations without improvement.
    #[arg(long)]
    patience: Option<u32>,
    #[arg(long, default_value_t = 0.0)]
    min_delta: f64,
    /// Run this eval on the validation data at each checkpoint; its pass
    /// rate becomes a metric and, with --patience, picks the best checkpoint.
    #[arg(long)]
    checkpoint_eval: Option<String>,
    /// The checkpoint eval's criterion to watch (default: items passing all).
    #[arg(long, default_value = "")]
    checkpoint_eval_criterion: String,
    /// Most new tokens per checkpoint-eval answer.
    #[arg(long)]
    checkpoint_eval_max_tokens: Option<u32>,
    /// POST a signed JSON payload here when the job ends.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Environment variable holding the webhook signing secret.
    #[arg(long, default_value = "LATHE_WEBHOOK_SECRET")]
    webhook_secret_env: String,
    /// Watch the job after creating it.
    #[arg(long)]
    watch: bool,
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Create a fine-tuning job.
    Create(Box<CreateArgs>),
    Get {
        id: String,
    },
    /// List jobs, newest first.
    List {
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long = "metadata", value_parser = parse_key_value)]
        metadata: Vec<(String, String)>,
        #[arg(long, default_value_t = 20)]
        limit: i32,
        #[arg(long)]
        page_token: Option<String>,
    },
    Cancel {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Print the job's events.
    Events {
        id: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
    /// List checkpoints, newest first.
    Checkpoints {
        id: String,
    },
    /// Print the job's metrics step by step (each step once, from the
    /// latest attempt of a resumed job) and optionally draw the loss curve.
    Metrics {
        id: String,
        /// Write the loss curve as an SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Follow a job live; exits non-zero unless it succeeds.
    Watch {
        id: String,
        /// Resume after this event sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

fn state_name(v: i32) -> String {
    proto::JobState::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn job_json(j: &proto::Job) -> serde_json::Value {
    json!({
        "id": j.id,
        "object": "fine_tuning.job",
        "model": j.base_model,
        "start_from": (!j.start_from.is_empty()).then_some(&j.start_from),
        "status": state_name(j.state),
        "training_file": j.training_dataset_id,
        "validation_file": j.validation_dataset_id,
        "fine_tuned_model": (!j.fine_tuned_model.is_empty()).then_some(&j.fine_tuned_model),
        "fine_tuned_checkpoint_step": j.fine_tuned_checkpoint_step,
        "seed": j.seed,
        "suffix": j.suffix,
        "metadata": j.metadata,
        "priority": j.priority,
        "trained_tokens": j.trained_tokens,
        "attempts": j.attempts,
        "stop_reason": j.stop_reason,
        "created_at": j.created_at.map(|t| t.to_string()),
        "started_at": j.started_at.map(|t| t.to_string()),
        "finished_at": j.finished_at.map(|t| t.to_string()),
        "error": j.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
        "method": j.method.as_ref().and_then(|m| m.method.as_ref()).map(|m| match m {
            proto::fine_tuning_method::Method::Supervised(_) => "supervised",
            proto::fine_tuning_method::Method::Dpo(_) => "dpo",
            proto::fine_tuning_method::Method::Reinforcement(_) => "reinforcement",
        }),
    })
}

fn job_text(j: &proto::Job) -> String {
    let mut out = format!("{}  {}  {}\n", j.id, state_name(j.state).to_uppercase(), j.base_model);
    out.push_str(&format!("  training  {}", j.training_dataset_id));
    if !j.validation_dataset_id.is_empty() {
        out.push_str(&format!(", validation {}", j.validation_dataset_id));
    }
    out.push('\n');
    if !j.fine_tuned_model.is_empty() {
        out.push_str(&format!(
            "  model     {} (checkpoint step {})\n",
            j.fine_tuned_model, j.fine_tuned_checkpoint_step
        ));
    }
    if !j.stop_reason.is_empty() {
        out.push_str(&format!("  stopped   {}\n", j.stop_reason));
    }
    if let Some(e) = &j.error {
        out.push_str(&format!("  error     {}: {}\n", e.code, e.message));
    }
    out
}

fn event_json(e: &proto::JobEvent) -> serde_json::Value {
    let data = match &e.data {
        Some(job_event::Data::State(s)) => json!({"type": "state", "state": state_name(*s)}),
        Some(job_event::Data::Metrics(m)) => json!({
            "type": "metrics", "step": m.step, "total_steps": m.total_steps, "epoch": m.epoch,
            "train_loss": m.train_loss, "valid_loss": m.valid_loss,
            "train_mean_token_accuracy": m.train_mean_token_accuracy,
            "valid_mean_token_accuracy": m.valid_mean_token_accuracy,
            "learning_rate": m.learning_rate, "tokens_per_second": m.tokens_per_second,
            "train_reward_mean": m.train_reward_mean, "valid_reward_mean": m.valid_reward_mean,
            "eval_pass_rate": m.eval_pass_rate,
            "eval_run_id": (!m.eval_run_id.is_empty()).then_some(&m.eval_run_id),
            "values": m.values,
        }),
        Some(job_event::Data::Checkpoint(c)) => json!({
            "type": "checkpoint", "id": c.id, "step": c.step_number,
            "fine_tuned_model_checkpoint": c.fine_tuned_model_checkpoint,
        }),
        None => json!({"type": "message"}),
    };
    let level = match proto::EventLevel::try_from(e.level) {
        Ok(proto::EventLevel::Warn) => "warn",
        Ok(proto::EventLevel::Error) => "error",
        _ => "info",
    };
    json!({"object": "fine_tuning.job.event", "seq": e.seq, "attempt": e.attempt, "level": level,
           "message": e.message, "created_at": e.created_at.map(|t| t.to_string()), "data": data})
}

fn outcome_of(j: &proto::Job) -> Outcome {
    if j.state == proto::JobState::Succeeded as i32 {
        Outcome::Ok
    } else {
        Outcome::NotUsable
    }
}

fn auto_i(v: Option<i64>) -> Option<proto::AutoInt> {
    v.map(|n| proto::AutoInt {
        value: Some(proto::auto_int::Value::Number(n)),
    })
}

fn auto_f(v: Option<f64>) -> Option<proto::AutoDouble> {
    v.map(|n| proto::AutoDouble {
        value: Some(proto::auto_double::Value::Number(n)),
    })
}

fn create_request(a: CreateArgs) -> anyhow::Result<proto::CreateJobRequest> {
    use proto::fine_tuning_method::Method;
    let json_file = |path: &Option<PathBuf>| -> anyhow::Result<_> {
        path.as_deref()
            .map(|p| Ok(struct_from_json(&super::output::read_json(p)?)))
            .transpose()
    };
    let grader = json_file(&a.grader)?;
    let response_format = json_file(&a.response_format)?;
    let method = match a.method {
        MethodArg::Supervised => Method::Supervised(proto::SupervisedMethod {
            n_epochs: auto_i(a.epochs),
            batch_size: auto_i(a.batch_size),
            learning_rate_multiplier: auto_f(a.learning_rate_multiplier),
        }),
        MethodArg::Dpo => Method::Dpo(proto::DpoMethod {
            n_epochs: auto_i(a.epochs),
            batch_size: auto_i(a.batch_size),
            learning_rate_multiplier: auto_f(a.learning_rate_multiplier),
            beta: auto_f(a.beta),
            rpo_alpha: auto_f(a.rpo_alpha),
        }),
        MethodArg::Reinforcement => Method::Reinforcement(proto::ReinforcementMethod {
            n_epochs: auto_i(a.epochs),
            batch_size: auto_i(a.batch_size),
            learning_rate_multiplier: auto_f(a.learning_rate_multiplier),
            grader,
            eval_interval: auto_i(a.eval_interval),
            eval_samples: auto_i(a.eval_samples),
            generations_per_prompt: auto_i(a.generations_per_prompt),
            compute_multiplier: auto_f(a.compute_multiplier),
            reasoning_effort: a.reasoning_effort.clone().unwrap_or_default(),
            beta: auto_f(a.beta),
            max_completion_tokens: auto_i(a.max_completion_tokens),
            response_format,
        }),
    };
    let webhook = match a.webhook_url {
        Some(url) => Some(proto::Webhook {
            url,
            secret: std::env::var(&a.webhook_secret_env).unwrap_or_default(),
        }),
        None => None,
    };
    Ok(proto::CreateJobRequest {
        base_model: a.model,
        training_dataset_id: a.training_file,
        validation_dataset_id: a.validation_file.unwrap_or_default(),
        method: Some(proto::FineTuningMethod { method: Some(method) }),
        // No LoRA flag: the server's defaults (or, on a fine-tuned model,
        // its adapter's settings).
        lora: (a.lora_rank.is_some()
            || a.lora_alpha.is_some()
            || a.lora_dropout.is_some()
            || !a.target_modules.is_empty())
        .then(|| proto::LoraConfig {
            rank: a.lora_rank.unwrap_or(0),
            alpha: a.lora_alpha.unwrap_or(0.0),
            // The server's default for the method (proto3 cannot leave it unset).
            dropout: a.lora_dropout.unwrap_or(if matches!(a.method, MethodArg::Supervised) {
                0.05
            } else {
                0.0
            }),
            target_modules: a.target_modules,
        }),
        seed: a.seed,
        suffix: a.suffix,
        metadata: a.metadata.into_iter().collect(),
        idempotency_key: a.idempotency_key.unwrap_or_default(),
        priority: a.priority,
        early_stopping: a.patience.map(|patience| proto::EarlyStopping {
            patience,
            min_delta: a.min_delta,
        }),
        webhook,
        checkpoint_eval: a.checkpoint_eval.map(|eval_id| proto::CheckpointEval {
            eval_id,
            sampling_params: Some(proto::EvalSamplingParams {
                max_tokens: a.checkpoint_eval_max_tokens,
                ..Default::default()
            }),
            criterion: a.checkpoint_eval_criterion,
            ..Default::default()
        }),
        resources: (a.cpus.is_some() || a.gpus.is_some()).then(|| proto::JobResources {
            cpus: a.cpus.unwrap_or(0.0),
            gpus: a.gpus.unwrap_or(0.0),
        }),
    })
}

pub async fn run(addr: &str, json: bool, cmd: JobsCommand) -> anyhow::Result<Outcome> {
    let mut client = super::connect::connect(addr).await?.jobs();
    let print = |j: &proto::Job| {
        if json {
            println!("{}", job_json(j));
        } else {
            print!("{}", job_text(j));
        }
    };
    match cmd {
        JobsCommand::Create(args) => {
            let watch = args.watch;
            let req = create_request(*args)?;
            let job = client
                .create_job(req)
                .await
                .map_err(status_error)?
                .into_inner()
                .job
                .unwrap_or_default();
            print(&job);
            if watch {
                return watch_job(&mut client, &job.id, 0, json).await;
            }
            Ok(Outcome::Ok)
        }
        JobsCommand::Get { id } => {
            let job = client
                .get_job(proto::GetJobRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .job
                .unwrap_or_default();
            print(&job);
            Ok(Outcome::Ok)
        }
        JobsCommand::List {
            state,
            model,
            metadata,
            limit,
            page_token,
        } => {
            let page = client
                .list_jobs(proto::ListJobsRequest {
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                    state: state.map(|s| proto::JobState::from(s) as i32).unwrap_or(0),
                    base_model: model.unwrap_or_default(),
                    metadata: metadata.into_iter().collect(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let data: Vec<_> = page.jobs.iter().map(job_json).collect();
                println!(
                    "{}",
                    json!({"object": "list", "data": data, "next_page_token": page.next_page_token})
                );
            } else {
                for j in &page.jobs {
                    println!(
                        "{:<30}  {:<16}  {:<20}  {}",
                        j.id,
                        state_name(j.state),
                        j.base_model,
                        j.fine_tuned_model
                    );
                }
                if !page.next_page_token.is_empty() {
                    println!("more: --page-token {}", page.next_page_token);
                }
            }
            Ok(Outcome::Ok)
        }
        JobsCommand::Cancel { id } => {
            let job = client
                .cancel_job(proto::CancelJobRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .job
                .unwrap_or_default();
            print(&job);
            Ok(Outcome::Ok)
        }
        JobsCommand::Pause { id } => {
            let job = client
                .pause_job(proto::PauseJobRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .job
                .unwrap_or_default();
            print(&job);
            Ok(Outcome::Ok)
        }
        JobsCommand::Resume { id } => {
            let job = client
                .resume_job(proto::ResumeJobRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .job
                .unwrap_or_default();
            print(&job);
            Ok(Outcome::Ok)
        }
        JobsCommand::Events { id, after, limit } => {
            let page = events_page(&mut client, &id, after, limit).await?;
            for e in &page.events {
                if json {
                    println!("{}", event_json(e));
                } else {
                    println!("{:>6}  {}", e.seq, e.message);
                }
            }
            Ok(Outcome::Ok)
        }
        JobsCommand::Checkpoints { id } => {
            let page = client
                .list_checkpoints(proto::ListCheckpointsRequest {
                    job_id: id,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for c in &page.checkpoints {
                let m = c.metrics.clone().unwrap_or_default();
                if json {
                    println!(
                        "{}",
                        json!({"id": c.id, "object": "fine_tuning.job.checkpoint", "step_number": c.step_number,
                               "fine_tuned_model_checkpoint": c.fine_tuned_model_checkpoint,
                               "metrics": {"train_loss": m.train_loss, "valid_loss": m.valid_loss,
                                           "eval_pass_rate": m.eval_pass_rate,
                                           "eval_run_id": (!m.eval_run_id.is_empty()).then_some(&m.eval_run_id)}})
                    );
                } else {
                    println!(
                        "step {:>6}  {}  train loss {}  valid loss {}{}",
                        c.step_number,
                        c.fine_tuned_model_checkpoint,
                        m.train_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
                        m.valid_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
                        m.eval_pass_rate
                            .map(|v| format!("  eval pass rate {v:.4}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(Outcome::Ok)
        }
        JobsCommand::Metrics { id, svg } => {
            let mut history = StepHistory::default();
            let mut after = 0;
            loop {
                let page = events_page(&mut client, &id, after, 1000).await?;
                for e in &page.events {
                    after = e.seq;
                    history.push(e);
                }
                if page.next_page_token.is_empty() {
                    break;
                }
            }
            let steps = history.steps();
            for m in &steps {
                if json {
                    println!(
                        "{}",
                        json!({"step": m.step, "total_steps": m.total_steps, "train_loss": m.train_loss,
                               "valid_loss": m.valid_loss, "learning_rate": m.learning_rate,
                               "eval_pass_rate": m.eval_pass_rate, "train_reward_mean": m.train_reward_mean,
                               "valid_reward_mean": m.valid_reward_mean, "values": m.values})
                    );
                } else {
                    let rewards = match (m.train_reward_mean, m.valid_reward_mean) {
                        (None, None) => String::new(),
                        (t, v) => format!(
                            "  train reward {}  valid reward {}",
                            t.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
                            v.map(|v| format!("{v:.4}")).unwrap_or("-".into())
                        ),
                    };
                    println!(
                        "step {:>6}/{}  train loss {}  valid loss {}{rewards}",
                        m.step,
                        m.total_steps,
                        m.train_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
                        m.valid_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
                    );
                }
            }
            if let Some(path) = svg {
                std::fs::write(&path, loss_chart(&format!("{id}: loss"), &steps))
                    .with_context(|| format!("writing {}", path.display()))?;
                // RFT's rewards, train and validation.
                if let Some(chart) = reward_chart(&format!("{id}: reward"), &steps) {
                    let file = path.with_file_name(format!(
                        "{}-reward.svg",
                        path.file_stem().and_then(|s| s.to_str()).unwrap_or("metrics")
                    ));
                    std::fs::write(&file, chart).with_context(|| format!("writing {}", file.display()))?;
                }
                // A method's own measures, beside it (DPO's rewards).
                for name in ["rewards/accuracies", "rewards/margins"] {
                    if let Some(chart) = value_chart(&format!("{id}: {name}"), name, &steps) {
                        let file = path.with_file_name(format!(
                            "{}-{}.svg",
                            path.file_stem().and_then(|s| s.to_str()).unwrap_or("metrics"),
                            name.replace('/', "-")
                        ));
                        std::fs::write(&file, chart).with_context(|| format!("writing {}", file.display()))?;
                    }
                }
            }
            Ok(Outcome::Ok)
        }
        JobsCommand::Watch { id, after } => watch_job(&mut client, &id, after, json).await,
    }
}

/// Streams a job's events: a progress bar with the loss on a terminal,
/// one line (or JSON object) per event otherwise.
async fn watch_job(
    client: &mut FineTuningServiceClient<crate::client::Channel>,
    id: &str,
    after: u64,
    json: bool,
) -> anyhow::Result<Outcome> {
    let mut stream = client
        .watch_job(proto::WatchJobRequest {
            job_id: id.to_string(),
            after_seq: after,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:40}] step {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        match msg.payload {
            Some(watch_job_response::Payload::Event(e)) => {
                if json {
                    println!("{}", event_json(&e));
                    continue;
                }
                match (&bar, &e.data) {
                    (Some(bar), Some(job_event::Data::Metrics(m))) => {
                        bar.set_length(m.total_steps);
                        bar.set_position(m.step);
                        let loss = m.train_loss.map(|l| format!("loss {l:.4}")).unwrap_or_default();
                        let valid = m.valid_loss.map(|l| format!(" valid {l:.4}")).unwrap_or_default();
                        bar.set_message(format!("{loss}{valid}"));
                    }
                    (Some(bar), _) => bar.println(format!("{:>6}  {}", e.seq, e.message)),
                    (None, _) => println!("{:>6}  {}", e.seq, e.message),
                }
            }
            Some(watch_job_response::Payload::End(end)) => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                let job = end.job.unwrap_or_default();
                if json {
                    println!("{}", json!({"end": job_json(&job)}));
                } else {
                    print!("{}", job_text(&job));
                }
                return Ok(outcome_of(&job));
            }
            None => {}
        }
    }
    anyhow::bail!("the server ended the watch without its final message")
}

/// One page of a job's events after `after`.
async fn events_page(
    client: &mut FineTuningServiceClient<crate::client::Channel>,
    id: &str,
    after: u64,
    limit: i32,
) -> anyhow::Result<proto::ListJobEventsResponse> {
    Ok(client
        .list_job_events(proto::ListJobEventsRequest {
            job_id: id.to_string(),
            page_size: limit,
            page_token: String::new(),
            after_seq: after,
        })
        .await
        .map_err(status_error)?
        .into_inner())
}

/// A job's metrics events folded into its history: each step once. A job
/// resumed from a checkpoint trains the steps after it again, as a new
/// attempt; a later attempt's metrics replace those of every earlier
/// attempt from its first step on, so the history never runs backwards.
#[derive(Default)]
pub(crate) struct StepHistory {
    /// (attempt, metrics), in event order.
    entries: Vec<(u32, proto::JobMetrics)>,
}

impl StepHistory {
    pub(crate) fn push(&mut self, e: &proto::JobEvent) {
        if let Some(job_event::Data::Metrics(m)) = &e.data {
            self.push_metrics(e.attempt, m.clone());
        }
    }

    pub(crate) fn push_metrics(&mut self, attempt: u32, m: proto::JobMetrics) {
        self.entries.retain(|(a, old)| *a >= attempt || old.step < m.step);
        self.entries.push((attempt, m));
    }

    /// One metrics record per step, by step; where a step reported more than
    /// once in one attempt (a checkpoint eval adds its pass rate), the last.
    pub(crate) fn steps(&self) -> Vec<proto::JobMetrics> {
        let mut by_step = std::collections::BTreeMap::new();
        for (_, m) in &self.entries {
            by_step.insert(m.step, m.clone());
        }
        by_step.into_values().collect()
    }
}

/// The train and validation loss curves of a job's history, as SVG.
pub(crate) fn loss_chart(title: &str, steps: &[proto::JobMetrics]) -> String {
    let train: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|m| m.train_loss.map(|l| (m.step as f64, l)))
        .collect();
    let valid: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|m| m.valid_loss.map(|l| (m.step as f64, l)))
        .collect();
    super::charts::line_chart(
        title,
        "step",
        "loss (trained tokens)",
        &[("train", &train), ("validation", &valid)],
    )
}

/// The train and validation mean reward of an RFT job, as SVG; None when
/// no step has one.
pub(crate) fn reward_chart(title: &str, steps: &[proto::JobMetrics]) -> Option<String> {
    let train: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|m| m.train_reward_mean.map(|r| (m.step as f64, r)))
        .collect();
    let valid: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|m| m.valid_reward_mean.map(|r| (m.step as f64, r)))
        .collect();
    if train.is_empty() && valid.is_empty() {
        return None;
    }
    Some(super::charts::line_chart(
        title,
        "step",
        "mean reward",
        &[("train", &train), ("validation", &valid)],
    ))
}

/// A method's value `name` (`train_<name>` and `valid_<name>` in the
/// metrics' values) by step, as SVG; None when no step has it.
pub(crate) fn value_chart(title: &str, name: &str, steps: &[proto::JobMetrics]) -> Option<String> {
    let series = |prefix: &str| -> Vec<(f64, f64)> {
        let key = format!("{prefix}_{name}");
        steps
            .iter()
            .filter_map(|m| m.values.get(&key).map(|v| (m.step as f64, *v)))
            .collect()
    };
    let (train, valid) = (series("train"), series("valid"));
    if train.is_empty() && valid.is_empty() {
        return None;
    }
    Some(super::charts::line_chart(
        title,
        "step",
        name,
        &[("train", &train), ("validation", &valid)],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(step: u64, loss: f64) -> proto::JobMetrics {
        proto::JobMetrics {
            step,
            train_loss: Some(loss),
            ..Default::default()
        }
    }

    #[test]
    fn a_resumed_job_shows_each_step_once_from_its_latest_attempt() {
        let mut h = StepHistory::default();
        for step in 1..=10 {
            h.push_metrics(1, metrics(step, 10.0 - step as f64));
        }
        // Killed after step 10, resumed from the checkpoint at step 6: the
        // second attempt trains 7.. again, and stops early at 8.
        for step in 7..=8 {
            h.push_metrics(2, metrics(step, 100.0 + step as f64));
        }
        let steps = h.steps();
        let got: Vec<(u64, f64)> = steps.iter().map(|m| (m.step, m.train_loss.unwrap())).collect();
        let mut want: Vec<(u64, f64)> = (1..=6).map(|s| (s, 10.0 - s as f64)).collect();
        want.extend([(7, 107.0), (8, 108.0)]);
        assert_eq!(got, want);
    }

    #[test]
    fn the_last_report_of_a_step_in_one_attempt_wins() {
        let mut h = StepHistory::default();
        h.push_metrics(1, metrics(5, 1.0));
        let mut scored = metrics(5, 1.0);
        scored.eval_pass_rate = Some(0.5);
        h.push_metrics(1, scored);
        assert_eq!(h.steps().len(), 1);
        assert_eq!(h.steps()[0].eval_pass_rate, Some(0.5));
    }
}
