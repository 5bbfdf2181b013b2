//! Queries and cursors the store takes: plain data, no rules.

use crate::datasets::report::Purpose;
use crate::jobs::model::JobState;

/// Position after the last row of a page, newest-first order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

#[derive(Clone, Debug, Default)]
pub struct DatasetQuery {
    pub purpose: Option<Purpose>,
    pub after: Option<Cursor>,
    pub limit: usize,
}

#[derive(Clone, Debug, Default)]
pub struct JobQuery {
    pub state: Option<JobState>,
    pub base_model: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub after: Option<Cursor>,
    pub limit: usize,
}
