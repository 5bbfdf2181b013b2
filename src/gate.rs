//! The gate in front of both doors (gRPC and REST on one port): it names
//! each request (`x-request-id`, and the span of its log lines), asks `auth::Auth` who the
//! `authorization` header names, admits it under the project's rate limit,
//! puts the `Caller` into the request's extensions for the handlers, and
//! writes calls that change something to the audit log with their outcome.
//! A refusal is answered here, in the door's own error shape: a gRPC status,
//! or OpenAI's error object for `/v1/` paths. Health probes and `/metrics`
//! are the open paths. Every call but a scrape of `/metrics` is counted
//! and timed when its answer ends (`telemetry::REQUESTS`), by its gRPC
//! method or REST route template, never by its path.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body::{Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::Auth;
use crate::error::Error;
use crate::telemetry;

/// The Prometheus scrape path: open, not audited, not counted.
pub const METRICS: &str = "/metrics";

/// Path prefixes any client may call without a key.
const OPEN: &[&str] = &["/grpc.health.v1.Health/"];

fn open(path: &str) -> bool {
    path == METRICS || OPEN.iter().any(|open| path.starts_with(open))
}

/// gRPC method names (the path's last part) that change something, and so
/// are audited.
const CHANGES: &[&str] = &[
    "Create", "Delete", "Cancel", "Pause", "Resume", "Register", "Revoke", "Upload", "Split", "Update", "Import",
];

/// REST paths that are POSTed to but change nothing (not audited): one
/// ending in `/` is a prefix, any other the whole path (a stored
/// completion's update, `POST /v1/chat/completions/{id}`, changes it).
const REST_READS: &[&str] = &["/v1/chat/completions", "/v1/fine_tuning/alpha/graders/"];

fn rest_read(path: &str) -> bool {
    REST_READS.iter().any(|read| {
        if read.ends_with('/') {
            path.starts_with(read)
        } else {
            path == *read
        }
    })
}

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

    fn label(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::Rest => "rest",
        }
    }
}

fn changes_something(method: &http::Method, path: &str, door: Door) -> bool {
    match door {
        Door::Rest => {
            !matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS) && !rest_read(path)
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
        Door::Grpc => grpc_status(response.headers()).unwrap_or_else(|| format!("{:?}", tonic::Code::Ok)),
    }
}

/// The gRPC status code named in `headers` (a response's, or its trailers).
fn grpc_status(headers: &http::HeaderMap) -> Option<String> {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)?;
    Some(format!("{code:?}"))
}

/// The response, with a body that counts and times the call when it ends.
/// The route is the gRPC method, or the template of the REST route that
/// served the call (`unrouted` when it was refused before any route).
fn measured(
    response: http::Response<tonic::body::Body>,
    door: Door,
    method: &http::Method,
    path: &str,
    started: Instant,
) -> http::Response<tonic::body::Body> {
    let (route, status) = match door {
        Door::Grpc => (telemetry::grpc_route(path).to_string(), grpc_status(response.headers())),
        Door::Rest => {
            let route = match response.extensions().get::<telemetry::Route>() {
                Some(route) => format!("{method} {}", route.0),
                None => "unrouted".to_string(),
            };
            (route, Some(response.status().as_u16().to_string()))
        }
    };
    let call = Call {
        door,
        route,
        status,
        started,
    };
    response.map(|body| tonic::body::Body::new(Measured { body, call: Some(call) }))
}

/// A call being answered, recorded once its answer ends.
struct Call {
    door: Door,
    route: String,
    /// The HTTP status, or the gRPC status once the answer names it (in its
    /// head or its trailers).
    status: Option<String>,
    started: Instant,
}

impl Call {
    /// Records the call; `ended` is false when its answer was dropped
    /// before its end (the client went away).
    fn done(self, ended: bool) {
        let status = self.status.unwrap_or_else(|| {
            let code = if ended {
                tonic::Code::Unknown
            } else {
                tonic::Code::Cancelled
            };
            format!("{code:?}")
        });
        telemetry::request_done(self.door.label(), self.route, status, self.started.elapsed());
    }
}

/// An answer's body that records its call when it ends or is dropped.
struct Measured {
    body: tonic::body::Body,
    call: Option<Call>,
}

impl http_body::Body for Measured {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        // The call is recorded as its last frame is handed on (trailers, or
        // data that ends the body), so a client that has its answer finds
        // the call counted.
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.trailers_ref() {
                Some(trailers) => {
                    if let (Some(call), Some(status)) = (self.call.as_mut(), grpc_status(trailers)) {
                        call.status = Some(status);
                    }
                    true
                }
                None => self.body.is_end_stream(),
            },
            Poll::Ready(Some(Err(_)) | None) => true,
            Poll::Pending => false,
        };
        if ended && let Some(call) = self.call.take() {
            call.done(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.done(false);
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
                let started = Instant::now();
                let path = request.uri().path().to_string();
                let door = Door::of(&path);
                let method = request.method().clone();
                let mut response = if open(&path) {
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
                if path == METRICS {
                    return Ok(response);
                }
                Ok(measured(response, door, &method, &path, started))
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
        assert!(changes_something(&post, "/v1/chat/completions/chatcmpl-x", Door::Rest));
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
