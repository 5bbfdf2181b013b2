//! DPO on tiny random models the tests make: the loss is log 2 while the
//! policy is its reference, its gradient matches finite differences, a
//! large β on one pair raises the policy's preference every step, the
//! shared-prompt packing equals running each completion after its prompt
//! alone, and resume is exact (the reference log-probs come back from the
//! checkpoint). With RPO's α, the loss adds α times the chosen tokens'
//! mean NLL, its gradient still matches, and it holds the chosen
//! completions' log-probs above plain DPO's.

use candle_core::{Device, Tensor};
use lathe_engine::dpo::{
    Dpo, LOGPS_CHOSEN, LOGPS_REJECTED, NLL_LOSS, Pair, REFERENCE_FILE, REWARDS_ACCURACIES, REWARDS_MARGINS,
    sequence_logps,
};
use lathe_engine::lora::Adapter;
use lathe_engine::method::{Method, Policy};
use lathe_engine::model::{BaseModel, Input, f32_vec, log_softmax};
use lathe_engine::optim::{AdamWParams, Schedule};
use lathe_engine::rng::Rng;
use lathe_engine::train::{Outcome, TrainConfig, read_checkpoint, run};

use crate::engine_train::{Collect, assert_gradients_match, lora, random_adapter, tiny};

fn pairs() -> Vec<Pair> {
    let pair = |prompt: &[u32], chosen: &[u32], rejected: &[u32]| Pair {
        prompt: prompt.to_vec(),
        chosen: chosen.to_vec(),
        rejected: rejected.to_vec(),
        truncated: false,
    };
    vec![
        pair(&[1, 5, 9, 13], &[20, 21, 2], &[30, 2]),
        pair(&[1, 6, 10], &[22, 2], &[31, 32, 33, 2]),
        pair(&[1, 7, 11, 15, 19], &[23, 24, 25, 2], &[34, 2]),
        pair(&[1, 8], &[26, 2], &[35, 36, 2]),
    ]
}

/// Summed log-prob of `completion` after `prompt`, computed on the sequence
/// alone, without packing.
fn alone(model: &BaseModel, adapter: Option<&Adapter>, prompt: &[u32], completion: &[u32]) -> f64 {
    let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let l = ids.len();
    let ids_t = Tensor::from_vec(ids.clone(), (1, l), &Device::Cpu).unwrap();
    let pos = Tensor::from_vec((0..l as u32).collect::<Vec<_>>(), l, &Device::Cpu).unwrap();
    let hidden = model
        .forward(
            &Input {
                ids: &ids_t,
                positions: &pos,
                mask: None,
                segments: None,
            },
            adapter,
            None,
            None,
        )
        .unwrap();
    let logp = f32_vec(&log_softmax(&model.logits(&hidden, false).unwrap()).unwrap()).unwrap();
    let v = model.config.vocab_size;
    (prompt.len()..l)
        .map(|j| logp[(j - 1) * v + ids[j] as usize] as f64)
        .sum()
}

fn dpo_config(epochs: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 2,
        learning_rate: lr,
        schedule: Schedule::Linear,
        warmup_ratio: 0.0,
        max_grad_norm: 1.0,
        seed: 5,
        lora: lora(0.0),
        adamw: AdamWParams::default(),
        micro_batch_tokens: 14,
        eval_every: 2,
        eval_examples: 0,
    }
}

#[test]
fn the_shared_prompt_packing_equals_each_completion_after_its_prompt_alone() {
    let model = tiny("qwen2", 21);
    let (adapter, _) = random_adapter(&model, 22);
    let ps = pairs();
    let refs: Vec<&Pair> = ps.iter().collect();
    for adapter in [None, Some(&adapter)] {
        let (c, r) = sequence_logps(&model, adapter, &refs, None).unwrap();
        let (c, r) = (f32_vec(&c).unwrap(), f32_vec(&r).unwrap());
        for (i, p) in ps.iter().enumerate() {
            let want_c = alone(&model, adapter, &p.prompt, &p.chosen);
            let want_r = alone(&model, adapter, &p.prompt, &p.rejected);
            assert!(
                (c[i] as f64 - want_c).abs() < 1e-4,
                "pair {i} chosen {} vs {want_c}",
                c[i]
            );
            assert!(
                (r[i] as f64 - want_r).abs() < 1e-4,
                "pair {i} rejected {} vs {want_r}",
                r[i]
            );
        }
    }
}

