//! Group relative policy optimisation (GRPO), a [`Method`]: reinforcement
//! fine-tuning with a grader, as TRL's `GRPOTrainer` computes it.
//!
//! - A training example is a prompt (OpenAI's RFT line: `messages` plus any
//!   fields its grader reads as `{{ item.* }}`). At the start of a step the
//!   policy samples `generations` completions per prompt (one batched
//!   generation; a group's prompt is prefilled once), and the job's grader
//!   scores them through [`Reward`]: the engine knows nothing of graders.
//! - Advantages are group-normalised: `A = (r − mean) / (std + 1e-4)`, the
//!   standard deviation with Bessel's correction (TRL's `scale_rewards =
//!   "group"`). A group whose rewards are all equal has zero advantage and
//!   teaches nothing; `frac_reward_zero_std` reports the share of them.
//! - Per token: `−min(ρA, clip(ρ, 1 − ε, 1 + ε_high)A) + β·KL`, with
//!   `ρ = exp(log π − log π_old)` and `KL = e^(ref − log π) − (ref − log π) − 1`;
//!   log-probs come from logits divided by the sampling temperature. One
//!   optimizer step is taken per generated batch (TRL's `num_iterations =
//!   1`), so `π_old` is the policy itself, detached: ρ = 1, clipping never
//!   fires, the printed loss sits near 0, and the gradient is `−A∇log π`.
//! - Aggregation is TRL's default, `dapo`: the summed per-token losses of
//!   the whole accumulated batch divided by its completion tokens.
//! - Exact and cheaper: a group is packed once, its prompt then its
//!   completions, each completion attending to the prompt and itself
//!   ([`Segments::shared`]); the backward of the shared prompt sums the
//!   gradients of every completion, which is what G separate copies would
//!   give. With `β = 0` a zero-advantage group has no gradient at all, so
//!   its forward and backward are skipped (its tokens still count in the
//!   normaliser, as TRL's).
//! - The reference (only when `β > 0`) is the base with the adapter
//!   disabled, or the frozen adapter a job starts from.
//! - Randomness: a step's samples come from the stream (seed, 3, step),
//!   validation's from (seed, 4) at every evaluation (so evaluations differ
//!   only by the policy); the grader error counts are checkpointed. A
//!   resumed run samples what the uninterrupted run sampled, so with a
//!   deterministic grader it ends with the same adapter.
//! - Grader errors give a reward of 0 and are counted by type; when more
//!   than `max_error_fraction` of the samples graded so far (after the
//!   first [`ERROR_GRACE_SAMPLES`]) failed, the run stops with the counts.
//!   A sample's own error (an output that does not parse as the response
//!   format) is a reward of 0 too, reported, but not held against the
//!   grader.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::generate::{Sampling, generate};
use super::lora::Adapter;
use super::method::{Encoder, Method, Policy, StepInfo, StepSummary, Validation, Values};
use super::model::{BaseModel, PackedTargets, Segments, TrainState};
use super::rng::Rng;
use super::tokenizer::Tokenizer;
use super::{EngineError, Result};

/// The checkpoint file with the grader error counts.
pub const STATE_FILE: &str = "grpo_state.json";

/// Samples graded before the error threshold applies.
pub const ERROR_GRACE_SAMPLES: u64 = 32;

pub const REWARD_MEAN: &str = "reward_mean";
pub const REWARD_STD: &str = "reward_std";
pub const FRAC_REWARD_ZERO_STD: &str = "frac_reward_zero_std";
pub const MEAN_LENGTH: &str = "completions/mean_length";
pub const MIN_LENGTH: &str = "completions/min_length";
pub const MAX_LENGTH: &str = "completions/max_length";
pub const CLIPPED_RATIO: &str = "completions/clipped_ratio";
pub const KL: &str = "kl";
pub const CLIP_RATIO: &str = "clip_ratio";
pub const SAMPLING_S: &str = "time/sampling_s";
pub const GRADING_S: &str = "time/grading_s";
pub const TRAINING_S: &str = "time/training_s";
/// Prefix of a sub-grader's mean reward (`rewards/<name>`).
pub const REWARDS_PREFIX: &str = "rewards/";
/// Prefix of a step's grader errors of one type (`grader_errors/<type>`).
pub const ERRORS_PREFIX: &str = "grader_errors/";

