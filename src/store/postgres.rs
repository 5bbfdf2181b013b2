//! PostgreSQL backend, for several replicas sharing one database.

use async_trait::async_trait;
use sqlx::{
    Row,
    postgres::{PgPool, PgPoolOptions},
};

use super::rows::{dataset_from_row, to_json};
use super::{DatasetQuery, DatasetStore, StoreError};
use crate::datasets::model::DatasetRecord;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new().max_connections(16).connect(url).await?;
        Self::from_pool(pool).await
    }

    /// Runs the migrations on an existing pool (tests use a pool bound to a
    /// schema of their own).
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl DatasetStore for PostgresStore {
    async fn insert_dataset(&self, d: &DatasetRecord) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO datasets (id, filename, display_name, purpose, state, bytes, sha256, created_at, metadata, report, stats, lineage)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
        let row = sqlx::query("SELECT * FROM datasets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dataset_from_row).transpose()
    }

    async fn list_datasets(&self, q: &DatasetQuery) -> Result<Vec<DatasetRecord>, StoreError> {
        let rows = match &q.after {
            None => {
                sqlx::query(
                    "SELECT * FROM datasets WHERE ($1::TEXT IS NULL OR purpose = $1)
                     ORDER BY created_at DESC, id DESC LIMIT $2",
                )
                .bind(q.purpose.map(|p| p.as_str()))
                .bind(q.limit as i64)
                .fetch_all(&self.pool)
                .await?
            }
            Some(after) => {
                sqlx::query(
                    "SELECT * FROM datasets WHERE ($1::TEXT IS NULL OR purpose = $1)
                       AND (created_at, id) < ($2, $3)
                     ORDER BY created_at DESC, id DESC LIMIT $4",
                )
                .bind(q.purpose.map(|p| p.as_str()))
                .bind(after.created_at)
                .bind(&after.id)
                .bind(q.limit as i64)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(dataset_from_row).collect()
    }

    async fn delete_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError> {
        let row = sqlx::query("DELETE FROM datasets WHERE id = $1 RETURNING *")
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
        Ok(row.try_get::<bool, _>(0)?)
    }

    async fn blobs_in_use(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT sha256 FROM datasets UNION SELECT sha256 FROM checkpoint_files")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(Into::into)).collect()
    }
}

crate::impl_job_store!(
    PostgresStore,
    sqlx::Postgres,
    claim_sql = "UPDATE jobs SET state = 'running', lease_owner = $1, lease_expires_at = $2,
        started_at = COALESCE(started_at, $3), attempts = attempts + 1, next_seq = next_seq + 1
     WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
       AND state = 'queued'
     RETURNING *"
);

crate::impl_grader_store!(PostgresStore);

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh schema of the test database named by
    /// LATHE_TEST_POSTGRES_URL. Without that variable the Postgres suite is
    /// skipped, except under CI (CI=true), where a missing database fails.
    async fn store() -> Option<PostgresStore> {
        let Ok(url) = std::env::var("LATHE_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var("CI").is_err(),
                "LATHE_TEST_POSTGRES_URL must be set in CI so the Postgres suite runs"
            );
            eprintln!("skipping: LATHE_TEST_POSTGRES_URL is not set");
            return None;
        };
        let schema = format!("lathe_test_{}", crate::ids::new_id("s").trim_start_matches("s_"));
        let admin = PgPool::connect(&url).await.expect("connect to the test database");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let search_path = schema.clone();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let sql = format!("SET search_path TO {search_path}");
                Box::pin(async move {
                    sqlx::Executor::execute(conn, sql.as_str()).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap();
        Some(PostgresStore::from_pool(pool).await.expect("migrate"))
    }

    crate::store_suite!(store().await);
}
