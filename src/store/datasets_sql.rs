//! The datasets table, written once for every SQL backend (see
//! `jobs_sql.rs` for the placeholder rule).

/// SQL that is true while an unfinished job, eval run or prompt
/// optimisation uses dataset `$1`:
/// the one definition of "in use", for `dataset_in_use` and for the delete
/// that refuses in the same statement.
#[macro_export]
macro_rules! dataset_in_use_sql {
    () => {
        "(EXISTS (SELECT 1 FROM jobs
                  WHERE (training_dataset_id = $1 OR validation_dataset_id = $1)
                    AND state NOT IN ('succeeded', 'failed', 'cancelled'))
          OR EXISTS (SELECT 1 FROM eval_runs
                  WHERE dataset_id = $1 AND state IN ('queued', 'in_progress'))
          OR EXISTS (SELECT 1 FROM prompt_optimizations
                  WHERE (train_dataset_id = $1 OR validation_dataset_id = $1 OR test_dataset_id = $1)
                    AND state IN ('queued', 'in_progress')))"
    };
}

/// Inserts dataset `$d` inside transaction `$tx` (after a write to its
/// project's row, checking the project's storage quota), with a duplicate
/// id as `Conflict`; returns from the enclosing function on error. Used by
/// `insert_dataset` and by completing an upload, which inserts its dataset
/// in the transaction that completes it.
#[macro_export]
macro_rules! insert_dataset_in_tx {
    ($tx:ident, $d:expr) => {{
        // A write first (see `insert_job`): datasets of one project are
        // inserted one at a time, so the storage quota counts them all.
        sqlx::query("UPDATE projects SET id = id WHERE id = $1")
            .bind(&$d.project)
            .execute(&mut *$tx)
            .await?;
        if $d.state == $crate::datasets::model::DatasetState::Ready {
            let quota: Option<i64> = sqlx::query_scalar("SELECT max_dataset_bytes FROM projects WHERE id = $1")
                .bind(&$d.project)
                .fetch_optional(&mut *$tx)
                .await?
                .flatten();
            if let Some(limit) = quota {
                let used: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM datasets
                     WHERE project_id = $1 AND state = 'ready'",
                )
                .bind(&$d.project)
                .fetch_one(&mut *$tx)
                .await?;
                if used.saturating_add($d.bytes as i64) > limit {
                    return Err($crate::store::error::StoreError::OverQuota {
                        project: $d.project.clone(),
                        quota: "max_dataset_bytes",
                        limit: limit.max(0) as u64,
                    });
                }
            }
        }
        let result = sqlx::query(
            "INSERT INTO datasets (id, filename, display_name, purpose, state, bytes, sha256, created_at,
                metadata, report, stats, lineage, project_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&$d.id)
        .bind(&$d.filename)
        .bind(&$d.display_name)
        .bind($d.purpose.as_str())
        .bind($d.state.as_str())
        .bind($d.bytes as i64)
        .bind(&$d.sha256)
        .bind($d.created_at)
        .bind($crate::store::rows::to_json(&$d.metadata))
        .bind($crate::store::rows::to_json(&$d.report))
        .bind($crate::store::rows::to_json(&$d.stats))
        .bind($d.lineage.as_ref().map($crate::store::rows::to_json))
        .bind(&$d.project)
        .execute(&mut *$tx)
        .await;
        $crate::store::rows::unique_as_conflict(result, || $d.id.clone())?;
    }};
}

