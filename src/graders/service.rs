//! The grader service: runs, validates and batches graders, and keeps saved ones.
//!
//! Architecture invariant: this is the only part of `graders` that knows the store and the
//! domain `Error`; the engine around it stays transport- and storage-free. The python pool
//! is started on the first grader that needs it, so a server that never runs python code
//! never forks a worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::{
    FieldViolation, GradeContext, Grader, GraderResult, PythonPool, PythonPoolConfig, ResultCache, Sample, parse,
};
use crate::auth::model::Caller;
use crate::error::{Error, Result};
use crate::models::Models;
use crate::store::{GraderRecord, Store};

/// Longest saved-grader name.
pub const MAX_NAME_CHARS: usize = 64;

#[derive(Clone)]
pub struct GradersConfig {
    pub python: PythonPoolConfig,
    /// Grading calls in flight per GradeBatch stream.
    pub batch_concurrency: usize,
    /// Model-grader results kept across calls.
    pub cache_capacity: usize,
    /// Where model graders send their prompts (None: they answer with
    /// model_grader_server_error).
    pub model_client: Option<Arc<dyn crate::inference::ChatModel>>,
    /// Embeddings for text_similarity cosine.
    pub embedder: Option<Arc<dyn super::Embedder>>,
}

impl Default for GradersConfig {
    fn default() -> Self {
        // Each pool gets its own uid range and scratch directory, so servers that share a
        // host (or a test process) never count against, or kill, each other's workers.
        static POOLS: AtomicU32 = AtomicU32::new(0);
        let n = POOLS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut python = PythonPoolConfig::default();
        python.workers = python.workers.min(UIDS_PER_POOL as usize);
        python.uid_base = 100_000 + ((pid % 8192) * 8 + n % 8) * UIDS_PER_POOL;
        python.scratch_root = std::env::temp_dir().join(format!("lathe-python-graders-{pid}-{n}"));
        GradersConfig {
            python,
            batch_concurrency: 64,
            cache_capacity: 10_000,
            model_client: None,
            embedder: None,
        }
    }
}

const UIDS_PER_POOL: u32 = 32;

pub struct Graders {
    store: Arc<dyn Store>,
    /// Which local models a caller's model graders may sample.
    models: Arc<Models>,
    config: GradersConfig,
    python: OnceCell<Arc<PythonPool>>,
    cache: Arc<ResultCache>,
}

/// A grader ready to grade a stream of pairs (GradeBatch).
#[derive(Clone)]
pub struct Batch {
    grader: Arc<Grader>,
    ctx: Arc<GradeContext>,
    concurrency: usize,
}

impl Graders {
    pub fn new(store: Arc<dyn Store>, models: Arc<Models>, config: GradersConfig) -> Self {
        let cache = Arc::new(ResultCache::new(config.cache_capacity));
        Graders {
            store,
            models,
            config,
            python: OnceCell::new(),
            cache,
        }
    }

    /// RunGrader: `grader` is a grader object or `{"name": ...}` naming a saved one.
    pub async fn run(&self, caller: &Caller, grader: Value, sample: Sample, item: Value) -> Result<GraderResult> {
        let grader = self.resolve(caller, grader).await?;
        let ctx = self.context(caller, &grader).await;
        Ok(super::run(&grader, &sample, &item, &ctx).await)
    }

    /// ValidateGrader: every field problem at once, python sources compiled in the sandbox.
    pub async fn validate(&self, caller: &Caller, grader: &Value) -> Result<()> {
        let parsed = parse(grader).map_err(|v| invalid_grader("grader", v))?;
        self.check_models(caller, &parsed).await?;
        let ctx = self.context(caller, &parsed).await;
        super::validate(grader, &ctx)
            .await
            .map_err(|v| invalid_grader("grader", v))?;
        Ok(())
    }

    /// Resolves a grader object or a `{"name": ...}` reference and validates it (python
    /// sources compiled in the sandbox); violations are rooted at `field`. Returns the grader
    /// object itself (what a reference named) and its parsed form.
    pub async fn resolve_checked(&self, caller: &Caller, grader: Value, field: &str) -> Result<(Value, Grader)> {
        let json = match saved_name(&grader) {
            Some(name) => {
                check_name(name, &format!("{field}.name"))?;
                self.store
                    .get_grader(&caller.project, name)
                    .await?
                    .ok_or_else(|| Error::not_found("grader", name))?
                    .grader
            }
            None => grader,
        };
        let parsed = parse(&json).map_err(|v| invalid_grader(field, v))?;
        self.check_models(caller, &parsed).await?;
        let ctx = self.context(caller, &parsed).await;
        super::validate(&json, &ctx)
            .await
            .map_err(|v| invalid_grader(field, v))?;
        Ok((json, parsed))
    }

