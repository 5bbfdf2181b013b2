//! GraderService handlers and the grader wire conversions.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{json_from_struct, json_from_value, struct_from_json, timestamp};
use crate::error::Error;
use crate::graders::service::Graders;
use crate::graders::{GraderErrors, GraderResult, Sample};
use crate::proto::{self, grade_batch_request, grader_service_server::GraderService};
use crate::store::GraderRecord;

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
        let req = request.into_inner();
        let grader = grader_json(req.grader)?;
        let result = self.graders.run(grader, sample(req.sample), item(req.item)).await?;
        Ok(Response::new(proto::RunGraderResponse {
            result: Some(grader_result(result)),
        }))
    }

    async fn validate_grader(
        &self,
        request: Request<proto::ValidateGraderRequest>,
    ) -> Result<Response<proto::ValidateGraderResponse>, Status> {
        let grader = grader_json(request.into_inner().grader)?;
        self.graders.validate(&grader).await?;
        Ok(Response::new(proto::ValidateGraderResponse {
            grader: Some(struct_from_json(&grader)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn grade_batch(
        &self,
        request: Request<Streaming<proto::GradeBatchRequest>>,
    ) -> Result<Response<BatchStream>, Status> {
        let mut incoming = request.into_inner();
        let Some(grade_batch_request::Payload::Grader(grader)) = incoming.message().await?.and_then(|m| m.payload)
        else {
            return Err(Error::invalid("grader", "the first message must carry the grader").into());
        };
        let batch = self.graders.batch(json_from_struct(grader)).await?;
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
                        result: Some(grader_result(result)),
                        end: None,
                    }
                });
                let failed = message.is_err();
                // A closed channel means the client went away: stop grading.
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
            let end = proto::GradeBatchResponse {
                end: Some(proto::GradeBatchEnd { count }),
                ..Default::default()
            };
            let _ = tx.send(Ok(end)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn create_grader(
        &self,
        request: Request<proto::CreateGraderRequest>,
    ) -> Result<Response<proto::CreateGraderResponse>, Status> {
        let req = request.into_inner();
        let grader = grader_json(req.grader)?;
        let saved = self.graders.create(req.name, grader).await?;
        Ok(Response::new(proto::CreateGraderResponse {
            grader: Some(saved_grader(saved)),
        }))
    }

    async fn get_grader(
        &self,
        request: Request<proto::GetGraderRequest>,
    ) -> Result<Response<proto::GetGraderResponse>, Status> {
        let saved = self.graders.get(&request.into_inner().name).await?;
        Ok(Response::new(proto::GetGraderResponse {
            grader: Some(saved_grader(saved)),
        }))
    }

    async fn list_graders(
        &self,
        request: Request<proto::ListGradersRequest>,
    ) -> Result<Response<proto::ListGradersResponse>, Status> {
        let req = request.into_inner();
        let (graders, next_page_token) = self.graders.list(req.page_size, &req.page_token).await?;
        Ok(Response::new(proto::ListGradersResponse {
            graders: graders.into_iter().map(saved_grader).collect(),
            next_page_token,
        }))
    }
}

// ---- conversions ----

fn grader_json(grader: Option<prost_types::Struct>) -> Result<serde_json::Value, Error> {
    grader.map(json_from_struct).ok_or_else(|| {
        Error::invalid(
            "grader",
            "a grader object (or {\"name\": ...} of a saved one) is required",
        )
    })
}

fn item(item: Option<prost_types::Struct>) -> serde_json::Value {
    item.map_or_else(|| serde_json::json!({}), json_from_struct)
}

/// The wire sample; `output_json` comes from the text when the caller did not give it.
fn sample(sample: Option<proto::Sample>) -> Sample {
    let s = sample.unwrap_or_default();
    let mut out = Sample::from_model_output(s.output_text);
    if let Some(json) = s.output_json.map(json_from_value).filter(|v| !v.is_null()) {
        out.output_json = Some(json);
    }
    if let Some(tools) = s.output_tools {
        out.output_tools = tools.values.into_iter().map(json_from_value).collect();
    }
    out
}

fn errors(e: GraderErrors) -> proto::GraderErrors {
    proto::GraderErrors {
        formula_parse_error: e.formula_parse_error,
        sample_parse_error: e.sample_parse_error,
        invalid_variable_error: e.invalid_variable_error,
        python_grader_runtime_error: e.python_grader_runtime_error,
        python_grader_runtime_error_details: e.python_grader_runtime_error_details,
        python_grader_server_error: e.python_grader_server_error,
        model_grader_server_error: e.model_grader_server_error,
        model_grader_server_error_details: e.model_grader_server_error_details,
        model_grader_parse_error: e.model_grader_parse_error,
        model_grader_refusal_error: e.model_grader_refusal_error,
        other_error: e.other_error,
        python_grader_server_error_type: e.python_grader_server_error_type,
        other_error_details: e.other_error_details,
    }
}

pub fn grader_result(r: GraderResult) -> proto::GraderResult {
    proto::GraderResult {
        reward: r.reward,
        sub_rewards: r.sub_rewards.into_iter().collect(),
        metadata: Some(proto::GraderResultMetadata {
            name: r.metadata.name.to_string(),
            r#type: r.metadata.kind.to_string(),
            execution_time_seconds: r.metadata.execution_time.as_secs_f64(),
            errors: Some(errors(r.metadata.errors().clone())),
            token_usage: r.metadata.token_usage.into_iter().collect(),
        }),
    }
}

fn saved_grader(g: GraderRecord) -> proto::SavedGrader {
    proto::SavedGrader {
        name: g.name,
        grader: Some(struct_from_json(&g.grader)),
        created_at: Some(timestamp(g.created_at)),
    }
}
