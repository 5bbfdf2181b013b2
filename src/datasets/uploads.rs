//! Files sent in parts (OpenAI's Uploads API, for files over the one-stream
//! limit): an upload is created with its announced size, takes parts (each
//! a blob), and is completed by streaming the parts, in the order the
//! client names, through the same pipeline as any upload (validation,
//! statistics, storage quota); or it is cancelled, or it expires.
//!
//! Invariant: a part's blob is committed before its row is inserted and
//! stays while the row exists (`blob_in_use` counts parts); completing,
//! cancelling and expiring remove an upload's part rows in the transaction
//! that ends it, then its blobs that nothing else uses, under the blob gate
//! as every commit and removal. Recovery expires what is due, and start-up
//! GC removes blobs a crash left between the two steps.

use std::collections::HashSet;

use bytes::Bytes;
use futures::Stream;
use md5::Digest;

use super::manager::{Datasets, OnInvalid, READ_CHUNK, UploadMeta, insert_refused};
use super::model::{DatasetRecord, DatasetState, UploadPartRecord, UploadRecord, UploadState};
use super::report::PurposeChoice;
use crate::auth::model::Caller;
use crate::blobs::Blobs;
use crate::error::{Error, FieldViolation, Result};
use crate::ids;
use crate::store::{PartAdded, UploadEnd};

/// What creating an upload takes.
#[derive(Clone, Debug)]
pub struct NewUpload {
    pub filename: String,
    pub purpose: Option<PurposeChoice>,
    /// The file's size; the parts completed must add up to it.
    pub bytes: u64,
    pub mime_type: String,
}

/// Expired uploads ended per pass.
const EXPIRE_BATCH: usize = 100;

impl Datasets {
    /// Creates a pending upload (expired ones are ended on the way).
    pub async fn create_upload(&self, caller: &Caller, req: NewUpload) -> Result<UploadRecord> {
        let purpose = self.check_new_upload(&req)?;
        self.expire_uploads(EXPIRE_BATCH).await?;
        let now = ids::now_millis();
        let expiry = i64::try_from(self.limits.upload_expiry.as_millis()).unwrap_or(i64::MAX);
        let upload = UploadRecord {
            id: ids::new_id("upload"),
            project: caller.project.clone(),
            filename: req.filename,
            purpose,
            bytes: req.bytes,
            mime_type: req.mime_type,
            state: UploadState::Pending,
            created_at: now,
            expires_at: now.saturating_add(expiry),
            dataset_id: None,
        };
        self.store.insert_upload(&upload).await?;
        tracing::info!(upload = %upload.id, bytes = upload.bytes, "upload created");
        Ok(upload)
    }

    fn check_new_upload(&self, req: &NewUpload) -> Result<PurposeChoice> {
        let mut problems = Vec::new();
        if req.filename.trim().is_empty() {
            problems.push(FieldViolation::new("filename", "a filename is required"));
        } else if req.filename.chars().count() > 255 {
            problems.push(FieldViolation::new("filename", "at most 255 characters"));
        }
        if req.purpose.is_none() {
            problems.push(FieldViolation::new("purpose", "a purpose is required"));
        }
        let max = self.limits.max_assembled_bytes;
        if req.bytes == 0 || req.bytes > max {
            problems.push(FieldViolation::new(
                "bytes",
                format!("must be between 1 and {max} (the largest file sent in parts)"),
            ));
        }
        if req.mime_type.trim().is_empty() {
            problems.push(FieldViolation::new("mime_type", "a MIME type is required"));
        } else if req.mime_type.chars().count() > 255 {
            problems.push(FieldViolation::new("mime_type", "at most 255 characters"));
        }
        match (problems.is_empty(), req.purpose) {
            (true, Some(purpose)) => Ok(purpose),
            _ => Err(Error::InvalidArgument(problems)),
        }
    }

    /// The caller's upload (NOT_FOUND for another project's, and for an id
    /// of any other shape); a pending one past its expiry is expired first.
    pub async fn get_upload(&self, caller: &Caller, id: &str) -> Result<UploadRecord> {
        if !ids::is_valid("upload", id) {
            return Err(Error::not_found("upload", id));
        }
        let upload = self
            .store
            .get_upload(id)
            .await?
            .filter(|u| caller.sees(&u.project))
            .ok_or_else(|| Error::not_found("upload", id))?;
        if upload.state == UploadState::Pending && upload.expires_at <= ids::now_millis() {
            return match self.end_upload(id, UploadState::Expired).await? {
                UploadEnd::Done { upload, .. } => Ok(upload),
                UploadEnd::NotPending(now) => now.ok_or_else(|| Error::not_found("upload", id)),
            };
        }
        Ok(upload)
    }

