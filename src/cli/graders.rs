use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::connect::Outcome;
use super::output::read_json;
use super::output::status_error;
use crate::graders::{self, DryRunReport, GradeContext, PythonPool, PythonPoolConfig, Sample, python_env};
use crate::proto::json::{json_from_struct, struct_from_json};
use crate::proto::{self, dataset_service_client::DatasetServiceClient, download_dataset_response};

/// Grading calls in flight during `graders test`.
const DRY_RUN_CONCURRENCY: usize = 16;

#[derive(Subcommand, Debug)]
pub enum GradersCommand {
    /// Grade one sample against one item.
    Run {
        /// OpenAI grader JSON file (or {"name": "..."} naming a saved grader).
        #[arg(long)]
        grader: PathBuf,
        /// The model's answer, as text (output_json is filled when it parses).
        #[arg(long)]
        sample: String,
        /// The dataset item JSON file ({} when omitted).
        #[arg(long)]
        item: Option<PathBuf>,
    },
    /// Check a grader and list every problem in it.
    Validate { grader: PathBuf },
    /// Save a grader under a name (1-64 of [a-zA-Z0-9_-]).
    Create { name: String, grader: PathBuf },
    /// Show a saved grader.
    Get { name: String },
    /// List saved graders.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
    /// Dry run: score a dataset's samples before training, with error rate and guessability.
    Test {
        grader: PathBuf,
        dataset_id: String,
        /// JSONL, one sample per dataset row: a JSON string or {"output_text": ...}.
        #[arg(long)]
        samples: PathBuf,
        #[command(flatten)]
        env: PythonEnvArgs,
    },
    /// Build the python grader environment (no server needed): a virtualenv in the data
    /// dir with the packages of OpenAI's grader image, pinned, from the package index
    /// (numpy, scipy, pandas, rapidfuzz, scikit-learn, nltk and its corpora, ...).
    /// Servers started on that data dir run python graders in it.
    SetupPython {
        #[command(flatten)]
        env: PythonEnvArgs,
        /// The interpreter the virtualenv is made from.
        #[arg(long, default_value = "/usr/bin/python3")]
        python: PathBuf,
        /// Also install this pip requirement (REQ, or REQ=MODULE when the module it
        /// provides is not named after it), e.g. reasoning-gym for its scorers.
        #[arg(long = "package")]
        packages: Vec<String>,
        /// Install only the --package requirements, not OpenAI's list.
        #[arg(long)]
        no_defaults: bool,
    },
}

/// Where the python grader environment is.
#[derive(clap::Args, Debug)]
pub struct PythonEnvArgs {
    /// The server's data dir; its environment is DATA_DIR/python-env.
    #[arg(long, env = "LATHE_DATA_DIR", default_value = "./lathe-data")]
    data_dir: PathBuf,
    /// The environment's directory, when not the data dir's.
    #[arg(long = "python-env", env = "LATHE_GRADER_PYTHON_ENV")]
    python_env: Option<PathBuf>,
}

