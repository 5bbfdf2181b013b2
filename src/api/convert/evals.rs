//! Evals, runs and output items: domain <-> wire.

use crate::error::Error;
use crate::evals::manager::{self as em, Comparison, CreateEval, CreateRun, NewCriterion, Page, UpdateEval};
use crate::evals::model as ev;
use crate::proto;
use crate::proto::json::{json_from_struct, json_list, list_value, struct_from_json};
use crate::proto::timestamp;

pub fn create_eval(req: proto::CreateEvalRequest) -> CreateEval {
    CreateEval {
        name: req.name,
        item_schema: req.item_schema.map(json_from_struct),
        include_sample_schema: req.include_sample_schema,
        criteria: req
            .testing_criteria
            .into_iter()
            .map(|c| NewCriterion {
                grader: c.grader.map(json_from_struct),
                pass_threshold: c.pass_threshold,
                name: (!c.name.is_empty()).then_some(c.name),
            })
            .collect(),
        metadata: req.metadata.into_iter().collect(),
    }
}

pub fn create_eval_run(req: proto::CreateEvalRunRequest) -> Result<CreateRun, Error> {
    use proto::create_eval_run_request::Source;
    let source = match req.source {
        None => None,
        Some(Source::Model(m)) => {
            let s = m.sampling_params.unwrap_or_default();
            Some(ev::DataSource::Model {
                model: m.model,
                input_messages: json_list(m.input_messages),
                item_reference: (!m.item_reference.is_empty()).then_some(m.item_reference),
                sampling: ev::SamplingParams {
                    temperature: s.temperature,
                    top_p: s.top_p,
                    max_tokens: s.max_tokens,
                    seed: s.seed,
                    stop: s.stop,
                },
                tools: m.tools.map(|t| serde_json::Value::Array(json_list(Some(t)))),
                response_format: m.response_format.map(json_from_struct),
            })
        }
        Some(Source::Precomputed(p)) => Some(ev::DataSource::Precomputed {
            sample_template: p.sample_template,
        }),
    };
    Ok(CreateRun {
        eval_id: req.eval_id,
        dataset_id: req.dataset_id,
        source,
        concurrency: req.concurrency,
        error_rate_threshold: req.error_rate_threshold,
        name: req.name,
        metadata: req.metadata.into_iter().collect(),
        budget: req
            .budget
            .map(|b| ev::Budget {
                max_model_calls: (b.max_model_calls > 0).then_some(b.max_model_calls),
                max_tokens: (b.max_tokens > 0).then_some(b.max_tokens),
            })
            .unwrap_or_default(),
    })
}

pub fn update_eval(req: proto::UpdateEvalRequest) -> UpdateEval {
    UpdateEval {
        name: req.name,
        metadata: req.replace_metadata.then(|| req.metadata.into_iter().collect()),
    }
}

pub fn order(v: i32) -> Result<Option<ev::Order>, Error> {
    match proto::ListOrder::try_from(v) {
        Ok(proto::ListOrder::Unspecified) => Ok(None),
        Ok(proto::ListOrder::Ascending) => Ok(Some(ev::Order::Ascending)),
        Ok(proto::ListOrder::Descending) => Ok(Some(ev::Order::Descending)),
        Err(_) => Err(Error::invalid("order", format!("{v} is not a ListOrder"))),
    }
}

pub fn eval_sort(v: i32) -> Result<ev::EvalSort, Error> {
    match proto::EvalSortField::try_from(v) {
        Ok(proto::EvalSortField::Unspecified | proto::EvalSortField::CreatedAt) => Ok(ev::EvalSort::CreatedAt),
        Ok(proto::EvalSortField::UpdatedAt) => Ok(ev::EvalSort::UpdatedAt),
        Err(_) => Err(Error::invalid("sort", format!("{v} is not an EvalSortField"))),
    }
}

/// A List request's page: its size, token and order.
pub fn page(size: i32, token: String, order: i32) -> Result<Page, Error> {
    Ok(Page {
        size,
        token,
        after_id: None,
        order: self::order(order)?,
    })
}

pub fn run_state_from_proto(v: i32) -> Result<Option<ev::RunState>, Error> {
    match proto::EvalRunState::try_from(v) {
        Ok(proto::EvalRunState::Unspecified) => Ok(None),
        Ok(proto::EvalRunState::Queued) => Ok(Some(ev::RunState::Queued)),
        Ok(proto::EvalRunState::InProgress) => Ok(Some(ev::RunState::InProgress)),
        Ok(proto::EvalRunState::Completed) => Ok(Some(ev::RunState::Completed)),
        Ok(proto::EvalRunState::Failed) => Ok(Some(ev::RunState::Failed)),
        Ok(proto::EvalRunState::Canceled) => Ok(Some(ev::RunState::Canceled)),
        Err(_) => Err(Error::invalid("state", format!("{v} is not an EvalRunState"))),
    }
}