    /// Adds a part: streams `chunks` (at most `max_part_bytes`) into a blob
    /// and records it, if the upload is pending and its parts stay within
    /// its announced size.
    pub async fn add_upload_part<S>(&self, caller: &Caller, upload_id: &str, chunks: S) -> Result<UploadPartRecord>
    where
        S: Stream<Item = Result<Bytes>> + Unpin,
    {
        let upload = self.get_upload(caller, upload_id).await?;
        require_pending(&upload)?;
        let _permit = self.upload_permit()?;
        let writer = self.blobs.writer().await?;
        let writer = self
            .pump(chunks, writer, None, self.limits.max_part_bytes, "part")
            .await?;
        let staged = writer.finish().await?;
        if staged.size == 0 {
            staged.discard().await;
            return Err(Error::invalid("data", "a part needs at least one byte"));
        }
        let part = UploadPartRecord {
            id: ids::new_id("part"),
            upload_id: upload.id.clone(),
            bytes: staged.size,
            sha256: staged.sha256.clone(),
            created_at: ids::now_millis(),
        };
        let _gate = self.blobs.gate().await;
        staged.commit().await?;
        let refusal = match self.store.insert_upload_part(&part).await {
            Ok(PartAdded::Added) => return Ok(part),
            Ok(PartAdded::NotPending(now)) => not_pending(upload_id, now.as_ref()),
            Ok(PartAdded::TooLarge { stored }) => Error::invalid(
                "data",
                format!(
                    "with this part of {} bytes, upload {upload_id}'s parts would add up to {} bytes, \
                     more than the {} it announced",
                    part.bytes,
                    stored + part.bytes,
                    upload.bytes
                ),
            ),
            Err(e) => e.into(),
        };
        self.drop_blob_quietly(&part.sha256).await;
        Err(refusal)
    }

    /// Completes an upload: its parts named by `part_ids`, in that order,
    /// which must add up to its announced size (and match `md5`, when
    /// given), go through the upload pipeline as one file. A file that fails
    /// validation is refused and the upload stays pending with its parts
    /// (completing in another order may fix it); otherwise the upload is
    /// completed with its dataset, and its parts are removed.
    pub async fn complete_upload(
        &self,
        caller: &Caller,
        upload_id: &str,
        part_ids: &[String],
        md5: Option<&str>,
    ) -> Result<(UploadRecord, DatasetRecord)> {
        let upload = self.get_upload(caller, upload_id).await?;
        require_pending(&upload)?;
        let md5 = match md5 {
            Some(m) if m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()) => Some(m.to_ascii_lowercase()),
            Some(_) => return Err(Error::invalid("md5", "an MD5 digest is 32 hexadecimal characters")),
            None => None,
        };
        let stored = self.store.list_upload_parts(upload_id).await?;
        if part_ids.is_empty() {
            return Err(Error::invalid(
                "part_ids",
                "name the upload's parts, in the file's order",
            ));
        }
        let mut seen = HashSet::new();
        let mut parts = Vec::with_capacity(part_ids.len());
        for (i, id) in part_ids.iter().enumerate() {
            let Some(part) = stored.iter().find(|p| &p.id == id) else {
                return Err(Error::invalid(
                    format!("part_ids[{i}]"),
                    format!("{id} is not a part of upload {upload_id}"),
                ));
            };
            if !seen.insert(id.as_str()) {
                return Err(Error::invalid(format!("part_ids[{i}]"), format!("{id} is named twice")));
            }
            parts.push(part.clone());
        }
        let total: u64 = parts.iter().map(|p| p.bytes).sum();
        if total != upload.bytes {
            return Err(Error::invalid(
                "part_ids",
                format!(
                    "the parts add up to {total} bytes; upload {upload_id} announced {}",
                    upload.bytes
                ),
            ));
        }
        let meta = UploadMeta {
            filename: upload.filename.clone(),
            purpose: Some(upload.purpose),
            display_name: String::new(),
            metadata: Default::default(),
            label_field: None,
            on_invalid: OnInvalid::Refuse,
        };
        let chunks = part_stream(self.blobs.clone(), parts, md5);
        let (staged, record) = match self.ingest(caller, meta, chunks, self.limits.max_assembled_bytes).await {
            Ok(done) => done,
            Err(e) => {
                // Parts gone under it: say why, rather than a storage error.
                if let Ok(Some(now)) = self.store.get_upload(upload_id).await
                    && now.state != UploadState::Pending
                {
                    return Err(not_pending(upload_id, Some(&now)));
                }
                return Err(e);
            }
        };
        let _gate = self.blobs.gate().await;
        if record.state == DatasetState::Ready {
            staged.commit().await?;
        } else {
            staged.discard().await;
        }
        let refusal = match self.store.complete_upload(upload_id, &record).await {
            Ok(UploadEnd::Done { upload, blobs }) => {
                self.drop_blobs_quietly(blobs).await;
                tracing::info!(upload = %upload.id, dataset = %record.id, bytes = record.bytes, "upload completed");
                return Ok((upload, record));
            }
            Ok(UploadEnd::NotPending(now)) => not_pending(upload_id, now.as_ref()),
            Err(e) => insert_refused(e),
        };
        self.drop_blob_quietly(&record.sha256).await;
        Err(refusal)
    }

    /// Cancels a pending upload and removes its parts.
    pub async fn cancel_upload(&self, caller: &Caller, upload_id: &str) -> Result<UploadRecord> {
        let upload = self.get_upload(caller, upload_id).await?;
        require_pending(&upload)?;
        match self.end_upload(upload_id, UploadState::Cancelled).await? {
            UploadEnd::Done { upload, .. } => Ok(upload),
            UploadEnd::NotPending(now) => Err(not_pending(upload_id, now.as_ref())),
        }
    }

    /// Ends pending uploads past their expiry (at most `max`, in batches),
    /// removing their parts; returns how many.
    pub(super) async fn expire_uploads(&self, max: usize) -> Result<usize> {
        let mut ended = 0;
        while ended < max {
            let due = self
                .store
                .expired_uploads(ids::now_millis(), EXPIRE_BATCH.min(max - ended))
                .await?;
            for id in &due {
                if let UploadEnd::Done { .. } = self.end_upload(id, UploadState::Expired).await? {
                    tracing::info!(upload = %id, "upload expired");
                }
            }
            ended += due.len();
            if due.len() < EXPIRE_BATCH {
                break;
            }
        }
        Ok(ended)
    }

    /// Moves a pending upload to `to` and removes its parts' blobs.
    async fn end_upload(&self, id: &str, to: UploadState) -> Result<UploadEnd> {
        let _gate = self.blobs.gate().await;
        let end = self.store.end_upload(id, to).await?;
        if let UploadEnd::Done { blobs, .. } = &end {
            self.drop_blobs_quietly(blobs.clone()).await;
        }
        Ok(end)
    }

    /// Removes each blob nothing uses any more (holding the blob gate).
    async fn drop_blobs_quietly(&self, mut blobs: Vec<String>) {
        blobs.sort();
        blobs.dedup();
        for sha in blobs {
            self.drop_blob_quietly(&sha).await;
        }
    }
}

