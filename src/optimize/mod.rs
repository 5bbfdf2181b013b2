//! Prompt optimisation runs: a search for better instructions and few-shot
//! demonstrations, scored by an eval's graders, within a budget of model
//! calls (GEPA's shape: candidates kept on a Pareto front across validation
//! items, each new one proposed from a parent on a training minibatch and
//! kept only when it beats its parent there).
//!
//! A run is leased work like an eval run (`lease.rs`): the search's state
//! is saved after every step under the run's lease, and every random choice
//! comes from the run's seed and the step (`search::rng`), so a run resumed
//! elsewhere redoes at most the step it was in. Items are answered and
//! graded as an eval run's are (`evals::work::RunWork`). Proposals come from
//! the user's candidate instructions first, then alternate between the
//! reflection model (new instructions written from the parent's low-scored
//! answers and the graders' scores) and demonstrations drawn anew from the
//! training items that have a reference answer.
//!
//! Architecture invariant: knows neither tonic nor HTTP.

#![forbid(unsafe_code)]

pub mod model;
pub mod search;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::model::Caller;
use crate::datasets::Purpose;
use crate::datasets::lines::LineReader;
use crate::datasets::model::{DatasetRecord, DatasetState};
use crate::error::{Error, FieldViolation, Result};
use crate::evals::manager::Evals;
use crate::evals::model::{Criterion, DataSource, ItemStatus, RunState, SamplingParams};
use crate::evals::work::{Finished, RunWork, render_messages, split_row};
use crate::graders::service::Batch;
use crate::ids::{self, now_millis};
use crate::inference::ChatRequest;
use crate::lease::{self, Ended, LeaseConfig, LeasedWork, Renewal};
use crate::store::{LeaseKind, LeaseStore, Leased};

use self::model::{Candidate, OptimizationRecord, OptimizationSpec, Origin, Search};
use self::search::Failure;

/// Items a validation or held-out set may hold (every kept candidate is
/// scored on each validation item).
pub const MAX_SCORED_ITEMS: u64 = 2000;
pub const MAX_TRAIN_ITEMS: u64 = 100_000;
pub const MAX_CANDIDATES: usize = 64;
pub const MAX_INSTRUCTION_CHARS: usize = 16_384;
pub const MAX_DEMOS: u32 = 16;
pub const DEFAULT_MINIBATCH: u32 = 8;
pub const DEFAULT_CONCURRENCY: u32 = 8;
/// Low-scored answers shown to the reflection model per proposal.
const FAILURES_SHOWN: usize = 4;

/// What a caller asks for.
#[derive(Clone, Debug, Default)]
pub struct CreateOptimization {
    pub name: String,
    pub eval_id: String,
    pub model: String,
    pub input_messages: Vec<Value>,
    pub sampling: SamplingParams,
    pub instructions: String,
    pub candidate_instructions: Vec<String>,
    pub reflection_model: Option<String>,
    pub train_dataset_id: String,
    pub validation_dataset_id: String,
    pub test_dataset_id: Option<String>,
    pub max_demos: u32,
    pub demo_answer_field: Option<String>,
    pub minibatch_size: u32,
    pub max_model_calls: u64,
    pub seed: u64,
    pub concurrency: u32,
}

