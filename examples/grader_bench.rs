//! Graded pairs per second for each deterministic grader, and the warm python-grader
//! round trip. Uses the same string pairs as scripts/grader_bench.py (the reference
//! fixture), single-threaded, so the two outputs can be divided into ratios.
//!
//!     cargo run --release --example grader_bench [-- --seconds 0.5] [--only PREFIX]
//!
//! Prints one JSON object per line: {"grader": ..., "pairs_per_s": ..., "us_per_pair": ...}.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lathe::graders::{
    GradeContext, Grader, PythonPool, PythonPoolConfig, Sample, SandboxPolicy, SimilarityMetric, parse, run,
    run_deterministic, similarity,
};
use serde_json::{Value, json};

fn load_pairs() -> Vec<(Sample, Value)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grader_reference.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|row| {
            let input = row.get("input")?.as_str()?.to_string();
            let reference = row.get("reference")?.as_str()?.to_string();
            Some((Sample::from_model_output(input), json!({ "reference": reference })))
        })
        .collect()
}

fn report(name: &str, pairs: usize, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{}",
        json!({
            "grader": name,
            "pairs": pairs,
            "seconds": secs,
            "pairs_per_s": pairs as f64 / secs,
            "us_per_pair": secs * 1e6 / pairs as f64,
        })
    );
}

fn selected(name: &str) -> bool {
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    only.is_none_or(|o| name.starts_with(&o))
}

fn bench_deterministic(name: &str, grader: &Grader, pairs: &[(Sample, Value)], budget: Duration) {
    if !selected(name) {
        return;
    }
    let mut done = 0usize;
    let start = Instant::now();
    let mut checksum = 0.0;
    while start.elapsed() < budget {
        for (sample, item) in pairs {
            if let Some(r) = run_deterministic(grader, sample, item) {
                checksum += r.reward;
            }
        }
        done += pairs.len();
    }
    let elapsed = start.elapsed();
    std::hint::black_box(checksum);
    report(name, done, elapsed);
}

fn bench_metric(name: &str, pairs: &[(&str, &str)], budget: Duration, metric: impl Fn(&str, &str) -> f64) {
    if !selected(name) {
        return;
    }
    let mut done = 0usize;
    let start = Instant::now();
    let mut checksum = 0.0;
    while start.elapsed() < budget {
        for (a, b) in pairs {
            checksum += metric(std::hint::black_box(a), std::hint::black_box(b));
        }
        done += pairs.len();
    }
    let elapsed = start.elapsed();
    std::hint::black_box(checksum);
    report(name, done, elapsed);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let budget = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(Duration::from_millis(500), Duration::from_secs_f64);
    let pairs = load_pairs();
    if pairs.is_empty() {
        eprintln!("no pairs: run scripts/grader_reference.py first");
        return;
    }
    similarity::preload_wordnet();

    let string_check = parse(
        &json!({"type": "string_check", "name": "eq", "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}", "operation": "eq"}),
    )
    .expect("valid grader");
    bench_deterministic("string_check", &string_check, &pairs, budget);
    let raw: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(s, i)| (s.output_text.as_str(), i["reference"].as_str().unwrap_or("")))
        .collect();
    bench_metric("string_check/metric", &raw, budget, |a, b| f64::from(u8::from(a == b)));
    for metric in SimilarityMetric::ALL.into_iter().filter(|m| m.is_deterministic()) {
        let g = parse(
            &json!({"type": "text_similarity", "name": metric.as_str(), "input": "{{sample.output_text}}",
            "reference": "{{ item.reference }}", "evaluation_metric": metric.as_str()}),
        )
        .expect("valid grader");
        bench_deterministic(metric.as_str(), &g, &pairs, budget);
        bench_metric(&format!("{}/metric", metric.as_str()), &raw, budget, |a, b| {
            similarity::score(metric, a, b).unwrap_or(0.0)
        });
    }

    if !selected("python_warm_call") {
        return;
    }
    let config = PythonPoolConfig {
        workers: 1,
        sandbox: SandboxPolicy::AllowUnsandboxed,
        ..PythonPoolConfig::default()
    };
    let pool = match PythonPool::start(config).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("python pool unavailable: {e}");
            return;
        }
    };
    eprintln!("python sandbox: {:?}", pool.sandbox());
    let ctx = GradeContext {
        python: Some(Arc::new(pool)),
        ..GradeContext::default()
    };
    let g = parse(&json!({"type": "python", "name": "py", "source":
        "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['reference'] else 0.0\n"}))
    .expect("valid grader");
    // Warm the worker (first call loads the source).
    let _ = run(&g, &pairs[0].0, &pairs[0].1, &ctx).await;
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < budget * 2 {
        for (sample, item) in &pairs {
            std::hint::black_box(run(&g, sample, item, &ctx).await.reward);
        }
        done += pairs.len();
    }
    report("python_warm_call", done, start.elapsed());
}
