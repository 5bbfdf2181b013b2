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

/// What a watcher hears.
#[derive(Clone, Debug)]
pub enum Live {
    /// An event this process appended.
    Event(Box<JobEvent>),
    /// Another process appended events: read them from the store.
    Elsewhere,
}

#[derive(Default)]
pub struct EventBus {
    jobs: Mutex<HashMap<String, broadcast::Sender<Live>>>,
}

impl EventBus {
    pub fn publish(&self, event: &JobEvent) {
        self.send(&event.job_id, || Live::Event(Box::new(event.clone())));
    }

    /// Tells the job's watchers that another process appended events.
    pub fn poke(&self, job_id: &str) {
        self.send(job_id, || Live::Elsewhere);
    }

    /// Tells every watcher to look at the store (wake-ups may have been
    /// missed).
    pub fn poke_all(&self) {
        let Ok(jobs) = self.jobs.lock() else { return };
        for tx in jobs.values() {
            let _ = tx.send(Live::Elsewhere);
        }
    }

    fn send(&self, job_id: &str, live: impl FnOnce() -> Live) {
        let Ok(jobs) = self.jobs.lock() else { return };
        if let Some(tx) = jobs.get(job_id) {
            // No receivers is fine: nobody is watching right now.
            let _ = tx.send(live());
        }
    }

    pub fn subscribe(&self, job_id: &str) -> broadcast::Receiver<Live> {
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
