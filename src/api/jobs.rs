use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::admin::caller;
use super::convert;
use crate::jobs::manager::{Jobs, WatchItem};
use crate::jobs::model::JobRecord;
use crate::models::model::fine_tuned_model_id;
use crate::proto::{self, fine_tuning_service_server::FineTuningService};
use crate::store::JobQuery;

pub struct FineTuningApi {
    jobs: Arc<Jobs>,
}

impl FineTuningApi {
    pub fn new(jobs: Arc<Jobs>) -> Self {
        Self { jobs }
    }
}

fn model_name(job: &JobRecord) -> String {
    fine_tuned_model_id(&job.spec.base_model, &job.spec.suffix, &job.id)
}

fn one(job: JobRecord) -> Option<proto::Job> {
    Some(convert::job(job))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FineTuningService for FineTuningApi {
    #[tracing::instrument(skip_all)]
    async fn create_job(
        &self,
        request: Request<proto::CreateJobRequest>,
    ) -> Result<Response<proto::CreateJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self
            .jobs
            .create(&caller, convert::create_job(request.into_inner()))
            .await?;
        Ok(Response::new(proto::CreateJobResponse { job: one(job) }))
    }

    async fn get_job(&self, request: Request<proto::GetJobRequest>) -> Result<Response<proto::GetJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.jobs.get(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::GetJobResponse { job: one(job) }))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let query = JobQuery {
            state: convert::job_state_from_proto(req.state)?,
            base_model: (!req.base_model.is_empty()).then_some(req.base_model),
            metadata: req.metadata.into_iter().collect(),
            ..Default::default()
        };
        let (jobs, next_page_token) = self.jobs.list(&caller, query, req.page_size, &req.page_token).await?;
        Ok(Response::new(proto::ListJobsResponse {
            jobs: jobs.into_iter().map(convert::job).collect(),
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.jobs.cancel(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::CancelJobResponse { job: one(job) }))
    }

    async fn pause_job(
        &self,
        request: Request<proto::PauseJobRequest>,
    ) -> Result<Response<proto::PauseJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.jobs.pause(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::PauseJobResponse { job: one(job) }))
    }

    async fn resume_job(
        &self,
        request: Request<proto::ResumeJobRequest>,
    ) -> Result<Response<proto::ResumeJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.jobs.resume(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::ResumeJobResponse { job: one(job) }))
    }

    async fn list_job_events(
        &self,
        request: Request<proto::ListJobEventsRequest>,
    ) -> Result<Response<proto::ListJobEventsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let job = self.jobs.get(&caller, &req.job_id).await?;
        let (events, next_page_token) = self
            .jobs
            .events(&caller, &req.job_id, req.after_seq, req.page_size, &req.page_token)
            .await?;
        let model = model_name(&job);
        Ok(Response::new(proto::ListJobEventsResponse {
            events: events.into_iter().map(|e| convert::event(e, &model)).collect(),
            next_page_token,
        }))
    }

    async fn list_checkpoints(
        &self,
        request: Request<proto::ListCheckpointsRequest>,
    ) -> Result<Response<proto::ListCheckpointsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let job = self.jobs.get(&caller, &req.job_id).await?;
        let (list, next_page_token) = self
            .jobs
            .checkpoints(&caller, &req.job_id, req.page_size, &req.page_token)
            .await?;
        let model = model_name(&job);
        Ok(Response::new(proto::ListCheckpointsResponse {
            checkpoints: list.into_iter().map(|c| convert::checkpoint(c, &model)).collect(),
            next_page_token,
        }))
    }

    async fn watch_job(&self, request: Request<proto::WatchJobRequest>) -> Result<Response<WatchStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let job = self.jobs.get(&caller, &req.job_id).await?;
        let model = model_name(&job);
        let items = self.jobs.watch(&caller, &req.job_id, req.after_seq).await?;
        let stream = ReceiverStream::new(items).map(move |item| {
            use proto::watch_job_response::Payload;
            let payload = match item.map_err(Status::from)? {
                WatchItem::Event(e) => Payload::Event(convert::event(e, &model)),
                WatchItem::End(job) => Payload::End(proto::WatchJobEnd { job: one(job) }),
            };
            Ok(proto::WatchJobResponse { payload: Some(payload) })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
