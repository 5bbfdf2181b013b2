//! Models as the service and the store see them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a model record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Registered by an operator from files on the server.
    Base,
    /// Made by a fine-tuning job: a base model plus one of the job's adapters.
    FineTuned,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Base => "base",
            ModelKind::FineTuned => "fine_tuned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ModelKind::Base, ModelKind::FineTuned]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// What registration found in a base model's files (headers only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseModelInfo {
    /// Absolute path of the model directory or GGUF file; empty for a
    /// stored model.
    pub path: String,
    /// "safetensors" (Hugging Face layout) or "gguf".
    pub format: String,
    pub architecture: String,
    pub parameters: u64,
    pub context_length: u64,
    /// A model kept in the blob store (uploaded or imported): its files,
    /// which the engine's processes fetch into their model cache. Empty for
    /// a model registered by path, whose `path` the engine reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ModelFile>,
}

/// One file of a stored model: a blob, under its name inside the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// A model users can name: a registered base model or a fine-tuned model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRecord {
    pub id: String,
    /// The project of a fine-tuned model; None for base models, which every
    /// project shares.
    pub project: Option<String>,
    pub kind: ModelKind,
    /// The base model's name (a base model's own id).
    pub base_model: String,
    pub job_id: Option<String>,
    pub checkpoint_step: Option<u64>,
    pub created_at: i64,
    /// For base models: what registration found.
    pub info: Option<BaseModelInfo>,
}

/// What a model name refers to, as the engine loads it.
#[derive(Clone, Debug)]
pub enum Resolved {
    Base {
        name: String,
        path: PathBuf,
    },
    FineTuned {
        id: String,
        base: String,
        base_path: PathBuf,
        /// PEFT `adapter_model.safetensors` and `adapter_config.json`.
        adapter: Vec<u8>,
        adapter_config: Vec<u8>,
    },
}

/// `ft:{base}:{suffix}:{job-id}`, OpenAI's shape.
pub fn fine_tuned_model_id(base: &str, suffix: &str, job_id: &str) -> String {
    format!("ft:{base}:{suffix}:{job_id}")
}

/// `{model}:ckpt-step-{n}`: a job's checkpoint as a model.
pub fn checkpoint_model_id(model: &str, step: u64) -> String {
    format!("{model}:ckpt-step-{step}")
}

/// `(model prefix, job id, step)` of a checkpoint model id,
/// `ft:BASE:SUFFIX:JOB:ckpt-step-N`.
pub fn parse_checkpoint_model_id(model: &str) -> Option<(&str, &str, u64)> {
    let (prefix, step) = model.rsplit_once(":ckpt-step-")?;
    let step = step.parse().ok()?;
    let (_, job) = prefix.rsplit_once(':')?;
    Some((prefix, job, step))
}

impl ModelRecord {
    /// Whether `caller` may see and use it: a base model, or its project's.
    pub fn visible_to(&self, caller: &crate::auth::model::Caller) -> bool {
        self.project.as_deref().is_none_or(|p| caller.sees(p))
    }
}
