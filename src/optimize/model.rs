//! A prompt optimisation run: what it searches with, and the state of its
//! search (saved after every evaluation).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::evals::model::{RunState, SamplingParams};

/// What a run searches with. The prompt is `instructions` (a system
/// message, when not empty), then the demonstrations (each a rendering of
/// `input_messages` for a training item and its reference answer as the
/// assistant's), then `input_messages` rendered for the item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizationSpec {
    pub name: String,
    /// Its testing criteria grade every answer.
    pub eval_id: String,
    pub model: String,
    /// Message templates (`{{ item.* }}`) after the instructions.
    pub input_messages: Vec<Value>,
    pub sampling: SamplingParams,
    /// The original instructions.
    pub instructions: String,
    /// Instructions to try besides the original, in order.
    pub candidate_instructions: Vec<String>,
    /// Proposes new instructions from a candidate's failures, when set.
    pub reflection_model: Option<String>,
    /// Minibatches and demonstrations come from here.
    pub train_dataset_id: String,
    /// Every candidate kept is scored on each of these items.
    pub validation_dataset_id: String,
    /// Held out: the original and the best prompt are compared on it at the end.
    pub test_dataset_id: Option<String>,
    /// Demonstrations per prompt (0: none are tried).
    pub max_demos: u32,
    /// JSON pointer to a training item's reference answer (demonstrations
    /// need it).
    pub demo_answer_field: Option<String>,
    pub minibatch_size: u32,
    /// Model calls the run may spend: samples, model graders' calls and the
    /// reflection model's.
    pub max_model_calls: u64,
    /// Model calls one item costs (its sample and model graders' calls).
    pub calls_per_item: u64,
    pub seed: u64,
    /// Items evaluated at once.
    pub concurrency: u32,
}

/// Where a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Original,
    /// One of the run's `candidate_instructions`.
    Given,
    /// Written by the reflection model from its parent's failures.
    Reflection,
    /// Its parent's instructions with demonstrations drawn anew.
    Demonstrations,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Original => "original",
            Origin::Given => "given",
            Origin::Reflection => "reflection",
            Origin::Demonstrations => "demonstrations",
        }
    }
}

/// A prompt the search kept (it beat its parent on a minibatch, or it is
/// the original), with its score on every validation item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub instructions: String,
    /// Training item indices shown as demonstrations, in order.
    pub demos: Vec<u64>,
    pub origin: Origin,
    pub parent: Option<usize>,
    /// Per validation item, in dataset order: the mean of its criteria's
    /// scores (0 for an item that errored).
    pub scores: Vec<f64>,
    /// Per validation item: whether it passed every criterion.
    pub passed: Vec<bool>,
}

impl Candidate {
    pub fn mean(&self) -> f64 {
        if self.scores.is_empty() {
            0.0
        } else {
            self.scores.iter().sum::<f64>() / self.scores.len() as f64
        }
    }
}

/// Two prompts on the same items: the original and the best.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub dataset_id: String,
    pub items: u64,
    pub original_mean: f64,
    pub best_mean: f64,
    /// The mean of best minus original per item, and its 95% confidence
    /// interval (normal approximation of the paired differences).
    pub mean_difference: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub original_passed: u64,
    pub best_passed: u64,
    /// Exact McNemar test on pass/fail.
    pub mcnemar_p: f64,
}

/// The search so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Search {
    /// The original first.
    pub candidates: Vec<Candidate>,
    /// Proposals made (kept or not); each step makes one.
    pub steps: u64,
    /// Proposals that did not beat their parent on the minibatch.
    pub rejected: u64,
    /// The caller's candidate instructions tried so far (kept or not).
    #[serde(default)]
    pub given_tried: u64,
    pub calls_used: u64,
    pub tokens_used: u64,
    /// Index of the best candidate once the search is over.
    pub best: Option<usize>,
    /// On the validation items, then on the held-out items.
    pub validation: Option<Comparison>,
    pub test: Option<Comparison>,
    /// Why the search stopped.
    pub stopped: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OptimizationRecord {
    pub id: String,
    pub project: String,
    pub spec: OptimizationSpec,
    pub state: RunState,
    pub search: Search,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
}