#[test]
fn the_loss_is_log_2_while_the_policy_is_its_reference() {
    let model = tiny("llama", 3);
    let ps = pairs();
    let mut sink = Collect::new(Some(1));
    let mut dpo = Dpo::new(0.1, 0.0, None).unwrap();
    run(
        &model,
        &mut dpo,
        &ps,
        &[],
        &dpo_config(1, 1e-2),
        "tiny",
        None,
        None,
        &mut sink,
    )
    .unwrap();
    let first = &sink.metrics[0];
    // The adapter starts with B = 0, so the policy's log-probs are the
    // reference's: every margin is 0 and every pair's loss is log 2.
    assert!(
        (first.train_loss - std::f64::consts::LN_2).abs() < 1e-6,
        "step 1 loss {} vs ln 2",
        first.train_loss
    );
    assert!(first.values[REWARDS_MARGINS].abs() < 1e-6);
    assert_eq!(first.values[REWARDS_ACCURACIES], 0.0, "no pair is preferred yet");
}

#[test]
fn the_loss_gradient_matches_finite_differences() {
    for rpo_alpha in [0.0, 0.7] {
        gradient_matches(rpo_alpha);
    }
}

fn gradient_matches(rpo_alpha: f64) {
    let model = tiny("qwen2", 4);
    let (adapter, vars) = random_adapter(&model, 5);
    let ps = pairs();
    let mut dpo = Dpo::new(0.5, rpo_alpha, None).unwrap();
    dpo.prepare(&model, &ps, &[]).unwrap();
    let policy = Policy {
        model: &model,
        adapter: &adapter,
    };
    let batch: Vec<usize> = (0..ps.len()).collect();
    let loss_of = |dpo: &mut Dpo| -> f64 {
        let mut sums = Default::default();
        let units = dpo
            .begin_step(
                policy,
                lathe_engine::method::StepInfo { step: 0, seed: 0 },
                &ps,
                &batch,
                &mut sums,
            )
            .unwrap();
        let loss = dpo.loss(policy, &units, units.len() as f64, None, &mut sums).unwrap();
        loss.to_scalar::<f32>().unwrap() as f64
    };
    let mut sums = Default::default();
    let units = dpo
        .begin_step(
            policy,
            lathe_engine::method::StepInfo { step: 0, seed: 0 },
            &ps,
            &batch,
            &mut sums,
        )
        .unwrap();
    let mut rng = Rng::new(0);
    let loss = dpo
        .loss(
            policy,
            &units,
            units.len() as f64,
            Some(lathe_engine::model::TrainState {
                dropout: 0.0,
                rng: &mut rng,
            }),
            &mut sums,
        )
        .unwrap();
    let grads = loss.backward().unwrap();
    assert_gradients_match(&vars, &grads, 13, || loss_of(&mut dpo));
}

#[test]
fn rpo_adds_alpha_times_the_chosen_tokens_mean_nll() {
    // The policy is its reference (the same adapter), so the DPO part is
    // log 2 per pair; what is left is α · Σ NLL(chosen) / chosen tokens.
    let model = tiny("qwen2", 31);
    let (adapter, _) = random_adapter(&model, 32);
    let ps = pairs();
    let alpha = 0.7;
    let mut dpo = Dpo::new(0.1, alpha, Some(adapter.clone())).unwrap();
    dpo.prepare(&model, &ps, &[]).unwrap();
    let policy = Policy {
        model: &model,
        adapter: &adapter,
    };
    let batch: Vec<usize> = (0..ps.len()).collect();
    let mut sums = Default::default();
    let at = lathe_engine::method::StepInfo { step: 0, seed: 0 };
    let units = dpo.begin_step(policy, at, &ps, &batch, &mut sums).unwrap();
    // Two micro-batches, normalised over the whole step.
    let n = units.len() as f64;
    let a = dpo.loss(policy, &units[..1], n, None, &mut sums).unwrap();
    let b = dpo.loss(policy, &units[1..], n, None, &mut sums).unwrap();
    let got = (a.to_scalar::<f32>().unwrap() + b.to_scalar::<f32>().unwrap()) as f64;
    let nll: f64 = ps
        .iter()
        .map(|p| -alone(&model, Some(&adapter), &p.prompt, &p.chosen))
        .sum();
    let tokens: usize = ps.iter().map(|p| p.chosen.len()).sum();
    let want = std::f64::consts::LN_2 + alpha * nll / tokens as f64;
    assert!((got - want).abs() < 1e-5, "loss {got} vs {want}");
    let summary = dpo.summarize(&sums, n);
    assert!((summary.loss - want).abs() < 1e-5);
    assert!((summary.values[NLL_LOSS] - nll / tokens as f64).abs() < 1e-5);
}

