//! The models service: registers base models, lists, describes and deletes
//! models, records the fine-tuned models jobs make, and resolves a model
//! name into what the engine loads.
//!
//! Architecture invariant: a fine-tuned model never outlives its base:
//! deleting a base model that fine-tuned models (or unfinished jobs) are
//! built on is refused, naming them. A stored model's blobs are committed
//! and its record (which pins them) written under the blobs' gate, so a
//! delete of other records never takes a blob it is about to point at.

use std::path::PathBuf;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::Semaphore;

use super::cache::ModelCache;
use super::inspect::{check_name, inspect};
use super::model::{BaseModelInfo, ModelKind, ModelRecord, Resolved, fine_tuned_model_id, parse_checkpoint_model_id};
use super::roots::ModelRoots;
use super::stored::{self, Piece};
use crate::auth::model::Caller;
use crate::blobs::Blobs;
use crate::error::{Error, Result};
use crate::ids::now_millis;
use crate::paging;
use crate::store::{JobQuery, Store};

/// Marks ListModels page tokens.
const PAGE_TOKEN: &str = "mp1.";

/// The PEFT files of an adapter inside a checkpoint.
const ADAPTER_FILE: &str = lathe_engine::train::ADAPTER_FILE;
const ADAPTER_CONFIG_FILE: &str = lathe_engine::train::ADAPTER_CONFIG_FILE;

/// Most dependents named in a refusal.
const NAMED_DEPENDENTS: usize = 10;

/// Model uploads and imports streaming at once; more are refused.
const MAX_CONCURRENT_STORES: usize = 2;

pub struct Models {
    store: Arc<dyn Store>,
    blobs: Blobs,
    roots: ModelRoots,
    cache: ModelCache,
    storing: Arc<Semaphore>,
}

impl Models {
    /// `cache_dir` is where this process keeps its copies of stored models
    /// (`DATA_DIR/model-cache`).
    pub fn new(store: Arc<dyn Store>, blobs: Blobs, roots: ModelRoots, cache_dir: PathBuf) -> Self {
        Self {
            cache: ModelCache::new(cache_dir, blobs.clone()),
            store,
            blobs,
            roots,
            storing: Arc::new(Semaphore::new(MAX_CONCURRENT_STORES)),
        }
    }

    /// Registers a base model from a path on the server, after checking
    /// that it resolves under a model root and what is there (headers
    /// only). Admins only: a path outside the roots is refused without
    /// saying whether anything is there.
    pub async fn register(&self, caller: &Caller, name: &str, path: &str) -> Result<ModelRecord> {
        crate::auth::require_admin(caller, "registering a base model")?;
        check_name(name)?;
        if path.is_empty() {
            return Err(Error::invalid("path", "a model directory or GGUF file is required"));
        }
        let p = std::path::PathBuf::from(path);
        let roots = self.roots.clone();
        let info = tokio::task::spawn_blocking(move || inspect(&roots.resolve(&p)?, &roots))
            .await
            .map_err(|e| Error::Internal(format!("model inspection failed: {e}")))??;
        let record = base_record(name, info);
        self.store.register_model(&record).await?;
        Ok(record)
    }

    /// Stores a base model sent file by file into the blob store (admins):
    /// each file is checked as it streams (see `stored`), problems are
    /// reported under `files`, naming the file, and nothing is kept unless
    /// the whole model is.
    pub async fn upload<S>(&self, caller: &Caller, name: &str, pieces: S) -> Result<ModelRecord>
    where
        S: Stream<Item = Result<Piece>> + Unpin,
    {
        crate::auth::require_admin(caller, "uploading a base model")?;
        self.store_model(name, "files", pieces).await
    }

    /// Copies a base model into the blob store from a path under the model
    /// roots or an `s3://` URL (admins); problems are reported under
    /// `source`.
    pub async fn import(&self, caller: &Caller, name: &str, source: &str) -> Result<ModelRecord> {
        crate::auth::require_admin(caller, "importing a base model")?;
        check_name(name)?;
        let pieces = super::import::open(source, &self.roots).await?;
        self.store_model(name, "source", pieces).await
    }