/// One prompt to sample for.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    /// The conversation up to the assistant's turn, with the generation
    /// prompt (and the tokenizer's BOS where it adds one).
    pub ids: Vec<u32>,
    /// The dataset line, which the grader sees as `item`.
    pub item: Value,
    /// Whether the prompt was cut (from its start) to leave room for the
    /// completion.
    pub truncated: bool,
}

/// A completion to grade.
#[derive(Clone, Copy, Debug)]
pub struct Sample<'a> {
    pub item: &'a Value,
    pub text: &'a str,
}

/// A grader's verdict on one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grade {
    pub reward: f64,
    /// The error's type when the sample could not be graded (its reward is
    /// then 0), e.g. `sample_parse_error` or `python_error`.
    pub error: Option<String>,
    /// Named sub-rewards (a multi grader's graders), reported as
    /// `rewards/<name>` means.
    pub scores: Values,
    /// The error is the sample's, not the grader's (an output that does
    /// not parse as the job's response format): counted under its type but
    /// not against the grader error threshold, since a policy early in
    /// training is expected to produce some.
    pub sample_error: bool,
}

/// What scores completions: the job's grader, supplied from outside the
/// engine. Called from the training thread; it may block.
pub trait Reward: Send {
    /// One grade per sample, in order.
    fn grade(&self, samples: &[Sample<'_>]) -> Result<Vec<Grade>>;
}

#[derive(Clone, Debug, PartialEq)]
pub struct GrpoConfig {
    /// Completions per prompt (G, at least 2).
    pub generations: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_completion_tokens: usize,
    /// KL coefficient; 0 (TRL's default) needs no reference.
    pub beta: f64,
    pub epsilon: f64,
    pub epsilon_high: f64,
    /// Completions per validation prompt.
    pub eval_samples: usize,
    /// Ids that end a completion (the template's end of turn, EOS).
    pub stop_ids: Vec<u32>,
    /// The share of graded samples that may fail before the run stops.
    pub max_error_fraction: f64,
    /// The run's seed (validation samples from the stream (seed, 4)).
    pub seed: u64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            generations: 8,
            temperature: 1.0,
            top_p: 1.0,
            max_completion_tokens: 256,
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: 0.2,
            eval_samples: 1,
            stop_ids: Vec::new(),
            max_error_fraction: 0.1,
            seed: 0,
        }
    }
}

/// Grader error counts over the run so far (checkpointed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub graded: u64,
    /// The grader's errors, by type: what the threshold counts.
    pub errors: BTreeMap<String, u64>,
    /// The samples' errors, by type (see [`Grade::sample_error`]).
    #[serde(default)]
    pub sample_errors: BTreeMap<String, u64>,
}

impl ErrorCounts {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A prompt's group in a step: its sampled completions (each with the stop
/// id that ended it) and their advantages.
#[derive(Clone, Debug)]
pub struct Group<'a> {
    pub prompt: &'a [u32],
    pub completions: Vec<Vec<u32>>,
    pub advantages: Vec<f32>,
    /// The reference's per-token log-probs (β > 0 only), completion after
    /// completion, in the order the loss packs them.
    pub reference: Option<Vec<f32>>,
    /// Whether the group has a gradient (not all advantages zero, or β > 0).
    pub trains: bool,
}

impl Group<'_> {
    pub fn completion_tokens(&self) -> usize {
        self.completions.iter().map(Vec::len).sum()
    }
}

