//! The SFT loop: packed micro-batches with block-diagonal causal masks,
//! completion-only loss normalised over the whole accumulated batch (as
//! TRL), AdamW, warmup + decay, gradient clipping, periodic validation and
//! checkpoints that make resume exact.
//!
//! Determinism: the data order of epoch e is a shuffle seeded by (seed, e);
//! the dropout masks of step s are seeded by (seed, s, micro-batch). So the
//! run is a function of the seed, and a checkpoint needs only the adapter,
//! the optimizer moments and the step to continue exactly.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::lora::{Adapter, LoraConfig, write_safetensors};
use super::model::{BaseModel, Input, Segments, TrainState, log_softmax};
use super::optim::{AdamW, AdamWParams, Schedule, clip_grad_norm, lr_factor};
use super::rng::Rng;
use super::sft::Example;
use super::{EngineError, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
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

impl SftConfig {
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

/// What one step or evaluation measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
    pub trained_tokens: u64,
    pub valid_loss: Option<f64>,
    pub valid_accuracy: Option<f64>,
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

/// Loss pieces of one packed micro-batch: the summed negative log-likelihood
/// over trained tokens (a scalar tensor), their count and how many the
/// model got right (argmax).
pub fn packed_loss(
    model: &BaseModel,
    adapter: &Adapter,
    examples: &[&Example],
    train: Option<TrainState<'_>>,
) -> Result<(Tensor, usize, usize)> {
    let dev = &model.device;
    let mut ids = Vec::new();
    let mut pos = Vec::new();
    let mut lengths = Vec::with_capacity(examples.len());
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for ex in examples {
        let base = ids.len();
        lengths.push(ex.ids.len());
        for (j, &id) in ex.ids.iter().enumerate() {
            ids.push(id);
            pos.push(j as u32);
            if j > 0 && ex.trained[j] {
                rows.push((base + j - 1) as u32);
                targets.push(id);
            }
        }
    }
    let l = ids.len();
    if pos.iter().any(|&p| p as usize >= model.max_positions()) {
        return Err(EngineError::Data(format!(
            "an example is longer than the model's {} positions",
            model.max_positions()
        )));
    }
    let ids_t = Tensor::from_vec(ids, (1, l), dev)?;
    let pos_t = Tensor::from_vec(pos, l, dev)?;
    let segments = Segments::new(&lengths, dev)?;
    let track = train.is_some();
    let hidden = model.forward(
        &Input {
            ids: &ids_t,
            positions: &pos_t,
            mask: None,
            segments: Some(&segments),
        },
        Some(adapter),
        None,
        train,
    )?;
    let n = rows.len();
    let rows_t = Tensor::from_vec(rows, n, dev)?;
    let picked = hidden.index_select(&rows_t, 0)?;
    let logits = model.logits(&picked, track)?;
    let logp = log_softmax(&logits)?;
    let targets_t = Tensor::from_vec(targets.clone(), (n, 1), dev)?;
    let nll = logp.gather(&targets_t, 1)?.neg()?.sum_all()?;
    let argmax = logits.detach().argmax(1)?.to_vec1::<u32>()?;
    let correct = argmax.iter().zip(&targets).filter(|(a, b)| a == b).count();
    Ok((nll, n, correct))
}

/// Cuts a batch into micro-batches of at most `budget` tokens (one
/// example longer than the budget goes alone).
pub fn micro_batches<'a>(batch: &[&'a Example], budget: usize) -> Vec<Vec<&'a Example>> {
    let mut out: Vec<Vec<&Example>> = Vec::new();
    let mut used = 0;
    for ex in batch {
        if out.is_empty() || used + ex.ids.len() > budget {
            out.push(Vec::new());
            used = 0;
        }
        used += ex.ids.len();
        out.last_mut().expect("pushed above").push(ex);
    }
    out
}

