//! ModelService handlers: the model registry and Chat.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::admin::caller;
use super::convert;
use crate::error::Error;
use crate::inference::ChatModel;
use crate::models::{ModelKind, Models};
use crate::proto::{self, model_service_server::ModelService};

pub struct ModelApi {
    models: Arc<Models>,
    /// The router: local models and providers alike.
    chat: Arc<dyn ChatModel>,
}

impl ModelApi {
    pub fn new(models: Arc<Models>, chat: Arc<dyn ChatModel>) -> Self {
        Self { models, chat }
    }
}

type ChatStream = Pin<Box<dyn Stream<Item = Result<proto::ChatResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn chat(&self, request: Request<proto::ChatRequest>) -> Result<Response<ChatStream>, Status> {
        let caller = caller(&request)?;
        let request = convert::chat(request.into_inner());
        // Another project's fine-tuned model is NOT_FOUND, as if it did not exist.
        self.models.check_visible(&caller, &request.model).await?;
        let events = self.chat.stream(request).await.map_err(Error::from)?;
        let stream = ReceiverStream::new(events).map(|item| Ok(convert::chat_response(item.map_err(Error::from)?)));
        Ok(Response::new(Box::pin(stream)))
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
