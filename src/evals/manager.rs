//! The evals domain service: create evals and runs (with validation of the
//! criteria, the data source and every item), read, cancel, watch and
//! compare runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::model::*;
use super::{schema, stats, work};
use crate::auth::model::Caller;
use crate::blobs::Blobs;
use crate::datasets::lines::LineReader;
use crate::datasets::model::DatasetState;
use crate::datasets::report::Purpose;
use crate::error::{Error, FieldViolation, Result};
use crate::graders::Template;
use crate::graders::service::{Batch, Graders};
use crate::ids::{self, now_millis};
use crate::inference::ChatModel;
use crate::models::Models;
use crate::paging;
use crate::store::{Cursor, EvalQuery, ItemQuery, RunQuery, Store, StoreError};

/// Mark page tokens of ListEvals, ListEvalRuns and ListOutputItems, one
/// per order (and sort), so a token is refused by a listing in another.
const EVALS_TOKEN: [[&str; 2]; 2] = [["evpa1.", "evp1."], ["evpua1.", "evpu1."]];
const RUNS_TOKEN: [&str; 2] = ["erpa1.", "erp1."];
const ITEMS_TOKEN: [&str; 2] = ["eip1.", "eipd1."];
/// Concurrency when a run does not say.
pub const DEFAULT_CONCURRENCY: u32 = 16;
pub const MAX_CONCURRENCY: u32 = 256;
pub const DEFAULT_ERROR_RATE: f64 = 0.5;
/// Items a run finishes before its error rate can fail it.
pub const ERROR_RATE_MIN_ITEMS: u64 = 20;
/// Item problems a CreateEvalRun reports before it stops looking.
const MAX_ITEM_PROBLEMS: usize = 10;
/// Disagreements a comparison lists.
const MAX_DISAGREEMENTS: usize = 1000;

#[derive(Clone, Debug)]
pub struct EvalsConfig {
    /// Runs this process works on at once.
    pub max_concurrent_runs: usize,
    pub lease: Duration,
    pub poll: Duration,
    pub worker_id: String,
}

