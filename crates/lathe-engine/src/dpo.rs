//! Direct preference optimisation, a [`Method`]: OpenAI preference pairs
//! (`input.messages` with optional `tools`, `preferred_output`,
//! `non_preferred_output`) → (prompt, chosen, rejected) ids, and TRL's
//! sigmoid loss against a reference policy.
//!
//! - A sequence's log-probability is the sum over its completion tokens
//!   (no length normalisation). With `d = β((πc − rc) − (πr − rr))` for the
//!   policy's and the reference's log-probs of the chosen and rejected
//!   completions, a pair's loss is `−log σ(d)`; a batch's loss is the mean
//!   over its pairs.
//! - The reference is the base with the adapter disabled, or a frozen
//!   starting adapter (a job that starts from a fine-tuned model), never a
//!   second copy of the model. Its log-probs are computed once, in
//!   [`Method::prepare`], and kept in the checkpoint, so a resumed run uses
//!   the very same numbers.
//! - A pair is packed once: its prompt, then the chosen completion, then
//!   the rejected one, which attends to the prompt and itself but not to
//!   the chosen completion ([`Segments::forked`]); so the shared prompt is
//!   computed once per pair for the policy and for the reference.
//! - Long pairs are truncated as TRL does: the prompt keeps its end (at
//!   most half the sequence budget), each completion its start; how many
//!   pairs were cut is counted ([`Dpo::truncated`]).
//! - Optionally, RPO (Pang et al. 2024; TRL's `loss_type=["sigmoid",
//!   "sft"]` with `loss_weights=[1, α]`, formerly `rpo_alpha`): α times
//!   the mean negative log-likelihood of the chosen completions' tokens
//!   (over all chosen tokens of the step, as TRL averages its batch) is
//!   added to the loss. Plain DPO lowers the chosen log-probs along with the
//!   rejected ones (both fall, the rejected faster), which can leave greedy
//!   decoding producing neither; the NLL term holds the chosen ones up.
//! - Metrics, under TRL's names: `rewards/chosen`, `rewards/rejected`,
//!   `rewards/accuracies`, `rewards/margins`, `logps/chosen`,
//!   `logps/rejected`, `nll_loss` (the chosen tokens' mean NLL, whatever
//!   α) and the loss, in training and validation alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Tensor};
use serde_json::Value;

use super::lora::{Adapter, write_safetensors};
use super::method::{Encoder, Method, Policy, StepInfo, StepSummary, Validation, Values, validate_by_loss};
use super::model::{BaseModel, PackedTargets, Segments, TrainState};
use super::{EngineError, Result};

/// OpenAI's and TRL's default β ("auto").
pub const DEFAULT_BETA: f64 = 0.1;

/// The checkpoint file with the reference log-probs.
pub const REFERENCE_FILE: &str = "dpo_reference.safetensors";

pub const REWARDS_CHOSEN: &str = "rewards/chosen";
pub const REWARDS_REJECTED: &str = "rewards/rejected";
pub const REWARDS_ACCURACIES: &str = "rewards/accuracies";
pub const REWARDS_MARGINS: &str = "rewards/margins";
pub const LOGPS_CHOSEN: &str = "logps/chosen";
pub const LOGPS_REJECTED: &str = "logps/rejected";
pub const NLL_LOSS: &str = "nll_loss";

/// One preference pair as token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The conversation up to the assistant's turn (the generation prompt
    /// included), with the tokenizer's BOS where it adds one.
    pub prompt: Vec<u32>,
    /// The preferred completion, with the template's end of turn.
    pub chosen: Vec<u32>,
    /// The non-preferred completion.
    pub rejected: Vec<u32>,
    /// Whether truncation cut the prompt or a completion.
    pub truncated: bool,
}

impl Pair {
    /// Tokens as packed: the prompt once, then both completions.
    pub fn packed_len(&self) -> usize {
        self.prompt.len() + self.chosen.len() + self.rejected.len()
    }
}

/// What [`Method::loss`] adds up over a step.
#[derive(Clone, Debug, Default)]
pub struct DpoSums {
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    /// Pairs whose chosen reward beat the rejected one.
    pub correct: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    /// The chosen completions' tokens, and their NLL summed.
    pub chosen_tokens: f64,
    pub nll: f64,
}

