//! The runner: eval runs as leased work (`crate::lease`). The lease
//! machine claims runs (so several replicas can share a Postgres
//! database), keeps their leases alive, re-queues runs whose worker
//! vanished and, on shutdown, hands unfinished runs back to the queue; this
//! module works on each claimed run with a bounded number of items in
//! flight and records every finished item (a recorder task writes what has
//! finished in one transaction, so slots are refilled without waiting on
//! the store). A claimed run skips the items already recorded, so a
//! resumed run never samples or grades an item twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::manager::{ERROR_RATE_MIN_ITEMS, Evals};
use super::model::*;
use super::work::{Finished, RunWork};
use crate::datasets::lines::LineReader;
use crate::error::Error;
use crate::ids::now_millis;
use crate::lease::{self, Ended, LeaseConfig, LeasedWork, Renewal};
use crate::outage::Quietly;
use crate::store::{LeaseKind, LeaseStore, Leased, StoreError};
use crate::telemetry;

/// Starts the runner; it returns after `shutdown` once its runs have stopped.
pub fn spawn(evals: Arc<Evals>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let config = LeaseConfig {
        worker_id: evals.config.worker_id.clone(),
        lease: evals.config.lease,
        poll: evals.config.poll,
        max_concurrent: evals.config.max_concurrent_runs,
        only: None,
    };
    lease::spawn(evals, config, shutdown)
}

/// Eval runs as leased work: a run stops (cancelled, perhaps on another
/// replica, or taken over) when it is no longer IN_PROGRESS under this
/// worker's lease.
#[async_trait]
impl LeasedWork for Evals {
    const KIND: LeaseKind = LeaseKind::EvalRun;
    type Item = RunRecord;
    type Stop = CancellationToken;

    fn leases(&self) -> &dyn LeaseStore {
        &*self.store
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }

    fn span(&self, id: &str) -> tracing::Span {
        tracing::info_span!("eval_run", run_id = %id)
    }

    fn claimed(&self, item: Leased) -> crate::error::Result<RunRecord> {
        let run = item.into_eval_run()?;
        tracing::info!(run = %run.id, done = run.progress.completed, "claimed eval run");
        Ok(run)
    }

    fn renewed(&self, item: Option<Leased>) -> Renewal<()> {
        match item.and_then(|item| item.into_eval_run().ok()).map(|run| run.state) {
            Some(RunState::InProgress) => Renewal::Held,
            _ => Renewal::Lost(()),
        }
    }

    async fn run(self: Arc<Self>, run: RunRecord, stop: CancellationToken) -> Ended {
        run_one(self, run, stop).await
    }
}

/// How working on a run ended.
enum End {
    Completed,
    /// Its budget stopped it: completed with what it finished, and why.
    Budget(String),
    /// Cancelled, shut down, or the lease was lost: someone else decides.
    Stopped,
    Failed(String),
}

/// Works on a run until it ends or `stop` (a cancel, a lost lease, the
/// shutdown) says so, and records how it ended.
async fn run_one(evals: Arc<Evals>, run: RunRecord, stop: CancellationToken) -> Ended {
    let id = run.id.clone();
    if let Ok(mut running) = evals.running.lock() {
        running.insert(id.clone(), stop.clone());
    }
    let end = work_on(&evals, &run, &stop).await;
    if let Ok(mut running) = evals.running.lock() {
        running.remove(&id);
    }
    // Stopped while waiting out an outage: not the run's failure.
    let end = match end {
        End::Failed(_) if stop.is_cancelled() => End::Stopped,
        end => end,
    };
    let ended = match end {
        End::Completed => {
            tracing::info!(run = %id, "eval run completed");
            finish(&evals, &id, RunState::Completed, None, &stop).await;
            Ended::Finished
        }
        End::Budget(note) => {
            tracing::info!(run = %id, %note, "eval run stopped at its budget");
            finish(&evals, &id, RunState::Completed, Some(&note), &stop).await;
            Ended::Finished
        }
        End::Failed(message) => {
            tracing::warn!(run = %id, %message, "eval run failed");
            finish(&evals, &id, RunState::Failed, Some(&message), &stop).await;
            Ended::Finished
        }
        // Cancelled or taken over: someone else decided. Shutting down: the
        // lease machine hands the run back to the queue, to resume where it
        // stopped.
        End::Stopped => Ended::Stopped,
    };
    evals.bus.notify(&id, u64::MAX);
    ended
}

