//! PostgreSQL backend, for several replicas sharing one database.

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::error::StoreError;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        // A call waits at most 10 s for a connection: a database that does
        // not answer stops start-up soon, and at work the caller learns of an
        // outage in time to say so (`outage`), instead of after sqlx's 30 s.
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        Self::from_pool(pool).await
    }

    /// Runs the migrations on an existing pool (tests use a pool bound to a
    /// schema of their own).
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

crate::impl_dataset_store!(PostgresStore, lock_row = Some("FOR UPDATE"));

crate::impl_job_store!(PostgresStore, sqlx::Postgres, lock_shared = "FOR SHARE");

crate::impl_model_store!(PostgresStore);

crate::impl_upload_store!(PostgresStore);

crate::impl_completion_store!(PostgresStore);

crate::impl_optimization_store!(PostgresStore);

crate::impl_grader_store!(PostgresStore);

crate::impl_auth_store!(PostgresStore);

crate::impl_eval_store!(PostgresStore, lock_shared = "FOR SHARE");

// Concurrent claimers (several replicas, remote workers) skip the rows
// others are taking instead of waiting on them, and never share one.
crate::impl_lease_store!(PostgresStore, sqlx::Postgres, lock = "FOR UPDATE OF q SKIP LOCKED");

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh schema of the test database named by
    /// LATHE_TEST_POSTGRES_URL. Without that variable the Postgres suite is
    /// skipped, except under CI (CI=true), where a missing database fails.
    async fn store() -> Option<PostgresStore> {
        store_with(4).await
    }

    /// `store` with a pool of `connections`.
    async fn store_with(connections: u32) -> Option<PostgresStore> {
        let Ok(url) = std::env::var("LATHE_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var("CI").is_err(),
                "LATHE_TEST_POSTGRES_URL must be set in CI so the Postgres suite runs"
            );
            eprintln!("skipping: LATHE_TEST_POSTGRES_URL is not set");
            return None;
        };
        let schema = format!("lathe_test_{}", crate::ids::new_id("s").trim_start_matches("s_"));
        let admin = PgPool::connect(&url).await.expect("connect to the test database");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let search_path = schema.clone();
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .after_connect(move |conn, _| {
                let sql = format!("SET search_path TO {search_path}");
                Box::pin(async move {
                    sqlx::Executor::execute(conn, sql.as_str()).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap();
        Some(PostgresStore::from_pool(pool).await.expect("migrate"))
    }

    crate::store_suite!(store().await);

    /// The triggers tell listeners of queued work, job events and eval
    /// progress, whatever schema (test) wrote them; filtered by id here.
    #[tokio::test]
    async fn writes_notify_other_processes() {
        use crate::store::LeaseKind;
        use crate::store::notify::{Change, listen};
        use crate::store::suite::{queue_fresh, seed_leases};
        let Some(store) = store().await else { return };
        seed_leases(&store).await;
        let url = std::env::var("LATHE_TEST_POSTGRES_URL").unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let mut changes = listen(&url, stop.clone()).await.unwrap().expect("postgres listens");
        let job = queue_fresh(&store, LeaseKind::Job).await;
        let run = queue_fresh(&store, LeaseKind::EvalRun).await;
        let mut want = vec![
            Change::JobQueued,
            Change::JobEvent(job.clone()),
            Change::RunQueued,
            Change::RunProgress(run.clone()),
        ];
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while !want.is_empty() {
            let change = tokio::time::timeout_at(deadline, changes.recv())
                .await
                .unwrap_or_else(|_| panic!("never heard {want:?}"))
                .expect("listening");
            want.retain(|w| *w != change);
        }
        stop.cancel();
        let sqlite = listen("sqlite://x.db", stop).await.unwrap();
        assert!(sqlite.is_none(), "one process, nobody to hear from");
    }

    /// BENCHMARKS.md's claim rate: `workers` claimers (each a connection)
    /// drain a queue of 2,000 jobs through the claim statement replicas
    /// use (fair share by project, priority, SKIP LOCKED, the claim's event
    /// in the same transaction). Opt-in: `cargo test --release --lib
    /// claims_per_second -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a benchmark"]
    async fn claims_per_second() {
        use crate::jobs::model::{JobState, Level, NewEvent};
        use crate::store::suite::{queue_fresh, seed_leases};
        use crate::store::{LeaseKind, LeaseStore};
        const JOBS: usize = 2000;
        for workers in [1usize, 4, 16] {
            let Some(store) = store_with(workers as u32 + 1).await else {
                return;
            };
            seed_leases(&store).await;
            for _ in 0..JOBS {
                queue_fresh(&store, LeaseKind::Job).await;
            }
            let store = std::sync::Arc::new(store);
            let started = std::time::Instant::now();
            let mut tasks = Vec::new();
            for w in 0..workers {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let worker = format!("w{w}");
                    let event = NewEvent::state(JobState::Running, Level::Info, "claimed");
                    let mut claimed = 0usize;
                    loop {
                        let now = crate::ids::now_millis();
                        let change = store
                            .claim_next(LeaseKind::Job, &worker, None, now, now + 60_000, Some(&event))
                            .await
                            .unwrap();
                        if change.is_none() {
                            return claimed;
                        }
                        claimed += 1;
                    }
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(total, JOBS, "every job claimed once");
            println!(
                "workers {workers:>2}: {total} claims in {secs:.2} s = {:.0} claims/s",
                total as f64 / secs
            );
        }
    }
}