    /// GradeBatch: resolves the grader first, so a bad grader fails before any pair is read.
    pub async fn batch(&self, caller: &Caller, grader: Value) -> Result<Batch> {
        let grader = self.resolve(caller, grader).await?;
        let ctx = self.context(caller, &grader).await;
        Ok(Batch {
            grader: Arc::new(grader),
            ctx: Arc::new(ctx),
            concurrency: self.config.batch_concurrency.max(1),
        })
    }

    pub async fn create(&self, caller: &Caller, name: String, grader: Value) -> Result<GraderRecord> {
        check_name(&name, "name")?;
        let parsed = parse(&grader).map_err(|v| invalid_grader("grader", v))?;
        self.check_models(caller, &parsed).await?;
        let ctx = self.context(caller, &parsed).await;
        super::validate(&grader, &ctx)
            .await
            .map_err(|v| invalid_grader("grader", v))?;
        let record = GraderRecord {
            project: caller.project.clone(),
            name,
            grader,
            created_at: crate::ids::now_millis(),
        };
        self.store.insert_grader(&record).await?;
        Ok(record)
    }

    pub async fn get(&self, caller: &Caller, name: &str) -> Result<GraderRecord> {
        check_name(name, "name")?;
        self.store
            .get_grader(&caller.project, name)
            .await?
            .ok_or_else(|| Error::not_found("grader", name))
    }

    /// Name order; the page token is the last name of the previous page.
    pub async fn list(&self, caller: &Caller, page_size: i32, page_token: &str) -> Result<(Vec<GraderRecord>, String)> {
        let limit = crate::paging::limit(page_size)?;
        let after = if page_token.is_empty() {
            None
        } else {
            check_name(page_token, "page_token")?;
            Some(page_token)
        };
        let graders = self.store.list_graders(&caller.project, after, limit + 1).await?;
        Ok(crate::paging::split(graders, limit, |g| g.name.clone()))
    }

    /// The grader object itself, or the saved grader a `{"name": ...}` reference names.
    async fn resolve(&self, caller: &Caller, grader: Value) -> Result<Grader> {
        let json = match saved_name(&grader) {
            Some(name) => {
                check_name(name, "grader.name")?;
                self.store
                    .get_grader(&caller.project, name)
                    .await?
                    .ok_or_else(|| Error::not_found("grader", name))?
                    .grader
            }
            None => grader,
        };
        let parsed = parse(&json).map_err(|v| invalid_grader("grader", v))?;
        self.check_models(caller, &parsed).await?;
        Ok(parsed)
    }

    /// NOT_FOUND when a model grader samples another project's fine-tuned
    /// model (or checkpoint), as if it did not exist.
    async fn check_models(&self, caller: &Caller, grader: &Grader) -> Result<()> {
        let mut models = Vec::new();
        sampled_models(grader, &mut models);
        for model in models {
            self.models.check_visible(caller, model).await?;
        }
        Ok(())
    }

    /// Providers for one grader: the configured model client and embedder (without them,
    /// model graders and `cosine` answer with their error flags); python gets the pool,
    /// started on first use.
    async fn context(&self, caller: &Caller, grader: &Grader) -> GradeContext {
        let mut ctx = GradeContext {
            owner: Some(Arc::from(caller.project.as_str())),
            cache: Some(Arc::clone(&self.cache)),
            model_client: self.config.model_client.clone(),
            embedder: self.config.embedder.clone(),
            ..Default::default()
        };
        if uses_python(grader) {
            ctx.python = self.python_pool().await;
        }
        ctx
    }

    async fn python_pool(&self) -> Option<Arc<PythonPool>> {
        let started = self
            .python
            .get_or_try_init(|| async { PythonPool::start(self.config.python.clone()).await.map(Arc::new) })
            .await;
        match started {
            Ok(pool) => Some(Arc::clone(pool)),
            Err(e) => {
                // Not cached: the next python grader tries again.
                tracing::error!(error = %e, "cannot start the python grader pool");
                None
            }
        }
    }
}

impl Batch {
    /// Grades one pair (evals grade each item as it is sampled).
    pub async fn grade_one(&self, sample: &Sample, item: &Value) -> GraderResult {
        super::run(&self.grader, sample, item, &self.ctx).await
    }

