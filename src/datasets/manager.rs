//! The dataset domain service: upload, read, list, delete, download, split.
//!
//! Architecture invariant: a dataset row exists only for a blob that is
//! complete and committed at its content address; a blob exists only while
//! some row points at it (start-up GC removes what a crash left between the
//! two steps). A FAILED dataset keeps its report and no bytes: its row
//! points at no blob. The blobs' gate (`Blobs::gate`, one per process, shared
//! with the other services that keep blobs) serializes "commit blob + insert
//! row" against "delete row + remove unreferenced blob" so the two can never
//! interleave.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{Semaphore, mpsc};

use super::format::{LineOptions, extract_label, fine_tune_format};
use super::ingest::{IngestOptions, Ingestor};
use super::lines::LineReader;
use super::model::{DatasetRecord, DatasetState, Lineage};
use super::report::{DatasetStats, Purpose, PurposeChoice, ValidationReport};
use super::tokens::TokenCounter;
use crate::auth::model::Caller;
use crate::blobs::{BlobWriter, Blobs, StagedBlob};
use crate::error::{Error, FieldViolation, Result};
use crate::ids;
use crate::paging;
use crate::store::{Cursor, DatasetQuery, Store, StoreError};

/// Marks ListDatasets page tokens.
const PAGE_TOKEN: &str = "dsp1.";

/// Bytes per DownloadDataset message and per read while splitting or
/// assembling an upload's parts.
pub(super) const READ_CHUNK: u64 = 1 << 20;

/// How many problems a refused upload's error names.
const PROBLEMS_NAMED: usize = 5;

#[derive(Clone, Debug)]
pub struct DatasetLimits {
    /// The largest file sent in one upload.
    pub max_upload_bytes: u64,
    /// The largest file sent in parts (OpenAI's Uploads API).
    pub max_assembled_bytes: u64,
    /// The largest part of such a file.
    pub max_part_bytes: u64,
    /// How long an upload sent in parts may take, from its creation.
    pub upload_expiry: std::time::Duration,
    pub max_line_bytes: usize,
    pub token_limit: u64,
    pub max_listed_problems: usize,
    pub max_concurrent_uploads: usize,
}

impl Default for DatasetLimits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 512 << 20,
            max_assembled_bytes: 8 << 30,
            max_part_bytes: 64 << 20,
            upload_expiry: std::time::Duration::from_secs(3600),
            max_line_bytes: 16 << 20,
            token_limit: 65_536,
            max_listed_problems: 100,
            max_concurrent_uploads: 8,
        }
    }
}

#[derive(Clone, Debug)]
pub struct UploadMeta {
    pub filename: String,
    pub purpose: Option<PurposeChoice>,
    pub display_name: String,
    pub metadata: BTreeMap<String, String>,
    pub label_field: Option<String>,
    pub on_invalid: OnInvalid,
}

/// What becomes of an uploaded file that fails validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInvalid {
    /// Stored as a FAILED dataset: its report, no bytes (DatasetService).
    Keep,
    /// Refused: nothing is stored, and the INVALID_ARGUMENT on `file` names
    /// the first problems with their lines (OpenAI's files API).
    Refuse,
}

#[derive(Clone, Debug)]
pub struct SplitRequest {
    pub id: String,
    pub validation_fraction: f64,
    pub seed: u64,
    pub stratify_by: Option<String>,
}

/// What DownloadDataset streams: the bytes, then one terminal piece.
#[derive(Debug)]
pub enum DownloadPiece {
    Chunk(Bytes),
    End { bytes: u64, sha256: String },
}

pub struct Datasets {
    pub(super) store: Arc<dyn Store>,
    pub(super) blobs: Blobs,
    tokens: Arc<dyn TokenCounter>,
    pub(super) limits: DatasetLimits,
    uploads: Arc<Semaphore>,
    /// Cancelled when a shutdown's grace period is over: uploads still
    /// streaming stop and remove what they staged.
    stop_uploads: tokio_util::sync::CancellationToken,
}

