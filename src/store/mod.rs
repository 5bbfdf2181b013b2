//! Persistence of Lathe's records behind one trait.
//!
//! Architecture invariant: the store knows rows, not rules. It never decides
//! whether an operation is allowed (that is the domain's job); it only makes
//! each call atomic. Every backend passes the same suite (`store::suite`).

mod postgres;
mod rows;
mod sqlite;

#[cfg(test)]
pub(crate) mod suite;

use async_trait::async_trait;

pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;
use crate::datasets::model::DatasetRecord;
use crate::datasets::report::Purpose;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("record {0} already exists")]
    Conflict(String),
    #[error("stored record {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("unsupported database url {0:?}: expected sqlite://PATH, sqlite::memory: or postgres://...")]
    UnsupportedUrl(String),
}

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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a new dataset; `Conflict` if the id exists.
    async fn insert_dataset(&self, dataset: &DatasetRecord) -> Result<(), StoreError>;
    async fn get_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError>;
    /// Newest first, strictly after `query.after`, at most `query.limit` rows.
    async fn list_datasets(&self, query: &DatasetQuery) -> Result<Vec<DatasetRecord>, StoreError>;
    /// Removes the dataset and returns it, or None when there was none.
    async fn delete_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError>;
    /// Whether any dataset still points at this blob.
    async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError>;
    /// Every blob address some record points at, for garbage collection.
    async fn blobs_in_use(&self) -> Result<Vec<String>, StoreError>;
}

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
