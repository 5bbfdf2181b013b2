//! The Banking77 quality benchmark (opt-in; minutes on a 2-core CPU):
//! SmolLM2-135M-Instruct's exact-match accuracy on 300 held-out test rows
//! before and after LoRA SFT on 500 training rows, with the embedded
//! trainer's "auto" hyperparameters, the same rows, prompt and LoRA config
//! as the PyTorch + PEFT + TRL peer (../shared/peers/banking77).
//!
//! cargo run --release --example banking77 -- --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     [--time-limit-secs 900] [--epochs N] [--batch-size N] [--lr-multiplier X] [--out DIR] [--no-validation]
//!
//! Writes DIR/loss.csv (step, train loss, valid loss, seconds) and DIR/result.json.

use std::{collections::BTreeMap, time::Instant};

use candle_core::Device;
use lathe::engine::local::LoadedBase;
use lathe::engine::trainer::{LocalTrainerConfig, job_lora, sft_config};
use lathe::jobs::model::{EarlyStopping, Hyperparameters, JobSpec, Lora, Method, MethodKind};
use lathe_engine::generate::{Sampling, generate};
use lathe_engine::lora::Adapter;
use lathe_engine::sft::{TOKEN_ACCURACY, encode_file};
use lathe_engine::train::{Sink, StepMetrics, run_sft};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Peak resident memory since the last [`reset_peak_rss`] (Linux's VmHWM), or since
/// the process started where that cannot be read.
fn phase_peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or_else(peak_rss_mib, |kb| kb / 1024.0)
}

/// Starts a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    // SAFETY: rusage is plain integers, for which all-zero bytes are a value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

struct Collect {
    started: Instant,
    limit: f64,
    rows: Vec<(StepMetrics, f64)>,
    last_adapter: Option<(Vec<u8>, Vec<u8>)>,
}

impl Sink for Collect {
    fn metrics(&mut self, m: &StepMetrics) {
        let t = self.started.elapsed().as_secs_f64();
        eprintln!(
            "step {:>4}/{} epoch {:.2} loss {:.4} acc {:.3} lr {:.2e} {:.1} tok/s{} peak {:.0} MiB [{t:.0}s]",
            m.step,
            m.total_steps,
            m.epoch,
            m.train_loss,
            m.values.get(TOKEN_ACCURACY).copied().unwrap_or(0.0),
            m.learning_rate,
            m.tokens_per_second,
            m.valid_loss
                .map(|v| format!(
                    " valid {v:.4} acc {:.3}",
                    m.valid_values.get(TOKEN_ACCURACY).copied().unwrap_or(0.0)
                ))
                .unwrap_or_default(),
            phase_peak_rss_mib()
        );
        self.rows.push((m.clone(), t));
    }
    fn checkpoint(&mut self, _m: &StepMetrics, files: Vec<(String, Vec<u8>)>) -> bool {
        let map: BTreeMap<String, Vec<u8>> = files.into_iter().collect();
        self.last_adapter = Some((
            map["adapter_model.safetensors"].clone(),
            map["adapter_config.json"].clone(),
        ));
        true
    }
    fn should_stop(&self) -> bool {
        self.started.elapsed().as_secs_f64() > self.limit
    }
}

