//! `/v1/files` and `/v1/uploads`: OpenAI's files (multipart create, list,
//! retrieve, content, delete) and its Uploads API for files sent in parts,
//! over the datasets service. A file is a dataset; its bytes stream from the
//! request into the upload pipeline (validation and statistics as for a gRPC
//! upload) and back out of the blob store, never held whole.
//!
//! Unlike DatasetService, which keeps a file that fails validation as a
//! FAILED dataset with its report, these routes refuse it with a 400 that
//! names its first problems, and store nothing (`OnInvalid::Refuse`).

use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ErrorBody};
use super::kit::{Answer, Authed, Json, Path, Query, Rest, at_path};
use super::wire::{Deleted, HasId, List, ascending, seconds};
use crate::datasets::manager::{DownloadPiece, OnInvalid, UploadMeta};
use crate::datasets::model::{DatasetRecord, DatasetState, UploadPartRecord, UploadRecord};
use crate::datasets::report::{Purpose, PurposeChoice};
use crate::datasets::uploads::NewUpload;
use crate::error::Error;

pub fn routes() -> OpenApiRouter<Rest> {
    // Bodies of these routes are files: they stream, and the services hold
    // them to their own limits, so axum's body limit is lifted here.
    let streamed = OpenApiRouter::new()
        .routes(routes!(create_file))
        .routes(routes!(add_upload_part))
        .route_layer(DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .routes(routes!(list_files))
        .routes(routes!(retrieve_file, delete_file))
        .routes(routes!(file_content))
        .routes(routes!(create_upload))
        .routes(routes!(complete_upload))
        .routes(routes!(cancel_upload))
        .merge(streamed)
}

/// How many problems a file object lists.
const PROBLEMS_SHOWN: usize = 5;

/// Bytes read and dropped after a refused file's body, so the client, which
/// is still sending it, reads the error instead of a broken connection.
const DRAIN_LIMIT: u64 = 4 << 30;

/// OpenAI's file object, with what Lathe knows of the file beside it.
#[derive(Debug, Serialize, ToSchema)]
pub struct File {
    /// A dataset id (`ds_...`): the same id the gRPC API and the CLI use.
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    pub filename: String,
    /// `fine-tune` (supervised, preference or reinforcement data) or `evals`.
    pub purpose: &'static str,
    /// `processed` (validated, usable) or `error` (failed validation; only
    /// files uploaded through the gRPC API are kept so).
    pub status: &'static str,
    /// For `error`: how many problems, and the first.
    pub status_details: Option<String>,
    /// Lathe keeps files until they are deleted.
    pub expires_at: Option<i64>,
    /// Lathe's validation of the file.
    pub lathe: FileDetails,
}

/// What Lathe's validation found in a file.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileDetails {
    /// The format it was validated as: `sft`, `dpo`, `rft` or `eval`.
    pub format: &'static str,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    /// Non-blank lines.
    pub rows: u64,
    pub valid_rows: u64,
    pub invalid_rows: u64,
    /// Errors and warnings, counted by code.
    pub errors: u64,
    pub warnings: u64,
    /// The first errors, then the first warnings, each with its line.
    pub problems: Vec<String>,
}

impl HasId for File {
    fn id(&self) -> &str {
        &self.id
    }
}

/// The purpose OpenAI's file object names: what a dataset of this format
/// is uploaded as there.
fn openai_purpose(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Sft | Purpose::Dpo | Purpose::Rft => "fine-tune",
        Purpose::Eval => "evals",
    }
}

fn upload_purpose(choice: PurposeChoice) -> &'static str {
    match choice {
        PurposeChoice::FineTune => "fine-tune",
        PurposeChoice::Exactly(Purpose::Eval) => "evals",
        PurposeChoice::Exactly(other) => other.as_str(),
    }
}

pub fn file(d: DatasetRecord) -> File {
    let report = &d.report;
    let errors: u64 = report
        .error_counts
        .values()
        .sum::<u64>()
        .max(report.errors.len() as u64);
    let warnings: u64 = report
        .warning_counts
        .values()
        .sum::<u64>()
        .max(report.warnings.len() as u64);
    let problems: Vec<String> = report
        .errors
        .iter()
        .take(PROBLEMS_SHOWN)
        .chain(report.warnings.iter().take(PROBLEMS_SHOWN))
        .map(ToString::to_string)
        .collect();
    let (status, status_details) = match d.state {
        DatasetState::Ready => ("processed", None),
        DatasetState::Failed => (
            "error",
            Some(match report.errors.first() {
                Some(first) => format!("{errors} validation errors; the first: {first}"),
                None => "the file has no valid rows".to_string(),
            }),
        ),
    };
    File {
        object: "file",
        bytes: d.bytes,
        created_at: seconds(d.created_at),
        purpose: openai_purpose(d.purpose),
        status,
        status_details,
        expires_at: None,
        lathe: FileDetails {
            format: d.purpose.as_str(),
            rows: report.total_rows,
            valid_rows: report.valid_rows,
            invalid_rows: report.invalid_rows,
            errors,
            warnings,
            problems,
            sha256: d.sha256,
        },
        filename: d.filename,
        id: d.id,
    }
}