fn require_pending(upload: &UploadRecord) -> Result<()> {
    match upload.state {
        UploadState::Pending => Ok(()),
        _ => Err(not_pending(&upload.id, Some(upload))),
    }
}

fn not_pending(id: &str, upload: Option<&UploadRecord>) -> Error {
    match upload {
        None => Error::not_found("upload", id),
        Some(u) => Error::precondition(
            "UPLOAD_STATE",
            id,
            format!(
                "upload {id} is {}; only a pending upload takes parts, completes or is cancelled",
                u.state.as_str()
            ),
        ),
    }
}

/// The parts' bytes in order, read from their blobs a chunk at a time; with
/// `md5`, an error after the last chunk when the bytes do not match it (the
/// pipeline then stores nothing).
fn part_stream(
    blobs: Blobs,
    parts: Vec<UploadPartRecord>,
    md5: Option<String>,
) -> impl Stream<Item = Result<Bytes>> + Unpin + Send {
    struct Reading {
        blobs: Blobs,
        parts: std::vec::IntoIter<UploadPartRecord>,
        current: Option<(UploadPartRecord, u64)>,
        md5: Option<(md5::Md5, String)>,
    }
    let state = Reading {
        blobs,
        parts: parts.into_iter(),
        current: None,
        md5: md5.map(|m| (md5::Md5::new(), m)),
    };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        loop {
            let Some((part, offset)) = state.current.take().or_else(|| state.parts.next().map(|p| (p, 0))) else {
                // Every part read: check the digest, then end.
                let (hasher, expected) = state.md5.take()?;
                let digest = hex::encode(hasher.finalize());
                if digest == expected {
                    return None;
                }
                let error = Error::invalid(
                    "md5",
                    format!("the parts' MD5 is {digest}, not {expected}; nothing was stored"),
                );
                return Some((Err(error), None));
            };
            if offset >= part.bytes {
                continue;
            }
            let end = (offset + READ_CHUNK).min(part.bytes);
            let chunk = match state.blobs.read_range(&part.sha256, offset..end).await {
                Ok(chunk) => chunk,
                Err(e) => return Some((Err(e.into()), None)),
            };
            if let Some((hasher, expected)) = state.md5.take() {
                // Hashing a chunk takes about a millisecond: off the async threads.
                let bytes = chunk.clone();
                let hasher = tokio::task::spawn_blocking(move || {
                    let mut hasher = hasher;
                    hasher.update(&bytes);
                    hasher
                })
                .await
                .map_err(|e| Error::Internal(format!("md5 task failed: {e}")));
                match hasher {
                    Ok(hasher) => state.md5 = Some((hasher, expected)),
                    Err(e) => return Some((Err(e), None)),
                }
            }
            state.current = Some((part, end));
            return Some((Ok(chunk), Some(state)));
        }
    }))
}
