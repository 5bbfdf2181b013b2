//! `lathe completions`: list, show, relabel and delete stored chat
//! completions (kept by `lathe chat --store` or the REST API's
//! `store: true`); `lathe datasets from-completions` makes them a dataset.

use clap::Subcommand;
use serde_json::{Value, json};

use super::connect::Outcome;
use super::datasets::parse_key_value;
use super::output::status_error;
use crate::proto::{self, json::json_from_struct};

#[derive(Subcommand, Debug)]
pub enum CompletionsCommand {
    /// List stored completions, oldest first.
    List {
        /// Only completions of this model.
        #[arg(long)]
        model: Option<String>,
        /// Only completions with this KEY=VALUE metadata, repeatable.
        #[arg(long = "where", value_parser = parse_key_value)]
        filter: Vec<(String, String)>,
        #[arg(long, default_value_t = 20)]
        limit: i32,
        #[arg(long)]
        newest_first: bool,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show a stored completion: what was asked and answered.
    Get {
        id: String,
    },
    /// Replace a stored completion's metadata (none given clears it).
    Update {
        id: String,
        /// KEY=VALUE, repeatable.
        #[arg(long = "metadata", value_parser = parse_key_value)]
        metadata: Vec<(String, String)>,
    },
    Delete {
        id: String,
    },
}

fn as_json(c: proto::StoredCompletion) -> Value {
    json!({
        "id": c.id,
        "model": c.model,
        "created_at": c.created_at.map(|t| t.seconds),
        "metadata": c.metadata,
        "request": c.request.map(json_from_struct),
        "choices": c.choices.into_iter().map(json_from_struct).collect::<Vec<_>>(),
        "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens},
    })
}

/// One line: id, model, metadata and the answer's start.
fn line(c: &Value) -> String {
    let answer = c["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    let answer: String = answer.chars().take(60).collect();
    let metadata = c["metadata"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    format!(
        "{}  {}  {}  {:?}",
        c["id"].as_str().unwrap_or_default(),
        c["model"].as_str().unwrap_or_default(),
        metadata,
        answer
    )
}

pub async fn run(addr: &str, json_out: bool, cmd: CompletionsCommand) -> anyhow::Result<Outcome> {
    let mut client = super::connect::connect(addr).await?.models();
    match cmd {
        CompletionsCommand::List {
            model,
            filter,
            limit,
            newest_first,
            page_token,
        } => {
            let page = client
                .list_stored_completions(proto::ListStoredCompletionsRequest {
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                    model: model.unwrap_or_default(),
                    metadata: filter.into_iter().collect(),
                    newest_first,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let all: Vec<Value> = page.completions.into_iter().map(as_json).collect();
            if json_out {
                println!(
                    "{}",
                    json!({"completions": all, "next_page_token": page.next_page_token})
                );
            } else {
                for c in &all {
                    println!("{}", line(c));
                }
                if !page.next_page_token.is_empty() {
                    println!("(more: --page-token {})", page.next_page_token);
                }
            }
        }
        CompletionsCommand::Get { id } => {
            let c = client
                .get_stored_completion(proto::GetStoredCompletionRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .completion
                .unwrap_or_default();
            let c = as_json(c);
            println!(
                "{}",
                if json_out {
                    c.to_string()
                } else {
                    serde_json::to_string_pretty(&c)?
                }
            );
        }
        CompletionsCommand::Update { id, metadata } => {
            let c = client
                .update_stored_completion(proto::UpdateStoredCompletionRequest {
                    id,
                    metadata: metadata.into_iter().collect(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .completion
                .unwrap_or_default();
            let c = as_json(c);
            println!("{}", if json_out { c.to_string() } else { line(&c) });
        }
        CompletionsCommand::Delete { id } => {
            let r = client
                .delete_stored_completion(proto::DeleteStoredCompletionRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            if json_out {
                println!("{}", json!({"id": r.id, "deleted": r.deleted}));
            } else {
                println!("deleted {}", r.id);
            }
        }
    }
    Ok(Outcome::Ok)
}