    /// Grades every pair, at most `concurrency` at a time; results in order
    /// (RFT grades a step's samples this way).
    pub async fn grade_all(&self, pairs: Vec<(Sample, Value)>) -> Vec<GraderResult> {
        // Owned pairs and shared handles: futures that borrow nothing keep
        // the caller's future `Send` for every lifetime.
        let (grader, ctx) = (Arc::clone(&self.grader), Arc::clone(&self.ctx));
        futures::stream::iter(pairs)
            .map(move |(sample, item)| {
                let (grader, ctx) = (Arc::clone(&grader), Arc::clone(&ctx));
                async move { super::run(&grader, &sample, &item, &ctx).await }
            })
            .buffered(self.concurrency)
            .collect()
            .await
    }

    /// Grades `pairs` as they arrive, at most `concurrency` at a time, and yields
    /// `(index, result)` in arrival order. A bad pair ends the stream with its error.
    pub fn grade(
        self,
        pairs: impl Stream<Item = Result<(Sample, Value)>> + Send + 'static,
    ) -> impl Stream<Item = Result<(u64, GraderResult)>> + Send + 'static {
        let Batch {
            grader,
            ctx,
            concurrency,
        } = self;
        pairs
            .enumerate()
            .map(move |(index, pair)| {
                let (grader, ctx) = (Arc::clone(&grader), Arc::clone(&ctx));
                async move {
                    let (sample, item) = pair?;
                    Ok((index as u64, super::run(&grader, &sample, &item, &ctx).await))
                }
            })
            .buffered(concurrency)
    }
}

fn saved_name(grader: &Value) -> Option<&str> {
    match grader.as_object() {
        Some(map) if map.len() == 1 => map.get("name").and_then(Value::as_str),
        _ => None,
    }
}

/// Whether running `grader` needs the python pool.
/// The models a grader's model graders sample.
fn sampled_models<'g>(grader: &'g Grader, out: &mut Vec<&'g str>) {
    match grader {
        Grader::ScoreModel(g) => out.push(&g.model),
        Grader::LabelModel(g) => out.push(&g.model),
        Grader::Multi(m) => m.graders.iter().for_each(|(_, g)| sampled_models(g, out)),
        _ => {}
    }
}

/// The model calls one grading by `grader` makes: one per model grader,
/// those inside a multi grader included.
pub fn model_calls(grader: &Grader) -> u64 {
    let mut models = Vec::new();
    sampled_models(grader, &mut models);
    models.len() as u64
}

pub fn uses_python(grader: &Grader) -> bool {
    match grader {
        Grader::Python(_) => true,
        Grader::Multi(m) => m.graders.iter().any(|(_, g)| uses_python(g)),
        _ => false,
    }
}

/// Grader violations, re-rooted at the request field that carried the grader.
fn invalid_grader(root: &str, violations: Vec<FieldViolation>) -> Error {
    Error::InvalidArgument(
        violations
            .into_iter()
            .map(|v| {
                let field = if v.field.is_empty() {
                    root.to_string()
                } else {
                    format!("{root}.{}", v.field)
                };
                FieldViolation::new(field, v.description)
            })
            .collect(),
    )
}

/// Saved-grader names: 1 to 64 of `[a-zA-Z0-9_-]`.
pub fn check_name(name: &str, field: &str) -> Result<()> {
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if name.is_empty() || name.len() > MAX_NAME_CHARS || !valid_chars {
        return Err(Error::invalid(
            field,
            format!("a grader name is 1 to {MAX_NAME_CHARS} characters of [a-zA-Z0-9_-]"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("exact-match_v2", "name").is_ok());
        assert!(check_name(&"a".repeat(64), "name").is_ok());
        assert!(check_name(&"a".repeat(65), "name").is_err());
        assert!(check_name("", "name").is_err());
        assert!(check_name("has space", "name").is_err());
        assert!(check_name("é", "name").is_err());
    }

    #[test]
    fn only_a_lone_name_is_a_reference() {
        assert_eq!(saved_name(&serde_json::json!({"name": "g"})), Some("g"));
        assert_eq!(saved_name(&serde_json::json!({"name": "g", "type": "multi"})), None);
        assert_eq!(saved_name(&serde_json::json!({"name": 3})), None);
    }

    #[test]
    fn violations_are_rooted_at_the_request_field() {
        let Error::InvalidArgument(v) = invalid_grader("grader", vec![FieldViolation::new("operation", "bad")]) else {
            panic!("not invalid argument");
        };
        assert_eq!(v[0].field, "grader.operation");
    }
}
