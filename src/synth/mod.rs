//! Datasets made from what models answered: distillation (a model's graded
//! answers become SFT rows) and preference pairs (a preferred and a
//! non-preferred answer to one input become DPO rows).
//!
//! The answers come from eval runs, so generating them is durable, leased,
//! resumable, budgeted by the run's items and watched like any run; this
//! module reads a finished run's recorded items and writes the rows it keeps
//! through the datasets service's upload, so the result is validated like any
//! file. Each row carries a `metadata` object saying which run, item and
//! scores it came from; the dataset's metadata names its source runs.
//!
//! Architecture invariant: this module only composes the evals and datasets
//! services (what a caller may see, validation, storage are theirs); it knows
//! neither tonic nor HTTP nor the store.

#![forbid(unsafe_code)]

pub mod calls;
mod rows;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::model::Caller;
use crate::completions::{self, Completions};
use crate::datasets::manager::{Datasets, OnInvalid, UploadMeta};
use crate::datasets::model::DatasetRecord;
use crate::datasets::{Purpose, report::PurposeChoice};
use crate::error::{Error, FieldViolation, Result};
use crate::evals::manager::{Evals, Page};
use crate::evals::model::{DataSource, ItemStatus, Order, OutputItemRecord, RunRecord};
use crate::ids;

pub use rows::Answer;

/// Metadata keys the service adds to every dataset it makes.
const SOURCE_KEYS: usize = 2;

/// A distillation: without a criterion, the run's items that passed every
/// criterion are kept; with one, those scoring at least `min_score` on it.
#[derive(Clone, Debug)]
pub struct Distill {
    pub run_id: String,
    pub criterion: Option<String>,
    pub min_score: Option<f64>,
    /// SFT rows (the default) or eval items: the run's items with the
    /// answer as `answer_field` (default "answer").
    pub purpose: Option<Purpose>,
    pub answer_field: Option<String>,
    pub filename: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Target calls from function definitions, as eval items.
#[derive(Clone, Debug, Default)]
pub struct ToolCallItems {
    pub tools: Vec<Value>,
    /// Candidate values for arguments by name.
    pub values: BTreeMap<String, Vec<Value>>,
    /// Default [`DEFAULT_CALLS`], at most [`MAX_CALLS`].
    pub max_calls: Option<u64>,
    pub seed: u64,
    pub filename: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

pub const DEFAULT_CALLS: u64 = 1000;
pub const MAX_CALLS: u64 = 100_000;
/// Function definitions in one request at most.
pub const MAX_TOOLS: usize = 1024;

/// Where a pair's preferred answer comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Preferred {
    /// Another run of the same eval over the same dataset: on each item, the
    /// higher-scored of the two answers.
    Run(String),
    /// A JSON pointer into each item to its reference answer.
    Reference(String),
}

#[derive(Clone, Debug)]
pub struct Pairs {
    pub run_id: String,
    pub preferred: Preferred,
    pub criterion: Option<String>,
    pub min_margin: f64,
    pub filename: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Where a pair's preferred answer comes from, once checked.
enum Mode {
    /// The other run's id.
    Run(String),
    Reference(String),
}

/// What became of a run's items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub items: u64,
    pub kept: u64,
    pub below_threshold: u64,
    pub errored: u64,
    pub unusable: u64,
}

/// Items read per store round trip.
const PAGE: i32 = 1000;
/// Rows gathered into one chunk of the upload.
const CHUNK_BYTES: usize = 256 << 10;

/// A dataset of stored chat completions: those of the filter's model and
/// metadata, oldest first, as SFT rows (the request's messages, then the
/// first choice's answer) or as eval items (the messages, with the answer
/// as `answer_field`).
#[derive(Clone, Debug, Default)]
pub struct FromCompletions {
    pub filter: completions::Filter,
    pub purpose: Option<Purpose>,
    pub answer_field: Option<String>,
    /// At most this many rows (all that match when None).
    pub limit: Option<u64>,
    pub filename: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

pub struct Synth {
    datasets: Arc<Datasets>,
    evals: Arc<Evals>,
    completions: Arc<Completions>,
}

impl Synth {
    pub fn new(datasets: Arc<Datasets>, evals: Arc<Evals>, completions: Arc<Completions>) -> Self {
        Self {
            datasets,
            evals,
            completions,
        }
    }