    async fn store_model<S>(&self, name: &str, field: &'static str, pieces: S) -> Result<ModelRecord>
    where
        S: Stream<Item = Result<Piece>> + Unpin,
    {
        check_name(name)?;
        // Said before any byte is stored; the insert checks again.
        if self.store.get_model(name).await?.is_some() {
            return Err(crate::store::StoreError::Conflict(name.to_string()).into());
        }
        let _permit = self
            .storing
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded {
                message: format!("too many model uploads at once (limit {MAX_CONCURRENT_STORES}); retry shortly"),
                retry_after: std::time::Duration::from_secs(5),
            })?;
        let (info, staged) = stored::ingest(&self.blobs, field, pieces).await?;
        let record = base_record(name, info);
        let _gate = self.blobs.gate().await;
        let mut committed = Vec::with_capacity(staged.len());
        let mut failed = None;
        for blob in staged {
            if failed.is_some() {
                blob.discard().await;
                continue;
            }
            match blob.commit().await {
                Ok(sha) => committed.push(sha),
                Err(e) => failed = Some(Error::from(e)),
            }
        }
        let inserted = match failed {
            Some(e) => Err(e),
            None => self.store.register_model(&record).await.map_err(Error::from),
        };
        if let Err(e) = inserted {
            for sha in committed {
                if let Err(gc) = self.blobs.delete_unless_used(&*self.store, &sha).await {
                    tracing::warn!(blob = %sha, error = %gc, "could not check a blob's use");
                }
            }
            return Err(e);
        }
        Ok(record)
    }

    /// Records (or moves to another checkpoint) the fine-tuned model a job made.
    pub async fn record_fine_tuned(
        &self,
        project: &str,
        base_model: &str,
        suffix: &str,
        job_id: &str,
        step: u64,
    ) -> Result<String> {
        let id = fine_tuned_model_id(base_model, suffix, job_id);
        let record = ModelRecord {
            id: id.clone(),
            project: Some(project.to_string()),
            kind: ModelKind::FineTuned,
            base_model: base_model.to_string(),
            job_id: Some(job_id.to_string()),
            checkpoint_step: Some(step),
            created_at: now_millis(),
            info: None,
        };
        self.store.insert_model(&record).await?;
        Ok(id)
    }

    /// The model, if the caller may see it (NOT_FOUND otherwise).
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<ModelRecord> {
        if id.is_empty() {
            return Err(Error::invalid("id", "a model id is required"));
        }
        self.store
            .get_model(id)
            .await?
            .filter(|m| m.visible_to(caller))
            .map(|m| shown_to(m, caller))
            .ok_or_else(|| Error::not_found("model", id))
    }

    /// What kind of model `name` is (`None` when the caller sees nothing by that name).
    pub async fn kind_of(&self, caller: &Caller, name: &str) -> Result<Option<ModelKind>> {
        Ok(self
            .store
            .get_model(name)
            .await?
            .filter(|m| m.visible_to(caller))
            .map(|m| m.kind))
    }

