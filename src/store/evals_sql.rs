//! The eval, run and output-item tables, written once for every SQL backend
//! (see `jobs_sql.rs` for the placeholder rule). Leases on runs are written
//! once for every kind of leased work in `leases.rs`.

/// Implements `EvalStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_eval_store {
    ($store:ty, lock_shared = $lock:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::traits::EvalStore for $store {
            async fn insert_eval(&self, e: &$crate::evals::model::EvalRecord) -> Result<(), $crate::store::error::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO evals (id, name, spec, created_at, project_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&e.id)
                .bind(&e.name)
                .bind($crate::store::rows::to_json(&e.spec))
                .bind(e.created_at)
                .bind(&e.project)
                .bind(e.updated_at)
                .execute(&self.pool)
                .await;
                $crate::store::rows::unique_as_conflict(result, || e.id.clone()).map(|_| ())
            }

            async fn get_eval(
                &self,
                id: &str,
            ) -> Result<Option<$crate::evals::model::EvalRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT * FROM evals WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::eval_from_row).transpose()
            }

            async fn list_evals(
                &self,
                q: &$crate::store::types::EvalQuery,
            ) -> Result<Vec<$crate::evals::model::EvalRecord>, $crate::store::error::StoreError> {
                use $crate::evals::model::EvalSort;
                let column = match q.sort {
                    EvalSort::CreatedAt => "created_at",
                    EvalSort::UpdatedAt => "updated_at",
                };
                let (cmp, dir, (ts, id)) = $crate::store::types::keyset(q.order, q.after.as_ref());
                // Column names and directions are our own, never user input.
                let sql = format!(
                    "SELECT * FROM evals WHERE project_id = $1
                       AND ({column} {cmp} $2 OR ({column} = $2 AND id {cmp} $3))
                     ORDER BY {column} {dir}, id {dir} LIMIT $4"
                );
                let rows = sqlx::query(&sql)
                    .bind(&q.project)
                    .bind(ts)
                    .bind(id)
                    .bind(q.limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::rows::eval_from_row).collect()
            }

            async fn update_eval(
                &self,
                e: &$crate::evals::model::EvalRecord,
                expected_updated_at: i64,
            ) -> Result<bool, $crate::store::error::StoreError> {
                let done = sqlx::query("UPDATE evals SET name = $1, spec = $2, updated_at = $3 WHERE id = $4 AND updated_at = $5")
                    .bind(&e.name)
                    .bind($crate::store::rows::to_json(&e.spec))
                    .bind(e.updated_at)
                    .bind(&e.id)
                    .bind(expected_updated_at)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_eval(&self, id: &str) -> Result<Option<Vec<String>>, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let runs = sqlx::query("SELECT id FROM eval_runs WHERE eval_id = $1")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
                let runs = runs
                    .iter()
                    .map(|r| sqlx::Row::try_get::<String, _>(r, "id"))
                    .collect::<Result<Vec<_>, _>>()?;
                // Runs and their output items go with it (ON DELETE CASCADE).
                let done = sqlx::query("DELETE FROM evals WHERE id = $1").bind(id).execute(&mut *tx).await?;
                if done.rows_affected() == 0 {
                    return Ok(None);
                }
                tx.commit().await?;
                Ok(Some(runs))
            }

            async fn insert_eval_run(
                &self,
                r: &$crate::evals::model::RunRecord,
            ) -> Result<(), $crate::store::error::StoreError> {
                use $crate::store::rows::to_json;
                // Inserted only while its eval exists and its dataset exists
                // and is ready (see `insert_job`); `Gone` otherwise.
                let result = sqlx::query(concat!(
                    "INSERT INTO eval_runs (id, eval_id, spec, dataset_id, state, total, progress, error, created_at, next_seq,
                        project_id)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10
                     WHERE EXISTS (SELECT 1 FROM evals WHERE id = $2)
                       AND EXISTS (SELECT 1 FROM datasets WHERE id = $4 AND state = 'ready' ",
                    $lock,
                    ")"
                ))
                .bind(&r.id)
                .bind(&r.eval_id)
                .bind(to_json(&r.spec))
                .bind(&r.spec.dataset_id)
                .bind(r.state.as_str())
                .bind(r.total as i64)
                .bind(to_json(&r.progress))
                .bind(r.error.as_deref())
                .bind(r.created_at)
                .bind(&r.project)
                .execute(&self.pool)
                .await;
                match $crate::store::rows::unique_as_conflict(result, || r.id.clone())? {
                    done if done.rows_affected() == 0 => Err($crate::store::error::StoreError::Gone(r.spec.dataset_id.clone())),
                    _ => Ok(()),
                }
            }

            async fn get_eval_run(
                &self,
                id: &str,
            ) -> Result<Option<$crate::evals::model::RunRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT * FROM eval_runs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::run_from_row).transpose()
            }

            async fn list_eval_runs(
                &self,
                q: &$crate::store::types::RunQuery,
            ) -> Result<Vec<$crate::evals::model::RunRecord>, $crate::store::error::StoreError> {
                let (cmp, dir, (ts, id)) = $crate::store::types::keyset(q.order, q.after.as_ref());
                // Directions are our own, never user input.
                let sql = format!(
                    "SELECT * FROM eval_runs WHERE eval_id = $1 AND ($2 IS NULL OR state = $2)
                       AND (created_at {cmp} $3 OR (created_at = $3 AND id {cmp} $4))
                     ORDER BY created_at {dir}, id {dir} LIMIT $5"
                );
                let rows = sqlx::query(&sql)
                    .bind(&q.eval_id)
                    .bind(q.state.map(|s| s.as_str()))
                    .bind(ts)
                    .bind(id)
                    .bind(q.limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::rows::run_from_row).collect()
            }

            async fn delete_eval_run(
                &self,
                id: &str,
            ) -> Result<Option<$crate::evals::model::RunRecord>, $crate::store::error::StoreError> {
                // Its output items go with it (ON DELETE CASCADE).
                let row = sqlx::query("DELETE FROM eval_runs WHERE id = $1 RETURNING *")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::run_from_row).transpose()
            }

            async fn record_output_items(
                &self,
                items: &[$crate::evals::model::OutputItemRecord],
                worker: &str,
            ) -> Result<Option<u64>, $crate::store::error::StoreError> {
                use $crate::store::rows::to_json;
                let Some(last) = items.last() else {
                    return Ok(None);
                };
                let mut tx = self.pool.begin().await?;
                // Only the lease holder of a run still in progress records:
                // a worker that lost its run, or a cancelled run, adds nothing.
                let row = sqlx::query(
                    "UPDATE eval_runs SET next_seq = next_seq + $1, progress = $2
                     WHERE id = $3 AND lease_owner = $4 AND state = 'in_progress' RETURNING next_seq",
                )
                .bind(items.len() as i64)
                .bind(to_json(&last.progress))
                .bind(&last.run_id)
                .bind(worker)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let last_seq: i64 = sqlx::Row::try_get(&row, "next_seq")?;
                let first_seq = last_seq - items.len() as i64 + 1;
                for (seq, item) in (first_seq..).zip(items) {
                    debug_assert_eq!(item.run_id, last.run_id, "one batch, one run");
                    let inserted = sqlx::query(
                        "INSERT INTO eval_output_items (run_id, item_index, seq, status, detail, progress, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(&item.run_id)
                    .bind(item.index as i64)
                    .bind(seq)
                    .bind(item.status.as_str())
                    .bind(to_json(&item.detail))
                    .bind(to_json(&item.progress))
                    .bind(item.created_at)
                    .execute(&mut *tx)
                    .await;
                    $crate::store::rows::unique_as_conflict(inserted, || {
                        format!("item {} of run {}", item.index, item.run_id)
                    })?;
                }
                tx.commit().await?;
                Ok(Some(last_seq as u64))
            }

            async fn finish_eval_run(
                &self,
                id: &str,
                from: &[$crate::evals::model::RunState],
                to: $crate::evals::model::RunState,
                error: Option<&str>,
                finished_at: Option<i64>,
            ) -> Result<Option<$crate::evals::model::RunRecord>, $crate::store::error::StoreError> {
                // States are our own identifiers, never user input.
                let allowed: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
                let sql = format!(
                    "UPDATE eval_runs SET state = $1, error = COALESCE($2, error),
                        finished_at = COALESCE($3, finished_at), lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = $4 AND state IN ({}) RETURNING *",
                    allowed.join(", ")
                );
                let row = sqlx::query(&sql)
                    .bind(to.as_str())
                    .bind(error)
                    .bind(finished_at)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::run_from_row).transpose()
            }

            async fn list_output_items(
                &self,
                q: &$crate::store::types::ItemQuery,
            ) -> Result<Vec<$crate::evals::model::OutputItemRecord>, $crate::store::error::StoreError> {
                use $crate::evals::model::Order;
                let (cmp, dir, start) = match q.order {
                    Order::Ascending => (">", "ASC", -1),
                    Order::Descending => ("<", "DESC", i64::MAX),
                };
                // Directions are our own, never user input.
                let sql = format!(
                    "SELECT * FROM eval_output_items
                     WHERE run_id = $1 AND ($2 IS NULL OR status = $2) AND item_index {cmp} $3
                     ORDER BY item_index {dir} LIMIT $4"
                );
                let rows = sqlx::query(&sql)
                    .bind(&q.run_id)
                    .bind(q.status.map(|s| s.as_str()))
                    .bind(q.after_index.map(|i| i as i64).unwrap_or(start))
                    .bind(q.limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map($crate::store::rows::output_item_from_row)
                    .collect()
            }

            async fn get_output_item(
                &self,
                run_id: &str,
                index: u64,
            ) -> Result<Option<$crate::evals::model::OutputItemRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT * FROM eval_output_items WHERE run_id = $1 AND item_index = $2")
                    .bind(run_id)
                    .bind(index as i64)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::output_item_from_row).transpose()
            }

            async fn list_output_items_by_seq(
                &self,
                run_id: &str,
                after_seq: u64,
                limit: usize,
            ) -> Result<Vec<$crate::evals::model::OutputItemRecord>, $crate::store::error::StoreError> {
                let rows =
                    sqlx::query("SELECT * FROM eval_output_items WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                        .bind(run_id)
                        .bind(after_seq as i64)
                        .bind(limit as i64)
                        .fetch_all(&self.pool)
                        .await?;
                rows.iter()
                    .map($crate::store::rows::output_item_from_row)
                    .collect()
            }
        }
    };
}