/// Mean loss and token accuracy over examples, without gradients.
pub fn evaluate(model: &BaseModel, adapter: &Adapter, examples: &[Example], budget: usize) -> Result<(f64, f64)> {
    let refs: Vec<&Example> = examples.iter().collect();
    let (mut nll, mut n, mut correct) = (0f64, 0usize, 0usize);
    for mb in micro_batches(&refs, budget) {
        let (l, k, c) = packed_loss(model, adapter, &mb, None)?;
        nll += l.to_scalar::<f32>()? as f64;
        n += k;
        correct += c;
    }
    Ok((nll / n.max(1) as f64, correct as f64 / n.max(1) as f64))
}

/// Runs (or resumes) SFT to the end or until the sink says stop.
pub fn run_sft(
    model: &BaseModel,
    train: &[Example],
    valid: &[Example],
    cfg: &SftConfig,
    base_model_name: &str,
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
    if let Some(r) = resume {
        let from = r.adapter.named();
        let mine = adapter.named();
        if from.len() != mine.len() {
            return Err(EngineError::Data(
                "the checkpoint's adapter does not match the job's LoRA settings".into(),
            ));
        }
        for (var, (_, t)) in vars.iter().zip(&from) {
            if var.dims() != t.dims() {
                return Err(EngineError::Data("the checkpoint's adapter shapes do not match".into()));
            }
            var.set(t)?;
        }
        opt.load_state(r.step, &r.optimizer)?;
        step = r.step;
        trained_tokens = r.trained_tokens;
    }
    let eval_set: &[Example] = if cfg.eval_examples > 0 && valid.len() > cfg.eval_examples {
        &valid[..cfg.eval_examples]
    } else {
        valid
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
        let batch: Vec<&Example> = order[at..(at + cfg.batch_size).min(train.len())]
            .iter()
            .map(|&i| &train[i])
            .collect();
        let n_trained: usize = batch.iter().map(|e| e.trained_tokens()).sum();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut nll, mut correct, mut tokens) = (0f64, 0usize, 0usize);
        for (k, mb) in micro_batches(&batch, cfg.micro_batch_tokens).iter().enumerate() {
            let mut rng = Rng::derive(cfg.seed, &[2, step, k as u64]);
            let (loss_sum, _, c) = packed_loss(
                model,
                &adapter,
                mb,
                Some(TrainState {
                    dropout: cfg.lora.dropout as f32,
                    rng: &mut rng,
                }),
            )?;
            nll += loss_sum.to_scalar::<f32>()? as f64;
            correct += c;
            tokens += mb.iter().map(|e| e.ids.len()).sum::<usize>();
            let loss = (loss_sum / n_trained.max(1) as f64)?;
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
        let mut m = StepMetrics {
            step,
            total_steps: total,
            epoch: step as f64 / steps_per_epoch as f64,
            train_loss: nll / n_trained.max(1) as f64,
            train_accuracy: correct as f64 / n_trained.max(1) as f64,
            learning_rate: lr,
            grad_norm,
            tokens_per_second: tokens as f64 / elapsed.max(1e-9),
            trained_tokens,
            valid_loss: None,
            valid_accuracy: None,
        };
        let at_eval = step.is_multiple_of(cfg.eval_every.max(1)) || step == total;
        if at_eval {
            if !eval_set.is_empty() {
                let (vl, va) = evaluate(model, &adapter, eval_set, cfg.micro_batch_tokens)?;
                m.valid_loss = Some(vl);
                m.valid_accuracy = Some(va);
            }
            sink.metrics(&m);
            let files = checkpoint_files(
                &adapter,
                &opt,
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

fn checkpoint_files(
    adapter: &Adapter,
    opt: &AdamW,
    cfg: &SftConfig,
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
    Ok(vec![
        (ADAPTER_FILE.into(), weights),
        (ADAPTER_CONFIG_FILE.into(), config),
        (OPTIMIZER_FILE.into(), write_safetensors(&opt.state())?),
        (
            STATE_FILE.into(),
            serde_json::to_vec_pretty(&state).map_err(|e| EngineError::Data(e.to_string()))?,
        ),
    ])
}

/// Reads a checkpoint written by `run_sft`.
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
    Ok(Resume {
        step: state.step,
        trained_tokens: state.trained_tokens,
        adapter,
        optimizer,
    })
}
