//! Evals as the jobs' checkpoint evaluator: at each checkpoint of a job
//! with a `checkpoint_eval`, one eval run of the checkpoint's model on the
//! job's validation data.

use std::sync::Arc;

use async_trait::async_trait;

use super::manager::{CreateRun, Evals, MAX_CONCURRENCY, Page};
use super::model::{DataSource, RunRecord, RunState, SamplingParams};
use super::stats;
use crate::auth::model::Caller;
use crate::error::FieldViolation;
use crate::jobs::evaluator::{CheckpointEvaluator, CheckpointScore};
use crate::jobs::model::{CheckpointEval, JobRecord, JobSpec};
use crate::jobs::trainer::{StopHandle, StopReason};

/// Where the messages come from when a checkpoint eval names none: each
/// validation row's own (see `work::input_messages`).
const ROW_MESSAGES: &str = "item.messages";

pub struct CheckpointEvals(pub Arc<Evals>);

fn source(spec: &CheckpointEval, model: &str) -> DataSource {
    DataSource::Model {
        model: model.to_string(),
        input_messages: spec.input_messages.clone(),
        item_reference: spec.input_messages.is_empty().then(|| ROW_MESSAGES.to_string()),
        sampling: SamplingParams {
            // Greedy unless asked otherwise: checkpoints are compared on
            // their most likely answers.
            temperature: spec.temperature.or(Some(0.0)),
            top_p: spec.top_p,
            max_tokens: spec.max_tokens,
            seed: spec.seed,
            stop: spec.stop.clone(),
        },
        tools: None,
        response_format: None,
    }
}

/// The run's name: one per job and step, so a restarted job finds it.
fn run_name(job_id: &str, step: u64) -> String {
    format!("{job_id} checkpoint step {step}")
}

impl CheckpointEvals {
    async fn find_run(&self, caller: &Caller, eval_id: &str, name: &str) -> Result<Option<RunRecord>, String> {
        let mut token = String::new();
        loop {
            let (runs, next) = self
                .0
                .list_runs(
                    caller,
                    eval_id,
                    None,
                    &Page {
                        size: 100,
                        token: token.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.public_message())?;
            if let Some(run) = runs.into_iter().find(|r| r.spec.name == name) {
                return Ok(Some(run));
            }
            if next.is_empty() {
                return Ok(None);
            }
            token = next;
        }
    }

    /// Waits for the run to end; on a stop, cancels it if the job was
    /// cancelled (a paused or shut-down job comes back for it).
    async fn wait(&self, caller: &Caller, id: &str, stop: &StopHandle) -> Result<RunRecord, String> {
        let mut live = self.0.bus.subscribe(id);
        loop {
            live.borrow_and_update();
            let run = self.0.get_run(caller, id).await.map_err(|e| e.public_message())?;
            if run.state.is_terminal() {
                return Ok(run);
            }
            tokio::select! {
                _ = tokio::time::timeout(self.0.config.poll, live.changed()) => {}
                () = stop.stopped() => {
                    if stop.reason() == Some(StopReason::Cancelled) {
                        let _ = self.0.cancel_run(caller, id).await;
                    }
                    return Err("the job stopped".into());
                }
            }
        }
    }
}

#[async_trait]
impl CheckpointEvaluator for CheckpointEvals {
    async fn check(&self, caller: &Caller, spec: &JobSpec) -> Vec<FieldViolation> {
        let Some(ce) = &spec.checkpoint_eval else {
            return Vec::new();
        };
        let mut v = Vec::new();
        match self.0.get_eval(caller, &ce.eval_id).await {
            Err(_) => v.push(FieldViolation::new(
                "checkpoint_eval.eval_id",
                format!("{:?} is not an eval", ce.eval_id),
            )),
            Ok(eval) => {
                if !ce.criterion.is_empty() && !eval.spec.criteria.iter().any(|c| c.name == ce.criterion) {
                    v.push(FieldViolation::new(
                        "checkpoint_eval.criterion",
                        format!(
                            "{:?} is not a criterion of eval {}; its criteria are {}",
                            ce.criterion,
                            eval.id,
                            eval.spec
                                .criteria
                                .iter()
                                .map(|c| format!("{:?}", c.name))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        if ce.concurrency > MAX_CONCURRENCY {
            v.push(FieldViolation::new(
                "checkpoint_eval.concurrency",
                format!("must be between 0 (default) and {MAX_CONCURRENCY}"),
            ));
        }
        let mut problems = Vec::new();
        Evals::check_source(&Some(source(ce, "checkpoint")), &mut problems);
        v.extend(
            problems
                .into_iter()
                .map(|p| FieldViolation::new(p.field.replacen("model.", "checkpoint_eval.", 1), p.description)),
        );
        v
    }

    async fn evaluate(
        &self,
        job: &JobRecord,
        step: u64,
        model: &str,
        stop: &StopHandle,
    ) -> Result<CheckpointScore, String> {
        let ce = job
            .spec
            .checkpoint_eval
            .as_ref()
            .ok_or("the job has no checkpoint eval")?;
        let dataset_id = job
            .spec
            .validation_dataset_id
            .clone()
            .ok_or("the job has no validation dataset")?;
        let name = run_name(&job.id, step);
        // The server acts in the job's project: its eval, data and checkpoints.
        let caller = Caller::system(&job.project);
        let run = match self.find_run(&caller, &ce.eval_id, &name).await? {
            Some(run) => run,
            None => self
                .0
                .create_run(
                    &caller,
                    CreateRun {
                        eval_id: ce.eval_id.clone(),
                        dataset_id,
                        source: Some(source(ce, model)),
                        concurrency: ce.concurrency,
                        error_rate_threshold: 0.0,
                        name,
                        metadata: Default::default(),
                        budget: Default::default(),
                    },
                )
                .await
                .map_err(|e| e.public_message())?,
        };
        let run = self.wait(&caller, &run.id, stop).await?;
        if run.state != RunState::Completed {
            return Err(format!(
                "eval run {} {}: {}",
                run.id,
                run.state.as_str(),
                run.error.unwrap_or_default()
            ));
        }
        let p = &run.progress;
        let (passed, failed) = if ce.criterion.is_empty() {
            (p.passed, p.failed)
        } else {
            let i = run
                .spec
                .criteria
                .iter()
                .position(|c| *c == ce.criterion)
                .ok_or_else(|| format!("eval run {} has no criterion {:?}", run.id, ce.criterion))?;
            let c = p.per_criterion.get(i).cloned().unwrap_or_default();
            (c.passed, c.failed)
        };
        Ok(CheckpointScore {
            run_id: run.id,
            pass_rate: stats::rate(passed, passed + failed),
            graded: passed + failed,
            errored: p.errored,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn default_input_is_the_rows_messages_sampled_greedily() {
        let DataSource::Model {
            item_reference,
            sampling,
            ..
        } = source(&CheckpointEval::default(), "m")
        else {
            panic!("model source expected")
        };
        assert_eq!(item_reference.as_deref(), Some(ROW_MESSAGES));
        assert_eq!(sampling.temperature, Some(0.0));
        let with_messages = CheckpointEval {
            input_messages: vec![Value::Null],
            temperature: Some(0.7),
            ..Default::default()
        };
        let DataSource::Model {
            item_reference,
            sampling,
            ..
        } = source(&with_messages, "m")
        else {
            panic!("model source expected")
        };
        assert_eq!(item_reference, None);
        assert_eq!(sampling.temperature, Some(0.7));
    }
}