    /// An SFT dataset of the run's kept items (input messages, then the
    /// model's answer), or eval items of them with their answers.
    pub async fn distill(&self, caller: &Caller, req: Distill) -> Result<(DatasetRecord, Counts)> {
        let mut problems = Vec::new();
        check_run_id("run_id", &req.run_id, &mut problems);
        let purpose = req.purpose.unwrap_or(Purpose::Sft);
        if !matches!(purpose, Purpose::Sft | Purpose::Eval) {
            problems.push(FieldViolation::new(
                "purpose",
                "a distilled dataset is SFT rows or eval items",
            ));
        }
        let answer_field = answer_field(req.answer_field.as_deref(), purpose, &mut problems);
        match (&req.criterion, req.min_score) {
            (None, Some(_)) => problems.push(FieldViolation::new(
                "criterion",
                "name the criterion min_score applies to",
            )),
            (Some(_), None) => problems.push(FieldViolation::new(
                "min_score",
                "give the score an item needs on the criterion to be kept",
            )),
            (_, Some(min)) if !min.is_finite() => {
                problems.push(FieldViolation::new("min_score", "must be a finite number"))
            }
            _ => {}
        }
        let metadata = dataset_metadata(&req.metadata, "distillation", Some(&req.run_id), &mut problems);
        check_filename(req.filename.as_deref(), &mut problems);
        if !problems.is_empty() {
            return Err(Error::InvalidArgument(problems));
        }
        let run = self.sampled_run(caller, "run_id", &req.run_id).await?;
        let tools = run_tools(&run);
        let criterion = match (&req.criterion, req.min_score) {
            (Some(name), Some(min)) => Some((criterion_index(&run, name, "criterion")?, min)),
            _ => None,
        };
        let model = run.spec.model().to_string();
        let run_id = run.id.clone();
        let filename = req.filename.unwrap_or_else(|| format!("distilled-{run_id}.jsonl"));
        let evals = self.evals.clone();
        let reader_caller = caller.clone();
        let subject = run_id.clone();
        self.write(
            caller,
            &subject,
            filename,
            purpose,
            metadata,
            move |mut out| async move {
                let mut counts = Counts::default();
                let mut items = Items::new(evals, reader_caller, run_id.clone());
                while let Some(item) = items.next().await? {
                    counts.items += 1;
                    if item.status == ItemStatus::Error {
                        counts.errored += 1;
                        continue;
                    }
                    let keep = match criterion {
                        None => item.status == ItemStatus::Pass,
                        Some((i, min)) => score(&item, i).is_some_and(|s| s >= min),
                    };
                    if !keep {
                        counts.below_threshold += 1;
                        continue;
                    }
                    let answer = Answer::of(&item);
                    let usable = match purpose {
                        Purpose::Eval => {
                            answer.is_text()
                                && item.detail.item.as_object().is_some_and(|o| {
                                    !o.contains_key(&answer_field) && !o.contains_key(&format!("{answer_field}_from"))
                                })
                        }
                        _ => !answer.is_empty() && !item.detail.input.is_empty(),
                    };
                    if !usable {
                        counts.unusable += 1;
                        continue;
                    }
                    let provenance = json!({
                        "source": "distillation",
                        "run_id": run_id,
                        "output_item_id": item.id(),
                        "model": model,
                        "scores": scores(&item),
                    });
                    let row = match purpose {
                        Purpose::Eval => rows::eval_item(&item.detail.item, &answer_field, &answer, provenance),
                        _ => rows::sft(&item.detail.input, tools.as_ref(), &answer, provenance),
                    };
                    counts.kept += 1;
                    out.row(&row).await?;
                }
                Ok((counts, out))
            },
        )
        .await
    }

