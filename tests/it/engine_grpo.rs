//! GRPO on tiny random models the tests make: advantages and the loss's
//! gradient match a reference computed sequence by sequence (with the KL
//! term and the sampling temperature), a toy reward the model can raise
//! rises, zero-variance groups give no gradient and are reported, grader
//! errors are counted and past the threshold fail the run, resume is exact,
//! and a group's shared prompt does not change what is sampled.

use std::sync::Mutex;

use candle_core::{Device, Tensor};
use lathe_engine::Result as EngineResult;
use lathe_engine::generate::{Sampling, generate};
use lathe_engine::grpo::{
    CLIPPED_RATIO, ERRORS_PREFIX, FRAC_REWARD_ZERO_STD, Grade, Grpo, GrpoConfig, Prompt, REWARD_MEAN, Reward, Sample,
    advantages,
};
use lathe_engine::lora::Adapter;
use lathe_engine::method::{Method, Policy, StepInfo};
use lathe_engine::model::{BaseModel, Input, TrainState, f32_vec, log_softmax};
use lathe_engine::optim::{AdamWParams, Schedule};
use lathe_engine::rng::Rng;
use lathe_engine::train::{Outcome, TrainConfig, read_checkpoint, run};

use crate::engine_train::{Collect, assert_gradients_match, byte_tokenizer, lora, random_adapter, tiny};

/// A reward from the text alone (the tokens decode as `t<id>`).
struct FromText<F: Fn(&str) -> Grade + Send>(F);

impl<F: Fn(&str) -> Grade + Send> Reward for FromText<F> {
    fn grade(&self, samples: &[Sample<'_>]) -> EngineResult<Vec<Grade>> {
        Ok(samples.iter().map(|s| (self.0)(s.text)).collect())
    }
}

fn reward(r: f64) -> Grade {
    Grade {
        reward: r,
        ..Default::default()
    }
}

/// The share of a completion's tokens that are token 7.
fn sevens(text: &str) -> Grade {
    let tokens = text.matches('t').count().max(1);
    reward(text.matches("t7").count() as f64 / tokens as f64)
}

/// A grader whose every `n`th sample fails with `kind`; the others get
/// `otherwise`'s grade.
fn every_nth_fails(n: u64, kind: &'static str, otherwise: fn(&str) -> Grade) -> impl Fn(&str) -> Grade + Send {
    let seen = Mutex::new(0u64);
    move |s: &str| {
        let mut seen = seen.lock().unwrap();
        *seen += 1;
        if (*seen).is_multiple_of(n) {
            Grade {
                reward: 0.0,
                error: Some(kind.into()),
                ..Default::default()
            }
        } else {
            otherwise(s)
        }
    }
}

fn prompts() -> Vec<Prompt> {
    [&[1u32, 5, 9][..], &[1, 6, 10, 14], &[1, 7], &[1, 8, 12]]
        .iter()
        .enumerate()
        .map(|(i, ids)| Prompt {
            ids: ids.to_vec(),
            item: serde_json::json!({ "i": i }),
            truncated: false,
        })
        .collect()
}

fn grpo_cfg(generations: usize, max_tokens: usize) -> GrpoConfig {
    GrpoConfig {
        generations,
        temperature: 1.0,
        max_completion_tokens: max_tokens,
        seed: 3,
        ..Default::default()
    }
}

fn train_cfg(epochs: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 2,
        learning_rate: lr,
        schedule: Schedule::Constant,
        warmup_ratio: 0.0,
        max_grad_norm: 1.0,
        seed: 3,
        lora: lora(0.0),
        adamw: AdamWParams::default(),
        micro_batch_tokens: 40,
        eval_every: 4,
        eval_examples: 0,
    }
}

/// Per-token log-probs of `completion` after `prompt` at `temperature`,
/// on the sequence alone (no packing, no sharing).
fn alone(model: &BaseModel, adapter: Option<&Adapter>, prompt: &[u32], completion: &[u32], t: f64) -> Vec<f64> {
    let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let l = ids.len();
    let ids_t = Tensor::from_vec(ids.clone(), (1, l), &Device::Cpu).unwrap();
    let pos = Tensor::from_vec((0..l as u32).collect::<Vec<_>>(), l, &Device::Cpu).unwrap();
    let input = Input {
        ids: &ids_t,
        positions: &pos,
        mask: None,
        segments: None,
    };
    let hidden = model.forward(&input, adapter, None, None).unwrap();
    let logits = (model.logits(&hidden, false).unwrap() / t).unwrap();
    let logp = f32_vec(&log_softmax(&logits).unwrap()).unwrap();
    let v = model.config.vocab_size;
    (prompt.len()..l)
        .map(|j| logp[(j - 1) * v + ids[j] as usize] as f64)
        .collect()
}

