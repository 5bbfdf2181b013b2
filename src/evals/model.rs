//! Evals, runs and output items as the domain and the store see them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One testing criterion: a grader (the object itself, saved-grader
/// references already resolved) and when an item passes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    /// The grader's name: names the criterion in results.
    pub name: String,
    pub grader: Value,
    /// Score at or above which an item passes.
    pub pass_threshold: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    pub item_schema: Option<Value>,
    /// Whether the eval expects a sample beside each item (OpenAI's
    /// `include_sample_schema`): shown in the eval's schema.
    #[serde(default)]
    pub include_sample_schema: bool,
    pub criteria: Vec<Criterion>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalRecord {
    pub id: String,
    /// The project it belongs to (`auth`), with its runs.
    pub project: String,
    pub name: String,
    pub spec: EvalSpec,
    pub created_at: i64,
    /// When the name or metadata last changed (`created_at` until then).
    pub updated_at: i64,
}

/// Which way a listing goes: by creation time (an eval's by its update
/// time when asked), an output item list by dataset order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// What a listing of evals sorts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EvalSort {
    #[default]
    CreatedAt,
    UpdatedAt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    InProgress,
    Completed,
    Failed,
    Canceled,
}

impl RunState {
    pub const ALL: [RunState; 5] = [
        RunState::Queued,
        RunState::InProgress,
        RunState::Completed,
        RunState::Failed,
        RunState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::InProgress => "in_progress",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Completed | RunState::Failed | RunState::Canceled)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
}

/// Where a run's samples come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum DataSource {
    /// Sample `model` on messages rendered from each item.
    Model {
        model: String,
        /// `{role, content}` objects whose strings may hold `{{ item.* }}`.
        input_messages: Vec<Value>,
        /// Instead of `input_messages`: the path of each item's own list of
        /// messages (a final assistant message is left out).
        #[serde(default)]
        item_reference: Option<String>,
        sampling: SamplingParams,
        tools: Option<Value>,
        response_format: Option<Value>,
    },
    /// The samples are in the items: rendered from `sample_template`, or
    /// each row's `sample` when it is empty.
    Precomputed { sample_template: String },
}

/// What a run may spend. It stops handing out items before the next would
/// take more model calls than `max_model_calls` (counting each item at its
/// planned calls), or once the tokens of finished items reach `max_tokens`
/// (items in flight then finish, so tokens may pass it by their share), and
/// completes with what it finished.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub max_model_calls: Option<u64>,
    pub max_tokens: Option<u64>,
}

impl Budget {
    pub fn is_unlimited(&self) -> bool {
        self.max_model_calls.is_none() && self.max_tokens.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub name: String,
    pub dataset_id: String,
    pub source: DataSource,
    pub concurrency: u32,
    pub error_rate_threshold: f64,
    /// The eval's criterion names when the run was created, in order.
    pub criteria: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub budget: Budget,
    /// Model calls one item takes: its sample and its model graders' calls
    /// (0 for runs made before it was recorded).
    #[serde(default)]
    pub calls_per_item: u64,
}

impl RunSpec {
    pub fn model(&self) -> &str {
        match &self.source {
            DataSource::Model { model, .. } => model,
            DataSource::Precomputed { .. } => "",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriterionCounts {
    pub passed: u64,
    pub failed: u64,
    pub errored: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub invocations: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// A run's tallies after its first `completed` items; stored with the run
/// and with each output item (the progress event that item makes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub completed: u64,
    pub passed: u64,
    pub failed: u64,
    pub errored: u64,
    /// One per criterion, in the eval's order.
    pub per_criterion: Vec<CriterionCounts>,
    pub usage: BTreeMap<String, Usage>,
    /// Milliseconds spent running, summed over attempts (a resumed run does
    /// not count the time it spent stopped).
    pub elapsed_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub id: String,
    /// Its eval's project.
    pub project: String,
    pub eval_id: String,
    pub spec: RunSpec,
    pub state: RunState,
    /// Items in the dataset.
    pub total: u64,
    pub progress: Progress,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Pass,
    Fail,
    Error,
}

impl ItemStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Pass => "pass",
            ItemStatus::Fail => "fail",
            ItemStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ItemStatus::Pass, ItemStatus::Fail, ItemStatus::Error]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// One criterion's outcome on one item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub kind: String,
    pub score: f64,
    pub passed: bool,
    /// The grader's error, when it flagged one.
    pub error: Option<String>,
}

/// What a finished item holds besides its status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemDetail {
    pub item: Value,
    /// Rendered input messages; empty for precomputed samples.
    pub input: Vec<Value>,
    pub sample: String,
    #[serde(default)]
    pub tool_calls: Vec<Value>,
    #[serde(default)]
    pub finish_reason: String,
    pub results: Vec<Outcome>,
    pub error: Option<String>,
    /// The sampled model's tokens for this item (none for precomputed samples).
    #[serde(default)]
    pub usage: Option<SampleUsage>,
}

/// What sampling one item cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleUsage {
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputItemRecord {
    pub run_id: String,
    /// The item's row in the dataset, from 0.
    pub index: u64,
    /// 1, 2, 3, ... per run, in the order items were recorded.
    pub seq: u64,
    pub status: ItemStatus,
    pub detail: ItemDetail,
    /// The run's tallies including this item.
    pub progress: Progress,
    pub created_at: i64,
}

/// The prefix of output item ids.
const ITEM_PREFIX: &str = "outputitem_";

impl OutputItemRecord {
    /// The item's id: its run and its row, `outputitem_<run>_<index>`.
    pub fn id(&self) -> String {
        output_item_id(&self.run_id, self.index)
    }
}

/// The id of `run_id`'s output item for dataset row `index`.
pub fn output_item_id(run_id: &str, index: u64) -> String {
    format!(
        "{ITEM_PREFIX}{}_{index}",
        run_id.strip_prefix("evalrun_").unwrap_or(run_id)
    )
}

/// The run id and row of an id from [`output_item_id`]; None for anything else.
pub fn parse_output_item_id(id: &str) -> Option<(String, u64)> {
    let (run, index) = id.strip_prefix(ITEM_PREFIX)?.rsplit_once('_')?;
    let run = format!("evalrun_{run}");
    let canonical =
        !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) && (index == "0" || !index.starts_with('0'));
    if !crate::ids::is_valid("evalrun", &run) || !canonical {
        return None;
    }
    Some((run, index.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_item_ids_name_their_run_and_row() {
        let run = crate::ids::new_id("evalrun");
        let id = output_item_id(&run, 17);
        assert!(id.starts_with("outputitem_") && !id.contains("evalrun"), "{id}");
        assert_eq!(parse_output_item_id(&id), Some((run.clone(), 17)));
        for bad in [
            "outputitem_x_1".to_string(),
            format!("{id}x"),
            id.replace("_17", "_"),
            id.replace("_17", "_+1"),
            id.replace("_17", "_017"),
            run.clone(),
            format!("outputitem_{run}_1"),
        ] {
            assert_eq!(parse_output_item_id(&bad), None, "{bad}");
        }
    }
}