/// A `purpose` as OpenAI's SDK sends it: `fine-tune` (the format told by the
/// file's first row) or `evals`; Lathe's own `sft`, `dpo`, `rft` and `eval`
/// pin the format. Purposes of OpenAI's other products are refused.
fn purpose_choice(purpose: &str) -> Result<PurposeChoice, ApiError> {
    match purpose {
        "fine-tune" => Ok(PurposeChoice::FineTune),
        "evals" => Ok(PurposeChoice::Exactly(Purpose::Eval)),
        other => match PurposeChoice::parse(other) {
            Some(choice @ PurposeChoice::Exactly(_)) => Ok(choice),
            _ => Err(ApiError::invalid(
                "purpose",
                format!(
                    "Lathe keeps files for fine-tuning and evals: purpose must be fine-tune or evals \
                     (or Lathe's sft, dpo, rft, eval to pin the format), not {other:?}"
                ),
            )),
        },
    }
}

/// The purposes of datasets listed for a `purpose` filter: none for
/// purposes of OpenAI's products that Lathe keeps no files for.
fn purpose_filter(purpose: &str) -> Result<Vec<Purpose>, ApiError> {
    const OTHER_PRODUCTS: &[&str] = &[
        "assistants",
        "assistants_output",
        "batch",
        "batch_output",
        "fine-tune-results",
        "vision",
        "user_data",
    ];
    match purpose_choice(purpose) {
        Ok(PurposeChoice::FineTune) => Ok(vec![Purpose::Sft, Purpose::Dpo, Purpose::Rft]),
        Ok(PurposeChoice::Exactly(p)) => Ok(vec![p]),
        Err(_) if OTHER_PRODUCTS.contains(&purpose) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// A body that is not multipart/form-data.
fn not_multipart(rejection: MultipartRejection) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        format!("expected a multipart/form-data body: {}", rejection.body_text()),
    )
    .code("unsupported_media_type")
}

/// A multipart body that could not be read (malformed, or cut off).
fn unreadable(e: MultipartError) -> ApiError {
    ApiError::new(
        e.status(),
        "invalid_request_error",
        format!("the multipart body could not be read: {}", e.body_text()),
    )
}

/// A small form field's text (a `purpose`), at most 256 bytes.
async fn small_text(field: &mut Field<'_>, name: &str) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(unreadable)? {
        text.extend_from_slice(&chunk);
        if text.len() > 256 {
            return Err(ApiError::invalid(name, "at most 256 bytes"));
        }
    }
    String::from_utf8(text).map_err(|_| ApiError::invalid(name, "not UTF-8 text"))
}

fn unknown_form_field(name: &str, expected: &str) -> ApiError {
    if name.starts_with("expires_after") {
        return ApiError::invalid(
            "expires_after",
            "Lathe keeps files until they are deleted: omit expires_after and delete the file when done",
        );
    }
    ApiError::invalid(
        name,
        format!("unknown form field {name:?}; this route takes {expected}"),
    )
    .code("unknown_parameter")
}

/// How a file field's bytes were read into the pipeline.
enum Fed {
    /// Every byte was handed on.
    All,
    /// The pipeline stopped taking bytes (it failed: its error says why).
    Stopped,
    /// Refused here; the pipeline was handed the error too.
    Refused(ApiError),
}

/// Hands a file field's chunks to the pipeline through `tx`, at most
/// `max_bytes` (`too_big` is the error past it). After a refusal, the rest
/// of the field is read and dropped (up to `DRAIN_LIMIT`), so the client,
/// still sending it, reads the answer rather than a broken connection.
async fn feed(
    mut field: Field<'_>,
    tx: &mpsc::Sender<crate::error::Result<Bytes>>,
    max_bytes: u64,
    too_big: impl Fn() -> Error,
) -> Fed {
    let mut sent = 0u64;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                sent += chunk.len() as u64;
                if sent > max_bytes {
                    let _ = tx.send(Err(too_big())).await;
                    drain(field, sent).await;
                    return Fed::Refused(ApiError::from(too_big()));
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    drain(field, sent).await;
                    return Fed::Stopped;
                }
            }
            Ok(None) => return Fed::All,
            Err(e) => {
                let _ = tx.send(Err(cut_off())).await;
                return Fed::Refused(unreadable(e));
            }
        }
    }
}