/// The prompt optimisation service and its runner.
pub struct Optimizer {
    evals: Arc<Evals>,
    wake: Notify,
    /// Runs this process works on, to stop on cancel.
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Optimizer {
    pub fn new(evals: Arc<Evals>) -> Self {
        Self {
            evals,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
        }
    }

    pub async fn create(&self, caller: &Caller, req: CreateOptimization) -> Result<OptimizationRecord> {
        let eval = self.evals.get_eval(caller, &req.eval_id).await.map_err(|e| match e {
            Error::InvalidArgument(_) => Error::invalid("eval_id", format!("{:?} is not an eval id", req.eval_id)),
            e => e,
        })?;
        let mut v = Vec::new();
        if req.name.chars().count() > 256 {
            v.push(FieldViolation::new("name", "at most 256 characters"));
        }
        if req.input_messages.is_empty() {
            v.push(FieldViolation::new(
                "input_messages",
                "give the messages that follow the instructions, e.g. a user message \"{{ item.text }}\"",
            ));
        }
        self.evals.check_model(caller, "model", &req.model, &mut v).await?;
        if let Some(reflector) = &req.reflection_model {
            self.evals
                .check_model(caller, "reflection_model", reflector, &mut v)
                .await?;
        }
        if req.instructions.chars().count() > MAX_INSTRUCTION_CHARS {
            v.push(FieldViolation::new(
                "instructions",
                format!("at most {MAX_INSTRUCTION_CHARS} characters"),
            ));
        }
        if req.candidate_instructions.len() > MAX_CANDIDATES {
            v.push(FieldViolation::new(
                "candidate_instructions",
                format!("at most {MAX_CANDIDATES}"),
            ));
        }
        for (i, c) in req.candidate_instructions.iter().enumerate() {
            if c.trim().is_empty() || c.chars().count() > MAX_INSTRUCTION_CHARS {
                v.push(FieldViolation::new(
                    format!("candidate_instructions[{i}]"),
                    format!("1 to {MAX_INSTRUCTION_CHARS} characters"),
                ));
            }
        }
        if req.max_demos > MAX_DEMOS {
            v.push(FieldViolation::new("max_demos", format!("at most {MAX_DEMOS}")));
        }
        match (&req.demo_answer_field, req.max_demos) {
            (None, 1..) => v.push(FieldViolation::new(
                "demo_answer_field",
                "demonstrations need the pointer to a training item's reference answer, e.g. /label",
            )),
            (Some(pointer), _) => {
                if let Err(Error::InvalidArgument(p)) =
                    crate::datasets::manager::check_pointer(pointer, "demo_answer_field")
                {
                    v.extend(p);
                }
            }
            _ => {}
        }
        let minibatch = if req.minibatch_size == 0 {
            DEFAULT_MINIBATCH
        } else {
            req.minibatch_size
        };
        if minibatch > 100 {
            v.push(FieldViolation::new("minibatch_size", "at most 100 (0: 8)"));
        }
        let concurrency = if req.concurrency == 0 {
            DEFAULT_CONCURRENCY
        } else {
            req.concurrency
        };
        if concurrency > 64 {
            v.push(FieldViolation::new("concurrency", "at most 64 (0: 8)"));
        }
        if req.max_model_calls == 0 {
            v.push(FieldViolation::new(
                "budget.max_model_calls",
                "a prompt optimisation needs a budget of model calls",
            ));
        }
        let train = self
            .dataset(caller, "train_dataset_id", &req.train_dataset_id, &mut v)
            .await?;
        let validation = self
            .dataset(caller, "validation_dataset_id", &req.validation_dataset_id, &mut v)
            .await?;
        let test = match &req.test_dataset_id {
            Some(id) => self.dataset(caller, "test_dataset_id", id, &mut v).await?,
            None => None,
        };
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let (Some(train), Some(validation)) = (train, validation) else {
            return Err(Error::Internal("validated optimisation without its datasets".into()));
        };
        // Every item renders the templates: found now, not as errors later.
        let train_rows = self
            .check_rows("train_dataset_id", &train, MAX_TRAIN_ITEMS, &req.input_messages)
            .await?;
        let validation_rows = self
            .check_rows(
                "validation_dataset_id",
                &validation,
                MAX_SCORED_ITEMS,
                &req.input_messages,
            )
            .await?
            .len() as u64;
        let test_rows = match &test {
            Some(t) => self
                .check_rows("test_dataset_id", t, MAX_SCORED_ITEMS, &req.input_messages)
                .await?
                .len() as u64,
            None => 0,
        };
        if req.max_demos > 0
            && let Some(pointer) = &req.demo_answer_field
        {
            let eligible = train_rows.iter().filter(|r| reference(r, pointer).is_some()).count();
            if eligible == 0 {
                return Err(Error::invalid(
                    "demo_answer_field",
                    format!("no training item of {} has an answer at {pointer}", train.id),
                ));
            }
        }
        let calls_per_item = 1 + crate::evals::manager::grader_calls(&eval);
        // The original on every validation item, and the comparison on the
        // held-out items, must fit; the search spends what is left.
        let needed = calls_per_item * (validation_rows + 2 * test_rows);
        if req.max_model_calls < needed {
            return Err(Error::invalid(
                "budget.max_model_calls",
                format!(
                    "{} calls cannot cover scoring the original prompt on the {validation_rows} validation items \
                     and comparing it on the {test_rows} held-out ones, which takes {needed} ({calls_per_item} per item)",
                    req.max_model_calls
                ),
            ));
        }
        let run = OptimizationRecord {
            id: ids::new_id("popt"),
            project: eval.project.clone(),
            spec: OptimizationSpec {
                name: req.name,
                eval_id: eval.id.clone(),
                model: req.model,
                input_messages: req.input_messages,
                sampling: req.sampling,
                instructions: req.instructions,
                candidate_instructions: req.candidate_instructions,
                reflection_model: req.reflection_model,
                train_dataset_id: train.id.clone(),
                validation_dataset_id: validation.id.clone(),
                test_dataset_id: test.map(|t| t.id),
                max_demos: req.max_demos,
                demo_answer_field: req.demo_answer_field,
                minibatch_size: minibatch,
                max_model_calls: req.max_model_calls,
                calls_per_item,
                seed: req.seed,
                concurrency,
            },
            state: RunState::Queued,
            search: Search::default(),
            error: None,
            created_at: now_millis(),
            started_at: None,
            finished_at: None,
            lease_owner: None,
            lease_expires_at: None,
        };
        self.evals.store.insert_optimization(&run).await?;
        self.wake.notify_one();
        Ok(run)
    }

    pub async fn get(&self, caller: &Caller, id: &str) -> Result<OptimizationRecord> {
        if !ids::is_valid("popt", id) {
            return Err(Error::invalid(
                "id",
                format!("{id:?} is not a prompt optimization id (popt_ followed by 26 characters)"),
            ));
        }
        self.evals
            .store
            .get_optimization(id)
            .await?
            .filter(|o| caller.sees(&o.project))
            .ok_or_else(|| Error::not_found("prompt optimization", id))
    }

    /// Cancels a run that has not finished; its search so far is kept.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<OptimizationRecord> {
        let run = self.get(caller, id).await?;
        let from = [RunState::Queued, RunState::InProgress];
        match self
            .evals
            .store
            .finish_optimization(id, &from, RunState::Canceled, None, now_millis())
            .await?
        {
            Some(run) => {
                if let Some(stop) = self.running.lock().ok().and_then(|r| r.get(id).cloned()) {
                    stop.cancel();
                }
                Ok(run)
            }
            None => Err(Error::precondition(
                "OPTIMIZATION_STATE",
                id,
                format!(
                    "prompt optimization {id} is {}; it cannot be canceled",
                    run.state.as_str()
                ),
            )),
        }
    }