    /// An SFT dataset (or eval items) of the caller's stored chat
    /// completions that match the filter.
    pub async fn from_completions(&self, caller: &Caller, req: FromCompletions) -> Result<(DatasetRecord, Counts)> {
        let mut problems = Vec::new();
        let purpose = req.purpose.unwrap_or(Purpose::Sft);
        if !matches!(purpose, Purpose::Sft | Purpose::Eval) {
            problems.push(FieldViolation::new(
                "purpose",
                "stored completions become SFT rows or eval items",
            ));
        }
        let answer_field = answer_field(req.answer_field.as_deref(), purpose, &mut problems);
        if req.limit == Some(0) {
            problems.push(FieldViolation::new(
                "limit",
                "must be at least 1 (leave it out for all)",
            ));
        }
        crate::limits::check_metadata("completion_metadata", &req.filter.metadata, &mut problems);
        let metadata = dataset_metadata(&req.metadata, "stored_completions", None, &mut problems);
        check_filename(req.filename.as_deref(), &mut problems);
        if !problems.is_empty() {
            return Err(Error::InvalidArgument(problems));
        }
        let filename = req.filename.unwrap_or_else(|| "stored-completions.jsonl".to_string());
        let completions = self.completions.clone();
        let reader_caller = caller.clone();
        let filter = req.filter;
        let limit = req.limit.unwrap_or(u64::MAX);
        self.write(caller, "", filename, purpose, metadata, move |mut out| async move {
            let mut counts = Counts::default();
            let mut token = String::new();
            'pages: loop {
                let page = Page {
                    size: PAGE,
                    token: token.clone(),
                    after_id: None,
                    order: Some(Order::Ascending),
                };
                let (stored, next) = completions.list(&reader_caller, &filter, &page).await?;
                for completion in stored {
                    if counts.kept == limit {
                        break 'pages;
                    }
                    counts.items += 1;
                    let answer = completion.answer().map(Answer::of_message);
                    let input = completion.messages();
                    let usable = match (&answer, purpose) {
                        (Some(a), Purpose::Eval) => a.is_text(),
                        (Some(a), _) => !a.is_empty(),
                        (None, _) => false,
                    };
                    let Some(answer) = answer.filter(|_| usable && !input.is_empty()) else {
                        counts.unusable += 1;
                        continue;
                    };
                    let tools = completion.request.get("tools").filter(|t| !t.is_null());
                    let provenance = json!({
                        "source": "stored_completions",
                        "completion_id": completion.id,
                        "model": completion.model,
                        "metadata": completion.metadata,
                    });
                    let row = match purpose {
                        Purpose::Eval => {
                            let mut item = json!({"messages": input});
                            if let Some(tools) = tools {
                                item["tools"] = tools.clone();
                            }
                            rows::eval_item(&item, &answer_field, &answer, provenance)
                        }
                        _ => rows::sft(input, tools, &answer, provenance),
                    };
                    counts.kept += 1;
                    out.row(&row).await?;
                }
                if next.is_empty() {
                    break;
                }
                token = next;
            }
            Ok((counts, out))
        })
        .await
    }

