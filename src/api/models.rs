//! ModelService handlers: the model registry, Chat and stored completions.

use std::collections::BTreeMap;
use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::admin::caller;
use super::convert;
use crate::completions::{Completions, Filter, Pending};
use crate::error::Error;
use crate::evals::manager::Page;
use crate::evals::model::Order;
use crate::inference::ChatModel;
use crate::models::{ModelKind, Models};
use crate::proto::{self, model_service_server::ModelService};

pub struct ModelApi {
    models: Arc<Models>,
    /// The router: local models and providers alike.
    chat: Arc<dyn ChatModel>,
    completions: Arc<Completions>,
}

impl ModelApi {
    pub fn new(models: Arc<Models>, chat: Arc<dyn ChatModel>, completions: Arc<Completions>) -> Self {
        Self {
            models,
            chat,
            completions,
        }
    }
}

type ChatStream = Pin<Box<dyn Stream<Item = Result<proto::ChatResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn chat(&self, request: Request<proto::ChatRequest>) -> Result<Response<ChatStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let store = req.store;
        let metadata: BTreeMap<String, String> = req.metadata.clone().into_iter().collect();
        let request = convert::chat(req);
        if store {
            crate::completions::check_metadata("metadata", &metadata)?;
        }
        // Another project's fine-tuned model is NOT_FOUND, as if it did not exist.
        self.models.check_visible(&caller, &request.model).await?;
        let events = self.chat.stream(request.clone()).await.map_err(Error::from)?;
        if !store {
            let stream =
                ReceiverStream::new(events).map(|item| Ok(convert::chat_response(item.map_err(Error::from)?, "")));
            return Ok(Response::new(Box::pin(stream)));
        }
        let pending = Pending {
            id: crate::ids::new_id("chatcmpl").replacen('_', "-", 1),
            created_at: crate::ids::now_millis(),
            request,
            metadata,
        };
        let id = pending.id.clone();
        let kept = self.completions.keep_stream(caller, pending, events);
        let stream = ReceiverStream::new(kept).map(move |item| Ok(convert::chat_response(item?, &id)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_stored_completions(
        &self,
        request: Request<proto::ListStoredCompletionsRequest>,
    ) -> Result<Response<proto::ListStoredCompletionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let filter = Filter {
            model: (!req.model.is_empty()).then_some(req.model),
            metadata: req.metadata.into_iter().collect(),
        };
        let page = Page {
            size: req.page_size,
            token: req.page_token,
            after_id: None,
            order: Some(if req.newest_first {
                Order::Descending
            } else {
                Order::Ascending
            }),
        };
        let (stored, next_page_token) = self.completions.list(&caller, &filter, &page).await?;
        Ok(Response::new(proto::ListStoredCompletionsResponse {
            completions: stored.into_iter().map(convert::stored_completion).collect(),
            next_page_token,
        }))
    }

    async fn get_stored_completion(
        &self,
        request: Request<proto::GetStoredCompletionRequest>,
    ) -> Result<Response<proto::GetStoredCompletionResponse>, Status> {
        let caller = caller(&request)?;
        let stored = self.completions.get(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::GetStoredCompletionResponse {
            completion: Some(convert::stored_completion(stored)),
        }))
    }

    async fn update_stored_completion(
        &self,
        request: Request<proto::UpdateStoredCompletionRequest>,
    ) -> Result<Response<proto::UpdateStoredCompletionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let stored = self
            .completions
            .update_metadata(&caller, &req.id, req.metadata.into_iter().collect())
            .await?;
        Ok(Response::new(proto::UpdateStoredCompletionResponse {
            completion: Some(convert::stored_completion(stored)),
        }))
    }

    async fn delete_stored_completion(
        &self,
        request: Request<proto::DeleteStoredCompletionRequest>,
    ) -> Result<Response<proto::DeleteStoredCompletionResponse>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        self.completions.delete(&caller, &id).await?;
        Ok(Response::new(proto::DeleteStoredCompletionResponse {
            id,
            deleted: true,
        }))
    }

    async fn register_model(
        &self,
        request: Request<proto::RegisterModelRequest>,
    ) -> Result<Response<proto::RegisterModelResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let model = self.models.register(&caller, &req.name, &req.path).await?;
        Ok(Response::new(proto::RegisterModelResponse {
            model: Some(convert::model(model)),
        }))
    }

    async fn upload_model(
        &self,
        request: Request<Streaming<proto::UploadModelRequest>>,
    ) -> Result<Response<proto::UploadModelResponse>, Status> {
        let caller = caller(&request)?;
        let mut stream = request.into_inner();
        let Some(proto::upload_model_request::Payload::Metadata(meta)) =
            stream.message().await?.and_then(|m| m.payload)
        else {
            return Err(Error::invalid("metadata", "the first message must carry the model's metadata").into());
        };
        let pieces = stream.map(|message| match message {
            Ok(message) => convert::model_upload_piece(message),
            Err(status) => Err(Error::Cancelled(status.message().to_string())),
        });
        let model = self.models.upload(&caller, &meta.name, pieces).await?;
        Ok(Response::new(proto::UploadModelResponse {
            model: Some(convert::model(model)),
        }))
    }

    async fn import_model(
        &self,
        request: Request<proto::ImportModelRequest>,
    ) -> Result<Response<proto::ImportModelResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let model = self.models.import(&caller, &req.name, &req.source).await?;
        Ok(Response::new(proto::ImportModelResponse {
            model: Some(convert::model(model)),
        }))
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let kind = match proto::ModelKind::try_from(req.kind) {
            Ok(proto::ModelKind::Unspecified) => None,
            Ok(proto::ModelKind::Base) => Some(ModelKind::Base),
            Ok(proto::ModelKind::FineTuned) => Some(ModelKind::FineTuned),
            Ok(proto::ModelKind::Checkpoint) | Err(_) => {
                return Err(
                    Error::invalid("kind", "list BASE or FINE_TUNED models; checkpoints are listed per job").into(),
                );
            }
        };
        let (models, next_page_token) = self.models.list(&caller, kind, req.page_size, &req.page_token).await?;
        Ok(Response::new(proto::ListModelsResponse {
            models: models.into_iter().map(convert::model).collect(),
            next_page_token,
        }))
    }

    async fn get_model(
        &self,
        request: Request<proto::GetModelRequest>,
    ) -> Result<Response<proto::GetModelResponse>, Status> {
        let caller = caller(&request)?;
        let model = self.models.get(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::GetModelResponse {
            model: Some(convert::model(model)),
        }))
    }

    async fn delete_model(
        &self,
        request: Request<proto::DeleteModelRequest>,
    ) -> Result<Response<proto::DeleteModelResponse>, Status> {
        let caller = caller(&request)?;
        let model = self.models.delete(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::DeleteModelResponse {
            id: model.id,
            deleted: true,
        }))
    }
}
