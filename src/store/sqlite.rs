//! The embedded default backend: one SQLite file in WAL mode.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Row,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};

use super::rows::{dataset_from_row, to_json};
use super::{DatasetQuery, DatasetStore, StoreError};
use crate::datasets::model::DatasetRecord;

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
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl DatasetStore for SqliteStore {
    async fn insert_dataset(&self, d: &DatasetRecord) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO datasets (id, filename, display_name, purpose, state, bytes, sha256, created_at, metadata, report, stats, lineage)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&d.id)
        .bind(&d.filename)
        .bind(&d.display_name)
        .bind(d.purpose.as_str())
        .bind(d.state.as_str())
        .bind(d.bytes as i64)
        .bind(&d.sha256)
        .bind(d.created_at)
        .bind(to_json(&d.metadata))
        .bind(to_json(&d.report))
        .bind(to_json(&d.stats))
        .bind(d.lineage.as_ref().map(to_json))
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict(d.id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM datasets WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dataset_from_row).transpose()
    }

    async fn list_datasets(&self, q: &DatasetQuery) -> Result<Vec<DatasetRecord>, StoreError> {
        let (after_ts, after_id) = match &q.after {
            Some(c) => (c.created_at, c.id.clone()),
            None => (i64::MAX, String::new()),
        };
        let rows = sqlx::query(
            "SELECT * FROM datasets
             WHERE (?1 IS NULL OR purpose = ?1)
               AND (created_at < ?2 OR (created_at = ?2 AND id < ?3) OR ?4)
             ORDER BY created_at DESC, id DESC
             LIMIT ?5",
        )
        .bind(q.purpose.map(|p| p.as_str()))
        .bind(after_ts)
        .bind(after_id)
        .bind(q.after.is_none())
        .bind(q.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dataset_from_row).collect()
    }

    async fn delete_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError> {
        let row = sqlx::query("DELETE FROM datasets WHERE id = ? RETURNING *")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dataset_from_row).transpose()
    }

    async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT EXISTS (SELECT 1 FROM datasets WHERE sha256 = $1) OR EXISTS (SELECT 1 FROM checkpoint_files WHERE sha256 = $1)")
            .bind(sha256)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? != 0)
    }

    async fn blobs_in_use(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT sha256 FROM datasets UNION SELECT sha256 FROM checkpoint_files")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(Into::into)).collect()
    }
}

crate::impl_job_store!(
    SqliteStore,
    sqlx::Sqlite,
    claim_sql = "UPDATE jobs SET state = 'running', lease_owner = $1, lease_expires_at = $2,
        started_at = COALESCE(started_at, $3), attempts = attempts + 1, next_seq = next_seq + 1
     WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY priority DESC, created_at, id LIMIT 1)
       AND state = 'queued'
     RETURNING *"
);

crate::impl_grader_store!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::*;

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
