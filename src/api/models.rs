//! ModelService handlers: the model registry and Chat.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use crate::engine::local::{ChatEvent, LocalEngine};
use crate::error::Error;
use crate::models::{ModelKind, Models};
use crate::proto::{self, model_service_server::ModelService};

pub struct ModelApi {
    models: Arc<Models>,
    engine: Option<Arc<LocalEngine>>,
}

impl ModelApi {
    pub fn new(models: Arc<Models>, engine: Option<Arc<LocalEngine>>) -> Self {
        Self { models, engine }
    }
}

type ChatStream = Pin<Box<dyn Stream<Item = Result<proto::ChatResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn chat(&self, request: Request<proto::ChatRequest>) -> Result<Response<ChatStream>, Status> {
        let Some(engine) = &self.engine else {
            return Err(Error::precondition("ENGINE", "server", "this server runs no local inference engine").into());
        };
        let (model, messages, sampling) = convert::chat(request.into_inner());
        let rx = engine.chat_stream(model, messages, sampling).await?;
        let stream = ReceiverStream::new(rx).map(|item| match item {
            Ok(ChatEvent::Delta(text)) => Ok(proto::ChatResponse {
                payload: Some(proto::chat_response::Payload::Delta(text)),
            }),
            Ok(ChatEvent::End {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => Ok(proto::ChatResponse {
                payload: Some(proto::chat_response::Payload::End(proto::ChatEnd {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                })),
            }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_model(
        &self,
        request: Request<proto::RegisterModelRequest>,
    ) -> Result<Response<proto::RegisterModelResponse>, Status> {
        let req = request.into_inner();
        let model = self.models.register(&req.name, &req.path).await?;
        Ok(Response::new(proto::RegisterModelResponse {
            model: Some(convert::model(model)),
        }))
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
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
        let (models, next_page_token) = self.models.list(kind, req.page_size, &req.page_token).await?;
        Ok(Response::new(proto::ListModelsResponse {
            models: models.into_iter().map(convert::model).collect(),
            next_page_token,
        }))
    }

    async fn get_model(
        &self,
        request: Request<proto::GetModelRequest>,
    ) -> Result<Response<proto::GetModelResponse>, Status> {
        let model = self.models.get(&request.into_inner().id).await?;
        Ok(Response::new(proto::GetModelResponse {
            model: Some(convert::model(model)),
        }))
    }

    async fn delete_model(
        &self,
        request: Request<proto::DeleteModelRequest>,
    ) -> Result<Response<proto::DeleteModelResponse>, Status> {
        let model = self.models.delete(&request.into_inner().id).await?;
        Ok(Response::new(proto::DeleteModelResponse {
            id: model.id,
            deleted: true,
        }))
    }
}
