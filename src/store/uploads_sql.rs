//! The uploads and upload_parts tables, written once for every SQL backend
//! (see `jobs_sql.rs` for the placeholder rule). Each call that changes an
//! upload starts by writing its row (`UPDATE uploads SET id = id`), which
//! takes the row's lock on Postgres and the write lock on SQLite: a part
//! added, a completion and a cancellation of one upload queue up, so a part
//! is never added to an upload that another call is ending.

/// Implements `UploadStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_upload_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::traits::UploadStore for $store {
            async fn insert_upload(
                &self,
                u: &$crate::datasets::model::UploadRecord,
            ) -> Result<(), $crate::store::error::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO uploads (id, project_id, filename, purpose, bytes, mime_type, state,
                        created_at, expires_at, dataset_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&u.id)
                .bind(&u.project)
                .bind(&u.filename)
                .bind(u.purpose.as_str())
                .bind(u.bytes as i64)
                .bind(&u.mime_type)
                .bind(u.state.as_str())
                .bind(u.created_at)
                .bind(u.expires_at)
                .bind(u.dataset_id.as_deref())
                .execute(&self.pool)
                .await;
                $crate::store::rows::unique_as_conflict(result, || u.id.clone()).map(|_| ())
            }

            async fn get_upload(
                &self,
                id: &str,
            ) -> Result<Option<$crate::datasets::model::UploadRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT * FROM uploads WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::upload_from_row).transpose()
            }

            async fn insert_upload_part(
                &self,
                p: &$crate::datasets::model::UploadPartRecord,
            ) -> Result<$crate::store::types::PartAdded, $crate::store::error::StoreError> {
                use $crate::store::types::PartAdded;
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE uploads SET id = id WHERE id = $1")
                    .bind(&p.upload_id)
                    .execute(&mut *tx)
                    .await?;
                let row = sqlx::query("SELECT * FROM uploads WHERE id = $1")
                    .bind(&p.upload_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let upload = row.as_ref().map($crate::store::rows::upload_from_row).transpose()?;
                let upload = match upload {
                    Some(u) if u.state == $crate::datasets::model::UploadState::Pending => u,
                    other => return Ok(PartAdded::NotPending(other)),
                };
                let stored: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM upload_parts WHERE upload_id = $1",
                )
                .bind(&p.upload_id)
                .fetch_one(&mut *tx)
                .await?;
                let stored = stored.max(0) as u64;
                if stored.saturating_add(p.bytes) > upload.bytes {
                    return Ok(PartAdded::TooLarge { stored });
                }
                let result = sqlx::query(
                    "INSERT INTO upload_parts (id, upload_id, bytes, sha256, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&p.id)
                .bind(&p.upload_id)
                .bind(p.bytes as i64)
                .bind(&p.sha256)
                .bind(p.created_at)
                .execute(&mut *tx)
                .await;
                $crate::store::rows::unique_as_conflict(result, || p.id.clone())?;
                tx.commit().await?;
                Ok(PartAdded::Added)
            }

            async fn list_upload_parts(
                &self,
                upload_id: &str,
            ) -> Result<Vec<$crate::datasets::model::UploadPartRecord>, $crate::store::error::StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM upload_parts WHERE upload_id = $1 ORDER BY created_at, id",
                )
                .bind(upload_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map($crate::store::rows::upload_part_from_row).collect()
            }

            async fn complete_upload(
                &self,
                id: &str,
                d: &$crate::datasets::model::DatasetRecord,
            ) -> Result<$crate::store::types::UploadEnd, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let pending = $crate::upload_pending_in_tx!(tx, id);
                if let Err(not) = pending {
                    return Ok(not);
                }
                $crate::insert_dataset_in_tx!(tx, d);
                sqlx::query("UPDATE uploads SET state = 'completed', dataset_id = $2 WHERE id = $1")
                    .bind(id)
                    .bind(&d.id)
                    .execute(&mut *tx)
                    .await?;
                let end = $crate::drop_upload_parts_in_tx!(tx, id);
                tx.commit().await?;
                Ok(end)
            }

            async fn end_upload(
                &self,
                id: &str,
                to: $crate::datasets::model::UploadState,
            ) -> Result<$crate::store::types::UploadEnd, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let pending = $crate::upload_pending_in_tx!(tx, id);
                if let Err(not) = pending {
                    return Ok(not);
                }
                sqlx::query("UPDATE uploads SET state = $2 WHERE id = $1")
                    .bind(id)
                    .bind(to.as_str())
                    .execute(&mut *tx)
                    .await?;
                let end = $crate::drop_upload_parts_in_tx!(tx, id);
                tx.commit().await?;
                Ok(end)
            }

            async fn expired_uploads(
                &self,
                now: i64,
                limit: usize,
            ) -> Result<Vec<String>, $crate::store::error::StoreError> {
                sqlx::query_scalar(
                    "SELECT id FROM uploads WHERE state = 'pending' AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2",
                )
                .bind(now)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(Into::into)
            }
        }
    };
}

/// Locks upload `$id` in `$tx` and answers `Ok(())` when it is pending, or
/// `Err(UploadEnd::NotPending(..))` (it or None) otherwise.
#[macro_export]
macro_rules! upload_pending_in_tx {
    ($tx:ident, $id:expr) => {{
        sqlx::query("UPDATE uploads SET id = id WHERE id = $1")
            .bind($id)
            .execute(&mut *$tx)
            .await?;
        let row = sqlx::query("SELECT * FROM uploads WHERE id = $1")
            .bind($id)
            .fetch_optional(&mut *$tx)
            .await?;
        let upload = row.as_ref().map($crate::store::rows::upload_from_row).transpose()?;
        match upload {
            Some(u) if u.state == $crate::datasets::model::UploadState::Pending => Ok(()),
            other => Err($crate::store::types::UploadEnd::NotPending(other)),
        }
    }};
}

/// Removes upload `$id`'s parts in `$tx` and answers `UploadEnd::Done` with
/// the upload as it now is and the blobs its parts held.
#[macro_export]
macro_rules! drop_upload_parts_in_tx {
    ($tx:ident, $id:expr) => {{
        let blobs: Vec<String> = sqlx::query_scalar("DELETE FROM upload_parts WHERE upload_id = $1 RETURNING sha256")
            .bind($id)
            .fetch_all(&mut *$tx)
            .await?;
        let row = sqlx::query("SELECT * FROM uploads WHERE id = $1")
            .bind($id)
            .fetch_one(&mut *$tx)
            .await?;
        let upload = $crate::store::rows::upload_from_row(&row)?;
        $crate::store::types::UploadEnd::Done { upload, blobs }
    }};
}
