//! The training-method seam. What differs between supervised fine-tuning,
//! preference optimisation (DPO) and reinforcement fine-tuning (GRPO) is
//! behind [`Method`]: what an example is, what a step trains on, the loss of
//! a micro-batch and what it measures, validation, and any state of its own.
//! Everything else is the loop's ([`super::train::run`]), written once: data
//! order, batches, micro-batches within a token budget, gradient
//! accumulation, clipping, AdamW and its schedule, the validation and
//! checkpoint cadence, exact resume, stopping at a step boundary.
//!
//! Invariant: a method never touches gradients, the optimizer or the data
//! order. It returns each micro-batch's loss already divided by the step's
//! normaliser (so the summed gradients are those of the whole batch), and
//! whatever randomness it draws comes from streams derived from (seed,
//! stream, step) or from state it saves in checkpoints. Streams 0 (adapter
//! init), 1 (data order) and 2 (dropout) are the loop's; a method takes 3
//! and up. So a run stays a function of its seed, and a checkpoint resumes
//! it exactly, whatever the method.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use candle_core::Tensor;
use serde_json::Value;

use super::chat_template::ChatTemplate;
use super::lora::Adapter;
use super::model::{BaseModel, TrainState};
use super::tokenizer::Tokenizer;
use super::{EngineError, Result};

/// A method's measures by name, e.g. SFT's `mean_token_accuracy` or DPO's
/// `rewards/margins`. One name means one quantity, in training and in
/// validation alike.
pub type Values = BTreeMap<String, f64>;

/// The model a method computes with: the frozen base and the adapter being
/// trained.
#[derive(Clone, Copy)]
pub struct Policy<'a> {
    pub model: &'a BaseModel,
    pub adapter: &'a Adapter,
}

/// The step a method is asked to start.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    /// 0-based: the number of optimizer steps taken before this one.
    pub step: u64,
    /// The run's seed, for streams derived as `Rng::derive(seed, &[3.., step])`.
    pub seed: u64,
}

/// What turns a dataset line into token ids.
#[derive(Clone, Copy)]
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    pub bos: Option<u32>,
    /// Longest sequence in tokens; longer ones are cut from the end.
    pub max_len: usize,
}

/// A training step's measures, from [`Method::summarize`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepSummary {
    pub loss: f64,
    pub values: Values,
}

/// A validation's measures. `loss` is None for a method that validates
/// without one (GRPO samples and grades).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Validation {
    pub loss: Option<f64>,
    pub values: Values,
}

/// A training method: the part of fine-tuning that is not the loop.
///
/// A step goes: the loop picks the batch (indices into the training
/// examples, in the seeded order); [`Method::begin_step`] turns it into
/// units; [`Method::normaliser`] measures the whole batch; the loop cuts the
/// units into micro-batches of at most `micro_batch_tokens` by
/// [`Method::tokens`], and for each calls [`Method::loss`] with the dropout
/// stream of (seed, step, micro-batch), backpropagates, and sums the
/// gradients; then it clips, steps AdamW and asks [`Method::summarize`] for
/// the step's loss and values.
pub trait Method {
    /// One encoded training or validation example: SFT's ids with trained
    /// flags; DPO's (prompt, chosen, rejected); GRPO's prompt with what its
    /// graders need.
    type Example;
    /// What micro-batches are cut from. SFT and DPO train on their examples
    /// (a borrowed example); GRPO on the completions it sampled at the start
    /// of the step, each with its advantage (owned).
    type Unit<'a>
    where
        Self: 'a;
    /// What [`Method::loss`] (and [`Method::begin_step`]) add up over a
    /// step, for [`Method::summarize`]: SFT's summed NLL and right guesses.
    type Sums: Default;

    /// One dataset line (already validated at upload) as an example; None
    /// when it has nothing to train on.
    fn encode(&self, encoder: &Encoder<'_>, line: &Value) -> Result<Option<Self::Example>>;

    /// Runs once before the first step of every start, after
    /// [`Method::load_state`] when resuming; `eval` is the validation
    /// examples that [`Method::validate`] will be given. DPO computes its
    /// reference log-probs here (and keeps those it got back from a
    /// checkpoint). It sees the base model, not the adapter being trained:
    /// a reference is the base or an adapter the method holds, never the
    /// policy as it happens to be when the run resumes.
    fn prepare(&mut self, model: &BaseModel, train: &[Self::Example], eval: &[Self::Example]) -> Result<()> {
        let _ = (model, train, eval);
        Ok(())
    }

    /// The units of a step over `data[i]` for each `i` in `batch` (in that
    /// order). GRPO samples and grades here and records its rewards in
    /// `sums`.
    fn begin_step<'a>(
        &mut self,
        policy: Policy<'_>,
        at: StepInfo,
        data: &'a [Self::Example],
        batch: &[usize],
        sums: &mut Self::Sums,
    ) -> Result<Vec<Self::Unit<'a>>>;

