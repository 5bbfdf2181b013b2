//! Where an import reads a base model from: a directory or GGUF file under
//! the operator's model roots (the same rule as registration by path), or
//! an object-store URL read with the server's own `AWS_*` settings. Either
//! way the files come out as the pieces an upload sends, read a chunk at a
//! time by a task that stops when the ingest stops reading.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::roots::{ModelRoots, OUTSIDE};
use super::stored::{Piece, select};
use crate::error::{Error, Result};

const FIELD: &str = "source";

/// Bytes per piece read from a file or an object.
const CHUNK: usize = 1 << 20;

pub(super) type Pieces = ReceiverStream<Result<Piece>>;

/// The pieces of the model `source` names (see `ImportModelRequest`).
pub(super) async fn open(source: &str, roots: &ModelRoots) -> Result<Pieces> {
    if source.is_empty() {
        return Err(Error::invalid(
            FIELD,
            "a model directory or GGUF file under a model root, or an s3:// URL, is required",
        ));
    }
    if let Some(rest) = source.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::invalid(FIELD, "the bucket is missing: s3://bucket/prefix"));
        }
        return from_s3(source, bucket, key.trim_end_matches('/')).await;
    }
    let path = PathBuf::from(source.strip_prefix("file://").unwrap_or(source));
    let roots = roots.clone();
    let files = tokio::task::spawn_blocking(move || files_at(&path, &roots))
        .await
        .map_err(|e| Error::Internal(format!("listing a model failed: {e}")))??;
    Ok(send_files(files))
}

/// The model files at `path`, each resolved under the roots, with sizes.
fn files_at(path: &Path, roots: &ModelRoots) -> Result<Vec<(String, PathBuf, u64)>> {
    let outside = || Error::invalid(FIELD, OUTSIDE);
    let resolved = roots.resolve(path).map_err(|_| outside())?;
    let (dir, names) = if resolved.is_file() {
        let name = file_name(&resolved);
        let dir = resolved.parent().ok_or_else(outside)?.to_path_buf();
        (dir, vec![name])
    } else {
        let names = std::fs::read_dir(&resolved)
            .map_err(|_| outside())?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        (resolved, names)
    };
    let picked = select(&names).map_err(|e| Error::invalid(FIELD, format!("the model has {e}")))?;
    picked
        .into_iter()
        .map(|name| {
            // A symlink inside the model may not lead out of the roots.
            let file = std::fs::canonicalize(dir.join(&name))
                .ok()
                .filter(|f| roots.contains(f))
                .ok_or_else(outside)?;
            let bytes = std::fs::metadata(&file)
                .map_err(|_| Error::invalid(FIELD, format!("{name} cannot be read")))?
                .len();
            Ok((name, file, bytes))
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Streams local files as pieces from a task that ends when the reader goes.
fn send_files(files: Vec<(String, PathBuf, u64)>) -> Pieces {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for (name, path, bytes) in files {
            if tx
                .send(Ok(Piece::File {
                    name: name.clone(),
                    bytes,
                }))
                .await
                .is_err()
            {
                return;
            }
            let file = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(_) => {
                    let _ = tx
                        .send(Err(Error::invalid(FIELD, format!("{name} cannot be read"))))
                        .await;
                    return;
                }
            };
            let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, CHUNK);
            while let Some(chunk) = chunks.next().await {
                let piece = chunk
                    .map(Piece::Chunk)
                    .map_err(|_| Error::invalid(FIELD, format!("{name} cannot be read")));
                let failed = piece.is_err();
                if tx.send(piece).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// One `.gguf` object, or the model files directly under a prefix.
async fn from_s3(url: &str, bucket: &str, key: &str) -> Result<Pieces> {
    let unreadable = |e: object_store::Error| Error::invalid(FIELD, format!("cannot read {url}: {e}"));
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(unreadable)?;
    let s3: Arc<dyn ObjectStore> = Arc::new(s3);
    let objects: Vec<(String, object_store::path::Path, u64)> = if key.ends_with(".gguf") {
        let location = object_store::path::Path::from(key);
        let meta = s3.head(&location).await.map_err(unreadable)?;
        vec![(location.filename().unwrap_or_default().to_string(), location, meta.size)]
    } else {
        let prefix = (!key.is_empty()).then(|| object_store::path::Path::from(key));
        let listed = s3.list_with_delimiter(prefix.as_ref()).await.map_err(unreadable)?;
        let names: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect();
        let picked = select(&names).map_err(|e| Error::invalid(FIELD, format!("{url} has {e}")))?;
        listed
            .objects
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                picked.contains(&name).then_some((name, m.location, m.size))
            })
            .collect()
    };
    let (tx, rx) = mpsc::channel(4);
    let url = url.to_string();
    tokio::spawn(async move {
        for (name, location, bytes) in objects {
            if tx.send(Ok(Piece::File { name, bytes })).await.is_err() {
                return;
            }
            let mut chunks = match s3.get(&location).await {
                Ok(got) => got.into_stream(),
                Err(e) => {
                    let _ = tx
                        .send(Err(Error::invalid(FIELD, format!("cannot read {url}: {e}"))))
                        .await;
                    return;
                }
            };
            while let Some(chunk) = chunks.next().await {
                let piece = chunk
                    .map(Piece::Chunk)
                    .map_err(|e| Error::invalid(FIELD, format!("cannot read {url}: {e}")));
                let failed = piece.is_err();
                if tx.send(piece).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
