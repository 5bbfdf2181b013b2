//! Projects, API keys and the audit log, written once for every SQL backend
//! (`$N` placeholders bind by position in both SQLite and Postgres).

/// Implements `AuthStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_auth_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::traits::AuthStore for $store {
            async fn insert_project(
                &self,
                p: &$crate::auth::model::Project,
            ) -> Result<(), $crate::store::error::StoreError> {
                let q = &p.quotas;
                let result = sqlx::query(
                    "INSERT INTO projects (id, created_at, max_running_jobs, max_queued_jobs, max_dataset_bytes,
                        requests_per_second) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&p.id)
                .bind(p.created_at)
                .bind(q.max_running_jobs.map(|v| v as i64))
                .bind(q.max_queued_jobs.map(|v| v as i64))
                .bind(q.max_dataset_bytes.map(|v| v as i64))
                .bind(q.requests_per_second)
                .execute(&self.pool)
                .await;
                $crate::store::rows::unique_as_conflict(result, || p.id.clone()).map(|_| ())
            }

            async fn get_project(
                &self,
                id: &str,
            ) -> Result<Option<$crate::auth::model::Project>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT * FROM projects WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::project_from_row).transpose()
            }

            async fn list_projects(
                &self,
                after: Option<&str>,
                limit: usize,
            ) -> Result<Vec<$crate::auth::model::Project>, $crate::store::error::StoreError> {
                let rows = sqlx::query("SELECT * FROM projects WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after.unwrap_or(""))
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::rows::project_from_row).collect()
            }

            async fn set_project_quotas(
                &self,
                id: &str,
                q: &$crate::auth::model::Quotas,
            ) -> Result<Option<$crate::auth::model::Project>, $crate::store::error::StoreError> {
                sqlx::query(
                    "UPDATE projects SET max_running_jobs = $1, max_queued_jobs = $2, max_dataset_bytes = $3,
                        requests_per_second = $4 WHERE id = $5",
                )
                .bind(q.max_running_jobs.map(|v| v as i64))
                .bind(q.max_queued_jobs.map(|v| v as i64))
                .bind(q.max_dataset_bytes.map(|v| v as i64))
                .bind(q.requests_per_second)
                .bind(id)
                .execute(&self.pool)
                .await?;
                self.get_project(id).await
            }

            async fn insert_api_key(
                &self,
                k: &$crate::auth::model::ApiKeyRecord,
            ) -> Result<(), $crate::store::error::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO api_keys (id, project_id, name, owner, role, secret_hash, redacted, \
                     created_at, last_used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&k.id)
                .bind(&k.project)
                .bind(&k.name)
                .bind(&k.owner)
                .bind(k.role.as_str())
                .bind(&k.secret_hash)
                .bind(&k.redacted)
                .bind(k.created_at)
                .bind(k.last_used_at)
                .bind(k.revoked_at)
                .execute(&self.pool)
                .await;
                $crate::store::rows::unique_as_conflict(result, || k.id.clone()).map(|_| ())
            }

            async fn api_key_by_hash(
                &self,
                secret_hash: &str,
            ) -> Result<Option<$crate::auth::model::ApiKeyRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query(&format!("{} WHERE secret_hash = $1", $crate::store::auth_sql::KEY_SELECT))
                    .bind(secret_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::api_key_from_row).transpose()
            }

            async fn get_api_key(
                &self,
                id: &str,
            ) -> Result<Option<$crate::auth::model::ApiKeyRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query(&format!("{} WHERE id = $1", $crate::store::auth_sql::KEY_SELECT))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::api_key_from_row).transpose()
            }

            async fn list_api_keys(
                &self,
                project: Option<&str>,
                after: Option<&str>,
                limit: usize,
            ) -> Result<Vec<$crate::auth::model::ApiKeyRecord>, $crate::store::error::StoreError> {
                let rows = sqlx::query(&format!(
                    "{} WHERE ($1 = '' OR project_id = $1) AND id > $2 ORDER BY id LIMIT $3",
                    $crate::store::auth_sql::KEY_SELECT
                ))
                .bind(project.unwrap_or(""))
                .bind(after.unwrap_or(""))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map($crate::store::rows::api_key_from_row).collect()
            }

            async fn revoke_api_key(
                &self,
                id: &str,
                at: i64,
            ) -> Result<Option<$crate::auth::model::ApiKeyRecord>, $crate::store::error::StoreError> {
                sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                self.get_api_key(id).await
            }

            async fn touch_api_key(&self, id: &str, at: i64) -> Result<(), $crate::store::error::StoreError> {
                sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn has_admin_key(&self) -> Result<bool, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT id FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.is_some())
            }

            async fn insert_audit_events(
                &self,
                events: &[$crate::auth::model::AuditEvent],
            ) -> Result<(), $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                for e in events {
                    sqlx::query(
                        "INSERT INTO audit_events (at, key_id, project_id, method, outcome) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(e.at)
                    .bind(&e.key_id)
                    .bind(&e.project)
                    .bind(&e.method)
                    .bind(&e.outcome)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_audit_events(
                &self,
                before_seq: Option<u64>,
                limit: usize,
            ) -> Result<Vec<$crate::auth::model::AuditEvent>, $crate::store::error::StoreError> {
                let rows = sqlx::query(
                    "SELECT seq, at, key_id, project_id, method, outcome FROM audit_events \
                     WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                )
                .bind(before_seq.map_or(i64::MAX, |s| s as i64))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map($crate::store::rows::audit_event_from_row).collect()
            }
        }
    };
}

/// The columns every key query reads.
pub const KEY_SELECT: &str = "SELECT id, project_id, name, owner, role, secret_hash, redacted, created_at, \
                              last_used_at, revoked_at FROM api_keys";
