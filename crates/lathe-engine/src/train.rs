//! The training loop, for every [`Method`]: the seeded data order, batches
//! cut into micro-batches within a token budget, gradient accumulation over
//! them, clipping, AdamW with warmup + decay, periodic validation and
//! checkpoints that make resume exact. What a method trains on and how its
//! loss is computed is the method's ([`super::method`]); SFT
//! ([`super::sft::Sft`]) is the first.
//!
//! Determinism: the data order of epoch e is a shuffle seeded by (seed, e);
//! the dropout masks of step s are seeded by (seed, s, micro-batch). So the
//! run is a function of the seed, and a checkpoint needs only the adapter,
//! the optimizer moments, the step and the method's own state (none for
//! SFT) to continue exactly.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::lora::{Adapter, LoraConfig, write_safetensors};
use super::method::{Method, Policy, StepInfo, Values, micro_batches};
use super::model::{BaseModel, TrainState};
use super::optim::{AdamW, AdamWParams, Schedule, clip_grad_norm, lr_factor};
use super::rng::Rng;
use super::sft::{Example, Sft};
use super::{EngineError, Result};

/// The loop's settings, whatever the method (a method's own, such as DPO's
/// beta, are the method's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: u64,
    /// Examples per optimizer step.
    pub batch_size: usize,
    pub learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub lora: LoraConfig,
    pub adamw: AdamWParams,
    /// Tokens per packed micro-batch (gradient accumulation beyond it).
    pub micro_batch_tokens: usize,
    /// Validate and checkpoint every this many steps (and at the end).
    pub eval_every: u64,
    /// Validation examples used at each evaluation (all when 0).
    pub eval_examples: usize,
}

impl TrainConfig {
    pub fn steps_per_epoch(&self, n: usize) -> u64 {
        n.div_ceil(self.batch_size.max(1)) as u64
    }
}

/// OpenAI's default epochs: aim at 3, at least ~100 example passes, at most
/// ~25,000.
pub fn auto_epochs(n: usize) -> u64 {
    let n = n.max(1) as u64;
    if n * 3 < 100 {
        (100 / n).min(25)
    } else if n * 3 > 25_000 {
        (25_000 / n).max(1)
    } else {
        3
    }
}

/// Lathe's default batch size: small batches while the set is small, so
/// there are enough updates; up to 32.
pub fn auto_batch_size(n: usize) -> usize {
    match n {
        0..64 => (n / 16).max(1),
        64..256 => 4,
        _ => 8,
    }
}

/// A learning rate suited to LoRA (PEFT/TRL use 1e-4..2e-4 for long runs;
/// Lathe's short CPU runs learn faster with more).
pub const AUTO_LEARNING_RATE: f64 = 1e-3;

/// What one step or evaluation measured. The common measures have fields;
/// a method's own (SFT's token accuracy, DPO's rewards) are `values` by
/// name, and the same names in `valid_values` at evaluations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    pub train_loss: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
    /// The tokens this step trained on.
    pub step_tokens: u64,
    /// The tokens trained on since the run's start, this step's included.
    pub trained_tokens: u64,
    pub valid_loss: Option<f64>,
    /// The method's measures of the step's batch.
    pub values: Values,
    /// The method's measures of the validation examples; empty between
    /// evaluations and without validation data.
    pub valid_values: Values,
}

/// Where the loop reports; implemented by the jobs adapter and by tests.
pub trait Sink {
    fn metrics(&mut self, m: &StepMetrics);
    /// Persists a checkpoint; false means stop (the job is no longer ours).
    fn checkpoint(&mut self, m: &StepMetrics, files: Vec<(String, Vec<u8>)>) -> bool;
    fn should_stop(&self) -> bool;
}

/// Where a run continues from.
pub struct Resume {
    pub step: u64,
    pub trained_tokens: u64,
    pub adapter: Adapter,
    pub optimizer: HashMap<String, Tensor>,
    /// The checkpoint's other files: the method's state.
    pub method_files: HashMap<String, Vec<u8>>,
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Completed { trained_tokens: u64 },
    Stopped { trained_tokens: u64, step: u64 },
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    epoch: u64,
    position_in_epoch: u64,
    optimizer_steps: u64,
    trained_tokens: u64,
    seed: u64,
    /// The RNG streams are derived from (seed, purpose, epoch or step):
    /// nothing else to restore.
    rng: String,
}

/// Runs (or resumes) SFT to the end or until the sink says stop.
pub fn run_sft(
    model: &BaseModel,
    train: &[Example],
    valid: &[Example],
    cfg: &TrainConfig,
    base_model_name: &str,
    resume: Option<Resume>,
    sink: &mut dyn Sink,
) -> Result<Outcome> {
    run(model, &mut Sft, train, valid, cfg, base_model_name, None, resume, sink)
}

