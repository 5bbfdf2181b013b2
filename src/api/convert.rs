//! Domain <-> wire conversions, in one place.

use crate::datasets::model::{DatasetRecord, DatasetState, Lineage};
use crate::datasets::report::{DatasetStats, Problem, Purpose, Severity, Summary, TokenSummary, ValidationReport};
use crate::proto;

pub fn purpose_from_proto(value: i32) -> Option<Purpose> {
    match proto::DatasetPurpose::try_from(value).ok()? {
        proto::DatasetPurpose::Unspecified => None,
        proto::DatasetPurpose::Sft => Some(Purpose::Sft),
        proto::DatasetPurpose::Dpo => Some(Purpose::Dpo),
        proto::DatasetPurpose::Rft => Some(Purpose::Rft),
        proto::DatasetPurpose::Eval => Some(Purpose::Eval),
    }
}

pub fn purpose_to_proto(purpose: Purpose) -> proto::DatasetPurpose {
    match purpose {
        Purpose::Sft => proto::DatasetPurpose::Sft,
        Purpose::Dpo => proto::DatasetPurpose::Dpo,
        Purpose::Rft => proto::DatasetPurpose::Rft,
        Purpose::Eval => proto::DatasetPurpose::Eval,
    }
}

fn state_to_proto(state: DatasetState) -> proto::DatasetState {
    match state {
        DatasetState::Ready => proto::DatasetState::Ready,
        DatasetState::Failed => proto::DatasetState::Failed,
    }
}

pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn problem(p: Problem) -> proto::ValidationProblem {
    proto::ValidationProblem {
        line: p.line,
        pointer: p.pointer,
        code: p.code.to_string(),
        message: p.message,
        severity: match p.severity {
            Severity::Error => proto::ProblemSeverity::Error,
            Severity::Warning => proto::ProblemSeverity::Warning,
        } as i32,
    }
}

fn report(r: ValidationReport) -> proto::ValidationReport {
    proto::ValidationReport {
        total_rows: r.total_rows,
        valid_rows: r.valid_rows,
        invalid_rows: r.invalid_rows,
        errors: r.errors.into_iter().map(problem).collect(),
        warnings: r.warnings.into_iter().map(problem).collect(),
        error_counts: r.error_counts.into_iter().collect(),
        warning_counts: r.warning_counts.into_iter().collect(),
        problems_truncated: r.problems_truncated,
    }
}

fn summary(s: Summary) -> proto::CountSummary {
    proto::CountSummary {
        min: s.min,
        max: s.max,
        mean: s.mean,
    }
}

fn tokens(s: TokenSummary) -> proto::TokenSummary {
    proto::TokenSummary {
        min: s.min,
        max: s.max,
        mean: s.mean,
        p50: s.p50,
        p95: s.p95,
        total: s.total,
    }
}

fn stats(s: DatasetStats) -> proto::DatasetStats {
    proto::DatasetStats {
        rows: s.rows,
        messages_per_example: Some(summary(s.messages_per_example)),
        tokens_per_example: Some(tokens(s.tokens_per_example)),
        trained_tokens_per_example: Some(tokens(s.trained_tokens_per_example)),
        tool_call_examples: s.tool_call_examples,
        image_parts: s.image_parts,
        label_field: s.label_field.unwrap_or_default(),
        label_counts: s.label_counts.into_iter().collect(),
        default_epochs: s.default_epochs,
        estimated_trained_tokens: s.estimated_trained_tokens,
        tokenizer: s.tokenizer,
    }
}

fn lineage(l: Lineage) -> proto::DatasetLineage {
    proto::DatasetLineage {
        source_dataset_id: l.source_dataset_id,
        split: l.split,
        validation_fraction: l.validation_fraction,
        seed: l.seed,
        stratify_by: l.stratify_by.unwrap_or_default(),
    }
}

pub fn dataset(d: DatasetRecord) -> proto::Dataset {
    proto::Dataset {
        id: d.id,
        filename: d.filename,
        display_name: d.display_name,
        purpose: purpose_to_proto(d.purpose) as i32,
        state: state_to_proto(d.state) as i32,
        bytes: d.bytes,
        sha256: d.sha256,
        created_at: Some(timestamp(d.created_at)),
        metadata: d.metadata.into_iter().collect(),
        validation: Some(report(d.report)),
        stats: Some(stats(d.stats)),
        lineage: d.lineage.map(lineage),
    }
}

