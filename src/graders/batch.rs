//! GradeBatch: many (sample, item) pairs through one grader, results in input order.

use std::sync::Arc;

use futures::StreamExt;
use rayon::prelude::*;
use serde_json::Value;

use super::grade::{GradeContext, run, run_deterministic};
use super::result::GraderResult;
use super::sample::Sample;
use super::spec::Grader;

/// Grades `pairs` with at most `concurrency` grading calls in flight. Deterministic
/// graders skip the async machinery and run on the rayon pool from a blocking task, so
/// long texts never stall the async workers.
pub async fn grade_batch(
    grader: Arc<Grader>,
    pairs: Vec<(Sample, Value)>,
    ctx: &GradeContext,
    concurrency: usize,
) -> Vec<GraderResult> {
    if grader.is_deterministic() {
        let g = Arc::clone(&grader);
        let pairs = Arc::new(pairs);
        let worker_pairs = Arc::clone(&pairs);
        if let Ok(Some(results)) = tokio::task::spawn_blocking(move || grade_batch_blocking(&g, &worker_pairs)).await {
            return results;
        }
        return grade_async(&grader, pairs.as_slice(), ctx, concurrency).await;
    }
    grade_async(&grader, &pairs, ctx, concurrency).await
}

async fn grade_async(
    grader: &Grader,
    pairs: &[(Sample, Value)],
    ctx: &GradeContext,
    concurrency: usize,
) -> Vec<GraderResult> {
    futures::stream::iter(pairs)
        .map(|(sample, item)| run(grader, sample, item, ctx))
        .buffered(concurrency.max(1))
        .collect()
        .await
}

/// Synchronous batch for deterministic graders; `None` if the grader needs a provider.
pub fn grade_batch_blocking(grader: &Grader, pairs: &[(Sample, Value)]) -> Option<Vec<GraderResult>> {
    if !grader.is_deterministic() {
        return None;
    }
    pairs
        .par_iter()
        .map(|(sample, item)| run_deterministic(grader, sample, item))
        .collect()
}
