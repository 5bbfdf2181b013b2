//! Loads a model and times a forward pass, a LoRA training step and
//! greedy decoding, with the process's resident memory after each stage:
//! `cargo run --release --example engine_probe -- MODEL_PATH [--train-only | --gen-only] [--rounds 3] [--batches 1,8,32,64] [--base] [--f32] [--device cpu|cuda[:N]]`
//! (a GPU needs `--features cuda`; scripts/gpu_smoke.sh runs it on both).

use std::time::Instant;

use lathe_engine::device::DeviceChoice;
use lathe_engine::generate::{Sampling, generate};
use lathe_engine::lora::{Adapter, LoraConfig};
use lathe_engine::model::BaseModel;
use lathe_engine::rng::Rng;
use lathe_engine::sft::{Example, packed_loss};
use lathe_engine::weights::{Proj, load};

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).expect("usage: engine_probe MODEL_PATH");
    let args: Vec<String> = std::env::args().collect();
    let choice: DeviceChoice = match args.iter().position(|a| a == "--device") {
        Some(i) => args
            .get(i + 1)
            .ok_or_else(|| anyhow::anyhow!("--device needs cpu, cuda or cuda:N"))?
            .parse()
            .map_err(anyhow::Error::msg)?,
        None => DeviceChoice::Cpu,
    };
    let device = choice.open()?;
    let t = Instant::now();
    let loaded = load(std::path::Path::new(&path), &device)?;
    println!(
        "loaded {:?} on {choice} in {:.2}s",
        loaded.config,
        t.elapsed().as_secs_f64()
    );
    let train_only = args.iter().any(|a| a == "--train-only");
    let gen_only = args.iter().any(|a| a == "--gen-only");
    // `--batches 8,64`: the generation batch sizes (default 1,8,32,64).
    let batches: Vec<usize> = match args.iter().position(|a| a == "--batches") {
        Some(i) => args
            .get(i + 1)
            .map(|v| v.split(',').filter_map(|b| b.parse().ok()).collect())
            .unwrap_or_default(),
        None => vec![1, 8, 32, 64],
    };
    memory("loaded");
    let mut model = BaseModel::new(loaded.config, loaded.weights, device.clone())?;
    // `--f32`: generate on the f32 weights even where quantized ones exist.
    if args.iter().any(|a| a == "--f32") {
        model.quantized = false;
    }
    match (&model.weights.quant, model.quantized) {
        (Some(q), true) => println!(
            "generation on quantized weights ({:.1} MiB)",
            q.bytes() as f64 / (1 << 20) as f64
        ),
        _ => println!("generation on f32 weights"),
    }
    let (adapter, vars) = Adapter::init(
        &model.config,
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: Proj::ALL.to_vec(),
        },
        &mut Rng::new(0),
        &device,
    )?;
    let mut rng = Rng::new(1);
    let exs: Vec<Example> = (0..8)
        .map(|k| Example {
            ids: (0..50).map(|i| ((i * 37 + k * 11) % 4000 + 100) as u32).collect(),
            trained: (0..50).map(|i| i >= 44).collect(),
        })
        .collect();
    let refs: Vec<&Example> = exs.iter().collect();
    let rounds: usize = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(3),
        None => 3,
    };
    for round in 0..if gen_only { 0 } else { rounds } {
        let t = Instant::now();
        let (l, n, _) = packed_loss(
            &model,
            &adapter,
            &refs,
            Some(lathe_engine::model::TrainState {
                dropout: 0.05,
                rng: &mut rng,
            }),
        )?;
        let fwd = t.elapsed().as_secs_f64();
        let g = (l / n as f64)?.backward()?;
        // A GPU runs asynchronously: wait for the backward pass to finish.
        device.synchronize()?;
        let total = t.elapsed().as_secs_f64();
        let got = vars.iter().filter(|v| g.get(v.as_tensor()).is_some()).count();
        println!(
            "round {round}: 400 tokens fwd {fwd:.2}s, fwd+bwd {total:.2}s = {:.1} tok/s; {got}/{} vars with grads",
            400.0 / total,
            vars.len()
        );
        drop(g);
        memory(&format!("round {round}"));
    }
    if train_only {
        return Ok(());
    }
    // `--base`: generate with the base model alone (no adapter).
    let gen_adapter = (!args.iter().any(|a| a == "--base")).then_some(&adapter);
    let prompt: Vec<u32> = (0..64).map(|i| (i * 13 % 3000 + 50) as u32).collect();
    for b in batches {
        let prompts = vec![prompt.clone(); b];
        let one = Sampling {
            max_tokens: 1,
            ..Default::default()
        };
        let t = Instant::now();
        generate(
            &model,
            gen_adapter,
            &loaded.tokenizer,
            &prompts,
            &vec![one; b],
            &[],
            &mut |_, _| {},
        )?;
        let prefill = t.elapsed().as_secs_f64();
        let s = Sampling {
            max_tokens: 64,
            ..Default::default()
        };
        let t = Instant::now();
        let out = generate(
            &model,
            gen_adapter,
            &loaded.tokenizer,
            &prompts,
            &vec![s; b],
            &[],
            &mut |_, _| {},
        )?;
        let n: usize = out.iter().map(|o| o.tokens.len()).sum();
        let total = t.elapsed().as_secs_f64();
        println!(
            "batch {b}: 64-token prompts, {n} new tokens in {total:.2}s = {:.1} tok/s end to end; \
             prefill {prefill:.2}s; decode {:.1} tok/s aggregate",
            n as f64 / total,
            (n - b) as f64 / (total - prefill)
        );
        memory(&format!("batch {b}"));
    }
    Ok(())
}

/// Prints resident memory now and at its peak so far (Linux; nothing elsewhere).
fn memory(stage: &str) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return;
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0 / 1024.0)
    };
    println!(
        "  memory after {stage}: rss {:.2} GiB, peak {:.2} GiB",
        field("VmRSS:"),
        field("VmHWM:")
    );
}
