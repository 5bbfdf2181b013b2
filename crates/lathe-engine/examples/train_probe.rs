//! Times the training loop itself (data order, micro-batches, forward and
//! backward, clipping, AdamW, metrics), not one loss call as `engine_probe`
//! does: a short SFT run on synthetic examples of `engine_probe`'s shape
//! (50 tokens, the last 6 trained), batch 8, micro-batches of 512 tokens,
//! LoRA r=8 on every projection with dropout 0.05, no validation.
//!
//! cargo run --release -p lathe-engine --example train_probe -- \
//!     [MODEL_PATH (default models/SmolLM2-135M-Instruct.Q4_1.gguf)] [--steps 6]
//!
//! Prints each step's wall time and the median of all but the first.

use std::time::Instant;

use candle_core::Device;
use lathe_engine::lora::LoraConfig;
use lathe_engine::model::BaseModel;
use lathe_engine::optim::{AdamWParams, Schedule};
use lathe_engine::sft::Example;
use lathe_engine::train::{Sink, StepMetrics, TrainConfig, run_sft};
use lathe_engine::weights::{Proj, load};

struct Timer {
    last: Instant,
    steps: Vec<f64>,
}

impl Sink for Timer {
    fn metrics(&mut self, m: &StepMetrics) {
        let s = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        println!(
            "step {}/{}: {s:.3}s, loss {:.4}, {:.1} tok/s",
            m.step, m.total_steps, m.train_loss, m.tokens_per_second
        );
        self.steps.push(s);
    }

    fn checkpoint(&mut self, _m: &StepMetrics, _files: Vec<(String, Vec<u8>)>) -> bool {
        self.last = Instant::now();
        true
    }

    fn should_stop(&self) -> bool {
        false
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let steps: usize = match args.iter().position(|a| a == "--steps") {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(6),
        None => 6,
    };
    let loaded = load(std::path::Path::new(&path), &Device::Cpu)?;
    let model = BaseModel::new(loaded.config, loaded.weights, Device::Cpu)?;
    let batch = 8;
    let exs: Vec<Example> = (0..steps * batch)
        .map(|k| Example {
            ids: (0..50).map(|i| ((i * 37 + k * 11) % 4000 + 100) as u32).collect(),
            trained: (0..50).map(|i| i >= 44).collect(),
        })
        .collect();
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: batch,
        learning_rate: 1e-3,
        schedule: Schedule::Linear,
        warmup_ratio: 0.03,
        max_grad_norm: 1.0,
        seed: 0,
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: Proj::ALL.to_vec(),
        },
        adamw: AdamWParams::default(),
        micro_batch_tokens: 512,
        eval_every: u64::MAX,
        eval_examples: 0,
    };
    let mut timer = Timer {
        last: Instant::now(),
        steps: Vec::new(),
    };
    let started = Instant::now();
    run_sft(&model, &exs, &[], &cfg, "probe", None, &mut timer)?;
    let total = started.elapsed().as_secs_f64();
    let mut rest = timer.steps[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let median = rest.get(rest.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{steps} steps of {batch}x50 tokens in {total:.2}s; median step after the first {median:.3}s = {:.1} tok/s",
        (batch * 50) as f64 / median
    );
    Ok(())
}