impl Default for EvalsConfig {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 4,
            lease: Duration::from_secs(15),
            poll: Duration::from_secs(1),
            worker_id: ids::new_id("worker"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CreateEval {
    pub name: String,
    pub item_schema: Option<Value>,
    pub include_sample_schema: bool,
    pub criteria: Vec<NewCriterion>,
    pub metadata: BTreeMap<String, String>,
}

/// What an update of an eval changes: what is None stays as it is.
#[derive(Clone, Debug, Default)]
pub struct UpdateEval {
    pub name: Option<String>,
    /// Replaces the whole metadata (empty clears it).
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Which page of a listing: the first, the one a previous page's token
/// names, or the one after a record the caller names by id (OpenAI's
/// `after`); in the listing's order, its default when None.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// At most 1000; 0 means 20.
    pub size: i32,
    pub token: String,
    pub after_id: Option<String>,
    pub order: Option<Order>,
}

impl Page {
    /// The first page of `size` items after the record `after_id`.
    pub fn after(size: i32, after_id: Option<String>, order: Option<Order>) -> Self {
        Page {
            size,
            token: String::new(),
            after_id,
            order,
        }
    }

    fn order_or(&self, default: Order) -> Order {
        self.order.unwrap_or(default)
    }
}

fn order_index(order: Order) -> usize {
    match order {
        Order::Ascending => 0,
        Order::Descending => 1,
    }
}

/// The model calls the eval's graders make per item (model graders'
/// calls; the eval's graders were validated when it was made).
pub(crate) fn grader_calls(eval: &EvalRecord) -> u64 {
    eval.spec
        .criteria
        .iter()
        .map(|c| crate::graders::parse(&c.grader).map_or(0, |g| crate::graders::service::model_calls(&g)))
        .sum()
}

/// An `after` id that does not name a record of the listing.
fn bad_after(id: &str, what: &str) -> Error {
    Error::invalid("after", format!("{id:?} is not {what}"))
}

/// A token and an id together are ambiguous.
pub(crate) fn one_start(page: &Page) -> Result<()> {
    if page.after_id.is_some() && !page.token.is_empty() {
        return Err(Error::invalid(
            "after",
            "give a page token or an id to start after, not both",
        ));
    }
    Ok(())
}

/// A testing criterion as requested.
#[derive(Clone, Debug, Default)]
pub struct NewCriterion {
    /// A grader object or a `{"name": ...}` reference to a saved grader.
    pub grader: Option<Value>,
    pub pass_threshold: Option<f64>,
    /// What results call the criterion; the grader's name when unset.
    pub name: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CreateRun {
    pub eval_id: String,
    pub dataset_id: String,
    pub source: Option<DataSource>,
    pub concurrency: u32,
    pub error_rate_threshold: f64,
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub budget: Budget,
}

/// What WatchEvalRun streams: progress in order, then the final run once.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved through a bounded channel, never stored
pub enum WatchItem {
    Progress { item: OutputItemRecord, total: u64 },
    End(RunRecord),
}

/// One run against the first on one criterion ("all": whole items).
#[derive(Clone, Debug, PartialEq)]
pub struct PairedTest {
    pub baseline_run_id: String,
    pub run_id: String,
    pub criterion: String,
    pub shared_items: u64,
    pub baseline_only_passed: u64,
    pub run_only_passed: u64,
    pub p_value: f64,
    pub significant: bool,
    pub baseline_pass_rate: f64,
    pub run_pass_rate: f64,
}

#[derive(Clone, Debug)]
pub struct Comparison {
    pub runs: Vec<RunRecord>,
    pub tests: Vec<PairedTest>,
    /// Items whose status differs between runs: index, one status per run.
    pub disagreements: Vec<(u64, Vec<Option<ItemStatus>>)>,
    pub truncated: bool,
}

/// Per-run wake-ups for watchers: the latest sequence number recorded. The
/// store is the truth; this only wakes watchers sooner, and a watch channel
/// holds one value, so nothing queues up.
#[derive(Default)]
pub(crate) struct Bus {
    runs: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Bus {
    pub(crate) fn notify(&self, run_id: &str, seq: u64) {
        let Ok(runs) = self.runs.lock() else { return };
        if let Some(tx) = runs.get(run_id) {
            tx.send_replace(seq);
        }
    }

    /// Wakes the run's watchers for progress another process recorded.
    pub(crate) fn poke(&self, run_id: &str) {
        let Ok(runs) = self.runs.lock() else { return };
        if let Some(tx) = runs.get(run_id) {
            tx.send_modify(|_| {});
        }
    }

    /// Wakes every watcher (wake-ups may have been missed).
    pub(crate) fn poke_all(&self) {
        let Ok(runs) = self.runs.lock() else { return };
        for tx in runs.values() {
            tx.send_modify(|_| {});
        }
    }

    pub(crate) fn subscribe(&self, run_id: &str) -> watch::Receiver<u64> {
        let mut runs = match self.runs.lock() {
            Ok(runs) => runs,
            Err(poisoned) => poisoned.into_inner(),
        };
        runs.retain(|_, tx| tx.receiver_count() > 0);
        runs.entry(run_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

pub struct Evals {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: Blobs,
    pub(crate) graders: Arc<Graders>,
    pub(crate) model: Arc<dyn ChatModel>,
    /// Which local models a project may sample.
    pub(crate) models: Arc<Models>,
    pub(crate) config: EvalsConfig,
    pub(crate) wake: Notify,
    pub(crate) bus: Bus,
    /// Stop tokens of the runs this process is working on.
    pub(crate) running: Mutex<HashMap<String, CancellationToken>>,
}

fn check_id(prefix: &str, field: &str, id: &str, what: &str) -> Result<()> {
    if ids::is_valid(prefix, id) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{id:?} is not {what} ({prefix}_ followed by 26 characters)"),
        ))
    }
}

fn refusal(id: &str, state: RunState) -> Error {
    Error::precondition(
        "EVAL_RUN_STATE",
        id,
        format!("eval run {id} is {}; it cannot be canceled", state.as_str()),
    )
}

impl Evals {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Blobs,
        graders: Arc<Graders>,
        model: Arc<dyn ChatModel>,
        models: Arc<Models>,
        config: EvalsConfig,
    ) -> Self {
        Self {
            store,
            blobs,
            graders,
            model,
            models,
            config,
            wake: Notify::new(),
            bus: Bus::default(),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the caller may sample `model`: names that are no local model
    /// (a provider's) pass, for the chat seam to judge.
    pub(crate) async fn model_visible(&self, caller: &Caller, model: &str) -> Result<bool> {
        match self.models.check_visible(caller, model).await {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds a violation on `field` unless the caller can sample `model`:
    /// visible to it, and served by the chat seam.
    pub(crate) async fn check_model(
        &self,
        caller: &Caller,
        field: &str,
        model: &str,
        v: &mut Vec<FieldViolation>,
    ) -> Result<()> {
        if model.trim().is_empty()
            || !(self.model_visible(caller, model).await? && self.model.serves(model).await.map_err(Error::from)?)
        {
            v.push(FieldViolation::new(
                field,
                format!(
                    "no model is named {model:?}: name a registered base model, a fine-tuned model (ft:...) \
                     or provider/model of a configured provider"
                ),
            ));
        }
        Ok(())
    }

    /// The eval's criteria with their graders ready to grade, for work run
    /// on behalf of `project`.
    pub(crate) async fn criteria(
        &self,
        eval: &EvalRecord,
        project: &str,
    ) -> std::result::Result<Vec<(Criterion, Batch)>, String> {
        let mut criteria = Vec::new();
        for c in &eval.spec.criteria {
            let batch = self
                .graders
                .batch(&Caller::system(project), c.grader.clone())
                .await
                .map_err(|e| format!("criterion {}: {e}", c.name))?;
            criteria.push((c.clone(), batch));
        }
        Ok(criteria)
    }

    pub async fn create_eval(&self, caller: &Caller, req: CreateEval) -> Result<EvalRecord> {
        let mut v = Vec::new();
        let name = check_eval_name(&req.name, &mut v);
        if let Some(s) = &req.item_schema {
            for (pointer, message) in schema::check_schema(s) {
                v.push(FieldViolation::new(
                    format!("item_schema{}", pointer.replace('/', ".")),
                    message,
                ));
            }
        }
        if req.criteria.is_empty() {
            v.push(FieldViolation::new(
                "testing_criteria",
                "give at least one testing criterion",
            ));
        }
        crate::limits::check_metadata("metadata", &req.metadata, &mut v);
        let mut criteria = Vec::new();
        let mut names = BTreeSet::new();
        for (i, c) in req.criteria.into_iter().enumerate() {
            let field = format!("testing_criteria[{i}]");
            let Some(grader) = c.grader else {
                v.push(FieldViolation::new(
                    format!("{field}.grader"),
                    "a grader object or {\"name\": ...} is required",
                ));
                continue;
            };
            let threshold = c.pass_threshold;
            let (json, parsed) = match self
                .graders
                .resolve_checked(caller, grader, &format!("{field}.grader"))
                .await
            {
                Ok(g) => g,
                Err(Error::InvalidArgument(problems)) => {
                    v.extend(problems);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let kind = parsed.kind();
            let pass_threshold = match (kind, threshold) {
                ("string_check" | "label_model", None) => 1.0,
                ("string_check" | "label_model", Some(1.0)) => 1.0,
                ("string_check" | "label_model", Some(_)) => {
                    v.push(FieldViolation::new(
                        format!("{field}.pass_threshold"),
                        format!("{kind} graders pass on a score of 1; leave the threshold out"),
                    ));
                    continue;
                }
                (_, Some(t)) if t.is_finite() => t,
                (_, Some(_)) => {
                    v.push(FieldViolation::new(
                        format!("{field}.pass_threshold"),
                        "must be a finite number",
                    ));
                    continue;
                }
                (_, None) => {
                    v.push(FieldViolation::new(
                        format!("{field}.pass_threshold"),
                        format!("{kind} graders need a pass threshold (the score at or above which an item passes)"),
                    ));
                    continue;
                }
            };
            let (name, name_field) = match c.name {
                Some(name) => {
                    if name.chars().count() > 256 {
                        v.push(FieldViolation::new(format!("{field}.name"), "at most 256 characters"));
                    }
                    (name, format!("{field}.name"))
                }
                None => (parsed.name().to_string(), format!("{field}.grader.name")),
            };
            if !names.insert(name.clone()) {
                v.push(FieldViolation::new(
                    name_field,
                    format!("another criterion is already named {name:?}; criteria need distinct names"),
                ));
            }
            criteria.push(Criterion {
                name,
                grader: json,
                pass_threshold,
            });
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let now = now_millis();
        let eval = EvalRecord {
            id: ids::new_id("eval"),
            project: caller.project.clone(),
            name,
            spec: EvalSpec {
                item_schema: req.item_schema,
                include_sample_schema: req.include_sample_schema,
                criteria,
                metadata: req.metadata,
            },
            created_at: now,
            updated_at: now,
        };
        self.store.insert_eval(&eval).await?;
        Ok(eval)
    }

    /// The eval, if it is the caller's project's (NOT_FOUND otherwise).
    pub async fn get_eval(&self, caller: &Caller, id: &str) -> Result<EvalRecord> {
        check_id("eval", "id", id, "an eval id")?;
        self.store
            .get_eval(id)
            .await?
            .filter(|e| caller.sees(&e.project))
            .ok_or_else(|| Error::not_found("eval", id))
    }

    /// The caller's project's evals, a page at a time: newest first unless
    /// the page asks otherwise, by creation time or by update time.
    pub async fn list_evals(&self, caller: &Caller, sort: EvalSort, page: &Page) -> Result<(Vec<EvalRecord>, String)> {
        one_start(page)?;
        let limit = paging::limit(page.size)?;
        let order = page.order_or(Order::Descending);
        let by_updated = sort == EvalSort::UpdatedAt;
        let prefix = EVALS_TOKEN[by_updated as usize][order_index(order)];
        let position = |e: &EvalRecord| if by_updated { e.updated_at } else { e.created_at };
        let after = match &page.after_id {
            Some(id) => {
                let e = match self.get_eval(caller, id).await {
                    Ok(e) => e,
                    Err(Error::NotFound { .. } | Error::InvalidArgument(_)) => {
                        return Err(bad_after(id, "an eval of this project"));
                    }
                    Err(e) => return Err(e),
                };
                Some(Cursor {
                    created_at: position(&e),
                    id: e.id,
                })
            }
            None => paging::decode_cursor(prefix, &page.token, "ListEvals")?,
        };
        let evals = self
            .store
            .list_evals(&EvalQuery {
                project: caller.project.clone(),
                sort,
                order,
                after,
                limit: limit + 1,
            })
            .await?;
        Ok(paging::split(evals, limit, |e| {
            paging::encode_cursor(prefix, position(e), &e.id)
        }))
    }

    /// Renames the eval or replaces its metadata; its criteria and runs
    /// stay as they are.
    pub async fn update_eval(&self, caller: &Caller, id: &str, req: UpdateEval) -> Result<EvalRecord> {
        let mut v = Vec::new();
        let name = req.name.as_deref().map(|n| check_eval_name(n, &mut v));
        if let Some(m) = &req.metadata {
            crate::limits::check_metadata("metadata", m, &mut v);
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        // Compare-and-set on the time of the version read: a concurrent
        // update of the other field is never lost, only retried over.
        for _ in 0..16 {
            let mut eval = self.get_eval(caller, id).await?;
            let read = eval.updated_at;
            if let Some(name) = &name {
                eval.name = name.clone();
            }
            if let Some(m) = &req.metadata {
                eval.spec.metadata = m.clone();
            }
            eval.updated_at = now_millis().max(read + 1);
            if self.store.update_eval(&eval, read).await? {
                return Ok(eval);
            }
        }
        Err(Error::Unavailable(format!(
            "eval {id} kept changing while it was being updated; try again"
        )))
    }

    /// Deletes the eval with its runs and their output items. Runs that
    /// have not finished stop as they would when canceled (this replica's
    /// at once, other replicas' at their next heartbeat, which finds the
    /// run gone); a watcher of one ends with NOT_FOUND.
    pub async fn delete_eval(&self, caller: &Caller, id: &str) -> Result<EvalRecord> {
        let eval = self.get_eval(caller, id).await?;
        let runs = self
            .store
            .delete_eval(id)
            .await?
            .ok_or_else(|| Error::not_found("eval", id))?;
        for run in &runs {
            self.stop_local(run);
        }
        Ok(eval)
    }

    /// Deletes the run and its output items; a run that has not finished
    /// stops first, as it would when canceled.
    pub async fn delete_run(&self, caller: &Caller, id: &str) -> Result<RunRecord> {
        self.get_run(caller, id).await?;
        let run = self
            .store
            .delete_eval_run(id)
            .await?
            .ok_or_else(|| Error::not_found("eval run", id))?;
        self.stop_local(id);
        Ok(run)
    }

    /// Stops this process's work on a run that is canceled or gone, and
    /// wakes its watchers.
    fn stop_local(&self, run_id: &str) {
        // A runner on another replica learns it from its next heartbeat.
        if let Some(stop) = self.running.lock().ok().and_then(|r| r.get(run_id).cloned()) {
            stop.cancel();
        }
        self.bus.notify(run_id, u64::MAX);
    }

    /// One output item by its id (`OutputItemRecord::id`), if its run is
    /// the caller's project's.
    pub async fn get_item(&self, caller: &Caller, id: &str) -> Result<OutputItemRecord> {
        let (run_id, index) = parse_output_item_id(id).ok_or_else(|| {
            Error::invalid(
                "id",
                format!("{id:?} is not an output item id (outputitem_<run>_<row>)"),
            )
        })?;
        self.get_run(caller, &run_id).await.map_err(|e| match e {
            Error::NotFound { .. } => Error::not_found("output item", id),
            e => e,
        })?;
        self.store
            .get_output_item(&run_id, index)
            .await?
            .ok_or_else(|| Error::not_found("output item", id))
    }

    pub(crate) fn check_source(source: &Option<DataSource>, v: &mut Vec<FieldViolation>) {
        let no_sample = |t: &Template| t.variables().any(|x| x.namespace == crate::graders::Namespace::Sample);
        match source {
            None => v.push(FieldViolation::new(
                "source",
                "give a model to sample (model) or precomputed samples (precomputed)",
            )),
            Some(DataSource::Model {
                model,
                input_messages,
                item_reference,
                sampling,
                ..
            }) => {
                if model.trim().is_empty() {
                    v.push(FieldViolation::new("model.model", "a model is required"));
                }
                match item_reference {
                    None if input_messages.is_empty() => v.push(FieldViolation::new(
                        "model.input_messages",
                        "give at least one message, or an item_reference",
                    )),
                    Some(_) if !input_messages.is_empty() => v.push(FieldViolation::new(
                        "model.item_reference",
                        "give input_messages or an item_reference, not both",
                    )),
                    Some(path) => {
                        if let Err(e) = crate::graders::template::lookup(path, &Value::Null)
                            && !e.contains("does not exist")
                        {
                            v.push(FieldViolation::new("model.item_reference", e));
                        }
                    }
                    None => {}
                }
                for (i, m) in input_messages.iter().enumerate() {
                    let field = format!("model.input_messages[{i}]");
                    if !m.get("role").is_some_and(Value::is_string) {
                        v.push(FieldViolation::new(
                            format!("{field}.role"),
                            "a role string is required",
                        ));
                    }
                    let texts: Vec<&str> = match m.get("content") {
                        Some(Value::String(s)) => vec![s],
                        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text")?.as_str()).collect(),
                        _ => {
                            v.push(FieldViolation::new(
                                format!("{field}.content"),
                                "content is a string or a list of content parts",
                            ));
                            continue;
                        }
                    };
                    for text in texts {
                        match Template::parse(text) {
                            Err(e) => v.push(FieldViolation::new(format!("{field}.content"), e)),
                            Ok(t) if no_sample(&t) => v.push(FieldViolation::new(
                                format!("{field}.content"),
                                "input messages may use {{ item.* }} only; the sample does not exist yet",
                            )),
                            Ok(_) => {}
                        }
                    }
                }
                if let Some(t) = sampling.temperature
                    && !(0.0..=2.0).contains(&t)
                {
                    v.push(FieldViolation::new(
                        "model.sampling_params.temperature",
                        "must be between 0 and 2",
                    ));
                }
                if let Some(p) = sampling.top_p
                    && !(p > 0.0 && p <= 1.0)
                {
                    v.push(FieldViolation::new("model.sampling_params.top_p", "must be in (0, 1]"));
                }
                if sampling.max_tokens == Some(0) {
                    v.push(FieldViolation::new(
                        "model.sampling_params.max_tokens",
                        "must be at least 1",
                    ));
                }
            }
            Some(DataSource::Precomputed { sample_template }) => match Template::parse(sample_template) {
                Err(e) => v.push(FieldViolation::new("precomputed.sample_template", e)),
                Ok(t) if no_sample(&t) => v.push(FieldViolation::new(
                    "precomputed.sample_template",
                    "the sample comes from the item: use {{ item.* }}",
                )),
                Ok(_) => {}
            },
        }
    }

    pub async fn create_run(&self, caller: &Caller, req: CreateRun) -> Result<RunRecord> {
        let eval = self.get_eval(caller, &req.eval_id).await.map_err(|e| match e {
            Error::InvalidArgument(_) => Error::invalid("eval_id", format!("{:?} is not an eval id", req.eval_id)),
            e => e,
        })?;
        let mut v = Vec::new();
        Self::check_source(&req.source, &mut v);
        let concurrency = match req.concurrency {
            0 => DEFAULT_CONCURRENCY,
            c if c <= MAX_CONCURRENCY => c,
            _ => {
                v.push(FieldViolation::new(
                    "concurrency",
                    format!("must be between 0 (default {DEFAULT_CONCURRENCY}) and {MAX_CONCURRENCY}"),
                ));
                DEFAULT_CONCURRENCY
            }
        };
        let threshold = req.error_rate_threshold;
        let error_rate_threshold = if threshold == 0.0 {
            DEFAULT_ERROR_RATE
        } else if threshold > 0.0 && threshold <= 1.0 {
            threshold
        } else {
            v.push(FieldViolation::new(
                "error_rate_threshold",
                "must be in (0, 1], or 0 for the default 0.5",
            ));
            DEFAULT_ERROR_RATE
        };
        if req.name.chars().count() > 256 {
            v.push(FieldViolation::new("name", "at most 256 characters"));
        }
        crate::limits::check_metadata("metadata", &req.metadata, &mut v);
        let dataset = if ids::is_valid("ds", &req.dataset_id) {
            let d = self
                .store
                .get_dataset(&req.dataset_id)
                .await?
                .filter(|d| caller.sees(&d.project))
                .ok_or_else(|| Error::not_found("dataset", &req.dataset_id))?;
            if d.state != DatasetState::Ready {
                return Err(Error::precondition(
                    "DATASET_STATE",
                    &d.id,
                    format!("dataset {} failed validation and cannot be used", d.id),
                ));
            }
            // Fine-tuning rows are items too: a job's validation data is
            // what its checkpoint evals run on.
            if !matches!(d.purpose, Purpose::Eval | Purpose::Sft | Purpose::Rft) {
                v.push(FieldViolation::new(
                    "dataset_id",
                    format!(
                        "dataset {} was uploaded for {}; evals run on eval, sft or rft data",
                        d.id,
                        d.purpose.as_str()
                    ),
                ));
            }
            Some(d)
        } else {
            v.push(FieldViolation::new(
                "dataset_id",
                format!("{:?} is not a dataset id", req.dataset_id),
            ));
            None
        };
        if let Some(DataSource::Model { model, .. }) = &req.source
            && !model.trim().is_empty()
        {
            self.check_model(caller, "model.model", model, &mut v).await?;
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let (Some(dataset), Some(source)) = (dataset, req.source) else {
            return Err(Error::Internal("validated run without a dataset or source".into()));
        };
        let calls_per_item = u64::from(matches!(source, DataSource::Model { .. })) + grader_calls(&eval);
        if let Some(max) = req.budget.max_model_calls
            && max < calls_per_item
        {
            return Err(Error::invalid(
                "budget.max_model_calls",
                format!("{max} calls cannot cover one item, which takes {calls_per_item}"),
            ));
        }
        if req.budget.max_tokens == Some(0) || req.budget.max_model_calls == Some(0) {
            return Err(Error::invalid(
                "budget",
                "a limit of 0 covers nothing; leave it out for no limit",
            ));
        }
        let total = self.check_items(&eval, &dataset, &source).await?;
        let spec = RunSpec {
            budget: req.budget,
            calls_per_item,
            name: req.name,
            dataset_id: dataset.id.clone(),
            source,
            concurrency,
            error_rate_threshold,
            criteria: eval.spec.criteria.iter().map(|c| c.name.clone()).collect(),
            metadata: req.metadata,
        };
        let run = RunRecord {
            id: ids::new_id("evalrun"),
            project: eval.project.clone(),
            eval_id: eval.id.clone(),
            spec,
            state: RunState::Queued,
            total,
            progress: Progress {
                per_criterion: vec![CriterionCounts::default(); eval.spec.criteria.len()],
                ..Default::default()
            },
            error: None,
            created_at: now_millis(),
            started_at: None,
            finished_at: None,
            lease_owner: None,
            lease_expires_at: None,
        };
        if let Err(e) = self.store.insert_eval_run(&run).await {
            // An eval deleted while the run was being made takes precedence.
            if matches!(e, StoreError::Gone(_)) && self.store.get_eval(&eval.id).await?.is_none() {
                return Err(Error::not_found("eval", &eval.id));
            }
            return Err(Error::dataset_gone(e));
        }
        self.wake.notify_one();
        Ok(run)
    }

    /// Reads every item once: each must be JSON, fit the eval's schema and
    /// render the run's templates. Returns the number of items.
    async fn check_items(
        &self,
        eval: &EvalRecord,
        dataset: &crate::datasets::model::DatasetRecord,
        source: &DataSource,
    ) -> Result<u64> {
        let blobs = self.blobs.clone();
        let (sha, size) = (dataset.sha256.clone(), dataset.bytes);
        let item_schema = eval.spec.item_schema.clone();
        let source = source.clone();
        let handle = tokio::runtime::Handle::current();
        let (total, problems, templates) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut problems = Vec::new();
            // A template that does not render fails on item after item:
            // one problem per template, under its own field.
            let mut templates = TemplateProblems::default();
            let mut total = 0u64;
            for (index, line) in LineReader::new(&handle, &blobs, &sha, size).enumerate() {
                let line = line?;
                total += 1;
                let index = index as u64;
                let row: Value = match serde_json::from_slice(&line) {
                    Ok(row) => row,
                    Err(e) => {
                        if problems.len() < MAX_ITEM_PROBLEMS {
                            problems.push(format!("item {index}: not JSON: {e}"));
                        }
                        continue;
                    }
                };
                let (item, row_sample) = work::split_row(row);
                if let Some(s) = &item_schema
                    && problems.len() < MAX_ITEM_PROBLEMS
                {
                    for (pointer, message) in schema::validate(s, &item, 3) {
                        problems.push(format!("item {index} at {:?}: {message}", pointer));
                    }
                }
                match &source {
                    DataSource::Model {
                        input_messages,
                        item_reference: None,
                        ..
                    } => {
                        for (i, m) in input_messages.iter().enumerate() {
                            if let Err(e) = work::render_messages(std::slice::from_ref(m), &item) {
                                templates.add(format!("model.input_messages[{i}]"), index, e);
                            }
                        }
                    }
                    DataSource::Model {
                        input_messages,
                        item_reference: Some(path),
                        ..
                    } => {
                        if let Err(e) = work::input_messages(input_messages, Some(path), &item) {
                            templates.add("model.item_reference".into(), index, e);
                        }
                    }
                    DataSource::Precomputed { sample_template } => {
                        if let Err(e) = work::precomputed_sample(sample_template, &item, row_sample.as_ref()) {
                            if sample_template.is_empty() {
                                if problems.len() < MAX_ITEM_PROBLEMS {
                                    problems.push(format!("item {index}: {e}"));
                                }
                            } else {
                                templates.add("precomputed.sample_template".into(), index, e);
                            }
                        }
                    }
                }
            }
            Ok((total, problems, templates))
        })
        .await
        .map_err(|e| Error::Internal(format!("reading the dataset failed: {e}")))??;
        let mut violations = templates.violations();
        violations.extend(
            problems
                .into_iter()
                .take(MAX_ITEM_PROBLEMS)
                .map(|p| FieldViolation::new("dataset_id", p)),
        );
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        if total == 0 {
            return Err(Error::invalid("dataset_id", "the dataset has no items"));
        }
        Ok(total)
    }

    /// The run, if it is the caller's project's (NOT_FOUND otherwise).
    pub async fn get_run(&self, caller: &Caller, id: &str) -> Result<RunRecord> {
        let run = self.load_run(id).await?;
        if caller.sees(&run.project) {
            Ok(run)
        } else {
            Err(Error::not_found("eval run", id))
        }
    }

    /// Any project's run: for the server's own work on a run already checked.
    async fn load_run(&self, id: &str) -> Result<RunRecord> {
        check_id("evalrun", "id", id, "an eval run id")?;
        self.store
            .get_eval_run(id)
            .await?
            .ok_or_else(|| Error::not_found("eval run", id))
    }

    /// An eval's runs, optionally of one state: newest first unless the
    /// page asks otherwise.
    pub async fn list_runs(
        &self,
        caller: &Caller,
        eval_id: &str,
        state: Option<RunState>,
        page: &Page,
    ) -> Result<(Vec<RunRecord>, String)> {
        check_id("eval", "eval_id", eval_id, "an eval id")?;
        self.get_eval(caller, eval_id).await?;
        one_start(page)?;
        let limit = paging::limit(page.size)?;
        let order = page.order_or(Order::Descending);
        let prefix = RUNS_TOKEN[order_index(order)];
        let after = match &page.after_id {
            Some(id) => match self.get_run(caller, id).await {
                Ok(run) if run.eval_id == eval_id => Some(Cursor {
                    created_at: run.created_at,
                    id: run.id,
                }),
                Ok(_) | Err(Error::NotFound { .. } | Error::InvalidArgument(_)) => {
                    return Err(bad_after(id, "a run of this eval"));
                }
                Err(e) => return Err(e),
            },
            None => paging::decode_cursor(prefix, &page.token, "ListEvalRuns")?,
        };
        let runs = self
            .store
            .list_eval_runs(&RunQuery {
                eval_id: eval_id.to_string(),
                state,
                order,
                after,
                limit: limit + 1,
            })
            .await?;
        Ok(paging::split(runs, limit, |r| {
            paging::encode_cursor(prefix, r.created_at, &r.id)
        }))
    }

    /// Cancels a queued or running run: no item is dispatched after this,
    /// and the items in flight are dropped, not recorded.
    pub async fn cancel_run(&self, caller: &Caller, id: &str) -> Result<RunRecord> {
        let run = self.get_run(caller, id).await?;
        if run.state.is_terminal() {
            return Err(refusal(id, run.state));
        }
        let from = [RunState::Queued, RunState::InProgress];
        let Some(run) = self
            .store
            .finish_eval_run(id, &from, RunState::Canceled, None, Some(now_millis()))
            .await?
        else {
            let state = self.load_run(id).await?.state;
            return Err(refusal(id, state));
        };
        self.stop_local(id);
        Ok(run)
    }

    /// A run's output items, optionally of one status: in dataset order
    /// unless the page asks for the reverse.
    pub async fn list_items(
        &self,
        caller: &Caller,
        run_id: &str,
        status: Option<ItemStatus>,
        page: &Page,
    ) -> Result<(Vec<OutputItemRecord>, String)> {
        self.get_run(caller, run_id).await?;
        one_start(page)?;
        let limit = paging::limit(page.size)?;
        let order = page.order_or(Order::Ascending);
        let prefix = ITEMS_TOKEN[order_index(order)];
        let after_index = match &page.after_id {
            Some(id) => match parse_output_item_id(id) {
                Some((run, index)) if run == run_id => Some(index),
                _ => return Err(bad_after(id, "an output item of this run")),
            },
            None if page.token.is_empty() => None,
            None => Some(
                page.token
                    .strip_prefix(prefix)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        Error::invalid(
                            "page_token",
                            "not a page token from a previous ListOutputItems response",
                        )
                    })?,
            ),
        };
        let items = self
            .store
            .list_output_items(&ItemQuery {
                run_id: run_id.to_string(),
                status,
                order,
                after_index,
                limit: limit + 1,
            })
            .await?;
        Ok(paging::split(items, limit, |i| format!("{prefix}{}", i.index)))
    }

    /// Progress after `after_seq`, then live progress, then the final run.
    /// The stream is bounded: a client that stops reading holds only its own
    /// small buffer and catches up from the store when it reads again.
    pub async fn watch(
        self: &Arc<Self>,
        caller: &Caller,
        run_id: &str,
        after_seq: u64,
    ) -> Result<mpsc::Receiver<Result<WatchItem>>> {
        self.get_run(caller, run_id).await?;
        let (tx, rx) = mpsc::channel(32);
        let evals = self.clone();
        let id = run_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = evals.feed_watcher(&id, after_seq, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    async fn feed_watcher(&self, id: &str, after_seq: u64, tx: &mpsc::Sender<Result<WatchItem>>) -> Result<()> {
        // Subscribe before reading so nothing recorded in between is missed.
        let mut live = self.bus.subscribe(id);
        let mut last = after_seq;
        let mut total = self.load_run(id).await?.total;
        loop {
            live.borrow_and_update();
            let mut terminal = None;
            loop {
                let page = self.store.list_output_items_by_seq(id, last, 256).await?;
                let n = page.len();
                for item in page {
                    last = item.seq;
                    if tx.send(Ok(WatchItem::Progress { item, total })).await.is_err() {
                        return Ok(());
                    }
                }
                if n == 256 {
                    continue;
                }
                // Nothing is recorded after a run ends, so once it has ended
                // one more read of the log is the last.
                if terminal.is_some() {
                    break;
                }
                let run = self.load_run(id).await?;
                total = run.total;
                if !run.state.is_terminal() {
                    break;
                }
                terminal = Some(run);
            }
            if let Some(run) = terminal {
                let _ = tx.send(Ok(WatchItem::End(run))).await;
                return Ok(());
            }
            // Woken by this process's runner, or now and then for runs on
            // other replicas; either way the store says what happened.
            let _ = tokio::time::timeout(self.config.poll, live.changed()).await;
        }
    }

    /// Compares runs of one eval: the first is the baseline.
    pub async fn compare(&self, caller: &Caller, run_ids: &[String]) -> Result<Comparison> {
        if run_ids.len() < 2 {
            return Err(Error::invalid("run_ids", "compare two or more runs"));
        }
        if run_ids.len() > 16 {
            return Err(Error::invalid("run_ids", "compare at most 16 runs"));
        }
        let mut v = Vec::new();
        for (i, id) in run_ids.iter().enumerate() {
            if !ids::is_valid("evalrun", id) {
                v.push(FieldViolation::new(
                    format!("run_ids[{i}]"),
                    format!("{id:?} is not an eval run id"),
                ));
            } else if run_ids[..i].contains(id) {
                v.push(FieldViolation::new(
                    format!("run_ids[{i}]"),
                    format!("run {id} is listed twice"),
                ));
            }
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let mut runs = Vec::new();
        for id in run_ids {
            runs.push(self.get_run(caller, id).await?);
        }
        for (i, run) in runs.iter().enumerate().skip(1) {
            if run.eval_id != runs[0].eval_id {
                v.push(FieldViolation::new(
                    format!("run_ids[{i}]"),
                    format!(
                        "run {} belongs to eval {}, not {}; only runs of one eval compare",
                        run.id, run.eval_id, runs[0].eval_id
                    ),
                ));
            }
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        // Per run: index -> (status, per-criterion pass, None when errored).
        type Outcomes = BTreeMap<u64, (ItemStatus, Vec<Option<bool>>)>;
        let mut outcomes: Vec<Outcomes> = Vec::new();
        for run in &runs {
            let mut map = Outcomes::new();
            let mut after = None;
            loop {
                let page = self
                    .store
                    .list_output_items(&ItemQuery::all(&run.id, after, 1000))
                    .await?;
                let n = page.len();
                for item in page {
                    after = Some(item.index);
                    let per = item
                        .detail
                        .results
                        .iter()
                        .map(|r| r.error.is_none().then_some(r.passed))
                        .collect();
                    map.insert(item.index, (item.status, per));
                }
                if n < 1000 {
                    break;
                }
            }
            outcomes.push(map);
        }
        let criteria = runs[0].spec.criteria.clone();
        let mut tests = Vec::new();
        for (j, run) in runs.iter().enumerate().skip(1) {
            let names = std::iter::once("all".to_string()).chain(criteria.iter().cloned());
            for (c, name) in names.enumerate() {
                let pick = |o: &(ItemStatus, Vec<Option<bool>>)| -> Option<bool> {
                    if c == 0 {
                        match o.0 {
                            ItemStatus::Pass => Some(true),
                            ItemStatus::Fail => Some(false),
                            ItemStatus::Error => None,
                        }
                    } else {
                        o.1.get(c - 1).copied().flatten()
                    }
                };
                let (mut shared, mut base_pass, mut run_pass, mut b, mut cc) = (0u64, 0u64, 0u64, 0u64, 0u64);
                for (index, base) in &outcomes[0] {
                    let (Some(x), Some(y)) = (pick(base), outcomes[j].get(index).and_then(pick)) else {
                        continue;
                    };
                    shared += 1;
                    base_pass += x as u64;
                    run_pass += y as u64;
                    match (x, y) {
                        (true, false) => b += 1,
                        (false, true) => cc += 1,
                        _ => {}
                    }
                }
                let p_value = stats::mcnemar_exact(b, cc);
                tests.push(PairedTest {
                    baseline_run_id: runs[0].id.clone(),
                    run_id: run.id.clone(),
                    criterion: name,
                    shared_items: shared,
                    baseline_only_passed: b,
                    run_only_passed: cc,
                    p_value,
                    significant: p_value < 0.05,
                    baseline_pass_rate: stats::rate(base_pass, shared),
                    run_pass_rate: stats::rate(run_pass, shared),
                });
            }
        }
        let indices: BTreeSet<u64> = outcomes.iter().flat_map(|o| o.keys().copied()).collect();
        let mut disagreements = Vec::new();
        let mut truncated = false;
        for index in indices {
            let statuses: Vec<Option<ItemStatus>> = outcomes.iter().map(|o| o.get(&index).map(|x| x.0)).collect();
            if statuses.iter().all(|s| *s == statuses[0]) {
                continue;
            }
            if disagreements.len() == MAX_DISAGREEMENTS {
                truncated = true;
                break;
            }
            disagreements.push((index, statuses));
        }
        Ok(Comparison {
            runs,
            tests,
            disagreements,
            truncated,
        })
    }
}

/// An eval's name, trimmed: 1 to 256 characters.
fn check_eval_name(name: &str, v: &mut Vec<FieldViolation>) -> String {
    let name = name.trim().to_string();
    if name.is_empty() || name.chars().count() > 256 {
        v.push(FieldViolation::new("name", "an eval name is 1 to 256 characters"));
    }
    name
}

/// A criterion's pass rate with its 95% Wilson interval.
#[derive(Clone, Debug, PartialEq)]
pub struct CriterionSummary {
    pub name: String,
    pub counts: CriterionCounts,
    pub pass_rate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Pass rates per criterion from a run's tallies.
pub fn summarize(criteria: &[String], progress: &Progress) -> Vec<CriterionSummary> {
    criteria
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let counts = progress.per_criterion.get(i).cloned().unwrap_or_default();
            let n = counts.passed + counts.failed;
            let (ci_low, ci_high) = stats::wilson(counts.passed, n);
            CriterionSummary {
                name: name.clone(),
                pass_rate: stats::rate(counts.passed, n),
                counts,
                ci_low,
                ci_high,
            }
        })
        .collect()
}

/// Items per second over the time the run spent running.
pub fn throughput(progress: &Progress) -> f64 {
    if progress.elapsed_ms == 0 {
        return 0.0;
    }
    progress.completed as f64 / (progress.elapsed_ms as f64 / 1000.0)
}

/// Template failures over a run's items, one entry per template field:
/// the first failing item, its reason, and how many items failed.
#[derive(Default)]
struct TemplateProblems {
    by_field: std::collections::BTreeMap<String, (u64, String, u64)>,
}

impl TemplateProblems {
    fn add(&mut self, field: String, index: u64, reason: String) {
        self.by_field
            .entry(field)
            .and_modify(|(_, _, n)| *n += 1)
            .or_insert((index, reason, 1));
    }

    fn violations(self) -> Vec<FieldViolation> {
        self.by_field
            .into_iter()
            .map(|(field, (first, reason, n))| {
                let more = match n {
                    1 => String::new(),
                    n => format!(" (and {} more items)", n - 1),
                };
                FieldViolation::new(field, format!("does not render for item {first}{more}: {reason}"))
            })
            .collect()
    }
}