    /// A DPO dataset of preference pairs from the run's graded answers.
    pub async fn pairs(&self, caller: &Caller, req: Pairs) -> Result<(DatasetRecord, Counts)> {
        let mut problems = Vec::new();
        check_run_id("run_id", &req.run_id, &mut problems);
        match &req.preferred {
            Preferred::Run(id) => {
                check_run_id("preferred_run_id", id, &mut problems);
                if *id == req.run_id {
                    problems.push(FieldViolation::new("preferred_run_id", "name another run than run_id"));
                }
            }
            Preferred::Reference(pointer) => {
                if let Err(Error::InvalidArgument(v)) =
                    crate::datasets::manager::check_pointer(pointer, "reference_field")
                {
                    problems.extend(v);
                }
            }
        }
        if !(req.min_margin.is_finite() && req.min_margin >= 0.0) {
            problems.push(FieldViolation::new("min_margin", "must be 0 or more"));
        }
        let sources = match &req.preferred {
            Preferred::Run(other) => format!("{},{other}", req.run_id),
            Preferred::Reference(_) => req.run_id.clone(),
        };
        let metadata = dataset_metadata(&req.metadata, "preference_pairs", Some(&sources), &mut problems);
        check_filename(req.filename.as_deref(), &mut problems);
        if !problems.is_empty() {
            return Err(Error::InvalidArgument(problems));
        }
        let run = self.sampled_run(caller, "run_id", &req.run_id).await?;
        let criterion = match &req.criterion {
            Some(name) => criterion_index(&run, name, "criterion")?,
            None if run.spec.criteria.len() == 1 => 0,
            None => {
                return Err(Error::invalid(
                    "criterion",
                    format!(
                        "run {} has {} criteria ({}); name the one whose scores decide",
                        run.id,
                        run.spec.criteria.len(),
                        run.spec.criteria.join(", ")
                    ),
                ));
            }
        };
        let mode = match &req.preferred {
            Preferred::Run(id) => {
                let other = self.sampled_run(caller, "preferred_run_id", id).await?;
                let mut v = Vec::new();
                if other.eval_id != run.eval_id {
                    v.push(FieldViolation::new(
                        "preferred_run_id",
                        format!(
                            "run {} belongs to eval {}, not {}",
                            other.id, other.eval_id, run.eval_id
                        ),
                    ));
                }
                if other.spec.dataset_id != run.spec.dataset_id {
                    v.push(FieldViolation::new(
                        "preferred_run_id",
                        format!(
                            "run {} sampled dataset {}, not {}: answers pair only on the same items",
                            other.id, other.spec.dataset_id, run.spec.dataset_id
                        ),
                    ));
                }
                if other.spec.criteria.get(criterion) != run.spec.criteria.get(criterion) {
                    v.push(FieldViolation::new(
                        "preferred_run_id",
                        format!("run {} was graded on other criteria", other.id),
                    ));
                }
                if !v.is_empty() {
                    return Err(Error::InvalidArgument(v));
                }
                Mode::Run(other.id)
            }
            Preferred::Reference(pointer) => Mode::Reference(pointer.clone()),
        };
        let tools = run_tools(&run);
        let run_id = run.id.clone();
        let criterion_name = run.spec.criteria[criterion].clone();
        let filename = req.filename.unwrap_or_else(|| format!("pairs-{run_id}.jsonl"));
        let evals = self.evals.clone();
        let reader_caller = caller.clone();
        let margin = req.min_margin;
        let subject = run_id.clone();
        self.write(
            caller,
            &subject,
            filename,
            Purpose::Dpo,
            metadata,
            move |mut out| async move {
                let mut counts = Counts::default();
                let mut items = Items::new(evals.clone(), reader_caller.clone(), run_id.clone());
                match mode {
                    Mode::Reference(pointer) => {
                        while let Some(item) = items.next().await? {
                            counts.items += 1;
                            let Some(outcome) = item.detail.results.get(criterion) else {
                                counts.errored += 1;
                                continue;
                            };
                            if item.status == ItemStatus::Error || outcome.error.is_some() {
                                counts.errored += 1;
                                continue;
                            }
                            if outcome.passed {
                                counts.below_threshold += 1;
                                continue;
                            }
                            let answer = Answer::of(&item);
                            let reference = crate::datasets::extract_label(&item.detail.item, &pointer);
                            let Some(reference) = reference
                                .filter(|r| !r.trim().is_empty() && answer.is_text() && r.trim() != answer.text.trim())
                            else {
                                counts.unusable += 1;
                                continue;
                            };
                            if item.detail.input.is_empty() {
                                counts.unusable += 1;
                                continue;
                            }
                            let provenance = json!({
                                "source": "preference_pairs",
                                "output_item_id": item.id(),
                                "criterion": criterion_name,
                                "preferred": {"reference_field": pointer},
                                "non_preferred": {"run_id": run_id, "score": outcome.score},
                            });
                            let row = rows::dpo(
                                &item.detail.input,
                                tools.as_ref(),
                                &Answer::text(&reference),
                                &answer,
                                provenance,
                            );
                            counts.kept += 1;
                            out.row(&row).await?;
                        }
                    }
                    Mode::Run(other) => {
                        let mut theirs = Items::new(evals, reader_caller, other);
                        let mut next_theirs = theirs.next().await?;
                        while let Some(mine) = items.next().await? {
                            counts.items += 1;
                            while next_theirs.as_ref().is_some_and(|t| t.index < mine.index) {
                                next_theirs = theirs.next().await?;
                            }
                            let Some(their) = next_theirs.as_ref().filter(|t| t.index == mine.index) else {
                                counts.unusable += 1;
                                continue;
                            };
                            let (Some(a), Some(b)) = (graded(&mine, criterion), graded(their, criterion)) else {
                                counts.errored += 1;
                                continue;
                            };
                            if (a - b).abs() <= margin {
                                counts.below_threshold += 1;
                                continue;
                            }
                            let (win, lose, win_score, lose_score) = if b > a {
                                (their, &mine, b, a)
                            } else {
                                (&mine, their, a, b)
                            };
                            let (good, bad) = (Answer::of(win), Answer::of(lose));
                            if !good.is_text() || !bad.is_text() || good.text.trim() == bad.text.trim() {
                                counts.unusable += 1;
                                continue;
                            }
                            if mine.detail.input.is_empty() {
                                counts.unusable += 1;
                                continue;
                            }
                            let provenance = json!({
                                "source": "preference_pairs",
                                "output_item_id": mine.id(),
                                "criterion": criterion_name,
                                "preferred": {"run_id": win.run_id, "score": win_score},
                                "non_preferred": {"run_id": lose.run_id, "score": lose_score},
                            });
                            // The runs rendered the same item with the same
                            // templates or not: the input is the one the
                            // non-preferred answer was given.
                            let input = &lose.detail.input;
                            let row = rows::dpo(input, tools.as_ref(), &good, &bad, provenance);
                            counts.kept += 1;
                            out.row(&row).await?;
                        }
                    }
                }
                Ok((counts, out))
            },
        )
        .await
    }