/// Implements `DatasetStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_dataset_store {
    ($store:ty, lock_row = $lock:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::traits::DatasetStore for $store {
            async fn insert_dataset(
                &self,
                d: &$crate::datasets::model::DatasetRecord,
            ) -> Result<(), $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                $crate::insert_dataset_in_tx!(tx, d);
                tx.commit().await?;
                Ok(())
            }

            async fn get_dataset(
                &self,
                id: &str,
            ) -> Result<Option<$crate::datasets::model::DatasetRecord>, $crate::store::error::StoreError> {
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
                q: &$crate::store::types::DatasetQuery,
            ) -> Result<Vec<$crate::datasets::model::DatasetRecord>, $crate::store::error::StoreError> {
                // Oldest first walks the index the other way: the cursor's
                // comparison and the order flip together.
                let (after_ts, after_id) = match &q.after {
                    Some(c) => (c.created_at, c.id.clone()),
                    None if q.oldest_first => (i64::MIN, String::new()),
                    None => (i64::MAX, String::new()),
                };
                // The purposes as ",sft,dpo," (empty: any): one parameter for
                // any number of them, on every backend.
                let purposes: String = if q.purposes.is_empty() {
                    String::new()
                } else {
                    q.purposes
                        .iter()
                        .fold(",".to_string(), |s, p| s + p.as_str() + ",")
                };
                let sql = if q.oldest_first {
                    "SELECT * FROM datasets
                     WHERE ($1 = '' OR $1 LIKE '%,' || purpose || ',%')
                       AND (created_at > $2 OR (created_at = $2 AND id > $3) OR $4)
                       AND project_id = $6
                     ORDER BY created_at ASC, id ASC
                     LIMIT $5"
                } else {
                    "SELECT * FROM datasets
                     WHERE ($1 = '' OR $1 LIKE '%,' || purpose || ',%')
                       AND (created_at < $2 OR (created_at = $2 AND id < $3) OR $4)
                       AND project_id = $6
                     ORDER BY created_at DESC, id DESC
                     LIMIT $5"
                };
                let rows = sqlx::query(sql)
                    .bind(purposes)
                    .bind(after_ts)
                    .bind(after_id)
                    .bind(q.after.is_none())
                    .bind(q.limit as i64)
                    .bind(&q.project)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::rows::dataset_from_row).collect()
            }

            async fn delete_dataset(
                &self,
                id: &str,
            ) -> Result<Option<$crate::datasets::model::DatasetRecord>, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let lock: Option<&str> = $lock;
                if let Some(lock) = lock {
                    // Postgres: a transaction creating a job or eval run on
                    // this dataset holds its row FOR SHARE; waiting for it
                    // here lets the DELETE below (a new snapshot) see it.
                    sqlx::query(&format!("SELECT id FROM datasets WHERE id = $1 {lock}"))
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                }
                // The check and the delete are one statement, so no job or
                // eval run can start using the dataset in between.
                let row = sqlx::query(concat!(
                    "DELETE FROM datasets WHERE id = $1 AND NOT ",
                    $crate::dataset_in_use_sql!(),
                    " RETURNING *"
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    let exists = sqlx::query("SELECT id FROM datasets WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                    return if exists {
                        Err($crate::store::error::StoreError::InUse(id.to_string()))
                    } else {
                        Ok(None)
                    };
                };
                let record = $crate::store::rows::dataset_from_row(&row)?;
                tx.commit().await?;
                Ok(Some(record))
            }

            async fn blob_in_use(&self, sha256: &str) -> Result<bool, $crate::store::error::StoreError> {
                let row = sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM datasets WHERE sha256 = $1 AND state <> 'failed')
                          + (SELECT COUNT(*) FROM checkpoint_files WHERE sha256 = $1)
                          + (SELECT COUNT(*) FROM upload_parts WHERE sha256 = $1)
                          + (SELECT COUNT(*) FROM model_files WHERE sha256 = $1) AS n",
                )
                .bind(sha256)
                .fetch_one(&self.pool)
                .await?;
                let n: i64 = sqlx::Row::try_get(&row, "n")?;
                Ok(n > 0)
            }

            async fn blobs_in_use(&self) -> Result<Vec<String>, $crate::store::error::StoreError> {
                let rows = sqlx::query(
                    "SELECT sha256 FROM datasets WHERE state <> 'failed'
                     UNION SELECT sha256 FROM checkpoint_files
                     UNION SELECT sha256 FROM upload_parts
                     UNION SELECT sha256 FROM model_files",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| sqlx::Row::try_get(r, "sha256").map_err(Into::into))
                    .collect()
            }
        }
    };
}
