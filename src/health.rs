//! The health of what Lathe depends on: an actor that checks the database,
//! the object store and (where jobs are dispatched to one) the Ray cluster
//! every few seconds, and publishes what it finds: on a watch channel (the
//! transport reports it as gRPC health, `server`), as a gauge on
//! `/metrics`, and as a log line at each change.
//!
//! Work does not wait for this actor: a job or eval run that meets an
//! outage rides it out on its own (`outage`). This is what operators and
//! probes see.
//!
//! Architecture invariant: this module knows no transport; it reads
//! dependencies only through their clients' cheapest calls, each bounded by
//! a timeout, so a dependency that hangs counts as down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::blobs::Blobs;
use crate::error::Dependency;
use crate::ray::RayClient;
use crate::store::Store;
use crate::telemetry;

/// Whether each checked dependency answered its last check.
pub type Status = BTreeMap<Dependency, bool>;

/// What to check.
pub struct Checks {
    pub store: Arc<dyn Store>,
    pub blobs: Blobs,
    /// Where this process dispatches jobs to Ray.
    pub ray: Option<RayClient>,
}

/// Longest a check may take before its dependency counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

impl Checks {
    /// The dependencies checked, all taken to be up until a check says not
    /// (start-up has just reached each of them).
    fn initial(&self) -> Status {
        let mut status = Status::from([(Dependency::Database, true), (Dependency::ObjectStore, true)]);
        if self.ray.is_some() {
            status.insert(Dependency::Ray, true);
        }
        status
    }

    async fn check(&self, dependency: Dependency) -> Result<(), String> {
        let check = async {
            match dependency {
                // One lookup by primary key: the cheapest real query.
                Dependency::Database => self
                    .store
                    .get_job("job_health")
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                // A HEAD of an address nothing has: an answer, found or
                // not, means the store is there.
                Dependency::ObjectStore => match self.blobs.size(&"0".repeat(64)).await {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
                Dependency::Ray => match &self.ray {
                    Some(ray) => ray.version().await.map(drop).map_err(|e| e.to_string()),
                    None => Ok(()),
                },
            }
        };
        match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
        }
    }
}

/// Starts the actor; it checks every `every` until `stop`. The receiver
/// holds the latest status (each dependency up at first).
pub fn spawn(checks: Checks, every: Duration, stop: CancellationToken) -> (watch::Receiver<Status>, JoinHandle<()>) {
    let initial = checks.initial();
    for (&dependency, &up) in &initial {
        telemetry::dependency_up(dependency, up);
    }
    let (tx, rx) = watch::channel(initial);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let deps: Vec<Dependency> = tx.borrow().keys().copied().collect();
            let mut status = Status::new();
            for dependency in deps {
                let result = checks.check(dependency).await;
                let was_up = tx.borrow().get(&dependency).copied().unwrap_or(true);
                match (&result, was_up) {
                    (Err(e), true) => {
                        tracing::warn!(dependency = dependency.name(), error = %e, "degraded: cannot be reached")
                    }
                    (Ok(()), false) => tracing::info!(dependency = dependency.name(), "reachable again"),
                    _ => {}
                }
                telemetry::dependency_up(dependency, result.is_ok());
                status.insert(dependency, result.is_ok());
            }
            tx.send_if_modified(|current| {
                let changed = *current != status;
                *current = status;
                changed
            });
        }
    });
    (rx, task)
}