    /// A dataset the caller can see, ready and of a purpose that holds items.
    async fn dataset(
        &self,
        caller: &Caller,
        field: &str,
        id: &str,
        v: &mut Vec<FieldViolation>,
    ) -> Result<Option<DatasetRecord>> {
        if !ids::is_valid("ds", id) {
            v.push(FieldViolation::new(field, format!("{id:?} is not a dataset id")));
            return Ok(None);
        }
        let d = self
            .evals
            .store
            .get_dataset(id)
            .await?
            .filter(|d| caller.sees(&d.project))
            .ok_or_else(|| Error::not_found("dataset", id))?;
        if d.state != DatasetState::Ready {
            v.push(FieldViolation::new(field, format!("dataset {id} failed validation")));
            return Ok(None);
        }
        if !matches!(d.purpose, Purpose::Eval | Purpose::Sft | Purpose::Rft) {
            v.push(FieldViolation::new(
                field,
                format!(
                    "dataset {id} was uploaded for {}; items come from eval, sft or rft data",
                    d.purpose.as_str()
                ),
            ));
            return Ok(None);
        }
        Ok(Some(d))
    }

    /// The dataset's rows as items (each row's `item` when it has one).
    async fn rows(&self, dataset: &DatasetRecord) -> Result<Vec<Value>> {
        let blobs = self.evals.blobs.clone();
        let (sha256, size) = (dataset.sha256.clone(), dataset.bytes);
        let handle = tokio::runtime::Handle::current();
        let lines = tokio::task::spawn_blocking(move || {
            LineReader::new(&handle, &blobs, &sha256, size).collect::<std::result::Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| Error::Internal(format!("reading a dataset: {e}")))??;
        lines
            .into_iter()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_slice::<Value>(&line)
                    .map(|row| split_row(row).0)
                    .map_err(|e| Error::Internal(format!("row {} of dataset {} is not JSON: {e}", i + 1, dataset.id)))
            })
            .collect()
    }

    /// Checks every row renders the templates; returns the items.
    async fn check_rows(
        &self,
        field: &str,
        dataset: &DatasetRecord,
        max: u64,
        templates: &[Value],
    ) -> Result<Vec<Value>> {
        let rows = self.rows(dataset).await?;
        if rows.is_empty() || rows.len() as u64 > max {
            return Err(Error::invalid(
                field,
                format!("dataset {} has {} items; give 1 to {max}", dataset.id, rows.len()),
            ));
        }
        for (i, row) in rows.iter().enumerate() {
            if let Err(e) = render_messages(templates, row) {
                return Err(Error::invalid(
                    "input_messages",
                    format!("row {} of dataset {}: {e}", i + 1, dataset.id),
                ));
            }
        }
        Ok(rows)
    }
}