/// Runs (or resumes) a method to the end or until the sink says stop.
/// `start`: the adapter a fresh run continues training from (a job that
/// starts from a fine-tuned model) instead of a new one; its shapes must
/// be those of `cfg.lora`. A resumed run takes its adapter from `resume`.
#[allow(clippy::too_many_arguments)]
pub fn run<M: Method>(
    model: &BaseModel,
    method: &mut M,
    train: &[M::Example],
    valid: &[M::Example],
    cfg: &TrainConfig,
    base_model_name: &str,
    start: Option<&Adapter>,
    resume: Option<Resume>,
    sink: &mut dyn Sink,
) -> Result<Outcome> {
    if train.is_empty() {
        return Err(EngineError::Data("the training file has no example to train on".into()));
    }
    let dev = &model.device;
    let (adapter, vars) = Adapter::init(&model.config, cfg.lora.clone(), &mut Rng::derive(cfg.seed, &[0]), dev)?;
    let mut opt = AdamW::new(&vars, cfg.adamw)?;
    let steps_per_epoch = cfg.steps_per_epoch(train.len());
    let total = steps_per_epoch * cfg.epochs.max(1);
    let warmup = (cfg.warmup_ratio * total as f64).ceil() as u64;
    let mut step = 0u64;
    let mut trained_tokens = 0u64;
    let load = |from: &Adapter, what: &str| -> Result<()> {
        let from = from.named();
        let mine = adapter.named();
        if from.len() != mine.len() {
            return Err(EngineError::Data(format!(
                "the {what}'s adapter does not match the job's LoRA settings"
            )));
        }
        for (var, (_, t)) in vars.iter().zip(&from) {
            if var.dims() != t.dims() {
                return Err(EngineError::Data(format!("the {what}'s adapter shapes do not match")));
            }
            var.set(t)?;
        }
        Ok(())
    };
    if let (Some(start), None) = (start, &resume) {
        load(start, "starting model")?;
    }
    if let Some(r) = resume {
        load(&r.adapter, "checkpoint")?;
        opt.load_state(r.step, &r.optimizer)?;
        method.load_state(&r.method_files)?;
        step = r.step;
        trained_tokens = r.trained_tokens;
    }
    let eval_set: &[M::Example] = if cfg.eval_examples > 0 && valid.len() > cfg.eval_examples {
        &valid[..cfg.eval_examples]
    } else {
        valid
    };
    method.prepare(model, train, eval_set)?;
    let policy = Policy {
        model,
        adapter: &adapter,
    };
    let mut order: Vec<usize> = Vec::new();
    let mut order_epoch = u64::MAX;
    while step < total {
        if sink.should_stop() {
            return Ok(Outcome::Stopped { trained_tokens, step });
        }
        let started = std::time::Instant::now();
        let epoch = step / steps_per_epoch;
        if epoch != order_epoch {
            order = (0..train.len()).collect();
            Rng::derive(cfg.seed, &[1, epoch]).shuffle(&mut order);
            order_epoch = epoch;
        }
        let at = (step % steps_per_epoch) as usize * cfg.batch_size;
        let batch = &order[at..(at + cfg.batch_size).min(train.len())];
        let mut sums = M::Sums::default();
        let units = method.begin_step(policy, StepInfo { step, seed: cfg.seed }, train, batch, &mut sums)?;
        let normaliser = method.normaliser(&units);
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut tokens = 0usize;
        for (k, range) in micro_batches(&units, cfg.micro_batch_tokens, |u| method.tokens(u))
            .into_iter()
            .enumerate()
        {
            let mb = &units[range];
            let mut rng = Rng::derive(cfg.seed, &[2, step, k as u64]);
            let loss = method.loss(
                policy,
                mb,
                normaliser,
                Some(TrainState {
                    dropout: cfg.lora.dropout as f32,
                    rng: &mut rng,
                }),
                &mut sums,
            )?;
            tokens += mb.iter().map(|u| method.tokens(u)).sum::<usize>();
            let g = loss.backward()?;
            for (slot, var) in grads.iter_mut().zip(&vars) {
                let gi = g.get(var.as_tensor()).cloned().unwrap_or(var.as_tensor().zeros_like()?);
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + gi)?,
                    None => gi,
                });
            }
        }
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .map(|g| g.expect("every var has a gradient"))
            .collect();
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(EngineError::Data(format!(
                "the gradient became non-finite at step {}; lower the learning rate",
                step + 1
            )));
        }
        let lr = cfg.learning_rate * lr_factor(cfg.schedule, step, warmup, total);
        opt.step(&vars, &grads, lr)?;
        step += 1;
        trained_tokens += tokens as u64;
        let elapsed = started.elapsed().as_secs_f64();
        let summary = method.summarize(&sums, normaliser);
        let mut m = StepMetrics {
            step,
            total_steps: total,
            epoch: step as f64 / steps_per_epoch as f64,
            train_loss: summary.loss,
            learning_rate: lr,
            grad_norm,
            tokens_per_second: tokens as f64 / elapsed.max(1e-9),
            step_tokens: tokens as u64,
            trained_tokens,
            valid_loss: None,
            values: summary.values,
            valid_values: Values::new(),
        };
        let at_eval = step.is_multiple_of(cfg.eval_every.max(1)) || step == total;
        if at_eval {
            if !eval_set.is_empty() {
                let v = method.validate(policy, eval_set, cfg.micro_batch_tokens)?;
                m.valid_loss = v.loss;
                m.valid_values = v.values;
            }
            sink.metrics(&m);
            let files = checkpoint_files(
                &adapter,
                &opt,
                &*method,
                cfg,
                base_model_name,
                step,
                steps_per_epoch,
                trained_tokens,
            )?;
            if !sink.checkpoint(&m, files) {
                return Ok(Outcome::Stopped { trained_tokens, step });
            }
        } else {
            sink.metrics(&m);
        }
    }
    Ok(Outcome::Completed { trained_tokens })
}

pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";

const LOOP_FILES: [&str; 4] = [ADAPTER_FILE, ADAPTER_CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE];

#[allow(clippy::too_many_arguments)]
fn checkpoint_files<M: Method + ?Sized>(
    adapter: &Adapter,
    opt: &AdamW,
    method: &M,
    cfg: &TrainConfig,
    base_model_name: &str,
    step: u64,
    steps_per_epoch: u64,
    trained_tokens: u64,
) -> Result<Vec<(String, Vec<u8>)>> {
    let (weights, config) = adapter.to_peft(base_model_name)?;
    let state = TrainerState {
        step,
        epoch: step / steps_per_epoch,
        position_in_epoch: (step % steps_per_epoch) * cfg.batch_size as u64,
        optimizer_steps: opt.t,
        trained_tokens,
        seed: cfg.seed,
        rng: "xoshiro256** streams derived from (seed, 1, epoch) for data order and (seed, 2, step, micro) for dropout"
            .into(),
    };
    let mut files = vec![
        (ADAPTER_FILE.into(), weights),
        (ADAPTER_CONFIG_FILE.into(), config),
        (OPTIMIZER_FILE.into(), write_safetensors(&opt.state())?),
        (
            STATE_FILE.into(),
            serde_json::to_vec_pretty(&state).map_err(|e| EngineError::Data(e.to_string()))?,
        ),
    ];
    for (name, bytes) in method.state()? {
        if LOOP_FILES.contains(&name.as_str()) || files.iter().any(|(n, _)| *n == name) {
            return Err(EngineError::Data(format!(
                "the method's checkpoint file {name} is named twice"
            )));
        }
        files.push((name, bytes));
    }
    Ok(files)
}

/// Reads a checkpoint written by [`run`]; the files that are not the
/// loop's are the method's state ([`Resume::method_files`]).
pub fn read_checkpoint(model: &BaseModel, files: &HashMap<String, Vec<u8>>) -> Result<Resume> {
    let get = |k: &str| {
        files
            .get(k)
            .ok_or_else(|| EngineError::Data(format!("the checkpoint has no {k}")))
    };
    let state: TrainerState =
        serde_json::from_slice(get(STATE_FILE)?).map_err(|e| EngineError::Data(format!("{STATE_FILE}: {e}")))?;
    let adapter = Adapter::from_peft(
        &model.config,
        get(ADAPTER_FILE)?,
        get(ADAPTER_CONFIG_FILE)?,
        &model.device,
    )?;
    let optimizer = candle_core::safetensors::load_buffer(get(OPTIMIZER_FILE)?, &model.device)?
        .into_iter()
        .map(|(k, v)| v.to_dtype(DType::F32).map(|v| (k, v)))
        .collect::<candle_core::Result<_>>()?;
    let method_files = files
        .iter()
        .filter(|(name, _)| !LOOP_FILES.contains(&name.as_str()))
        .map(|(name, bytes)| (name.clone(), bytes.clone()))
        .collect();
    Ok(Resume {
        step: state.step,
        trained_tokens: state.trained_tokens,
        adapter,
        optimizer,
        method_files,
    })
}