impl Datasets {
    pub fn new(store: Arc<dyn Store>, blobs: Blobs, tokens: Arc<dyn TokenCounter>, limits: DatasetLimits) -> Self {
        let uploads = Arc::new(Semaphore::new(limits.max_concurrent_uploads.max(1)));
        Self {
            store,
            blobs,
            tokens,
            limits,
            uploads,
            stop_uploads: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Stops the uploads still streaming (each removes what it staged and
    /// answers UNAVAILABLE), refuses new ones, and returns once none is in
    /// flight. For the end of a shutdown's grace period.
    pub async fn stop_uploads(&self) {
        self.stop_uploads.cancel();
        let all = u32::try_from(self.limits.max_concurrent_uploads.max(1)).unwrap_or(u32::MAX);
        // Held until the process ends: no upload starts after this.
        if let Ok(permits) = self.uploads.acquire_many(all).await {
            permits.forget();
        }
    }

    /// A slot among the uploads streaming at once.
    pub(super) fn upload_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        // A slot frees when an upload ends: trying again soon may succeed
        // (REST answers 429 with retry-after, which the openai SDK honours).
        self.uploads.clone().try_acquire_owned().map_err(|_| Error::Overloaded {
            message: format!(
                "too many concurrent uploads (limit {}); retry shortly",
                self.limits.max_concurrent_uploads
            ),
            retry_after: std::time::Duration::from_secs(1),
        })
    }

    /// The limits uploads are held to.
    pub fn limits(&self) -> &DatasetLimits {
        &self.limits
    }

    /// Removes staging debris, the parts of uploads that expired, and blobs
    /// no row points at. Run at start-up, before serving, when no upload can
    /// be in flight.
    pub async fn recover(&self) -> Result<()> {
        self.expire_uploads(usize::MAX).await?;
        self.sweep_leftovers().await
    }

    /// Removes settled leftovers (`Blobs::list_settled`): staged objects
    /// of uploads that never finished, and blobs no record uses (a kill
    /// between a commit and its record, or a delete that kept a blob
    /// written moments before, `Blobs::shared`). In a store of this
    /// process's own, call it only when no upload is in flight (start-up);
    /// in a shared one, whenever (the `App`'s housekeeping): the settle
    /// age keeps other processes' work in flight.
    pub async fn sweep_leftovers(&self) -> Result<()> {
        let swept = self.blobs.sweep_staging().await?;
        let in_use: std::collections::HashSet<String> = self.store.blobs_in_use().await?.into_iter().collect();
        let mut orphans = 0;
        for sha in self.blobs.list_settled().await? {
            if !in_use.contains(&sha) {
                self.blobs.delete(&sha).await?;
                orphans += 1;
            }
        }
        if swept > 0 || orphans > 0 {
            tracing::info!(
                staging_files = swept,
                orphan_blobs = orphans,
                "removed settled leftovers"
            );
        }
        Ok(())
    }

    fn ingest_options(&self, purpose: Purpose, label_field: Option<String>) -> IngestOptions {
        IngestOptions {
            line: LineOptions {
                purpose,
                token_limit: self.limits.token_limit,
                max_depth: 64,
                label_pointer: label_field,
            },
            max_line_bytes: self.limits.max_line_bytes,
            max_problems: self.limits.max_listed_problems,
        }
    }

    /// Streams `chunks` into a staged blob and the validator at once; the
    /// file is never held in memory. On any error (client gone, size limit,
    /// storage) nothing is left behind.
    pub async fn upload<S>(&self, caller: &Caller, meta: UploadMeta, chunks: S) -> Result<DatasetRecord>
    where
        S: Stream<Item = Result<Bytes>> + Unpin,
    {
        let (staged, record) = self.ingest(caller, meta, chunks, self.limits.max_upload_bytes).await?;
        let _gate = self.blobs.gate().await;
        keep_if_ready(staged, &record).await?;
        self.insert_committed(&record).await?;
        log_stored(&record);
        Ok(record)
    }

    /// Validates and stages a file as `upload` does, up to `max_bytes`, and
    /// returns its staged bytes and the record to insert: the caller commits
    /// (or discards) them.
    pub(super) async fn ingest<S>(
        &self,
        caller: &Caller,
        meta: UploadMeta,
        chunks: S,
        max_bytes: u64,
    ) -> Result<(StagedBlob, DatasetRecord)>
    where
        S: Stream<Item = Result<Bytes>> + Unpin,
    {
        let choice = validate_upload_meta(&meta)?;
        let _permit = self.upload_permit()?;
        let writer = self.blobs.writer().await?;
        // Deep enough (4 MiB of 256 KiB chunks, two validation blocks) that
        // receiving, hashing and writing overlap with validating a block; no
        // deeper, because what waits here is memory the kernel had to zero.
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let options = self.ingest_options(Purpose::Sft, meta.label_field.clone());
        let tokens = self.tokens.clone();
        let sniff_limit = self.limits.max_line_bytes;
        let validation = tokio::task::spawn_blocking(move || {
            let mut rx = rx;
            let mut ingest = Validation::new(choice, options, tokens, sniff_limit);
            while let Some(chunk) = rx.blocking_recv() {
                ingest.push(chunk);
            }
            ingest.finish()
        });

        let writer = match self.pump(chunks, writer, Some(&tx), max_bytes, "upload").await {
            Ok(writer) => writer,
            Err(e) => {
                drop(tx);
                validation.abort();
                return Err(e);
            }
        };
        drop(tx);
        let staged = writer.finish().await?;
        let (purpose, report, stats) = validation
            .await
            .map_err(|e| Error::Internal(format!("validation task failed: {e}")))?;
        if meta.on_invalid == OnInvalid::Refuse && !report.is_valid() {
            staged.discard().await;
            return Err(refused(&meta.filename, &report));
        }

        let record = DatasetRecord {
            id: ids::new_id("ds"),
            project: caller.project.clone(),
            display_name: if meta.display_name.is_empty() {
                meta.filename.clone()
            } else {
                meta.display_name
            },
            filename: meta.filename,
            purpose,
            state: state_for(&report),
            bytes: staged.size,
            sha256: staged.sha256.clone(),
            created_at: ids::now_millis(),
            metadata: meta.metadata,
            report,
            stats,
            lineage: None,
        };
        Ok((staged, record))
    }

    /// Inserts the record of a blob just committed (holding the blob gate);
    /// when the store refuses it (a storage quota) the blob goes too, unless
    /// another record points at it.
    async fn insert_committed(&self, record: &DatasetRecord) -> Result<()> {
        match self.store.insert_dataset(record).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.drop_blob_quietly(&record.sha256).await;
                Err(insert_refused(e))
            }
        }
    }

