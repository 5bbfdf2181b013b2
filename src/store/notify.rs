//! Wake-ups from other processes sharing the database.
//!
//! Postgres triggers (migration 0011) `NOTIFY lathe_changes` when work is
//! queued, a job event is appended or an eval run records progress; this
//! module `LISTEN`s and turns each notification into a [`Change`]. They are
//! hints, never the truth: a listener that was disconnected misses some, so
//! after a reconnect it says [`Change::Resync`], and whoever wakes on a
//! change reads the rows. SQLite serves one process, whose services wake
//! each other in memory, so it has no listener.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::StoreError;

/// The channel the triggers notify.
const CHANNEL: &str = "lathe_changes";

/// Changes buffered for a slow consumer; beyond this they are dropped, which
/// costs a wake-up, not a change (see the module docs).
const BUFFER: usize = 1024;

/// Something another process wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A fine-tuning job is queued.
    JobQueued,
    /// The job has a new event.
    JobEvent(String),
    /// An eval run is queued.
    RunQueued,
    /// The eval run recorded an item or changed state.
    RunProgress(String),
    /// Notifications may have been missed: look at everything again.
    Resync,
}

impl Change {
    fn parse(payload: &str) -> Option<Change> {
        let (kind, id) = payload.split_once(':')?;
        Some(match kind {
            "job_queued" => Change::JobQueued,
            "job_event" => Change::JobEvent(id.to_string()),
            "run_queued" => Change::RunQueued,
            "run_progress" => Change::RunProgress(id.to_string()),
            _ => return None,
        })
    }
}

/// Listens for other processes' changes to the database at `url` until
/// `stop`; None for a backend with no other processes to hear from.
pub async fn listen(url: &str, stop: CancellationToken) -> Result<Option<mpsc::Receiver<Change>>, StoreError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(None);
    }
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        tokio::select! {
            () = relay(&mut listener, &tx) => {}
            () = stop.cancelled() => {}
            () = tx.closed() => {}
        }
    });
    Ok(Some(rx))
}

async fn relay(listener: &mut PgListener, tx: &mpsc::Sender<Change>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let change = match listener.try_recv().await {
            Ok(Some(notification)) => {
                backoff = Duration::from_millis(100);
                match Change::parse(notification.payload()) {
                    Some(change) => change,
                    None => {
                        tracing::warn!(payload = notification.payload(), "unknown change notification");
                        continue;
                    }
                }
            }
            // The connection dropped; the next call reconnects, and what was
            // sent in between is lost.
            Ok(None) => {
                tracing::warn!("lost the database's change notifications; reconnecting");
                Change::Resync
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot listen for database changes");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        // A full buffer drops the hint; the consumer polls the rows anyway.
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(change) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_into_changes() {
        assert_eq!(Change::parse("job_queued:ftjob_1"), Some(Change::JobQueued));
        assert_eq!(
            Change::parse("job_event:ftjob_1"),
            Some(Change::JobEvent("ftjob_1".into()))
        );
        assert_eq!(Change::parse("run_queued:evalrun_1"), Some(Change::RunQueued));
        assert_eq!(
            Change::parse("run_progress:evalrun_1"),
            Some(Change::RunProgress("evalrun_1".into()))
        );
        assert_eq!(Change::parse("nonsense"), None);
        assert_eq!(Change::parse("other:x"), None);
    }
}
