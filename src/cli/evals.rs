//! `lathe evals ...`: create evals, run them (with a live progress bar),
//! read results and compare runs.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::connect::Outcome;
use super::output::read_json;
use super::output::status_error;
use crate::proto::json::{struct_from_json, value_from_json};
use crate::proto::{
    self, create_eval_run_request::Source, eval_service_client::EvalServiceClient, watch_eval_run_response,
};

type Client = EvalServiceClient<crate::client::Channel>;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StatusArg {
    Pass,
    Fail,
    Error,
}

#[derive(clap::Args, Debug)]
pub struct OptimizeArgs {
    eval_id: String,
    #[arg(long)]
    model: String,
    /// The user message after the instructions, e.g. "{{ item.text }}".
    #[arg(long, conflicts_with = "messages")]
    prompt: Option<String>,
    /// A JSON file with the messages after the instructions.
    #[arg(long)]
    messages: Option<PathBuf>,
    /// The original instructions (a system message).
    #[arg(long, default_value = "")]
    instructions: String,
    /// Instructions to try, in order; repeatable.
    #[arg(long = "candidate")]
    candidates: Vec<String>,
    /// A model that rewrites instructions from low-scored answers.
    #[arg(long)]
    reflection_model: Option<String>,
    #[arg(long)]
    train: String,
    #[arg(long)]
    validation: String,
    /// Held-out items: the original and the best prompt are compared on them.
    #[arg(long)]
    test: Option<String>,
    /// Few-shot demonstrations per prompt, drawn from training items.
    #[arg(long, default_value_t = 0)]
    max_demos: u32,
    /// JSON pointer to a training item's reference answer, e.g. /label.
    #[arg(long)]
    demo_answer_field: Option<String>,
    #[arg(long, default_value_t = 0)]
    minibatch: u32,
    /// Model calls the search may spend.
    #[arg(long)]
    budget_calls: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    max_tokens: Option<u32>,
    #[arg(long, default_value_t = 0)]
    concurrency: u32,
    /// Poll until it ends.
    #[arg(long)]
    watch: bool,
}

fn optimization_json(o: &proto::PromptOptimization) -> Value {
    let cmp = |c: &Option<proto::PromptComparison>| {
        c.as_ref().map(|c| {
            json!({"dataset_id": c.dataset_id, "items": c.items, "original_mean": c.original_mean,
                   "best_mean": c.best_mean, "mean_difference": c.mean_difference,
                   "ci95": [c.ci_low, c.ci_high], "original_passed": c.original_passed,
                   "best_passed": c.best_passed, "mcnemar_p": c.mcnemar_p})
        })
    };
    json!({
        "id": o.id,
        "eval_id": o.eval_id,
        "model": o.model,
        "state": proto::EvalRunState::try_from(o.state).map_or("unknown", |s| s.as_str_name()),
        "candidates": o.candidates.iter().map(|c| json!({
            "instructions": c.instructions, "demos": c.demos, "origin": c.origin, "parent": c.parent,
            "validation_mean": c.validation_mean, "validation_passed": c.validation_passed})).collect::<Vec<_>>(),
        "best": o.best,
        "validation": cmp(&o.validation),
        "test": cmp(&o.test),
        "steps": o.steps,
        "rejected": o.rejected,
        "model_calls": o.model_calls,
        "max_model_calls": o.max_model_calls,
        "tokens": o.tokens,
        "stopped": o.stopped,
        "error": o.error,
    })
}

fn optimization_text(o: &proto::PromptOptimization) -> String {
    let state = proto::EvalRunState::try_from(o.state).map_or("unknown", |s| s.as_str_name());
    let mut out = format!(
        "{}  {state}  steps {} ({} rejected)  calls {}/{}\n",
        o.id, o.steps, o.rejected, o.model_calls, o.max_model_calls
    );
    for (i, c) in o.candidates.iter().enumerate() {
        let mark = if i as i32 == o.best { "*" } else { " " };
        let first: String = c.instructions.chars().take(70).collect();
        out.push_str(&format!(
            "{mark} {i:>2} {:<14} mean {:.3}  passed {}  demos {:?}  {first:?}\n",
            c.origin, c.validation_mean, c.validation_passed, c.demos
        ));
    }
    for (name, c) in [("validation", &o.validation), ("test", &o.test)] {
        if let Some(c) = c {
            out.push_str(&format!(
                "{name}: {} items, original {:.3} -> best {:.3}, difference {:+.3} (95% CI {:+.3} to {:+.3}), passed {} -> {}, McNemar p = {:.3}\n",
                c.items, c.original_mean, c.best_mean, c.mean_difference, c.ci_low, c.ci_high,
                c.original_passed, c.best_passed, c.mcnemar_p
            ));
        }
    }
    if !o.stopped.is_empty() {
        out.push_str(&format!("stopped by {}\n", o.stopped));
    }
    if !o.error.is_empty() {
        out.push_str(&format!("error: {}\n", o.error));
    }
    out
}