    /// `drop_blob_if_unused`, logging a failed check (start-up GC removes
    /// the blob later).
    pub(super) async fn drop_blob_quietly(&self, sha256: &str) {
        if let Err(gc) = self.drop_blob_if_unused(sha256).await {
            tracing::warn!(blob = %sha256, error = %gc, "could not check a blob's use");
        }
    }

    /// Removes the blob unless a record still points at it. A failed removal
    /// is only logged (start-up GC removes the blob later); a failed check
    /// is the caller's to handle.
    async fn drop_blob_if_unused(&self, sha256: &str) -> Result<()> {
        Ok(self.blobs.delete_unless_used(&*self.store, sha256).await?)
    }

    /// Writes `chunks` to `writer` (and to the validator, when given), at
    /// most `max_bytes`; on any error the writer is aborted.
    pub(super) async fn pump<S>(
        &self,
        mut chunks: S,
        mut writer: BlobWriter,
        tx: Option<&mpsc::Sender<Bytes>>,
        max_bytes: u64,
        what: &str,
    ) -> Result<BlobWriter>
    where
        S: Stream<Item = Result<Bytes>> + Unpin,
    {
        loop {
            let chunk = tokio::select! {
                biased;
                () = self.stop_uploads.cancelled() => {
                    writer.abort().await;
                    return Err(Error::Unavailable(
                        "the server is shutting down; upload the file again once it is back".into(),
                    ));
                }
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                break;
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    writer.abort().await;
                    return Err(e);
                }
            };
            if writer.size() + chunk.len() as u64 > max_bytes {
                writer.abort().await;
                return Err(Error::ResourceExhausted(format!(
                    "{what} exceeds the size limit of {max_bytes} bytes"
                )));
            }
            if let Err(e) = writer.put(chunk.clone()).await {
                writer.abort().await;
                return Err(e.into());
            }
            if let Some(tx) = tx
                && tx.send(chunk).await.is_err()
            {
                writer.abort().await;
                return Err(Error::Internal("validator stopped early".into()));
            }
        }
        Ok(writer)
    }

    /// The dataset, if it is the caller's project's (NOT_FOUND otherwise,
    /// as if it did not exist).
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<DatasetRecord> {
        check_id(id, "id")?;
        self.store
            .get_dataset(id)
            .await?
            .filter(|d| caller.sees(&d.project))
            .ok_or_else(|| Error::not_found("dataset", id))
    }

    /// Returns a page, newest first, and the token for the next page.
    pub async fn list(
        &self,
        caller: &Caller,
        purpose: Option<Purpose>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<DatasetRecord>, String)> {
        let limit = paging::limit(page_size)?;
        let after = paging::decode_cursor(PAGE_TOKEN, page_token, "ListDatasets")?;
        let rows = self
            .store
            .list_datasets(&DatasetQuery {
                project: caller.project.clone(),
                purposes: purpose.into_iter().collect(),
                after,
                oldest_first: false,
                limit: limit + 1,
            })
            .await?;
        Ok(paging::split(rows, limit, |d| {
            paging::encode_cursor(PAGE_TOKEN, d.created_at, &d.id)
        }))
    }

    /// A page that starts after the caller's dataset `after` (OpenAI's
    /// paging: `after` is the last id of the previous page), newest or
    /// oldest first, of any of `purposes` (all when empty), and whether
    /// more follow. An `after` the caller cannot see is a violation on
    /// `after`.
    pub async fn list_after(
        &self,
        caller: &Caller,
        purposes: &[Purpose],
        after: Option<&str>,
        oldest_first: bool,
        page_size: i32,
    ) -> Result<(Vec<DatasetRecord>, bool)> {
        let limit = paging::limit(page_size)?;
        let after = match after {
            None => None,
            Some(id) => {
                let record = match ids::is_valid("ds", id) {
                    true => self.store.get_dataset(id).await?.filter(|d| caller.sees(&d.project)),
                    false => None,
                };
                let record = record.ok_or_else(|| Error::invalid("after", format!("no dataset {id} to list after")))?;
                Some(Cursor {
                    created_at: record.created_at,
                    id: record.id,
                })
            }
        };
        let mut rows = self
            .store
            .list_datasets(&DatasetQuery {
                project: caller.project.clone(),
                purposes: purposes.to_vec(),
                after,
                oldest_first,
                limit: limit + 1,
            })
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<DatasetRecord> {
        self.get(caller, id).await?;
        let _gate = self.blobs.gate().await;
        // The store refuses in the same statement that would delete, so a
        // job or eval run created meanwhile is never left without its data.
        let record = match self.store.delete_dataset(id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(Error::not_found("dataset", id)),
            Err(StoreError::InUse(_)) => {
                return Err(Error::precondition(
                    "DATASET_IN_USE",
                    id,
                    format!(
                        "dataset {id} is used by a fine-tuning job or an eval run that has not finished; cancel it or wait"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        // The row is gone; a blob that cannot be removed now goes at start-up GC.
        self.drop_blob_if_unused(&record.sha256).await?;
        Ok(record)
    }

    /// A bounded stream of the stored bytes, then `DownloadPiece::End`.
    pub async fn download(&self, caller: &Caller, id: &str) -> Result<mpsc::Receiver<Result<DownloadPiece>>> {
        let record = self.get(caller, id).await?;
        if record.state == DatasetState::Failed {
            return Err(Error::precondition(
                "DATASET_STATE",
                &record.id,
                format!(
                    "dataset {} failed validation, so its bytes were not kept; its report says why",
                    record.id
                ),
            ));
        }
        let blobs = self.blobs.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut offset = 0;
            while offset < record.bytes {
                let end = (offset + READ_CHUNK).min(record.bytes);
                let piece = blobs.read_range(&record.sha256, offset..end).await;
                let failed = piece.is_err();
                if tx
                    .send(piece.map(DownloadPiece::Chunk).map_err(Error::from))
                    .await
                    .is_err()
                    || failed
                {
                    return; // the client went away, or the error was sent
                }
                offset = end;
            }
            let _ = tx
                .send(Ok(DownloadPiece::End {
                    bytes: record.bytes,
                    sha256: record.sha256,
                }))
                .await;
        });
        Ok(rx)
    }

    /// Splits a READY dataset into two new datasets. Rows are assigned by a
    /// seeded shuffle, per label when `stratify_by` is set, so the same
    /// request always gives the same split.
    pub async fn split(&self, caller: &Caller, req: SplitRequest) -> Result<(DatasetRecord, DatasetRecord)> {
        let source = self.get(caller, &req.id).await?;
        let fraction = req.validation_fraction;
        if !(fraction.is_finite() && fraction > 0.0 && fraction < 1.0) {
            return Err(Error::invalid(
                "validation_fraction",
                "must be greater than 0 and less than 1",
            ));
        }
        if let Some(pointer) = &req.stratify_by {
            check_pointer(pointer, "stratify_by")?;
        }
        if source.state != DatasetState::Ready {
            return Err(Error::precondition(
                "DATASET_STATE",
                &source.id,
                format!(
                    "dataset {} failed validation; fix the file and upload it again",
                    source.id
                ),
            ));
        }
        if source.report.valid_rows < 2 {
            return Err(Error::precondition(
                "DATASET_ROWS",
                &source.id,
                format!("dataset {} has fewer than 2 rows to split", source.id),
            ));
        }

        let handle = tokio::runtime::Handle::current();
        let blobs = self.blobs.clone();
        let src = source.clone();
        let stratify = req.stratify_by.clone();
        let labels = tokio::task::spawn_blocking(move || -> Result<Vec<Option<String>>> {
            let mut labels = Vec::new();
            for line in LineReader::new(&handle, &blobs, &src.sha256, src.bytes) {
                let line = line?;
                labels.push(match &stratify {
                    Some(p) => serde_json::from_slice(&line).ok().and_then(|v| extract_label(&v, p)),
                    None => None,
                });
            }
            Ok(labels)
        })
        .await
        .map_err(|e| Error::Internal(format!("split task failed: {e}")))??;

        let to_validation = assign_split(&labels, fraction, req.seed);
        let options = [
            self.ingest_options(source.purpose, req.stratify_by.clone()),
            self.ingest_options(source.purpose, req.stratify_by.clone()),
        ];
        let writers = [self.blobs.writer().await?, self.blobs.writer().await?];
        let handle = tokio::runtime::Handle::current();
        let blobs = self.blobs.clone();
        let tokens = self.tokens.clone();
        let src = source.clone();
        let outputs =
            tokio::task::spawn_blocking(move || -> Result<Vec<(BlobWriter, ValidationReport, DatasetStats)>> {
                let [o0, o1] = options;
                let mut ingestors = [Ingestor::new(o0, tokens.clone()), Ingestor::new(o1, tokens)];
                let mut writers = writers;
                for (i, line) in LineReader::new(&handle, &blobs, &src.sha256, src.bytes).enumerate() {
                    let mut line = line?.to_vec();
                    line.push(b'\n');
                    let side = usize::from(to_validation.get(i).copied().unwrap_or(false));
                    handle.block_on(writers[side].write(&line))?;
                    ingestors[side].push(&line);
                }
                let [w0, w1] = writers;
                let [i0, i1] = ingestors;
                let (r0, s0) = i0.finish();
                let (r1, s1) = i1.finish();
                Ok(vec![(w0, r0, s0), (w1, r1, s1)])
            })
            .await
            .map_err(|e| Error::Internal(format!("split task failed: {e}")))??;

        let mut records = Vec::with_capacity(2);
        let mut staged = Vec::with_capacity(2);
        for ((writer, report, stats), split) in outputs.into_iter().zip(["train", "validation"]) {
            let blob = writer.finish().await?;
            let record = DatasetRecord {
                id: ids::new_id("ds"),
                project: source.project.clone(),
                filename: split_filename(&source.filename, split),
                display_name: format!("{} ({split})", source.display_name),
                purpose: source.purpose,
                state: state_for(&report),
                bytes: blob.size,
                sha256: blob.sha256.clone(),
                created_at: ids::now_millis(),
                metadata: source.metadata.clone(),
                report,
                stats,
                lineage: Some(Lineage {
                    source_dataset_id: source.id.clone(),
                    split: split.to_string(),
                    validation_fraction: fraction,
                    seed: req.seed,
                    stratify_by: req.stratify_by.clone(),
                }),
            };
            records.push(record);
            staged.push(blob);
        }
        let _gate = self.blobs.gate().await;
        let mut inserted: Vec<&DatasetRecord> = Vec::new();
        for (blob, record) in staged.into_iter().zip(&records) {
            keep_if_ready(blob, record).await?;
            if let Err(e) = self.insert_committed(record).await {
                // Both sides or neither: the first side goes too.
                for done in inserted {
                    self.store.delete_dataset(&done.id).await?;
                    if let Err(gc) = self.drop_blob_if_unused(&done.sha256).await {
                        tracing::warn!(blob = %done.sha256, error = %gc, "could not check a blob's use");
                    }
                }
                return Err(e);
            }
            inserted.push(record);
        }
        let validation = records
            .pop()
            .ok_or_else(|| Error::Internal("split lost a side".into()))?;
        let train = records
            .pop()
            .ok_or_else(|| Error::Internal("split lost a side".into()))?;
        Ok((train, validation))
    }
}

/// Commits a READY dataset's staged bytes; a FAILED one keeps only its
/// report, so a file nothing may use is not left on the server's disk
/// (the same bytes stay where a READY dataset already holds them).
async fn keep_if_ready(staged: StagedBlob, record: &DatasetRecord) -> Result<()> {
    if record.state == DatasetState::Ready {
        staged.commit().await?;
    } else {
        staged.discard().await;
    }
    Ok(())
}

fn state_for(report: &ValidationReport) -> DatasetState {
    if report.is_valid() {
        DatasetState::Ready
    } else {
        DatasetState::Failed
    }
}

fn log_stored(record: &DatasetRecord) {
    tracing::info!(
        dataset = %record.id, purpose = record.purpose.as_str(), bytes = record.bytes,
        rows = record.report.total_rows, state = record.state.as_str(), "dataset stored"
    );
}

/// A store's refusal of a new dataset, in the service's words.
pub(super) fn insert_refused(e: StoreError) -> Error {
    match e {
        StoreError::OverQuota { project, limit, .. } => Error::ResourceExhausted(format!(
            "project {project}'s datasets would pass its storage quota of {limit} bytes; \
             delete datasets it no longer needs or ask an admin to raise max_dataset_bytes"
        )),
        other => other.into(),
    }
}

/// The error for a file refused because it failed validation: one
/// violation on `file` naming its first problems, where they are.
fn refused(filename: &str, report: &ValidationReport) -> Error {
    let errors: u64 = report.error_counts.values().sum();
    let named: Vec<String> = report
        .errors
        .iter()
        .take(PROBLEMS_NAMED)
        .map(|p| p.to_string())
        .collect();
    let mut message = if report.total_rows == 0 && report.errors.is_empty() {
        format!("{filename} has no rows")
    } else {
        format!("{filename} failed validation: {}", named.join("; "))
    };
    let more = (errors.max(report.errors.len() as u64)).saturating_sub(named.len() as u64);
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    message.push_str(&format!(
        " ({} of {} rows valid); nothing was stored",
        report.valid_rows, report.total_rows
    ));
    Error::invalid("file", message)
}

/// The validator's side of an upload: for a `fine-tune` upload, it holds
/// the bytes until the first row is complete (at most one line), tells its
/// format by it, then validates as for that purpose.
struct Validation {
    state: ValidationState,
    options: super::ingest::IngestOptions,
    tokens: Arc<dyn TokenCounter>,
    sniff_limit: usize,
}

enum ValidationState {
    Sniffing(Vec<u8>),
    Validating(Purpose, Box<Ingestor>),
}

impl Validation {
    fn new(
        choice: PurposeChoice,
        options: super::ingest::IngestOptions,
        tokens: Arc<dyn TokenCounter>,
        sniff_limit: usize,
    ) -> Self {
        let mut v = Validation {
            state: ValidationState::Sniffing(Vec::new()),
            options,
            tokens,
            sniff_limit,
        };
        if let PurposeChoice::Exactly(purpose) = choice {
            v.start(purpose);
        }
        v
    }

    fn start(&mut self, purpose: Purpose) {
        let held = match std::mem::replace(&mut self.state, ValidationState::Sniffing(Vec::new())) {
            ValidationState::Sniffing(held) => held,
            validating => {
                self.state = validating;
                return;
            }
        };
        let mut options = self.options.clone();
        options.line.purpose = purpose;
        let mut ingestor = Box::new(Ingestor::new(options, self.tokens.clone()));
        if !held.is_empty() {
            ingestor.push(&held);
        }
        self.state = ValidationState::Validating(purpose, ingestor);
    }

    fn push(&mut self, chunk: Bytes) {
        let purpose = match &mut self.state {
            ValidationState::Validating(_, ingestor) => {
                ingestor.push(&chunk);
                return;
            }
            ValidationState::Sniffing(held) => {
                held.extend_from_slice(&chunk);
                match first_row_format(held, false) {
                    Some(purpose) => purpose,
                    // A first line too long to keep: its own rules report it.
                    None if held.len() > self.sniff_limit => Purpose::Sft,
                    None => return,
                }
            }
        };
        self.start(purpose);
    }

    fn finish(mut self) -> (Purpose, ValidationReport, DatasetStats) {
        if let ValidationState::Sniffing(held) = &self.state {
            let purpose = first_row_format(held, true).unwrap_or(Purpose::Sft);
            self.start(purpose);
        }
        let (purpose, ingestor) = match self.state {
            ValidationState::Validating(purpose, ingestor) => (purpose, ingestor),
            // `start` above left it validating; an empty SFT file otherwise.
            ValidationState::Sniffing(_) => (
                Purpose::Sft,
                Box::new(Ingestor::new(self.options.clone(), self.tokens.clone())),
            ),
        };
        let (report, stats) = ingestor.finish();
        (purpose, report, stats)
    }
}

/// The format of the first non-blank line in `held`, once it is complete
/// (or, at the end of the file, `last`, whatever is there).
fn first_row_format(held: &[u8], last: bool) -> Option<Purpose> {
    let mut rest = held;
    loop {
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let line = &rest[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    rest = &rest[end + 1..];
                    continue;
                }
                return Some(fine_tune_format(line));
            }
            None if last => return Some(fine_tune_format(rest)),
            None => return None,
        }
    }
}

fn split_filename(filename: &str, split: &str) -> String {
    match filename.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{split}.{ext}"),
        None => format!("{filename}.{split}"),
    }
}

