//! Leases on work, written once for every kind of leased work and every SQL
//! backend.
//!
//! A kind of work (a `LeaseKind`: jobs, eval runs) is a table with a
//! `state`, a `lease_owner` and a `lease_expires_at` column. Work waits in
//! the kind's queued state; a claim moves the next item to its leased
//! state with a lease for one worker; the worker renews the lease while it
//! works; an item whose lease ran out goes back to the queue, and so does
//! one its worker gives back. Each of those is one compare-and-set
//! statement, the same text for every kind (only the table, the state names
//! and the queue order differ), and for a kind that keeps an event log
//! (jobs) it appends the change's event in the same transaction with the
//! item's next sequence number. Lease times are wall-clock milliseconds.
//!
//! On Postgres the claim's sub-select takes the row `FOR UPDATE SKIP
//! LOCKED`, so concurrent claimers on several replicas neither block on
//! nor share an item; SQLite serializes writers anyway.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::error::StoreError;
use crate::evals::model::RunRecord;
use crate::jobs::model::{JobEvent, JobRecord, NewEvent};
use crate::optimize::model::OptimizationRecord;

/// A kind of work handed out with leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseKind {
    /// Fine-tuning jobs: highest priority first, then oldest; every state
    /// change appends to the job's event log.
    Job,
    /// Eval runs: oldest first; no event log (a run's output items are its
    /// progress log, written by the run's lease holder).
    EvalRun,
    /// Prompt optimisation runs: oldest first; no event log (the search's
    /// state, saved after each evaluation, is its progress).
    Optimization,
}

impl LeaseKind {
    pub const ALL: [LeaseKind; 3] = [LeaseKind::Job, LeaseKind::EvalRun, LeaseKind::Optimization];

    /// The kind's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            LeaseKind::Job => "job",
            LeaseKind::EvalRun => "eval_run",
            LeaseKind::Optimization => "prompt_optimization",
        }
    }

    /// Whether each change of an item's state appends an event to the
    /// item's log, numbered by the row's `next_seq`.
    pub fn has_event_log(self) -> bool {
        self == LeaseKind::Job
    }

    fn table(self) -> &'static str {
        match self {
            LeaseKind::Job => "jobs",
            LeaseKind::EvalRun => "eval_runs",
            LeaseKind::Optimization => "prompt_optimizations",
        }
    }

    /// The state in which work waits to be claimed.
    fn queued(self) -> &'static str {
        "queued"
    }

    /// The state of work that a worker holds a lease on.
    fn leased(self) -> &'static str {
        match self {
            LeaseKind::Job => "running",
            LeaseKind::EvalRun | LeaseKind::Optimization => "in_progress",
        }
    }

    /// The order in which queued work is claimed (ending in the key, so
    /// it is total).
    fn queue_order(self) -> &'static str {
        match self {
            LeaseKind::Job => "q.priority DESC, q.created_at, q.id",
            LeaseKind::EvalRun | LeaseKind::Optimization => "q.created_at, q.id",
        }
    }

    /// What else a queued item `q` needs to be claimed: a job only while its
    /// project runs fewer jobs (`r.n`, see `sql::claim`) than its
    /// `max_running_jobs` quota.
    fn claimable(self) -> &'static str {
        match self {
            LeaseKind::Job => {
                " AND COALESCE(r.n, 0)
                    < COALESCE((SELECT p.max_running_jobs FROM projects p WHERE p.id = q.project_id),
                               9223372036854775807)"
            }
            LeaseKind::EvalRun | LeaseKind::Optimization => "",
        }
    }

    /// Columns a change of state sets besides the state and the lease.
    fn on_change(self) -> &'static str {
        if self.has_event_log() {
            ", next_seq = next_seq + 1"
        } else {
            ""
        }
    }

    /// Columns a claim sets besides those of any change.
    fn on_claim(self) -> &'static str {
        match self {
            LeaseKind::Job => ", attempts = attempts + 1",
            LeaseKind::EvalRun | LeaseKind::Optimization => "",
        }
    }
}

/// A row of leased work, as its kind's record.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived return value
pub enum Leased {
    Job(JobRecord),
    EvalRun(RunRecord),
    Optimization(OptimizationRecord),
}

