//! The embedded trainer behind the jobs' `Trainer` seam: resolves the base
//! model (and the fine-tuned model a job continues from), tokenizes the
//! job's files for its method (SFT, DPO or RFT), turns "auto"
//! hyperparameters into numbers, runs the engine's loop on a blocking
//! thread, and relays its metrics and checkpoints to the orchestrator. For
//! RFT it also connects the engine's reward seam to the job's grader
//! ([`GraderReward`]) and dry-runs the grader on the files' first rows
//! before the first step.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::local::LocalEngine;
use crate::auth::model::Caller;
use crate::error::FieldViolation;
use crate::graders::service::{Batch, Graders};
use crate::jobs::model::{JobSpec, Level, MethodKind, Metrics};
use crate::jobs::trainer::{TrainContext, TrainError, TrainOutcome, Trainer};
use crate::models::Resolved;
use lathe_engine::dpo::{DEFAULT_BETA, Dpo};
use lathe_engine::grpo::{self, Grpo, GrpoConfig, Reward};
use lathe_engine::lora::{Adapter, LoraConfig};
use lathe_engine::method::{Encoder, Method, encode_lines};
use lathe_engine::optim::{AdamWParams, Schedule};
use lathe_engine::sft::Sft;
use lathe_engine::train::{
    AUTO_LEARNING_RATE, Outcome, Resume, Sink, StepMetrics, TrainConfig, auto_batch_size, auto_epochs, read_checkpoint,
    run,
};
use lathe_engine::weights::Proj;

/// Settings of the embedded trainer that are not per job.
#[derive(Clone, Debug)]
pub struct LocalTrainerConfig {
    /// Longest example in tokens; longer ones are cut from the end.
    pub max_seq_len: usize,
    pub micro_batch_tokens: usize,
    /// Evaluations (with checkpoints) per run, spread evenly.
    pub evals_per_run: u64,
    /// Validation examples used at each evaluation.
    pub eval_examples: usize,
}

impl Default for LocalTrainerConfig {
    fn default() -> Self {
        Self {
            max_seq_len: 2048,
            micro_batch_tokens: 512,
            evals_per_run: 10,
            eval_examples: 200,
        }
    }
}

pub struct LocalTrainer {
    engine: Arc<LocalEngine>,
    config: LocalTrainerConfig,
    /// What RFT jobs grade with; without it they are refused.
    graders: Option<Arc<Graders>>,
}

impl LocalTrainer {
    pub fn new(engine: Arc<LocalEngine>, config: LocalTrainerConfig) -> Self {
        Self {
            engine,
            config,
            graders: None,
        }
    }

    /// Runs RFT jobs with these graders.
    pub fn with_graders(mut self, graders: Arc<Graders>) -> Self {
        self.graders = Some(graders);
        self
    }
}

fn lora_config(spec: &JobSpec) -> Result<LoraConfig, Vec<FieldViolation>> {
    // Ranges are the jobs service's to check (`jobs::spec`); the module
    // names are the engine's.
    let mut v = Vec::new();
    let l = &spec.lora;
    let mut targets = Vec::new();
    for (i, t) in l.target_modules.iter().enumerate() {
        match Proj::parse(t) {
            Some(p) if !targets.contains(&p) => targets.push(p),
            Some(_) => {}
            None => v.push(FieldViolation::new(
                format!("lora.target_modules[{i}]"),
                format!("{t:?} is not one of {}", Proj::ALL.map(|p| p.name()).join(", ")),
            )),
        }
    }
    if l.target_modules.is_empty() {
        targets = Proj::ALL.to_vec();
    }
    targets.sort();
    if v.is_empty() {
        Ok(LoraConfig {
            rank: l.rank as usize,
            alpha: l.alpha,
            dropout: l.dropout,
            targets,
        })
    } else {
        Err(v)
    }
}

