//! Grading itself: one grader on one (sample, item), with the providers a
//! run may need in a [`GradeContext`].

use std::collections::BTreeMap;
use std::sync::Arc;
// The TSC where it is usable: two clock reads per result are a visible share of a
// string_check, and `quanta` falls back to the OS clock elsewhere.
use quanta::Instant;

use serde_json::Value;

use super::formula::EvalError;
use super::model::{self, CachedResult, CallPolicy, Embedder, ResultCache};
use super::prompt::render_messages;
use super::python::{PythonOutcome, PythonPool};
use super::result::{GraderErrors, GraderMetadata, GraderResult};
use super::sample::Sample;
use super::similarity::{self, SimilarityMetric};
use super::spec::{FieldViolation, Grader, MultiGrader, PythonGrader, parse};
use super::string_check;
use super::template::RenderError;

/// The providers a grading run may need. Everything is optional: a grader whose provider
/// is missing fails with a clear error flag instead of scoring 0 silently.
#[derive(Clone, Default)]
pub struct GradeContext {
    /// Where model graders send their prompts (the router in the server).
    pub model_client: Option<Arc<dyn crate::inference::ChatModel>>,
    pub embedder: Option<Arc<dyn Embedder>>,
    pub python: Option<Arc<PythonPool>>,
    /// Caches model-grader results across calls.
    pub cache: Option<Arc<ResultCache>>,
    pub model_calls: CallPolicy,
    /// Whose grading this is (a project): python calls share the pool by it.
    pub owner: Option<Arc<str>>,
}

/// A grade before metadata: what each grader kind computes. Small on purpose: most
/// grades carry no error, and a deterministic grade is made in about 100 ns, so the
/// flags and their detail strings are boxed only when there are any.
#[derive(Debug, Clone, Default)]
struct Graded {
    reward: f64,
    sub_rewards: BTreeMap<String, f64>,
    token_usage: BTreeMap<String, u64>,
    errors: Option<Box<GraderErrors>>,
}

impl Graded {
    fn reward(reward: f64) -> Graded {
        Graded {
            reward,
            ..Default::default()
        }
    }

    fn failed(errors: GraderErrors) -> Graded {
        Graded {
            errors: boxed(errors),
            ..Default::default()
        }
    }
}

fn boxed(errors: GraderErrors) -> Option<Box<GraderErrors>> {
    (errors != GraderErrors::default()).then(|| Box::new(errors))
}

fn render_failure(e: &RenderError) -> GraderErrors {
    match e {
        RenderError::Missing(_) => GraderErrors {
            invalid_variable_error: true,
            other_error_details: e.to_string(),
            ..Default::default()
        },
        RenderError::SampleNotJson(_) => GraderErrors {
            sample_parse_error: true,
            other_error_details: e.to_string(),
            ..Default::default()
        },
    }
}

/// RunGrader: grades one sample against one item. Every grade the server
/// makes (RunGrader, GradeBatch, evals, RFT rewards) comes through here and
/// is measured (`telemetry::graded`); `run_deterministic`, the local batch
/// path, is not.
pub async fn run(grader: &Grader, sample: &Sample, item: &Value, ctx: &GradeContext) -> GraderResult {
    let start = Instant::now();
    let graded = grade(grader, sample, item, ctx).await;
    let result = finish(grader, graded, start);
    let errors = result.metadata.errors();
    let flags = if errors.any() { errors.kinds() } else { Vec::new() };
    crate::telemetry::graded(grader.kind(), result.metadata.execution_time, &flags);
    result
}

/// Grades without any provider; `None` when the grader needs one (see
/// [`Grader::is_deterministic`]). Cheap enough to call from a CPU pool.
#[inline]
pub fn run_deterministic(grader: &Grader, sample: &Sample, item: &Value) -> Option<GraderResult> {
    let start = Instant::now();
    let graded = grade_deterministic(grader, sample, item)?;
    Some(finish(grader, graded, start))
}

#[inline]
fn finish(grader: &Grader, graded: Graded, start: Instant) -> GraderResult {
    let reward = if graded.reward.is_finite() { graded.reward } else { 0.0 };
    GraderResult {
        reward,
        sub_rewards: graded.sub_rewards,
        metadata: GraderMetadata::new(
            grader.name_arc(),
            grader.kind(),
            start.elapsed(),
            graded.token_usage,
            graded.errors,
        ),
    }
}