/// What a step (or a validation) adds up.
#[derive(Clone, Debug, Default)]
pub struct GrpoSums {
    pub loss: f64,
    pub rewards: Vec<f64>,
    pub groups: usize,
    pub zero_std_groups: usize,
    pub lengths: Vec<usize>,
    /// Completions that hit `max_completion_tokens`.
    pub clipped: usize,
    pub kl: f64,
    pub tokens: usize,
    pub clipped_tokens: usize,
    pub errors: BTreeMap<String, u64>,
    /// The part of `errors` that are the samples' (see [`Grade::sample_error`]).
    pub sample_errors: BTreeMap<String, u64>,
    pub scores: BTreeMap<String, (f64, usize)>,
    pub sampling_s: f64,
    pub grading_s: f64,
    /// When the step's training began (after sampling and grading).
    pub training_from: Option<Instant>,
}

impl GrpoSums {
    fn add_grades(&mut self, grades: &[Grade]) {
        for g in grades {
            self.rewards.push(g.reward);
            if let Some(e) = &g.error {
                *self.errors.entry(e.clone()).or_default() += 1;
                if g.sample_error {
                    *self.sample_errors.entry(e.clone()).or_default() += 1;
                }
            }
            for (k, v) in &g.scores {
                let s = self.scores.entry(k.clone()).or_default();
                s.0 += v;
                s.1 += 1;
            }
        }
    }

    fn values(&self) -> Values {
        let mut v = Values::new();
        let n = self.rewards.len().max(1) as f64;
        let mean = self.rewards.iter().sum::<f64>() / n;
        v.insert(REWARD_MEAN.into(), mean);
        if self.rewards.len() > 1 {
            let var = self.rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
            v.insert(REWARD_STD.into(), var.sqrt());
        }
        if !self.lengths.is_empty() {
            let l = self.lengths.len() as f64;
            v.insert(MEAN_LENGTH.into(), self.lengths.iter().sum::<usize>() as f64 / l);
            v.insert(MIN_LENGTH.into(), *self.lengths.iter().min().unwrap_or(&0) as f64);
            v.insert(MAX_LENGTH.into(), *self.lengths.iter().max().unwrap_or(&0) as f64);
            v.insert(CLIPPED_RATIO.into(), self.clipped as f64 / l);
        }
        for (k, (sum, count)) in &self.scores {
            v.insert(format!("{REWARDS_PREFIX}{k}"), sum / (*count).max(1) as f64);
        }
        for (k, count) in &self.errors {
            v.insert(format!("{ERRORS_PREFIX}{k}"), *count as f64);
        }
        v.insert(SAMPLING_S.into(), self.sampling_s);
        v.insert(GRADING_S.into(), self.grading_s);
        v
    }
}

/// Group-normalised advantages, TRL's `scale_rewards = "group"`:
/// `(r − mean) / (std + 1e-4)` with Bessel's correction.
pub fn advantages(rewards: &[f64]) -> Vec<f32> {
    let n = rewards.len();
    if n < 2 {
        return vec![0.0; n];
    }
    let mean = rewards.iter().sum::<f64>() / n as f64;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    rewards.iter().map(|r| ((r - mean) / (std + 1e-4)) as f32).collect()
}

/// GRPO as a [`Method`].
pub struct Grpo<R: Reward> {
    cfg: GrpoConfig,
    reward: R,
    tokenizer: Tokenizer,
    /// The KL reference's adapter (β > 0): None is the base itself.
    reference: Option<Adapter>,
    counts: ErrorCounts,
    truncated: usize,
}

impl<R: Reward> Grpo<R> {
    pub fn new(cfg: GrpoConfig, reward: R, tokenizer: Tokenizer, reference: Option<Adapter>) -> Result<Self> {
        if cfg.generations < 2 {
            return Err(EngineError::Data(format!(
                "GRPO needs at least 2 generations per prompt, not {}",
                cfg.generations
            )));
        }
        if !(cfg.temperature.is_finite() && cfg.temperature > 0.0) {
            return Err(EngineError::Data(format!(
                "GRPO samples: its temperature must be positive, not {}",
                cfg.temperature
            )));
        }
        if !(cfg.beta.is_finite() && cfg.beta >= 0.0) {
            return Err(EngineError::Data(format!("beta must be 0 or more, not {}", cfg.beta)));
        }
        if cfg.max_completion_tokens == 0 || cfg.eval_samples == 0 {
            return Err(EngineError::Data(
                "max_completion_tokens and eval_samples must be at least 1".into(),
            ));
        }
        Ok(Self {
            cfg,
            reward,
            tokenizer,
            reference,
            counts: ErrorCounts::default(),
            truncated: 0,
        })
    }