/// A pair in a step, with its reference log-probs (chosen, rejected).
#[derive(Clone, Copy, Debug)]
pub struct Unit<'a> {
    pub pair: &'a Pair,
    pub reference: [f32; 2],
    /// What the pair's chosen NLL (summed over its tokens) is multiplied by
    /// before the step's normaliser (the pairs) divides the loss: RPO's
    /// `α · pairs / chosen tokens of the step`, so that the term is α times
    /// the step's mean token NLL. 0 for plain DPO.
    pub nll_scale: f64,
}

/// DPO as a [`Method`].
pub struct Dpo {
    beta: f64,
    rpo_alpha: f64,
    /// The reference policy's adapter: None is the base itself.
    reference: Option<Adapter>,
    /// Reference log-probs of the training and validation pairs, in order;
    /// empty until [`Method::prepare`] (or a checkpoint) fills them.
    ref_train: Vec<[f32; 2]>,
    ref_eval: Vec<[f32; 2]>,
    truncated: AtomicUsize,
}

impl Dpo {
    /// `reference`: None to use the base with the adapter disabled, or the
    /// frozen adapter the run starts from. `rpo_alpha`: the weight of the
    /// chosen NLL term (0: plain DPO).
    pub fn new(beta: f64, rpo_alpha: f64, reference: Option<Adapter>) -> Result<Self> {
        if !(beta.is_finite() && beta > 0.0) {
            return Err(EngineError::Data(format!("beta must be a positive number, not {beta}")));
        }
        if !(rpo_alpha.is_finite() && rpo_alpha >= 0.0) {
            return Err(EngineError::Data(format!(
                "rpo_alpha must be a number >= 0, not {rpo_alpha}"
            )));
        }
        Ok(Self {
            beta,
            rpo_alpha,
            reference,
            ref_train: Vec::new(),
            ref_eval: Vec::new(),
            truncated: AtomicUsize::new(0),
        })
    }

    pub fn beta(&self) -> f64 {
        self.beta
    }

    pub fn rpo_alpha(&self) -> f64 {
        self.rpo_alpha
    }

    /// Whether the reference is an adapter (the model the run starts from)
    /// rather than the base itself.
    pub fn references_an_adapter(&self) -> bool {
        self.reference.is_some()
    }

    /// Pairs encoded so far that truncation cut.
    pub fn truncated(&self) -> usize {
        self.truncated.load(Ordering::Relaxed)
    }

    /// The units of one step (or one validation) over `pairs`, whose
    /// reference log-probs are `reference[index]`.
    fn units<'a>(&self, pairs: &[(&'a Pair, usize)], reference: &[[f32; 2]]) -> Result<Vec<Unit<'a>>> {
        let chosen_tokens: usize = pairs.iter().map(|(p, _)| p.chosen.len()).sum();
        let nll_scale = if self.rpo_alpha > 0.0 {
            self.rpo_alpha * pairs.len() as f64 / chosen_tokens.max(1) as f64
        } else {
            0.0
        };
        pairs
            .iter()
            .map(|&(pair, i)| {
                let reference = *reference.get(i).ok_or_else(|| {
                    EngineError::Data("DPO's reference log-probs were not computed for every pair".into())
                })?;
                Ok(Unit {
                    pair,
                    reference,
                    nll_scale,
                })
            })
            .collect()
    }
}

/// Encodes one OpenAI DPO line. Returns None for a pair whose completions
/// are empty after rendering.
pub fn encode_pair(e: &Encoder<'_>, line: &Value) -> Result<Option<Pair>> {
    let messages = line["input"]["messages"]
        .as_array()
        .ok_or_else(|| EngineError::Data("the line has no input.messages array".into()))?;
    let tools = line["input"].get("tools").filter(|t| !t.is_null());
    let output = |key: &str| -> Result<&Value> {
        line[key]
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| EngineError::Data(format!("the line has no {key}")))
    };
    let render = |msgs: &[Value], gen_prompt: bool| {
        e.template
            .render(msgs, tools, gen_prompt)
            .map_err(|err| EngineError::Data(format!("chat template: {err}")))
    };
    let prompt_text = render(messages, true)?;
    let completion = |key: &str| -> Result<String> {
        let mut all = messages.clone();
        all.push(output(key)?.clone());
        let full = render(&all, false)?;
        full.strip_prefix(prompt_text.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                EngineError::Data(
                    "the chat template does not render the conversation with its answer after the prompt; \
                     cannot tell the completion's tokens apart"
                        .into(),
                )
            })
    };
    let chosen_text = completion("preferred_output")?;
    let rejected_text = completion("non_preferred_output")?;
    let mut prompt = Vec::new();
    if let Some(b) = e.bos
        && e.tokenizer.add_bos()
        && !e.tokenizer.id_to_token(b).is_some_and(|t| prompt_text.starts_with(t))
    {
        prompt.push(b);
    }
    prompt.extend(e.tokenizer.encode(&prompt_text, true));
    let mut chosen = e.tokenizer.encode(&chosen_text, true);
    let mut rejected = e.tokenizer.encode(&rejected_text, true);
    if chosen.is_empty() || rejected.is_empty() {
        return Ok(None);
    }
    let truncated = truncate(&mut prompt, &mut chosen, &mut rejected, e.max_len);
    Ok(Some(Pair {
        prompt,
        chosen,
        rejected,
        truncated,
    }))
}

