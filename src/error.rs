//! Domain errors and their one mapping to the wire.
//!
//! Domain code returns `Error`; only `impl From<Error> for tonic::Status`
//! knows about gRPC. Field problems travel as `google.rpc.BadRequest` field
//! violations so clients can point at the offending field.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{blobs::BlobError, store::StoreError};

/// A part Lathe depends on that can be out of reach for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    Database,
    ObjectStore,
    Ray,
}

impl Dependency {
    /// Its name in health checks and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::ObjectStore => "object_store",
            Dependency::Ray => "ray",
        }
    }

    /// Its name in a sentence.
    pub fn words(self) -> &'static str {
        match self {
            Dependency::Database => "the database",
            Dependency::ObjectStore => "the object store",
            Dependency::Ray => "the Ray cluster",
        }
    }
}

/// All a client learns of an internal cause (a storage error names server
/// paths, a database error its host); the cause itself is logged.
pub const INTERNAL: &str = "internal error; see the server log";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{message}")]
    FailedPrecondition {
        message: String,
        /// (type, subject) pairs of the violated preconditions.
        violations: Vec<(String, String)>,
    },
    /// A limit that waiting does not lift (an upload too large, too many
    /// uploads at once).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A full queue: trying again after `retry_after` may succeed. Travels
    /// as RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`.
    #[error("{message}")]
    Overloaded { message: String, retry_after: Duration },
    #[error("request cancelled: {0}")]
    Cancelled(String),
    #[error("{0}")]
    Unavailable(String),
    /// No key, or one the server does not accept: the same answer for
    /// every case, so it says nothing about what exists.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid key whose role may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("blob storage: {0}")]
    Blob(#[from] BlobError),
    #[error("internal error: {0}")]
    Internal(String),
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound { kind, id: id.into() }
    }

    pub fn precondition(kind: impl Into<String>, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            message: message.into(),
            violations: vec![(kind.into(), subject.into())],
        }
    }

    /// What a client may read of this error, where it travels as text inside
    /// a record (a job's or eval run's error, a job event) rather than as a
    /// status: its message, or for an internal cause, which is logged here
    /// and may hold server paths, the same words a status would carry.
    pub fn public_message(&self) -> String {
        match self {
            Error::Store(_) | Error::Blob(_) | Error::Internal(_) => {
                tracing::error!(error = %self, "internal error");
                INTERNAL.into()
            }
            other => other.to_string(),
        }
    }

    /// The dependency this error says is out of reach (a lost connection, a
    /// refused one, a timeout): the same call may succeed once it is back.
    /// None for errors about the call itself.
    pub fn unavailable(&self) -> Option<Dependency> {
        match self {
            Error::Store(e) if e.is_unavailable() => Some(Dependency::Database),
            // The object store's client reports what went wrong on the wire
            // (refused, reset, timed out, 5xx after its retries) as Generic;
            // a missing object, bad credentials or a bad path are not
            // outages.
            Error::Blob(object_store::Error::Generic { .. }) => Some(Dependency::ObjectStore),
            _ => None,
        }
    }

    /// A store's refusal to create something on a dataset that a concurrent
    /// request deleted after the caller checked it; other errors as they are.
    pub fn dataset_gone(e: StoreError) -> Self {
        match e {
            StoreError::Gone(id) => Error::precondition(
                "DATASET_STATE",
                &id,
                format!("dataset {id} was deleted, or is not ready, while this request was being made"),
            ),
            other => other.into(),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let message = err.to_string();
        let mut details = ErrorDetails::new();
        let code = match err {
            Error::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Code::InvalidArgument
            }
            Error::NotFound { kind, id } => {
                details.set_resource_info(kind, id, "", "not found");
                Code::NotFound
            }
            Error::FailedPrecondition { violations, .. } => {
                for (kind, subject) in violations {
                    details.add_precondition_failure_violation(kind, subject, message.clone());
                }
                Code::FailedPrecondition
            }
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Overloaded { retry_after, .. } => {
                details.set_retry_info(Some(retry_after));
                Code::ResourceExhausted
            }
            Error::Cancelled(_) => Code::Cancelled,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Store(StoreError::Conflict(_)) => Code::AlreadyExists,
            // Services say which quota and what to do; this is the fallback.
            Error::Store(StoreError::OverQuota { .. }) => Code::ResourceExhausted,
            Error::Store(_) | Error::Blob(_) | Error::Internal(_) => {
                // Internal causes are logged here, once, and not leaked.
                tracing::error!(error = %message, "internal error");
                return Status::internal(INTERNAL);
            }
        };
        Status::with_error_details(code, message, details)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_violations_travel_as_details() {
        let status: Status = Error::invalid("metadata.purpose", "purpose is required").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, "metadata.purpose");
        assert!(status.message().contains("purpose is required"));
    }

    #[test]
    fn internal_errors_are_not_leaked() {
        let status: Status = Error::Internal("disk on fire at /secret/path".into()).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/secret"));
        let blob = Error::Blob(object_store::Error::NotFound {
            path: "/srv/lathe-data/blobs/sha256/ab/abcd".into(),
            source: "gone".into(),
        });
        assert_eq!(blob.public_message(), INTERNAL);
        assert_eq!(
            Error::invalid("path", "bad").public_message(),
            "invalid argument: path: bad"
        );
    }

    #[test]
    fn overload_carries_retry_info() {
        let s: Status = Error::Overloaded {
            message: "the queue is full".into(),
            retry_after: Duration::from_millis(1500),
        }
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.get_error_details().retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(1500))
        );
        let s: Status = Error::ResourceExhausted("too big".into()).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.get_error_details().retry_info().is_none(), "a limit is not retried");
    }

    #[test]
    fn precondition_and_not_found_codes() {
        let s: Status = Error::precondition("STATE", "ds_x", "dataset ds_x is FAILED").into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.get_error_details().precondition_failure().unwrap().violations[0].subject,
            "ds_x"
        );
        let s: Status = Error::not_found("dataset", "ds_y").into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "dataset ds_y not found");
    }
}
