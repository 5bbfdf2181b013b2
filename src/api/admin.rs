//! `AdminService` handlers: projects, API keys, the audit log.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use crate::auth::Auth;
use crate::auth::model::{Caller, Role};
use crate::proto::{self, admin_service_server::AdminService};

/// The caller the gate found (`crate::gate`); every handler behind it has one.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing API key"))
}

pub struct AdminApi {
    auth: Arc<Auth>,
}

impl AdminApi {
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_project(
        &self,
        request: Request<proto::CreateProjectRequest>,
    ) -> Result<Response<proto::CreateProjectResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let project = self
            .auth
            .create_project(&caller, &req.id, convert::quotas(req.quotas))
            .await?;
        Ok(Response::new(proto::CreateProjectResponse {
            project: Some(convert::project(project)),
        }))
    }

    async fn update_project_quotas(
        &self,
        request: Request<proto::UpdateProjectQuotasRequest>,
    ) -> Result<Response<proto::UpdateProjectQuotasResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let project = self
            .auth
            .set_quotas(&caller, &req.project_id, convert::quotas(req.quotas))
            .await?;
        Ok(Response::new(proto::UpdateProjectQuotasResponse {
            project: Some(convert::project(project)),
        }))
    }

    async fn list_projects(
        &self,
        request: Request<proto::ListProjectsRequest>,
    ) -> Result<Response<proto::ListProjectsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (projects, next_page_token) = self.auth.list_projects(&caller, req.page_size, &req.page_token).await?;
        Ok(Response::new(proto::ListProjectsResponse {
            projects: projects.into_iter().map(convert::project).collect(),
            next_page_token,
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<proto::CreateApiKeyRequest>,
    ) -> Result<Response<proto::CreateApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let role = convert::role_from_proto(req.role)?.unwrap_or(Role::Member);
        let (key, secret) = self
            .auth
            .create_key(&caller, &req.project_id, &req.name, &req.owner, role)
            .await?;
        Ok(Response::new(proto::CreateApiKeyResponse {
            key: Some(convert::api_key(key)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<proto::ListApiKeysRequest>,
    ) -> Result<Response<proto::ListApiKeysResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let project = (!req.project_id.is_empty()).then_some(req.project_id.as_str());
        let (keys, next_page_token) = self
            .auth
            .list_keys(&caller, project, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(proto::ListApiKeysResponse {
            keys: keys.into_iter().map(convert::api_key).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<proto::RevokeApiKeyRequest>,
    ) -> Result<Response<proto::RevokeApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        let key = self.auth.revoke_key(&caller, &request.into_inner().id).await?;
        Ok(Response::new(proto::RevokeApiKeyResponse {
            key: Some(convert::api_key(key)),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let (events, next_page_token) = self.auth.list_audit(&caller, req.page_size, &req.page_token).await?;
        Ok(Response::new(proto::ListAuditEventsResponse {
            events: events.into_iter().map(convert::audit_event).collect(),
            next_page_token,
        }))
    }

    async fn get_caller(
        &self,
        request: Request<proto::GetCallerRequest>,
    ) -> Result<Response<proto::GetCallerResponse>, Status> {
        let caller = caller(&request)?;
        let key = self.auth.caller_key(&caller).await?;
        Ok(Response::new(proto::GetCallerResponse {
            key: Some(convert::api_key(key)),
        }))
    }
}