/// A training item's reference answer.
fn reference(item: &Value, pointer: &str) -> Option<String> {
    crate::datasets::extract_label(item, pointer).filter(|r| !r.trim().is_empty())
}

/// Starts the runner; it returns after `shutdown` once its runs have stopped.
pub fn spawn(optimizer: Arc<Optimizer>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let config = LeaseConfig {
        worker_id: optimizer.evals.config.worker_id.clone(),
        lease: optimizer.evals.config.lease,
        poll: optimizer.evals.config.poll,
        max_concurrent: optimizer.evals.config.max_concurrent_runs,
        only: None,
    };
    lease::spawn(optimizer, config, shutdown)
}

#[async_trait]
impl LeasedWork for Optimizer {
    const KIND: LeaseKind = LeaseKind::Optimization;
    type Item = OptimizationRecord;
    type Stop = CancellationToken;

    fn leases(&self) -> &dyn LeaseStore {
        &*self.evals.store
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }

    fn span(&self, id: &str) -> tracing::Span {
        tracing::info_span!("prompt_optimization", optimization_id = %id)
    }

    fn claimed(&self, item: Leased) -> Result<OptimizationRecord> {
        let run = item.into_optimization()?;
        tracing::info!(run = %run.id, steps = run.search.steps, "claimed prompt optimization");
        Ok(run)
    }

    fn renewed(&self, item: Option<Leased>) -> Renewal<()> {
        match item.and_then(|item| item.into_optimization().ok()).map(|run| run.state) {
            Some(RunState::InProgress) => Renewal::Held,
            _ => Renewal::Lost(()),
        }
    }

    async fn run(self: Arc<Self>, run: OptimizationRecord, stop: CancellationToken) -> Ended {
        let id = run.id.clone();
        if let Ok(mut running) = self.running.lock() {
            running.insert(id.clone(), stop.clone());
        }
        let end = Run::setup(&self, run, &stop).await;

        let end = match end {
            Ok(mut r) => r.search(&stop).await,
            Err(e) => Err(e),
        };
        if let Ok(mut running) = self.running.lock() {
            running.remove(&id);
        }
        let (to, error) = match end {
            Ok(true) => (RunState::Completed, None),
            // Cancelled, taken over, shutting down: someone else decides.
            Ok(false) => return Ended::Stopped,
            Err(_) if stop.is_cancelled() => return Ended::Stopped,
            Err(e) => (RunState::Failed, Some(e.to_string())),
        };
        let from = [RunState::InProgress];
        if let Err(e) = self
            .evals
            .store
            .finish_optimization(&id, &from, to, error.as_deref(), now_millis())
            .await
        {
            tracing::error!(run = %id, error = %e, "could not record how the prompt optimization ended");
        }
        Ended::Finished
    }
}

/// How a candidate did on some items.
struct Scored {
    scores: Vec<f64>,
    passed: Vec<bool>,
    finished: Vec<Finished>,
}

impl Scored {
    fn sum(&self) -> f64 {
        self.scores.iter().sum()
    }
}

/// A claimed run with what it reads once: the eval's graders and the items.
struct Run {
    optimizer: Arc<Optimizer>,
    record: OptimizationRecord,
    criteria: Vec<(Criterion, Batch)>,
    train: Vec<Value>,
    validation: Vec<Value>,
    test: Vec<Value>,
    /// Training items with a reference answer (for demonstrations).
    eligible: Vec<u64>,
    /// Cancelled when the run is, is taken over, or the worker stops.
    stop: CancellationToken,
}