    /// An eval dataset of target calls enumerated from function
    /// definitions (`calls`), one item per call.
    pub async fn tool_call_items(
        &self,
        caller: &Caller,
        req: ToolCallItems,
    ) -> Result<(DatasetRecord, Vec<calls::FunctionPlan>)> {
        let mut problems = Vec::new();
        let max_calls = req.max_calls.unwrap_or(DEFAULT_CALLS);
        if max_calls > MAX_CALLS {
            problems.push(FieldViolation::new("max_calls", format!("at most {MAX_CALLS}")));
        }
        if req.tools.len() > MAX_TOOLS {
            problems.push(FieldViolation::new("tools", format!("at most {MAX_TOOLS} functions")));
        }
        let metadata = dataset_metadata(&req.metadata, "tool_calls", None, &mut problems);
        check_filename(req.filename.as_deref(), &mut problems);
        if !problems.is_empty() {
            return Err(Error::InvalidArgument(problems));
        }
        let plan = calls::plan(&req.tools, &req.values, max_calls, req.seed).map_err(Error::InvalidArgument)?;
        let tools_by_name: BTreeMap<String, Value> = req
            .tools
            .iter()
            .filter_map(|t| {
                let def = t.get("function").unwrap_or(t);
                let name = def.get("name")?.as_str()?.to_string();
                Some((name, json!({"type": "function", "function": def})))
            })
            .collect();
        let filename = req.filename.unwrap_or_else(|| "tool-calls.jsonl".to_string());
        let functions = plan.functions.clone();
        let (dataset, _) = self
            .write(
                caller,
                "",
                filename,
                Purpose::Eval,
                metadata,
                move |mut out| async move {
                    let mut counts = Counts::default();
                    for call in plan.calls {
                        counts.items += 1;
                        counts.kept += 1;
                        out.row(&rows::call_item(&call, &tools_by_name[&call.function])).await?;
                    }
                    Ok((counts, out))
                },
            )
            .await?;
        Ok((dataset, functions))
    }