fn grade_deterministic(grader: &Grader, sample: &Sample, item: &Value) -> Option<Graded> {
    Some(match grader {
        Grader::StringCheck(g) => {
            let pair = g
                .input
                .render_cow(sample, item)
                .and_then(|i| Ok((i, g.reference.render_cow(sample, item)?)));
            match pair {
                Ok((input, reference)) => Graded::reward(string_check::check(g.operation, &input, &reference)),
                Err(e) => Graded::failed(render_failure(&e)),
            }
        }
        Grader::TextSimilarity(g) if g.metric.is_deterministic() => {
            let pair = g
                .input
                .render_cow(sample, item)
                .and_then(|i| Ok((i, g.reference.render_cow(sample, item)?)));
            match pair {
                Ok((input, reference)) => similarity_graded(g.metric, &input, &reference),
                Err(e) => Graded::failed(render_failure(&e)),
            }
        }
        Grader::Multi(m) if grader.is_deterministic() => {
            let subs = m
                .graders
                .iter()
                .map(|(name, g)| Some((name.clone(), grade_deterministic(g, sample, item)?)))
                .collect::<Option<Vec<_>>>()?;
            combine_multi(m, subs)
        }
        _ => return None,
    })
}

/// Sample texts past this size are graded on the blocking pool.
const OFFLOAD_BYTES: usize = 8 * 1024;

/// Inputs past this size are refused: the quadratic metrics would stall a worker thread.
const MAX_SIMILARITY_CHARS: usize = 200_000;

fn similarity_graded(metric: SimilarityMetric, input: &str, reference: &str) -> Graded {
    if input.len() > MAX_SIMILARITY_CHARS || reference.len() > MAX_SIMILARITY_CHARS {
        return Graded::failed(GraderErrors::other(format!(
            "text_similarity inputs are limited to {MAX_SIMILARITY_CHARS} bytes each"
        )));
    }
    match similarity::score(metric, input, reference) {
        Some(v) => Graded::reward(v),
        None => Graded::failed(GraderErrors::other("metric needs a provider")),
    }
}

fn grade<'a>(
    grader: &'a Grader,
    sample: &'a Sample,
    item: &'a Value,
    ctx: &'a GradeContext,
) -> futures::future::BoxFuture<'a, Graded> {
    Box::pin(async move {
        if grader.is_deterministic() {
            // Quadratic metrics on long texts would hold an async worker for too long.
            if sample.output_text.len() > OFFLOAD_BYTES {
                let (g, s, i) = (grader.clone(), sample.clone(), item.clone());
                if let Ok(Some(graded)) = tokio::task::spawn_blocking(move || grade_deterministic(&g, &s, &i)).await {
                    return graded;
                }
            }
            if let Some(graded) = grade_deterministic(grader, sample, item) {
                return graded;
            }
        }
        match grader {
            Grader::TextSimilarity(g) => {
                let pair = g
                    .input
                    .render(sample, item)
                    .and_then(|i| Ok((i, g.reference.render(sample, item)?)));
                match pair {
                    Ok((input, reference)) => grade_cosine(ctx, input, reference).await,
                    Err(e) => Graded::failed(render_failure(&e)),
                }
            }
            Grader::Python(g) => grade_python(g, sample, item, ctx).await,
            Grader::ScoreModel(_) | Grader::LabelModel(_) => grade_model(grader, sample, item, ctx).await,
            Grader::Multi(m) => {
                let subs = futures::future::join_all(
                    m.graders
                        .iter()
                        .map(|(name, g)| async move { (name.clone(), grade(g, sample, item, ctx).await) }),
                )
                .await;
                combine_multi(m, subs)
            }
            // Handled by grade_deterministic above.
            Grader::StringCheck(_) => Graded::failed(GraderErrors::other("unreachable grader path")),
        }
    })
}

fn combine_multi(m: &MultiGrader, subs: Vec<(String, Graded)>) -> Graded {
    let mut out = Graded::default();
    let mut errors = GraderErrors::default();
    for (name, sub) in subs {
        out.sub_rewards.insert(name, sub.reward);
        for (model, tokens) in sub.token_usage {
            *out.token_usage.entry(model).or_insert(0) += tokens;
        }
        if let Some(sub_errors) = &sub.errors {
            errors.merge(sub_errors);
        }
    }
    match m.calculate_output.eval(&out.sub_rewards) {
        Ok(v) => out.reward = v,
        Err(e) => {
            out.reward = 0.0;
            match e {
                EvalError::UnknownName(_) => errors.formula_parse_error = true,
                EvalError::DivisionByZero | EvalError::NotFinite(_) => errors.other_error = true,
            }
            errors.other_error_details = e.to_string();
        }
    }
    out.errors = boxed(errors);
    out
}