impl Run {
    async fn setup(optimizer: &Arc<Optimizer>, record: OptimizationRecord, stop: &CancellationToken) -> Result<Run> {
        let evals = &optimizer.evals;
        let spec = &record.spec;
        let eval = evals
            .store
            .get_eval(&spec.eval_id)
            .await?
            .ok_or_else(|| Error::Internal(format!("eval {} no longer exists", spec.eval_id)))?;
        let criteria = evals.criteria(&eval, &record.project).await.map_err(Error::Internal)?;
        let load = |id: &str| {
            let id = id.to_string();
            async move {
                let d = evals
                    .store
                    .get_dataset(&id)
                    .await?
                    .ok_or_else(|| Error::Internal(format!("dataset {id} no longer exists")))?;
                optimizer.rows(&d).await
            }
        };
        let train = load(&spec.train_dataset_id).await?;
        let validation = load(&spec.validation_dataset_id).await?;
        let test = match &spec.test_dataset_id {
            Some(id) => load(id).await?,
            None => Vec::new(),
        };
        let eligible = match &spec.demo_answer_field {
            Some(pointer) => (0..train.len() as u64)
                .filter(|&i| reference(&train[i as usize], pointer).is_some())
                .collect(),
            None => Vec::new(),
        };
        Ok(Run {
            optimizer: optimizer.clone(),
            record,
            criteria,
            train,
            validation,
            test,
            eligible,
            stop: stop.clone(),
        })
    }

    /// The demonstrations' messages and answers.
    fn demo_messages(&self, demos: &[u64]) -> Vec<(Vec<Value>, String)> {
        let pointer = self.record.spec.demo_answer_field.as_deref().unwrap_or("");
        demos
            .iter()
            .filter_map(|&i| {
                let item = self.train.get(i as usize)?;
                let input = render_messages(&self.record.spec.input_messages, item).ok()?;
                Some((input, reference(item, pointer)?))
            })
            .collect()
    }

    /// Answers and grades `items` (indices into `set`) with a prompt.
    async fn score(&mut self, instructions: &str, demos: &[u64], set: Set, items: &[u64]) -> Result<Scored> {
        let spec = &self.record.spec;
        let prompt = search::assemble(instructions, &self.demo_messages(demos), spec.input_messages.clone());
        let work = Arc::new(RunWork {
            source: DataSource::Model {
                model: spec.model.clone(),
                input_messages: prompt,
                item_reference: None,
                sampling: spec.sampling.clone(),
                tools: None,
                response_format: None,
            },
            model: self.optimizer.evals.model.clone(),
            criteria: self.criteria.clone(),
        });
        let rows = match set {
            Set::Train => &self.train,
            Set::Validation => &self.validation,
            Set::Test => &self.test,
        };
        let lines: Vec<(u64, Vec<u8>)> = items
            .iter()
            .map(|&i| (i, serde_json::to_vec(&rows[i as usize]).unwrap_or_default()))
            .collect();
        let all = futures::stream::iter(lines)
            .map(|(i, line)| {
                let work = work.clone();
                async move { work.process(i, line).await }
            })
            .buffered(spec.concurrency.max(1) as usize)
            .collect::<Vec<Finished>>();
        let finished = tokio::select! {
            biased;
            () = self.stop.cancelled() => return Err(Error::Cancelled("the run was stopped".into())),
            finished = all => finished,
        };
        let search = &mut self.record.search;
        search.calls_used += spec.calls_per_item * finished.len() as u64;
        search.tokens_used += finished
            .iter()
            .flat_map(|f| f.usage.values())
            .map(|(p, c, t)| (p + c).max(*t))
            .sum::<u64>();
        let scores = finished
            .iter()
            .map(|f| {
                if f.status == ItemStatus::Error || f.detail.results.is_empty() {
                    0.0
                } else {
                    f.detail.results.iter().map(|r| r.score).sum::<f64>() / f.detail.results.len() as f64
                }
            })
            .collect();
        let passed = finished.iter().map(|f| f.status == ItemStatus::Pass).collect();
        Ok(Scored {
            scores,
            passed,
            finished,
        })
    }