pub fn eval(e: ev::EvalRecord) -> proto::Eval {
    proto::Eval {
        id: e.id,
        name: e.name,
        item_schema: e.spec.item_schema.as_ref().map(struct_from_json),
        testing_criteria: e
            .spec
            .criteria
            .into_iter()
            .map(|c| proto::TestingCriterion {
                grader: Some(struct_from_json(&c.grader)),
                pass_threshold: Some(c.pass_threshold),
                name: c.name,
            })
            .collect(),
        created_at: Some(timestamp(e.created_at)),
        metadata: e.spec.metadata.into_iter().collect(),
        updated_at: Some(timestamp(e.updated_at)),
        include_sample_schema: e.spec.include_sample_schema,
    }
}

fn run_state(s: ev::RunState) -> proto::EvalRunState {
    match s {
        ev::RunState::Queued => proto::EvalRunState::Queued,
        ev::RunState::InProgress => proto::EvalRunState::InProgress,
        ev::RunState::Completed => proto::EvalRunState::Completed,
        ev::RunState::Failed => proto::EvalRunState::Failed,
        ev::RunState::Canceled => proto::EvalRunState::Canceled,
    }
}

pub fn item_status(s: ev::ItemStatus) -> proto::OutputItemStatus {
    match s {
        ev::ItemStatus::Pass => proto::OutputItemStatus::Pass,
        ev::ItemStatus::Fail => proto::OutputItemStatus::Fail,
        ev::ItemStatus::Error => proto::OutputItemStatus::Error,
    }
}

pub fn item_status_from_proto(v: i32) -> Result<Option<ev::ItemStatus>, Error> {
    match proto::OutputItemStatus::try_from(v) {
        Ok(proto::OutputItemStatus::Unspecified) => Ok(None),
        Ok(proto::OutputItemStatus::Pass) => Ok(Some(ev::ItemStatus::Pass)),
        Ok(proto::OutputItemStatus::Fail) => Ok(Some(ev::ItemStatus::Fail)),
        Ok(proto::OutputItemStatus::Error) => Ok(Some(ev::ItemStatus::Error)),
        Err(_) => Err(Error::invalid("status", format!("{v} is not an OutputItemStatus"))),
    }
}

fn counts(p: &ev::Progress, total: u64) -> proto::ResultCounts {
    proto::ResultCounts {
        total,
        passed: p.passed,
        failed: p.failed,
        errored: p.errored,
    }
}

fn criteria_results(names: &[String], p: &ev::Progress) -> Vec<proto::CriterionResult> {
    em::summarize(names, p)
        .into_iter()
        .map(|c| proto::CriterionResult {
            name: c.name,
            passed: c.counts.passed,
            failed: c.counts.failed,
            errored: c.counts.errored,
            pass_rate: c.pass_rate,
            ci_low: c.ci_low,
            ci_high: c.ci_high,
        })
        .collect()
}

pub fn eval_run(r: ev::RunRecord) -> proto::EvalRun {
    proto::EvalRun {
        model: r.spec.model().to_string(),
        result_counts: Some(counts(&r.progress, r.total)),
        per_criterion: criteria_results(&r.spec.criteria, &r.progress),
        per_model_usage: r
            .progress
            .usage
            .iter()
            .map(|(model, u)| proto::ModelUsage {
                model: model.clone(),
                invocations: u.invocations,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
            })
            .collect(),
        items_per_second: em::throughput(&r.progress),
        completed: r.progress.completed,
        id: r.id,
        eval_id: r.eval_id,
        state: run_state(r.state) as i32,
        dataset_id: r.spec.dataset_id,
        created_at: Some(timestamp(r.created_at)),
        started_at: r.started_at.map(timestamp),
        finished_at: r.finished_at.map(timestamp),
        budget_exhausted: r.state == ev::RunState::Completed && r.error.is_some(),
        error: r.error.unwrap_or_default(),
        concurrency: r.spec.concurrency,
        name: r.spec.name,
        metadata: r.spec.metadata.into_iter().collect(),
        planned_model_calls: r.total * r.spec.calls_per_item,
        budget: (!r.spec.budget.is_unlimited()).then(|| proto::RunBudget {
            max_model_calls: r.spec.budget.max_model_calls.unwrap_or(0),
            max_tokens: r.spec.budget.max_tokens.unwrap_or(0),
        }),
    }
}

pub fn output_item(i: ev::OutputItemRecord) -> proto::OutputItem {
    let id = i.id();
    let d = i.detail;
    proto::OutputItem {
        id,
        run_id: i.run_id,
        usage: d.usage.map(|u| proto::ModelUsage {
            model: u.model,
            invocations: 1,
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }),
        index: i.index,
        status: item_status(i.status) as i32,
        item: Some(struct_from_json(&d.item)),
        input: Some(list_value(&d.input)),
        sample: d.sample,
        results: d
            .results
            .into_iter()
            .map(|r| proto::GraderOutcome {
                name: r.name,
                r#type: r.kind,
                score: r.score,
                passed: r.passed,
                error: r.error.unwrap_or_default(),
            })
            .collect(),
        error: d.error.unwrap_or_default(),
        seq: i.seq,
        created_at: Some(timestamp(i.created_at)),
        finish_reason: d.finish_reason,
        tool_calls: Some(list_value(&d.tool_calls)),
    }
}