    /// A unit's tokens: what the micro-batch budget and `trained_tokens`
    /// count.
    fn tokens(&self, unit: &Self::Unit<'_>) -> usize;

    /// What the losses of a whole accumulated batch are divided by (SFT:
    /// the trained tokens in it, TRL's rule; DPO: the pairs).
    fn normaliser(&self, units: &[Self::Unit<'_>]) -> f64;

    /// The loss of one micro-batch, already divided by the `normaliser` of
    /// the whole batch, with its measures added to `sums`. `train` is None
    /// in validation (no dropout, no gradient kept).
    fn loss(
        &self,
        policy: Policy<'_>,
        units: &[Self::Unit<'_>],
        normaliser: f64,
        train: Option<TrainState<'_>>,
        sums: &mut Self::Sums,
    ) -> Result<Tensor>;

    /// A step's (or a validation's) loss and values from its sums.
    fn summarize(&self, sums: &Self::Sums, normaliser: f64) -> StepSummary;

    /// Measures the policy on the validation examples (a prefix of the
    /// validation file, the same at every evaluation).
    fn validate(&mut self, policy: Policy<'_>, examples: &[Self::Example], budget: usize) -> Result<Validation>;

    /// Files this method adds to a checkpoint so that resume is exact (none
    /// for SFT). Their names must differ from the loop's own files.
    fn state(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }

    /// Restores what [`Method::state`] wrote, from a checkpoint's files
    /// other than the loop's own.
    fn load_state(&mut self, files: &HashMap<String, Vec<u8>>) -> Result<()> {
        let _ = files;
        Ok(())
    }
}

/// Cuts units into consecutive runs of at most `budget` tokens (a unit
/// longer than the budget goes alone).
pub fn micro_batches<U>(units: &[U], budget: usize, tokens: impl Fn(&U) -> usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut used = 0;
    for (i, u) in units.iter().enumerate() {
        let n = tokens(u);
        match out.last_mut() {
            Some(r) if used + n <= budget => r.end = i + 1,
            _ => {
                out.push(i..i + 1);
                used = 0;
            }
        }
        used += n;
    }
    out
}

/// Validation as the loss without gradients: `units` in micro-batches of
/// `budget` tokens, normalised over all of them, summarised like a step.
/// SFT's validation, and DPO's.
pub fn validate_by_loss<M: Method + ?Sized>(
    method: &M,
    policy: Policy<'_>,
    units: &[M::Unit<'_>],
    budget: usize,
) -> Result<Validation> {
    let normaliser = method.normaliser(units);
    let mut sums = M::Sums::default();
    for r in micro_batches(units, budget, |u| method.tokens(u)) {
        method.loss(policy, &units[r], normaliser, None, &mut sums)?;
    }
    let s = method.summarize(&sums, normaliser);
    Ok(Validation {
        loss: Some(s.loss),
        values: s.values,
    })
}

/// Reads a JSONL file (already validated at upload) into a method's
/// examples, skipping blank lines and lines with nothing to train on.
pub fn encode_lines<M: Method + ?Sized>(method: &M, encoder: &Encoder<'_>, bytes: &[u8]) -> Result<Vec<M::Example>> {
    let mut out = Vec::new();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(line).map_err(|e| EngineError::Data(format!("line {}: {e}", n + 1)))?;
        match method.encode(encoder, &v) {
            Ok(Some(ex)) => out.push(ex),
            Ok(None) => {}
            Err(e) => return Err(EngineError::Data(format!("line {}: {e}", n + 1))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::micro_batches;

    #[test]
    fn micro_batches_fill_the_budget_in_order_and_a_long_unit_goes_alone() {
        let lens = [5usize, 4, 3, 20, 1, 1, 9];
        let mb = micro_batches(&lens, 12, |n| *n);
        assert_eq!(mb, vec![0..3, 3..4, 4..7]);
        assert!(micro_batches(&[] as &[usize], 12, |n| *n).is_empty());
        // A first unit longer than the budget, then more.
        assert_eq!(micro_batches(&[30usize, 2, 2], 12, |n| *n), vec![0..1, 1..3]);
    }
}
