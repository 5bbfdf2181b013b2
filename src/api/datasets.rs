use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::admin::caller;
use super::convert;
use crate::datasets::manager::{Datasets, DownloadPiece, OnInvalid, SplitRequest, UploadMeta};
use crate::datasets::report::PurposeChoice;
use crate::error::Error;
use crate::proto::json::json_list;
use crate::proto::{self, dataset_service_server::DatasetService, download_dataset_response, upload_dataset_request};
use crate::synth::{Distill, FromCompletions, Pairs, Preferred, Synth, ToolCallItems};

pub struct DatasetApi {
    datasets: Arc<Datasets>,
    synth: Arc<Synth>,
}

impl DatasetApi {
    pub fn new(datasets: Arc<Datasets>, synth: Arc<Synth>) -> Self {
        Self { datasets, synth }
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<proto::DownloadDatasetResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DatasetService for DatasetApi {
    #[tracing::instrument(skip_all)]
    async fn upload_dataset(
        &self,
        request: Request<Streaming<proto::UploadDatasetRequest>>,
    ) -> Result<Response<proto::UploadDatasetResponse>, Status> {
        let caller = caller(&request)?;
        let mut stream = request.into_inner();
        let Some(upload_dataset_request::Payload::Metadata(meta)) = stream.message().await?.and_then(|m| m.payload)
        else {
            return Err(Error::invalid("metadata", "the first message must carry the upload metadata").into());
        };
        let meta = UploadMeta {
            filename: meta.filename,
            purpose: convert::purpose_from_proto(meta.purpose).map(PurposeChoice::Exactly),
            display_name: meta.display_name,
            metadata: meta.metadata.into_iter().collect(),
            label_field: non_empty(meta.label_field),
            on_invalid: OnInvalid::Keep,
        };
        let chunks = stream.map(|message| match message {
            Ok(proto::UploadDatasetRequest {
                payload: Some(upload_dataset_request::Payload::Chunk(bytes)),
            }) => Ok(bytes),
            Ok(_) => Err(Error::invalid(
                "chunk",
                "only the first message may carry metadata; send bytes after it",
            )),
            Err(status) => Err(Error::Cancelled(status.message().to_string())),
        });
        let dataset = self.datasets.upload(&caller, meta, chunks).await?;
        Ok(Response::new(proto::UploadDatasetResponse {
            dataset: Some(convert::dataset(dataset)),
        }))
    }

    async fn get_dataset(
        &self,
        request: Request<proto::GetDatasetRequest>,
    ) -> Result<Response<proto::GetDatasetResponse>, Status> {
        let caller = caller(&request)?;
        let dataset = self.datasets.get(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::GetDatasetResponse {
            dataset: Some(convert::dataset(dataset)),
        }))
    }

    async fn list_datasets(
        &self,
        request: Request<proto::ListDatasetsRequest>,
    ) -> Result<Response<proto::ListDatasetsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let purpose = convert::purpose_from_proto(req.purpose);
        if purpose.is_none() && req.purpose != 0 {
            return Err(Error::invalid("purpose", format!("unknown purpose value {}", req.purpose)).into());
        }
        let (datasets, next_page_token) = self
            .datasets
            .list(&caller, purpose, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(proto::ListDatasetsResponse {
            datasets: datasets.into_iter().map(convert::dataset).collect(),
            next_page_token,
        }))
    }