    /// The run, which must have finished and sampled a model.
    async fn sampled_run(&self, caller: &Caller, field: &str, id: &str) -> Result<RunRecord> {
        let run = self.evals.get_run(caller, id).await?;
        if !run.state.is_terminal() {
            return Err(Error::precondition(
                "RUN_STATE",
                &run.id,
                format!(
                    "run {} is {}; a dataset is made from a finished run",
                    run.id,
                    run.state.as_str()
                ),
            ));
        }
        if !matches!(run.spec.source, DataSource::Model { .. }) {
            return Err(Error::invalid(
                field,
                format!(
                    "run {} graded precomputed samples; name a run that sampled a model",
                    run.id
                ),
            ));
        }
        Ok(run)
    }

    /// Uploads the rows `produce` writes as a dataset of `purpose`; nothing
    /// is stored when no row was kept or a row does not validate.
    async fn write<F, Fut>(
        &self,
        caller: &Caller,
        run_id: &str,
        filename: String,
        purpose: Purpose,
        metadata: BTreeMap<String, String>,
        produce: F,
    ) -> Result<(DatasetRecord, Counts)>
    where
        F: FnOnce(RowSink) -> Fut,
        Fut: std::future::Future<Output = Result<(Counts, RowSink)>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(4);
        let rows = produce(RowSink::new(tx.clone()));
        let producer = tokio::spawn(async move {
            let produced = match rows.await {
                Ok((counts, mut sink)) => sink.flush().await.map(|()| counts),
                Err(e) => Err(e),
            };
            if let Err(e) = &produced {
                // The upload must not store what came before the failure.
                let _ = tx.send(Err(Error::Internal(format!("making rows failed: {e}")))).await;
            }
            produced
        });
        let meta = UploadMeta {
            filename,
            purpose: Some(PurposeChoice::Exactly(purpose)),
            display_name: String::new(),
            metadata,
            label_field: None,
            on_invalid: OnInvalid::Refuse,
        };
        let uploaded = self.datasets.upload(caller, meta, ReceiverStream::new(rx)).await;
        let counts = producer
            .await
            .map_err(|e| Error::Internal(format!("synthesis task failed: {e}")))?;
        // The producer's error is the cause when both failed (the upload saw
        // its stream end early).
        let counts = counts?;
        if counts.kept == 0 {
            if let Ok(record) = &uploaded {
                self.datasets.delete(caller, &record.id).await?;
            }
            return Err(Error::precondition(
                "NO_ROWS",
                run_id,
                format!(
                    "no item made a row: of {} items, {} did not meet the selection, {} errored and {} had no usable answer",
                    counts.items, counts.below_threshold, counts.errored, counts.unusable
                ),
            ));
        }
        Ok((uploaded?, counts))
    }
}

/// Where a producer writes its rows: JSON lines gathered into chunks.
pub struct RowSink {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: Vec<u8>,
}

impl RowSink {
    fn new(tx: mpsc::Sender<Result<Bytes>>) -> Self {
        Self { tx, buf: Vec::new() }
    }

    async fn row(&mut self, row: &Value) -> Result<()> {
        serde_json::to_writer(&mut self.buf, row).map_err(|e| Error::Internal(format!("row: {e}")))?;
        self.buf.push(b'\n');
        if self.buf.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        // A closed channel means the upload stopped (its own error says why).
        self.tx
            .send(Ok(chunk))
            .await
            .map_err(|_| Error::Internal("the upload stopped reading rows".into()))
    }
}

/// A run's items in dataset order, a page at a time.
struct Items {
    evals: Arc<Evals>,
    caller: Caller,
    run_id: String,
    page: std::vec::IntoIter<OutputItemRecord>,
    after: Option<String>,
    done: bool,
}

