//! The lease machine: one actor per kind of leased work (fine-tuning jobs,
//! eval runs) that claims queued items from the store with a lease, runs a
//! bounded number of them at once, keeps each lease alive with a heartbeat,
//! re-queues items whose worker stopped renewing theirs, and at shutdown
//! stops its runners, waits for them and gives what they had not finished
//! back to the queue.
//!
//! Architecture invariant: this module owns when leases are taken,
//! renewed, found expired and given back (and counts each, `telemetry`),
//! and nothing else. It knows
//! neither what an item is (training, grading) nor what its states mean: a
//! kind of work (`LeasedWork`) supplies the events its changes append, says
//! what a renewal's answer means, and runs an item until it ends. It knows
//! no SQL either: every change is one compare-and-set statement of the
//! store (`store::leases`), so a worker holds an item only while the store
//! says so, however many workers share the store. Heartbeats and polls run
//! on tokio's clock (tests pause it); the leases stored are wall-clock
//! milliseconds (`ids::now_millis`), which every worker shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::error::Result;
use crate::ids::now_millis;
use crate::jobs::model::NewEvent;
use crate::store::{LeaseChange, LeaseKind, LeaseStore, Leased};
use crate::telemetry;

/// How one worker takes part in a kind of leased work.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// This worker's name in leases.
    pub worker_id: String,
    /// How long a lease lasts without a renewal; it is renewed every third
    /// of that, so a missed renewal or two costs nothing.
    pub lease: Duration,
    /// How often to look for work nobody woke the machine for: work queued
    /// by other replicas, leases that ran out.
    pub poll: Duration,
    /// Items this worker runs at once.
    pub max_concurrent: usize,
    /// Claim only this item, and return once it has run (a worker started
    /// for one job, as a Ray job is).
    pub only: Option<String>,
}

/// How the machine tells a running item to stop.
pub trait StopSignal: Clone + Default + Send + Sync + 'static {
    /// Why, as the kind's runner understands it.
    type Reason: Send + 'static;

    /// Asks the item to stop; the first reason given wins.
    fn stop(&self, reason: Self::Reason);

    /// Asks the item to stop because this worker is shutting down; what it
    /// leaves unfinished goes back to the queue.
    fn shutdown(&self);
}

/// A stop without reasons: the item stops, and the machine knows whether it
/// was shutting down.
impl StopSignal for CancellationToken {
    type Reason = ();

    fn stop(&self, (): ()) {
        self.cancel();
    }

    fn shutdown(&self) {
        self.cancel();
    }
}

/// What a renewal's answer means for the item's runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal<R> {
    /// The lease is still this worker's and the item still runs.
    Held,
    /// The lease is still this worker's, but the item must stop (cancelled
    /// or paused by a request, perhaps on another replica); the lease is
    /// kept renewed until the runner has stopped.
    Stop(R),
    /// The lease is no longer this worker's, or the item no longer runs:
    /// stop, and renew no more.
    Lost(R),
}

/// How running an item ended, as far as the machine cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It reached an end of its own (succeeded, failed): its state says so.
    Finished,
    /// It stopped before its end because it was asked to; if the worker is
    /// shutting down, the machine gives it back to the queue.
    Stopped,
}