    /// By id, optionally of one kind.
    pub async fn list(
        &self,
        caller: &Caller,
        kind: Option<ModelKind>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<ModelRecord>, String)> {
        let limit = paging::limit(page_size)?;
        let after = match page_token {
            "" => None,
            token => Some(
                token
                    .strip_prefix(PAGE_TOKEN)
                    .and_then(|hex| hex::decode(hex).ok())
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| {
                        Error::invalid("page_token", "not a page token from a previous ListModels response")
                    })?,
            ),
        };
        let models = self
            .store
            .list_models(&caller.project, kind, after.as_deref(), limit + 1)
            .await?;
        let models = models.into_iter().map(|m| shown_to(m, caller)).collect();
        Ok(paging::split(models, limit, |m| {
            format!("{PAGE_TOKEN}{}", hex::encode(&m.id))
        }))
    }

    /// Deletes a fine-tuned model and its adapter files (the job and its
    /// checkpoint history stay), or unregisters a base model (a registered
    /// path's files are the user's and stay where they are; a stored
    /// model's blobs go unless something else uses them). A base model
    /// that an unfinished job or a fine-tuned model is built on stays.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<ModelRecord> {
        let model = self.get(caller, id).await?;
        if model.kind == ModelKind::Base {
            crate::auth::require_admin(caller, "deleting a base model")?;
            let busy: Vec<String> = self
                .store
                .list_jobs(&JobQuery {
                    base_model: Some(id.to_string()),
                    limit: 1000,
                    ..Default::default()
                })
                .await?
                .into_iter()
                .filter(|j| !j.state.is_terminal())
                .map(|j| j.id)
                .collect();
            if !busy.is_empty() {
                return Err(Error::precondition(
                    "MODEL_IN_USE",
                    id,
                    format!(
                        "base model {id} is used by fine-tuning jobs that have not finished: {}",
                        named(&busy)
                    ),
                ));
            }
            let dependents = self.store.fine_tuned_models_of(id, NAMED_DEPENDENTS + 1).await?;
            if !dependents.is_empty() {
                return Err(Error::precondition(
                    "MODEL_IN_USE",
                    id,
                    format!(
                        "base model {id} has fine-tuned models that need it: {}; delete them first",
                        named(&dependents)
                    ),
                ));
            }
        }
        let (model, shas) = self
            .store
            .delete_model(id)
            .await?
            .ok_or_else(|| Error::not_found("model", id))?;
        let _gate = self.blobs.gate().await;
        for sha in shas {
            self.blobs.delete_unless_used(&*self.store, &sha).await?;
        }
        if let Some(info) = model.info.as_ref().filter(|i| !i.files.is_empty()) {
            self.cache.evict(&info.files).await;
        }
        Ok(model)
    }

    /// Whether `model` names a model the caller may use (a base model, one
    /// of its project's fine-tuned models, or a checkpoint of one of its
    /// jobs), without reading its files.
    pub async fn knows(&self, caller: &Caller, model: &str) -> Result<bool> {
        Ok(self
            .owner(model)
            .await?
            .is_some_and(|project| project.as_deref().is_none_or(|p| caller.sees(p))))
    }

    /// Whether `model` names a model of any project: for the engine, which
    /// serves what the services already checked.
    pub async fn exists(&self, model: &str) -> Result<bool> {
        Ok(self.owner(model).await?.is_some())
    }

    /// NOT_FOUND when `model` names a local model (or checkpoint) of another
    /// project; names that are no local model pass (a provider's, say), for
    /// the chat seam to resolve or refuse.
    pub async fn check_visible(&self, caller: &Caller, model: &str) -> Result<()> {
        match self.owner(model).await? {
            Some(Some(project)) if !caller.sees(&project) => Err(Error::not_found("model", model)),
            _ => Ok(()),
        }
    }

    /// Whose model `model` names, from its record (or its job's, for a
    /// checkpoint): None when it names no local model; `Some(None)` for a
    /// base model, which every project shares.
    async fn owner(&self, model: &str) -> Result<Option<Option<String>>> {
        if let Some(record) = self.store.get_model(model).await? {
            return Ok(Some(record.project));
        }
        let Some((prefix, job_id, _)) = parse_checkpoint_model_id(model) else {
            return Ok(None);
        };
        Ok(self
            .store
            .get_job(job_id)
            .await?
            .filter(|job| fine_tuned_model_id(&job.spec.base_model, &job.spec.suffix, &job.id) == prefix)
            .map(|job| Some(job.project)))
    }

    /// What `model` names, as the engine loads it: a registered base model,
    /// a fine-tuned model, or a job's checkpoint (`ft:...:ckpt-step-N`,
    /// also while its job still runs: checkpoint evals sample them).
    pub async fn resolve(&self, model: &str) -> Result<Resolved> {
        let not_found = || Error::not_found("model", model);
        let Some(record) = self.store.get_model(model).await? else {
            let (prefix, job_id, step) = parse_checkpoint_model_id(model).ok_or_else(not_found)?;
            let job = self.store.get_job(job_id).await?.ok_or_else(not_found)?;
            let spec = &job.spec;
            if fine_tuned_model_id(&spec.base_model, &spec.suffix, &job.id) != prefix {
                return Err(not_found());
            }
            return self.fine_tuned(model, &spec.base_model, job_id, step).await;
        };
        match record.kind {
            ModelKind::Base => {
                let info = record.info.ok_or_else(not_found)?;
                Ok(Resolved::Base {
                    path: self.local_path(&record.id, &info).await?,
                    name: record.id,
                })
            }
            ModelKind::FineTuned => {
                let (Some(job), Some(step)) = (&record.job_id, record.checkpoint_step) else {
                    return Err(Error::precondition(
                        "MODEL_INCOMPLETE",
                        model,
                        format!("{model} has no checkpoint"),
                    ));
                };
                self.fine_tuned(model, &record.base_model, job, step).await
            }
        }
    }

    /// A fine-tuned model: its base model and the adapter at `step` of `job`.
    async fn fine_tuned(&self, model: &str, base_model: &str, job: &str, step: u64) -> Result<Resolved> {
        let base = self
            .store
            .get_model(base_model)
            .await?
            .filter(|b| b.kind == ModelKind::Base)
            .and_then(|b| b.info)
            .ok_or_else(|| {
                Error::precondition(
                    "BASE_MODEL",
                    model,
                    format!("the base model {base_model} of {model} is not registered"),
                )
            })?;
        let gone = || Error::precondition("MODEL_INCOMPLETE", model, format!("the checkpoint of {model} is gone"));
        let ckpt = self
            .store
            .list_checkpoints(job, Some(step + 1), 1)
            .await?
            .into_iter()
            .find(|c| c.step == step)
            .ok_or_else(gone)?;
        let read = async |name: &str| -> Result<Vec<u8>> {
            let f = ckpt.files.iter().find(|f| f.name == name).ok_or_else(gone)?;
            Ok(self.blobs.read_range(&f.sha256, 0..f.bytes).await?.to_vec())
        };
        Ok(Resolved::FineTuned {
            id: model.to_string(),
            base: base_model.to_string(),
            base_path: self.local_path(base_model, &base).await?,
            adapter: read(ADAPTER_FILE).await?,
            adapter_config: read(ADAPTER_CONFIG_FILE).await?,
        })
    }
}

