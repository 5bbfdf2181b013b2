//! Plain data the store takes and returns that no domain module owns:
//! queries, cursors, saved graders, the outcome of a state change.

use crate::datasets::model::UploadRecord;
use crate::datasets::report::Purpose;
use crate::evals::model::{EvalSort, ItemStatus, Order, RunState};
use crate::jobs::model::{JobEvent, JobRecord, JobState};

/// Position after the last row of a page: its sort time (creation time
/// unless the listing sorts on another) and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

#[derive(Clone, Debug, Default)]
pub struct DatasetQuery {
    /// Only this project's datasets.
    pub project: String,
    /// Only datasets of these purposes (any when empty).
    pub purposes: Vec<Purpose>,
    pub after: Option<Cursor>,
    /// Oldest first (by creation, then id) instead of newest first.
    pub oldest_first: bool,
    pub limit: usize,
}

#[derive(Clone, Debug, Default)]
pub struct JobQuery {
    /// Only this project's jobs (every project's when None: the server's own queries).
    pub project: Option<String>,
    pub state: Option<JobState>,
    pub base_model: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// How a keyset page in `order` continues after `after`: the comparison,
/// the direction, and the position to compare with (the first row's when
/// there is no cursor). Comparisons and directions are fixed strings.
pub fn keyset(order: Order, after: Option<&Cursor>) -> (&'static str, &'static str, (i64, String)) {
    let position = |none: i64| after.map_or((none, String::new()), |c| (c.created_at, c.id.clone()));
    match order {
        Order::Ascending => (">", "ASC", position(i64::MIN)),
        Order::Descending => ("<", "DESC", position(i64::MAX)),
    }
}

/// A project's evals, strictly after `after` in the listing's order.
#[derive(Clone, Debug)]
pub struct EvalQuery {
    pub project: String,
    pub sort: EvalSort,
    pub order: Order,
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// An eval's runs, optionally of one state, strictly after `after` in the
/// listing's order (by creation time).
#[derive(Clone, Debug)]
pub struct RunQuery {
    pub eval_id: String,
    pub state: Option<RunState>,
    pub order: Order,
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// A run's output items in dataset order (or its reverse), optionally of
/// one status, strictly after the row `after_index`.
#[derive(Clone, Debug)]
pub struct ItemQuery {
    pub run_id: String,
    pub status: Option<ItemStatus>,
    pub order: Order,
    pub after_index: Option<u64>,
    pub limit: usize,
}

impl ItemQuery {
    /// Items of every status in dataset order, after the row `after_index`.
    pub fn all(run_id: &str, after_index: Option<u64>, limit: usize) -> Self {
        ItemQuery {
            run_id: run_id.to_string(),
            status: None,
            order: Order::Ascending,
            after_index,
            limit,
        }
    }
}

/// A grader saved under a name, as the user wrote it (validated before saving).
#[derive(Clone, Debug, PartialEq)]
pub struct GraderRecord {
    pub project: String,
    pub name: String,
    pub grader: serde_json::Value,
    pub created_at: i64,
}

/// The outcome of a compare-and-set state change.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived return value
pub enum Transition {
    Done(JobRecord, JobEvent),
    /// The job was not in an allowed state (or, None, does not exist).
    Conflict(Option<JobRecord>),
}

/// What adding a part to an upload did.
#[derive(Clone, Debug, PartialEq)]
pub enum PartAdded {
    Added,
    /// The upload is not pending (or, None, does not exist): nothing added.
    NotPending(Option<UploadRecord>),
    /// The upload's parts would add up to more than its announced bytes;
    /// `stored` bytes are in its parts already. Nothing added.
    TooLarge {
        stored: u64,
    },
}

/// The outcome of ending an upload (completing, cancelling, expiring it).
#[derive(Clone, Debug, PartialEq)]
pub enum UploadEnd {
    /// Ended: the upload as it now is, and the blobs its parts held (their
    /// rows are gone; the caller removes the blobs nothing else uses).
    Done { upload: UploadRecord, blobs: Vec<String> },
    /// It was not pending (or, None, does not exist): nothing changed.
    NotPending(Option<UploadRecord>),
}

/// A project's stored completions, optionally of one model and carrying
/// every given metadata pair, strictly after `after` in `order` (by
/// creation time, then id).
#[derive(Clone, Debug)]
pub struct CompletionQuery {
    pub project: String,
    pub model: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub order: Order,
    pub after: Option<Cursor>,
    pub limit: usize,
}