// ---- JSON <-> google.protobuf.Struct ----

pub fn json_from_value(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers come back as integers, as users wrote them.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.into_iter().map(json_from_value).collect()),
        Some(Kind::StructValue(s)) => json_from_struct(s),
    }
}

pub fn json_from_struct(s: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.into_iter().map(|(k, v)| (k, json_from_value(v))).collect())
}

pub fn value_from_json(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(value_from_json).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(struct_from_json(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn struct_from_json(v: &serde_json::Value) -> prost_types::Struct {
    let fields = match v {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), value_from_json(v))).collect(),
        _ => Default::default(),
    };
    prost_types::Struct { fields }
}

// ---- jobs ----

use crate::error::{Error, FieldViolation};
use crate::jobs::manager::CreateJob;
use crate::jobs::model as jm;

pub fn job_state_to_proto(s: jm::JobState) -> proto::JobState {
    match s {
        jm::JobState::ValidatingFiles => proto::JobState::ValidatingFiles,
        jm::JobState::Queued => proto::JobState::Queued,
        jm::JobState::Running => proto::JobState::Running,
        jm::JobState::Succeeded => proto::JobState::Succeeded,
        jm::JobState::Failed => proto::JobState::Failed,
        jm::JobState::Cancelled => proto::JobState::Cancelled,
        jm::JobState::Paused => proto::JobState::Paused,
    }
}

pub fn job_state_from_proto(v: i32) -> Result<Option<jm::JobState>, Error> {
    Ok(match proto::JobState::try_from(v) {
        Ok(proto::JobState::Unspecified) => None,
        Ok(proto::JobState::ValidatingFiles) => Some(jm::JobState::ValidatingFiles),
        Ok(proto::JobState::Queued) => Some(jm::JobState::Queued),
        Ok(proto::JobState::Running) => Some(jm::JobState::Running),
        Ok(proto::JobState::Succeeded) => Some(jm::JobState::Succeeded),
        Ok(proto::JobState::Failed) => Some(jm::JobState::Failed),
        Ok(proto::JobState::Cancelled) => Some(jm::JobState::Cancelled),
        Ok(proto::JobState::Paused) => Some(jm::JobState::Paused),
        Err(_) => return Err(Error::invalid("state", format!("unknown job state value {v}"))),
    })
}

fn auto_i(v: Option<proto::AutoInt>) -> Option<i64> {
    match v.and_then(|a| a.value) {
        Some(proto::auto_int::Value::Number(n)) => Some(n),
        _ => None,
    }
}

fn auto_f(v: Option<proto::AutoDouble>) -> Option<f64> {
    match v.and_then(|a| a.value) {
        Some(proto::auto_double::Value::Number(n)) => Some(n),
        _ => None,
    }
}

fn some_i(v: Option<i64>) -> Option<proto::AutoInt> {
    Some(proto::AutoInt {
        value: Some(match v {
            Some(n) => proto::auto_int::Value::Number(n),
            None => proto::auto_int::Value::Auto(true),
        }),
    })
}

fn some_f(v: Option<f64>) -> Option<proto::AutoDouble> {
    Some(proto::AutoDouble {
        value: Some(match v {
            Some(n) => proto::auto_double::Value::Number(n),
            None => proto::auto_double::Value::Auto(true),
        }),
    })
}