/// Records how the run ended; rides out an outage of the database (until
/// the worker stops: the run's lease then runs out and it is run again).
async fn finish(evals: &Evals, id: &str, to: RunState, error: Option<&str>, stop: &CancellationToken) {
    let from = [RunState::InProgress];
    let finished_at = now_millis();
    let finished = crate::ride_out!(
        stop.cancelled(),
        &Quietly,
        evals.store.finish_eval_run(id, &from, to, error, Some(finished_at))
    );
    if let Err(e) = finished {
        tracing::error!(run = %id, error = %e, "could not record how the eval run ended");
    }
}

/// Reads the dataset's rows on a blocking thread, skipping those already
/// recorded, into a bounded channel.
fn read_rows(
    evals: &Evals,
    sha256: String,
    size: u64,
    done: HashSet<u64>,
    capacity: usize,
) -> mpsc::Receiver<(u64, Result<Vec<u8>, String>)> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let blobs = evals.blobs.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        for (index, line) in LineReader::new(&handle, &blobs, &sha256, size).enumerate() {
            let index = index as u64;
            if done.contains(&index) {
                continue;
            }
            let failed = line.is_err();
            if tx.blocking_send((index, line.map_err(|e| e.public_message()))).is_err() || failed {
                return;
            }
        }
    });
    rx
}

async fn work_on(evals: &Arc<Evals>, run: &RunRecord, stop: &CancellationToken) -> End {
    let setup = async {
        let eval = evals
            .store
            .get_eval(&run.eval_id)
            .await?
            .ok_or_else(|| format!("eval {} no longer exists", run.eval_id))?;
        let dataset = evals
            .store
            .get_dataset(&run.spec.dataset_id)
            .await?
            .ok_or_else(|| format!("dataset {} no longer exists", run.spec.dataset_id))?;
        let criteria = evals.criteria(&eval, &run.project).await?;
        let mut done = HashSet::new();
        let mut after = None;
        loop {
            let page = evals
                .store
                .list_output_items(&crate::store::ItemQuery::all(&run.id, after, 1000))
                .await?;
            let n = page.len();
            for item in page {
                after = Some(item.index);
                done.insert(item.index);
            }
            if n < 1000 {
                break;
            }
        }
        Ok::<_, SetupError>((dataset, criteria, done))
    };
    let (dataset, criteria, done) = match setup.await {
        Ok(x) => x,
        Err(SetupError(Some(message))) => return End::Failed(message),
        Err(SetupError(None)) => return End::Stopped,
    };
    let work = Arc::new(RunWork {
        source: run.spec.source.clone(),
        model: evals.model.clone(),
        criteria,
    });
    let concurrency = run.spec.concurrency.max(1) as usize;
    let mut rows = read_rows(evals, dataset.sha256.clone(), dataset.bytes, done, concurrency);
    let mut progress = run.progress.clone();
    progress
        .per_criterion
        .resize(run.spec.criteria.len(), CriterionCounts::default());
    // Finished items go to a recorder task, so that a slot freed by a
    // finished item is refilled at once instead of after the store has
    // written it; the recorder writes what has piled up in one transaction.
    let (finished_tx, finished_rx) = mpsc::channel(concurrency.max(RECORD_BATCH));
    // Aborted when dropped (the run stopped, or the runner did).
    let mut recorder = AbortOnDropHandle::new(tokio::spawn(
        record_all(evals.clone(), run.clone(), progress, finished_rx, stop.clone()).in_current_span(),
    ));
    // Items run as their own tasks: they must make progress while this loop
    // waits on anything else. Dropping the set aborts them.
    let mut in_flight = JoinSet::new();
    let mut reading = true;
    let mut spend = Spend::new(run);
    loop {
        if reading && let Some(limit) = spend.exhausted() {
            // No more items: those in flight finish and are recorded.
            reading = false;
            spend.limit = Some(limit);
        }
        if !reading && in_flight.is_empty() {
            // Everything is handed over: the recorder ends once it has
            // written the last item.
            drop(finished_tx);
            return match (recorder_end((&mut recorder).await), spend.limit) {
                (End::Completed, Some(limit)) => End::Budget(format!(
                    "stopped at its budget of {limit} after {} of {} items",
                    spend.dispatched, spend.total
                )),
                (end, _) => end,
            };
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return End::Stopped,
            // The recorder only ends early: failed, lease lost, or the
            // error-rate threshold.
            ended = &mut recorder => return recorder_end(ended),
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                let finished: Finished = match joined {
                    Ok(finished) => finished,
                    Err(e) => return End::Failed(format!("an item's task failed: {e}")),
                };
                spend.finished(&finished);
                if finished_tx.send(finished).await.is_err() {
                    return recorder_end((&mut recorder).await);
                }
            }
            row = rows.recv(), if reading && in_flight.len() < concurrency => match row {
                Some((_, Err(e))) => return End::Failed(format!("reading dataset {}: {e}", dataset.id)),
                Some((index, Ok(line))) => {
                    spend.dispatched += 1;
                    let work = work.clone();
                    let item = async move {
                        let started = Instant::now();
                        let finished = work.process(index, line).await;
                        telemetry::eval_item_done(started.elapsed());
                        finished
                    };
                    in_flight.spawn(item.in_current_span());
                }
                None => reading = false,
            },
        }
    }
}

