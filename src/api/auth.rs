//! Authentication for every gRPC call, and the `AdminService` handlers.
//!
//! `AuthLayer` wraps the whole router: it asks `auth::Auth` who the
//! `authorization` header names, puts the `Caller` into the request's
//! extensions (handlers take it with [`caller`]) and answers UNAUTHENTICATED
//! itself when there is none. Health probes are the one open path. Calls that
//! change something are written to the audit log with their outcome.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::{Request, Response, Status};
use tower::{Layer, Service};

use super::convert;
use crate::auth::Auth;
use crate::auth::model::{Caller, Role};
use crate::proto::{self, admin_service_server::AdminService};

/// Paths any client may call without a key.
const OPEN: &[&str] = &["/grpc.health.v1.Health/"];

/// Method names (the path's last part) that change something, and so are audited.
const CHANGES: &[&str] = &[
    "Create", "Delete", "Cancel", "Pause", "Resume", "Register", "Revoke", "Upload", "Split", "Update",
];

fn changes_something(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or("");
    CHANGES.iter().any(|prefix| method.starts_with(prefix))
}

/// The call's gRPC status as far as the response's head tells it: an error
/// answered before any message is in the headers ("trailers only").
fn outcome<B>(response: &http::Response<B>) -> String {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from);
    format!("{code:?}")
}

/// The caller the auth layer found; every handler behind it has one.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing API key"))
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service that was polled ready serves this call; a clone takes
        // its place for the next one (tower's rule for cloned services).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let auth = self.auth.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            if OPEN.iter().any(|open| path.starts_with(open)) {
                return inner.call(request).await;
            }
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let caller = match auth.authenticate(header).await {
                Ok(caller) => caller,
                Err(e) => return Ok(Status::from(e).into_http()),
            };
            if let Err(e) = auth.admit(&caller).await {
                return Ok(Status::from(e).into_http());
            }
            request.extensions_mut().insert(caller.clone());
            let response = inner.call(request).await?;
            if changes_something(&path) {
                auth.audit(&caller, &path, &outcome(&response)).await;
            }
            Ok(response)
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changing_methods_are_audited_and_reads_are_not() {
        assert!(changes_something("/lathe.v1.DatasetService/UploadDataset"));
        assert!(changes_something("/lathe.v1.AdminService/RevokeApiKey"));
        assert!(changes_something("/lathe.v1.EvalService/CancelEvalRun"));
        assert!(!changes_something("/lathe.v1.DatasetService/ListDatasets"));
        assert!(!changes_something("/lathe.v1.FineTuningService/WatchJob"));
        assert!(!changes_something("/lathe.v1.ModelService/Chat"));
    }
}