impl Leased {
    pub fn kind(&self) -> LeaseKind {
        match self {
            Leased::Job(_) => LeaseKind::Job,
            Leased::EvalRun(_) => LeaseKind::EvalRun,
            Leased::Optimization(_) => LeaseKind::Optimization,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Leased::Job(job) => &job.id,
            Leased::EvalRun(run) => &run.id,
            Leased::Optimization(o) => &o.id,
        }
    }

    pub fn lease_owner(&self) -> Option<&str> {
        match self {
            Leased::Job(job) => job.lease_owner.as_deref(),
            Leased::EvalRun(run) => run.lease_owner.as_deref(),
            Leased::Optimization(o) => o.lease_owner.as_deref(),
        }
    }

    pub fn into_job(self) -> Result<JobRecord, StoreError> {
        match self {
            Leased::Job(job) => Ok(job),
            other => Err(other.not_a("job")),
        }
    }

    pub fn into_eval_run(self) -> Result<RunRecord, StoreError> {
        match self {
            Leased::EvalRun(run) => Ok(run),
            other => Err(other.not_a("eval run")),
        }
    }

    pub fn into_optimization(self) -> Result<OptimizationRecord, StoreError> {
        match self {
            Leased::Optimization(o) => Ok(o),
            other => Err(other.not_a("prompt optimization")),
        }
    }

    fn not_a(&self, what: &str) -> StoreError {
        StoreError::Corrupt {
            id: self.id().to_string(),
            reason: format!("expected a {what}, the store answered with a {}", self.kind().name()),
        }
    }
}

/// A change of state a lease statement made: the row as it is after the
/// change and, for a kind with an event log, the event appended with it.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseChange {
    pub item: Leased,
    pub event: Option<JobEvent>,
}

/// Claiming, renewing, expiring and giving back leases on work of any
/// `LeaseKind`. `event` is the event a change appends for a kind with an
/// event log (`LeaseKind::has_event_log`); such a change without one is
/// refused (`StoreError::EventMissing`), and other kinds ignore it.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the next queued item of `kind` in its queue order for
    /// `worker` (only the item `only`, when given), moving it to the leased
    /// state with a lease until `lease_until`; None when nothing is queued
    /// (or all of it is being claimed by others right now).
    async fn claim_next(
        &self,
        kind: LeaseKind,
        worker: &str,
        only: Option<&str>,
        now: i64,
        lease_until: i64,
        event: Option<&NewEvent>,
    ) -> Result<Option<LeaseChange>, StoreError>;

    /// Extends the lease `worker` holds on the item, in whatever state it
    /// is now; returns the item, or None when the lease is not this
    /// worker's (any more).
    async fn renew_lease(
        &self,
        kind: LeaseKind,
        id: &str,
        worker: &str,
        lease_until: i64,
    ) -> Result<Option<Leased>, StoreError>;

    /// Items in the leased state whose lease ran out before `now`.
    async fn expired_leases(&self, kind: LeaseKind, now: i64) -> Result<Vec<String>, StoreError>;

    /// Puts a leased item whose lease ran out before `now` back in the
    /// queue; None when it is not (any more).
    async fn requeue_expired(
        &self,
        kind: LeaseKind,
        id: &str,
        now: i64,
        event: Option<&NewEvent>,
    ) -> Result<Option<LeaseChange>, StoreError>;

    /// Gives a leased item `worker` holds back to the queue (a worker that
    /// stops before the item is done); None when it is not in the leased
    /// state or not this worker's.
    async fn release_lease(
        &self,
        kind: LeaseKind,
        id: &str,
        worker: &str,
        now: i64,
        event: Option<&NewEvent>,
    ) -> Result<Option<LeaseChange>, StoreError>;

    /// How many items of `kind` are in each state (states without items
    /// are left out): the queue depth the server's metrics report.
    async fn count_by_state(&self, kind: LeaseKind) -> Result<BTreeMap<String, u64>, StoreError>;
}

/// The statements, with `$N` placeholders in order of first appearance.
pub(crate) mod sql {
    use super::LeaseKind;