/// What a run has spent against its budget: items handed out (each at
/// its planned calls) and the tokens of finished items.
struct Spend {
    budget: Budget,
    calls_per_item: u64,
    /// Items finished before this claim, then handed out.
    dispatched: u64,
    tokens: u64,
    total: u64,
    /// The limit that stopped the run taking items.
    limit: Option<String>,
}

impl Spend {
    fn new(run: &RunRecord) -> Self {
        Self {
            budget: run.spec.budget.clone(),
            calls_per_item: run.spec.calls_per_item,
            dispatched: run.progress.completed,
            tokens: run.progress.usage.values().map(|u| u.total_tokens).sum(),
            total: run.total,
            limit: None,
        }
    }

    fn finished(&mut self, item: &Finished) {
        self.tokens += item.usage.values().map(|(_, _, total)| total).sum::<u64>();
    }

    /// The limit that lets no further item start, if one does.
    fn exhausted(&self) -> Option<String> {
        if let Some(max) = self.budget.max_model_calls
            && (self.dispatched + 1) * self.calls_per_item > max
        {
            return Some(format!("{max} model calls ({} per item)", self.calls_per_item));
        }
        if let Some(max) = self.budget.max_tokens
            && self.tokens >= max
        {
            return Some(format!("{max} tokens ({} spent by finished items)", self.tokens));
        }
        None
    }
}

/// The most finished items written in one transaction.
const RECORD_BATCH: usize = 256;
/// How long the recorder waits for more items of a burst: until none came
/// for `LINGER_GAP`, and never longer than `LINGER_MAX`.
const LINGER_GAP: Duration = Duration::from_millis(2);
const LINGER_MAX: Duration = Duration::from_millis(25);

fn recorder_end(joined: Result<End, tokio::task::JoinError>) -> End {
    joined.unwrap_or_else(|e| End::Failed(format!("the item recorder failed: {e}")))
}

/// Records finished items as they come, in batches of what has piled up,
/// until the channel closes (`Completed`) or the run must end.
async fn record_all(
    evals: Arc<Evals>,
    run: RunRecord,
    mut progress: Progress,
    mut finished: mpsc::Receiver<Finished>,
    stop: CancellationToken,
) -> End {
    let base_elapsed = progress.elapsed_ms;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    let mut last_error = None;
    while finished.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        // Items finish in bursts (a wave of requests sent together comes
        // back together). Gathering the burst before writing makes it one
        // transaction, written after the burst has been turned into new
        // requests rather than competing with that for the CPU.
        let until = tokio::time::Instant::now() + LINGER_MAX;
        while batch.len() < RECORD_BATCH {
            let gap = tokio::time::Instant::now() + LINGER_GAP;
            match tokio::time::timeout_at(gap.min(until), finished.recv()).await {
                Ok(Some(item)) => batch.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        progress.elapsed_ms = base_elapsed + started.elapsed().as_millis() as u64;
        if let Some(e) = batch.iter().rev().find_map(|f| f.detail.error.clone()) {
            last_error = Some(e);
        }
        if let Some(end) = record(&evals, &run, &mut progress, std::mem::take(&mut batch), &stop).await {
            return end;
        }
    }
    end_of_run(&progress, run.spec.error_rate_threshold, last_error)
}

/// How a run whose items are all recorded ends. The error-rate threshold
/// waits for `ERROR_RATE_MIN_ITEMS` while items come in, so that a few
/// early errors do not end a long run; at the end every item is in, and a
/// run above its threshold, or whose every item errored, has failed.
fn end_of_run(progress: &Progress, threshold: f64, last_error: Option<String>) -> End {
    let (errored, completed) = (progress.errored, progress.completed);
    let all = completed > 0 && errored == completed;
    if !all && (completed == 0 || errored as f64 / completed as f64 <= threshold) {
        return End::Completed;
    }
    let share = if all {
        format!("every one of its {completed} items errored")
    } else {
        format!(
            "{errored} of its {completed} items errored ({:.0}%), above its error-rate threshold of {:.0}%",
            100.0 * errored as f64 / completed as f64,
            100.0 * threshold
        )
    };
    End::Failed(match last_error {
        Some(e) => format!("{share}; last error: {e}"),
        None => share,
    })
}

/// Why a run could not start: its own fault (it fails), or the database
/// out of reach (None: it stops, and runs again once its lease ran out).
struct SetupError(Option<String>);

impl From<StoreError> for SetupError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "the database cannot be reached; the run waits for its lease to run out");
            return SetupError(None);
        }
        SetupError(Some(Error::from(e).public_message()))
    }
}

