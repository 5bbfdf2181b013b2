//! The engine's numerics on tiny random models the tests make themselves:
//! gradients reach every LoRA parameter and match finite differences,
//! frozen weights never change, a memorisation task is learned, resume is
//! exact (for SFT and for a method of the tests' own behind the method
//! seam), packing equals separate sequences, the KV cache and batching do
//! not change what is generated, and adapters round-trip through PEFT's
//! layout and merge.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use lathe_engine::Result as EngineResult;
use lathe_engine::config::ModelConfig;
use lathe_engine::generate::{Sampling, generate, generate_streaming};
use lathe_engine::lora::{Adapter, LoraConfig};
use lathe_engine::method::{Encoder, Method, Policy, StepInfo, StepSummary, Validation};
use lathe_engine::model::{BaseModel, Input, Segments, TrainState, f32_vec, packed_mask, single};
use lathe_engine::optim::{AdamWParams, Schedule};
use lathe_engine::rng::Rng;
use lathe_engine::sft::{Example, Sft, TOKEN_ACCURACY, packed_loss};
use lathe_engine::train::{Outcome, Sink, StepMetrics, TrainConfig, read_checkpoint, run, run_sft};
use lathe_engine::weights::{Proj, random_weights};

pub(crate) fn config(arch: &str) -> ModelConfig {
    ModelConfig {
        architecture: arch.into(),
        vocab_size: 61,
        hidden_size: 32,
        intermediate_size: 40,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 128,
        tie_word_embeddings: arch == "llama",
        attention_bias: arch == "qwen2",
        rope_scaling: None,
    }
}

pub(crate) fn tiny(arch: &str, seed: u64) -> BaseModel {
    let c = config(arch);
    let w = random_weights(&c, seed, &Device::Cpu).unwrap();
    BaseModel::new(c, w, Device::Cpu).unwrap()
}

pub(crate) fn lora(dropout: f64) -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout,
        targets: Proj::ALL.to_vec(),
    }
}

/// An adapter with B non-zero too (PEFT starts B at zero, which makes A's
/// gradient exactly zero at step one).
pub(crate) fn random_adapter(model: &BaseModel, seed: u64) -> (Adapter, Vec<Var>) {
    let (adapter, vars) = Adapter::init(&model.config, lora(0.0), &mut Rng::new(seed), &Device::Cpu).unwrap();
    let mut rng = Rng::new(seed + 1);
    for v in &vars {
        let n = v.elem_count();
        let vals: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 0.4).collect();
        v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    (adapter, vars)
}

fn example(ids: &[u32], trained_from: usize) -> Example {
    Example {
        ids: ids.to_vec(),
        trained: (0..ids.len()).map(|i| i >= trained_from).collect(),
    }
}

fn examples() -> Vec<Example> {
    vec![
        example(&[1, 5, 9, 13, 2, 40, 41, 42], 5),
        example(&[1, 6, 10, 2, 50, 51], 4),
        example(&[1, 7, 11, 15, 19, 2, 33, 34, 35], 6),
        example(&[1, 8, 12, 2, 20], 4),
    ]
}

fn loss_of(model: &BaseModel, adapter: &Adapter, exs: &[Example]) -> f64 {
    let refs: Vec<&Example> = exs.iter().collect();
    let (l, n, _) = packed_loss(model, adapter, &refs, None).unwrap();
    l.to_scalar::<f32>().unwrap() as f64 / n as f64
}