    /// Binds `$1` worker, `$2` lease_until, `$3` now, and with `only` `$4`
    /// the one id that may be claimed. `lock` is what the sub-select adds to
    /// take the row (Postgres: `FOR UPDATE OF q SKIP LOCKED`).
    ///
    /// Projects share the workers fairly: the next item is one of the
    /// projects running the fewest items of this kind right now, and within
    /// that the kind's own queue order, so one project's fifty queued jobs do
    /// not hold back another's one. (Replicas claiming at the same instant
    /// may each see a project under its running quota and pass it by one
    /// until the next claim; one server never does.)
    pub fn claim(kind: LeaseKind, lock: &str, only: bool) -> String {
        let (table, queued, leased) = (kind.table(), kind.queued(), kind.leased());
        let only = if only { " AND q.id = $4" } else { "" };
        // The running counts are taken once per claim, not once per queued
        // row: with thousands queued a per-row count made claims quadratic
        // (BENCHMARKS.md, claims per second).
        format!(
            "WITH running AS (SELECT project_id, COUNT(*) AS n FROM {table}
                              WHERE state = '{leased}' GROUP BY project_id)
             UPDATE {table} SET state = '{leased}', lease_owner = $1, lease_expires_at = $2,
                started_at = COALESCE(started_at, $3){}{}
             WHERE id = (SELECT q.id FROM {table} q LEFT JOIN running r ON r.project_id = q.project_id
                         WHERE q.state = '{queued}'{only}{}
                         ORDER BY COALESCE(r.n, 0), {}
                         LIMIT 1 {lock})
               AND state = '{queued}'
             RETURNING *",
            kind.on_claim(),
            kind.on_change(),
            kind.claimable(),
            kind.queue_order(),
        )
    }

    /// Binds `$1` lease_until, `$2` id, `$3` worker.
    pub fn renew(kind: LeaseKind) -> String {
        format!(
            "UPDATE {} SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 RETURNING *",
            kind.table()
        )
    }

    /// Binds `$1` now.
    pub fn expired(kind: LeaseKind) -> String {
        format!(
            "SELECT id FROM {} WHERE state = '{}' AND lease_expires_at < $1 ORDER BY lease_expires_at, id",
            kind.table(),
            kind.leased()
        )
    }

    /// Back to the queue, dropping the lease, if the item is leased and
    /// `condition` holds (binds from `$2`; `$1` is the id).
    fn requeue(kind: LeaseKind, condition: &str) -> String {
        format!(
            "UPDATE {} SET state = '{}', lease_owner = NULL, lease_expires_at = NULL{}
             WHERE id = $1 AND state = '{}' AND {condition}
             RETURNING *",
            kind.table(),
            kind.queued(),
            kind.on_change(),
            kind.leased()
        )
    }

    /// Binds `$1` id, `$2` now.
    pub fn requeue_expired(kind: LeaseKind) -> String {
        requeue(kind, "lease_expires_at < $2")
    }

    /// Binds `$1` id, `$2` worker.
    pub fn release(kind: LeaseKind) -> String {
        requeue(kind, "lease_owner = $2")
    }

    /// Binds nothing.
    pub fn count_by_state(kind: LeaseKind) -> String {
        format!("SELECT state, COUNT(*) AS n FROM {} GROUP BY state", kind.table())
    }
}

/// Decodes a row of `kind`'s table.
pub(crate) fn leased_from_row<'r, R>(kind: LeaseKind, row: &'r R) -> Result<Leased, StoreError>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(match kind {
        LeaseKind::Job => Leased::Job(super::rows::job_from_row(row)?),
        LeaseKind::EvalRun => Leased::EvalRun(super::rows::run_from_row(row)?),
        LeaseKind::Optimization => Leased::Optimization(super::rows::optimization_from_row(row)?),
    })
}