impl From<String> for SetupError {
    fn from(e: String) -> Self {
        SetupError(Some(e))
    }
}

fn tally(progress: &mut Progress, finished: &Finished) {
    progress.completed += 1;
    match finished.status {
        ItemStatus::Pass => progress.passed += 1,
        ItemStatus::Fail => progress.failed += 1,
        ItemStatus::Error => progress.errored += 1,
    }
    for (i, r) in finished.detail.results.iter().enumerate() {
        if let Some(c) = progress.per_criterion.get_mut(i) {
            match (&r.error, r.passed) {
                (Some(_), _) => c.errored += 1,
                (None, true) => c.passed += 1,
                (None, false) => c.failed += 1,
            }
        }
    }
    let usage: &BTreeMap<String, (u64, u64, u64)> = &finished.usage;
    for (model, (prompt, completion, total)) in usage {
        let u = progress.usage.entry(model.clone()).or_default();
        u.invocations += 1;
        u.prompt_tokens += prompt;
        u.completion_tokens += completion;
        u.total_tokens += total;
    }
}

/// Records finished items in one transaction; returns how the run ends if
/// it must end now. The error-rate threshold is checked after each item, as
/// if they had been recorded one by one: items after the one that crosses
/// it are not recorded.
async fn record(
    evals: &Evals,
    run: &RunRecord,
    progress: &mut Progress,
    batch: Vec<Finished>,
    stop: &CancellationToken,
) -> Option<End> {
    let threshold = run.spec.error_rate_threshold;
    let mut items = Vec::with_capacity(batch.len());
    let mut failed = None;
    for finished in batch {
        tally(progress, &finished);
        let last_error = finished.detail.error.clone();
        items.push(OutputItemRecord {
            run_id: run.id.clone(),
            index: finished.index,
            seq: 0,
            status: finished.status,
            detail: finished.detail,
            progress: progress.clone(),
            created_at: now_millis(),
        });
        let (errored, completed) = (progress.errored, progress.completed);
        if completed >= ERROR_RATE_MIN_ITEMS && errored as f64 / completed as f64 > threshold {
            failed = Some(End::Failed(format!(
                "{errored} of the first {completed} items errored ({:.0}%), above this run's error-rate threshold \
                 of {:.0}%; last error: {}",
                100.0 * errored as f64 / completed as f64,
                100.0 * threshold,
                last_error.unwrap_or_default()
            )));
            break;
        }
    }
    // Fenced by this claim's lease (`lease`); an outage of the database is
    // waited out (the log says so) until the worker stops.
    let holder = run.lease_owner.as_deref().unwrap_or_default();
    let recorded = crate::ride_out!(
        stop.cancelled(),
        &Quietly,
        evals.store.record_output_items(&items, holder)
    );
    match recorded {
        Ok(Some(seq)) => {
            for item in &items {
                telemetry::eval_item_recorded(item.status.as_str());
            }
            evals.bus.notify(&run.id, seq);
        }
        // Cancelled, or the lease went to another worker.
        Ok(None) => return Some(End::Stopped),
        Err(e) => {
            let first = items.first().map_or(0, |i| i.index);
            let e = e.public_message();
            return Some(End::Failed(match items.len() {
                1 => format!("could not record item {first}: {e}"),
                n => format!("could not record {n} items (item {first} and later ones): {e}"),
            }));
        }
    }
    failed
}

#[cfg(test)]
mod end_tests {
    use super::*;

    fn progress(completed: u64, errored: u64) -> Progress {
        Progress {
            completed,
            errored,
            passed: completed - errored,
            ..Default::default()
        }
    }

    #[test]
    fn a_run_whose_items_all_errored_fails_however_few_they_are() {
        assert!(matches!(end_of_run(&progress(3, 3), 0.5, Some("boom".into())),
            End::Failed(m) if m.contains("every one of its 3 items") && m.contains("boom")));
        assert!(matches!(end_of_run(&progress(3, 3), 1.0, None), End::Failed(_)));
        assert!(matches!(end_of_run(&progress(4, 3), 0.5, None), End::Failed(m) if m.contains("75%")));
        assert!(matches!(end_of_run(&progress(4, 2), 0.5, None), End::Completed));
        assert!(matches!(end_of_run(&progress(4, 0), 0.5, None), End::Completed));
    }
}