fn cut_off() -> Error {
    Error::Cancelled("the request body was cut off".into())
}

/// After the file field: the form must end there (every field comes before
/// the file, so it is known before anything is stored). A field that
/// follows is refused, the pipeline handed an error too, so it stores
/// nothing; `tx` is dropped after, which ends the file.
async fn form_ends(
    form: &mut Multipart,
    tx: mpsc::Sender<crate::error::Result<Bytes>>,
    expected: &str,
) -> Result<(), ApiError> {
    match form.next_field().await {
        Ok(None) => Ok(()),
        Ok(Some(next)) => {
            let name = next.name().unwrap_or_default().to_string();
            let _ = tx
                .send(Err(Error::invalid(
                    name.clone(),
                    format!("the form field {name:?} follows the file; every field must come before it"),
                )))
                .await;
            drain(next, 0).await;
            Err(unknown_form_field(&name, expected))
        }
        Err(e) => {
            let _ = tx.send(Err(cut_off())).await;
            Err(unreadable(e))
        }
    }
}

/// Reads and drops the rest of a field, up to `DRAIN_LIMIT` in all.
async fn drain(mut field: Field<'_>, mut read: u64) {
    while read < DRAIN_LIMIT {
        match field.chunk().await {
            Ok(Some(chunk)) => read += chunk.len() as u64,
            _ => return,
        }
    }
}

/// The multipart form of `POST /v1/files`.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the form for the OpenAPI document
struct FileForm {
    /// `fine-tune` or `evals`; before `file`.
    purpose: String,
    /// The JSONL file, with its filename.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
}

/// Uploads a file (at most the server's one-upload limit, 512 MB by
/// default; larger files go through `/v1/uploads`). It streams through
/// validation; a file that fails it is refused with its first problems and
/// not stored.
#[utoipa::path(post, path = "/v1/files", tag = "files",
    request_body(content = FileForm, content_type = "multipart/form-data"),
    responses((status = 200, body = File), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn create_file(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    form: Result<Multipart, MultipartRejection>,
) -> Answer<File> {
    let mut form = form.map_err(not_multipart)?;
    let max = rest.datasets.limits().max_upload_bytes;
    let (tx, rx) = mpsc::channel(4);
    let (meta_tx, meta_rx) = oneshot::channel::<UploadMeta>();
    let read = async {
        let mut purpose = None;
        loop {
            let Some(mut field) = form.next_field().await.map_err(unreadable)? else {
                return Err(ApiError::invalid("file", "the form has no file field"));
            };
            match field.name().unwrap_or_default() {
                "purpose" => purpose = Some(purpose_choice(small_text(&mut field, "purpose").await?.trim())?),
                "file" => {
                    let Some(purpose) = purpose else {
                        drain(field, 0).await;
                        return Err(ApiError::invalid(
                            "purpose",
                            "the purpose field must come before the file field in the form",
                        ));
                    };
                    let filename = field.file_name().unwrap_or_default().to_string();
                    if filename.trim().is_empty() {
                        drain(field, 0).await;
                        return Err(ApiError::invalid("file", "the file part needs a filename"));
                    }
                    let _ = meta_tx.send(UploadMeta {
                        filename,
                        purpose: Some(purpose),
                        display_name: String::new(),
                        metadata: Default::default(),
                        label_field: None,
                        on_invalid: OnInvalid::Refuse,
                    });
                    let too_big = || {
                        Error::ResourceExhausted(format!(
                            "the file is larger than {max} bytes, the most one request may carry; \
                             send it in parts with the Uploads API (POST /v1/uploads)"
                        ))
                    };
                    return match feed(field, &tx, max, too_big).await {
                        Fed::Refused(error) => Err(error),
                        Fed::Stopped => Ok(()),
                        Fed::All => form_ends(&mut form, tx, "purpose and file").await,
                    };
                }
                other => return Err(unknown_form_field(other, "purpose and file")),
            }
        }
    };
    let store = async {
        let meta = meta_rx.await.ok()?;
        Some(rest.datasets.upload(&caller, meta, ReceiverStream::new(rx)).await)
    };
    let (read, stored) = tokio::join!(read, store);
    // The reader's refusal is the cause of any failure it led to.
    read?;
    match stored {
        Some(stored) => Ok(Json(file(stored?))),
        None => Err(ApiError::invalid("file", "the form has no file field")),
    }
}

/// `GET /v1/files` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FileQuery {
    /// The id of the last file of the previous page.
    after: Option<String>,
    /// 1 to 10,000 (a page holds at most 1,000; `has_more` tells); 20 when absent.
    limit: Option<i64>,
    /// `desc` (newest first, the default) or `asc`.
    order: Option<String>,
    /// Only files of this purpose.
    purpose: Option<String>,
}