/// Implements `LeaseStore` for a backend struct with a `pool` field, in a
/// module where `impl_job_store!` was expanded (its `insert_event` appends
/// a job's events). `lock` is what the claim's sub-select adds.
#[macro_export]
macro_rules! impl_lease_store {
    ($store:ty, $db:ty, lock = $lock:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::leases::LeaseStore for $store {
            async fn claim_next(
                &self,
                kind: $crate::store::leases::LeaseKind,
                worker: &str,
                only: Option<&str>,
                now: i64,
                lease_until: i64,
                event: Option<&$crate::jobs::model::NewEvent>,
            ) -> Result<Option<$crate::store::leases::LeaseChange>, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let sql = $crate::store::leases::sql::claim(kind, $lock, only.is_some());
                let mut query = sqlx::query(&sql).bind(worker).bind(lease_until).bind(now);
                if let Some(id) = only {
                    query = query.bind(id);
                }
                let row = query.fetch_optional(&mut *tx).await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let change = lease_change(&mut tx, kind, &row, now, event).await?;
                tx.commit().await?;
                Ok(Some(change))
            }

            async fn renew_lease(
                &self,
                kind: $crate::store::leases::LeaseKind,
                id: &str,
                worker: &str,
                lease_until: i64,
            ) -> Result<Option<$crate::store::leases::Leased>, $crate::store::error::StoreError> {
                let row = sqlx::query(&$crate::store::leases::sql::renew(kind))
                    .bind(lease_until)
                    .bind(id)
                    .bind(worker)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref()
                    .map(|row| $crate::store::leases::leased_from_row(kind, row))
                    .transpose()
            }

            async fn expired_leases(
                &self,
                kind: $crate::store::leases::LeaseKind,
                now: i64,
            ) -> Result<Vec<String>, $crate::store::error::StoreError> {
                let rows = sqlx::query(&$crate::store::leases::sql::expired(kind))
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| sqlx::Row::try_get(r, "id").map_err(Into::into))
                    .collect()
            }

            async fn requeue_expired(
                &self,
                kind: $crate::store::leases::LeaseKind,
                id: &str,
                now: i64,
                event: Option<&$crate::jobs::model::NewEvent>,
            ) -> Result<Option<$crate::store::leases::LeaseChange>, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query(&$crate::store::leases::sql::requeue_expired(kind))
                    .bind(id)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let change = lease_change(&mut tx, kind, &row, now, event).await?;
                tx.commit().await?;
                Ok(Some(change))
            }

            async fn release_lease(
                &self,
                kind: $crate::store::leases::LeaseKind,
                id: &str,
                worker: &str,
                now: i64,
                event: Option<&$crate::jobs::model::NewEvent>,
            ) -> Result<Option<$crate::store::leases::LeaseChange>, $crate::store::error::StoreError> {
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query(&$crate::store::leases::sql::release(kind))
                    .bind(id)
                    .bind(worker)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let change = lease_change(&mut tx, kind, &row, now, event).await?;
                tx.commit().await?;
                Ok(Some(change))
            }

            async fn count_by_state(
                &self,
                kind: $crate::store::leases::LeaseKind,
            ) -> Result<std::collections::BTreeMap<String, u64>, $crate::store::error::StoreError> {
                let rows = sqlx::query(&$crate::store::leases::sql::count_by_state(kind))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let state: String = sqlx::Row::try_get(r, "state")?;
                        let n: i64 = sqlx::Row::try_get(r, "n")?;
                        Ok((state, u64::try_from(n).unwrap_or(0)))
                    })
                    .collect()
            }
        }

        /// The change a lease statement made (its row is `row`), with the
        /// event it appends, in the statement's transaction, for a kind
        /// with an event log.
        async fn lease_change(
            tx: &mut sqlx::Transaction<'_, $db>,
            kind: $crate::store::leases::LeaseKind,
            row: &<$db as sqlx::Database>::Row,
            now: i64,
            event: Option<&$crate::jobs::model::NewEvent>,
        ) -> Result<$crate::store::leases::LeaseChange, $crate::store::error::StoreError> {
            let item = $crate::store::leases::leased_from_row(kind, row)?;
            let event = match (kind.has_event_log(), event) {
                (false, _) => None,
                (true, None) => {
                    return Err($crate::store::error::StoreError::EventMissing(
                        item.id().to_string(),
                    ))
                }
                (true, Some(event)) => {
                    let seq: i64 = sqlx::Row::try_get(row, "next_seq")?;
                    Some(insert_event(tx, item.id(), seq, now, event).await?)
                }
            };
            Ok($crate::store::leases::LeaseChange { item, event })
        }
    };
}
