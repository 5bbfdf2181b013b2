//! Content-addressed blob storage over `object_store`: local disk by default,
//! any S3-compatible store at scale.
//!
//! Architecture invariant: a blob becomes visible under its address
//! (`blobs/sha256/<2 hex>/<64 hex>`) only once complete. Writes go to
//! `staging/` first and are renamed into place, so a reader never sees a
//! partial blob and an interrupted upload leaves only staging debris, which
//! `sweep_staging` removes at start-up.

use std::time::{Duration, SystemTime};
use std::{ops::Range, path::PathBuf, sync::Arc};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, WriteMultipart, local::LocalFileSystem, path::Path};
use sha2::{Digest, Sha256};

mod direct;

pub type BlobError = object_store::Error;

/// At most this many parts of [`direct::PART_SIZE`] bytes in flight per
/// upload: see there for why the parts are that size.
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Set for the local backend, whose interrupted multipart writes leave
    /// files that `object_store` itself does not list.
    local_root: Option<PathBuf>,
    /// The local backend's staging directory, when it takes `O_DIRECT`
    /// writes (see [`direct`]): staged files are then written around the
    /// page cache.
    direct_staging: Option<PathBuf>,
}

impl Blobs {
    pub fn local(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        let store = LocalFileSystem::new_with_prefix(&root).map_err(std::io::Error::other)?;
        let staging = root.join("staging");
        std::fs::create_dir_all(&staging)?;
        let direct = cfg!(target_os = "linux") && direct::supported(&staging);
        tracing::debug!(direct, "probed O_DIRECT for staged blob writes");
        Ok(Self {
            store: Arc::new(store),
            local_root: Some(root),
            direct_staging: direct.then_some(staging),
        })
    }

    pub fn address(sha256: &str) -> Path {
        let prefix = sha256.get(..2).unwrap_or("00");
        Path::from(format!("blobs/sha256/{prefix}/{sha256}"))
    }

