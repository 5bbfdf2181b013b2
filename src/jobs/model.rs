//! Jobs as the domain and the store see them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Paused,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::ValidatingFiles,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::ValidatingFiles => "validating_files",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

/// A hyperparameter: "auto" (None) or a value.
pub type Auto<T> = Option<T>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub n_epochs: Auto<i64>,
    pub batch_size: Auto<i64>,
    pub learning_rate_multiplier: Auto<f64>,
    /// DPO's beta, and reinforcement's KL coefficient.
    pub beta: Auto<f64>,
    /// Reinforcement only.
    pub eval_interval: Auto<i64>,
    pub eval_samples: Auto<i64>,
    pub generations_per_prompt: Auto<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_multiplier: Auto<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Auto<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Auto<i64>,
    /// DPO only: the weight of the NLL term on the preferred output (RPO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_alpha: Auto<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    Supervised,
    Dpo,
    Reinforcement,
}

impl MethodKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Supervised => "supervised",
            MethodKind::Dpo => "dpo",
            MethodKind::Reinforcement => "reinforcement",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Method {
    pub kind: MethodKind,
    pub hyperparameters: Hyperparameters,
    /// Reinforcement only: the OpenAI grader object, as given.
    pub grader: Option<serde_json::Value>,
    /// Reinforcement only: OpenAI's `response_format` (`json_schema` or
    /// `json_object`): samples are parsed as JSON for the grader's
    /// `{{ sample.output_json }}`; one that does not parse is a
    /// `sample_parse_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lora {
    pub rank: u32,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
}

impl Default for Lora {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub patience: u32,
    pub min_delta: f64,
}

/// An eval run on the validation data at every checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointEval {
    pub eval_id: String,
    /// Empty: each validation row's `messages` without the final assistant
    /// message.
    pub input_messages: Vec<serde_json::Value>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    /// Empty: the share of items passing every criterion.
    pub criterion: String,
    pub concurrency: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

/// What the user asked for; fixed at creation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub base_model: String,
    pub training_dataset_id: String,
    pub validation_dataset_id: Option<String>,
    pub method: Method,
    pub lora: Lora,
    pub seed: u64,
    pub suffix: String,
    pub metadata: BTreeMap<String, String>,
    pub priority: i32,
    pub early_stopping: Option<EarlyStopping>,
    pub webhook: Option<Webhook>,
    #[serde(default)]
    pub checkpoint_eval: Option<CheckpointEval>,
    /// The fine-tuned model the job continues from (`ft:...`), when it
    /// does: training starts from its adapter, `base_model` is its base,
    /// and DPO's reference is that adapter, frozen.
    #[serde(default)]
    pub start_from: Option<String>,
    /// What the job's worker reserves where jobs go to a Ray cluster; the
    /// server's defaults for what it leaves unset.
    #[serde(default)]
    pub resources: Resources,
}

/// CPUs and GPUs a job asks for; None takes the dispatcher's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: Option<f64>,
    pub gpus: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: String,
    /// The project it belongs to (`auth`), with its events, checkpoints and models.
    pub project: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub fine_tuned_model: Option<String>,
    pub fine_tuned_checkpoint_step: Option<u64>,
    pub stop_reason: Option<String>,
    pub error: Option<JobError>,
    pub trained_tokens: u64,
    pub attempts: u32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
}

impl JobRecord {
    /// A job as it is created: VALIDATING_FILES, never run, nothing set.
    pub fn new(id: String, project: String, spec: JobSpec, idempotency_key: Option<String>, created_at: i64) -> Self {
        Self {
            id,
            project,
            spec,
            state: JobState::ValidatingFiles,
            idempotency_key,
            created_at,
            started_at: None,
            finished_at: None,
            fine_tuned_model: None,
            fine_tuned_checkpoint_step: None,
            stop_reason: None,
            error: None,
            trained_tokens: 0,
            attempts: 0,
            lease_owner: None,
            lease_expires_at: None,
        }
    }
}

/// Training metrics, in OpenAI's names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    pub train_loss: Option<f64>,
    pub valid_loss: Option<f64>,
    pub train_mean_token_accuracy: Option<f64>,
    pub valid_mean_token_accuracy: Option<f64>,
    pub learning_rate: Option<f64>,
    pub tokens_per_second: Option<f64>,
    /// The tokens this step trained on, where the trainer says: the
    /// server's training metrics count them. Not on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_tokens: Option<u64>,
    pub train_reward_mean: Option<f64>,
    pub valid_reward_mean: Option<f64>,
    /// The checkpoint eval's pass rate, and the run that measured it.
    #[serde(default)]
    pub eval_pass_rate: Option<f64>,
    #[serde(default)]
    pub eval_run_id: Option<String>,
    /// A training method's measures without a field of their own, named
    /// `train_<name>` and `valid_<name>` (DPO's `train_rewards/margins`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EventData {
    Message,
    State {
        state: JobState,
    },
    Metrics {
        metrics: Metrics,
    },
    Checkpoint {
        checkpoint_id: String,
        step: u64,
        metrics: Metrics,
    },
}

/// An event before the store gives it its sequence number.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub level: Level,
    pub message: String,
    pub data: EventData,
}

impl NewEvent {
    pub fn info(message: impl Into<String>) -> Self {
        Self {
            level: Level::Info,
            message: message.into(),
            data: EventData::Message,
        }
    }

    pub fn state(state: JobState, level: Level, message: impl Into<String>) -> Self {
        Self {
            level,
            message: message.into(),
            data: EventData::State { state },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    pub job_id: String,
    /// Per job, 1, 2, 3, ... with no gaps.
    pub seq: u64,
    /// The attempt (claim of the job by a worker, from 1) that wrote the
    /// event; 0 before the job first ran. A resumed job trains some steps
    /// again: a per-step view keeps each step's latest attempt.
    pub attempt: u32,
    pub created_at: i64,
    pub level: Level,
    pub message: String,
    pub data: EventData,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFile {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointRecord {
    pub id: String,
    pub job_id: String,
    pub step: u64,
    pub created_at: i64,
    pub metrics: Metrics,
    pub files: Vec<CheckpointFile>,
}

/// Fields a state change may set along with the state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobPatch {
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub fine_tuned_model: Option<String>,
    pub fine_tuned_checkpoint_step: Option<u64>,
    pub stop_reason: Option<String>,
    pub error: Option<JobError>,
    pub trained_tokens: Option<u64>,
    /// Drop the lease (the job leaves RUNNING).
    pub release_lease: bool,
    /// Change the job only while this lease holder holds it (a runner
    /// ending its job: one that lost it must not end the next claim's).
    pub held_by: Option<String>,
}