/// TRL's rule for a sequence budget of `max_len` (prompt plus one
/// completion): the prompt keeps its last `max_len / 2` tokens at most,
/// then each completion its first tokens up to the budget left. Every
/// completion keeps at least one token. Returns whether anything was cut.
pub fn truncate(prompt: &mut Vec<u32>, chosen: &mut Vec<u32>, rejected: &mut Vec<u32>, max_len: usize) -> bool {
    let max_len = max_len.max(2);
    let longest = chosen.len().max(rejected.len());
    if prompt.len() + longest <= max_len {
        return false;
    }
    let max_prompt = (max_len / 2).max(1);
    if prompt.len() > max_prompt {
        prompt.drain(..prompt.len() - max_prompt);
    }
    let left = (max_len - prompt.len()).max(1);
    chosen.truncate(left);
    rejected.truncate(left);
    true
}

/// The policy's (or reference's) summed log-probs of each unit's chosen
/// and rejected completion: two tensors of shape (units,), tracked for
/// gradients when `train` is given.
pub fn sequence_logps(
    model: &BaseModel,
    adapter: Option<&Adapter>,
    pairs: &[&Pair],
    train: Option<TrainState<'_>>,
) -> Result<(Tensor, Tensor)> {
    let dev = &model.device;
    let mut ids = Vec::new();
    let mut pos = Vec::new();
    let mut groups = Vec::with_capacity(pairs.len());
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    // Per completion (chosen then rejected, pair by pair): its range in
    // `rows`/`targets`.
    let mut spans = Vec::with_capacity(pairs.len() * 2);
    for pair in pairs {
        let (p, c, r) = (pair.prompt.len(), pair.chosen.len(), pair.rejected.len());
        if p == 0 || c == 0 || r == 0 {
            return Err(EngineError::Data(
                "a DPO pair needs a prompt and two completions".into(),
            ));
        }
        let base = ids.len();
        ids.extend_from_slice(&pair.prompt);
        ids.extend_from_slice(&pair.chosen);
        ids.extend_from_slice(&pair.rejected);
        pos.extend(0..(p + c) as u32);
        pos.extend(p as u32..(p + r) as u32);
        groups.push((p, c, r));
        // Token k of a completion is predicted from the token before it:
        // the prompt's last for k = 0 (shared by both completions), else
        // the completion's own previous token.
        let start = rows.len();
        for (k, &t) in pair.chosen.iter().enumerate() {
            rows.push((base + p - 1 + k) as u32);
            targets.push(t);
        }
        spans.push(start..rows.len());
        let start = rows.len();
        for (k, &t) in pair.rejected.iter().enumerate() {
            let row = if k == 0 { base + p - 1 } else { base + p + c + k - 1 };
            rows.push(row as u32);
            targets.push(t);
        }
        spans.push(start..rows.len());
    }
    let segments = Segments::forked(&groups, dev)?;
    let token_logps = PackedTargets {
        ids,
        positions: pos,
        rows,
        targets,
    }
    .logps(model, adapter, &segments, 1.0, train, "a pair")?;
    let mut chosen = Vec::with_capacity(pairs.len());
    let mut rejected = Vec::with_capacity(pairs.len());
    for (i, span) in spans.into_iter().enumerate() {
        let sum = token_logps.narrow(0, span.start, span.len())?.sum_all()?;
        if i % 2 == 0 {
            chosen.push(sum);
        } else {
            rejected.push(sum);
        }
    }
    Ok((Tensor::stack(&chosen, 0)?, Tensor::stack(&rejected, 0)?))
}

