//! Persistence of Lathe's records behind one trait.
//!
//! Architecture invariant: the store knows rows, not rules. It never decides
//! whether an operation is allowed (that is the domain's job); it only makes
//! each call atomic. Every backend passes the same suite (`store::suite`).

// Plain data and orchestration: nothing here needs unsafe, so nothing may use it.
#![forbid(unsafe_code)]

#[macro_use]
pub(crate) mod auth_sql;
#[macro_use]
mod graders_sql;
#[macro_use]
mod completions_sql;
#[macro_use]
mod datasets_sql;
#[macro_use]
mod jobs_sql;
#[macro_use]
mod evals_sql;
#[macro_use]
pub(crate) mod leases;
#[macro_use]
mod models_sql;
pub mod notify;
#[macro_use]
mod optimize_sql;
#[macro_use]
mod uploads_sql;
mod error;
mod postgres;
pub(crate) mod rows;
mod sqlite;
pub(crate) mod traits;
pub(crate) mod types;

#[cfg(test)]
pub(crate) mod suite;

pub use self::error::StoreError;
pub use self::leases::{LeaseChange, LeaseKind, LeaseStore, Leased};
pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;
pub use self::traits::{
    AuthStore, CompletionStore, DatasetStore, EvalStore, GraderStore, JobStore, ModelStore, Store, UploadStore,
};
pub use self::types::{
    CompletionQuery, Cursor, DatasetQuery, EvalQuery, GraderRecord, ItemQuery, JobQuery, PartAdded, RunQuery,
    Transition, UploadEnd,
};

/// Opens the backend named by `url`, running its migrations.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        return Ok(std::sync::Arc::new(SqliteStore::open(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(PostgresStore::open(url).await?));
    }
    Err(StoreError::UnsupportedUrl(url.to_string()))
}