    /// Saves the search; false when the run is no longer this worker's.
    async fn save(&self) -> Result<bool> {
        // Each claim holds the lease under a name of its own (`lease.rs`).
        let Some(worker) = self.record.lease_owner.as_deref() else {
            return Ok(false);
        };
        Ok(self
            .optimizer
            .evals
            .store
            .save_optimization(&self.record.id, worker, &self.record.search)
            .await?)
    }

    fn remaining(&self) -> u64 {
        self.record
            .spec
            .max_model_calls
            .saturating_sub(self.record.search.calls_used)
    }

    /// Runs the search to its end: true when it completed, false when it
    /// was stopped (cancelled, taken over, shut down).
    async fn search(&mut self, stop: &CancellationToken) -> Result<bool> {
        let cpi = self.record.spec.calls_per_item;
        let validation: Vec<u64> = (0..self.validation.len() as u64).collect();
        if self.record.search.candidates.is_empty() {
            let instructions = self.record.spec.instructions.clone();
            let scored = self.score(&instructions, &[], Set::Validation, &validation).await?;
            self.record.search.candidates.push(Candidate {
                instructions,
                demos: Vec::new(),
                origin: Origin::Original,
                parent: None,
                scores: scored.scores,
                passed: scored.passed,
            });
            if !self.save().await? {
                return Ok(false);
            }
        }
        let reserve = 2 * cpi * self.test.len() as u64;
        let minibatch = self.record.spec.minibatch_size as u64;
        let stopped = loop {
            if stop.is_cancelled() {
                return Ok(false);
            }
            let search = &self.record.search;
            if search.candidates.len() >= MAX_CANDIDATES {
                break format!("kept {MAX_CANDIDATES} candidates, the most a run keeps");
            }
            // A step: the parent and the child on a minibatch, perhaps a
            // reflection, and the child on every validation item.
            let step_cost = 2 * minibatch.min(self.train.len() as u64) * cpi + 1 + cpi * validation.len() as u64;
            if self.remaining() < step_cost + reserve {
                break format!(
                    "the budget: {} of {} model calls spent, and a step takes up to {step_cost}",
                    search.calls_used, self.record.spec.max_model_calls
                );
            }
            let step = search.steps;
            let mut rng = search::rng(self.record.spec.seed, step);
            let given = self.record.spec.candidate_instructions.len() as u64;
            let given_tried = search.given_tried;
            let can_reflect = self.record.spec.reflection_model.is_some();
            let can_demo = self.record.spec.max_demos > 0 && !self.eligible.is_empty();
            let origin = if given_tried < given {
                Origin::Given
            } else {
                match (can_reflect, can_demo) {
                    (true, true) if step.is_multiple_of(2) => Origin::Reflection,
                    (true, true) => Origin::Demonstrations,
                    (true, false) => Origin::Reflection,
                    (false, true) => Origin::Demonstrations,
                    (false, false) => {
                        break "every given candidate was tried, and no reflection model \
                                             or demonstrations can propose more"
                            .to_string();
                    }
                }
            };
            let parent = search::pareto_parent(&search.candidates, &mut rng);
            let batch = search::sample(self.train.len() as u64, minibatch as usize, &mut rng);
            let (p_instructions, p_demos) = {
                let p = &self.record.search.candidates[parent];
                (p.instructions.clone(), p.demos.clone())
            };
            let parent_scored = self.score(&p_instructions, &p_demos, Set::Train, &batch).await?;
            let child = match origin {
                Origin::Given => Some((
                    self.record.spec.candidate_instructions[given_tried as usize].clone(),
                    p_demos.clone(),
                )),
                Origin::Demonstrations => {
                    let demos = search::demos(&self.eligible, self.record.spec.max_demos as usize, &mut rng);
                    (demos != p_demos).then(|| (p_instructions.clone(), demos))
                }
                Origin::Reflection | Origin::Original => self
                    .reflect(&p_instructions, &parent_scored)
                    .await?
                    .map(|instructions| (instructions, p_demos.clone())),
            };
            let kept = match child {
                Some((instructions, demos)) => {
                    let child_scored = self.score(&instructions, &demos, Set::Train, &batch).await?;
                    if child_scored.sum() > parent_scored.sum() {
                        let scored = self.score(&instructions, &demos, Set::Validation, &validation).await?;
                        self.record.search.candidates.push(Candidate {
                            instructions,
                            demos,
                            origin,
                            parent: Some(parent),
                            scores: scored.scores,
                            passed: scored.passed,
                        });
                        true
                    } else {
                        false
                    }
                }
                None => false,
            };
            let search = &mut self.record.search;
            if !kept {
                search.rejected += 1;
            }
            if origin == Origin::Given {
                search.given_tried += 1;
            }
            search.steps += 1;
            if !self.save().await? {
                return Ok(false);
            }
        };
        // The end: the best candidate, compared with the original.
        let candidates = &self.record.search.candidates;
        let best = search::best(candidates);
        let (original, winner) = (&candidates[0], &candidates[best]);
        let validation_cmp = search::compare(
            &self.record.spec.validation_dataset_id,
            (&original.scores, &original.passed),
            (&winner.scores, &winner.passed),
        );
        let (b_instructions, b_demos) = (winner.instructions.clone(), winner.demos.clone());
        let test_cmp = match self.record.spec.test_dataset_id.clone() {
            Some(test_id) => {
                let items: Vec<u64> = (0..self.test.len() as u64).collect();
                let original_instructions = self.record.spec.instructions.clone();
                let o = self.score(&original_instructions, &[], Set::Test, &items).await?;
                let b = if best == 0 {
                    Scored {
                        scores: o.scores.clone(),
                        passed: o.passed.clone(),
                        finished: Vec::new(),
                    }
                } else {
                    self.score(&b_instructions, &b_demos, Set::Test, &items).await?
                };
                Some(search::compare(
                    &test_id,
                    (&o.scores, &o.passed),
                    (&b.scores, &b.passed),
                ))
            }
            None => None,
        };
        let search = &mut self.record.search;
        search.best = Some(best);
        search.validation = Some(validation_cmp);
        search.test = test_cmp;
        search.stopped = Some(stopped);
        self.save().await
    }

