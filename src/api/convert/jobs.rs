//! Fine-tuning jobs: domain <-> wire.

use crate::error::Error;
use crate::jobs::model as jm;
use crate::jobs::spec::{CreateJob, LoraRequest};
use crate::models::model::checkpoint_model_id;
use crate::proto;
use crate::proto::json::{json_from_struct, json_list, list_value, struct_from_json};
use crate::proto::timestamp;

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

/// A CreateJob request as the jobs service takes it: unset fields stay
/// unset (proto3's zero values where the proto has no presence: a LoRA
/// rank or alpha of 0), for the service to fill in.
pub fn create_job(req: proto::CreateJobRequest) -> CreateJob {
    use proto::fine_tuning_method::Method as M;
    let method = req.method.and_then(|m| m.method).map(|m| match m {
        M::Supervised(s) => jm::Method {
            kind: jm::MethodKind::Supervised,
            hyperparameters: jm::Hyperparameters {
                n_epochs: auto_i(s.n_epochs),
                batch_size: auto_i(s.batch_size),
                learning_rate_multiplier: auto_f(s.learning_rate_multiplier),
                ..Default::default()
            },
            grader: None,
            response_format: None,
        },
        M::Dpo(d) => jm::Method {
            kind: jm::MethodKind::Dpo,
            hyperparameters: jm::Hyperparameters {
                n_epochs: auto_i(d.n_epochs),
                batch_size: auto_i(d.batch_size),
                learning_rate_multiplier: auto_f(d.learning_rate_multiplier),
                beta: auto_f(d.beta),
                rpo_alpha: auto_f(d.rpo_alpha),
                ..Default::default()
            },
            grader: None,
            response_format: None,
        },
        M::Reinforcement(r) => jm::Method {
            kind: jm::MethodKind::Reinforcement,
            hyperparameters: jm::Hyperparameters {
                n_epochs: auto_i(r.n_epochs),
                batch_size: auto_i(r.batch_size),
                learning_rate_multiplier: auto_f(r.learning_rate_multiplier),
                eval_interval: auto_i(r.eval_interval),
                eval_samples: auto_i(r.eval_samples),
                generations_per_prompt: auto_i(r.generations_per_prompt),
                beta: auto_f(r.beta),
                compute_multiplier: auto_f(r.compute_multiplier),
                reasoning_effort: match r.reasoning_effort.as_str() {
                    "" | "auto" => None,
                    e => Some(e.to_string()),
                },
                max_completion_tokens: auto_i(r.max_completion_tokens),
                rpo_alpha: None,
            },
            grader: r.grader.map(json_from_struct),
            response_format: r.response_format.map(json_from_struct),
        },
    });
    CreateJob {
        base_model: req.base_model,
        training_dataset_id: req.training_dataset_id,
        validation_dataset_id: (!req.validation_dataset_id.is_empty()).then_some(req.validation_dataset_id),
        method,
        lora: req.lora.map(|l| LoraRequest {
            rank: (l.rank != 0).then_some(l.rank),
            alpha: (l.alpha != 0.0).then_some(l.alpha),
            dropout: Some(l.dropout),
            target_modules: l.target_modules,
        }),
        seed: req.seed,
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
        resources: req
            .resources
            .map(|r| jm::Resources {
                cpus: (r.cpus != 0.0).then_some(r.cpus),
                gpus: (r.gpus != 0.0).then_some(r.gpus),
            })
            .unwrap_or_default(),
        idempotency_key: (!req.idempotency_key.is_empty()).then_some(req.idempotency_key),
    }
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
            rpo_alpha: some_f(h.rpo_alpha),
        }),
        jm::MethodKind::Reinforcement => M::Reinforcement(proto::ReinforcementMethod {
            n_epochs: some_i(h.n_epochs),
            batch_size: some_i(h.batch_size),
            learning_rate_multiplier: some_f(h.learning_rate_multiplier),
            grader: m.grader.as_ref().map(struct_from_json),
            response_format: m.response_format.as_ref().map(struct_from_json),
            eval_interval: some_i(h.eval_interval),
            eval_samples: some_i(h.eval_samples),
            generations_per_prompt: some_i(h.generations_per_prompt),
            compute_multiplier: some_f(h.compute_multiplier),
            reasoning_effort: h.reasoning_effort.clone().unwrap_or_else(|| "auto".into()),
            beta: some_f(h.beta),
            max_completion_tokens: some_i(h.max_completion_tokens),
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
        start_from: j.spec.start_from.unwrap_or_default(),
        resources: (j.spec.resources != jm::Resources::default()).then(|| proto::JobResources {
            cpus: j.spec.resources.cpus.unwrap_or(0.0),
            gpus: j.spec.resources.gpus.unwrap_or(0.0),
        }),
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
        fine_tuned_model_checkpoint: checkpoint_model_id(model, c.step),
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
            fine_tuned_model_checkpoint: checkpoint_model_id(model, step),
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
        attempt: e.attempt,
    }
}
