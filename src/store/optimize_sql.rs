//! The prompt_optimizations table, written once for every SQL backend (see
//! `jobs_sql.rs` for the placeholder rule). Claims, renewals and re-queues
//! go through the lease machine (`leases.rs`); saving the search's state
//! and finishing need the run to be in progress, the first under the
//! caller's lease.

/// Implements `OptimizationStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_optimization_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::traits::OptimizationStore for $store {
            async fn insert_optimization(
                &self,
                o: &$crate::optimize::model::OptimizationRecord,
            ) -> Result<(), $crate::store::error::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO prompt_optimizations (id, project_id, eval_id, spec, state, progress, error,
                        created_at, started_at, finished_at, train_dataset_id, validation_dataset_id,
                        test_dataset_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(&o.id)
                .bind(&o.project)
                .bind(&o.spec.eval_id)
                .bind($crate::store::rows::to_json(&o.spec))
                .bind(o.state.as_str())
                .bind($crate::store::rows::to_json(&o.search))
                .bind(o.error.as_deref())
                .bind(o.created_at)
                .bind(o.started_at)
                .bind(o.finished_at)
                .bind(&o.spec.train_dataset_id)
                .bind(&o.spec.validation_dataset_id)
                .bind(o.spec.test_dataset_id.as_deref())
                .execute(&self.pool)
                .await;
                $crate::store::rows::unique_as_conflict(result, || o.id.clone()).map(|_| ())
            }

            async fn get_optimization(
                &self,
                id: &str,
            ) -> Result<Option<$crate::optimize::model::OptimizationRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT * FROM prompt_optimizations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref()
                    .map($crate::store::rows::optimization_from_row)
                    .transpose()
            }

            async fn save_optimization(
                &self,
                id: &str,
                worker: &str,
                search: &$crate::optimize::model::Search,
            ) -> Result<bool, $crate::store::error::StoreError> {
                let done = sqlx::query(
                    "UPDATE prompt_optimizations SET progress = $1
                     WHERE id = $2 AND state = 'in_progress' AND lease_owner = $3",
                )
                .bind($crate::store::rows::to_json(search))
                .bind(id)
                .bind(worker)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn finish_optimization(
                &self,
                id: &str,
                from: &[$crate::evals::model::RunState],
                to: $crate::evals::model::RunState,
                error: Option<&str>,
                finished_at: i64,
            ) -> Result<Option<$crate::optimize::model::OptimizationRecord>, $crate::store::error::StoreError> {
                // States are our own identifiers, never user input.
                let allowed: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
                let sql = format!(
                    "UPDATE prompt_optimizations SET state = $1, error = COALESCE($2, error), finished_at = $3,
                        lease_owner = NULL, lease_expires_at = NULL
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
                row.as_ref()
                    .map($crate::store::rows::optimization_from_row)
                    .transpose()
            }
        }
    };
}