impl Items {
    fn new(evals: Arc<Evals>, caller: Caller, run_id: String) -> Self {
        Self {
            evals,
            caller,
            run_id,
            page: Vec::new().into_iter(),
            after: None,
            done: false,
        }
    }

    async fn next(&mut self) -> Result<Option<OutputItemRecord>> {
        loop {
            if let Some(item) = self.page.next() {
                self.after = Some(item.id());
                return Ok(Some(item));
            }
            if self.done {
                return Ok(None);
            }
            let page = Page::after(PAGE, self.after.clone(), Some(Order::Ascending));
            let (items, next) = self.evals.list_items(&self.caller, &self.run_id, None, &page).await?;
            self.done = next.is_empty();
            self.page = items.into_iter();
        }
    }
}

/// The field eval items carry their answer in ("answer" unless named).
fn answer_field(given: Option<&str>, purpose: Purpose, out: &mut Vec<FieldViolation>) -> String {
    match (given, purpose) {
        (Some(_), Purpose::Sft) => {
            out.push(FieldViolation::new(
                "answer_field",
                "only eval items take an answer field",
            ));
            String::new()
        }
        (Some(f), _) if f.is_empty() || f.chars().count() > 64 => {
            out.push(FieldViolation::new(
                "answer_field",
                "a field name of 1 to 64 characters",
            ));
            String::new()
        }
        (Some(f), _) => f.to_string(),
        (None, _) => "answer".to_string(),
    }
}

fn check_run_id(field: &str, id: &str, out: &mut Vec<FieldViolation>) {
    if !ids::is_valid("evalrun", id) {
        out.push(FieldViolation::new(field, format!("{id:?} is not an eval run id")));
    }
}

fn check_filename(filename: Option<&str>, out: &mut Vec<FieldViolation>) {
    if filename.is_some_and(|f| f.chars().count() > 255) {
        out.push(FieldViolation::new("filename", "at most 255 characters"));
    }
}

/// The caller's metadata plus the source keys.
fn dataset_metadata(
    given: &BTreeMap<String, String>,
    how: &str,
    runs: Option<&str>,
    out: &mut Vec<FieldViolation>,
) -> BTreeMap<String, String> {
    if given.len() + SOURCE_KEYS > crate::limits::METADATA_PAIRS {
        out.push(FieldViolation::new(
            "metadata",
            format!(
                "at most {} key-value pairs (the dataset also records its source)",
                crate::limits::METADATA_PAIRS - SOURCE_KEYS
            ),
        ));
    }
    crate::limits::check_metadata("metadata", given, out);
    let mut metadata = given.clone();
    metadata.insert("lathe.synthesis".into(), how.into());
    if let Some(runs) = runs {
        metadata.insert("lathe.source_runs".into(), runs.into());
    }
    metadata
}

fn criterion_index(run: &RunRecord, name: &str, field: &str) -> Result<usize> {
    run.spec.criteria.iter().position(|c| c == name).ok_or_else(|| {
        Error::invalid(
            field,
            format!(
                "run {} has no criterion {name:?} (it has {})",
                run.id,
                run.spec.criteria.join(", ")
            ),
        )
    })
}

/// The tools the run's model was offered, which its answers may call.
fn run_tools(run: &RunRecord) -> Option<Value> {
    match &run.spec.source {
        DataSource::Model { tools: Some(tools), .. } if !tools.is_null() => Some(tools.clone()),
        _ => None,
    }
}

/// The item's score on criterion `i`, when it was graded without error.
fn score(item: &OutputItemRecord, i: usize) -> Option<f64> {
    item.detail
        .results
        .get(i)
        .filter(|o| o.error.is_none())
        .map(|o| o.score)
}

/// The score of an item that did not error.
fn graded(item: &OutputItemRecord, i: usize) -> Option<f64> {
    if item.status == ItemStatus::Error {
        return None;
    }
    score(item, i)
}

fn scores(item: &OutputItemRecord) -> Value {
    Value::Object(
        item.detail
            .results
            .iter()
            .map(|o| (o.name.clone(), json!(o.score)))
            .collect(),
    )
}
