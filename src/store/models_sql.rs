//! The models table, written once for every SQL backend (`$N`
//! placeholders bind by position in both SQLite and Postgres).

/// Implements `ModelStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_model_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::traits::ModelStore for $store {
            async fn insert_model(&self, m: &$crate::models::model::ModelRecord) -> Result<(), $crate::store::error::StoreError> {
                sqlx::query(
                    "INSERT INTO models (id, kind, base_model, job_id, checkpoint_step, created_at, info, project_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (id) DO UPDATE SET checkpoint_step = excluded.checkpoint_step",
                )
                .bind(&m.id)
                .bind(m.kind.as_str())
                .bind(&m.base_model)
                .bind(m.job_id.as_deref())
                .bind(m.checkpoint_step.map(|s| s as i64))
                .bind(m.created_at)
                .bind(m.info.as_ref().map($crate::store::rows::to_json))
                .bind(m.project.as_deref())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn register_model(&self, m: &$crate::models::model::ModelRecord) -> Result<(), $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let result = sqlx::query(
                    "INSERT INTO models (id, kind, base_model, job_id, checkpoint_step, created_at, info, project_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&m.id)
                .bind(m.kind.as_str())
                .bind(&m.base_model)
                .bind(m.job_id.as_deref())
                .bind(m.checkpoint_step.map(|s| s as i64))
                .bind(m.created_at)
                .bind(m.info.as_ref().map($crate::store::rows::to_json))
                .bind(m.project.as_deref())
                .execute(&mut *tx)
                .await;
                $crate::store::rows::unique_as_conflict(result, || m.id.clone())?;
                // A stored model's files pin their blobs from the moment it exists.
                for f in m.info.iter().flat_map(|i| &i.files) {
                    sqlx::query("INSERT INTO model_files (model_id, name, sha256, bytes) VALUES ($1, $2, $3, $4)")
                        .bind(&m.id)
                        .bind(&f.name)
                        .bind(&f.sha256)
                        .bind(f.bytes as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn get_model(&self, id: &str) -> Result<Option<$crate::models::model::ModelRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT * FROM models WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map($crate::store::rows::model_from_row).transpose()
            }

            async fn list_models(
                &self,
                project: &str,
                kind: Option<$crate::models::model::ModelKind>,
                after: Option<&str>,
                limit: usize,
            ) -> Result<Vec<$crate::models::model::ModelRecord>, $crate::store::error::StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM models WHERE ($1 IS NULL OR kind = $1) AND id > $2
                       AND (project_id IS NULL OR project_id = $4) ORDER BY id LIMIT $3",
                )
                .bind(kind.map(|k| k.as_str()))
                .bind(after.unwrap_or(""))
                .bind(limit as i64)
                .bind(project)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map($crate::store::rows::model_from_row).collect()
            }

            async fn fine_tuned_models_of(
                &self,
                base_model: &str,
                limit: usize,
            ) -> Result<Vec<String>, $crate::store::error::StoreError> {
                let rows = sqlx::query(
                    "SELECT id FROM models WHERE kind = 'fine_tuned' AND base_model = $1 ORDER BY id LIMIT $2",
                )
                .bind(base_model)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| Ok(sqlx::Row::try_get::<String, _>(r, "id")?))
                    .collect()
            }

            async fn forget_fine_tuned_model(&self, id: &str) -> Result<bool, $crate::store::error::StoreError> {
                let done = sqlx::query("DELETE FROM models WHERE id = $1 AND kind = 'fine_tuned'")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_model(
                &self,
                id: &str,
            ) -> Result<Option<($crate::models::model::ModelRecord, Vec<String>)>, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                // Before the model's row, whose delete would cascade to them.
                let mut shas: Vec<String> = sqlx::query_scalar("DELETE FROM model_files WHERE model_id = $1 RETURNING sha256")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
                let row = sqlx::query("DELETE FROM models WHERE id = $1 RETURNING *")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let model = $crate::store::rows::model_from_row(&row)?;
                if let Some(job_id) = &model.job_id {
                    let rows = sqlx::query(
                        "DELETE FROM checkpoint_files WHERE checkpoint_id IN (SELECT id FROM checkpoints WHERE job_id = $1)
                         RETURNING sha256",
                    )
                    .bind(job_id)
                    .fetch_all(&mut *tx)
                    .await?;
                    for r in &rows {
                        shas.push(sqlx::Row::try_get::<String, _>(r, "sha256")?);
                    }
                }
                tx.commit().await?;
                Ok(Some((model, shas)))
            }
        }
    };
}
