//! What every handler takes and returns: the `Rest` state (the `App`'s
//! services), the caller the gate found, and axum's extractors with
//! OpenAI's error object as their rejection.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use super::error::ApiError;
use crate::app::App;
use crate::auth::model::Caller;
use crate::datasets::manager::Datasets;
use crate::error::{Error, FieldViolation};
use crate::evals::manager::Evals;
use crate::graders::service::Graders;
use crate::inference::ChatModel;
use crate::jobs::manager::Jobs;
use crate::models::Models;

/// What the handlers share: the `App`'s services.
#[derive(Clone)]
pub struct Rest {
    pub datasets: Arc<Datasets>,
    pub jobs: Arc<Jobs>,
    pub models: Arc<Models>,
    pub graders: Arc<Graders>,
    pub evals: Arc<Evals>,
    pub chat: Arc<dyn ChatModel>,
    pub completions: Arc<crate::completions::Completions>,
    pub synth: Arc<crate::synth::Synth>,
}

impl Rest {
    pub fn new(app: &App) -> Self {
        Self {
            datasets: app.datasets.clone(),
            jobs: app.jobs.clone(),
            models: app.models.clone(),
            graders: app.graders.clone(),
            evals: app.evals.clone(),
            chat: app.chat.clone(),
            completions: app.completions.clone(),
            synth: app.synth.clone(),
        }
    }
}

/// The caller the gate found; every handler takes one.
pub struct Authed(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Authed)
            .ok_or_else(|| crate::error::Error::Unauthenticated("missing API key".into()).into())
    }
}

/// axum's `Json`, answering a body that does not fit with OpenAI's error
/// object (400 with `param`, or 415).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// axum's `Query`, with OpenAI's error object.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// axum's `Path`, with OpenAI's error object.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// A handler's answer: a JSON body or OpenAI's error object.
pub type Answer<T> = Result<Json<T>, ApiError>;

/// For a service call on an id that came in the path: a refusal of the id's
/// shape becomes 404, as OpenAI answers for any id it does not know (a
/// client holding an OpenAI-shaped id such as `file-abc` asks for a record
/// that is not here, which is no fault in its request).
pub fn at_path<'a>(kind: &'static str, id: &'a str) -> impl FnOnce(Error) -> Error + 'a {
    move |err| match err {
        Error::InvalidArgument(v) if !v.is_empty() && v.iter().all(|v| ID_FIELDS.contains(&v.field.as_str())) => {
            Error::not_found(kind, id)
        }
        other => other,
    }
}

/// The fields services name when an id has the wrong shape.
const ID_FIELDS: &[&str] = &["id", "eval_id", "run_id", "item_id", "dataset_id", "upload_id"];

/// A service's field violations renamed to the REST body's params (the
/// services name gRPC's fields).
pub fn renamed(e: Error, rename: impl Fn(&str) -> String) -> Error {
    match e {
        Error::InvalidArgument(v) => Error::InvalidArgument(
            v.into_iter()
                .map(|v| FieldViolation::new(rename(&v.field), v.description))
                .collect(),
        ),
        e => e,
    }
}
