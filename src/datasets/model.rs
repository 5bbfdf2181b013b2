//! The stored shape of a dataset: what the store persists and the API shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::report::{DatasetStats, Purpose, PurposeChoice, ValidationReport};

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

/// Where an upload sent in parts (OpenAI's Uploads API) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadState {
    /// Taking parts.
    Pending,
    /// Its parts became a dataset (`UploadRecord::dataset_id`) and are gone.
    Completed,
    Cancelled,
    /// Not completed in time; its parts are gone.
    Expired,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Pending => "pending",
            UploadState::Completed => "completed",
            UploadState::Cancelled => "cancelled",
            UploadState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(UploadState::Pending),
            "completed" => Some(UploadState::Completed),
            "cancelled" => Some(UploadState::Cancelled),
            "expired" => Some(UploadState::Expired),
            _ => None,
        }
    }
}

/// A file being sent in parts, to be assembled into a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct UploadRecord {
    pub id: String,
    pub project: String,
    pub filename: String,
    pub purpose: PurposeChoice,
    /// The size the client announced; the parts completed must add up to it.
    pub bytes: u64,
    pub mime_type: String,
    pub state: UploadState,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; a pending upload is expired from then on.
    pub expires_at: i64,
    /// The dataset a completed upload became.
    pub dataset_id: Option<String>,
}

/// One part of an upload: its bytes are a blob.
#[derive(Clone, Debug, PartialEq)]
pub struct UploadPartRecord {
    pub id: String,
    pub upload_id: String,
    pub bytes: u64,
    pub sha256: String,
    /// Unix milliseconds.
    pub created_at: i64,
}