    /// New instructions from the reflection model, given the parent's
    /// low-scored answers on the minibatch; None when every answer scored
    /// full marks or the model proposed nothing new.
    async fn reflect(&mut self, instructions: &str, parent: &Scored) -> Result<Option<String>> {
        let Some(model) = self.record.spec.reflection_model.clone() else {
            return Ok(None);
        };
        let pointer = self.record.spec.demo_answer_field.clone();
        let failures: Vec<Failure> = parent
            .finished
            .iter()
            .zip(&parent.scores)
            .filter(|(_, score)| **score < 1.0)
            .take(FAILURES_SHOWN)
            .map(|(f, score)| Failure {
                input: f.detail.input.clone(),
                output: f.detail.sample.clone(),
                score: *score,
                feedback: f
                    .detail
                    .results
                    .iter()
                    .map(|r| match &r.error {
                        Some(e) => format!("{}: error ({e})", r.name),
                        None => format!("{}: {:.3}", r.name, r.score),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                reference: pointer.as_deref().and_then(|p| reference(&f.detail.item, p)),
            })
            .collect();
        if failures.is_empty() {
            return Ok(None);
        }
        let request = ChatRequest {
            model,
            messages: search::reflection_messages(instructions, &failures),
            temperature: Some(1.0),
            seed: Some(self.record.spec.seed ^ self.record.search.steps),
            ..Default::default()
        };
        self.record.search.calls_used += 1;
        let answered = tokio::select! {
            biased;
            () = self.stop.cancelled() => return Err(Error::Cancelled("the run was stopped".into())),
            answered = self.optimizer.evals.model.complete(request) => answered,
        };
        let answer = match answered {
            Ok(answer) => answer,
            Err(e) => {
                // A failed proposal is a rejected step, not a failed run.
                tracing::warn!(run = %self.record.id, error = %e, "the reflection model did not answer");
                return Ok(None);
            }
        };
        self.record.search.tokens_used += answer.usage.prompt + answer.usage.completion;
        Ok(
            search::read_instructions(&answer.text, instructions)
                .filter(|i| i.chars().count() <= MAX_INSTRUCTION_CHARS),
        )
    }
}

#[derive(Clone, Copy)]
enum Set {
    Train,
    Validation,
    Test,
}