fn show_optimization(json: bool, o: &proto::PromptOptimization) {
    if json {
        println!("{}", optimization_json(o));
    } else {
        print!("{}", optimization_text(o));
    }
}

/// Polls a prompt optimisation until it ends; the last state.
async fn watch_optimization(
    client: &mut crate::proto::eval_service_client::EvalServiceClient<crate::client::Channel>,
    id: String,
    json_out: bool,
) -> anyhow::Result<proto::PromptOptimization> {
    let mut steps = None;
    loop {
        let o = client
            .get_prompt_optimization(proto::GetPromptOptimizationRequest { id: id.clone() })
            .await
            .map_err(status_error)?
            .into_inner()
            .optimization
            .unwrap_or_default();
        let done = !matches!(
            proto::EvalRunState::try_from(o.state),
            Ok(proto::EvalRunState::Queued | proto::EvalRunState::InProgress)
        );
        if !json_out && steps != Some(o.steps) && !done {
            eprintln!(
                "step {}: {} candidates kept, {} rejected, {}/{} calls",
                o.steps,
                o.candidates.len(),
                o.rejected,
                o.model_calls,
                o.max_model_calls
            );
            steps = Some(o.steps);
        }
        if done {
            return Ok(o);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    eval_id: String,
    /// An eval dataset (ds_...): one item per row.
    #[arg(long)]
    dataset: String,
    /// Model to sample: provider/model for an HTTP provider.
    #[arg(long, conflicts_with = "sample_template")]
    model: Option<String>,
    /// A JSON file with the input messages ([{"role", "content"}], {{ item.* }} allowed).
    #[arg(long, requires = "model")]
    messages: Option<PathBuf>,
    /// One user message (instead of --messages), e.g. "Q: {{ item.question }}".
    #[arg(long, requires = "model", conflicts_with = "messages")]
    prompt: Option<String>,
    /// Each item's own messages (instead of --prompt), e.g. "item.messages"
    /// for fine-tuning rows; a final assistant message is left out.
    #[arg(long, requires = "model", conflicts_with_all = ["messages", "prompt"])]
    item_reference: Option<String>,
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    max_tokens: Option<u32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop handing out items before the run's model calls would pass this.
    #[arg(long)]
    budget_calls: Option<u64>,
    /// Stop handing out items once finished items' tokens reach this.
    #[arg(long)]
    budget_tokens: Option<u64>,
    /// A JSON file with OpenAI tools the model may call ([{"type": "function", ...}]).
    #[arg(long, requires = "model")]
    tools: Option<PathBuf>,
    /// Precomputed samples: render each item's sample, e.g. "{{ item.output }}".
    #[arg(long)]
    sample_template: Option<String>,
    /// Precomputed samples from rows of {"item", "sample"}.
    #[arg(long, conflicts_with_all = ["model", "sample_template"])]
    precomputed: bool,
    /// Items in flight (default 16, at most 256).
    #[arg(long, default_value_t = 0)]
    concurrency: u32,
    /// Fail the run when more than this fraction of items error (default 0.5).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    #[arg(long, default_value = "")]
    name: String,
    /// Follow the run with a progress bar, then print its results.
    #[arg(long)]
    watch: bool,
}

#[derive(Subcommand, Debug)]
pub enum EvalsCommand {
    /// Create an eval from testing criteria.
    Create {
        #[arg(long)]
        name: String,
        /// A JSON file: a grader object (with OpenAI's inline "pass_threshold" where it
        /// has one), or {"grader": {...}, "pass_threshold": x}. Repeatable.
        #[arg(long = "criterion")]
        criteria: Vec<PathBuf>,
        /// A saved grader as a criterion: NAME or NAME=THRESHOLD. Repeatable.
        #[arg(long = "saved-grader")]
        saved: Vec<String>,
        /// A JSON schema file every item must satisfy.
        #[arg(long)]
        item_schema: Option<PathBuf>,
    },
    /// List evals, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i32,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Rename an eval or replace its metadata.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// KEY=VALUE, repeatable: replaces the eval's metadata with these.
        #[arg(long = "metadata")]
        metadata: Vec<String>,
        /// Remove all of the eval's metadata.
        #[arg(long, conflicts_with = "metadata")]
        clear_metadata: bool,
    },
    /// Delete an eval with its runs and their output items (unfinished runs stop).
    Delete {
        id: String,
    },
    /// Delete one run and its output items (an unfinished run stops).
    DeleteRun {
        id: String,
    },
    /// Start a run of an eval over a dataset.
    Run(Box<RunArgs>),
    /// Search for better instructions and few-shot demonstrations against
    /// an eval's graders, within a budget of model calls.
    Optimize(Box<OptimizeArgs>),
    /// Show a prompt optimisation: its candidates, the best and the comparison.
    Optimization {
        id: String,
        /// Poll until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Stop a prompt optimisation that has not finished.
    CancelOptimization {
        id: String,
    },
    /// Follow a run live; exits non-zero unless it completes.
    Watch {
        id: String,
        /// Resume after this progress sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    Get {
        id: String,
    },
    Cancel {
        id: String,
    },
    /// List a run's output items in dataset order.
    Items {
        id: String,
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        #[arg(long, default_value_t = 20)]
        limit: i32,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Compare runs of one eval (the first is the baseline).
    Compare {
        #[arg(required = true, num_args = 2..)]
        ids: Vec<String>,
        /// Also write the comparison as a Markdown table to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Also write a bar chart of each run's pass rate (first criterion,
        /// with 95% intervals) to this SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

/// A criterion file: `{"grader": {...}, "pass_threshold": x}`, or a grader object with
/// its `pass_threshold` inline, as OpenAI's testing criteria carry it.
fn criterion(v: Value) -> proto::TestingCriterion {
    let threshold = v.get("pass_threshold").and_then(Value::as_f64);
    let grader = match v.get("grader") {
        Some(g) if g.is_object() => g.clone(),
        _ => v,
    };
    proto::TestingCriterion {
        grader: Some(struct_from_json(&grader)),
        pass_threshold: threshold,
        name: String::new(),
    }
}

/// An eval: its id and name, then each criterion (or one JSON line).
fn show_eval(eval: &proto::Eval, json: bool) {
    if json {
        let criteria: Vec<Value> = eval
            .testing_criteria
            .iter()
            .map(|c| json!({"name": c.name, "pass_threshold": c.pass_threshold}))
            .collect();
        println!(
            "{}",
            json!({"id": eval.id, "object": "eval", "name": eval.name, "metadata": eval.metadata,
                   "testing_criteria": criteria})
        );
    } else {
        println!("{}  {}", eval.id, eval.name);
        for c in &eval.testing_criteria {
            println!("  {}  passes at >= {}", c.name, c.pass_threshold.unwrap_or(1.0));
        }
    }
}

fn show_deleted(id: &str, object: &str, json: bool) {
    if json {
        println!("{}", json!({"id": id, "object": object, "deleted": true}));
    } else {
        println!("deleted {id}");
    }
}

fn state_name(v: i32) -> String {
    proto::EvalRunState::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("EVAL_RUN_STATE_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn item_status_name(v: i32) -> String {
    proto::OutputItemStatus::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("OUTPUT_ITEM_STATUS_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn criterion_json(c: &proto::CriterionResult) -> Value {
    json!({"name": c.name, "passed": c.passed, "failed": c.failed, "errored": c.errored,
           "pass_rate": c.pass_rate, "ci95": [c.ci_low, c.ci_high]})
}

pub fn run_json(r: &proto::EvalRun) -> Value {
    let counts = r.result_counts.unwrap_or_default();
    json!({
        "id": r.id,
        "object": "eval.run",
        "eval_id": r.eval_id,
        "name": r.name,
        "status": state_name(r.state),
        "model": r.model,
        "dataset_id": r.dataset_id,
        "result_counts": {"total": counts.total, "passed": counts.passed, "failed": counts.failed, "errored": counts.errored},
        "per_testing_criteria_results": r.per_criterion.iter().map(criterion_json).collect::<Vec<_>>(),
        "per_model_usage": r.per_model_usage.iter().map(|u| json!({
            "model_name": u.model, "invocation_count": u.invocations, "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens})).collect::<Vec<_>>(),
        "items_per_second": r.items_per_second,
        "created_at": r.created_at.map(|t| t.to_string()),
        "started_at": r.started_at.map(|t| t.to_string()),
        "finished_at": r.finished_at.map(|t| t.to_string()),
        "error": (!r.error.is_empty()).then_some(&r.error),
        "planned_model_calls": r.planned_model_calls,
        "budget": r.budget.map(|b| json!({"max_model_calls": b.max_model_calls, "max_tokens": b.max_tokens})),
        "budget_exhausted": r.budget_exhausted,
    })
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn run_text(r: &proto::EvalRun) -> String {
    let counts = r.result_counts.unwrap_or_default();
    let mut out = format!(
        "{}  {}  eval {}  {}\n  items {}/{}: {} passed, {} failed, {} errored ({:.1} items/s)\n",
        r.id,
        state_name(r.state).to_uppercase(),
        r.eval_id,
        if r.model.is_empty() {
            "precomputed samples"
        } else {
            &r.model
        },
        r.completed,
        counts.total,
        counts.passed,
        counts.failed,
        counts.errored,
        r.items_per_second,
    );
    if !r.per_criterion.is_empty() {
        out.push_str(&format!(
            "  {:<24} {:>7} {:>7} {:>7} {:>8}  {:<17}\n",
            "criterion", "passed", "failed", "errored", "rate", "95% CI"
        ));
        for c in &r.per_criterion {
            out.push_str(&format!(
                "  {:<24} {:>7} {:>7} {:>7} {:>8}  [{}, {}]\n",
                c.name,
                c.passed,
                c.failed,
                c.errored,
                pct(c.pass_rate),
                pct(c.ci_low),
                pct(c.ci_high)
            ));
        }
    }
    for u in &r.per_model_usage {
        out.push_str(&format!(
            "  usage {}: {} calls, {} prompt + {} completion tokens\n",
            u.model, u.invocations, u.prompt_tokens, u.completion_tokens
        ));
    }
    if r.planned_model_calls > 0 {
        out.push_str(&format!("  planned model calls: {}\n", r.planned_model_calls));
    }
    if r.budget_exhausted {
        out.push_str(&format!("  budget: {}\n", r.error));
    } else if !r.error.is_empty() {
        out.push_str(&format!("  error: {}\n", r.error));
    }
    out
}

fn outcome_of(r: &proto::EvalRun) -> Outcome {
    if r.state == proto::EvalRunState::Completed as i32 {
        Outcome::Ok
    } else {
        Outcome::NotUsable
    }
}

fn run_request(a: RunArgs) -> anyhow::Result<proto::CreateEvalRunRequest> {
    let source = if let Some(model) = a.model {
        let messages = match (a.messages, a.prompt, &a.item_reference) {
            (Some(path), _, _) => match read_json(&path)? {
                Value::Array(m) => m,
                _ => anyhow::bail!("{} must hold a JSON list of messages", path.display()),
            },
            (None, Some(prompt), _) => vec![json!({"role": "user", "content": prompt})],
            (None, None, Some(_)) => Vec::new(),
            (None, None, None) => {
                anyhow::bail!("give the input with --messages FILE, --prompt TEXT or --item-reference PATH")
            }
        };
        Source::Model(proto::ModelSource {
            model,
            input_messages: (!messages.is_empty()).then(|| prost_types::ListValue {
                values: messages.iter().map(value_from_json).collect(),
            }),
            item_reference: a.item_reference.unwrap_or_default(),
            sampling_params: Some(proto::EvalSamplingParams {
                temperature: a.temperature,
                top_p: a.top_p,
                max_tokens: a.max_tokens,
                seed: a.seed,
                stop: Vec::new(),
            }),
            tools: match a.tools {
                Some(path) => match read_json(&path)? {
                    Value::Array(tools) => Some(crate::proto::json::list_value(&tools)),
                    _ => anyhow::bail!("{} must hold a JSON list of tools", path.display()),
                },
                None => None,
            },
            response_format: None,
        })
    } else if a.sample_template.is_some() || a.precomputed {
        Source::Precomputed(proto::PrecomputedSource {
            sample_template: a.sample_template.unwrap_or_default(),
        })
    } else {
        anyhow::bail!(
            "say where samples come from: --model (with --prompt or --messages), --sample-template or --precomputed"
        );
    };
    Ok(proto::CreateEvalRunRequest {
        eval_id: a.eval_id,
        dataset_id: a.dataset,
        source: Some(source),
        concurrency: a.concurrency,
        error_rate_threshold: a.error_rate,
        name: a.name,
        budget: (a.budget_calls.is_some() || a.budget_tokens.is_some()).then(|| proto::RunBudget {
            max_model_calls: a.budget_calls.unwrap_or(0),
            max_tokens: a.budget_tokens.unwrap_or(0),
        }),
        ..Default::default()
    })
}

pub async fn run(addr: &str, json: bool, cmd: EvalsCommand) -> anyhow::Result<Outcome> {
    let mut client = super::connect::connect(addr).await?.evals();
    let print = |r: &proto::EvalRun| {
        if json {
            println!("{}", run_json(r));
        } else {
            print!("{}", run_text(r));
        }
    };
    match cmd {
        EvalsCommand::Create {
            name,
            criteria,
            saved,
            item_schema,
        } => {
            let mut testing_criteria = Vec::new();
            for path in &criteria {
                testing_criteria.push(criterion(read_json(path)?));
            }
            for s in saved {
                let (name, threshold) = match s.split_once('=') {
                    Some((n, t)) => (
                        n.to_string(),
                        Some(t.parse::<f64>().context("a threshold is a number")?),
                    ),
                    None => (s, None),
                };
                let mut c = criterion(json!({"name": name}));
                c.pass_threshold = threshold;
                testing_criteria.push(c);
            }
            let item_schema = item_schema.as_deref().map(read_json).transpose()?;
            let eval = client
                .create_eval(proto::CreateEvalRequest {
                    name,
                    item_schema: item_schema.as_ref().map(struct_from_json),
                    testing_criteria,
                    metadata: Default::default(),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .eval
                .unwrap_or_default();
            show_eval(&eval, json);
            Ok(Outcome::Ok)
        }
        EvalsCommand::List { limit, page_token } => {
            let page = client
                .list_evals(proto::ListEvalsRequest {
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for eval in &page.evals {
                show_eval(eval, json);
            }
            if !page.next_page_token.is_empty() && !json {
                println!("more: --page-token {}", page.next_page_token);
            }
            Ok(Outcome::Ok)
        }
        EvalsCommand::Update {
            id,
            name,
            metadata,
            clear_metadata,
        } => {
            let mut pairs = std::collections::HashMap::new();
            for kv in &metadata {
                let (k, v) = kv.split_once('=').context("--metadata takes KEY=VALUE")?;
                pairs.insert(k.to_string(), v.to_string());
            }
            let eval = client
                .update_eval(proto::UpdateEvalRequest {
                    id,
                    name,
                    replace_metadata: clear_metadata || !metadata.is_empty(),
                    metadata: pairs,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .eval
                .unwrap_or_default();
            show_eval(&eval, json);
            Ok(Outcome::Ok)
        }
        EvalsCommand::Delete { id } => {
            let gone = client
                .delete_eval(proto::DeleteEvalRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            show_deleted(&gone.id, "eval", json);
            Ok(Outcome::Ok)
        }
        EvalsCommand::DeleteRun { id } => {
            let gone = client
                .delete_eval_run(proto::DeleteEvalRunRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            show_deleted(&gone.id, "eval.run", json);
            Ok(Outcome::Ok)
        }
        EvalsCommand::Run(args) => {
            let watch = args.watch;
            let run = client
                .create_eval_run(run_request(*args)?)
                .await
                .map_err(status_error)?
                .into_inner()
                .run
                .unwrap_or_default();
            print(&run);
            if watch {
                return watch_run(&mut client, &run.id, 0, json).await;
            }
            Ok(Outcome::Ok)
        }
        EvalsCommand::Watch { id, after } => watch_run(&mut client, &id, after, json).await,
        EvalsCommand::Get { id } => {
            let run = client
                .get_eval_run(proto::GetEvalRunRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .run
                .unwrap_or_default();
            print(&run);
            Ok(Outcome::Ok)
        }
        EvalsCommand::Optimize(a) => {
            let a = *a;
            let messages = match (a.messages, a.prompt) {
                (Some(path), _) => match read_json(&path)? {
                    Value::Array(m) => m,
                    _ => anyhow::bail!("{} must hold a JSON list of messages", path.display()),
                },
                (None, Some(prompt)) => vec![json!({"role": "user", "content": prompt})],
                (None, None) => anyhow::bail!("give the messages after the instructions with --prompt or --messages"),
            };
            let o = client
                .create_prompt_optimization(proto::CreatePromptOptimizationRequest {
                    eval_id: a.eval_id,
                    model: a.model,
                    input_messages: Some(crate::proto::json::list_value(&messages)),
                    sampling_params: Some(proto::EvalSamplingParams {
                        temperature: a.temperature,
                        max_tokens: a.max_tokens,
                        ..Default::default()
                    }),
                    instructions: a.instructions,
                    candidate_instructions: a.candidates,
                    reflection_model: a.reflection_model.unwrap_or_default(),
                    train_dataset_id: a.train,
                    validation_dataset_id: a.validation,
                    test_dataset_id: a.test.unwrap_or_default(),
                    max_demos: a.max_demos,
                    demo_answer_field: a.demo_answer_field.unwrap_or_default(),
                    minibatch_size: a.minibatch,
                    budget: Some(proto::RunBudget {
                        max_model_calls: a.budget_calls,
                        max_tokens: 0,
                    }),
                    seed: a.seed,
                    concurrency: a.concurrency,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .optimization
                .unwrap_or_default();
            let o = if a.watch {
                watch_optimization(&mut client, o.id, json).await?
            } else {
                o
            };
            show_optimization(json, &o);
            Ok(Outcome::Ok)
        }
        EvalsCommand::Optimization { id, watch } => {
            let o = if watch {
                watch_optimization(&mut client, id, json).await?
            } else {
                client
                    .get_prompt_optimization(proto::GetPromptOptimizationRequest { id })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .optimization
                    .unwrap_or_default()
            };
            show_optimization(json, &o);
            Ok(Outcome::Ok)
        }
        EvalsCommand::CancelOptimization { id } => {
            let o = client
                .cancel_prompt_optimization(proto::CancelPromptOptimizationRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .optimization
                .unwrap_or_default();
            show_optimization(json, &o);
            Ok(Outcome::Ok)
        }
        EvalsCommand::Cancel { id } => {
            let run = client
                .cancel_eval_run(proto::CancelEvalRunRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .run
                .unwrap_or_default();
            print(&run);
            Ok(Outcome::Ok)
        }
        EvalsCommand::Items {
            id,
            status,
            limit,
            page_token,
        } => {
            let status = match status {
                None => proto::OutputItemStatus::Unspecified,
                Some(StatusArg::Pass) => proto::OutputItemStatus::Pass,
                Some(StatusArg::Fail) => proto::OutputItemStatus::Fail,
                Some(StatusArg::Error) => proto::OutputItemStatus::Error,
            };
            let page = client
                .list_output_items(proto::ListOutputItemsRequest {
                    run_id: id,
                    status: status as i32,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for i in &page.items {
                let results: Vec<Value> = i
                    .results
                    .iter()
                    .map(|r| {
                        json!({"name": r.name, "type": r.r#type, "score": r.score, "passed": r.passed,
                                    "error": (!r.error.is_empty()).then_some(&r.error)})
                    })
                    .collect();
                if json {
                    let item = i.item.clone().map(crate::proto::json::json_from_struct);
                    println!(
                        "{}",
                        json!({"index": i.index, "status": item_status_name(i.status), "item": item,
                               "sample": i.sample, "results": results,
                               "error": (!i.error.is_empty()).then_some(&i.error)})
                    );
                } else {
                    let scores: Vec<String> = i.results.iter().map(|r| format!("{}={:.3}", r.name, r.score)).collect();
                    let sample: String = i.sample.chars().take(60).collect();
                    println!(
                        "{:>6}  {:<5}  {:<40}  {:?}{}",
                        i.index,
                        item_status_name(i.status),
                        scores.join(" "),
                        sample,
                        if i.error.is_empty() {
                            String::new()
                        } else {
                            format!("  error: {}", i.error)
                        }
                    );
                }
            }
            if !page.next_page_token.is_empty() {
                eprintln!("more: --page-token {}", page.next_page_token);
            }
            Ok(Outcome::Ok)
        }
        EvalsCommand::Compare { ids, markdown, svg } => {
            let cmp = client
                .compare_eval_runs(proto::CompareEvalRunsRequest { run_ids: ids })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!("{}", comparison_json(&cmp));
            } else {
                print!("{}", comparison_table(&cmp, false));
            }
            if let Some(path) = markdown {
                std::fs::write(&path, comparison_table(&cmp, true))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = svg {
                std::fs::write(&path, comparison_chart(&cmp)).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(Outcome::Ok)
        }
    }
}

/// Each run's pass rate on the first criterion, with its 95% interval.
pub(crate) fn comparison_chart(c: &proto::CompareEvalRunsResponse) -> String {
    let criterion = c
        .runs
        .first()
        .and_then(|r| r.per_criterion.first())
        .map(|x| x.name.clone())
        .unwrap_or_default();
    let bars: Vec<(String, f64, f64, f64)> = c
        .runs
        .iter()
        .filter_map(|r| {
            let x = r.per_criterion.iter().find(|x| x.name == criterion)?;
            let label = if !r.name.is_empty() {
                r.name.clone()
            } else if !r.model.is_empty() {
                r.model.clone()
            } else {
                r.id.clone()
            };
            Some((label, x.pass_rate, x.ci_low, x.ci_high))
        })
        .collect();
    super::charts::bar_chart(&format!("{criterion}: pass rate (95% interval)"), "pass rate", &bars)
}

fn comparison_json(c: &proto::CompareEvalRunsResponse) -> Value {
    json!({
        "runs": c.runs.iter().map(run_json).collect::<Vec<_>>(),
        "paired_tests": c.paired_tests.iter().map(|t| json!({
            "baseline_run_id": t.baseline_run_id, "run_id": t.run_id, "criterion": t.criterion,
            "shared_items": t.shared_items, "baseline_only_passed": t.baseline_only_passed,
            "run_only_passed": t.run_only_passed, "p_value": t.p_value, "significant": t.significant,
            "baseline_pass_rate": t.baseline_pass_rate, "run_pass_rate": t.run_pass_rate})).collect::<Vec<_>>(),
        "disagreements": c.disagreements.iter().map(|d| json!({
            "index": d.index, "statuses": d.statuses.iter().map(|s| item_status_name(*s)).collect::<Vec<_>>()}))
            .collect::<Vec<_>>(),
        "disagreements_truncated": c.disagreements_truncated,
    })
}

/// Side by side: one row per criterion, one column per run (pass rate and
/// 95% interval), then each run's paired test against the baseline.
pub(crate) fn comparison_table(c: &proto::CompareEvalRunsResponse, markdown: bool) -> String {
    let mut header = vec!["criterion".to_string()];
    header.extend(c.runs.iter().map(|r| {
        if r.name.is_empty() {
            r.id.clone()
        } else {
            format!("{} ({})", r.name, r.id)
        }
    }));
    header.extend(c.runs.iter().skip(1).map(|r| format!("vs baseline: {}", r.id)));
    let mut rows = Vec::new();
    let criteria: Vec<String> = c
        .runs
        .first()
        .map(|r| r.per_criterion.iter().map(|x| x.name.clone()).collect())
        .unwrap_or_default();
    for name in &criteria {
        let mut row = vec![name.clone()];
        for r in &c.runs {
            row.push(match r.per_criterion.iter().find(|x| &x.name == name) {
                Some(x) => format!("{} [{}, {}]", pct(x.pass_rate), pct(x.ci_low), pct(x.ci_high)),
                None => "-".into(),
            });
        }
        for r in c.runs.iter().skip(1) {
            row.push(
                match c.paired_tests.iter().find(|t| &t.criterion == name && t.run_id == r.id) {
                    Some(t) => format!(
                        "{:+.1} pts, p={:.4}{} (+{}/-{} of {})",
                        100.0 * (t.run_pass_rate - t.baseline_pass_rate),
                        t.p_value,
                        if t.significant { " *" } else { "" },
                        t.run_only_passed,
                        t.baseline_only_passed,
                        t.shared_items
                    ),
                    None => "-".into(),
                },
            );
        }
        rows.push(row);
    }
    let mut out = String::new();
    if markdown {
        out.push_str(&format!("| {} |\n", header.join(" | ")));
        out.push_str(&format!("|{}\n", " --- |".repeat(header.len())));
        for row in &rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out.push_str("\n`*`: significant at 0.05 (two-sided exact McNemar test on the items both runs graded).\n");
    } else {
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        out.push_str(&line(&header));
        out.push('\n');
        for row in &rows {
            out.push_str(&line(row));
            out.push('\n');
        }
    }
    let n = c.disagreements.len();
    out.push_str(&format!(
        "\n{n}{} items where the runs disagree{}\n",
        if c.disagreements_truncated { "+" } else { "" },
        if n > 0 {
            format!(
                ": {}",
                c.disagreements
                    .iter()
                    .take(20)
                    .map(|d| d.index.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        }
    ));
    out
}

async fn watch_run(client: &mut Client, id: &str, after: u64, json: bool) -> anyhow::Result<Outcome> {
    let mut stream = client
        .watch_eval_run(proto::WatchEvalRunRequest {
            run_id: id.to_string(),
            after_seq: after,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} items {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        match msg.payload {
            Some(watch_eval_run_response::Payload::Progress(p)) => {
                if json {
                    println!(
                        "{}",
                        json!({"seq": p.seq, "completed": p.completed, "total": p.total,
                               "item_index": p.item_index, "item_status": item_status_name(p.item_status),
                               "per_criterion": p.per_criterion.iter().map(criterion_json).collect::<Vec<_>>(),
                               "items_per_second": p.items_per_second, "eta_seconds": p.eta_seconds,
                               "error": (!p.error.is_empty()).then_some(&p.error)})
                    );
                    continue;
                }
                let rates: Vec<String> = p
                    .per_criterion
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} [{}, {}]",
                            c.name,
                            pct(c.pass_rate),
                            pct(c.ci_low),
                            pct(c.ci_high)
                        )
                    })
                    .collect();
                let status = format!(
                    "{}  {:.1}/s  eta {:.0}s",
                    rates.join("  "),
                    p.items_per_second,
                    p.eta_seconds
                );
                match &bar {
                    Some(bar) => {
                        bar.set_length(p.total);
                        bar.set_position(p.completed);
                        bar.set_message(status);
                        if !p.error.is_empty() {
                            bar.println(format!("item {}: {}", p.item_index, p.error));
                        }
                    }
                    None if !p.error.is_empty() => println!("item {}: {}", p.item_index, p.error),
                    None => {}
                }
            }
            Some(watch_eval_run_response::Payload::End(run)) => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                if json {
                    println!("{}", json!({"end": run_json(&run)}));
                } else {
                    print!("{}", run_text(&run));
                }
                return Ok(outcome_of(&run));
            }
            None => {}
        }
    }
    anyhow::bail!("the server ended the watch without its final message")
}

#[cfg(test)]
mod tests {
    use super::criterion;
    use serde_json::json;

    #[test]
    fn a_criterion_keeps_its_pass_threshold_inline_or_wrapped() {
        let inline = criterion(json!({"type": "python", "name": "p", "source": "x", "pass_threshold": 0.5}));
        assert_eq!(inline.pass_threshold, Some(0.5));
        let wrapped =
            criterion(json!({"grader": {"type": "python", "name": "p", "source": "x"}, "pass_threshold": 0.25}));
        assert_eq!(wrapped.pass_threshold, Some(0.25));
        assert!(!wrapped.grader.unwrap().fields.contains_key("pass_threshold"));
        assert_eq!(criterion(json!({"type": "string_check"})).pass_threshold, None);
    }
}
