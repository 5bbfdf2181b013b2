//! GraderService handlers.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::admin::caller;
use super::convert::{grader_json, grader_result, item, sample, saved_grader};
use crate::error::Error;
use crate::graders::service::Graders;
use crate::proto::json::{json_from_struct, struct_from_json};
use crate::proto::{self, grade_batch_request, grade_batch_response, grader_service_server::GraderService};

pub struct GraderApi {
    graders: Arc<Graders>,
}

impl GraderApi {
    pub fn new(graders: Arc<Graders>) -> Self {
        Self { graders }
    }
}

/// Responses buffered per GradeBatch stream before grading waits for the client.
const BATCH_BUFFER: usize = 64;

type BatchStream = Pin<Box<dyn Stream<Item = Result<proto::GradeBatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GraderService for GraderApi {
    async fn run_grader(
        &self,
        request: Request<proto::RunGraderRequest>,
    ) -> Result<Response<proto::RunGraderResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let grader = grader_json(req.grader)?;
        let result = self
            .graders
            .run(&caller, grader, sample(req.sample), item(req.item))
            .await?;
        Ok(Response::new(proto::RunGraderResponse {
            result: Some(grader_result(result)),
        }))
    }

    async fn validate_grader(
        &self,
        request: Request<proto::ValidateGraderRequest>,
    ) -> Result<Response<proto::ValidateGraderResponse>, Status> {
        let caller = caller(&request)?;
        let grader = grader_json(request.into_inner().grader)?;
        self.graders.validate(&caller, &grader).await?;
        Ok(Response::new(proto::ValidateGraderResponse {
            grader: Some(struct_from_json(&grader)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn grade_batch(
        &self,
        request: Request<Streaming<proto::GradeBatchRequest>>,
    ) -> Result<Response<BatchStream>, Status> {
        let caller = caller(&request)?;
        let mut incoming = request.into_inner();
        let Some(grade_batch_request::Payload::Grader(grader)) = incoming.message().await?.and_then(|m| m.payload)
        else {
            return Err(Error::invalid("grader", "the first message must carry the grader").into());
        };
        let batch = self.graders.batch(&caller, json_from_struct(grader)).await?;
        let pairs = incoming.map(|message| match message {
            Ok(proto::GradeBatchRequest {
                payload: Some(grade_batch_request::Payload::Pair(pair)),
            }) => Ok((sample(pair.sample), item(pair.item))),
            Ok(_) => Err(Error::invalid(
                "pair",
                "only the first message may carry the grader; send pairs after it",
            )),
            Err(status) => Err(Error::Cancelled(status.message().to_string())),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(BATCH_BUFFER);
        tokio::spawn(async move {
            let mut results = std::pin::pin!(batch.grade(pairs));
            let mut count = 0;
            while let Some(graded) = results.next().await {
                let message = graded.map_err(Status::from).map(|(index, result)| {
                    count += 1;
                    proto::GradeBatchResponse {
                        index,
                        payload: Some(grade_batch_response::Payload::Result(grader_result(result))),
                    }
                });
                let failed = message.is_err();
                // A closed channel means the client went away: stop grading.
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
            let end = proto::GradeBatchResponse {
                index: 0,
                payload: Some(grade_batch_response::Payload::End(proto::GradeBatchEnd { count })),
            };
            let _ = tx.send(Ok(end)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn create_grader(
        &self,
        request: Request<proto::CreateGraderRequest>,
    ) -> Result<Response<proto::CreateGraderResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let grader = grader_json(req.grader)?;
        let saved = self.graders.create(&caller, req.name, grader).await?;
        Ok(Response::new(proto::CreateGraderResponse {
            grader: Some(saved_grader(saved)),
        }))
    }

    async fn get_grader(
        &self,
        request: Request<proto::GetGraderRequest>,
    ) -> Result<Response<proto::GetGraderResponse>, Status> {
        let caller = caller(&request)?;
        let saved = self.graders.get(&caller, &request.into_inner().name).await?;
        Ok(Response::new(proto::GetGraderResponse {
            grader: Some(saved_grader(saved)),
        }))
    }

    async fn list_graders(
        &self,
        request: Request<proto::ListGradersRequest>,
    ) -> Result<Response<proto::ListGradersResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (graders, next_page_token) = self.graders.list(&caller, req.page_size, &req.page_token).await?;
        Ok(Response::new(proto::ListGradersResponse {
            graders: graders.into_iter().map(saved_grader).collect(),
            next_page_token,
        }))
    }
}
