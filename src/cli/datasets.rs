use std::{collections::HashMap, io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;

use super::connect::Outcome;
use super::output::{dataset_json, dataset_row, dataset_text, status_error};
use crate::proto::{self, dataset_service_client::DatasetServiceClient, download_dataset_response};

/// Bytes per upload message.
const CHUNK: usize = 256 << 10;
/// Uploads at least this large get a progress bar on a terminal.
const PROGRESS_FROM: u64 = 4 << 20;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PurposeArg {
    Sft,
    Dpo,
    Rft,
    Eval,
}

impl From<PurposeArg> for proto::DatasetPurpose {
    fn from(p: PurposeArg) -> Self {
        match p {
            PurposeArg::Sft => proto::DatasetPurpose::Sft,
            PurposeArg::Dpo => proto::DatasetPurpose::Dpo,
            PurposeArg::Rft => proto::DatasetPurpose::Rft,
            PurposeArg::Eval => proto::DatasetPurpose::Eval,
        }
    }
}

pub(super) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Subcommand, Debug)]
pub enum DatasetsCommand {
    /// Upload a JSONL file; it is validated while it streams.
    Upload {
        file: PathBuf,
        #[arg(long, value_enum)]
        purpose: PurposeArg,
        /// Display name (defaults to the file name).
        #[arg(long)]
        name: Option<String>,
        /// KEY=VALUE metadata, repeatable.
        #[arg(long = "metadata", value_parser = parse_key_value)]
        metadata: Vec<(String, String)>,
        /// JSON pointer to a label for the label distribution, e.g. /label or /messages/-1/content.
        #[arg(long)]
        label_field: Option<String>,
    },
    /// List datasets, newest first.
    List {
        #[arg(long, value_enum)]
        purpose: Option<PurposeArg>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: i32,
        #[arg(long)]
        page_token: Option<String>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
    },
    /// Show a dataset with its validation report and statistics.
    Get { id: String },
    /// Delete a dataset (refused while a job uses it).
    Delete { id: String },
    /// Download a dataset's file.
    Download {
        id: String,
        /// Where to write it ("-" for stdout; default ID.jsonl).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Split a dataset into new train and validation datasets.
    Split {
        id: String,
        #[arg(long, default_value_t = 0.2)]
        validation_fraction: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// JSON pointer to a label to stratify by, e.g. /messages/-1/content.
        #[arg(long)]
        stratify_by: Option<String>,
    },
    /// Make an SFT dataset from a finished eval run's answers (distillation):
    /// the items that passed every criterion, or those scoring at least
    /// --min-score on --criterion.
    Distill {
        /// The eval run (it must have sampled a model).
        run: String,
        #[arg(long, requires = "min_score")]
        criterion: Option<String>,
        #[arg(long, requires = "criterion")]
        min_score: Option<f64>,
        /// sft (the default), or eval: the run's items with the answer added
        /// as --answer-field, for a next run.
        #[arg(long, value_enum)]
        purpose: Option<PurposeArg>,
        /// With --purpose eval (default "answer").
        #[arg(long)]
        answer_field: Option<String>,
        /// The new dataset's file name (default distilled-RUN.jsonl).
        #[arg(long)]
        filename: Option<String>,
        /// KEY=VALUE metadata, repeatable.
        #[arg(long = "metadata", value_parser = parse_key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Make a dataset of stored chat completions (`lathe chat --store`, or
    /// the REST API's store: true): SFT rows of the request's messages and
    /// the answer, oldest first.
    FromCompletions {
        /// Only completions of this model.
        #[arg(long)]
        model: Option<String>,
        /// Only completions with this KEY=VALUE metadata, repeatable.
        #[arg(long = "where", value_parser = parse_key_value)]
        filter: Vec<(String, String)>,
        /// sft (the default), or eval: the messages with the answer as
        /// --answer-field.
        #[arg(long, value_enum)]
        purpose: Option<PurposeArg>,
        /// With --purpose eval (default "answer").
        #[arg(long)]
        answer_field: Option<String>,
        /// At most this many rows.
        #[arg(long)]
        limit: Option<u64>,
        /// The new dataset's file name (default stored-completions.jsonl).
        #[arg(long)]
        filename: Option<String>,
        /// KEY=VALUE metadata of the new dataset, repeatable.
        #[arg(long = "metadata", value_parser = parse_key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Make an eval dataset of target function calls from OpenAI function
    /// definitions, one item per call ({"function", "arguments",
    /// "call_text", "tool"}), for a teacher to write requests for.
    ToolCalls(ToolCallsArgs),
    /// Make a DPO dataset of preference pairs from a finished eval run's
    /// answers: against another run's answers to the same items (the
    /// higher-scored is preferred), or against each item's reference answer
    /// where the run's answer failed.
    Pairs {
        /// The eval run whose answers are paired.
        run: String,
        /// Another run of the same eval over the same dataset.
        #[arg(
            long,
            conflicts_with = "reference_field",
            required_unless_present = "reference_field"
        )]
        preferred_run: Option<String>,
        /// JSON pointer into each item to its preferred answer, e.g. /answer.
        #[arg(long)]
        reference_field: Option<String>,
        /// The criterion whose scores decide (needed when the eval has several).
        #[arg(long)]
        criterion: Option<String>,
        /// Scores must differ by more than this.
        #[arg(long, default_value_t = 0.0)]
        min_margin: f64,
        /// The new dataset's file name (default pairs-RUN.jsonl).
        #[arg(long)]
        filename: Option<String>,
        /// KEY=VALUE metadata, repeatable.
        #[arg(long = "metadata", value_parser = parse_key_value)]
        metadata: Vec<(String, String)>,
    },
}

/// Function-calling data: the calls a tools file's functions allow.
#[derive(clap::Args, Debug)]
pub struct ToolCallsArgs {
    /// A JSON file: a list of OpenAI tools or function definitions.
    tools: PathBuf,
    /// A JSON file: {"argument name": [values, ...]}, for free-text arguments.
    #[arg(long)]
    values: Option<PathBuf>,
    /// Calls at most (sampled evenly across functions beyond it).
    #[arg(long, default_value_t = 1000)]
    max_calls: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The new dataset's file name (default tool-calls.jsonl).
    #[arg(long)]
    filename: Option<String>,
    /// KEY=VALUE metadata, repeatable.
    #[arg(long = "metadata", value_parser = parse_key_value)]
    metadata: Vec<(String, String)>,
}

async fn tool_calls(
    client: &mut DatasetServiceClient<crate::client::Channel>,
    json: bool,
    a: ToolCallsArgs,
) -> anyhow::Result<Outcome> {
    use crate::proto::json::list_value;
    let read = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
    };
    let tools = match read(&a.tools)? {
        serde_json::Value::Array(list) => list,
        _ => anyhow::bail!("{} must hold a JSON list of tools", a.tools.display()),
    };
    let mut values = HashMap::new();
    if let Some(path) = &a.values {
        let serde_json::Value::Object(map) = read(path)? else {
            anyhow::bail!("{} must hold a JSON object of argument name to values", path.display());
        };
        for (name, v) in map {
            let serde_json::Value::Array(list) = v else {
                anyhow::bail!("{}: {name} must map to a list of values", path.display());
            };
            values.insert(name, list_value(&list));
        }
    }
    let r = client
        .create_tool_call_items(proto::CreateToolCallItemsRequest {
            tools: Some(list_value(&tools)),
            values,
            max_calls: a.max_calls,
            seed: a.seed,
            filename: a.filename.unwrap_or_default(),
            metadata: a.metadata.into_iter().collect(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let d = r.dataset.unwrap_or_default();
    if json {
        let functions: Vec<_> = r
            .functions
            .iter()
            .map(|f| serde_json::json!({"name": f.name, "combinations": f.combinations, "chosen": f.chosen}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"dataset": dataset_json(&d), "functions": functions})
        );
    } else {
        print!("{}", dataset_text(&d));
        for f in &r.functions {
            println!("  {:<24} {} of {} combinations", f.name, f.chosen, f.combinations);
        }
    }
    Ok(Outcome::Ok)
}

fn print_made(json: bool, d: &proto::Dataset, c: &proto::SynthesisCounts) {
    if json {
        let counts = serde_json::json!({
            "items": c.items, "kept": c.kept, "below_threshold": c.below_threshold,
            "errored": c.errored, "unusable": c.unusable,
        });
        println!("{}", serde_json::json!({"dataset": dataset_json(d), "counts": counts}));
    } else {
        print!("{}", dataset_text(d));
        println!(
            "  rows      {} of {} items ({} below the threshold, {} errored, {} unusable)",
            c.kept, c.items, c.below_threshold, c.errored, c.unusable
        );
    }
}

fn print_dataset(json: bool, d: &proto::Dataset) {
    if json {
        println!("{}", dataset_json(d));
    } else {
        print!("{}", dataset_text(d));
    }
}

fn usable(d: &proto::Dataset) -> Outcome {
    if d.state == proto::DatasetState::Ready as i32 {
        Outcome::Ok
    } else {
        Outcome::NotUsable
    }
}

pub async fn run(addr: &str, json: bool, cmd: DatasetsCommand) -> anyhow::Result<Outcome> {
    let server = super::connect::connect(addr).await?;
    let channel = server.channel();
    let mut client = server.datasets();
    match cmd {
        DatasetsCommand::Upload {
            file,
            purpose,
            name,
            metadata,
            label_field,
        } => {
            let dataset = upload(&channel, &file, purpose, name, metadata, label_field, !json).await?;
            print_dataset(json, &dataset);
            Ok(usable(&dataset))
        }
        DatasetsCommand::List {
            purpose,
            limit,
            page_token,
            all,
        } => {
            let mut token = page_token.unwrap_or_default();
            let mut rows = Vec::new();
            loop {
                let page = client
                    .list_datasets(proto::ListDatasetsRequest {
                        page_size: limit,
                        page_token: token,
                        purpose: purpose.map(|p| proto::DatasetPurpose::from(p) as i32).unwrap_or(0),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                rows.extend(page.datasets);
                token = page.next_page_token;
                if !all || token.is_empty() {
                    break;
                }
            }
            if json {
                let data: Vec<_> = rows.iter().map(dataset_json).collect();
                println!(
                    "{}",
                    serde_json::json!({"object": "list", "data": data, "next_page_token": token})
                );
            } else {
                for d in &rows {
                    println!("{}", dataset_row(d));
                }
                if !token.is_empty() {
                    println!("more: --page-token {token}");
                }
            }
            Ok(Outcome::Ok)
        }
        DatasetsCommand::Get { id } => {
            let d = client
                .get_dataset(proto::GetDatasetRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .dataset
                .unwrap_or_default();
            print_dataset(json, &d);
            Ok(usable(&d))
        }
        DatasetsCommand::Delete { id } => {
            let r = client
                .delete_dataset(proto::DeleteDatasetRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": r.id, "object": "dataset", "deleted": r.deleted})
                );
            } else {
                println!("deleted {}", r.id);
            }
            Ok(Outcome::Ok)
        }
        DatasetsCommand::Download { id, output } => {
            let output = output.unwrap_or_else(|| super::connect::default_output(&id));
            let (bytes, sha256) = download(&mut client, &id, &output).await?;
            if output.as_os_str() != "-" {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"id": id, "path": output, "bytes": bytes, "sha256": sha256})
                    );
                } else {
                    println!("wrote {} ({bytes} bytes, sha256 {sha256})", output.display());
                }
            }
            Ok(Outcome::Ok)
        }
        DatasetsCommand::Split {
            id,
            validation_fraction,
            seed,
            stratify_by,
        } => {
            let r = client
                .split_dataset(proto::SplitDatasetRequest {
                    id,
                    validation_fraction,
                    seed,
                    stratify_by: stratify_by.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let (train, validation) = (r.train.unwrap_or_default(), r.validation.unwrap_or_default());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"train": dataset_json(&train), "validation": dataset_json(&validation)})
                );
            } else {
                print!("{}", dataset_text(&train));
                print!("{}", dataset_text(&validation));
            }
            Ok(Outcome::Ok)
        }
        DatasetsCommand::Distill {
            run,
            criterion,
            min_score,
            purpose,
            answer_field,
            filename,
            metadata,
        } => {
            let r = client
                .create_distilled_dataset(proto::CreateDistilledDatasetRequest {
                    run_id: run,
                    criterion: criterion.unwrap_or_default(),
                    min_score,
                    purpose: purpose.map_or(0, |p| proto::DatasetPurpose::from(p) as i32),
                    answer_field: answer_field.unwrap_or_default(),
                    filename: filename.unwrap_or_default(),
                    metadata: metadata.into_iter().collect(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_made(json, &r.dataset.unwrap_or_default(), &r.counts.unwrap_or_default());
            Ok(Outcome::Ok)
        }
        DatasetsCommand::FromCompletions {
            model,
            filter,
            purpose,
            answer_field,
            limit,
            filename,
            metadata,
        } => {
            let r = client
                .create_dataset_from_completions(proto::CreateDatasetFromCompletionsRequest {
                    model: model.unwrap_or_default(),
                    completion_metadata: filter.into_iter().collect(),
                    purpose: purpose.map_or(0, |p| proto::DatasetPurpose::from(p) as i32),
                    answer_field: answer_field.unwrap_or_default(),
                    limit: limit.unwrap_or(0),
                    filename: filename.unwrap_or_default(),
                    metadata: metadata.into_iter().collect(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_made(json, &r.dataset.unwrap_or_default(), &r.counts.unwrap_or_default());
            Ok(Outcome::Ok)
        }
        DatasetsCommand::ToolCalls(args) => tool_calls(&mut client, json, args).await,
        DatasetsCommand::Pairs {
            run,
            preferred_run,
            reference_field,
            criterion,
            min_margin,
            filename,
            metadata,
        } => {
            use proto::create_preference_dataset_request::Preferred;
            let preferred = preferred_run
                .map(Preferred::PreferredRunId)
                .or(reference_field.map(Preferred::ReferenceField));
            let r = client
                .create_preference_dataset(proto::CreatePreferenceDatasetRequest {
                    run_id: run,
                    preferred,
                    criterion: criterion.unwrap_or_default(),
                    min_margin,
                    filename: filename.unwrap_or_default(),
                    metadata: metadata.into_iter().collect(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_made(json, &r.dataset.unwrap_or_default(), &r.counts.unwrap_or_default());
            Ok(Outcome::Ok)
        }
    }
}

/// Streams a file to UploadDataset, with a progress bar for large files on
/// a terminal.
pub async fn upload(
    channel: &crate::client::Channel,
    file: &std::path::Path,
    purpose: PurposeArg,
    name: Option<String>,
    metadata: Vec<(String, String)>,
    label_field: Option<String>,
    show_progress: bool,
) -> anyhow::Result<proto::Dataset> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let size = f.metadata()?.len();
    let filename = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset.jsonl".to_string());
    let bar = if show_progress && size >= PROGRESS_FROM && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(size);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(format!("uploading {filename}"));
        Some(bar)
    } else {
        None
    };
    let meta = proto::UploadDatasetMetadata {
        filename,
        purpose: proto::DatasetPurpose::from(purpose) as i32,
        display_name: name.unwrap_or_default(),
        metadata: metadata.into_iter().collect::<HashMap<_, _>>(),
        label_field: label_field.unwrap_or_default(),
    };
    let progress = bar.clone();
    let result = super::upload::upload_file(channel, f, meta, CHUNK, move |sent| {
        if let Some(bar) = &progress {
            bar.set_position(sent);
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(result.map_err(status_error)?.dataset.unwrap_or_default())
}

async fn download(
    client: &mut DatasetServiceClient<crate::client::Channel>,
    id: &str,
    output: &std::path::Path,
) -> anyhow::Result<(u64, String)> {
    let mut stream = client
        .download_dataset(proto::DownloadDatasetRequest { id: id.to_string() })
        .await
        .map_err(status_error)?
        .into_inner();
    let to_stdout = output.as_os_str() == "-";
    // Write next to the target and rename at the end, so an interrupted
    // download never leaves a partial file under the final name.
    let partial = output.with_extension("partial");
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(tokio::fs::File::create(&partial).await?)
    };
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut written = 0u64;
    while let Some(message) = stream.next().await {
        match message.map_err(status_error)?.payload {
            Some(download_dataset_response::Payload::Chunk(bytes)) => {
                sha2::Digest::update(&mut hasher, &bytes);
                written += bytes.len() as u64;
                sink.write_all(&bytes).await?;
            }
            Some(download_dataset_response::Payload::End(end)) => {
                sink.flush().await?;
                drop(sink);
                let got = hex::encode(sha2::Digest::finalize(hasher));
                anyhow::ensure!(
                    got == end.sha256 && written == end.bytes,
                    "download corrupted: got {written} bytes sha256 {got}, expected {} bytes sha256 {}",
                    end.bytes,
                    end.sha256
                );
                if !to_stdout {
                    tokio::fs::rename(&partial, output).await?;
                }
                return Ok((written, got));
            }
            None => {}
        }
    }
    if !to_stdout {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    anyhow::bail!("the server ended the download without its final message")
}