pub fn create_job(req: proto::CreateJobRequest) -> Result<CreateJob, Error> {
    use proto::fine_tuning_method::Method as M;
    let method = match req.method.and_then(|m| m.method) {
        None => jm::Method {
            kind: jm::MethodKind::Supervised,
            hyperparameters: Default::default(),
            grader: None,
        },
        Some(M::Supervised(s)) => jm::Method {
            kind: jm::MethodKind::Supervised,
            hyperparameters: jm::Hyperparameters {
                n_epochs: auto_i(s.n_epochs),
                batch_size: auto_i(s.batch_size),
                learning_rate_multiplier: auto_f(s.learning_rate_multiplier),
                ..Default::default()
            },
            grader: None,
        },
        Some(M::Dpo(d)) => jm::Method {
            kind: jm::MethodKind::Dpo,
            hyperparameters: jm::Hyperparameters {
                n_epochs: auto_i(d.n_epochs),
                batch_size: auto_i(d.batch_size),
                learning_rate_multiplier: auto_f(d.learning_rate_multiplier),
                beta: auto_f(d.beta),
                ..Default::default()
            },
            grader: None,
        },
        Some(M::Reinforcement(r)) => jm::Method {
            kind: jm::MethodKind::Reinforcement,
            hyperparameters: jm::Hyperparameters {
                n_epochs: auto_i(r.n_epochs),
                batch_size: auto_i(r.batch_size),
                learning_rate_multiplier: auto_f(r.learning_rate_multiplier),
                eval_interval: auto_i(r.eval_interval),
                eval_samples: auto_i(r.eval_samples),
                generations_per_prompt: auto_i(r.generations_per_prompt),
                beta: None,
            },
            grader: r.grader.map(json_from_struct),
        },
    };
    let lora = match req.lora {
        None => jm::Lora::default(),
        Some(l) => {
            let d = jm::Lora::default();
            jm::Lora {
                rank: if l.rank == 0 { d.rank } else { l.rank },
                alpha: if l.alpha == 0.0 { d.alpha } else { l.alpha },
                dropout: l.dropout,
                target_modules: if l.target_modules.is_empty() {
                    d.target_modules
                } else {
                    l.target_modules
                },
            }
        }
    };
    let seed = match req.seed {
        Some(seed) => seed,
        None => rand::random::<u32>() as u64 & 0x7fff_ffff,
    };
    if req.training_dataset_id.is_empty() {
        return Err(Error::InvalidArgument(vec![FieldViolation::new(
            "training_dataset_id",
            "a training dataset is required",
        )]));
    }
    Ok(CreateJob {
        spec: jm::JobSpec {
            base_model: req.base_model,
            training_dataset_id: req.training_dataset_id,
            validation_dataset_id: (!req.validation_dataset_id.is_empty()).then_some(req.validation_dataset_id),
            method,
            lora,
            seed,
            suffix: req.suffix,
            metadata: req.metadata.into_iter().collect(),
            priority: req.priority,
            early_stopping: req.early_stopping.map(|e| jm::EarlyStopping {
                patience: e.patience,
                min_delta: e.min_delta,
            }),
            webhook: req.webhook.filter(|w| !w.url.is_empty()).map(|w| jm::Webhook {
                url: w.url,
                secret: w.secret,
            }),
            checkpoint_eval: req.checkpoint_eval.map(|c| {
                let s = c.sampling_params.unwrap_or_default();
                jm::CheckpointEval {
                    eval_id: c.eval_id,
                    input_messages: json_list(c.input_messages),
                    temperature: s.temperature,
                    top_p: s.top_p,
                    max_tokens: s.max_tokens,
                    seed: s.seed,
                    stop: s.stop,
                    criterion: c.criterion,
                    concurrency: c.concurrency,
                }
            }),
        },
        idempotency_key: (!req.idempotency_key.is_empty()).then_some(req.idempotency_key),
    })
}

fn method_to_proto(m: &jm::Method) -> proto::FineTuningMethod {
    use proto::fine_tuning_method::Method as M;
    let h = &m.hyperparameters;
    let method = match m.kind {
        jm::MethodKind::Supervised => M::Supervised(proto::SupervisedMethod {
            n_epochs: some_i(h.n_epochs),
            batch_size: some_i(h.batch_size),
            learning_rate_multiplier: some_f(h.learning_rate_multiplier),
        }),
        jm::MethodKind::Dpo => M::Dpo(proto::DpoMethod {
            n_epochs: some_i(h.n_epochs),
            batch_size: some_i(h.batch_size),
            learning_rate_multiplier: some_f(h.learning_rate_multiplier),
            beta: some_f(h.beta),
        }),
        jm::MethodKind::Reinforcement => M::Reinforcement(proto::ReinforcementMethod {
            n_epochs: some_i(h.n_epochs),
            batch_size: some_i(h.batch_size),
            learning_rate_multiplier: some_f(h.learning_rate_multiplier),
            grader: m.grader.as_ref().map(struct_from_json),
            eval_interval: some_i(h.eval_interval),
            eval_samples: some_i(h.eval_samples),
            generations_per_prompt: some_i(h.generations_per_prompt),
        }),
    };
    proto::FineTuningMethod { method: Some(method) }
}

