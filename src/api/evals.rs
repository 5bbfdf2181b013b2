use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::admin::caller;
use super::convert;
use crate::evals::manager::{Evals, WatchItem};
use crate::proto::{self, eval_service_server::EvalService};

pub struct EvalApi {
    evals: Arc<Evals>,
    optimizer: Arc<crate::optimize::Optimizer>,
}

impl EvalApi {
    pub fn new(evals: Arc<Evals>, optimizer: Arc<crate::optimize::Optimizer>) -> Self {
        Self { evals, optimizer }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvalRunResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EvalService for EvalApi {
    async fn create_prompt_optimization(
        &self,
        request: Request<proto::CreatePromptOptimizationRequest>,
    ) -> Result<Response<proto::CreatePromptOptimizationResponse>, Status> {
        let caller = caller(&request)?;
        let req = convert::create_optimization(request.into_inner());
        let run = self.optimizer.create(&caller, req).await?;
        Ok(Response::new(proto::CreatePromptOptimizationResponse {
            optimization: Some(convert::optimization(run)),
        }))
    }

    async fn get_prompt_optimization(
        &self,
        request: Request<proto::GetPromptOptimizationRequest>,
    ) -> Result<Response<proto::GetPromptOptimizationResponse>, Status> {
        let caller = caller(&request)?;
        let run = self.optimizer.get(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::GetPromptOptimizationResponse {
            optimization: Some(convert::optimization(run)),
        }))
    }

    async fn cancel_prompt_optimization(
        &self,
        request: Request<proto::CancelPromptOptimizationRequest>,
    ) -> Result<Response<proto::CancelPromptOptimizationResponse>, Status> {
        let caller = caller(&request)?;
        let run = self.optimizer.cancel(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::CancelPromptOptimizationResponse {
            optimization: Some(convert::optimization(run)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_eval(
        &self,
        request: Request<proto::CreateEvalRequest>,
    ) -> Result<Response<proto::CreateEvalResponse>, Status> {
        let caller = caller(&request)?;
        let eval = self
            .evals
            .create_eval(&caller, convert::create_eval(request.into_inner()))
            .await?;
        Ok(Response::new(proto::CreateEvalResponse {
            eval: Some(convert::eval(eval)),
        }))
    }

    async fn get_eval(
        &self,
        request: Request<proto::GetEvalRequest>,
    ) -> Result<Response<proto::GetEvalResponse>, Status> {
        let caller = caller(&request)?;
        let eval = self.evals.get_eval(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::GetEvalResponse {
            eval: Some(convert::eval(eval)),
        }))
    }

    async fn list_evals(
        &self,
        request: Request<proto::ListEvalsRequest>,
    ) -> Result<Response<proto::ListEvalsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let sort = convert::eval_sort(req.sort)?;
        let page = convert::page(req.page_size, req.page_token, req.order)?;
        let (evals, next_page_token) = self.evals.list_evals(&caller, sort, &page).await?;
        Ok(Response::new(proto::ListEvalsResponse {
            evals: evals.into_iter().map(convert::eval).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_eval(
        &self,
        request: Request<proto::UpdateEvalRequest>,
    ) -> Result<Response<proto::UpdateEvalResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = req.id.clone();
        let eval = self.evals.update_eval(&caller, &id, convert::update_eval(req)).await?;
        Ok(Response::new(proto::UpdateEvalResponse {
            eval: Some(convert::eval(eval)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_eval(
        &self,
        request: Request<proto::DeleteEvalRequest>,
    ) -> Result<Response<proto::DeleteEvalResponse>, Status> {
        let caller = caller(&request)?;
        let eval = self.evals.delete_eval(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::DeleteEvalResponse {
            id: eval.id,
            deleted: true,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_eval_run(
        &self,
        request: Request<proto::CreateEvalRunRequest>,
    ) -> Result<Response<proto::CreateEvalRunResponse>, Status> {
        let caller = caller(&request)?;
        let create = convert::create_eval_run(request.into_inner())?;
        let run = self.evals.create_run(&caller, create).await?;
        Ok(Response::new(proto::CreateEvalRunResponse {
            run: Some(convert::eval_run(run)),
        }))
    }

    async fn get_eval_run(
        &self,
        request: Request<proto::GetEvalRunRequest>,
    ) -> Result<Response<proto::GetEvalRunResponse>, Status> {
        let caller = caller(&request)?;
        let run = self.evals.get_run(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::GetEvalRunResponse {
            run: Some(convert::eval_run(run)),
        }))
    }

    async fn list_eval_runs(
        &self,
        request: Request<proto::ListEvalRunsRequest>,
    ) -> Result<Response<proto::ListEvalRunsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let state = convert::run_state_from_proto(req.state)?;
        let page = convert::page(req.page_size, req.page_token, req.order)?;
        let (runs, next_page_token) = self.evals.list_runs(&caller, &req.eval_id, state, &page).await?;
        Ok(Response::new(proto::ListEvalRunsResponse {
            runs: runs.into_iter().map(convert::eval_run).collect(),
            next_page_token,
        }))
    }

    async fn cancel_eval_run(
        &self,
        request: Request<proto::CancelEvalRunRequest>,
    ) -> Result<Response<proto::CancelEvalRunResponse>, Status> {
        let caller = caller(&request)?;
        let run = self.evals.cancel_run(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::CancelEvalRunResponse {
            run: Some(convert::eval_run(run)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_eval_run(
        &self,
        request: Request<proto::DeleteEvalRunRequest>,
    ) -> Result<Response<proto::DeleteEvalRunResponse>, Status> {
        let caller = caller(&request)?;
        let run = self.evals.delete_run(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::DeleteEvalRunResponse {
            id: run.id,
            deleted: true,
        }))
    }

    async fn get_output_item(
        &self,
        request: Request<proto::GetOutputItemRequest>,
    ) -> Result<Response<proto::GetOutputItemResponse>, Status> {
        let caller = caller(&request)?;
        let item = self.evals.get_item(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::GetOutputItemResponse {
            item: Some(convert::output_item(item)),
        }))
    }

    async fn list_output_items(
        &self,
        request: Request<proto::ListOutputItemsRequest>,
    ) -> Result<Response<proto::ListOutputItemsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let status = convert::item_status_from_proto(req.status)?;
        let page = convert::page(req.page_size, req.page_token, req.order)?;
        let (items, next_page_token) = self.evals.list_items(&caller, &req.run_id, status, &page).await?;
        Ok(Response::new(proto::ListOutputItemsResponse {
            items: items.into_iter().map(convert::output_item).collect(),
            next_page_token,
        }))
    }

    async fn watch_eval_run(
        &self,
        request: Request<proto::WatchEvalRunRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let run = self.evals.get_run(&caller, &req.run_id).await?;
        let criteria = run.spec.criteria.clone();
        let items = self.evals.watch(&caller, &req.run_id, req.after_seq).await?;
        let stream = ReceiverStream::new(items).map(move |item| {
            use proto::watch_eval_run_response::Payload;
            let payload = match item.map_err(Status::from)? {
                WatchItem::Progress { item, total } => {
                    Payload::Progress(convert::eval_progress(&criteria, item, total))
                }
                WatchItem::End(run) => Payload::End(convert::eval_run(run)),
            };
            Ok(proto::WatchEvalRunResponse { payload: Some(payload) })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn compare_eval_runs(
        &self,
        request: Request<proto::CompareEvalRunsRequest>,
    ) -> Result<Response<proto::CompareEvalRunsResponse>, Status> {
        let caller = caller(&request)?;
        let comparison = self.evals.compare(&caller, &request.into_inner().run_ids).await?;
        Ok(Response::new(convert::comparison(comparison)))
    }
}
