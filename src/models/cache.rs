//! The local copy of stored models that a process running the engine
//! loads: `DATA_DIR/model-cache/<manifest hash>/`, fetched from the blob
//! store on first use.
//!
//! Architecture invariant: a cache directory exists under its final name
//! only complete and verified: files are streamed from their blobs into a
//! temporary directory beside it, each checked against its sha256 and
//! size and synced, then the directory is renamed into place. Concurrent
//! fetches of one model (tasks here, or other processes sharing the data
//! directory) each write their own temporary directory; the first rename
//! wins and the others throw theirs away. The name is the hash of the
//! manifest, so a name never holds other bytes than the manifest says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::model::ModelFile;
use crate::blobs::Blobs;
use crate::error::{Error, Result};

/// A copy placed this recently is never pruned (`prune`).
const RECENT_PLACE: Duration = Duration::from_secs(600);

/// Temporary directories older than this are leftovers of a killed fetch.
const STALE_FETCH: Duration = Duration::from_secs(24 * 3600);

pub struct ModelCache {
    dir: PathBuf,
    blobs: Blobs,
    /// One fetch at a time per model in this process: a second caller waits
    /// for the first instead of downloading the same bytes again.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The cache directory's name for a manifest: sha256 over its files, by name.
pub fn manifest_hash(files: &[ModelFile]) -> String {
    let mut sorted: Vec<&ModelFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for f in sorted {
        h.update(format!("{}\t{}\t{}\n", f.name, f.sha256, f.bytes));
    }
    hex::encode(h.finalize())
}

impl ModelCache {
    /// A cache under `dir`; removes the temporary directories of fetches
    /// that a kill interrupted (those a day old: a younger one may be
    /// another process's fetch in flight).
    pub fn new(dir: PathBuf, blobs: Blobs) -> Self {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let cutoff = SystemTime::now() - STALE_FETCH;
            for entry in entries.flatten() {
                let stale = entry.file_name().to_string_lossy().starts_with(".fetch-")
                    && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
                if stale {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Self {
            dir,
            blobs,
            fetching: Mutex::default(),
        }
    }

    /// The local directory holding `files`, fetched and verified first if
    /// this process (or another sharing the data directory) has not yet.
    pub async fn fetch(&self, model: &str, files: &[ModelFile]) -> Result<PathBuf> {
        let key = manifest_hash(files);
        let dir = self.dir.join(&key);
        if dir.is_dir() {
            return Ok(dir);
        }
        let lock = {
            let mut fetching = self
                .fetching
                .lock()
                .map_err(|_| Error::Internal("model cache lock".into()))?;
            fetching.entry(key.clone()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        if dir.is_dir() {
            return Ok(dir);
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| cache_error(model, e))?;
        let tmp = self.dir.join(format!(".fetch-{key}-{}", crate::ids::new_id("f")));
        let fetched = self.fetch_into(model, files, &tmp).await;
        let placed = match fetched {
            Ok(()) => match tokio::fs::rename(&tmp, &dir).await {
                Ok(()) => Ok(()),
                // Another process placed it first: the same verified bytes.
                Err(_) if dir.is_dir() => Ok(()),
                Err(e) => Err(cache_error(model, e)),
            },
            Err(e) => Err(e),
        };
        if tmp.exists() {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
        }
        placed?;
        tracing::info!(model, dir = %dir.display(), "fetched a stored model into the cache");
        Ok(dir)
    }

    async fn fetch_into(&self, model: &str, files: &[ModelFile], tmp: &Path) -> Result<()> {
        tokio::fs::create_dir(tmp).await.map_err(|e| cache_error(model, e))?;
        for file in files {
            let path = tmp.join(&file.name);
            let mut out = tokio::fs::File::create(&path)
                .await
                .map_err(|e| cache_error(model, e))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut chunks = self.blobs.stream(&file.sha256).await?;
            while let Some(chunk) = chunks.try_next().await? {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                out.write_all(&chunk).await.map_err(|e| cache_error(model, e))?;
            }
            out.sync_all().await.map_err(|e| cache_error(model, e))?;
            let sha = hex::encode(hasher.finalize());
            if sha != file.sha256 || size != file.bytes {
                return Err(Error::precondition(
                    "MODEL_CORRUPT",
                    model,
                    format!("the stored file {} of {model} does not match its hash", file.name),
                ));
            }
        }
        Ok(())
    }

    /// Drops the copies whose manifest hash is not in `keep` (models deleted
    /// through another process), except those placed in the last
    /// `RECENT_PLACE` (a model registered after `keep` was listed); returns
    /// how many went. The engine maps model files it has loaded: removing
    /// them takes nothing from a model in use.
    pub async fn prune(&self, keep: &std::collections::HashSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let recent = SystemTime::now() - RECENT_PLACE;
        let mut pruned = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let placed = entry.metadata().and_then(|m| m.modified());
            if name.starts_with(".fetch-") || keep.contains(&name) || placed.is_ok_and(|t| t > recent) {
                continue;
            }
            match tokio::fs::remove_dir_all(entry.path()).await {
                Ok(()) => pruned += 1,
                Err(e) => tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove a cached model"),
            }
        }
        pruned
    }

    /// Drops this process's copy of `files` (a deleted model's), if any.
    pub async fn evict(&self, files: &[ModelFile]) {
        let dir = self.dir.join(manifest_hash(files));
        if dir.is_dir()
            && let Err(e) = tokio::fs::remove_dir_all(&dir).await
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a cached model");
        }
    }
}

/// A local file problem while caching: logged with its cause, told to the
/// client only as which model could not be fetched.
fn cache_error(model: &str, e: std::io::Error) -> Error {
    tracing::error!(model, error = %e, "could not write the model cache");
    Error::Internal(format!("could not cache the stored model {model}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stored(blobs: &Blobs, name: &str, bytes: &[u8]) -> ModelFile {
        let mut w = blobs.writer().await.unwrap();
        w.write(bytes).await.unwrap();
        let staged = w.finish().await.unwrap();
        let size = staged.size;
        ModelFile {
            name: name.into(),
            sha256: staged.commit().await.unwrap(),
            bytes: size,
        }
    }

    /// Copies of models no longer registered go once they are not fresh;
    /// those kept, fresh ones and fetches in flight stay.
    #[tokio::test]
    async fn prune_drops_the_copies_of_unregistered_models_only() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path().join("blobs")).unwrap();
        let cache = ModelCache::new(dir.path().join("model-cache"), blobs.clone());
        let kept = vec![stored(&blobs, "a.gguf", b"kept").await];
        let gone = vec![stored(&blobs, "b.gguf", b"deleted elsewhere").await];
        let fresh = vec![stored(&blobs, "c.gguf", b"registered after the listing").await];
        let (kept_dir, gone_dir) = (
            cache.fetch("a", &kept).await.unwrap(),
            cache.fetch("b", &gone).await.unwrap(),
        );
        let fresh_dir = cache.fetch("c", &fresh).await.unwrap();
        let in_flight = dir.path().join("model-cache/.fetch-x-1");
        std::fs::create_dir(&in_flight).unwrap();
        let long_ago = SystemTime::now() - 2 * RECENT_PLACE;
        for d in [&kept_dir, &gone_dir, &in_flight] {
            std::fs::File::open(d).unwrap().set_modified(long_ago).unwrap();
        }
        let keep = std::collections::HashSet::from([manifest_hash(&kept)]);
        assert_eq!(cache.prune(&keep).await, 1);
        assert!(kept_dir.is_dir() && fresh_dir.is_dir() && in_flight.is_dir());
        assert!(!gone_dir.exists());
    }

    #[tokio::test]
    async fn concurrent_fetches_place_one_verified_copy() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path().join("blobs")).unwrap();
        let files = vec![
            stored(&blobs, "config.json", b"{\"model_type\": \"llama\"}").await,
            stored(&blobs, "model.safetensors", &vec![7u8; 3 << 20]).await,
        ];
        // Two caches on one directory stand for two processes sharing it.
        let a = ModelCache::new(dir.path().join("model-cache"), blobs.clone());
        let b = ModelCache::new(dir.path().join("model-cache"), blobs.clone());
        let (x, y, z) = tokio::join!(a.fetch("m", &files), b.fetch("m", &files), a.fetch("m", &files));
        let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
        assert_eq!(x, y);
        assert_eq!(y, z);
        assert_eq!(x.file_name().unwrap().to_str().unwrap(), manifest_hash(&files));
        assert_eq!(std::fs::read(x.join("model.safetensors")).unwrap(), vec![7u8; 3 << 20]);
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("model-cache"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(entries.len(), 1, "no temporary directory is left");
        a.evict(&files).await;
        assert!(!x.exists());
    }

    #[tokio::test]
    async fn a_blob_that_does_not_match_its_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path().join("blobs")).unwrap();
        let mut file = stored(&blobs, "model.gguf", b"GGUF and more").await;
        file.bytes += 1;
        let cache = ModelCache::new(dir.path().join("model-cache"), blobs);
        let err = cache.fetch("m", &[file]).await.unwrap_err();
        assert!(err.to_string().contains("does not match its hash"), "{err}");
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("model-cache"))
            .unwrap()
            .flatten()
            .collect();
        assert!(entries.is_empty(), "nothing is left: {entries:?}");
    }
}
