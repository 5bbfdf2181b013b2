//! The stored_completions and stored_completion_tags tables, written once
//! for every SQL backend (see `jobs_sql.rs` for the placeholder rule). A
//! completion's metadata lives in its row (what is read back) and as one tag
//! row per pair (what listings filter on), written in one transaction.

/// Implements `CompletionStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_completion_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::traits::CompletionStore for $store {
            async fn insert_completion(
                &self,
                c: &$crate::completions::model::StoredCompletion,
            ) -> Result<(), $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let result = sqlx::query(
                    "INSERT INTO stored_completions (id, project_id, model, created_at, metadata, request,
                        choices, prompt_tokens, completion_tokens)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&c.id)
                .bind(&c.project)
                .bind(&c.model)
                .bind(c.created_at)
                .bind($crate::store::rows::to_json(&c.metadata))
                .bind($crate::store::rows::to_json(&c.request))
                .bind($crate::store::rows::to_json(&c.choices))
                .bind(c.prompt_tokens as i64)
                .bind(c.completion_tokens as i64)
                .execute(&mut *tx)
                .await;
                $crate::store::rows::unique_as_conflict(result, || c.id.clone())?;
                $crate::insert_completion_tags_in_tx!(tx, &c.id, &c.metadata);
                tx.commit().await?;
                Ok(())
            }

            async fn get_completion(
                &self,
                id: &str,
            ) -> Result<Option<$crate::completions::model::StoredCompletion>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT * FROM stored_completions WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref()
                    .map($crate::store::rows::completion_from_row)
                    .transpose()
            }

            async fn list_completions(
                &self,
                q: &$crate::store::types::CompletionQuery,
            ) -> Result<Vec<$crate::completions::model::StoredCompletion>, $crate::store::error::StoreError> {
                let (cmp, dir, (ts, id)) = $crate::store::types::keyset(q.order, q.after.as_ref());
                // One EXISTS per metadata pair (at most 16), each an index
                // lookup on (key, value); comparisons and directions are
                // fixed strings, every value is bound.
                let mut sql = format!(
                    "SELECT * FROM stored_completions c WHERE c.project_id = $1
                       AND ($2 IS NULL OR c.model = $2)
                       AND (c.created_at {cmp} $3 OR (c.created_at = $3 AND c.id {cmp} $4))"
                );
                for i in 0..q.metadata.len() {
                    let (k, v) = (6 + 2 * i, 7 + 2 * i);
                    sql.push_str(&format!(
                        " AND EXISTS (SELECT 1 FROM stored_completion_tags t
                           WHERE t.completion_id = c.id AND t.key = ${k} AND t.value = ${v})"
                    ));
                }
                sql.push_str(&format!(" ORDER BY c.created_at {dir}, c.id {dir} LIMIT $5"));
                let mut query = sqlx::query(&sql)
                    .bind(&q.project)
                    .bind(q.model.as_deref())
                    .bind(ts)
                    .bind(id)
                    .bind(q.limit as i64);
                for (k, v) in &q.metadata {
                    query = query.bind(k).bind(v);
                }
                let rows = query.fetch_all(&self.pool).await?;
                rows.iter()
                    .map($crate::store::rows::completion_from_row)
                    .collect()
            }

            async fn set_completion_metadata(
                &self,
                id: &str,
                metadata: &std::collections::BTreeMap<String, String>,
            ) -> Result<Option<$crate::completions::model::StoredCompletion>, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query("UPDATE stored_completions SET metadata = $2 WHERE id = $1")
                    .bind(id)
                    .bind($crate::store::rows::to_json(metadata))
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Ok(None);
                }
                sqlx::query("DELETE FROM stored_completion_tags WHERE completion_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                $crate::insert_completion_tags_in_tx!(tx, id, metadata);
                let row = sqlx::query("SELECT * FROM stored_completions WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let completion = $crate::store::rows::completion_from_row(&row)?;
                tx.commit().await?;
                Ok(Some(completion))
            }

            async fn delete_completion(&self, id: &str) -> Result<bool, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM stored_completion_tags WHERE completion_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let done = sqlx::query("DELETE FROM stored_completions WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

/// Inserts one tag row per metadata pair of completion `id` in `tx`.
#[macro_export]
macro_rules! insert_completion_tags_in_tx {
    ($tx:ident, $id:expr, $metadata:expr) => {
        for (key, value) in $metadata {
            sqlx::query("INSERT INTO stored_completion_tags (completion_id, key, value) VALUES ($1, $2, $3)")
                .bind($id)
                .bind(key)
                .bind(value)
                .execute(&mut *$tx)
                .await?;
        }
    };
}
