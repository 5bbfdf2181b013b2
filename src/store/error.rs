//! What can go wrong in the store.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("record {0} already exists")]
    Conflict(String),
    /// A dataset cannot be deleted: an unfinished job or eval run uses it.
    #[error("dataset {0} is in use")]
    InUse(String),
    /// A new job or eval run names a dataset that is gone or not ready
    /// (deleted by a concurrent request after the caller looked).
    #[error("dataset {0} is gone or not ready")]
    Gone(String),
    /// A new record would take its project past a quota; nothing was written.
    #[error("project {project} is at its {quota} quota ({limit})")]
    OverQuota {
        project: String,
        quota: &'static str,
        limit: u64,
    },
    /// A change of state of work with an event log came without its event
    /// (a caller's bug); nothing was written.
    #[error("the state change of {0} needs an event")]
    EventMissing(String),
    #[error("stored record {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("unsupported database url {0:?}: expected sqlite://PATH, sqlite::memory: or postgres://...")]
    UnsupportedUrl(String),
}