    pub fn config(&self) -> &GrpoConfig {
        &self.cfg
    }

    /// Prompts encoded so far that were cut to leave room for a completion.
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    /// Grader errors over the run so far.
    pub fn error_counts(&self) -> &ErrorCounts {
        &self.counts
    }

    fn sampling(&self, seed: u64) -> Sampling {
        Sampling {
            temperature: self.cfg.temperature,
            top_p: self.cfg.top_p,
            top_k: 0,
            max_tokens: self.cfg.max_completion_tokens,
            seed,
            stop: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            stream: None,
        }
    }

    /// Samples `n` completions for each prompt and grades them: per prompt,
    /// its completions' token ids (the stop id that ended one included) and
    /// grades.
    #[allow(clippy::type_complexity)]
    fn sample_and_grade(
        &self,
        policy: Policy<'_>,
        prompts: &[&Prompt],
        n: usize,
        seed: u64,
        sums: &mut GrpoSums,
    ) -> Result<Vec<(Vec<Vec<u32>>, Vec<Grade>)>> {
        let started = Instant::now();
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.ids.clone(), n))
            .collect();
        let sampling = vec![self.sampling(seed); ids.len()];
        let out = generate(
            policy.model,
            Some(policy.adapter),
            &self.tokenizer,
            &ids,
            &sampling,
            &self.cfg.stop_ids,
            &mut |_, _| {},
        )?;
        sums.sampling_s += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let samples: Vec<Sample<'_>> = out
            .iter()
            .enumerate()
            .map(|(i, g)| Sample {
                item: &prompts[i / n].item,
                text: &g.text,
            })
            .collect();
        let grades = self.reward.grade(&samples)?;
        if grades.len() != samples.len() {
            return Err(EngineError::Data(format!(
                "the grader returned {} grades for {} samples",
                grades.len(),
                samples.len()
            )));
        }
        sums.grading_s += started.elapsed().as_secs_f64();
        let mut groups = Vec::with_capacity(prompts.len());
        let mut out = out.into_iter();
        let mut grades = grades.into_iter();
        for _ in prompts {
            let mut completions = Vec::with_capacity(n);
            let mut gs = Vec::with_capacity(n);
            for _ in 0..n {
                let g = out.next().expect("one generation per sample");
                sums.lengths.push(g.tokens.len());
                if g.finish_reason == "length" {
                    sums.clipped += 1;
                }
                let mut t = g.tokens;
                t.extend(g.stop_token);
                completions.push(t);
                gs.push(grades.next().expect("one grade per sample"));
            }
            groups.push((completions, gs));
        }
        Ok(groups)
    }
}