#[test]
fn the_loss_and_its_gradient_match_a_sequence_by_sequence_reference() {
    let model = tiny("qwen2", 21);
    let (adapter, vars) = random_adapter(&model, 22);
    let ps = prompts();
    let (t, beta) = (0.7, 0.5);
    let cfg = GrpoConfig {
        temperature: t,
        beta,
        ..grpo_cfg(4, 5)
    };
    // Rewards with variance: the text's length modulo 5.
    let mut grpo = Grpo::new(
        cfg,
        FromText(|s: &str| reward((s.len() % 5) as f64)),
        byte_tokenizer(),
        None,
    )
    .unwrap();
    let policy = Policy {
        model: &model,
        adapter: &adapter,
    };
    let batch = [0usize, 1, 3];
    let mut sums = Default::default();
    let groups = grpo
        .begin_step(policy, StepInfo { step: 0, seed: 3 }, &ps, &batch, &mut sums)
        .unwrap();
    assert_eq!(groups.len(), 3);
    for g in &groups {
        assert_eq!(g.completions.len(), 4);
    }
    // Advantages are the group-normalised rewards.
    for (gi, g) in groups.iter().enumerate() {
        let rewards = &sums.rewards[gi * 4..gi * 4 + 4];
        assert_eq!(g.advantages, advantages(rewards));
    }
    let normaliser = grpo.normaliser(&groups);
    assert_eq!(
        normaliser,
        groups.iter().map(|g| g.completion_tokens()).sum::<usize>() as f64
    );
    // The reference objective: every completion on its own,
    // Σ_tokens [−A + β (e^(ref − lp) − (ref − lp) − 1)] / tokens, with
    // ∇ of −A·ρ equal to −A·∇lp at ρ = 1.
    let objective = |adapter: &Adapter| -> (f64, f64) {
        let (mut value, mut surrogate) = (0.0, 0.0);
        for g in &groups {
            for (k, c) in g.completions.iter().enumerate() {
                let lp = alone(&model, Some(adapter), g.prompt, c, t);
                let rf = alone(&model, None, g.prompt, c, t);
                for (l, r) in lp.iter().zip(&rf) {
                    let kl = (r - l).exp() - (r - l) - 1.0;
                    value += -(g.advantages[k] as f64) + beta * kl;
                    surrogate += -(g.advantages[k] as f64) * l + beta * kl;
                }
            }
        }
        (value / normaliser, surrogate / normaliser)
    };
    let mut rng = Rng::new(0);
    let loss = grpo
        .loss(
            policy,
            &groups,
            normaliser,
            Some(TrainState {
                dropout: 0.0,
                rng: &mut rng,
            }),
            &mut sums,
        )
        .unwrap();
    let (want_value, _) = objective(&adapter);
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (got - want_value).abs() < 1e-4 * want_value.abs().max(1.0),
        "{got} vs {want_value}"
    );
    let grads = loss.backward().unwrap();
    assert_gradients_match(&vars, &grads, 17, || objective(&adapter).1);
}

#[test]
fn a_toy_reward_the_model_can_raise_rises_within_a_few_dozen_steps() {
    let model = tiny("llama", 31);
    let ps = prompts();
    let mut grpo = Grpo::new(grpo_cfg(8, 6), FromText(sevens), byte_tokenizer(), None).unwrap();
    let mut sink = Collect::new(None);
    run(
        &model,
        &mut grpo,
        &ps,
        &ps,
        &train_cfg(16, 1e-2),
        "tiny",
        None,
        None,
        &mut sink,
    )
    .unwrap();
    let rewards: Vec<f64> = sink.metrics.iter().map(|m| m.values[REWARD_MEAN]).collect();
    assert_eq!(rewards.len(), 32);
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&rewards[..6]), mean(&rewards[26..]));
    assert!(last > first + 0.3, "the reward did not rise: {rewards:?}");
    let valid: Vec<f64> = sink
        .metrics
        .iter()
        .filter_map(|m| m.valid_values.get(REWARD_MEAN).copied())
        .collect();
    assert_eq!(valid.len(), 8, "validation every 4 steps");
    assert!(valid.last().unwrap() > &(valid[0] + 0.3), "{valid:?}");
    for m in &sink.metrics {
        assert_eq!(
            m.values[CLIPPED_RATIO], 1.0,
            "no stop id: every completion runs to its budget"
        );
        assert!(m.valid_loss.is_none());
    }
}