impl Models {
    /// Drops this process's cached copies of stored models that are no
    /// longer registered (deleted through another replica, which could
    /// only evict its own); returns how many went.
    pub async fn prune_cache(&self) -> Result<usize> {
        let mut keep = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_models("", Some(ModelKind::Base), after.as_deref(), 500)
                .await?;
            for m in &page {
                if let Some(info) = m.info.as_ref().filter(|i| !i.files.is_empty()) {
                    keep.insert(super::cache::manifest_hash(&info.files));
                }
            }
            match page.last() {
                Some(last) if page.len() == 500 => after = Some(last.id.clone()),
                _ => break,
            }
        }
        Ok(self.cache.prune(&keep).await)
    }

    /// Where the engine finds a base model on this machine: a registered
    /// path, or the model cache's copy of a stored model (fetched now if
    /// this process has none yet).
    async fn local_path(&self, name: &str, info: &BaseModelInfo) -> Result<PathBuf> {
        if info.files.is_empty() {
            return Ok(PathBuf::from(&info.path));
        }
        let dir = self.cache.fetch(name, &info.files).await?;
        // The engine takes a GGUF model as its file.
        Ok(match info.files.as_slice() {
            [one] if info.format == "gguf" => dir.join(&one.name),
            _ => dir,
        })
    }
}

/// A shared base model's record, made now.
fn base_record(name: &str, info: BaseModelInfo) -> ModelRecord {
    ModelRecord {
        id: name.to_string(),
        project: None,
        kind: ModelKind::Base,
        base_model: name.to_string(),
        job_id: None,
        checkpoint_step: None,
        created_at: now_millis(),
        info: Some(info),
    }
}

/// A model as `caller` sees it: where a base model's files are on the
/// server is for admins (who registered it) only.
fn shown_to(mut model: ModelRecord, caller: &Caller) -> ModelRecord {
    if !caller.is_admin()
        && let Some(info) = &mut model.info
    {
        info.path.clear();
    }
    model
}

/// Up to `NAMED_DEPENDENTS` names, and how many more.
fn named(ids: &[String]) -> String {
    let mut out = ids
        .iter()
        .take(NAMED_DEPENDENTS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > NAMED_DEPENDENTS {
        out.push_str(" and more");
    }
    out
}
