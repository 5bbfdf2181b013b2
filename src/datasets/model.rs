//! The stored shape of a dataset: what the store persists and the API shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::report::{DatasetStats, Purpose, ValidationReport};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatasetState {
    /// Validated without errors: jobs and evals may use it.
    Ready,
    /// Stored with its report so users can read it; nothing may use it.
    Failed,
}

impl DatasetState {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetState::Ready => "ready",
            DatasetState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(DatasetState::Ready),
            "failed" => Some(DatasetState::Failed),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    pub source_dataset_id: String,
    /// "train" or "validation".
    pub split: String,
    pub validation_fraction: f64,
    pub seed: u64,
    pub stratify_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DatasetRecord {
    pub id: String,
    /// The project it belongs to (`auth`): no other project sees it.
    pub project: String,
    pub filename: String,
    pub display_name: String,
    pub purpose: Purpose,
    pub state: DatasetState,
    pub bytes: u64,
    pub sha256: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub metadata: BTreeMap<String, String>,
    pub report: ValidationReport,
    pub stats: DatasetStats,
    pub lineage: Option<Lineage>,
}
