//! What a grading run returns: OpenAI's `run` response, minus the wire format.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraderResult {
    pub reward: f64,
    /// One entry per named sub-grader of a `multi` grader.
    pub sub_rewards: BTreeMap<String, f64>,
    pub metadata: GraderMetadata,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraderMetadata {
    /// The grader's own name, shared with it: results are made by the
    /// million in batches and evals, and copying it into each would cost
    /// more than a string_check itself.
    pub name: Arc<str>,
    /// The grader `type` (`string_check`, `multi`, ...).
    pub kind: &'static str,
    pub execution_time: Duration,
    /// Total tokens spent per grader model; empty for graders that call no model and for
    /// results served from the cache.
    pub token_usage: BTreeMap<String, u64>,
    /// Boxed, and only when a flag or a detail is set: most results carry no error, and
    /// nine flags plus four strings in every result cost a string_check its speed.
    errors: Option<Box<GraderErrors>>,
}

impl GraderMetadata {
    pub(crate) fn new(
        name: Arc<str>,
        kind: &'static str,
        execution_time: Duration,
        token_usage: BTreeMap<String, u64>,
        errors: Option<Box<GraderErrors>>,
    ) -> Self {
        GraderMetadata {
            name,
            kind,
            execution_time,
            token_usage,
            errors,
        }
    }

    /// The error flags; all clear for a result without errors.
    pub fn errors(&self) -> &GraderErrors {
        self.errors.as_deref().unwrap_or(&NO_ERRORS)
    }
}

static NO_ERRORS: GraderErrors = GraderErrors {
    formula_parse_error: false,
    sample_parse_error: false,
    invalid_variable_error: false,
    python_grader_runtime_error: false,
    python_grader_runtime_error_details: String::new(),
    python_grader_server_error: false,
    python_grader_server_error_type: String::new(),
    model_grader_server_error: false,
    model_grader_server_error_details: String::new(),
    model_grader_parse_error: false,
    model_grader_refusal_error: false,
    other_error: false,
    other_error_details: String::new(),
};

/// OpenAI's error flags. Any flag set means the reward is 0 (or, for `multi`, that a
/// sub-grader contributed 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraderErrors {
    pub formula_parse_error: bool,
    pub sample_parse_error: bool,
    pub invalid_variable_error: bool,
    pub python_grader_runtime_error: bool,
    pub python_grader_runtime_error_details: String,
    pub python_grader_server_error: bool,
    pub python_grader_server_error_type: String,
    pub model_grader_server_error: bool,
    pub model_grader_server_error_details: String,
    pub model_grader_parse_error: bool,
    pub model_grader_refusal_error: bool,
    pub other_error: bool,
    /// Not an OpenAI field: says what `other_error` was about.
    pub other_error_details: String,
}

impl GraderErrors {
    pub fn any(&self) -> bool {
        self.formula_parse_error
            || self.sample_parse_error
            || self.invalid_variable_error
            || self.python_grader_runtime_error
            || self.python_grader_server_error
            || self.model_grader_server_error
            || self.model_grader_parse_error
            || self.model_grader_refusal_error
            || self.other_error
    }

    /// Names of the flags that are set, for error-rate breakdowns.
    pub fn kinds(&self) -> Vec<&'static str> {
        [
            (self.formula_parse_error, "formula_parse_error"),
            (self.sample_parse_error, "sample_parse_error"),
            (self.invalid_variable_error, "invalid_variable_error"),
            (self.python_grader_runtime_error, "python_grader_runtime_error"),
            (self.python_grader_server_error, "python_grader_server_error"),
            (self.model_grader_server_error, "model_grader_server_error"),
            (self.model_grader_parse_error, "model_grader_parse_error"),
            (self.model_grader_refusal_error, "model_grader_refusal_error"),
            (self.other_error, "other_error"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }

    pub(crate) fn other(details: impl Into<String>) -> Self {
        GraderErrors {
            other_error: true,
            other_error_details: details.into(),
            ..Default::default()
        }
    }

    /// Folds a sub-grader's flags into a `multi` result, keeping the first details seen.
    pub(crate) fn merge(&mut self, other: &GraderErrors) {
        fn details(mine: &mut String, theirs: &str) {
            if mine.is_empty() {
                theirs.clone_into(mine);
            }
        }
        self.formula_parse_error |= other.formula_parse_error;
        self.sample_parse_error |= other.sample_parse_error;
        self.invalid_variable_error |= other.invalid_variable_error;
        self.python_grader_runtime_error |= other.python_grader_runtime_error;
        details(
            &mut self.python_grader_runtime_error_details,
            &other.python_grader_runtime_error_details,
        );
        self.python_grader_server_error |= other.python_grader_server_error;
        details(
            &mut self.python_grader_server_error_type,
            &other.python_grader_server_error_type,
        );
        self.model_grader_server_error |= other.model_grader_server_error;
        details(
            &mut self.model_grader_server_error_details,
            &other.model_grader_server_error_details,
        );
        self.model_grader_parse_error |= other.model_grader_parse_error;
        self.model_grader_refusal_error |= other.model_grader_refusal_error;
        self.other_error |= other.other_error;
        details(&mut self.other_error_details, &other.other_error_details);
    }
}