#[test]
fn every_lora_parameter_gets_a_finite_nonzero_gradient_on_both_architectures() {
    for arch in ["llama", "qwen2"] {
        let model = tiny(arch, 1);
        let (adapter, vars) = random_adapter(&model, 2);
        let exs = examples();
        let refs: Vec<&Example> = exs.iter().collect();
        let mut rng = Rng::new(0);
        let (l, n, _) = packed_loss(
            &model,
            &adapter,
            &refs,
            Some(TrainState {
                dropout: 0.0,
                rng: &mut rng,
            }),
        )
        .unwrap();
        let grads = (l / n as f64).unwrap().backward().unwrap();
        assert_eq!(vars.len(), model.config.num_layers * 7 * 2);
        for (i, v) in vars.iter().enumerate() {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{arch}: var {i} got no gradient"));
            let vals = f32_vec(g).unwrap();
            assert!(
                vals.iter().all(|x| x.is_finite()),
                "{arch}: var {i} has a non-finite gradient"
            );
            assert!(
                vals.iter().any(|x| *x != 0.0),
                "{arch}: var {i} has an all-zero gradient"
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let model = tiny("llama", 3);
    let (adapter, vars) = random_adapter(&model, 4);
    let exs = examples();
    let refs: Vec<&Example> = exs.iter().collect();
    let mut rng = Rng::new(0);
    let (l, n, _) = packed_loss(
        &model,
        &adapter,
        &refs,
        Some(TrainState {
            dropout: 0.0,
            rng: &mut rng,
        }),
    )
    .unwrap();
    let grads = (l / n as f64).unwrap().backward().unwrap();
    let mut pick = Rng::new(9);
    let mut checked = 0;
    for _ in 0..24 {
        let vi = pick.below(vars.len());
        let var = &vars[vi];
        let mut vals = f32_vec(var.as_tensor()).unwrap();
        let k = pick.below(vals.len());
        let analytic = f32_vec(grads.get(var.as_tensor()).unwrap()).unwrap()[k] as f64;
        let eps = 1e-2f32;
        let orig = vals[k];
        vals[k] = orig + eps;
        var.set(&Tensor::from_vec(vals.clone(), var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        let up = loss_of(&model, &adapter, &exs);
        vals[k] = orig - eps;
        var.set(&Tensor::from_vec(vals.clone(), var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        let down = loss_of(&model, &adapter, &exs);
        vals[k] = orig;
        var.set(&Tensor::from_vec(vals, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        let numeric = (up - down) / (2.0 * eps as f64);
        let tol = 2e-3 + 0.05 * analytic.abs().max(numeric.abs());
        assert!(
            (analytic - numeric).abs() <= tol,
            "var {vi} elem {k}: analytic {analytic} vs numeric {numeric}"
        );
        checked += 1;
    }
    assert_eq!(checked, 24);
}

#[test]
fn packing_sequences_equals_running_them_one_by_one() {
    let model = tiny("qwen2", 5);
    let (adapter, _) = random_adapter(&model, 6);
    let exs = examples();
    let refs: Vec<&Example> = exs.iter().collect();
    let (packed, n, _) = packed_loss(&model, &adapter, &refs, None).unwrap();
    let mut sum = 0f64;
    let mut count = 0;
    for e in &exs {
        let (l, k, _) = packed_loss(&model, &adapter, &[e], None).unwrap();
        sum += l.to_scalar::<f32>().unwrap() as f64;
        count += k;
    }
    assert_eq!(n, count);
    let packed = packed.to_scalar::<f32>().unwrap() as f64;
    assert!((packed - sum).abs() < 1e-4 * sum.abs().max(1.0), "{packed} vs {sum}");
}

#[test]
fn segmented_attention_equals_the_block_diagonal_mask_with_gradients() {
    for arch in ["llama", "qwen2"] {
        let model = tiny(arch, 7);
        let (adapter, vars) = random_adapter(&model, 8);
        let lengths = [5usize, 9, 1, 3];
        let n: usize = lengths.iter().sum();
        let ids: Vec<u32> = (0..n).map(|i| (i * 7 % 60 + 1) as u32).collect();
        let pos: Vec<u32> = lengths.iter().flat_map(|&k| 0..k as u32).collect();
        let seg: Vec<u32> = lengths
            .iter()
            .enumerate()
            .flat_map(|(s, &k)| std::iter::repeat_n(s as u32, k))
            .collect();
        let ids_t = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
        let pos_t = Tensor::from_vec(pos, n, &Device::Cpu).unwrap();
        let mask = packed_mask(&seg, &Device::Cpu).unwrap();
        let segments = Segments::new(&lengths, &Device::Cpu).unwrap();
        let run = |masked: bool| {
            let mut rng = Rng::new(1);
            let input = Input {
                ids: &ids_t,
                positions: &pos_t,
                mask: masked.then_some(&mask),
                segments: (!masked).then_some(&segments),
            };
            let train = TrainState {
                dropout: 0.0,
                rng: &mut rng,
            };
            let hidden = model.forward(&input, Some(&adapter), None, Some(train)).unwrap();
            let loss = hidden.sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<Vec<f32>> = vars
                .iter()
                .map(|v| f32_vec(grads.get(v.as_tensor()).unwrap()).unwrap())
                .collect();
            (f32_vec(&hidden).unwrap(), g)
        };
        let (h_mask, g_mask) = run(true);
        let (h_seg, g_seg) = run(false);
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert_eq!(h_mask.len(), h_seg.len());
        assert!(diff(&h_mask, &h_seg) < 1e-5, "{arch}: hidden states differ");
        for (a, b) in g_mask.iter().zip(&g_seg) {
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
            assert!(diff(a, b) < 1e-4 * scale, "{arch}: gradients differ");
        }
    }
}

/// Checks 20 gradient entries picked at random (seeded by `seed`) against
/// central finite differences of `objective`, which must read the vars'
/// current values.
pub(crate) fn assert_gradients_match(
    vars: &[Var],
    grads: &candle_core::backprop::GradStore,
    seed: u64,
    mut objective: impl FnMut() -> f64,
) {
    let mut pick = Rng::new(seed);
    for _ in 0..20 {
        let vi = pick.below(vars.len());
        let var = &vars[vi];
        let mut vals = f32_vec(var.as_tensor()).unwrap();
        let k = pick.below(vals.len());
        let analytic = f32_vec(grads.get(var.as_tensor()).unwrap()).unwrap()[k] as f64;
        let eps = 1e-2f32;
        let orig = vals[k];
        let mut at = |x: f32| {
            vals[k] = x;
            var.set(&Tensor::from_vec(vals.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            objective()
        };
        let (up, down) = (at(orig + eps), at(orig - eps));
        at(orig);
        let numeric = (up - down) / (2.0 * eps as f64);
        let tol = 2e-3 + 0.05 * analytic.abs().max(numeric.abs());
        assert!(
            (analytic - numeric).abs() <= tol,
            "var {vi} elem {k}: analytic {analytic} vs numeric {numeric}"
        );
    }
}

pub(crate) struct Collect {
    pub(crate) metrics: Vec<StepMetrics>,
    pub(crate) checkpoints: Vec<(u64, HashMap<String, Vec<u8>>)>,
    stop_after: Option<u64>,
}

impl Collect {
    pub(crate) fn new(stop_after: Option<u64>) -> Self {
        Self {
            metrics: Vec::new(),
            checkpoints: Vec::new(),
            stop_after,
        }
    }
}

impl Sink for Collect {
    fn metrics(&mut self, m: &StepMetrics) {
        self.metrics.push(m.clone());
    }
    fn checkpoint(&mut self, m: &StepMetrics, files: Vec<(String, Vec<u8>)>) -> bool {
        self.checkpoints.push((m.step, files.into_iter().collect()));
        true
    }
    fn should_stop(&self) -> bool {
        self.stop_after
            .is_some_and(|s| self.metrics.last().is_some_and(|m| m.step >= s))
    }
}

fn sft_config(epochs: u64, lr: f64, dropout: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 2,
        learning_rate: lr,
        schedule: Schedule::Linear,
        warmup_ratio: 0.1,
        max_grad_norm: 1.0,
        seed: 11,
        lora: lora(dropout),
        adamw: AdamWParams::default(),
        micro_batch_tokens: 12,
        eval_every: 3,
        eval_examples: 0,
    }
}

#[test]
fn memorisation_drives_the_loss_near_zero_and_frozen_weights_never_change() {
    let model = tiny("llama", 7);
    let before: Vec<Vec<f32>> = model
        .weights
        .named(true)
        .iter()
        .map(|(_, t)| f32_vec(t).unwrap())
        .collect();
    let exs = examples();
    let cfg = sft_config(60, 2e-2, 0.0);
    let mut sink = Collect::new(None);
    let out = run_sft(&model, &exs, &exs, &cfg, "tiny", None, &mut sink).unwrap();
    assert!(matches!(out, Outcome::Completed { .. }));
    let first = sink.metrics.first().unwrap().train_loss;
    let last = sink.metrics.last().unwrap();
    assert!(first > 2.0, "a random model starts near ln(61): {first}");
    assert!(last.valid_loss.unwrap() < 0.05, "final loss {:?}", last.valid_loss);
    assert!(last.valid_values[TOKEN_ACCURACY] > 0.99);
    let after: Vec<Vec<f32>> = model
        .weights
        .named(true)
        .iter()
        .map(|(_, t)| f32_vec(t).unwrap())
        .collect();
    assert_eq!(before, after, "a frozen base weight changed");
}

#[test]
fn training_is_deterministic_and_resume_from_a_checkpoint_is_exact() {
    let model = tiny("qwen2", 8);
    let exs = examples();
    let cfg = sft_config(4, 1e-2, 0.1);
    let mut full = Collect::new(None);
    run_sft(&model, &exs, &exs, &cfg, "tiny", None, &mut full).unwrap();
    let mut again = Collect::new(None);
    run_sft(&model, &exs, &exs, &cfg, "tiny", None, &mut again).unwrap();
    let untimed = |m: &[StepMetrics]| -> Vec<StepMetrics> {
        m.iter()
            .map(|m| StepMetrics {
                tokens_per_second: 0.0,
                ..m.clone()
            })
            .collect()
    };
    assert_eq!(untimed(&full.metrics), untimed(&again.metrics), "same seed, same run");

    // Interrupt after step 4 (the checkpoint at step 3 is the last one),
    // then resume from it.
    let mut first = Collect::new(Some(4));
    let out = run_sft(&model, &exs, &exs, &cfg, "tiny", None, &mut first).unwrap();
    assert!(matches!(out, Outcome::Stopped { step: 4, .. }), "{out:?}");
    let (step, files) = first.checkpoints.last().unwrap().clone();
    assert_eq!(step, 3);
    let resume = read_checkpoint(&model, &files).unwrap();
    let mut second = Collect::new(None);
    run_sft(&model, &exs, &exs, &cfg, "tiny", Some(resume), &mut second).unwrap();
    let end_full = &full.checkpoints.last().unwrap().1["adapter_model.safetensors"];
    let end_resumed = &second.checkpoints.last().unwrap().1["adapter_model.safetensors"];
    let a = candle_core::safetensors::load_buffer(end_full, &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load_buffer(end_resumed, &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let x = f32_vec(t).unwrap();
        let y = f32_vec(&b[k]).unwrap();
        let diff = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-6, "{k} differs by {diff}");
    }
    assert_eq!(
        full.metrics.last().unwrap().train_loss,
        second.metrics.last().unwrap().train_loss
    );
}

/// The first steps of one SFT run, pinned to what the loop produced before
/// the method seam existed (commit "tests: pin an SFT run's first step
/// losses"): a change of data order, dropout streams, normaliser or
/// accumulation shows here, not only a broken resume. The tolerance is
/// relative 1e-6: those changes move the loss by more than 1e-3, while a
/// CPU with other SIMD kernels may round the last bits differently.
#[test]
fn an_sft_run_reproduces_its_pinned_step_losses() {
    let model = tiny("qwen2", 8);
    let exs = examples();
    let cfg = sft_config(4, 1e-2, 0.1);
    let mut sink = Collect::new(Some(4));
    run_sft(&model, &exs, &exs, &cfg, "tiny", None, &mut sink).unwrap();
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() <= 1e-6 * want.abs(),
            "{what}: {got:?}, pinned {want:?}"
        );
    };
    let pinned = [
        (9.821835708618163, 8.611190739429267, 14),
        (7.891958236694336, 12.088211886164347, 28),
        (8.799168395996094, 7.91145920115507, 42),
        (5.479064226150513, 9.765408945936128, 56),
    ];
    assert_eq!(sink.metrics.len(), pinned.len());
    for (m, (loss, grad_norm, tokens)) in sink.metrics.iter().zip(pinned) {
        close(m.train_loss, loss, &format!("step {} train loss", m.step));
        close(m.grad_norm, grad_norm, &format!("step {} grad norm", m.step));
        assert_eq!(m.trained_tokens, tokens, "step {}", m.step);
    }
    close(
        sink.metrics[2].valid_loss.unwrap(),
        6.612533410390218,
        "step 3 valid loss",
    );
}

/// A method unlike SFT in every way the seam allows, to hold the loop to
/// its contract: owned units made at the start of each step from a stream
/// of its own (seed, 3, step), one normaliser per unit (as DPO's pairs),
/// state that lives in checkpoints, a prepare step, and a validation
/// without a loss (as GRPO's).
#[derive(Default)]
struct Reweighted {
    /// Units drawn so far: state a resume must bring back.
    draws: u64,
    /// Whether `load_state` had run when `prepare` ran.
    loaded_before_prepare: Option<bool>,
    loaded: bool,
    /// Name the state file as one of the loop's (a mistake the loop refuses).
    clash: bool,
}

struct Weighted {
    example: Example,
    weight: f64,
}

#[derive(Default)]
struct WeightedSums {
    nll: f64,
    weight: f64,
}

const REWEIGHTED_STATE: &str = "reweighted.json";

impl Method for Reweighted {
    type Example = Example;
    type Unit<'a> = Weighted;
    type Sums = WeightedSums;

    fn encode(&self, e: &Encoder<'_>, line: &serde_json::Value) -> EngineResult<Option<Example>> {
        Sft.encode(e, line)
    }

    fn prepare(&mut self, _model: &BaseModel, _train: &[Example], _eval: &[Example]) -> EngineResult<()> {
        assert!(self.loaded_before_prepare.is_none(), "prepare runs once per start");
        self.loaded_before_prepare = Some(self.loaded);
        Ok(())
    }

    fn begin_step(
        &mut self,
        _policy: Policy<'_>,
        at: StepInfo,
        data: &[Example],
        batch: &[usize],
        sums: &mut WeightedSums,
    ) -> EngineResult<Vec<Weighted>> {
        let mut rng = Rng::derive(at.seed, &[3, at.step]);
        Ok(batch
            .iter()
            .map(|&i| {
                self.draws += 1;
                let weight = 0.5 + rng.next_f64();
                sums.weight += weight;
                Weighted {
                    example: data[i].clone(),
                    weight,
                }
            })
            .collect())
    }

    fn tokens(&self, unit: &Weighted) -> usize {
        unit.example.ids.len()
    }

    fn normaliser(&self, units: &[Weighted]) -> f64 {
        units.len() as f64
    }

    fn loss(
        &self,
        policy: Policy<'_>,
        units: &[Weighted],
        normaliser: f64,
        mut train: Option<TrainState<'_>>,
        sums: &mut WeightedSums,
    ) -> EngineResult<Tensor> {
        let mut total: Option<Tensor> = None;
        for u in units {
            let t = train.as_mut().map(|t| TrainState {
                dropout: t.dropout,
                rng: &mut *t.rng,
            });
            let (nll, n, _) = packed_loss(policy.model, policy.adapter, &[&u.example], t)?;
            let mean = (nll / n as f64)?;
            sums.nll += mean.to_scalar::<f32>()? as f64;
            let weighted = (mean * (u.weight / normaliser))?;
            total = Some(match total {
                Some(acc) => (acc + weighted)?,
                None => weighted,
            });
        }
        Ok(total.expect("a micro-batch has units"))
    }

    fn summarize(&self, sums: &WeightedSums, normaliser: f64) -> StepSummary {
        StepSummary {
            loss: sums.nll / normaliser,
            values: [("weight_mean".to_string(), sums.weight / normaliser)].into(),
        }
    }

    fn validate(&mut self, _policy: Policy<'_>, examples: &[Example], _budget: usize) -> EngineResult<Validation> {
        Ok(Validation {
            loss: None,
            values: [
                ("draws".to_string(), self.draws as f64),
                ("examples".to_string(), examples.len() as f64),
            ]
            .into(),
        })
    }

    fn state(&self) -> EngineResult<Vec<(String, Vec<u8>)>> {
        let name = if self.clash {
            "trainer_state.json"
        } else {
            REWEIGHTED_STATE
        };
        Ok(vec![(name.into(), self.draws.to_string().into_bytes())])
    }

    fn load_state(&mut self, files: &HashMap<String, Vec<u8>>) -> EngineResult<()> {
        let bytes = &files[REWEIGHTED_STATE];
        self.draws = String::from_utf8_lossy(bytes).parse().unwrap();
        self.loaded = true;
        Ok(())
    }
}

#[test]
fn a_method_of_its_own_runs_in_the_loop_and_resumes_exactly_with_its_state() {
    let model = tiny("llama", 21);
    let exs = examples();
    let cfg = sft_config(4, 1e-2, 0.1);
    let untimed = |m: &[StepMetrics]| -> Vec<StepMetrics> {
        m.iter()
            .map(|m| StepMetrics {
                tokens_per_second: 0.0,
                ..m.clone()
            })
            .collect()
    };
    let mut method = Reweighted::default();
    let mut full = Collect::new(None);
    run(&model, &mut method, &exs, &exs, &cfg, "tiny", None, None, &mut full).unwrap();
    assert_eq!(method.loaded_before_prepare, Some(false));
    assert_eq!(method.draws, 16, "4 epochs of 4 examples");
    let steps = &full.metrics;
    assert_eq!(steps.len(), 8);
    assert!(
        steps
            .iter()
            .all(|m| m.values.contains_key("weight_mean") && m.train_loss > 0.0)
    );
    // Validation without a loss, with the method's own values, at checkpoints only.
    let at3 = &steps[2];
    assert_eq!(at3.valid_loss, None);
    assert_eq!(at3.valid_values["draws"], 6.0);
    assert_eq!(at3.valid_values["examples"], 4.0);
    assert!(steps[3].valid_values.is_empty());
    // The checkpoint holds the loop's files and the method's.
    let (step, files) = full.checkpoints[0].clone();
    assert_eq!(step, 3);
    let mut names: Vec<&str> = files.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "optimizer.safetensors",
            REWEIGHTED_STATE,
            "trainer_state.json"
        ]
    );
    assert_eq!(files[REWEIGHTED_STATE], b"6");

    let resume = read_checkpoint(&model, &files).unwrap();
    assert_eq!(resume.method_files.keys().collect::<Vec<_>>(), [REWEIGHTED_STATE]);
    let mut resumed = Reweighted::default();
    let mut second = Collect::new(None);
    run(
        &model,
        &mut resumed,
        &exs,
        &exs,
        &cfg,
        "tiny",
        None,
        Some(resume),
        &mut second,
    )
    .unwrap();
    assert_eq!(resumed.loaded_before_prepare, Some(true));
    assert_eq!(resumed.draws, 16);
    assert_eq!(untimed(&second.metrics), untimed(&full.metrics[3..]));
    assert_eq!(second.checkpoints.last().unwrap().1, full.checkpoints.last().unwrap().1);

    // A method may not overwrite the loop's files.
    let mut clash = Reweighted {
        clash: true,
        ..Default::default()
    };
    let err = run(
        &model,
        &mut clash,
        &exs,
        &exs,
        &cfg,
        "tiny",
        None,
        None,
        &mut Collect::new(None),
    )
    .unwrap_err();
    assert!(err.to_string().contains("trainer_state.json"), "{err}");
}

fn greedy_without_cache(model: &BaseModel, adapter: Option<&Adapter>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let (t, p) = single(&ids, &Device::Cpu).unwrap();
        let h = model
            .forward(
                &Input {
                    ids: &t,
                    positions: &p,
                    mask: None,
                    segments: None,
                },
                adapter,
                None,
                None,
            )
            .unwrap();
        let last = h.narrow(0, ids.len() - 1, 1).unwrap();
        let logits = f32_vec(&model.logits(&last, false).unwrap()).unwrap();
        let next = logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0 as u32;
        ids.push(next);
        out.push(next);
    }
    out
}

pub(crate) fn byte_tokenizer() -> lathe_engine::tokenizer::Tokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..61u32).map(|i| (format!("t{i}"), serde_json::json!(i))).collect();
    let json = serde_json::json!({
        "version": "1.0",
        "added_tokens": [],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
    });
    lathe_engine::tokenizer::Tokenizer::from_tokenizer_json(json.to_string().as_bytes())
        .or_else(|_| {
            lathe_engine::tokenizer::Tokenizer::from_gguf(lathe_engine::tokenizer::GgufVocab {
                model: "gpt2".into(),
                pre: None,
                tokens: (0..61).map(|i| format!("t{i}")).collect(),
                token_types: Vec::new(),
                merges: Vec::new(),
                bos_id: None,
                eos_id: None,
                pad_id: None,
                unk_id: None,
                add_bos: false,
            })
        })
        .unwrap()
}

#[test]
fn cached_batched_generation_equals_full_recomputation() {
    let model = tiny("llama", 12);
    let (adapter, _) = random_adapter(&model, 13);
    let tok = byte_tokenizer();
    let prompts = vec![
        vec![1u32, 5, 9, 13, 2],
        vec![3u32, 4],
        vec![7u32, 8, 9, 10, 11, 12, 13, 14],
    ];
    let s = Sampling {
        max_tokens: 6,
        ..Default::default()
    };
    for ad in [None, Some(&adapter)] {
        let batched = generate(&model, ad, &tok, &prompts, &vec![s.clone(); 3], &[], &mut |_, _| {}).unwrap();
        for (p, g) in prompts.iter().zip(&batched) {
            let alone = generate(
                &model,
                ad,
                &tok,
                std::slice::from_ref(p),
                std::slice::from_ref(&s),
                &[],
                &mut |_, _| {},
            )
            .unwrap();
            assert_eq!(alone[0].tokens, g.tokens, "batching changed the output");
            assert_eq!(
                greedy_without_cache(&model, ad, p, 6),
                g.tokens,
                "the KV cache changed the output"
            );
            assert_eq!(g.finish_reason, "length");
        }
    }
    // A stop id ends a row early while the others go on.
    let stop = batched_first_token(&model, &tok, &prompts[1]);
    let out = generate(
        &model,
        None,
        &tok,
        &prompts,
        &vec![s.clone(); 3],
        &[stop],
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out[1].finish_reason, "stop");
    assert!(out[1].tokens.is_empty());
}

#[test]
fn a_row_whose_reader_left_ends_while_the_others_go_on() {
    let model = tiny("llama", 12);
    let tok = byte_tokenizer();
    let prompts = vec![vec![1u32, 5, 9, 13, 2], vec![3u32, 4]];
    let s = Sampling {
        max_tokens: 6,
        ..Default::default()
    };
    let alone = generate(
        &model,
        None,
        &tok,
        &prompts[1..],
        std::slice::from_ref(&s),
        &[],
        &mut |_, _| {},
    )
    .unwrap();
    let mut seen = [0usize; 2];
    let out = generate_streaming(&model, None, &tok, &prompts, &vec![s; 2], &[], &mut |i, _| {
        seen[i] += 1;
        // Row 0's reader leaves after its second token.
        i != 0 || seen[0] < 2
    })
    .unwrap();
    assert_eq!((out[0].finish_reason, out[0].tokens.len()), ("cancelled", 2));
    assert_eq!(seen, [2, 6], "no token is chosen for a cancelled row");
    assert_eq!(out[1].tokens, alone[0].tokens, "the other row is unchanged");
}

#[test]
fn rows_joining_a_running_batch_generate_what_they_would_alone() {
    use lathe_engine::generate::Batch;
    let model = tiny("llama", 12);
    let (adapter, _) = random_adapter(&model, 13);
    let tok = byte_tokenizer();
    let long: Vec<u32> = (0..90).map(|i| (i * 7 % 59 + 1) as u32).collect();
    let greedy = |n: usize| Sampling {
        max_tokens: n,
        ..Default::default()
    };
    let sampled = Sampling {
        max_tokens: 20,
        temperature: 0.9,
        seed: 5,
        stream: Some(77),
        ..Default::default()
    };
    // (key, prompt, sampling, the step before which it joins)
    let plan: Vec<(usize, Vec<u32>, Sampling, usize)> = vec![
        (0, vec![1, 5, 9, 13, 2], greedy(30), 0),
        (1, vec![3, 4], sampled.clone(), 0),
        // Longer than the batch so far: the running rows get padded.
        (2, long.clone(), greedy(3), 2),
        (3, vec![7, 8, 9], greedy(12), 5),
        // Joins once the long row left: its padding is trimmed later.
        (4, vec![11, 12, 13, 14], greedy(8), 6),
    ];
    for ad in [None, Some(&adapter)] {
        let mut batch = Batch::new(&model, ad, &tok, &[]);
        let mut got: Vec<Option<lathe_engine::generate::Generated>> = vec![None; plan.len()];
        let mut streamed: Vec<Vec<u32>> = vec![Vec::new(); plan.len()];
        let mut most = 0;
        for step in 0..200 {
            let joining: Vec<_> = plan
                .iter()
                .filter(|(_, _, _, at)| *at == step)
                .map(|(k, p, s, _)| (*k, (p.clone(), s.clone())))
                .collect();
            for (k, g) in batch
                .join(joining, &mut |k, t| {
                    streamed[k].push(t);
                    true
                })
                .unwrap()
            {
                got[k] = Some(g);
            }
            most = most.max(batch.len());
            for (k, g) in batch
                .step(&mut |k, t| {
                    streamed[k].push(t);
                    true
                })
                .unwrap()
            {
                got[k] = Some(g);
            }
            if batch.is_empty() && step > 6 {
                break;
            }
        }
        assert_eq!(most, 4, "rows overlapped in one batch");
        // The long row's 90 positions were dropped once only padding.
        assert!(batch.span() == 0, "an empty batch holds no cache");
        for (k, p, s, _) in &plan {
            let alone = generate(
                &model,
                ad,
                &tok,
                std::slice::from_ref(p),
                std::slice::from_ref(s),
                &[],
                &mut |_, _| {},
            )
            .unwrap()
            .remove(0);
            let g = got[*k].as_ref().expect("every row finishes");
            assert_eq!(g.tokens, alone.tokens, "row {k} changed by its batch");
            assert_eq!(g.tokens, streamed[*k], "row {k}'s streamed tokens");
            assert_eq!(g.finish_reason, "length");
        }
    }
}

#[test]
fn a_long_running_batch_drops_the_padding_no_row_needs() {
    use lathe_engine::generate::Batch;
    let model = tiny("llama", 12);
    let tok = byte_tokenizer();
    let s = |n: usize| Sampling {
        max_tokens: n,
        ..Default::default()
    };
    let mut batch = Batch::new(&model, None, &tok, &[]);
    let long: Vec<u32> = (0..100).map(|i| (i % 50 + 1) as u32).collect();
    batch.join(vec![(0, (long, s(2)))], &mut |_, _| true).unwrap();
    batch
        .join(vec![(1, (vec![1, 2, 3], s(120)))], &mut |_, _| true)
        .unwrap();
    assert_eq!(batch.span(), 100);
    let mut left = Vec::new();
    for _ in 0..4 {
        left.extend(batch.step(&mut |_, _| true).unwrap().into_iter().map(|(k, _)| k));
    }
    // Row 0 left after two tokens, and row 1's 97 leading pads went.
    assert_eq!(left, vec![0]);
    assert!(batch.span() < 20, "the cache still spans {}", batch.span());
    assert_eq!(batch.len(), 1);
}

fn batched_first_token(model: &BaseModel, tok: &lathe_engine::tokenizer::Tokenizer, p: &[u32]) -> u32 {
    let s = Sampling {
        max_tokens: 1,
        ..Default::default()
    };
    generate(model, None, tok, &[p.to_vec()], &[s], &[], &mut |_, _| {}).unwrap()[0].tokens[0]
}

#[test]
fn sampling_is_seeded() {
    let model = tiny("llama", 14);
    let tok = byte_tokenizer();
    let s = Sampling {
        temperature: 1.0,
        top_p: 0.9,
        top_k: 20,
        max_tokens: 8,
        seed: 5,
        stop: Vec::new(),
        stream: None,
        ..Sampling::default()
    };
    let p = vec![vec![1u32, 2, 3]];
    let a = generate(&model, None, &tok, &p, std::slice::from_ref(&s), &[], &mut |_, _| {}).unwrap();
    let b = generate(&model, None, &tok, &p, std::slice::from_ref(&s), &[], &mut |_, _| {}).unwrap();
    assert_eq!(a, b);
    let other = Sampling { seed: 6, ..s };
    let c = generate(&model, None, &tok, &p, &[other], &[], &mut |_, _| {}).unwrap();
    assert_ne!(a[0].tokens, c[0].tokens, "a different seed should sample differently");
}

/// A presence penalty far above any logit's margin leaves greedy decoding
/// no token it already chose; without it, the tiny model repeats itself.
#[test]
fn a_presence_penalty_keeps_an_answer_from_repeating_a_token() {
    let model = tiny("llama", 14);
    let tok = byte_tokenizer();
    let p = vec![vec![1u32, 2, 3]];
    let plain = Sampling {
        max_tokens: 24,
        ..Sampling::default()
    };
    let repeats = |tokens: &[u32]| tokens.len() - tokens.iter().collect::<std::collections::HashSet<_>>().len();
    let a = generate(
        &model,
        None,
        &tok,
        &p,
        std::slice::from_ref(&plain),
        &[],
        &mut |_, _| {},
    )
    .unwrap();
    assert!(repeats(&a[0].tokens) > 0, "the plain answer repeats: {:?}", a[0].tokens);
    let penalised = Sampling {
        presence_penalty: 1e4,
        ..plain
    };
    let b = generate(&model, None, &tok, &p, &[penalised], &[], &mut |_, _| {}).unwrap();
    assert_eq!(b[0].tokens.len(), 24);
    assert_eq!(repeats(&b[0].tokens), 0, "{:?}", b[0].tokens);
}

/// A bias of +100 on one token makes greedy decoding answer with it only;
/// -100 on the token it would have chosen first makes it choose another.
#[test]
fn a_logit_bias_forces_or_bans_a_token() {
    let model = tiny("llama", 14);
    let tok = byte_tokenizer();
    let p = vec![vec![1u32, 2, 3]];
    let forced = Sampling {
        max_tokens: 6,
        logit_bias: vec![(7, 100.0)],
        ..Sampling::default()
    };
    let a = generate(&model, None, &tok, &p, &[forced], &[], &mut |_, _| {}).unwrap();
    assert_eq!(a[0].tokens, [7; 6]);
    let plain = Sampling {
        max_tokens: 1,
        ..Sampling::default()
    };
    let first = generate(
        &model,
        None,
        &tok,
        &p,
        std::slice::from_ref(&plain),
        &[],
        &mut |_, _| {},
    )
    .unwrap()[0]
        .tokens[0];
    let banned = Sampling {
        logit_bias: vec![(first, -100.0)],
        ..plain
    };
    let b = generate(&model, None, &tok, &p, &[banned], &[], &mut |_, _| {}).unwrap();
    assert_ne!(b[0].tokens[0], first);
}

#[test]
fn adapters_round_trip_through_peft_files_and_merge_into_the_base() {
    let model = tiny("qwen2", 15);
    let (adapter, _) = random_adapter(&model, 16);
    let (st, cfg) = adapter.to_peft("tiny").unwrap();
    let cfg_json: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["r"], 4);
    let back = Adapter::from_peft(&model.config, &st, &cfg, &Device::Cpu).unwrap();
    let names: Vec<String> = adapter.named().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()));
    for ((n, a), (_, b)) in adapter.named().iter().zip(back.named()) {
        assert_eq!(f32_vec(a).unwrap(), f32_vec(&b).unwrap(), "{n}");
    }
    let merged = BaseModel::new(
        model.config.clone(),
        adapter.merge_into(&model.weights).unwrap(),
        Device::Cpu,
    )
    .unwrap();
    let (t, p) = single(&[1, 4, 9, 16, 25], &Device::Cpu).unwrap();
    let input = Input {
        ids: &t,
        positions: &p,
        mask: None,
        segments: None,
    };
    let x = f32_vec(&model.forward(&input, Some(&back), None, None).unwrap()).unwrap();
    let y = f32_vec(&merged.forward(&input, None, None, None).unwrap()).unwrap();
    let diff = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "merged model differs by {diff}");
    // Garbage is an error, not a panic.
    assert!(Adapter::from_peft(&model.config, b"nonsense", &cfg, &Device::Cpu).is_err());
    assert!(Adapter::from_peft(&model.config, &st, b"{}", &Device::Cpu).is_err());
}