pub fn job(j: jm::JobRecord) -> proto::Job {
    proto::Job {
        id: j.id,
        base_model: j.spec.base_model,
        training_dataset_id: j.spec.training_dataset_id,
        validation_dataset_id: j.spec.validation_dataset_id.unwrap_or_default(),
        method: Some(method_to_proto(&j.spec.method)),
        lora: Some(proto::LoraConfig {
            rank: j.spec.lora.rank,
            alpha: j.spec.lora.alpha,
            dropout: j.spec.lora.dropout,
            target_modules: j.spec.lora.target_modules,
        }),
        seed: j.spec.seed,
        suffix: j.spec.suffix,
        metadata: j.spec.metadata.into_iter().collect(),
        state: job_state_to_proto(j.state) as i32,
        fine_tuned_model: j.fine_tuned_model.unwrap_or_default(),
        error: j.error.map(|e| proto::JobError {
            code: e.code,
            message: e.message,
            param: e.param.unwrap_or_default(),
        }),
        created_at: Some(timestamp(j.created_at)),
        finished_at: j.finished_at.map(timestamp),
        trained_tokens: j.trained_tokens,
        priority: j.spec.priority,
        early_stopping: j.spec.early_stopping.map(|e| proto::EarlyStopping {
            patience: e.patience,
            min_delta: e.min_delta,
        }),
        started_at: j.started_at.map(timestamp),
        fine_tuned_checkpoint_step: j.fine_tuned_checkpoint_step.unwrap_or(0),
        stop_reason: j.stop_reason.unwrap_or_default(),
        webhook_url: j.spec.webhook.map(|w| w.url).unwrap_or_default(),
        attempts: j.attempts,
        checkpoint_eval: j.spec.checkpoint_eval.map(|c| proto::CheckpointEval {
            eval_id: c.eval_id,
            input_messages: (!c.input_messages.is_empty()).then(|| list_value(&c.input_messages)),
            sampling_params: Some(proto::EvalSamplingParams {
                temperature: c.temperature,
                top_p: c.top_p,
                max_tokens: c.max_tokens,
                seed: c.seed,
                stop: c.stop,
            }),
            criterion: c.criterion,
            concurrency: c.concurrency,
        }),
    }
}

pub fn metrics(m: jm::Metrics) -> proto::JobMetrics {
    proto::JobMetrics {
        step: m.step,
        total_steps: m.total_steps,
        epoch: m.epoch,
        train_loss: m.train_loss,
        valid_loss: m.valid_loss,
        train_mean_token_accuracy: m.train_mean_token_accuracy,
        valid_mean_token_accuracy: m.valid_mean_token_accuracy,
        learning_rate: m.learning_rate,
        tokens_per_second: m.tokens_per_second,
        train_reward_mean: m.train_reward_mean,
        valid_reward_mean: m.valid_reward_mean,
        eval_pass_rate: m.eval_pass_rate,
        eval_run_id: m.eval_run_id.unwrap_or_default(),
        values: m.values.into_iter().collect(),
    }
}

pub fn checkpoint(c: jm::CheckpointRecord, model: &str) -> proto::Checkpoint {
    proto::Checkpoint {
        fine_tuned_model_checkpoint: jm::checkpoint_model_id(model, c.step),
        id: c.id,
        job_id: c.job_id,
        step_number: c.step,
        metrics: Some(metrics(c.metrics)),
        created_at: Some(timestamp(c.created_at)),
    }
}

