//! A test-only `Trainer`: deterministic metrics and checkpoints, paced by
//! a per-step delay that stands in for compute. It lives under tests/ and
//! in an example, never in the product binary.

use std::time::Duration;

use async_trait::async_trait;
use lathe::error::FieldViolation;
use lathe::jobs::model::{JobSpec, Metrics};
use lathe::jobs::trainer::{TrainContext, TrainError, TrainOutcome, Trainer};

pub const MODEL: &str = "tiny-test-model";

#[derive(Clone, Debug)]
pub struct ScriptedTrainer {
    pub steps: u64,
    pub checkpoint_every: u64,
    pub step_time: Duration,
    /// Fail with out_of_memory when reaching this step.
    pub fail_at: Option<u64>,
    /// Validation loss reported at the k-th checkpoint (default: falling).
    pub valid_losses: Vec<f64>,
}

impl Default for ScriptedTrainer {
    fn default() -> Self {
        Self {
            steps: 20,
            checkpoint_every: 5,
            step_time: Duration::from_millis(1),
            fail_at: None,
            valid_losses: Vec::new(),
        }
    }
}

/// The state a run ends with: a fold over steps, so a resumed run that
/// skipped or repeated a step would end somewhere else.
pub fn fold(acc: u64, step: u64) -> u64 {
    acc.wrapping_mul(31).wrapping_add(step * step + 7)
}

pub fn expected_state(steps: u64) -> u64 {
    (1..=steps).fold(0, fold)
}

#[async_trait]
impl Trainer for ScriptedTrainer {
    fn check(&self, spec: &JobSpec) -> Result<(), Vec<FieldViolation>> {
        if spec.base_model != MODEL {
            return Err(vec![FieldViolation::new(
                "base_model",
                format!("unknown base model {:?}", spec.base_model),
            )]);
        }
        Ok(())
    }

    async fn train(&self, ctx: TrainContext) -> Result<TrainOutcome, TrainError> {
        let (mut step, mut acc) = (0u64, 0u64);
        if let Some(c) = &ctx.resume_from {
            let bytes = ctx.reporter.read_checkpoint_file(c, "state.json").await?;
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| TrainError::new("checkpoint_corrupt", e.to_string()))?;
            step = v["step"].as_u64().unwrap_or(0);
            acc = v["acc"].as_u64().unwrap_or(0);
        }
        let data = ctx.reporter.read_dataset(&ctx.job.spec.training_dataset_id).await?;
        let rows = data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
        while step < self.steps {
            if ctx.stop_requested() {
                return Ok(TrainOutcome::Stopped {
                    trained_tokens: step * rows,
                });
            }
            if self.step_time.is_zero() {
                // A timer, even of zero, waits for the next millisecond tick.
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(self.step_time).await;
            }
            step += 1;
            acc = fold(acc, step);
            if self.fail_at == Some(step) {
                return Err(TrainError::new(
                    "out_of_memory",
                    format!("ran out of memory at step {step}; lower batch_size"),
                ));
            }
            let mut metrics = Metrics {
                step,
                total_steps: self.steps,
                epoch: step as f64 / self.steps as f64,
                train_loss: Some(2.0 / (step as f64 + 1.0)),
                learning_rate: Some(1e-4),
                // A step "trains on" each row once, in its step time.
                step_tokens: Some(rows),
                tokens_per_second: (!self.step_time.is_zero()).then(|| rows as f64 / self.step_time.as_secs_f64()),
                ..Default::default()
            };
            ctx.reporter.metrics(metrics.clone()).await;
            if step % self.checkpoint_every == 0 || step == self.steps {
                let k = (step / self.checkpoint_every) as usize;
                metrics.valid_loss = Some(
                    self.valid_losses
                        .get(k.saturating_sub(1))
                        .copied()
                        .unwrap_or(1.0 / (step as f64 + 1.0)),
                );
                let state = serde_json::json!({"step": step, "acc": acc}).to_string();
                let kept = ctx
                    .reporter
                    .checkpoint(step, metrics, vec![("state.json".into(), state.into())])
                    .await?;
                if !kept {
                    return Ok(TrainOutcome::Stopped {
                        trained_tokens: step * rows,
                    });
                }
            }
        }
        Ok(TrainOutcome::Completed {
            trained_tokens: self.steps * rows,
        })
    }
}