pub fn eval_progress(criteria: &[String], i: ev::OutputItemRecord, total: u64) -> proto::EvalProgress {
    let p = &i.progress;
    let ips = em::throughput(p);
    let left = total.saturating_sub(p.completed) as f64;
    proto::EvalProgress {
        seq: i.seq,
        completed: p.completed,
        total,
        result_counts: Some(counts(p, total)),
        per_criterion: criteria_results(criteria, p),
        items_per_second: ips,
        eta_seconds: if ips > 0.0 { left / ips } else { 0.0 },
        item_index: i.index,
        item_status: item_status(i.status) as i32,
        error: i.detail.error.unwrap_or_default(),
    }
}

pub fn comparison(c: Comparison) -> proto::CompareEvalRunsResponse {
    proto::CompareEvalRunsResponse {
        runs: c.runs.into_iter().map(eval_run).collect(),
        paired_tests: c
            .tests
            .into_iter()
            .map(|t| proto::PairedTest {
                baseline_run_id: t.baseline_run_id,
                run_id: t.run_id,
                criterion: t.criterion,
                shared_items: t.shared_items,
                baseline_only_passed: t.baseline_only_passed,
                run_only_passed: t.run_only_passed,
                p_value: t.p_value,
                significant: t.significant,
                baseline_pass_rate: t.baseline_pass_rate,
                run_pass_rate: t.run_pass_rate,
            })
            .collect(),
        disagreements: c
            .disagreements
            .into_iter()
            .map(|(index, statuses)| proto::Disagreement {
                index,
                statuses: statuses
                    .into_iter()
                    .map(|s| s.map_or(proto::OutputItemStatus::Unspecified, item_status) as i32)
                    .collect(),
            })
            .collect(),
        disagreements_truncated: c.truncated,
    }
}

pub fn create_optimization(req: proto::CreatePromptOptimizationRequest) -> crate::optimize::CreateOptimization {
    let s = req.sampling_params.unwrap_or_default();
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    crate::optimize::CreateOptimization {
        name: req.name,
        eval_id: req.eval_id,
        model: req.model,
        input_messages: json_list(req.input_messages),
        sampling: ev::SamplingParams {
            temperature: s.temperature,
            top_p: s.top_p,
            max_tokens: s.max_tokens,
            seed: s.seed,
            stop: s.stop,
        },
        instructions: req.instructions,
        candidate_instructions: req.candidate_instructions,
        reflection_model: non_empty(req.reflection_model),
        train_dataset_id: req.train_dataset_id,
        validation_dataset_id: req.validation_dataset_id,
        test_dataset_id: non_empty(req.test_dataset_id),
        max_demos: req.max_demos,
        demo_answer_field: non_empty(req.demo_answer_field),
        minibatch_size: req.minibatch_size,
        max_model_calls: req.budget.map_or(0, |b| b.max_model_calls),
        seed: req.seed,
        concurrency: req.concurrency,
    }
}

fn prompt_comparison(c: crate::optimize::model::Comparison) -> proto::PromptComparison {
    proto::PromptComparison {
        dataset_id: c.dataset_id,
        items: c.items,
        original_mean: c.original_mean,
        best_mean: c.best_mean,
        mean_difference: c.mean_difference,
        ci_low: c.ci_low,
        ci_high: c.ci_high,
        original_passed: c.original_passed,
        best_passed: c.best_passed,
        mcnemar_p: c.mcnemar_p,
    }
}

pub fn optimization(o: crate::optimize::model::OptimizationRecord) -> proto::PromptOptimization {
    let search = o.search;
    proto::PromptOptimization {
        id: o.id,
        name: o.spec.name,
        eval_id: o.spec.eval_id,
        model: o.spec.model,
        state: run_state(o.state) as i32,
        candidates: search
            .candidates
            .iter()
            .map(|c| proto::PromptCandidate {
                instructions: c.instructions.clone(),
                demos: c.demos.clone(),
                origin: c.origin.as_str().to_string(),
                parent: c.parent.map_or(-1, |p| p as i32),
                validation_mean: c.mean(),
                validation_passed: c.passed.iter().filter(|p| **p).count() as u64,
            })
            .collect(),
        best: search.best.map_or(-1, |b| b as i32),
        validation: search.validation.map(prompt_comparison),
        test: search.test.map(prompt_comparison),
        steps: search.steps,
        rejected: search.rejected,
        model_calls: search.calls_used,
        max_model_calls: o.spec.max_model_calls,
        tokens: search.tokens_used,
        stopped: search.stopped.unwrap_or_default(),
        error: o.error.unwrap_or_default(),
        created_at: Some(timestamp(o.created_at)),
        finished_at: o.finished_at.map(timestamp),
    }
}
