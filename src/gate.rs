//! The gate in front of both doors (gRPC and REST on one port): it names
//! each request (`x-request-id`, and the span of its log lines), asks `auth::Auth` who the
//! `authorization` header names, admits it under the project's rate limit,
//! puts the `Caller` into the request's extensions for the handlers, and
//! writes calls that change something to the audit log with their outcome.
//! A refusal is answered here, in the door's own error shape: a gRPC status,
//! or OpenAI's error object for `/v1/` paths. Health probes are the one
//! open path.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::HeaderValue;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::Auth;
use crate::error::Error;

/// Paths any client may call without a key.
const OPEN: &[&str] = &["/grpc.health.v1.Health/"];

/// gRPC method names (the path's last part) that change something, and so
/// are audited.
const CHANGES: &[&str] = &[
    "Create", "Delete", "Cancel", "Pause", "Resume", "Register", "Revoke", "Upload", "Split", "Update", "Import",
];

/// REST paths that are POSTed to but change nothing (not audited).
const REST_READS: &[&str] = &["/v1/chat/completions", "/v1/fine_tuning/alpha/graders/"];

/// The header every answer carries: the id the server's log names the
/// request by.
pub const REQUEST_ID: &str = "x-request-id";

/// Which door a request came through, by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Door {
    Grpc,
    Rest,
}

impl Door {
    fn of(path: &str) -> Door {
        if crate::rest::serves(path) {
            Door::Rest
        } else {
            Door::Grpc
        }
    }

    fn refuse(self, error: Error) -> http::Response<tonic::body::Body> {
        match self {
            Door::Grpc => tonic::Status::from(error).into_http(),
            Door::Rest => crate::rest::error_response(error).map(tonic::body::Body::new),
        }
    }
}

fn changes_something(method: &http::Method, path: &str, door: Door) -> bool {
    match door {
        Door::Rest => {
            !matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
                && !REST_READS.iter().any(|read| path.starts_with(read))
        }
        Door::Grpc => {
            let name = path.rsplit('/').next().unwrap_or("");
            CHANGES.iter().any(|prefix| name.starts_with(prefix))
        }
    }
}

/// The call's outcome as far as the response's head tells it: a gRPC error
/// answered before any message is in the headers ("trailers only"); a REST
/// answer's HTTP status.
fn outcome<B>(response: &http::Response<B>, door: Door) -> String {
    match door {
        Door::Rest => response.status().as_u16().to_string(),
        Door::Grpc => {
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from);
            format!("{code:?}")
        }
    }
}

#[derive(Clone)]
pub struct GateLayer {
    auth: Arc<Auth>,
}

impl GateLayer {
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B> Service<http::Request<B>> for Gate<S>
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
        let id = crate::ids::new_id("req");
        // The server's log lines for this request carry the id the client sees.
        let span = tracing::info_span!("request", id = %id);
        Box::pin(
            async move {
                let path = request.uri().path().to_string();
                let door = Door::of(&path);
                let method = request.method().clone();
                let mut response = if OPEN.iter().any(|open| path.starts_with(open)) {
                    inner.call(request).await?
                } else {
                    let header = request
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    let admitted = match auth.authenticate(header).await {
                        Ok(caller) => auth.admit(&caller).await.map(|()| caller),
                        Err(e) => Err(e),
                    };
                    match admitted {
                        Err(e) => door.refuse(e),
                        Ok(caller) => {
                            request.extensions_mut().insert(caller.clone());
                            let response = inner.call(request).await?;
                            if changes_something(&method, &path, door) {
                                let what = match door {
                                    Door::Rest => format!("{method} {path}"),
                                    Door::Grpc => path.clone(),
                                };
                                auth.audit(&caller, &what, &outcome(&response, door)).await;
                            }
                            response
                        }
                    }
                };
                if let Ok(value) = HeaderValue::from_str(&id) {
                    response.headers_mut().insert(REQUEST_ID, value);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changing_calls_are_audited_and_reads_are_not() {
        let post = http::Method::POST;
        assert!(changes_something(
            &post,
            "/lathe.v1.DatasetService/UploadDataset",
            Door::Grpc
        ));
        assert!(changes_something(
            &post,
            "/lathe.v1.AdminService/RevokeApiKey",
            Door::Grpc
        ));
        assert!(changes_something(
            &post,
            "/lathe.v1.EvalService/CancelEvalRun",
            Door::Grpc
        ));
        assert!(!changes_something(
            &post,
            "/lathe.v1.DatasetService/ListDatasets",
            Door::Grpc
        ));
        assert!(!changes_something(
            &post,
            "/lathe.v1.FineTuningService/WatchJob",
            Door::Grpc
        ));
        assert!(!changes_something(&post, "/lathe.v1.ModelService/Chat", Door::Grpc));
        assert!(changes_something(&post, "/v1/files", Door::Rest));
        assert!(changes_something(&http::Method::DELETE, "/v1/files/x", Door::Rest));
        assert!(!changes_something(&http::Method::GET, "/v1/files", Door::Rest));
        assert!(!changes_something(&post, "/v1/chat/completions", Door::Rest));
        assert!(!changes_something(
            &post,
            "/v1/fine_tuning/alpha/graders/run",
            Door::Rest
        ));
    }

    #[test]
    fn doors_are_told_apart_by_path() {
        assert_eq!(Door::of("/v1/files"), Door::Rest);
        assert_eq!(Door::of("/v1/chat/completions"), Door::Rest);
        assert_eq!(Door::of("/lathe.v1.ModelService/Chat"), Door::Grpc);
    }
}
