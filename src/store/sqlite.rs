//! The embedded default backend: one SQLite file in WAL mode.

use std::{str::FromStr, time::Duration};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::error::StoreError;

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL survives a process kill; only an OS crash can
            // lose the last commits, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // Each connection to ":memory:" is its own database, so keep one.
        let max = if in_memory { 1 } else { 8 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            // An in-process SQLite connection cannot go stale; the default
            // ping costs a round trip to the connection's thread per acquire.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

crate::impl_dataset_store!(SqliteStore, lock_row = None);

crate::impl_job_store!(SqliteStore, sqlx::Sqlite, lock_shared = "");

crate::impl_model_store!(SqliteStore);

crate::impl_upload_store!(SqliteStore);

crate::impl_completion_store!(SqliteStore);

crate::impl_optimization_store!(SqliteStore);

crate::impl_grader_store!(SqliteStore);

crate::impl_auth_store!(SqliteStore);

crate::impl_eval_store!(SqliteStore, lock_shared = "");

// SQLite serializes writers, so a claim needs no row lock.
crate::impl_lease_store!(SqliteStore, sqlx::Sqlite, lock = "");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DatasetStore;

    async fn store() -> SqliteStore {
        SqliteStore::open("sqlite::memory:")
            .await
            .expect("open in-memory sqlite")
    }

    crate::store_suite!(Some(store().await));

    #[tokio::test]
    async fn file_database_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("lathe.db").display());
        let record = crate::store::suite::dataset("ds_00000000000000000000000001", 1, None);
        {
            let s = SqliteStore::open(&url).await.unwrap();
            s.insert_dataset(&record).await.unwrap();
        }
        let s = SqliteStore::open(&url).await.unwrap();
        assert_eq!(s.get_dataset(&record.id).await.unwrap(), Some(record));
    }
}