#[test]
fn zero_variance_groups_give_no_gradient_and_are_reported() {
    let model = tiny("llama", 41);
    let ps = prompts();
    let mut grpo = Grpo::new(grpo_cfg(4, 4), FromText(|_: &str| reward(1.0)), byte_tokenizer(), None).unwrap();
    let mut sink = Collect::new(None);
    run(
        &model,
        &mut grpo,
        &ps,
        &[],
        &train_cfg(1, 5e-2),
        "tiny",
        None,
        None,
        &mut sink,
    )
    .unwrap();
    for m in &sink.metrics {
        assert_eq!(m.values[FRAC_REWARD_ZERO_STD], 1.0);
        assert_eq!(m.grad_norm, 0.0, "a group that teaches nothing has no gradient");
        assert_eq!(m.train_loss, 0.0);
    }
}

#[test]
fn grader_errors_are_counted_and_past_the_threshold_fail_the_run() {
    let model = tiny("llama", 51);
    let ps = prompts();
    // Every 16th sample fails (6%): counted, under the 10% allowed.
    let some = every_nth_fails(16, "python_error", sevens);
    let mut grpo = Grpo::new(grpo_cfg(8, 3), FromText(some), byte_tokenizer(), None).unwrap();
    let mut sink = Collect::new(None);
    run(
        &model,
        &mut grpo,
        &ps,
        &[],
        &train_cfg(2, 1e-2),
        "tiny",
        None,
        None,
        &mut sink,
    )
    .unwrap();
    let errors: f64 = sink
        .metrics
        .iter()
        .map(|m| {
            m.values
                .get(&format!("{ERRORS_PREFIX}python_error"))
                .copied()
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(errors, 4.0, "64 samples, every 16th failed");
    assert_eq!(grpo.error_counts().failed(), 4);
    // A third of the samples failing stops the run with the counts.
    let many = every_nth_fails(3, "python_grader_runtime_error", |_| reward(1.0));
    let mut grpo = Grpo::new(grpo_cfg(8, 3), FromText(many), byte_tokenizer(), None).unwrap();
    let err = run(
        &model,
        &mut grpo,
        &ps,
        &[],
        &train_cfg(2, 1e-2),
        "tiny",
        None,
        None,
        &mut Collect::new(None),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("python_grader_runtime_error: 10") && err.contains("of 32 samples"),
        "{err}"
    );
    // The samples' own errors (output that does not parse as the response format),
    // just as many, are reported but do not stop the run.
    let seen = Mutex::new(0u64);
    let unparsable = move |_: &str| {
        let mut seen = seen.lock().unwrap();
        *seen += 1;
        if (*seen).is_multiple_of(3) {
            Grade {
                error: Some("sample_parse_error".into()),
                sample_error: true,
                ..Default::default()
            }
        } else {
            reward(1.0)
        }
    };
    let mut grpo = Grpo::new(grpo_cfg(8, 3), FromText(unparsable), byte_tokenizer(), None).unwrap();
    let mut sink = Collect::new(None);
    run(
        &model,
        &mut grpo,
        &ps,
        &[],
        &train_cfg(2, 1e-2),
        "tiny",
        None,
        None,
        &mut sink,
    )
    .unwrap();
    let reported: f64 = sink
        .metrics
        .iter()
        .filter_map(|m| m.values.get(&format!("{ERRORS_PREFIX}sample_parse_error")))
        .sum();
    assert_eq!(reported, 21.0, "64 samples, every 3rd unparsable");
    assert_eq!(grpo.error_counts().failed(), 0);
    assert_eq!(grpo.error_counts().sample_errors["sample_parse_error"], 21);
}

#[test]
fn resume_from_a_checkpoint_is_exact() {
    let model = tiny("qwen2", 61);
    let ps = prompts();
    let cfg = TrainConfig {
        eval_every: 2,
        ..train_cfg(2, 2e-2)
    };
    let method = || Grpo::new(grpo_cfg(4, 4), FromText(sevens), byte_tokenizer(), None).unwrap();
    let mut full = Collect::new(None);
    run(
        &model,
        &mut method(),
        &ps,
        &ps[..2],
        &cfg,
        "tiny",
        None,
        None,
        &mut full,
    )
    .unwrap();
    let mut first = Collect::new(Some(3));
    let out = run(
        &model,
        &mut method(),
        &ps,
        &ps[..2],
        &cfg,
        "tiny",
        None,
        None,
        &mut first,
    )
    .unwrap();
    assert!(matches!(out, Outcome::Stopped { step: 3, .. }), "{out:?}");
    let (step, files) = first.checkpoints.last().unwrap().clone();
    assert_eq!(step, 2);
    let resume = read_checkpoint(&model, &files).unwrap();
    let mut second = Collect::new(None);
    run(
        &model,
        &mut method(),
        &ps,
        &ps[..2],
        &cfg,
        "tiny",
        None,
        Some(resume),
        &mut second,
    )
    .unwrap();
    assert_eq!(
        full.checkpoints.last().unwrap().1["adapter_model.safetensors"],
        second.checkpoints.last().unwrap().1["adapter_model.safetensors"],
        "the resumed run ends with the same adapter"
    );
    let rewards = |c: &Collect| -> Vec<f64> { c.metrics.iter().map(|m| m.values[REWARD_MEAN]).collect() };
    assert_eq!(
        rewards(&full)[2..],
        rewards(&second)[..],
        "the same samples after resume"
    );
}

#[test]
fn identical_prompts_are_prefilled_once_and_generate_what_they_would_alone() {
    let model = tiny("llama", 71);
    let (adapter, _) = random_adapter(&model, 72);
    let tok = byte_tokenizer();
    let (p, q) = (vec![1u32, 5, 9, 13], vec![3u32, 4]);
    let greedy = Sampling {
        max_tokens: 6,
        ..Default::default()
    };
    let alone = |prompt: &Vec<u32>| {
        generate(
            &model,
            Some(&adapter),
            &tok,
            std::slice::from_ref(prompt),
            std::slice::from_ref(&greedy),
            &[],
            &mut |_, _| {},
        )
        .unwrap()
        .remove(0)
        .tokens
    };
    let rows = vec![p.clone(), p.clone(), q.clone(), p.clone()];
    let together = generate(
        &model,
        Some(&adapter),
        &tok,
        &rows,
        &vec![greedy.clone(); 4],
        &[],
        &mut |_, _| {},
    )
    .unwrap();
    let (ap, aq) = (alone(&p), alone(&q));
    assert_eq!(together[0].tokens, ap);
    assert_eq!(together[1].tokens, ap);
    assert_eq!(together[2].tokens, aq);
    assert_eq!(together[3].tokens, ap);
    // Sampled rows of one prompt draw from their own streams.
    let hot = Sampling {
        temperature: 1.0,
        max_tokens: 8,
        seed: 9,
        ..Default::default()
    };
    let sampled = generate(
        &model,
        Some(&adapter),
        &tok,
        &rows[..2],
        &vec![hot.clone(); 2],
        &[],
        &mut |_, _| {},
    )
    .unwrap();
    assert_ne!(sampled[0].tokens, sampled[1].tokens);
    // A row that names its stream (a served completion) samples what it
    // would alone, wherever it sits in the batch.
    let served = Sampling { stream: Some(0), ..hot };
    let at = |place: usize| {
        let mut sampling = vec![greedy.clone(); place + 1];
        sampling[place] = served.clone();
        generate(
            &model,
            Some(&adapter),
            &tok,
            &rows[..place + 1],
            &sampling,
            &[],
            &mut |_, _| {},
        )
        .unwrap()
        .remove(place)
        .tokens
    };
    let first = at(0);
    assert_eq!(at(1), first);
    assert_eq!(at(3), first);
}
