//! Content-addressed blob storage over `object_store`: a local directory by
//! default, any S3-compatible store at scale (`--blob-url`).
//!
//! Architecture invariant: a blob becomes visible under its address
//! (`blobs/sha256/<2 hex>/<64 hex>`) only once complete. Writes go to
//! `staging/` first and are moved into place (a rename on disk; on S3 a
//! multipart upload of the staging key, then a copy to the address and a
//! delete of the staging key), so a reader never sees a partial blob and an
//! interrupted upload leaves only staging debris, which `sweep_staging`
//! removes. A store other processes may share (any `--blob-url`) is swept
//! of leftovers only once they are [`SHARED_SETTLE`] old, so one replica
//! never takes another's upload in flight.

use std::{
    ops::Range,
    path::{Path as FsPath, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{ObjectStore, WriteMultipart, aws::AmazonS3Builder, local::LocalFileSystem, path::Path};
use sha2::{Digest, Sha256};

mod direct;
mod location;
mod s3;

pub use location::BlobUrl;

pub type BlobError = object_store::Error;

/// At most this many parts in flight per upload: see
/// [`direct::PART_SIZE`] for why the local parts are small.
const PARTS_IN_FLIGHT: usize = 4;

/// Bytes per part of an S3 multipart upload: S3 wants at least 5 MiB for
/// every part but the last. With [`PARTS_IN_FLIGHT`], an upload holds
/// about 40 MiB, whatever the file's size.
const S3_PART_SIZE: usize = 8 << 20;

/// How old staging leftovers and unreferenced blobs must be before a sweep
/// removes them from a store other processes may share: far longer than
/// any upload takes between its staged object appearing and its record
/// being written, so another replica's work in flight is never taken.
pub const SHARED_SETTLE: Duration = Duration::from_secs(24 * 3600);

/// In a store other processes write too, `delete_unless_used` keeps a blob
/// written this recently: another process may have just committed the same
/// bytes and not yet written the record that uses them (the `gate` holds
/// off only this process's deletes). A blob kept so is a sweep's once it
/// has settled.
pub const RECENT_COMMIT: Duration = Duration::from_secs(600);

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
    /// Bytes per multipart part.
    part_size: usize,
    /// The largest blob a commit can move into place, where the backend
    /// has a limit (S3's copy).
    max_commit: Option<u64>,
    /// How old leftovers must be before a sweep takes them: nothing for the
    /// data directory's own blobs, [`SHARED_SETTLE`] for a store named by
    /// `--blob-url`.
    settle: Duration,
    /// Blobs younger than this are not deleted (`RECENT_COMMIT` where other
    /// processes write to the store; zero where this one is alone).
    keep_recent: Duration,
    /// Serializes "commit a blob + insert the record that points at it"
    /// against "delete a record + remove its blob unless still used", for
    /// every service of this process (they share one `Blobs`).
    gate: Arc<tokio::sync::Mutex<()>>,
    /// How the operator named the store, for logs.
    name: String,
}

impl Blobs {
    /// The data directory's own blob directory: no other process writes
    /// there, so a sweep takes every leftover at once.
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
            name: root.display().to_string(),
            local_root: Some(root),
            direct_staging: direct.then_some(staging),
            part_size: direct::PART_SIZE,
            max_commit: None,
            settle: Duration::ZERO,
            keep_recent: Duration::ZERO,
            gate: Arc::default(),
        })
    }

    /// The store `url` names, or the data directory's `default_dir`
    /// without one. An S3 bucket is probed first (see [`s3`]); every
    /// failure names the setting.
    pub async fn open(url: Option<&BlobUrl>, default_dir: &FsPath) -> anyhow::Result<Self> {
        match url {
            None => Self::local(default_dir)
                .with_context(|| format!("opening the blob directory {}", default_dir.display())),
            Some(BlobUrl::Dir(dir)) => Ok(Self::local(dir)
                .with_context(|| format!("--blob-url file://{}: cannot use the directory", dir.display()))?
                .settling_for(SHARED_SETTLE)),
            Some(BlobUrl::S3 { bucket, prefix }) => Self::s3(AmazonS3Builder::from_env(), bucket, prefix).await,
        }
    }

    /// An S3-compatible bucket, with `builder`'s settings (`open` takes
    /// them from the `AWS_*` environment), after a probe under `prefix`.
    pub async fn s3(builder: AmazonS3Builder, bucket: &str, prefix: &str) -> anyhow::Result<Self> {
        let url = BlobUrl::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }
        .to_string();
        let store = s3::open(builder, bucket, prefix, &url).await?;
        Ok(Self {
            store,
            local_root: None,
            direct_staging: None,
            part_size: S3_PART_SIZE,
            max_commit: Some(s3::MAX_COPY_BYTES),
            settle: SHARED_SETTLE,
            keep_recent: Duration::ZERO,
            gate: Arc::default(),
            name: url,
        })
    }

    /// Other processes commit blobs to this store too (they share the
    /// database): a delete keeps what was written in the last
    /// [`RECENT_COMMIT`].
    pub fn shared(mut self) -> Self {
        self.keep_recent = RECENT_COMMIT;
        self
    }

    /// Whether other processes commit to this store too (`shared`).
    pub fn is_shared(&self) -> bool {
        !self.keep_recent.is_zero()
    }

    /// Sweeps take leftovers only once they are `age` old.
    pub fn settling_for(mut self, age: Duration) -> Self {
        self.settle = age;
        self
    }

    /// How the operator named the store: a directory or an `s3://` URL.
    pub fn name(&self) -> &str {
        &self.name
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
                Sink::Multipart(WriteMultipart::new_with_chunk_size(upload, self.part_size))
            }
        };
        Ok(BlobWriter {
            store: self.store.clone(),
            staging,
            writer: Some(sink),
            hasher: Sha256::new(),
            size: 0,
            max_commit: self.max_commit,
        })
    }

    pub async fn size(&self, sha256: &str) -> Result<u64, BlobError> {
        Ok(self.store.head(&Self::address(sha256)).await?.size)
    }

    pub async fn read_range(&self, sha256: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        self.store.get_range(&Self::address(sha256), range).await
    }

    /// The whole blob as a stream of chunks, for copies that must not hold
    /// it in memory.
    pub async fn stream(&self, sha256: &str) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        Ok(self.store.get(&Self::address(sha256)).await?.into_stream().boxed())
    }

    pub async fn delete(&self, sha256: &str) -> Result<(), BlobError> {
        match self.store.delete(&Self::address(sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Holds off deletions of unreferenced blobs while a caller commits a
    /// blob and inserts the record that points at it (see `gate`).
    pub async fn gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Removes the blob unless a record still points at it; a failed check
    /// is the caller's to handle, a failed removal is only logged (the next
    /// start-up's sweep takes the blob). Callers hold [`gate`](Self::gate).
    pub async fn delete_unless_used(
        &self,
        store: &dyn crate::store::Store,
        sha256: &str,
    ) -> Result<(), crate::store::StoreError> {
        if store.blob_in_use(sha256).await? || self.recently_written(sha256).await {
            return Ok(());
        }
        if let Err(e) = self.delete(sha256).await {
            tracing::warn!(blob = %sha256, error = %e, "could not remove an unused blob");
        }
        Ok(())
    }

    /// Whether the blob was written (or committed again) within
    /// `keep_recent`; a blob that cannot be looked at is not kept.
    async fn recently_written(&self, sha256: &str) -> bool {
        if self.keep_recent.is_zero() {
            return false;
        }
        match self.store.head(&Self::address(sha256)).await {
            Ok(meta) => {
                let recent = meta.last_modified.timestamp_millis() > cutoff_millis(self.keep_recent);
                if recent {
                    tracing::debug!(blob = %sha256, "kept an unused blob written moments ago; a sweep takes it once settled");
                }
                recent
            }
            Err(_) => false,
        }
    }

    /// Every stored blob's sha256.
    pub async fn list(&self) -> Result<Vec<String>, BlobError> {
        self.list_older_than(Duration::ZERO).await
    }

    /// The stored blobs a sweep may judge: all of them in a store of this
    /// process's own, those older than [`SHARED_SETTLE`] in a shared one
    /// (a younger one may belong to another replica's upload whose record
    /// is about to be written).
    pub async fn list_settled(&self) -> Result<Vec<String>, BlobError> {
        self.list_older_than(self.settle).await
    }

    async fn list_older_than(&self, age: Duration) -> Result<Vec<String>, BlobError> {
        let cutoff = cutoff_millis(age);
        let metas: Vec<_> = self.store.list(Some(&Path::from("blobs/sha256"))).try_collect().await?;
        Ok(metas
            .into_iter()
            .filter(|m| m.last_modified.timestamp_millis() <= cutoff)
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    /// Removes what interrupted uploads left in staging, once it is old
    /// enough to be nobody's (see [`list_settled`](Self::list_settled)):
    /// in the data directory's own store, call it only when no upload is in
    /// flight (at start-up, or at the end of a shutdown). A file that is
    /// already gone is fine: a dropped upload's own clean-up may run at the
    /// same time. S3 lists no multipart upload that was never completed:
    /// those are the bucket's lifecycle rule's to abort.
    pub async fn sweep_staging(&self) -> Result<usize, BlobError> {
        let cutoff = cutoff_millis(self.settle);
        let staged: Vec<_> = self.store.list(Some(&Path::from("staging"))).try_collect().await?;
        let mut removed = 0;
        for meta in staged {
            if meta.last_modified.timestamp_millis() > cutoff {
                continue;
            }
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
                    let old_enough = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .map(|t| millis(t) <= cutoff)
                        .unwrap_or(true);
                    if old_enough && std::fs::remove_file(entry.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch `age` ago.
fn cutoff_millis(age: Duration) -> i64 {
    millis(SystemTime::now()) - age.as_millis() as i64
}

pub struct BlobWriter {
    store: Arc<dyn ObjectStore>,
    staging: Path,
    writer: Option<Sink>,
    hasher: Sha256,
    size: u64,
    max_commit: Option<u64>,
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
            max_commit: self.max_commit,
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
    max_commit: Option<u64>,
    committed: bool,
}

impl StagedBlob {
    /// Moves the blob to its content address. Same content, same address:
    /// replacing an existing blob with identical bytes is harmless.
    /// On S3 the move is a copy, which S3 refuses beyond 5 GiB: a larger
    /// blob fails here (and its staged object goes when `self` drops).
    pub async fn commit(mut self) -> Result<String, BlobError> {
        self.try_commit().await
    }

    /// `commit` that leaves the blob staged when it fails, for another try
    /// (the object store out of reach); done once it succeeded.
    pub async fn try_commit(&mut self) -> Result<String, BlobError> {
        if self.committed {
            return Ok(self.sha256.clone());
        }
        if let Some(max) = self.max_commit.filter(|&max| self.size > max) {
            // Not `Generic`: that is what an outage looks like, and waiting
            // does not shrink the blob.
            return Err(object_store::Error::NotSupported {
                source: format!(
                    "a blob of {} bytes is over the {} GiB that S3 copies in one request",
                    self.size,
                    max >> 30
                )
                .into(),
            });
        }
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
        blobs.sweep_staging().await.unwrap();
        let left: Vec<_> = walk(dir.path());
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// Where other processes commit too, an unused blob written moments ago
    /// is kept (another process's record may be on its way); alone, it goes.
    #[tokio::test]
    async fn a_shared_store_keeps_an_unused_blob_written_moments_ago() {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        for (shared, kept) in [(false, false), (true, true)] {
            let dir = tempfile::tempdir().unwrap();
            let mut blobs = Blobs::local(dir.path()).unwrap();
            if shared {
                blobs = blobs.shared();
            }
            let mut w = blobs.writer().await.unwrap();
            w.write(b"bytes").await.unwrap();
            let sha = w.finish().await.unwrap().commit().await.unwrap();
            blobs.delete_unless_used(&*store, &sha).await.unwrap();
            assert_eq!(blobs.list().await.unwrap().contains(&sha), kept, "shared: {shared}");
        }
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