pub fn event(e: jm::JobEvent, model: &str) -> proto::JobEvent {
    use proto::job_event::Data;
    let data = match e.data {
        jm::EventData::Message => None,
        jm::EventData::State { state } => Some(Data::State(job_state_to_proto(state) as i32)),
        jm::EventData::Metrics { metrics: m } => Some(Data::Metrics(metrics(m))),
        jm::EventData::Checkpoint {
            checkpoint_id,
            step,
            metrics: m,
        } => Some(Data::Checkpoint(proto::Checkpoint {
            id: checkpoint_id,
            job_id: e.job_id.clone(),
            fine_tuned_model_checkpoint: jm::checkpoint_model_id(model, step),
            step_number: step,
            metrics: Some(metrics(m)),
            created_at: Some(timestamp(e.created_at)),
        })),
    };
    proto::JobEvent {
        job_id: e.job_id,
        seq: e.seq,
        created_at: Some(timestamp(e.created_at)),
        level: match e.level {
            jm::Level::Info => proto::EventLevel::Info,
            jm::Level::Warn => proto::EventLevel::Warn,
            jm::Level::Error => proto::EventLevel::Error,
        } as i32,
        message: e.message,
        data,
    }
}

pub fn model(m: crate::store::ModelRecord) -> proto::Model {
    let info = m.info.unwrap_or_else(|| crate::models::BaseModelInfo {
        path: String::new(),
        format: String::new(),
        architecture: String::new(),
        parameters: 0,
        context_length: 0,
    });
    proto::Model {
        id: m.id,
        kind: if m.kind == "fine_tuned" {
            proto::ModelKind::FineTuned
        } else {
            proto::ModelKind::Base
        } as i32,
        base_model: m.base_model,
        job_id: m.job_id.unwrap_or_default(),
        architecture: info.architecture,
        parameters: info.parameters,
        context_length: info.context_length.min(u32::MAX as u64) as u32,
        created_at: Some(timestamp(m.created_at)),
        path: info.path,
        format: info.format,
        checkpoint_step: m.checkpoint_step.unwrap_or(0),
    }
}

/// A Chat request as the engine takes it: model, OpenAI messages, sampling
/// (OpenAI's defaults where unset: temperature 1, top_p 1).
pub fn chat(req: proto::ChatRequest) -> (String, Vec<serde_json::Value>, lathe_engine::generate::Sampling) {
    let messages = req
        .messages
        .into_iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    let s = req.sampling.unwrap_or_default();
    let sampling = lathe_engine::generate::Sampling {
        temperature: s.temperature.unwrap_or(1.0),
        top_p: s.top_p.unwrap_or(1.0),
        top_k: s.top_k.unwrap_or(0) as usize,
        max_tokens: s.max_tokens.unwrap_or(256) as usize,
        seed: s.seed.unwrap_or(0),
        stop: s.stop,
    };
    (req.model, messages, sampling)
}

// ---- evals ----

use crate::evals::manager::{self as em, Comparison, CreateEval, CreateRun};
use crate::evals::model as ev;

pub fn create_eval(req: proto::CreateEvalRequest) -> Result<CreateEval, Error> {
    let mut criteria = Vec::new();
    let mut v = Vec::new();
    for (i, c) in req.testing_criteria.into_iter().enumerate() {
        match c.grader {
            Some(g) => criteria.push((json_from_struct(g), c.pass_threshold)),
            None => v.push(FieldViolation::new(
                format!("testing_criteria[{i}].grader"),
                "a grader object or {\"name\": ...} is required",
            )),
        }
    }
    if !v.is_empty() {
        return Err(Error::InvalidArgument(v));
    }
    Ok(CreateEval {
        name: req.name,
        item_schema: req.item_schema.map(json_from_struct),
        criteria,
        metadata: req.metadata.into_iter().collect(),
    })
}

fn json_list(l: Option<prost_types::ListValue>) -> Vec<serde_json::Value> {
    l.map(|l| l.values.into_iter().map(json_from_value).collect())
        .unwrap_or_default()
}

fn list_value(values: &[serde_json::Value]) -> prost_types::ListValue {
    prost_types::ListValue {
        values: values.iter().map(value_from_json).collect(),
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
    })
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
        error: r.error.unwrap_or_default(),
        concurrency: r.spec.concurrency,
        name: r.spec.name,
    }
}

pub fn output_item(i: ev::OutputItemRecord) -> proto::OutputItem {
    let d = i.detail;
    proto::OutputItem {
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