pub async fn run(addr: &str, json: bool, cmd: GradersCommand) -> anyhow::Result<Outcome> {
    if let GradersCommand::SetupPython {
        env,
        python,
        packages,
        no_defaults,
    } = cmd
    {
        return setup_python(json, env, &python, packages, no_defaults).await;
    }
    let server = super::connect::connect(addr).await?;
    let mut client = server.graders();
    match cmd {
        GradersCommand::Run { grader, sample, item } => {
            let item = match item {
                Some(path) => read_json(&path)?,
                None => json!({}),
            };
            let response = client
                .run_grader(proto::RunGraderRequest {
                    grader: Some(struct_from_json(&read_json(&grader)?)),
                    sample: Some(proto::Sample {
                        output_text: sample,
                        ..Default::default()
                    }),
                    item: Some(struct_from_json(&item)),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let result = result_json(&response.result.unwrap_or_default());
            if json {
                println!("{result}");
            } else {
                print_result(&result);
            }
        }
        GradersCommand::Validate { grader } => {
            client
                .validate_grader(proto::ValidateGraderRequest {
                    grader: Some(struct_from_json(&read_json(&grader)?)),
                })
                .await
                .map_err(status_error)?;
            if json {
                println!("{}", json!({"valid": true}));
            } else {
                println!("{} is a valid grader", grader.display());
            }
        }
        GradersCommand::Create { name, grader } => {
            let saved = client
                .create_grader(proto::CreateGraderRequest {
                    name,
                    grader: Some(struct_from_json(&read_json(&grader)?)),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .grader
                .unwrap_or_default();
            print_saved(json, saved);
        }
        GradersCommand::Get { name } => {
            let saved = client
                .get_grader(proto::GetGraderRequest { name })
                .await
                .map_err(status_error)?
                .into_inner()
                .grader
                .unwrap_or_default();
            print_saved(json, saved);
        }
        GradersCommand::List { limit } => {
            let mut token = String::new();
            let mut rows = Vec::new();
            loop {
                let page = client
                    .list_graders(proto::ListGradersRequest {
                        page_size: limit,
                        page_token: token,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                rows.extend(page.graders);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            if json {
                let list: Vec<Value> = rows.into_iter().map(saved_json).collect();
                println!("{}", Value::Array(list));
            } else if rows.is_empty() {
                println!("no saved graders");
            } else {
                for g in rows {
                    let kind = saved_json(g.clone())["grader"]["type"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string();
                    println!("{:<40} {kind}", g.name);
                }
            }
        }
        GradersCommand::Test {
            grader,
            dataset_id,
            samples,
            env,
        } => {
            let grader = read_json(&grader)?;
            // The server judges the grader, so the rules are the same as for a job.
            client
                .validate_grader(proto::ValidateGraderRequest {
                    grader: Some(struct_from_json(&grader)),
                })
                .await
                .map_err(status_error)?;
            let items = download_items(&mut server.datasets(), &dataset_id).await?;
            let samples = read_samples(&samples)?;
            anyhow::ensure!(
                samples.len() == items.len(),
                "{} samples for {} dataset rows: the samples file needs one line per row",
                samples.len(),
                items.len()
            );
            let env = python_env::resolve(env.python_env.as_deref(), &env.data_dir)?;
            let report = dry_run(grader, samples.into_iter().zip(items).collect(), env).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_report(&report);
            }
        }
        GradersCommand::SetupPython { .. } => anyhow::bail!("setup-python runs without a server"),
    }
    Ok(Outcome::Ok)
}

async fn setup_python(
    json: bool,
    env: PythonEnvArgs,
    python: &Path,
    packages: Vec<String>,
    no_defaults: bool,
) -> anyhow::Result<Outcome> {
    let dir = env.python_env.unwrap_or_else(|| env.data_dir.join(python_env::ENV_DIR));
    let defaults = python_env::OPENAI_GRADER_PACKAGES
        .iter()
        .filter(|_| !no_defaults)
        .map(|(r, m)| (r.to_string(), m.to_string()));
    let packages: Vec<(String, String)> = defaults.chain(packages.iter().map(|p| requirement(p))).collect();
    anyhow::ensure!(!packages.is_empty(), "--no-defaults needs at least one --package");
    let report = python_env::setup(&dir, python, &packages, |step| {
        if !json {
            eprintln!("{step}");
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "python grader environment ready at {} ({}; {} packages importable: {})",
            report.env.display(),
            report.python_version,
            report.modules_ok.len(),
            report.modules_ok.join(", ")
        );
        if let Some(e) = &report.nltk_error {
            println!("warning: NLTK corpora missing ({e}); graders that load them will fail");
        }
        println!("servers on this data dir use it from their next start");
    }
    Ok(Outcome::Ok)
}

/// `--package` as (pip requirement, module to import): `REQ=MODULE`, or `REQ` whose module
/// follows pip's naming convention (`rouge-score==0.1.2` → `rouge_score`).
fn requirement(arg: &str) -> (String, String) {
    if let Some((req, module)) = arg.rsplit_once('=')
        && !module.is_empty()
        && module
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !module.starts_with(|c: char| c.is_ascii_digit())
        && !req.ends_with(['=', '<', '>', '!', '~'])
    {
        return (req.to_string(), module.to_string());
    }
    let name = arg
        .split(['=', '<', '>', '!', '~', '[', ';', ' '])
        .next()
        .unwrap_or(arg);
    (arg.to_string(), name.replace('-', "_").to_lowercase())
}

/// A dataset's rows, each the `item` its graders see.
async fn download_items(
    client: &mut DatasetServiceClient<crate::client::Channel>,
    id: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut stream = client
        .download_dataset(proto::DownloadDatasetRequest { id: id.to_string() })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut bytes = Vec::new();
    let mut complete = false;
    while let Some(message) = stream.message().await.map_err(status_error)? {
        match message.payload {
            Some(download_dataset_response::Payload::Chunk(chunk)) => bytes.extend_from_slice(&chunk),
            Some(download_dataset_response::Payload::End(_)) => complete = true,
            None => {}
        }
    }
    anyhow::ensure!(complete, "the server ended the download without its final message");
    let text = String::from_utf8(bytes).context("the dataset is not UTF-8")?;
    text.trim_start_matches('\u{feff}')
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("dataset row {} is not JSON", i + 1)))
        .collect()
}

fn read_samples(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let text = match serde_json::from_str::<Value>(line) {
                Ok(Value::String(s)) => s,
                Ok(Value::Object(o)) if o.get("output_text").is_some_and(Value::is_string) => {
                    o["output_text"].as_str().unwrap_or_default().to_string()
                }
                _ => anyhow::bail!(
                    "{} line {}: expected a JSON string or {{\"output_text\": ...}}",
                    path.display(),
                    i + 1
                ),
            };
            Ok(Sample::from_model_output(text))
        })
        .collect()
}

/// The dry run grades here, with the same engine the server runs; python graders get a
/// local sandboxed pool.
async fn dry_run(grader: Value, pairs: Vec<(Sample, Value)>, env: Option<PathBuf>) -> anyhow::Result<DryRunReport> {
    let parsed = graders::parse(&grader).map_err(|v| anyhow::anyhow!("invalid grader: {v:?}"))?;
    let mut ctx = GradeContext::default();
    if graders::service::uses_python(&parsed) {
        let pool = PythonPool::start(PythonPoolConfig {
            env,
            ..PythonPoolConfig::default()
        })
        .await?;
        ctx.python = Some(Arc::new(pool));
    }
    Ok(graders::dry_run(Arc::new(parsed), pairs, &ctx, DRY_RUN_CONCURRENCY).await)
}

fn result_json(r: &proto::GraderResult) -> Value {
    let meta = r.metadata.clone().unwrap_or_default();
    let e = meta.errors.unwrap_or_default();
    json!({
        "reward": r.reward,
        "sub_rewards": r.sub_rewards,
        "metadata": {
            "name": meta.name,
            "type": meta.r#type,
            "execution_time": meta.execution_time_seconds,
            "token_usage": meta.token_usage,
            "errors": {
                "formula_parse_error": e.formula_parse_error,
                "sample_parse_error": e.sample_parse_error,
                "invalid_variable_error": e.invalid_variable_error,
                "python_grader_runtime_error": e.python_grader_runtime_error,
                "python_grader_runtime_error_details": e.python_grader_runtime_error_details,
                "python_grader_server_error": e.python_grader_server_error,
                "python_grader_server_error_type": e.python_grader_server_error_type,
                "model_grader_server_error": e.model_grader_server_error,
                "model_grader_server_error_details": e.model_grader_server_error_details,
                "model_grader_parse_error": e.model_grader_parse_error,
                "model_grader_refusal_error": e.model_grader_refusal_error,
                "other_error": e.other_error,
                "other_error_details": e.other_error_details,
            },
        },
    })
}

fn print_result(result: &Value) {
    println!("reward: {}", result["reward"]);
    if let Some(subs) = result["sub_rewards"].as_object().filter(|s| !s.is_empty()) {
        println!("sub_rewards:");
        for (name, reward) in subs {
            println!("  {name}: {reward}");
        }
    }
    let meta = &result["metadata"];
    println!(
        "grader: {} ({}), {:.3} ms",
        meta["name"].as_str().unwrap_or_default(),
        meta["type"].as_str().unwrap_or_default(),
        meta["execution_time"].as_f64().unwrap_or_default() * 1000.0
    );
    if let Some(usage) = meta["token_usage"].as_object().filter(|u| !u.is_empty()) {
        for (model, tokens) in usage {
            println!("tokens: {model}: {tokens}");
        }
    }
    let errors = meta["errors"].as_object().cloned().unwrap_or_default();
    for (flag, value) in &errors {
        if value == &Value::Bool(true) {
            let details = [format!("{flag}_details"), format!("{flag}_type")]
                .iter()
                .find_map(|k| errors.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()))
                .or_else(|| errors["other_error_details"].as_str().filter(|s| !s.is_empty()))
                .unwrap_or_default()
                .to_string();
            println!("error: {flag} {details}");
        }
    }
}

fn saved_json(g: proto::SavedGrader) -> Value {
    json!({
        "name": g.name,
        "grader": g.grader.map(json_from_struct).unwrap_or(Value::Null),
        "created_at": g.created_at.map(|t| t.seconds).unwrap_or_default(),
    })
}

fn print_saved(json: bool, g: proto::SavedGrader) {
    let value = saved_json(g);
    if json {
        println!("{value}");
    } else {
        println!("name: {}", value["name"].as_str().unwrap_or_default());
        println!("{}", serde_json::to_string_pretty(&value["grader"]).unwrap_or_default());
    }
}

fn print_report(r: &DryRunReport) {
    println!("pairs: {}", r.count);
    println!(
        "reward: mean {:.4}  std {:.4}  min {:.4}  max {:.4}",
        r.mean, r.std_dev, r.min, r.max
    );
    let quantiles: Vec<String> = r.quantiles.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    println!("quantiles: {}", quantiles.join("  "));
    let peak = r.histogram.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    for bin in &r.histogram {
        let bar = "#".repeat(bin.count * 40 / peak);
        println!("  [{:.2}, {:.2}) {:>6} {bar}", bin.lower, bin.upper, bin.count);
    }
    println!("error rate: {:.2}%", r.error_rate * 100.0);
    for (kind, count) in &r.errors_by_kind {
        println!("  {kind}: {count}");
    }
    let g = &r.guessability;
    println!("guessability:");
    println!("  empty answer mean: {:.4}", g.empty_answer_mean);
    if let Some(c) = &g.constant_answer {
        println!("  constant answer {:?} mean: {:.4}", c.answer, c.mean_reward);
    }
    if let Some(m) = g.shuffled_reference_mean {
        println!("  shuffled reference mean: {m:.4}");
    }
    for w in &g.warnings {
        println!("warning: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::requirement;

    #[test]
    fn a_package_argument_names_its_requirement_and_module() {
        let r = requirement;
        assert_eq!(r("rapidfuzz==3.10.1"), ("rapidfuzz==3.10.1".into(), "rapidfuzz".into()));
        assert_eq!(
            r("rouge-score==0.1.2"),
            ("rouge-score==0.1.2".into(), "rouge_score".into())
        );
        assert_eq!(
            r("scikit-learn>=1.6"),
            ("scikit-learn>=1.6".into(), "scikit_learn".into())
        );
        assert_eq!(
            r("scikit-learn==1.6.1=sklearn"),
            ("scikit-learn==1.6.1".into(), "sklearn".into())
        );
        assert_eq!(r("reasoning-gym"), ("reasoning-gym".into(), "reasoning_gym".into()));
        assert_eq!(r("PyYAML=yaml"), ("PyYAML".into(), "yaml".into()));
    }
}