/// DPO's "auto" learning rate for LoRA. Preference training moves a model
/// that already answers (usually an SFT model), so it takes smaller steps
/// than SFT's (`AUTO_LEARNING_RATE`).
pub const DPO_AUTO_LEARNING_RATE: f64 = 1e-4;

/// RFT's "auto" learning rate for LoRA: GRPO's updates follow sampled
/// rewards and are noisier than SFT's, so it takes smaller steps (TRL's
/// default, 1e-6, is for full fine-tuning).
pub const RFT_AUTO_LEARNING_RATE: f64 = 5e-5;

/// RFT's "auto" completions per prompt (TRL's `num_generations`), before
/// `compute_multiplier`.
pub const RFT_AUTO_GENERATIONS: usize = 8;

/// RFT's "auto" longest completion in tokens.
pub const RFT_AUTO_MAX_COMPLETION_TOKENS: usize = 256;

/// The share of graded samples that may fail (reward 0) before an RFT job
/// fails with the counts, as OpenAI's does past "too many" grader errors.
pub const RFT_MAX_GRADER_ERROR_FRACTION: f64 = 0.1;

/// Rows of each file the grader is dry-run on before RFT starts.
pub const RFT_DRY_RUN_ROWS: usize = 5;

/// GRPO's settings from a job's hyperparameters, "auto" ones filled in.
pub fn grpo_config(spec: &JobSpec, stop_ids: Vec<u32>) -> GrpoConfig {
    let h = &spec.method.hyperparameters;
    let generations = match h.generations_per_prompt {
        Some(g) => g as usize,
        None => ((RFT_AUTO_GENERATIONS as f64 * h.compute_multiplier.unwrap_or(1.0)).round() as usize).clamp(2, 64),
    };
    GrpoConfig {
        generations,
        temperature: 1.0,
        top_p: 1.0,
        max_completion_tokens: h
            .max_completion_tokens
            .map(|m| m as usize)
            .unwrap_or(RFT_AUTO_MAX_COMPLETION_TOKENS),
        beta: h.beta.unwrap_or(0.0),
        epsilon: 0.2,
        epsilon_high: 0.2,
        eval_samples: h.eval_samples.map(|e| e as usize).unwrap_or(1),
        stop_ids,
        max_error_fraction: RFT_MAX_GRADER_ERROR_FRACTION,
        seed: spec.seed,
    }
}

/// The run's settings: the job's hyperparameters, "auto" ones filled in
/// for its method.
pub fn train_config(spec: &JobSpec, n_train: usize, lora: LoraConfig, config: &LocalTrainerConfig) -> TrainConfig {
    let mut cfg = sft_config(spec, n_train, lora, config);
    if spec.method.kind == MethodKind::Dpo {
        let h = &spec.method.hyperparameters;
        cfg.learning_rate = DPO_AUTO_LEARNING_RATE * h.learning_rate_multiplier.unwrap_or(1.0);
        // As TRL's DPO: no dropout, so the policy starts exactly at its
        // reference (the jobs service refuses a DPO job's dropout > 0).
        cfg.lora.dropout = 0.0;
    }
    if spec.method.kind == MethodKind::Reinforcement {
        let h = &spec.method.hyperparameters;
        cfg.learning_rate = RFT_AUTO_LEARNING_RATE * h.learning_rate_multiplier.unwrap_or(1.0);
        cfg.lora.dropout = 0.0;
        if let Some(every) = h.eval_interval {
            cfg.eval_every = every.max(1) as u64;
        }
    }
    cfg
}