/// Per-token log-probs (logits divided by `temperature`) of each group's
/// completions after its prompt, packed once per group: a flat tensor in
/// order group, completion, token; tracked for gradients when `train` is
/// given.
pub fn completion_logps(
    model: &BaseModel,
    adapter: Option<&Adapter>,
    groups: &[(&[u32], &[Vec<u32>])],
    temperature: f64,
    train: Option<TrainState<'_>>,
) -> Result<Tensor> {
    let dev = &model.device;
    let mut ids = Vec::new();
    let mut pos = Vec::new();
    let mut shapes = Vec::with_capacity(groups.len());
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (prompt, completions) in groups {
        let p = prompt.len();
        if p == 0 || completions.iter().any(Vec::is_empty) {
            return Err(EngineError::Data(
                "a GRPO group needs a prompt and non-empty completions".into(),
            ));
        }
        let base = ids.len();
        ids.extend_from_slice(prompt);
        pos.extend(0..p as u32);
        let mut at = base + p;
        for c in completions.iter() {
            ids.extend_from_slice(c);
            pos.extend(p as u32..(p + c.len()) as u32);
            // Token k is predicted from the prompt's last token (k = 0) or
            // the completion's own previous one.
            for (k, &t) in c.iter().enumerate() {
                rows.push(if k == 0 { base + p - 1 } else { at + k - 1 } as u32);
                targets.push(t);
            }
            at += c.len();
        }
        shapes.push((p, completions.iter().map(Vec::len).collect::<Vec<_>>()));
    }
    let segments = Segments::shared(&shapes, dev)?;
    PackedTargets {
        ids,
        positions: pos,
        rows,
        targets,
    }
    .logps(
        model,
        adapter,
        &segments,
        temperature,
        train,
        "a prompt with its completion",
    )
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

impl<R: Reward> Method for Grpo<R> {
    type Example = Prompt;
    type Unit<'a>
        = Group<'a>
    where
        Self: 'a;
    type Sums = GrpoSums;

    /// An RFT line: its `messages` (and `tools`) rendered up to the
    /// assistant's turn; the prompt keeps its last tokens when it and the
    /// completion budget exceed the sequence budget.
    fn encode(&self, e: &Encoder<'_>, line: &Value) -> Result<Option<Prompt>> {
        let messages = line["messages"]
            .as_array()
            .ok_or_else(|| EngineError::Data("the line has no messages array".into()))?;
        // A trailing assistant message is the reference answer, not prompt.
        let end = match messages.last() {
            Some(m) if m["role"] == "assistant" => messages.len() - 1,
            _ => messages.len(),
        };
        if end == 0 {
            return Ok(None);
        }
        let tools = line.get("tools").filter(|t| !t.is_null());
        let text = e
            .template
            .render(&messages[..end], tools, true)
            .map_err(|err| EngineError::Data(format!("chat template: {err}")))?;
        let mut ids = Vec::new();
        if let Some(b) = e.bos
            && e.tokenizer.add_bos()
            && !e.tokenizer.id_to_token(b).is_some_and(|t| text.starts_with(t))
        {
            ids.push(b);
        }
        ids.extend(e.tokenizer.encode(&text, true));
        let room = e.max_len.saturating_sub(self.cfg.max_completion_tokens).max(1);
        let truncated = ids.len() > room;
        if truncated {
            ids.drain(..ids.len() - room);
        }
        Ok(Some(Prompt {
            ids,
            item: line.clone(),
            truncated,
        }))
    }

    fn prepare(&mut self, _model: &BaseModel, train: &[Prompt], eval: &[Prompt]) -> Result<()> {
        self.truncated = train.iter().chain(eval).filter(|p| p.truncated).count();
        Ok(())
    }

    fn begin_step<'a>(
        &mut self,
        policy: Policy<'_>,
        at: StepInfo,
        data: &'a [Prompt],
        batch: &[usize],
        sums: &mut GrpoSums,
    ) -> Result<Vec<Group<'a>>> {
        let g = self.cfg.generations;
        let prompts: Vec<&Prompt> = batch.iter().map(|&i| &data[i]).collect();
        let seed = Rng::derive(at.seed, &[3, at.step]).next_u64();
        let sampled = self.sample_and_grade(policy, &prompts, g, seed, sums)?;
        let mut groups = Vec::with_capacity(prompts.len());
        for (p, (completions, grades)) in prompts.iter().zip(sampled) {
            sums.add_grades(&grades);
            let rewards: Vec<f64> = grades.iter().map(|x| x.reward).collect();
            let advantages = advantages(&rewards);
            let zero = advantages.iter().all(|a| *a == 0.0);
            sums.groups += 1;
            if zero {
                sums.zero_std_groups += 1;
            }
            groups.push(Group {
                prompt: &p.ids,
                completions,
                advantages,
                reference: None,
                trains: !zero || self.cfg.beta > 0.0,
            });
        }
        // Grader errors over the run so far, against the threshold.
        self.counts.graded += sums.rewards.len() as u64;
        for (k, n) in &sums.errors {
            let of_samples = sums.sample_errors.get(k).copied().unwrap_or(0);
            if *n > of_samples {
                *self.counts.errors.entry(k.clone()).or_default() += n - of_samples;
            }
            if of_samples > 0 {
                *self.counts.sample_errors.entry(k.clone()).or_default() += of_samples;
            }
        }
        let failed = self.counts.failed();
        if self.counts.graded >= ERROR_GRACE_SAMPLES
            && failed as f64 > self.cfg.max_error_fraction * self.counts.graded as f64
        {
            let by_type: Vec<String> = self.counts.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            return Err(EngineError::Data(format!(
                "the grader failed on {failed} of {} samples, over the {:.0}% allowed ({})",
                self.counts.graded,
                self.cfg.max_error_fraction * 100.0,
                by_type.join(", ")
            )));
        }
        // The reference's log-probs (β > 0) are training compute, not sampling.
        sums.training_from = Some(Instant::now());
        if self.cfg.beta > 0.0 {
            for group in groups.iter_mut() {
                let lp = completion_logps(
                    policy.model,
                    self.reference.as_ref(),
                    &[(group.prompt, &group.completions)],
                    self.cfg.temperature,
                    None,
                )?;
                group.reference = Some(host(&lp)?);
            }
        }
        Ok(groups)
    }

    fn tokens(&self, group: &Group<'_>) -> usize {
        if group.trains {
            group.prompt.len() + group.completion_tokens()
        } else {
            0
        }
    }

    /// TRL's `dapo`: the completion tokens of the whole batch.
    fn normaliser(&self, groups: &[Group<'_>]) -> f64 {
        groups.iter().map(Group::completion_tokens).sum::<usize>().max(1) as f64
    }

    fn loss(
        &self,
        policy: Policy<'_>,
        groups: &[Group<'_>],
        normaliser: f64,
        train: Option<TrainState<'_>>,
        sums: &mut GrpoSums,
    ) -> Result<Tensor> {
        let dev = &policy.model.device;
        let training: Vec<&Group<'_>> = groups.iter().filter(|g| g.trains).collect();
        sums.tokens += groups.iter().map(Group::completion_tokens).sum::<usize>();
        if training.is_empty() {
            return Ok(Tensor::zeros((), DType::F32, dev)?);
        }
        let packed: Vec<(&[u32], &[Vec<u32>])> =
            training.iter().map(|g| (g.prompt, g.completions.as_slice())).collect();
        let logp = completion_logps(policy.model, Some(policy.adapter), &packed, self.cfg.temperature, train)?;
        // π_old is the policy that sampled, which is this one: ρ = 1 in
        // value, with the gradient of log π.
        let ratio = (&logp - logp.detach())?.exp()?;
        let ratio_host = host(&ratio)?;
        let mut adv = Vec::with_capacity(ratio_host.len());
        let mut active = Vec::with_capacity(ratio_host.len());
        let mut reference = Vec::new();
        for g in &training {
            for (k, c) in g.completions.iter().enumerate() {
                let a = g.advantages[k];
                for _ in c {
                    let r = ratio_host[adv.len()] as f64;
                    // The clipped branch of the min is constant in the
                    // parameters: a token there contributes no gradient.
                    let clipped =
                        (a > 0.0 && r > 1.0 + self.cfg.epsilon_high) || (a < 0.0 && r < 1.0 - self.cfg.epsilon);
                    adv.push(a);
                    active.push(if clipped { 0f32 } else { 1.0 });
                }
            }
            if let Some(refs) = &g.reference {
                reference.extend_from_slice(refs);
            }
        }
        let n = adv.len();
        sums.clipped_tokens += active.iter().filter(|a| **a == 0.0).count();
        let adv_t = Tensor::from_vec(adv.clone(), n, dev)?;
        let active_t = Tensor::from_vec(active, n, dev)?;
        // Clipped tokens keep their (constant) clipped value in the loss.
        let clip_value: Vec<f32> = ratio_host
            .iter()
            .zip(&adv)
            .map(|(&r, &a)| {
                let r = r as f64;
                let c = r.clamp(1.0 - self.cfg.epsilon, 1.0 + self.cfg.epsilon_high);
                (-(r * a as f64).min(c * a as f64)) as f32
            })
            .collect();
        let inactive = active_t.affine(-1.0, 1.0)?;
        let mut per_token = ((ratio * &adv_t)?.neg()? * &active_t)?;
        per_token = (per_token + (Tensor::from_vec(clip_value, n, dev)? * inactive)?)?;
        if self.cfg.beta > 0.0 {
            let ref_t = Tensor::from_vec(reference, n, dev)?;
            let d = (ref_t - &logp)?;
            let kl = ((d.exp()? - &d)? - 1.0)?;
            sums.kl += kl.detach().sum_all()?.to_scalar::<f32>()? as f64;
            per_token = (per_token + (kl * self.cfg.beta)?)?;
        }
        let loss = per_token.sum_all()?;
        sums.loss += loss.detach().to_scalar::<f32>()? as f64;
        Ok((loss / normaliser)?)
    }

    fn summarize(&self, sums: &GrpoSums, normaliser: f64) -> StepSummary {
        let mut values = sums.values();
        values.insert(
            FRAC_REWARD_ZERO_STD.into(),
            sums.zero_std_groups as f64 / sums.groups.max(1) as f64,
        );
        if self.cfg.beta > 0.0 {
            values.insert(KL.into(), sums.kl / sums.tokens.max(1) as f64);
        }
        values.insert(
            CLIP_RATIO.into(),
            sums.clipped_tokens as f64 / sums.tokens.max(1) as f64,
        );
        if let Some(t) = sums.training_from {
            values.insert(TRAINING_S.into(), t.elapsed().as_secs_f64());
        }
        StepSummary {
            loss: sums.loss / normaliser.max(1.0),
            values,
        }
    }

    /// `eval_samples` completions per validation prompt at the sampling
    /// temperature, from the same seeds at every evaluation, graded:
    /// `reward_mean` (the job's `valid_reward_mean`), sub-rewards, errors.
    fn validate(&mut self, policy: Policy<'_>, examples: &[Prompt], _budget: usize) -> Result<Validation> {
        let mut sums = GrpoSums::default();
        let seed = Rng::derive(self.cfg.seed, &[4]).next_u64();
        // Generation in chunks of about 64 rows keeps the peak near a
        // training step's.
        let per = (64 / self.cfg.eval_samples).max(1);
        for chunk in examples.chunks(per) {
            let prompts: Vec<&Prompt> = chunk.iter().collect();
            for (_, grades) in self.sample_and_grade(policy, &prompts, self.cfg.eval_samples, seed, &mut sums)? {
                sums.add_grades(&grades);
            }
        }
        let mut values = sums.values();
        values.remove(SAMPLING_S);
        values.remove(GRADING_S);
        Ok(Validation { loss: None, values })
    }

    fn state(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let bytes = serde_json::to_vec(&self.counts).map_err(|e| EngineError::Data(e.to_string()))?;
        Ok(vec![(STATE_FILE.to_string(), bytes)])
    }

    fn load_state(&mut self, files: &HashMap<String, Vec<u8>>) -> Result<()> {
        if let Some(bytes) = files.get(STATE_FILE) {
            self.counts = serde_json::from_slice(bytes).map_err(|e| EngineError::Data(format!("{STATE_FILE}: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_group_normalised_with_bessels_correction() {
        let a = advantages(&[1.0, 0.0, 0.0, 1.0]);
        // mean 0.5, sample std sqrt(1/3) = 0.57735.
        let want = 0.5 / (0.577_350_27 + 1e-4);
        for (x, s) in a.iter().zip([1.0, -1.0, -1.0, 1.0]) {
            assert!((*x as f64 - s * want).abs() < 1e-6, "{a:?}");
        }
        assert_eq!(advantages(&[0.3, 0.3, 0.3]), vec![0.0; 3]);
        assert_eq!(advantages(&[0.7]), vec![0.0]);
    }
}