    /// Starts a staged write; nothing is visible until `StagedBlob::commit`.
    pub async fn writer(&self) -> Result<BlobWriter, BlobError> {
        let name = crate::ids::new_id("up");
        let staging = Path::from(format!("staging/{name}"));
        let sink = match &self.direct_staging {
            Some(dir) => {
                let writer = direct::DirectWriter::create(dir.join(&name), PARTS_IN_FLIGHT)
                    .map_err(|e| io_error(&staging, e))?;
                Sink::Direct(writer)
            }
            None => {
                let upload = self.store.put_multipart(&staging).await?;
                Sink::Multipart(WriteMultipart::new_with_chunk_size(upload, direct::PART_SIZE))
            }
        };
        Ok(BlobWriter {
            store: self.store.clone(),
            staging,
            writer: Some(sink),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    pub async fn size(&self, sha256: &str) -> Result<u64, BlobError> {
        Ok(self.store.head(&Self::address(sha256)).await?.size)
    }

    pub async fn read_range(&self, sha256: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        self.store.get_range(&Self::address(sha256), range).await
    }

    pub async fn delete(&self, sha256: &str) -> Result<(), BlobError> {
        match self.store.delete(&Self::address(sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every stored blob's sha256.
    pub async fn list(&self) -> Result<Vec<String>, BlobError> {
        self.list_older_than(None).await
    }

    /// The sha256 of every stored blob last written before `age` ago (all
    /// of them for None).
    pub async fn list_older_than(&self, age: Option<Duration>) -> Result<Vec<String>, BlobError> {
        let metas: Vec<_> = self.store.list(Some(&Path::from("blobs/sha256"))).try_collect().await?;
        Ok(metas
            .into_iter()
            .filter(|m| older_than(m.last_modified.into(), age))
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    /// Removes what interrupted uploads left in staging, when no upload of
    /// this process is in flight (at start-up, or at the end of a
    /// shutdown). With `age`, only what was last written before `age` ago:
    /// other processes sharing the store may be uploading now. A file that
    /// is already gone is fine: a dropped upload's own clean-up may run at
    /// the same time.
    pub async fn sweep_staging(&self, age: Option<Duration>) -> Result<usize, BlobError> {
        let staged: Vec<_> = self.store.list(Some(&Path::from("staging"))).try_collect().await?;
        let mut removed = 0;
        for meta in staged.into_iter().filter(|m| older_than(m.last_modified.into(), age)) {
            match self.store.delete(&meta.location).await {
                Ok(()) => removed += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(root) = &self.local_root {
            let dir = root.join("staging");
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let modified = entry.metadata().and_then(|m| m.modified());
                    if modified.is_ok_and(|t| older_than(t, age)) && std::fs::remove_file(entry.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// Whether something written at `modified` was written before `age` ago
/// (always, without an age).
fn older_than(modified: SystemTime, age: Option<Duration>) -> bool {
    age.is_none_or(|age| SystemTime::now().duration_since(modified).is_ok_and(|d| d > age))
}

pub struct BlobWriter {
    store: Arc<dyn ObjectStore>,
    staging: Path,
    writer: Option<Sink>,
    hasher: Sha256,
    size: u64,
}

/// Where a staged write goes: `object_store`'s multipart upload, or a local
/// file written around the page cache.
enum Sink {
    Multipart(WriteMultipart),
    Direct(direct::DirectWriter),
}

fn io_error(path: &Path, source: std::io::Error) -> BlobError {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("writing {path}: {source}").into(),
    }
}

impl BlobWriter {
    pub async fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        match self.writer.as_mut() {
            None => return Ok(()),
            Some(Sink::Multipart(writer)) => {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(data);
            }
            Some(Sink::Direct(writer)) => writer.write(data).await.map_err(|e| io_error(&self.staging, e))?,
        }
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// Like [`write`](Self::write), without copying where the sink can keep
    /// `data` itself (a received chunk that the validator reads too): a
    /// multipart part holds it; a direct write copies it into its aligned
    /// buffer.
    pub async fn put(&mut self, data: Bytes) -> Result<(), BlobError> {
        match self.writer.as_mut() {
            None => Ok(()),
            Some(Sink::Multipart(writer)) => {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                self.hasher.update(&data);
                self.size += data.len() as u64;
                writer.put(data);
                Ok(())
            }
            Some(Sink::Direct(_)) => self.write(&data).await,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Completes the staged write; the blob is still invisible.
    pub async fn finish(mut self) -> Result<StagedBlob, BlobError> {
        match self.writer.take() {
            Some(Sink::Multipart(writer)) => {
                writer.finish().await?;
            }
            Some(Sink::Direct(writer)) => writer.finish().await.map_err(|e| io_error(&self.staging, e))?,
            None => {}
        }
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok(StagedBlob {
            store: self.store.clone(),
            staging: self.staging.clone(),
            sha256,
            size: self.size,
            committed: false,
        })
    }

    pub async fn abort(mut self) {
        if let Some(sink) = self.writer.take() {
            sink.abort().await;
        }
    }
}

impl Sink {
    async fn abort(self) {
        match self {
            Sink::Multipart(writer) => {
                let _ = writer.abort().await;
            }
            Sink::Direct(writer) => {
                let _ = tokio::fs::remove_file(writer.path()).await;
            }
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Dropped mid-upload (client gone, server shutting down): clean up in
        // the background; `sweep_staging` catches what this misses.
        if let Some(sink) = self.writer.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(sink.abort());
        }
    }
}

pub struct StagedBlob {
    store: Arc<dyn ObjectStore>,
    staging: Path,
    pub sha256: String,
    pub size: u64,
    committed: bool,
}

impl StagedBlob {
    /// Moves the blob to its content address. Same content, same address:
    /// replacing an existing blob with identical bytes is harmless.
    pub async fn commit(mut self) -> Result<String, BlobError> {
        self.store.rename(&self.staging, &Blobs::address(&self.sha256)).await?;
        self.committed = true;
        Ok(self.sha256.clone())
    }

    pub async fn discard(mut self) {
        let _ = self.store.delete(&self.staging).await;
        self.committed = true;
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if !self.committed
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            let staging = self.staging.clone();
            handle.spawn(async move {
                let _ = store.delete(&staging).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn staged_blob_is_invisible_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path()).unwrap();
        let mut w = blobs.writer().await.unwrap();
        w.write(b"hello ").await.unwrap();
        w.write(b"world").await.unwrap();
        let staged = w.finish().await.unwrap();
        let sha = staged.sha256.clone();
        assert_eq!(sha, hex::encode(Sha256::digest(b"hello world")));
        assert!(blobs.list().await.unwrap().is_empty());
        staged.commit().await.unwrap();
        assert_eq!(blobs.list().await.unwrap(), vec![sha.clone()]);
        assert_eq!(blobs.size(&sha).await.unwrap(), 11);
        assert_eq!(&blobs.read_range(&sha, 6..11).await.unwrap()[..], b"world");
        blobs.delete(&sha).await.unwrap();
        blobs.delete(&sha).await.unwrap();
        assert!(blobs.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn interrupted_writes_leave_nothing_after_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path()).unwrap();
        let mut w = blobs.writer().await.unwrap();
        w.write(&vec![7u8; direct::PART_SIZE + 10]).await.unwrap();
        std::mem::forget(w); // as if the process died: no Drop, no abort
        let mut w2 = blobs.writer().await.unwrap();
        w2.write(b"abc").await.unwrap();
        w2.abort().await;
        // Another process sharing the store may be writing what is recent.
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(blobs.sweep_staging(hour).await.unwrap(), 0);
        assert!(!walk(dir.path()).is_empty());
        blobs.sweep_staging(None).await.unwrap();
        let left: Vec<_> = walk(dir.path());
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_dir() {
                files.extend(walk(&entry.path()));
            } else {
                files.push(entry.path());
            }
        }
        files
    }
}