#[test]
fn rpo_holds_the_chosen_log_probs_above_plain_dpos() {
    let model = tiny("llama", 33);
    let ps = pairs();
    let mut cfg = dpo_config(6, 1e-2);
    cfg.eval_every = 100;
    let chosen_after = |alpha: f64| -> f64 {
        let mut sink = Collect::new(None);
        let mut dpo = Dpo::new(0.5, alpha, None).unwrap();
        run(&model, &mut dpo, &ps, &[], &cfg, "tiny", None, None, &mut sink).unwrap();
        sink.metrics.last().unwrap().values[LOGPS_CHOSEN]
    };
    let (plain, rpo) = (chosen_after(0.0), chosen_after(1.0));
    assert!(rpo > plain + 0.1, "logps/chosen with RPO {rpo} vs plain DPO {plain}");
}

#[test]
fn a_large_beta_on_one_pair_raises_the_preference_every_step() {
    let model = tiny("llama", 9);
    let ps = vec![pairs().remove(1)];
    let mut cfg = dpo_config(8, 5e-3);
    cfg.batch_size = 1;
    cfg.eval_every = 100;
    let mut sink = Collect::new(None);
    let mut dpo = Dpo::new(2.0, 0.0, None).unwrap();
    run(&model, &mut dpo, &ps, &[], &cfg, "tiny", None, None, &mut sink).unwrap();
    // Step k's values are measured before its update: the margin after
    // k updates is step k + 1's.
    let margins: Vec<f64> = sink.metrics.iter().map(|m| m.values[REWARDS_MARGINS]).collect();
    assert_eq!(margins.len(), 8);
    for w in margins.windows(2) {
        assert!(w[1] > w[0], "the margin fell: {margins:?}");
    }
    let gap: Vec<f64> = sink
        .metrics
        .iter()
        .map(|m| m.values[LOGPS_CHOSEN] - m.values[LOGPS_REJECTED])
        .collect();
    assert!(gap.last().unwrap() > gap.first().unwrap(), "{gap:?}");
    assert_eq!(sink.metrics.last().unwrap().values[REWARDS_ACCURACIES], 1.0);
}

#[test]
fn resume_from_a_checkpoint_is_exact_with_the_stored_reference() {
    let model = tiny("qwen2", 12);
    let ps = pairs();
    let cfg = dpo_config(3, 1e-2);
    let mut full = Collect::new(None);
    run(
        &model,
        &mut Dpo::new(0.1, 0.0, None).unwrap(),
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
        &mut Dpo::new(0.1, 0.0, None).unwrap(),
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
    assert!(files.contains_key(REFERENCE_FILE), "the reference log-probs are kept");
    let resume = read_checkpoint(&model, &files).unwrap();
    let mut second = Collect::new(None);
    run(
        &model,
        &mut Dpo::new(0.1, 0.0, None).unwrap(),
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
    assert_eq!(
        full.metrics.last().unwrap().valid_loss,
        second.metrics.last().unwrap().valid_loss
    );
}

#[test]
fn a_run_that_starts_from_an_adapter_measures_against_it() {
    // Continuing from a fine-tuned model: the start adapter is the
    // reference, so the first step's loss is log 2 again, although the
    // start is far from the base.
    let model = tiny("llama", 14);
    let (start, _) = random_adapter(&model, 15);
    let ps = pairs();
    let mut sink = Collect::new(Some(1));
    let mut dpo = Dpo::new(0.1, 0.0, Some(start.clone())).unwrap();
    run(
        &model,
        &mut dpo,
        &ps,
        &[],
        &dpo_config(1, 1e-2),
        "tiny",
        Some(&start),
        None,
        &mut sink,
    )
    .unwrap();
    assert!((sink.metrics[0].train_loss - std::f64::consts::LN_2).abs() < 1e-5);
    // From the base as reference, the same start is no longer log 2.
    let mut sink = Collect::new(Some(1));
    let mut dpo = Dpo::new(0.1, 0.0, None).unwrap();
    run(
        &model,
        &mut dpo,
        &ps,
        &[],
        &dpo_config(1, 1e-2),
        "tiny",
        Some(&start),
        None,
        &mut sink,
    )
    .unwrap();
    assert!((sink.metrics[0].train_loss - std::f64::consts::LN_2).abs() > 1e-4);
}