async fn grade_cosine(ctx: &GradeContext, input: String, reference: String) -> Graded {
    let Some(embedder) = &ctx.embedder else {
        return Graded::failed(GraderErrors::other(
            "text_similarity metric 'cosine' needs an embeddings provider, and none is configured",
        ));
    };
    let texts = [input, reference];
    let embedded = tokio::time::timeout(ctx.model_calls.timeout, embedder.embed(&texts)).await;
    match embedded {
        Ok(Ok(vectors)) if vectors.len() == 2 => match similarity::cosine(&vectors[0], &vectors[1]) {
            Some(v) => Graded::reward(v),
            None => Graded::failed(GraderErrors::other("embeddings were empty, zero or of different sizes")),
        },
        Ok(Ok(vectors)) => Graded::failed(GraderErrors::other(format!(
            "embeddings provider returned {} vectors for 2 texts",
            vectors.len()
        ))),
        Ok(Err(e)) => Graded::failed(GraderErrors::other(format!("embeddings provider failed: {e}"))),
        Err(_) => Graded::failed(GraderErrors::other("embeddings provider timed out")),
    }
}

async fn grade_python(g: &PythonGrader, sample: &Sample, item: &Value, ctx: &GradeContext) -> Graded {
    let Some(pool) = &ctx.python else {
        return Graded::failed(GraderErrors {
            python_grader_server_error: true,
            python_grader_server_error_type: "no_python_pool".into(),
            ..Default::default()
        });
    };
    let owner = ctx.owner.as_deref().unwrap_or(super::python::DEFAULT_OWNER);
    match pool
        .grade_for(owner, &g.domain, &g.source, &sample.to_json(), item)
        .await
    {
        PythonOutcome::Reward(r) => Graded::reward(r),
        PythonOutcome::RuntimeError(details) => Graded::failed(GraderErrors {
            python_grader_runtime_error: true,
            python_grader_runtime_error_details: details,
            ..Default::default()
        }),
        PythonOutcome::ServerError { kind, details } => {
            tracing::warn!(kind = %kind, details = %details, "python grader server error");
            Graded::failed(GraderErrors {
                python_grader_server_error: true,
                python_grader_server_error_type: kind,
                other_error_details: details,
                ..Default::default()
            })
        }
    }
}

async fn grade_model(grader: &Grader, sample: &Sample, item: &Value, ctx: &GradeContext) -> Graded {
    let (identity, input) = match grader {
        Grader::ScoreModel(g) => (&g.identity, &g.input),
        Grader::LabelModel(g) => (&g.identity, &g.input),
        _ => return Graded::failed(GraderErrors::other("not a model grader")),
    };
    let messages = match render_messages(input, sample, item) {
        Ok(m) => m,
        Err(e) => return Graded::failed(render_failure(&e)),
    };
    let Some(client) = &ctx.model_client else {
        return Graded::failed(GraderErrors {
            model_grader_server_error: true,
            model_grader_server_error_details: "no model client is configured for model graders".into(),
            ..Default::default()
        });
    };
    let key = ctx.cache.as_ref().map(|_| ResultCache::key(identity, sample, item));
    let hit = match (&ctx.cache, &key) {
        (Some(cache), Some(key)) => cache.get(key),
        _ => None,
    };
    if let Some(hit) = hit {
        return Graded {
            reward: hit.reward,
            errors: boxed(hit.errors),
            ..Default::default()
        };
    }
    let graded = match grader {
        Grader::ScoreModel(g) => model::grade_score_model(g, client.as_ref(), &ctx.model_calls, messages).await,
        Grader::LabelModel(g) => model::grade_label_model(g, client.as_ref(), &ctx.model_calls, messages).await,
        _ => return Graded::failed(GraderErrors::other("not a model grader")),
    };
    // Server errors are transient; caching them would pin a failure to this sample.
    if let (Some(cache), Some(key), false) = (&ctx.cache, key, graded.errors.model_grader_server_error) {
        cache.put(
            key,
            CachedResult {
                reward: graded.reward,
                errors: graded.errors.clone(),
            },
        );
    }
    Graded {
        reward: graded.reward,
        sub_rewards: BTreeMap::new(),
        token_usage: graded.token_usage,
        errors: boxed(graded.errors),
    }
}

/// ValidateGrader's deeper pass: [`parse`] plus an `ast` check of every python source in
/// the sandbox (syntax errors, `grade` arity). Without a pool only the static check runs.
pub async fn validate(json: &Value, ctx: &GradeContext) -> Result<Grader, Vec<FieldViolation>> {
    let grader = parse(json)?;
    let Some(pool) = &ctx.python else {
        return Ok(grader);
    };
    let mut sources: Vec<(String, &str)> = Vec::new();
    match &grader {
        Grader::Python(g) => sources.push(("source".into(), &g.source)),
        Grader::Multi(m) => {
            for (name, g) in &m.graders {
                if let Grader::Python(p) = g {
                    sources.push((format!("graders.{name}.source"), &p.source));
                }
            }
        }
        _ => {}
    }
    let mut violations = Vec::new();
    for (field, source) in sources {
        if let Err(description) = pool.check_source(source).await {
            violations.push(FieldViolation { field, description });
        }
    }
    if violations.is_empty() {
        Ok(grader)
    } else {
        Err(violations)
    }
}
