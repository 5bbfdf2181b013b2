//! Live job events for watchers.
//!
//! Architecture invariant: the store's event log is the truth; this bus
//! only wakes watchers sooner. A watcher that falls behind (the bus is a
//! bounded ring) or misses events from another replica catches up from
//! the store, so a slow watcher never slows the job or other watchers.

use std::{collections::HashMap, sync::Mutex};

use tokio::sync::broadcast;

use super::model::JobEvent;

/// Events kept per job for watchers that are a little behind.
const RING: usize = 1024;

#[derive(Default)]
pub struct EventBus {
    jobs: Mutex<HashMap<String, broadcast::Sender<JobEvent>>>,
}

impl EventBus {
    pub fn publish(&self, event: &JobEvent) {
        let Ok(jobs) = self.jobs.lock() else { return };
        if let Some(tx) = jobs.get(&event.job_id) {
            // No receivers is fine: nobody is watching right now.
            let _ = tx.send(event.clone());
        }
    }

    pub fn subscribe(&self, job_id: &str) -> broadcast::Receiver<JobEvent> {
        let mut jobs = match self.jobs.lock() {
            Ok(jobs) => jobs,
            Err(poisoned) => poisoned.into_inner(),
        };
        jobs.retain(|_, tx| tx.receiver_count() > 0);
        jobs.entry(job_id.to_string())
            .or_insert_with(|| broadcast::channel(RING).0)
            .subscribe()
    }
}