fn check_id(id: &str, field: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(field, "a dataset id is required"));
    }
    if !ids::is_valid("ds", id) {
        return Err(Error::invalid(
            field,
            format!("{id:?} is not a dataset id (ds_ followed by 26 characters)"),
        ));
    }
    Ok(())
}

pub(crate) fn check_pointer(pointer: &str, field: &str) -> Result<()> {
    if pointer.chars().count() > crate::limits::POINTER_CHARS {
        return Err(Error::invalid(
            field,
            format!("at most {} characters", crate::limits::POINTER_CHARS),
        ));
    }
    if !pointer.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("{pointer:?} is not a JSON pointer; write it like /label or /messages/-1/content"),
        ));
    }
    Ok(())
}

fn validate_upload_meta(meta: &UploadMeta) -> Result<PurposeChoice> {
    let mut problems = Vec::new();
    if meta.filename.trim().is_empty() {
        problems.push(FieldViolation::new("metadata.filename", "a filename is required"));
    } else if meta.filename.chars().count() > 255 {
        problems.push(FieldViolation::new("metadata.filename", "at most 255 characters"));
    }
    if meta.display_name.chars().count() > 255 {
        problems.push(FieldViolation::new("metadata.display_name", "at most 255 characters"));
    }
    if meta.purpose.is_none() {
        problems.push(FieldViolation::new(
            "metadata.purpose",
            "a purpose is required: sft, dpo, rft or eval",
        ));
    }
    crate::limits::check_metadata("metadata.metadata", &meta.metadata, &mut problems);
    if let Some(pointer) = &meta.label_field
        && let Err(Error::InvalidArgument(v)) = check_pointer(pointer, "metadata.label_field")
    {
        problems.extend(v);
    }
    match (problems.is_empty(), meta.purpose) {
        (true, Some(purpose)) => Ok(purpose),
        _ => Err(Error::InvalidArgument(problems)),
    }
}