    async fn delete_dataset(
        &self,
        request: Request<proto::DeleteDatasetRequest>,
    ) -> Result<Response<proto::DeleteDatasetResponse>, Status> {
        let caller = caller(&request)?;
        let deleted = self.datasets.delete(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::DeleteDatasetResponse {
            id: deleted.id,
            deleted: true,
        }))
    }

    async fn download_dataset(
        &self,
        request: Request<proto::DownloadDatasetRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let caller = caller(&request)?;
        let pieces = self.datasets.download(&caller, &request.into_inner().id).await?;
        let stream = ReceiverStream::new(pieces).map(|piece| {
            let payload = match piece.map_err(Status::from)? {
                DownloadPiece::Chunk(bytes) => download_dataset_response::Payload::Chunk(bytes),
                DownloadPiece::End { bytes, sha256 } => {
                    download_dataset_response::Payload::End(proto::DownloadDatasetEnd { bytes, sha256 })
                }
            };
            Ok(proto::DownloadDatasetResponse { payload: Some(payload) })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn split_dataset(
        &self,
        request: Request<proto::SplitDatasetRequest>,
    ) -> Result<Response<proto::SplitDatasetResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (train, validation) = self
            .datasets
            .split(
                &caller,
                SplitRequest {
                    id: req.id,
                    validation_fraction: req.validation_fraction,
                    seed: req.seed,
                    stratify_by: non_empty(req.stratify_by),
                },
            )
            .await?;
        Ok(Response::new(proto::SplitDatasetResponse {
            train: Some(convert::dataset(train)),
            validation: Some(convert::dataset(validation)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_dataset_from_completions(
        &self,
        request: Request<proto::CreateDatasetFromCompletionsRequest>,
    ) -> Result<Response<proto::CreateDatasetFromCompletionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (dataset, counts) = self
            .synth
            .from_completions(
                &caller,
                FromCompletions {
                    filter: crate::completions::Filter {
                        model: non_empty(req.model),
                        metadata: req.completion_metadata.into_iter().collect(),
                    },
                    purpose: convert::purpose_from_proto(req.purpose),
                    answer_field: non_empty(req.answer_field),
                    limit: (req.limit > 0).then_some(req.limit),
                    filename: non_empty(req.filename),
                    metadata: req.metadata.into_iter().collect(),
                },
            )
            .await?;
        Ok(Response::new(proto::CreateDatasetFromCompletionsResponse {
            dataset: Some(convert::dataset(dataset)),
            counts: Some(convert::synthesis_counts(counts)),
        }))
    }

    async fn create_distilled_dataset(
        &self,
        request: Request<proto::CreateDistilledDatasetRequest>,
    ) -> Result<Response<proto::CreateDistilledDatasetResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (dataset, counts) = self
            .synth
            .distill(
                &caller,
                Distill {
                    run_id: req.run_id,
                    criterion: non_empty(req.criterion),
                    min_score: req.min_score,
                    purpose: convert::purpose_from_proto(req.purpose),
                    answer_field: non_empty(req.answer_field),
                    filename: non_empty(req.filename),
                    metadata: req.metadata.into_iter().collect(),
                },
            )
            .await?;
        Ok(Response::new(proto::CreateDistilledDatasetResponse {
            dataset: Some(convert::dataset(dataset)),
            counts: Some(convert::synthesis_counts(counts)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_tool_call_items(
        &self,
        request: Request<proto::CreateToolCallItemsRequest>,
    ) -> Result<Response<proto::CreateToolCallItemsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (dataset, functions) = self
            .synth
            .tool_call_items(
                &caller,
                ToolCallItems {
                    tools: json_list(req.tools),
                    values: req.values.into_iter().map(|(k, v)| (k, json_list(Some(v)))).collect(),
                    max_calls: (req.max_calls > 0).then_some(req.max_calls),
                    seed: req.seed,
                    filename: non_empty(req.filename),
                    metadata: req.metadata.into_iter().collect(),
                },
            )
            .await?;
        Ok(Response::new(proto::CreateToolCallItemsResponse {
            dataset: Some(convert::dataset(dataset)),
            functions: functions.into_iter().map(convert::function_calls).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_preference_dataset(
        &self,
        request: Request<proto::CreatePreferenceDatasetRequest>,
    ) -> Result<Response<proto::CreatePreferenceDatasetResponse>, Status> {
        use proto::create_preference_dataset_request::Preferred as Wire;
        let caller = caller(&request)?;
        let req = request.into_inner();
        let preferred = match req.preferred {
            Some(Wire::PreferredRunId(id)) => Preferred::Run(id),
            Some(Wire::ReferenceField(pointer)) => Preferred::Reference(pointer),
            None => {
                return Err(Error::invalid(
                    "preferred",
                    "give preferred_run_id or reference_field: where the preferred answers come from",
                )
                .into());
            }
        };
        let (dataset, counts) = self
            .synth
            .pairs(
                &caller,
                Pairs {
                    run_id: req.run_id,
                    preferred,
                    criterion: non_empty(req.criterion),
                    min_margin: req.min_margin,
                    filename: non_empty(req.filename),
                    metadata: req.metadata.into_iter().collect(),
                },
            )
            .await?;
        Ok(Response::new(proto::CreatePreferenceDatasetResponse {
            dataset: Some(convert::dataset(dataset)),
            counts: Some(convert::synthesis_counts(counts)),
        }))
    }
}
