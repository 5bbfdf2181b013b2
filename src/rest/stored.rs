//! OpenAI's stored chat completions: `GET /v1/chat/completions` (filtered
//! by `model` and `metadata[key]=value`), `GET`, `POST` (metadata) and
//! `DELETE /v1/chat/completions/{id}`, and `GET .../{id}/messages`. The
//! completions are kept by `POST /v1/chat/completions` with `store: true`
//! (`chat.rs`) and by the gRPC Chat RPC; `completions::Completions` owns
//! them.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::kit::{Authed, Json, Path, Query, at_path};
use super::wire::{Deleted, HasId, List, PageQuery, Usage, order, seconds};
use crate::completions::Filter;
use crate::completions::model::StoredCompletion;
use crate::evals::manager::Page;

use super::kit::Rest;

type Answer<T> = Result<Json<T>, ApiError>;

/// A stored `chat.completion`: the answer as it was given, with its metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    pub choices: Vec<Value>,
    pub usage: Usage,
    pub metadata: BTreeMap<String, String>,
    /// What was asked besides the messages (tools, sampling), as OpenAI names it.
    #[schema(value_type = Object)]
    pub request: Value,
}

impl HasId for StoredChatCompletion {
    fn id(&self) -> &str {
        &self.id
    }
}

fn object(c: StoredCompletion) -> StoredChatCompletion {
    let mut request = c.request;
    if let Some(fields) = request.as_object_mut() {
        // Listed by the messages route, page by page.
        fields.remove("messages");
    }
    StoredChatCompletion {
        object: "chat.completion",
        created: seconds(c.created_at),
        usage: Usage {
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            total_tokens: c.prompt_tokens + c.completion_tokens,
        },
        id: c.id,
        model: c.model,
        choices: c.choices,
        metadata: c.metadata,
        request,
    }
}

/// Lists the project's stored completions, oldest first unless `order=desc`.
#[utoipa::path(get, path = "/v1/chat/completions", tag = "chat",
    params(
        ("after" = Option<String>, Query, description = "The last completion id of the previous page"),
        ("limit" = Option<i64>, Query, description = "1 to 100; 20 when absent"),
        ("model" = Option<String>, Query, description = "Only completions of this model"),
        ("order" = Option<String>, Query, description = "`asc` (the default) or `desc`, by creation time"),
        ("metadata" = Option<BTreeMap<String, String>>, Query, style = DeepObject, explode,
         description = "Only completions with these metadata pairs: metadata[key]=value"),
    ),
    responses((status = 200, body = List<StoredChatCompletion>), (status = 400, body = ErrorBody)))]
pub(super) async fn list_chat_completions(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Answer<List<StoredChatCompletion>> {
    let mut filter = Filter::default();
    let (mut after, mut limit, mut order_param) = (None, None, None);
    for (key, value) in pairs {
        match key.as_str() {
            "after" => after = Some(value),
            "limit" => {
                limit = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::invalid("limit", "must be an integer between 1 and 100"))?,
                )
            }
            "model" => filter.model = Some(value),
            "order" => order_param = Some(value),
            _ => match key.strip_prefix("metadata[").and_then(|k| k.strip_suffix(']')) {
                Some(k) => {
                    filter.metadata.insert(k.to_string(), value);
                }
                None => {
                    return Err(ApiError::invalid(
                        key.clone(),
                        format!(
                            "unknown query parameter {key:?} (this list takes after, limit, model, order and metadata[key])"
                        ),
                    ));
                }
            },
        }
    }
    let size = PageQuery { after: None, limit }.page_size()?;
    let page = Page::after(size, after, Some(order(order_param.as_deref())?));
    let (stored, next) = rest.completions.list(&caller, &filter, &page).await?;
    Ok(Json(List::new(
        stored.into_iter().map(object).collect(),
        !next.is_empty(),
    )))
}

#[utoipa::path(get, path = "/v1/chat/completions/{completion_id}", tag = "chat",
    params(("completion_id" = String, Path)),
    responses((status = 200, body = StoredChatCompletion), (status = 404, body = ErrorBody)))]
pub(super) async fn retrieve_chat_completion(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Answer<StoredChatCompletion> {
    let stored = rest
        .completions
        .get(&caller, &id)
        .await
        .map_err(at_path("chat completion", &id))?;
    Ok(Json(object(stored)))
}

/// The new metadata, which replaces the old.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChatCompletion {
    /// Null or `{}` clears it.
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Replaces a stored completion's metadata (the only field that changes).
#[utoipa::path(post, path = "/v1/chat/completions/{completion_id}", tag = "chat",
    params(("completion_id" = String, Path)), request_body = UpdateChatCompletion,
    responses((status = 200, body = StoredChatCompletion), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(super) async fn update_chat_completion(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Json(body): Json<UpdateChatCompletion>,
) -> Answer<StoredChatCompletion> {
    let stored = rest
        .completions
        .update_metadata(&caller, &id, body.metadata.unwrap_or_default())
        .await
        .map_err(at_path("chat completion", &id))?;
    Ok(Json(object(stored)))
}

#[utoipa::path(delete, path = "/v1/chat/completions/{completion_id}", tag = "chat",
    params(("completion_id" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_chat_completion(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Answer<Deleted> {
    rest.completions
        .delete(&caller, &id)
        .await
        .map_err(at_path("chat completion", &id))?;
    Ok(Json(Deleted::new(id, "chat.completion.deleted")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// The last message id of the previous page.
    pub after: Option<String>,
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
    /// `asc` (the default) or `desc`.
    pub order: Option<String>,
}

/// A stored request message with its id (`<completion id>-<index>`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct StoreMessage(Value);

impl HasId for StoreMessage {
    fn id(&self) -> &str {
        self.0["id"].as_str().unwrap_or_default()
    }
}

/// The messages a stored completion was asked with.
#[utoipa::path(get, path = "/v1/chat/completions/{completion_id}/messages", tag = "chat",
    params(("completion_id" = String, Path), MessagesQuery),
    responses((status = 200, body = List<StoreMessage>), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(super) async fn list_chat_completion_messages(
    State(rest): State<Rest>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Answer<List<StoreMessage>> {
    let size = PageQuery {
        after: None,
        limit: q.limit,
    }
    .page_size()?;
    let (messages, more) = rest
        .completions
        .messages(&caller, &id, q.after.as_deref(), size, Some(order(q.order.as_deref())?))
        .await
        .map_err(at_path("chat completion", &id))?;
    Ok(Json(List::new(messages.into_iter().map(StoreMessage).collect(), more)))
}