/// Lists the project's files.
#[utoipa::path(get, path = "/v1/files", tag = "files", params(FileQuery),
    responses((status = 200, body = List<File>), (status = 400, body = ErrorBody)))]
async fn list_files(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Query(q): Query<FileQuery>,
) -> Answer<List<File>> {
    let page_size = match q.limit {
        None => 20,
        Some(n @ 1..=10_000) => n.min(1000) as i32,
        Some(_) => return Err(ApiError::invalid("limit", "must be between 1 and 10000")),
    };
    let oldest_first = ascending(q.order.as_deref(), false)?;
    let purposes = match q.purpose.as_deref() {
        None => Vec::new(),
        Some(p) => match purpose_filter(p)? {
            none if none.is_empty() => return Ok(Json(List::new(Vec::new(), false))),
            some => some,
        },
    };
    let (rows, more) = rest
        .datasets
        .list_after(&caller, &purposes, q.after.as_deref(), oldest_first, page_size)
        .await?;
    Ok(Json(List::new(rows.into_iter().map(file).collect(), more)))
}

#[utoipa::path(get, path = "/v1/files/{file_id}", tag = "files",
    params(("file_id" = String, Path, description = "A file's id")),
    responses((status = 200, body = File), (status = 404, body = ErrorBody)))]
async fn retrieve_file(State(rest): State<Rest>, Authed(caller): Authed, Path(id): Path<String>) -> Answer<File> {
    Ok(Json(file(
        rest.datasets.get(&caller, &id).await.map_err(at_path("file", &id))?,
    )))
}

/// Deletes a file (refused while an unfinished job or eval run uses it).
#[utoipa::path(delete, path = "/v1/files/{file_id}", tag = "files",
    params(("file_id" = String, Path, description = "A file's id")),
    responses((status = 200, body = Deleted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_file(State(rest): State<Rest>, Authed(caller): Authed, Path(id): Path<String>) -> Answer<Deleted> {
    let gone = rest.datasets.delete(&caller, &id).await.map_err(at_path("file", &id))?;
    Ok(Json(Deleted::new(gone.id, "file")))
}

/// The file's bytes, streamed as they are stored.
#[utoipa::path(get, path = "/v1/files/{file_id}/content", tag = "files",
    params(("file_id" = String, Path, description = "A file's id")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = ErrorBody)))]
