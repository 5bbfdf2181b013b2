//! The datasets table, written once for every SQL backend (see
//! `jobs_sql.rs` for the placeholder rule).

/// Implements `DatasetStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_dataset_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::DatasetStore for $store {
            async fn insert_dataset(
                &self,
                d: &$crate::datasets::model::DatasetRecord,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::rows::to_json;
                let result = sqlx::query(
                    "INSERT INTO datasets (id, filename, display_name, purpose, state, bytes, sha256, created_at,
                        metadata, report, stats, lineage)
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
                $crate::store::rows::unique_as_conflict(result, || d.id.clone()).map(|_| ())
            }

            async fn get_dataset(
                &self,
                id: &str,
            ) -> Result<Option<$crate::datasets::model::DatasetRecord>, $crate::store::StoreError> {
                let row = sqlx::query("SELECT * FROM datasets WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref()
                    .map($crate::store::rows::dataset_from_row)
                    .transpose()
            }

            async fn list_datasets(
                &self,
                q: &$crate::store::DatasetQuery,
            ) -> Result<Vec<$crate::datasets::model::DatasetRecord>, $crate::store::StoreError> {
                let (after_ts, after_id) = match &q.after {
                    Some(c) => (c.created_at, c.id.clone()),
                    None => (i64::MAX, String::new()),
                };
                let rows = sqlx::query(
                    "SELECT * FROM datasets
                     WHERE ($1 IS NULL OR purpose = $1)
                       AND (created_at < $2 OR (created_at = $2 AND id < $3) OR $4)
                     ORDER BY created_at DESC, id DESC
                     LIMIT $5",
                )
                .bind(q.purpose.map(|p| p.as_str()))
                .bind(after_ts)
                .bind(after_id)
                .bind(q.after.is_none())
                .bind(q.limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map($crate::store::rows::dataset_from_row).collect()
            }

            async fn delete_dataset(
                &self,
                id: &str,
            ) -> Result<Option<$crate::datasets::model::DatasetRecord>, $crate::store::StoreError> {
                let row = sqlx::query("DELETE FROM datasets WHERE id = $1 RETURNING *")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref()
                    .map($crate::store::rows::dataset_from_row)
                    .transpose()
            }

            async fn blob_in_use(&self, sha256: &str) -> Result<bool, $crate::store::StoreError> {
                let row = sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM datasets WHERE sha256 = $1)
                          + (SELECT COUNT(*) FROM checkpoint_files WHERE sha256 = $1) AS n",
                )
                .bind(sha256)
                .fetch_one(&self.pool)
                .await?;
                let n: i64 = sqlx::Row::try_get(&row, "n")?;
                Ok(n > 0)
            }

            async fn blobs_in_use(&self) -> Result<Vec<String>, $crate::store::StoreError> {
                let rows = sqlx::query("SELECT sha256 FROM datasets UNION SELECT sha256 FROM checkpoint_files")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| sqlx::Row::try_get(r, "sha256").map_err(Into::into))
                    .collect()
            }
        }
    };
}