/// SFT's settings: the job's hyperparameters, "auto" ones filled in.
pub fn sft_config(spec: &JobSpec, n_train: usize, lora: LoraConfig, config: &LocalTrainerConfig) -> TrainConfig {
    let h = &spec.method.hyperparameters;
    let epochs = h.n_epochs.map(|e| e as u64).unwrap_or_else(|| auto_epochs(n_train));
    let batch_size = h
        .batch_size
        .map(|b| b as usize)
        .unwrap_or_else(|| auto_batch_size(n_train))
        .clamp(1, n_train.max(1));
    let steps = n_train.div_ceil(batch_size) as u64 * epochs;
    TrainConfig {
        epochs,
        batch_size,
        learning_rate: AUTO_LEARNING_RATE * h.learning_rate_multiplier.unwrap_or(1.0),
        schedule: Schedule::Linear,
        warmup_ratio: 0.03,
        max_grad_norm: 1.0,
        seed: spec.seed,
        lora,
        adamw: AdamWParams::default(),
        micro_batch_tokens: config.micro_batch_tokens,
        eval_every: (steps / config.evals_per_run.max(1)).max(1),
        eval_examples: config.eval_examples,
    }
}

/// The LoRA settings of a job, checked.
pub fn job_lora(spec: &JobSpec) -> Result<LoraConfig, Vec<FieldViolation>> {
    lora_config(spec)
}

fn err(code: &str) -> impl Fn(lathe_engine::EngineError) -> TrainError + '_ {
    move |e| TrainError::new(code, e.to_string())
}

enum Msg {
    Metrics(StepMetrics),
    Checkpoint(StepMetrics, Vec<(String, Vec<u8>)>, oneshot::Sender<bool>),
}

struct ChannelSink {
    tx: mpsc::Sender<Msg>,
    stop: Arc<AtomicBool>,
}

impl Sink for ChannelSink {
    fn metrics(&mut self, m: &StepMetrics) {
        let _ = self.tx.blocking_send(Msg::Metrics(m.clone()));
    }

    fn checkpoint(&mut self, m: &StepMetrics, files: Vec<(String, Vec<u8>)>) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.blocking_send(Msg::Checkpoint(m.clone(), files, reply)).is_err() {
            return false;
        }
        rx.blocking_recv().unwrap_or(false)
    }

    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The job's metrics from the engine's: a method's value `x` becomes
/// `train_x`, and `valid_x` at evaluations, in the field of that name where
/// the job metrics have one (SFT's `mean_token_accuracy`, RFT's
/// `reward_mean`: OpenAI's names), otherwise in `values`.
fn job_metrics(m: &StepMetrics) -> Metrics {
    let mut out = Metrics {
        step: m.step,
        total_steps: m.total_steps,
        epoch: m.epoch,
        train_loss: Some(m.train_loss),
        valid_loss: m.valid_loss,
        learning_rate: Some(m.learning_rate),
        tokens_per_second: Some(m.tokens_per_second),
        step_tokens: Some(m.step_tokens),
        ..Default::default()
    };
    let named = (m.values.iter().map(|(k, v)| (format!("train_{k}"), *v)))
        .chain(m.valid_values.iter().map(|(k, v)| (format!("valid_{k}"), *v)));
    for (name, v) in named {
        let field = match name.as_str() {
            "train_mean_token_accuracy" => &mut out.train_mean_token_accuracy,
            "valid_mean_token_accuracy" => &mut out.valid_mean_token_accuracy,
            "train_reward_mean" => &mut out.train_reward_mean,
            "valid_reward_mean" => &mut out.valid_reward_mean,
            _ => {
                out.values.insert(name, v);
                continue;
            }
        };
        *field = Some(v);
    }
    out
}

#[async_trait]
impl Trainer for LocalTrainer {
    fn check(&self, spec: &JobSpec) -> Result<(), Vec<FieldViolation>> {
        let mut v = Vec::new();
        if spec.method.kind == MethodKind::Reinforcement {
            if self.graders.is_none() {
                v.push(FieldViolation::new(
                    "method.reinforcement",
                    "this server's trainer has no graders to run reinforcement fine-tuning with",
                ));
            }
            if spec.method.hyperparameters.reasoning_effort.is_some() {
                v.push(FieldViolation::new(
                    "method.reinforcement.reasoning_effort",
                    "applies to reasoning models; the embedded trainer's models (llama, qwen2) have no reasoning \
                     mode: leave it auto and set max_completion_tokens for the room a completion gets",
                ));
            }
        }
        if let Err(mut l) = lora_config(spec) {
            v.append(&mut l);
        }
        if v.is_empty() { Ok(()) } else { Err(v) }
    }