async fn file_content(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = rest.datasets.get(&caller, &id).await.map_err(at_path("file", &id))?;
    let pieces = rest.datasets.download(&caller, &id).await?;
    let chunks = ReceiverStream::new(pieces).filter_map(|piece| match piece {
        Ok(DownloadPiece::Chunk(bytes)) => Some(Ok(bytes)),
        Ok(DownloadPiece::End { .. }) => None,
        // The status is sent; a failure now can only cut the body short.
        Err(e) => Some(Err(std::io::Error::other(e.public_message()))),
    });
    Ok((
        [
            (http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (http::header::CONTENT_LENGTH, record.bytes.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// OpenAI's upload object.
#[derive(Debug, Serialize, ToSchema)]
pub struct Upload {
    pub id: String,
    /// Always `upload`.
    pub object: &'static str,
    /// The size announced at create.
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; a pending upload then expires and its parts go.
    pub expires_at: i64,
    pub filename: String,
    pub purpose: &'static str,
    /// `pending`, `completed`, `cancelled` or `expired`.
    pub status: &'static str,
    /// The file a completed upload became.
    pub file: Option<File>,
}

fn upload(u: UploadRecord, file: Option<File>) -> Upload {
    Upload {
        object: "upload",
        bytes: u.bytes,
        created_at: seconds(u.created_at),
        expires_at: seconds(u.expires_at),
        purpose: upload_purpose(u.purpose),
        status: u.state.as_str(),
        file,
        filename: u.filename,
        id: u.id,
    }
}

/// `POST /v1/uploads` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUpload {
    filename: String,
    /// `fine-tune` or `evals`.
    purpose: String,
    /// The file's size; the parts must add up to it.
    bytes: u64,
    mime_type: String,
    /// Not supported: Lathe keeps files until they are deleted.
    #[schema(value_type = Option<Object>)]
    expires_after: Option<serde_json::Value>,
}

/// Starts a file to be sent in parts (files over the one-upload limit; up
/// to 8 GB by default). It expires an hour after creation unless completed.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads",
    request_body = CreateUpload,
    responses((status = 200, body = Upload), (status = 400, body = ErrorBody)))]
async fn create_upload(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Json(req): Json<CreateUpload>,
) -> Answer<Upload> {
    if req.expires_after.is_some() {
        return Err(unknown_form_field("expires_after", ""));
    }
    let new = NewUpload {
        filename: req.filename,
        purpose: Some(purpose_choice(&req.purpose)?),
        bytes: req.bytes,
        mime_type: req.mime_type,
    };
    Ok(Json(upload(rest.datasets.create_upload(&caller, new).await?, None)))
}

/// OpenAI's upload part object.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadPart {
    pub id: String,
    /// Always `upload.part`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    pub upload_id: String,
}

fn part(p: UploadPartRecord) -> UploadPart {
    UploadPart {
        id: p.id,
        object: "upload.part",
        created_at: seconds(p.created_at),
        upload_id: p.upload_id,
    }
}

/// The multipart form of `POST /v1/uploads/{upload_id}/parts`.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the form for the OpenAPI document
struct PartForm {
    /// The part's bytes (at most 64 MB by default).
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    data: String,
}

/// Adds a part to a pending upload; parts may come in any order and
/// concurrently: completing names their order.
#[utoipa::path(post, path = "/v1/uploads/{upload_id}/parts", tag = "uploads",
    params(("upload_id" = String, Path, description = "An upload's id")),
    request_body(content = PartForm, content_type = "multipart/form-data"),
    responses((status = 200, body = UploadPart), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn add_upload_part(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(upload_id): Path<String>,
    form: Result<Multipart, MultipartRejection>,
) -> Answer<UploadPart> {
    let mut form = form.map_err(not_multipart)?;
    let max = rest.datasets.limits().max_part_bytes;
    let too_big = || Error::ResourceExhausted(format!("a part is at most {max} bytes"));
    let (tx, rx) = mpsc::channel(4);
    let read = async {
        let field = match form.next_field().await.map_err(unreadable)? {
            Some(field) if field.name() == Some("data") => field,
            Some(field) => {
                let error = unknown_form_field(field.name().unwrap_or_default(), "data");
                let _ = tx
                    .send(Err(Error::invalid("data", "the form's first field must be data")))
                    .await;
                return Err(error);
            }
            None => {
                let _ = tx.send(Err(Error::invalid("data", "the form has no data field"))).await;
                return Err(ApiError::invalid("data", "the form has no data field"));
            }
        };
        match feed(field, &tx, max, too_big).await {
            Fed::Refused(error) => Err(error),
            Fed::Stopped => Ok(()),
            Fed::All => form_ends(&mut form, tx, "data").await,
        }
    };
    let stored = rest
        .datasets
        .add_upload_part(&caller, &upload_id, ReceiverStream::new(rx));
    let (read, stored) = tokio::join!(read, stored);
    read?;
    Ok(Json(part(stored?)))
}

/// `POST /v1/uploads/{upload_id}/complete` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CompleteUpload {
    /// The parts, in the file's order.
    part_ids: Vec<String>,
    /// The file's MD5, checked when given.
    md5: Option<String>,
}

/// Completes an upload: its parts, in the order named, become one file,
/// validated as any upload (a file that fails is refused, and the upload
/// stays pending with its parts).
#[utoipa::path(post, path = "/v1/uploads/{upload_id}/complete", tag = "uploads",
    params(("upload_id" = String, Path, description = "An upload's id")),
    request_body = CompleteUpload,
    responses((status = 200, body = Upload), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn complete_upload(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(upload_id): Path<String>,
    Json(req): Json<CompleteUpload>,
) -> Answer<Upload> {
    let (done, dataset) = rest
        .datasets
        .complete_upload(&caller, &upload_id, &req.part_ids, req.md5.as_deref())
        .await?;
    Ok(Json(upload(done, Some(file(dataset)))))
}

/// Cancels a pending upload; its parts are removed.
#[utoipa::path(post, path = "/v1/uploads/{upload_id}/cancel", tag = "uploads",
    params(("upload_id" = String, Path, description = "An upload's id")),
    responses((status = 200, body = Upload), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn cancel_upload(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(upload_id): Path<String>,
) -> Answer<Upload> {
    Ok(Json(upload(
        rest.datasets.cancel_upload(&caller, &upload_id).await?,
        None,
    )))
}