fn accuracy(base: &LoadedBase, adapter: Option<&Adapter>, test: &[(serde_json::Value, String)]) -> (usize, f64, f64) {
    let t = Instant::now();
    let prompts: Vec<Vec<u32>> = test
        .iter()
        .map(|(m, _)| base.prompt(m.as_array().unwrap(), None).unwrap())
        .collect();
    let s = Sampling {
        max_tokens: 12,
        ..Default::default()
    };
    let mut correct = 0;
    let mut generated = 0;
    for (chunk, want) in prompts.chunks(32).zip(test.chunks(32)) {
        let out = generate(
            &base.model,
            adapter,
            &base.tokenizer,
            chunk,
            &vec![s.clone(); chunk.len()],
            &base.stop_ids,
            &mut |_, _| {},
        )
        .unwrap();
        for (o, (_, label)) in out.iter().zip(want) {
            generated += o.tokens.len();
            correct += (o.text.trim() == label) as usize;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    (correct, secs, generated as f64 / secs)
}

fn main() -> anyhow::Result<()> {
    let model = arg("--model").unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let limit: f64 = arg("--time-limit-secs").map(|s| s.parse().unwrap()).unwrap_or(900.0);
    let out_dir = std::path::PathBuf::from(arg("--out").unwrap_or_else(|| "bench-out/banking77".into()));
    std::fs::create_dir_all(&out_dir)?;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/banking77");
    let train_bytes = std::fs::read(format!("{data}/banking77_train_sft.jsonl"))?;
    let test_bytes = std::fs::read(format!("{data}/banking77_test_sft.jsonl"))?;

    let t = Instant::now();
    let base = LoadedBase::from_path("smollm2", std::path::Path::new(&model), &Device::Cpu)?;
    let load_s = t.elapsed().as_secs_f64();

    let test: Vec<(serde_json::Value, String)> = test_bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            let msgs = v["messages"].as_array().unwrap();
            let label = msgs.last().unwrap()["content"].as_str().unwrap().to_string();
            (serde_json::Value::Array(msgs[..msgs.len() - 1].to_vec()), label)
        })
        .collect();

    let (base_correct, base_eval_s, base_gen_tps) = accuracy(&base, None, &test);
    eprintln!("base: {base_correct}/{} in {base_eval_s:.0}s", test.len());

    let spec = JobSpec {
        base_model: "smollm2".into(),
        training_dataset_id: String::new(),
        validation_dataset_id: None,
        method: Method {
            kind: MethodKind::Supervised,
            hyperparameters: Hyperparameters {
                n_epochs: arg("--epochs").map(|s| s.parse().unwrap()),
                batch_size: arg("--batch-size").map(|s| s.parse().unwrap()),
                learning_rate_multiplier: arg("--lr-multiplier").map(|s| s.parse().unwrap()),
                ..Default::default()
            },
            grader: None,
            response_format: None,
        },
        lora: Lora::default(),
        seed: 0,
        suffix: String::new(),
        metadata: Default::default(),
        priority: 0,
        early_stopping: None::<EarlyStopping>,
        webhook: None,
        checkpoint_eval: None,
        start_from: None,
        resources: Default::default(),
    };
    let train = encode_file(&base.tokenizer, &base.template, base.bos_id, &train_bytes, 2048)?;
    // Validation loss on 60 held-out rows from the test file's tail
    // (`--no-validation`: none, as the TRL peer runs).
    let n_valid = if std::env::args().any(|a| a == "--no-validation") {
        0
    } else {
        60
    };
    let valid = encode_file(&base.tokenizer, &base.template, base.bos_id, &test_bytes, 2048)?
        .into_iter()
        .rev()
        .take(n_valid)
        .collect::<Vec<_>>();
    let lora = job_lora(&spec).map_err(|v| anyhow::anyhow!("{v:?}"))?;
    let tcfg = LocalTrainerConfig::default();
    let cfg = sft_config(&spec, train.len(), lora, &tcfg);
    let tokens_per_epoch: usize = train.iter().map(|e| e.ids.len()).sum();
    eprintln!(
        "training {} examples ({tokens_per_epoch} tokens/epoch): {} epochs, batch {}, lr {:.2e}, limit {limit}s",
        train.len(),
        cfg.epochs,
        cfg.batch_size,
        cfg.learning_rate
    );
    reset_peak_rss();
    let mut sink = Collect {
        started: Instant::now(),
        limit,
        rows: Vec::new(),
        last_adapter: None,
    };
    let outcome = run_sft(&base.model, &train, &valid, &cfg, "smollm2", None, &mut sink)?;
    let train_s = sink.started.elapsed().as_secs_f64();
    let train_peak_rss = phase_peak_rss_mib();
    let trained_tokens = sink.rows.last().map(|r| r.0.trained_tokens).unwrap_or(0);
    let (st, ac) = sink
        .last_adapter
        .clone()
        .ok_or_else(|| anyhow::anyhow!("training stopped before its first checkpoint: raise --time-limit-secs"))?;
    let adapter = Adapter::from_peft(&base.model.config, &st, &ac, &Device::Cpu)?;
    std::fs::write(out_dir.join("adapter_model.safetensors"), &st)?;
    std::fs::write(out_dir.join("adapter_config.json"), &ac)?;
    let (ft_correct, ft_eval_s, ft_gen_tps) = accuracy(&base, Some(&adapter), &test);
    eprintln!("fine-tuned: {ft_correct}/{} in {ft_eval_s:.0}s", test.len());

    let mut csv = String::from("step,train_loss,valid_loss,elapsed_s\n");
    for (m, t) in &sink.rows {
        csv.push_str(&format!(
            "{},{},{},{t:.2}\n",
            m.step,
            m.train_loss,
            m.valid_loss.map(|v| v.to_string()).unwrap_or_default()
        ));
    }
    std::fs::write(out_dir.join("loss.csv"), csv)?;
    let result = serde_json::json!({
        "model": model, "load_s": load_s,
        "config": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
                   "lora": {"rank": cfg.lora.rank, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout},
                   "warmup_ratio": cfg.warmup_ratio, "schedule": "linear"},
        "outcome": format!("{outcome:?}"),
        "steps": sink.rows.len(),
        "train_wall_s": train_s,
        "trained_tokens": trained_tokens,
        "validation_rows": valid.len(),
        "train_tokens_per_s": trained_tokens as f64 / train_s,
        "base_correct": base_correct, "fine_tuned_correct": ft_correct, "n_test": test.len(),
        "base_accuracy": base_correct as f64 / test.len() as f64,
        "fine_tuned_accuracy": ft_correct as f64 / test.len() as f64,
        "eval_s": {"base": base_eval_s, "fine_tuned": ft_eval_s},
        "eval_generated_tokens_per_s": {"base": base_gen_tps, "fine_tuned": ft_gen_tps},
        "peak_rss_mib": peak_rss_mib(),
        "training_peak_rss_mib": train_peak_rss,
    });
    std::fs::write(out_dir.join("result.json"), serde_json::to_vec_pretty(&result)?)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