/// `−log σ(x)` elementwise, computed stably: `max(−x, 0) + log(1 + e^{−|x|})`.
fn neg_log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok((x.neg()?.relu()? + tail)?)
}

impl Method for Dpo {
    type Example = Pair;
    type Unit<'a> = Unit<'a>;
    type Sums = DpoSums;

    fn encode(&self, e: &Encoder<'_>, line: &Value) -> Result<Option<Pair>> {
        let pair = encode_pair(e, line)?;
        if pair.as_ref().is_some_and(|p| p.truncated) {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
        Ok(pair)
    }

    /// The reference's log-probs of every training and validation pair,
    /// once, in micro-batches of about 512 tokens; pairs whose numbers came
    /// back from a checkpoint are not computed again.
    fn prepare(&mut self, model: &BaseModel, train: &[Pair], eval: &[Pair]) -> Result<()> {
        let reference = self.reference.as_ref();
        let compute = |pairs: &[Pair]| -> Result<Vec<[f32; 2]>> {
            let refs: Vec<&Pair> = pairs.iter().collect();
            let mut out = Vec::with_capacity(pairs.len());
            for range in super::method::micro_batches(&refs, REFERENCE_BATCH_TOKENS, |p| p.packed_len()) {
                let (c, r) = sequence_logps(model, reference, &refs[range], None)?;
                let (c, r) = (c.to_vec1::<f32>()?, r.to_vec1::<f32>()?);
                out.extend(c.into_iter().zip(r).map(|(c, r)| [c, r]));
            }
            Ok(out)
        };
        if self.ref_train.len() != train.len() {
            self.ref_train = compute(train)?;
        }
        if self.ref_eval.len() != eval.len() {
            self.ref_eval = compute(eval)?;
        }
        Ok(())
    }

    fn begin_step<'a>(
        &mut self,
        _policy: Policy<'_>,
        _at: StepInfo,
        data: &'a [Pair],
        batch: &[usize],
        _sums: &mut DpoSums,
    ) -> Result<Vec<Unit<'a>>> {
        let pairs: Vec<(&Pair, usize)> = batch.iter().map(|&i| (&data[i], i)).collect();
        self.units(&pairs, &self.ref_train)
    }

    fn tokens(&self, unit: &Unit<'_>) -> usize {
        unit.pair.packed_len()
    }

    fn normaliser(&self, units: &[Unit<'_>]) -> f64 {
        units.len().max(1) as f64
    }

    fn loss(
        &self,
        policy: Policy<'_>,
        units: &[Unit<'_>],
        normaliser: f64,
        train: Option<TrainState<'_>>,
        sums: &mut DpoSums,
    ) -> Result<Tensor> {
        let dev = &policy.model.device;
        let pairs: Vec<&Pair> = units.iter().map(|u| u.pair).collect();
        let (pc, pr) = sequence_logps(policy.model, Some(policy.adapter), &pairs, train)?;
        let rc = Tensor::from_vec(units.iter().map(|u| u.reference[0]).collect(), units.len(), dev)?;
        let rr = Tensor::from_vec(units.iter().map(|u| u.reference[1]).collect(), units.len(), dev)?;
        let chosen_rewards = ((&pc - &rc)? * self.beta)?;
        let rejected_rewards = ((&pr - &rr)? * self.beta)?;
        let per_pair = neg_log_sigmoid(&(&chosen_rewards - &rejected_rewards)?)?;
        let mut loss = per_pair.sum_all()?;
        if self.rpo_alpha > 0.0 {
            let scale = Tensor::from_vec(units.iter().map(|u| u.nll_scale as f32).collect(), units.len(), dev)?;
            loss = (loss - (&pc * scale)?.sum_all()?)?;
        }
        let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?) };
        let (cr, rj) = (host(&chosen_rewards)?, host(&rejected_rewards)?);
        let chosen_logps = host(&pc)?;
        sums.loss += loss.to_scalar::<f32>()? as f64;
        sums.chosen_tokens += units.iter().map(|u| u.pair.chosen.len() as f64).sum::<f64>();
        sums.nll -= chosen_logps.iter().map(|&x| x as f64).sum::<f64>();
        sums.rewards_chosen += cr.iter().map(|&x| x as f64).sum::<f64>();
        sums.rewards_rejected += rj.iter().map(|&x| x as f64).sum::<f64>();
        sums.correct += cr.iter().zip(&rj).filter(|(c, r)| c > r).count() as f64;
        sums.logps_chosen += chosen_logps.iter().map(|&x| x as f64).sum::<f64>();
        sums.logps_rejected += host(&pr)?.iter().map(|&x| x as f64).sum::<f64>();
        Ok((loss / normaliser)?)
    }

    fn summarize(&self, sums: &DpoSums, normaliser: f64) -> StepSummary {
        let n = normaliser.max(1.0);
        let values: Values = [
            (REWARDS_CHOSEN, sums.rewards_chosen / n),
            (REWARDS_REJECTED, sums.rewards_rejected / n),
            (REWARDS_ACCURACIES, sums.correct / n),
            (REWARDS_MARGINS, (sums.rewards_chosen - sums.rewards_rejected) / n),
            (LOGPS_CHOSEN, sums.logps_chosen / n),
            (LOGPS_REJECTED, sums.logps_rejected / n),
            (NLL_LOSS, sums.nll / sums.chosen_tokens.max(1.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        StepSummary {
            loss: sums.loss / n,
            values,
        }
    }

    fn validate(&mut self, policy: Policy<'_>, examples: &[Pair], budget: usize) -> Result<Validation> {
        let pairs: Vec<(&Pair, usize)> = examples.iter().enumerate().map(|(i, p)| (p, i)).collect();
        let units = self.units(&pairs, &self.ref_eval)?;
        validate_by_loss(self, policy, &units, budget)
    }

    fn state(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let dev = candle_core::Device::Cpu;
        let flat = |v: &[[f32; 2]]| -> Result<Tensor> {
            let data: Vec<f32> = v.iter().flatten().copied().collect();
            Ok(Tensor::from_vec(data, (v.len(), 2), &dev)?)
        };
        let bytes = write_safetensors(&[
            ("train".to_string(), flat(&self.ref_train)?),
            ("eval".to_string(), flat(&self.ref_eval)?),
        ])?;
        Ok(vec![(REFERENCE_FILE.to_string(), bytes)])
    }

    fn load_state(&mut self, files: &HashMap<String, Vec<u8>>) -> Result<()> {
        let Some(bytes) = files.get(REFERENCE_FILE) else {
            return Ok(());
        };
        let tensors = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)?;
        let read = |name: &str| -> Result<Vec<[f32; 2]>> {
            let t = tensors
                .get(name)
                .ok_or_else(|| EngineError::Data(format!("{REFERENCE_FILE} has no {name}")))?;
            Ok(t.to_vec2::<f32>()?.into_iter().map(|row| [row[0], row[1]]).collect())
        };
        self.ref_train = read("train")?;
        self.ref_eval = read("eval")?;
        Ok(())
    }
}

/// Tokens per micro-batch when computing reference log-probs (no
/// gradients are kept, so larger than training's would be fine too; this
/// keeps the peak near a training step's).
const REFERENCE_BATCH_TOKENS: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_prompt_end_and_the_completions_start() {
        let (mut p, mut c, mut r) = ((0..10).collect::<Vec<u32>>(), vec![100, 101, 102, 103], vec![200, 201]);
        assert!(!truncate(&mut p.clone(), &mut c.clone(), &mut r.clone(), 14));
        assert!(truncate(&mut p, &mut c, &mut r, 8));
        assert_eq!(p, vec![6, 7, 8, 9], "the prompt's last max_len/2 tokens");
        assert_eq!(c, vec![100, 101, 102, 103]);
        assert_eq!(r, vec![200, 201]);
        let (mut p, mut c, mut r) = (vec![1, 2], vec![100, 101, 102, 103, 104, 105], vec![200]);
        assert!(truncate(&mut p, &mut c, &mut r, 5));
        assert_eq!((p, c, r), (vec![1, 2], vec![100, 101, 102], vec![200]));
    }

    #[test]
    fn neg_log_sigmoid_is_stable_and_exact_at_zero() {
        let x = Tensor::new(&[0f32, 30.0, -30.0, 1.5], &candle_core::Device::Cpu).unwrap();
        let y = neg_log_sigmoid(&x).unwrap().to_vec1::<f32>().unwrap();
        assert!((y[0] - std::f32::consts::LN_2).abs() < 1e-7);
        assert!(y[1] >= 0.0 && y[1] < 1e-12);
        assert!((y[2] - 30.0).abs() < 1e-5);
        assert!((y[3] - (1.0 + (-1.5f32).exp()).ln()).abs() < 1e-6);
    }
}
