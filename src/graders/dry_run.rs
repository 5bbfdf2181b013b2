//! Dry runs: how a grader scores a dataset before any training money is spent.
//!
//! The classic RFT failure is a grader that rewards an easily guessed answer: the policy
//! learns to say "yes" or to echo the most frequent label. Besides the score distribution
//! the report therefore grades three cheap baselines against every item: the empty
//! answer, the single most common reference, and a shuffled reference (item i answered
//! with item i+1's reference). A real grader scores the real samples well above all three.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::batch::grade_batch;
use super::grade::GradeContext;
use super::result::GraderResult;
use super::sample::Sample;
use super::spec::Grader;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunReport {
    pub count: usize,
    pub mean: f64,
    pub std_dev: f64,
    pub min: f64,
    pub max: f64,
    /// p10, p25, p50, p75, p90 (linear interpolation, as numpy's default).
    pub quantiles: BTreeMap<String, f64>,
    pub histogram: Vec<HistogramBin>,
    /// Share of pairs whose result carries any error flag.
    pub error_rate: f64,
    pub errors_by_kind: BTreeMap<String, usize>,
    pub guessability: Guessability,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guessability {
    pub empty_answer_mean: f64,
    /// Absent when the grader has no reference template (python, model graders).
    pub constant_answer: Option<ConstantAnswer>,
    pub shuffled_reference_mean: Option<f64>,
    /// Human-readable warnings, e.g. when a baseline scores close to the real samples.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConstantAnswer {
    pub answer: String,
    pub mean_reward: f64,
}

const HISTOGRAM_BINS: usize = 10;

/// Grades every pair plus the baselines; `concurrency` bounds in-flight grading calls.
pub async fn dry_run(
    grader: Arc<Grader>,
    pairs: Vec<(Sample, Value)>,
    ctx: &GradeContext,
    concurrency: usize,
) -> DryRunReport {
    let items: Vec<Value> = pairs.iter().map(|(_, item)| item.clone()).collect();
    let references: Option<Vec<Option<String>>> = grader
        .reference_template()
        .map(|t| pairs.iter().map(|(sample, item)| t.render(sample, item).ok()).collect());
    let results = grade_batch(Arc::clone(&grader), pairs, ctx, concurrency).await;
    let rewards: Vec<f64> = results.iter().map(|r| r.reward).collect();
    let mut report = summarize(&rewards, &results);

    let empty = answer_all(&grader, &items, |_| String::new(), ctx, concurrency).await;
    let mut guess = Guessability {
        empty_answer_mean: empty,
        constant_answer: None,
        shuffled_reference_mean: None,
        warnings: Vec::new(),
    };
    if let Some(refs) = references {
        if let Some(common) = most_common(&refs) {
            let answer = common.clone();
            let mean = answer_all(&grader, &items, |_| answer.clone(), ctx, concurrency).await;
            guess.constant_answer = Some(ConstantAnswer {
                answer: common,
                mean_reward: mean,
            });
        }
        if items.len() > 1 {
            let n = refs.len();
            let mean = answer_all(
                &grader,
                &items,
                |i| refs[(i + 1) % n].clone().unwrap_or_default(),
                ctx,
                concurrency,
            )
            .await;
            guess.shuffled_reference_mean = Some(mean);
        }
    }
    guess.warnings = warnings(report.mean, &guess);
    report.guessability = guess;
    report
}

async fn answer_all(
    grader: &Arc<Grader>,
    items: &[Value],
    answer: impl Fn(usize) -> String,
    ctx: &GradeContext,
    concurrency: usize,
) -> f64 {
    let pairs: Vec<(Sample, Value)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (Sample::from_model_output(answer(i)), item.clone()))
        .collect();
    let results = grade_batch(Arc::clone(grader), pairs, ctx, concurrency).await;
    mean(&results.iter().map(|r| r.reward).collect::<Vec<_>>())
}

fn most_common(refs: &[Option<String>]) -> Option<String> {
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, r) in refs.iter().enumerate() {
        if let Some(r) = r {
            counts.entry(r.as_str()).or_insert((0, i)).0 += 1;
        }
    }
    // Ties go to the earliest reference so reports are reproducible.
    counts
        .into_iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
        .map(|(r, _)| r.to_string())
}

fn warnings(real_mean: f64, g: &Guessability) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |label: &str, baseline: f64| {
        if baseline > 0.0 && baseline >= 0.5 * real_mean {
            out.push(format!(
                "{label} scores {baseline:.3} on average, {:.0}% of the samples' mean {real_mean:.3}: the grader is easy to game",
                if real_mean > 0.0 { 100.0 * baseline / real_mean } else { 100.0 }
            ));
        }
    };
    check("the empty answer", g.empty_answer_mean);
    if let Some(c) = &g.constant_answer {
        check(&format!("always answering {:?}", c.answer), c.mean_reward);
    }
    if let Some(s) = g.shuffled_reference_mean {
        check("another item's reference", s);
    }
    out
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn summarize(rewards: &[f64], results: &[GraderResult]) -> DryRunReport {
    let mut sorted = rewards.to_vec();
    sorted.sort_by(f64::total_cmp);
    let m = mean(rewards);
    let var = if rewards.is_empty() {
        0.0
    } else {
        rewards.iter().map(|r| (r - m).powi(2)).sum::<f64>() / rewards.len() as f64
    };
    let (min, max) = (
        sorted.first().copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
    );
    let quantiles = [("p10", 0.1), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p90", 0.9)]
        .into_iter()
        .map(|(k, q)| (k.to_string(), quantile(&sorted, q)))
        .collect();
    // Rewards usually live in [0, 1]; widen the bins only when they do not.
    let (lo, hi) = (min.min(0.0), max.max(1.0));
    let width = (hi - lo) / HISTOGRAM_BINS as f64;
    let mut histogram: Vec<HistogramBin> = (0..HISTOGRAM_BINS)
        .map(|i| HistogramBin {
            lower: lo + width * i as f64,
            upper: lo + width * (i + 1) as f64,
            count: 0,
        })
        .collect();
    for r in rewards {
        let idx = (((r - lo) / width) as usize).min(HISTOGRAM_BINS - 1);
        histogram[idx].count += 1;
    }
    let mut errors_by_kind = BTreeMap::new();
    let mut errored = 0;
    for r in results {
        let kinds = r.metadata.errors().kinds();
        if !kinds.is_empty() {
            errored += 1;
        }
        for k in kinds {
            *errors_by_kind.entry(k.to_string()).or_insert(0) += 1;
        }
    }
    DryRunReport {
        count: rewards.len(),
        mean: m,
        std_dev: var.sqrt(),
        min,
        max,
        quantiles,
        histogram,
        error_rate: if results.is_empty() {
            0.0
        } else {
            errored as f64 / results.len() as f64
        },
        errors_by_kind,
        guessability: Guessability {
            empty_answer_mean: 0.0,
            constant_answer: None,
            shuffled_reference_mean: None,
            warnings: Vec::new(),
        },
    }
}
