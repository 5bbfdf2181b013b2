//! The job, event, checkpoint and model tables, written once for every SQL
//! backend. The queries use `$N` placeholders in order of first appearance,
//! which both SQLite and Postgres bind by position. Leases on jobs (claim,
//! renewal, expiry, release) are written once for every kind of leased work
//! in `leases.rs`, which appends their events with this module's
//! `insert_event`.

/// Implements `JobStore` for a backend struct with a `pool` field.
#[macro_export]
macro_rules! impl_job_store {
    ($store:ty, $db:ty, lock_shared = $lock:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::traits::JobStore for $store {
            async fn insert_job(
                &self,
                job: &$crate::jobs::model::JobRecord,
                event: &$crate::jobs::model::NewEvent,
            ) -> Result<($crate::jobs::model::JobRecord, bool), $crate::store::error::StoreError> {
                use $crate::store::rows::*;
                let mut tx = self.pool.begin().await?;
                // A write first: concurrent creates in one project queue
                // here (Postgres: the project's row lock; SQLite: the write
                // lock, taken before any read so no snapshot goes stale), so
                // the queued-jobs quota below counts every job before this one.
                sqlx::query("UPDATE projects SET id = id WHERE id = $1")
                    .bind(&job.project)
                    .execute(&mut *tx)
                    .await?;
                if let Some(key) = &job.idempotency_key {
                    let existing = sqlx::query("SELECT * FROM jobs WHERE idempotency_key = $1")
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(row) = existing {
                        return Ok((job_from_row(&row)?, false));
                    }
                }
                let queued: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM jobs WHERE project_id = $1 AND state IN ('validating_files', 'queued')",
                )
                .bind(&job.project)
                .fetch_one(&mut *tx)
                .await?;
                let quota: Option<i64> = sqlx::query_scalar("SELECT max_queued_jobs FROM projects WHERE id = $1")
                    .bind(&job.project)
                    .fetch_optional(&mut *tx)
                    .await?
                    .flatten();
                if let Some(limit) = quota
                    && queued >= limit
                {
                    return Err($crate::store::error::StoreError::OverQuota {
                        project: job.project.clone(),
                        quota: "max_queued_jobs",
                        limit: limit.max(0) as u64,
                    });
                }
                // Inserted only while its datasets exist and are ready, in
                // the same statement (and on Postgres with their rows held
                // FOR SHARE until commit), so a concurrent delete either
                // sees this job or makes this insert find nothing.
                let result = sqlx::query(concat!(
                    "INSERT INTO jobs (id, spec, state, base_model, training_dataset_id, validation_dataset_id,
                        priority, metadata, idempotency_key, created_at, next_seq, project_id)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11
                     WHERE EXISTS (SELECT 1 FROM datasets WHERE id = $5 AND state = 'ready' ",
                    $lock,
                    ")
                       AND ($6 IS NULL OR EXISTS (SELECT 1 FROM datasets WHERE id = $6 AND state = 'ready' ",
                    $lock,
                    "))"
                ))
                .bind(&job.id)
                .bind(to_json(&job.spec))
                .bind(job.state.as_str())
                .bind(&job.spec.base_model)
                .bind(&job.spec.training_dataset_id)
                .bind(job.spec.validation_dataset_id.as_deref())
                .bind(job.spec.priority as i64)
                .bind(to_json(&job.spec.metadata))
                .bind(job.idempotency_key.as_deref())
                .bind(job.created_at)
                .bind(&job.project)
                .execute(&mut *tx)
                .await;
                match result {
                    Ok(done) if done.rows_affected() == 0 => {
                        // Name the dataset that is missing: training first.
                        let spec = &job.spec;
                        let mut missing = &spec.training_dataset_id;
                        for id in std::iter::once(&spec.training_dataset_id).chain(&spec.validation_dataset_id) {
                            let ready = sqlx::query("SELECT id FROM datasets WHERE id = $1 AND state = 'ready'")
                                .bind(id)
                                .fetch_optional(&mut *tx)
                                .await?;
                            if ready.is_none() {
                                missing = id;
                                break;
                            }
                        }
                        return Err($crate::store::error::StoreError::Gone(missing.clone()));
                    }
                    Ok(_) => {}
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        // A concurrent create with the same key won the race.
                        drop(tx);
                        let row = sqlx::query("SELECT * FROM jobs WHERE idempotency_key = $1")
                            .bind(job.idempotency_key.as_deref())
                            .fetch_optional(&self.pool)
                            .await?
                            .ok_or_else(|| $crate::store::error::StoreError::Conflict(job.id.clone()))?;
                        return Ok((job_from_row(&row)?, false));
                    }
                    Err(e) => return Err(e.into()),
                }
                insert_event(&mut tx, &job.id, 1, job.created_at, event).await?;
                tx.commit().await?;
                Ok((job.clone(), true))
            }

            async fn get_job(
                &self,
                id: &str,
            ) -> Result<Option<$crate::jobs::model::JobRecord>, $crate::store::error::StoreError> {
                let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map($crate::store::rows::job_from_row).transpose()
            }

            async fn list_jobs(
                &self,
                q: &$crate::store::types::JobQuery,
            ) -> Result<Vec<$crate::jobs::model::JobRecord>, $crate::store::error::StoreError> {
                // Metadata filters are few (at most 16 keys), so they are
                // applied here, page by page, keeping the SQL portable.
                let (after_ts, after_id) = match &q.after {
                    Some(c) => (c.created_at, c.id.clone()),
                    None => (i64::MAX, String::new()),
                };
                let mut out = Vec::new();
                let (mut cursor_ts, mut cursor_id) = (after_ts, after_id);
                loop {
                    let rows = sqlx::query(
                        "SELECT * FROM jobs
                         WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR base_model = $2)
                           AND (created_at < $3 OR (created_at = $3 AND id < $4))
                           AND ($6 IS NULL OR project_id = $6)
                         ORDER BY created_at DESC, id DESC LIMIT $5",
                    )
                    .bind(q.state.map(|s| s.as_str()))
                    .bind(q.base_model.as_deref())
                    .bind(cursor_ts)
                    .bind(&cursor_id)
                    .bind((q.limit.max(1) * 4) as i64)
                    .bind(q.project.as_deref())
                    .fetch_all(&self.pool)
                    .await?;
                    let fetched = rows.len();
                    for row in &rows {
                        let job = $crate::store::rows::job_from_row(row)?;
                        cursor_ts = job.created_at;
                        cursor_id = job.id.clone();
                        if q.metadata
                            .iter()
                            .all(|(k, v)| job.spec.metadata.get(k) == Some(v))
                        {
                            out.push(job);
                            if out.len() == q.limit {
                                return Ok(out);
                            }
                        }
                    }
                    if fetched < q.limit.max(1) * 4 {
                        return Ok(out);
                    }
                }
            }

            async fn transition_job(
                &self,
                id: &str,
                from: &[$crate::jobs::model::JobState],
                to: $crate::jobs::model::JobState,
                patch: &$crate::jobs::model::JobPatch,
                event: &$crate::jobs::model::NewEvent,
                now: i64,
            ) -> Result<$crate::store::types::Transition, $crate::store::error::StoreError> {
                use $crate::store::rows::*;
                let allowed: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
                let sql = format!(
                    "UPDATE jobs SET state = $1,
                        started_at = COALESCE($2, started_at),
                        finished_at = COALESCE($3, finished_at),
                        fine_tuned_model = COALESCE($4, fine_tuned_model),
                        fine_tuned_checkpoint_step = COALESCE($5, fine_tuned_checkpoint_step),
                        stop_reason = COALESCE($6, stop_reason),
                        error = COALESCE($7, error),
                        trained_tokens = COALESCE($8, trained_tokens),
                        lease_owner = CASE WHEN $9 THEN NULL ELSE lease_owner END,
                        lease_expires_at = CASE WHEN $9 THEN NULL ELSE lease_expires_at END,
                        next_seq = next_seq + 1
                     WHERE id = $10 AND state IN ({}) AND ($11 IS NULL OR lease_owner = $11)
                     RETURNING *",
                    allowed.join(", ")
                );
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query(&sql)
                    .bind(to.as_str())
                    .bind(patch.started_at)
                    .bind(patch.finished_at)
                    .bind(patch.fine_tuned_model.as_deref())
                    .bind(patch.fine_tuned_checkpoint_step.map(|s| s as i64))
                    .bind(patch.stop_reason.as_deref())
                    .bind(patch.error.as_ref().map(to_json))
                    .bind(patch.trained_tokens.map(|t| t as i64))
                    .bind(patch.release_lease)
                    .bind(id)
                    .bind(patch.held_by.as_deref())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    drop(tx);
                    return Ok($crate::store::types::Transition::Conflict(
                        self.get_job(id).await?,
                    ));
                };
                let seq: i64 = sqlx::Row::try_get(&row, "next_seq")?;
                let job = job_from_row(&row)?;
                let event = insert_event(&mut tx, id, seq, now, event).await?;
                tx.commit().await?;
                Ok($crate::store::types::Transition::Done(job, event))
            }

            async fn append_event(
                &self,
                id: &str,
                event: &$crate::jobs::model::NewEvent,
                now: i64,
            ) -> Result<$crate::jobs::model::JobEvent, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let seq = bump_seq(&mut tx, id).await?;
                let event = insert_event(&mut tx, id, seq, now, event).await?;
                tx.commit().await?;
                Ok(event)
            }

            async fn append_held_event(
                &self,
                id: &str,
                holder: &str,
                event: &$crate::jobs::model::NewEvent,
                now: i64,
            ) -> Result<Option<$crate::jobs::model::JobEvent>, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let Some(seq) = bump_held_seq(&mut tx, id, holder).await? else {
                    return Ok(None);
                };
                let event = insert_event(&mut tx, id, seq, now, event).await?;
                tx.commit().await?;
                Ok(Some(event))
            }

            async fn list_events(
                &self,
                id: &str,
                after_seq: u64,
                limit: usize,
            ) -> Result<Vec<$crate::jobs::model::JobEvent>, $crate::store::error::StoreError> {
                let rows = sqlx::query("SELECT * FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                    .bind(id)
                    .bind(after_seq as i64)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::rows::event_from_row).collect()
            }

            async fn list_events_before(
                &self,
                id: &str,
                before_seq: Option<u64>,
                limit: usize,
            ) -> Result<Vec<$crate::jobs::model::JobEvent>, $crate::store::error::StoreError> {
                let rows =
                    sqlx::query("SELECT * FROM job_events WHERE job_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3")
                        .bind(id)
                        .bind(before_seq.map(|s| s as i64).unwrap_or(i64::MAX))
                        .bind(limit as i64)
                        .fetch_all(&self.pool)
                        .await?;
                rows.iter().map($crate::store::rows::event_from_row).collect()
            }

            async fn insert_checkpoint(
                &self,
                checkpoint: &$crate::jobs::model::CheckpointRecord,
                holder: &str,
                event: &$crate::jobs::model::NewEvent,
            ) -> Result<Option<$crate::jobs::model::JobEvent>, $crate::store::error::StoreError> {
                use $crate::store::rows::*;
                // A retry of a write that did commit (its answer was lost
                // to a dropped connection) finds its own event and writes
                // nothing twice. The record's id is this runner's own. (Read
                // before the write transaction: in SQLite a transaction that
                // reads first cannot always take the write lock after.)
                let recorded = sqlx::query("SELECT * FROM job_events WHERE job_id = $1 AND data LIKE $2")
                    .bind(&checkpoint.job_id)
                    .bind(format!("%\"checkpoint_id\":\"{}\"%", checkpoint.id))
                    .fetch_optional(&self.pool)
                    .await?;
                if let Some(row) = recorded {
                    return Ok(Some(event_from_row(&row)?));
                }
                let mut tx = self.pool.begin().await?;
                // Only the lease holder may add checkpoints: a runner that
                // lost its job must not write into the new attempt.
                let Some(seq) = bump_held_seq(&mut tx, &checkpoint.job_id, holder).await? else {
                    return Ok(None);
                };
                sqlx::query(
                    "INSERT INTO checkpoints (id, job_id, step, created_at, metrics) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (job_id, step) DO NOTHING",
                )
                .bind(&checkpoint.id)
                .bind(&checkpoint.job_id)
                .bind(checkpoint.step as i64)
                .bind(checkpoint.created_at)
                .bind(to_json(&checkpoint.metrics))
                .execute(&mut *tx)
                .await?;
                // A re-run step after a resume replaces the earlier
                // checkpoint's files under the same record.
                let id_row = sqlx::query("SELECT id FROM checkpoints WHERE job_id = $1 AND step = $2")
                    .bind(&checkpoint.job_id)
                    .bind(checkpoint.step as i64)
                    .fetch_one(&mut *tx)
                    .await?;
                let checkpoint_id: String = sqlx::Row::try_get(&id_row, "id")?;
                sqlx::query("UPDATE checkpoints SET metrics = $1, created_at = $2 WHERE id = $3")
                    .bind(to_json(&checkpoint.metrics))
                    .bind(checkpoint.created_at)
                    .bind(&checkpoint_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM checkpoint_files WHERE checkpoint_id = $1")
                    .bind(&checkpoint_id)
                    .execute(&mut *tx)
                    .await?;
                for file in &checkpoint.files {
                    sqlx::query(
                        "INSERT INTO checkpoint_files (checkpoint_id, name, sha256, bytes) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&checkpoint_id)
                    .bind(&file.name)
                    .bind(&file.sha256)
                    .bind(file.bytes as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                let mut event = event.clone();
                if let $crate::jobs::model::EventData::Checkpoint {
                    checkpoint_id: id, ..
                } = &mut event.data
                {
                    *id = checkpoint_id;
                }
                let event = insert_event(&mut tx, &checkpoint.job_id, seq, checkpoint.created_at, &event).await?;
                tx.commit().await?;
                Ok(Some(event))
            }

            async fn delete_checkpoint_files(
                &self,
                job_id: &str,
                steps: &[u64],
            ) -> Result<Vec<String>, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let mut shas = Vec::new();
                for step in steps {
                    let rows = sqlx::query(
                        "DELETE FROM checkpoint_files WHERE checkpoint_id IN
                         (SELECT id FROM checkpoints WHERE job_id = $1 AND step = $2) RETURNING sha256",
                    )
                    .bind(job_id)
                    .bind(*step as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                    for r in &rows {
                        shas.push(sqlx::Row::try_get::<String, _>(r, "sha256")?);
                    }
                }
                tx.commit().await?;
                Ok(shas)
            }

            async fn list_checkpoints(
                &self,
                job_id: &str,
                before_step: Option<u64>,
                limit: usize,
            ) -> Result<Vec<$crate::jobs::model::CheckpointRecord>, $crate::store::error::StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM checkpoints WHERE job_id = $1 AND step < $2 ORDER BY step DESC LIMIT $3",
                )
                .bind(job_id)
                .bind(before_step.map(|s| s as i64).unwrap_or(i64::MAX))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                let files = sqlx::query(
                    "SELECT f.* FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id
                     WHERE c.job_id = $1 ORDER BY f.name",
                )
                .bind(job_id)
                .fetch_all(&self.pool)
                .await?;
                let mut by_checkpoint: std::collections::HashMap<String, Vec<$crate::jobs::model::CheckpointFile>> =
                    std::collections::HashMap::new();
                for row in &files {
                    let (id, file) = $crate::store::rows::file_from_row(row)?;
                    by_checkpoint.entry(id).or_default().push(file);
                }
                rows.iter()
                    .map(|row| {
                        let id: String = sqlx::Row::try_get(row, "id")?;
                        $crate::store::rows::checkpoint_from_row(row, by_checkpoint.remove(&id).unwrap_or_default())
                    })
                    .collect()
            }

            async fn checkpoint_step(
                &self,
                job_id: &str,
                checkpoint_id: &str,
            ) -> Result<Option<u64>, $crate::store::error::StoreError> {
                let step: Option<i64> =
                    sqlx::query_scalar("SELECT step FROM checkpoints WHERE job_id = $1 AND id = $2")
                        .bind(job_id)
                        .bind(checkpoint_id)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(step.map(|s| s as u64))
            }

            async fn update_checkpoint_metrics(
                &self,
                job_id: &str,
                step: u64,
                metrics: &$crate::jobs::model::Metrics,
            ) -> Result<bool, $crate::store::error::StoreError> {
                let done = sqlx::query("UPDATE checkpoints SET metrics = $1 WHERE job_id = $2 AND step = $3")
                    .bind($crate::store::rows::to_json(metrics))
                    .bind(job_id)
                    .bind(step as i64)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn dataset_in_use(&self, dataset_id: &str) -> Result<bool, $crate::store::error::StoreError> {
                let row = sqlx::query(concat!("SELECT ", $crate::dataset_in_use_sql!(), " AS used"))
                    .bind(dataset_id)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(sqlx::Row::try_get(&row, "used")?)
            }
        }

        async fn bump_seq(
            tx: &mut sqlx::Transaction<'_, $db>,
            id: &str,
        ) -> Result<i64, $crate::store::error::StoreError> {
            let row = sqlx::query("UPDATE jobs SET next_seq = next_seq + 1 WHERE id = $1 RETURNING next_seq")
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| $crate::store::error::StoreError::Conflict(format!("job {id} does not exist")))?;
            Ok(sqlx::Row::try_get(&row, "next_seq")?)
        }

        /// The job's next sequence number, if `holder` holds its lease.
        async fn bump_held_seq(
            tx: &mut sqlx::Transaction<'_, $db>,
            id: &str,
            holder: &str,
        ) -> Result<Option<i64>, $crate::store::error::StoreError> {
            let row = sqlx::query(
                "UPDATE jobs SET next_seq = next_seq + 1 WHERE id = $1 AND lease_owner = $2 RETURNING next_seq",
            )
            .bind(id)
            .bind(holder)
            .fetch_optional(&mut **tx)
            .await?;
            row.map(|row| sqlx::Row::try_get(&row, "next_seq"))
                .transpose()
                .map_err(Into::into)
        }

        async fn insert_event(
            tx: &mut sqlx::Transaction<'_, $db>,
            id: &str,
            seq: i64,
            now: i64,
            event: &$crate::jobs::model::NewEvent,
        ) -> Result<$crate::jobs::model::JobEvent, $crate::store::error::StoreError> {
            let data = $crate::store::rows::to_json(&event.data);
            // The job's current attempt, read in the same transaction as
            // the event is written (a claim bumps it before its event).
            let row = sqlx::query(
                "INSERT INTO job_events (job_id, seq, created_at, level, message, data, attempt)
                 VALUES ($1, $2, $3, $4, $5, $6, (SELECT attempts FROM jobs WHERE id = $1))
                 RETURNING attempt",
            )
            .bind(id)
            .bind(seq)
            .bind(now)
            .bind($crate::store::rows::level_str(event.level))
            .bind(event.message.clone())
            .bind(data)
            .fetch_one(&mut **tx)
            .await?;
            let attempt: i64 = sqlx::Row::try_get(&row, "attempt")?;
            Ok($crate::jobs::model::JobEvent {
                job_id: id.to_string(),
                seq: seq as u64,
                attempt: attempt as u32,
                created_at: now,
                level: event.level,
                message: event.message.clone(),
                data: event.data.clone(),
            })
        }
    };
}