    fn resolves_models(&self) -> bool {
        true
    }

    async fn train(&self, ctx: TrainContext) -> Result<TrainOutcome, TrainError> {
        let spec = ctx.job.spec.clone();
        let lora = lora_config(&spec).map_err(|v| {
            TrainError::new(
                "invalid_hyperparameters",
                v.iter()
                    .map(|f| format!("{}: {}", f.field, f.description))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let Resolved::Base { name, path } = self
            .engine
            .resolve(&spec.base_model)
            .await
            .map_err(err("model_not_found"))?
        else {
            return Err(TrainError::new(
                "model_not_supported",
                format!("{} is not a base model", spec.base_model),
            ));
        };
        ctx.reporter
            .log(Level::Info, format!("loading base model {name}"))
            .await;
        let base = self.engine.base(&name, &path).await.map_err(err("model_load_failed"))?;
        // A job that continues from a fine-tuned model starts from its
        // adapter (and, for DPO, keeps it frozen as the reference).
        let start = match &spec.start_from {
            None => None,
            Some(model) => match self.engine.resolve(model).await.map_err(err("model_not_found"))? {
                Resolved::FineTuned {
                    adapter,
                    adapter_config,
                    ..
                } => Some(
                    Adapter::from_peft(&base.model.config, &adapter, &adapter_config, &base.model.device)
                        .map_err(err("model_load_failed"))?,
                ),
                Resolved::Base { .. } => None,
            },
        };
        let train_bytes = ctx.reporter.read_dataset(&spec.training_dataset_id).await?;
        let valid_bytes = match &spec.validation_dataset_id {
            Some(id) => Some(ctx.reporter.read_dataset(id).await?),
            None => None,
        };
        let resume_files = match &ctx.resume_from {
            Some(c) => {
                let mut files = HashMap::new();
                for f in &c.files {
                    let bytes = ctx.reporter.read_checkpoint_file(c, &f.name).await?;
                    files.insert(f.name.clone(), bytes.to_vec());
                }
                Some(files)
            }
            None => None,
        };
        let job = Prepared {
            spec,
            lora,
            base,
            base_name: name,
            start,
            train_bytes,
            valid_bytes,
            resume_files,
        };
        match job.spec.method.kind {
            MethodKind::Dpo => {
                let beta = job.spec.method.hyperparameters.beta.unwrap_or(DEFAULT_BETA);
                let rpo_alpha = job.spec.method.hyperparameters.rpo_alpha.unwrap_or(0.0);
                let method = Dpo::new(beta, rpo_alpha, job.start.clone()).map_err(err("invalid_hyperparameters"))?;
                self.drive(ctx, job, method, "preference pairs").await
            }
            MethodKind::Reinforcement => {
                let graders = self.graders.clone().ok_or_else(|| {
                    TrainError::new(
                        "invalid_method",
                        "this server's trainer has no graders for reinforcement",
                    )
                })?;
                let batch = grader_for(&graders, &ctx.job.project, &job.spec).await?;
                dry_run_grader(&batch, &job).await?;
                ctx.reporter
                    .log(
                        Level::Info,
                        format!("the grader dry-ran on the first {RFT_DRY_RUN_ROWS} rows of each file without errors"),
                    )
                    .await;
                let cfg = grpo_config(&job.spec, job.base.stop_ids.clone());
                let reference = if cfg.beta > 0.0 { job.start.clone() } else { None };
                let reward = GraderReward {
                    batch,
                    runtime: tokio::runtime::Handle::current(),
                    format: job.spec.method.response_format.as_ref().map(JsonOutput::of),
                };
                let method = Grpo::new(cfg, reward, job.base.tokenizer.clone(), reference)
                    .map_err(err("invalid_hyperparameters"))?;
                self.drive(ctx, job, method, "prompts").await
            }
            _ => self.drive(ctx, job, Sft, "examples").await,
        }
    }
}

/// What every method's run needs, gathered before it starts.
struct Prepared {
    spec: JobSpec,
    lora: LoraConfig,
    base: Arc<super::local::LoadedBase>,
    base_name: String,
    start: Option<Adapter>,
    train_bytes: Bytes,
    valid_bytes: Option<Bytes>,
    resume_files: Option<HashMap<String, Vec<u8>>>,
}

/// What a method tells the job's events about its data, beyond the counts.
trait Describe {
    fn describe(&self) -> Option<String>;
}

impl Describe for Sft {
    fn describe(&self) -> Option<String> {
        None
    }
}

impl Describe for Dpo {
    fn describe(&self) -> Option<String> {
        let cut = self.truncated();
        Some(format!(
            "beta {}; rpo_alpha {}; {cut} pairs truncated to fit (the prompt kept from its end, each completion from its \
             start, as TRL); reference: {} (its log-probs computed once, before the first step)",
            self.beta(),
            self.rpo_alpha(),
            if self.references_an_adapter() {
                "the model the job starts from, frozen"
            } else {
                "the base model with the adapter disabled"
            }
        ))
    }
}

impl<R: Reward> Describe for Grpo<R> {
    fn describe(&self) -> Option<String> {
        let c = self.config();
        Some(format!(
            "{} completions per prompt at temperature {}, at most {} tokens each, graded by the job's grader; \
             {} validation samples per item; KL beta {}{}; {} prompts cut from their start to leave room for \
             the completion; the job fails when over {:.0}% of the samples graded fail",
            c.generations,
            c.temperature,
            c.max_completion_tokens,
            c.eval_samples,
            c.beta,
            if c.beta > 0.0 {
                " (reference: the base, or the model the job starts from)"
            } else {
                " (no reference)"
            },
            self.truncated(),
            c.max_error_fraction * 100.0
        ))
    }
}

/// The job's grader as the engine's [`Reward`]: a step's samples graded
/// concurrently (at the graders' batch concurrency; model graders keep
/// their providers' limits) on the runtime, from the training thread,
/// which waits for them. A grader error is a reward of 0 with its type.
///
/// As at OpenAI, `output_json` is filled only when the job has a
/// `response_format`; then a sample that does not parse is not graded: it
/// scores 0 as the sample's `sample_parse_error`.
struct GraderReward {
    batch: Batch,
    runtime: tokio::runtime::Handle,
    format: Option<JsonOutput>,
}

/// What a `response_format` asks of a sample's text. Until decoding is
/// constrained to the schema, the schema itself is not checked beyond its
/// top-level type.
#[derive(Clone, Copy, Debug)]
struct JsonOutput {
    object: bool,
}

impl JsonOutput {
    fn of(format: &serde_json::Value) -> JsonOutput {
        let object = format["type"] == "json_object" || format["json_schema"]["schema"]["type"] == "object";
        JsonOutput { object }
    }

    fn accepts(&self, value: &serde_json::Value) -> bool {
        !self.object || value.is_object()
    }
}

/// What the grader sees of an RFT sample: with a response format, the text
/// and its JSON (`{{ sample.output_json }}`, OpenAI's rule), or None when it
/// does not parse as what the format asks for (the sample's
/// `sample_parse_error`); without one, the text only.
fn rft_sample(text: &str, format: Option<&JsonOutput>) -> Option<crate::graders::Sample> {
    let Some(format) = format else {
        return Some(crate::graders::Sample {
            output_text: text.to_string(),
            ..Default::default()
        });
    };
    let sample = crate::graders::Sample::from_model_output(text);
    sample
        .output_json
        .as_ref()
        .is_some_and(|v| format.accepts(v))
        .then_some(sample)
}

impl Reward for GraderReward {
    fn grade(&self, samples: &[grpo::Sample<'_>]) -> lathe_engine::Result<Vec<grpo::Grade>> {
        let mut grades: Vec<Option<grpo::Grade>> = vec![None; samples.len()];
        let mut pairs = Vec::with_capacity(samples.len());
        let mut graded = Vec::with_capacity(samples.len());
        for (i, s) in samples.iter().enumerate() {
            let Some(sample) = rft_sample(s.text, self.format.as_ref()) else {
                grades[i] = Some(grpo::Grade {
                    error: Some("sample_parse_error".into()),
                    sample_error: true,
                    ..Default::default()
                });
                continue;
            };
            pairs.push((sample, s.item.clone()));
            graded.push(i);
        }
        let results = self.runtime.block_on(self.batch.grade_all(pairs));
        for (i, r) in graded.into_iter().zip(results) {
            grades[i] = Some(grade_of(r));
        }
        Ok(grades.into_iter().map(Option::unwrap_or_default).collect())
    }
}

fn grade_of(r: crate::graders::GraderResult) -> grpo::Grade {
    let errors = r.metadata.errors();
    grpo::Grade {
        reward: if errors.any() { 0.0 } else { r.reward },
        error: errors.kinds().first().map(|k| k.to_string()),
        scores: r.sub_rewards.into_iter().collect(),
        ..Default::default()
    }
}

/// The job's grader (inline, or the saved one it names), checked.
/// The job's grader, resolved in its project (a saved grader's name means
/// that project's grader).
async fn grader_for(graders: &Graders, project: &str, spec: &JobSpec) -> Result<Batch, TrainError> {
    let caller = Caller::system(project);
    let json = spec
        .method
        .grader
        .clone()
        .ok_or_else(|| TrainError::new("invalid_grader", "reinforcement fine-tuning needs a grader"))?;
    let (json, _) = graders
        .resolve_checked(&caller, json, "method.reinforcement.grader")
        .await
        .map_err(|e| TrainError::new("invalid_grader", e.to_string()))?;
    graders
        .batch(&caller, json)
        .await
        .map_err(|e| TrainError::new("invalid_grader", e.to_string()))
}

/// Grades the first rows of the training and validation files before any
/// training: a missing item field, a grader that cannot run (python that
/// fails, a model grader's provider down) fails the job here, with the
/// file, the line and the reason, instead of training on rewards of 0.
/// The sample is the row's reference answer (a trailing assistant message)
/// where it has one, else empty; a sample that does not parse is not an
/// error here.
async fn dry_run_grader(batch: &Batch, job: &Prepared) -> Result<(), TrainError> {
    let format = job.spec.method.response_format.as_ref().map(JsonOutput::of);
    let files =
        std::iter::once(("training", &job.train_bytes)).chain(job.valid_bytes.iter().map(|b| ("validation", b)));
    for (file, bytes) in files {
        let mut pairs = Vec::new();
        let mut lines = Vec::new();
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if pairs.len() == RFT_DRY_RUN_ROWS {
                break;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let item: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| TrainError::new("invalid_training_file", format!("{file} file line {}: {e}", n + 1)))?;
            let answer = item["messages"]
                .as_array()
                .and_then(|m| m.last())
                .filter(|m| m["role"] == "assistant")
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_string();
            // The file's answer, as a sample would be seen (an answer that
            // does not fit the response format is the sample's problem, not
            // the grader's: skipped).
            let Some(sample) = rft_sample(&answer, format.as_ref()) else {
                continue;
            };
            pairs.push((sample, item));
            lines.push(n + 1);
        }
        for (result, line) in batch.grade_all(pairs).await.into_iter().zip(lines) {
            let errors = result.metadata.errors();
            // With a response format a sample that does not fit is the
            // sample's problem; without one, a grader that finds no JSON in
            // the sample reads `output_json` that training never fills.
            let kinds: Vec<&str> = errors
                .kinds()
                .into_iter()
                .filter(|k| format.is_none() || *k != "sample_parse_error")
                .collect();
            if !kinds.is_empty() {
                let details = [
                    errors.python_grader_runtime_error_details.as_str(),
                    errors.python_grader_server_error_type.as_str(),
                    errors.model_grader_server_error_details.as_str(),
                    errors.other_error_details.as_str(),
                ]
                .into_iter()
                .filter(|d| !d.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
                return Err(TrainError::new(
                    "grader_failed_validation",
                    format!(
                        "the grader failed on the {file} file's line {line} before training: {}{}",
                        kinds.join(", "),
                        if details.is_empty() {
                            String::new()
                        } else {
                            format!(": {details}")
                        }
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Warns, at each evaluation, when most of the groups since the last one
/// had rewards without variance (they teach nothing).
#[derive(Default)]
struct ZeroStdWatch {
    sum: f64,
    steps: u32,
}

impl ZeroStdWatch {
    fn step(&mut self, m: &StepMetrics) -> Option<String> {
        let frac = m.values.get(grpo::FRAC_REWARD_ZERO_STD)?;
        self.sum += frac;
        self.steps += 1;
        if m.valid_values.is_empty() && m.step != m.total_steps {
            return None;
        }
        let mean = self.sum / self.steps.max(1) as f64;
        *self = Self::default();
        (mean > 0.5).then(|| {
            format!(
                "{:.0}% of the prompts' completions all got the same reward over the last steps: those groups \
                 teach nothing (zero advantage); make the task easier or the grader finer, or raise \
                 generations_per_prompt",
                mean * 100.0
            )
        })
    }
}

impl LocalTrainer {
    /// Encodes the job's files for `method`, runs the loop on a blocking
    /// thread and relays what it reports.
    async fn drive<M>(
        &self,
        ctx: TrainContext,
        job: Prepared,
        method: M,
        what: &str,
    ) -> Result<TrainOutcome, TrainError>
    where
        M: Method + Describe + Send + 'static,
        M::Example: Send + 'static,
    {
        let max_len = self.config.max_seq_len.min(job.base.model.max_positions());
        let base = job.base.clone();
        let (train_bytes, valid_bytes) = (job.train_bytes, job.valid_bytes);
        let (method, train, valid) = tokio::task::spawn_blocking(move || {
            let encoder = Encoder {
                tokenizer: &base.tokenizer,
                template: &base.template,
                bos: base.bos_id,
                max_len,
            };
            let train = encode_lines(&method, &encoder, &train_bytes)?;
            let valid = match &valid_bytes {
                Some(v) => encode_lines(&method, &encoder, v)?,
                None => Vec::new(),
            };
            Ok::<_, lathe_engine::EngineError>((method, train, valid))
        })
        .await
        .map_err(|e| TrainError::new("internal", e.to_string()))?
        .map_err(err("invalid_training_file"))?;
        if train.is_empty() {
            return Err(TrainError::new(
                "invalid_training_file",
                format!("the training file has no {what} to train on"),
            ));
        }
        let cfg = train_config(&job.spec, train.len(), job.lora, &self.config);
        let (epochs, batch_size, learning_rate) = (cfg.epochs, cfg.batch_size, cfg.learning_rate);
        let steps = cfg.steps_per_epoch(train.len()) * epochs;
        let resume: Option<Resume> = match &job.resume_files {
            Some(files) => Some(read_checkpoint(&job.base.model, files).map_err(err("checkpoint_corrupt"))?),
            None => None,
        };
        ctx.reporter
            .log(
                Level::Info,
                format!(
                    "training ({}): {} {what} ({} validation), {epochs} epochs of batch {batch_size} = {steps} steps, \
                     learning rate {learning_rate:.2e}, LoRA r={} alpha={} dropout {} on {}{}{}{}",
                    job.spec.method.kind.as_str(),
                    train.len(),
                    valid.len(),
                    cfg.lora.rank,
                    cfg.lora.alpha,
                    cfg.lora.dropout,
                    cfg.lora.targets.iter().map(|p| p.name()).collect::<Vec<_>>().join(","),
                    job.spec
                        .start_from
                        .as_ref()
                        .map(|m| format!("; continuing from {m}"))
                        .unwrap_or_default(),
                    method.describe().map(|d| format!("; {d}")).unwrap_or_default(),
                    resume
                        .as_ref()
                        .map(|r| format!("; resuming at step {}", r.step))
                        .unwrap_or_default()
                ),
            )
            .await;

        let (tx, mut rx) = mpsc::channel::<Msg>(16);
        let stop = Arc::new(AtomicBool::new(false));
        let sink = ChannelSink { tx, stop: stop.clone() };
        let (base, base_name, start) = (job.base, job.base_name, job.start);
        let worker = tokio::task::spawn_blocking(move || {
            let mut sink = sink;
            let mut method = method;
            run(
                &base.model,
                &mut method,
                &train,
                &valid,
                &cfg,
                &base_name,
                start.as_ref(),
                resume,
                &mut sink,
            )
        });
        let mut zero_std = ZeroStdWatch::default();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Metrics(m)) => {
                        if let Some(w) = zero_std.step(&m) {
                            ctx.reporter.log(Level::Warn, w).await;
                        }
                        ctx.reporter.metrics(job_metrics(&m)).await
                    }
                    Some(Msg::Checkpoint(m, files, reply)) => {
                        let files = files.into_iter().map(|(n, b)| (n, Bytes::from(b))).collect();
                        let kept = ctx.reporter.checkpoint(m.step, job_metrics(&m), files).await;
                        let ok = matches!(kept, Ok(true));
                        let _ = reply.send(ok);
                        kept?;
                    }
                    None => break,
                },
                () = ctx.stopped(), if !stop.load(Ordering::Relaxed) => stop.store(true, Ordering::Relaxed),
            }
        }
        let outcome = worker
            .await
            .map_err(|e| TrainError::new("internal", format!("the training thread failed: {e}")))?
            .map_err(err("training_failed"))?;
        Ok(match outcome {
            Outcome::Completed { trained_tokens } => TrainOutcome::Completed { trained_tokens },
            Outcome::Stopped { trained_tokens, .. } => TrainOutcome::Stopped { trained_tokens },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_methods_values_keep_openais_names_where_the_job_metrics_have_them() {
        let m = StepMetrics {
            step: 3,
            train_loss: 0.5,
            valid_loss: Some(0.7),
            values: [
                ("mean_token_accuracy".to_string(), 0.25),
                ("reward_mean".to_string(), 0.5),
                ("rewards/margins".to_string(), 1.5),
            ]
            .into(),
            valid_values: [
                ("mean_token_accuracy".to_string(), 0.75),
                ("rewards/margins".to_string(), 2.5),
            ]
            .into(),
            ..Default::default()
        };
        let j = job_metrics(&m);
        assert_eq!(j.train_mean_token_accuracy, Some(0.25));
        assert_eq!(j.valid_mean_token_accuracy, Some(0.75));
        assert_eq!(j.train_reward_mean, Some(0.5));
        assert_eq!(j.valid_reward_mean, None);
        assert_eq!((j.train_loss, j.valid_loss), (Some(0.5), Some(0.7)));
        let values: Vec<(&str, f64)> = j.values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(values, [("train_rewards/margins", 1.5), ("valid_rewards/margins", 2.5)]);
        // Stored rows from before `values` existed still read, and rows
        // without values are written as before.
        let old = r#"{"step":1,"total_steps":2,"epoch":0.5,"train_loss":1.0,"valid_loss":null,
            "train_mean_token_accuracy":null,"valid_mean_token_accuracy":null,"learning_rate":null,
            "tokens_per_second":null,"train_reward_mean":null,"valid_reward_mean":null}"#;
        let read: Metrics = serde_json::from_str(old).unwrap();
        assert!(read.values.is_empty());
        assert!(!serde_json::to_string(&read).unwrap().contains("values"));
        let back: Metrics = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
        assert_eq!(back, j);
    }
}
