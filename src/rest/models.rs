//! `/v1/models`: the models a caller can name (shared base models and its
//! project's fine-tuned models), as OpenAI's model objects.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::ErrorBody;
use super::kit::{Answer, Authed, Json, Path, Rest};
use super::wire::{Deleted, HasId, List, seconds};
use crate::models::{ModelKind, ModelRecord};

pub fn routes() -> OpenApiRouter<Rest> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(retrieve_model, delete_model))
}

/// OpenAI's model object, with what Lathe knows beside it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// `system` for shared base models; the project for fine-tuned ones.
    pub owned_by: String,
    /// The base model a fine-tuned model was trained from (its own id for a base model).
    pub root: String,
    /// The fine-tuning job that made a fine-tuned model.
    pub job_id: Option<String>,
}

impl HasId for Model {
    fn id(&self) -> &str {
        &self.id
    }
}

pub fn model(m: ModelRecord) -> Model {
    Model {
        owned_by: match m.kind {
            ModelKind::Base => "system".into(),
            ModelKind::FineTuned => m.project.clone().unwrap_or_default(),
        },
        created: seconds(m.created_at),
        root: m.base_model,
        job_id: m.job_id,
        object: "model",
        id: m.id,
    }
}

/// Lists every model the caller can name in one page (not paginated, as
/// OpenAI's; `has_more` is false).
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, body = List<Model>)))]
async fn list_models(State(rest): State<Rest>, Authed(caller): Authed) -> Answer<List<Model>> {
    let mut data = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = rest.models.list(&caller, None, 1000, &token).await?;
        data.extend(page.into_iter().map(model));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    Ok(Json(List::new(data, false)))
}

#[utoipa::path(get, path = "/v1/models/{model}", tag = "models",
    params(("model" = String, Path, description = "A base model's name or a fine-tuned model's id")),
    responses((status = 200, body = Model), (status = 404, body = ErrorBody)))]
async fn retrieve_model(State(rest): State<Rest>, Authed(caller): Authed, Path(id): Path<String>) -> Answer<Model> {
    Ok(Json(model(rest.models.get(&caller, &id).await?)))
}

/// Deletes a fine-tuned model (its adapter files; the job stays). Base
/// models are unregistered by admins only.
#[utoipa::path(delete, path = "/v1/models/{model}", tag = "models",
    params(("model" = String, Path, description = "A fine-tuned model's id")),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
async fn delete_model(State(rest): State<Rest>, Authed(caller): Authed, Path(id): Path<String>) -> Answer<Deleted> {
    let gone = rest.models.delete(&caller, &id).await?;
    Ok(Json(Deleted::new(gone.id, "model")))
}
