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

impl StoreError {
    /// Whether the database could not be reached or dropped the connection
    /// (down, restarting, refusing connections): the same call may succeed
    /// once it is back. Other errors say something about the call itself.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::WorkerCrashed => true,
            // Connection exceptions (class 08), the server shutting down or
            // starting (57P01-57P03), too many connections (53300).
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")),
            _ => false,
        }
    }
}