/// SplitMix64: tiny, and its output for a seed is fixed forever, unlike a
/// library RNG whose algorithm may change between versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// For each row, whether it goes to validation. Rows are grouped by label
/// (one group when no labels); each group sends round(len × fraction) rows,
/// chosen by a seeded shuffle, to validation. Both sides get at least one row.
pub(crate) fn assign_split(labels: &[Option<String>], fraction: f64, seed: u64) -> Vec<bool> {
    let mut groups: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
    for (i, label) in labels.iter().enumerate() {
        groups.entry(label.as_deref()).or_default().push(i);
    }
    let mut rng = SplitMix64(seed);
    let mut out = vec![false; labels.len()];
    for rows in groups.values_mut() {
        for i in (1..rows.len()).rev() {
            let j = rng.below(i + 1);
            rows.swap(i, j);
        }
        let take = (rows.len() as f64 * fraction).round() as usize;
        for &row in rows.iter().take(take) {
            out[row] = true;
        }
    }
    let n_valid = out.iter().filter(|v| **v).count();
    if !labels.is_empty() && n_valid == 0 {
        out[rng.below(labels.len())] = true;
    } else if labels.len() > 1 && n_valid == labels.len() {
        out[rng.below(labels.len())] = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_proportional() {
        let labels: Vec<Option<String>> = (0..1000).map(|i| Some(format!("l{}", i % 4))).collect();
        let a = assign_split(&labels, 0.2, 42);
        assert_eq!(a, assign_split(&labels, 0.2, 42));
        assert_ne!(a, assign_split(&labels, 0.2, 43));
        assert_eq!(a.iter().filter(|v| **v).count(), 200);
        for l in 0..4 {
            let label = format!("l{l}");
            let in_valid = labels
                .iter()
                .zip(&a)
                .filter(|(x, v)| x.as_deref() == Some(label.as_str()) && **v)
                .count();
            assert_eq!(in_valid, 50, "label {label}");
        }
    }

    #[test]
    fn split_keeps_both_sides_non_empty() {
        let labels = vec![None, None];
        let a = assign_split(&labels, 0.01, 1);
        assert_eq!(a.iter().filter(|v| **v).count(), 1);
        let a = assign_split(&labels, 0.99, 1);
        assert_eq!(a.iter().filter(|v| **v).count(), 1);
    }

    #[test]
    fn upload_metadata_problems_are_all_reported() {
        let meta = UploadMeta {
            filename: String::new(),
            purpose: None,
            display_name: String::new(),
            metadata: BTreeMap::new(),
            label_field: Some("label".into()),
            on_invalid: OnInvalid::Keep,
        };
        let Err(Error::InvalidArgument(v)) = validate_upload_meta(&meta) else {
            panic!("expected invalid argument");
        };
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["metadata.filename", "metadata.purpose", "metadata.label_field"]
        );
    }
}