/// A change of an item's lease the machine is about to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// `worker` claims the next queued item.
    Claim { worker: &'a str },
    /// The item's worker stopped renewing its lease; back to the queue.
    Expired { id: &'a str },
    /// This worker gives the unfinished item back to the queue at shutdown.
    Released { id: &'a str },
}

/// A kind of work handed out with leases. The machine makes every lease
/// change; the kind says what the changes mean and does the work.
#[async_trait]
pub trait LeasedWork: Send + Sync + 'static {
    const KIND: LeaseKind;
    /// A claimed item, as its runner needs it.
    type Item: Send + 'static;
    type Stop: StopSignal;

    /// Where the leases are.
    fn leases(&self) -> &dyn LeaseStore;

    /// Notified when work is queued in this process, so it is claimed
    /// without waiting for the next poll.
    fn wake(&self) -> &Notify;

    /// The span a claimed item runs in.
    fn span(&self, id: &str) -> tracing::Span;

    /// The event `change` appends, for a kind with an event log.
    async fn event(&self, _change: Change<'_>) -> Result<Option<NewEvent>> {
        Ok(None)
    }

    /// Called after each change the store made (a claim, a re-queue, a
    /// release), e.g. to tell watchers of the event it appended.
    fn changed(&self, _change: &LeaseChange) {}

    /// The item to run, from the row the claim took.
    fn claimed(&self, item: Leased) -> Result<Self::Item>;

    /// What a renewal's answer means: the item as the renewal found it, or
    /// None when the lease is no longer this worker's.
    fn renewed(&self, item: Option<Leased>) -> Renewal<<Self::Stop as StopSignal>::Reason>;

    /// Runs a claimed item until it ends or `stop` says so.
    async fn run(self: Arc<Self>, item: Self::Item, stop: Self::Stop) -> Ended;
}

/// Starts the machine for one kind of work; it returns after `shutdown`,
/// once its runners have stopped and their unfinished items are back in
/// the queue.
pub fn spawn<W: LeasedWork>(work: Arc<W>, config: LeaseConfig, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(run(work, config, shutdown))
}

/// The machine itself (see `spawn`).
pub async fn run<W: LeasedWork>(work: Arc<W>, config: LeaseConfig, shutdown: CancellationToken) {
    let kind = W::KIND.name();
    let config = Arc::new(config);
    let max = config.max_concurrent.max(1);
    let mut runners = JoinSet::new();
    // The stop signals of the running items, by their runner's task.
    let mut stops = HashMap::new();
    // With `only`, whether that item was claimed (and so is run only once).
    let mut claimed_only = false;
    // Claims made so far: each claim's lease is held under its own name.
    let mut claims = 0u64;
    loop {
        if let Err(e) = requeue_expired(&*work).await {
            tracing::warn!(kind, error = %e, "could not re-queue work whose lease expired");
        }
        while runners.len() < max && !shutdown.is_cancelled() && !claimed_only {
            claims += 1;
            let owner = format!("{}.{claims}", config.worker_id);
            match claim(&*work, &config, &owner).await {
                Ok(Some((id, item))) => {
                    claimed_only = config.only.is_some();
                    let stop = W::Stop::default();
                    let span = work.span(&id);
                    let holder = Holder { id, owner };
                    let runner = run_one(
                        work.clone(),
                        config.clone(),
                        holder,
                        item,
                        stop.clone(),
                        shutdown.clone(),
                    );
                    let task = runners.spawn(runner.instrument(span));
                    stops.insert(task.id(), stop);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(kind, error = %e, "could not claim work");
                    break;
                }
            }
        }
        tokio::select! {
            () = work.wake().notified() => {}
            () = tokio::time::sleep(config.poll) => {}
            Some(joined) = runners.join_next_with_id(), if !runners.is_empty() => {
                stops.remove(&joined_task(kind, joined));
                if claimed_only {
                    break;
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    for stop in stops.values() {
        stop.shutdown();
    }
    while let Some(joined) = runners.join_next_with_id().await {
        joined_task(kind, joined);
    }
}

/// The task a runner ran in; a runner that panicked is logged.
fn joined_task(kind: &str, joined: Result<(tokio::task::Id, ()), JoinError>) -> tokio::task::Id {
    match joined {
        Ok((task, ())) => task,
        Err(e) => {
            if e.is_panic() {
                tracing::error!(
                    kind,
                    "a runner panicked; its item goes back to the queue when its lease runs out"
                );
            }
            e.id()
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Puts the items whose worker stopped renewing their lease back in the
/// queue, each with its event. The machine does this on every round; a
/// process that runs no items of the kind itself but hands them to workers
/// elsewhere (`jobs::ray`) calls it on its own.
pub async fn requeue_expired<W: LeasedWork>(work: &W) -> Result<()> {
    let now = now_millis();
    for id in work.leases().expired_leases(W::KIND, now).await? {
        let event = work.event(Change::Expired { id: &id }).await?;
        let change = work.leases().requeue_expired(W::KIND, &id, now, event.as_ref()).await?;
        if let Some(change) = change {
            tracing::warn!(kind = W::KIND.name(), %id, "re-queued work whose lease expired");
            telemetry::lease_expired(W::KIND);
            work.changed(&change);
        }
    }
    Ok(())
}

/// Who holds a claimed item's lease: the lease is stored under a name of
/// its own for each claim (`{worker}.{n}`), not the worker's name, so a
/// runner that lost its lease while cut off from the store cannot write
/// into the item's next claim, even when this same worker made it. Items
/// carry that name (`lease_owner`) to fence their own writes.
struct Holder {
    id: String,
    owner: String,
}

/// Claims the next queued item for this worker, its lease held as `owner`.
async fn claim<W: LeasedWork>(work: &W, config: &LeaseConfig, owner: &str) -> Result<Option<(String, W::Item)>> {
    let worker = &config.worker_id;
    let event = work.event(Change::Claim { worker }).await?;
    let now = now_millis();
    let lease_until = now.saturating_add(millis(config.lease));
    let Some(change) = work
        .leases()
        .claim_next(W::KIND, owner, config.only.as_deref(), now, lease_until, event.as_ref())
        .await?
    else {
        return Ok(None);
    };
    telemetry::lease_claimed(W::KIND);
    work.changed(&change);
    let id = change.item.id().to_string();
    Ok(Some((id, work.claimed(change.item)?)))
}

/// Runs one item with its heartbeat; gives it back to the queue if it
/// stopped unfinished because the worker is shutting down.
async fn run_one<W: LeasedWork>(
    work: Arc<W>,
    config: Arc<LeaseConfig>,
    holder: Holder,
    item: W::Item,
    stop: W::Stop,
    shutdown: CancellationToken,
) {
    let holder = Arc::new(holder);
    let beat = heartbeat(work.clone(), config.clone(), holder.clone(), stop.clone()).in_current_span();
    let beat = AbortOnDropHandle::new(tokio::spawn(beat));
    let ended = work.clone().run(item, stop).await;
    drop(beat);
    if ended == Ended::Stopped
        && shutdown.is_cancelled()
        && let Err(e) = release(&*work, &holder).await
    {
        let id = &holder.id;
        tracing::error!(kind = W::KIND.name(), %id, error = %e, "could not give unfinished work back to the queue");
    }
}

/// Renews the item's lease every third of its length until the item's
/// runner ends (it aborts this) or the lease is lost; turns what each
/// renewal finds into a stop.
async fn heartbeat<W: LeasedWork>(work: Arc<W>, config: Arc<LeaseConfig>, holder: Arc<Holder>, stop: W::Stop) {
    let every = config.lease / 3;
    let id = &holder.id;
    loop {
        tokio::time::sleep(every).await;
        let lease_until = now_millis().saturating_add(millis(config.lease));
        let renewed = work.leases().renew_lease(W::KIND, id, &holder.owner, lease_until).await;
        if let Ok(Some(_)) = &renewed {
            telemetry::lease_renewed(W::KIND);
        }
        match renewed {
            Ok(item) => match work.renewed(item) {
                Renewal::Held => {}
                Renewal::Stop(reason) => stop.stop(reason),
                Renewal::Lost(reason) => {
                    tracing::warn!(kind = W::KIND.name(), %id, "no longer holds the lease; stopping");
                    stop.stop(reason);
                    return;
                }
            },
            // A store hiccup: try again; the lease has slack for it.
            Err(e) => tracing::warn!(kind = W::KIND.name(), %id, error = %e, "lease renewal failed"),
        }
    }
}

/// Gives an unfinished item this worker holds back to the queue.
async fn release<W: LeasedWork>(work: &W, holder: &Holder) -> Result<()> {
    let id = &holder.id;
    let event = work.event(Change::Released { id }).await?;
    let change = work
        .leases()
        .release_lease(W::KIND, id, &holder.owner, now_millis(), event.as_ref())
        .await?;
    if let Some(change) = change {
        tracing::info!(kind = W::KIND.name(), %id, "gave unfinished work back to the queue");
        telemetry::lease_released(W::KIND);
        work.changed(&change);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The machine against an in-memory lease store and a scripted kind of
    //! work, on tokio's paused clock: every time below is exact.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::Instant;

    use super::*;
    use crate::evals::model::{RunRecord, RunState};
    use crate::store::StoreError;

    const LEASE: Duration = Duration::from_secs(30);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The lease statements' meaning, on a list of eval runs in memory.
    #[derive(Default)]
    struct Memory {
        runs: Vec<RunRecord>,
        /// Renewal attempts, by run.
        renewals: HashMap<String, usize>,
        /// Renewals left to fail, as a database hiccup would.
        failing: usize,
        /// Every change made, in order: "claim id", "requeue id", "release id".
        changes: Vec<String>,
    }

    #[derive(Default)]
    struct MemoryStore(Mutex<Memory>);

    impl MemoryStore {
        fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
            f(&mut self.0.lock().unwrap())
        }

        fn queue(&self, n: u32) -> String {
            let run = crate::store::suite::run_record(n, "eval", i64::from(n));
            let id = run.id.clone();
            self.with(|m| m.runs.push(run));
            id
        }

        fn run(&self, id: &str) -> RunRecord {
            self.with(|m| m.runs.iter().find(|r| r.id == id).unwrap().clone())
        }

        fn update(&self, id: &str, f: impl FnOnce(&mut RunRecord)) {
            self.with(|m| f(m.runs.iter_mut().find(|r| r.id == id).unwrap()));
        }

        fn renewals(&self, id: &str) -> usize {
            self.with(|m| m.renewals.get(id).copied().unwrap_or(0))
        }
    }

    fn change(run: &RunRecord) -> LeaseChange {
        LeaseChange {
            item: Leased::EvalRun(run.clone()),
            event: None,
        }
    }

    fn requeue(run: &mut RunRecord) {
        run.state = RunState::Queued;
        run.lease_owner = None;
        run.lease_expires_at = None;
    }

    #[async_trait]
    impl LeaseStore for MemoryStore {
        async fn claim_next(
            &self,
            _: LeaseKind,
            worker: &str,
            only: Option<&str>,
            now: i64,
            lease_until: i64,
            _: Option<&NewEvent>,
        ) -> Result<Option<LeaseChange>, StoreError> {
            Ok(self.with(|m| {
                let run = m
                    .runs
                    .iter_mut()
                    .find(|r| r.state == RunState::Queued && only.is_none_or(|id| r.id == id))?;
                run.state = RunState::InProgress;
                run.lease_owner = Some(worker.to_string());
                run.lease_expires_at = Some(lease_until);
                run.started_at.get_or_insert(now);
                let change = change(run);
                m.changes.push(format!("claim {}", run.id));
                Some(change)
            }))
        }

        async fn renew_lease(
            &self,
            _: LeaseKind,
            id: &str,
            worker: &str,
            lease_until: i64,
        ) -> Result<Option<Leased>, StoreError> {
            self.with(|m| {
                *m.renewals.entry(id.to_string()).or_default() += 1;
                if m.failing > 0 {
                    m.failing -= 1;
                    return Err(StoreError::Conflict("a hiccup".into()));
                }
                let run = m.runs.iter_mut().find(|r| r.id == id);
                Ok(run.filter(|r| r.lease_owner.as_deref() == Some(worker)).map(|r| {
                    r.lease_expires_at = Some(lease_until);
                    Leased::EvalRun(r.clone())
                }))
            })
        }

        async fn expired_leases(&self, _: LeaseKind, now: i64) -> Result<Vec<String>, StoreError> {
            Ok(self.with(|m| {
                m.runs
                    .iter()
                    .filter(|r| r.state == RunState::InProgress && r.lease_expires_at.is_some_and(|t| t < now))
                    .map(|r| r.id.clone())
                    .collect()
            }))
        }

        async fn requeue_expired(
            &self,
            _: LeaseKind,
            id: &str,
            now: i64,
            _: Option<&NewEvent>,
        ) -> Result<Option<LeaseChange>, StoreError> {
            Ok(self.with(|m| {
                let run = m.runs.iter_mut().find(|r| r.id == id)?;
                if run.state != RunState::InProgress || run.lease_expires_at.is_none_or(|t| t >= now) {
                    return None;
                }
                requeue(run);
                let change = change(run);
                m.changes.push(format!("requeue {id}"));
                Some(change)
            }))
        }

        async fn release_lease(
            &self,
            _: LeaseKind,
            id: &str,
            worker: &str,
            _: i64,
            _: Option<&NewEvent>,
        ) -> Result<Option<LeaseChange>, StoreError> {
            Ok(self.with(|m| {
                let run = m.runs.iter_mut().find(|r| r.id == id)?;
                if run.state != RunState::InProgress || run.lease_owner.as_deref() != Some(worker) {
                    return None;
                }
                requeue(run);
                let change = change(run);
                m.changes.push(format!("release {id}"));
                Some(change)
            }))
        }

        async fn count_by_state(&self, _: LeaseKind) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
            Ok(self.with(|m| {
                let mut counts = std::collections::BTreeMap::new();
                for run in &m.runs {
                    *counts.entry(run.state.as_str().to_string()).or_default() += 1;
                }
                counts
            }))
        }
    }

    /// A stop that remembers the first reason.
    #[derive(Clone, Default)]
    struct Stop {
        token: CancellationToken,
        reason: Arc<Mutex<Option<String>>>,
    }

    impl StopSignal for Stop {
        type Reason = String;

        fn stop(&self, reason: String) {
            self.reason.lock().unwrap().get_or_insert(reason);
            self.token.cancel();
        }

        fn shutdown(&self) {
            self.stop("shutdown".into());
        }
    }

    /// A run of scripted work: its id, when it started and ended (seconds
    /// since the test's start) and why it was stopped.
    type RunLog = (String, u64, u64, Option<String>);

    /// Work that takes `work_for` unless stopped, and `wind_down` to stop.
    struct Scripted {
        store: MemoryStore,
        wake: Notify,
        work_for: Duration,
        wind_down: Duration,
        epoch: Instant,
        running: AtomicUsize,
        most_running: AtomicUsize,
        runs: Mutex<Vec<RunLog>>,
    }

    impl Scripted {
        fn new(work_for: Duration, wind_down: Duration) -> Arc<Self> {
            Arc::new(Self {
                store: MemoryStore::default(),
                wake: Notify::new(),
                work_for,
                wind_down,
                epoch: Instant::now(),
                running: AtomicUsize::new(0),
                most_running: AtomicUsize::new(0),
                runs: Mutex::new(Vec::new()),
            })
        }

        fn now(&self) -> u64 {
            self.epoch.elapsed().as_secs()
        }

        fn runs(&self) -> Vec<RunLog> {
            self.runs.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl LeasedWork for Scripted {
        const KIND: LeaseKind = LeaseKind::EvalRun;
        type Item = RunRecord;
        type Stop = Stop;

        fn leases(&self) -> &dyn LeaseStore {
            &self.store
        }

        fn wake(&self) -> &Notify {
            &self.wake
        }

        fn span(&self, id: &str) -> tracing::Span {
            tracing::info_span!("scripted", id)
        }

        fn claimed(&self, item: Leased) -> Result<RunRecord> {
            Ok(item.into_eval_run()?)
        }

        fn renewed(&self, item: Option<Leased>) -> Renewal<String> {
            match item.map(|item| item.into_eval_run().unwrap().state) {
                Some(RunState::InProgress) => Renewal::Held,
                Some(RunState::Canceled) => Renewal::Stop("cancelled".into()),
                Some(other) => Renewal::Lost(format!("now {}", other.as_str())),
                None => Renewal::Lost("lease lost".into()),
            }
        }

        async fn run(self: Arc<Self>, run: RunRecord, stop: Stop) -> Ended {
            let started = self.now();
            let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(now_running, Ordering::SeqCst);
            let ended = tokio::select! {
                () = tokio::time::sleep(self.work_for) => {
                    self.store.update(&run.id, |r| {
                        r.state = RunState::Completed;
                        r.lease_owner = None;
                        r.lease_expires_at = None;
                    });
                    Ended::Finished
                }
                () = stop.token.cancelled() => {
                    tokio::time::sleep(self.wind_down).await;
                    Ended::Stopped
                }
            };
            self.running.fetch_sub(1, Ordering::SeqCst);
            let reason = stop.reason.lock().unwrap().clone();
            self.runs.lock().unwrap().push((run.id, started, self.now(), reason));
            ended
        }
    }

    fn config(max_concurrent: usize, poll: Duration) -> LeaseConfig {
        LeaseConfig {
            worker_id: "w1".into(),
            lease: LEASE,
            poll,
            max_concurrent,
            only: None,
        }
    }

    fn start(work: &Arc<Scripted>, config: LeaseConfig) -> (CancellationToken, JoinHandle<()>) {
        let shutdown = CancellationToken::new();
        let machine = spawn(work.clone(), config, shutdown.clone());
        (shutdown, machine)
    }

    async fn stop(shutdown: CancellationToken, machine: JoinHandle<()>) {
        shutdown.cancel();
        machine.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn runs_at_most_max_concurrent_and_claims_more_as_runners_finish() {
        let work = Scripted::new(secs(10), secs(0));
        let ids: Vec<String> = (1..=5).map(|n| work.store.queue(n)).collect();
        // A poll this long never fires: finished runners make room.
        let (shutdown, machine) = start(&work, config(2, secs(3600)));
        tokio::time::sleep(secs(35)).await;
        let mut started: Vec<(String, u64, u64)> = work.runs().into_iter().map(|(id, s, e, _)| (id, s, e)).collect();
        started.sort();
        let expected: Vec<(String, u64, u64)> = ids
            .iter()
            .zip([0, 0, 10, 10, 20])
            .map(|(id, at)| (id.clone(), at, at + 10))
            .collect();
        assert_eq!(started, expected);
        assert_eq!(work.most_running.load(Ordering::SeqCst), 2);
        assert!(ids.iter().all(|id| work.store.run(id).state == RunState::Completed));
        stop(shutdown, machine).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_machine_for_one_item_claims_only_it_and_returns_once_it_ran() {
        let work = Scripted::new(secs(10), secs(0));
        let (first, wanted) = (work.store.queue(1), work.store.queue(2));
        // The item is another worker's at first.
        work.store.update(&wanted, |r| {
            r.state = RunState::InProgress;
            r.lease_owner = Some("w0".into());
            r.lease_expires_at = Some(i64::MAX);
        });
        let config = LeaseConfig {
            only: Some(wanted.clone()),
            ..config(4, secs(5))
        };
        let (_shutdown, machine) = start(&work, config);
        tokio::time::sleep(secs(30)).await;
        assert!(work.runs().is_empty(), "nothing else is claimed meanwhile");
        work.store.update(&wanted, requeue);
        // The next poll claims it; it runs for 10 s and the machine returns
        // without being told.
        tokio::time::timeout(secs(120), machine).await.unwrap().unwrap();
        let runs = work.runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].0, wanted);
        assert!((30..=36).contains(&runs[0].1), "started at {}", runs[0].1);
        assert_eq!(work.store.run(&wanted).state, RunState::Completed);
        assert_eq!(
            work.store.run(&first).state,
            RunState::Queued,
            "not this worker's to run"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_renews_every_third_of_the_lease_while_the_item_runs() {
        let work = Scripted::new(secs(65), secs(0));
        let id = work.store.queue(1);
        let (shutdown, machine) = start(&work, config(1, secs(3600)));
        tokio::time::sleep(secs(100)).await;
        // At 10, 20, ..., 60 s; none after the run ended at 65 s.
        assert_eq!(work.store.renewals(&id), 6);
        assert_eq!(work.runs(), [(id.clone(), 0, 65, None)]);
        stop(shutdown, machine).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_state_stops_the_item_and_a_lost_lease_also_ends_renewals() {
        let work = Scripted::new(secs(3600), secs(25));
        let (cancelled, taken) = (work.store.queue(1), work.store.queue(2));
        let (shutdown, machine) = start(&work, config(2, secs(3600)));
        tokio::time::sleep(secs(15)).await;
        work.store.update(&cancelled, |r| r.state = RunState::Canceled);
        work.store.update(&taken, |r| r.lease_owner = Some("w2".into()));
        tokio::time::sleep(secs(60)).await;
        let mut runs = work.runs();
        runs.sort();
        // Both stop at the renewal at 20 s and take 25 s to wind down.
        assert_eq!(
            runs,
            [
                (cancelled.clone(), 0, 45, Some("cancelled".into())),
                (taken.clone(), 0, 45, Some("lease lost".into())),
            ]
        );
        // The cancelled run's lease is kept while it winds down (10..40 s);
        // the lost one is not renewed after 20 s.
        assert_eq!(work.store.renewals(&cancelled), 4);
        assert_eq!(work.store.renewals(&taken), 2);
        // Neither goes back to the queue: whoever stopped them decided.
        assert_eq!(work.store.run(&cancelled).state, RunState::Canceled);
        assert_eq!(work.store.run(&taken).lease_owner.as_deref(), Some("w2"));
        stop(shutdown, machine).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_is_a_warning_and_the_next_one_retries() {
        let work = Scripted::new(secs(45), secs(0));
        let id = work.store.queue(1);
        work.store.with(|m| m.failing = 2);
        let (shutdown, machine) = start(&work, config(1, secs(3600)));
        tokio::time::sleep(secs(60)).await;
        assert_eq!(work.store.renewals(&id), 4, "10 and 20 s failed, 30 and 40 s held");
        assert_eq!(work.runs(), [(id.clone(), 0, 45, None)]);
        assert_eq!(work.store.run(&id).state, RunState::Completed);
        stop(shutdown, machine).await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_runners_waits_for_them_and_gives_their_work_back() {
        let work = Scripted::new(secs(3600), secs(5));
        let ids: Vec<String> = (1..=3).map(|n| work.store.queue(n)).collect();
        let (shutdown, machine) = start(&work, config(2, secs(1)));
        tokio::time::sleep(secs(2)).await;
        let began = Instant::now();
        stop(shutdown, machine).await;
        assert_eq!(
            began.elapsed(),
            secs(5),
            "the machine waited for its runners to wind down"
        );
        let mut runs = work.runs();
        runs.sort();
        assert_eq!(
            runs,
            [
                (ids[0].clone(), 0, 7, Some("shutdown".into())),
                (ids[1].clone(), 0, 7, Some("shutdown".into())),
            ]
        );
        for id in &ids {
            let run = work.store.run(id);
            assert_eq!((run.state, run.lease_owner), (RunState::Queued, None), "{id}");
        }
        let changes = work.store.with(|m| m.changes.clone());
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert!(changes.contains(&format!("release {}", ids[0])) && changes.contains(&format!("release {}", ids[1])));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_leases_go_back_to_the_queue_and_are_claimed_again() {
        let work = Scripted::new(secs(10), secs(0));
        let id = work.store.queue(1);
        work.store.update(&id, |r| {
            r.state = RunState::InProgress;
            r.lease_owner = Some("vanished".into());
            r.lease_expires_at = Some(0);
            r.started_at = Some(0);
        });
        let (shutdown, machine) = start(&work, config(1, secs(3600)));
        tokio::time::sleep(secs(20)).await;
        let changes = work.store.with(|m| m.changes.clone());
        assert_eq!(changes, [format!("requeue {id}"), format!("claim {id}")]);
        assert_eq!(work.runs(), [(id.clone(), 0, 10, None)]);
        stop(shutdown, machine).await;
    }

    /// A worker cut off from the store past its lease: the item goes back
    /// to the queue and this same worker claims it again, under a new
    /// lease name. The first runner's next renewal finds the lease is not
    /// its own and stops it; only the second runs on.
    #[tokio::test(start_paused = true)]
    async fn a_runner_whose_lease_ran_out_stops_even_when_its_worker_claims_the_item_again() {
        let work = Scripted::new(secs(100), secs(0));
        let id = work.store.queue(1);
        let (shutdown, machine) = start(&work, config(2, secs(5)));
        tokio::time::sleep(secs(1)).await;
        let first = work.store.run(&id).lease_owner.unwrap();
        assert_eq!(first, "w1.1");
        // The lease ran out (the store's clock is the wall clock).
        work.store.update(&id, |r| r.lease_expires_at = Some(0));
        tokio::time::sleep(secs(120)).await;
        let mut runs = work.runs();
        runs.sort_by_key(|r| r.1);
        assert_eq!(
            runs,
            [
                (id.clone(), 0, 10, Some("lease lost".into())),
                (id.clone(), 5, 105, None),
            ]
        );
        let changes = work.store.with(|m| m.changes.clone());
        assert_eq!(
            changes,
            [format!("claim {id}"), format!("requeue {id}"), format!("claim {id}")]
        );
        assert_eq!(work.store.run(&id).state, RunState::Completed);
        stop(shutdown, machine).await;
    }

    /// Each change the machine makes is counted by kind (`telemetry`):
    /// here, through a recorder of the test's own on its own runtime.
    #[test]
    fn each_lease_change_is_counted() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let work = Scripted::new(secs(3600), secs(0));
                let vanished = work.store.queue(1);
                work.store.update(&vanished, |r| {
                    r.state = RunState::InProgress;
                    r.lease_owner = Some("vanished".into());
                    r.lease_expires_at = Some(0);
                });
                work.store.queue(2);
                let (shutdown, machine) = start(&work, config(2, secs(3600)));
                // Renewals at 10 and 20 s; both runs are given back at 25 s.
                tokio::time::sleep(secs(25)).await;
                stop(shutdown, machine).await;
            })
        });
        let text = handle.render();
        for (name, n) in [
            ("lathe_leases_expired_total", 1),
            ("lathe_leases_claimed_total", 2),
            ("lathe_leases_renewed_total", 4),
            ("lathe_leases_released_total", 2),
        ] {
            let line = format!("{name}{{kind=\"eval_run\"}} {n}");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_claims_at_once_and_a_poll_finds_work_nobody_announced() {
        let work = Scripted::new(secs(1), secs(0));
        let (shutdown, machine) = start(&work, config(1, secs(60)));
        tokio::time::sleep(secs(5)).await;
        let woken = work.store.queue(1);
        work.wake.notify_one();
        tokio::time::sleep(secs(5)).await;
        let polled = work.store.queue(2);
        tokio::time::sleep(secs(120)).await;
        // The wake at 5 s claims at once; the run's end at 6 s restarts the
        // poll, which finds the unannounced run at 66 s.
        assert_eq!(work.runs(), [(woken, 5, 6, None), (polled, 66, 67, None)]);
        stop(shutdown, machine).await;
    }
}
